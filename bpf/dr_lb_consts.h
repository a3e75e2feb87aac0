/* Every size and fixed number of the data plane. Each can be overridden at build time
 * with -DNAME=value; lb/abi.py reads the defaults from here. */
#ifndef DR_LB_CONSTS_H
#define DR_LB_CONSTS_H

#ifndef MAX_SERVICES
#define MAX_SERVICES 256
#endif

#ifndef MAX_REALS
#define MAX_REALS 4096
#endif

/* Slots of wrr_seq shared by all services; a service needs sum(weights)/gcd. */
#ifndef WRR_SEQ_CAPACITY
#define WRR_SEQ_CAPACITY 1048576
#endif

/* Default; the control plane passes [director] conn_table_size. */
#ifndef CONN_TABLE_SIZE
#define CONN_TABLE_SIZE 1000000
#endif

/* Half-open (SYN_RECV) connections, kept apart so that a SYN flood evicts only its own
 * kind: syn_table, SYN_TABLE_SETS sets (a power of two) of SYN_TABLE_WAYS entries (struct
 * syn_set); the control plane passes room for a quarter of conn_table_size (at least
 * 1024: lb/director/config.py table_slots). */
#ifndef SYN_TABLE_SETS
#define SYN_TABLE_SETS 131072
#endif
#define SYN_TABLE_WAYS 2
/* syn_spill: half-open connections whose set was full; the control plane passes the
 * half-open room plus the LRU's headroom. */
#ifndef SYN_SPILL_SIZE
#define SYN_SPILL_SIZE 262144
#endif

/* UDP flows, kept apart so that a UDP flood evicts only UDP flows, never a TCP
 * connection; the control plane passes a quarter of conn_table_size (at least 1024). */
#ifndef UDP_TABLE_SIZE
#define UDP_TABLE_SIZE 262144
#endif

/* Extra conn_table slots per possible CPU (used by lb/dataplane.py when it sizes the
 * table): the LRU keeps free slots on per-CPU lists and starts evicting a little before
 * it is full; measured: 64 of 1,000,000 lost on 2 CPUs without headroom. */
#define LRU_HEADROOM_PER_CPU 256

/* flow_cache (dr_lb_maps.h): FLOW_CACHE_CPUS CPUs (the possible ones), each with
 * 2^FLOW_CACHE_LOG2 sets of FLOW_CACHE_WAYS connections; the control plane sizes it from
 * conn_table_size (lb/director/config.py flow_cache_shape). */
#ifndef FLOW_CACHE_CPUS
#define FLOW_CACHE_CPUS 2
#endif
#ifndef FLOW_CACHE_LOG2
#define FLOW_CACHE_LOG2 17
#endif
#define FLOW_CACHE_WAYS 8
/* A flow_cache way's bits (struct flow_set), from the lowest: real_id, stamp, valid,
 * alternate (the way is in its key's alternate set), check. The key has FLOW_CHECK_BITS +
 * FLOW_CACHE_LOG2 bits (at least the client's address and port: FLOW_CACHE_LOG2 >= 10),
 * the rest of them a tag of the service. */
#define FLOW_REAL_BITS 12
#define FLOW_REAL_MASK ((1ULL << FLOW_REAL_BITS) - 1)
#define FLOW_STAMP_BITS 12
#define FLOW_STAMP_SHIFT_IN FLOW_REAL_BITS
#define FLOW_VALID_SHIFT (FLOW_REAL_BITS + FLOW_STAMP_BITS)
#define FLOW_VALID (1ULL << FLOW_VALID_SHIFT)
#define FLOW_ALT_SHIFT (FLOW_VALID_SHIFT + 1)
#define FLOW_ALT (1ULL << FLOW_ALT_SHIFT)
#define FLOW_CHECK_SHIFT (FLOW_ALT_SHIFT + 1)
#define FLOW_CHECK_BITS (64 - FLOW_CHECK_SHIFT)
#define FLOW_KEY_BITS (FLOW_CHECK_BITS + FLOW_CACHE_LOG2)
#define FLOW_TAG_BITS (FLOW_KEY_BITS - 48)
/* The check bits that pick a key's home way (bpf/dr_lb.c flow_home_way): the top 3, and
 * below them the FLOW_CACHE_LOG2 that make its alternate set (flow_alt). flow_hash is one
 * multiply, whose bit n depends only on the key's bits 0 to n: the top ones are mixed best.
 * (Expressions: lb/abi.py reads only the numbers above.) */
#define FLOW_HOME_FROM (FLOW_CHECK_BITS - 3)
#define FLOW_ALT_FROM (FLOW_HOME_FROM - FLOW_CACHE_LOG2)
/* The stamp's unit: 2^FLOW_STAMP_SHIFT ticks, at most FLOW_SYNC_MAX_NS / 32 (the control
 * plane passes it with TICK_NS: lb/director/dataplane.py), so that a stamp wraps after
 * 2^FLOW_STAMP_BITS units, 64 s or more. */
#ifndef FLOW_STAMP_SHIFT
#define FLOW_STAMP_SHIFT 2
#endif
/* What the control plane adds to settings.flow_gen to make every flow_cache way due: more
 * units than a sync lasts (FLOW_SYNC_MAX_NS is 32 units or fewer). */
#define FLOW_GEN_STEP 64
/* Ways this many units old or older are cleared by the control plane (sweep_flows), long
 * before their stamp, wrapping, could look fresh again. */
#define FLOW_STALE_UNITS 1024
/* A CPU whose flow_cache hit less than a quarter of its last FLOW_METER_WINDOW probes
 * (flows that each come back too rarely: a miss costs a cold cache line, a hit saves the
 * table's two or three) passes it by for the
 * next FLOW_METER_SKIP packets, of which one in FLOW_METER_FILL (a power of two) fills it
 * without reading it, then probes again (bpf/dr_lb.c flow_probe). */
#define FLOW_METER_WINDOW 64
#define FLOW_METER_SKIP 1024
#define FLOW_METER_FILL 2
/* How flow_remember stores a connection, + its home way (0-7): after a probe, or blind. */
#define FLOW_FILL_PROBED 0
#define FLOW_FILL_BLIND 8
/* The longest a CPU follows a connection from its cache before it reads and refreshes
 * the connection's table entry again (settings.flow_sync_ns is at most this, and at most
 * a quarter of the shortest timeout). */
#define FLOW_SYNC_MAX_NS 1000000000

#ifndef PERSIST_TABLE_SIZE
#define PERSIST_TABLE_SIZE 262144
#endif

/* flow_cache's tag of a service (bpf/dr_lb.c flow_key): the top 16 bits of
 * ((vip ^ (port << 16 | proto)) * FLOW_TAG_MULT) mod 2^32. */
#define FLOW_TAG_MULT 2246822519

/* The VIP pre-filter (vip_filter): 2^VIP_FILTER_LOG2 bits, bit h set for every VIP whose
 * hash is h, the hash being the top VIP_FILTER_LOG2 bits of (address as the program reads
 * it, times VIP_FILTER_MULT) mod 2^32; lb/director/layout.py computes the same. */
#define VIP_FILTER_LOG2 16
#define VIP_FILTER_WORDS 1024
#define VIP_FILTER_MULT 2654435761

/* Nanoseconds per jiffy (1e9 / HZ): the program's clock is jiffies x TICK_NS. The control
 * plane measures it and passes -DTICK_NS (lb/director/dataplane.py tick_ns). */
#ifndef TICK_NS
#define TICK_NS 4000000
#endif

/* IPVS's fixed timeouts for the states `ipvsadm --set` does not cover. */
#define SYN_RECV_TIMEOUT_S 60
#define CLOSE_TIMEOUT_S 10

#define ICMP_ECHO_REPLY_TTL 64

/* ---- schedulers other than wrr/rr (lb/director/scheduler.py builds their tables) ---- */

/* Slots of sched_table shared by all services, in two halves like wrr_seq. Each service
 * needs its list of real servers, plus SH_TABLE_SIZE slots with sh or MH_TABLE_SIZE
 * with mh: a half holds 31 mh services and many others. */
#ifndef SCHED_TABLE_CAPACITY
#define SCHED_TABLE_CAPACITY 4194304
#endif

/* Real servers of one service that a new connection looks at: the bounded loop of
 * lc/wlc/sed/nq, and of the last-resort scans of mh-fallback and of thresholds with wrr.
 * lb/director/config.py refuses lc/wlc/sed/nq services with more. */
#ifndef MAX_REALS_PER_SERVICE
#define MAX_REALS_PER_SERVICE 64
#endif

/* sh: IPVS's 256-bucket table (CONFIG_IP_VS_SH_TAB_BITS = 8). */
#define SH_TAB_BITS 8
#define SH_TABLE_SIZE 256

/* mh: the Maglev lookup table of one service, a prime. IPVS's default is 4093
 * (CONFIG_IP_VS_MH_TAB_INDEX 12); 65537 is the Maglev paper's, finer-grained for weights.
 * MH_TAB_BITS caps weight/gcd at 2^MH_TAB_BITS turns per round, as IP_VS_MH_TAB_BITS
 * (CONFIG_IP_VS_MH_TAB_INDEX / 2) does: 8 is IPVS's value for its 65521 table. */
#ifndef MH_TABLE_SIZE
#define MH_TABLE_SIZE 65537
#endif
#ifndef MH_TAB_BITS
#define MH_TAB_BITS 8
#endif
/* ip_vs_mh.c generate_hash_secret(): both words of hash1, both words of hash2. */
#define MH_HASH1_KEY 2654435761
#define MH_HASH2_KEY 2654446892

/* Probes of the fallback loops (IPVS walks up to the whole table): sh-fallback walks all
 * 256 buckets as IPVS does; mh-fallback tries MH_FALLBACK_TRIES rehashes, then the
 * service's list. wrr with thresholds skips at most WRR_SKIP_MAX overloaded slots. */
#ifndef MH_FALLBACK_TRIES
#define MH_FALLBACK_TRIES 64
#endif
#ifndef WRR_SKIP_MAX
#define WRR_SKIP_MAX 64
#endif
/* The source ports of the director's DR-path probes (lb/director/probe.py), above Linux's
 * default ephemeral range (32768-60999). A TCP segment from a VIP to one of these ports is
 * a real server's answer to a probe: the program hides it from the director's kernel. */
#define PROBE_PORT_MIN 61000
#define PROBE_PORT_MAX 65535

#endif

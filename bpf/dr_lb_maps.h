/* The maps of dr_lb.c, one line each: key -> value, and who writes it.
 *
 * The names are an interface: the control plane's dataplane module (lb/) looks each map
 * up by name. "control plane": it writes the map and the program only reads it;
 * "program": dr_lb.c writes it, and the control plane reads it (status) or empties it
 * (tests). Uses bcc's map macros, the structs of dr_lb_abi.h, the sizes of dr_lb_consts.h.
 */
#ifndef DR_LB_MAPS_H
#define DR_LB_MAPS_H

#include "dr_lb_consts.h"
#include "dr_lb_abi.h"

/* The state a restarted director needs to keep its connections where they are (conn_table,
 * syn_table, udp_table, persist_table, wrr_pos) outlives the process when DRLB_PIN_DIR is
 * defined: the maps are pinned there (a bpffs directory per instance), and a new program reuses the pins.
 * lb/director/kept.py checks a pin's layout before bcc opens it. */
#ifdef DRLB_PIN_DIR
#define KEPT_TABLE(_type, _key, _value, _name, _size, _flags) \
	BPF_TABLE_PINNED(_type, _key, _value, _name, _size, DRLB_PIN_DIR "/" #_name, _flags)
#else
#define KEPT_TABLE(_type, _key, _value, _name, _size, _flags) \
	BPF_F_TABLE(_type, _key, _value, _name, _size, _flags)
#endif

/* The WRR position of one service, shared by every CPU under a lock so that consecutive
 * new connections follow the cycle exactly. Only the program uses it. */
struct wrr_pos {
	struct bpf_spin_lock lock;
	__u32 pos;
};

/* What the scheduling loops carry from one real server to the next. It lives in a map
 * rather than on the stack so that the verifier sees the same state at each turn of a
 * loop whatever was found so far (its budget would otherwise grow with the square of
 * the loop). Only the program uses it, on one CPU within one frame. */
struct sched_scratch {
	__s64 best_oh;                 /* lc/wlc/sed/nq: the least overhead so far */
	__s64 best_w;                  /* and that server's weight */
	__s64 best;                    /* and its real_id, or -1 */
	__u32 over;                    /* a server was passed over for its threshold */
	/* What xdp_main found in conn_table, for the connection it hands to xdp_sched: */
	__u32 old_real;                /* the entry the new one replaces: its server */
	__u64 now;                     /* the clock read for this frame */
	__u8 old_state;                /* and its state */
	__u8 replaces;                 /* an entry (expired, or closing) has this 5-tuple */
	__u8 moved;                    /* it is live, but its server is REAL_F_RESCHEDULE */
	__u8 past_syn;                 /* and this TCP segment is not a SYN */
	__u8 half_open;                /* the entry it replaces is in syn_table */
	__u8 pickup_state;             /* sloppy pickup: the state its flags give it */
	__u8 pad[2];
	struct persist_key pk;         /* the new connection's persistence template key */
};

/* How well this CPU's flow_cache pays lately: of the last probes, how many hit; while
 * `skip` is not 0, that many packets pass it by (bpf/dr_lb.c flow_probe). */
struct flow_meter {
	__u32 probes;
	__u32 hits;
	__u32 skip;
	__u32 pad;
};

/* svc_key (VIP, port, protocol) -> svc_info (id, scheduler and its tables, persistence);
 * control plane. */
BPF_HASH(services, struct svc_key, struct svc_info, MAX_SERVICES);
/* VIP -> vip_info (its number of services): ARP, ping, "VIP, other port"; control plane. */
BPF_HASH(vips, __u32, struct vip_info, MAX_SERVICES);
/* word -> 64 bits of the VIP pre-filter (dr_lb_consts.h); a bit once set stays set for the
 * life of the instance, so a frame to a VIP, or to one that was a VIP, always gets the
 * full lookups; control plane. */
BPF_ARRAY(vip_filter, __u64, VIP_FILTER_WORDS);
/* real_id (a service's real server) -> real_info (MAC, flags, its service's key and id,
 * address, weight, thresholds, correction of its connection count); control plane. */
BPF_ARRAY(reals, struct real_info, MAX_REALS);
/* slot -> real_id: every service's WRR cycle, at svc_info.seq_offset; control plane. */
BPF_ARRAY(wrr_seq, __u32, WRR_SEQ_CAPACITY);
/* slot -> real_id: every service's list of real servers and sh/mh table (and sh-fallback
 * orders), at svc_info.reals_offset and table_offset, in halves like wrr_seq; control
 * plane. */
BPF_ARRAY(sched_table, __u32, SCHED_TABLE_CAPACITY);
/* real_id -> real_conns (active, inactive as counted, overload flag); program. */
BPF_ARRAY(real_conns, struct real_conns, MAX_REALS);
/* 0 -> per-CPU sched_scratch (the scheduling loops' running state, and what xdp_main
 * hands to xdp_sched); program. */
BPF_PERCPU_ARRAY(sched_scratch, struct sched_scratch, 1);
/* 0 -> xdp_sched, the new-connection path of every scheduler but plain wrr/rr, reached by
 * a tail call; control plane (at load). */
BPF_PROG_ARRAY(sched_prog, 1);
/* service id -> struct wrr_pos (next slot of its WRR cycle); program. */
KEPT_TABLE("array", __u32, struct wrr_pos, wrr_pos, MAX_SERVICES, 0);
/* conn_key (5-tuple) -> conn_value (real, service, TCP state, last seen); program. */
KEPT_TABLE("lru_hash", struct conn_key, struct conn_value, conn_table, CONN_TABLE_SIZE, 0);
/* set -> syn_set: TCP connections between their SYN and the packet that establishes them
 * (then they move to conn_table), so that spoofed SYNs evict only these. Not a kernel
 * hash: a set-associative array, one cache line per set, that a SYN reads and writes in
 * place (the LRU hash's insert cost more than the rest of a SYN). A new entry takes a
 * free or expired way of its set, else goes to syn_spill (bpf/dr_lb.c syn_put); program. */
KEPT_TABLE("array", __u32, struct syn_set, syn_table, SYN_TABLE_SETS, BPF_F_MMAPABLE);
/* conn_key -> conn_value: the half-open connections whose set was full (two live ones),
 * so that a collision loses nothing; under a SYN flood, what the flood fills (an LRU, as
 * the whole half-open table was before it had sets); program. */
KEPT_TABLE("lru_hash", struct conn_key, struct conn_value, syn_spill, SYN_SPILL_SIZE, 0);
/* UDP flows (a datagram has no handshake to tell a spoofed source from a real one): apart
 * from the TCP tables, so that a UDP flood cannot push out a TCP connection. */
KEPT_TABLE("lru_hash", struct conn_key, struct conn_value, udp_table, UDP_TABLE_SIZE, 0);
/* persist_key (client net, VIP, port, proto) -> persist_value (real, last seen); program. */
KEPT_TABLE("lru_hash", struct persist_key, struct persist_value, persist_table,
	   PERSIST_TABLE_SIZE, 0);
/* cpu * 2^FLOW_CACHE_LOG2 + set (the flow key's home set, or its alternate set when that is
 * full) -> flow_set: each CPU's cache of the connections it forwards, in front of conn_table
 * and udp_table, so that an established packet costs one set (one cache line of eight
 * 8-byte ways) instead of the kernel hash's bucket, entry
 * and LRU node, and a hit is followed only to a server of the packet's service
 * (real_info.svc). Never the authority: a CPU follows an entry only for
 * settings.flow_sync_ns after it read the table's, only TCP segments without SYN, FIN or
 * RST (a state change) take it, and a replaced connection forgets the key on every CPU
 * (bpf/dr_lb.c); program (the control plane clears stale ways: dataplane.py sweep_flows). */
BPF_F_TABLE("array", __u32, struct flow_set, flow_cache, FLOW_CACHE_CPUS << FLOW_CACHE_LOG2,
	    BPF_F_MMAPABLE);
/* 0 -> per-CPU flow_meter; program. */
BPF_PERCPU_ARRAY(flow_meter, struct flow_meter, 1);
/* 0 -> settings (interface MAC, flags, timeouts; all zero until written); control plane. */
BPF_ARRAY(settings, struct settings, 1);
/* real_id -> per-CPU stats (new connections, packets, IP bytes forwarded; a service's are
 * the sum of its real servers'); program. */
BPF_PERCPU_ARRAY(real_stats, struct stats, MAX_REALS);
/* enum drlb_counter -> per-CPU count (each exit's reason, and events); program. */
BPF_PERCPU_ARRAY(counters, __u64, COUNTER_COUNT);

#endif

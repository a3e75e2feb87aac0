/* The one definition of everything the XDP program and the Python control plane share:
 * map keys and values, counter indexes and connection states.
 *
 * lb/abi.py feeds this file to cffi (lines starting with '#' are skipped), and a test
 * checks that cffi's sizes and offsets equal those of the compiled program's maps.
 * Keep it plain C: fixed-width types, enums, and no macros in the body.
 * Addresses and ports are in network byte order, exactly as they sit in the packet.
 */
#ifndef DR_LB_ABI_H
#define DR_LB_ABI_H

/* Per-CPU counters, one per reason a packet left the program, plus a few events.
 * Every exit path bumps exactly one TX_/PASS_/DROP_ counter. */
enum drlb_counter {
	COUNTER_TX_SERVICE = 0,        /* sent to a real server */
	COUNTER_TX_ARP_REPLY,          /* answered an ARP request for a VIP */
	COUNTER_TX_ICMP_ECHO_REPLY,    /* answered a ping to a VIP */
	COUNTER_PASS_NOT_IPV4,         /* neither IPv4 nor ARP (IPv6, VLAN, LLDP...) */
	COUNTER_PASS_ARP_OTHER,        /* ARP that is not a request for a VIP */
	COUNTER_PASS_NOT_VIP,          /* IPv4 to an address that is not a VIP */
	COUNTER_PASS_VIP_OTHER_PORT,   /* to a VIP, but no service on that port/protocol */
	COUNTER_PASS_FRAGMENT,         /* IPv4 fragment */
	COUNTER_PASS_IP_OPTIONS,       /* IPv4 header with options */
	COUNTER_PASS_TCP_NO_CONN,      /* TCP non-SYN with no live connection (IPVS default) */
	COUNTER_PASS_ICMP_OTHER,       /* ICMP to a VIP that is not an answered echo request */
	COUNTER_PASS_MALFORMED,        /* truncated or invalid header */
	COUNTER_DROP_NO_REAL_SERVER,   /* new connection, but no real server can take it (all
	                                  weight 0, drained, unresolved or failing their health
	                                  checks, and no sorry server) */
	COUNTER_DROP_REAL_MAC_UNKNOWN, /* the connection's real server has no MAC now */
	COUNTER_DROP_CONN_TABLE_ERROR, /* the connection could not be stored */
	COUNTER_PASS_NOT_PROGRAMMED,   /* the control plane has not written settings yet */
	COUNTER_PASS_PROBE_REPLY,      /* a real server's answer to a DR-path probe, passed with
	                                  a foreign destination MAC so that the kernel ignores
	                                  it and only the prober's packet socket reads it */
	COUNTER_CONN_TABLE_INSERT,     /* event: a new key entered conn_table */
	COUNTER_PERSIST_HIT,           /* event: a persistence template chose the server */
	COUNTER_PASS_NOT_OUR_MAC,      /* IPv4, or an ARP request, sent to another MAC than the
	                                  director's (a flooding switch, broadcast, multicast,
	                                  a frame already on its way to a real server) */
	COUNTER_PASS_ARP_BAD_SOURCE,   /* ARP request for a VIP from a broadcast, multicast or
	                                  zero Ethernet or ARP sender: never answered */
	COUNTER_SYN_TABLE_INSERT,      /* event: a new half-open connection entered syn_table */
	COUNTER_CONN_PROMOTED,         /* event: a half-open connection was established: it
	                                  moved from syn_table to conn_table */
	COUNTER_DROP_OVERLOADED,       /* new connection, but each server that could take it
	                                  is over its upper connection threshold */
	COUNTER_CONN_RESCHEDULED,      /* event: a connection of a REAL_F_RESCHEDULE server went
	                                  to a new one */
	COUNTER_UDP_TABLE_INSERT,      /* event: a new UDP flow entered udp_table */
	COUNTER_TX_ICMP_ERROR,         /* an ICMP error to a VIP (fragmentation needed, ...)
	                                  quoting a known connection: sent to its real server,
	                                  which sent the quoted packet (path-MTU discovery) */
	COUNTER_PASS_ICMP_ERROR_NO_CONN, /* an ICMP error to a VIP quoting no known connection
	                                  (or a quote too short or with IP options) */
	COUNTER_PASS_ARP_BACKUP,       /* ARP request for a VIP while VRRP says this director
	                                  is not MASTER ([director] vrrp): the MASTER answers */
	COUNTER_CONN_SLOPPY_PICKUP,    /* event: a TCP non-SYN without a connection was
	                                  scheduled and forwarded (sloppy = true): ECMP moved
	                                  it here from another director, or it was evicted */
	COUNTER_COUNT
};

enum conn_state {
	CONN_NONE = 0,
	CONN_SYN_RECV = 1,
	CONN_ESTABLISHED = 2,
	CONN_FIN_WAIT = 3,
	CONN_CLOSE = 4,
	CONN_UDP = 5,
	CONN_STATE_SLOTS = 8           /* size of settings.timeout_ns */
};

enum conn_flags {
	CONN_F_PERSISTENT = 1          /* its service has a persistence template to refresh */
};

enum real_flags {
	REAL_F_MAC_KNOWN = 1,          /* mac is valid */
	REAL_F_SCHEDULABLE = 2,        /* may take new connections: weight > 0, MAC known and
	                                  not failing its health check */
	REAL_F_RESCHEDULE = 4          /* failed its health check with on_failure = "reschedule":
	                                  its connections are dead, and the next packet of each
	                                  is scheduled anew (IPVS's expire_nodest_conn) */
};

/* svc_info.sched: how a service picks the real server of a new connection. rr is
 * SCHED_WRR over weights of 1 (lb/director/layout.py). */
enum sched_kind {
	SCHED_WRR = 0,                 /* the WRR cycle in wrr_seq */
	SCHED_SH = 1,                  /* source hashing: SH_TABLE_SIZE buckets in sched_table */
	SCHED_MH = 2,                  /* Maglev hashing: MH_TABLE_SIZE entries in sched_table */
	SCHED_LC = 3,                  /* least connections: min active*256 + inactive */
	SCHED_WLC = 4,                 /* weighted: min (active*256 + inactive) / weight */
	SCHED_SED = 5,                 /* shortest expected delay: min (active + 1) / weight */
	SCHED_NQ = 6                   /* never queue: an idle server, else as sed */
};

enum svc_flags {
	SVC_F_SCHED_FALLBACK = 1,      /* sh-fallback / mh-fallback (IPVS's SCHED1 flag) */
	SVC_F_SCHED_PORT = 2,          /* sh-port / mh-port: hash the source port too (SCHED2) */
	SVC_F_OPS = 4,                 /* one-packet scheduling: UDP, no connection entry */
	SVC_F_THRESHOLDS = 8,          /* a real server has an upper connection threshold */
	SVC_F_SLOPPY = 16              /* sloppy pickup: a TCP non-SYN without a connection is
	                                  scheduled (mh, sh), not passed (IPVS's sloppy_tcp) */
};

enum settings_flags {
	SETTINGS_F_ICMP_ECHO = 1,      /* answer pings to VIPs */
	SETTINGS_F_ARP_BACKUP = 2      /* VRRP backup: leave ARP for the VIPs to the MASTER */
};

struct svc_key {
	uint32_t vip;
	uint16_t port;
	uint8_t proto;
	uint8_t pad;
};

struct svc_info {
	uint32_t id;                   /* index into wrr_pos; a connection's svc_id */
	uint32_t seq_offset;           /* this service's slice of wrr_seq (wrr, rr) */
	uint32_t seq_len;              /* 0: no real server can take new connections */
	uint32_t persist_timeout_s;    /* 0: no persistence */
	uint32_t persist_mask;
	uint8_t sched;                 /* enum sched_kind */
	uint8_t flags;                 /* enum svc_flags */
	uint16_t pad;
	uint32_t reals_offset;         /* sched_table: the service's real_ids, in config order */
	uint32_t n_reals;
	uint32_t table_offset;         /* sched_table: the sh buckets or the mh lookup table */
	uint32_t table_len;            /* 0: no server has a weight (sh, mh) */
	uint32_t order_len;            /* sh-fallback: after the buckets, for each bucket the
	                                  order_len servers in the order IPVS's scan from it
	                                  meets them; 0 without sh-fallback */
	uint32_t pad2;
};

struct vip_info {
	uint32_t services;             /* how many services use this VIP */
};

struct real_info {
	uint8_t mac[6];
	uint16_t flags;                /* enum real_flags */
	struct svc_key svc;            /* its service's (a real_id is one service's server):
	                                  what a packet that flow_cache sends here must be to */
	uint32_t addr;
	uint32_t weight;               /* as the schedulers see it: 0 when drained */
	uint32_t upper;                /* connection thresholds (ipvsadm -x); 0: none */
	uint32_t lower;                /* below this the overload ends: ipvsadm -y, or
	                                  ceil(3/4 upper) when -y is 0, as IPVS */
	int32_t fix_active;            /* added to real_conns: the exact count of live entries
	                                  (the control plane's table sweep) less what */
	int32_t fix_inactive;          /* real_conns said then (expired, evicted unseen) */
};

struct conn_key {
	uint32_t saddr;
	uint32_t daddr;
	uint16_t sport;
	uint16_t dport;
	uint8_t proto;
	uint8_t pad[3];
};

struct conn_value {
	uint64_t last_seen_ns;
	uint32_t real_id;              /* index into reals and real_stats */
	uint16_t svc_id;               /* its service: struct svc_info.id */
	uint8_t state;                 /* enum conn_state */
	uint8_t flags;                 /* enum conn_flags */
};

/* One entry of syn_table, a half-open TCP connection; key.proto 0: a free entry. */
struct syn_entry {
	struct conn_key key;
	struct conn_value value;
};

/* One set of syn_table (a cache line): the entries whose keys hash to it. way[0].key.pad
 * bytes 1-2 (a u16) hold when the set last spilled into syn_spill (bpf/dr_lb.c). */
struct syn_set {
	struct syn_entry way[2];       /* SYN_TABLE_WAYS */
};

/* One set of flow_cache: FLOW_CACHE_WAYS connections (ESTABLISHED in conn_table, or in
 * udp_table) as one CPU last read them, 8 bytes each, so that a set is one cache line
 * (the array is mmapable: its values start on a page). A way is, from the top bit:
 * FLOW_CHECK_BITS of its key's hash (bpf/dr_lb.c flow_hash; the set is the rest, so the
 * key is exact), a valid bit, FLOW_STAMP_BITS of stamp (when its table entry was last
 * read: the clock in units of 2^FLOW_STAMP_SHIFT ticks, plus the generation's offset) and
 * FLOW_REAL_BITS of real_id; 0: void. Only the program writes it; config.py sizes the
 * cache. */
struct flow_set {
	uint64_t way[8];               /* FLOW_CACHE_WAYS */
};

struct persist_key {
	uint32_t client_net;           /* client address AND persistent_netmask */
	uint32_t vip;
	uint16_t port;
	uint8_t proto;
	uint8_t pad;
};

struct persist_value {
	uint64_t last_seen_ns;
	uint32_t real_id;
	uint32_t pad;
};

struct settings {
	uint8_t mac[6];                /* the interface's MAC: source of every frame we send;
	                                  all zero: not written yet (not programmed) */
	uint16_t flags;                /* enum settings_flags */
	uint32_t flow_gen;             /* flow_cache entries of another generation are void:
	                                  the control plane changes it to empty every CPU's
	                                  cache at once (never 0) */
	uint64_t timeout_ns[8];        /* idle timeout per enum conn_state (CONN_STATE_SLOTS) */
	uint64_t hash_seed;            /* the secret of the hash that places a connection in
	                                  syn_table and flow_cache (so that nobody can aim
	                                  SYNs at one set); kept with syn_table */
	uint64_t flow_sync_ns;         /* a CPU follows a connection from its flow_cache for at
	                                  most this long, then reads (and refreshes) its table
	                                  entry again: a quarter of the shortest timeout, at
	                                  most FLOW_SYNC_MAX_NS; 0: no cache */
};

/* Connections of a real server as the program counts them: +1/-1 as entries are
 * created, replaced and change between ESTABLISHED (active) and the other states
 * (inactive). It cannot see an entry expire or be evicted: real_info.fix_* correct it. */
struct real_conns {
	int64_t active;
	int64_t inactive;
	uint32_t overloaded;           /* set at upper, cleared below lower (IPVS OVERLOAD) */
	uint32_t pad;
};

struct stats {
	uint64_t conns;
	uint64_t packets;
	uint64_t bytes;
};

#endif

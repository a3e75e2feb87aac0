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
 * persist_table, wrr_pos) outlives the process when DRLB_PIN_DIR is defined: the maps are
 * pinned there (a bpffs directory per instance), and a new program reuses the pins.
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

/* svc_key (VIP, port, protocol) -> svc_info (id, WRR slice, persistence); control plane. */
BPF_HASH(services, struct svc_key, struct svc_info, MAX_SERVICES);
/* VIP -> vip_info (its number of services): ARP, ping, "VIP, other port"; control plane. */
BPF_HASH(vips, __u32, struct vip_info, MAX_SERVICES);
/* real_id (a service's real server) -> real_info (MAC, flags, address); control plane. */
BPF_ARRAY(reals, struct real_info, MAX_REALS);
/* slot -> real_id: every service's WRR cycle, at svc_info.seq_offset; control plane. */
BPF_ARRAY(wrr_seq, __u32, WRR_SEQ_CAPACITY);
/* service id -> struct wrr_pos (next slot of its WRR cycle); program. */
KEPT_TABLE("array", __u32, struct wrr_pos, wrr_pos, MAX_SERVICES, 0);
/* conn_key (5-tuple) -> conn_value (real, service, TCP state, last seen); program. */
KEPT_TABLE("lru_hash", struct conn_key, struct conn_value, conn_table, CONN_TABLE_SIZE, 0);
/* persist_key (client net, VIP, port, proto) -> persist_value (real, last seen); program. */
KEPT_TABLE("lru_hash", struct persist_key, struct persist_value, persist_table,
	   PERSIST_TABLE_SIZE, 0);
/* 0 -> settings (interface MAC, flags, timeouts; all zero until written); control plane. */
BPF_ARRAY(settings, struct settings, 1);
/* service id -> per-CPU stats (new connections, packets, IP bytes forwarded); program. */
BPF_PERCPU_ARRAY(svc_stats, struct stats, MAX_SERVICES);
/* real_id -> per-CPU stats (new connections, packets, IP bytes forwarded); program. */
BPF_PERCPU_ARRAY(real_stats, struct stats, MAX_REALS);
/* enum drlb_counter -> per-CPU count (each exit's reason, and events); program. */
BPF_PERCPU_ARRAY(counters, __u64, COUNTER_COUNT);

#endif

/* dr-lb's XDP program: LVS direct routing plus the director's ARP and ping companion.
 *
 * One entry point, xdp_main. Each handle_*() decides the frame's fate and returns its XDP
 * action through finish(), which bumps the one per-CPU counter (enum drlb_counter) that
 * names the reason, so each send, pass and drop has a reason that `dr-lb status` shows.
 * count() alone records an event (a new conn_table key, a persistence hit), not an exit.
 *
 * Built by bcc from lb/dataplane.py; the structs come from dr_lb_abi.h, the sizes from
 * dr_lb_consts.h (overridable with -D), the maps from dr_lb_maps.h.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#include "parsing.h"
#include "hashing.h"

typedef __u8 uint8_t;
typedef __u16 uint16_t;
typedef __u32 uint32_t;
typedef __u64 uint64_t;

#include "dr_lb_consts.h"
#include "dr_lb_abi.h"
#include "dr_lb_maps.h"

#define NS_PER_S 1000000000ULL

/* The one clock of the program (last_seen_ns, timeouts): jiffies in ns. The verifier
 * inlines bpf_jiffies64 into a load; bpf_ktime_get_coarse_ns, a helper call, cost about
 * 14 ns a packet (test-run, same runs). The control plane reads the same clock
 * (lb/director/dataplane.py program_clock_ns); a second clock would mix units, so the
 * other is poisoned. */
static __always_inline __u64 now_ns(void)
{
	return bpf_jiffies64() * TICK_NS;
}

/* The same clock in ticks (now_ns() = now_ticks() * TICK_NS). flow_cache keeps it in
 * 12-bit stamps of 2^FLOW_STAMP_SHIFT ticks (flow_stamp), from its low 32 bits. */
static __always_inline __u64 now_ticks(void)
{
	return bpf_jiffies64();
}
#pragma GCC poison bpf_ktime_get_coarse_ns bpf_ktime_get_ns

static __always_inline void count(__u32 counter)
{
	__u64 *value = counters.lookup(&counter);

	if (value)
		*value += 1;
}

/* Every exit of the program goes through here, with the reason for it. */
static __always_inline int finish(int action, __u32 counter)
{
	count(counter);
	return action;
}

/* A MAC as one 32-bit and one 16-bit access instead of six byte loads (or stores) and
 * the shifts that join them, which is what clang makes of a memcpy from a u8 array.
 * Unaligned packet and map-value accesses are fine for the verifier and the CPU where
 * unaligned access is efficient (x86-64, arm64); every MAC read or written here is in the
 * packet or at the start of a map value, never on the stack (whose accesses must be
 * aligned). Measured: bench/HISTORY.md, second round. */
static __always_inline __u32 mac_head(const __u8 *mac)
{
	return *(const __u32 *)mac;
}

static __always_inline __u16 mac_tail(const __u8 *mac)
{
	return *(const __u16 *)(mac + 4);
}

static __always_inline void copy_mac(__u8 *dst, const __u8 *src)
{
	__u32 head = mac_head(src);
	__u16 tail = mac_tail(src);

	*(__u32 *)dst = head;
	*(__u16 *)(dst + 4) = tail;
}

static __always_inline struct settings *get_settings(void)
{
	__u32 zero = 0;

	return settings.lookup(&zero);
}

/* Whether the control plane has written settings. It writes them before any other map
 * and always with the interface's MAC, so an all-zero MAC (an array entry exists from the
 * start, zeroed) means a director that knows no VIP yet: it decides nothing and passes
 * the frame to the kernel. Not needed on the established path: a connection exists only
 * once the director is programmed. */
static __always_inline int programmed(const struct settings *cfg)
{
	__u32 head;
	__u16 tail;

	if (!cfg)
		return 0;
	head = mac_head(cfg->mac);
	tail = mac_tail(cfg->mac);
	return (head | tail) != 0;
}

/* Group (broadcast, multicast) or all-zero: no host has this MAC, so no answer to it. */
static __always_inline int group_or_zero_mac(const __u8 *mac)
{
	__u32 head;
	__u16 tail;

	head = mac_head(mac);
	tail = mac_tail(mac);
	return (mac[0] & 1) || (head | tail) == 0;
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	__u32 ha = mac_head(a), hb = mac_head(b);
	__u16 ta = mac_tail(a), tb = mac_tail(b);

	return ((ha ^ hb) | (ta ^ tb)) == 0;
}

static __always_inline int broadcast_mac(const __u8 *mac)
{
	__u32 head;
	__u16 tail;

	head = mac_head(mac);
	tail = mac_tail(mac);
	return head == 0xffffffff && tail == 0xffff;
}

static __always_inline int handle_arp(struct hdr_cursor *c, struct ethhdr *eth)
{
	struct arp_ipv4 *arp = parse_arp(c);
	struct settings *cfg;
	__be32 vip;

	if (!arp)
		return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
	if (arp->htype != bpf_htons(ARPHRD_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4 || arp->op != bpf_htons(ARPOP_REQUEST))
		return finish(XDP_PASS, COUNTER_PASS_ARP_OTHER);
	vip = arp->tpa;
	/* spa == tpa is another host announcing the address, not asking for it. */
	if (arp->spa == vip)
		return finish(XDP_PASS, COUNTER_PASS_ARP_OTHER);
	cfg = get_settings();
	if (!programmed(cfg))
		return finish(XDP_PASS, COUNTER_PASS_NOT_PROGRAMMED);
	if (!vips.lookup(&vip))
		return finish(XDP_PASS, COUNTER_PASS_ARP_OTHER);
	/* An answer to a group address would go to every host, or loop between directors. */
	if (group_or_zero_mac(eth->h_source) || group_or_zero_mac(arp->sha))
		return finish(XDP_PASS, COUNTER_PASS_ARP_BAD_SOURCE);
	if (!broadcast_mac(eth->h_dest) && !same_mac(eth->h_dest, cfg->mac))
		return finish(XDP_PASS, COUNTER_PASS_NOT_OUR_MAC);
	if (cfg->flags & SETTINGS_F_ARP_BACKUP)
		return finish(XDP_PASS, COUNTER_PASS_ARP_BACKUP);

	arp->op = bpf_htons(ARPOP_REPLY);
	copy_mac(arp->tha, arp->sha);
	arp->tpa = arp->spa;
	copy_mac(arp->sha, cfg->mac);
	arp->spa = vip;
	copy_mac(eth->h_dest, arp->tha);
	copy_mac(eth->h_source, cfg->mac);
	return finish(XDP_TX, COUNTER_TX_ARP_REPLY);
}

static __always_inline __u16 fold_csum(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline void swap_macs(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

/* Answer a ping to a VIP, as the director did when it owned the VIP under ipvsadm. */
static __always_inline int handle_icmp_error(struct hdr_cursor *c, struct ethhdr *eth,
					     struct iphdr *iph);

static __always_inline int is_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB || type == ICMP_SOURCE_QUENCH;
}

static __always_inline int handle_icmp(struct hdr_cursor *c, struct ethhdr *eth,
				       struct iphdr *iph)
{
	struct icmphdr *icmp = parse_icmphdr(c);
	struct settings *cfg;
	__be32 daddr = iph->daddr;
	__u16 *words = (__u16 *)iph;
	__u32 sum = 0;

	if (!icmp)
		return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
	cfg = get_settings();
	if (!programmed(cfg))
		return finish(XDP_PASS, COUNTER_PASS_NOT_PROGRAMMED);
	if (!vips.lookup(&daddr))
		return finish(XDP_PASS, COUNTER_PASS_NOT_VIP);
	if (is_icmp_error(icmp->type))
		return handle_icmp_error(c, eth, iph);
	if (!(cfg->flags & SETTINGS_F_ICMP_ECHO) || icmp->type != ICMP_ECHO || icmp->code != 0)
		return finish(XDP_PASS, COUNTER_PASS_ICMP_OTHER);

	/* Type 8 -> 0 lowers the checksummed word by 0x0800 (RFC 1624 update). */
	icmp->type = ICMP_ECHOREPLY;
	sum = (__u16)~icmp->checksum + (__u16)~bpf_htons(ICMP_ECHO << 8);
	icmp->checksum = fold_csum(sum);

	iph->daddr = iph->saddr;
	iph->saddr = daddr;
	iph->ttl = ICMP_ECHO_REPLY_TTL;
	iph->check = 0;
	sum = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += words[i];
	iph->check = fold_csum(sum);
	swap_macs(eth);
	return finish(XDP_TX, COUNTER_TX_ICMP_ECHO_REPLY);
}

/* IPVS's input-only TCP table (what DR sees), reduced to the states timeouts need. */
static __always_inline __u8 tcp_next_state(__u8 state, const struct tcphdr *th)
{
	if (th->rst)
		return CONN_CLOSE;
	if (th->syn)
		return state == CONN_ESTABLISHED ? CONN_ESTABLISHED : CONN_SYN_RECV;
	if (th->fin)
		return state == CONN_CLOSE ? CONN_CLOSE : CONN_FIN_WAIT;
	if (th->ack && state == CONN_SYN_RECV)
		return CONN_ESTABLISHED;
	return state;
}

/* Signed: another CPU may have stored a slightly later time than our `now`. */
static __always_inline int expired(__u64 now, __u64 last_seen, __u64 timeout)
{
	return (__s64)(now - last_seen) > (__s64)timeout;
}

/* The hash that places a half-open connection in syn_table (its sets are its top bits):
 * the key's two words and the secret settings.hash_seed, through splitmix64's finalizer,
 * so that nobody who does not know the seed can aim packets at one set. */
static __always_inline __u64 conn_hash(const struct conn_key *ck, __u64 seed)
{
	__u64 z = (((__u64)ck->daddr << 32) | ck->saddr) ^ seed;

	z ^= ((__u64)*(const __u32 *)&ck->sport << 8 | ck->proto) * 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static __always_inline int same_key(const struct conn_key *a, const struct conn_key *b)
{
	return ((a->saddr ^ b->saddr) | (a->daddr ^ b->daddr) |
		(*(const __u32 *)&a->sport ^ *(const __u32 *)&b->sport) |
		(a->proto ^ b->proto)) == 0;
}

/* ---- syn_table: half-open TCP connections, a set-associative array --------------------- */

static __always_inline struct syn_set *syn_set_of(const struct conn_key *ck,
						  const struct settings *cfg)
{
	__u32 idx = conn_hash(ck, cfg->hash_seed) >> 32;

	idx &= SYN_TABLE_SETS - 1;
	return syn_table.lookup(&idx);
}

/* When a set last spilled an entry into syn_spill (both of its ways live), in units of
 * 2^30 ns, 16 bits, kept in way[0]'s key padding (dr_lb_abi.h struct syn_set). A set
 * whose last spill is older than a half-open entry can live (SYN_RECV_TIMEOUT_S) has
 * nothing live there, so only recent spillers pay syn_spill's lookup. */
#define SPILL_SHIFT 30
#define SPILL_WINDOW ((SYN_RECV_TIMEOUT_S * NS_PER_S >> SPILL_SHIFT) + 2)

static __always_inline __u16 *spill_mark(struct syn_set *set)
{
	return (__u16 *)&set->way[0].key.pad[1];
}

static __always_inline int spilled_lately(struct syn_set *set, __u64 now)
{
	return (__u16)((now >> SPILL_SHIFT) - *spill_mark(set)) <= SPILL_WINDOW;
}

/* The half-open connection of `ck`, or NULL: in its set, or in syn_spill if the set
 * spilled lately. */
static __always_inline struct conn_value *syn_find(const struct conn_key *ck,
						   const struct settings *cfg)
{
	struct syn_set *set = syn_set_of(ck, cfg);

	if (!set)
		return NULL;
	if (same_key(&set->way[0].key, ck))
		return &set->way[0].value;
	if (same_key(&set->way[1].key, ck))
		return &set->way[1].value;
	if (spilled_lately(set, now_ns()))
		return syn_spill.lookup((struct conn_key *)ck);
	return NULL;
}

static __always_inline int way_free(const struct syn_entry *e, const struct settings *cfg,
				    __u64 now)
{
	return !e->key.proto ||
	       expired(now, e->value.last_seen_ns,
		       cfg->timeout_ns[e->value.state & (CONN_STATE_SLOTS - 1)]);
}

/* Store `ck`'s half-open connection (`cv`, stamped now): in its own entry if it has one,
 * else in a free or expired way of its set; with both ways live, in syn_spill (an LRU
 * hash, as the whole table was before), so that a collision never loses a connection: a
 * SYN flood that fills every set and syn_spill evicts only half-open entries, as an LRU.
 * Another CPU may read the entry meanwhile: the key is voided first and completed last,
 * so that a reader that starts after the write began misses; one that matched an expired
 * key just before may take the new value for one packet of that dead connection. */
static __always_inline int syn_put(struct conn_key *ck, const struct conn_value *cv,
				   const struct settings *cfg)
{
	struct syn_set *set = syn_set_of(ck, cfg);
	__u64 now = cv->last_seen_ns;
	struct syn_entry *e;

	if (!set)
		return -1;
	if (same_key(&set->way[0].key, ck))
		e = &set->way[0];
	else if (same_key(&set->way[1].key, ck))
		e = &set->way[1];
	else if (spilled_lately(set, now) && syn_spill.lookup(ck))
		return syn_spill.update(ck, (struct conn_value *)cv);
	else if (way_free(&set->way[0], cfg, now))
		e = &set->way[0];
	else if (way_free(&set->way[1], cfg, now))
		e = &set->way[1];
	else {
		*spill_mark(set) = now >> SPILL_SHIFT;
		return syn_spill.update(ck, (struct conn_value *)cv);
	}
	e->key.proto = 0;
	asm volatile("" ::: "memory");
	e->value = *cv;
	e->key.saddr = ck->saddr;
	e->key.daddr = ck->daddr;
	*(__u32 *)&e->key.sport = *(const __u32 *)&ck->sport;
	asm volatile("" ::: "memory");
	e->key.proto = ck->proto;
	return 0;
}

/* `ck`'s half-open connection is established (or moved): its entry is free again. */
static __always_inline void syn_drop(struct conn_key *ck, const struct settings *cfg)
{
	struct syn_set *set = syn_set_of(ck, cfg);

	if (!set)
		return;
	if (same_key(&set->way[0].key, ck))
		set->way[0].key.proto = 0;
	else if (same_key(&set->way[1].key, ck))
		set->way[1].key.proto = 0;
	else if (spilled_lately(set, now_ns()))
		syn_spill.delete(ck);
}

/* ---- flow_cache: each CPU's cache of the connections it forwards ----------------------- */

/* A connection's key in flow_cache: the client's port and address and FLOW_TAG_BITS of
 * a tag of its VIP, port and protocol, FLOW_KEY_BITS in all, so that the set (the top
 * FLOW_CACHE_LOG2 bits of its hash) and the FLOW_CHECK_BITS an entry keeps (the rest)
 * tell the key exactly (flow_hash is a bijection). The port is lowest: a bit of the hash
 * depends on the key's bits below it only, and the port is what differs most between a
 * client's connections. Two services' tags can be equal (and with the smallest caches
 * there is none): a hit is followed only to a real server of the packet's service
 * (serves()), so that a collision costs a miss, never a wrong server. */
static __always_inline __u64 flow_key(const struct conn_key *ck)
{
	__u64 key = ck->sport | (__u64)ck->saddr << 16;
#if FLOW_TAG_BITS > 0
	__u32 tag = (ck->daddr ^ ((__u32)ck->dport << 16 | ck->proto)) * (__u32)FLOW_TAG_MULT;

	key |= (__u64)(tag >> (32 - FLOW_TAG_BITS)) << 48;
#endif
	return key;
}

/* `ck`'s VIP, port and protocol as the 8 bytes of a struct svc_key (little-endian). */
static __always_inline __u64 svc_bits(const struct conn_key *ck)
{
	return ck->daddr | (__u64)ck->dport << 32 | (__u64)ck->proto << 48;
}

/* Whether `real` is a server of the service whose svc_bits() are `svc`: one aligned u64
 * of the entry the packet reads anyway (its MAC and flags are in the same 16 bytes). */
static __always_inline int serves(const struct real_info *real, __u64 svc)
{
	return *(const __u64 *)&real->svc == svc;
}

#define FLOW_KEY_MASK ((1ULL << FLOW_KEY_BITS) - 1)
_Static_assert(MAX_REALS <= 1 << FLOW_REAL_BITS, "a flow_cache way's real_id field is too narrow");
_Static_assert(FLOW_KEY_BITS >= 48, "flow_cache needs 2^10 sets or more: the key must hold "
	       "the client's address and port whole");
_Static_assert(FLOW_ALT_FROM >= 0 && FLOW_CACHE_WAYS == 1 << (FLOW_CHECK_BITS - FLOW_HOME_FROM),
	       "a way's check bits must hold what makes its key's home way and alternate set");

/* A bijection of FLOW_KEY_BITS-bit keys, keyed by the secret settings.hash_seed: the key
 * xor the seed, times an odd number (2^64 / golden ratio), modulo 2^FLOW_KEY_BITS. Its
 * top bits (the set) depend on every bit of the key. One multiply, because everything an
 * established packet does waits for the set's address: splitmix64's finalizer (two
 * multiplies, three xor-shifts) cost 2 ns of 24 at one flow in test-run, and 2.4 of 43 in
 * situ (bench/HISTORY.md, eleventh round). The cache is a shortcut to what the table
 * says, and a flow in it had to be established first; a set that an attacker filled
 * (knowing the seed) costs its flows the table's lookup, nothing else. */
static __always_inline __u64 flow_hash(__u64 key, const struct settings *cfg)
{
	return ((key ^ cfg->hash_seed) * 0x9e3779b97f4a7c15ULL) & FLOW_KEY_MASK;
}

/* What an entry of the key whose hash is `h` holds above its real_id and stamp in its
 * home set: the hash's low FLOW_CHECK_BITS and the valid bit (so that a zeroed way
 * matches nothing); in its alternate set, FLOW_ALT too. */
static __always_inline __u64 flow_want(__u64 h)
{
	return (h & ((1ULL << FLOW_CHECK_BITS) - 1)) << FLOW_CHECK_SHIFT | FLOW_VALID;
}

/* The home set of the key whose hash is `h`: the hash's top FLOW_CACHE_LOG2 bits. */
static __always_inline __u32 flow_home(__u64 h)
{
	return h >> FLOW_CHECK_BITS;
}

/* Its home way in a set, where every fill puts it when that way is free, and where a
 * probe looks first: the top 3 check bits (FLOW_HOME_FROM). */
static __always_inline __u32 flow_home_way(__u64 h)
{
	return (h >> FLOW_HOME_FROM) & (FLOW_CACHE_WAYS - 1);
}

/* Its alternate set, where it goes when its home set is full: the home set xor an odd
 * number (never 0) made of FLOW_CACHE_LOG2 of the check bits that a way keeps, so that a
 * way marked FLOW_ALT in set s, with check bits c, is of the key whose home set is s xor
 * that number of c: the set and the way still tell the key exactly. */
static __always_inline __u32 flow_alt(__u64 h)
{
	return flow_home(h) ^ (((__u32)(h >> FLOW_ALT_FROM) | 1) & ((1u << FLOW_CACHE_LOG2) - 1));
}

/* Set number `set` in `cpu`'s part of flow_cache (the same set number on every CPU). */
static __always_inline struct flow_set *flow_set_on(__u32 set, __u32 cpu)
{
	__u32 idx = set + (cpu << FLOW_CACHE_LOG2);

	return flow_cache.lookup(&idx);
}

/* The stamp an entry stored now gets: the clock in units of 2^FLOW_STAMP_SHIFT ticks plus
 * settings.flow_gen, modulo 2^FLOW_STAMP_BITS. The control plane adds FLOW_GEN_STEP to
 * flow_gen to make every entry due at once (as if that much time had passed), and
 * clears ways too old to tell from fresh ones after the stamp wraps (lb/director/
 * dataplane.py forget_flows, sweep_flows). */
static __always_inline __u32 flow_stamp(__u32 ticks, const struct settings *cfg)
{
	return ((ticks >> FLOW_STAMP_SHIFT) + cfg->flow_gen) & ((1 << FLOW_STAMP_BITS) - 1);
}

/* Whether entry `e` was synced flow_sync_ns or more ago (or in another generation). */
static __always_inline int flow_due(__u64 e, __u32 stamp, const struct settings *cfg)
{
	__u32 age = (stamp - (__u32)(e >> FLOW_STAMP_SHIFT_IN)) & ((1 << FLOW_STAMP_BITS) - 1);

	return ((__u64)age << FLOW_STAMP_SHIFT) * TICK_NS >= cfg->flow_sync_ns;
}

/* Whether way `e` holds the key of `want` (flow_want): its check, alternate and valid
 * bits. */
static __always_inline int flow_holds(__u64 e, __u64 want)
{
	return !((e ^ want) >> FLOW_VALID_SHIFT);
}

/* All ones if way `e` holds `want`, else 0, without a branch. */
static __always_inline __u64 flow_match(__u64 e, __u64 want)
{
	__u64 d = (e ^ want) >> FLOW_VALID_SHIFT, n = -d, m;

	asm volatile("" : "+r"(n));   /* or LLVM makes a compare and a branch of it */
	m = ~((__s64)(d | n) >> 63);
	asm volatile("" : "+r"(m));   /* or LLVM, knowing it 0 or -1, makes selects of it */
	return m;
}

/* `w` as a way number, masked where the verifier sees it. flow_remember's ways come from
 * `fill`, bounded only by the branch that tells a blind fill from a probed one; clang
 * drops the mask that flow_find and flow_victim apply, which it can prove idle there, and
 * an older verifier follows that branch's other side with the contradicting bounds
 * instead of pruning it (Debian 12's 6.1 rejected the program, "invalid access to map
 * value, off=64", found on the Vagrant director; 6.18 prunes it). On the established packet's path the
 * home way comes from the hash, already masked, and costs nothing more. */
static __always_inline __u32 way_no(__u32 w)
{
	asm volatile("" : "+r"(w));
	return w & (FLOW_CACHE_WAYS - 1);
}

/* The way of `fs` that holds `want` (flow_want), or NULL: its home way (`home`, from the
 * hash, which every fill gives it when free) tested with a branch, as nearly every flow is
 * found there; else the first way that holds it, found without a branch on the ways'
 * contents (the set is one cache line). */
static __always_inline __u64 *flow_find(struct flow_set *fs, __u64 want, __u32 home)
{
	__u64 taken = 0, way = 0, m;

	home &= FLOW_CACHE_WAYS - 1;
	if (flow_holds(fs->way[home], want))
		return &fs->way[home];
#pragma unroll
	for (int w = 0; w < FLOW_CACHE_WAYS; w++) {
		m = flow_match(fs->way[w], want) & ~taken;
		taken |= m;
		way |= m & (w + 1);
	}
	return way ? &fs->way[(way - 1) & (FLOW_CACHE_WAYS - 1)] : NULL;
}

/* Whether no way of `fs` is void (0): only then may a key of this home set be in its
 * alternate set (flow_remember), so only then does a probe that missed look there. A
 * way is void before its first fill and after forget or sweep. */
static __always_inline int flow_full(const struct flow_set *fs)
{
	__u64 any_void = 0;

#pragma unroll
	for (int w = 0; w < FLOW_CACHE_WAYS; w++)   /* top bit of (x - 1) & ~x: x is 0 */
		any_void |= (fs->way[w] - 1) & ~fs->way[w];
	return !(any_void >> 63);
}

/* The way of `fs` a connection not in it may take: its home way if that is void or due
 * (its flow went quiet), else the first such way, else NULL. */
static __always_inline __u64 *flow_victim(struct flow_set *fs, const struct settings *cfg,
					  __u32 stamp, __u32 home)
{
	home &= FLOW_CACHE_WAYS - 1;
	if (!fs->way[home] || flow_due(fs->way[home], stamp, cfg))
		return &fs->way[home];
#pragma unroll
	for (int w = 0; w < FLOW_CACHE_WAYS; w++)
		if (!fs->way[w] || flow_due(fs->way[w], stamp, cfg))
			return &fs->way[w];
	return NULL;
}

/* Store what the table says of the connection whose hash is `h` (read and refreshed
 * just now: real server `real_id`) in this CPU's sets: after a probe (fill:
 * FLOW_FILL_PROBED + the key's home way; the home set's line is in the cache), where it
 * already is, else in flow_victim's way of its home set, else of its alternate set (a
 * second line, only when the home set has no way to spare), else in a way of its home
 * set at random. Not the one synced longest ago: flows that take turns in sets holding
 * one more of them than they have ways would each push out the next one to come, and
 * all miss; at random, most of them stay. While the cache is off (FLOW_FILL_BLIND + home
 * way), in its home way of its home set, written without a read, which a CPU's store
 * buffer absorbs instead of waiting for a cold line. One 8-byte store: no CPU reads half
 * an entry. A key may then be in two ways: flow_find takes the first (home set first),
 * flow_forget voids all. */
static __always_inline void flow_remember(struct flow_set *fs, __u64 h, __u32 real_id,
					  const struct settings *cfg, __u32 stamp, __u32 fill)
{
	__u64 want = flow_want(h), mark = 0, *e;
	struct flow_set *fa;
	__u32 home;

	if (fill >= FLOW_FILL_BLIND) {
		e = &fs->way[way_no(fill - FLOW_FILL_BLIND)];
	} else {
		home = way_no(fill - FLOW_FILL_PROBED);   /* not on a blind fill: asm is kept */
		e = flow_find(fs, want, home);
		if (!e)
			e = flow_victim(fs, cfg, stamp, home);
		if (!e) {
			fa = flow_set_on(flow_alt(h), bpf_get_smp_processor_id());
			if (fa) {
				e = flow_find(fa, want | FLOW_ALT, home);
				if (!e)
					e = flow_victim(fa, cfg, stamp, home);
			}
			if (e)
				mark = FLOW_ALT;
			else
				e = &fs->way[bpf_get_prandom_u32() & (FLOW_CACHE_WAYS - 1)];
		}
	}
	*e = want | mark | (__u64)stamp << FLOW_STAMP_SHIFT_IN | real_id;
}

/* This CPU's flow_cache home set for the key whose hash is `h`, or NULL: with a set, *fe
 * is the key's fresh entry (followed for flow_sync_ns after the table's entry was read;
 * looked for in its alternate set too when the home set is full) or NULL, and *fill says
 * how the table's path below refreshes it (flow_remember). Every FLOW_METER_WINDOW
 * probes, fewer than a quarter of them finding their flow (flows that come back too
 * rarely: each miss costs a cold cache line and, in the table below, the lookup it was
 * meant to save; a hit saves that lookup, two or three cold lines) turn the cache off for
 * FLOW_METER_SKIP packets. Those never read it, and one in FLOW_METER_FILL of them (at
 * random: a fixed one would pick the same flows of a repeating pattern each time) fills
 * it blind, so that flows that do come back are found by the next window and turn it on
 * again. */
static __always_inline struct flow_set *flow_probe(__u64 h, const struct settings *cfg,
						   __u32 stamp, __u64 **fe, __u32 *fill)
{
	__u32 zero = 0, cpu = bpf_get_smp_processor_id(), home = flow_home_way(h);
	struct flow_meter *fm = flow_meter.lookup(&zero);
	struct flow_set *fs;

	*fe = NULL;
	if (!fm || cpu >= FLOW_CACHE_CPUS)
		return NULL;
	if (fm->skip) {
		fm->skip--;
		if (bpf_get_prandom_u32() & (FLOW_METER_FILL - 1))
			return NULL;
		*fill = FLOW_FILL_BLIND + home;
		return flow_set_on(flow_home(h), cpu);
	}
	fs = flow_set_on(flow_home(h), cpu);
	*fill = FLOW_FILL_PROBED + home;
	if (!fs)
		return NULL;
	*fe = flow_find(fs, flow_want(h), home);
	if (!*fe && flow_full(fs)) {
		struct flow_set *fa = flow_set_on(flow_alt(h), cpu);

		if (fa)
			*fe = flow_find(fa, flow_want(h) | FLOW_ALT, home);
	}
	/* Found counts for the meter even when due for its sync: the table's path below
	 * refreshes it (the probe paid). Flows filled together fall due together, which
	 * would otherwise look like a run of misses and turn the cache off. */
	fm->hits += *fe != NULL;
	if (*fe && flow_due(**fe, stamp, cfg))
		*fe = NULL;
	if (++fm->probes >= FLOW_METER_WINDOW) {
		if (fm->hits * 4 < fm->probes)
			fm->skip = FLOW_METER_SKIP;
		fm->probes = 0;
		fm->hits = 0;
	}
	return fs;
}

/* `ck`'s connection was replaced (a new server): no CPU may follow its cached copy, in
 * its home set or its alternate set. A state change needs nothing: a CPU that still
 * follows a closing connection from its cache sends it to the same server, and the SYN
 * of a new one never takes the cache. */
static __always_inline void flow_forget(const struct conn_key *ck, const struct settings *cfg)
{
	__u64 h = flow_hash(flow_key(ck), cfg), want = flow_want(h);
	struct flow_set *fs, *fa;

	for (__u32 cpu = 0; cpu < FLOW_CACHE_CPUS; cpu++) {
		fs = flow_set_on(flow_home(h), cpu);
		fa = flow_set_on(flow_alt(h), cpu);
		if (!fs || !fa)
			break;
#pragma unroll
		for (int w = 0; w < FLOW_CACHE_WAYS; w++) {
			if (flow_holds(fs->way[w], want))
				fs->way[w] = 0;
			if (flow_holds(fa->way[w], want | FLOW_ALT))
				fa->way[w] = 0;
		}
	}
}

/* ---- connection counts (lc, wlc, sed, nq and thresholds) ------------------------------ */

/* +1/-1 to a real server's active (ESTABLISHED) or inactive (any other state) count. */
static __always_inline void count_conn(__u32 real_id, __u8 state, __s64 delta)
{
	struct real_conns *rc = real_conns.lookup(&real_id);

	if (!rc)
		return;
	if (state == CONN_ESTABLISHED)
		__sync_fetch_and_add(&rc->active, delta);
	else
		__sync_fetch_and_add(&rc->inactive, delta);
}

/* x, or 0 if it is negative, without a branch: the verifier's budget goes to the loops. */
static __always_inline __s64 not_negative(__s64 x)
{
	__s64 sign = x >> 63;

	asm volatile("" : "+r"(sign));   /* or clang turns it back into a branch */
	return x & ~sign;
}

/* IPVS's OVERLOAD flag, looked at when a new connection is scheduled: set once active +
 * inactive (the program's count plus the control plane's correction) reach upper,
 * cleared once they fall below lower, kept in between. */
static __always_inline int overloaded(const struct real_info *real, __u32 real_id)
{
	struct real_conns *rc;
	__s64 total;

	if (!real->upper)
		return 0;
	rc = real_conns.lookup(&real_id);
	if (!rc)
		return 0;
	total = not_negative(rc->active + real->fix_active) +
		not_negative(rc->inactive + real->fix_inactive);
	if (total >= real->upper) {
		rc->overloaded = 1;
		return 1;
	}
	if (total < real->lower)
		rc->overloaded = 0;
	return rc->overloaded;
}

/* ---- scheduling ------------------------------------------------------------------------ */

/* Keeps clang from rewriting a loop's counter (a trip count it computes, code shared
 * between loops), which the verifier then cannot follow within its budget. Every
 * scheduling loop starts with it, and carries its running state in sched_scratch. */
#define LOOP_BARRIER(i) asm volatile("" : "+r"(i))

/* Why pick_real() found no server. */
#define PICK_NONE (-1)          /* none can take new connections */
#define PICK_OVERLOADED (-2)    /* those that could are over their upper threshold */

/* Whether real_id may take a new connection (IPVS's !is_unavailable()): weight > 0 and
 * MAC known and, in a service with thresholds, not overloaded (noted in sc->over). */
static __always_inline int available(__u32 real_id, const struct svc_info *svc,
				     struct sched_scratch *sc)
{
	struct real_info *real = reals.lookup(&real_id);

	if (!real || !(real->flags & REAL_F_SCHEDULABLE))
		return 0;
	if ((svc->flags & SVC_F_THRESHOLDS) && overloaded(real, real_id)) {
		sc->over = 1;
		return 0;
	}
	return 1;
}

/* The real_id in slot `slot` of sched_table, or -1. */
static __always_inline long table_at(__u32 slot)
{
	__u32 *real_id = sched_table.lookup(&slot);

	return real_id ? *real_id : -1;
}

/* The first available server of the service's list from index `start` (< n_reals) on,
 * going round: the last resort of mh-fallback and of wrr with every nearby slot
 * overloaded. The list is laid out twice in a row, so the loop never wraps. */
static __always_inline long first_available(const struct svc_info *svc, __u32 start,
					    struct sched_scratch *sc)
{
	__u32 n = svc->n_reals;
	long real_id;

	for (__u32 i = 0; i < MAX_REALS_PER_SERVICE; i++) {
		LOOP_BARRIER(i);
		if (i >= n)
			break;
		real_id = table_at(svc->reals_offset + start + i);
		if (real_id < 0)
			break;
		if (available(real_id, svc, sc))
			return real_id;
	}
	return PICK_NONE;
}

/* wrr and rr: the next slot of the service's cycle, shared by all CPUs under a lock so
 * that consecutive connections follow the cycle exactly. With thresholds, an overloaded
 * server's slots are skipped, as ip_vs_wrr_schedule() skips it, and the position moves
 * past the slot taken. */
static __always_inline long pick_wrr(const struct svc_info *svc, struct sched_scratch *sc,
				     const int thresholds)
{
	struct wrr_pos *wp;
	__u32 pos, next, slot, *real_id, svc_id = svc->id, len = svc->seq_len;

	if (len == 0)
		return PICK_NONE;
	wp = wrr_pos.lookup(&svc_id);
	if (!wp)
		return PICK_NONE;
	bpf_spin_lock(&wp->lock);
	pos = wp->pos;
	if (pos >= len)
		pos = 0;
	wp->pos = pos + 1 >= len ? 0 : pos + 1;
	bpf_spin_unlock(&wp->lock);

	slot = svc->seq_offset + pos;
	real_id = wrr_seq.lookup(&slot);
	if (!real_id)
		return PICK_NONE;
	if (!thresholds || available(*real_id, svc, sc))
		return *real_id;
	for (__u32 i = 1; i <= WRR_SKIP_MAX; i++) {
		LOOP_BARRIER(i);
		if (i >= len)
			break;
		next = (pos + i) % len;
		slot = svc->seq_offset + next;
		real_id = wrr_seq.lookup(&slot);
		if (!real_id)
			break;
		if (available(*real_id, svc, sc)) {
			bpf_spin_lock(&wp->lock);
			wp->pos = next + 1 >= len ? 0 : next + 1;
			bpf_spin_unlock(&wp->lock);
			return *real_id;
		}
	}
	return first_available(svc, 0, sc);
}

/* The host-order value IPVS hashes for sh and mh: source address plus, with sh-port or
 * mh-port, source port. */
static __always_inline __u32 hash_input(const struct svc_info *svc, const struct conn_key *ck)
{
	__u32 v = bpf_ntohl(ck->saddr);

	if (svc->flags & SVC_F_SCHED_PORT)
		v += bpf_ntohs(ck->sport);
	return v;
}

/* sh: ip_vs_sh_schedule(), with ip_vs_sh_get_fallback() under sh-fallback. IPVS's scan
 * tries bucket (2 * hash + offset) % 256 for offset 0..255; which server it finds first
 * depends only on where it starts, so lb/director/scheduler.py lays out, for each
 * starting bucket, the servers in the order the scan meets them. */
static __always_inline long pick_sh(const struct svc_info *svc, const struct conn_key *ck,
				    struct sched_scratch *sc)
{
	__u32 h = ipvs_hash_32(hash_input(svc, ck), SH_TAB_BITS) & (SH_TABLE_SIZE - 1);
	__u32 order;
	long real_id;

	if (svc->table_len != SH_TABLE_SIZE)
		return PICK_NONE;
	real_id = table_at(svc->table_offset + h);
	if (real_id < 0)
		return PICK_NONE;
	if (available(real_id, svc, sc))
		return real_id;
	if (!(svc->flags & SVC_F_SCHED_FALLBACK))
		return PICK_NONE;
	order = svc->table_offset + SH_TABLE_SIZE + ((2 * h) & (SH_TABLE_SIZE - 1)) * svc->order_len;
	for (__u32 i = 0; i < MAX_REALS_PER_SERVICE; i++) {
		LOOP_BARRIER(i);
		if (i >= svc->order_len)
			break;
		real_id = table_at(order + i);
		if (real_id < 0)
			break;
		if (available(real_id, svc, sc))
			return real_id;
	}
	return PICK_NONE;
}

static __always_inline __u32 mh_hash(__u32 v)
{
	return ipvs_hsiphash_u32(v, MH_HASH1_KEY, MH_HASH1_KEY) % MH_TABLE_SIZE;
}

/* mh: ip_vs_mh_schedule(), with ip_vs_mh_get_fallback() under mh-fallback. IPVS rehashes
 * up to the table's size; here MH_FALLBACK_TRIES rehashes (the same ones), then the first
 * available server of the list from a place the hash chooses. */
static __always_inline long pick_mh(const struct svc_info *svc, const struct conn_key *ck,
				    struct sched_scratch *sc)
{
	__u32 v = hash_input(svc, ck), ihash = mh_hash(v);
	long real_id;

	if (svc->table_len != MH_TABLE_SIZE)
		return PICK_NONE;
	real_id = table_at(svc->table_offset + ihash);
	if (real_id < 0)
		return PICK_NONE;
	if (available(real_id, svc, sc))
		return real_id;
	if (!(svc->flags & SVC_F_SCHED_FALLBACK))
		return PICK_NONE;
	for (__u32 offset = 0; offset < MH_FALLBACK_TRIES; offset++) {
		LOOP_BARRIER(offset);
		real_id = table_at(svc->table_offset +
				   mh_hash((offset + ihash) % MH_TABLE_SIZE + v));
		if (real_id < 0)
			break;
		if (available(real_id, svc, sc))
			return real_id;
	}
	return first_available(svc, svc->n_reals ? ihash % svc->n_reals : 0, sc);
}

/* lc, wlc, sed, nq: ip_vs_{lc,wlc,sed,nq}_schedule() over the service's list, in order,
 * with the program's counts plus the control plane's correction. Ties go to the first,
 * as in IPVS. `sched` is a constant: each scheduler gets its own copy, without branches
 * on the kind. The first server that can take the connection always beats best_oh's
 * start (more than any overhead), as it becomes IPVS's first `least`. */
#define LEAST_START (1LL << 40)

static __always_inline long pick_least(const struct svc_info *svc, struct sched_scratch *sc,
				       const __u8 sched)
{
	__s64 oh, w, active, inactive;
	struct real_info *real;
	struct real_conns *rc;
	long real_id;
	__u32 rid;

	sc->best_oh = LEAST_START;
	sc->best_w = 1;
	sc->best = PICK_NONE;
	for (__u32 i = 0; i < MAX_REALS_PER_SERVICE; i++) {
		LOOP_BARRIER(i);
		if (i >= svc->n_reals)
			break;
		real_id = table_at(svc->reals_offset + i);
		if (real_id < 0)
			break;
		rid = real_id;
		real = reals.lookup(&rid);
		if (!real || !(real->flags & REAL_F_SCHEDULABLE) || !real->weight)
			continue;
		if ((svc->flags & SVC_F_THRESHOLDS) && overloaded(real, rid)) {
			sc->over = 1;
			continue;
		}
		rc = real_conns.lookup(&rid);
		if (!rc)
			continue;
		active = not_negative(rc->active + real->fix_active);
		inactive = not_negative(rc->inactive + real->fix_inactive);
		w = real->weight;
		if (sched == SCHED_LC || sched == SCHED_WLC)
			oh = (active << 8) + inactive;       /* ip_vs_dest_conn_overhead() */
		else
			oh = active + 1;                     /* sed, nq */
		if (sched == SCHED_NQ && active == 0)
			return real_id;                      /* an idle server, at once */
		if (sched == SCHED_LC ? oh < sc->best_oh : sc->best_oh * w > oh * sc->best_w) {
			sc->best = real_id;
			sc->best_oh = oh;
			sc->best_w = w;
		}
	}
	return sc->best;
}

/* A new connection's real server: the persistence template if one is live and its
 * server still takes connections (IPVS ignores thresholds there too), else the service's
 * scheduler. Returns a real_id, or PICK_NONE / PICK_OVERLOADED. `all` is a constant:
 * xdp_main only ever schedules plain wrr/rr (all = 0), xdp_sched the rest. */
static __always_inline long pick_real(const struct svc_info *svc, struct persist_key *pk,
				     const struct conn_key *ck, __u64 now,
				     struct sched_scratch *sc, const int all)
{
	struct persist_value *pv, fresh = {};
	struct real_info *real;
	__u32 slot;
	long picked;

	if (svc->persist_timeout_s) {
		pv = persist_table.lookup(pk);
		if (pv && !expired(now, pv->last_seen_ns,
				   (__u64)svc->persist_timeout_s * NS_PER_S)) {
			slot = pv->real_id;
			real = reals.lookup(&slot);
			if (real && (real->flags & REAL_F_SCHEDULABLE)) {
				pv->last_seen_ns = now;
				count(COUNTER_PERSIST_HIT);
				return slot;
			}
		}
	}
	sc->over = 0;
	if (!all)
		picked = pick_wrr(svc, sc, 0);
	else switch (svc->sched) {
	case SCHED_WRR:
		picked = pick_wrr(svc, sc, 1);
		break;
	case SCHED_SH:
		picked = pick_sh(svc, ck, sc);
		break;
	case SCHED_MH:
		picked = pick_mh(svc, ck, sc);
		break;
	case SCHED_LC:
		picked = pick_least(svc, sc, SCHED_LC);
		break;
	case SCHED_WLC:
		picked = pick_least(svc, sc, SCHED_WLC);
		break;
	case SCHED_SED:
		picked = pick_least(svc, sc, SCHED_SED);
		break;
	case SCHED_NQ:
		picked = pick_least(svc, sc, SCHED_NQ);
		break;
	default:
		picked = PICK_NONE;
	}
	if (picked < 0)
		return sc->over ? PICK_OVERLOADED : PICK_NONE;
	if (svc->persist_timeout_s) {
		fresh.last_seen_ns = now;
		fresh.real_id = picked;
		persist_table.update(pk, &fresh);
	}
	return picked;
}

static __always_inline void add_stats(struct stats *s, int new_conn, __u64 bytes)
{
	if (!s)
		return;
	s->conns += new_conn;
	s->packets += 1;
	s->bytes += bytes;
}

/* Send the frame to its real server: only the MACs change, as in LVS-DR. Its stats are
 * the server's; a service's are the sum of its servers' (a real_id is one service's, and
 * never another's while the program runs: lb/director/dataplane.py service_stats), one
 * per-CPU update a packet instead of two (2 ns in situ, same run). */
static __always_inline int forward(struct ethhdr *eth, struct iphdr *iph,
				   struct settings *cfg, struct real_info *real, __u32 real_id,
				   int new_conn)
{
	add_stats(real_stats.lookup(&real_id), new_conn, bpf_ntohs(iph->tot_len));
	copy_mac(eth->h_dest, real->mac);
	copy_mac(eth->h_source, cfg->mac);
	return finish(XDP_TX, COUNTER_TX_SERVICE);
}

static __always_inline int is_new_tcp(const struct tcphdr *th)
{
	return th->syn && !th->ack && !th->rst;
}

/* A connection entry is live until its state's timeout passes; a SYN on a closing
 * connection starts a new connection that reuses the port. */
static __always_inline int conn_is_live(const struct conn_value *cv,
					const struct tcphdr *th,
					const struct settings *cfg, __u64 now)
{
	__u8 state = cv->state & (CONN_STATE_SLOTS - 1);

	if (expired(now, cv->last_seen_ns, cfg->timeout_ns[state]))
		return 0;
	return !(th && is_new_tcp(th) && (state == CONN_FIN_WAIT || state == CONN_CLOSE));
}

static __always_inline void fill_svc_key(struct svc_key *sk, const struct conn_key *ck)
{
	sk->vip = ck->daddr;
	sk->port = ck->dport;
	sk->proto = ck->proto;
}

static __always_inline void fill_persist_key(struct persist_key *pk,
					     const struct conn_key *ck,
					     const struct svc_info *svc)
{
	pk->client_net = ck->saddr & svc->persist_mask;
	pk->vip = ck->daddr;
	pk->port = ck->dport;
	pk->proto = ck->proto;
}

/* Follow the client's TCP flags; a move between ESTABLISHED and the other states moves
 * the connection between its server's active and inactive counts. */
static __always_inline void follow_tcp_state(struct conn_value *cv, const struct tcphdr *th)
{
	__u8 old = cv->state, new = tcp_next_state(old, th);

	if (new == old)
		return;
	cv->state = new;
	if ((old == CONN_ESTABLISHED) != (new == CONN_ESTABLISHED)) {
		count_conn(cv->real_id, old, -1);
		count_conn(cv->real_id, new, 1);
	}
}

/* Keep a persistence template alive while a connection it placed is in use. */
static __always_inline void touch_template(const struct conn_key *ck, __u32 real_id,
					   __u64 now)
{
	struct svc_key sk = {};
	struct persist_key pk = {};
	struct persist_value *pv;
	struct svc_info *svc;

	fill_svc_key(&sk, ck);
	svc = services.lookup(&sk);
	if (!svc || !svc->persist_timeout_s)
		return;
	fill_persist_key(&pk, ck, svc);
	pv = persist_table.lookup(&pk);
	if (pv && pv->real_id == real_id)
		pv->last_seen_ns = now;
}

/* A TCP connection between its SYN and the client's next packet lives in syn_table, so
 * that spoofed SYNs, however many and however often repeated, evict only half-open
 * entries and never an established connection. That next packet (an ACK, data, a FIN)
 * moves it to conn_table; a repeated SYN or a RST leaves it where it is.
 * Returns an XDP action, or -1 when no live half-open connection has this key or when
 * its server is to be rescheduled (then *moved is set, as for an established one). */
static __always_inline int follow_half_open(struct conn_value *hv, struct conn_key *ck,
					    const struct tcphdr *th, struct ethhdr *eth,
					    struct iphdr *iph, struct settings *cfg, int *moved)
{
	struct conn_value established;
	struct real_info *real;
	__u32 real_id;
	__u8 before;
	__u64 now;

	now = now_ns();
	if (!conn_is_live(hv, th, cfg, now))
		return -1;
	real_id = hv->real_id;
	real = reals.lookup(&real_id);
	if (real && (real->flags & REAL_F_RESCHEDULE)) {
		*moved = 1;
		return -1;
	}
	if (!real || !(real->flags & REAL_F_MAC_KNOWN))
		return is_new_tcp(th) ? -1 : finish(XDP_DROP, COUNTER_DROP_REAL_MAC_UNKNOWN);
	hv->last_seen_ns = now;
	if (hv->flags & CONN_F_PERSISTENT)
		touch_template(ck, real_id, now);
	if (th->syn || th->rst) {
		follow_tcp_state(hv, th);
		return forward(eth, iph, cfg, real, real_id, 0);
	}
	before = hv->state;
	established = *hv;
	established.state = tcp_next_state(before, th);
	/* On failure it stays half-open, and the next packet tries again. */
	if (!conn_table.update(ck, &established)) {
		syn_drop(ck, cfg);
		count(COUNTER_CONN_TABLE_INSERT);
		count(COUNTER_CONN_PROMOTED);
		if ((before == CONN_ESTABLISHED) != (established.state == CONN_ESTABLISHED)) {
			count_conn(real_id, before, -1);
			count_conn(real_id, established.state, 1);
		}
	}
	return forward(eth, iph, cfg, real, real_id, 0);
}

/* A real server's SYN-ACK or RST to a DR-path probe: from a VIP to a probe port. Nothing
 * else comes from a VIP to the director (a real server answers clients from the VIP, and
 * the director is never a client of its own VIPs). */
static __always_inline int probe_port(__be16 port)
{
	__u16 dport = bpf_ntohs(port);

	return dport >= PROBE_PORT_MIN && dport <= PROBE_PORT_MAX;
}

static __always_inline int is_probe_reply(const struct conn_key *ck)
{
	__u32 saddr = ck->saddr;

	return probe_port(ck->dport) && vips.lookup(&saddr);
}

/* The prober's packet socket must see the reply and the director's kernel must not: it
 * would answer a SYN-ACK for a connection it never opened with an RST. Packet sockets
 * tap frames after XDP, so the frame is passed, but to a destination MAC that is not
 * the interface's: the kernel then takes it as another host's (PACKET_OTHERHOST) and
 * drops it before IP without a word, while packet sockets still read it. */
static __always_inline int pass_probe_reply(struct ethhdr *eth)
{
	__builtin_memset(eth->h_dest, 0, ETH_ALEN);
	return finish(XDP_PASS, COUNTER_PASS_PROBE_REPLY);
}

/* A new connection (a SYN, or a datagram without a live flow) to service `svc`: pick its
 * real server, remember the connection (unless one-packet scheduling) and send the
 * frame. sc->now, sc->replaces, sc->old_real and sc->old_state say what xdp_main found
 * in conn_table. `all`: as for pick_real(). What lives across the scheduling is in
 * sched_scratch or the packet, not in pointers that differ between TCP and UDP, so that
 * both reach it in the same verifier state. */
static __always_inline int new_connection(struct ethhdr *eth, struct iphdr *iph,
					  const struct conn_key *ck, struct settings *cfg,
					  const struct svc_info *svc, struct sched_scratch *sc,
					  const int all)
{
	struct conn_value fresh = {};
	struct real_info *real;
	int tcp = ck->proto == IPPROTO_TCP;
	__u32 real_id;
	long picked;

	if (svc->persist_timeout_s)
		fill_persist_key(&sc->pk, ck, svc);
	picked = pick_real(svc, &sc->pk, ck, sc->now, sc, all);
	if (picked == PICK_OVERLOADED)
		return finish(XDP_DROP, COUNTER_DROP_OVERLOADED);
	if (picked < 0)
		return finish(XDP_DROP, COUNTER_DROP_NO_REAL_SERVER);

	real_id = picked;
	real = reals.lookup(&real_id);
	if (!real || !(real->flags & REAL_F_MAC_KNOWN))
		return finish(XDP_DROP, COUNTER_DROP_REAL_MAC_UNKNOWN);
	/* One-packet scheduling: each datagram is scheduled on its own, nothing is kept. */
	if (!tcp && (svc->flags & SVC_F_OPS))
		return forward(eth, iph, cfg, real, real_id, 1);

	fresh.last_seen_ns = sc->now;
	fresh.real_id = real_id;
	fresh.svc_id = svc->id;
	/* A moved TCP connection past its SYN: its new server will reset it. One picked up
	 * (sloppy) goes on in the state its flags give (established, closing). */
	fresh.state = !tcp ? CONN_UDP : !sc->past_syn ? CONN_SYN_RECV :
		      sc->moved ? CONN_CLOSE : sc->pickup_state;
	fresh.flags = svc->persist_timeout_s ? CONN_F_PERSISTENT : 0;
	/* TCP: a SYN waits in syn_table for the client's next packet (so that a SYN flood
	 * evicts only half-open entries); a key already in conn_table is reused in place
	 * (port reuse, a moved connection), nothing else is evicted for it; a half-open
	 * connection moved past its SYN goes to conn_table. UDP: udp_table. */
	if (tcp && sc->replaces && !sc->half_open) {
		if (conn_table.update((struct conn_key *)ck, &fresh))
			return finish(XDP_DROP, COUNTER_DROP_CONN_TABLE_ERROR);
	} else if (tcp && !sc->past_syn) {
		if (syn_put((struct conn_key *)ck, &fresh, cfg))
			return finish(XDP_DROP, COUNTER_DROP_CONN_TABLE_ERROR);
		if (!sc->replaces)
			count(COUNTER_SYN_TABLE_INSERT);
	} else if (tcp) {
		if (conn_table.update((struct conn_key *)ck, &fresh))
			return finish(XDP_DROP, COUNTER_DROP_CONN_TABLE_ERROR);
		syn_drop((struct conn_key *)ck, cfg);
		count(COUNTER_CONN_TABLE_INSERT);
	} else {
		if (udp_table.update((struct conn_key *)ck, &fresh))
			return finish(XDP_DROP, COUNTER_DROP_CONN_TABLE_ERROR);
		if (!sc->replaces)
			count(COUNTER_UDP_TABLE_INSERT);
	}
	if (sc->replaces) {   /* the entry this one replaces leaves its server's count */
		count_conn(sc->old_real, sc->old_state, -1);
		flow_forget(ck, cfg);
	}
	if (sc->moved)
		count(COUNTER_CONN_RESCHEDULED);
	else if (tcp && sc->past_syn)
		count(COUNTER_CONN_SLOPPY_PICKUP);
	count_conn(real_id, fresh.state, 1);
	return forward(eth, iph, cfg, real, real_id, 1);
}

/* The frame's flow: TCP or UDP ports and the addresses, as conn_table's key. */
static __always_inline int read_flow(struct hdr_cursor *c, const struct iphdr *iph,
				     struct tcphdr **th, struct conn_key *ck)
{
	struct udphdr *uh;

	if (iph->protocol == IPPROTO_TCP) {
		*th = parse_tcphdr(c);
		if (!*th || (*th)->doff < 5)
			return -1;
		ck->sport = (*th)->source;
		ck->dport = (*th)->dest;
	} else {
		uh = parse_udphdr(c);
		if (!uh)
			return -1;
		ck->sport = uh->source;
		ck->dport = uh->dest;
	}
	ck->saddr = iph->saddr;
	ck->daddr = iph->daddr;
	ck->proto = iph->protocol;
	return 0;
}

/* Whether `addr` may be a VIP: one bit of vip_filter, an array read the verifier inlines.
 * A clear bit means certainly not, so that a frame to the director itself or to any other
 * host leaves after a few instructions instead of three hash misses (conn_table,
 * services, vips); a set bit only means "look it up". */
static __always_inline int maybe_vip(__u32 addr)
{
	__u32 h = (addr * (__u32)VIP_FILTER_MULT) >> (32 - VIP_FILTER_LOG2);
	__u32 word = h / 64;
	__u64 *bits = vip_filter.lookup(&word);

	return bits && ((*bits >> (h % 64)) & 1);
}

/* TCP/UDP: the connection table first (the established path), then the services. A new
 * connection is scheduled here for plain wrr/rr (as ever), and in xdp_sched, reached by
 * a tail call, for every other scheduler and for wrr/rr with thresholds: their loops
 * are verified once there, whatever path led to them here. */
static __always_inline int handle_l4(struct xdp_md *ctx, struct hdr_cursor *c,
				     struct ethhdr *eth, struct iphdr *iph, struct settings *cfg)
{
	struct svc_key sk = {};
	struct conn_key ck = {};
	struct conn_value *cv, *hv = NULL, *old;
	struct flow_set *fs = NULL;
	__u64 *fe;
	struct tcphdr *th = NULL;
	struct svc_info *svc;
	struct real_info *real;
	struct sched_scratch *sc;
	__u32 real_id, zero = 0, fill = FLOW_FILL_PROBED, ticks, stamp = 0;
	__u64 now = 0, key = 0;
	int moved = 0;

	/* To maybe a VIP, or maybe a probe reply from one (handle_ipv4). */
	if (read_flow(c, iph, &th, &ck))
		return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
	if (!cfg)   /* never (an array entry), but the established path reads it */
		return finish(XDP_PASS, COUNTER_PASS_NOT_PROGRAMMED);

	/* This CPU's flow_cache: an established TCP connection's segment without SYN, FIN or
	 * RST (no state change), or a UDP flow's datagram, whose table entry this CPU read
	 * less than flow_sync_ns ago, goes where the entry said if that server is one of
	 * the packet's service (two services' flow keys may be equal), its flags read as
	 * ever. Anything else, and each flow once per flow_sync_ns, takes the tables below
	 * (which refresh the entry's last_seen_ns and the cache). */
	now = now_ticks();
	ticks = now;
	now *= TICK_NS;
	if (!th || !(th->syn | th->fin | th->rst)) {
		key = flow_hash(flow_key(&ck), cfg);
		stamp = flow_stamp(ticks, cfg);
		fs = flow_probe(key, cfg, stamp, &fe, &fill);
		if (fe) {
			real_id = *fe & FLOW_REAL_MASK;
			real = reals.lookup(&real_id);
			if (real && serves(real, svc_bits(&ck)) &&
			    (real->flags & (REAL_F_MAC_KNOWN | REAL_F_RESCHEDULE)) == REAL_F_MAC_KNOWN)
				return forward(eth, iph, cfg, real, real_id, 0);
		}
	}

	/* One lookup: TCP in conn_table, UDP in udp_table. Two call sites, each with its
	 * own map, so that the verifier inlines each hash lookup: a lookup on a map chosen
	 * at run time (which LLVM makes of a ternary, or of two identical branches) goes
	 * through the helper instead and costs ~18 ns more per packet (bench). The empty
	 * asm keeps LLVM from merging the two calls. */
	if (th) {
		cv = conn_table.lookup(&ck);
	} else {
		cv = udp_table.lookup(&ck);
		asm volatile("" ::: "memory");
	}
	if (cv) {
		if (conn_is_live(cv, th, cfg, now)) {
			real_id = cv->real_id;
			real = reals.lookup(&real_id);
			if (real && (real->flags & REAL_F_RESCHEDULE)) {
				/* Its server failed a health check, and its service says
				 * on_failure = "reschedule": the packet goes to a server picked
				 * below (a TCP connection's new server resets it at once). */
				moved = 1;
			} else if (real && (real->flags & REAL_F_MAC_KNOWN)) {
				cv->last_seen_ns = now;
				if (th)
					follow_tcp_state(cv, th);
				if (cv->flags & CONN_F_PERSISTENT)
					touch_template(&ck, real_id, now);
				if (fs && (cv->state == CONN_ESTABLISHED || cv->state == CONN_UDP))
					flow_remember(fs, key, cv->real_id, cfg,
						      stamp, fill);
				return forward(eth, iph, cfg, real, real_id, 0);
			} else if (th && !is_new_tcp(th)) {
				/* Its server is gone from the segment: a SYN or a datagram may
				 * start over elsewhere; anything else waits, without keeping the
				 * entry alive. */
				return finish(XDP_DROP, COUNTER_DROP_REAL_MAC_UNKNOWN);
			}
		}
	}

	/* A half-open TCP connection (syn_table) is followed like an established one, also
	 * after its VIP left the config (IPVS keeps a removed service's connections).
	 * Traffic to the director itself never gets here (the VIP pre-filter in handle_ipv4),
	 * but for a probe reply. */
	if (th && !cv) {
		hv = syn_find(&ck, cfg);
		if (hv) {
			int act = follow_half_open(hv, &ck, th, eth, iph, cfg, &moved);

			if (act >= 0)
				return act;
		}
	}

	/* No live connection to follow: from here on the frame needs the services. */
	if (!programmed(cfg))
		return finish(XDP_PASS, COUNTER_PASS_NOT_PROGRAMMED);
	fill_svc_key(&sk, &ck);
	svc = services.lookup(&sk);
	if (!svc) {
		if (vips.lookup(&ck.daddr))
			return finish(XDP_PASS, COUNTER_PASS_VIP_OTHER_PORT);
		if (th && is_probe_reply(&ck))
			return pass_probe_reply(eth);
		return finish(XDP_PASS, COUNTER_PASS_NOT_VIP);
	}
	/* A TCP segment past the SYN with no connection: passed (IPVS's default), unless
	 * the service is sloppy (mh, sh), whose hash gives it the real server any director
	 * would have given it. */
	if (th && !is_new_tcp(th) && !moved && !(svc->flags & SVC_F_SLOPPY))
		return finish(XDP_PASS, COUNTER_PASS_TCP_NO_CONN);
	sc = sched_scratch.lookup(&zero);
	if (!sc)    /* never (an array entry) */
		return finish(XDP_DROP, COUNTER_DROP_NO_REAL_SERVER);
	sc->now = now;
	old = cv ? cv : hv;
	sc->replaces = old != NULL;
	sc->half_open = !cv && hv;
	sc->moved = moved;
	sc->past_syn = th && !is_new_tcp(th);
	sc->pickup_state = th ? tcp_next_state(CONN_ESTABLISHED, th) : 0;
	if (old) {
		sc->old_real = old->real_id;
		sc->old_state = old->state;
	}
	if (svc->sched == SCHED_WRR && !(svc->flags & SVC_F_THRESHOLDS))
		return new_connection(eth, iph, &ck, cfg, svc, sc, 0);
	sched_prog.call(ctx, 0);
	/* Only if xdp_sched is missing from sched_prog, which lb/ never lets happen. */
	return finish(XDP_DROP, COUNTER_DROP_NO_REAL_SERVER);
}

struct l4ports {
	__be16 source;
	__be16 dest;
};
DEFINE_PARSER(l4ports, struct l4ports)

/* Whether a TCP/UDP frame to no VIP may be a probe reply (TCP, to a probe port, from
 * maybe a VIP), read without moving the cursor; a truncated header is not one. */
static __always_inline int maybe_probe_reply(const struct hdr_cursor *c,
					     const struct iphdr *iph)
{
	struct hdr_cursor peek = *c;
	struct l4ports *ports;

	if (iph->protocol != IPPROTO_TCP)
		return 0;
	ports = parse_l4ports(&peek);
	return ports && probe_port(ports->dest) && maybe_vip(iph->saddr);
}

/* An ICMP error to a VIP is about a packet a real server sent from the VIP (replies go
 * straight from the real servers): "fragmentation needed" from a router on the reply
 * path, most of all. Only that real server can act on it (lower its path MTU), so it
 * goes there, as IPVS, Katran and vc5 do: the quoted header, reversed, is the
 * connection's key. The error neither creates nor refreshes a connection. */
static __always_inline int handle_icmp_error(struct hdr_cursor *c, struct ethhdr *eth,
					     struct iphdr *iph)
{
	struct iphdr *inner = parse_iphdr(c);
	struct conn_key ck = {};
	struct conn_value *cv;
	struct l4ports *ports;
	struct real_info *real;
	struct settings *cfg;
	__u32 real_id;

	if (!inner || inner->ihl != 5 || inner->version != 4 ||
	    (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP))
		return finish(XDP_PASS, COUNTER_PASS_ICMP_ERROR_NO_CONN);
	ports = parse_l4ports(c);
	if (!ports)
		return finish(XDP_PASS, COUNTER_PASS_ICMP_ERROR_NO_CONN);
	ck.saddr = inner->daddr;
	ck.daddr = inner->saddr;
	ck.sport = ports->dest;
	ck.dport = ports->source;
	ck.proto = inner->protocol;
	cfg = get_settings();
	if (!cfg)
		return finish(XDP_PASS, COUNTER_PASS_ICMP_ERROR_NO_CONN);
	if (inner->protocol == IPPROTO_TCP) {
		cv = conn_table.lookup(&ck);
		if (!cv)
			cv = syn_find(&ck, cfg);
	} else {
		cv = udp_table.lookup(&ck);
	}
	if (!cv || !conn_is_live(cv, NULL, cfg, now_ns()))
		return finish(XDP_PASS, COUNTER_PASS_ICMP_ERROR_NO_CONN);
	real_id = cv->real_id;
	real = reals.lookup(&real_id);
	if (!real || !(real->flags & REAL_F_MAC_KNOWN))
		return finish(XDP_DROP, COUNTER_DROP_REAL_MAC_UNKNOWN);
	copy_mac(eth->h_dest, real->mac);
	copy_mac(eth->h_source, cfg->mac);
	return finish(XDP_TX, COUNTER_TX_ICMP_ERROR);
}

static __always_inline int handle_ipv4(struct xdp_md *ctx, struct hdr_cursor *c,
				       struct ethhdr *eth)
{
	struct iphdr *iph = parse_iphdr(c);
	struct settings *cfg;
	int l4;

	if (!iph || iph->version != 4 || iph->ihl < 5)
		return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
	if (is_fragment(iph))
		return finish(XDP_PASS, COUNTER_PASS_FRAGMENT);
	if (iph->ihl != 5)
		return finish(XDP_PASS, COUNTER_PASS_IP_OPTIONS);
	/* TCP or UDP to no VIP, and not TCP to a probe port from maybe a VIP (a probe reply,
	 * handle_l4), is not ours, whoever it was sent to: it leaves here, before the MAC test
	 * and the TCP/UDP header (the settings are read only to name its counter;
	 * bench/HISTORY.md, eleventh round). */
	l4 = iph->protocol == IPPROTO_TCP || iph->protocol == IPPROTO_UDP;
	if (l4 && !maybe_vip(iph->daddr) && !maybe_probe_reply(c, iph))
		return finish(XDP_PASS, programmed(get_settings()) ? COUNTER_PASS_NOT_VIP
								   : COUNTER_PASS_NOT_PROGRAMMED);
	/* Only frames sent to the director are balanced: what a flooding switch, a
	 * broadcast or another director's forward shows us is not ours to send on. */
	cfg = get_settings();
	if (programmed(cfg) && !same_mac(eth->h_dest, cfg->mac))
		return finish(XDP_PASS, COUNTER_PASS_NOT_OUR_MAC);
	if (l4)
		return handle_l4(ctx, c, eth, iph, cfg);

	switch (iph->protocol) {
	case IPPROTO_ICMP:
		return handle_icmp(c, eth, iph);
	default: {
		__be32 daddr = iph->daddr;

		if (!programmed(cfg))
			return finish(XDP_PASS, COUNTER_PASS_NOT_PROGRAMMED);
		if (vips.lookup(&daddr))
			return finish(XDP_PASS, COUNTER_PASS_VIP_OTHER_PORT);
		return finish(XDP_PASS, COUNTER_PASS_NOT_VIP);
	}
	}
}

int xdp_main(struct xdp_md *ctx)
{
	struct hdr_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct ethhdr *eth = parse_ethhdr(&c);
	__be16 proto;

	if (!eth)
		return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
	/* One 16-bit load: struct ethhdr is packed, and clang reads its h_proto byte by byte. */
	proto = *(const __be16 *)((const __u8 *)eth + offsetof(struct ethhdr, h_proto));
	if (proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(ctx, &c, eth);
	if (proto == bpf_htons(ETH_P_ARP))
		return handle_arp(&c, eth);
	return finish(XDP_PASS, COUNTER_PASS_NOT_IPV4);
}

/* The new connection of a service whose scheduler is not plain wrr/rr, tail-called from
 * xdp_main's handle_l4() (sched_prog slot 0, filled by lb/director/dataplane.py) once it
 * has found no live connection, the service, and a frame that may start one. It reads
 * the frame again, and what xdp_main found in conn_table from sched_scratch. */
int xdp_sched(struct xdp_md *ctx)
{
	struct hdr_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct ethhdr *eth = parse_ethhdr(&c);
	struct conn_key ck = {};
	struct svc_key sk = {};
	struct tcphdr *th = NULL;
	struct sched_scratch *sc;
	struct settings *cfg;
	struct svc_info *svc;
	struct iphdr *iph;
	__u32 zero = 0;

	if (!eth)
		return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
	iph = parse_iphdr(&c);
	if (!iph || read_flow(&c, iph, &th, &ck))
		return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
	cfg = get_settings();
	fill_svc_key(&sk, &ck);
	svc = services.lookup(&sk);
	sc = sched_scratch.lookup(&zero);
	if (!cfg || !svc || !sc)   /* never: xdp_main found them a moment ago */
		return finish(XDP_DROP, COUNTER_DROP_NO_REAL_SERVER);
	return new_connection(eth, iph, &ck, cfg, svc, sc, 1);
}

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

typedef __u8 uint8_t;
typedef __u16 uint16_t;
typedef __u32 uint32_t;
typedef __u64 uint64_t;

#include "dr_lb_consts.h"
#include "dr_lb_abi.h"
#include "dr_lb_maps.h"

#define NS_PER_S 1000000000ULL

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
	__builtin_memcpy(&head, cfg->mac, sizeof(head));
	__builtin_memcpy(&tail, cfg->mac + sizeof(head), sizeof(tail));
	return (head | tail) != 0;
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

	arp->op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	arp->tpa = arp->spa;
	__builtin_memcpy(arp->sha, cfg->mac, ETH_ALEN);
	arp->spa = vip;
	__builtin_memcpy(eth->h_dest, arp->tha, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->mac, ETH_ALEN);
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

/* A new connection's real server: the persistence template if one is live and its
 * server still takes connections, else the next slot of the service's WRR cycle.
 * Returns a real_id, or -1 when no server can be chosen: an empty cycle, or (never with
 * lb/config.py's limits) a service whose id or cycle lies outside wrr_pos or wrr_seq. */
static __always_inline long pick_real(struct svc_info *svc, struct persist_key *pk,
				     __u64 now)
{
	struct persist_value *pv, fresh = {};
	struct real_info *real;
	struct wrr_pos *wp;
	__u32 pos, slot, *real_id, svc_id = svc->id;

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
	if (svc->seq_len == 0)
		return -1;
	wp = wrr_pos.lookup(&svc_id);
	if (!wp)
		return -1;
	bpf_spin_lock(&wp->lock);
	pos = wp->pos;
	if (pos >= svc->seq_len)
		pos = 0;
	wp->pos = pos + 1 >= svc->seq_len ? 0 : pos + 1;
	bpf_spin_unlock(&wp->lock);

	slot = svc->seq_offset + pos;
	real_id = wrr_seq.lookup(&slot);
	if (!real_id)
		return -1;
	if (svc->persist_timeout_s) {
		fresh.last_seen_ns = now;
		fresh.real_id = *real_id;
		persist_table.update(pk, &fresh);
	}
	return *real_id;
}

static __always_inline void add_stats(struct stats *s, int new_conn, __u64 bytes)
{
	if (!s)
		return;
	s->conns += new_conn;
	s->packets += 1;
	s->bytes += bytes;
}

/* Send the frame to its real server: only the MACs change, as in LVS-DR. */
static __always_inline int forward(struct ethhdr *eth, struct iphdr *iph,
				   struct settings *cfg, struct real_info *real, __u32 real_id,
				   __u32 svc_id, int new_conn)
{
	add_stats(svc_stats.lookup(&svc_id), new_conn, bpf_ntohs(iph->tot_len));
	add_stats(real_stats.lookup(&real_id), new_conn, bpf_ntohs(iph->tot_len));
	__builtin_memcpy(eth->h_dest, real->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->mac, ETH_ALEN);
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

/* A real server's SYN-ACK or RST to a DR-path probe: from a VIP to a probe port. Nothing
 * else comes from a VIP to the director (a real server answers clients from the VIP, and
 * the director is never a client of its own VIPs). */
static __always_inline int is_probe_reply(const struct conn_key *ck)
{
	__u32 saddr = ck->saddr;
	__u16 dport = bpf_ntohs(ck->dport);

	return dport >= PROBE_PORT_MIN && dport <= PROBE_PORT_MAX && vips.lookup(&saddr);
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

/* TCP/UDP: the connection table first (the established path), then the services. */
static __always_inline int handle_l4(struct hdr_cursor *c, struct ethhdr *eth,
				     struct iphdr *iph)
{
	struct svc_key sk = {};
	struct conn_key ck = {};
	struct persist_key pk = {};
	struct conn_value *cv, fresh = {};
	struct tcphdr *th = NULL;
	struct udphdr *uh;
	struct svc_info *svc;
	struct settings *cfg;
	struct real_info *real;
	__u32 real_id;
	__u64 now = 0;
	long picked;
	int moved = 0;

	if (iph->protocol == IPPROTO_TCP) {
		th = parse_tcphdr(c);
		if (!th || th->doff < 5)
			return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
		ck.sport = th->source;
		ck.dport = th->dest;
	} else {
		uh = parse_udphdr(c);
		if (!uh)
			return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
		ck.sport = uh->source;
		ck.dport = uh->dest;
	}
	ck.saddr = iph->saddr;
	ck.daddr = iph->daddr;
	ck.proto = iph->protocol;

	cfg = get_settings();
	if (!cfg)   /* never (an array entry), but the established path reads it */
		return finish(XDP_PASS, COUNTER_PASS_NOT_PROGRAMMED);

	cv = conn_table.lookup(&ck);
	if (cv) {
		now = bpf_ktime_get_coarse_ns();
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
					cv->state = tcp_next_state(cv->state, th);
				if (cv->flags & CONN_F_PERSISTENT)
					touch_template(&ck, real_id, now);
				return forward(eth, iph, cfg, real, real_id, cv->svc_id, 0);
			} else if (th && !is_new_tcp(th)) {
				/* Its server is gone from the segment: a SYN or a datagram may
				 * start over elsewhere; anything else waits, without keeping the
				 * entry alive. */
				return finish(XDP_DROP, COUNTER_DROP_REAL_MAC_UNKNOWN);
			}
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
	if (th && !is_new_tcp(th) && !moved)
		return finish(XDP_PASS, COUNTER_PASS_TCP_NO_CONN);
	if (svc->persist_timeout_s)
		fill_persist_key(&pk, &ck, svc);
	if (!cv)
		now = bpf_ktime_get_coarse_ns();
	picked = pick_real(svc, &pk, now);
	if (picked < 0)
		return finish(XDP_DROP, COUNTER_DROP_NO_REAL_SERVER);

	fresh.last_seen_ns = now;
	fresh.real_id = picked;
	fresh.svc_id = svc->id;
	/* A moved TCP connection is past its SYN: its new server will reset it. */
	fresh.state = !th ? CONN_UDP : is_new_tcp(th) ? CONN_SYN_RECV : CONN_CLOSE;
	fresh.flags = svc->persist_timeout_s ? CONN_F_PERSISTENT : 0;
	real_id = fresh.real_id;
	real = reals.lookup(&real_id);
	if (!real || !(real->flags & REAL_F_MAC_KNOWN))
		return finish(XDP_DROP, COUNTER_DROP_REAL_MAC_UNKNOWN);
	if (conn_table.update(&ck, &fresh))
		return finish(XDP_DROP, COUNTER_DROP_CONN_TABLE_ERROR);
	if (!cv)
		count(COUNTER_CONN_TABLE_INSERT);
	if (moved)
		count(COUNTER_CONN_RESCHEDULED);
	return forward(eth, iph, cfg, real, real_id, fresh.svc_id, 1);
}

static __always_inline int handle_ipv4(struct hdr_cursor *c, struct ethhdr *eth)
{
	struct iphdr *iph = parse_iphdr(c);

	if (!iph || iph->version != 4 || iph->ihl < 5)
		return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
	if (is_fragment(iph))
		return finish(XDP_PASS, COUNTER_PASS_FRAGMENT);
	if (iph->ihl != 5)
		return finish(XDP_PASS, COUNTER_PASS_IP_OPTIONS);

	switch (iph->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		return handle_l4(c, eth, iph);
	case IPPROTO_ICMP:
		return handle_icmp(c, eth, iph);
	default: {
		__be32 daddr = iph->daddr;

		if (!programmed(get_settings()))
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

	if (!eth)
		return finish(XDP_PASS, COUNTER_PASS_MALFORMED);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(&c, eth);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return handle_arp(&c, eth);
	return finish(XDP_PASS, COUNTER_PASS_NOT_IPV4);
}

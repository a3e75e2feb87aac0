/* Bounds-checked header parsing with a cursor (after xdp-tools' parsing_helpers.h).
 * Each parse_*() checks that the whole header lies inside the frame, advances the
 * cursor and returns a pointer to the header, or NULL when the frame is too short. */
#ifndef DR_LB_PARSING_H
#define DR_LB_PARSING_H

struct hdr_cursor {
	void *pos;
	void *end;
};

/* The ARP body for Ethernet/IPv4; packed because spa/tpa sit at odd offsets. */
struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

#define DEFINE_PARSER(name, type)                                        \
	static __always_inline type *parse_##name(struct hdr_cursor *c) \
	{                                                                \
		type *h = c->pos;                                        \
		if ((void *)(h + 1) > c->end)                            \
			return NULL;                                     \
		c->pos = h + 1;                                          \
		return h;                                                \
	}

DEFINE_PARSER(ethhdr, struct ethhdr)
DEFINE_PARSER(arp, struct arp_ipv4)
DEFINE_PARSER(iphdr, struct iphdr)
DEFINE_PARSER(tcphdr, struct tcphdr)
DEFINE_PARSER(udphdr, struct udphdr)
DEFINE_PARSER(icmphdr, struct icmphdr)

static __always_inline int is_fragment(const struct iphdr *iph)
{
	return (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
}

#endif

/* Bounds-checked header parsing with a cursor (after xdp-tools' parsing_helpers.h).
 * Each parse_*() checks that the whole header lies inside the frame, advances the
 * cursor and returns a pointer to the header, or NULL when the frame is too short.
 *
 * Self-contained: it includes or defines everything it uses, so a file may include it
 * alone. The include paths are bcc's (the kernel tree's uapi/ directory). */
#ifndef DR_LB_PARSING_H
#define DR_LB_PARSING_H

#include <uapi/linux/types.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Byte order as macros (bcc's helpers have them only as functions), usable in
 * constant expressions. */
#ifndef bpf_htons
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define bpf_htons(x) ((__be16)__builtin_bswap16(x))
#define bpf_ntohs(x) ((__u16)__builtin_bswap16(x))
#else
#define bpf_htons(x) ((__be16)(x))
#define bpf_ntohs(x) ((__u16)(x))
#endif
#endif

/* iphdr.frag_off's flags (the kernel's net/ip.h, which is not UAPI). */
#ifndef IP_MF
#define IP_MF 0x2000     /* more fragments follow */
#define IP_OFFSET 0x1FFF /* fragment offset, in 8-byte units */
#endif

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

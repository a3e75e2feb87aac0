/* A MAC-swap reflector that first reads one line of an array, at random by the frame's
 * flow (splitmix64 of the source address and ports), as the flow cache's set of a flow is
 * (its own hash is one multiply since the eleventh round; any good hash does here):
 * what one cold line per packet costs on this host (bench/cold_line.py). LINES (a power of
 * two) lines of 64 bytes; with INNER, the array is OUTERN maps of INNER lines (kmalloc'ed
 * when small: in the direct map's huge pages) behind an array of maps. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>

struct line {
	__u64 a[8];
};
#ifdef INNER
BPF_ARRAY(inner, struct line, INNER);
BPF_ARRAY_OF_MAPS(outer, "inner", OUTERN);
#define LINES (OUTERN * INNER)
#else
BPF_F_TABLE("array", __u32, struct line, big, LINES, FLAGS);
#endif

int xdp_cold_line(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	__u32 *ports = (void *)(iph + 1);
	struct line *v;
	__u8 tmp[6];
	__u64 z;
	__u32 idx;

	if ((void *)(ports + 1) > end)
		return XDP_PASS;
	z = (__u64)iph->saddr << 32 | *ports;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	z ^= z >> 31;
	idx = z & (LINES - 1);
#ifdef INNER
	{
		__u32 oi = idx / INNER, ii = idx % INNER;
		void *im = outer.lookup(&oi);

		if (!im)
			return XDP_PASS;
		v = bpf_map_lookup_elem(im, &ii);
	}
#else
	v = big.lookup(&idx);
#endif
	if (!v)
		return XDP_PASS;
	if (v->a[0] == 12345)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, 6);
	__builtin_memcpy(eth->h_dest, eth->h_source, 6);
	__builtin_memcpy(eth->h_source, tmp, 6);
	return XDP_TX;
}

/* The benchmark's own XDP programs (one bcc module, bench/measure.py loads it):
 *
 *   xdp_gen    the traffic generator: run through bpf_prog_test_run_opts with live
 *              frames (BPF_F_TEST_XDP_LIVE_FRAMES), it sends each frame out of the
 *              interface it is run on, the i-th frame of a run from flow i % flows
 *              (its first FRAME_HEAD bytes restored: a recycled page keeps what the
 *              receiver wrote into it);
 *   xdp_reset  the test-run harness ("reset method"): restores the first FRAME_HEAD bytes
 *              of the original frame (XDP_TX rewrote them in place on the repeat before),
 *              sets the flow the same way, and tail-calls the program under test
 *              (progs[0]). Its own cost is measured against xdp_tx (progs[0] = xdp_tx)
 *              in the same round and subtracted;
 *   xdp_tx     returns XDP_TX, nothing else;
 *   xdp_sink   counts and drops what comes back (native, on the generator's veth), and
 *              every SINK_MARK_EVERY frames notes the time and the count (sink_marks):
 *              the rate between its first and last mark of a run is the path's own,
 *              without what a live test run costs before its first frame and after
 *              its last (~16-22 ms a run here, which a wall-clock rate included).
 *
 * The i-th frame of a run is from flow i % flows, or with a stride, from flow
 * (i % flows) * stride % flows (a stride coprime to flows: each flow once per pass, in
 * an order unrelated to the one the connections were made in).
 * Flow i of a frame: flow_slot(i) = j, source address base_saddr + j / 16384 and source
 * port base_sport + j % 16384, the IPv4 header checksum recomputed so that the kernel's
 * own forwarding (the baseline) accepts the frame. Frames are built by bench/frames.py.
 */
#include <uapi/linux/bpf.h>

#define FRAME_HEAD 64
#define PORTS_PER_ADDR 16384
#define IP_OFF 14

struct gen_cfg {
	__u32 flows;        /* flows to cycle through; 1: the frame as built */
	__u32 base_saddr;   /* host byte order */
	__u32 base_sport;   /* host byte order */
	__u32 stride;       /* flow i of a run is flow (i * stride) % flows: 0 or 1, in order */
	__u8 frame[FRAME_HEAD];   /* the frame's first bytes, as built */
};

BPF_ARRAY(gen_cfg, struct gen_cfg, 1);
/* Not per-CPU: a test run may move to another CPU when it yields, and must carry on
 * with the next flow there. One run at a time, so a plain increment is enough. */
BPF_ARRAY(gen_seq, __u64, 1);
BPF_PERCPU_ARRAY(sink_count, __u64, 1);

#define SINK_MARK_EVERY 1024
struct sink_marks {
	__u64 first_ns;     /* bpf_ktime_get_ns at the first mark since zeroed; 0: none yet */
	__u64 first_count;  /* sink_count then */
	__u64 last_ns;      /* and at the last */
	__u64 last_count;
};
BPF_PERCPU_ARRAY(sink_marks, struct sink_marks, 1);
BPF_PROG_ARRAY(progs, 1);

/* Where flow i's address and port are taken from, for a pass of at most FLOW_SLOTS flows:
 * a fixed bijection of [0, FLOW_SLOTS) (odd multipliers and xor-shifts modulo 2^20), so
 * that the flows are scattered over the 64 addresses and 16,384 ports a run may use, as
 * clients' are, rather than an arithmetic progression: a multiplicative hash spreads a
 * progression over its sets more evenly than a random set of clients (100,000 flows in
 * 2^14 sets of 8: 1.1 % of them in a set already full, against 5.5 % for random ones; with
 * the slots 5.1 %), which would flatter it. Every SYN new (UNBOUNDED) keeps i. */
#define FLOW_SLOTS_LOG2 20
#define FLOW_SLOTS (1u << FLOW_SLOTS_LOG2)

static __always_inline __u32 flow_slot(__u32 i, __u32 flows)
{
	if (flows > FLOW_SLOTS)
		return i;
	i = (i * 0x9E3779B1u) & (FLOW_SLOTS - 1);
	i ^= i >> 10;
	i = (i * 0x85EBCA77u) & (FLOW_SLOTS - 1);
	return i ^ (i >> 10);
}

static __always_inline int set_flow(struct xdp_md *ctx, struct gen_cfg *cfg, int restore)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0, i, saddr;
	__u16 *words;
	__u64 *seq;
	__u32 sum = 0;

	if (data + FRAME_HEAD > data_end)
		return -1;
	if (restore)
		__builtin_memcpy(data, cfg->frame, FRAME_HEAD);
	if (cfg->flows <= 1)
		return 0;
	seq = gen_seq.lookup(&zero);
	if (!seq)
		return -1;
	i = *seq % cfg->flows;
	*seq += 1;
	if (cfg->stride > 1)
		i = (__u64)i * cfg->stride % cfg->flows;
	i = flow_slot(i, cfg->flows);
	saddr = bpf_htonl(cfg->base_saddr + i / PORTS_PER_ADDR);
	__builtin_memcpy(data + IP_OFF + 12, &saddr, 4);
	*(__u16 *)(data + IP_OFF + 20) = bpf_htons(cfg->base_sport + i % PORTS_PER_ADDR);
	words = data + IP_OFF;
	words[5] = 0;
#pragma unroll
	for (int w = 0; w < 10; w++)
		sum += words[w];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	words[5] = (__u16)~sum;
	return 0;
}

int xdp_gen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct gen_cfg *cfg = gen_cfg.lookup(&zero);

	/* A live frame's page is recycled with whatever the receiver left in it (the
	 * kernel's forwarding rewrites the MACs and the TTL in place), so it is restored. */
	if (!cfg || set_flow(ctx, cfg, 1))
		return XDP_ABORTED;
	return XDP_TX;
}

int xdp_reset(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct gen_cfg *cfg = gen_cfg.lookup(&zero);

	if (!cfg || set_flow(ctx, cfg, 1))
		return XDP_ABORTED;
	progs.call(ctx, 0);
	return XDP_ABORTED;
}

int xdp_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

int xdp_sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *n = sink_count.lookup(&zero), now;
	struct sink_marks *m;

	if (!n)
		return XDP_DROP;
	*n += 1;
	if (*n % SINK_MARK_EVERY)
		return XDP_DROP;
	m = sink_marks.lookup(&zero);
	if (!m)
		return XDP_DROP;
	now = bpf_ktime_get_ns();
	if (!m->first_ns) {
		m->first_ns = now;
		m->first_count = *n;
	}
	m->last_ns = now;
	m->last_count = *n;
	return XDP_DROP;
}

/* The test-run harness for new connections ("reset method", /work/shared notes): run by
 * bpf_prog_test_run_opts with repeat = N, xdp_newflow restores the frame's first
 * FRAME_HEAD bytes (the program under test rewrote the MACs in place on the repeat
 * before), gives it the next flow (source address base + i / 65536, source port
 * i % 65536: a connection never seen), and tail-calls the program under test
 * (progs[0]: dr-lb's xdp_main). Its own cost is measured in the same round with
 * progs[0] = xdp_tx and subtracted. With flows = 0 the frame keeps its own flow (an
 * established connection, the same harness cost). */
#include <uapi/linux/bpf.h>

#define FRAME_HEAD 54   /* Ethernet, IPv4 and TCP headers: the whole of a SYN or an ACK */

struct newflow_cfg {
	__u32 flows;        /* 0: keep the frame's flow */
	__u32 base_saddr;   /* host byte order */
	__u8 frame[FRAME_HEAD];
};

BPF_ARRAY(newflow_cfg, struct newflow_cfg, 1);
BPF_PERCPU_ARRAY(newflow_seq, __u64, 1);
BPF_PROG_ARRAY(progs, 1);

int xdp_newflow(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0, saddr;
	struct newflow_cfg *cfg = newflow_cfg.lookup(&zero);
	__u64 *seq = newflow_seq.lookup(&zero);
	__u64 i;

	if (!cfg || !seq || data + FRAME_HEAD > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, cfg->frame, FRAME_HEAD);
	if (cfg->flows) {
		i = *seq;
		*seq = i + 1;
		saddr = bpf_htonl(cfg->base_saddr + (__u32)(i >> 16));
		__builtin_memcpy(data + 14 + 12, &saddr, 4);        /* IPv4 source */
		*(__u16 *)(data + 14 + 20) = bpf_htons((__u16)i);   /* TCP source port */
	}
	progs.call(ctx, 0);
	return XDP_ABORTED;
}

int xdp_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

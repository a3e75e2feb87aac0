/* IPVS's hash functions, so that sh and mh choose what IPVS (and lb/director/scheduler.py,
 * which builds their tables) would for the same client:
 * - ipvs_hash_32() of include/linux/hash.h (ip_vs_sh_hashkey);
 * - hsiphash() of one u32 on a 64-bit kernel, which lib/siphash.c makes SipHash-1-3
 *   (ip_vs_mh_hashkey).
 * Self-contained: fixed-width types only. Prefixed ipvs_: bcc's kernel headers declare
 * the kernel's own rol64() and hsiphash_1u32().
 */
#ifndef DR_LB_HASHING_H
#define DR_LB_HASHING_H

#include <linux/types.h>

#define IPVS_GOLDEN_RATIO_32 0x61C88647U

static __always_inline __u32 ipvs_hash_32(__u32 val, unsigned int bits)
{
	return (val * IPVS_GOLDEN_RATIO_32) >> (32 - bits);
}

static __always_inline __u64 ipvs_rol64(__u64 word, unsigned int shift)
{
	return (word << shift) | (word >> (64 - shift));
}

#define IPVS_SIPROUND(v0, v1, v2, v3) do { \
	v0 += v1; v1 = ipvs_rol64(v1, 13); v1 ^= v0; v0 = ipvs_rol64(v0, 32); \
	v2 += v3; v3 = ipvs_rol64(v3, 16); v3 ^= v2; \
	v0 += v3; v3 = ipvs_rol64(v3, 21); v3 ^= v0; \
	v2 += v1; v1 = ipvs_rol64(v1, 17); v1 ^= v2; v2 = ipvs_rol64(v2, 32); \
} while (0)

/* ipvs_hsiphash_u32(first, {k0, k1}) with BITS_PER_LONG == 64. */
static __always_inline __u32 ipvs_hsiphash_u32(__u32 first, __u64 k0, __u64 k1)
{
	__u64 v0 = 0x736f6d6570736575ULL ^ k0;
	__u64 v1 = 0x646f72616e646f6dULL ^ k1;
	__u64 v2 = 0x6c7967656e657261ULL ^ k0;
	__u64 v3 = 0x7465646279746573ULL ^ k1;
	__u64 b = ((__u64)4 << 56) | first;

	v3 ^= b;
	IPVS_SIPROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	IPVS_SIPROUND(v0, v1, v2, v3);
	IPVS_SIPROUND(v0, v1, v2, v3);
	IPVS_SIPROUND(v0, v1, v2, v3);
	return (__u32)((v0 ^ v1) ^ (v2 ^ v3));
}

#endif

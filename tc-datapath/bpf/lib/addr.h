/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Addresses as the maps hold them (16 bytes, IPv4 v4-mapped), and the
 * hairpin source.
 */
#ifndef SLUICE_LIB_ADDR_H
#define SLUICE_LIB_ADDR_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>
#include "../layout.h"

static __always_inline void v4_mapped(__u8 out[16], __be32 a)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &a, 4);
}

/* An IPv4 address in the 16-byte form (::ffff:a.b.c.d). */
static __always_inline int is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline void hairpin_addr(__u8 out[16], int v6)
{
	if (!v6) {
		v4_mapped(out, bpf_htonl(HAIRPIN_V4));
	} else {
		const __u8 prefix[4] = { HAIRPIN_V6_PREFIX };

		__builtin_memset(out, 0, 16);
		__builtin_memcpy(out, prefix, 4);
		out[15] = 1;
	}
}

static __always_inline int is_v6_link_local_or_any(const __u8 *a)
{
	const __u64 *w = (const __u64 *)a;

	return (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) || (w[0] == 0 && w[1] == 0);
}

#endif

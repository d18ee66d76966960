/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Rewriting addresses and ports with their checksums kept right, and
 * checksums computed from scratch.
 */
#ifndef SLUICE_LIB_CSUM_H
#define SLUICE_LIB_CSUM_H

#include <stddef.h>
#include "parse.h"

/* bpf_csum_diff's 32-bit one's-complement sum, folded into a checksum. */
static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 c = (__u32)sum;

	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

static __always_inline __u32 l4_csum_off(const struct pkt *p)
{
	return p->l4_off + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) : offsetof(struct udphdr, check));
}

/* What a rewrite did: on failure the packet is half rewritten and must be
 * dropped. */
enum rewrite_result {
	REWRITE_OK = 0,
	REWRITE_FAILED = 1,
};

/* Replace one address of the packet (daddr when `dst`, else saddr) and
 * one port, fixing the IPv4 header checksum and the L4 checksum (pseudo
 * header included). A fragment after the first has no L4 header: only its
 * address changes (the first fragment's L4 checksum covers the datagram,
 * and its rewrite moved it for the new address). The helpers handle CHECKSUM_PARTIAL packets from local
 * sockets (veth/macvlan offload) as well as complete checksums. */
static __always_inline enum rewrite_result rewrite(struct __sk_buff *skb, const struct pkt *p, __u32 l3_off, int dst,
				   const __u8 new_addr[16], __be16 new_port)
{
	const __u8 *old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u32 csum_off = l4_csum_off(p);
	__u64 mangled0 = p->proto == IPPROTO_UDP && !p->v6 ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 port_off = p->l4_off + (dst ? 2 : 0);
	int l4 = p->fragment != FRAG_LATER;

	if (!p->v6) {
		__be32 o, n;
		__u32 addr_off = l3_off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

		__builtin_memcpy(&o, old_addr + 12, 4);
		__builtin_memcpy(&n, new_addr + 12, 4);
		if (o != n) {
			if (l4 && bpf_l4_csum_replace(skb, csum_off, o, n, BPF_F_PSEUDO_HDR | mangled0 | sizeof(n)) < 0)
				return REWRITE_FAILED;
			if (bpf_l3_csum_replace(skb, l3_off + offsetof(struct iphdr, check), o, n, sizeof(n)) < 0)
				return REWRITE_FAILED;
			if (bpf_skb_store_bytes(skb, addr_off, &n, sizeof(n), 0) < 0)
				return REWRITE_FAILED;
		}
	} else {
		__u32 addr_off = l3_off + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));
		__u8 o[16], n[16];
		__s64 diff;

		__builtin_memcpy(o, old_addr, 16);
		__builtin_memcpy(n, new_addr, 16);
		if (!addr_eq(o, n)) {
			diff = bpf_csum_diff((__be32 *)o, 16, (__be32 *)n, 16, 0);
			if (l4 && bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR) < 0)
				return REWRITE_FAILED;
			if (bpf_skb_store_bytes(skb, addr_off, n, 16, 0) < 0)
				return REWRITE_FAILED;
		}
	}
	if (l4 && old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled0 | sizeof(new_port)) < 0)
			return REWRITE_FAILED;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
			return REWRITE_FAILED;
	}
	return REWRITE_OK;
}

#endif

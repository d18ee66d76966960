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

/* What IPv4 NAT changes, contiguous in a header without options: the
 * header checksum, the addresses, and the ports that follow. */
struct nat_span4 {
	__be16 check;
	__be16 saddr[2];
	__be16 daddr[2];
	__be16 sport;
	__be16 dport;
};

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

/* rewrite() for the frame most Service traffic comes in: TCP or UDP over
 * IPv4 without options, its headers in the linear data. The header
 * checksum, both addresses and both ports are 14 contiguous bytes, read in
 * place and written back at once, the IPv4 checksum computed here: three
 * helper calls instead of five, two `in_place`. Any other frame goes to
 * rewrite().
 *
 * `in_place` (a constant at each call) writes the 14 bytes straight into
 * the packet. A program that writes packet data directly gets a prologue
 * from the verifier: a bpf_skb_pull_data call on every cloned packet it
 * runs on. Every TCP segment a pod sends is a clone (the socket keeps the
 * original for resending), and it is one still when it reaches another
 * pod of the node. The call copies nothing there (the clone's header is
 * its own) but is paid on every such packet: 0.15-0.23 us per connection
 * at sl_ingress, to a pod IP or a Service, against the 0.3 us of
 * bpf_skb_store_bytes a Service connection's replies no longer pay
 * (measured in real traffic with scripts/profile-datapath, alternating
 * builds). About even: sl_ingress writes in place, sl_egress, with less
 * room for its verification, through bpf_skb_store_bytes.
 *
 * Its second way through costs the verifier's walk of sl_egress ~25,000
 * instructions since the Service path has one translation for every
 * origin of the backend (tests/verifier_budget.rs); a hairpinned
 * connection's second translation stays on rewrite(). */
static __always_inline enum rewrite_result rewrite_fast(struct __sk_buff *skb, const struct pkt *p, __u32 l3_off,
							int dst, const __u8 new_addr[16], __be16 new_port,
							int in_place)
{
	const __u8 *old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u32 csum_off = l4_csum_off(p);
	__u64 mangled0 = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (!p->v6 && p->fragment != FRAG_LATER && p->l4_off == l3_off + sizeof(struct iphdr)) {
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct nat_span4 t, *w = data + l3_off + offsetof(struct iphdr, check);
		__be32 o, n;
		__u32 s;

		if ((void *)(w + 1) > end)
			return rewrite(skb, p, l3_off, dst, new_addr, new_port);
		__builtin_memcpy(&t, w, sizeof(t));
		__builtin_memcpy(&o, old_addr + 12, 4);
		__builtin_memcpy(&n, new_addr + 12, 4);
		if (o != n) {
			s = (__u16)~t.check + (__u16)~o + (__u16)~(o >> 16) + (__u16)n + (__u16)(n >> 16);
			s = (s & 0xffff) + (s >> 16);
			s = (s & 0xffff) + (s >> 16);
			t.check = (__u16)~s;
			if (dst) {
				t.daddr[0] = (__u16)n;
				t.daddr[1] = (__u16)(n >> 16);
			} else {
				t.saddr[0] = (__u16)n;
				t.saddr[1] = (__u16)(n >> 16);
			}
		}
		if (old_port != new_port) {
			if (dst)
				t.dport = new_port;
			else
				t.sport = new_port;
		}
		/* In place before the checksum helpers, which move the
		 * packet's pointers. */
		if (in_place)
			__builtin_memcpy(w, &t, sizeof(t));
		if (o != n && bpf_l4_csum_replace(skb, csum_off, o, n, BPF_F_PSEUDO_HDR | mangled0 | sizeof(n)) < 0)
			return REWRITE_FAILED;
		if (old_port != new_port &&
		    bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled0 | sizeof(new_port)) < 0)
			return REWRITE_FAILED;
		if (!in_place && bpf_skb_store_bytes(skb, l3_off + offsetof(struct iphdr, check), &t, sizeof(t), 0) < 0)
			return REWRITE_FAILED;
		return REWRITE_OK;
	}
	return rewrite(skb, p, l3_off, dst, new_addr, new_port);
}

#endif

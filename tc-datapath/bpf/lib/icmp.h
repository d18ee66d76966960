/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ICMP errors: those about a tracked flow are related to it, and
 * translated back to the VIP for a Service flow.
 */
#ifndef SLUICE_LIB_ICMP_H
#define SLUICE_LIB_ICMP_H

#include "conntrack.h"
#include "csum.h"
#include "events.h"
#include "forward.h"

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PARAMPROB 4

static __always_inline int is_icmp_error(__u8 type, int v6)
{
	if (!v6)
		return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
	return type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB;
}

/* An ICMP error the pod sends quotes a packet it received: related when the
 * pod has that flow. The quote must be addressed to the pod itself: the
 * conntrack table is the node's, and another pod's flow relates nothing
 * here. */
static __always_inline int icmp_related_egress(struct __sk_buff *skb, const struct pkt *o)
{
	struct pkt in;
	struct ct_key k;
	__u8 type;

	if ((o->proto != IPPROTO_ICMP || o->v6) && (o->proto != IPPROTO_ICMPV6 || !o->v6))
		return 0;
	if (o->fragment || bpf_skb_load_bytes(skb, o->l4_off, &type, 1) < 0 || !is_icmp_error(type, o->v6))
		return 0;
	if (parse_quoted(skb, o->l4_off + 8, o->v6, &in) || !addr_eq(in.daddr, o->saddr))
		return 0;
	ct_key_of(&k, in.daddr, in.saddr, in.dport, in.sport, in.proto, CT_FLOW);
	return bpf_map_lookup_elem(&sl_ct, &k) != 0;
}

/* One address of an ICMP error rewritten, at `off`: the outer header's
 * (`outer`) or the quoted one's. IPv4: the header checksum at `check` moves
 * with it, and for the quote the two changes cancel out in the ICMP
 * checksum; ICMPv6 covers the quote and the outer addresses (its pseudo
 * header). */
static __always_inline int icmp_set_addr(struct __sk_buff *skb, int v6, __u32 csum_off, __u32 off, __u32 check,
					 const __u8 *old, const __u8 *new, int outer)
{
	if (addr_eq(old, new))
		return 0;
	if (!v6) {
		__be32 o4, n4;

		__builtin_memcpy(&o4, old + 12, 4);
		__builtin_memcpy(&n4, new + 12, 4);
		if (bpf_l3_csum_replace(skb, check, o4, n4, 4) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, off, &n4, 4, 0);
	} else {
		__u8 o[16], n[16];
		__s64 diff;

		__builtin_memcpy(o, old, 16);
		__builtin_memcpy(n, new, 16);
		diff = bpf_csum_diff((__be32 *)o, 16, (__be32 *)n, 16, 0);
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, outer ? BPF_F_PSEUDO_HDR : 0) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, off, n, 16, 0);
	}
}

static __always_inline int icmp_set_port(struct __sk_buff *skb, __u32 csum_off, __u32 off, __be16 old, __be16 new)
{
	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, old, new, 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, 2, 0);
}

/* What an ICMP message arriving at a pod is: the packet's fate follows. */
enum icmp_error_result {
	ICMP_UNRELATED,		/* no error, or about no flow of the pod's: judged as untracked */
	ICMP_RELATED,		/* about a flow of the pod's: passes as it is */
	ICMP_TRANSLATED,	/* about a Service flow: reverse-NATed, counted, passes */
	ICMP_DROPPED,		/* the translation failed: counted and dropped */
};

/* An ICMP error about a flow of the pod's is related to it: it passes
 * (ICMP_RELATED) where the pod's policy would not let a new flow in. About a
 * flow we translated it quotes the packet as the backend got it
 * (client -> backend:port). Put the VIP back into the quote
 * (and into the outer source when the backend itself complains), so the
 * client's stack matches the error to its socket: a closed UDP backend port
 * becomes ECONNREFUSED on the client's socket to the VIP. The quoted L4
 * checksum is left alone: it covers data the quote cuts off, and no stack
 * checks it. */
static __always_inline enum icmp_error_result icmp_error(struct __sk_buff *skb, struct pkt *o)
{
	__u32 inner = o->l4_off + 8, csum_off = o->l4_off + 2;
	__u32 ip_src = o->v6 ? offsetof(struct ipv6hdr, saddr) : offsetof(struct iphdr, saddr);
	__u32 ip_dst = o->v6 ? offsetof(struct ipv6hdr, daddr) : offsetof(struct iphdr, daddr);
	__u32 check = offsetof(struct iphdr, check);
	struct ct_key fk;
	struct ct_value *flow;
	struct revnat_value *rn;
	struct pkt in;
	__u8 type;
	int from_backend;

	if (bpf_skb_load_bytes(skb, o->l4_off, &type, 1) < 0 || !is_icmp_error(type, o->v6))
		return ICMP_UNRELATED;
	/* The quoted packet is one the pod sent: its tuple is the pod's entry.
	 * It must come from the pod the error is addressed to: the conntrack
	 * table is the node's, and an error quoting another pod's flow (found
	 * by packet fuzzing) would otherwise pass an isolated pod. */
	if (parse_quoted(skb, inner, o->v6, &in) || !addr_eq(in.saddr, o->daddr))
		return ICMP_UNRELATED;
	ct_key_of(&fk, in.saddr, in.daddr, in.sport, in.dport, in.proto, CT_FLOW);
	flow = bpf_map_lookup_elem(&sl_ct, &fk);
	if (!flow)
		return ICMP_UNRELATED;
	if (!flow->rev_nat_id || (in.proto != IPPROTO_TCP && in.proto != IPPROTO_UDP))
		return ICMP_RELATED;
	rn = bpf_map_lookup_elem(&sl_revnat, &flow->rev_nat_id);
	if (!rn)
		return ICMP_UNRELATED;
	from_backend = addr_eq(o->saddr, in.daddr);
	if (icmp_set_addr(skb, o->v6, csum_off, inner + ip_dst, inner + check, in.daddr, rn->addr, 0) < 0 ||
	    (from_backend &&
	     icmp_set_addr(skb, o->v6, csum_off, ETH_HLEN + ip_src, ETH_HLEN + check, in.daddr, rn->addr, 1) < 0) ||
	    icmp_set_port(skb, csum_off, in.l4_off + 2, in.dport, rn->port) < 0)
		goto failed;
	count(REASON_ICMP_ERROR_TRANSLATED, DIR_INGRESS, skb->len);
	return ICMP_TRANSLATED;
failed:
	count(DROP_NAT_FAILED, DIR_INGRESS, skb->len);
	return ICMP_DROPPED;
}

#endif

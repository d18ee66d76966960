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
 * becomes ECONNREFUSED on the client's socket to the VIP.
 *
 * Checksums: in IPv4 the quoted header's address change and its header
 * checksum change cancel out in the ICMP checksum, so only the port moves
 * it; ICMPv6 covers the quoted address and a pseudo header. The quoted L4
 * checksum is left alone: it covers data the quote cuts off, and no stack
 * checks it. */
static __always_inline enum icmp_error_result icmp_error(struct __sk_buff *skb, struct pkt *o)
{
	__u32 inner = o->l4_off + 8, csum_off = o->l4_off + 2;
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
	if (!o->v6) {
		__be32 old, new;

		__builtin_memcpy(&old, in.daddr + 12, 4);
		__builtin_memcpy(&new, rn->addr + 12, 4);
		if (bpf_l3_csum_replace(skb, inner + offsetof(struct iphdr, check), old, new, 4) < 0 ||
		    bpf_skb_store_bytes(skb, inner + offsetof(struct iphdr, daddr), &new, 4, 0) < 0)
			goto failed;
		if (from_backend &&
		    (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 4) < 0 ||
		     bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), &new, 4, 0) < 0))
			goto failed;
	} else {
		__u8 old[16], new[16];
		__s64 diff;

		__builtin_memcpy(old, in.daddr, 16);
		__builtin_memcpy(new, rn->addr, 16);
		diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, 0) < 0 ||
		    bpf_skb_store_bytes(skb, inner + offsetof(struct ipv6hdr, daddr), new, 16, 0) < 0)
			goto failed;
		if (from_backend &&
		    (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR) < 0 ||
		     bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, saddr), new, 16, 0) < 0))
			goto failed;
	}
	if (in.dport != rn->port &&
	    (bpf_l4_csum_replace(skb, csum_off, in.dport, rn->port, 2) < 0 ||
	     bpf_skb_store_bytes(skb, in.l4_off + 2, &rn->port, 2, 0) < 0))
		goto failed;
	count(REASON_ICMP_ERROR_TRANSLATED, DIR_INGRESS, skb->len);
	return ICMP_TRANSLATED;
failed:
	count(DROP_NAT_FAILED, DIR_INGRESS, skb->len);
	return ICMP_DROPPED;
}

#endif

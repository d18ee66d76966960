/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ICMP errors: those about a tracked flow are related to it (and
 * translated back to the VIP for a Service flow), and a rejected packet
 * becomes one.
 */
#ifndef SLUICE_LIB_ICMP_H
#define SLUICE_LIB_ICMP_H

#include "conntrack.h"
#include "csum.h"
#include "events.h"
#include "forward.h"

#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define ICMPV6_PARAMPROB 4

static __always_inline int is_icmp_error(__u8 type, int v6)
{
	if (!v6)
		return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
	return type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB;
}

/* An ICMP error the pod sends quotes a packet it received: related when the
 * pod has that flow. */
static __always_inline int icmp_related_egress(struct __sk_buff *skb, const struct pkt *o)
{
	struct pkt in;
	struct ct_key k;
	__u8 type;

	if ((o->proto != IPPROTO_ICMP || o->v6) && (o->proto != IPPROTO_ICMPV6 || !o->v6))
		return 0;
	if (o->fragment || bpf_skb_load_bytes(skb, o->l4_off, &type, 1) < 0 || !is_icmp_error(type, o->v6))
		return 0;
	if (parse(skb, o->l4_off + 8, o->v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP), &in) || !in.tracked)
		return 0;
	ct_key_of(&k, in.daddr, in.saddr, in.dport, in.sport, in.proto, CT_FLOW);
	return bpf_map_lookup_elem(&sl_ct, &k) != 0;
}

/* The ICMP port unreachable a rejected packet is turned into: a fresh IP
 * header from the VIP to the client, the ICMP header, and the quote Linux
 * needs to find the socket (the IP header and the first 8 bytes of L4). */
struct unreach4 {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__u16 check;
	__u32 unused;
	__u8 quote[sizeof(struct iphdr) + 8];
};

struct unreach6 {
	struct ipv6hdr ip;
	__u8 type;
	__u8 code;
	__u16 check;
	__u32 unused;
	__u8 quote[sizeof(struct ipv6hdr) + 8];
};

struct pseudo6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 len;
	__be32 nexthdr;
};

/* Answer a packet to a Service that cannot take it with ICMP port
 * unreachable from the VIP, as kube-proxy's REJECT does, so the client
 * fails at once (ECONNREFUSED) instead of retrying SYNs into a drop. The
 * packet itself becomes the answer: cut to the quote, headers rebuilt in
 * front, turned around into the pod. The drop reason is counted either way;
 * anything that cannot be answered (IPv4 options, a failed resize) is just
 * dropped. */
static __always_inline int reject(struct __sk_buff *skb, const struct pkt *p, __u32 reason)
{
	count(reason, DIR_EGRESS, skb->len);
	flow_event(p, DIR_EGRESS, reason, 0, 0, 0, 0);
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return TC_ACT_SHOT;
	if (!p->v6) {
		struct unreach4 r = {};
		struct iphdr *orig = (struct iphdr *)r.quote;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0 || orig->ihl != 5)
			return TC_ACT_SHOT;
		r.ip.version = 4;
		r.ip.ihl = 5;
		r.ip.ttl = 64;
		r.ip.protocol = IPPROTO_ICMP;
		r.ip.tot_len = bpf_htons(sizeof(r));
		r.ip.saddr = orig->daddr;
		r.ip.daddr = orig->saddr;
		r.ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.ip, sizeof(r.ip), 0));
		r.type = ICMP_DEST_UNREACH;
		r.code = ICMP_PORT_UNREACH;
		r.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.type, sizeof(r) - sizeof(r.ip), 0));
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
			return TC_ACT_SHOT;
	} else {
		struct unreach6 r = {};
		struct pseudo6 ph = {};
		struct ipv6hdr *orig = (struct ipv6hdr *)r.quote;
		__s64 sum;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0)
			return TC_ACT_SHOT;
		r.ip.version = 6;
		r.ip.nexthdr = IPPROTO_ICMPV6;
		r.ip.hop_limit = 64;
		r.ip.payload_len = bpf_htons(sizeof(r) - sizeof(r.ip));
		__builtin_memcpy(&r.ip.saddr, &orig->daddr, 16);
		__builtin_memcpy(&r.ip.daddr, &orig->saddr, 16);
		r.type = ICMPV6_DEST_UNREACH;
		r.code = ICMPV6_PORT_UNREACH;
		__builtin_memcpy(ph.saddr, &r.ip.saddr, 16);
		__builtin_memcpy(ph.daddr, &r.ip.daddr, 16);
		ph.len = bpf_htonl(sizeof(r) - sizeof(r.ip));
		ph.nexthdr = bpf_htonl(IPPROTO_ICMPV6);
		sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
		r.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.type, sizeof(r) - sizeof(r.ip), (__u32)sum));
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
			return TC_ACT_SHOT;
	}
	return redirect_self(skb, DIR_EGRESS, REASON_REJECTED, 1);
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
	if (parse(skb, inner, o->v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP), &in) || !in.tracked)
		return ICMP_UNRELATED;
	/* The quoted packet is one the pod sent: its tuple is the pod's entry. */
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

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Refusing what a Service cannot serve, so the client fails at once
 * (ECONNREFUSED) instead of retrying into a drop: kube-proxy's REJECT.
 *
 * A TCP segment is answered with a reset, anything else with ICMP port
 * unreachable, both from the VIP. Why not ICMP for TCP as well: the answer
 * is turned around inside the client's own transmit, so it reaches the
 * client's stack while connect() still holds the socket. An ICMP error that
 * finds the socket held is only noted as a soft error (LockDroppedIcmps);
 * IPv6 then leaves the connect to its SYN retransmission a second later. A
 * reset is queued to the socket's backlog and handled when connect() lets
 * go: refused within the call, in either family.
 */
#ifndef SLUICE_LIB_REJECT_H
#define SLUICE_LIB_REJECT_H

#include <linux/tcp.h>
#include "csum.h"
#include "events.h"
#include "forward.h"
#include "icmp.h"

#define ICMP_PORT_UNREACH 3
#define ICMPV6_PORT_UNREACH 4
#define IP_DF 0x4000

/* The ICMP port unreachable: a fresh IP header from the VIP to the client,
 * the ICMP header, and the quote Linux needs to find the socket (the IP
 * header and the first 8 bytes of L4). */
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

struct reset4 {
	struct iphdr ip;
	struct tcphdr tcp;
};

struct reset6 {
	struct ipv6hdr ip;
	struct tcphdr tcp;
};

struct pseudo4 {
	__be32 saddr;
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
};

struct pseudo6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 len;
	__be32 nexthdr;
};

/* An IPv4 header from the VIP (the packet's destination) back to its
 * source, with its checksum. */
static __always_inline void answer_ip4(struct iphdr *ip, const struct pkt *p, __u8 proto, __u16 len)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->ttl = 64;
	ip->frag_off = bpf_htons(IP_DF);
	ip->protocol = proto;
	ip->tot_len = bpf_htons(len);
	__builtin_memcpy(&ip->saddr, p->daddr + 12, 4);
	__builtin_memcpy(&ip->daddr, p->saddr + 12, 4);
	ip->check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
}

static __always_inline void answer_ip6(struct ipv6hdr *ip, const struct pkt *p, __u8 nexthdr, __u16 payload)
{
	ip->version = 6;
	ip->nexthdr = nexthdr;
	ip->hop_limit = 64;
	ip->payload_len = bpf_htons(payload);
	__builtin_memcpy(&ip->saddr, p->daddr, 16);
	__builtin_memcpy(&ip->daddr, p->saddr, 16);
}

/* The one's-complement sum of the pseudo header of an answer from the VIP. */
static __always_inline __s64 answer_pseudo_sum(const struct pkt *p, __u8 proto, __u16 len)
{
	if (!p->v6) {
		struct pseudo4 ph = {.proto = proto, .len = bpf_htons(len)};

		__builtin_memcpy(&ph.saddr, p->daddr + 12, 4);
		__builtin_memcpy(&ph.daddr, p->saddr + 12, 4);
		return bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	} else {
		struct pseudo6 ph = {.len = bpf_htonl(len), .nexthdr = bpf_htonl(proto)};

		__builtin_memcpy(ph.saddr, p->daddr, 16);
		__builtin_memcpy(ph.daddr, p->saddr, 16);
		return bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	}
}

/* The reset RFC 9293 answers a segment to a closed port with: to a segment
 * that acknowledges, a bare RST at its acknowledgment number; otherwise an
 * RST|ACK acknowledging everything it occupied (its data, SYN and FIN). */
static __always_inline int reset_header(struct __sk_buff *skb, const struct pkt *p, struct tcphdr *rst)
{
	struct tcphdr in;
	__u32 ip_end, seg;

	if (bpf_skb_load_bytes(skb, p->l4_off, &in, sizeof(in)) < 0 || in.doff < 5)
		return -1;
	if (!p->v6) {
		__be16 tot_len;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, tot_len), &tot_len, 2) < 0)
			return -1;
		ip_end = ETH_HLEN + bpf_ntohs(tot_len);
	} else {
		__be16 payload_len;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, payload_len), &payload_len, 2) < 0)
			return -1;
		ip_end = ETH_HLEN + sizeof(struct ipv6hdr) + bpf_ntohs(payload_len);
	}
	if (ip_end < p->l4_off + in.doff * 4)
		return -1;
	seg = ip_end - p->l4_off - in.doff * 4 + in.syn + in.fin;
	rst->source = in.dest;
	rst->dest = in.source;
	rst->doff = 5;
	rst->rst = 1;
	if (in.ack) {
		rst->seq = in.ack_seq;
	} else {
		rst->ack = 1;
		rst->ack_seq = bpf_htonl(bpf_ntohl(in.seq) + seg);
	}
	return 0;
}

/* Send an answer back where its packet came from: into the pod that sent
 * it (a pod's egress), or out of the uplink it arrived on (dir ingress: an
 * uplink's; a pod's ingress never answers). */
static __always_inline int answer(struct __sk_buff *skb, __u32 dir)
{
	if (dir == DIR_EGRESS)
		return redirect_self(skb, DIR_EGRESS, REASON_REJECTED, 1);
	return turn_around(skb, dir, REASON_REJECTED, 0);
}

/* The packet itself becomes the answer: cut to size, headers rebuilt, then
 * turned around (see answer()). */
static __always_inline int reset(struct __sk_buff *skb, const struct pkt *p, __u32 dir)
{
	if (!p->v6) {
		struct reset4 r = {};

		if (reset_header(skb, p, &r.tcp) < 0)
			return TC_ACT_SHOT;
		answer_ip4(&r.ip, p, IPPROTO_TCP, sizeof(r));
		r.tcp.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.tcp, sizeof(r.tcp),
						      (__u32)answer_pseudo_sum(p, IPPROTO_TCP, sizeof(r.tcp))));
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
			return TC_ACT_SHOT;
	} else {
		struct reset6 r = {};

		if (reset_header(skb, p, &r.tcp) < 0)
			return TC_ACT_SHOT;
		answer_ip6(&r.ip, p, IPPROTO_TCP, sizeof(r.tcp));
		r.tcp.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.tcp, sizeof(r.tcp),
						      (__u32)answer_pseudo_sum(p, IPPROTO_TCP, sizeof(r.tcp))));
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
			return TC_ACT_SHOT;
	}
	return answer(skb, dir);
}

static __always_inline int port_unreachable(struct __sk_buff *skb, const struct pkt *p, __u32 dir)
{
	if (!p->v6) {
		struct unreach4 r = {};
		struct iphdr *orig = (struct iphdr *)r.quote;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0 || orig->ihl != 5)
			return TC_ACT_SHOT;
		answer_ip4(&r.ip, p, IPPROTO_ICMP, sizeof(r));
		r.type = ICMP_DEST_UNREACH;
		r.code = ICMP_PORT_UNREACH;
		r.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.type, sizeof(r) - sizeof(r.ip), 0));
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
			return TC_ACT_SHOT;
	} else {
		struct unreach6 r = {};
		__u16 len = sizeof(r) - sizeof(r.ip);

		if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0)
			return TC_ACT_SHOT;
		answer_ip6(&r.ip, p, IPPROTO_ICMPV6, len);
		r.type = ICMPV6_DEST_UNREACH;
		r.code = ICMPV6_PORT_UNREACH;
		r.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.type, len,
						  (__u32)answer_pseudo_sum(p, IPPROTO_ICMPV6, len)));
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
			return TC_ACT_SHOT;
	}
	return answer(skb, dir);
}

/* Answer a packet to a Service that cannot take it. The drop reason is
 * counted either way; anything that cannot be answered (another protocol,
 * a fragment, IPv4 options in what an ICMP error would quote, a failed
 * resize) is just dropped. */
static __always_inline int reject(struct __sk_buff *skb, const struct pkt *p, __u32 reason, __u32 dir)
{
	count(reason, dir, skb->len);
	flow_event(p, dir, reason, 0, 0, 0, 0);
	/* A fragment's length is not its datagram's (a reset could not
	 * acknowledge it), and only the first holds what an error quotes. */
	if (p->proto == IPPROTO_TCP && !p->fragment)
		return reset(skb, p, dir);
	if (p->proto == IPPROTO_UDP && p->fragment != FRAG_LATER)
		return port_unreachable(skb, p, dir);
	return TC_ACT_SHOT;
}

#endif

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The packet's headers, parsed once: L3 addresses, the L4 protocol and
 * ports, TCP flags, fragment state.
 */
#ifndef SLUICE_LIB_PARSE_H
#define SLUICE_LIB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "addr.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;	/* the upper-layer protocol, after any IPv6 extension headers */
	__u8 v6;
	__u8 tcp_flags;
	__u8 fragment;	/* part of a fragmented datagram (the first one included) */
	__u8 tracked;	/* ports known, a protocol conntrack follows */
	__u8 ip;	/* IPv4 or IPv6: everything else passes untouched */
	__u8 pad[2];
	__u32 l4_off;
	__u32 frag_id;	/* a fragment's IP identification (see struct frag_key) */
	__u32 ip_end;	/* where the IP packet ends by its length field (0: an IPv6 jumbogram) */
};

/* IPv6 extension headers followed before the upper-layer header: more in
 * one packet than this is dropped as malformed (Linux itself accepts any
 * number; real traffic carries one or two). */
#define IPV6_MAX_EXT_HEADERS 8
#define IPV6_FRAG_OFFSET 0xfff8	/* the fragment offset field, network order after ntohs */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define FRAG_NONE 0
#define FRAG_FIRST 1	/* the fragment at offset 0: it has the L4 header */
#define FRAG_LATER 2	/* any other: no L4 header */

/* Walk the IPv6 extension headers from `off` (the first one is `nexthdr`)
 * to the upper-layer header: Hop-by-Hop, Routing, Destination Options,
 * Fragment and AH are skipped, at most IPV6_MAX_EXT_HEADERS of them; the
 * protocol and offset that follow go to `p`. Anything else (ESP, No Next
 * Header, a transport) ends the chain. A chain cut short (a header
 * running past the frame), too long, or with Hop-by-Hop anywhere but
 * first is malformed. */
static __always_inline int ipv6_skip_extensions(struct __sk_buff *skb, __u32 off, __u8 nexthdr, struct pkt *p)
{
	int i;

#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		__u8 h[4];

		if (nexthdr != NEXTHDR_HOP && nexthdr != NEXTHDR_ROUTING && nexthdr != NEXTHDR_DEST &&
		    nexthdr != NEXTHDR_FRAGMENT && nexthdr != NEXTHDR_AUTH) {
			if (off > skb->len)
				return DROP_MALFORMED;
			p->proto = nexthdr;
			p->l4_off = off;
			return 0;
		}
		/* Every extension header is 8 bytes at least, inside the frame. */
		if ((nexthdr == NEXTHDR_HOP && i > 0) || off + 8 > skb->len ||
		    bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return DROP_MALFORMED;
		if (nexthdr == NEXTHDR_FRAGMENT) {
			__u16 frag = ((__u16)h[2] << 8) | h[3];

			if (bpf_skb_load_bytes(skb, off + 4, &p->frag_id, 4) < 0)
				return DROP_MALFORMED;
			p->fragment = frag & IPV6_FRAG_OFFSET ? FRAG_LATER : FRAG_FIRST;
			off += 8;
		} else if (nexthdr == NEXTHDR_AUTH) {
			off += ((__u32)h[1] + 2) * 4;
		} else {
			off += ((__u32)h[1] + 1) * 8;
		}
		nexthdr = h[0];
	}
	return DROP_MALFORMED;
}

/* Parse the L3 and L4 headers at `l3_off`: the outer packet, or (`quoted`,
 * a constant) the packet an ICMP error quotes. A router need quote no more
 * than the IP header and 8 bytes after it (RFC 792), so of a quoted TCP
 * header only the ports are read (its flags are never used). Returns 0, or
 * a drop reason. Packets that are not IP have `ip` 0 and pass untouched. */
static __always_inline int parse_ip(struct __sk_buff *skb, __u32 l3_off, __be16 eth_proto, struct pkt *p,
				    const int quoted)
{
	__builtin_memset(p, 0, sizeof(*p));
	if (eth_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, l3_off, &ip, sizeof(ip)) < 0 || ip.ihl < 5 || ip.version != 4)
			return DROP_MALFORMED;
		v4_mapped(p->saddr, ip.saddr);
		v4_mapped(p->daddr, ip.daddr);
		p->ip = 1;
		p->proto = ip.protocol;
		p->l4_off = l3_off + ip.ihl * 4;
		p->ip_end = l3_off + bpf_ntohs(ip.tot_len);
		p->frag_id = ip.id;
		if (ip.frag_off & bpf_htons(IP_OFFSET)) {
			/* Only the first fragment carries ports. */
			p->fragment = FRAG_LATER;
			return 0;
		}
		if (ip.frag_off & bpf_htons(IP_MF))
			p->fragment = FRAG_FIRST;
	} else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		int r;

		if (bpf_skb_load_bytes(skb, l3_off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
			return DROP_MALFORMED;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		p->v6 = 1;
		p->ip = 1;
		/* A payload length of 0 is a jumbogram's (its length is in Hop-by-Hop). */
		p->ip_end = ip6.payload_len ? l3_off + sizeof(ip6) + bpf_ntohs(ip6.payload_len) : 0;
		r = ipv6_skip_extensions(skb, l3_off + sizeof(ip6), ip6.nexthdr, p);
		if (r)
			return r;
		/* Only the first fragment carries ports. */
		if (p->fragment == FRAG_LATER)
			return 0;
	} else {
		return 0;
	}
	if (p->proto == IPPROTO_TCP && !quoted) {
		__u8 hdr[14];

		if (bpf_skb_load_bytes(skb, p->l4_off, hdr, sizeof(hdr)) < 0)
			return DROP_MALFORMED;
		__builtin_memcpy(&p->sport, hdr, 2);
		__builtin_memcpy(&p->dport, hdr + 2, 2);
		p->tcp_flags = hdr[13];
		p->tracked = 1;
	} else if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP) {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
			return DROP_MALFORMED;
		p->sport = ports[0];
		p->dport = ports[1];
		p->tracked = 1;
	} else if ((p->proto == IPPROTO_ICMP && !p->v6) || (p->proto == IPPROTO_ICMPV6 && p->v6)) {
		/* Echo is a flow: the identifier is the requester's port (see
		 * layout.h). Other types are errors or neighbour discovery. */
		__u8 hdr[6];

		if (bpf_skb_load_bytes(skb, p->l4_off, hdr, sizeof(hdr)) < 0)
			return DROP_MALFORMED;
		if (hdr[0] == (p->v6 ? ICMPV6_ECHO_REQUEST : ICMP_ECHO)) {
			__builtin_memcpy(&p->sport, hdr + 4, 2);
			p->tracked = 1;
		} else if (hdr[0] == (p->v6 ? ICMPV6_ECHO_REPLY : ICMP_ECHOREPLY)) {
			__builtin_memcpy(&p->dport, hdr + 4, 2);
			p->tracked = 1;
		}
	}
	return 0;
}

/* The outer packet's headers at `l3_off`. */
static __always_inline int parse(struct __sk_buff *skb, __u32 l3_off, __be16 eth_proto, struct pkt *p)
{
	return parse_ip(skb, l3_off, eth_proto, p, 0);
}

/* The packet an ICMP error quotes, at `off`, as conntrack knows it: a flow
 * with ports (or an echo), not a later fragment. 0, or -1. */
static __always_inline int parse_quoted(struct __sk_buff *skb, __u32 off, int v6, struct pkt *q)
{
	if (parse_ip(skb, off, v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP), q, 1) || !q->tracked)
		return -1;
	return 0;
}

/* The common frame read in place: TCP or UDP over IPv4 without options
 * or over IPv6 without extension headers, not fragmented, its headers in
 * the skb's linear data (a locally sent packet's are; a UDP header is 8
 * bytes, so a datagram of a few bytes is one too). Fills what parse()
 * would and returns 1; 0 leaves the frame to parse(). Each
 * bpf_skb_load_bytes() is a helper call (three per frame on this path,
 * 7% of the programs' time in a connection-rate profile); reading through
 * skb->data is a bounds check. */
static __always_inline int parse_direct(struct __sk_buff *skb, struct ethhdr *eth, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *e = data;
	__u8 *l4;
	__u8 proto;

	if ((void *)(e + 1) > end)
		return 0;
	if (e->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(e + 1);

		l4 = (void *)(ip + 1);
		if (l4 + 8 > (__u8 *)end || ip->version != 4 || ip->ihl != 5 ||
		    (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
			return 0;
		proto = ip->protocol;
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
			return 0;
		__builtin_memset(p, 0, sizeof(*p));
		v4_mapped(p->saddr, ip->saddr);
		v4_mapped(p->daddr, ip->daddr);
		p->ip_end = ETH_HLEN + bpf_ntohs(ip->tot_len);
		p->frag_id = ip->id;
	} else if (e->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(e + 1);

		l4 = (void *)(ip6 + 1);
		if (l4 + 8 > (__u8 *)end || ip6->version != 6 || !ip6->payload_len)
			return 0;
		proto = ip6->nexthdr;
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
			return 0;
		__builtin_memset(p, 0, sizeof(*p));
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		p->v6 = 1;
		p->ip_end = ETH_HLEN + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	} else {
		return 0;
	}
	__builtin_memcpy(eth, e, sizeof(*eth));
	p->ip = 1;
	p->proto = proto;
	p->l4_off = (__u32)(l4 - (__u8 *)data);
	__builtin_memcpy(&p->sport, l4, 2);
	__builtin_memcpy(&p->dport, l4 + 2, 2);
	if (proto == IPPROTO_TCP) {
		/* TCP's flags are its 14th byte; a UDP header is 8. */
		if (l4 + 14 > (__u8 *)end)
			return 0;
		p->tcp_flags = l4[13];
	}
	p->tracked = 1;
	return 1;
}

/* The Ethernet header and what parse() makes of the rest: 0 or a drop
 * reason. The packet must fit in the frame its length field says, and an
 * IPv4 header in its packet, as the receiving stack checks (a quoted
 * packet in an ICMP error is cut short by design: parse() alone reads it). */
static __always_inline int parse_frame(struct __sk_buff *skb, struct ethhdr *eth, struct pkt *p)
{
	int r;

	if (!parse_direct(skb, eth, p)) {
		if (bpf_skb_load_bytes(skb, 0, eth, sizeof(*eth)) < 0)
			return DROP_MALFORMED;
		r = parse(skb, ETH_HLEN, eth->h_proto, p);
		if (r || !p->ip)
			return r;
	}
	/* The lengths parse() read from the header, nothing read twice: an
	 * IPv4 packet holds its own header, and a packet fits its frame. */
	if (!p->v6 && p->ip_end < p->l4_off)
		return DROP_MALFORMED;
	if (p->ip_end > skb->len)
		return DROP_MALFORMED;
	return 0;
}

#endif

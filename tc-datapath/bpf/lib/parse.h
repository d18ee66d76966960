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
	__u8 proto;
	__u8 v6;
	__u8 tcp_flags;
	__u8 fragment;
	__u8 tracked;	/* ports known, a protocol conntrack follows */
	__u8 pad[3];
	__u32 l4_off;
};

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

/* Parse the L3 and L4 headers at `l3_off` (the outer packet, or the packet
 * quoted by an ICMP error). Returns 0, or a drop reason. Packets that are
 * not IP are reported with proto 0 and pass untouched. */
static __always_inline int parse(struct __sk_buff *skb, __u32 l3_off, __be16 eth_proto, struct pkt *p)
{
	__builtin_memset(p, 0, sizeof(*p));
	if (eth_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, l3_off, &ip, sizeof(ip)) < 0 || ip.ihl < 5 || ip.version != 4)
			return DROP_MALFORMED;
		v4_mapped(p->saddr, ip.saddr);
		v4_mapped(p->daddr, ip.daddr);
		p->proto = ip.protocol;
		p->l4_off = l3_off + ip.ihl * 4;
		if (ip.frag_off & bpf_htons(IP_OFFSET | IP_MF))
			p->fragment = 1;
		/* Only the first fragment carries ports. */
		if (ip.frag_off & bpf_htons(IP_OFFSET))
			return 0;
	} else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, l3_off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
			return DROP_MALFORMED;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		p->proto = ip6.nexthdr;
		p->v6 = 1;
		p->l4_off = l3_off + sizeof(ip6);
		if (ip6.nexthdr == IPPROTO_FRAGMENT)
			p->fragment = 1;
	} else {
		return 0;
	}
	if (p->proto == IPPROTO_TCP) {
		__u8 hdr[14];

		if (bpf_skb_load_bytes(skb, p->l4_off, hdr, sizeof(hdr)) < 0)
			return DROP_MALFORMED;
		__builtin_memcpy(&p->sport, hdr, 2);
		__builtin_memcpy(&p->dport, hdr + 2, 2);
		p->tcp_flags = hdr[13];
		p->tracked = 1;
	} else if (p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP) {
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

/* The Ethernet header and what parse() makes of the rest: 0 or a drop reason. */
static __always_inline int parse_frame(struct __sk_buff *skb, struct ethhdr *eth, struct pkt *p)
{
	if (bpf_skb_load_bytes(skb, 0, eth, sizeof(*eth)) < 0)
		return DROP_MALFORMED;
	return parse(skb, ETH_HLEN, eth->h_proto, p);
}

#endif

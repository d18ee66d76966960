/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What a pod may send: untagged IPv4, IPv6 and ARP frames only, and (with
 * the source check on) only from its own addresses and MAC, ARP and IPv6
 * neighbour advertisements included, so that no pod can claim another's
 * address on a shared macvlan or ipvlan segment.
 */
#ifndef SLUICE_LIB_SOURCE_H
#define SLUICE_LIB_SOURCE_H

#define ARPHRD_ETHER 1
#include "config.h"
#include "parse.h"
#include "../maps.h"

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#define ICMPV6_NEIGHBOUR_ADVERTISEMENT 136

/* An ARP request or reply for IPv4 over Ethernet, as it follows the
 * Ethernet header. */
struct arp_eth4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__be32 spa;
	__u8 tha[6];
	__be32 tpa;
} __attribute__((packed));

/* A packet sent from a socket (a packet socket's crafted frame included)
 * carries it; its namespace must be the pod's. Interface indexes are per
 * namespace: where another plugin made the pods' interfaces (the chained
 * role) they are 2 or 3 in every pod, and a MAC is anyone's to write, so
 * without this a pod with CAP_NET_RAW could send as another. A packet with
 * no socket (an ARP request, a forwarded packet) is held to the rest of
 * the check; testing for the socket first spares it the helper call (the
 * kernel would answer the initial namespace's cookie), and a call costs
 * 20-30 ns a packet (measured on the CI machine). */
static __always_inline int socket_in_pod(struct __sk_buff *skb, const struct endpoint_value *ep)
{
	if (!cfg_socket_netns_check || !ep->netns_cookie || !skb->sk)
		return 1;
	return bpf_get_netns_cookie(skb) == ep->netns_cookie;
}

/* The endpoint entry of `addr` if it is this interface's pod with this
 * MAC, else NULL. */
static __always_inline struct endpoint_value *own_endpoint(struct __sk_buff *skb, const __u8 *addr, const __u8 *mac)
{
	struct endpoint_value *ep = bpf_map_lookup_elem(&sl_endpoints, addr);

	if (!ep || ep->ifindex != skb->ifindex || __builtin_memcmp(ep->mac, mac, 6) || !socket_in_pod(skb, ep))
		return 0;
	return ep;
}

/* A frame a pod may not send at all: VLAN-tagged (the receiving kernel
 * strips a tag after tc, so a tagged frame would pass as untagged), or of
 * another ethertype than IPv4, IPv6 and ARP. Returns 0 or the drop reason. */
static __always_inline int frame_allowed(struct __sk_buff *skb, const struct ethhdr *eth)
{
	if (skb->vlan_present)
		return DROP_ETHERTYPE;
	if (eth->h_proto == bpf_htons(ETH_P_IP) || eth->h_proto == bpf_htons(ETH_P_IPV6) ||
	    eth->h_proto == bpf_htons(ETH_P_ARP))
		return 0;
	return DROP_ETHERTYPE;
}

/* ARP from a pod: its sender must be the pod (its address and MAC, in the
 * payload and in the frame), or a probe (RFC 5227: the unspecified sender
 * address, updating no cache) for the pod's own address from its MAC.
 * Returns 0 or a drop reason. */
static __always_inline int arp_allowed(struct __sk_buff *skb, const struct ethhdr *eth)
{
	struct arp_eth4 a;
	__u8 spa[16];

	if (!cfg_source_check)
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &a, sizeof(a)) < 0 || a.htype != bpf_htons(ARPHRD_ETHER) ||
	    a.ptype != bpf_htons(ETH_P_IP) || a.hlen != 6 || a.plen != 4)
		return DROP_MALFORMED;
	if (__builtin_memcmp(a.sha, eth->h_source, 6))
		return DROP_SOURCE_ADDRESS;
	v4_mapped(spa, a.spa ? a.spa : a.tpa);
	return own_endpoint(skb, spa, a.sha) ? 0 : DROP_SOURCE_ADDRESS;
}

/* IPv6 neighbour discovery and DAD use link-local and unspecified
 * sources; a neighbour advertisement claims its target address, so the
 * target must be the pod's own (or link-local). Returns 0 or a drop reason. */
static __always_inline int nd_allowed(struct __sk_buff *skb, const struct ethhdr *eth, const struct pkt *p)
{
	__u8 na[24];

	if (p->proto != IPPROTO_ICMPV6 || p->fragment)
		return 0;
	if (bpf_skb_load_bytes(skb, p->l4_off, na, 1) < 0)
		return DROP_MALFORMED;
	if (na[0] != ICMPV6_NEIGHBOUR_ADVERTISEMENT)
		return 0;
	if (bpf_skb_load_bytes(skb, p->l4_off, na, sizeof(na)) < 0)
		return DROP_MALFORMED;
	if (is_v6_link_local_or_any(na + 8))
		return 0;
	return own_endpoint(skb, na + 8, eth->h_source) ? 0 : DROP_SOURCE_ADDRESS;
}

/* Only the pod's own addresses may leave it; `*ep` gets its endpoint
 * entry. A link-local or unspecified IPv6 source (which no map can vouch
 * for) carries ICMPv6 only: neighbour discovery, DAD, MLD, and a ping to
 * the gateway; anything else from it would be a source no one checked.
 * Returns 0 or a drop reason. */
static __always_inline int source_allowed(struct __sk_buff *skb, const struct ethhdr *eth, const struct pkt *p,
					  struct endpoint_value **ep)
{
	if (!cfg_source_check)
		return 0;
	if (p->v6 && is_v6_link_local_or_any(p->saddr))
		return p->proto == IPPROTO_ICMPV6 && !p->fragment ? nd_allowed(skb, eth, p) : DROP_SOURCE_ADDRESS;
	*ep = own_endpoint(skb, p->saddr, eth->h_source);
	if (!*ep)
		return DROP_SOURCE_ADDRESS;
	return p->v6 ? nd_allowed(skb, eth, p) : 0;
}

#endif

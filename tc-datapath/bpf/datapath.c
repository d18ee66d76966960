// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * The sluice datapath: two tc programs for every pod interface.
 *
 *  sl_egress  (packets the pod sends): source-address check, Service
 *             load-balancing (conntrack lookup or backend selection, then
 *             DNAT to the backend), connection tracking and the pod's
 *             egress policy for everything else.
 *  sl_ingress (packets delivered to the pod): reverse NAT of replies from
 *             a backend back to the VIP the pod called, including ICMP
 *             errors about such a flow; connection tracking and the pod's
 *             ingress policy.
 *
 * Policy is decided once per flow, on the packet that opens it at each
 * end, and kept in the flow's conntrack entry: replies and the rest of the
 * flow pass on the entry alone, in both directions. A denied packet never
 * creates an entry.
 *
 * Both run on the pod's own interface, inside its network namespace, so a
 * Service is resolved at the client before the packet leaves the pod: no
 * netfilter hook is involved anywhere.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <stddef.h>

#include "layout.h"
#include "maps.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Load-time configuration, set by the loader (aya EbpfLoader::set_global). */
volatile const __u64 cfg_ct_tcp_syn_ns = 60ULL * 1000000000ULL;
volatile const __u64 cfg_ct_tcp_established_ns = 21600ULL * 1000000000ULL;
volatile const __u64 cfg_ct_tcp_closing_ns = 10ULL * 1000000000ULL;
volatile const __u64 cfg_ct_udp_ns = 60ULL * 1000000000ULL;
volatile const __u32 cfg_maglev_m = 16381;
volatile const __u32 cfg_source_check = 1;
volatile const __u32 cfg_flow_sample = 0;

/* A refreshed deadline is written back only when it moved by more than
 * this: established flows do not dirty their conntrack entry per packet. */
#define CT_REFRESH_NS (1000000000ULL)

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

static __always_inline void count(__u32 reason, __u32 dir, __u32 len)
{
	__u32 idx = reason * 2 + dir;
	struct metrics_value *m = bpf_map_lookup_elem(&sl_metrics, &idx);

	if (m) {
		m->packets++;
		m->bytes += len;
	}
}

static __always_inline int drop(struct __sk_buff *skb, __u32 reason, __u32 dir)
{
	count(reason, dir, skb->len);
	return TC_ACT_SHOT;
}

static __always_inline void v4_mapped(__u8 out[16], __be32 a)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &a, 4);
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

/* See the address filters in layout.h: false means certainly not in. */
static __always_inline int maybe_in(void *filter, const __u8 *addr)
{
	__u32 slot = vip_slot(addr), word = slot / 8;
	__u64 *w = bpf_map_lookup_elem(filter, &word);

	return !w || ((*w >> ((slot % 8) * 8)) & 0xff);
}

/* A packet this program turned around that answers the pod (a translated
 * hairpin reply, a reject): the ingress program passes it as it is, since
 * it is no new flow into the pod. The mark survives the redirect (same
 * namespace) and nothing from outside the pod carries one (crossing into
 * its namespace clears marks); ingress clears it. */
#define SL_MARK_ANSWER 0x5c1a0001

/* Turn a packet around into the interface it is leaving: the MACs swap
 * (it must arrive addressed to the pod) and it re-enters as received. An
 * `answer` skips the pod's ingress policy; a hairpinned request does not
 * (the pod's policy judges it as coming from the pod itself). */
static __always_inline int redirect_self(struct __sk_buff *skb, __u32 dir, __u32 reason, int answer)
{
	__u8 macs[12], swapped[12];

	if (bpf_skb_load_bytes(skb, 0, macs, 12) < 0)
		return drop(skb, DROP_MALFORMED, dir);
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	if (bpf_skb_store_bytes(skb, 0, swapped, 12, 0) < 0)
		return drop(skb, DROP_NAT_FAILED, dir);
	count(reason, dir, skb->len);
	if (answer)
		skb->mark = SL_MARK_ANSWER;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

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

static __always_inline __u32 l4_csum_off(const struct pkt *p)
{
	return p->l4_off + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) : offsetof(struct udphdr, check));
}

/* Replace one address of the packet (daddr when `dst`, else saddr) and
 * one port, fixing the IPv4 header checksum and the L4 checksum (pseudo
 * header included). The helpers handle CHECKSUM_PARTIAL packets from local
 * sockets (veth/macvlan offload) as well as complete checksums. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, __u32 l3_off, int dst,
				   const __u8 new_addr[16], __be16 new_port)
{
	const __u8 *old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u32 csum_off = l4_csum_off(p);
	__u64 mangled0 = p->proto == IPPROTO_UDP && !p->v6 ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 port_off = p->l4_off + (dst ? 2 : 0);

	if (!p->v6) {
		__be32 o, n;
		__u32 addr_off = l3_off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

		__builtin_memcpy(&o, old_addr + 12, 4);
		__builtin_memcpy(&n, new_addr + 12, 4);
		if (o != n) {
			if (bpf_l4_csum_replace(skb, csum_off, o, n, BPF_F_PSEUDO_HDR | mangled0 | sizeof(n)) < 0)
				return -1;
			if (bpf_l3_csum_replace(skb, l3_off + offsetof(struct iphdr, check), o, n, sizeof(n)) < 0)
				return -1;
			if (bpf_skb_store_bytes(skb, addr_off, &n, sizeof(n), 0) < 0)
				return -1;
		}
	} else {
		__u32 addr_off = l3_off + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));
		__u8 o[16], n[16];
		__s64 diff;

		__builtin_memcpy(o, old_addr, 16);
		__builtin_memcpy(n, new_addr, 16);
		if (!addr_eq(o, n)) {
			diff = bpf_csum_diff((__be32 *)o, 16, (__be32 *)n, 16, 0);
			if (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR) < 0)
				return -1;
			if (bpf_skb_store_bytes(skb, addr_off, n, 16, 0) < 0)
				return -1;
		}
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled0 | sizeof(new_port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
			return -1;
	}
	return 0;
}

static __always_inline __u64 ct_timeout(__u8 proto, __u8 state)
{
	if (proto != IPPROTO_TCP)
		return cfg_ct_udp_ns;
	if (state == CT_ESTABLISHED)
		return cfg_ct_tcp_established_ns;
	if (state == CT_CLOSING)
		return cfg_ct_tcp_closing_ns;
	return cfg_ct_tcp_syn_ns;
}

/* Move an entry along SYN -> established -> closing, and push its deadline
 * out (only written back when it changed noticeably). */
/* A SYN that finds a closing entry opens a new connection on a reused
 * port: the entry is the previous connection's and must not decide this
 * one (its backend may be terminating, its verdict stale). */
static __always_inline int ct_reopens(const struct ct_value *ct, const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN && ct->state == CT_CLOSING;
}

static __always_inline void ct_touch(struct ct_value *ct, const struct pkt *p, int reply, __u64 now)
{
	__u8 state = ct->state;
	__u64 expires;

	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)))
		state = CT_CLOSING;
	else if (reply && state == CT_NEW)
		state = CT_ESTABLISHED;
	expires = now + ct_timeout(p->proto, state);
	if (state != ct->state)
		ct->state = state;
	if (expires > ct->expires_ns + CT_REFRESH_NS || state == CT_CLOSING)
		ct->expires_ns = expires;
}

/* murmur3's finaliser over the flow: stable for one flow on every node. */
static __always_inline __u32 flow_hash(const struct pkt *p)
{
	const __u32 *s = (const __u32 *)p->saddr;
	__u32 h = 0x9747b28c ^ p->proto;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		h ^= s[i];
		h *= 0xcc9e2d51;
		h = (h << 15) | (h >> 17);
	}
	h ^= ((__u32)p->sport << 16) | p->dport;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 maglev_pick(const struct svc_value *svc, const struct pkt *p)
{
	__u32 m = cfg_maglev_m;
	__u32 idx, off;
	struct maglev_key k = {};
	struct maglev_value *t;

	if (!m)
		return 0;
	idx = flow_hash(p) % m;
	k.rev_nat_id = svc->rev_nat_id;
	k.chunk = idx / MAGLEV_CHUNK;
	off = idx % MAGLEV_CHUNK;
	t = bpf_map_lookup_elem(&sl_maglev, &k);
	if (!t || off >= MAGLEV_CHUNK)
		return 0;
	return t->backend_ids[off];
}

static __always_inline __u32 random_pick(const struct svc_value *svc, const struct svc_key *master)
{
	struct svc_key k = *master;
	struct svc_value *slot;

	k.slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = bpf_map_lookup_elem(&sl_services, &k);
	return slot ? slot->backend_id : 0;
}

/* A backend for a new connection: the client's affinity entry if it is
 * fresh and its backend still takes connections, else Maglev or random. */
static __always_inline __u32 select_backend(const struct svc_value *svc, const struct svc_key *master,
					    const struct pkt *p, __u64 now)
{
	struct affinity_key ak = {};
	struct affinity_value av = {};
	__u32 id = 0;

	if (svc->count == 0)
		return 0;
	if (svc->affinity_timeout) {
		struct affinity_value *cur;

		__builtin_memcpy(ak.client, p->saddr, 16);
		ak.rev_nat_id = svc->rev_nat_id;
		cur = bpf_map_lookup_elem(&sl_affinity, &ak);
		if (cur && now - cur->last_used_ns < (__u64)svc->affinity_timeout * 1000000000ULL) {
			struct backend_value *b = bpf_map_lookup_elem(&sl_backends, &cur->backend_id);

			if (b && b->state == BACKEND_ACTIVE)
				id = cur->backend_id;
		}
	}
	if (!id && svc->algorithm == SVC_ALG_MAGLEV)
		id = maglev_pick(svc, p);
	if (!id)
		id = random_pick(svc, master);
	if (id && svc->affinity_timeout) {
		av.backend_id = id;
		av.last_used_ns = now;
		bpf_map_update_elem(&sl_affinity, &ak, &av, BPF_ANY);
	}
	return id;
}

static __always_inline void ct_key_of(struct ct_key *k, const __u8 *s, const __u8 *d, __be16 sport, __be16 dport,
				      __u8 proto, __u8 kind)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->saddr, s, 16);
	__builtin_memcpy(k->daddr, d, 16);
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->kind = kind;
}

/* After DNAT the frame is still addressed (L2) to where the pod's stack
 * sent the VIP: its gateway. Hand it to the kernel's neighbour output for
 * the backend instead: bpf_redirect_neigh routes the new destination in the
 * pod's own table, on this interface, and takes L2 from the pod's neighbour
 * table (resolving it when needed, with the kernel's state machine), so a
 * Service connection takes the path a direct one to the backend would: an
 * on-link backend directly, not through the VPC router and back.
 * (bpf_fib_lookup would give the MAC without leaving the program, but it
 * refuses to route on an interface that does not forward, and a pod must
 * not.) The frame passes this program once more on its way out, as plain
 * traffic to the backend. Only a connection's first packets take this way:
 * once the backend has answered, its reply's source MAC is the next hop
 * (see set_next_hop). */
static __always_inline int next_hop(struct __sk_buff *skb)
{
	return bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
}

/* ---- network policy (see layout.h) ---- */

static __always_inline void flow_event(const struct pkt *p, __u32 dir, __u32 reason, __u32 ep_id, __u32 peer_id,
				       __u32 policy, __u32 backend_id)
{
	struct flow_event *e = bpf_ringbuf_reserve(&sl_events, sizeof(*e), 0);

	if (!e)
		return;
	e->time_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->dir = dir;
	e->reason = reason;
	e->endpoint_id = ep_id;
	e->peer_identity = peer_id;
	e->policy = policy;
	e->backend_id = backend_id;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* Report this new flow? One in cfg_flow_sample. */
static __always_inline int flow_sampled(void)
{
	return cfg_flow_sample && bpf_get_prandom_u32() % cfg_flow_sample == 0;
}

/* Drop a parsed packet: counted, and reported with its addresses. */
static __always_inline int drop_reported(struct __sk_buff *skb, const struct pkt *p, __u32 reason, __u32 dir)
{
	flow_event(p, dir, reason, 0, 0, 0, 0);
	return drop(skb, reason, dir);
}

/* Does a rule of `identity` allow the flow `k` describes? The exact port
 * first, then only the kinds of rule the endpoint has in this direction. */
static __always_inline int rule_allows(struct policy_key *k, __u32 identity, __u8 kinds)
{
	struct policy_match w;

	k->m.identity = identity;
	if (bpf_map_lookup_elem(&sl_policy, &k->m))
		return 1;
	if ((kinds & RULE_K_RANGE) && bpf_map_lookup_elem(&sl_policy_ranges, k))
		return 1;
	w = k->m;
	w.port = 0;
	if ((kinds & RULE_K_ANY_PORT) && bpf_map_lookup_elem(&sl_policy, &w))
		return 1;
	w.proto = 0;
	return (kinds & RULE_K_ANY_PROTO) && bpf_map_lookup_elem(&sl_policy, &w);
}

/* May a flow open at endpoint `ep_id` in direction `dir`, `peer` being the
 * other end and `port` the serving port (the destination's, either way)?
 * The peer is looked for by its pod identity, then by its CIDR identity,
 * then as anyone: one hash lookup each in the common case (an exact port),
 * however many rules and pods. A hairpinned flow comes from the hairpin
 * address: that is the pod itself. */
static __always_inline int policy_allows(const struct ep_policy_value *pol, __u32 ep_id, __u32 dir,
					 const struct pkt *p, const __u8 *peer, __u8 proto, __be16 port,
					 __u32 *peer_id)
{
	struct policy_key k = {};
	struct cidr_key ck;
	struct ipcache_value *v;
	__u8 kinds = dir == DIR_EGRESS ? pol->kinds[DIR_EGRESS] : pol->kinds[DIR_INGRESS];
	__u8 hp[16];
	__u32 id = 0;

	k.prefixlen = POLICY_BITS_EXACT;
	k.m.endpoint_id = ep_id;
	k.m.dir = dir;
	k.m.proto = proto;
	k.m.port = port;
	hairpin_addr(hp, p->v6);
	if (addr_eq(peer, hp)) {
		id = pol->identity;
	} else {
		v = bpf_map_lookup_elem(&sl_ipcache, peer);
		if (v)
			id = v->identity;
	}
	*peer_id = id ? id : ID_WORLD;
	/* Kubernetes: a pod cannot block its own node (kubelet probes). */
	if (id == ID_HOST && dir == DIR_INGRESS)
		return 1;
	if (id && rule_allows(&k, id, kinds))
		return 1;
	ck.prefixlen = 128;
	__builtin_memcpy(ck.addr, peer, 16);
	v = bpf_map_lookup_elem(&sl_cidr, &ck);
	if (v) {
		if (!id)
			*peer_id = v->identity;
		if (rule_allows(&k, v->identity, kinds))
			return 1;
	}
	return rule_allows(&k, ID_ANY, kinds);
}

/* 1 when the pod at `local` may open this flow in direction `dir`, else
 * the drop is counted and reported. A pod without a policy entry, or not
 * isolated in this direction, is unrestricted. `ep` is the pod's endpoint
 * entry when the caller already has it (egress, from the source check),
 * else NULL and it is looked up. */
static __always_inline int policy_ok(struct __sk_buff *skb, const struct pkt *p, __u32 dir,
				     struct endpoint_value *ep, const __u8 *local, const __u8 *peer, __be16 port)
{
	struct ep_policy_value *pol;
	__u32 peer_id = 0, ep_id;

	if (!ep)
		ep = bpf_map_lookup_elem(&sl_endpoints, local);
	if (!ep)
		return 1;
	ep_id = ep->endpoint_id;
	pol = bpf_map_lookup_elem(&sl_ep_policy, &ep_id);
	if (!pol || !(pol->flags & (dir == DIR_EGRESS ? POLICY_F_EGRESS : POLICY_F_INGRESS)))
		return 1;
	if (policy_allows(pol, ep_id, dir, p, peer, p->proto, port, &peer_id))
		return 1;
	count(DROP_POLICY, dir, skb->len);
	flow_event(p, dir, DROP_POLICY, ep_id, peer_id, dir == DIR_EGRESS ? pol->egress_policy : pol->ingress_policy, 0);
	return 0;
}

/* Conntrack and policy for a packet no Service translates, at the pod end
 * `dir` says (see layout.h for the entry's orientation). An entry that is
 * alive carries the flow; otherwise the packet opens the flow, if the pod's
 * policy lets it, and the entry is made. Returns the verdict. */
static __always_inline int track(struct __sk_buff *skb, const struct pkt *p, __u32 dir, struct ct_value *ct,
				 const struct ct_key *k, struct endpoint_value *ep)
{
	const __u8 *local = dir == DIR_EGRESS ? p->saddr : p->daddr;
	const __u8 *remote = dir == DIR_EGRESS ? p->daddr : p->saddr;
	struct ct_value nct = {};
	__u64 now = bpf_ktime_get_ns();

	if (ct && ct->expires_ns > now && !ct_reopens(ct, p)) {
		ct_touch(ct, p, (dir == DIR_EGRESS) == !!(ct->flags & CT_F_INBOUND), now);
		count(REASON_FORWARDED, dir, skb->len);
		return TC_ACT_OK;
	}
	if (!policy_ok(skb, p, dir, ep, local, remote, p->dport))
		return TC_ACT_SHOT;
	nct.state = CT_NEW;
	nct.flags = dir == DIR_INGRESS ? CT_F_INBOUND : 0;
	nct.expires_ns = now + ct_timeout(p->proto, CT_NEW);
	bpf_map_update_elem(&sl_ct, k, &nct, BPF_ANY);
	if (flow_sampled())
		flow_event(p, dir, REASON_FORWARDED, ep ? ep->endpoint_id : 0, 0, 0, 0);
	count(REASON_FORWARDED, dir, skb->len);
	return TC_ACT_OK;
}

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

/* A packet conntrack cannot follow (another protocol, a fragment after the
 * first, an ICMP error): an isolated pod lets it pass only on a rule for
 * every port of its protocol from/to the peer. IPv6 neighbour discovery and
 * MLD always pass, and so does an error the pod sends about a flow it has. */
static __always_inline int untracked(struct __sk_buff *skb, const struct pkt *p, __u32 dir,
				     struct endpoint_value *ep)
{
	if (p->proto == IPPROTO_ICMPV6 && p->v6 && !p->fragment) {
		__u8 type;

		if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0)
			return drop(skb, DROP_MALFORMED, dir);
		if ((type >= 130 && type <= 137) || type == 143)
			goto pass;
	}
	if (dir == DIR_EGRESS && icmp_related_egress(skb, p))
		goto pass;
	if (!policy_ok(skb, p, dir, ep, dir == DIR_EGRESS ? p->saddr : p->daddr, dir == DIR_EGRESS ? p->daddr : p->saddr,
		       0))
		return TC_ACT_SHOT;
pass:
	count(REASON_FORWARDED, dir, skb->len);
	return TC_ACT_OK;
}

/* bpf_csum_diff's 32-bit one's-complement sum, folded into a checksum. */
static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 c = (__u32)sum;

	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
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

static __always_inline int service(struct __sk_buff *skb, struct pkt *p, const struct svc_value *svc,
				   const struct svc_key *master, struct endpoint_value *ep)
{
	struct ct_key ck;
	struct ct_value *ct, nct = {};
	struct backend_value *b = 0;
	__u64 now = bpf_ktime_get_ns();
	__u8 hp[16], nh[6];
	int hairpin, have_nh = 0;
	__u32 id, keep = 0;

	if (p->fragment)
		return drop_reported(skb, p, DROP_FRAGMENT, DIR_EGRESS);
	ct_key_of(&ck, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_SERVICE);
	ct = bpf_map_lookup_elem(&sl_ct, &ck);
	if (ct && ct->expires_ns > now) {
		/* Chosen once per connection; a terminating backend keeps its flows. */
		b = bpf_map_lookup_elem(&sl_backends, &ct->backend_id);
		if (b && ct->nh_ifindex == skb->ifindex) {
			__builtin_memcpy(nh, ct->nh_mac, 6);
			have_nh = 1;
		}
		/* A new connection on a reused port is a new connection: it keeps
		 * the previous one's backend (and next hop) only while that backend
		 * takes new connections, and is judged by policy again. */
		if (b && ct_reopens(ct, p)) {
			keep = b->state == BACKEND_ACTIVE ? ct->backend_id : 0;
			have_nh = have_nh && keep;
			b = 0;
		}
		if (b)
			ct_touch(ct, p, 0, now);
	}
	if (!b) {
		struct ct_key fk;

		id = keep ? keep : select_backend(svc, master, p, now);
		if (!id)
			return svc->flags & SVC_F_REJECT ? reject(skb, p, DROP_NO_BACKEND)
							  : drop_reported(skb, p, DROP_NO_BACKEND, DIR_EGRESS);
		b = bpf_map_lookup_elem(&sl_backends, &id);
		if (!b)
			return drop_reported(skb, p, DROP_BACKEND_GONE, DIR_EGRESS);
		/* Egress policy sees the backend, not the VIP. */
		if (!policy_ok(skb, p, DIR_EGRESS, ep, p->saddr, b->addr, b->port))
			return TC_ACT_SHOT;
		hairpin = addr_eq(b->addr, p->saddr);
		nct.backend_id = id;
		nct.rev_nat_id = svc->rev_nat_id;
		nct.state = CT_NEW;
		nct.flags = hairpin ? CT_F_HAIRPIN : 0;
		nct.expires_ns = now + ct_timeout(p->proto, CT_NEW);
		if (have_nh) {
			__builtin_memcpy(nct.nh_mac, nh, 6);
			nct.nh_ifindex = skb->ifindex;
		}
		bpf_map_update_elem(&sl_ct, &ck, &nct, BPF_ANY);
		/* The flow as the backend sees it: a hairpinned one comes from
		 * the hairpin address. */
		hairpin_addr(hp, p->v6);
		ct_key_of(&fk, hairpin ? hp : p->saddr, b->addr, p->sport, b->port, p->proto, CT_FLOW);
		bpf_map_update_elem(&sl_ct, &fk, &nct, BPF_ANY);
		if (flow_sampled())
			flow_event(p, DIR_EGRESS, REASON_SERVICE_TRANSLATED, ep ? ep->endpoint_id : 0, 0, 0, id);
	}
	hairpin = addr_eq(b->addr, p->saddr);
	if (rewrite(skb, p, ETH_HLEN, 1, b->addr, b->port) < 0)
		return drop(skb, DROP_NAT_FAILED, DIR_EGRESS);
	count(REASON_SERVICE_TRANSLATED, DIR_EGRESS, skb->len);
	if (hairpin) {
		hairpin_addr(hp, p->v6);
		if (rewrite(skb, p, ETH_HLEN, 0, hp, p->sport) < 0)
			return drop(skb, DROP_NAT_FAILED, DIR_EGRESS);
		return redirect_self(skb, DIR_EGRESS, REASON_HAIRPIN, 0);
	}
	if (have_nh) {
		/* The backend has answered: its next hop is known, the frame
		 * leaves as it is, only re-addressed. */
		if (bpf_skb_store_bytes(skb, 0, nh, 6, 0) < 0)
			return drop(skb, DROP_NAT_FAILED, DIR_EGRESS);
		return TC_ACT_OK;
	}
	return next_hop(skb);
}

static __always_inline int is_v6_link_local_or_any(const __u8 *a)
{
	const __u64 *w = (const __u64 *)a;

	return (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) || (w[0] == 0 && w[1] == 0);
}

/* The MAC is written before the interface that marks it valid. A reader on
 * another CPU can still see a half-written MAC when a known next hop
 * changes; that costs one misaddressed packet of the flow, which its
 * transport resends. */
static __always_inline void set_next_hop(struct ct_value *ct, const __u8 *mac, __u32 ifindex)
{
	__builtin_memcpy(ct->nh_mac, mac, 6);
	asm volatile("" ::: "memory");
	ct->nh_ifindex = ifindex;
}

/* A reply from a backend: translate its source back to the VIP. A
 * hairpinned reply (the pod answering itself, seen at its egress) also gets
 * its destination back from the hairpin address and is turned around. */
static __always_inline int reply(struct __sk_buff *skb, struct pkt *p, __u32 dir, const __u8 *l2_src,
				 struct ct_value *flow)
{
	struct revnat_value *rn;
	const __u8 *client;
	int hairpin, learn = 0;
	__u64 now;

	/* `flow` is the CT_FLOW entry the reply's addresses swapped found: the
	 * flow as the client sent it. Expiry is not checked: a stale entry can
	 * only match a reply of that very flow, and LRU eviction and GC remove
	 * it. */
	rn = bpf_map_lookup_elem(&sl_revnat, &flow->rev_nat_id);
	if (!rn)
		return -1;
	hairpin = flow->flags & CT_F_HAIRPIN;
	client = hairpin ? p->saddr : p->daddr;
	now = bpf_ktime_get_ns();
	/* A reply delivered to the client names the next hop toward the
	 * backend in its source MAC. */
	if (l2_src && !hairpin && (flow->nh_ifindex != skb->ifindex || __builtin_memcmp(flow->nh_mac, l2_src, 6)))
		learn = 1;
	if (learn || flow->state == CT_NEW || (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)))) {
		/* State changes reach the client-side entry too: its timeout follows. */
		struct ct_key sk;
		struct ct_value *svc_ct;

		ct_key_of(&sk, client, rn->addr, p->dport, rn->port, p->proto, CT_SERVICE);
		svc_ct = bpf_map_lookup_elem(&sl_ct, &sk);
		if (svc_ct) {
			ct_touch(svc_ct, p, 1, now);
			if (learn)
				set_next_hop(svc_ct, l2_src, skb->ifindex);
		}
	}
	if (learn)
		set_next_hop(flow, l2_src, skb->ifindex);
	ct_touch(flow, p, 1, now);
	if (rewrite(skb, p, ETH_HLEN, 0, rn->addr, rn->port) < 0)
		return drop(skb, DROP_NAT_FAILED, dir);
	count(REASON_REPLY_TRANSLATED, dir, skb->len);
	if (hairpin) {
		if (rewrite(skb, p, ETH_HLEN, 1, p->saddr, p->dport) < 0)
			return drop(skb, DROP_NAT_FAILED, dir);
		return redirect_self(skb, dir, REASON_HAIRPIN, 1);
	}
	return TC_ACT_OK;
}


/* An ICMP error about a flow of the pod's is related to it: it passes
 * (returns -2) where the pod's policy would not let a new flow in. About a
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
static __always_inline int icmp_error(struct __sk_buff *skb, struct pkt *o)
{
	__u32 inner = o->l4_off + 8, csum_off = o->l4_off + 2;
	struct ct_key fk;
	struct ct_value *flow;
	struct revnat_value *rn;
	struct pkt in;
	__u8 type;
	int from_backend;

	if (bpf_skb_load_bytes(skb, o->l4_off, &type, 1) < 0 || !is_icmp_error(type, o->v6))
		return -1;
	if (parse(skb, inner, o->v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP), &in) || !in.tracked)
		return -1;
	/* The quoted packet is one the pod sent: its tuple is the pod's entry. */
	ct_key_of(&fk, in.saddr, in.daddr, in.sport, in.dport, in.proto, CT_FLOW);
	flow = bpf_map_lookup_elem(&sl_ct, &fk);
	if (!flow)
		return -1;
	if (!flow->rev_nat_id || (in.proto != IPPROTO_TCP && in.proto != IPPROTO_UDP))
		return -2;
	rn = bpf_map_lookup_elem(&sl_revnat, &flow->rev_nat_id);
	if (!rn)
		return -1;
	from_backend = addr_eq(o->saddr, in.daddr);
	if (!o->v6) {
		__be32 old, new;

		__builtin_memcpy(&old, in.daddr + 12, 4);
		__builtin_memcpy(&new, rn->addr + 12, 4);
		if (bpf_l3_csum_replace(skb, inner + offsetof(struct iphdr, check), old, new, 4) < 0 ||
		    bpf_skb_store_bytes(skb, inner + offsetof(struct iphdr, daddr), &new, 4, 0) < 0)
			return drop(skb, DROP_NAT_FAILED, DIR_INGRESS);
		if (from_backend &&
		    (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 4) < 0 ||
		     bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), &new, 4, 0) < 0))
			return drop(skb, DROP_NAT_FAILED, DIR_INGRESS);
	} else {
		__u8 old[16], new[16];
		__s64 diff;

		__builtin_memcpy(old, in.daddr, 16);
		__builtin_memcpy(new, rn->addr, 16);
		diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, 0) < 0 ||
		    bpf_skb_store_bytes(skb, inner + offsetof(struct ipv6hdr, daddr), new, 16, 0) < 0)
			return drop(skb, DROP_NAT_FAILED, DIR_INGRESS);
		if (from_backend &&
		    (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR) < 0 ||
		     bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, saddr), new, 16, 0) < 0))
			return drop(skb, DROP_NAT_FAILED, DIR_INGRESS);
	}
	if (in.dport != rn->port &&
	    (bpf_l4_csum_replace(skb, csum_off, in.dport, rn->port, 2) < 0 ||
	     bpf_skb_store_bytes(skb, in.l4_off + 2, &rn->port, 2, 0) < 0))
		return drop(skb, DROP_NAT_FAILED, DIR_INGRESS);
	count(REASON_ICMP_ERROR_TRANSLATED, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}


SEC("classifier")
int sl_egress(struct __sk_buff *skb)
{
	struct ethhdr eth;
	struct pkt p;
	struct svc_key k = {};
	struct svc_value *svc;
	struct ct_key ck;
	struct ct_value *ct;
	struct endpoint_value *ep = 0;
	int r;

	r = parse_frame(skb, &eth, &p);
	if (r)
		return drop(skb, r, DIR_EGRESS);
	if (!p.proto) {
		count(REASON_FORWARDED, DIR_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	/* Only the pod's own addresses may leave it. IPv6 neighbour discovery
	 * and DAD use link-local and unspecified sources. */
	if (cfg_source_check && !(p.v6 && is_v6_link_local_or_any(p.saddr))) {
		ep = bpf_map_lookup_elem(&sl_endpoints, p.saddr);
		if (!ep || ep->ifindex != skb->ifindex || __builtin_memcmp(ep->mac, eth.h_source, 6))
			return drop_reported(skb, &p, DROP_SOURCE_ADDRESS, DIR_EGRESS);
	}
	if ((p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) && !p.fragment) {
		__u8 hp[16];

		hairpin_addr(hp, p.v6);
		if (addr_eq(p.daddr, hp)) {
			ct_key_of(&ck, p.daddr, p.saddr, p.dport, p.sport, p.proto, CT_FLOW);
			ct = bpf_map_lookup_elem(&sl_ct, &ck);
			if (ct && ct->rev_nat_id)
				return reply(skb, &p, DIR_EGRESS, 0, ct);
		}
	}
	if (maybe_in(&sl_vip_filter, p.daddr)) {
		__builtin_memcpy(k.addr, p.daddr, 16);
		if (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) {
			k.port = p.dport;
			k.proto = p.proto;
			svc = bpf_map_lookup_elem(&sl_services, &k);
			if (svc && !(svc->flags & SVC_F_VIP_MARKER))
				return service(skb, &p, svc, &k, ep);
			k.port = 0;
			k.proto = 0;
		}
		/* Fail closed: anything else addressed to a VIP is dropped. */
		svc = bpf_map_lookup_elem(&sl_services, &k);
		if (svc)
			return svc->flags & SVC_F_REJECT && !p.fragment ? reject(skb, &p, DROP_UNKNOWN_PORT)
									 : drop_reported(skb, &p, DROP_UNKNOWN_PORT, DIR_EGRESS);
	}
	if (!p.tracked)
		return untracked(skb, &p, DIR_EGRESS, ep);
	ct_key_of(&ck, p.saddr, p.daddr, p.sport, p.dport, p.proto, CT_FLOW);
	return track(skb, &p, DIR_EGRESS, bpf_map_lookup_elem(&sl_ct, &ck), &ck, ep);
}

SEC("classifier")
int sl_ingress(struct __sk_buff *skb)
{
	struct ethhdr eth;
	struct pkt p;
	struct ct_key ck;
	struct ct_value *ct;
	int r;

	if (skb->mark == SL_MARK_ANSWER) {
		skb->mark = 0;
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	r = parse_frame(skb, &eth, &p);
	if (r)
		return drop(skb, r, DIR_INGRESS);
	if (!p.proto) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	if (p.tracked) {
		/* The pod's entry for the flow: a reply to a Service connection
		 * it made is translated back; anything else is plain tracking. */
		ct_key_of(&ck, p.daddr, p.saddr, p.dport, p.sport, p.proto, CT_FLOW);
		ct = bpf_map_lookup_elem(&sl_ct, &ck);
		if (ct && ct->rev_nat_id && !p.fragment)
			return reply(skb, &p, DIR_INGRESS, eth.h_source, ct);
		return track(skb, &p, DIR_INGRESS, ct, &ck, 0);
	}
	if (((p.proto == IPPROTO_ICMP && !p.v6) || (p.proto == IPPROTO_ICMPV6 && p.v6)) && !p.fragment) {
		r = icmp_error(skb, &p);
		if (r >= 0)
			return r;
		if (r == -2) {
			count(REASON_FORWARDED, DIR_INGRESS, skb->len);
			return TC_ACT_OK;
		}
	}
	return untracked(skb, &p, DIR_INGRESS, 0);
}

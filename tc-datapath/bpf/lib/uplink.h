/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Traffic from outside the node: NodePorts, load-balancer IPs and external
 * IPs, served on the node's uplinks (the ENI parents, its main interface)
 * by sl_uplink_in and sl_uplink_out.
 *
 * A connection's first packet finds the frontend's external-scope entry
 * (see svc_key), passes its source ranges, and gets a backend as a pod's
 * connection would (random, Maglev, affinity). Then:
 *  - a backend on this node (a pod behind one of its macvlan or ipvlan
 *    parents) gets the packet with the client's own address, handed to the
 *    parent as if it had arrived for the pod; its replies are turned back
 *    to come from the frontend as they leave through an uplink;
 *  - a backend elsewhere gets it from this node's address and a port of
 *    its own (SNAT), through the kernel's neighbour output, so that its
 *    replies come back here to be turned back.
 * A pod's hostPort (sl_hostports, from the runtime's portMappings) is
 * served the same way, to that pod.
 * Both directions are NAT entries (layout.h): in sl_nat_new until the
 * client answers the backend's first reply, then in sl_nat, so that a
 * flood of connections never answered (SYNs from forged sources) turns
 * over a table of its own and not the established ones. The pod at each
 * end tracks and judges the flow with its own programs as any other.
 */
#ifndef SLUICE_LIB_UPLINK_H
#define SLUICE_LIB_UPLINK_H

#include "frag.h"
#include "lb.h"

/* SNAT ports tried for a new connection before it is dropped: with each
 * try drawn at random, the first refusal comes at about 80% of a
 * backend's ports held (with 8 tries, about 35%). */
#define SNAT_TRIES 32

static __always_inline int addr_zero(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return !(w[0] | w[1] | w[2] | w[3]);
}

/* Claim a port of this node's address `node` toward backend `baddr`:
 * `bport` for a new connection: its reply entry `rev` is written under
 * it, if no connection holds it. Returns the port (network order), 0 if
 * none was free after SNAT_TRIES. A port stays taken NAT_SNAT_HOLD_NS
 * past its connection's FIN or RST (sl_snat_held, written by nat_apply),
 * for as long as the backend may hold the 4-tuple in TIME_WAIT: a SYN
 * reusing it there is refused by PAWS whenever the new client's
 * timestamps run behind the old one's (a per-connection offset, as recent
 * Linux, 6.18 here, and macOS clients have): the client stalls 1 s. So
 * each backend address and port takes about 36,280 / 65 s = 560 new
 * connections per second from outside through one node without a stall
 * (kube-proxy's conntrack: 28,000 / 120 s); past that a SYN is dropped
 * and its retry takes a port freed meanwhile. Every try is a port drawn
 * afresh: tries a fixed stride apart from one random start fall into the
 * runs earlier claims made (linear probing's clustering), and the first
 * refusal came at a quarter of the ports held. */
static __always_inline __be16 snat_claim(const struct pkt *p, const __u8 *node, const __u8 *baddr, __be16 bport,
					 const struct nat_value *rev, __u64 now)
{
	__u32 low = cfg_snat_low_max - cfg_snat_low_min + 1;
	__u32 span = low + cfg_snat_high_max - cfg_snat_high_min + 1;
	struct ct_key rk;
	int i;

#pragma clang loop unroll(disable)
	for (i = 0; i < SNAT_TRIES; i++) {
		__u32 idx = bpf_get_prandom_u32() % span;
		__be16 port = bpf_htons((__u16)(idx < low ? cfg_snat_low_min + idx : cfg_snat_high_min + idx - low));
		struct nat_value *cur;

		ct_key_of(&rk, baddr, node, bport, port, p->proto, CT_NAT);
		__u64 *held = bpf_map_lookup_elem(&sl_snat_held, &rk);

		if (held && *held > now)
			continue;
		cur = bpf_map_lookup_elem(&sl_nat, &rk);
		if (cur && cur->expires_ns > now)
			continue;
		cur = bpf_map_lookup_elem(&sl_nat_new, &rk);
		if (cur && cur->expires_ns > now)
			continue;
		if (bpf_map_update_elem(&sl_nat_new, &rk, rev, cur ? BPF_ANY : BPF_NOEXIST) == 0)
			return port;
	}
	return 0;
}

/* The key of the other direction's entry of `v`'s connection: `v`'s
 * rewrite, turned around (a client's entry names its reply's, and back). */
static __always_inline void nat_turned_key(struct ct_key *k, const struct nat_value *v, __u8 proto)
{
	ct_key_of(k, v->daddr, v->saddr, v->dport, v->sport, proto, CT_NAT);
}

/* The live entry under `k`, answered (sl_nat) or not (sl_nat_new). */
static __always_inline struct nat_value *nat_find(const struct ct_key *k, __u64 now)
{
	struct nat_value *v = bpf_map_lookup_elem(&sl_nat, k);

	if (v && v->expires_ns > now)
		return v;
	v = bpf_map_lookup_elem(&sl_nat_new, k);
	return v && v->expires_ns > now ? v : 0;
}

/* The client answered: both entries of its connection move from
 * sl_nat_new to sl_nat. Returns the forward entry where it now lies, or
 * NULL. */
static __always_inline struct nat_value *nat_promote(const struct ct_key *fk, struct nat_value *fwd, __u8 proto)
{
	struct nat_value *rev;
	struct ct_key rk;

	nat_turned_key(&rk, fwd, proto);
	rev = bpf_map_lookup_elem(&sl_nat_new, &rk);
	if (rev) {
		if (bpf_map_update_elem(&sl_nat, &rk, rev, BPF_ANY) < 0)
			return 0;
		bpf_map_delete_elem(&sl_nat_new, &rk);
	}
	if (bpf_map_update_elem(&sl_nat, fk, fwd, BPF_ANY) < 0)
		return 0;
	bpf_map_delete_elem(&sl_nat_new, fk);
	return bpf_map_lookup_elem(&sl_nat, fk);
}

/* A connection opened again on a 4-tuple that has an answered one (a SYN
 * on a closing connection, a datagram whose backend left) starts in
 * sl_nat_new like any other: the old entries that would be found before
 * it in sl_nat go. A backend elsewhere's reply entry stays: it holds its
 * SNAT port until it expires (see snat_claim), and the new connection
 * has a port of its own. */
static __always_inline void nat_forget(const struct ct_key *fk, __u8 proto)
{
	struct nat_value *old = bpf_map_lookup_elem(&sl_nat, fk);
	struct ct_key rk;

	if (!old || (old->flags & NAT_F_REPLY))
		return;
	if (old->flags & NAT_F_LOCAL) {
		nat_turned_key(&rk, old, proto);
		bpf_map_delete_elem(&sl_nat, &rk);
	}
	bpf_map_delete_elem(&sl_nat, fk);
}

/* Rewrite a packet by its NAT entry and send it on. */
static __always_inline int nat_apply(struct __sk_buff *skb, struct pkt *p, struct nat_value *v, __u32 dir, __u64 now)
{
	int reply = v->flags & NAT_F_REPLY;

	if (reply && (v->state == CT_NEW || (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST))))) {
		/* The client's entry follows the connection's state: an idle
		 * established connection keeps its backend. */
		struct ct_key fk;
		struct nat_value *fwd;

		nat_turned_key(&fk, v, p->proto);
		fwd = nat_find(&fk, now);
		if (fwd)
			state_touch(&fwd->state, &fwd->expires_ns, p, 1, now);
	}
	state_touch(&v->state, &v->expires_ns, p, reply, now);
	if ((v->flags & (NAT_F_SNAT | NAT_F_REMAP)) && p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST))) {
		/* Closing: its port is held past the backend's TIME_WAIT (see
		 * snat_claim), a SNAT port and a client's remapped one alike.
		 * The reply's key: the packet's own for a reply, the turned
		 * rewrite for the client's. */
		struct ct_key hk;
		__u64 until = now + NAT_SNAT_HOLD_NS;

		if (reply)
			ct_key_of(&hk, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_NAT);
		else
			nat_turned_key(&hk, v, p->proto);
		bpf_map_update_elem(&sl_snat_held, &hk, &until, BPF_ANY);
	}
	if (!addr_eq(v->saddr, p->saddr) || v->sport != p->sport)
		if (rewrite(skb, p, ETH_HLEN, 0, v->saddr, v->sport) != REWRITE_OK)
			return drop(skb, DROP_NAT_FAILED, dir);
	if (!addr_eq(v->daddr, p->daddr) || v->dport != p->dport)
		if (rewrite(skb, p, ETH_HLEN, 1, v->daddr, v->dport) != REWRITE_OK)
			return drop(skb, DROP_NAT_FAILED, dir);
	count(reply ? REASON_REPLY_TRANSLATED : REASON_SERVICE_TRANSLATED, dir, skb->len);
	if (!reply && (v->flags & NAT_F_LOCAL)) {
		/* Addressed to the pod and handed to its parent, whose macvlan or
		 * ipvlan demultiplexing delivers it as any frame for the pod. */
		if (bpf_skb_store_bytes(skb, 0, v->mac, 6, 0) < 0)
			return drop(skb, DROP_NAT_FAILED, dir);
		if (v->ifindex == skb->ifindex)
			return TC_ACT_OK;
		return bpf_redirect(v->ifindex, BPF_F_INGRESS);
	}
	/* A local backend's reply leaving: on its way already. */
	if (dir == DIR_EGRESS)
		return TC_ACT_OK;
	/* To a backend elsewhere, or back to the client: routed by the node
	 * out of the interface it came in by. */
	return bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
}

/* Whether reply entry `v` turns replies back to `p`'s client from `p`'s
 * frontend: it is the entry of an earlier connection on `p`'s own key. */
static __always_inline int nat_turns_back_to(const struct nat_value *v, const struct pkt *p)
{
	return v->dport == p->sport && v->sport == p->dport && addr_eq(v->daddr, p->saddr) && addr_eq(v->saddr, p->daddr);
}

/* The NAT entries of a new connection from outside to backend `baddr`:
 * `bport` (`id` in sl_backends; 0 for a hostPort's pod). `fk` is its
 * (CT_NAT) key as it arrived. Returns 0, or DROP_* when it cannot have
 * them. */
static __always_inline __u32 uplink_nat(struct __sk_buff *skb, struct pkt *p, const struct ct_key *fk,
					const __u8 *baddr, __be16 bport, __u32 id, __u64 now)
{
	struct nat_value fwd = {}, rev = {}, *old;
	struct endpoint_value *ep;

	fwd.backend_id = id;
	fwd.state = CT_NEW;
	fwd.expires_ns = now + ct_timeout(p->proto, CT_NEW);
	__builtin_memcpy(fwd.daddr, baddr, 16);
	fwd.dport = bport;
	rev.backend_id = id;
	rev.state = CT_NEW;
	rev.expires_ns = fwd.expires_ns;
	rev.flags = NAT_F_REPLY;
	__builtin_memcpy(rev.saddr, p->daddr, 16);
	rev.sport = p->dport;
	__builtin_memcpy(rev.daddr, p->saddr, 16);
	rev.dport = p->sport;
	ep = bpf_map_lookup_elem(&sl_endpoints, baddr);
	if (ep && ep->parent_ifindex) {
		struct ct_key rk;

		fwd.flags = NAT_F_LOCAL;
		fwd.ifindex = ep->parent_ifindex;
		__builtin_memcpy(fwd.mac, ep->mac, 6);
		__builtin_memcpy(fwd.saddr, p->saddr, 16);
		fwd.sport = p->sport;
		rev.flags |= NAT_F_LOCAL;
		/* The backend sees the client's own address and port, so a
		 * client reusing its port toward another frontend of the same
		 * backend (NodePort, then the load-balancer IP; or two clients
		 * behind one NAT, which may give both the same port for
		 * different destinations) meets the reply key of the earlier
		 * connection there. A closing one makes way, as a SYN reopens
		 * a closing connection on its own key (replies look in sl_nat
		 * first: its entry would turn the new SYN-ACK back from the old
		 * frontend, and the client would reset it). A live one keeps
		 * its 4-tuple at the backend: the new connection comes from
		 * another port of the client's address, as netfilter remaps a
		 * source port on such a clash; the client never sees it. A
		 * port an earlier remap closed is held as a SNAT port is (the
		 * backend may hold it in TIME_WAIT): the client's own use of
		 * it is remapped too. */
		ct_key_of(&rk, baddr, p->saddr, bport, p->sport, p->proto, CT_NAT);
		old = nat_find(&rk, now);
		if (old && old->state == CT_CLOSING) {
			bpf_map_delete_elem(&sl_nat, &rk);
			old = nat_find(&rk, now);
		}
		__u64 *held = bpf_map_lookup_elem(&sl_snat_held, &rk);

		if ((!held || *held <= now) && (!old || old->state == CT_CLOSING || nat_turns_back_to(old, p))) {
			if (bpf_map_update_elem(&sl_nat_new, &rk, &rev, BPF_ANY) < 0)
				return DROP_NAT_FAILED;
		} else {
			rev.flags |= NAT_F_REMAP;
			fwd.flags |= NAT_F_REMAP;
			fwd.sport = snat_claim(p, p->saddr, baddr, bport, &rev, now);
			if (!fwd.sport)
				return DROP_NO_SNAT_PORT;
		}
	} else {
		__u32 ifindex = skb->ifindex;
		struct uplink_value *up = bpf_map_lookup_elem(&sl_uplinks, &ifindex);
		const __u8 *node;
		__be16 port;

		if (!up)
			return DROP_NO_SNAT_PORT;
		node = p->v6 ? up->addr6 : up->addr4;
		if (addr_zero(node))
			return DROP_NO_SNAT_PORT;
		rev.flags |= NAT_F_SNAT;
		port = snat_claim(p, node, baddr, bport, &rev, now);
		if (!port)
			return DROP_NO_SNAT_PORT;
		fwd.flags = NAT_F_SNAT;
		__builtin_memcpy(fwd.saddr, node, 16);
		fwd.sport = port;
	}
	if (bpf_map_update_elem(&sl_nat_new, fk, &fwd, BPF_ANY) < 0)
		return DROP_NAT_FAILED;
	if (flow_sampled())
		flow_event(p, DIR_INGRESS, REASON_SERVICE_TRANSLATED, 0, 0, 0, id);
	return 0;
}

/* The backend of a new connection to an external frontend (its id; its
 * entry in `*b`, NULL on entry), or 0 with `*why` the drop reason. */
static __always_inline __u32 uplink_backend(struct pkt *p, struct svc_value *svc, const struct svc_key *master,
					    struct backend_value **b, __u32 *why, __u64 now)
{
	__u32 id;

	if (!source_in_range(svc, p)) {
		*why = DROP_SOURCE_RANGE;
		return 0;
	}
	id = select_backend(svc, master, p, now, b);
	if (!id) {
		*why = DROP_NO_BACKEND;
		return 0;
	}
	if (!*b) {
		*why = DROP_BACKEND_GONE;
		return 0;
	}
	return id;
}

/* The external frontend (NodePort, load-balancer or external IP) a packet
 * from outside is addressed to, its key left in `sk` (zeroed by the
 * caller); NULL if there is none. */
static __always_inline struct svc_value *external_frontend(const struct pkt *p, struct svc_key *sk)
{
	if (!maybe_in(&sl_vip_filter, p->daddr))
		return 0;
	__builtin_memcpy(sk->addr, p->daddr, 16);
	sk->port = p->dport;
	sk->proto = p->proto;
	sk->scope = SVC_SCOPE_EXTERNAL;
	return bpf_map_lookup_elem(&sl_services, sk);
}

/* Whether a datagram of a flow from outside stays with its backend `b`
 * (id `id`): as at a pod (lb.h, service()), while the frontend still sends
 * new flows there, or has nowhere else to send them. A backend whose pod
 * began terminating loses its datagram flows to a ready one at once, as
 * kube-proxy flushes a UDP conntrack entry once its endpoint stops being
 * ready; its TCP connections stay. */
static __always_inline int datagram_stays(const struct pkt *p, struct svc_key *sk, const struct backend_value *b,
					  __u32 id)
{
	struct svc_value *svc;

	if (b->state == BACKEND_ACTIVE)
		return 1;
	svc = external_frontend(p, sk);
	return !svc || !svc->count || carried_backend(svc, id);
}

/* An ICMP error from the path (a "fragmentation needed", a "packet too
 * big", an unreachable) about a packet this node sent a client from a
 * frontend: it quotes frontend -> client. The client's entry names the
 * backend; the error is handed to it as about the packet it sent, so its
 * stack learns the path's MTU (without it, a client behind a smaller MTU
 * never gets a full-sized segment: a black hole). A local backend gets it
 * as its parent delivers, from the router that sent it; a backend
 * elsewhere, about its packet to this node's SNAT port, from this node.
 * Anything else passes untouched. */
static __always_inline int uplink_icmp_error(struct __sk_buff *skb, struct pkt *o)
{
	__u32 inner = o->l4_off + 8, csum_off = o->l4_off + 2;
	__u32 ip_src = o->v6 ? offsetof(struct ipv6hdr, saddr) : offsetof(struct iphdr, saddr);
	__u32 ip_dst = o->v6 ? offsetof(struct ipv6hdr, daddr) : offsetof(struct iphdr, daddr);
	__u32 check = offsetof(struct iphdr, check);
	struct nat_value *fwd;
	struct ct_key fk;
	struct pkt in;
	__u8 type;
	int snat;

	if (bpf_skb_load_bytes(skb, o->l4_off, &type, 1) < 0 || !is_icmp_error(type, o->v6))
		return TC_ACT_OK;
	if (parse_quoted(skb, inner, o->v6, &in) || (in.proto != IPPROTO_TCP && in.proto != IPPROTO_UDP) ||
	    !addr_eq(in.saddr, o->daddr))
		return TC_ACT_OK;
	ct_key_of(&fk, in.daddr, in.saddr, in.dport, in.sport, in.proto, CT_NAT);
	fwd = nat_find(&fk, ct_now());
	if (!fwd || (fwd->flags & NAT_F_REPLY))
		return TC_ACT_OK;
	snat = fwd->flags & NAT_F_SNAT;
	/* The quote: from the backend; to this node's SNAT port for one
	 * elsewhere, to the client's remapped port for a clash here (the
	 * address the client's own). Then the outer header: to the backend;
	 * from this node for one elsewhere (the fabric takes a node's
	 * packets from its own address only). */
	if (icmp_set_addr(skb, o->v6, csum_off, inner + ip_src, inner + check, in.saddr, fwd->daddr, 0) < 0 ||
	    icmp_set_port(skb, csum_off, in.l4_off, in.sport, fwd->dport) < 0)
		goto failed;
	if ((fwd->flags & (NAT_F_SNAT | NAT_F_REMAP)) &&
	    (icmp_set_addr(skb, o->v6, csum_off, inner + ip_dst, inner + check, in.daddr, fwd->saddr, 0) < 0 ||
	     icmp_set_port(skb, csum_off, in.l4_off + 2, in.dport, fwd->sport) < 0))
		goto failed;
	if (icmp_set_addr(skb, o->v6, csum_off, ETH_HLEN + ip_dst, ETH_HLEN + check, o->daddr, fwd->daddr, 1) < 0)
		goto failed;
	if (snat && icmp_set_addr(skb, o->v6, csum_off, ETH_HLEN + ip_src, ETH_HLEN + check, o->saddr, fwd->saddr, 1) < 0)
		goto failed;
	count(REASON_ICMP_ERROR_TRANSLATED, DIR_INGRESS, skb->len);
	if (snat)
		return bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
	if (bpf_skb_store_bytes(skb, 0, fwd->mac, 6, 0) < 0)
		goto failed;
	if (fwd->ifindex == skb->ifindex)
		return TC_ACT_OK;
	return bpf_redirect(fwd->ifindex, BPF_F_INGRESS);
failed:
	return drop(skb, DROP_NAT_FAILED, DIR_INGRESS);
}

/* Both uplink programs: `dir` ingress (from the VPC) or egress (to it).
 * Each helper that builds a packet or rewrites one is reached from one
 * place only (the stack is shared by everything inlined here). */
static __always_inline int uplink(struct __sk_buff *skb, __u32 dir)
{
	struct ethhdr eth;
	struct pkt p;
	struct ct_key k;
	struct svc_key sk = {};
	struct hostport_key hk = {};
	struct hostport_value *hp;
	struct svc_value *svc = 0;
	struct backend_value *b = 0;
	struct nat_value *v, *n;
	const __u8 *baddr;
	__be16 bport;
	__u32 id = 0, why = 0;
	int fresh = 0, answered;
	__u64 now;

	/* Only what a NAT entry or an external frontend names is ours: the
	 * rest is the node's own traffic or its pods', judged elsewhere. A
	 * later fragment takes the ports its first carried (frag.h) and
	 * follows its entry. */
	if (parse_frame(skb, &eth, &p) || !p.ip)
		return TC_ACT_OK;
	frag_ports(&p);
	if (!p.tracked)
		return dir == DIR_INGRESS && !p.fragment &&
				       (p.v6 ? p.proto == IPPROTO_ICMPV6 : p.proto == IPPROTO_ICMP)
			       ? uplink_icmp_error(skb, &p)
			       : TC_ACT_OK;
	now = ct_now();
	ct_key_of(&k, p.saddr, p.daddr, p.sport, p.dport, p.proto, CT_NAT);
	v = bpf_map_lookup_elem(&sl_nat, &k);
	answered = v != 0;
	/* Not answered yet, or no connection of ours: any packet can be a
	 * connection's before its client answers, a local backend's data
	 * too (a connection picked up mid-stream, its entries expired, is
	 * answered only after its backend's next segment). */
	if (!v || v->expires_ns <= now) {
		n = bpf_map_lookup_elem(&sl_nat_new, &k);
		if (n) {
			v = n;
			fresh = 1;
		}
	}
	/* Whether `v` is set is tested as it is: clang would test the two
	 * lookups' results or-ed together, which the verifier refuses on
	 * pointers. */
	opaque_ptr(v);
	if (v && v->expires_ns > now && !state_reopens(v->state, &p)) {
		/* A reply comes in only from a backend elsewhere, to this node's
		 * SNAT port, and leaves only from a pod of this node. A frame from
		 * outside under a local backend's reply key claims to be that pod
		 * (turned back, it would reach the client from the frontend with
		 * the sender's payload): dropped. Nothing of the node's own that
		 * leaves is a backend's reply to it. */
		if (v->flags & NAT_F_REPLY) {
			if (v->flags & (dir == DIR_INGRESS ? NAT_F_SNAT : NAT_F_LOCAL))
				goto apply;
			return dir == DIR_INGRESS ? drop(skb, DROP_SOURCE_ADDRESS, dir) : TC_ACT_OK;
		}
		if (dir == DIR_INGRESS) {
			if (!v->backend_id)
				goto forward;
			b = bpf_map_lookup_elem(&sl_backends, &v->backend_id);
			if (b && (p.proto == IPPROTO_TCP || datagram_stays(&p, &sk, b, v->backend_id)))
				goto forward;
			/* Its backend left: a TCP connection is reset. A datagram,
			 * its backend gone or no longer taking new flows, gets a
			 * backend afresh. */
			b = 0;
			if (fresh)
				bpf_map_delete_elem(&sl_nat_new, &k);
			else
				nat_forget(&k, p.proto);
			if (p.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN) {
				if ((p.tcp_flags & TCP_RST) || p.fragment)
					return drop(skb, DROP_BACKEND_GONE, dir);
				why = DROP_BACKEND_GONE;
				goto refuse;
			}
		}
	}
	/* A later fragment opens nothing: its first fragment made the entry,
	 * or it is no connection's. */
	if (dir == DIR_EGRESS || p.fragment == FRAG_LATER)
		return TC_ACT_OK;
	svc = external_frontend(&p, &sk);
	if (svc) {
		id = uplink_backend(&p, svc, &sk, &b, &why, now);
		if (!id || !b) {
			if (why == DROP_NO_BACKEND && (svc->flags & SVC_F_REJECT))
				goto refuse;
			return drop_reported(skb, &p, why ? why : DROP_BACKEND_GONE, dir);
		}
		baddr = b->addr;
		bport = b->port;
	} else {
		/* A pod's hostPort on this node's address. */
		__builtin_memcpy(hk.addr, p.daddr, 16);
		hk.port = p.dport;
		hk.proto = p.proto;
		hp = bpf_map_lookup_elem(&sl_hostports, &hk);
		if (!hp)
			return TC_ACT_OK;
		baddr = hp->addr;
		bport = hp->port;
	}
	if (answered)
		nat_forget(&k, p.proto);
	why = uplink_nat(skb, &p, &k, baddr, bport, id, now);
	if (why)
		return drop_reported(skb, &p, why, dir);
	v = bpf_map_lookup_elem(&sl_nat_new, &k);
	if (!v)
		return drop_reported(skb, &p, DROP_NAT_FAILED, dir);
	goto apply;
forward:
	/* The client's packet after its backend's first reply answers it
	 * (a SYN retransmitted does not): the connection moves to sl_nat. */
	if (fresh && v->state == CT_ESTABLISHED &&
	    !(p.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)) {
		v = nat_promote(&k, v, p.proto);
		if (!v)
			return drop_reported(skb, &p, DROP_NAT_FAILED, dir);
	}
apply:
	return nat_apply(skb, &p, v, dir, now);
refuse:
	return reject(skb, &p, why, dir);
}

#endif

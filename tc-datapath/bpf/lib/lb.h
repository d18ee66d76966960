/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service load-balancing: the VIP filter, backend selection (random,
 * Maglev, affinity), DNAT at the client's egress and reverse NAT of the
 * replies.
 */
#ifndef SLUICE_LIB_LB_H
#define SLUICE_LIB_LB_H

#include "conntrack.h"
#include "csum.h"
#include "forward.h"
#include "icmp.h"
#include "reject.h"
#include "policy.h"

/* See the address filters in layout.h: false means certainly not in. */
static __always_inline int maybe_in(void *filter, const __u8 *addr)
{
	__u32 slot = vip_slot(addr), word = slot / 8;
	__u64 *w = bpf_map_lookup_elem(filter, &word);

	return !w || ((*w >> ((slot % 8) * 8)) & 0xff);
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

/* Opaque to clang, so that it keeps the branch around its use: a masked
 * select (flag & pointer) is arithmetic the verifier refuses on a pointer. */
#define opaque_ptr(p) asm volatile("" : "+r"(p))

/* A backend at random: its id, and in `*b` its entry when the frontend or
 * the slot carries one (else `*b` is left alone). */
static __always_inline __u32 random_pick(struct svc_value *svc, const struct svc_key *master,
					 struct backend_value **b)
{
	struct svc_key k = *master;
	struct svc_value *slot;
	__u32 i = bpf_get_prandom_u32() % svc->count;

	if (svc->flags & SVC_F_INLINE) {
		struct svc_backend *e;

		if (i >= SVC_INLINE)
			return 0;
		e = &svc->inline_backends[i];
		opaque_ptr(e);
		*b = &e->entry;
		return e->id;
	}
	k.slot = i + 1;
	slot = bpf_map_lookup_elem(&sl_services, &k);
	if (!slot)
		return 0;
	if (slot->flags & SVC_F_SLOT_BACKEND) {
		struct backend_value *e = &slot->backend;

		opaque_ptr(e);
		*b = e;
	}
	return slot->backend_id;
}

/* The entry of backend `id` when the frontend carries it: one that takes
 * new connections through this frontend. NULL otherwise (no such id, a
 * terminating backend, slots), and the caller looks it up. */
static __always_inline struct backend_value *carried_backend(struct svc_value *svc, __u32 id)
{
	struct svc_backend *e;
	int i;

	if (!id || !(svc->flags & SVC_F_INLINE))
		return 0;
#pragma unroll
	for (i = 0; i < SVC_INLINE; i++) {
		if (i >= svc->count)
			break;
		e = &svc->inline_backends[i];
		if (e->id == id) {
			opaque_ptr(e);
			return &e->entry;
		}
	}
	return 0;
}

/* Does the frontend admit this client (loadBalancerSourceRanges: a
 * load-balancer IP's, from outside at the uplink and from a pod here)? */
static __always_inline int source_in_range(const struct svc_value *svc, const struct pkt *p)
{
	struct lb_source_key k = {};

	if (!(svc->flags & SVC_F_SOURCE_RANGES))
		return 1;
	k.prefixlen = 32 + 128;
	k.rev_nat_id = svc->rev_nat_id;
	__builtin_memcpy(k.addr, p->saddr, 16);
	return bpf_map_lookup_elem(&sl_lb_sources, &k) != 0;
}

/* A backend for a new connection: the client's affinity entry if it is
 * fresh and its backend still takes connections, else Maglev or random.
 * Returns its id (0: none) and sets `*b`, NULL on entry, to its entry: the
 * one the frontend or slot carries, else the one in sl_backends (NULL if
 * that is gone). */
static __always_inline __u32 select_backend(struct svc_value *svc, const struct svc_key *master,
					    const struct pkt *p, __u64 now, struct backend_value **b)
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
			struct backend_value *e = bpf_map_lookup_elem(&sl_backends, &cur->backend_id);

			if (e && e->state == BACKEND_ACTIVE) {
				id = cur->backend_id;
				opaque_ptr(e);
				*b = e;
			}
		}
	}
	if (!id && svc->algorithm == SVC_ALG_MAGLEV)
		id = maglev_pick(svc, p);
	if (!id)
		id = random_pick(svc, master, b);
	if (id && !*b)
		*b = bpf_map_lookup_elem(&sl_backends, &id);
	if (id && svc->affinity_timeout) {
		av.backend_id = id;
		av.last_used_ns = now;
		bpf_map_update_elem(&sl_affinity, &ak, &av, BPF_ANY);
	}
	return id;
}

/* A segment of a connection whose backend has left the Service (its pod is
 * gone: the agent marks such entries with backend 0). Another backend would
 * not know the connection and the old one is no more: reset it now, from
 * the VIP, rather than let the client time out. The entry goes; a new
 * connection on the same ports picks a backend afresh. */
static __always_inline int backend_gone(struct __sk_buff *skb, const struct pkt *p, const struct ct_key *ck)
{
	bpf_map_delete_elem(&sl_ct, ck);
	count(DROP_BACKEND_GONE, DIR_EGRESS, skb->len);
	flow_event(p, DIR_EGRESS, DROP_BACKEND_GONE, 0, 0, 0, 0);
	if ((p->tcp_flags & TCP_RST) || p->fragment)
		return TC_ACT_SHOT;
	return reset(skb, p, DIR_EGRESS);
}

/* Whether the segment that found `ct` (its CT_SERVICE entry) is served
 * from that entry alone, without its frontend or backend: TCP, the
 * backend's address kept there (CT_F_NAT), a live entry, no new connection
 * on a reused port. A draining backend keeps its connections, so nothing
 * else is to be looked at; a removed one's connections the agent marks
 * with backend 0, and they are reset, but for a bare SYN, which picks a
 * backend afresh. A datagram is not served so: it follows its backend
 * only while that takes new flows, which sl_backends says. */
static __always_inline int ct_translates(const struct ct_value *ct, const struct pkt *p, __u64 now)
{
	return ct && p->proto == IPPROTO_TCP && (ct->flags & CT_F_NAT) && ct->expires_ns > now && !ct_reopens(ct, p) &&
	       (ct->backend_id || (p->tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN);
}

/* A segment to Service `svc`, whose CT_SERVICE entry `ct` (or NULL) was
 * found under key `ck`; `svc` is NULL when ct_translates() held. */
static __always_inline int service(struct __sk_buff *skb, struct pkt *p, struct svc_value *svc,
				   const struct svc_key *master, struct endpoint_value *ep, struct ct_key *ck,
				   struct ct_value *ct, __u64 now)
{
	struct backend_value *b = 0;
	const __u8 *to;
	__be16 to_port;
	__u8 hp[16], nh[6];
	int hairpin, have_nh = 0;
	__u32 id, keep = 0;

	/* A later fragment goes where its first fragment went, or nowhere. */
	if (p->fragment == FRAG_LATER && !p->tracked)
		return drop_reported(skb, p, DROP_FRAGMENT, DIR_EGRESS);
	if (!svc) {
		if (!ct->backend_id)
			goto gone;
		to = ct->nat_addr;
		to_port = ct->nat_port;
		if (ct->nh_ifindex == skb->ifindex) {
			__builtin_memcpy(nh, ct->nh_mac, 6);
			have_nh = 1;
		}
		ct_touch(ct, p, 0, now);
		goto translate;
	}
	if (ct && ct->expires_ns > now) {
		/* Chosen once per connection; a draining backend (terminating,
		 * or no longer ready) keeps its TCP connections. */
		b = carried_backend(svc, ct->backend_id);
		if (!b && ct->backend_id)
			b = bpf_map_lookup_elem(&sl_backends, &ct->backend_id);
		if (!b && p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN)
			goto gone;
		/* Datagrams follow their backend only while it takes new flows:
		 * the next one goes to a ready backend when there is one. */
		if (b && p->proto != IPPROTO_TCP && b->state != BACKEND_ACTIVE && svc->count)
			b = 0;
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
		struct ct_value *fct, nct = {};
		__u32 fresh;

		if (p->fragment == FRAG_LATER)
			return drop_reported(skb, p, DROP_FRAGMENT, DIR_EGRESS);
		if (!source_in_range(svc, p))
			return drop_reported(skb, p, DROP_SOURCE_RANGE, DIR_EGRESS);
		if (keep) {
			id = keep;
			b = bpf_map_lookup_elem(&sl_backends, &id);
		} else {
			id = select_backend(svc, master, p, now, &b);
		}
		if (!id)
			return svc->flags & SVC_F_REJECT ? reject(skb, p, DROP_NO_BACKEND, DIR_EGRESS)
							  : drop_reported(skb, p, DROP_NO_BACKEND, DIR_EGRESS);
		if (!b)
			return drop_reported(skb, p, DROP_BACKEND_GONE, DIR_EGRESS);
		/* Egress policy sees the backend, not the VIP. */
		if (!policy_ok(skb, p, DIR_EGRESS, ep, p->saddr, b->addr, b->port))
			return TC_ACT_SHOT;
		hairpin = addr_eq(b->addr, p->saddr);
		/* The flow as the backend sees it (a hairpinned one comes from the
		 * hairpin address), in ck's buffer: sl_egress's stack is at the
		 * verifier's limit. A reused port finds both entries there (the
		 * backend kept): they are rewritten, not charged again. */
		hairpin_addr(hp, p->v6);
		ct_key_of(ck, hairpin ? hp : p->saddr, b->addr, p->sport, b->port, p->proto, CT_FLOW);
		fct = bpf_map_lookup_elem(&sl_ct, ck);
		/* The pod's kernel gives one source port to connections with
		 * different destinations: two Services (or two ports of one)
		 * with a backend in common can meet at one 4-tuple there. While
		 * another Service's TCP connection holds it live, a new one
		 * would take its flow entry (its replies would come back from
		 * this VIP) and its SYN would reach that connection's socket:
		 * both would break. It is refused at once, the client's retry
		 * takes another port. (Remapping its source port, as netfilter
		 * does, is not built here yet; the uplink does it.) A closing
		 * one, or a datagram flow, gives way. */
		if (fct && p->proto == IPPROTO_TCP && (fct->flags & CT_F_NAT) && fct->state != CT_CLOSING &&
		    fct->expires_ns > now && (fct->nat_port != p->dport || !addr_eq(fct->nat_addr, p->daddr)))
			return reject(skb, p, DROP_PORT_CLASH, DIR_EGRESS);
		fresh = !ct + !fct;
		if (fresh && !ct_admit(p->saddr, ep, fresh))
			return drop_reported(skb, p, DROP_CT_POD_LIMIT, DIR_EGRESS);
		nct.backend_id = id;
		nct.rev_nat_id = svc->rev_nat_id;
		nct.state = CT_NEW;
		nct.flags = (hairpin ? CT_F_HAIRPIN : 0) | CT_F_NAT;
		nct.expires_ns = now + ct_timeout(p->proto, CT_NEW);
		if (have_nh) {
			__builtin_memcpy(nct.nh_mac, nh, 6);
			nct.nh_ifindex = skb->ifindex;
		}
		/* The flow entry translates replies back to the VIP, the
		 * Service entry the client's segments on to the backend. */
		__builtin_memcpy(nct.nat_addr, p->daddr, 16);
		nct.nat_port = p->dport;
		ct_store(fct, ck, &nct, now);
		ct_key_of(ck, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_SERVICE);
		__builtin_memcpy(nct.nat_addr, b->addr, 16);
		nct.nat_port = b->port;
		ct_store(ct, ck, &nct, now);
		if (flow_sampled())
			flow_event(p, DIR_EGRESS, REASON_SERVICE_TRANSLATED, ep ? ep->endpoint_id : 0, 0, 0, id);
	}
	to = b->addr;
	to_port = b->port;
translate:
	hairpin = addr_eq(to, p->saddr);
	if (rewrite_fast(skb, p, ETH_HLEN, 1, to, to_port, 0) != REWRITE_OK)
		return drop(skb, DROP_NAT_FAILED, DIR_EGRESS);
	count(REASON_SERVICE_TRANSLATED, DIR_EGRESS, skb->len);
	if (hairpin) {
		hairpin_addr(hp, p->v6);
		if (rewrite(skb, p, ETH_HLEN, 0, hp, p->sport) != REWRITE_OK)
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
gone:
	return backend_gone(skb, p, ck);
}

/* A reply from a backend: translate its source back to the VIP. A
 * hairpinned reply (the pod answering itself, seen at its egress) also gets
 * its destination back from the hairpin address and is turned around. */
static __always_inline int reply(struct __sk_buff *skb, struct pkt *p, __u32 dir, const __u8 *l2_src,
				 struct ct_value *flow)
{
	struct revnat_value *rn;
	const __u8 *client, *vip;
	__be16 vport;
	int hairpin, learn = 0;
	__u64 now;

	/* `flow` is the CT_FLOW entry the reply's addresses swapped found: the
	 * flow as the client sent it. Expiry is not checked: a stale entry can
	 * only match a reply of that very flow, and LRU eviction and GC remove
	 * it. The VIP is the entry's own (CT_F_NAT) at the client's ingress;
	 * a hairpinned reply at egress, rare, looks it up: sl_egress's walk
	 * stays within the verifier's budget. */
	if (dir == DIR_INGRESS && (flow->flags & CT_F_NAT)) {
		vip = flow->nat_addr;
		vport = flow->nat_port;
	} else {
		rn = bpf_map_lookup_elem(&sl_revnat, &flow->rev_nat_id);
		if (!rn)
			return TC_ACT_UNSPEC;	/* its Service is gone: left to the default action */
		vip = rn->addr;
		vport = rn->port;
	}
	hairpin = flow->flags & CT_F_HAIRPIN;
	client = hairpin ? p->saddr : p->daddr;
	now = ct_now();
	/* A reply delivered to the client names the next hop toward the
	 * backend in its source MAC. */
	if (l2_src && !hairpin && (flow->nh_ifindex != skb->ifindex || __builtin_memcmp(flow->nh_mac, l2_src, 6)))
		learn = 1;
	if (learn || flow->state == CT_NEW || (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)))) {
		/* State changes reach the client-side entry too: its timeout follows. */
		struct ct_key sk;
		struct ct_value *svc_ct;

		ct_key_of(&sk, client, vip, p->dport, vport, p->proto, CT_SERVICE);
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
	/* A reply at the client's ingress, the common case, is rewritten in
	 * place; one at egress, a hairpinned one, is rare and keeps sl_egress's
	 * walk shorter on the helpers. */
	if ((dir == DIR_INGRESS ? rewrite_fast(skb, p, ETH_HLEN, 0, vip, vport, 1)
				: rewrite(skb, p, ETH_HLEN, 0, vip, vport)) != REWRITE_OK)
		return drop(skb, DROP_NAT_FAILED, dir);
	count(REASON_REPLY_TRANSLATED, dir, skb->len);
	if (hairpin) {
		if (rewrite(skb, p, ETH_HLEN, 1, p->saddr, p->dport) != REWRITE_OK)
			return drop(skb, DROP_NAT_FAILED, dir);
		return redirect_self(skb, dir, REASON_HAIRPIN, 1);
	}
	return TC_ACT_OK;
}

#endif

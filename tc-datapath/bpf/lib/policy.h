/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Network policy: may a flow open at an endpoint, given its peer's
 * identity and the endpoint's rules (see layout.h).
 */
#ifndef SLUICE_LIB_POLICY_H
#define SLUICE_LIB_POLICY_H

#include "events.h"

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
	/* Kubernetes: a pod cannot block its own node (kubelet probes); a pod
	 * on hold since its ADD may also reach its node (node-local DNS). */
	if (id == ID_HOST && (dir == DIR_INGRESS || (pol->flags & POLICY_F_PENDING)))
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

/* What names a flow in the verdict cache besides its peer: endpoint,
 * direction, protocol, port (verdict_slot.flow). */
static __always_inline __u64 verdict_flow(__u32 ep_id, __u32 dir, __u8 proto, __be16 port)
{
	return (__u64)ep_id << 32 | (__u64)(dir & 0xff) << 24 | (__u64)proto << 16 | port;
}

/* The slot of this CPU's cache a flow's verdict would be in. */
static __always_inline struct verdict_slot *verdict_slot(__u64 flow, __u64 peer0, __u64 peer1)
{
	__u64 x = flow ^ peer0 ^ peer1;
	__u32 h = (__u32)x ^ (__u32)(x >> 32);

	h ^= h >> 16;
	h ^= h >> 10;
	h &= VERDICT_SLOTS - 1;
	return bpf_map_lookup_elem(&sl_verdicts, &h);
}

/* 0 when this CPU allowed the flow already under the current policy
 * generation; else the generation a verdict made now is kept under (read
 * before the lookups that make it). A function of its own, verified once
 * rather than at each of the programs' call sites, with one comparison of
 * the whole slot. */
__attribute__((noinline)) __u64 verdict_check(__u64 flow, __u64 peer0, __u64 peer1)
{
	struct verdict_slot *vs;
	__u32 zero = 0;
	__u64 *g, gen;

	if (!cfg_verdict_cache)
		return 1;
	g = bpf_map_lookup_elem(&sl_policy_gen, &zero);
	if (!g)
		return 1;
	gen = *g + 1;
	vs = verdict_slot(flow, peer0, peer1);
	if (!vs)
		return gen;
	if ((vs->generation ^ gen) | (vs->flow ^ flow) | (vs->peer[0] ^ peer0) | (vs->peer[1] ^ peer1))
		return gen;
	return 0;
}

/* Remember an allowed flow's verdict, made under generation `gen`. */
__attribute__((noinline)) int verdict_keep(__u64 gen, __u64 flow, __u64 peer0, __u64 peer1)
{
	struct verdict_slot *vs;

	if (!cfg_verdict_cache)
		return 0;
	vs = verdict_slot(flow, peer0, peer1);
	if (!vs)
		return 0;
	/* Emptied first and filled last: a program that ran on this CPU in
	 * between (a packet's program interrupting another's) never takes a
	 * half-written slot for a verdict. */
	vs->generation = 0;
	asm volatile("" ::: "memory");
	vs->peer[0] = peer0;
	vs->peer[1] = peer1;
	vs->flow = flow;
	asm volatile("" ::: "memory");
	vs->generation = gen;
	return 0;
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
	__u64 gen, flow;

	if (!ep)
		ep = bpf_map_lookup_elem(&sl_endpoints, local);
	if (!ep)
		return 1;
	ep_id = ep->endpoint_id;
	pol = bpf_map_lookup_elem(&sl_ep_policy, &ep_id);
	if (!pol || !(pol->flags & (dir == DIR_EGRESS ? POLICY_F_EGRESS : POLICY_F_INGRESS)))
		return 1;
	flow = verdict_flow(ep_id, dir, p->proto, port);
	gen = verdict_check(flow, ((const __u64 *)peer)[0], ((const __u64 *)peer)[1]);
	if (!gen)
		return 1;
	if (policy_allows(pol, ep_id, dir, p, peer, p->proto, port, &peer_id)) {
		verdict_keep(gen, flow, ((const __u64 *)peer)[0], ((const __u64 *)peer)[1]);
		return 1;
	}
	count(DROP_POLICY, dir, skb->len);
	flow_event(p, dir, DROP_POLICY, ep_id, peer_id, dir == DIR_EGRESS ? pol->egress_policy : pol->ingress_policy, 0);
	return 0;
}

#endif

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

#endif

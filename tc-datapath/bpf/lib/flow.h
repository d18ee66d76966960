/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Flows no Service translates: conntrack, and policy on the packet that
 * opens them.
 */
#ifndef SLUICE_LIB_FLOW_H
#define SLUICE_LIB_FLOW_H

#include "conntrack.h"
#include "icmp.h"
#include "policy.h"

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
	__u64 now = ct_now();

	if (ct && ct->expires_ns > now && !ct_reopens(ct, p)) {
		ct_touch(ct, p, (dir == DIR_EGRESS) == !!(ct->flags & CT_F_INBOUND), now);
		count(REASON_FORWARDED, dir, skb->len);
		return TC_ACT_OK;
	}
	/* A new flow: the local pod's entry once, for its policy and its
	 * conntrack share (ingress comes without it). */
	if (!ep)
		ep = bpf_map_lookup_elem(&sl_endpoints, local);
	if (!policy_ok(skb, p, dir, ep, local, remote, p->dport))
		return TC_ACT_SHOT;
	/* An entry there already (expired, or a reused port's) is rewritten
	 * and takes no more of the pod's share. */
	if (!ct && !ct_admit(local, ep, 1))
		return drop_reported(skb, p, DROP_CT_POD_LIMIT, dir);
	nct.state = CT_NEW;
	nct.flags = dir == DIR_INGRESS ? CT_F_INBOUND : 0;
	nct.expires_ns = now + ct_timeout(p->proto, CT_NEW);
	ct_store(ct, k, &nct, now);
	if (flow_sampled())
		flow_event(p, dir, REASON_FORWARDED, ep ? ep->endpoint_id : 0, 0, 0, 0);
	count(REASON_FORWARDED, dir, skb->len);
	return TC_ACT_OK;
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

#endif

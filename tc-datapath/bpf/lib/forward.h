/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Where a packet goes after the verdict: turned around into the pod, or
 * handed to the kernel's neighbour output for its new destination.
 */
#ifndef SLUICE_LIB_FORWARD_H
#define SLUICE_LIB_FORWARD_H

#include <linux/pkt_cls.h>
#include "metrics.h"

/* A packet this program turned around that answers the pod (a translated
 * hairpin reply, a reject): the ingress program passes it as it is, since
 * it is no new flow into the pod. The mark survives the redirect (same
 * namespace) and nothing from outside the pod carries one (crossing into
 * its namespace clears marks); ingress clears it. */
#define SL_MARK_ANSWER 0x5c1a0001

/* Swap the frame's MACs and send it back where it came from: into the
 * interface it is leaving (`flags` BPF_F_INGRESS: it must arrive
 * addressed to the pod and re-enter as received), or out of the one it
 * arrived on (0: an uplink's answer to the wire). */
static __always_inline int turn_around(struct __sk_buff *skb, __u32 dir, __u32 reason, __u64 flags)
{
	__u8 macs[12], swapped[12];

	if (bpf_skb_load_bytes(skb, 0, macs, 12) < 0)
		return drop(skb, DROP_MALFORMED, dir);
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	if (bpf_skb_store_bytes(skb, 0, swapped, 12, 0) < 0)
		return drop(skb, DROP_NAT_FAILED, dir);
	count(reason, dir, skb->len);
	return bpf_redirect(skb->ifindex, flags);
}

/* Turn a packet around into the pod interface it is leaving. An `answer`
 * skips the pod's ingress policy; a hairpinned request does not (the
 * pod's policy judges it as coming from the pod itself). */
static __always_inline int redirect_self(struct __sk_buff *skb, __u32 dir, __u32 reason, int answer)
{
	if (answer)
		skb->mark = SL_MARK_ANSWER;
	return turn_around(skb, dir, reason, BPF_F_INGRESS);
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

#endif

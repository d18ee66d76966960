// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The sluice datapath: two tc programs for every pod interface, two for
 * each of the node's uplinks, and the socket hooks.
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
 *
 * This file holds the two entry points and their dispatch; the logic sits
 * in one header per concern under lib/: parse, addr, csum, conntrack, frag
 * (fragments follow their first), lb, policy, flow (conntrack and policy
 * for untranslated flows), icmp (errors), reject, source, forward, events,
 * metrics, config; uplink (traffic from outside) and sock (the cgroup
 * hooks) hold the other programs' logic.
 */
#include "lib/lb.h"
#include "lib/flow.h"
#include "lib/frag.h"
#include "lib/source.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

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
	r = frame_allowed(skb, &eth);
	if (r)
		return drop(skb, r, DIR_EGRESS);
	if (!p.ip) {
		r = arp_allowed(skb, &eth);
		if (r)
			return drop(skb, r, DIR_EGRESS);
		count(REASON_FORWARDED, DIR_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	r = source_allowed(skb, &eth, &p, &ep);
	if (r)
		return drop_reported(skb, &p, r, DIR_EGRESS);
	frag_ports(&p);
	if ((p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) && p.tracked) {
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
			__u64 now = ct_now();
			int own;

			/* An established connection needs only its entry. One call
			 * of service(): it is inlined at each. */
			ct_key_of(&ck, p.saddr, p.daddr, p.sport, p.dport, p.proto, CT_SERVICE);
			ct = bpf_map_lookup_elem(&sl_ct, &ck);
			own = ct_translates(ct, &p, now);
			svc = 0;
			if (!own) {
				k.port = p.dport;
				k.proto = p.proto;
				svc = bpf_map_lookup_elem(&sl_services, &k);
				if (svc && (svc->flags & SVC_F_VIP_MARKER))
					svc = 0;
			}
			if (own || svc)
				return service(skb, &p, svc, &k, ep, &ck, ct, now);
			k.port = 0;
			k.proto = 0;
		}
		/* Fail closed: anything else addressed to a VIP is dropped. */
		svc = bpf_map_lookup_elem(&sl_services, &k);
		/* A node's address is no VIP: only its NodePorts are translated,
		 * the rest (the kubelet, a hostNetwork server) is plain traffic. */
		if (svc && (svc->flags & SVC_F_NODE_ADDRESS))
			svc = 0;
		if (svc && p.fragment == FRAG_LATER && !p.tracked)
			return drop_reported(skb, &p, DROP_FRAGMENT, DIR_EGRESS);
		if (svc)
			return svc->flags & SVC_F_REJECT ? reject(skb, &p, DROP_UNKNOWN_PORT, DIR_EGRESS)
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
	if (!p.ip) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	frag_ports(&p);
	if (p.tracked) {
		/* The pod's entry for the flow: a reply to a Service connection
		 * it made is translated back; anything else is plain tracking. */
		ct_key_of(&ck, p.daddr, p.saddr, p.dport, p.sport, p.proto, CT_FLOW);
		ct = bpf_map_lookup_elem(&sl_ct, &ck);
		if (ct && ct->rev_nat_id)
			return reply(skb, &p, DIR_INGRESS, eth.h_source, ct);
		return track(skb, &p, DIR_INGRESS, ct, &ck, 0);
	}
	if (((p.proto == IPPROTO_ICMP && !p.v6) || (p.proto == IPPROTO_ICMPV6 && p.v6)) && !p.fragment) {
		switch (icmp_error(skb, &p)) {
		case ICMP_TRANSLATED:
			return TC_ACT_OK;
		case ICMP_DROPPED:
			return TC_ACT_SHOT;
		case ICMP_RELATED:
			count(REASON_FORWARDED, DIR_INGRESS, skb->len);
			return TC_ACT_OK;
		case ICMP_UNRELATED:
			break;
		}
	}
	return untracked(skb, &p, DIR_INGRESS, 0);
}

/* The node's uplinks: traffic from outside (lib/uplink.h). */
#include "lib/uplink.h"

SEC("classifier")
int sl_uplink_in(struct __sk_buff *skb)
{
	return uplink(skb, DIR_INGRESS);
}

SEC("classifier")
int sl_uplink_out(struct __sk_buff *skb)
{
	return uplink(skb, DIR_EGRESS);
}

/* The cgroup hooks of socket-level load balancing (lib/sock.h). */
#include "lib/sock.h"

SEC("cgroup/connect4")
int sl_sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_forward4(ctx, 0);
}

SEC("cgroup/connect6")
int sl_sock_connect6(struct bpf_sock_addr *ctx)
{
	return sock_forward6(ctx, 0);
}

SEC("cgroup/sendmsg4")
int sl_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_forward4(ctx, 1);
}

SEC("cgroup/sendmsg6")
int sl_sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_forward6(ctx, 1);
}

SEC("cgroup/recvmsg4")
int sl_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_backward4(ctx);
}

SEC("cgroup/recvmsg6")
int sl_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_backward6(ctx);
}

SEC("cgroup/getpeername4")
int sl_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_backward4(ctx);
}

SEC("cgroup/getpeername6")
int sl_sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock_backward6(ctx);
}

SEC("cgroup/sock_release")
int sl_sock_release(struct bpf_sock *sk)
{
	return sock_release(sk);
}

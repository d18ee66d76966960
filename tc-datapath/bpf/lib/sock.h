/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Socket-level load balancing: cgroup hooks on connect, sendmsg, recvmsg
 * and getpeername that give a socket a backend's address where it named a
 * Service's, once per connect (or per datagram of an unconnected UDP
 * socket), so no packet of the flow needs translating. This serves the
 * host: a hostNetwork pod, the kubelet, a node daemon, which no pod
 * interface's tc program sees. A socket reads its peer, and the source of
 * what it receives, as the Service's address (sl_sock_svc, by socket
 * cookie, until the socket is released).
 *
 * Which sockets: those of the network namespace cfg_sock_netns_cookie
 * names (the agent's, the node's), or every one when it is 0.
 */
#ifndef SLUICE_LIB_SOCK_H
#define SLUICE_LIB_SOCK_H

#include <linux/errno.h>
#include "lb.h"

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef SOCK_DGRAM
#define SOCK_DGRAM 2
#endif

/* A socket these hooks serve. */
static __always_inline int sock_ours(struct bpf_sock_addr *ctx)
{
	return !cfg_sock_netns_cookie || bpf_get_netns_cookie(ctx) == cfg_sock_netns_cookie;
}

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_STREAM)
		return IPPROTO_TCP;
	if (ctx->type == SOCK_DGRAM)
		return IPPROTO_UDP;
	return 0;
}

enum sock_verdict {
	SOCK_UNTOUCHED = 0,	/* no Service address */
	SOCK_TRANSLATED = 1,	/* now a backend's */
	SOCK_REFUSED = 2,	/* a Service with no backend that rejects */
	SOCK_DENIED = 3,	/* a load-balancer IP whose source ranges leave the node out */
};

/* Remember on the socket that `backend`:`bport` stands for `frontend`:`fport`.
 * A connect takes slot 0; an unconnected socket the slot already naming
 * the backend, else the next in turn. (Two threads sending on one
 * unconnected socket at once may race for a slot: a reply then reads as
 * the backend's, nothing worse.) */
static __always_inline void sock_remember(__u64 cookie, const __u8 *backend, __be16 bport, const __u8 *frontend,
					  __be16 fport, int unconnected)
{
	struct sock_rev fresh = {}, *rev = 0;
	struct sock_rev_slot *slot;
	__u32 i = 0, k;

	if (unconnected)
		rev = bpf_map_lookup_elem(&sl_sock_svc, &cookie);
	if (rev) {
		i = rev->next;
		for (k = 0; k < SOCK_REV_SLOTS; k++) {
			if (rev->slot[k].backend_port == bport && addr_eq(rev->slot[k].backend, backend)) {
				i = k;
				break;
			}
		}
		if (i == rev->next)
			rev->next = (rev->next + 1) % SOCK_REV_SLOTS;
		slot = &rev->slot[i % SOCK_REV_SLOTS];
	} else {
		/* A connect, or an unconnected socket's first datagram. */
		fresh.next = unconnected ? 1 : 0;
		slot = &fresh.slot[0];
	}
	__builtin_memcpy(slot->backend, backend, 16);
	__builtin_memcpy(slot->frontend, frontend, 16);
	slot->backend_port = bport;
	slot->frontend_port = fport;
	if (!rev)
		bpf_map_update_elem(&sl_sock_svc, &cookie, &fresh, BPF_ANY);
}

/* A pod's hostPort on one of the node's addresses: the pod's address and
 * containerPort instead, as for a Service. */
static __always_inline enum sock_verdict sock_hostport(struct bpf_sock_addr *ctx, __u8 addr[16], __be16 *port,
						       __u8 proto, int unconnected)
{
	struct hostport_key hk = {};
	struct hostport_value *hp;

	__builtin_memcpy(hk.addr, addr, 16);
	hk.port = *port;
	hk.proto = proto;
	hp = bpf_map_lookup_elem(&sl_hostports, &hk);
	if (!hp)
		return SOCK_UNTOUCHED;
	sock_remember(bpf_get_socket_cookie(ctx), hp->addr, hp->port, addr, *port, unconnected);
	__builtin_memcpy(addr, hp->addr, 16);
	*port = hp->port;
	count(REASON_SOCK_TRANSLATED, DIR_EGRESS, 0);
	return SOCK_TRANSLATED;
}

/* Give `addr`:`port` (16-byte form, v4-mapped for IPv4) a backend if it is
 * a Service frontend. The socket's "client", for affinity and Maglev, is
 * its network namespace (as the node's address is for kube-proxy), spread
 * by the socket's cookie. */
static __always_inline enum sock_verdict sock_translate(struct bpf_sock_addr *ctx, __u8 addr[16], __be16 *port,
							__u8 proto, int unconnected)
{
	struct svc_key k = {};
	struct svc_value *svc;
	struct backend_value *b = 0;
	struct pkt p = {};
	__u64 cookie, ns;

	if (!maybe_in(&sl_vip_filter, addr))
		return sock_hostport(ctx, addr, port, proto, unconnected);
	__builtin_memcpy(k.addr, addr, 16);
	k.port = *port;
	k.proto = proto;
	svc = bpf_map_lookup_elem(&sl_services, &k);
	if (!svc || (svc->flags & SVC_F_VIP_MARKER))
		return sock_hostport(ctx, addr, port, proto, unconnected);
	/* kube-proxy's rules judge the node's connections to a load-balancer
	 * IP by the node's address; the agent has judged it (the source is
	 * not chosen yet at connect). */
	if (svc->flags & SVC_F_NODE_DENIED) {
		count(DROP_SOURCE_RANGE, DIR_EGRESS, 0);
		return SOCK_DENIED;
	}
	cookie = bpf_get_socket_cookie(ctx);
	/* sock_ours() has checked it already when it is configured. */
	ns = cfg_sock_netns_cookie ? cfg_sock_netns_cookie : bpf_get_netns_cookie(ctx);
	__builtin_memcpy(p.saddr, &ns, 8);
	__builtin_memcpy(p.daddr, addr, 16);
	p.sport = (__be16)cookie;
	p.dport = *port;
	p.proto = proto;
	p.v6 = !is_v4_mapped(addr);
	/* The clock only for affinity: a helper call less on every connect. */
	select_backend(svc, &k, &p, svc->affinity_timeout ? ct_now() : 0, &b);
	if (!b) {
		count(DROP_NO_BACKEND, DIR_EGRESS, 0);
		return svc->flags & SVC_F_REJECT ? SOCK_REFUSED : SOCK_UNTOUCHED;
	}
	sock_remember(cookie, b->addr, b->port, addr, *port, unconnected);
	__builtin_memcpy(addr, b->addr, 16);
	*port = b->port;
	count(REASON_SOCK_TRANSLATED, DIR_EGRESS, 0);
	return SOCK_TRANSLATED;
}

/* The Service a backend `addr`:`port` stands for on this socket, if any:
 * written back over them. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx, __u8 addr[16], __be16 *port)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_rev *rev = bpf_map_lookup_elem(&sl_sock_svc, &cookie);
	__u32 k;

	if (!rev)
		return 0;
	for (k = 0; k < SOCK_REV_SLOTS; k++) {
		struct sock_rev_slot *s = &rev->slot[k];

		if (s->backend_port == *port && addr_eq(s->backend, addr)) {
			__builtin_memcpy(addr, s->frontend, 16);
			*port = s->frontend_port;
			return 1;
		}
	}
	return 0;
}

/* A socket going away takes its entry with it. */
static __always_inline int sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);

	bpf_map_delete_elem(&sl_sock_svc, &cookie);
	return 1;
}

/* connect and sendmsg, IPv4. A refusal fails the call with ECONNREFUSED,
 * as kube-proxy's REJECT fails a connect; a denial (source ranges) with
 * EPERM, at once where kube-proxy's drop leaves the connect to time out. */
static __always_inline int sock_forward4(struct bpf_sock_addr *ctx, int unconnected)
{
	__u8 a[16];
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = sock_proto(ctx);

	if (!proto || !sock_ours(ctx))
		return 1;
	v4_mapped(a, ctx->user_ip4);
	switch (sock_translate(ctx, a, &port, proto, unconnected)) {
	case SOCK_REFUSED:
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	case SOCK_DENIED:
		return 0;
	case SOCK_TRANSLATED:
		__builtin_memcpy(&ctx->user_ip4, a + 12, 4);
		ctx->user_port = port;
		return 1;
	default:
		return 1;
	}
}

/* connect and sendmsg, IPv6 (a v4-mapped address on a dual-stack socket
 * is the IPv4 Service's). */
static __always_inline int sock_forward6(struct bpf_sock_addr *ctx, int unconnected)
{
	__u32 w[4];
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = sock_proto(ctx);

	if (!proto || !sock_ours(ctx))
		return 1;
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	switch (sock_translate(ctx, (__u8 *)w, &port, proto, unconnected)) {
	case SOCK_REFUSED:
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	case SOCK_DENIED:
		return 0;
	case SOCK_TRANSLATED:
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
		ctx->user_port = port;
		return 1;
	default:
		return 1;
	}
}

/* recvmsg and getpeername: a backend's address reads as its Service's. */
static __always_inline int sock_backward4(struct bpf_sock_addr *ctx)
{
	__u8 a[16];
	__be16 port = (__be16)ctx->user_port;

	if (!sock_ours(ctx))
		return 1;
	v4_mapped(a, ctx->user_ip4);
	if (sock_reverse(ctx, a, &port)) {
		__builtin_memcpy(&ctx->user_ip4, a + 12, 4);
		ctx->user_port = port;
	}
	return 1;
}

static __always_inline int sock_backward6(struct bpf_sock_addr *ctx)
{
	__u32 w[4];
	__be16 port = (__be16)ctx->user_port;

	if (!sock_ours(ctx))
		return 1;
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	if (sock_reverse(ctx, (__u8 *)w, &port)) {
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
		ctx->user_port = port;
	}
	return 1;
}

#endif

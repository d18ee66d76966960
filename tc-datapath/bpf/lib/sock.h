/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Socket-level load balancing: cgroup hooks on connect, sendmsg, recvmsg
 * and getpeername that give a socket a backend's address where it named a
 * Service's, once per connect (or per datagram of an unconnected UDP
 * socket), so no packet of the flow needs translating. This serves the
 * host: a hostNetwork pod, the kubelet, a node daemon, which no pod
 * interface's tc program sees. A socket reads its peer, and the source of
 * what it receives, as the Service's address (sl_sock_rev).
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
};

/* Give `addr`:`port` (16-byte form, v4-mapped for IPv4) a backend if it is
 * a Service frontend. The socket's "client", for affinity and Maglev, is
 * its network namespace (as the node's address is for kube-proxy), spread
 * by the socket's cookie. */
static __always_inline enum sock_verdict sock_translate(struct bpf_sock_addr *ctx, __u8 addr[16], __be16 *port,
							__u8 proto)
{
	struct svc_key k = {};
	struct svc_value *svc;
	struct backend_value *b;
	struct sock_rev_key rk = {};
	struct sock_rev_value rv = {};
	struct pkt p = {};
	__u64 cookie = bpf_get_socket_cookie(ctx), ns = bpf_get_netns_cookie(ctx);
	__u32 id;

	if (!maybe_in(&sl_vip_filter, addr))
		return SOCK_UNTOUCHED;
	__builtin_memcpy(k.addr, addr, 16);
	k.port = *port;
	k.proto = proto;
	svc = bpf_map_lookup_elem(&sl_services, &k);
	if (!svc || (svc->flags & SVC_F_VIP_MARKER))
		return SOCK_UNTOUCHED;
	__builtin_memcpy(p.saddr, &ns, 8);
	__builtin_memcpy(p.daddr, addr, 16);
	p.sport = (__be16)cookie;
	p.dport = *port;
	p.proto = proto;
	p.v6 = !is_v4_mapped(addr);
	id = select_backend(svc, &k, &p, bpf_ktime_get_ns());
	b = id ? bpf_map_lookup_elem(&sl_backends, &id) : 0;
	if (!b) {
		count(DROP_NO_BACKEND, DIR_EGRESS, 0);
		return svc->flags & SVC_F_REJECT ? SOCK_REFUSED : SOCK_UNTOUCHED;
	}
	rk.cookie = cookie;
	__builtin_memcpy(rk.addr, b->addr, 16);
	rk.port = b->port;
	__builtin_memcpy(rv.addr, addr, 16);
	rv.port = *port;
	rv.rev_nat_id = svc->rev_nat_id;
	bpf_map_update_elem(&sl_sock_rev, &rk, &rv, BPF_ANY);
	__builtin_memcpy(addr, b->addr, 16);
	*port = b->port;
	count(REASON_SOCK_TRANSLATED, DIR_EGRESS, 0);
	return SOCK_TRANSLATED;
}

/* The Service a backend `addr`:`port` stands for on this socket, if any:
 * written back over them. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx, __u8 addr[16], __be16 *port)
{
	struct sock_rev_key rk = {};
	struct sock_rev_value *rv;

	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, addr, 16);
	rk.port = *port;
	rv = bpf_map_lookup_elem(&sl_sock_rev, &rk);
	if (!rv)
		return 0;
	__builtin_memcpy(addr, rv->addr, 16);
	*port = rv->port;
	return 1;
}

/* connect and sendmsg, IPv4. A refusal fails the call with ECONNREFUSED,
 * as kube-proxy's REJECT fails a connect. */
static __always_inline int sock_forward4(struct bpf_sock_addr *ctx)
{
	__u8 a[16];
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = sock_proto(ctx);

	if (!proto || !sock_ours(ctx))
		return 1;
	v4_mapped(a, ctx->user_ip4);
	switch (sock_translate(ctx, a, &port, proto)) {
	case SOCK_REFUSED:
		bpf_set_retval(-ECONNREFUSED);
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
static __always_inline int sock_forward6(struct bpf_sock_addr *ctx)
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
	switch (sock_translate(ctx, (__u8 *)w, &port, proto)) {
	case SOCK_REFUSED:
		bpf_set_retval(-ECONNREFUSED);
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

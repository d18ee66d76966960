/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Flow events on the ring: every drop of a parsed packet, and a sample
 * of new flows.
 */
#ifndef SLUICE_LIB_EVENTS_H
#define SLUICE_LIB_EVENTS_H

#include "config.h"
#include "metrics.h"
#include "parse.h"

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

#endif

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection-tracking entries: keys, states, deadlines, and the next hop
 * learned from replies (see layout.h for the entry's orientation).
 */
#ifndef SLUICE_LIB_CONNTRACK_H
#define SLUICE_LIB_CONNTRACK_H

#include "config.h"
#include "parse.h"
#include "../maps.h"

/* A refreshed deadline is written back only when it moved by more than
 * this: established flows do not dirty their conntrack entry per packet. */
#define CT_REFRESH_NS (1000000000ULL)

/* The clock of every deadline (conntrack, NAT, Service affinity):
 * CLOCK_MONOTONIC to within two ticks, never ahead of it. Deadlines are
 * seconds apart and a tick is 1-10 ms; reading the TSC
 * (bpf_ktime_get_ns) was 6-8% of the programs' time in a
 * connection-rate profile, once or twice a packet,
 * and the coarse clock (a seqcount read and a timespec's normalisation)
 * still 11% of an established packet's: jiffies, a single load, scaled
 * by the constants the loader found (config.h), where it found them.
 * The agent's collection reads the fine clock: it can see an entry expire
 * up to two ticks before the programs do (never after), and deletes it
 * only if its deadline has not moved since it looked (a packet meanwhile
 * pushes it out). */
static __always_inline __u64 ct_now(void)
{
	if (cfg_tick_ns)
		return bpf_jiffies64() * cfg_tick_ns + cfg_jiffies_base_ns;
	return bpf_ktime_get_coarse_ns();
}

/* Charge `n` new entries to the pod at `local` (its endpoint `ep` when the
 * caller has it): 1 if it may have them, 0 if it holds its share
 * (cfg_ct_pod_limit) already. An address that is no pod of this node is
 * charged nothing: its flows are charged to the pod at the other end. */
static __always_inline int ct_admit(const __u8 *local, struct endpoint_value *ep, __u32 n)
{
	struct ct_pod_value *v, nv = {};
	__u32 id;

	if (!ep)
		ep = bpf_map_lookup_elem(&sl_endpoints, local);
	if (!ep)
		return 1;
	id = ep->endpoint_id;
	v = bpf_map_lookup_elem(&sl_ct_pods, &id);
	if (!v) {
		nv.entries = n;
		bpf_map_update_elem(&sl_ct_pods, &id, &nv, BPF_NOEXIST);
		return 1;
	}
	if (cfg_ct_pod_limit && v->entries + n > cfg_ct_pod_limit)
		return 0;
	__sync_fetch_and_add(&v->entries, n);
	return 1;
}

/* Write the entry `v` for key `k`; `cur` is what a lookup of `k` found
 * (a reused port's closing entry, an expired one) or NULL. A live entry is
 * overwritten where it lies: the LRU map's update takes a fresh element
 * from its free lists and hands the old one back, and once the table has
 * filled, every fresh element costs an eviction (a scan of the inactive
 * list and a delete in some other bucket). A connection that reuses a
 * 4-tuple (a client making many connections to one backend, its ports
 * cycling well within the closing timeout) pays none of that. Only an
 * entry with a second or more to live is written in place: the agent's
 * collection deletes expired entries, and an element it freed under us
 * could already hold another flow; it cannot be deleting one that far
 * from its deadline (it reads the deadline again just before). Either
 * way the key had an entry, which was charged to the pod when it was
 * made: the callers charge only for `!cur`. A reader on another CPU can
 * see the value half written; only a straggler of the closed connection
 * on the same 4-tuple can be reading it. */
static __always_inline void ct_store(struct ct_value *cur, const struct ct_key *k, const struct ct_value *v,
				     __u64 now)
{
	if (cur && cur->expires_ns > now + CT_REFRESH_NS) {
		__builtin_memcpy(cur, v, sizeof(*v));
		return;
	}
	bpf_map_update_elem(&sl_ct, k, v, BPF_ANY);
}

static __always_inline __u64 ct_timeout(__u8 proto, __u8 state)
{
	if (proto != IPPROTO_TCP)
		return cfg_ct_udp_ns;
	if (state == CT_ESTABLISHED)
		return cfg_ct_tcp_established_ns;
	if (state == CT_CLOSING)
		return cfg_ct_tcp_closing_ns;
	return cfg_ct_tcp_syn_ns;
}

/* A SYN that finds a closing entry opens a new connection on a reused
 * port: the entry is the previous connection's and must not decide this
 * one (its backend may be terminating, its verdict stale). */
static __always_inline int state_reopens(__u8 state, const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN && state == CT_CLOSING;
}

static __always_inline int ct_reopens(const struct ct_value *ct, const struct pkt *p)
{
	return state_reopens(ct->state, p);
}

/* Move an entry along SYN -> established -> closing, and push its deadline
 * out (only written back when it changed noticeably). Conntrack and NAT
 * entries both keep a state and a deadline. */
static __always_inline void state_touch(__u8 *st, __u64 *deadline, const struct pkt *p, int reply, __u64 now)
{
	__u8 state = *st;
	__u64 expires;

	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)))
		state = CT_CLOSING;
	else if (reply && state == CT_NEW)
		state = CT_ESTABLISHED;
	expires = now + ct_timeout(p->proto, state);
	if (state != *st)
		*st = state;
	if (expires > *deadline + CT_REFRESH_NS || state == CT_CLOSING)
		*deadline = expires;
}

static __always_inline void ct_touch(struct ct_value *ct, const struct pkt *p, int reply, __u64 now)
{
	state_touch(&ct->state, &ct->expires_ns, p, reply, now);
}

static __always_inline void ct_key_of(struct ct_key *k, const __u8 *s, const __u8 *d, __be16 sport, __be16 dport,
				      __u8 proto, __u8 kind)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->saddr, s, 16);
	__builtin_memcpy(k->daddr, d, 16);
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->kind = kind;
}

/* The MAC is written before the interface that marks it valid. A reader on
 * another CPU can still see a half-written MAC when a known next hop
 * changes; that costs one misaddressed packet of the flow, which its
 * transport resends. */
static __always_inline void set_next_hop(struct ct_value *ct, const __u8 *mac, __u32 ifindex)
{
	__builtin_memcpy(ct->nh_mac, mac, 6);
	asm volatile("" ::: "memory");
	ct->nh_ifindex = ifindex;
}

#endif

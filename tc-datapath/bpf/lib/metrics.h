/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-reason packet and byte counters: every verdict is counted.
 */
#ifndef SLUICE_LIB_METRICS_H
#define SLUICE_LIB_METRICS_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "../maps.h"

static __always_inline void count(__u32 reason, __u32 dir, __u32 len)
{
	__u32 idx = reason * 2 + dir;
	struct metrics_value *m = bpf_map_lookup_elem(&sl_metrics, &idx);

	if (m) {
		m->packets++;
		m->bytes += len;
	}
}

static __always_inline int drop(struct __sk_buff *skb, __u32 reason, __u32 dir)
{
	count(reason, dir, skb->len);
	return TC_ACT_SHOT;
}

#endif

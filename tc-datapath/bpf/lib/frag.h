/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Fragments: the later fragments of a datagram get the ports its first
 * fragment carried (see struct frag_key), so they follow its flow.
 */
#ifndef SLUICE_LIB_FRAG_H
#define SLUICE_LIB_FRAG_H

#include "../maps.h"
#include "parse.h"

/* The first fragment leaves its ports; a later one takes them and is
 * tracked from then on (its `fragment` stays FRAG_LATER: it has no L4
 * header to rewrite). A later fragment without a first stays untracked. */
static __always_inline void frag_ports(struct pkt *p)
{
	struct frag_key k = {};
	struct frag_value *v;

	if (!p->fragment || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP))
		return;
	__builtin_memcpy(k.saddr, p->saddr, 16);
	__builtin_memcpy(k.daddr, p->daddr, 16);
	k.id = p->frag_id;
	k.proto = p->proto;
	if (p->fragment == FRAG_FIRST) {
		struct frag_value nv = {.sport = p->sport, .dport = p->dport};

		bpf_map_update_elem(&sl_frags, &k, &nv, BPF_ANY);
		return;
	}
	v = bpf_map_lookup_elem(&sl_frags, &k);
	if (!v)
		return;
	p->sport = v->sport;
	p->dport = v->dport;
	p->tracked = 1;
}

#endif

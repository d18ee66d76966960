// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Built and run for the host by build.rs: prints the size of every struct
 * in layout.h and the offset of every field, as Rust constants, so that a
 * test can hold the #[repr(C)] mirrors to exactly what the C side compiles;
 * and the same as a layout description for upgrades.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include "layout.h"

/* With "desc", the layout description an upgrade converts entries by
 * (tc-datapath/src/migrate.rs): a "version N" line, then "S struct size"
 * and "F struct field offset size" lines. */
static int desc;

#define SIZE(s)                                                                                    \
	(desc ? printf("S %s %zu\n", #s, sizeof(struct s)) : printf("(\"%s\", %zu),\n", #s, sizeof(struct s)))
#define OFF(s, f)                                                                                  \
	(desc ? printf("F %s %s %zu %zu\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f)) \
	      : printf("(\"%s.%s\", %zu),\n", #s, #f, offsetof(struct s, f)))

static void structs(void)
{
	SIZE(svc_key);
	OFF(svc_key, addr); OFF(svc_key, port); OFF(svc_key, proto); OFF(svc_key, scope);
	OFF(svc_key, slot); OFF(svc_key, pad1);
	SIZE(svc_value);
	OFF(svc_value, backend_id); OFF(svc_value, count); OFF(svc_value, rev_nat_id);
	OFF(svc_value, flags); OFF(svc_value, algorithm); OFF(svc_value, affinity_timeout);
	OFF(svc_value, backend); OFF(svc_value, inline_backends);
	SIZE(svc_backend);
	OFF(svc_backend, id); OFF(svc_backend, entry);
	SIZE(backend_value);
	OFF(backend_value, addr); OFF(backend_value, port); OFF(backend_value, proto); OFF(backend_value, state);
	SIZE(revnat_value);
	OFF(revnat_value, addr); OFF(revnat_value, port); OFF(revnat_value, pad0);
	SIZE(maglev_key);
	OFF(maglev_key, rev_nat_id); OFF(maglev_key, chunk);
	SIZE(maglev_value);
	OFF(maglev_value, backend_ids);
	SIZE(affinity_key);
	OFF(affinity_key, client); OFF(affinity_key, rev_nat_id);
	SIZE(affinity_value);
	OFF(affinity_value, last_used_ns); OFF(affinity_value, backend_id); OFF(affinity_value, pad0);
	SIZE(frag_key);
	OFF(frag_key, saddr); OFF(frag_key, daddr); OFF(frag_key, id); OFF(frag_key, proto); OFF(frag_key, pad0);
	SIZE(frag_value);
	OFF(frag_value, sport); OFF(frag_value, dport);
	SIZE(sock_rev_slot);
	OFF(sock_rev_slot, backend); OFF(sock_rev_slot, frontend); OFF(sock_rev_slot, backend_port);
	OFF(sock_rev_slot, frontend_port);
	SIZE(sock_rev);
	OFF(sock_rev, slot); OFF(sock_rev, next);
	SIZE(ct_pod_value);
	OFF(ct_pod_value, entries); OFF(ct_pod_value, pad0);
	SIZE(ct_key);
	OFF(ct_key, saddr); OFF(ct_key, daddr); OFF(ct_key, sport); OFF(ct_key, dport);
	OFF(ct_key, proto); OFF(ct_key, kind); OFF(ct_key, pad0);
	SIZE(ct_value);
	OFF(ct_value, expires_ns); OFF(ct_value, backend_id); OFF(ct_value, rev_nat_id);
	OFF(ct_value, state); OFF(ct_value, flags); OFF(ct_value, nh_mac); OFF(ct_value, nh_ifindex);
	OFF(ct_value, nat_port); OFF(ct_value, pad0); OFF(ct_value, nat_addr);
	SIZE(endpoint_key);
	OFF(endpoint_key, addr);
	SIZE(endpoint_value);
	OFF(endpoint_value, ifindex); OFF(endpoint_value, endpoint_id); OFF(endpoint_value, mac); OFF(endpoint_value, flags);
	OFF(endpoint_value, parent_ifindex); OFF(endpoint_value, pad0); OFF(endpoint_value, netns_cookie);
	SIZE(uplink_value);
	OFF(uplink_value, addr4); OFF(uplink_value, addr6);
	SIZE(hostport_key);
	OFF(hostport_key, addr); OFF(hostport_key, port); OFF(hostport_key, proto); OFF(hostport_key, pad0);
	SIZE(hostport_value);
	OFF(hostport_value, addr); OFF(hostport_value, port); OFF(hostport_value, pad0); OFF(hostport_value, endpoint_id);
	SIZE(lb_source_key);
	OFF(lb_source_key, prefixlen); OFF(lb_source_key, rev_nat_id); OFF(lb_source_key, addr);
	SIZE(nat_value);
	OFF(nat_value, expires_ns); OFF(nat_value, saddr); OFF(nat_value, daddr); OFF(nat_value, sport);
	OFF(nat_value, dport); OFF(nat_value, ifindex); OFF(nat_value, backend_id); OFF(nat_value, mac);
	OFF(nat_value, state); OFF(nat_value, flags); OFF(nat_value, pad0);
	SIZE(ipcache_value);
	OFF(ipcache_value, identity); OFF(ipcache_value, pad0);
	SIZE(cidr_key);
	OFF(cidr_key, prefixlen); OFF(cidr_key, addr);
	SIZE(ep_policy_value);
	OFF(ep_policy_value, identity); OFF(ep_policy_value, ingress_policy); OFF(ep_policy_value, egress_policy);
	OFF(ep_policy_value, flags); OFF(ep_policy_value, kinds); OFF(ep_policy_value, pad0);
	SIZE(verdict_slot);
	OFF(verdict_slot, peer); OFF(verdict_slot, flow); OFF(verdict_slot, generation);
	SIZE(policy_match);
	OFF(policy_match, endpoint_id); OFF(policy_match, identity); OFF(policy_match, dir);
	OFF(policy_match, proto); OFF(policy_match, port);
	SIZE(policy_key);
	OFF(policy_key, prefixlen); OFF(policy_key, m);
	SIZE(policy_value);
	OFF(policy_value, policy); OFF(policy_value, pad0);
	SIZE(name_key);
	OFF(name_key, kind); OFF(name_key, id);
	SIZE(name_value);
	OFF(name_value, name);
	SIZE(flow_event);
	OFF(flow_event, time_ns); OFF(flow_event, saddr); OFF(flow_event, daddr); OFF(flow_event, sport);
	OFF(flow_event, dport); OFF(flow_event, proto); OFF(flow_event, dir); OFF(flow_event, reason);
	OFF(flow_event, endpoint_id); OFF(flow_event, peer_identity); OFF(flow_event, policy); OFF(flow_event, backend_id);
	SIZE(metrics_value);
	OFF(metrics_value, packets); OFF(metrics_value, bytes);
	SIZE(dp_info);
	OFF(dp_info, prog_hash); OFF(dp_info, config);
}

int main(int argc, char **argv)
{
	desc = argc > 1 && !strcmp(argv[1], "desc");
	if (desc) {
		printf("version %d\n", SLUICE_LAYOUT_VERSION);
		structs();
		return 0;
	}
	printf("pub const LAYOUT_VERSION: u32 = %d;\n", SLUICE_LAYOUT_VERSION);
	printf("pub const C_LAYOUT: &[(&str, usize)] = &[\n");
	structs();
	printf("];\n");
	printf("pub const REASON_MAX: u32 = %d;\n", REASON_MAX);
	printf("pub const VIP_FILTER_BITS: u32 = %d;\n", VIP_FILTER_BITS);
	printf("pub const DP_INFO_CONFIG_LEN: usize = %d;\n", DP_INFO_CONFIG_LEN);
	printf("pub const POLICY_BITS_ANY_PROTO: u32 = %d;\n", POLICY_BITS_ANY_PROTO);
	printf("pub const POLICY_BITS_ANY_PORT: u32 = %d;\n", POLICY_BITS_ANY_PORT);
	printf("pub const POLICY_BITS_EXACT: u32 = %d;\n", POLICY_BITS_EXACT);
	printf("pub const NAME_LEN: usize = %d;\n", NAME_LEN);
	/* The C hash of a few addresses, for the Rust one to agree with. */
	{
		static const __u8 samples[3][16] = {
			{ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 1 },
			{ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 2 },
			{ 0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a },
		};
		__u32 w[4];
		int i, j;

		printf("pub const VIP_SLOT_SAMPLES: [([u8; 16], u32); 3] = [\n");
		for (i = 0; i < 3; i++) {
			printf("([");
			for (j = 0; j < 16; j++)
				printf("%u, ", samples[i][j]);
			__builtin_memcpy(w, samples[i], 16);
			printf("], %u),\n", vip_slot((const __u8 *)w));
		}
		printf("];\n");
	}
	return 0;
}

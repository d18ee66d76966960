/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The load-time settings: constants in .rodata that the loader sets from
 * the datapath config (config.rs), so a setting costs no map lookup.
 */
#ifndef SLUICE_LIB_CONFIG_H
#define SLUICE_LIB_CONFIG_H

#include <linux/types.h>

/* Load-time configuration, set by the loader (aya EbpfLoader::set_global). */
volatile const __u64 cfg_ct_tcp_syn_ns = 60ULL * 1000000000ULL;
volatile const __u64 cfg_ct_tcp_established_ns = 21600ULL * 1000000000ULL;
volatile const __u64 cfg_ct_tcp_closing_ns = 10ULL * 1000000000ULL;
volatile const __u64 cfg_ct_udp_ns = 60ULL * 1000000000ULL;
volatile const __u32 cfg_maglev_m = 16381;
volatile const __u32 cfg_source_check = 1;
volatile const __u32 cfg_flow_sample = 0;
/* The network namespace whose sockets the cgroup hooks serve (its cookie;
 * 0: every namespace). Set by the agent when it attaches them. */
volatile const __u64 cfg_sock_netns_cookie = 0;
/* The ports a connection from outside is source-NATed from when its
 * backend is on another node: two ranges around the kernel's default
 * ephemeral range (net.ipv4.ip_local_port_range 32768-60999), so that no
 * connection of the node's own to a backend can have the same ports. A
 * port is only unique per backend address and port: each backend has all
 * 36,280 of them. */
volatile const __u32 cfg_snat_low_min = 1024;
volatile const __u32 cfg_snat_low_max = 32767;
volatile const __u32 cfg_snat_high_min = 61000;
volatile const __u32 cfg_snat_high_max = 65535;
/* 1 where the kernel lets tc programs call bpf_get_netns_cookie (kernels
 * from 2025 on): the source check then also holds a packet's socket to
 * its pod's namespace. 0 leaves the call out of the verified program. */
volatile const __u32 cfg_socket_netns_check = 0;
/* 1: allowed verdicts are cached per CPU (sl_verdicts). The cache reads
 * the policy generation with a plain load before the lookups it spares,
 * which is enough where loads are not reordered with loads (x86); the
 * loader sets 0 on other CPUs, where the programs would need a
 * load-acquire the older kernels do not have. */
volatile const __u32 cfg_verdict_cache = 0;
/* The programs' clock from jiffies (src/jiffies.rs): CLOCK_MONOTONIC is
 * jiffies * cfg_tick_ns + cfg_jiffies_base_ns (u64, wrapping). 0: the
 * coarse clock, where the loader could not find these. */
volatile const __u64 cfg_tick_ns = 0;
volatile const __u64 cfg_jiffies_base_ns = 0;
/* The conntrack entries one pod may hold (0: no limit). */
volatile const __u32 cfg_ct_pod_limit = 65536;

#endif

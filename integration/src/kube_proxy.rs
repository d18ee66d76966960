//! kube-proxy-shaped rulesets, the baselines of the datapath benchmark:
//! the nat rules kube-proxy writes for ClusterIP Services with ready
//! endpoints, in its iptables mode (`iptables-restore` input) and in its
//! nftables mode (`nft -f` input), for any number of Services.
//!
//! Shape, per Service port with 3 endpoints:
//! - iptables: one rule in `KUBE-SERVICES` (matched in order: the lookup is
//!   a linear scan), a `KUBE-SVC-*` chain (masquerade mark for sources
//!   outside the cluster CIDR, then `statistic` rules picking an endpoint),
//!   a `KUBE-SEP-*` chain per endpoint (hairpin mark, DNAT).
//! - nftables: one element in the `service-ips` verdict map (a hash lookup),
//!   a `service-*` chain (masquerade mark, `numgen` picking an endpoint), an
//!   `endpoint-*` chain per endpoint.
//!
//! Left out, in both: rule comments (kube-proxy drops them in large
//! clusters too) and the filter-table chains (empty for Services that have
//! endpoints); NodePorts only in the nftables form (`nft_node_port`). Both
//! baselines are therefore a little lighter than the real thing.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// One Service port: VIP:port/TCP over its endpoints.
#[derive(Debug, Clone)]
pub struct Service {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

pub const MARK_MASQ: &str = "0x4000";

fn svc_chain(i: usize) -> String {
    format!("KUBE-SVC-{i:016X}")
}

fn sep_chain(i: usize, j: usize) -> String {
    format!("KUBE-SEP-{i:012X}{j:04X}")
}

/// The full nat table for `services` (service `i` is numbered by its index).
pub fn iptables_restore(services: &[Service], cluster_cidr: &str) -> String {
    let mut out = String::with_capacity(services.len() * 900);
    out.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    for (i, s) in services.iter().enumerate() {
        declare_chains(&mut out, i, s);
    }
    out.push_str("-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n");
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --set-xmark {MARK_MASQ}/{MARK_MASQ}");
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MARK_MASQ}/{MARK_MASQ} -j RETURN"
    );
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --set-xmark {MARK_MASQ}/0x0");
    out.push_str("-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n");
    for (i, s) in services.iter().enumerate() {
        service_rules(&mut out, i, s, cluster_cidr);
    }
    out.push_str("COMMIT\n");
    out
}

/// `iptables-restore --noflush` input adding service `i` to a loaded table:
/// its chains, and its rule appended to `KUBE-SERVICES`. (kube-proxy's
/// partial sync rewrites the whole `KUBE-SERVICES` chain; appending is the
/// cheapest form iptables allows.)
pub fn iptables_add(i: usize, s: &Service, cluster_cidr: &str) -> String {
    let mut out = String::from("*nat\n");
    declare_chains(&mut out, i, s);
    service_rules(&mut out, i, s, cluster_cidr);
    out.push_str("COMMIT\n");
    out
}

fn declare_chains(out: &mut String, i: usize, s: &Service) {
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(i));
    for j in 0..s.endpoints.len() {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(i, j));
    }
}

fn service_rules(out: &mut String, i: usize, s: &Service, cluster_cidr: &str) {
    let (svc, vip, port) = (svc_chain(i), s.vip, s.port);
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport {port} -j {svc}"
    );
    let _ = writeln!(
        out,
        "-A {svc} ! -s {cluster_cidr} -d {vip}/32 -p tcp -m tcp --dport {port} -j KUBE-MARK-MASQ"
    );
    let n = s.endpoints.len();
    for (j, (ip, p)) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(i, j);
        if j + 1 < n {
            let probability = 1.0 / (n - j) as f64;
            let _ = writeln!(
                out,
                "-A {svc} -m statistic --mode random --probability {probability:.11} -j {sep}"
            );
        } else {
            let _ = writeln!(out, "-A {svc} -j {sep}");
        }
        let _ = writeln!(out, "-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ");
        let _ = writeln!(out, "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:{p}");
    }
}

pub const NFT_TABLE: &str = "kube-proxy";

/// The whole `ip kube-proxy` table for `services`, as `nft -f` inputs to
/// load in order: the table and its shared objects, the Services `batch`
/// at a time, then the hooks that make them live. (One transaction of
/// 10,000 Services takes over a minute on Linux 6.18, and the time grows
/// faster than quadratically with the transaction; transactions of a few
/// thousand keep 100,000 Services to minutes.)
pub fn nft_ruleset(services: &[Service], cluster_cidr: &str, batch: usize) -> Vec<String> {
    let mut head = String::new();
    let t = NFT_TABLE;
    let _ = writeln!(head, "add table ip {t}");
    let _ = writeln!(head, "add chain ip {t} mark-for-masquerade");
    let _ = writeln!(head, "add rule ip {t} mark-for-masquerade mark set mark or {MARK_MASQ}");
    let _ = writeln!(
        head,
        "add chain ip {t} masquerading {{ type nat hook postrouting priority srcnat; policy accept; }}"
    );
    let _ = writeln!(head, "add rule ip {t} masquerading mark and {MARK_MASQ} == 0 return");
    let _ = writeln!(head, "add rule ip {t} masquerading mark set mark xor {MARK_MASQ}");
    let _ = writeln!(head, "add rule ip {t} masquerading masquerade fully-random");
    let _ = writeln!(
        head,
        "add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}"
    );
    let _ = writeln!(head, "add chain ip {t} services");
    let _ = writeln!(
        head,
        "add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    let batch = batch.max(1);
    let mut out = vec![head];
    for (b, chunk) in services.chunks(batch).enumerate() {
        let mut text = String::with_capacity(chunk.len() * 700);
        for (k, s) in chunk.iter().enumerate() {
            nft_service(&mut text, b * batch + k, s, cluster_cidr);
        }
        out.push(text);
    }
    let mut hooks = String::new();
    for hook in ["output", "prerouting"] {
        let _ = writeln!(
            hooks,
            "add chain ip {t} nat-{hook} {{ type nat hook {hook} priority -100; policy accept; }}"
        );
        let _ = writeln!(hooks, "add rule ip {t} nat-{hook} jump services");
    }
    out.push(hooks);
    out
}

/// `nft -f` input making service `i` (already loaded) a NodePort on
/// `node_port`/TCP with externalTrafficPolicy Cluster, as kube-proxy's
/// nftables mode does: a `service-nodeports` verdict map read for
/// packets to the node's own addresses (`fib daddr type local`), whose
/// `external-*` chain marks the connection for masquerading and goes to
/// the Service's chain.
pub fn nft_node_port(i: usize, node_port: u16) -> String {
    let t = NFT_TABLE;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "add map ip {t} service-nodeports {{ type inet_proto . inet_service : verdict; }}"
    );
    let _ = writeln!(out, "add chain ip {t} nodeports");
    let _ = writeln!(out, "flush chain ip {t} nodeports");
    let _ = writeln!(
        out,
        "add rule ip {t} nodeports meta l4proto . th dport vmap @service-nodeports"
    );
    let _ = writeln!(out, "add rule ip {t} services fib daddr type local jump nodeports");
    let ext = format!("external-{i}");
    let _ = writeln!(out, "add chain ip {t} {ext}");
    let _ = writeln!(out, "add rule ip {t} {ext} jump mark-for-masquerade");
    let _ = writeln!(out, "add rule ip {t} {ext} goto service-{i}");
    let _ = writeln!(
        out,
        "add element ip {t} service-nodeports {{ tcp . {node_port} : goto {ext} }}"
    );
    out
}

/// `nft -f` input adding service `i` to a loaded table: what kube-proxy's
/// nftables mode sends for a new Service (its chains, one map element).
pub fn nft_add(i: usize, s: &Service, cluster_cidr: &str) -> String {
    let mut out = String::new();
    nft_service(&mut out, i, s, cluster_cidr);
    out
}

fn nft_service(out: &mut String, i: usize, s: &Service, cluster_cidr: &str) {
    let t = NFT_TABLE;
    let (vip, port) = (s.vip, s.port);
    let svc = format!("service-{i}");
    for (j, (ip, p)) in s.endpoints.iter().enumerate() {
        let ep = format!("endpoint-{i}-{j}");
        let _ = writeln!(out, "add chain ip {t} {ep}");
        let _ = writeln!(out, "add rule ip {t} {ep} ip saddr {ip} jump mark-for-masquerade");
        let _ = writeln!(out, "add rule ip {t} {ep} meta l4proto tcp dnat to {ip}:{p}");
    }
    let _ = writeln!(out, "add chain ip {t} {svc}");
    let _ = writeln!(
        out,
        "add rule ip {t} {svc} ip daddr {vip} tcp dport {port} ip saddr != {cluster_cidr} jump mark-for-masquerade"
    );
    let picks: Vec<String> = (0..s.endpoints.len())
        .map(|j| format!("{j} : goto endpoint-{i}-{j}"))
        .collect();
    let _ = writeln!(
        out,
        "add rule ip {t} {svc} numgen random mod {} vmap {{ {} }}",
        s.endpoints.len(),
        picks.join(", ")
    );
    let _ = writeln!(
        out,
        "add element ip {t} service-ips {{ {vip} . tcp . {port} : goto {svc} }}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Service {
        Service {
            vip: Ipv4Addr::new(10, 96, 0, 1),
            port: 80,
            endpoints: vec![
                (Ipv4Addr::new(10, 244, 1, 5), 8080),
                (Ipv4Addr::new(10, 244, 1, 6), 8080),
                (Ipv4Addr::new(10, 244, 1, 7), 8080),
            ],
        }
    }

    #[test]
    fn iptables_picks_each_endpoint_with_equal_chance() {
        let r = iptables_restore(&[svc()], "10.244.0.0/16");
        // 1/3 of all, then 1/2 of the rest, then the last one unconditionally.
        assert!(r.contains("--probability 0.33333333333 -j KUBE-SEP-0000000000000000"));
        assert!(r.contains("--probability 0.50000000000 -j KUBE-SEP-0000000000000001"));
        assert!(r.contains("-A KUBE-SVC-0000000000000000 -j KUBE-SEP-0000000000000002"));
        assert!(r.contains("-j DNAT --to-destination 10.244.1.7:8080"));
        assert_eq!(r.matches("-A KUBE-SERVICES -d").count(), 1);
    }

    #[test]
    fn nft_maps_the_vip_to_its_chain() {
        let r = nft_ruleset(&[svc()], "10.244.0.0/16", 100).concat();
        assert!(r.contains("add element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 : goto service-0 }"));
        assert!(r.contains(
            "numgen random mod 3 vmap { 0 : goto endpoint-0-0, 1 : goto endpoint-0-1, 2 : goto endpoint-0-2 }"
        ));
        // 3 endpoint chains of 3 lines, the service chain and its 2 rules, the map element.
        assert_eq!(nft_add(0, &svc(), "10.244.0.0/16").lines().count(), 13);
    }
}

//! `sluicectl`: program Services into the node's pinned datapath maps and
//! look at what the datapath holds: services, backends, conntrack,
//! endpoints and drop counters. Until the agent lands this is how Services
//! are programmed; afterwards it stays the inspection tool.

mod observe;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use sluice_tc_datapath::layout::{self, BACKEND_ACTIVE, CT_ESTABLISHED, CT_NEW, CT_SERVICE, SVC_ALG_MAGLEV};
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::{Maps, ServiceSpec};
use sluice_tc_datapath::pin::DEFAULT_ROOT;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sluicectl",
    version,
    about = "Program and inspect the sluice eBPF datapath of this node"
)]
struct Cli {
    /// The datapath's bpffs root (the CNI config's datapath.bpffs).
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    bpffs: PathBuf,
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Service ports (VIP:port/proto).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Backends.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Connection tracking.
    #[command(subcommand)]
    Ct(CtCmd),
    /// Local pod endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Network policy as enforced on this node's pods.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Packets and bytes by reason and direction, summed over CPUs.
    Metrics,
    /// The attached program version and its settings.
    Status,
    /// Flow events (new flows, drops with their reason, policy verdicts)
    /// from the node agent, like `hubble observe`.
    Observe(observe::Observe),
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Add or replace a service port.
    Add {
        /// VIP:port/proto, e.g. 10.96.0.10:80/tcp or [fd00::a]:53/udp.
        service: String,
        /// A backend taking new connections (address:port), repeatable.
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// A terminating backend: keeps its connections, gets no new ones.
        #[arg(long = "terminating")]
        terminating: Vec<String>,
        /// Maglev consistent hashing instead of random selection.
        #[arg(long)]
        maglev: bool,
        /// ClientIP session affinity timeout in seconds (0: none).
        #[arg(long, default_value_t = 0)]
        affinity: u32,
        /// Answer a packet that finds no backend, or a port the VIP does not
        /// serve, with ICMP port unreachable (clients fail fast) instead of
        /// dropping it silently.
        #[arg(long)]
        reject: bool,
    },
    /// Remove a service port.
    Del {
        service: String,
    },
    List,
}

#[derive(Subcommand)]
enum BackendCmd {
    List,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Every pod some policy isolates: its identity, the directions it is
    /// isolated in (by which policy), and how many rule entries it has.
    List,
    /// The rules enforced on one pod, by one of its addresses.
    Get { address: IpAddr },
}

#[derive(Subcommand)]
enum CtCmd {
    /// Every entry: a Service connection's as the client sent it (KIND
    /// service), every flow from its pod's side (SOURCE is the pod; KIND out
    /// when the pod opened it, in when the peer did).
    List,
    /// Remove every entry (established connections re-select a backend).
    Flush,
}

#[derive(Subcommand)]
enum EndpointCmd {
    List,
}

fn proto_num(s: &str) -> Result<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(layout::PROTO_TCP),
        "udp" => Ok(layout::PROTO_UDP),
        other => bail!("protocol {other:?}: expected tcp or udp"),
    }
}

/// An identity as the node's names map spells it, else its number.
fn identity_name(maps: &Maps, id: u32) -> String {
    match id {
        layout::ID_HOST => "host".into(),
        layout::ID_WORLD => "world".into(),
        _ => maps
            .name(layout::NAME_IDENTITY, id)
            .map_or_else(|| id.to_string(), |n| format!("{id} ({n})")),
    }
}

fn proto_name(p: u8) -> String {
    match p {
        layout::PROTO_TCP => "tcp".into(),
        layout::PROTO_UDP => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// "VIP:port/proto".
fn parse_service(s: &str) -> Result<(SocketAddr, u8)> {
    let (addr, proto) = s
        .rsplit_once('/')
        .with_context(|| format!("service {s:?}: expected VIP:port/proto, e.g. 10.96.0.10:80/tcp"))?;
    let sa: SocketAddr = addr
        .parse()
        .with_context(|| format!("service {s:?}: {addr:?} is not address:port"))?;
    Ok((sa, proto_num(proto)?))
}

fn parse_backend(s: &str) -> Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("backend {s:?} is not address:port (IPv6 as [addr]:port)"))
}

fn sock(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Now on the clock bpf_ktime_get_ns() reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("sluicectl: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<()> {
    if let Cmd::Observe(o) = &cli.cmd {
        return observe::run(o, cli.output == Output::Json);
    }
    let dir = versioned_dir(&cli.bpffs);
    let mut maps = Maps::open_pinned(&dir).with_context(|| {
        format!(
            "no sluice datapath under {} (is a pod attached on this node, and is --bpffs right?)",
            cli.bpffs.display()
        )
    })?;
    let json_out = cli.output == Output::Json;
    match &cli.cmd {
        Cmd::Service(ServiceCmd::Add {
            service,
            backends,
            terminating,
            maglev,
            affinity,
            reject,
        }) => {
            let (vip, proto) = parse_service(service)?;
            let mut addrs = Vec::new();
            for (b, active) in backends
                .iter()
                .map(|b| (b, true))
                .chain(terminating.iter().map(|b| (b, false)))
            {
                let sa = parse_backend(b)?;
                if sa.is_ipv4() != vip.is_ipv4() {
                    bail!("backend {sa} is not of the VIP's address family");
                }
                addrs.push((sa, active));
            }
            let pairs: Vec<(IpAddr, u16)> = addrs.iter().map(|(sa, _)| (sa.ip(), sa.port())).collect();
            let ids = maps.backend_ids(proto, &pairs)?;
            let list: Vec<(u32, IpAddr, u16, bool)> = addrs
                .iter()
                .zip(ids)
                .map(|((sa, active), id)| (id, sa.ip(), sa.port(), *active))
                .collect();
            let spec = ServiceSpec {
                vip: vip.ip(),
                port: vip.port(),
                proto,
                rev_nat_id: maps.rev_nat_id(vip.ip(), vip.port(), proto)?,
                algorithm: if *maglev {
                    SVC_ALG_MAGLEV
                } else {
                    layout::SVC_ALG_RANDOM
                },
                affinity_timeout_secs: *affinity,
                reject: *reject,
                draining: Vec::new(),
                backends: list,
            };
            maps.upsert_service(&spec)?;
            if json_out {
                println!(
                    "{}",
                    json!({"service": service, "revNatId": spec.rev_nat_id, "backends": spec.backends.len()})
                );
            } else {
                println!(
                    "{service}: {} backend(s), rev-NAT id {}",
                    spec.backends.len(),
                    spec.rev_nat_id
                );
            }
        }
        Cmd::Service(ServiceCmd::Del { service }) => {
            let (vip, proto) = parse_service(service)?;
            if !maps.delete_service(vip.ip(), vip.port(), proto)? {
                bail!("no service {service}");
            }
            if !json_out {
                println!("{service}: removed");
            }
        }
        Cmd::Service(ServiceCmd::List) => {
            let backends: std::collections::HashMap<u32, layout::BackendValue> = maps.backends()?.into_iter().collect();
            let svcs = maps.services()?;
            let show = |id: &u32| {
                backends
                    .get(id)
                    .map(|b| sock(layout::ip(&b.addr), u16::from_be(b.port)))
                    .unwrap_or_else(|| format!("#{id}?"))
            };
            if json_out {
                let v: Vec<Value> = svcs
                    .iter()
                    .map(|s| {
                        json!({"vip": s.vip, "port": s.port, "proto": proto_name(s.proto),
                           "revNatId": s.rev_nat_id,
                           "algorithm": if s.algorithm == SVC_ALG_MAGLEV { "maglev" } else { "random" },
                           "affinityTimeout": s.affinity_timeout_secs,
                           "reject": s.reject,
                           "backends": s.active.iter().map(show).collect::<Vec<_>>()})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                table(
                    &["SERVICE", "ID", "ALGORITHM", "AFFINITY", "NO-BACKEND", "BACKENDS"],
                    svcs.iter()
                        .map(|s| {
                            vec![
                                format!("{}/{}", sock(s.vip, s.port), proto_name(s.proto)),
                                s.rev_nat_id.to_string(),
                                if s.algorithm == SVC_ALG_MAGLEV {
                                    "maglev"
                                } else {
                                    "random"
                                }
                                .into(),
                                if s.affinity_timeout_secs > 0 {
                                    format!("{}s", s.affinity_timeout_secs)
                                } else {
                                    "-".into()
                                },
                                if s.reject { "reject" } else { "drop" }.into(),
                                s.active.iter().map(show).collect::<Vec<_>>().join(","),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Cmd::Backend(BackendCmd::List) => {
            let rows: Vec<(u32, String, String, &str)> = maps
                .backends()?
                .iter()
                .map(|(id, b)| {
                    (
                        *id,
                        sock(layout::ip(&b.addr), u16::from_be(b.port)),
                        proto_name(b.proto),
                        if b.state == BACKEND_ACTIVE {
                            "active"
                        } else {
                            "terminating"
                        },
                    )
                })
                .collect();
            if json_out {
                let v: Vec<Value> = rows
                    .iter()
                    .map(|r| json!({"id": r.0, "address": r.1, "proto": r.2, "state": r.3}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                table(
                    &["ID", "ADDRESS", "PROTO", "STATE"],
                    rows.into_iter()
                        .map(|r| vec![r.0.to_string(), r.1, r.2, r.3.into()])
                        .collect(),
                );
            }
        }
        Cmd::Ct(CtCmd::List) => {
            let now = monotonic_ns();
            let mut entries = maps.conntrack()?;
            entries.sort_by_key(|(k, _)| (k.kind, k.saddr, k.sport, k.daddr, k.dport));
            let rows: Vec<[String; 8]> = entries
                .iter()
                .map(|(k, v)| {
                    [
                        // A flow entry is keyed from its pod's side: "out"
                        // when the pod opened it, "in" when the peer did.
                        match (k.kind, v.flags & layout::CT_F_INBOUND != 0) {
                            (CT_SERVICE, _) => "service",
                            (_, false) => "out",
                            (_, true) => "in",
                        }
                        .to_string(),
                        proto_name(k.proto),
                        sock(layout::ip(&k.saddr), u16::from_be(k.sport)),
                        sock(layout::ip(&k.daddr), u16::from_be(k.dport)),
                        match v.state {
                            CT_NEW => "new",
                            CT_ESTABLISHED => "established",
                            _ => "closing",
                        }
                        .into(),
                        v.backend_id.to_string(),
                        ((v.expires_ns.saturating_sub(now)) / 1_000_000_000).to_string(),
                        if v.nh_ifindex != 0 && k.kind == CT_SERVICE {
                            mac(&v.nh_mac)
                        } else {
                            "-".into()
                        },
                    ]
                })
                .collect();
            if json_out {
                let v: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({"kind": r[0], "proto": r[1], "source": r[2], "destination": r[3],
                               "state": r[4], "backend": r[5].parse::<u32>().unwrap_or(0),
                               "expiresInSeconds": r[6].parse::<u64>().unwrap_or(0),
                               "nextHop": if r[7] == "-" { Value::Null } else { json!(r[7]) }})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                table(
                    &[
                        "KIND",
                        "PROTO",
                        "SOURCE",
                        "DESTINATION",
                        "STATE",
                        "BACKEND",
                        "EXPIRES(S)",
                        "NEXT-HOP",
                    ],
                    rows.into_iter().map(Vec::from).collect(),
                );
            }
        }
        Cmd::Ct(CtCmd::Flush) => {
            let n = maps.flush_conntrack()?;
            if json_out {
                println!("{}", json!({"flushed": n}));
            } else {
                println!("flushed {n} entries");
            }
        }
        Cmd::Endpoint(EndpointCmd::List) => {
            let eps = maps.endpoint_entries()?;
            if json_out {
                let v: Vec<Value> = eps
                    .iter()
                    .map(
                        |(ip, e)| json!({"address": ip, "ifindex": e.ifindex, "mac": mac(&e.mac), "id": e.endpoint_id}),
                    )
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                table(
                    &["ADDRESS", "IFINDEX", "MAC", "ID"],
                    eps.iter()
                        .map(|(ip, e)| {
                            vec![
                                ip.to_string(),
                                e.ifindex.to_string(),
                                mac(&e.mac),
                                e.endpoint_id.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Cmd::Policy(PolicyCmd::List) => {
            let eps = maps.endpoint_entries()?;
            let rules = maps.rule_entries(None)?;
            let mut rows = Vec::new();
            for (id, v) in maps.endpoint_policies()? {
                let addrs: Vec<String> = eps
                    .iter()
                    .filter(|e| e.1.endpoint_id == id)
                    .map(|e| e.0.to_string())
                    .collect();
                let by = |flag: u8, pol: u32| {
                    if v.flags & flag == 0 {
                        "-".to_string()
                    } else {
                        maps.name(layout::NAME_POLICY, pol).unwrap_or_else(|| pol.to_string())
                    }
                };
                rows.push(vec![
                    id.to_string(),
                    addrs.join(","),
                    identity_name(&maps, v.identity),
                    by(layout::POLICY_F_INGRESS, v.ingress_policy),
                    by(layout::POLICY_F_EGRESS, v.egress_policy),
                    rules.iter().filter(|r| r.1.endpoint_id == id).count().to_string(),
                ]);
            }
            if json_out {
                let v: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({"endpoint": r[0], "addresses": r[1], "identity": r[2],
                                    "ingress": r[3], "egress": r[4], "entries": r[5]})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                table(
                    &["ENDPOINT", "ADDRESSES", "IDENTITY", "INGRESS", "EGRESS", "ENTRIES"],
                    rows,
                );
            }
        }
        Cmd::Policy(PolicyCmd::Get { address }) => {
            let ep = maps
                .endpoint_entries()?
                .into_iter()
                .find(|e| e.0 == *address)
                .with_context(|| format!("no pod with address {address} on this node"))?;
            let id = ep.1.endpoint_id;
            let pol = maps.endpoint_policy(id)?;
            let isolated = |flag: u8| pol.is_some_and(|p| p.flags & flag != 0);
            let mut rows = Vec::new();
            for (len, m, v) in maps.rule_entries(Some(id))? {
                let port = match len {
                    layout::POLICY_BITS_ANY_PROTO | layout::POLICY_BITS_ANY_PORT => "*".to_string(),
                    l => {
                        let lo = u16::from_be(m.port);
                        let span = 1u32 << (layout::POLICY_BITS_EXACT - l);
                        if span == 1 {
                            lo.to_string()
                        } else {
                            format!("{lo}-{}", u32::from(lo) + span - 1)
                        }
                    }
                };
                rows.push(vec![
                    if m.dir == layout::Direction::Ingress as u8 {
                        "ingress"
                    } else {
                        "egress"
                    }
                    .to_string(),
                    if m.identity == layout::ID_ANY {
                        "*".into()
                    } else {
                        identity_name(&maps, m.identity)
                    },
                    if len == layout::POLICY_BITS_ANY_PROTO {
                        "*".into()
                    } else {
                        proto_name(m.proto)
                    },
                    port,
                    maps.name(layout::NAME_POLICY, v.policy)
                        .unwrap_or_else(|| v.policy.to_string()),
                ]);
            }
            if json_out {
                let v = json!({
                    "endpoint": id,
                    "ingressIsolated": isolated(layout::POLICY_F_INGRESS),
                    "egressIsolated": isolated(layout::POLICY_F_EGRESS),
                    "rules": rows.iter().map(|r| json!({"direction": r[0], "peer": r[1], "proto": r[2],
                                                         "ports": r[3], "policy": r[4]})).collect::<Vec<_>>()
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "endpoint {id}: ingress {}, egress {}",
                    if isolated(layout::POLICY_F_INGRESS) {
                        "isolated (what is listed is allowed)"
                    } else {
                        "unrestricted"
                    },
                    if isolated(layout::POLICY_F_EGRESS) {
                        "isolated (what is listed is allowed)"
                    } else {
                        "unrestricted"
                    },
                );
                table(&["DIRECTION", "PEER", "PROTO", "PORTS", "POLICY"], rows);
            }
        }
        Cmd::Metrics => {
            let m: Vec<_> = maps.metrics()?.into_iter().filter(|m| m.2 > 0).collect();
            if json_out {
                let v: Vec<Value> = m
                    .iter()
                    .map(|(r, d, p, b)| {
                        json!({"reason": r.name(), "direction": format!("{d:?}").to_lowercase(),
                               "drop": r.is_drop(), "packets": p, "bytes": b})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                table(
                    &["REASON", "DIRECTION", "PACKETS", "BYTES"],
                    m.iter()
                        .map(|(r, d, p, b)| {
                            vec![
                                r.name().into(),
                                format!("{d:?}").to_lowercase(),
                                p.to_string(),
                                b.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Cmd::Observe(_) => unreachable!("handled before the maps are opened"),
        Cmd::Status => {
            let i = maps.info()?;
            let links = sluice_tc_datapath::attach::attachments(&dir)?.len();
            let v = json!({
                "bpffs": dir,
                "programVersion": format!("{:016x}", i.prog_hash),
                "maglevTableSize": i.maglev_m,
                "sourceCheck": i.source_check != 0,
                "ctTimeoutsSeconds": {
                    "tcpSyn": i.ct_tcp_syn_ns / 1_000_000_000,
                    "tcpEstablished": i.ct_tcp_established_ns / 1_000_000_000,
                    "tcpClosing": i.ct_tcp_closing_ns / 1_000_000_000,
                    "udp": i.ct_udp_ns / 1_000_000_000,
                },
                "pinnedAttachments": links,
                "services": maps.services()?.len(),
                "backends": maps.backends()?.len(),
                "endpoints": maps.endpoint_entries()?.len(),
            });
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (k, val) in v.as_object().expect("object") {
                    println!("{k:<20} {val}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_and_backend_syntax() {
        assert_eq!(
            parse_service("10.96.0.10:80/tcp").unwrap(),
            ("10.96.0.10:80".parse().unwrap(), 6)
        );
        assert_eq!(
            parse_service("[fd00::a]:53/UDP").unwrap(),
            ("[fd00::a]:53".parse().unwrap(), 17)
        );
        for bad in ["10.96.0.10:80", "10.96.0.10/tcp", "10.96.0.10:80/sctp", "x:1/tcp"] {
            assert!(parse_service(bad).is_err(), "{bad}");
        }
        assert!(parse_backend("fd00::1:80").is_err(), "IPv6 needs brackets");
    }
}

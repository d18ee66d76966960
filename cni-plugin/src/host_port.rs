//! hostPort without the portmap plugin or iptables: the runtime's
//! `portMappings` (the capability the conflist declares) become entries of
//! the node's hostPort map, (node address, hostPort, protocol) -> the
//! pod's address and containerPort, for each of the node's addresses (its
//! namespace's global ones, where this binary runs) or the mapping's
//! `hostIP`, in the pod's address family. The uplink programs serve them
//! to traffic from outside, the socket hooks to the node's own sockets.
//!
//! A port another pod holds is refused (`PortInUse`, nothing written):
//! the check and the writes are one step under the node's hostPort lock.
//! DEL removes every entry of the pod's endpoint.

use crate::config::{PluginConfig, PortMapping};
use crate::endpoint::Endpoint;
use sluice_cni_spec::{CniError, ErrorCode};
use sluice_tc_datapath::layout::{PROTO_TCP, PROTO_UDP};
use sluice_tc_datapath::maps::hostport::HostPort;
use sluice_tc_datapath::maps::{self, HostPortMaps, Source};
use sluice_tc_datapath::pin;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use tracing::info;

/// One mapping, checked: (hostIP or None for every node address, hostPort,
/// protocol, containerPort).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: u8,
    pub container_port: u16,
}

fn invalid(m: &PortMapping, why: &str) -> CniError {
    CniError::new(
        ErrorCode::InvalidConfig,
        format!(
            "runtimeConfig.portMappings: {{hostPort: {}, containerPort: {}, protocol: {:?}, hostIP: {:?}}}: {why}",
            m.host_port, m.container_port, m.protocol, m.host_ip
        ),
    )
}

/// Check the runtime's mappings.
pub fn parse(list: &[PortMapping]) -> Result<Vec<Mapping>, CniError> {
    let port = |m: &PortMapping, p: i64, what: &str| {
        u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(m, &format!("{what} must be 1-65535")))
    };
    let mut out: Vec<Mapping> = Vec::new();
    for m in list {
        let proto = match m.protocol.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("tcp") => PROTO_TCP,
            Some("udp") => PROTO_UDP,
            Some(_) => return Err(invalid(m, "the protocol must be tcp or udp")),
        };
        let host_ip = match m.host_ip.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => match a.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => None,
                Ok(ip) => Some(ip),
                Err(_) => return Err(invalid(m, "hostIP is not an address")),
            },
        };
        let mapping = Mapping {
            host_ip,
            host_port: port(m, m.host_port, "hostPort")?,
            proto,
            container_port: port(m, m.container_port, "containerPort")?,
        };
        if out
            .iter()
            .any(|o| (o.host_port, o.proto, o.host_ip) == (mapping.host_port, mapping.proto, mapping.host_ip))
        {
            return Err(invalid(m, "the same hostPort is mapped twice"));
        }
        out.push(mapping);
    }
    Ok(out)
}

/// The entries `mappings` make for the pod `ep`: one per node address of
/// each of the pod's address families.
fn entries(mappings: &[Mapping], ep: &Endpoint, node: &[IpAddr]) -> Vec<HostPort> {
    let id = pin::attachment_id(&ep.container_id, &ep.ifname);
    let mut out = Vec::new();
    for m in mappings {
        let hosts: Vec<IpAddr> = match m.host_ip {
            Some(ip) => vec![ip],
            None => node.to_vec(),
        };
        for host in hosts {
            let Some(pod) = ep.ips.iter().map(|n| n.ip()).find(|p| p.is_ipv4() == host.is_ipv4()) else {
                continue;
            };
            out.push(HostPort {
                host: SocketAddr::new(host, m.host_port),
                proto: m.proto,
                pod: SocketAddr::new(pod, m.container_port),
                endpoint_id: id,
            });
        }
    }
    out
}

/// Publish the pod's hostPorts, all or none.
pub fn publish(cfg: &PluginConfig, versioned: &Path, ep: &Endpoint) -> Result<usize, CniError> {
    let mappings = parse(&cfg.runtime_config.port_mappings)?;
    if mappings.is_empty() {
        return Ok(0);
    }
    // The runtime's namespace, this process's: the node's.
    let node = sluice_tc_datapath::node_addresses::current()
        .map_err(|e| sluice_cni_spec::error::io_error("hostPort: listing the node's addresses (getifaddrs)", e))?;
    let want = entries(&mappings, ep, &node);
    let _lock = crate::lock::lock(&cfg.data_dir(), "host-ports.lock")?;
    let mut maps = open(versioned)?;
    let mine = pin::attachment_id(&ep.container_id, &ep.ifname);
    for h in &want {
        let holder = maps.holder(h.host.ip(), h.host.port(), h.proto).map_err(maps_err)?;
        if let Some(other) = holder.filter(|o| *o != mine) {
            return Err(CniError::new(
                ErrorCode::PortInUse,
                format!(
                    "hostPort {}/{} is held by another pod (endpoint {other:#010x}); pod {} cannot have it",
                    h.host,
                    proto_name(h.proto),
                    ep.container_id
                ),
            ));
        }
    }
    for (i, h) in want.iter().enumerate() {
        if let Err(e) = maps.put(h) {
            // All or none: take back what this ADD wrote.
            let _ = maps.remove_endpoint(mine);
            return Err(maps_err(e).context(format!("hostPort {} ({i} written)", h.host)));
        }
    }
    info!(hostports = want.len(), "hostPorts published");
    Ok(want.len())
}

/// Remove the hostPorts of endpoint `endpoint_id` (DEL; idempotent).
pub fn unpublish(cfg: &PluginConfig, versioned: &Path, endpoint_id: u32) -> Result<usize, CniError> {
    // A node whose maps predate hostPorts has none to remove.
    if !maps::pin_path(versioned, &maps::HOSTPORTS).exists() {
        return Ok(0);
    }
    let _lock = crate::lock::lock(&cfg.data_dir(), "host-ports.lock")?;
    open(versioned)?.remove_endpoint(endpoint_id).map_err(maps_err)
}

fn open(versioned: &Path) -> Result<HostPortMaps, CniError> {
    HostPortMaps::open(&mut Source::pinned(versioned)).map_err(maps_err)
}

fn maps_err(e: sluice_tc_datapath::maps::MapsError) -> CniError {
    CniError::new(ErrorCode::Io, format!("datapath: the hostPort map: {e}"))
}

fn proto_name(p: u8) -> &'static str {
    if p == PROTO_UDP { "udp" } else { "tcp" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pm(v: serde_json::Value) -> Vec<PortMapping> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn mappings_are_checked_and_named_in_errors() {
        let ok = parse(&pm(json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8080, "containerPort": 80, "protocol": "UDP", "hostIP": "0.0.0.0"},
            {"hostPort": 9090, "containerPort": 90, "hostIP": "172.31.0.11"}
        ])))
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!((ok[1].proto, ok[1].host_ip), (PROTO_UDP, None));
        assert_eq!(ok[2].host_ip, Some("172.31.0.11".parse().unwrap()));
        for (bad, why) in [
            (
                json!([{"hostPort": 0, "containerPort": 80}]),
                "hostPort must be 1-65535",
            ),
            (
                json!([{"hostPort": 70000, "containerPort": 80}]),
                "hostPort must be 1-65535",
            ),
            (
                json!([{"hostPort": 80, "containerPort": -1}]),
                "containerPort must be 1-65535",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]),
                "tcp or udp",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}]),
                "not an address",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81}]),
                "mapped twice",
            ),
        ] {
            let e = parse(&pm(bad.clone())).unwrap_err();
            assert_eq!(e.code, u32::from(ErrorCode::InvalidConfig), "{bad}");
            assert!(e.msg.contains(why), "{bad}: {}", e.msg);
        }
    }
}

//! Configure the pod side of an interface from an IPAM result: addresses,
//! link up, routes, then the announcement.

use crate::garp;
use crate::netlink::{Link, Netlink};
use crate::netns::NetNs;
use sluice_cni_spec::{CniError, CniResult, ErrorCode};
use std::net::IpAddr;

pub async fn configure(
    pod: &Netlink,
    pod_ns: &NetNs,
    link: &Link,
    ipam: &CniResult,
    announce: bool,
) -> Result<(), CniError> {
    // Independent of each other: sent together, answered together.
    let addresses = futures::future::try_join_all(ipam.ips.iter().map(|ip| pod.add_address(link.index, ip.address)));
    let arp_notify = async {
        match announce {
            true => pod.enable_arp_notify(link.index, &link.name).await,
            false => Ok(()),
        }
    };
    futures::try_join!(addresses, arp_notify)?;
    // Link up with the addresses in place: the kernel announces them now.
    pod.set_up(link.index, &link.name).await?;
    for r in &ipam.routes {
        // A route without a gateway goes via the gateway of its family.
        let gw = r.gw.or_else(|| {
            ipam.ips
                .iter()
                .filter(|i| i.address.is_ipv4() == r.dst.is_ipv4())
                .find_map(|i| i.gateway)
        });
        pod.add_route(link.index, r.dst, gw).await?;
    }
    let v6: Vec<IpAddr> = ipam
        .ips
        .iter()
        .map(|i| i.address.ip())
        .filter(IpAddr::is_ipv6)
        .collect();
    if announce
        && !v6.is_empty()
        && let Some(mac) = link.mac
    {
        let index = link.index;
        pod_ns.run(move || garp::announce_v6(index, mac, &v6))?.map_err(|e| {
            CniError::new(
                ErrorCode::Io,
                format!("unsolicited NA on {} in {}: {e}", link.name, pod_ns.path().display()),
            )
        })?;
    }
    Ok(())
}

/// Every address of `ips` is on the link (CHECK, and the chained role's ADD).
pub async fn verify_addresses(pod: &Netlink, link: &Link, ips: &[ipnetwork::IpNetwork]) -> Result<(), CniError> {
    let have = pod.addresses(link.index).await?;
    for ip in ips {
        if !have.iter().any(|h| h.ip() == ip.ip() && h.prefix() == ip.prefix()) {
            return Err(CniError::new(
                ErrorCode::CheckFailed,
                format!("address {ip} is not on {} in {} (has {have:?})", link.name, pod.label()),
            ));
        }
    }
    Ok(())
}

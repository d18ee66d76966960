//! The node's own addresses as the datapath serves them: the addresses a
//! NodePort answers on (the agent) and a hostPort is published on (the CNI
//! binary at ADD). Both read them the same way, so a port is served on the
//! same set of addresses whichever wrote it.

use std::net::IpAddr;

/// The addresses of the calling thread's network namespace's interfaces
/// that a client elsewhere can reach (see [`served`]), sorted, each once.
///
/// An error is the kernel's answer to the interface dump; the caller
/// decides what an unknown set means (an ADD fails, the agent keeps the
/// set it had): an empty list would withdraw every port silently.
pub fn current() -> std::io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .filter(served)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether a port on the node is served at `ip`: not loopback (the host's
/// own sockets reach the node through the socket hooks), not link-local
/// (it names a link, not the node) and not unspecified.
pub fn served(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => !v.is_loopback() && !v.is_link_local() && !v.is_unspecified(),
        IpAddr::V6(v) => !v.is_loopback() && !v.is_unicast_link_local() && !v.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::{current, served};
    use std::net::IpAddr;

    #[test]
    fn only_addresses_a_client_elsewhere_can_reach_are_served() {
        for (a, want) in [
            ("10.0.0.5", true),
            ("192.168.1.1", true),
            ("2001:db8::1", true),
            ("fd00::7", true),
            ("::ffff:10.0.0.5", true),
            ("127.0.0.1", false),
            ("127.9.9.9", false),
            ("169.254.1.1", false),
            ("0.0.0.0", false),
            ("::1", false),
            ("::", false),
            ("fe80::1", false),
            ("febf::1", false),
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(served(&ip), want, "{a}");
        }
    }

    /// This namespace's list: what `served` admits, in order, once each.
    #[test]
    fn the_list_is_sorted_unique_and_served() {
        let got = current().expect("getifaddrs");
        assert!(got.iter().all(served), "{got:?}");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    }
}

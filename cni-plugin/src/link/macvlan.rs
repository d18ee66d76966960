//! macvlan: a sub-interface of the node's ENI with its own MAC, created
//! directly inside the pod namespace (IFLA_NET_NS_FD), so no host-side name
//! is ever taken and a crash cannot leave a half-moved link in the host.

use crate::config::{MacvlanConfig, MacvlanMode};
use netlink_packet_route::link::{LinkMessage, MacVlanMode};
use rtnetlink::LinkMacVlan;
use std::os::fd::RawFd;

pub fn kernel_mode(m: MacvlanMode) -> MacVlanMode {
    match m {
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Private => MacVlanMode::Private,
        MacvlanMode::Vepa => MacVlanMode::Vepa,
        MacvlanMode::Passthru => MacVlanMode::Passthrough,
    }
}

pub fn create_request(
    cfg: &MacvlanConfig,
    parent_index: u32,
    ifname: &str,
    mtu: u32,
    mac: [u8; 6],
    netns_fd: RawFd,
) -> LinkMessage {
    LinkMacVlan::new(ifname, parent_index, kernel_mode(cfg.mode))
        .mtu(mtu)
        .address(mac.to_vec())
        .setns_by_fd(netns_fd)
        .build()
}

/// A MAC for a new macvlan, chosen before it exists so that its record
/// names it from the start: random, locally administered, unicast (what
/// the kernel would pick).
pub fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkInfo};

    #[test]
    fn request_carries_parent_mode_mtu_and_netns() {
        let cfg = MacvlanConfig {
            parent: Some("eth1".into()),
            mode: MacvlanMode::Private,
            mtu: None,
        };
        let mac = random_mac().unwrap();
        let m = create_request(&cfg, 7, "eth0", 1400, mac, 42);
        let a = &m.attributes;
        assert!(a.contains(&LinkAttribute::Address(mac.to_vec())));
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast: {mac:02x?}");
        assert!(a.contains(&LinkAttribute::IfName("eth0".into())));
        assert!(a.contains(&LinkAttribute::Link(7)));
        assert!(a.contains(&LinkAttribute::Mtu(1400)));
        assert!(a.contains(&LinkAttribute::NetNsFd(42)));
        let info = a
            .iter()
            .find_map(|x| {
                if let LinkAttribute::LinkInfo(i) = x {
                    Some(i)
                } else {
                    None
                }
            })
            .unwrap();
        assert!(info.contains(&LinkInfo::Kind(InfoKind::MacVlan)));
        assert!(info.contains(&LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
            MacVlanMode::Private
        )]))));
    }
}

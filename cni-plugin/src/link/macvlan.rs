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

pub fn create_request(cfg: &MacvlanConfig, parent_index: u32, ifname: &str, mtu: u32, netns_fd: RawFd) -> LinkMessage {
    LinkMacVlan::new(ifname, parent_index, kernel_mode(cfg.mode))
        .mtu(mtu)
        .setns_by_fd(netns_fd)
        .build()
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
        let m = create_request(&cfg, 7, "eth0", 1400, 42);
        let a = &m.attributes;
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

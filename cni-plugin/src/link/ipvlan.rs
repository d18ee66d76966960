//! ipvlan: pods share the ENI's MAC; the kernel demultiplexes by IP. The
//! mode that ENI networking relies on (one MAC per ENI, many secondary IPs).
//! Created inside the pod namespace in one message, like macvlan.

use crate::config::{IpvlanConfig, IpvlanMode};
use netlink_packet_route::link::{IpVlanMode, LinkMessage};
use rtnetlink::LinkIpVlan;
use std::os::fd::RawFd;

pub fn kernel_mode(m: IpvlanMode) -> IpVlanMode {
    match m {
        IpvlanMode::L2 => IpVlanMode::L2,
        IpvlanMode::L3 => IpVlanMode::L3,
        IpvlanMode::L3s => IpVlanMode::L3S,
    }
}

pub fn create_request(cfg: &IpvlanConfig, parent_index: u32, ifname: &str, mtu: u32, netns_fd: RawFd) -> LinkMessage {
    LinkIpVlan::new(ifname, parent_index, kernel_mode(cfg.mode))
        .mtu(mtu)
        .setns_by_fd(netns_fd)
        .build()
}

/// ipvlan slaves share the parent's MAC: a gratuitous ARP only makes sense in
/// L2 mode (in L3 modes the slave does not ARP at all).
pub fn announces(cfg: &IpvlanConfig) -> bool {
    cfg.mode == IpvlanMode::L2
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoData, InfoIpVlan, InfoKind, LinkAttribute, LinkInfo};

    fn info(m: &LinkMessage) -> &Vec<LinkInfo> {
        m.attributes
            .iter()
            .find_map(|x| {
                if let LinkAttribute::LinkInfo(i) = x {
                    Some(i)
                } else {
                    None
                }
            })
            .unwrap()
    }

    #[test]
    fn every_mode_maps_to_its_kernel_value() {
        for (mode, k) in [
            (IpvlanMode::L2, IpVlanMode::L2),
            (IpvlanMode::L3, IpVlanMode::L3),
            (IpvlanMode::L3s, IpVlanMode::L3S),
        ] {
            let cfg = IpvlanConfig {
                parent: Some("eni0".into()),
                mode,
                mtu: None,
            };
            let m = create_request(&cfg, 3, "eth0", 9001, 5);
            assert!(info(&m).contains(&LinkInfo::Kind(InfoKind::IpVlan)));
            assert!(info(&m).contains(&LinkInfo::Data(InfoData::IpVlan(vec![InfoIpVlan::Mode(k)]))));
            assert!(m.attributes.contains(&LinkAttribute::Link(3)));
            assert!(m.attributes.contains(&LinkAttribute::Mtu(9001)));
            assert!(m.attributes.contains(&LinkAttribute::NetNsFd(5)));
            assert!(m.attributes.contains(&LinkAttribute::IfName("eth0".into())));
        }
        assert!(announces(&IpvlanConfig {
            parent: Some("x".into()),
            mode: IpvlanMode::L2,
            mtu: None
        }));
        assert!(!announces(&IpvlanConfig {
            parent: Some("x".into()),
            mode: IpvlanMode::L3,
            mtu: None
        }));
    }

    #[test]
    fn request_serializes_to_a_valid_netlink_payload() {
        use netlink_packet_core::{Emitable, Parseable};
        use netlink_packet_route::link::LinkMessage;
        let cfg = IpvlanConfig {
            parent: Some("eni0".into()),
            mode: IpvlanMode::L3s,
            mtu: None,
        };
        let m = create_request(&cfg, 3, "eth0", 1500, 5);
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let back = LinkMessage::parse(buf.as_slice()).unwrap();
        assert_eq!(back.attributes.len(), m.attributes.len());
    }
}

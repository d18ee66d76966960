//! What a pod may send at L2, through BPF_PROG_TEST_RUN on the real egress
//! program: untagged IPv4, IPv6 and ARP only, and (source check on) only
//! from its own addresses and MAC, ARP and neighbour advertisements
//! included, so no pod can claim another's address on a shared segment.

mod common;

use common::*;
use sluice_tc_datapath::layout::*;
use sluice_tc_datapath::loader::EGRESS;

const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];

#[test]
fn tagged_frames_and_other_ethertypes_do_not_leave_a_pod() {
    if !root("tagged_frames_and_other_ethertypes_do_not_leave_a_pod") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    let plain = Frame::new("10.244.1.5", "10.244.2.7", 4000, 53, PROTO_UDP, 0, b"q");
    assert_eq!(dp.run(EGRESS, &plain).0, TC_ACT_OK);
    // The audit's bypass: a priority tag (VLAN 0) over a spoofed source,
    // which the receiving kernel strips after tc.
    let spoofed = Frame::new("10.244.1.99", "10.244.2.7", 4000, 53, PROTO_UDP, 0, b"q");
    for f in [
        plain.clone().vlan_tagged(0),
        spoofed.vlan_tagged(0),
        plain.clone().vlan_tagged(7),
    ] {
        assert_eq!(dp.run(EGRESS, &f).0, TC_ACT_SHOT);
    }
    let mut lldp = plain.clone();
    lldp.bytes[12..14].copy_from_slice(&[0x88, 0xcc]);
    assert_eq!(dp.run(EGRESS, &lldp).0, TC_ACT_SHOT);
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropEthertype, Direction::Egress)
            .unwrap(),
        4
    );
}

#[test]
fn arp_and_neighbour_advertisements_speak_only_for_the_pod() {
    if !root("arp_and_neighbour_advertisements_speak_only_for_the_pod") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    dp.pod("fd00:244::1:5");
    let allowed = [
        arp(POD_MAC, POD_MAC, "10.244.1.5", "10.244.0.1"),
        // An address probe (RFC 5227): no sender address, no cache update.
        arp(POD_MAC, POD_MAC, "0.0.0.0", "10.244.1.5"),
        neighbour_advert("fd00:244::1:5", "fd00:244::1:5"),
        neighbour_advert("fe80::5", "fd00:244::1:5"),
        neighbour_advert("fe80::5", "fe80::5"),
    ];
    for f in &allowed {
        assert_eq!(dp.run(EGRESS, f).0, TC_ACT_OK, "{:02x?}", f.bytes);
    }
    let spoofing = [
        // Another pod's address, in a gratuitous ARP.
        arp(POD_MAC, POD_MAC, "10.244.1.6", "10.244.1.6"),
        // The pod's address with another MAC in the payload or the frame.
        arp(POD_MAC, OTHER_MAC, "10.244.1.5", "10.244.0.1"),
        arp(OTHER_MAC, OTHER_MAC, "10.244.1.5", "10.244.0.1"),
        // Another pod's address, advertised, from either source.
        neighbour_advert("fe80::5", "fd00:244::1:6"),
        neighbour_advert("fd00:244::1:5", "fd00:244::1:6"),
        // Found by packet fuzzing: a probe from another MAC, or for an
        // address not the pod's, and a link-local source carrying anything
        // but ICMPv6 (no map vouches for a link-local address).
        arp(OTHER_MAC, OTHER_MAC, "0.0.0.0", "10.244.1.5"),
        arp(POD_MAC, POD_MAC, "0.0.0.0", "10.244.1.6"),
        Frame::new("fe80::5", "fd00:244::2:7", 4000, 53, PROTO_UDP, 0, b"q").macs(GW_MAC, OTHER_MAC),
        Frame::new("fe80::5", "fd00:244::2:7", 4000, 80, PROTO_TCP, 0x02, b""),
    ];
    for f in &spoofing {
        assert_eq!(dp.run(EGRESS, f).0, TC_ACT_SHOT, "{:02x?}", f.bytes);
    }
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropSourceAddress, Direction::Egress)
            .unwrap(),
        spoofing.len() as u64
    );
    // With the source check off, ARP is not judged (tags still are).
    let cfg = sluice_tc_datapath::config::DatapathConfig {
        source_check: false,
        ..Default::default()
    };
    let open = Dp::with_config(&cfg);
    assert_eq!(open.run(EGRESS, &spoofing[0]).0, TC_ACT_OK);
}

/// Where the kernel lets tc programs read a packet's socket's namespace, a
/// packet from a socket leaves a pod only if that namespace is the pod's.
/// A test run's packet carries a socket of the caller's namespace.
#[test]
fn a_packet_from_a_socket_of_another_namespace_does_not_leave_the_pod() {
    if !root("a_packet_from_a_socket_of_another_namespace_does_not_leave_the_pod") {
        return;
    }
    if !sluice_tc_datapath::loader::socket_netns_cookie_readable() {
        skip(
            "a_packet_from_a_socket_of_another_namespace_does_not_leave_the_pod",
            "this kernel does not let tc programs read a socket's namespace (bpf_get_netns_cookie, added in 2025)",
        );
        return;
    }
    let here = sluice_tc_datapath::netns_cookie::current().unwrap();
    assert_ne!(here, 0);
    let f = Frame::new("10.244.1.5", "10.244.2.7", 4000, 53, PROTO_UDP, 0, b"q");
    let mut dp = Dp::new();
    dp.pod_in("10.244.1.5", 7, here);
    assert_eq!(dp.run(EGRESS, &f).0, TC_ACT_OK, "the pod's own namespace");
    dp.pod_in("10.244.1.5", 7, here + 1);
    assert_eq!(dp.run(EGRESS, &f).0, TC_ACT_SHOT, "another namespace's socket");
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropSourceAddress, Direction::Egress)
            .unwrap(),
        1
    );
    dp.pod_in("10.244.1.5", 7, 0);
    assert_eq!(dp.run(EGRESS, &f).0, TC_ACT_OK, "no cookie recorded: not checked");
}

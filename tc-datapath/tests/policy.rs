//! Conntrack of every flow and the network-policy lookups, through
//! BPF_PROG_TEST_RUN on the real programs: which packets an isolated pod
//! lets through (exact port, port range, every port, every protocol, CIDR
//! longest prefix, except), that a denied packet leaves no conntrack entry
//! and is counted and reported, and that replies pass on the entry alone.

mod common;

use aya::maps::RingBuf;
use common::ip;
use common::*;
use sluice_tc_datapath::layout::*;
use sluice_tc_datapath::loader::{EGRESS, INGRESS};
use sluice_tc_datapath::maps::policy::{PortRange, Rule};

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const EP: u32 = 7;
const SELF_ID: u32 = 300;
const POLICY: u32 = 41;

/// The pod's own entry for a flow: (pod side, peer side).
fn ct_key(local: &str, remote: &str, lport: u16, rport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: addr(ip(local)),
        daddr: addr(ip(remote)),
        sport: lport.to_be(),
        dport: rport.to_be(),
        proto,
        kind: CT_FLOW,
        pad0: 0,
    }
}

impl Dp {
    /// The endpoint's entry, or a fresh one isolating nothing.
    fn entry(&self) -> EpPolicyValue {
        self.maps
            .policy()
            .endpoint_policy(EP)
            .unwrap()
            .unwrap_or(EpPolicyValue {
                identity: SELF_ID,
                ingress_policy: POLICY,
                egress_policy: POLICY + 1,
                ..Default::default()
            })
    }

    fn isolate(&mut self, flags: u8) {
        let v = EpPolicyValue { flags, ..self.entry() };
        self.maps.policy_mut().set_endpoint_policy(EP, v).unwrap();
    }

    /// Write a rule and the kind of lookup it needs, as the applier does.
    fn allow(&mut self, dir: Direction, identity: u32, proto: u8, ports: Option<(u16, u16)>) {
        let r = Rule {
            dir,
            identity,
            proto,
            ports: ports.map(|(first, last)| PortRange { first, last }),
            policy: POLICY,
        };
        self.maps.policy_mut().insert_rule(EP, &r).unwrap();
        let mut v = self.entry();
        v.kinds[dir as usize] |= r.kinds();
        self.maps.policy_mut().set_endpoint_policy(EP, v).unwrap();
    }

    fn verdict(&self, prog: &str, f: &Frame) -> u32 {
        self.run(prog, f).0
    }
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Frame {
    Frame::new(src, dst, sport, dport, PROTO_TCP, flags, b"")
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Frame {
    Frame::new(src, dst, sport, dport, PROTO_UDP, 0, b"q")
}

/// Every flow gets one entry at the pod's end, keyed from the pod's side,
/// found by the packets of both directions; who opened it is recorded; an
/// ICMP echo is a flow keyed by its identifier, and a ping the other way
/// with the same identifier is another one.
fn tracks_every_flow(pod: &str, peer: &str, outsider: &str, icmp: u8) {
    let mut dp = Dp::new();
    dp.pod_id(pod, EP);

    // Outbound TCP: made at egress, established by the reply at ingress.
    assert_eq!(dp.verdict(EGRESS, &tcp(pod, peer, 40000, 80, SYN)), TC_ACT_OK);
    let k = ct_key(pod, peer, 40000, 80, PROTO_TCP);
    let e = dp.maps.ct().get(&k).unwrap().expect("outbound entry");
    assert_eq!((e.state, e.flags, e.rev_nat_id), (CT_NEW, 0, 0));
    assert_eq!(dp.verdict(INGRESS, &tcp(peer, pod, 80, 40000, SYN_ACK)), TC_ACT_OK);
    assert_eq!(dp.maps.ct().get(&k).unwrap().unwrap().state, CT_ESTABLISHED);

    // Inbound TCP: made at ingress, established by the pod's reply.
    assert_eq!(dp.verdict(INGRESS, &tcp(outsider, pod, 5555, 8080, SYN)), TC_ACT_OK);
    let k = ct_key(pod, outsider, 8080, 5555, PROTO_TCP);
    assert_eq!(dp.maps.ct().get(&k).unwrap().unwrap().flags, CT_F_INBOUND);
    assert_eq!(dp.verdict(EGRESS, &tcp(pod, outsider, 8080, 5555, SYN_ACK)), TC_ACT_OK);
    assert_eq!(dp.maps.ct().get(&k).unwrap().unwrap().state, CT_ESTABLISHED);

    // UDP both ways.
    assert_eq!(dp.verdict(EGRESS, &udp(pod, peer, 41000, 53)), TC_ACT_OK);
    assert_eq!(dp.verdict(INGRESS, &udp(peer, pod, 53, 41000)), TC_ACT_OK);
    let e = dp
        .maps
        .ct()
        .get(&ct_key(pod, peer, 41000, 53, PROTO_UDP))
        .unwrap()
        .unwrap();
    assert_eq!(e.state, CT_ESTABLISHED);

    // Echo: the identifier is the requester's port.
    assert_eq!(
        dp.verdict(EGRESS, &echo(pod, peer, true, 77).macs(GW_MAC, POD_MAC)),
        TC_ACT_OK
    );
    let k = ct_key(pod, peer, 77, 0, icmp);
    assert_eq!(dp.maps.ct().get(&k).unwrap().unwrap().state, CT_NEW);
    assert_eq!(dp.verdict(INGRESS, &echo(peer, pod, false, 77)), TC_ACT_OK);
    assert_eq!(dp.maps.ct().get(&k).unwrap().unwrap().state, CT_ESTABLISHED);
    assert_eq!(dp.verdict(INGRESS, &echo(peer, pod, true, 77)), TC_ACT_OK);
    let theirs = dp.maps.ct().get(&ct_key(pod, peer, 0, 77, icmp)).unwrap().unwrap();
    assert_eq!(
        (theirs.state, theirs.flags),
        (CT_NEW, CT_F_INBOUND),
        "their ping with our id is a flow of its own"
    );
    assert_eq!(dp.maps.ct().entries().unwrap().len(), 5);
}

#[test]
fn v4_every_flow_is_tracked_at_the_pod_end() {
    if root("v4_every_flow_is_tracked_at_the_pod_end") {
        tracks_every_flow("10.244.1.5", "10.244.2.7", "10.9.9.9", PROTO_ICMP);
    }
}

#[test]
fn v6_every_flow_is_tracked_at_the_pod_end() {
    if root("v6_every_flow_is_tracked_at_the_pod_end") {
        tracks_every_flow("fd00:244::1:5", "fd00:244::2:7", "fd00:9::9", PROTO_ICMPV6);
    }
}

const POD: &str = "10.244.1.5";
const A: &str = "10.244.2.7"; // identity 301
const B: &str = "10.244.2.8"; // identity 302
const C: &str = "10.244.2.9"; // a pod no rule names (303)

/// The lookup rules of an isolated pod's ingress: exact port, port range
/// (endPort), every port of a protocol, every protocol, anyone; everything
/// else is dropped with its reason, leaves no conntrack entry and is
/// reported with the pod, the peer's identity and the isolating policy.
#[test]
fn ingress_rules_exact_range_wildcard_any() {
    if !root("ingress_rules_exact_range_wildcard_any") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod_id(POD, EP);
    for (a, id) in [(A, 301), (B, 302), (C, 303)] {
        dp.maps.policy_mut().set_identity(ip(a), id).unwrap();
    }
    dp.isolate(POLICY_F_INGRESS);
    dp.allow(Direction::Ingress, 301, PROTO_TCP, Some((80, 80)));
    dp.allow(Direction::Ingress, 301, PROTO_TCP, Some((8000, 8080)));
    dp.allow(Direction::Ingress, 302, PROTO_UDP, None);
    dp.allow(Direction::Ingress, ID_ANY, PROTO_TCP, Some((443, 443)));
    // A rule of another direction or another pod allows nothing here.
    dp.allow(Direction::Egress, 303, 0, None);
    dp.maps
        .policy_mut()
        .insert_rule(
            EP + 1,
            &Rule {
                dir: Direction::Ingress,
                identity: 303,
                proto: 0,
                ports: None,
                policy: 9,
            },
        )
        .unwrap();

    let cases: [(&str, Frame, bool); 14] = [
        ("exact port", tcp(A, POD, 1000, 80, SYN), true),
        ("next port", tcp(A, POD, 1001, 81, SYN), false),
        ("range start", tcp(A, POD, 1002, 8000, SYN), true),
        ("range end", tcp(A, POD, 1003, 8080, SYN), true),
        ("range middle", tcp(A, POD, 1004, 8042, SYN), true),
        ("below the range", tcp(A, POD, 1005, 7999, SYN), false),
        ("above the range", tcp(A, POD, 1006, 8081, SYN), false),
        ("other protocol, same port", udp(A, POD, 1007, 80), false),
        ("every UDP port", udp(B, POD, 1008, 5353), true),
        ("but not TCP", tcp(B, POD, 1009, 5353, SYN), false),
        ("anyone on 443", tcp(C, POD, 1010, 443, SYN), true),
        ("an unknown address on 443", tcp("192.0.2.1", POD, 1011, 443, SYN), true),
        ("a rule for egress", tcp(C, POD, 1012, 80, SYN), false),
        ("ping: no rule for every protocol", echo(B, POD, true, 5), false),
    ];
    for (what, f, allowed) in &cases {
        let drops = dp.maps.observe().count(Reason::DropPolicy, Direction::Ingress).unwrap();
        let before = dp.maps.ct().entries().unwrap().len();
        let v = dp.verdict(INGRESS, f);
        let after = dp.maps.ct().entries().unwrap().len();
        if *allowed {
            assert_eq!((v, after), (TC_ACT_OK, before + 1), "{what}: allowed, tracked");
        } else {
            assert_eq!((v, after), (TC_ACT_SHOT, before), "{what}: dropped, untracked");
            assert_eq!(
                dp.maps.observe().count(Reason::DropPolicy, Direction::Ingress).unwrap(),
                drops + 1,
                "{what}: counted"
            );
        }
    }
    // Each drop was reported: who, from which identity, which policy.
    let mut events = RingBuf::try_from(dp.ebpf.take_map("sl_events").unwrap()).unwrap();
    let mut seen = Vec::new();
    while let Some(item) = events.next() {
        let e = FlowEvent::from_bytes(&item).expect("a whole event");
        seen.push((
            e.reason,
            e.dir,
            e.endpoint_id,
            e.peer_identity,
            e.policy,
            u16::from_be(e.dport),
        ));
    }
    let ing = Direction::Ingress as u8;
    let drop = Reason::DropPolicy as u16;
    assert_eq!(
        seen,
        vec![
            (drop, ing, EP, 301, POLICY, 81),
            (drop, ing, EP, 301, POLICY, 7999),
            (drop, ing, EP, 301, POLICY, 8081),
            (drop, ing, EP, 301, POLICY, 80),
            (drop, ing, EP, 302, POLICY, 5353),
            (drop, ing, EP, 303, POLICY, 80),
            (drop, ing, EP, 302, POLICY, 0),
        ]
    );

    // A rule for every protocol lets the ping in; the node always may.
    dp.allow(Direction::Ingress, 302, 0, None);
    assert_eq!(dp.verdict(INGRESS, &echo(B, POD, true, 6)), TC_ACT_OK);
    dp.maps.policy_mut().set_identity(ip("10.244.0.1"), ID_HOST).unwrap();
    assert_eq!(dp.verdict(INGRESS, &tcp("10.244.0.1", POD, 1013, 9, SYN)), TC_ACT_OK);

    // Stateful: with egress isolated too and no egress rule, the replies of
    // allowed flows leave on their entries; a flow of the pod's own does not.
    dp.isolate(POLICY_F_INGRESS | POLICY_F_EGRESS);
    assert_eq!(
        dp.verdict(EGRESS, &tcp(POD, A, 80, 1000, SYN_ACK)),
        TC_ACT_OK,
        "a reply"
    );
    assert_eq!(dp.verdict(EGRESS, &udp(POD, B, 5353, 1008)), TC_ACT_OK, "a UDP answer");
    assert_eq!(
        dp.verdict(EGRESS, &echo(POD, B, false, 6).macs(GW_MAC, POD_MAC)),
        TC_ACT_OK,
        "an echo reply"
    );
    assert_eq!(
        dp.verdict(EGRESS, &tcp(POD, A, 40000, 80, SYN)),
        TC_ACT_SHOT,
        "a new flow"
    );
    assert_eq!(
        dp.maps.observe().count(Reason::DropPolicy, Direction::Egress).unwrap(),
        1
    );
}

/// CIDR identities: the longest prefix containing the peer decides, so an
/// `except` prefix (an identity no rule allows) carves its hole, and a
/// longer prefix of another rule inside it is allowed again. A pod's
/// address is matched by its pod identity and by the CIDRs it falls in.
#[test]
fn egress_cidr_longest_prefix_and_except() {
    if !root("egress_cidr_longest_prefix_and_except") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod_id(POD, EP);
    dp.maps.policy_mut().set_identity(ip(A), 301).unwrap();
    // ipBlock 10.0.0.0/8 except 10.1.0.0/16 (every port); ipBlock 10.1.2.0/24 on 443.
    for (net, len, id) in [
        ("10.0.0.0", 8, 400),
        ("10.1.0.0", 16, 401),
        ("10.1.2.0", 24, 402),
        ("10.244.0.0", 16, 403),
        ("fd00:ab::", 32, 404),
    ] {
        dp.maps.policy_mut().set_cidr(ip(net), len, id).unwrap();
    }
    assert_eq!(dp.maps.policy().cidrs().unwrap().len(), 5);
    dp.isolate(POLICY_F_EGRESS);
    dp.allow(Direction::Egress, 400, 0, None);
    dp.allow(Direction::Egress, 402, PROTO_TCP, Some((443, 443)));
    dp.allow(Direction::Egress, 404, PROTO_UDP, Some((53, 53)));
    let cases = [
        ("inside the block", tcp(POD, "10.2.3.4", 2000, 80, SYN), true),
        ("inside the except", tcp(POD, "10.1.3.4", 2001, 80, SYN), false),
        (
            "a longer block inside the except",
            tcp(POD, "10.1.2.9", 2002, 443, SYN),
            true,
        ),
        ("... on another port", tcp(POD, "10.1.2.9", 2003, 80, SYN), false),
        ("outside every block", tcp(POD, "192.168.0.1", 2004, 80, SYN), false),
    ];
    for (what, f, allowed) in &cases {
        let want = if *allowed { TC_ACT_OK } else { TC_ACT_SHOT };
        assert_eq!(dp.verdict(EGRESS, f), want, "{what}");
    }
    // The pod A (10.244.2.7) is in 10.244.0.0/16: a rule for that block
    // reaches it although its pod identity has no rule.
    assert_eq!(dp.verdict(EGRESS, &tcp(POD, A, 2005, 80, SYN)), TC_ACT_SHOT);
    dp.allow(Direction::Egress, 403, PROTO_TCP, Some((80, 80)));
    assert_eq!(dp.verdict(EGRESS, &tcp(POD, A, 2006, 80, SYN)), TC_ACT_OK);

    // IPv6 prefixes, in the same trie.
    let mut dp6 = Dp::new();
    dp6.pod_id("fd00:244::1:5", EP);
    dp6.maps.policy_mut().set_cidr(ip("fd00:ab::"), 32, 404).unwrap();
    dp6.isolate(POLICY_F_EGRESS);
    dp6.allow(Direction::Egress, 404, PROTO_UDP, Some((53, 53)));
    assert_eq!(
        dp6.verdict(EGRESS, &udp("fd00:244::1:5", "fd00:ab::1", 3000, 53)),
        TC_ACT_OK
    );
    assert_eq!(
        dp6.verdict(EGRESS, &udp("fd00:244::1:5", "fd00:ac::1", 3001, 53)),
        TC_ACT_SHOT
    );
}

/// Egress policy is decided on the backend a Service connection was given
/// (its identity, its target port), never on the VIP; an established
/// connection keeps going when the rule goes, a new one is dropped before
/// any conntrack entry or translation.
#[test]
fn egress_policy_sees_the_backend_behind_the_vip() {
    if !root("egress_policy_sees_the_backend_behind_the_vip") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod_id(POD, EP);
    dp.maps.policy_mut().set_identity(ip(A), 301).unwrap();
    dp.service("10.96.0.10", 80, PROTO_TCP, &[(11, A, 8080)]);
    dp.isolate(POLICY_F_EGRESS);
    dp.allow(Direction::Egress, 301, PROTO_TCP, Some((80, 80)));
    let syn = |sport| tcp(POD, "10.96.0.10", sport, 80, SYN);
    assert_eq!(
        dp.verdict(EGRESS, &syn(40000)),
        TC_ACT_SHOT,
        "the VIP's port is not the backend's"
    );
    assert!(dp.maps.ct().entries().unwrap().is_empty(), "nothing tracked");
    dp.allow(Direction::Egress, 301, PROTO_TCP, Some((8080, 8080)));
    let (v, out) = dp.run(EGRESS, &syn(40000));
    assert_eq!((v, out.ports()), (TC_ACT_REDIRECT, (40000, 8080)));

    dp.maps
        .policy_mut()
        .remove_rule(
            EP,
            &Rule {
                dir: Direction::Egress,
                identity: 301,
                proto: PROTO_TCP,
                ports: Some(PortRange::one(8080)),
                policy: POLICY,
            },
        )
        .unwrap();
    assert_eq!(
        dp.verdict(EGRESS, &syn(40000)),
        TC_ACT_REDIRECT,
        "established keeps going"
    );
    assert_eq!(
        dp.verdict(EGRESS, &syn(40001)),
        TC_ACT_SHOT,
        "a new connection is decided anew"
    );
    assert_eq!(
        dp.maps.ct().entries().unwrap().len(),
        2,
        "the first connection's two entries only"
    );
}

/// Found by packet fuzzing: an ICMP error is related to a flow only when
/// it quotes a packet the pod it is addressed to sent. The conntrack table
/// is the node's: an error quoting another pod's flow passed an isolated
/// pod.
#[test]
fn an_error_about_another_pods_flow_does_not_pass_an_isolated_pod() {
    if !root("an_error_about_another_pods_flow_does_not_pass_an_isolated_pod") {
        return;
    }
    let (pod, other, peer) = ("10.244.1.5", "10.244.1.6", "10.244.2.7");
    let mut dp = Dp::new();
    dp.pod_id(pod, EP);
    dp.pod_id(other, EP + 1);
    dp.isolate(POLICY_F_INGRESS);
    // The other pod's flow, and the pod's own.
    assert_eq!(dp.verdict(EGRESS, &udp(other, peer, 5000, 53)), TC_ACT_OK);
    assert_eq!(dp.verdict(EGRESS, &udp(pod, peer, 5001, 53)), TC_ACT_OK);
    let error_about = |sent: Frame| port_unreachable(peer, pod, &sent.bytes[ETH..ETH + 28]);
    assert_eq!(
        dp.verdict(INGRESS, &error_about(udp(other, peer, 5000, 53))),
        TC_ACT_SHOT,
        "an error quoting another pod's flow"
    );
    assert_eq!(
        dp.verdict(INGRESS, &error_about(udp(pod, peer, 5001, 53))),
        TC_ACT_OK,
        "an error quoting the pod's own flow"
    );
}

/// A router's "fragmentation needed" may quote only 8 bytes of the TCP
/// header (RFC 792): it still names the pod's flow, and passes an isolated
/// pod (path MTU discovery), IPv4 and IPv6; one about a flow the pod does
/// not have does not.
#[test]
fn a_short_quote_still_relates_an_error_to_the_pods_flow() {
    if !root("a_short_quote_still_relates_an_error_to_the_pods_flow") {
        return;
    }
    let mut dp = Dp::new();
    for (pod, peer, router, hdr) in [
        ("10.244.1.5", "10.244.2.7", "198.18.0.1", [3u8, 4, 0, 0, 0, 0, 5, 0]),
        (
            "fd00:244::1:5",
            "fd00:244::2:7",
            "2001:db8:ff::1",
            [2, 0, 0, 0, 0, 0, 5, 0],
        ),
    ] {
        dp.pod_id(pod, EP);
        dp.isolate(POLICY_F_INGRESS);
        let sent = Frame::new(pod, peer, 40000, 443, PROTO_TCP, SYN, b"");
        assert_eq!(dp.verdict(EGRESS, &sent), TC_ACT_OK, "{pod}: its connection");
        let end = sent.l4() + 8;
        let error = icmp(router, pod, hdr, &sent.bytes[ETH..end]);
        assert_eq!(dp.verdict(INGRESS, &error), TC_ACT_OK, "{pod}: an error about its flow");
        let other = Frame::new(pod, peer, 40001, 443, PROTO_TCP, SYN, b"");
        let error = icmp(router, pod, hdr, &other.bytes[ETH..end]);
        assert_eq!(
            dp.verdict(INGRESS, &error),
            TC_ACT_SHOT,
            "{pod}: an error about no flow of its"
        );
    }
}

/// Found by packet fuzzing: a packet that does not fit its frame, an IPv4
/// header longer than its packet, and an IPv6 extension header running
/// past the frame are malformed (the receiving stack drops them; an
/// isolated pod let some through as "not tracked").
#[test]
fn packets_that_do_not_fit_their_frame_are_malformed() {
    if !root("packets_that_do_not_fit_their_frame_are_malformed") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod_id("10.244.1.5", EP);
    dp.pod_id("fd00:244::1:5", EP);
    let mut long_v4 = udp("10.244.2.7", "10.244.1.5", 4000, 53);
    long_v4.bytes[ETH + 2..ETH + 4].copy_from_slice(&500u16.to_be_bytes());
    let mut short_v4 = udp("10.244.2.7", "10.244.1.5", 4000, 53);
    short_v4.bytes[ETH + 2..ETH + 4].copy_from_slice(&16u16.to_be_bytes());
    let mut long_v6 = udp("fd00:244::2:7", "fd00:244::1:5", 4000, 53);
    long_v6.bytes[ETH + 4..ETH + 6].copy_from_slice(&500u16.to_be_bytes());
    // A Destination Options header claiming 1016 bytes, in a 9-byte payload.
    let mut past = udp("fd00:244::2:7", "fd00:244::1:5", 4000, 53);
    past.bytes.truncate(ETH + 40);
    past.bytes.extend_from_slice(&[210, 126, 0, 0, 0, 0, 0, 0, 0]);
    past.bytes[ETH + 6] = 60;
    past.bytes[ETH + 4..ETH + 6].copy_from_slice(&9u16.to_be_bytes());
    for (what, f) in [
        ("IPv4 longer than its frame", long_v4),
        ("IPv4 shorter than its header", short_v4),
        ("IPv6 longer than its frame", long_v6),
        ("an extension header past the frame", past),
    ] {
        for prog in [EGRESS, INGRESS] {
            assert_eq!(dp.verdict(prog, &f), TC_ACT_SHOT, "{what} at {prog}");
        }
    }
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropMalformed, Direction::Ingress)
            .unwrap(),
        4
    );
}

/// IPv6 extension headers are walked to the upper-layer header: a datagram
/// carrying Hop-by-Hop (or a chain of them) is judged by its real protocol
/// and port, never passed as "not IP"; a chain the parser cannot follow is
/// dropped as malformed; a later fragment is judged as untracked.
#[test]
fn ipv6_extension_headers_are_judged_by_their_payload() {
    if !root("ipv6_extension_headers_are_judged_by_their_payload") {
        return;
    }
    let (pod, peer, stranger) = ("fd00:244::1:5", "fd00:244::2:7", "fd00:244::2:9");
    let mut dp = Dp::new();
    dp.pod_id(pod, EP);
    dp.maps.policy_mut().set_identity(ip(peer), 301).unwrap();
    dp.isolate(POLICY_F_INGRESS);
    dp.allow(Direction::Ingress, 301, PROTO_UDP, Some((53, 53)));
    let hbh = |f: Frame| f.with_ipv6_extensions(&[(0, ipv6_ext(0))]);
    let chain = |f: Frame| f.with_ipv6_extensions(&[(0, ipv6_ext(0)), (60, ipv6_ext(1)), (43, ipv6_ext(0))]);
    // The audit's bypass: Hop-by-Hop read as protocol 0 and passed.
    assert_eq!(dp.verdict(INGRESS, &hbh(udp(stranger, pod, 4000, 53))), TC_ACT_SHOT);
    assert_eq!(dp.verdict(INGRESS, &chain(udp(stranger, pod, 4001, 53))), TC_ACT_SHOT);
    // The allowed peer's datagram with the same headers is let in: its
    // port was read behind the chain.
    assert_eq!(dp.verdict(INGRESS, &hbh(udp(peer, pod, 4002, 53))), TC_ACT_OK);
    assert_eq!(dp.verdict(INGRESS, &chain(udp(peer, pod, 4003, 53))), TC_ACT_OK);
    assert_eq!(dp.verdict(INGRESS, &chain(udp(peer, pod, 4004, 54))), TC_ACT_SHOT);
    // A first fragment carries its ports, and a later one of its datagram
    // follows it; a later fragment whose first was not seen is untracked,
    // which an isolated pod admits only on an every-port rule.
    let frag =
        |offset, more, id| udp(peer, pod, 4005, 53).with_ipv6_extensions(&[(44, ipv6_fragment(offset, more, id))]);
    assert_eq!(dp.verdict(INGRESS, &frag(0, true, 0x5eed)), TC_ACT_OK);
    assert_eq!(dp.verdict(INGRESS, &frag(2, false, 0x5eed)), TC_ACT_OK);
    assert_eq!(dp.verdict(INGRESS, &frag(2, false, 0x5eee)), TC_ACT_SHOT);
    let policy_drops = dp.maps.observe().count(Reason::DropPolicy, Direction::Ingress).unwrap();
    assert_eq!(policy_drops, 4);
    // Hop-by-Hop anywhere but first, a chain longer than followed, or one
    // cut short: malformed.
    let late_hbh = udp(peer, pod, 4006, 53).with_ipv6_extensions(&[(60, ipv6_ext(0)), (0, ipv6_ext(0))]);
    let long: Vec<(u8, Vec<u8>)> = (0..9).map(|_| (60, ipv6_ext(0))).collect();
    let long = udp(peer, pod, 4007, 53).with_ipv6_extensions(&long);
    let mut cut = hbh(udp(peer, pod, 4008, 53));
    cut.bytes.truncate(ETH + 40 + 4);
    for f in [&late_hbh, &long, &cut] {
        assert_eq!(dp.verdict(INGRESS, f), TC_ACT_SHOT);
    }
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropMalformed, Direction::Ingress)
            .unwrap(),
        3
    );
    // At egress the source check sees through the chain too.
    let spoofed = hbh(udp("fd00:244::1:99", peer, 4009, 53));
    assert_eq!(dp.verdict(EGRESS, &spoofed), TC_ACT_SHOT);
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropSourceAddress, Direction::Egress)
            .unwrap(),
        1
    );
}

/// Keep the calling thread on one CPU: the verdict cache is per CPU, and
/// consecutive test runs must meet the same one.
fn stay_on_one_cpu() {
    let mut set = nix::sched::CpuSet::new();
    let cpu = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .and_then(|s| (0..nix::sched::CpuSet::count()).find(|&c| s.is_set(c).unwrap_or(false)))
        .unwrap_or(0);
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

/// Allowed verdicts are cached per CPU, and only until a write that could
/// take one back: a rule's entry removed without a new policy generation
/// is not seen while the verdict is cached (so the cache is consulted),
/// any write that makes one (an unrelated identity) sends the next new
/// flow to the maps again, a rule's removal makes one, a rule's insertion
/// or a removal of nothing does not, and a denied flow is never cached.
#[test]
fn a_cached_verdict_lasts_until_the_next_policy_write() {
    if !root("a_cached_verdict_lasts_until_the_next_policy_write") {
        return;
    }
    if !sluice_tc_datapath::loader::VERDICT_CACHE {
        skip(
            "a_cached_verdict_lasts_until_the_next_policy_write",
            "the verdict cache is off on CPUs that reorder loads",
        );
        return;
    }
    stay_on_one_cpu();
    let mut dp = Dp::new();
    dp.pod_id(POD, EP);
    dp.maps.policy_mut().set_identity(ip(A), 301).unwrap();
    dp.isolate(POLICY_F_INGRESS);
    let web = Rule {
        dir: Direction::Ingress,
        identity: 301,
        proto: PROTO_TCP,
        ports: Some(PortRange::one(80)),
        policy: POLICY,
    };
    dp.allow(Direction::Ingress, 301, PROTO_TCP, Some((80, 80)));
    let entry = web.entries(EP).next().expect("one entry");
    assert_eq!(dp.verdict(INGRESS, &tcp(A, POD, 2000, 80, SYN)), TC_ACT_OK);

    // Gone from the map behind the generation's back: still allowed.
    dp.maps
        .policy_mut()
        .remove_rule_entry_keeping_generation(&entry)
        .unwrap();
    assert_eq!(
        dp.verdict(INGRESS, &tcp(A, POD, 2001, 80, SYN)),
        TC_ACT_OK,
        "the cached verdict"
    );
    // Any write that could take a verdict back ends every cached one.
    let g = dp.maps.policy().generation().unwrap();
    dp.maps.policy_mut().set_identity(ip(B), 302).unwrap();
    assert!(dp.maps.policy().generation().unwrap() > g, "a new generation");
    assert_eq!(
        dp.verdict(INGRESS, &tcp(A, POD, 2002, 80, SYN)),
        TC_ACT_SHOT,
        "judged on the maps again"
    );

    // A rule's insertion keeps the generation; its removal ends it.
    dp.allow(Direction::Ingress, 301, PROTO_TCP, Some((80, 80)));
    let g = dp.maps.policy().generation().unwrap();
    dp.maps.policy_mut().insert_rule(EP, &web).unwrap();
    assert_eq!(
        dp.maps.policy().generation().unwrap(),
        g,
        "an insertion only allows more"
    );
    dp.maps.policy_mut().remove_endpoint_policy(EP + 1).unwrap();
    assert_eq!(
        dp.maps.policy().generation().unwrap(),
        g,
        "a removal of nothing changes nothing"
    );
    assert_eq!(dp.verdict(INGRESS, &tcp(A, POD, 2003, 80, SYN)), TC_ACT_OK);
    dp.maps.policy_mut().remove_rule(EP, &web).unwrap();
    assert_eq!(
        dp.verdict(INGRESS, &tcp(A, POD, 2004, 80, SYN)),
        TC_ACT_SHOT,
        "the rule's removal"
    );
    // Denied twice: each judged and counted (nothing cached a drop).
    let drops = dp.maps.observe().count(Reason::DropPolicy, Direction::Ingress).unwrap();
    assert_eq!(dp.verdict(INGRESS, &tcp(A, POD, 2005, 80, SYN)), TC_ACT_SHOT);
    dp.maps.policy_mut().insert_rule(EP, &web).unwrap();
    assert_eq!(
        dp.verdict(INGRESS, &tcp(A, POD, 2006, 80, SYN)),
        TC_ACT_OK,
        "allowed again on the inserted rule"
    );
    assert_eq!(
        dp.maps.observe().count(Reason::DropPolicy, Direction::Ingress).unwrap(),
        drops + 1
    );
}

//! Packet-level tests of the real programs through BPF_PROG_TEST_RUN:
//! crafted frames go in, the rewritten frames come out and are checked
//! byte by byte, checksums recomputed from scratch.

mod common;

use common::ip;
use common::*;
use sluice_tc_datapath::layout::*;
use sluice_tc_datapath::loader::{EGRESS, INGRESS};
use sluice_tc_datapath::maps::lb::{Algorithm, ServiceSpec};

/// The client's two conntrack entries of a connection from `client`:40000
/// to `vip`:80 translated to `backend`:8080: the Service entry and the
/// flow entry as the backend sees it.
fn service_keys(client: &str, vip: &str, backend: &str, proto: u8) -> (CtKey, CtKey) {
    let svc_key = CtKey {
        saddr: addr(ip(client)),
        daddr: addr(ip(vip)),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto,
        kind: CT_SERVICE,
        pad0: 0,
    };
    let flow_key = CtKey {
        daddr: addr(ip(backend)),
        dport: 8080u16.to_be(),
        kind: CT_FLOW,
        ..svc_key
    };
    (svc_key, flow_key)
}

/// Client pod -> VIP (DNAT at egress), backend -> client (reverse NAT at ingress).
fn round_trip(client: &str, vip: &str, backend: &str, proto: u8) {
    let mut dp = Dp::new();
    dp.pod(client);
    dp.service(vip, 80, proto, &[(11, backend, 8080)]);

    let syn = Frame::new(client, vip, 40000, 80, proto, SYN, b"hello");
    syn.assert_checksums();
    let (verdict, out) = dp.run(EGRESS, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.addrs(), (ip(client), ip(backend)), "DNAT to the backend");
    assert_eq!(out.ports(), (40000, 8080));
    out.assert_checksums();
    assert_eq!(out.bytes[out.bytes.len() - 5..], *b"hello", "payload untouched");
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::ServiceTranslated, Direction::Egress)
            .unwrap(),
        1
    );

    // Both conntrack entries exist and name the backend.
    let (svc_key, flow_key) = service_keys(client, vip, backend, proto);
    assert_eq!(dp.maps.ct().get(&svc_key).unwrap().unwrap().backend_id, 11);
    assert_eq!(dp.maps.ct().get(&flow_key).unwrap().unwrap().state, CT_NEW);

    // The same connection keeps its backend even after the service changes.
    dp.service(vip, 80, proto, &[(12, backend, 9090)]);
    let (_, again) = dp.run(EGRESS, &syn);
    assert_eq!(again.ports(), (40000, 8080), "chosen once per connection");

    let reply = Frame::new(backend, client, 8080, 40000, proto, SYN_ACK, b"world").macs(POD_MAC, BACKEND_MAC);
    let (verdict, out) = dp.run(INGRESS, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.addrs(), (ip(vip), ip(client)), "reply comes from the VIP");
    assert_eq!(out.ports(), (80, 40000));
    out.assert_checksums();
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::ReplyTranslated, Direction::Ingress)
            .unwrap(),
        1
    );
    assert_eq!(dp.maps.ct().get(&flow_key).unwrap().unwrap().state, CT_ESTABLISHED);
    let svc_ct = dp.maps.ct().get(&svc_key).unwrap().unwrap();
    assert_eq!(svc_ct.state, CT_ESTABLISHED);
    assert_eq!(
        (svc_ct.nh_mac, svc_ct.nh_ifindex),
        (BACKEND_MAC, 1),
        "the reply taught the next hop"
    );

    // Once the backend has answered, the client's packets are addressed to
    // it at once and leave as they are (no neighbour lookup, no second pass).
    let ack = Frame::new(client, vip, 40000, 80, proto, TCP_ACK, b"more");
    let (verdict, out) = dp.run(EGRESS, &ack);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        out.bytes[..12],
        [BACKEND_MAC, POD_MAC].concat(),
        "to the learned next hop"
    );
    assert_eq!(out.addrs(), (ip(client), ip(backend)));
    assert_eq!(out.ports(), (40000, 8080));
    out.assert_checksums();

    // The path changes (the backend is now reached through a router): the
    // first reply that shows it moves the next hop.
    let (_, _) = dp.run(INGRESS, &reply.macs(POD_MAC, ROUTER_MAC));
    let (verdict, out) = dp.run(EGRESS, &ack);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.bytes[..6], ROUTER_MAC, "the next hop follows the replies");

    // Traffic that is no reply to a translated flow passes untouched.
    let other = Frame::new(backend, client, 8080, 40001, proto, SYN_ACK, b"x");
    let (verdict, out) = dp.run(INGRESS, &other);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, other.bytes));
}

#[test]
fn tcp_v4_dnat_and_reverse_nat() {
    if root("tcp_v4_dnat_and_reverse_nat") {
        round_trip("10.244.1.5", "10.96.0.10", "10.244.2.7", PROTO_TCP);
    }
}

#[test]
fn udp_v4_dnat_and_reverse_nat() {
    if root("udp_v4_dnat_and_reverse_nat") {
        round_trip("10.244.1.5", "10.96.0.10", "10.244.2.7", PROTO_UDP);
    }
}

#[test]
fn tcp_v6_dnat_and_reverse_nat() {
    if root("tcp_v6_dnat_and_reverse_nat") {
        round_trip("fd00:244::1:5", "fd00:96::a", "fd00:244::2:7", PROTO_TCP);
    }
}

#[test]
fn udp_v6_dnat_and_reverse_nat() {
    if root("udp_v6_dnat_and_reverse_nat") {
        round_trip("fd00:244::1:5", "fd00:96::a", "fd00:244::2:7", PROTO_UDP);
    }
}

/// An established TCP connection through a VIP is translated from its
/// conntrack entries alone: the Service entry names the backend, the flow
/// entry the VIP, so neither the frontend nor the reverse-NAT entry is read
/// (shown by removing them). Entries without CT_F_NAT (carried over from
/// layout 9) go through the maps; a datagram always does; a connection
/// whose backend the agent forgot is reset.
fn translated_from_its_entries(client: &str, vip: &str, backend: &str) {
    let mut dp = Dp::new();
    dp.pod(client);
    dp.service(vip, 80, PROTO_TCP, &[(11, backend, 8080)]);
    let syn = Frame::new(client, vip, 40000, 80, PROTO_TCP, SYN, b"");
    let (_, out) = dp.run(EGRESS, &syn);
    assert_eq!(out.addrs(), (ip(client), ip(backend)));

    let p = |x: u16| x.to_be();
    let (svc_key, flow_key) = service_keys(client, vip, backend, PROTO_TCP);
    let entry = |dp: &Dp, k: &CtKey| dp.maps.ct().get(k).unwrap().unwrap();
    let (svc_ct, flow_ct) = (entry(&dp, &svc_key), entry(&dp, &flow_key));
    assert_eq!(
        (svc_ct.flags & CT_F_NAT, svc_ct.nat_addr, svc_ct.nat_port),
        (CT_F_NAT, addr(ip(backend)), p(8080)),
        "the Service entry names the backend"
    );
    assert_eq!(
        (flow_ct.flags & CT_F_NAT, flow_ct.nat_addr, flow_ct.nat_port),
        (CT_F_NAT, addr(ip(vip)), p(80)),
        "the flow entry names the VIP"
    );
    let reply = Frame::new(backend, client, 8080, 40000, PROTO_TCP, SYN_ACK, b"").macs(POD_MAC, BACKEND_MAC);
    let reply_ack = Frame::new(backend, client, 8080, 40000, PROTO_TCP, TCP_ACK, b"").macs(POD_MAC, BACKEND_MAC);
    let ack = Frame::new(client, vip, 40000, 80, PROTO_TCP, TCP_ACK, b"data");
    dp.run(INGRESS, &reply);

    // The port's frontend and reverse-NAT entry go (the VIP stays known, as
    // when a Service drops one of its ports).
    assert!(dp.maps.lb_mut().remove_frontend(ip(vip), 80, PROTO_TCP, false).unwrap() >= 2);
    let (verdict, out) = dp.run(EGRESS, &ack);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.addrs(), (ip(client), ip(backend)), "DNAT from the entry alone");
    assert_eq!(out.ports(), (40000, 8080));
    out.assert_checksums();
    let (verdict, out) = dp.run(INGRESS, &reply_ack);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.addrs(), (ip(vip), ip(client)), "reverse NAT from the entry alone");
    assert_eq!(out.ports(), (80, 40000));
    out.assert_checksums();

    // As layout 9 left them: no translation in the entries, so without the
    // frontend the segment is not translated and the reply is not either.
    for k in [&svc_key, &flow_key] {
        let v = CtValue {
            flags: entry(&dp, k).flags & !CT_F_NAT,
            nat_addr: [0; 16],
            nat_port: 0,
            ..entry(&dp, k)
        };
        dp.maps.ct_mut().insert(*k, v).unwrap();
    }
    let (verdict, out) = dp.run(EGRESS, &ack);
    assert_eq!(
        (verdict, out.addrs()),
        (TC_ACT_SHOT, (ip(client), ip(vip))),
        "layout 9: through the frontend, which is gone: a VIP's unknown port"
    );
    // With the frontend back they are translated through the maps.
    dp.service(vip, 80, PROTO_TCP, &[(11, backend, 8080)]);
    let (_, out) = dp.run(EGRESS, &ack);
    assert_eq!(out.addrs(), (ip(client), ip(backend)), "layout 9: through the frontend");
    let (_, out) = dp.run(INGRESS, &reply_ack);
    assert_eq!(out.addrs(), (ip(vip), ip(client)), "layout 9: through sl_revnat");

    // The agent forgets a removed backend (backend 0): the next segment
    // is answered with a reset, with or without the frontend.
    let syn2 = Frame::new(client, vip, 40002, 80, PROTO_TCP, SYN, b"");
    dp.run(EGRESS, &syn2);
    dp.maps.lb_mut().remove_frontend(ip(vip), 80, PROTO_TCP, false).unwrap();
    dp.maps.lb_mut().remove_backend(11).unwrap();
    dp.maps.ct_mut().forget_backends(&[11].into()).unwrap();
    let gone = |dp: &Dp| {
        dp.maps
            .observe()
            .count(Reason::DropBackendGone, Direction::Egress)
            .unwrap()
    };
    let before = gone(&dp);
    let ack2 = Frame::new(client, vip, 40002, 80, PROTO_TCP, TCP_ACK, b"data");
    dp.run(EGRESS, &ack2);
    assert_eq!(gone(&dp), before + 1, "its backend forgotten: reset");
}

#[test]
fn tcp_v4_established_is_translated_from_its_entries() {
    if root("tcp_v4_established_is_translated_from_its_entries") {
        translated_from_its_entries("10.244.1.5", "10.96.0.10", "10.244.2.7");
    }
}

#[test]
fn tcp_v6_established_is_translated_from_its_entries() {
    if root("tcp_v6_established_is_translated_from_its_entries") {
        translated_from_its_entries("fd00:244::1:5", "fd00:96::a", "fd00:244::2:7");
    }
}

/// A datagram follows its frontend (its backend only while that takes new
/// flows): with the frontend gone it is not translated, whatever its
/// entries hold.
#[test]
fn udp_follows_its_frontend() {
    if !root("udp_follows_its_frontend") {
        return;
    }
    let (client, vip, backend) = ("10.244.1.5", "10.96.0.10", "10.244.2.7");
    let mut dp = Dp::new();
    dp.pod(client);
    dp.service(vip, 53, PROTO_UDP, &[(11, backend, 5353)]);
    let q = Frame::new(client, vip, 40000, 53, PROTO_UDP, 0, b"q");
    let (_, out) = dp.run(EGRESS, &q);
    assert_eq!(out.addrs(), (ip(client), ip(backend)));
    dp.maps.lb_mut().remove_frontend(ip(vip), 53, PROTO_UDP, true).unwrap();
    let (_, out) = dp.run(EGRESS, &q);
    assert_eq!(out.addrs(), (ip(client), ip(vip)), "not translated");
}

#[test]
fn udp_v4_without_checksum_keeps_none() {
    if !root("udp_v4_without_checksum_keeps_none") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    dp.service("10.96.0.10", 53, PROTO_UDP, &[(1, "10.244.2.7", 5353)]);
    let mut f = Frame::new("10.244.1.5", "10.96.0.10", 40000, 53, PROTO_UDP, 0, b"q");
    let off = f.l4_csum_off();
    f.bytes[off..off + 2].copy_from_slice(&[0, 0]);
    let (verdict, out) = dp.run(EGRESS, &f);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.ports(), (40000, 5353));
    assert_eq!(
        out.bytes[off..off + 2],
        [0, 0],
        "a zero UDP checksum means none, and stays none"
    );
    assert_eq!(checksum::sum(&out.bytes[ETH..ETH + 20], 0), 0xffff);

    // The reply, translated in place at ingress, keeps it none too.
    let mut r = Frame::new("10.244.2.7", "10.244.1.5", 5353, 40000, PROTO_UDP, 0, b"a").macs(POD_MAC, BACKEND_MAC);
    r.bytes[off..off + 2].copy_from_slice(&[0, 0]);
    let (verdict, out) = dp.run(INGRESS, &r);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.addrs(), (ip("10.96.0.10"), ip("10.244.1.5")));
    assert_eq!(out.ports(), (53, 40000));
    assert_eq!(out.bytes[off..off + 2], [0, 0], "the reply's none stays none");
    assert_eq!(
        checksum::sum(&out.bytes[ETH..ETH + 20], 0),
        0xffff,
        "IPv4 header checksum"
    );
}

#[test]
fn drops_carry_their_reason() {
    if !root("drops_carry_their_reason") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    dp.service("10.96.0.10", 80, PROTO_TCP, &[(1, "10.244.2.7", 8080)]);
    dp.service("10.96.0.11", 80, PROTO_TCP, &[]);
    let cases = [
        (
            "known VIP, unknown port",
            Frame::new("10.244.1.5", "10.96.0.10", 40000, 81, PROTO_TCP, SYN, b""),
            Reason::DropUnknownPort,
        ),
        (
            "known VIP, other protocol",
            Frame::new("10.244.1.5", "10.96.0.10", 40000, 80, PROTO_UDP, 0, b""),
            Reason::DropUnknownPort,
        ),
        (
            "service without backends",
            Frame::new("10.244.1.5", "10.96.0.11", 40000, 80, PROTO_TCP, SYN, b""),
            Reason::DropNoBackend,
        ),
        (
            "spoofed source",
            Frame::new("10.244.1.99", "10.244.2.7", 40000, 80, PROTO_TCP, SYN, b""),
            Reason::DropSourceAddress,
        ),
    ];
    for (what, f, reason) in cases {
        let before = dp.maps.observe().count(reason, Direction::Egress).unwrap();
        let (verdict, _) = dp.run(EGRESS, &f);
        assert_eq!(verdict, TC_ACT_SHOT, "{what}");
        assert_eq!(
            dp.maps.observe().count(reason, Direction::Egress).unwrap(),
            before + 1,
            "{what}: {}",
            reason.name()
        );
    }
    // Pod-to-pod traffic that is no Service passes untouched and is counted as forwarded.
    let direct = Frame::new("10.244.1.5", "10.244.2.7", 40000, 80, PROTO_TCP, SYN, b"");
    let (verdict, out) = dp.run(EGRESS, &direct);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, direct.bytes));
    assert_eq!(
        dp.maps.observe().count(Reason::Forwarded, Direction::Egress).unwrap(),
        1
    );
    // A truncated TCP header is malformed.
    let mut cut = Frame::new("10.244.1.5", "10.96.0.10", 40000, 80, PROTO_TCP, SYN, b"");
    cut.bytes.truncate(ETH + 20 + 6);
    assert_eq!(dp.run(EGRESS, &cut).0, TC_ACT_SHOT);
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropMalformed, Direction::Egress)
            .unwrap(),
        1
    );
}

/// Random selection spreads new connections; Maglev sends one flow to the
/// same backend every time its conntrack entry is gone (as on another node).
#[test]
fn random_and_maglev_selection() {
    if !root("random_and_maglev_selection") {
        return;
    }
    let backends = [
        (1, "10.244.2.7", 8080),
        (2, "10.244.3.7", 8080),
        (3, "10.244.4.7", 8080),
    ];
    let flush = |dp: &mut Dp| {
        dp.maps.ct_mut().flush().unwrap();
    };
    for alg in [Algorithm::Random, Algorithm::Maglev] {
        let mut dp = Dp::new();
        dp.pod("10.244.1.5");
        dp.service_full("10.96.0.10", 80, PROTO_TCP, &backends, alg, false);
        let mut per_backend = std::collections::HashMap::new();
        let mut changed = 0;
        for sport in 40000..40300u16 {
            let syn = Frame::new("10.244.1.5", "10.96.0.10", sport, 80, PROTO_TCP, SYN, b"");
            let first = dp.run(EGRESS, &syn).1.addrs().1;
            flush(&mut dp);
            let second = dp.run(EGRESS, &syn).1.addrs().1;
            flush(&mut dp);
            changed += usize::from(first != second);
            *per_backend.entry(first).or_insert(0) += 1;
        }
        assert_eq!(
            per_backend.len(),
            3,
            "alg {alg:?}: every backend chosen: {per_backend:?}"
        );
        assert!(
            per_backend.values().all(|n| *n >= 60),
            "alg {alg:?}: spread {per_backend:?}"
        );
        if alg == Algorithm::Maglev {
            assert_eq!(changed, 0, "Maglev: a flow maps to one backend, conntrack or not");
        } else {
            assert!(changed > 100, "random: re-selection differs often, {changed} of 300");
        }
    }
}

/// ClientIP affinity: new connections of one client go to one backend
/// while the entry is fresh; another client may land elsewhere.
#[test]
fn session_affinity_pins_a_client() {
    if !root("session_affinity_pins_a_client") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    dp.maps
        .lb_mut()
        .upsert_service(&ServiceSpec {
            vip: ip("10.96.0.10"),
            port: 80,
            proto: PROTO_TCP,
            rev_nat_id: 1,
            algorithm: Algorithm::Random,
            affinity_timeout_secs: 300,
            reject: false,
            node_address: false,
            scope: 0,
            source_ranges: false,
            node_denied: false,
            draining: Vec::new(),
            backends: vec![
                be(1, ip("10.244.2.7"), 8080, true),
                be(2, ip("10.244.3.7"), 8080, true),
                be(3, ip("10.244.4.7"), 8080, true),
            ],
        })
        .unwrap();
    let dst = |sport| {
        dp.run(
            EGRESS,
            &Frame::new("10.244.1.5", "10.96.0.10", sport, 80, PROTO_TCP, SYN, b""),
        )
        .1
        .addrs()
        .1
    };
    let first = dst(40000);
    for sport in 40001..40050 {
        assert_eq!(
            dst(sport),
            first,
            "new connection {sport} follows the client's affinity"
        );
    }
}

fn icmp_error_translation(client: &str, vip: &str, backend: &str) {
    let mut dp = Dp::new();
    dp.pod(client);
    dp.service(vip, 53, PROTO_UDP, &[(3, backend, 5353)]);
    let (_, sent) = dp.run(EGRESS, &Frame::new(client, vip, 40000, 53, PROTO_UDP, 0, b"query"));
    assert_eq!(sent.addrs(), (ip(client), ip(backend)));

    // The backend's port is closed: its stack quotes the packet it got.
    let err = port_unreachable(backend, client, &sent.bytes[ETH..]);
    err.assert_icmp_checksum();
    let (verdict, out) = dp.run(INGRESS, &err);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.addrs(), (ip(vip), ip(client)), "the error comes from the VIP");
    out.assert_icmp_checksum();
    let q = out.quoted();
    assert_eq!(q.addrs(), (ip(client), ip(vip)), "the quote names the VIP");
    assert_eq!(q.ports(), (40000, 53));
    if !q.v6() {
        assert_eq!(
            checksum::sum(&q.bytes[ETH..ETH + 20], 0),
            0xffff,
            "quoted IPv4 header checksum"
        );
    }
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::IcmpErrorTranslated, Direction::Ingress)
            .unwrap(),
        1
    );

    // A router on the way complains: the outer source stays the router's.
    let router = if client.contains(':') {
        "fd00:244::1"
    } else {
        "10.244.0.1"
    };
    let (_, out) = dp.run(INGRESS, &port_unreachable(router, client, &sent.bytes[ETH..]));
    assert_eq!(out.addrs(), (ip(router), ip(client)));
    assert_eq!(out.quoted().addrs(), (ip(client), ip(vip)));
    out.assert_icmp_checksum();

    // An error about a flow we never translated passes untouched.
    let other = Frame::new(client, backend, 40001, 5353, PROTO_UDP, 0, b"direct");
    let err = port_unreachable(backend, client, &other.bytes[ETH..]);
    let (verdict, out) = dp.run(INGRESS, &err);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, err.bytes));
}

#[test]
fn icmp_v4_error_about_a_service_flow_is_translated() {
    if root("icmp_v4_error_about_a_service_flow_is_translated") {
        icmp_error_translation("10.244.1.5", "10.96.0.10", "10.244.2.7");
    }
}

#[test]
fn icmp_v6_error_about_a_service_flow_is_translated() {
    if root("icmp_v6_error_about_a_service_flow_is_translated") {
        icmp_error_translation("fd00:244::1:5", "fd00:96::a", "fd00:244::2:7");
    }
}

fn hairpin(pod: &str, vip: &str, hairpin_addr: &str) {
    let mut dp = Dp::new();
    dp.pod(pod);
    dp.service(vip, 80, PROTO_TCP, &[(4, pod, 8080)]);
    let (verdict, out) = dp.run(EGRESS, &Frame::new(pod, vip, 40000, 80, PROTO_TCP, SYN, b"me"));
    assert_eq!(verdict, TC_ACT_REDIRECT, "turned around into the pod");
    assert_eq!(out.addrs(), (ip(hairpin_addr), ip(pod)));
    assert_eq!(out.ports(), (40000, 8080));
    assert_eq!(out.bytes[..6], POD_MAC, "addressed to the pod");
    out.assert_checksums();

    // The pod answers the hairpin address; its reply is turned around too.
    let reply = Frame::new(pod, hairpin_addr, 8080, 40000, PROTO_TCP, SYN_ACK, b"you");
    let (verdict, out) = dp.run(EGRESS, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.addrs(), (ip(vip), ip(pod)), "the reply comes from the VIP");
    assert_eq!(out.ports(), (80, 40000));
    assert_eq!(out.bytes[..6], POD_MAC);
    out.assert_checksums();
    assert_eq!(dp.maps.observe().count(Reason::Hairpin, Direction::Egress).unwrap(), 2);
}

#[test]
fn hairpin_v4_turns_a_pod_to_itself_around() {
    if root("hairpin_v4_turns_a_pod_to_itself_around") {
        hairpin("10.244.1.5", "10.96.0.10", "169.254.42.1");
    }
}

#[test]
fn hairpin_v6_turns_a_pod_to_itself_around() {
    if root("hairpin_v6_turns_a_pod_to_itself_around") {
        hairpin("fd00:244::1:5", "fd00:96::a", "fd5c:5c5c::1");
    }
}

/// With reject on, a packet that finds no backend, or a port the VIP does
/// not serve, is answered from the VIP so the client's socket fails at
/// once: a TCP segment with a reset (RFC 9293's answer for a closed port),
/// a datagram with ICMP port unreachable quoting what the client sent.
fn reject(client: &str, vip: &str) {
    let mut dp = Dp::new();
    dp.pod(client);
    dp.service_full(vip, 80, PROTO_TCP, &[], Algorithm::Random, true);
    let v6 = client.contains(':');
    let quote_len = if v6 { 48 } else { 28 };
    let check_answer = |what: &str, verdict: u32, out: &Frame| {
        assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: turned around into the pod");
        assert_eq!(out.bytes[..6], POD_MAC, "{what}: addressed to the pod");
        assert_eq!(out.bytes[6..12], GW_MAC, "{what}: from its gateway");
        assert_eq!(out.addrs(), (ip(vip), ip(client)), "{what}: from the VIP");
        let total = if v6 {
            out.bytes.len() - ETH - 40
        } else {
            out.bytes.len() - ETH
        };
        let len_field = if v6 { ETH + 4 } else { ETH + 2 };
        assert_eq!(
            u16::from_be_bytes([out.bytes[len_field], out.bytes[len_field + 1]]) as usize,
            total,
            "{what}: length field"
        );
    };

    // TCP: a SYN (no ACK) gets RST|ACK acknowledging the SYN; a segment
    // that acknowledges (data to a port the VIP does not serve) gets a bare
    // RST at its acknowledgment number. Sequence number 1000 in each.
    let mut with_ack = Frame::new(client, vip, 40001, 81, PROTO_TCP, TCP_ACK | 0x08, &[9u8; 100]);
    let l4 = with_ack.l4();
    with_ack.bytes[l4 + 8..l4 + 12].copy_from_slice(&777_777u32.to_be_bytes());
    let c = with_ack.l4_csum_expected();
    let off = with_ack.l4_csum_off();
    with_ack.bytes[off..off + 2].copy_from_slice(&c.to_be_bytes());
    let cases = [
        (
            "SYN to a service without backends",
            Frame::new(client, vip, 40000, 80, PROTO_TCP, SYN, b""),
            Reason::DropNoBackend,
            (0u32, 1001u32, 0x14u8),
        ),
        (
            "data to a port the VIP does not serve",
            with_ack,
            Reason::DropUnknownPort,
            (777_777, 0, 0x04),
        ),
    ];
    for (what, f, reason, (seq, ack, flags)) in cases {
        let (verdict, out) = dp.run(EGRESS, &f);
        check_answer(what, verdict, &out);
        assert_eq!(out.proto(), PROTO_TCP, "{what}: a reset");
        let l4 = out.l4();
        assert_eq!(out.bytes.len(), l4 + 20, "{what}: a bare TCP header");
        let (fs, fd) = f.ports();
        assert_eq!(out.ports(), (fd, fs), "{what}: from the VIP's port to the client's");
        let word = |at: usize| u32::from_be_bytes(out.bytes[l4 + at..l4 + at + 4].try_into().unwrap());
        assert_eq!((word(4), word(8)), (seq, ack), "{what}: sequence and acknowledgment");
        assert_eq!(
            (out.bytes[l4 + 12], out.bytes[l4 + 13]),
            (5 << 4, flags),
            "{what}: flags"
        );
        out.assert_checksums();
        assert_eq!(dp.maps.observe().count(reason, Direction::Egress).unwrap(), 1, "{what}");
    }

    // UDP: port unreachable, the frame cut to the quote.
    let what = "datagram to a port the VIP does not serve";
    let f = Frame::new(client, vip, 40002, 53, PROTO_UDP, 0, &[7u8; 300]);
    let (verdict, out) = dp.run(EGRESS, &f);
    check_answer(what, verdict, &out);
    assert_eq!(out.proto(), if v6 { 58 } else { 1 }, "{what}");
    let l4 = out.l4();
    let want = if v6 { [1, 4] } else { [3, 3] };
    assert_eq!(out.bytes[l4..l4 + 2], want, "{what}: port unreachable");
    assert_eq!(out.bytes.len(), l4 + 8 + quote_len, "{what}: header and quote only");
    assert_eq!(
        out.bytes[l4 + 8..],
        f.bytes[ETH..ETH + quote_len],
        "{what}: quotes the client's packet"
    );
    out.assert_icmp_checksum();
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropUnknownPort, Direction::Egress)
            .unwrap(),
        2
    );
    assert_eq!(dp.maps.observe().count(Reason::Rejected, Direction::Egress).unwrap(), 3);

    // The answers pass the pod's ingress as they are: they answer the pod.
    for f in [
        Frame::new(client, vip, 40003, 80, PROTO_TCP, SYN, b""),
        Frame::new(client, vip, 40004, 53, PROTO_UDP, 0, b"x"),
    ] {
        let (_, answer) = dp.run(EGRESS, &f);
        let (verdict, out) = dp.run(INGRESS, &answer);
        assert_eq!((verdict, out.bytes), (TC_ACT_OK, answer.bytes));
    }
}

#[test]
fn reject_v4_answers_tcp_with_a_reset_and_udp_with_port_unreachable() {
    if root("reject_v4_answers_tcp_with_a_reset_and_udp_with_port_unreachable") {
        reject("10.244.1.5", "10.96.0.10");
    }
}

#[test]
fn reject_v6_answers_tcp_with_a_reset_and_udp_with_port_unreachable() {
    if root("reject_v6_answers_tcp_with_a_reset_and_udp_with_port_unreachable") {
        reject("fd00:244::1:5", "fd00:96::a");
    }
}

/// The VIP filter counts each VIP once, however many ports it serves, and
/// forgets it with its last port; the programs trust a zero.
#[test]
fn vip_filter_counts_and_is_consulted() {
    if !root("vip_filter_counts_and_is_consulted") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    let vip = ip("10.96.0.10");
    dp.service("10.96.0.10", 80, PROTO_TCP, &[(1, "10.244.2.7", 8080)]);
    dp.service("10.96.0.10", 53, PROTO_UDP, &[(2, "10.244.2.7", 5353)]);
    dp.service("10.96.0.10", 80, PROTO_TCP, &[(1, "10.244.2.7", 8080)]);
    assert_eq!(
        dp.maps.lb().vip_filter_count(vip).unwrap(),
        1,
        "one VIP, two ports, one rewrite"
    );
    assert!(dp.maps.lb_mut().remove_frontend(vip, 53, PROTO_UDP, false).unwrap() > 0);
    assert_eq!(dp.maps.lb().vip_filter_count(vip).unwrap(), 1, "a port is left");

    let syn = Frame::new("10.244.1.5", "10.96.0.10", 40000, 80, PROTO_TCP, SYN, b"");
    assert_eq!(dp.run(EGRESS, &syn).0, TC_ACT_REDIRECT);
    // With its slot zeroed the VIP is not looked up at all.
    dp.maps.lb_mut().set_vip_filter_count(vip, 0).unwrap();
    let other = Frame::new("10.244.1.5", "10.96.0.10", 40001, 80, PROTO_TCP, SYN, b"");
    let (verdict, out) = dp.run(EGRESS, &other);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, other.bytes.clone()));
    dp.maps.lb_mut().set_vip_filter_count(vip, 1).unwrap();

    assert!(dp.maps.lb_mut().remove_frontend(vip, 80, PROTO_TCP, true).unwrap() > 0);
    assert_eq!(
        dp.maps.lb().vip_filter_count(vip).unwrap(),
        0,
        "the last port took the VIP out"
    );
    let (verdict, out) = dp.run(EGRESS, &other);
    assert_eq!((verdict, out.bytes), (TC_ACT_OK, other.bytes));
}

/// Writing a Service compares entry by entry: the same Service again
/// writes nothing, one backend turning terminating rewrites only what
/// depends on the active set, and packets follow the new state.
#[test]
fn rewriting_a_service_writes_only_what_changed() {
    if !root("rewriting_a_service_writes_only_what_changed") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    let mut spec = ServiceSpec {
        vip: ip("10.96.0.10"),
        port: 80,
        proto: PROTO_TCP,
        rev_nat_id: 1,
        algorithm: Algorithm::Maglev,
        affinity_timeout_secs: 0,
        reject: false,
        node_address: false,
        scope: 0,
        source_ranges: false,
        node_denied: false,
        draining: Vec::new(),
        backends: vec![
            be(1, ip("10.244.2.7"), 8080, true),
            be(2, ip("10.244.3.7"), 8080, true),
            be(3, ip("10.244.4.7"), 8080, true),
        ],
    };
    let first = dp.maps.lb_mut().upsert_service(&spec).unwrap();
    assert!(first > 8, "a new Service writes its entries: {first}");
    assert_eq!(
        dp.maps.lb_mut().upsert_service(&spec).unwrap(),
        0,
        "the same Service again"
    );
    spec.backends[2].active = false;
    let change = dp.maps.lb_mut().upsert_service(&spec).unwrap();
    assert!(
        change > 0 && change < first,
        "one backend terminating: {change} writes, the Service took {first}"
    );
    assert_eq!(dp.maps.lb_mut().upsert_service(&spec).unwrap(), 0, "and again: nothing");
    for sport in 40000..40064 {
        let (_, out) = dp.run(
            EGRESS,
            &Frame::new("10.244.1.5", "10.96.0.10", sport, 80, PROTO_TCP, SYN, b""),
        );
        assert_ne!(
            out.addrs().1,
            ip("10.244.4.7"),
            "no new flow to the terminating backend"
        );
    }
}

/// A client that reuses a port: its SYN finds the previous connection's
/// closing entry. The new connection keeps that backend while it takes new
/// connections (as Cilium does: no new choice, no new next-hop lookup),
/// and gets another once it is terminating. A retransmitted SYN of a
/// connection still opening keeps its backend.
#[test]
fn a_syn_on_a_closed_connection_opens_a_new_one() {
    if !root("a_syn_on_a_closed_connection_opens_a_new_one") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    let (a, b) = (ip("10.244.2.7"), ip("10.244.3.7"));
    let spec = |a_on: bool, b_on: bool| ServiceSpec {
        vip: ip("10.96.0.10"),
        port: 80,
        proto: PROTO_TCP,
        rev_nat_id: 1,
        algorithm: Algorithm::Random,
        affinity_timeout_secs: 0,
        reject: false,
        node_address: false,
        scope: 0,
        source_ranges: false,
        node_denied: false,
        draining: Vec::new(),
        backends: vec![be(1, a, 8080, a_on), be(2, b, 8080, b_on)],
    };
    dp.maps.lb_mut().upsert_service(&spec(true, true)).unwrap();
    let to_vip = |dp: &Dp, sport: u16, flags: u8| {
        dp.run(
            EGRESS,
            &Frame::new("10.244.1.5", "10.96.0.10", sport, 80, PROTO_TCP, flags, b""),
        )
        .1
        .addrs()
        .1
    };
    // Closed, its backend still active: the reused port keeps it, the
    // entry starts over as a new connection's.
    let first = to_vip(&dp, 40000, SYN);
    to_vip(&dp, 40000, FIN_ACK);
    for _ in 0..8 {
        assert_eq!(to_vip(&dp, 40000, SYN), first, "an active backend is kept");
        to_vip(&dp, 40000, FIN_ACK);
    }
    assert!(
        dp.maps
            .ct()
            .entries()
            .unwrap()
            .iter()
            .all(|(k, v)| k.kind != CT_SERVICE || v.state == CT_CLOSING),
        "closed again"
    );
    to_vip(&dp, 40000, SYN);
    assert!(
        dp.maps
            .ct()
            .entries()
            .unwrap()
            .iter()
            .any(|(k, v)| k.kind == CT_SERVICE && v.state == CT_NEW),
        "a reopened connection is new again"
    );
    to_vip(&dp, 40000, FIN_ACK);
    // Closed, then its backend terminating: the reused port goes elsewhere.
    dp.maps.lb_mut().upsert_service(&spec(first != a, first != b)).unwrap();
    let other = if first == a { b } else { a };
    assert_eq!(to_vip(&dp, 40000, SYN), other, "a new connection on a reused port");
    // Still opening: a retransmitted SYN stays with its (now terminating) backend.
    dp.maps.lb_mut().upsert_service(&spec(true, true)).unwrap();
    let opening = to_vip(&dp, 40001, SYN);
    dp.maps
        .lb_mut()
        .upsert_service(&spec(opening != a, opening != b))
        .unwrap();
    assert_eq!(
        to_vip(&dp, 40001, SYN),
        opening,
        "a retransmitted SYN keeps its backend"
    );
}

/// A backend that stops taking new connections (not ready, terminating)
/// keeps its TCP connections; one that leaves the Service has them reset
/// from the VIP at their next segment, not re-chosen mid-connection. A UDP
/// flow moves to a ready backend in both cases.
#[test]
fn backends_that_leave_keep_or_reset_their_connections() {
    if !root("backends_that_leave_keep_or_reset_their_connections") {
        return;
    }
    use std::collections::BTreeSet;
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    let (a, b) = (ip("10.244.2.7"), ip("10.244.3.7"));
    let spec = |proto: u8, port: u16, ids: (u32, u32), on: &[bool]| ServiceSpec {
        vip: ip("10.96.0.10"),
        port,
        proto,
        rev_nat_id: u32::from(proto),
        algorithm: Algorithm::Random,
        affinity_timeout_secs: 0,
        reject: true,
        node_address: false,
        scope: 0,
        source_ranges: false,
        node_denied: false,
        draining: Vec::new(),
        backends: [(ids.0, a), (ids.1, b)]
            .iter()
            .zip(on)
            .map(|((id, addr), on)| be(*id, *addr, port + 8000, *on))
            .collect(),
    };
    let send = |dp: &Dp, proto: u8, sport: u16, flags: u8| {
        let dport = if proto == PROTO_TCP { 80 } else { 53 };
        let mut f = Frame::new("10.244.1.5", "10.96.0.10", sport, dport, proto, flags, b"data");
        if proto == PROTO_TCP {
            let l4 = f.l4();
            f.bytes[l4 + 8..l4 + 12].copy_from_slice(&5555u32.to_be_bytes());
            let c = f.l4_csum_expected();
            let off = f.l4_csum_off();
            f.bytes[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        dp.run(EGRESS, &f)
    };
    let to = |out: &Frame| out.addrs().1;
    let other = |x| if x == a { b } else { a };
    let idx = |x| usize::from(x == b);
    const PSH_ACK: u8 = 0x18;

    // TCP: established on x.
    dp.maps
        .lb_mut()
        .upsert_service(&spec(PROTO_TCP, 80, (1, 2), &[true, true]))
        .unwrap();
    let x = to(&send(&dp, PROTO_TCP, 40000, SYN).1);
    assert_eq!(to(&send(&dp, PROTO_TCP, 40000, PSH_ACK).1), x);
    // x no longer ready: the connection stays, new ones go to the other.
    let mut on = [true, true];
    on[idx(x)] = false;
    dp.maps
        .lb_mut()
        .upsert_service(&spec(PROTO_TCP, 80, (1, 2), &on))
        .unwrap();
    for _ in 0..5 {
        assert_eq!(to(&send(&dp, PROTO_TCP, 40000, PSH_ACK).1), x, "kept while draining");
    }
    for port in 41000..41010 {
        assert_eq!(to(&send(&dp, PROTO_TCP, port, SYN).1), other(x), "new ones elsewhere");
    }
    // x leaves the Service: the next segment is answered with a reset from
    // the VIP at the segment's acknowledgment number.
    let x_id = 1 + idx(x) as u32;
    let mut left = spec(PROTO_TCP, 80, (1, 2), &[true, true]);
    left.backends.retain(|bk| bk.id != x_id);
    dp.maps.lb_mut().upsert_service(&left).unwrap();
    dp.maps.lb_mut().remove_backend(x_id).unwrap();
    let f = dp.maps.ct_mut().forget_backends(&BTreeSet::from([x_id])).unwrap();
    assert!(f.marked >= 1 && f.removed >= 1, "{f:?}");
    assert!(
        dp.maps
            .ct()
            .entries()
            .unwrap()
            .iter()
            .all(|(_, v)| v.backend_id != x_id),
        "no entry names the removed backend"
    );
    let (verdict, rst) = send(&dp, PROTO_TCP, 40000, PSH_ACK);
    assert_eq!(verdict, TC_ACT_REDIRECT, "turned around into the pod");
    assert_eq!(rst.addrs(), (ip("10.96.0.10"), ip("10.244.1.5")), "from the VIP");
    let l4 = rst.l4();
    assert_eq!(rst.bytes[l4 + 13], 0x04, "a bare reset");
    assert_eq!(
        rst.bytes[l4 + 4..l4 + 8],
        5555u32.to_be_bytes(),
        "at the acknowledgment number"
    );
    rst.assert_checksums();
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropBackendGone, Direction::Egress)
            .unwrap(),
        1
    );
    // The entry went: the same ports open a new connection on the live one;
    // a reset from the client about a gone connection is not answered.
    assert_eq!(to(&send(&dp, PROTO_TCP, 40000, SYN).1), other(x));
    let y = to(&send(&dp, PROTO_TCP, 40002, SYN).1);
    assert_eq!(y, other(x));
    let y_id = 1 + idx(y) as u32;
    dp.maps
        .lb_mut()
        .upsert_service(&spec(PROTO_TCP, 80, (3, 4), &[true, true]))
        .unwrap();
    dp.maps.lb_mut().remove_backend(y_id).unwrap();
    dp.maps.ct_mut().forget_backends(&BTreeSet::from([y_id])).unwrap();
    assert_eq!(send(&dp, PROTO_TCP, 40002, 0x14).0, TC_ACT_SHOT, "RST is not answered");
    // The agent takes a backend out of its frontends, then removes its
    // entry, then marks the flows. An established connection is translated
    // from its own entry, so until the mark it still goes to the backend;
    // the mark resets it.
    let z = to(&send(&dp, PROTO_TCP, 40003, SYN).1);
    let z_id = 3 + idx(z) as u32;
    let mut left = spec(PROTO_TCP, 80, (3, 4), &[true, true]);
    left.backends.retain(|bk| bk.id != z_id);
    dp.maps.lb_mut().upsert_service(&left).unwrap();
    dp.maps.lb_mut().remove_backend(z_id).unwrap();
    assert_eq!(to(&send(&dp, PROTO_TCP, 40003, PSH_ACK).1), z, "not marked yet");
    dp.maps.ct_mut().forget_backends(&BTreeSet::from([z_id])).unwrap();
    assert_eq!(send(&dp, PROTO_TCP, 40003, PSH_ACK).1.bytes[l4 + 13], 0x04);

    // UDP: a flow on u moves to the other when u is no longer ready, and
    // back to a live one when its backend leaves.
    dp.maps
        .lb_mut()
        .upsert_service(&spec(PROTO_UDP, 53, (11, 12), &[true, true]))
        .unwrap();
    let u = to(&send(&dp, PROTO_UDP, 50000, 0).1);
    assert_eq!(to(&send(&dp, PROTO_UDP, 50000, 0).1), u, "a flow keeps its backend");
    let mut on = [true, true];
    on[idx(u)] = false;
    dp.maps
        .lb_mut()
        .upsert_service(&spec(PROTO_UDP, 53, (11, 12), &on))
        .unwrap();
    assert_eq!(
        to(&send(&dp, PROTO_UDP, 50000, 0).1),
        other(u),
        "moved off a draining backend"
    );
    let w = other(u);
    let w_id = 11 + idx(w) as u32;
    dp.maps
        .lb_mut()
        .upsert_service(&spec(PROTO_UDP, 53, (11, 12), &[true, true]))
        .unwrap();
    let mut left = spec(PROTO_UDP, 53, (11, 12), &[true, true]);
    left.backends.retain(|bk| bk.id != w_id);
    dp.maps.lb_mut().upsert_service(&left).unwrap();
    dp.maps.lb_mut().remove_backend(w_id).unwrap();
    let f = dp.maps.ct_mut().forget_backends(&BTreeSet::from([w_id])).unwrap();
    assert_eq!(f.marked, 0, "UDP entries are removed, not marked");
    assert!(f.removed >= 2, "{f:?}");
    assert_eq!(
        to(&send(&dp, PROTO_UDP, 50000, 0).1),
        u,
        "the next datagram reaches a live backend"
    );
}

/// A datagram in fragments through a Service: the first fragment is
/// translated and leaves its ports, the later one follows it (address
/// only: it has no L4 header), both ways; put back together, each way's
/// datagram has the translated addresses and ports and a valid checksum.
/// A later fragment whose first was not seen is dropped with its reason.
fn fragments(client: &str, vip: &str, backend: &str) {
    let mut dp = Dp::new();
    dp.pod(client);
    dp.service(vip, 53, PROTO_UDP, &[(1, backend, 5353)]);
    let payload: Vec<u8> = (0..1500u32).map(|i| (i * 7) as u8).collect();
    let request = Frame::new(client, vip, 40000, 53, PROTO_UDP, 0, &payload);
    let (first, later) = request.fragments(1008, 0x4242);
    let (v1, out1) = dp.run(EGRESS, &first);
    let (v2, out2) = dp.run(EGRESS, &later);
    assert_ne!(v1, TC_ACT_SHOT, "first fragment");
    assert_ne!(v2, TC_ACT_SHOT, "later fragment");
    assert_eq!(
        out2.addrs(),
        (ip(client), ip(backend)),
        "the later fragment follows the first"
    );
    if !client.contains(':') {
        assert_eq!(
            checksum::sum(&out2.bytes[ETH..ETH + 20], 0),
            0xffff,
            "its header checksum"
        );
    }
    let whole = Frame::reassemble(&out1, &out2);
    assert_eq!(whole.addrs(), (ip(client), ip(backend)));
    assert_eq!(whole.ports(), (40000, 5353));
    whole.assert_checksums();

    let answer: Vec<u8> = (0..2000u32).map(|i| (i * 13) as u8).collect();
    let reply = Frame::new(backend, client, 5353, 40000, PROTO_UDP, 0, &answer);
    let (first, later) = reply.fragments(1200, 0x4343);
    let (v1, out1) = dp.run(INGRESS, &first);
    let (v2, out2) = dp.run(INGRESS, &later);
    assert_eq!((v1, v2), (TC_ACT_OK, TC_ACT_OK), "the answer's fragments");
    assert_eq!(
        out2.addrs(),
        (ip(vip), ip(client)),
        "the later fragment comes from the VIP"
    );
    if !client.contains(':') {
        assert_eq!(
            checksum::sum(&out2.bytes[ETH..ETH + 20], 0),
            0xffff,
            "its header checksum"
        );
    }
    let whole = Frame::reassemble(&out1, &out2);
    assert_eq!(whole.addrs(), (ip(vip), ip(client)));
    assert_eq!(whole.ports(), (53, 40000));
    whole.assert_checksums();

    let (_, stray) = Frame::new(client, vip, 40001, 53, PROTO_UDP, 0, &payload).fragments(1008, 0x4444);
    assert_eq!(
        dp.run(EGRESS, &stray).0,
        TC_ACT_SHOT,
        "a later fragment without its first"
    );
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropFragment, Direction::Egress)
            .unwrap(),
        1
    );
}

#[test]
fn fragments_v4_follow_their_first_through_a_service() {
    if root("fragments_v4_follow_their_first_through_a_service") {
        fragments("10.244.1.5", "10.96.0.10", "10.244.2.7");
    }
}

#[test]
fn fragments_v6_follow_their_first_through_a_service() {
    if root("fragments_v6_follow_their_first_through_a_service") {
        fragments("fd00:244::1:5", "fd00:96::a", "fd00:244::2:7");
    }
}

/// A node's address is not a VIP: its NodePorts are translated, and every
/// other port passes untouched (the kubelet on 10250, a hostNetwork DNS),
/// where a VIP drops (or rejects) a port it does not serve.
#[test]
fn a_node_address_translates_its_node_ports_only() {
    if !root("a_node_address_translates_its_node_ports_only") {
        return;
    }
    let mut dp = Dp::new();
    dp.pod("10.244.1.5");
    let node = "172.31.0.11";
    let spec = |vip: &str, port: u16, node_address: bool| ServiceSpec {
        vip: ip(vip),
        port,
        proto: PROTO_TCP,
        rev_nat_id: u32::from(port),
        algorithm: Algorithm::Random,
        affinity_timeout_secs: 0,
        reject: true,
        node_address,
        scope: 0,
        source_ranges: false,
        node_denied: false,
        draining: Vec::new(),
        backends: vec![be(1, ip("10.244.2.7"), 8080, true)],
    };
    dp.maps.lb_mut().upsert_service(&spec(node, 30080, true)).unwrap();
    dp.maps.lb_mut().upsert_service(&spec("10.96.0.10", 80, false)).unwrap();
    let (_, out) = dp.run(
        EGRESS,
        &Frame::new("10.244.1.5", node, 40000, 30080, PROTO_TCP, SYN, b""),
    );
    assert_eq!(out.addrs().1, ip("10.244.2.7"), "the NodePort is translated");
    for port in [10250u16, 22, 53] {
        let f = Frame::new("10.244.1.5", node, 40001, port, PROTO_TCP, SYN, b"");
        let (verdict, out) = dp.run(EGRESS, &f);
        assert_eq!(
            (verdict, out.bytes),
            (TC_ACT_OK, f.bytes),
            "port {port} of the node passes untouched"
        );
    }
    let (verdict, out) = dp.run(
        EGRESS,
        &Frame::new("10.244.1.5", "10.96.0.10", 40002, 81, PROTO_TCP, SYN, b""),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT, "a VIP still refuses a port it does not serve");
    assert_eq!(out.proto(), PROTO_TCP);
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropUnknownPort, Direction::Egress)
            .unwrap(),
        1
    );
}

/// The event ring: drops of parsed packets always, new flows one in
/// `flow_sample` (here every one), with the backend a Service flow got.
#[test]
fn flows_and_drops_are_reported() {
    if !root("flows_and_drops_are_reported") {
        return;
    }
    let cfg = sluice_tc_datapath::config::DatapathConfig {
        flow_sample: 1,
        ..Default::default()
    };
    let mut dp = Dp::with_config(&cfg);
    dp.pod_id("10.244.1.5", 7);
    dp.service("10.96.0.10", 80, PROTO_TCP, &[(11, "10.244.2.7", 8080)]);
    let syn = |src: &str, dst: &str, dport| Frame::new(src, dst, 40000, dport, PROTO_TCP, SYN, b"");
    dp.run(EGRESS, &syn("10.244.1.5", "10.96.0.10", 80));
    dp.run(EGRESS, &syn("10.244.1.5", "10.244.3.3", 5432));
    dp.run(EGRESS, &syn("10.244.1.5", "10.96.0.10", 81));
    dp.run(EGRESS, &syn("10.244.1.99", "10.244.3.3", 5432));
    let got: Vec<(u16, u32, std::net::IpAddr, u16, u32)> = dp
        .events()
        .iter()
        .map(|e| {
            (
                e.reason,
                u32::from(e.dir),
                sluice_tc_datapath::layout::ip(&e.daddr),
                u16::from_be(e.dport),
                e.backend_id,
            )
        })
        .collect();
    let r = |r: Reason| r as u16;
    assert_eq!(
        got,
        vec![
            (r(Reason::ServiceTranslated), 0, ip("10.96.0.10"), 80, 11),
            (r(Reason::Forwarded), 0, ip("10.244.3.3"), 5432, 0),
            (r(Reason::DropUnknownPort), 0, ip("10.96.0.10"), 81, 0),
            (r(Reason::DropSourceAddress), 0, ip("10.244.3.3"), 5432, 0),
        ]
    );
    // An established packet is no new flow; without sampling, new flows
    // are not reported at all.
    dp.run(
        EGRESS,
        &Frame::new("10.244.1.5", "10.244.3.3", 40000, 5432, PROTO_TCP, 0x10, b""),
    );
    assert!(dp.events().is_empty());
    let mut quiet = Dp::new();
    quiet.pod("10.244.1.5");
    quiet.run(EGRESS, &syn("10.244.1.5", "10.244.3.3", 5432));
    assert!(quiet.events().is_empty(), "flowSample 0: no flow events");
}

/// A load-balancer IP called from a pod is held to its source ranges, as
/// from outside (kube-proxy's rules hold in-cluster clients to them too):
/// a pod in the ranges is translated, another is dropped and counted, and
/// neither leaves an entry when dropped; IPv4 and IPv6.
#[test]
fn pods_calling_a_load_balancer_ip_are_held_to_its_source_ranges() {
    if !root("pods_calling_a_load_balancer_ip_are_held_to_its_source_ranges") {
        return;
    }
    for (allowed, other, lb, backend, bits) in [
        ("10.244.1.5", "10.244.1.6", "198.51.100.10", "10.244.2.7", 32),
        (
            "fd00:244::1:5",
            "fd00:244::1:6",
            "2001:db8:100::10",
            "fd00:244::2:7",
            128,
        ),
    ] {
        let mut dp = Dp::new();
        dp.pod(allowed);
        dp.pod(other);
        dp.maps
            .lb_mut()
            .upsert_service(&ServiceSpec {
                vip: ip(lb),
                port: 80,
                proto: PROTO_TCP,
                rev_nat_id: 77,
                algorithm: Algorithm::Random,
                affinity_timeout_secs: 0,
                reject: false,
                node_address: false,
                scope: SVC_SCOPE_CLUSTER,
                source_ranges: true,
                node_denied: false,
                draining: Vec::new(),
                backends: vec![be(11, ip(backend), 8080, true)],
            })
            .unwrap();
        dp.maps.uplink_mut().add_source(77, ip(allowed), bits).unwrap();
        let (v, out) = dp.run(EGRESS, &Frame::new(allowed, lb, 40000, 80, PROTO_TCP, SYN, b""));
        assert_eq!(
            (v, out.addrs().1),
            (TC_ACT_REDIRECT, ip(backend)),
            "{allowed}: in the ranges"
        );
        let entries = dp.maps.ct().entries().unwrap().len();
        let (v, _) = dp.run(EGRESS, &Frame::new(other, lb, 40000, 80, PROTO_TCP, SYN, b""));
        assert_eq!(v, TC_ACT_SHOT, "{other}: outside the ranges");
        assert_eq!(
            dp.maps
                .observe()
                .count(Reason::DropSourceRange, Direction::Egress)
                .unwrap(),
            1
        );
        assert_eq!(dp.maps.ct().entries().unwrap().len(), entries, "no entry for a drop");
    }
}

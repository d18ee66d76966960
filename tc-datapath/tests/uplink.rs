//! The uplink's programs at packet level (`BPF_PROG_TEST_RUN`), IPv4 and
//! IPv6, a local backend and one elsewhere: ICMP errors from the path about
//! a connection from outside reach its backend (path MTU discovery through
//! a NodePort), a datagram's later fragments follow its first, and a flood
//! of connections never answered leaves the established ones alone.

mod common;

use common::ip;
use common::*;
use sluice_tc_datapath::layout::*;
use sluice_tc_datapath::loader::{UPLINK_IN, UPLINK_OUT};
use sluice_tc_datapath::maps::endpoints::Endpoint;
use sluice_tc_datapath::maps::lb::{Algorithm, Backend, ServiceSpec};
use std::net::IpAddr;

/// One family's cast: the node, a pod of it (behind another parent), a
/// backend elsewhere, a client outside and a router on its path.
struct Cast {
    node: &'static str,
    local: &'static str,
    remote: &'static str,
    client: &'static str,
    router: &'static str,
}

const V4: Cast = Cast {
    node: "172.31.0.11",
    local: "10.244.1.5",
    remote: "10.244.2.7",
    client: "203.0.113.5",
    router: "198.18.0.1",
};
const V6: Cast = Cast {
    node: "fd00:31::11",
    local: "fd00:244::1:5",
    remote: "fd00:244::2:7",
    client: "2001:db8:5::5",
    router: "2001:db8:ff::1",
};

/// The uplink on the test device: NodePorts 30080/tcp and 30053/udp to
/// the local pod, 30081/tcp and 30054/udp to the pod elsewhere (each
/// frontend in both scopes, as the agent writes them).
fn datapath() -> Dp {
    let mut dp = Dp::new();
    let (IpAddr::V4(n4), IpAddr::V6(n6)) = (ip(V4.node), ip(V6.node)) else {
        unreachable!()
    };
    dp.maps.uplink_mut().set_uplink(1, Some(n4), Some(n6)).unwrap();
    let mut rev = 0;
    for (i, c) in [V4, V6].iter().enumerate() {
        dp.maps
            .endpoints_mut()
            .add(&Endpoint {
                addr: ip(c.local),
                ifindex: 9,
                endpoint_id: 21,
                mac: POD_MAC,
                parent_ifindex: 2,
                netns_cookie: 0,
            })
            .unwrap();
        for (port, proto, backend, id) in [
            (30080, PROTO_TCP, c.local, 1),
            (30081, PROTO_TCP, c.remote, 2),
            (30053, PROTO_UDP, c.local, 3),
            (30054, PROTO_UDP, c.remote, 4),
        ] {
            let backend_port = if proto == PROTO_TCP { 8080 } else { 5353 };
            for scope in [SVC_SCOPE_CLUSTER, SVC_SCOPE_EXTERNAL] {
                rev += 1;
                dp.maps
                    .lb_mut()
                    .upsert_service(&ServiceSpec {
                        vip: ip(c.node),
                        port,
                        proto,
                        rev_nat_id: rev,
                        algorithm: Algorithm::Random,
                        affinity_timeout_secs: 0,
                        reject: false,
                        node_address: scope == SVC_SCOPE_CLUSTER,
                        scope,
                        source_ranges: false,
                        node_denied: false,
                        draining: Vec::new(),
                        backends: vec![Backend {
                            id: id + 10 * i as u32,
                            addr: ip(backend),
                            port: backend_port,
                            active: true,
                        }],
                    })
                    .unwrap();
            }
        }
    }
    dp
}

/// "Fragmentation needed" (ICMPv6: "packet too big") from `router` to
/// `to`, quoting `quoted`'s IP header and the first 8 bytes after it, as a
/// router does.
fn too_big(router: &str, to: &str, quoted: &Frame) -> Frame {
    let hdr = if ip(router).is_ipv6() {
        [2, 0, 0, 0, 0, 0, 0x05, 0x00]
    } else {
        [3, 4, 0, 0, 0, 0, 0x05, 0x00]
    };
    let end = quoted.l4() + 8;
    icmp(router, to, hdr, &quoted.bytes[ETH..end])
}

/// The quoted packet's (source, destination) addresses and ports.
fn quote(f: &Frame) -> ((IpAddr, u16), (IpAddr, u16)) {
    let q = f.quoted();
    let (s, d) = q.addrs();
    let (sp, dp) = q.ports();
    ((s, sp), (d, dp))
}

/// The quoted IPv4 header's checksum holds.
fn assert_quote_header(f: &Frame) {
    if !f.v6() {
        let q = f.l4() + 8;
        assert_eq!(
            checksum::sum(&f.bytes[q..q + 20], 0),
            0xffff,
            "quoted IPv4 header checksum"
        );
    }
}

#[test]
fn path_mtu_errors_reach_the_backend_of_a_connection_from_outside() {
    if !root("path_mtu_errors_reach_the_backend_of_a_connection_from_outside") {
        return;
    }
    let dp = datapath();
    for c in [V4, V6] {
        // A client's connection to the local pod's NodePort: the pod's
        // reply left as node:30080 -> client, and a router on the way
        // back finds it too big for the next link.
        let (v, out) = dp.run(
            UPLINK_IN,
            &Frame::new(c.client, c.node, 40000, 30080, PROTO_TCP, SYN, b""),
        );
        assert_eq!(
            (v, out.addrs().1),
            (TC_ACT_REDIRECT, ip(c.local)),
            "{}: the SYN",
            c.node
        );
        let reply = Frame::new(c.node, c.client, 30080, 40000, PROTO_TCP, TCP_ACK, &[0u8; 64]);
        let err = too_big(c.router, c.node, &reply).macs([0x02, 0, 0, 0, 0, 0x11], ROUTER_MAC);
        let (v, out) = dp.run(UPLINK_IN, &err);
        assert_eq!(v, TC_ACT_REDIRECT, "{}: handed to the pod's parent", c.node);
        assert_eq!(out.bytes[..6], POD_MAC, "{}: addressed to the pod", c.node);
        assert_eq!(
            out.addrs(),
            (ip(c.router), ip(c.local)),
            "{}: from the router to the pod",
            c.node
        );
        assert_eq!(
            quote(&out),
            ((ip(c.local), 8080), (ip(c.client), 40000)),
            "{}: about the packet the pod sent",
            c.node
        );
        out.assert_icmp_checksum();
        assert_quote_header(&out);

        // The same to the pod elsewhere: it sent backend -> node:SNAT port.
        let (v, fwd) = dp.run(
            UPLINK_IN,
            &Frame::new(c.client, c.node, 40001, 30081, PROTO_TCP, SYN, b""),
        );
        assert_eq!(
            (v, fwd.addrs()),
            (TC_ACT_REDIRECT, (ip(c.node), ip(c.remote))),
            "{}: SNAT",
            c.node
        );
        let snat_port = fwd.ports().0;
        let reply = Frame::new(c.node, c.client, 30081, 40001, PROTO_TCP, TCP_ACK, &[0u8; 64]);
        let (v, out) = dp.run(UPLINK_IN, &too_big(c.router, c.node, &reply));
        assert_eq!(v, TC_ACT_REDIRECT, "{}: routed to the backend", c.node);
        assert_eq!(
            out.addrs(),
            (ip(c.node), ip(c.remote)),
            "{}: from this node to the backend",
            c.node
        );
        assert_eq!(
            quote(&out),
            ((ip(c.remote), 8080), (ip(c.node), snat_port)),
            "{}: about the packet the backend sent",
            c.node
        );
        out.assert_icmp_checksum();
        assert_quote_header(&out);

        // About no connection of ours (another client port): untouched.
        let stray = Frame::new(c.node, c.client, 30080, 40999, PROTO_TCP, TCP_ACK, &[0u8; 64]);
        let err = too_big(c.router, c.node, &stray);
        let (v, out) = dp.run(UPLINK_IN, &err);
        assert_eq!((v, &out.bytes), (TC_ACT_OK, &err.bytes), "{}: unrelated error", c.node);
    }
    assert!(
        dp.maps
            .observe()
            .count(Reason::IcmpErrorTranslated, Direction::Ingress)
            .unwrap()
            >= 4
    );
}

#[test]
fn fragments_from_outside_follow_their_first() {
    if !root("fragments_from_outside_follow_their_first") {
        return;
    }
    let dp = datapath();
    for c in [V4, V6] {
        for (port, backend, id) in [(30053, c.local, 0x4242), (30054, c.remote, 0x4343)] {
            let datagram = Frame::new(c.client, c.node, 41000, port, PROTO_UDP, 0, &[7u8; 1200]);
            let (first, later) = datagram.fragments(808, id);
            let (v1, o1) = dp.run(UPLINK_IN, &first);
            let (v2, o2) = dp.run(UPLINK_IN, &later);
            assert_eq!(
                (v1, v2),
                (TC_ACT_REDIRECT, TC_ACT_REDIRECT),
                "{backend}: both fragments sent on"
            );
            assert_eq!(o1.addrs(), o2.addrs(), "{backend}: the later fragment as its first");
            let whole = Frame::reassemble(&o1, &o2);
            let source = if backend == c.local { c.client } else { c.node };
            assert_eq!(whole.addrs(), (ip(source), ip(backend)), "{backend}: addresses");
            assert_eq!(whole.ports().1, 5353, "{backend}: the backend's port");
            whole.assert_checksums();
        }
        // A later fragment whose first never came opens nothing.
        let datagram = Frame::new(c.client, c.node, 41001, 30053, PROTO_UDP, 0, &[7u8; 1200]);
        let (_, later) = datagram.fragments(808, 0x4444);
        let (v, out) = dp.run(UPLINK_IN, &later);
        assert_eq!(
            (v, &out.bytes),
            (TC_ACT_OK, &later.bytes),
            "{}: a stray later fragment",
            c.node
        );
    }
}

/// The `i`th of many clients, each an address of its own in 100.64/10.
fn forged(i: u32) -> String {
    format!("100.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 0xff, i & 0xff)
}

/// A client's connection through the NodePort `port`, its handshake
/// completed: SYN in, the backend's SYN-ACK turned back (leaving, from a
/// local backend; coming in to the SNAT port, from one elsewhere), the
/// client's ACK in. Returns the backend's side as it sees the client.
fn handshake(dp: &Dp, c: &Cast, client_port: u16, port: u16, backend: &str) -> (IpAddr, u16) {
    let (v, syn) = dp.run(
        UPLINK_IN,
        &Frame::new(c.client, c.node, client_port, port, PROTO_TCP, SYN, b""),
    );
    assert_eq!((v, syn.addrs().1), (TC_ACT_REDIRECT, ip(backend)), "{port}: the SYN");
    let (seen, seen_port) = (syn.addrs().0, syn.ports().0);
    let synack = Frame::new(backend, &seen.to_string(), 8080, seen_port, PROTO_TCP, SYN_ACK, b"");
    let (v, out) = dp.run(if seen == ip(c.client) { UPLINK_OUT } else { UPLINK_IN }, &synack);
    assert_ne!(v, TC_ACT_SHOT, "{port}: the SYN-ACK");
    assert_eq!(
        (out.addrs(), out.ports()),
        ((ip(c.node), ip(c.client)), (port, client_port)),
        "{port}: the SYN-ACK from the frontend"
    );
    let (v, ack) = dp.run(
        UPLINK_IN,
        &Frame::new(c.client, c.node, client_port, port, PROTO_TCP, TCP_ACK, b""),
    );
    assert_eq!((v, ack.addrs().1), (TC_ACT_REDIRECT, ip(backend)), "{port}: the ACK");
    (seen, seen_port)
}

/// A flood of SYNs from forged sources, each opening a connection no
/// client answers, more than both NAT tables hold together: connections
/// established before it (to a local backend and, through SNAT, to one
/// elsewhere) keep their entries, their replies are still turned back to
/// come from the frontend, and the client's segments still reach the same
/// backend. nf_conntrack keeps them by evicting unassured entries first;
/// here the unanswered ones have a table of their own.
#[test]
fn a_syn_flood_from_outside_leaves_established_connections_alone() {
    if !root("a_syn_flood_from_outside_leaves_established_connections_alone") {
        return;
    }
    let dp = datapath();
    let c = V4;
    let established = [(40000, 30080, c.local), (40001, 30081, c.remote)];
    let seen: Vec<(IpAddr, u16)> = established
        .iter()
        .map(|&(cp, port, backend)| handshake(&dp, &c, cp, port, backend))
        .collect();
    let uplink = dp.maps.uplink();
    assert_eq!(uplink.answered_entries().unwrap().len(), 4, "both connections answered");
    assert!(
        uplink.unanswered_entries().unwrap().is_empty(),
        "nothing left unanswered"
    );

    // 100,000 forged sources to the local pod's NodePort: 200,000
    // entries, over the 131,072 of the answered table and the 65,536 of
    // the unanswered one.
    const FLOOD: u32 = 100_000;
    for i in 0..FLOOD {
        let (v, _) = dp.run(
            UPLINK_IN,
            &Frame::new(&forged(i), c.node, 50000, 30080, PROTO_TCP, SYN, b""),
        );
        assert_eq!(v, TC_ACT_REDIRECT, "flood SYN {i}");
    }
    let uplink = dp.maps.uplink();
    assert_eq!(
        uplink.answered_entries().unwrap().len(),
        4,
        "the flood stayed out of the answered table"
    );
    assert!(
        uplink.unanswered_entries().unwrap().len() > 60_000,
        "the flood turned its own table over"
    );

    for (&(client_port, port, backend), &(to, to_port)) in established.iter().zip(&seen) {
        // The backend's data, turned back to come from the frontend.
        let data = Frame::new(
            backend,
            &to.to_string(),
            8080,
            to_port,
            PROTO_TCP,
            TCP_ACK,
            b"after the flood",
        );
        let (v, out) = dp.run(if to == ip(c.client) { UPLINK_OUT } else { UPLINK_IN }, &data);
        assert_ne!(v, TC_ACT_SHOT, "{port}: the reply after the flood");
        assert_eq!(
            (out.addrs(), out.ports()),
            ((ip(c.node), ip(c.client)), (port, client_port)),
            "{port}: the backend's reply after the flood, from the frontend"
        );
        out.assert_checksums();
        // The client's data, to the same backend as its handshake.
        let (v, out) = dp.run(
            UPLINK_IN,
            &Frame::new(c.client, c.node, client_port, port, PROTO_TCP, TCP_ACK, b"more"),
        );
        assert_eq!(
            (v, out.addrs(), out.ports()),
            (TC_ACT_REDIRECT, (to, ip(backend)), (to_port, 8080)),
            "{port}: the client's segment after the flood"
        );
    }
}

/// New connections from outside to one backend elsewhere each hold an
/// SNAT port of their own: 20,000 at once (55% of the 36,280 ports) are
/// all taken in, none refused for want of a port, each on a distinct
/// port. With the tries a fixed stride apart from one random start, the
/// first refusal came between 6,800 and 11,000.
#[test]
fn snat_ports_fill_before_a_connection_is_refused() {
    if !root("snat_ports_fill_before_a_connection_is_refused") {
        return;
    }
    let dp = datapath();
    let c = V4;
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..20_000u32 {
        let (v, out) = dp.run(
            UPLINK_IN,
            &Frame::new(&forged(i), c.node, 50000, 30081, PROTO_TCP, SYN, b""),
        );
        assert_eq!(
            (v, out.addrs()),
            (TC_ACT_REDIRECT, (ip(c.node), ip(c.remote))),
            "connection {i} SNATed"
        );
        assert!(
            ports.insert(out.ports().0),
            "connection {i}: port {} twice",
            out.ports().0
        );
    }
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropNoSnatPort, Direction::Ingress)
            .unwrap(),
        0
    );
}

/// A closed connection's SNAT port is not taken over while its backend may
/// still hold the 4-tuple in TIME_WAIT: the backend's FIN holds the port
/// for NAT_SNAT_HOLD_NS in a table of its own (so that other connections'
/// churn through the NAT tables cannot end the hold); with every port of
/// the backend's held, a new SYN is refused (dropped, counted); once the
/// holds ended, it is SNATed.
#[test]
fn a_closed_connections_snat_port_waits_out_the_backends_time_wait() {
    if !root("a_closed_connections_snat_port_waits_out_the_backends_time_wait") {
        return;
    }
    let mut dp = datapath();
    let c = V4;
    let now = sluice_tc_datapath::maps::ct::now_ns;
    let reply_key = |port: u16| CtKey {
        saddr: addr(ip(c.remote)),
        daddr: addr(ip(c.node)),
        sport: 8080u16.to_be(),
        dport: port.to_be(),
        proto: PROTO_TCP,
        kind: CT_NAT,
        pad0: 0,
    };

    // The backend closes first (an HTTP/1.0 server): its FIN holds the port.
    let (seen, port) = handshake(&dp, &c, 40000, 30081, c.remote);
    assert_eq!(seen, ip(c.node), "SNATed");
    let fin = Frame::new(c.remote, c.node, 8080, port, PROTO_TCP, FIN_ACK, b"");
    let (v, _) = dp.run(UPLINK_IN, &fin);
    assert_ne!(v, TC_ACT_SHOT);
    let held = dp.maps.uplink().snat_held().unwrap();
    assert_eq!(held.len(), 1, "one port held");
    assert_eq!(held[0].0, reply_key(port));
    let left = held[0].1 - now();
    assert!(
        (NAT_SNAT_HOLD_NS - 2_000_000_000..=NAT_SNAT_HOLD_NS).contains(&left),
        "held {left} ns more"
    );
    // A connection to the local backend holds nothing.
    handshake(&dp, &c, 40001, 30080, c.local);
    let fin = Frame::new(c.local, c.client, 8080, 40001, PROTO_TCP, FIN_ACK, b"");
    assert_ne!(dp.run(UPLINK_OUT, &fin).0, TC_ACT_SHOT);
    assert_eq!(dp.maps.uplink().snat_held().unwrap().len(), 1);

    // Every port held: a new connection is refused.
    let hold_all = |dp: &mut Dp, until: u64| {
        for p in (1024..=32767u16).chain(61000..=65535) {
            dp.maps.uplink_mut().hold_snat_port(reply_key(p), until).unwrap();
        }
    };
    hold_all(&mut dp, now() + 10_000_000_000);
    let syn = Frame::new(c.client, c.node, 40002, 30081, PROTO_TCP, SYN, b"");
    let (v, _) = dp.run(UPLINK_IN, &syn);
    assert_eq!(v, TC_ACT_SHOT, "every port held: refused");
    assert_eq!(
        dp.maps
            .observe()
            .count(Reason::DropNoSnatPort, Direction::Ingress)
            .unwrap(),
        1
    );
    // The holds over: SNATed.
    hold_all(&mut dp, now() - 1);
    let (v, out) = dp.run(UPLINK_IN, &syn);
    assert_eq!(
        (v, out.addrs()),
        (TC_ACT_REDIRECT, (ip(c.node), ip(c.remote))),
        "the holds over: SNATed"
    );
}

/// A local backend's connection remapped to another port of its client
/// (the client's port already held a live connection to another frontend
/// of that backend) is held past its close as a SNAT port is: the backend
/// may hold the remapped 4-tuple in TIME_WAIT, so neither a later remap
/// nor the client's own use of that port lands on it until the hold ends.
/// Errors from the path about it reach the backend quoting the remapped
/// port, the one its socket has.
#[test]
fn a_remapped_client_port_is_held_like_a_snat_port() {
    if !root("a_remapped_client_port_is_held_like_a_snat_port") {
        return;
    }
    let mut dp = datapath();
    for c in [V4, V6] {
        // A second frontend of the local pod's backend.
        dp.maps
            .lb_mut()
            .upsert_service(&ServiceSpec {
                vip: ip(c.node),
                port: 30082,
                proto: PROTO_TCP,
                rev_nat_id: if c.node == V4.node { 101 } else { 102 },
                algorithm: Algorithm::Random,
                affinity_timeout_secs: 0,
                reject: false,
                node_address: false,
                scope: SVC_SCOPE_EXTERNAL,
                source_ranges: false,
                node_denied: false,
                draining: Vec::new(),
                backends: vec![Backend {
                    id: if c.node == V4.node { 1 } else { 11 },
                    addr: ip(c.local),
                    port: 8080,
                    active: true,
                }],
            })
            .unwrap();
        let node = &c.node.to_string();
        let first = handshake(&dp, &c, 40000, 30080, c.local);
        assert_eq!(first, (ip(c.client), 40000), "{node}: the client's own port");

        // The same client port to the other frontend: another port at the backend.
        let (v, syn) = dp.run(
            UPLINK_IN,
            &Frame::new(c.client, c.node, 40000, 30082, PROTO_TCP, SYN, b""),
        );
        assert_eq!(
            (v, syn.addrs().0),
            (TC_ACT_REDIRECT, ip(c.client)),
            "{node}: the clash's SYN"
        );
        let remapped = syn.ports().0;
        assert_ne!(remapped, 40000, "{node}: remapped");
        let synack = Frame::new(c.local, c.client, 8080, remapped, PROTO_TCP, SYN_ACK, b"");
        let (v, out) = dp.run(UPLINK_OUT, &synack);
        assert_eq!(
            (v, out.addrs(), out.ports()),
            (TC_ACT_OK, (ip(c.node), ip(c.client)), (30082, 40000)),
            "{node}: the SYN-ACK back from the second frontend to the client's port"
        );

        // A router finds the backend's reply too big: the backend hears of
        // its own 4-tuple.
        let reply = Frame::new(c.node, c.client, 30082, 40000, PROTO_TCP, TCP_ACK, &[0u8; 64]);
        let (v, out) = dp.run(UPLINK_IN, &too_big(c.router, c.node, &reply));
        assert_eq!(v, TC_ACT_REDIRECT, "{node}: the error handed to the pod");
        assert_eq!(
            quote(&out),
            ((ip(c.local), 8080), (ip(c.client), remapped)),
            "{node}: quoting the remapped port"
        );
        out.assert_icmp_checksum();
        assert_quote_header(&out);

        // The backend closes it: the remapped port is held.
        let fin = Frame::new(c.local, c.client, 8080, remapped, PROTO_TCP, FIN_ACK, b"");
        assert_ne!(dp.run(UPLINK_OUT, &fin).0, TC_ACT_SHOT);
        let key = CtKey {
            saddr: addr(ip(c.local)),
            daddr: addr(ip(c.client)),
            sport: 8080u16.to_be(),
            dport: remapped.to_be(),
            proto: PROTO_TCP,
            kind: CT_NAT,
            pad0: 0,
        };
        let held = dp.maps.uplink().snat_held().unwrap();
        let until = held.iter().find(|(k, _)| *k == key).map(|(_, u)| *u);
        let left = until.expect("the remapped port held") - sluice_tc_datapath::maps::ct::now_ns();
        assert!(
            (NAT_SNAT_HOLD_NS - 2_000_000_000..=NAT_SNAT_HOLD_NS).contains(&left),
            "{node}: held {left} ns more"
        );

        // The client itself on that port, to the backend: another port.
        let (v, syn) = dp.run(
            UPLINK_IN,
            &Frame::new(c.client, c.node, remapped, 30080, PROTO_TCP, SYN, b""),
        );
        assert_eq!(
            (v, syn.addrs().0),
            (TC_ACT_REDIRECT, ip(c.client)),
            "{node}: the client's SYN"
        );
        assert_ne!(
            syn.ports().0,
            remapped,
            "{node}: the held port is not the backend's again"
        );
        // Once the hold is over, the client's port is its own again.
        dp.maps.uplink_mut().hold_snat_port(key, 1).unwrap();
        let (v, syn) = dp.run(
            UPLINK_IN,
            &Frame::new(c.client, c.node, remapped, 30082, PROTO_TCP, SYN, b""),
        );
        assert_eq!(
            (v, syn.addrs().0, syn.ports().0),
            (TC_ACT_REDIRECT, ip(c.client), remapped),
            "{node}: the hold over, the client's own port"
        );
    }
}

/// An established connection whose entries expired while it sat idle is
/// picked up by the client's next segment, as before the two tables: it
/// starts unanswered, its backend's data (no SYN) is still turned back to
/// come from the frontend, and the client's following segment moves it to
/// the answered table.
#[test]
fn an_idle_connection_is_picked_up_mid_stream() {
    if !root("an_idle_connection_is_picked_up_mid_stream") {
        return;
    }
    let mut dp = datapath();
    let c = V4;
    handshake(&dp, &c, 40000, 30080, c.local);
    // Its entries expire and are collected.
    let gone = dp.maps.uplink_mut().collect(u64::MAX).unwrap();
    assert_eq!(gone, 2, "both entries collected");
    let data = |flags: u8, body: &[u8]| Frame::new(c.client, c.node, 40000, 30080, PROTO_TCP, flags, body);
    let (v, out) = dp.run(UPLINK_IN, &data(TCP_ACK, b"later"));
    assert_eq!(
        (v, out.addrs().1),
        (TC_ACT_REDIRECT, ip(c.local)),
        "picked up mid-stream"
    );
    let reply = Frame::new(c.local, c.client, 8080, 40000, PROTO_TCP, TCP_ACK, b"answer");
    let (v, out) = dp.run(UPLINK_OUT, &reply);
    assert_eq!(
        (v, out.addrs(), out.ports()),
        (TC_ACT_OK, (ip(c.node), ip(c.client)), (30080, 40000)),
        "the backend's data, from the frontend"
    );
    out.assert_checksums();
    assert!(dp.maps.uplink().answered_entries().unwrap().is_empty());
    let (v, _) = dp.run(UPLINK_IN, &data(TCP_ACK, b""));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(
        dp.maps.uplink().answered_entries().unwrap().len(),
        2,
        "answered by the client's next segment"
    );
}

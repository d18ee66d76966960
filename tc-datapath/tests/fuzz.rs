//! Packet fuzzing of the real programs through BPF_PROG_TEST_RUN: random
//! and mutated frames (truncations, every ethertype, VLAN tags, IPv4
//! options and `ihl`, IPv6 extension chains, fragments, ICMP errors quoting
//! anything) go through the egress program of a pod under the source check,
//! the ingress program of an isolated pod and the uplink's ingress (frames
//! from outside the node), and every verdict is held to these invariants:
//!
//! - nothing leaves a pod from a source that is not its own;
//! - nothing reaches an isolated pod unless a rule, a flow of its own (its
//!   conntrack entry) or an error about such a flow lets it in;
//! - from outside, only a frontend's traffic reaches a backend, and only a
//!   remote backend's reply is turned back to a client (see the uplink
//!   test);
//! - what the programs rewrite carries valid checksums.
//!
//! The seed is fixed (`SLUICE_FUZZ_SEED` changes it) and CI runs
//! `SLUICE_FUZZ_FRAMES` frames per program (50,000 by default); set it
//! higher for a longer run. A failure prints the seed, the frame number
//! and the frame.

mod common;

use common::ip;
use common::*;
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use sluice_tc_datapath::layout::*;
use sluice_tc_datapath::loader::{EGRESS, INGRESS};
use sluice_tc_datapath::maps::policy::{PortRange, Rule};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const PROTO_SCTP: u8 = 132;

/// The client pod whose egress is fuzzed.
const CLIENT: [&str; 2] = ["10.244.1.5", "fd00:244::1:5"];
/// The isolated pod whose ingress is fuzzed, and its endpoint id.
const ISOLATED: [&str; 2] = ["10.244.1.9", "fd00:244::1:9"];
const ISOLATED_EP: u32 = 9;
/// The peer its one rule admits (UDP 53), with identity 301.
const PEER_A: [&str; 2] = ["10.244.2.7", "fd00:244::2:7"];
/// A peer it talks to itself: UDP from 5000 to 9999.
const PEER_B: [&str; 2] = ["10.244.3.3", "fd00:244::3:3"];
const VIPS: [&str; 4] = ["10.96.0.10", "10.96.0.11", "fd00:96::a", "fd00:96::b"];
const OTHERS: [&str; 6] = [
    "10.244.1.6",
    "10.0.0.1",
    "169.254.42.1",
    "fd00:244::1:6",
    "fe80::5",
    "fd5c:5c5c::1",
];
const PORTS: [u16; 8] = [53, 80, 81, 5000, 5001, 5353, 8080, 9999];

fn frames() -> usize {
    std::env::var("SLUICE_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

fn seed() -> u64 {
    std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5c1a_2026)
}

fn rng(salt: u64) -> TestRng {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed().to_le_bytes());
    s[8..16].copy_from_slice(&salt.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &s)
}

fn pick<'a, T>(rng: &mut TestRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// A generated frame and whether its checksums are valid as built.
struct Case {
    bytes: Vec<u8>,
    csum_valid: bool,
}

/// What a frame is, read independently of the programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ip {
    v6: bool,
    saddr: IpAddr,
    daddr: IpAddr,
    proto: u8,
    l4: usize,
    /// 0: not a fragment, 1: the first, 2: a later one.
    frag: u8,
    frag_id: u32,
    /// The end of the IP packet in the frame (its length field).
    end: usize,
}

fn ipv4_of(b: &[u8]) -> IpAddr {
    IpAddr::from(<[u8; 4]>::try_from(b).unwrap())
}

fn ipv6_of(b: &[u8]) -> IpAddr {
    IpAddr::from(<[u8; 16]>::try_from(b).unwrap())
}

/// The IP header of a frame (untagged IPv4/IPv6 only), with the upper
/// layer found behind the IPv6 extension headers as the kernel walks them.
fn read_ip(b: &[u8]) -> Option<Ip> {
    if b.len() < ETH + 20 {
        return None;
    }
    match [b[12], b[13]] {
        [0x08, 0x00] => {
            let ihl = usize::from(b[ETH] & 0xf) * 4;
            if b[ETH] >> 4 != 4 || ihl < 20 || b.len() < ETH + ihl {
                return None;
            }
            let frag_field = u16::from_be_bytes([b[ETH + 6], b[ETH + 7]]);
            let frag = if frag_field & 0x1fff != 0 {
                2
            } else if frag_field & 0x2000 != 0 {
                1
            } else {
                0
            };
            Some(Ip {
                v6: false,
                saddr: ipv4_of(&b[ETH + 12..ETH + 16]),
                daddr: ipv4_of(&b[ETH + 16..ETH + 20]),
                proto: b[ETH + 9],
                l4: ETH + ihl,
                frag,
                frag_id: u32::from(u16::from_be_bytes([b[ETH + 4], b[ETH + 5]])),
                end: ETH + usize::from(u16::from_be_bytes([b[ETH + 2], b[ETH + 3]])),
            })
        }
        [0x86, 0xdd] => {
            if b.len() < ETH + 40 || b[ETH] >> 4 != 6 {
                return None;
            }
            let mut next = b[ETH + 6];
            let mut off = ETH + 40;
            let (mut frag, mut frag_id) = (0, 0);
            for _ in 0..8 {
                if ![0u8, 43, 44, 51, 60].contains(&next) {
                    break;
                }
                let h = b.get(off..off + 8)?;
                let len = match next {
                    44 => {
                        let field = u16::from_be_bytes([h[2], h[3]]);
                        frag = if field & 0xfff8 != 0 { 2 } else { 1 };
                        frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                        8
                    }
                    51 => (usize::from(h[1]) + 2) * 4,
                    _ => (usize::from(h[1]) + 1) * 8,
                };
                next = h[0];
                off += len;
            }
            Some(Ip {
                v6: true,
                saddr: ipv6_of(&b[ETH + 8..ETH + 24]),
                daddr: ipv6_of(&b[ETH + 24..ETH + 40]),
                proto: next,
                l4: off,
                frag,
                frag_id,
                end: ETH + 40 + usize::from(u16::from_be_bytes([b[ETH + 4], b[ETH + 5]])),
            })
        }
        _ => None,
    }
}

fn ports(b: &[u8], ip: &Ip) -> Option<(u16, u16)> {
    let h = b.get(ip.l4..ip.l4 + 4)?;
    Some((u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]])))
}

/// Fill in the IPv4 header checksum and the L4 checksum of an IP frame
/// as built (over what the frame holds).
fn fix_checksums(b: &mut [u8]) {
    let Some(ip) = read_ip(b) else { return };
    if !ip.v6 {
        let ihl = ip.l4 - ETH;
        b[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
        let c = checksum::of(&b[ETH..ETH + ihl], 0);
        b[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
    }
    if ip.frag == 2 || ip.end > b.len() || ip.end < ip.l4 {
        return;
    }
    let off = match ip.proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        PROTO_ICMP if !ip.v6 => 2,
        PROTO_ICMPV6 if ip.v6 => 2,
        _ => return,
    };
    if ip.end < ip.l4 + off + 2 {
        return;
    }
    b[ip.l4 + off..ip.l4 + off + 2].copy_from_slice(&[0, 0]);
    let c = l4_sum(b, &ip);
    let c = if ip.proto == PROTO_UDP && c == 0 { 0xffff } else { c };
    b[ip.l4 + off..ip.l4 + off + 2].copy_from_slice(&c.to_be_bytes());
}

/// The checksum of the L4 segment as it is (0 when it checks out, given
/// its checksum field in place).
fn l4_sum(b: &[u8], ip: &Ip) -> u16 {
    let seg = &b[ip.l4..ip.end];
    let mut pseudo = Vec::new();
    let addr = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    pseudo.extend(addr(ip.saddr));
    pseudo.extend(addr(ip.daddr));
    if ip.v6 {
        pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, ip.proto]);
    } else if ip.proto != PROTO_ICMP {
        pseudo.extend_from_slice(&[0, ip.proto]);
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    }
    let acc = if !ip.v6 && ip.proto == PROTO_ICMP {
        0
    } else {
        checksum::sum(&pseudo, 0)
    };
    checksum::of(seg, acc)
}

/// Invariant 3: an IP frame a program changed has valid checksums.
fn assert_checksums(out: &[u8], what: &str) {
    let Some(ip) = read_ip(out) else { return };
    if !ip.v6 {
        let ihl = ip.l4 - ETH;
        assert_eq!(
            checksum::sum(&out[ETH..ETH + ihl], 0),
            0xffff,
            "{what}: IPv4 header checksum"
        );
    }
    if ip.frag != 0 || ip.end != out.len() {
        return;
    }
    let field = match ip.proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        PROTO_ICMP if !ip.v6 => 2,
        PROTO_ICMPV6 if ip.v6 => 2,
        _ => return,
    };
    if out.len() < ip.l4 + field + 2 {
        return;
    }
    if ip.proto == PROTO_UDP && !ip.v6 && out[ip.l4 + 6..ip.l4 + 8] == [0, 0] {
        return; // no checksum, and none is owed
    }
    assert_eq!(l4_sum(out, &ip), 0, "{what}: L4 checksum");
}

/// Addresses for one frame, by where the fuzzer aims.
struct Aim {
    sources: Vec<&'static str>,
    destinations: Vec<&'static str>,
    /// Exact flows worth hitting: (source, destination, proto, sport, dport).
    flows: Vec<(&'static str, &'static str, u8, u16, u16)>,
}

impl Aim {
    fn egress() -> Aim {
        let mut sources: Vec<&str> = Vec::new();
        for _ in 0..6 {
            sources.extend(CLIENT);
        }
        sources.extend(OTHERS);
        sources.extend(PEER_A);
        sources.extend(["0.0.0.0", "::"]);
        let mut destinations: Vec<&str> = VIPS.iter().chain(VIPS.iter()).copied().collect();
        destinations.extend(PEER_A);
        destinations.extend(PEER_B);
        destinations.extend(OTHERS);
        destinations.extend(CLIENT);
        let flows = vec![
            (CLIENT[0], "10.96.0.10", PROTO_TCP, 40000, 80),
            (CLIENT[0], "10.96.0.10", PROTO_UDP, 40000, 53),
            (CLIENT[1], "fd00:96::a", PROTO_UDP, 40000, 53),
            (CLIENT[1], "fd00:96::a", PROTO_TCP, 40000, 80),
            // A hairpinned connection's reply, at the pod's egress.
            (CLIENT[0], "169.254.42.1", PROTO_TCP, 8080, 40000),
            (CLIENT[1], "fd5c:5c5c::1", PROTO_UDP, 5353, 40000),
        ];
        Aim {
            sources,
            destinations,
            flows,
        }
    }

    fn ingress() -> Aim {
        let mut sources: Vec<&str> = Vec::new();
        for _ in 0..3 {
            sources.extend(PEER_A);
            sources.extend(PEER_B);
        }
        sources.extend(OTHERS);
        sources.extend(VIPS);
        sources.extend(CLIENT);
        let mut destinations: Vec<&str> = Vec::new();
        for _ in 0..6 {
            destinations.extend(ISOLATED);
        }
        destinations.extend(CLIENT);
        destinations.extend(OTHERS);
        let flows = vec![
            (PEER_A[0], ISOLATED[0], PROTO_UDP, 5353, 5001),
            (PEER_A[1], ISOLATED[1], PROTO_UDP, 5353, 5001),
            (PEER_B[0], ISOLATED[0], PROTO_UDP, 9999, 5000),
            (PEER_A[0], ISOLATED[0], PROTO_UDP, 4000, 53),
            (PEER_A[1], ISOLATED[1], PROTO_TCP, 4000, 53),
        ];
        Aim {
            sources,
            destinations,
            flows,
        }
    }

    /// A source and a destination of one family.
    fn pair(&self, rng: &mut TestRng) -> (IpAddr, IpAddr) {
        let s = ip(pick::<&str>(rng, &self.sources));
        loop {
            let d = ip(pick::<&str>(rng, &self.destinations));
            if d.is_ipv4() == s.is_ipv4() {
                return (s, d);
            }
        }
    }
}

/// An L4 payload: TCP, UDP, ICMP (echo or an error quoting a packet),
/// SCTP or a random protocol, with ports from the interesting ones.
fn l4(rng: &mut TestRng, v6: bool, depth: u32, aim: &Aim, force: Option<(u8, u16, u16)>) -> (u8, Vec<u8>) {
    let port = |rng: &mut TestRng| {
        if rng.random_bool(0.8) {
            *pick(rng, &PORTS)
        } else {
            rng.random()
        }
    };
    let max = if rng.random_bool(0.1) { 1500 } else { 64 };
    let mut payload = vec![0u8; rng.random_range(0..max)];
    rng.fill(&mut payload[..]);
    let kind = match force {
        Some((PROTO_TCP, ..)) => 0,
        Some(_) => 30,
        None => rng.random_range(0..100),
    };
    let port = |rng: &mut TestRng, which: usize| match force {
        Some((_, s, d)) => [s, d][which],
        None => port(rng),
    };
    if kind < 30 {
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&port(rng, 0).to_be_bytes());
        h[2..4].copy_from_slice(&port(rng, 1).to_be_bytes());
        rng.fill(&mut h[4..12]);
        h[12] = if rng.random_bool(0.9) { 5 << 4 } else { rng.random() };
        h[13] = *pick(rng, &[0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01]);
        if rng.random_bool(0.1) {
            h[13] = rng.random();
        }
        h.extend(payload);
        (PROTO_TCP, h)
    } else if kind < 60 {
        let mut h = vec![0u8; 8];
        h[0..2].copy_from_slice(&port(rng, 0).to_be_bytes());
        h[2..4].copy_from_slice(&port(rng, 1).to_be_bytes());
        h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        h.extend(payload);
        (PROTO_UDP, h)
    } else if kind < 85 {
        let proto = if v6 { PROTO_ICMPV6 } else { PROTO_ICMP };
        let error_types: &[u8] = if v6 { &[1, 2, 3, 4] } else { &[3, 11, 12] };
        let echo: &[u8] = if v6 { &[128, 129] } else { &[8, 0] };
        let nd: &[u8] = &[133, 134, 135, 136, 137, 130, 143];
        let ty = match rng.random_range(0..10) {
            0..=4 => *pick(rng, error_types),
            5..=7 => *pick(rng, echo),
            8 if v6 => *pick(rng, nd),
            _ => rng.random(),
        };
        let mut h = vec![ty, rng.random_range(0..5), 0, 0];
        h.extend_from_slice(&port(rng, 0).to_be_bytes());
        h.extend_from_slice(&[0, 1]);
        if error_types.contains(&ty) && depth == 0 {
            // Quote a packet: one the isolated or client pod might have sent.
            let (s, d) = aim.pair(rng);
            let (s, d) = if rng.random_bool(0.5) { (d, s) } else { (s, d) };
            let mut quoted = if rng.random_bool(0.3) {
                let (fs, fd, proto, sp, dp) = *pick(rng, &aim.flows);
                // The flow's packet as the other end sent it.
                ip_packet(rng, ip(fd), ip(fs), depth + 1, aim, Some((proto, dp, sp)))
            } else {
                ip_packet(rng, s, d, depth + 1, aim, None)
            };
            fix_checksums(&mut quoted);
            let keep = if rng.random_bool(0.7) {
                quoted.len()
            } else {
                rng.random_range(ETH..=quoted.len())
            };
            h.extend_from_slice(&quoted[ETH..keep]);
        } else {
            h.extend(payload);
        }
        (proto, h)
    } else if kind < 90 {
        let mut h = vec![0u8; 12];
        h[0..2].copy_from_slice(&port(rng, 0).to_be_bytes());
        h[2..4].copy_from_slice(&port(rng, 1).to_be_bytes());
        h.extend(payload);
        (PROTO_SCTP, h)
    } else {
        (rng.random(), payload)
    }
}

/// An Ethernet frame with an IP packet from `s` to `d`: IPv4 options,
/// IPv6 extension chains and fragments at random, checksums left to the
/// caller.
fn ip_packet(rng: &mut TestRng, s: IpAddr, d: IpAddr, depth: u32, aim: &Aim, force: Option<(u8, u16, u16)>) -> Vec<u8> {
    let v6 = s.is_ipv6();
    let (proto, mut seg) = l4(rng, v6, depth, aim, force);
    let frag_ids = [0x4242u32, 0x4343, 0x4444];
    let mut b = Vec::new();
    b.extend_from_slice(&GW_MAC);
    b.extend_from_slice(&POD_MAC);
    match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let opts = if rng.random_bool(0.1) {
                4 * rng.random_range(1..=10)
            } else {
                0
            };
            let mut h = vec![0x45 + (opts / 4) as u8, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend((0..opts).map(|_| *pick(rng, &[0u8, 1, 1, 7, 68, 131])));
            if rng.random_bool(0.15) {
                let id = *pick(rng, &frag_ids) as u16;
                h[4..6].copy_from_slice(&id.to_be_bytes());
                let field: u16 = if rng.random_bool(0.5) {
                    0x2000
                } else {
                    rng.random_range(1..0x2000u16) | if rng.random_bool(0.5) { 0x2000 } else { 0 }
                };
                h[6..8].copy_from_slice(&field.to_be_bytes());
            }
            let tot = (h.len() + seg.len()) as u16;
            h[2..4].copy_from_slice(&tot.to_be_bytes());
            b.extend_from_slice(&[0x08, 0x00]);
            b.extend(h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut chain: Vec<(u8, Vec<u8>)> = Vec::new();
            if rng.random_bool(0.25) {
                for i in 0..rng.random_range(1..=10) {
                    let t = *pick(rng, &[0u8, 0, 43, 60, 60, 44, 51, 59, 50]);
                    let body = match t {
                        44 => {
                            let offset = if rng.random_bool(0.5) {
                                0
                            } else {
                                rng.random_range(1..0x2000u16)
                            };
                            let more = rng.random_bool(0.6);
                            let mut f = vec![0u8; 8];
                            f[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                            f[4..8].copy_from_slice(&pick(rng, &frag_ids).to_be_bytes());
                            f
                        }
                        51 => {
                            let n = rng.random_range(1..4usize);
                            let mut a = vec![0u8; (n + 2) * 4];
                            a[1] = n as u8;
                            a
                        }
                        _ => {
                            let n = rng.random_range(0..3usize);
                            let mut e = vec![0u8; (n + 1) * 8];
                            e[1] = n as u8;
                            if i > 0 && t == 0 {
                                e[2] = 1; // a late Hop-by-Hop
                            }
                            e
                        }
                    };
                    chain.push((t, body));
                }
            }
            let mut ext = Vec::new();
            for (i, (_, body)) in chain.iter().enumerate() {
                let mut h = body.clone();
                h[0] = chain.get(i + 1).map_or(proto, |e| e.0);
                ext.extend(h);
            }
            let first = chain.first().map_or(proto, |e| e.0);
            let mut h = vec![0x60, 0, 0, 0, 0, 0, first, 64];
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let payload_len = (ext.len() + seg.len()) as u16;
            h[4..6].copy_from_slice(&payload_len.to_be_bytes());
            b.extend_from_slice(&[0x86, 0xdd]);
            b.extend(h);
            b.extend(ext);
        }
        _ => unreachable!("one family"),
    }
    b.append(&mut seg);
    b
}

/// One frame: mostly IP from the aim's addresses, some ARP, VLAN-tagged
/// and other ethertypes; a third mutated afterwards.
fn frame(rng: &mut TestRng, aim: &Aim) -> Case {
    let mut b = match rng.random_range(0..100) {
        0..=19 => {
            let (s, d, proto, sp, dp) = *pick(rng, &aim.flows);
            let mut b = ip_packet(rng, ip(s), ip(d), 0, aim, Some((proto, sp, dp)));
            fix_checksums(&mut b);
            b
        }
        20..=84 => {
            let (s, d) = aim.pair(rng);
            let mut b = ip_packet(rng, s, d, 0, aim, None);
            fix_checksums(&mut b);
            b
        }
        85..=91 => {
            let mac = if rng.random_bool(0.8) {
                POD_MAC
            } else {
                [2, 0, 0, 0, 0, rng.random()]
            };
            let sha = if rng.random_bool(0.8) {
                mac
            } else {
                [2, 0, 0, 0, 0, rng.random()]
            };
            let spa = *pick(rng, &["10.244.1.5", "10.244.1.6", "0.0.0.0", "10.244.1.9"]);
            arp(
                mac,
                sha,
                spa,
                pick::<&str>(rng, &["10.244.0.1", "10.244.1.5", "10.244.1.6"]),
            )
            .bytes
        }
        _ => {
            let (s, d) = aim.pair(rng);
            let mut b = ip_packet(rng, s, d, 0, aim, None);
            fix_checksums(&mut b);
            let random: [u8; 2] = [rng.random(), rng.random()];
            let tag: [u8; 2] = *pick(rng, &[[0x81, 0x00], [0x88, 0xa8], [0x88, 0xcc], random]);
            if rng.random_bool(0.7) {
                let mut t = tag.to_vec();
                t.extend_from_slice(&[0, rng.random_range(0..3)]);
                b.splice(12..12, t);
            } else {
                b[12..14].copy_from_slice(&tag);
            }
            b
        }
    };
    let mut csum_valid = true;
    // No device delivers more than its MTU (1500 here) in one frame.
    if b.len() > ETH + 1500 {
        b.truncate(ETH + 1500);
        csum_valid = false;
    }
    if rng.random_bool(0.33) {
        csum_valid = false;
        match rng.random_range(0..4) {
            // A frame is at least an Ethernet header (the kernel's test run
            // refuses less, as no device delivers less).
            0 if b.len() > ETH => {
                let at = rng.random_range(ETH..=b.len());
                b.truncate(at);
            }
            1 => {
                for _ in 0..rng.random_range(1..5) {
                    if !b.is_empty() {
                        let at = rng.random_range(0..b.len());
                        b[at] = rng.random();
                    }
                }
            }
            2 if b.len() > ETH => b[ETH] = rng.random(), // version and ihl
            _ => {
                let extra = rng.random_range(1..40);
                b.extend((0..extra).map(|_| rng.random::<u8>()));
            }
        }
    }
    Case { bytes: b, csum_valid }
}

fn v(i: usize) -> usize {
    i
}

/// `Dp::run`; None when the kernel refuses to run the frame (an IP frame
/// cut inside its IP header: the test run checks what a device would not).
fn run(dp: &Dp, prog: &str, bytes: &[u8], what: impl Fn() -> String) -> Option<(u32, Frame)> {
    use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
    let p: &SchedClassifier = dp.ebpf.program(prog).unwrap().try_into().unwrap();
    let mut out = vec![0u8; bytes.len() + 128];
    let r = match p.test_run(TestRunOptions {
        data_in: Some(bytes),
        data_out: Some(&mut out),
        ..Default::default()
    }) {
        Ok(r) => r,
        Err(e) => {
            let cut = read_ip(bytes).is_none() && bytes.len() < ETH + 40;
            assert!(cut, "{}: test run: {e}", what());
            return None;
        }
    };
    out.truncate(r.data_size_out as usize);
    Some((r.return_value, Frame { bytes: out }))
}

/// Tallies for the report.
#[derive(Default)]
struct Tally {
    verdicts: BTreeMap<u32, usize>,
    ip: usize,
    rewritten: usize,
    /// Frames the test run would not take.
    refused: usize,
}

impl Tally {
    fn report(&self, what: &str, dp: &Dp) {
        let reasons: BTreeSet<&str> = Reason::ALL
            .iter()
            .filter(|r| {
                [Direction::Egress, Direction::Ingress]
                    .iter()
                    .any(|d| dp.maps.observe().count(**r, *d).unwrap_or(0) > 0)
            })
            .map(|r| r.name())
            .collect();
        eprintln!(
            "fuzz {what}: seed {:#x}, {} frames run ({} IP, {} rewritten; {} cut too short to run), verdicts {:?}, reasons seen {:?}",
            seed(),
            self.verdicts.values().sum::<usize>(),
            self.ip,
            self.rewritten,
            self.refused,
            self.verdicts,
            reasons
        );
    }
}

#[test]
fn fuzzed_frames_from_a_pod_never_leave_spoofed() {
    if !root("fuzzed_frames_from_a_pod_never_leave_spoofed") {
        return;
    }
    let mut dp = Dp::new();
    for a in CLIENT {
        dp.pod(a);
    }
    dp.service(
        "10.96.0.10",
        80,
        PROTO_TCP,
        &[(1, "10.244.2.7", 8080), (2, "10.244.1.5", 8080)],
    );
    dp.service("10.96.0.10", 53, PROTO_UDP, &[(3, "10.244.2.7", 5353)]);
    dp.service_full(
        "10.96.0.11",
        80,
        PROTO_TCP,
        &[],
        sluice_tc_datapath::maps::lb::Algorithm::Random,
        true,
    );
    dp.service("fd00:96::a", 80, PROTO_TCP, &[(4, "fd00:244::2:7", 8080)]);
    dp.service(
        "fd00:96::a",
        53,
        PROTO_UDP,
        &[(5, "fd00:244::2:7", 5353), (6, "fd00:244::1:5", 5353)],
    );
    dp.service_full(
        "fd00:96::b",
        80,
        PROTO_TCP,
        &[],
        sluice_tc_datapath::maps::lb::Algorithm::Random,
        true,
    );
    let own: BTreeSet<IpAddr> = CLIENT.iter().map(|a| ip(a)).collect();
    let aim = Aim::egress();
    let mut rng = rng(1);
    let mut t = Tally::default();
    for i in 0..frames() {
        let case = frame(&mut rng, &aim);
        let Some((verdict, out)) = run(&dp, EGRESS, &case.bytes, || format!("frame {i} {:02x?}", case.bytes)) else {
            t.refused += 1;
            continue;
        };
        *t.verdicts.entry(verdict).or_default() += 1;
        let what = format!(
            "seed {:#x} frame {} in {:02x?} out {:02x?}",
            seed(),
            v(i),
            case.bytes,
            out.bytes
        );
        if verdict == TC_ACT_SHOT {
            continue;
        }
        assert!(
            verdict == TC_ACT_OK || verdict == TC_ACT_REDIRECT,
            "{what}: verdict {verdict}"
        );
        // Only untagged IPv4, IPv6 and ARP leave, from the pod's MAC.
        let ethertype = [out.bytes[12], out.bytes[13]];
        assert!(
            [[0x08, 0x00], [0x86, 0xdd], [0x08, 0x06]].contains(&ethertype),
            "{what}: ethertype {ethertype:02x?} passed"
        );
        if ethertype == [0x08, 0x06] {
            let sha: [u8; 6] = out.bytes[ETH + 8..ETH + 14].try_into().unwrap();
            let spa = ipv4_of(&out.bytes[ETH + 14..ETH + 18]);
            assert_eq!(out.bytes[6..12], POD_MAC, "{what}: ARP from another MAC");
            assert_eq!(sha, POD_MAC, "{what}: ARP speaking for another MAC");
            assert!(
                own.contains(&spa) || spa == ip("0.0.0.0"),
                "{what}: ARP speaking for {spa}"
            );
            continue;
        }
        let out_ip = read_ip(&out.bytes).unwrap_or_else(|| panic!("{what}: passed, not IP"));
        t.ip += 1;
        let link_local = |a: IpAddr| match a {
            IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80 || a.is_unspecified(),
            IpAddr::V4(_) => false,
        };
        // An answer turned around into the pod (a reject, a hairpin).
        let into_pod = out.bytes[..6] == POD_MAC && (own.contains(&out_ip.daddr) || link_local(out_ip.daddr));
        let link_local = link_local(out_ip.saddr);
        assert!(
            own.contains(&out_ip.saddr) || (link_local && out_ip.proto == PROTO_ICMPV6) || into_pod,
            "{what}: left with source {}",
            out_ip.saddr
        );
        // A global source is vouched for with its MAC (a link-local one
        // only carries neighbour discovery, and no map knows it).
        if !into_pod && !link_local {
            assert_eq!(out.bytes[6..12], POD_MAC, "{what}: left with another MAC");
        }
        if out.bytes != case.bytes {
            t.rewritten += 1;
            if case.csum_valid {
                assert_checksums(&out.bytes, &what);
            }
        }
    }
    t.report("egress", &dp);
    assert!(
        t.ip > frames() / 4 && t.rewritten > 100,
        "the fuzzer reached the interesting paths"
    );
}

/// What the isolated pod's policy and flows admit, worked out from the
/// frames themselves (not from the maps).
struct Oracle {
    /// (peer, peer port, pod port, protocol) of the pod's flows.
    flows: BTreeSet<(IpAddr, u16, u16, u8)>,
    /// A datagram's ports, from its first fragment: (src, dst, id, proto).
    firsts: BTreeMap<(IpAddr, IpAddr, u32, u8), (u16, u16)>,
}

impl Oracle {
    /// The ports a packet is judged by: its own, or its first fragment's.
    fn ports(&mut self, b: &[u8], p: &Ip) -> Option<(u16, u16)> {
        if ![PROTO_TCP, PROTO_UDP, PROTO_SCTP].contains(&p.proto) {
            return None;
        }
        let key = (p.saddr, p.daddr, p.frag_id, p.proto);
        match p.frag {
            2 => self.firsts.get(&key).copied(),
            f => {
                let ports = ports(b, p)?;
                if f == 1 {
                    self.firsts.insert(key, ports);
                }
                Some(ports)
            }
        }
    }

    /// Whether the isolated pod may get this packet: a neighbour-discovery
    /// or MLD message, the rule (peer A, UDP 53), a flow it has, or an
    /// error quoting a packet of such a flow.
    fn admits(&mut self, b: &[u8], p: &Ip, ports: Option<(u16, u16)>) -> bool {
        let icmp = (p.proto == PROTO_ICMP && !p.v6) || (p.proto == PROTO_ICMPV6 && p.v6);
        if icmp && p.frag == 0 {
            let ty = *b.get(p.l4).unwrap_or(&0);
            if p.v6 && ((130..=137).contains(&ty) || ty == 143) {
                return true;
            }
            let error = if p.v6 {
                (1..=4).contains(&ty)
            } else {
                [3, 11, 12].contains(&ty)
            };
            if error {
                let mut quoted = b[..ETH].to_vec();
                quoted.extend_from_slice(b.get(p.l4 + 8..).unwrap_or(&[]));
                if let Some(q) = read_ip(&quoted)
                    && q.frag != 2
                    && let Some((sport, dport)) = ports_of_quote(&quoted, &q)
                    && self.flows.contains(&(q.daddr, dport, sport, q.proto))
                {
                    return true;
                }
            }
        }
        let Some((sport, dport)) = ports else { return false };
        if self.flows.contains(&(p.saddr, sport, dport, p.proto)) {
            return true;
        }
        if PEER_A.iter().any(|a| ip(a) == p.saddr) && p.proto == PROTO_UDP && dport == 53 {
            self.flows.insert((p.saddr, sport, dport, p.proto));
            return true;
        }
        false
    }
}

fn ports_of_quote(b: &[u8], q: &Ip) -> Option<(u16, u16)> {
    if [PROTO_TCP, PROTO_UDP].contains(&q.proto) {
        ports(b, q)
    } else {
        None
    }
}

#[test]
fn fuzzed_frames_reach_an_isolated_pod_only_as_allowed() {
    if !root("fuzzed_frames_reach_an_isolated_pod_only_as_allowed") {
        return;
    }
    let mut dp = Dp::new();
    for a in ISOLATED {
        dp.pod_id(a, ISOLATED_EP);
    }
    let policy = dp.maps.policy_mut();
    let entry = EpPolicyValue {
        identity: 300,
        ingress_policy: 41,
        egress_policy: 42,
        flags: POLICY_F_INGRESS,
        ..Default::default()
    };
    policy.set_endpoint_policy(ISOLATED_EP, entry).unwrap();
    for a in PEER_A {
        policy.set_identity(ip(a), 301).unwrap();
    }
    let rule = Rule {
        dir: Direction::Ingress,
        identity: 301,
        proto: PROTO_UDP,
        ports: Some(PortRange { first: 53, last: 53 }),
        policy: 41,
    };
    policy.insert_rule(ISOLATED_EP, &rule).unwrap();
    let mut entry = policy.endpoint_policy(ISOLATED_EP).unwrap().unwrap();
    entry.kinds[Direction::Ingress as usize] |= rule.kinds();
    policy.set_endpoint_policy(ISOLATED_EP, entry).unwrap();
    // Its own flow to peer B, opened at its egress.
    let mut oracle = Oracle {
        flows: BTreeSet::new(),
        firsts: BTreeMap::new(),
    };
    for (pod, peer) in ISOLATED.iter().zip(PEER_B) {
        let (verdict, _) = dp.run(EGRESS, &Frame::new(pod, peer, 5000, 9999, PROTO_UDP, 0, b"hello"));
        assert_eq!(verdict, TC_ACT_OK);
        oracle.flows.insert((ip(peer), 9999, 5000, PROTO_UDP));
    }
    // And a Service flow: its answers are reverse-NATed on the way in.
    for (pod, (vip, backend)) in ISOLATED
        .iter()
        .zip([("10.96.0.10", PEER_A[0]), ("fd00:96::a", PEER_A[1])])
    {
        dp.service(
            vip,
            53,
            PROTO_UDP,
            &[(if vip.contains(':') { 2 } else { 1 }, backend, 5353)],
        );
        let (verdict, out) = dp.run(EGRESS, &Frame::new(pod, vip, 5001, 53, PROTO_UDP, 0, b"q"));
        assert_ne!(verdict, TC_ACT_SHOT);
        assert_eq!(out.addrs().1, ip(backend));
        oracle.flows.insert((ip(backend), 5353, 5001, PROTO_UDP));
    }
    let aim = Aim::ingress();
    let mut rng = rng(2);
    let mut t = Tally::default();
    let isolated: BTreeSet<IpAddr> = ISOLATED.iter().map(|a| ip(a)).collect();
    let mut seen_malformed = 0;
    for i in 0..frames() {
        let case = frame(&mut rng, &aim);
        let Some((verdict, out)) = run(&dp, INGRESS, &case.bytes, || format!("frame {i} {:02x?}", case.bytes)) else {
            t.refused += 1;
            continue;
        };
        *t.verdicts.entry(verdict).or_default() += 1;
        let what = format!(
            "seed {:#x} frame {} in {:02x?} out {:02x?}",
            seed(),
            v(i),
            case.bytes,
            out.bytes
        );
        // The oracle reads the frame as the program got it; a frame the
        // program found malformed never counted (its first fragment left
        // no ports).
        let malformed = dp
            .maps
            .observe()
            .count(Reason::DropMalformed, Direction::Ingress)
            .unwrap();
        let was_malformed = malformed > seen_malformed;
        seen_malformed = malformed;
        let Some(p) = read_ip(&case.bytes) else { continue };
        t.ip += 1;
        if was_malformed {
            assert_eq!(verdict, TC_ACT_SHOT, "{what}: malformed, yet passed");
            continue;
        }
        let ports = oracle.ports(&case.bytes, &p);
        if !isolated.contains(&p.daddr) {
            continue;
        }
        let admitted = oracle.admits(&case.bytes, &p, ports);
        if verdict != TC_ACT_SHOT && !admitted {
            panic!("{what}: reached the isolated pod without a rule or a flow ({p:?}, ports {ports:?})");
        }
        if verdict != TC_ACT_SHOT && out.bytes != case.bytes {
            t.rewritten += 1;
            if case.csum_valid {
                assert_checksums(&out.bytes, &what);
            }
        }
    }
    t.report("ingress", &dp);
    let denied = dp.maps.observe().count(Reason::DropPolicy, Direction::Ingress).unwrap();
    assert!(
        t.ip > frames() / 2 && denied > 100,
        "the fuzzer reached the policy ({denied} denied)"
    );
}

// ---- the uplink: frames from outside the node ----

/// This node's addresses: NodePorts and hostPorts answer on them, and a
/// backend elsewhere sees connections from them (SNAT).
const NODE: [&str; 2] = ["172.31.0.11", "fd00:31::11"];
/// Backends: a pod of this node behind the test device as its parent, one
/// behind another parent, one on another node.
const LOCAL: [&str; 2] = ["10.244.1.5", "fd00:244::1:5"];
const LOCAL_OTHER_PARENT: [&str; 2] = ["10.244.1.6", "fd00:244::1:6"];
const REMOTE: [&str; 2] = ["10.244.2.7", "fd00:244::2:7"];
/// A load-balancer IP that admits the first of each family's OUTSIDE
/// clients only (its source ranges), and an external IP without endpoints.
const LB: [&str; 2] = ["198.51.100.10", "2001:db8:100::10"];
const EXT: [&str; 2] = ["198.51.100.20", "2001:db8:100::20"];
const OUTSIDE: [&str; 4] = ["203.0.113.5", "192.0.2.9", "2001:db8:5::5", "2001:db8:9::9"];
const IN_RANGE: [&str; 2] = ["203.0.113.0/24", "2001:db8:5::/48"];

impl Aim {
    fn uplink() -> Aim {
        let mut sources: Vec<&str> = Vec::new();
        for _ in 0..4 {
            sources.extend(OUTSIDE);
        }
        // Spoofers: this node's pods, a backend elsewhere, the node itself.
        sources.extend(LOCAL);
        sources.extend(REMOTE);
        sources.extend(NODE);
        sources.extend(["0.0.0.0", "::"]);
        let mut destinations: Vec<&str> = Vec::new();
        for _ in 0..4 {
            destinations.extend(NODE);
        }
        for _ in 0..3 {
            destinations.extend(LB);
        }
        destinations.extend(EXT);
        destinations.extend(LOCAL);
        destinations.extend(REMOTE);
        destinations.extend(["10.0.0.1", "fd5c:5c5c::1"]);
        let flows = vec![
            (OUTSIDE[0], NODE[0], PROTO_TCP, 40000, 80),
            (OUTSIDE[1], NODE[0], PROTO_UDP, 40000, 53),
            (OUTSIDE[2], NODE[1], PROTO_TCP, 40000, 80),
            (OUTSIDE[3], NODE[1], PROTO_UDP, 40001, 53),
            (OUTSIDE[0], LB[0], PROTO_TCP, 40000, 80),
            (OUTSIDE[1], LB[0], PROTO_TCP, 40002, 80),
            (OUTSIDE[2], LB[1], PROTO_TCP, 40000, 80),
            (OUTSIDE[3], LB[1], PROTO_TCP, 40000, 80),
            (OUTSIDE[0], EXT[0], PROTO_TCP, 40000, 81),
            (OUTSIDE[2], EXT[1], PROTO_UDP, 40000, 81),
            (OUTSIDE[1], NODE[0], PROTO_TCP, 40000, 5001),
            (OUTSIDE[3], NODE[1], PROTO_UDP, 40000, 5001),
        ];
        Aim {
            sources,
            destinations,
            flows,
        }
    }
}

/// A frontend of the uplink test: address, port, protocol, backends
/// (address, port), whether it rejects.
type Frontend<'a> = (&'a str, u16, u8, &'a [(&'a str, u16)], bool);

fn ip_of(a: &Addr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*a);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// Frames aimed at the uplink's reply entries as they stand: a backend
/// elsewhere answering this node's SNAT port (a real reply), or a frame
/// from outside claiming to be this node's pod answering a client (a
/// local backend's reply leaves through the uplink's egress; one coming in
/// is forged).
fn reply_frames(dp: &Dp, rng: &mut TestRng, aim: &Aim) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (k, v) in dp.maps.uplink().nat_entries().unwrap() {
        if out.len() >= 96 {
            break;
        }
        let (s, d) = (ip_of(&k.saddr), ip_of(&k.daddr));
        let (sport, dport) = (u16::from_be(k.sport), u16::from_be(k.dport));
        if v.flags & NAT_F_REPLY != 0 {
            let mut b = ip_packet(rng, s, d, 1, aim, Some((k.proto, sport, dport)));
            fix_checksums(&mut b);
            out.push(b);
        } else {
            // A router's error about what the frontend sent the client.
            let mut q = ip_packet(rng, d, s, 1, aim, Some((k.proto, dport, sport)));
            fix_checksums(&mut q);
            let keep = if rng.random_bool(0.5) {
                q.len()
            } else {
                (ETH + 48 + 8).min(q.len())
            };
            let (router, hdr) = if s.is_ipv6() {
                ("2001:db8:ff::1", [2, 0, 0, 0, 0, 0, 5, 0])
            } else {
                ("198.18.0.1", [3, 4, 0, 0, 0, 0, 5, 0])
            };
            out.push(icmp(router, &d.to_string(), hdr, &q[ETH..keep]).bytes);
        }
    }
    out
}

/// Later fragments, judged by their flows. A later fragment takes the
/// ports of the last first fragment with its addresses and identification
/// that the programs parsed (frag.h; the programs share the table and
/// refuse some frames the oracle would read, so the frames alone do not
/// always tell which): it must be sent where a flow between its two
/// addresses went, as the oracle saw it translated or as a NAT entry that
/// applies in its direction says (entries only frontends' flows make).
#[derive(Default)]
struct Fragments {
    translated: BTreeMap<FiveTuple, (IpAddr, IpAddr)>,
}

/// (source, destination, source port, destination port, protocol).
type FiveTuple = (IpAddr, IpAddr, u16, u16, u8);

impl Fragments {
    fn translated(&mut self, p: &Ip, (sport, dport): (u16, u16), o: &Ip) {
        self.translated
            .insert((p.saddr, p.daddr, sport, dport, p.proto), (o.saddr, o.daddr));
    }

    fn assert_follows(&self, dp: &Dp, ingress: bool, p: &Ip, o: &Ip, what: &str) {
        let mut want: BTreeSet<(IpAddr, IpAddr)> = self
            .translated
            .iter()
            .filter(|(k, _)| (k.0, k.1, k.4) == (p.saddr, p.daddr, p.proto))
            .map(|(_, v)| *v)
            .collect();
        for (k, v) in dp.maps.uplink().nat_entries().unwrap() {
            let applies = if v.flags & NAT_F_REPLY == 0 {
                ingress
            } else {
                v.flags & (if ingress { NAT_F_SNAT } else { NAT_F_LOCAL }) != 0
            };
            if applies && (ip_of(&k.saddr), ip_of(&k.daddr), k.proto) == (p.saddr, p.daddr, p.proto) {
                want.insert((ip_of(&v.saddr), ip_of(&v.daddr)));
            }
        }
        assert!(
            want.contains(&(o.saddr, o.daddr)),
            "{what}: a later fragment rewritten as no flow between its addresses was ({want:?})"
        );
    }
}

/// Frames from outside through the uplink's ingress: every rewrite is one
/// the frontends explain, and what it sends on is held to them:
///
/// - to a backend, only what came to a frontend (NodePort, load-balancer
///   IP, hostPort), from the client itself (a local backend) or this
///   node's address (SNAT), and never from a client the source ranges
///   leave out;
/// - back to a client, only a reply of a backend elsewhere to this node's
///   SNAT port: a frame from outside claiming to be this node's pod is no
///   reply;
/// - turned around (a reset, an ICMP error) to the sender;
///
/// later fragments and what is no frontend's pass untouched, and what is
/// rewritten carries valid checksums.
#[test]
fn fuzzed_frames_from_outside_meet_only_the_frontends() {
    if !root("fuzzed_frames_from_outside_meet_only_the_frontends") {
        return;
    }
    use sluice_tc_datapath::loader::UPLINK_IN;
    use sluice_tc_datapath::maps::endpoints::Endpoint;
    use sluice_tc_datapath::maps::hostport::HostPort;
    use sluice_tc_datapath::maps::lb::{Algorithm, Backend, ServiceSpec};
    use std::net::SocketAddr;

    let mut dp = Dp::new();
    let (n4, n6) = (ip(NODE[0]), ip(NODE[1]));
    let (IpAddr::V4(n4), IpAddr::V6(n6)) = (n4, n6) else {
        unreachable!()
    };
    dp.maps.uplink_mut().set_uplink(1, Some(n4), Some(n6)).unwrap();
    for (addrs, parent, id) in [(LOCAL, 1, 21), (LOCAL_OTHER_PARENT, 2, 22)] {
        for a in addrs {
            dp.maps
                .endpoints_mut()
                .add(&Endpoint {
                    addr: ip(a),
                    ifindex: 9,
                    endpoint_id: id,
                    mac: POD_MAC,
                    parent_ifindex: parent,
                    netns_cookie: 0,
                })
                .unwrap();
        }
    }
    // (frontend, port, proto) -> backends (address, port); each frontend in
    // both scopes, as the agent writes them.
    let mut fronts: BTreeSet<(IpAddr, u16, u8)> = BTreeSet::new();
    let mut backends: BTreeSet<(IpAddr, u16, u8)> = BTreeSet::new();
    let mut rev = 100;
    let mut next_id = 1;
    for f in 0..2 {
        let web = [(LOCAL[f], 8080), (LOCAL_OTHER_PARENT[f], 8080), (REMOTE[f], 8080)];
        let dns = [(LOCAL[f], 5353), (REMOTE[f], 5353)];
        let specs: [Frontend; 4] = [
            (NODE[f], 80, PROTO_TCP, &web, false),
            (NODE[f], 53, PROTO_UDP, &dns, false),
            (LB[f], 80, PROTO_TCP, &web[..], false),
            (EXT[f], 81, PROTO_TCP, &[], true),
        ];
        for (vip, port, proto, bes, reject) in specs {
            let bes: Vec<Backend> = bes
                .iter()
                .map(|(a, p)| {
                    next_id += 1;
                    backends.insert((ip(a), *p, proto));
                    Backend {
                        id: next_id,
                        addr: ip(a),
                        port: *p,
                        active: true,
                    }
                })
                .collect();
            if !bes.is_empty() {
                fronts.insert((ip(vip), port, proto));
            }
            let ranged = vip == LB[f];
            for scope in [SVC_SCOPE_CLUSTER, SVC_SCOPE_EXTERNAL] {
                rev += 1;
                dp.maps
                    .lb_mut()
                    .upsert_service(&ServiceSpec {
                        vip: ip(vip),
                        port,
                        proto,
                        rev_nat_id: rev,
                        algorithm: Algorithm::Random,
                        affinity_timeout_secs: 0,
                        reject,
                        node_address: vip == NODE[f] && scope == SVC_SCOPE_CLUSTER,
                        scope,
                        source_ranges: ranged && scope == SVC_SCOPE_EXTERNAL,
                        node_denied: false,
                        draining: Vec::new(),
                        backends: bes.clone(),
                    })
                    .unwrap();
                if ranged && scope == SVC_SCOPE_EXTERNAL {
                    let (net, prefix) = IN_RANGE[f].split_once('/').unwrap();
                    dp.maps
                        .uplink_mut()
                        .add_source(rev, ip(net), prefix.parse().unwrap())
                        .unwrap();
                }
            }
        }
        for proto in [PROTO_TCP, PROTO_UDP] {
            dp.maps
                .hostports_mut()
                .put(&HostPort {
                    host: SocketAddr::new(ip(NODE[f]), 5001),
                    proto,
                    pod: SocketAddr::new(ip(LOCAL[f]), 9999),
                    endpoint_id: 21,
                })
                .unwrap();
            fronts.insert((ip(NODE[f]), 5001, proto));
            backends.insert((ip(LOCAL[f]), 9999, proto));
        }
    }
    let node = |a: IpAddr| if a.is_ipv4() { ip(NODE[0]) } else { ip(NODE[1]) };
    let local: BTreeSet<IpAddr> = LOCAL.iter().chain(&LOCAL_OTHER_PARENT).map(|a| ip(a)).collect();
    let lb: BTreeSet<IpAddr> = LB.iter().map(|a| ip(a)).collect();
    // IN_RANGE, read apart from the maps.
    let in_range = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets()[..3] == [203, 0, 113],
        IpAddr::V6(a) => a.segments()[..3] == [0x2001, 0xdb8, 5],
    };

    let aim = Aim::uplink();
    let mut rng = rng(3);
    let mut t = Tally::default();
    let (mut forwarded_local, mut snat, mut replies, mut turned, mut forged) = (0, 0, 0, 0, 0);
    let (mut remapped, mut remapped_errors) = (0, 0);
    // (client, its port, the port its backend sees instead)
    let mut remaps = BTreeSet::new();
    let (mut icmp_errors, mut later_fragments) = (0, 0);
    let mut frags = Fragments::default();
    let mut aimed: Vec<Vec<u8>> = Vec::new();
    for i in 0..frames() {
        if i % 256 == 0 {
            aimed = reply_frames(&dp, &mut rng, &aim);
        }
        let case = if !aimed.is_empty() && rng.random_bool(0.15) {
            let bytes = aimed[rng.random_range(0..aimed.len())].clone();
            if read_ip(&bytes).is_some_and(|p| local.contains(&p.saddr)) {
                forged += 1;
            }
            Case {
                bytes,
                csum_valid: true,
            }
        } else {
            frame(&mut rng, &aim)
        };
        let Some((verdict, out)) = run(&dp, UPLINK_IN, &case.bytes, || format!("frame {i} {:02x?}", case.bytes)) else {
            t.refused += 1;
            continue;
        };
        *t.verdicts.entry(verdict).or_default() += 1;
        let what = format!(
            "seed {:#x} frame {} in {:02x?} out {:02x?}",
            seed(),
            v(i),
            case.bytes,
            out.bytes
        );
        assert!(
            [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&verdict),
            "{what}: verdict {verdict}"
        );
        if verdict == TC_ACT_SHOT || out.bytes.get(ETH..) == case.bytes.get(ETH..) {
            continue;
        }
        let p = read_ip(&case.bytes).unwrap_or_else(|| panic!("{what}: rewrote what is not IP"));
        t.ip += 1;
        t.rewritten += 1;
        if case.csum_valid {
            assert_checksums(&out.bytes, &what);
        }
        let o = read_ip(&out.bytes).unwrap_or_else(|| panic!("{what}: rewritten into what is not IP"));
        if p.frag == 2 {
            frags.assert_follows(&dp, true, &p, &o, &what);
            later_fragments += 1;
            continue;
        }
        if (p.proto == PROTO_ICMP && !p.v6) || (p.proto == PROTO_ICMPV6 && p.v6) {
            // An error from the path about what a frontend sent a client,
            // handed to the backend as about what it sent.
            let quote_of = |b: &[u8], at: &Ip| -> Option<(Ip, u16, u16)> {
                let mut q = b[..ETH].to_vec();
                q.extend_from_slice(b.get(at.l4 + 8..)?);
                let qi = read_ip(&q)?;
                let (sp, dp) = ports(&q, &qi)?;
                Some((qi, sp, dp))
            };
            let (qi, qs, qd) = quote_of(&case.bytes, &p).unwrap_or_else(|| panic!("{what}: no quote"));
            let (qo, os, od) = quote_of(&out.bytes, &o).unwrap_or_else(|| panic!("{what}: no quote out"));
            assert!(
                fronts.contains(&(qi.saddr, qs, qi.proto)) && p.daddr == qi.saddr,
                "{what}: an error about no frontend's packet was translated"
            );
            assert!(
                backends.contains(&(qo.saddr, os, qo.proto)) && o.daddr == qo.saddr,
                "{what}: an error handed to no backend"
            );
            if (qo.daddr, od) == (qi.daddr, qd) {
                assert_eq!(o.saddr, p.saddr, "{what}: a local backend's error keeps its sender");
            } else if local.contains(&qo.saddr) && o.saddr == p.saddr {
                // A local backend's connection from another port of its
                // client: the quote names the port the backend knows.
                assert!(
                    qo.daddr == qi.daddr && remaps.contains(&(qi.daddr, qd, od)),
                    "{what}: a client's port changed in a quote where no remap was made"
                );
                remapped_errors += 1;
            } else {
                assert!(
                    qo.daddr == node(qo.daddr) && o.saddr == node(o.saddr),
                    "{what}: an error for a backend elsewhere is about its packet to this node, from this node"
                );
            }
            icmp_errors += 1;
            continue;
        }
        let (sport, dport) = ports(&case.bytes, &p).unwrap_or_else(|| panic!("{what}: no ports"));
        if o.saddr == p.daddr && o.daddr == p.saddr {
            // Turned around, or sent on to a client at a backend's address
            // (SNAT to it looks the same).
            frags.translated(&p, (sport, dport), &o);
            turned += 1;
            continue;
        }
        let (osport, odport) = ports(&out.bytes, &o).unwrap_or_else(|| panic!("{what}: no ports out"));
        // A client may itself stand at a backend's address and port: what
        // came from a backend and leaves from a frontend is a reply.
        if fronts.contains(&(o.saddr, osport, o.proto)) && backends.contains(&(p.saddr, sport, p.proto)) {
            assert!(
                !local.contains(&p.saddr),
                "{what}: a frame from outside spoke for this node's pod"
            );
            assert_eq!(
                p.daddr,
                node(p.daddr),
                "{what}: turned back to a client, but it was no reply to this node"
            );
            replies += 1;
            frags.translated(&p, (sport, dport), &o);
        } else if backends.contains(&(o.daddr, odport, o.proto)) {
            assert!(
                fronts.contains(&(p.daddr, dport, p.proto)),
                "{what}: sent to a backend, but it came to no frontend"
            );
            assert!(
                !lb.contains(&p.daddr) || in_range(p.saddr),
                "{what}: a client the source ranges leave out reached a backend"
            );
            if (o.saddr, osport) == (p.saddr, sport) {
                forwarded_local += 1;
            } else if local.contains(&o.daddr) {
                // Another connection holds the client's 4-tuple at this
                // backend: the client's address from another port.
                assert_eq!(o.saddr, p.saddr, "{what}: a local backend's client is kept");
                remaps.insert((p.saddr, sport, osport));
                remapped += 1;
            } else {
                assert_eq!(o.saddr, node(o.saddr), "{what}: sent on from another address");
                snat += 1;
            }
            frags.translated(&p, (sport, dport), &o);
        } else {
            panic!("{what}: rewritten as no frontend says");
        }
    }
    t.report("uplink", &dp);
    eprintln!(
        "fuzz uplink: {forwarded_local} to local backends ({remapped} from another client port), {snat} SNATed, {replies} replies, {turned} turned around, {forged} forged replies sent, {icmp_errors} errors from the path handed to backends ({remapped_errors} about a remapped port), {later_fragments} later fragments after their first"
    );
    assert!(
        forwarded_local > 50 && snat > 50 && replies > 50 && turned > 10 && forged > 50 && icmp_errors > 50,
        "the fuzzer reached the interesting paths"
    );

    // The uplink's egress, on the entries the ingress left: a frame leaving
    // is rewritten only as a local backend's reply (from the backend, to
    // its client, leaving from the frontend); the node's own traffic, a
    // remote backend's addresses and the rest leave untouched.
    use sluice_tc_datapath::loader::UPLINK_OUT;
    let (mut leaving, mut local_replies) = (0, 0);
    for i in 0..frames() / 2 {
        if i % 256 == 0 {
            aimed = reply_frames(&dp, &mut rng, &aim);
        }
        let case = if !aimed.is_empty() && rng.random_bool(0.3) {
            Case {
                bytes: aimed[rng.random_range(0..aimed.len())].clone(),
                csum_valid: true,
            }
        } else {
            frame(&mut rng, &aim)
        };
        let Some((verdict, out)) = run(&dp, UPLINK_OUT, &case.bytes, || {
            format!("frame {i} {:02x?}", case.bytes)
        }) else {
            continue;
        };
        let what = format!(
            "seed {:#x} egress frame {} in {:02x?} out {:02x?}",
            seed(),
            v(i),
            case.bytes,
            out.bytes
        );
        assert!([TC_ACT_OK, TC_ACT_SHOT].contains(&verdict), "{what}: verdict {verdict}");
        leaving += 1;
        if verdict == TC_ACT_SHOT || out.bytes.get(ETH..) == case.bytes.get(ETH..) {
            continue;
        }
        let p = read_ip(&case.bytes).unwrap_or_else(|| panic!("{what}: rewrote what is not IP"));
        let o = read_ip(&out.bytes).unwrap_or_else(|| panic!("{what}: rewritten into what is not IP"));
        if case.csum_valid {
            assert_checksums(&out.bytes, &what);
        }
        if p.frag == 2 {
            frags.assert_follows(&dp, false, &p, &o, &what);
            continue;
        }
        let (sport, dport) = ports(&case.bytes, &p).unwrap();
        let (osport, odport) = ports(&out.bytes, &o).unwrap();
        assert!(
            local.contains(&p.saddr) && backends.contains(&(p.saddr, sport, p.proto)),
            "{what}: rewritten on its way out, but it is no local backend's"
        );
        assert!(
            fronts.contains(&(o.saddr, osport, o.proto))
                && o.daddr == p.daddr
                && (odport == dport || remaps.contains(&(p.daddr, odport, dport))),
            "{what}: a local backend's reply must leave from its frontend to its client (at the port the client sent from)"
        );
        frags.translated(&p, (sport, dport), &o);
        local_replies += 1;
    }
    eprintln!("fuzz uplink egress: {leaving} frames, {local_replies} local backends' replies turned back");
    assert!(local_replies > 50, "the fuzzer reached the local replies");
}

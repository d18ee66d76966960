//! The harness of the packet-level tests: frames built byte by byte with
//! their checksums, and the real programs run on them through
//! BPF_PROG_TEST_RUN with their maps at hand.
#![allow(dead_code)]

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::layout::*;
use sluice_tc_datapath::loader;
use sluice_tc_datapath::maps::endpoints::Endpoint;
use sluice_tc_datapath::maps::lb::{Algorithm, Backend, ServiceSpec};
use sluice_tc_datapath::maps::{EVENTS, Maps, Source};
use std::net::IpAddr;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
/// A translated packet is handed to the kernel's neighbour output for its
/// backend (bpf_redirect_neigh), not sent on with the gateway's MAC.
pub const TC_ACT_REDIRECT: u32 = 7;
pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub fn root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root (BPF_PROG_TEST_RUN)");
    false
}

/// Say a test did not run, and why, where the suite's summary reads it
/// (SLUICE_SKIP_LOG): a skip never counts as a pass.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIP {test}: {why}");
    if let Ok(p) = std::env::var("SLUICE_SKIP_LOG") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
        writeln!(f, "{test}: {why}").unwrap();
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub use sluice_tc_datapath::checksum;

/// The EtherType and an IPv4 header (checksum filled in) for `l4_len`
/// bytes of `proto`; `flags` is the high byte of the fragment field (0x40 = DF).
pub fn ipv4_header(s: std::net::Ipv4Addr, d: std::net::Ipv4Addr, proto: u8, l4_len: usize, flags: u8) -> Vec<u8> {
    let mut h = 0x0800u16.to_be_bytes().to_vec();
    h.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, flags, 0, 64, proto, 0, 0]);
    h[4..6].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    let c = checksum::of(&h[2..], 0);
    h[12..14].copy_from_slice(&c.to_be_bytes());
    h
}

#[derive(Clone)]
pub struct Frame {
    pub bytes: Vec<u8>,
}

pub const ETH: usize = 14;

impl Frame {
    /// Ethernet + IPv4/IPv6 + TCP (flags) or UDP, with valid checksums.
    pub fn new(src: &str, dst: &str, sport: u16, dport: u16, proto: u8, tcp_flags: u8, payload: &[u8]) -> Frame {
        let (src, dst) = (ip(src), ip(dst));
        let l4_len = if proto == PROTO_TCP { 20 } else { 8 } + payload.len();
        let mut l4 = vec![0u8; l4_len];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        if proto == PROTO_TCP {
            l4[4..8].copy_from_slice(&1000u32.to_be_bytes());
            l4[12] = 5 << 4;
            l4[13] = tcp_flags;
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            l4[20..].copy_from_slice(payload);
        } else {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4[8..].copy_from_slice(payload);
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&GW_MAC);
        bytes.extend_from_slice(&POD_MAC);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => bytes.extend(ipv4_header(s, d, proto, l4_len, 0x40)),
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                bytes.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&(l4_len as u16).to_be_bytes());
                h.extend_from_slice(&[proto, 64]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                bytes.extend_from_slice(&h);
            }
            _ => panic!("mixed families"),
        }
        bytes.extend_from_slice(&l4);
        let mut f = Frame { bytes };
        let c = f.l4_csum_expected();
        let off = f.l4_csum_off();
        f.bytes[off..off + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The same frame, addressed (L2) from `src` to `dst`.
    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Frame {
        self.bytes[..6].copy_from_slice(&dst);
        self.bytes[6..12].copy_from_slice(&src);
        self
    }

    pub fn v6(&self) -> bool {
        self.bytes[12..14] == [0x86, 0xdd]
    }
    pub fn l4(&self) -> usize {
        ETH + if self.v6() { 40 } else { 20 }
    }
    pub fn proto(&self) -> u8 {
        if self.v6() {
            self.bytes[ETH + 6]
        } else {
            self.bytes[ETH + 9]
        }
    }
    pub fn l4_csum_off(&self) -> usize {
        self.l4() + if self.proto() == PROTO_TCP { 16 } else { 6 }
    }
    pub fn addrs(&self) -> (IpAddr, IpAddr) {
        let b = &self.bytes;
        if self.v6() {
            let s: [u8; 16] = b[ETH + 8..ETH + 24].try_into().unwrap();
            let d: [u8; 16] = b[ETH + 24..ETH + 40].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d))
        } else {
            let s: [u8; 4] = b[ETH + 12..ETH + 16].try_into().unwrap();
            let d: [u8; 4] = b[ETH + 16..ETH + 20].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d))
        }
    }
    pub fn ports(&self) -> (u16, u16) {
        let l4 = self.l4();
        let b = &self.bytes;
        (
            u16::from_be_bytes([b[l4], b[l4 + 1]]),
            u16::from_be_bytes([b[l4 + 2], b[l4 + 3]]),
        )
    }
    /// The L4 checksum recomputed from scratch with the checksum field zeroed.
    pub fn l4_csum_expected(&self) -> u16 {
        let l4 = self.l4();
        let mut seg = self.bytes[l4..].to_vec();
        let off = self.l4_csum_off() - l4;
        seg[off] = 0;
        seg[off + 1] = 0;
        let mut pseudo = Vec::new();
        if self.v6() {
            pseudo.extend_from_slice(&self.bytes[ETH + 8..ETH + 40]);
            pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, self.proto()]);
        } else {
            pseudo.extend_from_slice(&self.bytes[ETH + 12..ETH + 20]);
            pseudo.extend_from_slice(&[0, self.proto()]);
            pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        }
        checksum::of(&seg, checksum::sum(&pseudo, 0))
    }
    pub fn assert_checksums(&self) {
        if !self.v6() {
            assert_eq!(
                checksum::sum(&self.bytes[ETH..ETH + 20], 0),
                0xffff,
                "IPv4 header checksum"
            );
        }
        let off = self.l4_csum_off();
        let got = u16::from_be_bytes([self.bytes[off], self.bytes[off + 1]]);
        assert_eq!(got, self.l4_csum_expected(), "L4 checksum");
    }
}

pub struct Dp {
    pub ebpf: aya::Ebpf,
    pub maps: Maps,
    ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
}

impl Dp {
    pub fn new() -> Dp {
        Dp::with_config(&DatapathConfig::default())
    }

    pub fn with_config(cfg: &DatapathConfig) -> Dp {
        let (ebpf, maps) = loader::load_unpinned(cfg).expect("load datapath");
        Dp::from_parts(ebpf, maps)
    }

    pub fn from_parts(ebpf: aya::Ebpf, maps: Maps) -> Dp {
        Dp { ebpf, maps, ring: None }
    }

    /// Every flow event on the ring so far (the ring is taken from the
    /// object on first use).
    pub fn events(&mut self) -> Vec<sluice_tc_datapath::layout::FlowEvent> {
        if self.ring.is_none() {
            self.ring = Some(Source::Object(&mut self.ebpf).map(&EVENTS).expect("sl_events"));
        }
        let ring = self.ring.as_mut().expect("taken");
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.push(sluice_tc_datapath::layout::FlowEvent::from_bytes(&item).expect("a whole event"));
        }
        out
    }

    /// Run one program on a frame: (verdict, frame out).
    pub fn run(&self, prog: &str, f: &Frame) -> (u32, Frame) {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; f.bytes.len() + 64];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(&f.bytes),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap();
        out.truncate(r.data_size_out as usize);
        (r.return_value, Frame { bytes: out })
    }

    /// A pod at `addr` on the test-run device (loopback, ifindex 1).
    pub fn pod(&mut self, addr: &str) {
        self.pod_id(addr, 7);
    }

    /// The same, with its endpoint id.
    pub fn pod_id(&mut self, addr: &str, endpoint_id: u32) {
        self.pod_in(addr, endpoint_id, 0);
    }

    /// The same, in the network namespace `netns_cookie` names (0: not
    /// known).
    pub fn pod_in(&mut self, addr: &str, endpoint_id: u32, netns_cookie: u64) {
        self.maps
            .endpoints_mut()
            .add(&Endpoint {
                addr: ip(addr),
                ifindex: 1,
                endpoint_id,
                mac: POD_MAC,
                parent_ifindex: 0,
                netns_cookie,
            })
            .unwrap();
    }

    pub fn service(&mut self, vip: &str, port: u16, proto: u8, backends: &[(u32, &str, u16)]) {
        self.service_full(vip, port, proto, backends, Algorithm::Random, false);
    }

    pub fn service_full(
        &mut self,
        vip: &str,
        port: u16,
        proto: u8,
        backends: &[(u32, &str, u16)],
        algorithm: Algorithm,
        reject: bool,
    ) {
        self.maps
            .lb_mut()
            .upsert_service(&ServiceSpec {
                vip: ip(vip),
                port,
                proto,
                // One id per (port, proto), as the agent and sluicectl give them.
                rev_nat_id: (u32::from(port) << 8) | u32::from(proto),
                algorithm,
                affinity_timeout_secs: 0,
                reject,
                node_address: false,
                scope: 0,
                source_ranges: false,
                node_denied: false,
                draining: Vec::new(),
                backends: backends
                    .iter()
                    .map(|(id, a, p)| Backend {
                        id: *id,
                        addr: ip(a),
                        port: *p,
                        active: true,
                    })
                    .collect(),
            })
            .unwrap();
    }
}

/// A backend of a `ServiceSpec`.
pub fn be(id: u32, addr: IpAddr, port: u16, active: bool) -> Backend {
    Backend { id, addr, port, active }
}

pub const SYN: u8 = 0x02;
pub const SYN_ACK: u8 = 0x12;
pub const TCP_ACK: u8 = 0x10;
pub const FIN_ACK: u8 = 0x11;

/// An ICMP(v6) "port unreachable" from `from` to `to`, quoting `quoted`
/// (an IP packet, as the sender of the error received it).
pub fn port_unreachable(from: &str, to: &str, quoted: &[u8]) -> Frame {
    let hdr = if ip(from).is_ipv6() {
        [1, 4, 0, 0, 0, 0, 0, 0]
    } else {
        [3, 3, 0, 0, 0, 0, 0, 0]
    };
    icmp(from, to, hdr, quoted)
}

/// An ICMP echo request (or reply) with identifier `id`.
pub fn echo(from: &str, to: &str, request: bool, id: u16) -> Frame {
    let t = match (ip(from).is_ipv6(), request) {
        (false, true) => 8,
        (false, false) => 0,
        (true, true) => 128,
        (true, false) => 129,
    };
    let [a, b] = id.to_be_bytes();
    icmp(from, to, [t, 0, 0, 0, a, b, 0, 1], b"ping")
}

/// An ICMP(v6) message: the 8-byte header (checksum filled in) and a body.
pub fn icmp(from: &str, to: &str, hdr: [u8; 8], body: &[u8]) -> Frame {
    let (from, to) = (ip(from), ip(to));
    let mut icmp = hdr.to_vec();
    icmp.extend_from_slice(body);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&POD_MAC);
    bytes.extend_from_slice(&GW_MAC);
    match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = checksum::of(&icmp, 0);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            bytes.extend(ipv4_header(s, d, 1, icmp.len(), 0));
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            let c = checksum::of(&icmp, checksum::sum(&pseudo, 0));
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            bytes.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            h.extend_from_slice(&[58, 64]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&h);
        }
        _ => panic!("mixed families"),
    }
    bytes.extend_from_slice(&icmp);
    Frame { bytes }
}

impl Frame {
    /// The ICMP checksum is right (ICMPv6: with its pseudo header).
    pub fn assert_icmp_checksum(&self) {
        let l4 = self.l4();
        let msg = &self.bytes[l4..];
        let acc = if self.v6() {
            let mut pseudo = self.bytes[ETH + 8..ETH + 40].to_vec();
            pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            checksum::sum(&pseudo, 0)
        } else {
            assert_eq!(
                checksum::sum(&self.bytes[ETH..ETH + 20], 0),
                0xffff,
                "outer IPv4 header checksum"
            );
            0
        };
        assert_eq!(checksum::sum(msg, acc), 0xffff, "ICMP checksum");
    }

    /// The packet quoted by an ICMP error, as a frame of its own.
    pub fn quoted(&self) -> Frame {
        let mut bytes = self.bytes[..ETH].to_vec();
        bytes.extend_from_slice(&self.bytes[self.l4() + 8..]);
        Frame { bytes }
    }
}

impl Frame {
    /// The same IPv6 frame with extension headers between the IPv6 header
    /// and its payload: each (type, bytes), the bytes' first one (next
    /// header) and, for all but a fragment header, second one (length)
    /// filled in.
    pub fn with_ipv6_extensions(mut self, exts: &[(u8, Vec<u8>)]) -> Frame {
        assert!(self.v6());
        let upper = self.bytes[ETH + 6];
        let mut chain = Vec::new();
        for (i, (_, body)) in exts.iter().enumerate() {
            let mut h = body.clone();
            h[0] = exts.get(i + 1).map_or(upper, |e| e.0);
            chain.extend(h);
        }
        self.bytes[ETH + 6] = exts[0].0;
        let payload = u16::from_be_bytes([self.bytes[ETH + 4], self.bytes[ETH + 5]]) + chain.len() as u16;
        self.bytes[ETH + 4..ETH + 6].copy_from_slice(&payload.to_be_bytes());
        self.bytes.splice(ETH + 40..ETH + 40, chain);
        self
    }

    /// The datagram cut in two fragments of IP identification `id`: the
    /// first carries the L4 header and `first_len` bytes after it (a
    /// multiple of 8 with the header), the second the rest.
    pub fn fragments(&self, first_len: usize, id: u32) -> (Frame, Frame) {
        let l4 = self.l4();
        let cut = l4 + first_len;
        assert_eq!((cut - l4) % 8, 0, "fragments break at 8-byte boundaries");
        let (head, rest) = (&self.bytes[..cut], &self.bytes[cut..]);
        let offset8 = ((cut - l4) / 8) as u16;
        if !self.v6() {
            let part = |ip_and_l4: &[u8], data: &[u8], frag: u16| {
                let mut b = ip_and_l4.to_vec();
                b.extend_from_slice(data);
                let tot = (b.len() - ETH) as u16;
                b[ETH + 2..ETH + 4].copy_from_slice(&tot.to_be_bytes());
                b[ETH + 4..ETH + 6].copy_from_slice(&(id as u16).to_be_bytes());
                b[ETH + 6..ETH + 8].copy_from_slice(&frag.to_be_bytes());
                b[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
                let c = checksum::of(&b[ETH..ETH + 20], 0);
                b[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
                Frame { bytes: b }
            };
            (part(head, &[], 0x2000), part(&self.bytes[..l4], rest, offset8))
        } else {
            let part = |l4_part: &[u8], offset8: u16, more: bool| {
                let mut b = self.bytes[..l4].to_vec();
                b.extend_from_slice(l4_part);
                let payload = (b.len() - ETH - 40) as u16;
                b[ETH + 4..ETH + 6].copy_from_slice(&payload.to_be_bytes());
                Frame { bytes: b }.with_ipv6_extensions(&[(44, ipv6_fragment(offset8, more, id))])
            };
            (part(&head[l4..], 0, true), part(rest, offset8, false))
        }
    }

    /// The datagram two fragments (as `fragments` makes them, translated
    /// or not) were cut from: the first's headers, both parts' bytes.
    pub fn reassemble(first: &Frame, later: &Frame) -> Frame {
        if !first.v6() {
            let mut b = first.bytes.clone();
            b.extend_from_slice(&later.bytes[later.l4()..]);
            let tot = (b.len() - ETH) as u16;
            b[ETH + 2..ETH + 4].copy_from_slice(&tot.to_be_bytes());
            b[ETH + 6..ETH + 8].copy_from_slice(&[0, 0]);
            b[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
            let c = checksum::of(&b[ETH..ETH + 20], 0);
            b[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
            Frame { bytes: b }
        } else {
            // Drop the fragment header (8 bytes after the IPv6 header).
            let mut b = first.bytes[..ETH + 40].to_vec();
            b[ETH + 6] = first.bytes[ETH + 40];
            b.extend_from_slice(&first.bytes[ETH + 48..]);
            b.extend_from_slice(&later.bytes[ETH + 48..]);
            let payload = (b.len() - ETH - 40) as u16;
            b[ETH + 4..ETH + 6].copy_from_slice(&payload.to_be_bytes());
            Frame { bytes: b }
        }
    }

    /// The same frame with an 802.1Q tag (priority-only when `vid` is 0).
    pub fn vlan_tagged(mut self, vid: u16) -> Frame {
        let ethertype = [self.bytes[12], self.bytes[13]];
        let mut tag = vec![0x81, 0x00];
        tag.extend_from_slice(&vid.to_be_bytes());
        tag.extend_from_slice(&ethertype);
        self.bytes.splice(12..14, tag);
        self
    }
}

/// An IPv6 extension header of `len8` 8-byte units beyond the first
/// (Hop-by-Hop, Routing, Destination Options): PadN-filled.
pub fn ipv6_ext(len8: u8) -> Vec<u8> {
    let mut h = vec![0u8; 8 * (usize::from(len8) + 1)];
    h[1] = len8;
    h[2] = 1; // PadN
    h[3] = (h.len() - 4) as u8;
    h
}

/// An IPv6 fragment header at `offset` (8-byte units), with more to come
/// or not, of datagram `id`.
pub fn ipv6_fragment(offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h[4..8].copy_from_slice(&id.to_be_bytes());
    h
}

/// An ARP message from `sha`/`spa` (in the frame and the payload, unless
/// `frame_src` says otherwise) asking for `tpa`.
pub fn arp(frame_src: [u8; 6], sha: [u8; 6], spa: &str, tpa: &str) -> Frame {
    let (spa, tpa): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (spa.parse().unwrap(), tpa.parse().unwrap());
    let mut b = vec![0xff; 6];
    b.extend_from_slice(&frame_src);
    b.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    b.extend_from_slice(&sha);
    b.extend_from_slice(&spa.octets());
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(&tpa.octets());
    Frame { bytes: b }
}

/// An ICMPv6 neighbour advertisement from `src` claiming `target`.
pub fn neighbour_advert(src: &str, target: &str) -> Frame {
    let t: std::net::Ipv6Addr = target.parse().unwrap();
    let mut body = t.octets().to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&POD_MAC);
    let f = icmp(src, "ff02::1", [136, 0, 0, 0, 0x20, 0, 0, 0], &body);
    f.macs([0x33, 0x33, 0, 0, 0, 1], POD_MAC)
}

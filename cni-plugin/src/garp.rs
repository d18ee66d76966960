//! Announcing a pod's addresses after addressing, so the VPC fabric and the
//! neighbours learn the pod's MAC now rather than after their caches time
//! out (an address may have moved from another MAC a moment ago).
//!
//! IPv4: the kernel does it. With `arp_notify` set on the interface it sends
//! a gratuitous ARP for every address when the link comes up. Sending one
//! ourselves would need an AF_PACKET socket, and closing one always waits for
//! an RCU grace period (`synchronize_net`), which measured ~8 ms per ADD here.
//!
//! IPv6: the kernel's `ndisc_notify` does not fire on link up, so the
//! unsolicited neighbour advertisement is built here and sent on a packet
//! socket (a fixed-layout frame; no crate in the chosen set builds NDP).

use sluice_tc_datapath::checksum;
use std::net::{IpAddr, Ipv6Addr};

const ETH_P_IPV6: u16 = 0x86dd;

/// Unsolicited NA to all-nodes with the Override flag and our link-layer address.
pub fn na_frame(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&ip.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let ck = checksum::of(&pseudo, 0);
    icmp[2..4].copy_from_slice(&ck.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// Send an unsolicited NA for each IPv6 address on `ifindex`. Must run in
/// the interface's namespace. The network may drop it; failing to send is reported.
pub fn announce_v6(ifindex: u32, mac: [u8; 6], ips: &[IpAddr]) -> std::io::Result<()> {
    for ip in ips {
        if let IpAddr::V6(a) = ip {
            send_raw(ifindex, &na_frame(mac, *a), ETH_P_IPV6)?;
        }
    }
    Ok(())
}

fn send_raw(ifindex: u32, frame: &[u8], proto: u16) -> std::io::Result<()> {
    // SAFETY: plain syscalls on a socket we own and close here; the address
    // struct is fully initialised before use.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto.to_be()),
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto.to_be();
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let rc = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 { Err(err) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn na_checksum_verifies() {
        let ip: Ipv6Addr = "fd00::5".parse().unwrap();
        let f = na_frame([2, 0, 0, 0, 0, 9], ip);
        let icmp = &f[54..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[22..38]);
        pseudo.extend_from_slice(&f[38..54]);
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        assert_eq!(checksum::sum(&pseudo, 0), 0xffff, "a valid checksum sums to all ones");
        assert_eq!(icmp[0], 136);
        assert_eq!(f[21], 255, "hop limit 255 or receivers drop it");
    }
}

//! Route-netlink in terms this plugin uses: links by name, addresses,
//! routes, moving links between namespaces. Callers never build raw messages.

use crate::netns::NetNs;
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use sluice_cni_spec::{CniError, ErrorCode};
use std::net::IpAddr;

/// What we need to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    /// `macvlan`, `ipvlan`, `veth`, ... (None for physical devices).
    pub kind: Option<String>,
    /// IFLA_LINK: the device it hangs off (a macvlan's or ipvlan's parent,
    /// by its index in the parent's namespace).
    pub parent: Option<u32>,
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            parent: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => l.mac = a.as_slice().try_into().ok(),
                LinkAttribute::Mtu(m) => l.mtu = *m,
                LinkAttribute::Link(p) => l.parent = Some(*p),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    pub fn mac_string(&self) -> String {
        self.mac.as_ref().map(format_mac).unwrap_or_default()
    }
}

/// The errno of a netlink error, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl_err(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> CniError {
    move |e| CniError::new(ErrorCode::Netlink, format!("{what}: {e}"))
}

/// A route-netlink connection bound to one namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    ns_label: String,
}

impl Netlink {
    /// Connect in the caller's namespace.
    pub fn host() -> Result<Netlink, CniError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| CniError::new(ErrorCode::Io, format!("netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            ns_label: "host netns".into(),
        })
    }

    /// Connect inside `ns`: the socket is created by a thread in that
    /// namespace and stays bound to it; requests are then made from here.
    pub fn in_netns(ns: &NetNs) -> Result<Netlink, CniError> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns
            .run(|| {
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| CniError::new(ErrorCode::Io, format!("netlink socket in {}: {e}", ns.path().display())))?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            ns_label: format!("netns {}", ns.path().display()),
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn label(&self) -> &str {
        &self.ns_label
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, CniError> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("get link {name} in {}", self.ns_label))(e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, CniError> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("get link #{index} in {}", self.ns_label))(e)),
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>, CniError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("list links in {}", self.ns_label)))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    pub async fn add_link(&self, msg: LinkMessage, what: &str) -> Result<(), CniError> {
        match self.add_link_unless_taken(msg, what).await? {
            true => Ok(()),
            false => Err(CniError::new(
                ErrorCode::Netlink,
                format!("create {what} in {}: the name is taken (EEXIST)", self.ns_label),
            )),
        }
    }

    /// Create a link; false when the kernel says its name is taken.
    pub async fn add_link_unless_taken(&self, msg: LinkMessage, what: &str) -> Result<bool, CniError> {
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => {
                let code = match errno(&e) {
                    Some(libc::EOPNOTSUPP) => ErrorCode::NotAvailable,
                    _ => ErrorCode::Netlink,
                };
                Err(CniError::new(code, format!("create {what} in {}: {e}", self.ns_label)))
            }
        }
    }

    pub async fn set_link(&self, msg: LinkMessage, what: &str) -> Result<(), CniError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err(format!("{what} in {}", self.ns_label)))
    }

    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), CniError> {
        self.set_link(
            LinkUnspec::new_with_index(index).up().build(),
            &format!("set {name} up"),
        )
        .await
    }

    /// Have the kernel announce the link's IPv4 addresses when it comes up
    /// (`arp_notify`): over this socket, in the link's namespace, instead of
    /// a thread entering it to write procfs (a third of the cost).
    pub async fn enable_arp_notify(&self, index: u32, name: &str) -> Result<(), CniError> {
        use netlink_packet_route::link::{AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute};
        let mut conf = InetDevConf::default();
        conf.arp_notify = 1;
        let spec = LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(conf)])]);
        self.set_link(
            LinkUnspec::new_with_index(index).append_extra_attribute(spec).build(),
            &format!("arp_notify on {name}"),
        )
        .await
    }

    /// Send `msgs` (each with its own flags; request and ack added) in one
    /// go, then collect every answer's errno (0 for an ACK), in order: the
    /// kernel takes them one after the other, without a round trip each.
    pub async fn send_all(
        &self,
        msgs: Vec<(netlink_packet_route::RouteNetlinkMessage, u16)>,
        what: &str,
    ) -> Result<Vec<i32>, CniError> {
        use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
        let mut handle = self.handle.clone();
        let mut answers = Vec::new();
        for (inner, flags) in msgs {
            let mut msg = NetlinkMessage::from(inner);
            msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            let stream = handle
                .request(msg)
                .map_err(nl_err(format!("{what} in {}: sending", self.ns_label)))?;
            answers.push(stream);
        }
        let mut errnos = Vec::with_capacity(answers.len());
        for mut stream in answers {
            let mut errno = 0;
            while let Some(m) = futures::StreamExt::next(&mut stream).await {
                if let NetlinkPayload::Error(e) = m.payload {
                    errno = -e.raw_code();
                }
            }
            errnos.push(errno);
        }
        Ok(errnos)
    }

    /// Delete a link; a link that is already gone is not an error.
    pub async fn del_link(&self, index: u32, name: &str) -> Result<(), CniError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(nl_err(format!("delete link {name} in {}", self.ns_label))(e)),
        }
    }

    /// Move link `index` into the namespace `fd`, renaming it on the way (one message).
    pub async fn move_link(
        &self,
        index: u32,
        fd: std::os::fd::RawFd,
        new_name: &str,
        what: &str,
    ) -> Result<(), CniError> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(fd)
            .name(new_name.to_string())
            .build();
        self.set_link(msg, what).await
    }

    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>, CniError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("list addresses of link #{index} in {}", self.ns_label)))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                IpNetwork::new(local.or(addr)?, m.header.prefix_len).ok()
            })
            .collect())
    }

    /// The program ids of the cls_bpf filters under clsact on one side of a link.
    pub async fn bpf_filter_prog_ids(&self, index: u32, egress: bool) -> Result<Vec<u32>, CniError> {
        use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
        let req = self.handle.traffic_filter(index as i32).get();
        let req = if egress { req.egress() } else { req.ingress() };
        let msgs: Vec<_> = match req.execute().try_collect().await {
            Ok(m) => m,
            // No clsact qdisc: no filters.
            Err(e) if matches!(errno(&e), Some(libc::EINVAL | libc::ENOENT)) => Vec::new(),
            Err(e) => return Err(nl_err(format!("list tc filters of link #{index} in {}", self.ns_label))(e)),
        };
        Ok(msgs
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                TcAttribute::Options(opts) => Some(opts),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                _ => None,
            })
            .collect())
    }

    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<(), CniError> {
        let mut req = self.handle.address().add(index, addr.ip(), addr.prefix());
        if addr.is_ipv6() {
            // Addresses come from IPAM and are unique by construction; waiting
            // for DAD would only delay the pod's first packet.
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(nl_err(format!(
            "add address {addr} to link #{index} in {}",
            self.ns_label
        )))
    }

    /// Remove `addr` from link `index`; one not there is fine.
    pub async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<(), CniError> {
        // The message an add of it would send names it as a delete needs.
        let mut add = self.handle.address().add(index, addr.ip(), addr.prefix());
        let msg = add.message_mut().clone();
        match self.handle.address().del(msg).execute().await {
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r.map_err(nl_err(format!(
                "delete address {addr} of link #{index} in {}",
                self.ns_label
            ))),
        }
    }

    pub async fn add_route(&self, index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Result<(), CniError> {
        let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
        let what = format!("add route {dst}{via} on link #{index} in {}", self.ns_label);
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.ip(), dst.prefix())
            .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("{what}: {e}")))?
            .output_interface(index);
        if let Some(gw) = gw {
            b = b
                .gateway(gw)
                .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("{what}: {e}")))?;
        }
        match self.handle.route().add(b.build()).execute().await {
            Ok(()) => Ok(()),
            // The kernel already made the on-link route for the address's subnet.
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(CniError::new(ErrorCode::Netlink, format!("{what}: {e}"))),
        }
    }
}

impl Netlink {
    /// A route to `dst` straight out of link `index` (scope link), with
    /// `src` as the preferred source; an existing one is replaced.
    pub async fn set_link_route(&self, index: u32, dst: IpNetwork, src: Option<IpAddr>) -> Result<(), CniError> {
        let what = format!("route {dst} dev #{index} in {}", self.ns_label);
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.ip(), dst.prefix())
            .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("{what}: {e}")))?
            .output_interface(index)
            .scope(RouteScope::Link);
        if let Some(src) = src {
            b = b
                .pref_source(src)
                .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("{what}: {e}")))?;
        }
        self.replace_route(b.build(), what).await
    }

    /// Add `route`, or replace the one to its destination (an ADD after a
    /// crash finds its own routes there).
    async fn replace_route(&self, route: RouteMessage, what: String) -> Result<(), CniError> {
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl_err(what))
    }

    /// A route to `dst` through `gw`, which is on link `index` whatever the
    /// link's subnets say (onlink).
    pub async fn set_onlink_route(&self, index: u32, dst: IpNetwork, gw: IpAddr) -> Result<(), CniError> {
        let what = format!("route {dst} via {gw} dev #{index} onlink in {}", self.ns_label);
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.ip(), dst.prefix())
            .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("{what}: {e}")))?
            .output_interface(index)
            .gateway(gw)
            .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("{what}: {e}")))?
            .onlink();
        self.replace_route(b.build(), what).await
    }

    /// Delete the route to `dst` out of link `index`; one that is gone is
    /// not an error.
    pub async fn del_link_route(&self, index: u32, dst: IpNetwork) -> Result<(), CniError> {
        let what = format!("delete route {dst} dev #{index} in {}", self.ns_label);
        // Matched as it was made (scope link): IPv4 deletes by scope too.
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.ip(), dst.prefix())
            .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("{what}: {e}")))?
            .output_interface(index)
            .scope(RouteScope::Link);
        match self.handle.route().del(b.build()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
            Err(e) => Err(nl_err(what)(e)),
        }
    }

    /// The destinations of the main table's routes out of link `index`
    /// whose prefix is a host's (/32, /128).
    pub async fn host_routes(&self, index: u32) -> Result<Vec<IpAddr>, CniError> {
        let mut out = Vec::new();
        for family in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let msgs: Vec<_> = self
                .handle
                .route()
                .get(family)
                .execute()
                .try_collect()
                .await
                .map_err(nl_err(format!("list routes in {}", self.ns_label)))?;
            for m in msgs {
                let oif = m
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
                let host = m.header.destination_prefix_length
                    == if m.header.address_family == netlink_packet_route::AddressFamily::Inet {
                        32
                    } else {
                        128
                    };
                if !oif || !host {
                    continue;
                }
                let dst = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(v)) => Some(IpAddr::V4(*v)),
                    RouteAttribute::Destination(RouteAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
                    _ => None,
                });
                out.extend(dst);
            }
        }
        Ok(out)
    }

    /// A permanent neighbour entry: `ip` is at `mac` on link `index`.
    pub async fn set_neighbour(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), CniError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!(
                "neighbour {ip} at {} on link #{index} in {}",
                format_mac(&mac),
                self.ns_label
            )))
    }

    /// Delete the neighbour entry of `ip` on link `index`; one that is gone
    /// is not an error.
    pub async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), CniError> {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = index;
        m.header.family = match ip {
            IpAddr::V4(_) => netlink_packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => netlink_packet_route::AddressFamily::Inet6,
        };
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
            Err(e) => Err(nl_err(format!(
                "delete neighbour {ip} on link #{index} in {}",
                self.ns_label
            ))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("02:aB:00:11:22:ff").unwrap();
        assert_eq!(format_mac(&m), "02:ab:00:11:22:ff");
        assert!(parse_mac("02:ab:00:11:22").is_none());
        assert!(parse_mac("zz:ab:00:11:22:33").is_none());
    }
}

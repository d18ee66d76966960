//! One allocatable range inside a subnet, host-local's rules: never the
//! network or broadcast address, never the gateway, only [start, end].

use crate::error::IpamError;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeConfig {
    pub subnet: IpNetwork,
    #[serde(rename = "rangeStart", default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A validated range with its bounds as integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub gateway: Option<IpAddr>,
    start: u128,
    end: u128,
    v6: bool,
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

impl Range {
    pub fn new(cfg: &RangeConfig) -> Result<Range, IpamError> {
        let subnet = IpNetwork::new(cfg.subnet.network(), cfg.subnet.prefix()).expect("prefix already valid");
        let v6 = subnet.is_ipv6();
        let bad = |msg: String| IpamError::InvalidConfig(format!("range {subnet}: {msg}"));
        let host_bits = if v6 { 128 } else { 32 } - subnet.prefix() as u32;
        if host_bits < 2 {
            return Err(bad("subnet too small to hold any address".into()));
        }
        let net = to_u128(subnet.network());
        // `::/0` has 128 host bits: the shift would overflow.
        let last = net + 1u128.checked_shl(host_bits).map_or(u128::MAX, |n| n - 1);
        // v4 loses the broadcast address; v6 has none, but host-local keeps the
        // last one back as well for symmetry only in v4.
        let (lo, hi) = (net + 1, if v6 { last } else { last - 1 });
        let inside = |ip: IpAddr, what: &str| -> Result<u128, IpamError> {
            if ip.is_ipv6() != v6 || !subnet.contains(ip) {
                return Err(bad(format!("{what} {ip} is outside the subnet")));
            }
            Ok(to_u128(ip))
        };
        let start = match cfg.range_start {
            Some(ip) => inside(ip, "rangeStart")?.max(lo),
            None => lo,
        };
        let end = match cfg.range_end {
            Some(ip) => inside(ip, "rangeEnd")?.min(hi),
            None => hi,
        };
        if start > end {
            return Err(bad("rangeStart is after rangeEnd".into()));
        }
        let gateway = match cfg.gateway {
            Some(gw) => {
                inside(gw, "gateway")?;
                Some(gw)
            }
            None => Some(from_u128(net + 1, v6)),
        };
        Ok(Range {
            subnet,
            gateway,
            start,
            end,
            v6,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.v6 && (self.start..=self.end).contains(&to_u128(ip))
    }

    /// Addresses that may be handed out (the range minus the gateway).
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        self.contains(ip) && Some(ip) != self.gateway
    }

    pub fn first(&self) -> IpAddr {
        from_u128(self.start, self.v6)
    }

    /// The next address after `ip` in the range, wrapping to the start.
    pub fn next_after(&self, ip: IpAddr) -> IpAddr {
        let v = to_u128(ip);
        if v < self.start || v >= self.end {
            self.first()
        } else {
            from_u128(v + 1, self.v6)
        }
    }

    pub fn is_last(&self, ip: IpAddr) -> bool {
        to_u128(ip) >= self.end
    }

    /// How many addresses the range has, gateway excluded (saturating for huge v6 ranges).
    pub fn size(&self) -> u128 {
        let n = self.end - self.start + 1;
        match self.gateway {
            Some(g) if self.contains(g) => n - 1,
            _ => n,
        }
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        self.v6 == other.v6 && self.start <= other.end && other.start <= self.end
    }

    pub fn describe(&self) -> String {
        format!("{}-{} in {}", self.first(), from_u128(self.end, self.v6), self.subnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        Range::new(&RangeConfig {
            subnet: s.parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        })
        .unwrap()
    }

    #[test]
    fn v4_defaults_skip_network_broadcast_and_gateway() {
        let x = r("10.244.1.0/26");
        assert_eq!(x.first().to_string(), "10.244.1.1");
        assert_eq!(x.gateway.unwrap().to_string(), "10.244.1.1");
        assert!(!x.is_allocatable("10.244.1.1".parse().unwrap()));
        assert!(!x.contains("10.244.1.0".parse().unwrap()));
        assert!(!x.contains("10.244.1.63".parse().unwrap()));
        assert!(x.contains("10.244.1.62".parse().unwrap()));
        assert_eq!(x.size(), 61);
        assert_eq!(x.next_after("10.244.1.62".parse().unwrap()).to_string(), "10.244.1.1");
    }

    #[test]
    fn bounds_are_checked() {
        let cfg = |start: &str, end: &str, gw: &str| RangeConfig {
            subnet: "10.0.0.0/24".parse().unwrap(),
            range_start: Some(start.parse().unwrap()),
            range_end: Some(end.parse().unwrap()),
            gateway: Some(gw.parse().unwrap()),
        };
        assert!(Range::new(&cfg("10.0.0.10", "10.0.0.20", "10.0.0.1")).is_ok());
        assert!(Range::new(&cfg("10.0.0.30", "10.0.0.20", "10.0.0.1")).is_err());
        assert!(Range::new(&cfg("10.0.1.10", "10.0.0.20", "10.0.0.1")).is_err());
        assert!(Range::new(&cfg("10.0.0.10", "10.0.0.20", "10.9.0.1")).is_err());
        assert!(
            Range::new(&RangeConfig {
                subnet: "10.0.0.0/31".parse().unwrap(),
                range_start: None,
                range_end: None,
                gateway: None
            })
            .is_err()
        );
    }

    /// The whole address space is a range like any other (the shift that
    /// sizes it used to overflow and report nonsense).
    #[test]
    fn the_whole_v6_space() {
        let x = r("::/0");
        assert_eq!(x.first().to_string(), "::1");
        assert!(x.is_last("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()));
        assert!(x.size() >= u128::MAX - 1);
        let y = r("0.0.0.0/0");
        assert!(y.is_last("255.255.255.254".parse().unwrap()));
    }

    #[test]
    fn v6_range() {
        let x = r("fd00:10::/120");
        assert_eq!(x.first().to_string(), "fd00:10::1");
        assert!(x.contains("fd00:10::ff".parse().unwrap()));
        assert_eq!(x.size(), 254);
        assert!(!x.contains("10.0.0.1".parse().unwrap()));
    }
}

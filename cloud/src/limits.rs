//! How many ENIs an instance type takes, and how many addresses each.
//!
//! Source: Amazon EC2 User Guide, "Maximum IP addresses per network
//! interface" (docs.aws.amazon.com/AWSEC2/latest/UserGuide/AvailableIpPerENI.html),
//! for the general purpose, compute and memory families most clusters run
//! on. IPv4 counts include the ENI's primary address; IPv6 counts are the
//! same for these (Nitro) types. A type not listed is configured with
//! `limits` in the pool's configuration.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Network interfaces, the primary one included.
    pub enis: u32,
    /// IPv4 addresses per interface, its primary address included; with
    /// prefix delegation, each slot but the primary's holds a /28 instead.
    pub ipv4_per_eni: u32,
    pub ipv6_per_eni: u32,
}

const fn l(enis: u32, ipv4: u32) -> Limits {
    Limits {
        enis,
        ipv4_per_eni: ipv4,
        ipv6_per_eni: ipv4,
    }
}

/// Sizes of the Nitro general purpose, compute and memory families, whose
/// limits depend on the size alone.
const BY_SIZE: &[(&str, Limits)] = &[
    ("large", l(3, 10)),
    ("xlarge", l(4, 15)),
    ("2xlarge", l(4, 15)),
    ("4xlarge", l(8, 30)),
    ("8xlarge", l(8, 30)),
    ("9xlarge", l(8, 30)),
    ("12xlarge", l(8, 30)),
    ("16xlarge", l(15, 50)),
    ("18xlarge", l(15, 50)),
    ("24xlarge", l(15, 50)),
    ("32xlarge", l(15, 50)),
    ("48xlarge", l(15, 50)),
    ("metal", l(15, 50)),
];

const SIZED_FAMILIES: &[&str] = &[
    "m5", "m5a", "m5n", "m6i", "m6a", "m6g", "m7i", "m7a", "m7g", "c5", "c5a", "c5n", "c6i", "c6a", "c6g", "c7i",
    "c7a", "c7g", "r5", "r5a", "r5n", "r6i", "r6a", "r6g", "r7i", "r7a", "r7g",
];

/// The burstable types, listed one by one.
const BURSTABLE: &[(&str, Limits)] = &[
    ("t3.nano", l(2, 2)),
    ("t3.micro", l(2, 2)),
    ("t3.small", l(3, 4)),
    ("t3.medium", l(3, 6)),
    ("t3.large", l(3, 12)),
    ("t3.xlarge", l(4, 15)),
    ("t3.2xlarge", l(4, 15)),
    ("t3a.nano", l(2, 2)),
    ("t3a.micro", l(2, 2)),
    ("t3a.small", l(2, 4)),
    ("t3a.medium", l(3, 6)),
    ("t3a.large", l(3, 12)),
    ("t3a.xlarge", l(4, 15)),
    ("t3a.2xlarge", l(4, 15)),
];

pub fn for_instance_type(instance_type: &str) -> Option<Limits> {
    if let Some((_, lim)) = BURSTABLE.iter().find(|(t, _)| *t == instance_type) {
        return Some(*lim);
    }
    let (family, size) = instance_type.split_once('.')?;
    // `m5d`, `c6id`, `r6in`: local-disk and network variants share their family's limits.
    let base = family.trim_end_matches(['d', 'n']);
    let known = SIZED_FAMILIES.contains(&family) || SIZED_FAMILIES.contains(&base);
    if !known {
        return None;
    }
    BY_SIZE.iter().find(|(s, _)| *s == size).map(|(_, lim)| *lim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types() {
        assert_eq!(for_instance_type("m5.large"), Some(l(3, 10)));
        assert_eq!(for_instance_type("m5.4xlarge"), Some(l(8, 30)));
        assert_eq!(for_instance_type("c6id.24xlarge"), Some(l(15, 50)));
        assert_eq!(for_instance_type("t3.medium"), Some(l(3, 6)));
        assert_eq!(for_instance_type("t2.micro"), None, "not listed: configured by hand");
        assert_eq!(for_instance_type("m5.huge"), None);
        assert_eq!(for_instance_type("nonsense"), None);
    }
}

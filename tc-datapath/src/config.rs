//! The datapath's settings, defined once: the `"datapath"` section of the
//! CNI config is this type (serde names at the edge), the loader sets the
//! programs' load-time constants from it, the program version is a hash of
//! it, and the `sl_info` map keeps a copy for the tools (`sluicectl
//! status` shows every field).
//!
//! Every network of a node must agree on the settings compiled into the
//! programs: a call with other ones loads another program version and moves
//! every pod of the node onto it.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Where the node's datapath is pinned unless configured otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/sluice";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DatapathConfig {
    /// The programs on the pod interface (on unless turned off).
    pub enabled: bool,
    /// The bpffs directory for maps, programs and links.
    pub bpffs: PathBuf,
    /// How pod interfaces get the programs.
    pub attach: AttachMode,
    /// Drop pod packets whose source is not the pod's own address.
    pub source_check: bool,
    /// Maglev table size per Service port: a prime.
    pub maglev_table_size: u32,
    pub ct_timeouts: CtTimeouts,
    /// Report one new flow in this many on the event ring (0: none; drops
    /// are always reported).
    pub flow_sample: u32,
    /// The conntrack entries one pod may hold (0: no limit); a new flow
    /// beyond it is dropped (`drop-ct-pod-limit`), so that one pod's flood
    /// cannot evict the other pods' flows.
    pub ct_pod_limit: u32,
}

/// The conntrack table's size (`sl_ct` in bpf/maps.h).
pub const CT_TABLE_ENTRIES: u32 = 262_144;

/// The longest conntrack timeout taken: the programs count deadlines in
/// nanoseconds, and an entry must never be born expired.
pub const MAX_CT_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// The fields of [`DatapathConfig`] that say where and how the programs are
/// attached; every other field is compiled into them (and so names their
/// version).
const NOT_IN_PROGRAM: [&str; 3] = ["enabled", "bpffs", "attach"];

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            enabled: true,
            bpffs: PathBuf::from(DEFAULT_BPFFS),
            attach: AttachMode::Auto,
            source_check: true,
            maglev_table_size: 16381,
            ct_timeouts: CtTimeouts::default(),
            flow_sample: 0,
            ct_pod_limit: CT_TABLE_ENTRIES / 4,
        }
    }
}

/// How pod interfaces get their programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX links where the kernel has them (6.6+), clsact filters otherwise.
    #[default]
    Auto,
    Tcx,
    /// Legacy clsact qdisc with direct-action cls_bpf filters.
    Tc,
}

/// Conntrack timeouts, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CtTimeouts {
    pub tcp_syn: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub udp: u64,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        CtTimeouts {
            tcp_syn: 60,
            tcp_established: 6 * 3600,
            tcp_closing: 10,
            udp: 60,
        }
    }
}

impl CtTimeouts {
    /// (name, value) of each timeout, in the config's spelling.
    fn named(&self) -> [(&'static str, u64); 4] {
        [
            ("tcpSyn", self.tcp_syn),
            ("tcpEstablished", self.tcp_established),
            ("tcpClosing", self.tcp_closing),
            ("udp", self.udp),
        ]
    }

    pub fn tcp_syn(&self) -> Duration {
        Duration::from_secs(self.tcp_syn)
    }
    pub fn tcp_established(&self) -> Duration {
        Duration::from_secs(self.tcp_established)
    }
    pub fn tcp_closing(&self) -> Duration {
        Duration::from_secs(self.tcp_closing)
    }
    pub fn udp(&self) -> Duration {
        Duration::from_secs(self.udp)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("datapath.{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

impl DatapathConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_prime(self.maglev_table_size) {
            return Err(invalid(
                "maglevTableSize",
                format!("{} is not a prime", self.maglev_table_size),
            ));
        }
        for (name, secs) in self.ct_timeouts.named() {
            if secs == 0 || secs > MAX_CT_TIMEOUT_SECS {
                return Err(invalid(
                    format!("ctTimeouts.{name}"),
                    format!("{secs} s: must be between 1 and {MAX_CT_TIMEOUT_SECS} (30 days)"),
                ));
            }
        }
        if self.ct_pod_limit > CT_TABLE_ENTRIES {
            return Err(invalid(
                "ctPodLimit",
                format!(
                    "{}: the table holds {CT_TABLE_ENTRIES} entries (0 takes the limit off)",
                    self.ct_pod_limit
                ),
            ));
        }
        // Split by hand: Path::components() drops a "." inside the path.
        let normal = !self
            .bpffs
            .as_os_str()
            .as_encoded_bytes()
            .split(|b| *b == b'/')
            .any(|part| part == b"." || part == b"..");
        if !self.bpffs.is_absolute() || !normal {
            return Err(invalid(
                "bpffs",
                format!(
                    "{} must be an absolute path without . or .. components",
                    self.bpffs.display()
                ),
            ));
        }
        Ok(())
    }

    /// The settings compiled into the programs, as JSON: what the program
    /// version hashes and what `sl_info` keeps.
    pub fn program_settings(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("the config serializes");
        if let Some(fields) = v.as_object_mut() {
            for f in NOT_IN_PROGRAM {
                fields.remove(f);
            }
        }
        v
    }

    /// The program settings read back from `sl_info` (fields it does not
    /// hold, from an older writer, take their defaults).
    pub fn from_program_settings(json: &[u8]) -> Result<DatapathConfig, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", default)]
        struct Lenient {
            source_check: bool,
            maglev_table_size: u32,
            ct_timeouts: CtTimeouts,
            flow_sample: u32,
            ct_pod_limit: u32,
        }
        impl Default for Lenient {
            fn default() -> Self {
                let d = DatapathConfig::default();
                Lenient {
                    source_check: d.source_check,
                    maglev_table_size: d.maglev_table_size,
                    ct_timeouts: d.ct_timeouts,
                    flow_sample: d.flow_sample,
                    ct_pod_limit: d.ct_pod_limit,
                }
            }
        }
        let l: Lenient = serde_json::from_slice(json)?;
        Ok(DatapathConfig {
            source_check: l.source_check,
            maglev_table_size: l.maglev_table_size,
            ct_timeouts: l.ct_timeouts,
            flow_sample: l.flow_sample,
            ct_pod_limit: l.ct_pod_limit,
            ..Default::default()
        })
    }

    /// The version name of this build with these settings: the object and
    /// the program settings, hashed.
    pub fn prog_hash(&self) -> u64 {
        let settings = serde_json::to_vec(&self.program_settings()).expect("JSON");
        crate::hash::fnv1a(OBJECT_HASH, &settings)
    }
}

// `fnv1a(0x51, OBJECT)`, computed when the object is built.
include!(concat!(env!("OUT_DIR"), "/object_hash.rs"));

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_object_hash_is_the_objects() {
        assert_eq!(OBJECT_HASH, crate::hash::fnv1a(0x51, crate::OBJECT));
    }

    #[test]
    fn maglev_size_must_be_prime() {
        assert!(is_prime(16381) && is_prime(65537) && !is_prime(16384) && !is_prime(1));
        let cfg = DatapathConfig {
            maglev_table_size: 1000,
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().field, "maglevTableSize");
    }

    #[test]
    fn timeouts_are_bounded_and_roots_normal() {
        let t = |udp| DatapathConfig {
            ct_timeouts: CtTimeouts {
                udp,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(t(MAX_CT_TIMEOUT_SECS).validate().is_ok());
        for bad in [0, MAX_CT_TIMEOUT_SECS + 1, u64::MAX] {
            assert_eq!(t(bad).validate().unwrap_err().field, "ctTimeouts.udp", "{bad}");
        }
        for bad in ["rel/x", "/sys/fs/bpf/sluice/../..", "/sys/fs/bpf/./x"] {
            let c = DatapathConfig {
                bpffs: bad.into(),
                ..Default::default()
            };
            assert_eq!(c.validate().unwrap_err().field, "bpffs", "{bad}");
        }
    }

    #[test]
    fn every_program_setting_names_the_version() {
        let base = DatapathConfig::default();
        let changed = [
            DatapathConfig {
                source_check: false,
                ..base.clone()
            },
            DatapathConfig {
                maglev_table_size: 65537,
                ..base.clone()
            },
            DatapathConfig {
                flow_sample: 10,
                ..base.clone()
            },
            DatapathConfig {
                ct_pod_limit: 0,
                ..base.clone()
            },
            DatapathConfig {
                ct_timeouts: CtTimeouts {
                    udp: 30,
                    ..base.ct_timeouts
                },
                ..base.clone()
            },
        ];
        for c in &changed {
            assert_ne!(c.prog_hash(), base.prog_hash(), "{c:?}");
        }
        // Where and how they are attached is no part of the programs.
        let placed = DatapathConfig {
            enabled: false,
            bpffs: "/other".into(),
            attach: AttachMode::Tc,
            ..base.clone()
        };
        assert_eq!(placed.prog_hash(), base.prog_hash());
    }

    #[test]
    fn program_settings_read_back() {
        let c = DatapathConfig {
            flow_sample: 7,
            maglev_table_size: 251,
            ..Default::default()
        };
        let json = serde_json::to_vec(&c.program_settings()).unwrap();
        let back = DatapathConfig::from_program_settings(&json).unwrap();
        assert_eq!(back.program_settings(), c.program_settings());
        // A field an older writer did not know takes its default.
        let old = DatapathConfig::from_program_settings(br#"{"maglevTableSize": 251}"#).unwrap();
        assert_eq!((old.maglev_table_size, old.flow_sample), (251, 0));
    }

    #[test]
    fn the_config_section_spelling() {
        let c: DatapathConfig = serde_json::from_value(json!({
            "attach": "tc", "ctTimeouts": {"udp": 5}, "flowSample": 3
        }))
        .unwrap();
        assert_eq!((c.attach, c.ct_timeouts.udp, c.flow_sample), (AttachMode::Tc, 5, 3));
        assert_eq!(c.ct_timeouts.tcp_syn, 60, "the rest defaulted");
        for bad in [
            json!({"bpfs": "/x"}),
            json!({"attach": "xdp"}),
            json!({"ctTimeouts": {"icmp": 1}}),
        ] {
            assert!(serde_json::from_value::<DatapathConfig>(bad.clone()).is_err(), "{bad}");
        }
    }
}

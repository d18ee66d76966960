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
    /// The conntrack entries one pod may hold (0: no limit; unset: a
    /// quarter of the table, [`DatapathConfig::ct_pod_limit`]); a new flow
    /// beyond it is dropped (`drop-ct-pod-limit`), so that one pod's flood
    /// cannot evict the other pods' flows.
    pub ct_pod_limit: Option<u32>,
    /// The node's tables that hold one entry per connection, sized when
    /// the node's maps are made (see [`TableSizes`]).
    pub tables: TableSizes,
}

/// The sizes of the node's per-connection tables, preallocated LRU maps:
/// a busy node needs more than the defaults (each closed connection keeps
/// its entries for the closing timeout, so a table of N connections turns
/// over past N / `tcpClosing` new connections a second), a small one can
/// spare the memory. They are no part of the programs: they take effect
/// when the node's maps are made (its first ADD, or the agent's load,
/// after a boot; a layout change makes new maps and carries the entries
/// into them), and when the agent starts on a node whose tables have other
/// sizes (`Node::resize_tables`). An ADD keeps the maps it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TableSizes {
    /// `sl_ct`: conntrack, one entry per flow at each pod end and one
    /// more per Service connection at its client (152 bytes each).
    pub conntrack: u32,
    /// `sl_nat`: connections from outside whose client has answered, two
    /// entries each (112 bytes each); `sl_nat_new`, the handshakes not yet
    /// answered, is half of it.
    pub nat: u32,
    /// `sl_snat_held`: SNAT ports held past their connection's close while
    /// the backend may keep the 4-tuple in TIME_WAIT (65 s), one per close.
    pub snat_holds: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        TableSizes {
            conntrack: CT_TABLE_ENTRIES,
            nat: 131_072,
            snat_holds: 65_536,
        }
    }
}

impl TableSizes {
    /// The smallest and largest size taken for any of them: below, a node
    /// turns its tables over at a few hundred connections a second; above
    /// 2^24 the conntrack table alone would preallocate 2.4 GiB.
    pub const MIN: u32 = 4096;
    pub const MAX: u32 = 1 << 24;

    /// (map, entries) for each table, `sl_nat_new` included.
    pub fn maps(&self) -> [(&'static str, u32); 4] {
        [
            ("sl_ct", self.conntrack),
            ("sl_nat", self.nat),
            ("sl_nat_new", self.nat / 2),
            ("sl_snat_held", self.snat_holds),
        ]
    }

    fn named(&self) -> [(&'static str, u32); 3] {
        [
            ("conntrack", self.conntrack),
            ("nat", self.nat),
            ("snatHolds", self.snat_holds),
        ]
    }
}

/// The conntrack table's default size (`sl_ct` in bpf/maps.h).
pub const CT_TABLE_ENTRIES: u32 = 262_144;

/// The longest conntrack timeout taken: the programs count deadlines in
/// nanoseconds, and an entry must never be born expired.
pub const MAX_CT_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// The fields of [`DatapathConfig`] that say where and how the programs are
/// attached, and the tables' sizes, which the maps take when they are made;
/// every other field is compiled into them (and so names their version).
const NOT_IN_PROGRAM: [&str; 4] = ["enabled", "bpffs", "attach", "tables"];

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
            ct_pod_limit: None,
            tables: TableSizes::default(),
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
        for (name, n) in self.tables.named() {
            if !(TableSizes::MIN..=TableSizes::MAX).contains(&n) {
                return Err(invalid(
                    format!("tables.{name}"),
                    format!(
                        "{n} entries: must be between {} and {}",
                        TableSizes::MIN,
                        TableSizes::MAX
                    ),
                ));
            }
        }
        let ct = self.tables.conntrack;
        if self.ct_pod_limit() > ct {
            return Err(invalid(
                "ctPodLimit",
                format!(
                    "{}: the conntrack table holds {ct} entries (tables.conntrack; 0 takes the limit off)",
                    self.ct_pod_limit()
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
            // The limit the programs get, whether given or a quarter of
            // the table.
            fields.insert("ctPodLimit".into(), self.ct_pod_limit().into());
        }
        v
    }

    /// The conntrack entries one pod may hold, as the programs get it:
    /// `ctPodLimit` if given (0: no limit), else a quarter of the table.
    pub fn ct_pod_limit(&self) -> u32 {
        self.ct_pod_limit.unwrap_or(self.tables.conntrack / 4)
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
                    ct_pod_limit: d.ct_pod_limit(),
                }
            }
        }
        let l: Lenient = serde_json::from_slice(json)?;
        Ok(DatapathConfig {
            source_check: l.source_check,
            maglev_table_size: l.maglev_table_size,
            ct_timeouts: l.ct_timeouts,
            flow_sample: l.flow_sample,
            ct_pod_limit: Some(l.ct_pod_limit),
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
                ct_pod_limit: Some(0),
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
        // Where and how they are attached is no part of the programs, nor
        // are the tables' sizes (the maps take them when they are made),
        // but for the per-pod share a quarter of the table stands for.
        let placed = DatapathConfig {
            enabled: false,
            bpffs: "/other".into(),
            attach: AttachMode::Tc,
            ..base.clone()
        };
        assert_eq!(placed.prog_hash(), base.prog_hash());
        let sized = |conntrack, ct_pod_limit| DatapathConfig {
            tables: TableSizes {
                conntrack,
                nat: 1 << 20,
                snat_holds: 1 << 18,
            },
            ct_pod_limit,
            ..base.clone()
        };
        let same_share = sized(1 << 20, Some(CT_TABLE_ENTRIES / 4));
        assert_eq!(same_share.prog_hash(), base.prog_hash());
        assert_ne!(sized(1 << 20, None).prog_hash(), base.prog_hash());
    }

    #[test]
    fn table_sizes_are_bounded_and_the_pod_share_follows_the_table() {
        let t = |tables| DatapathConfig {
            tables,
            ..Default::default()
        };
        let d = TableSizes::default();
        assert_eq!(DatapathConfig::default().ct_pod_limit(), CT_TABLE_ENTRIES / 4);
        let small = t(TableSizes { conntrack: 32768, ..d });
        assert!(small.validate().is_ok());
        assert_eq!(small.ct_pod_limit(), 8192, "a quarter of the configured table");
        for (bad, field) in [
            (TableSizes { conntrack: 100, ..d }, "tables.conntrack"),
            (
                TableSizes {
                    nat: TableSizes::MAX + 1,
                    ..d
                },
                "tables.nat",
            ),
            (TableSizes { snat_holds: 0, ..d }, "tables.snatHolds"),
        ] {
            assert_eq!(t(bad).validate().unwrap_err().field, field);
        }
        let over = DatapathConfig {
            ct_pod_limit: Some(40000),
            ..small.clone()
        };
        assert_eq!(over.validate().unwrap_err().field, "ctPodLimit");
        let off = DatapathConfig {
            ct_pod_limit: Some(0),
            ..small
        };
        assert_eq!(off.ct_pod_limit(), 0);
        assert_eq!(
            d.maps(),
            [
                ("sl_ct", 262144),
                ("sl_nat", 131072),
                ("sl_nat_new", 65536),
                ("sl_snat_held", 65536)
            ],
            "the defaults are the sizes bpf/maps.h declares"
        );
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
            "attach": "tc", "ctTimeouts": {"udp": 5}, "flowSample": 3,
            "tables": {"nat": 524288, "snatHolds": 262144}
        }))
        .unwrap();
        assert_eq!((c.attach, c.ct_timeouts.udp, c.flow_sample), (AttachMode::Tc, 5, 3));
        assert_eq!((c.tables.nat, c.tables.snat_holds), (524288, 262144));
        assert_eq!(c.tables.conntrack, CT_TABLE_ENTRIES, "the rest defaulted");
        assert_eq!(c.ct_timeouts.tcp_syn, 60, "the rest defaulted");
        for bad in [
            json!({"bpfs": "/x"}),
            json!({"attach": "xdp"}),
            json!({"ctTimeouts": {"icmp": 1}}),
            json!({"tables": {"ct": 1}}),
            json!({"tables": {"nat": -1}}),
        ] {
            assert!(serde_json::from_value::<DatapathConfig>(bad.clone()).is_err(), "{bad}");
        }
    }
}

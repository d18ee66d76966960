//! `sluice-ipam leases`: every lease of every pool under a data directory,
//! with its owner and age, for operators (the CNI verbs never print this).

use crate::error::IpamError;
use crate::store::{Lease, LockedStore, now_secs};
use serde::Serialize;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    pub pool: String,
    pub address: IpAddr,
    #[serde(flatten)]
    pub lease: Lease,
    #[serde(rename = "ageSeconds")]
    pub age_seconds: u64,
}

/// The leases of `network` (or of every pool) under `data_dir`, by pool then address.
pub fn list(data_dir: &Path, network: Option<&str>) -> Result<Vec<LeaseRow>, IpamError> {
    let pools: Vec<String> = match network {
        Some(n) => vec![n.to_string()],
        None => {
            let rd = match std::fs::read_dir(data_dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(source) => {
                    return Err(IpamError::Store {
                        path: data_dir.to_path_buf(),
                        what: "listing pools",
                        source,
                    });
                }
            };
            let mut v: Vec<String> = rd
                .filter_map(Result::ok)
                .filter(|e| e.path().join("leases.json").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    };
    let now = now_secs();
    let mut rows = Vec::new();
    for pool in pools {
        let dir = data_dir.join(&pool);
        if !dir.exists() {
            continue;
        }
        // A shared lock: a reader never sees a half-applied change, and
        // waits at most a few allocations' time.
        let store = LockedStore::lock(&dir, &pool, Duration::from_secs(10), false)?;
        for (address, lease) in store.load()?.leases {
            rows.push(LeaseRow {
                pool: pool.clone(),
                address,
                age_seconds: now.saturating_sub(lease.since),
                lease,
            });
        }
    }
    Ok(rows)
}

/// `3d4h`, `2h5m`, `7m30s`, `12s`: two units are enough to read at a glance.
pub fn human_age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// A plain aligned table, one lease per line.
pub fn table(rows: &[LeaseRow]) -> String {
    let mut lines = vec![[
        "POOL".to_string(),
        "ADDRESS".into(),
        "CONTAINER".into(),
        "IFNAME".into(),
        "ENI".into(),
        "AGE".into(),
    ]];
    for r in rows {
        lines.push([
            r.pool.clone(),
            r.address.to_string(),
            r.lease.container_id.clone(),
            r.lease.ifname.clone(),
            r.lease.eni.as_ref().map_or("-".into(), |e| e.id.describe()),
            human_age(r.age_seconds),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IpamConfig, Pool};
    use serde_json::json;

    #[test]
    fn lists_every_pool_with_owner_and_age() {
        let d = tempfile::tempdir().unwrap();
        for net in ["alpha", "beta"] {
            let cfg: IpamConfig =
                serde_json::from_value(json!({"subnet": "10.0.0.0/24", "dataDir": d.path()})).unwrap();
            Pool::new(net, &cfg)
                .unwrap()
                .allocate(&format!("{net}-c"), "eth0", &[])
                .unwrap();
        }
        let rows = list(d.path(), None).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].pool.as_str(), rows[0].lease.container_id.as_str()),
            ("alpha", "alpha-c")
        );
        assert!(rows[0].age_seconds < 60);
        let t = table(&rows);
        assert!(t.starts_with("POOL"), "{t}");
        assert!(t.lines().nth(2).unwrap().starts_with("beta   10.0.0.2  beta-c"), "{t}");
        assert_eq!(list(d.path(), Some("beta")).unwrap().len(), 1);
        assert!(list(&d.path().join("none"), None).unwrap().is_empty());
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(human_age(12), "12s");
        assert_eq!(human_age(450), "7m30s");
        assert_eq!(human_age(7500), "2h5m");
        assert_eq!(human_age(3 * 86_400 + 4 * 3600 + 5), "3d4h");
    }
}

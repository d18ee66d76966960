//! Installing sluice on a node (what the DaemonSet's init container runs):
//! the CNI binaries into the CNI bin directory, and a network
//! configuration that container runtimes pick up.
//!
//! Chained (the default), sluice goes behind the plugin the node uses
//! today, without touching that plugin's file: the node's current network
//! configuration (the first file by name, as containerd and CRI-O choose
//! it) is copied into `00-sluice.conflist` with sluice appended, under the
//! same network name. That file sorts first, so the runtime uses it from
//! the next pod sandbox on; removing it (`--uninstall`) puts the node back
//! as it was. Running again updates our file from the current one, so an
//! update of the first plugin's file is followed.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The configuration file sluice writes.
pub const CONFLIST: &str = "00-sluice.conflist";
/// The binaries installed into the CNI bin directory.
pub const BINARIES: [&str; 2] = ["sluice", "sluice-ipam"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a CNI network configuration: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("no CNI network configuration in {0} to chain sluice behind (give --conflist for sluice's own)")]
    NoNetwork(PathBuf),
    #[error("host-path links: {0}")]
    Netlink(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `data` to `path` through a temporary file and a rename, so that a
/// reader sees the old file or the new one, never a part.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("sluice");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Copy the binaries from `from` into `bin_dir`.
pub fn install_binaries(from: &Path, bin_dir: &Path) -> Result<(), InstallError> {
    std::fs::create_dir_all(bin_dir).map_err(io(bin_dir))?;
    for b in BINARIES {
        let src = from.join(b);
        let data = std::fs::read(&src).map_err(io(&src))?;
        write_atomic(&bin_dir.join(b), &data, 0o755)?;
    }
    Ok(())
}

/// The network configuration a runtime would use now, ours left out: the
/// first `*.conflist`, `*.conf` or `*.json` by name.
pub fn current_network(conf_dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(io(conf_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            name != CONFLIST && !name.starts_with('.') && matches!(ext, "conflist" | "conf" | "json")
        })
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

/// `existing` (a conflist, or a single-plugin .conf) with `sluice` last.
pub fn chain(existing: &Value, sluice: &Value, path: &Path) -> Result<Value, InstallError> {
    let bad = |msg: &str| InstallError::Config {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    };
    let name = existing
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no name"))?;
    let version = existing.get("cniVersion").cloned().unwrap_or(json!("1.0.0"));
    let mut plugins: Vec<Value> = match existing.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p.clone(),
        Some(_) => return Err(bad("\"plugins\" is not a list of plugins")),
        None if existing.get("type").is_some() => {
            // A single-plugin .conf: its plugin is the file less the list's fields.
            let mut p = existing.clone();
            if let Some(o) = p.as_object_mut() {
                o.remove("cniVersion");
                o.remove("name");
            }
            vec![p]
        }
        None => return Err(bad("neither \"plugins\" nor \"type\"")),
    };
    if plugins.iter().any(|p| p.get("type").and_then(Value::as_str).is_none()) {
        return Err(bad("a plugin without \"type\""));
    }
    // Already chained (our own file copied back, or sluice configured by
    // hand): replace its entry, never add a second.
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some("sluice"));
    plugins.push(sluice.clone());
    let mut out = json!({"cniVersion": version, "name": name, "plugins": plugins});
    if let Some(v) = existing.get("disableCheck") {
        out["disableCheck"] = v.clone();
    }
    Ok(out)
}

/// What `install_conf` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// Chained behind the plugins of this file.
    ChainedBehind(PathBuf),
    /// sluice's own configuration, as given.
    Main,
}

/// Write `00-sluice.conflist`: sluice's own `conflist` when given, else
/// the node's current network with `sluice` (the chained plugin's entry)
/// appended.
pub fn install_conf(conf_dir: &Path, conflist: Option<&Value>, sluice: &Value) -> Result<Installed, InstallError> {
    std::fs::create_dir_all(conf_dir).map_err(io(conf_dir))?;
    let ours = conf_dir.join(CONFLIST);
    let (out, how) = match conflist {
        Some(c) => (c.clone(), Installed::Main),
        None => {
            let cur = current_network(conf_dir)?.ok_or_else(|| InstallError::NoNetwork(conf_dir.to_path_buf()))?;
            let text = std::fs::read_to_string(&cur).map_err(io(&cur))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| InstallError::Config {
                path: cur.clone(),
                msg: e.to_string(),
            })?;
            (chain(&v, sluice, &cur)?, Installed::ChainedBehind(cur))
        }
    };
    let mut text = serde_json::to_vec_pretty(&out).expect("a JSON value serializes");
    text.push(b'\n');
    write_atomic(&ours, &text, 0o644)?;
    Ok(how)
}

/// Remove sluice's configuration (the node's own is back in force).
pub fn uninstall_conf(conf_dir: &Path) -> Result<bool, InstallError> {
    let ours = conf_dir.join(CONFLIST);
    match std::fs::remove_file(&ours) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(&ours)(e)),
    }
}

/// Whether `name` is a host-path child the CNI binary makes (`slh` and
/// its parent's index: cni-plugin/src/host_path.rs).
pub fn is_host_path(name: &str) -> bool {
    name.strip_prefix("slh")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Remove the host-path children of this network namespace (the node's):
/// the macvlan and ipvlan links named as the CNI binary names them.
/// Returns their names.
pub fn remove_host_paths() -> Result<Vec<String>, InstallError> {
    use futures::TryStreamExt;
    use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| InstallError::Netlink(e.to_string()))?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| InstallError::Netlink(e.to_string()))?;
        tokio::spawn(conn);
        let links: Vec<_> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| InstallError::Netlink(e.to_string()))?;
        let mut removed = Vec::new();
        for l in links {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            let ours_kind = l.attributes.iter().any(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::MacVlan) | LinkInfo::Kind(InfoKind::IpVlan))),
                _ => false,
            });
            if let Some(name) = name
                && ours_kind
                && is_host_path(&name)
            {
                handle
                    .link()
                    .del(l.header.index)
                    .execute()
                    .await
                    .map_err(|e| InstallError::Netlink(format!("deleting {name}: {e}")))?;
                removed.push(name);
            }
        }
        Ok(removed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sluice() -> Value {
        json!({"type": "sluice", "logFile": "/var/log/sluice-cni.log"})
    }

    #[test]
    fn host_path_names_are_ours_only() {
        assert!(is_host_path("slh2") && is_host_path("slh1234"));
        assert!(!is_host_path("slh") && !is_host_path("slhx") && !is_host_path("eth0") && !is_host_path("slh2a"));
    }

    #[test]
    fn chains_behind_the_first_network_and_leaves_it_alone() {
        let d = tempfile::tempdir().unwrap();
        let terway = json!({"cniVersion": "0.4.0", "name": "terway", "plugins": [
            {"type": "terway", "eniip_virtual_type": "IPVlan"},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]});
        let original = serde_json::to_string_pretty(&terway).unwrap();
        std::fs::write(d.path().join("10-terway.conflist"), &original).unwrap();
        std::fs::write(
            d.path().join("99-loopback.conf"),
            r#"{"cniVersion":"0.3.1","name":"lo","type":"loopback"}"#,
        )
        .unwrap();
        let how = install_conf(d.path(), None, &sluice()).unwrap();
        assert_eq!(how, Installed::ChainedBehind(d.path().join("10-terway.conflist")));
        let ours: Value = serde_json::from_str(&std::fs::read_to_string(d.path().join(CONFLIST)).unwrap()).unwrap();
        assert_eq!(ours["name"], "terway", "the pods' network keeps its name");
        assert_eq!(ours["cniVersion"], "0.4.0");
        let types: Vec<&str> = ours["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["terway", "portmap", "sluice"]);
        assert_eq!(
            ours["plugins"][0]["eniip_virtual_type"], "IPVlan",
            "the first plugin's settings kept"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("10-terway.conflist")).unwrap(),
            original,
            "the node's file untouched"
        );
        // Again: the same file, sluice once.
        install_conf(d.path(), None, &sluice()).unwrap();
        let again: Value = serde_json::from_str(&std::fs::read_to_string(d.path().join(CONFLIST)).unwrap()).unwrap();
        assert_eq!(again, ours);
        assert!(uninstall_conf(d.path()).unwrap());
        assert!(!d.path().join(CONFLIST).exists());
        assert!(!uninstall_conf(d.path()).unwrap(), "nothing left to remove");
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list() {
        let conf = json!({"cniVersion": "1.0.0", "name": "vpc", "type": "macvlan", "master": "eth0",
                          "ipam": {"type": "host-local", "subnet": "10.244.0.0/16"}});
        let out = chain(&conf, &sluice(), Path::new("10-vpc.conf")).unwrap();
        assert_eq!(out["name"], "vpc");
        assert_eq!(out["plugins"][0]["type"], "macvlan");
        assert_eq!(out["plugins"][0]["master"], "eth0");
        assert!(out["plugins"][0].get("name").is_none() && out["plugins"][0].get("cniVersion").is_none());
        assert_eq!(out["plugins"][1], sluice());
    }

    #[test]
    fn bad_or_missing_networks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = install_conf(d.path(), None, &sluice()).unwrap_err();
        assert!(matches!(e, InstallError::NoNetwork(_)), "{e}");
        std::fs::write(d.path().join("10-x.conflist"), "{").unwrap();
        let e = install_conf(d.path(), None, &sluice()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}", d.path().join("10-x.conflist").display())),
            "{e}"
        );
        for bad in [
            json!({"cniVersion": "1.0.0"}),
            json!({"name": "n", "plugins": []}),
            json!({"name": "n", "plugins": [{"x": 1}]}),
        ] {
            assert!(chain(&bad, &sluice(), Path::new("f")).is_err(), "{bad}");
        }
        assert!(!d.path().join(CONFLIST).exists(), "nothing written on an error");
    }
}

//! The node's sluice network configuration, read so that the agent can
//! load the node's programs itself. Without it they are loaded by the first
//! pod's ADD, and until then nothing serves the node: no NodePort from
//! outside, no Service for its own sockets (the kubelet, hostNetwork pods).
//! A node that runs only hostNetwork pods, or whose first pod is still
//! being scheduled, would stay so.

use serde_json::Value;
use sluice_tc_datapath::config::DatapathConfig;
use std::path::Path;

/// The datapath settings of the `sluice` entry in `path` (a conflist, or a
/// single-plugin `.conf`): the ones every pod's ADD loads the programs
/// with. None when the file is not there yet (the installer writes it) or
/// the datapath is turned off there.
pub fn datapath_of(path: &Path) -> Result<Option<DatapathConfig>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let conf: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let is_ours = |p: &&Value| p.get("type").and_then(Value::as_str) == Some("sluice");
    let entry = match conf.get("plugins") {
        Some(Value::Array(plugins)) => plugins.iter().find(is_ours),
        _ => Some(&conf).filter(is_ours),
    }
    .ok_or_else(|| format!("{}: no plugin of type \"sluice\"", path.display()))?;
    let cfg: DatapathConfig = match entry.get("datapath") {
        Some(d) => serde_json::from_value(d.clone()).map_err(|e| format!("{}: datapath: {e}", path.display()))?,
        None => DatapathConfig::default(),
    };
    if !cfg.enabled {
        return Ok(None);
    }
    cfg.validate()
        .map_err(|e| format!("{}: datapath: {e}", path.display()))?;
    Ok(Some(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: &Value) -> Result<Option<DatapathConfig>, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("00-sluice.conflist");
        std::fs::write(&p, v.to_string()).unwrap();
        datapath_of(&p)
    }

    #[test]
    fn the_sluice_entry_of_a_chain_or_a_single_conf() {
        let chained = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
            {"type": "terway", "datapath": {"flowSample": 9}},
            {"type": "sluice", "datapath": {"bpffs": "/sys/fs/bpf/x", "flowSample": 4}},
        ]});
        let cfg = read(&chained).unwrap().unwrap();
        assert_eq!(cfg.bpffs, Path::new("/sys/fs/bpf/x"));
        assert_eq!(cfg.flow_sample, 4);
        let single = json!({"cniVersion": "1.0.0", "name": "n", "type": "sluice"});
        assert_eq!(read(&single).unwrap().unwrap(), DatapathConfig::default());
        let off = json!({"name": "n", "plugins": [{"type": "sluice", "datapath": {"enabled": false}}]});
        assert_eq!(read(&off).unwrap(), None);
        assert_eq!(datapath_of(Path::new("/nonexistent/00-sluice.conflist")).unwrap(), None);
    }

    #[test]
    fn what_an_add_would_refuse_is_refused() {
        for bad in [
            json!({"name": "n", "plugins": [{"type": "macvlan"}]}),
            json!({"name": "n", "plugins": [{"type": "sluice", "datapath": {"maglevTableSize": 1000}}]}),
            json!({"name": "n", "plugins": [{"type": "sluice", "datapath": {"bpfs": "/x"}}]}),
            json!({"name": "n", "plugins": [{"type": "sluice", "datapath": {"bpffs": "relative"}}]}),
        ] {
            assert!(read(&bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.conflist");
        std::fs::write(&p, "{not json").unwrap();
        assert!(datapath_of(&p).unwrap_err().contains("x.conflist"));
    }
}

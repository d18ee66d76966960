//! Every example conflist in conf/ is valid JSON, and every sluice entry in
//! it parses as a sluice config (with the list's name and version, as a
//! runtime would pass them).

use sluice_cni::config::PluginConfig;

#[test]
fn example_conflists_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "conflist") {
            continue;
        }
        let list: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for plugin in list["plugins"].as_array().unwrap() {
            if plugin["type"] != "sluice" {
                continue;
            }
            let mut c = plugin.clone();
            c["name"] = list["name"].clone();
            c["cniVersion"] = list["cniVersion"].clone();
            if c.get("link").is_none() {
                c["prevResult"] = serde_json::json!({});
            }
            PluginConfig::parse(&serde_json::to_vec(&c).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 5, "found {seen} sluice entries in conf/");
}

/// The example ENI node file passes the same validation the pool applies.
#[test]
fn example_eni_node_file_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/eni-pool.json");
    let node: sluice_ipam::eni::NodeEnis = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    node.validate(&path.display().to_string()).unwrap();
    assert_eq!(node.enis.len(), 2);
}

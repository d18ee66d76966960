//! Every spec version the plugin claims, and the 1.1 verbs STATUS and GC.

use serde_json::json;
use sluice_integration::cni::Call;
use sluice_integration::vpc::Vpc;
use sluice_integration::{cni_bin_dir, require_root};

#[test]
fn add_check_del_in_every_supported_version() {
    if !require_root("add_check_del_in_every_supported_version") {
        return;
    }
    let mut vpc = Vpc::new("ver", 1).unwrap();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let p = vpc.pod(&format!("v{i}")).unwrap();
        let conf = vpc.main_conf(0, version);
        let cid = format!("v{i}");
        let r = vpc.sluice(0, "ADD", &cid, p, &conf).expect_ok("ADD").json();
        assert_eq!(r["cniVersion"], *version);
        let legacy = version.starts_with("0.");
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            legacy,
            "{version}: ips[].version only before 1.0"
        );
        let check = vpc.sluice(0, "CHECK", &cid, p, &conf);
        if *version < "0.4.0" {
            assert_eq!(check.error_code(), 1, "{version}: CHECK did not exist yet");
        } else {
            check.expect_ok("CHECK");
        }
        vpc.sluice(0, "DEL", &cid, p, &conf).expect_ok("DEL");
    }
    assert!(vpc.leases(0).is_empty());
}

#[test]
fn version_verb() {
    let bin = cni_bin_dir().join("sluice");
    let out = Call::new(&bin, None)
        .env("CNI_COMMAND", "VERSION")
        .run(b"")
        .expect_ok("VERSION");
    let v = out.json();
    assert_eq!(v["cniVersion"], "1.1.0");
    let sv: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    for want in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(sv.contains(&want));
    }
    // podman asks with CNI_NETNS=dummy and a config on stdin.
    let out = Call::new(&bin, None)
        .env("CNI_COMMAND", "VERSION")
        .env("CNI_NETNS", "dummy")
        .run(br#"{"cniVersion":"1.0.0"}"#)
        .expect_ok("VERSION");
    assert_eq!(out.json()["cniVersion"], "1.0.0");
}

#[test]
fn status_reports_parent_and_pool_and_gc_removes_stale_attachments() {
    if !require_root("status_reports_parent_and_pool_and_gc_removes_stale_attachments") {
        return;
    }
    let mut vpc = Vpc::new("st", 1).unwrap();
    let mut conf = vpc.main_conf(0, "1.1.0");
    // Three usable addresses only.
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.244.0.0/16", "rangeStart": "10.244.1.2", "rangeEnd": "10.244.1.4", "gateway": "10.244.0.1"}]]);
    let bin = cni_bin_dir().join("sluice");
    let node = vpc.node_name(0);
    let status = |c: &serde_json::Value| {
        Call::new(&bin, Some(&node))
            .env("CNI_COMMAND", "STATUS")
            .env("CNI_PATH", &sluice_integration::cni_path())
            .run(&serde_json::to_vec(c).unwrap())
    };
    let pods: Vec<usize> = (0..3).map(|i| vpc.pod(&format!("g{i}")).unwrap()).collect();
    status(&conf).expect_ok("STATUS with free addresses");
    for (i, p) in pods.iter().enumerate() {
        vpc.sluice(0, "ADD", &format!("g{i}"), *p, &conf).expect_ok("ADD");
    }
    assert_eq!(status(&conf).error_code(), 50, "pool exhausted: cannot take new pods");
    let mut no_parent = conf.clone();
    no_parent["link"]["parent"] = json!("nope0");
    assert_eq!(status(&no_parent).error_code(), 50);

    // GC keeps g1 only.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g1", "ifname": "eth0"}]);
    Call::new(&bin, Some(&vpc.nodes[0].name))
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", &sluice_integration::cni_path())
        .run(&serde_json::to_vec(&gc).unwrap())
        .expect_ok("GC");
    assert_eq!(vpc.leases(0).len(), 1);
    assert_eq!(vpc.endpoints(0), vec!["g1:eth0.json".to_string()]);
    assert_eq!(
        vpc.pods[pods[0]].link_names().unwrap(),
        vec!["lo"],
        "leaked link of a stale attachment removed"
    );
    assert!(
        vpc.pods[pods[1]].link_names().unwrap().contains(&"eth0".to_string()),
        "valid attachment untouched"
    );
    status(&conf).expect_ok("STATUS after GC freed addresses");
    // GC on a 1.0.0 config: the verb does not exist there.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    let out = Call::new(&bin, Some(&vpc.nodes[0].name))
        .env("CNI_COMMAND", "GC")
        .run(&serde_json::to_vec(&old).unwrap());
    assert_eq!(out.error_code(), 1);
}

/// The program headers' types of the ELF file at `path` (64-bit,
/// little-endian: the only kind this workspace builds).
fn program_header_types(path: &std::path::Path) -> Vec<u32> {
    let elf = std::fs::read(path).unwrap();
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "{}: a 64-bit little-endian ELF file",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| u32::from_le_bytes(elf[phoff + i * size..][..4].try_into().unwrap()))
        .collect()
}

/// The CNI binaries a node gets (`scripts/build-cni`, what `scripts/test`
/// points `SLUICE_CNI_BIN_DIR` at and the image ships) ask for no program
/// interpreter and no shared library: they run on the host, whatever its C
/// library. They answer VERSION (the rest of the suite runs them).
#[test]
fn the_cni_binaries_a_node_gets_are_static() {
    const TEST: &str = "the_cni_binaries_a_node_gets_are_static";
    if std::env::var_os("SLUICE_CNI_BIN_DIR").is_none() {
        sluice_integration::skip(
            TEST,
            "SLUICE_CNI_BIN_DIR is not set: the workspace's dynamic build is under test (scripts/test sets it)",
        );
        return;
    }
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    for b in ["sluice", "sluice-ipam"] {
        let path = cni_bin_dir().join(b);
        let types = program_header_types(&path);
        assert!(
            !types.contains(&PT_INTERP),
            "{}: asks for a program interpreter",
            path.display()
        );
        // A static-pie keeps a dynamic section (it relocates itself), but
        // names no library in it.
        if types.contains(&PT_DYNAMIC) {
            let out = std::process::Command::new("readelf")
                .arg("-d")
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(!text.contains("(NEEDED)"), "{}: needs {text}", path.display());
        }
        Call::new(&path, None)
            .env("CNI_COMMAND", "VERSION")
            .run(br#"{"cniVersion":"1.0.0"}"#)
            .expect_ok(&format!("{b} VERSION"));
    }
}

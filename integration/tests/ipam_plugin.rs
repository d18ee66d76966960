//! IPAM delegation both ways: the `sluice-ipam` binary driven as a CNI IPAM
//! plugin, and the sluice main role delegating to Debian's `host-local`.

use serde_json::json;
use sluice_integration::cni::Call;
use sluice_integration::probe::{EchoServer, tcp_request};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_integration::{cni_bin_dir, reference_plugins_present, require_root, skip};

#[test]
fn sluice_ipam_binary_speaks_cni() {
    let dir = tempfile_dir("ipb");
    let conf = json!({"cniVersion": "1.1.0", "name": "ipamnet", "type": "whatever",
        "ipam": {"type": "sluice-ipam", "ranges": [[{"subnet": "10.250.0.0/29"}], [{"subnet": "fd00:250::/125"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir}});
    let bin = cni_bin_dir().join("sluice-ipam");
    let call = |cmd: &str, cid: &str, c: &serde_json::Value| {
        Call::new(&bin, None)
            .standard(cmd, cid, "/proc/self/ns/net", "eth0")
            .run(&serde_json::to_vec(c).unwrap())
    };
    let r = call("ADD", "a", &conf).expect_ok("ADD").json();
    assert_eq!(
        r["ips"].as_array().unwrap().len(),
        2,
        "dual stack: one address per range set"
    );
    assert_eq!(r["ips"][0]["address"], "10.250.0.2/29", "gateway .1 skipped");
    assert_eq!(r["ips"][0]["gateway"], "10.250.0.1");
    assert!(r["ips"][1]["address"].as_str().unwrap().starts_with("fd00:250::"));
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(
        call("ADD", "a", &conf).expect_ok("ADD again").json()["ips"],
        r["ips"],
        "idempotent"
    );
    call("CHECK", "a", &conf).expect_ok("CHECK");
    assert_eq!(call("CHECK", "nobody", &conf).error_code(), 103);
    // A /29 has 6 host addresses, minus the gateway: 5.
    for c in ["b", "c", "d", "e"] {
        call("ADD", c, &conf).expect_ok("ADD");
    }
    assert_eq!(call("ADD", "f", &conf).error_code(), 101);
    let status = |c: &serde_json::Value| {
        Call::new(&bin, None)
            .env("CNI_COMMAND", "STATUS")
            .run(&serde_json::to_vec(c).unwrap())
    };
    assert_eq!(status(&conf).error_code(), 50);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    Call::new(&bin, None)
        .env("CNI_COMMAND", "GC")
        .run(&serde_json::to_vec(&gc).unwrap())
        .expect_ok("GC");
    status(&conf).expect_ok("STATUS after GC");
    call("DEL", "a", &conf).expect_ok("DEL");
    call("DEL", "a", &conf).expect_ok("DEL twice");
    let leases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(std::path::Path::new(&dir).join("ipamnet/leases.json")).unwrap())
            .unwrap();
    assert!(leases["leases"].as_object().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn main_role_delegates_to_host_local() {
    if !require_root("main_role_delegates_to_host_local") {
        return;
    }
    if !reference_plugins_present() {
        skip("main_role_delegates_to_host_local", "/usr/lib/cni/host-local missing");
        return;
    }
    let mut vpc = Vpc::new("dl", 1).unwrap();
    let mut conf = vpc.main_conf(0, "1.0.0");
    conf["ipam"]["type"] = json!("host-local");
    let a = vpc.pod("a").unwrap();
    let b = vpc.pod("b").unwrap();
    let ra = vpc.sluice(0, "ADD", "a", a, &conf).expect_ok("ADD").json();
    let rb = vpc.sluice(0, "ADD", "b", b, &conf).expect_ok("ADD").json();
    let _s = EchoServer::start(&vpc.pods[b], 7400, "b").unwrap();
    assert_eq!(
        tcp_request(&vpc.pods[a], format!("{}:7400", result_ip(&rb)).parse().unwrap(), "q").unwrap(),
        "b:q"
    );
    assert_ne!(result_ip(&ra), result_ip(&rb));
    for (p, c) in [(a, "a"), (b, "b")] {
        vpc.sluice(0, "CHECK", c, p, &conf).expect_ok("CHECK");
        vpc.sluice(0, "DEL", c, p, &conf).expect_ok("DEL");
    }
    let hl = vpc.data_dir.join("ipam-n0").join(format!("{}-net", vpc.prefix));
    let left: Vec<_> = std::fs::read_dir(hl)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(left.is_empty(), "host-local leases left: {left:?}");
}

fn tempfile_dir(tag: &str) -> String {
    let d = std::env::temp_dir().join(sluice_integration::unique_prefix(tag));
    std::fs::create_dir_all(&d).unwrap();
    d.display().to_string()
}

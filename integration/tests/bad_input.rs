//! Bad input: each case gets its exact CNI error code on stdout, a non-zero
//! exit, and leaves every namespace's links and the IPAM/endpoint stores as
//! they were before the call.

use serde_json::{Value, json};
use sluice_integration::cni::Call;
use sluice_integration::vpc::Vpc;
use sluice_integration::{cni_bin_dir, cni_path, require_root};

enum Stdin {
    Raw(&'static str),
    Conf(fn(&mut Value)),
}

struct Case {
    name: &'static str,
    stdin: Stdin,
    /// (key, Some(value)) sets, (key, None) removes.
    env: &'static [(&'static str, Option<&'static str>)],
    code: u64,
}

const fn conf(name: &'static str, f: fn(&mut Value), code: u64) -> Case {
    Case {
        name,
        stdin: Stdin::Conf(f),
        env: &[],
        code,
    }
}

const fn env(name: &'static str, env: &'static [(&'static str, Option<&'static str>)], code: u64) -> Case {
    Case {
        name,
        stdin: Stdin::Conf(|_| {}),
        env,
        code,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "malformed JSON",
            stdin: Stdin::Raw(r#"{"cniVersion": "1.1.0", "name""#),
            env: &[],
            code: 6,
        },
        Case {
            name: "config is not an object",
            stdin: Stdin::Raw("[1, 2]"),
            env: &[],
            code: 6,
        },
        Case {
            name: "empty stdin",
            stdin: Stdin::Raw(""),
            env: &[],
            code: 6,
        },
        conf("cniVersion is a number", |c| c["cniVersion"] = json!(1), 6),
        conf("unsupported old cniVersion", |c| c["cniVersion"] = json!("0.2.0"), 1),
        conf("unsupported future cniVersion", |c| c["cniVersion"] = json!("2.0.0"), 1),
        conf(
            "no supported version in cniVersions",
            |c| {
                c.as_object_mut().unwrap().remove("cniVersion");
                c["cniVersions"] = json!(["0.1.0", "9.0.0"]);
            },
            1,
        ),
        conf(
            "missing cniVersion",
            |c| {
                c.as_object_mut().unwrap().remove("cniVersion");
            },
            7,
        ),
        conf(
            "missing network name",
            |c| {
                c.as_object_mut().unwrap().remove("name");
            },
            7,
        ),
        conf("invalid network name", |c| c["name"] = json!("-bad name"), 7),
        conf("unknown link kind", |c| c["link"]["kind"] = json!("bridge"), 7),
        conf(
            "missing link.parent",
            |c| {
                c["link"].as_object_mut().unwrap().remove("parent");
            },
            7,
        ),
        conf("unknown macvlan mode", |c| c["link"]["mode"] = json!("sideways"), 7),
        conf("mtu below minimum", |c| c["link"]["mtu"] = json!(10), 7),
        conf("mtu above the parent's", |c| c["link"]["mtu"] = json!(9000), 7),
        conf(
            "main role without ipam",
            |c| {
                c.as_object_mut().unwrap().remove("ipam");
            },
            7,
        ),
        conf(
            "ipam without type",
            |c| {
                c["ipam"].as_object_mut().unwrap().remove("type");
            },
            7,
        ),
        conf(
            "bad CIDR",
            |c| c["ipam"]["ranges"][0][0]["subnet"] = json!("10.244.0.0/33"),
            7,
        ),
        conf(
            "rangeStart outside the subnet",
            |c| c["ipam"]["ranges"][0][0]["rangeStart"] = json!("10.99.0.5"),
            7,
        ),
        conf(
            "overlapping ranges",
            |c| c["ipam"]["ranges"] = json!([[{"subnet": "10.244.0.0/16"}], [{"subnet": "10.244.1.0/24"}]]),
            7,
        ),
        conf(
            "delegated IPAM plugin not in CNI_PATH",
            |c| c["ipam"]["type"] = json!("no-such-ipam"),
            7,
        ),
        conf(
            "requested address outside every range",
            |c| c["args"] = json!({"cni": {"ips": ["10.9.9.9"]}}),
            7,
        ),
        conf(
            "requested address is not an IP",
            |c| c["runtimeConfig"] = json!({"ips": ["ten.one"]}),
            7,
        ),
        conf(
            "nonexistent parent interface",
            |c| c["link"]["parent"] = json!("nope0"),
            102,
        ),
        conf(
            "nonexistent ENI",
            |c| c["link"] = json!({"kind": "eni", "device": "nope1"}),
            102,
        ),
        conf(
            "ENI named twice",
            |c| c["link"] = json!({"kind": "eni", "device": "x", "mac": "02:00:00:00:00:01"}),
            7,
        ),
        conf(
            "exhausted pool",
            |c| {
                c["ipam"]["ranges"] = json!([[{"subnet": "10.244.0.0/16", "rangeStart": "10.244.1.2", "rangeEnd": "10.244.1.2", "gateway": "10.244.0.1"}]]);
            },
            101,
        ),
        // Fails after the link exists and has its address: proves the rollback.
        conf(
            "unreachable route gateway (fails late)",
            |c| {
                c["ipam"]["routes"] = json!([{"dst": "192.168.50.0/24", "gw": "10.9.9.9"}]);
            },
            100,
        ),
        env(
            "nonexistent netns",
            &[("CNI_NETNS", Some("/var/run/netns/sluice-no-such-ns"))],
            3,
        ),
        env(
            "CNI_NETNS is not a namespace",
            &[("CNI_NETNS", Some("/etc/hostname"))],
            4,
        ),
        env("missing CNI_COMMAND", &[("CNI_COMMAND", None)], 4),
        env("unknown CNI_COMMAND", &[("CNI_COMMAND", Some("FOO"))], 4),
        env("missing CNI_CONTAINERID", &[("CNI_CONTAINERID", None)], 4),
        env("invalid CNI_CONTAINERID", &[("CNI_CONTAINERID", Some("../etc"))], 4),
        env("invalid CNI_IFNAME", &[("CNI_IFNAME", Some("a/b"))], 4),
        env("CNI_IFNAME too long", &[("CNI_IFNAME", Some("sixteencharsname"))], 4),
        env("missing CNI_NETNS on ADD", &[("CNI_NETNS", None)], 4),
        env("missing CNI_PATH", &[("CNI_PATH", None)], 4),
        env(
            "malformed CNI_ARGS",
            &[("CNI_ARGS", Some("IgnoreUnknown=1;novalue"))],
            4,
        ),
        env("CNI_ARGS IP outside the range", &[("CNI_ARGS", Some("IP=10.9.9.9"))], 7),
        conf(
            "ENI pool together with ranges",
            |c| c["ipam"]["eniPool"] = json!({"backend": "file", "path": "/nonexistent"}),
            7,
        ),
        conf(
            "ENI pool node file missing",
            |c| {
                c["link"].as_object_mut().unwrap().remove("parent");
                eni_pool(c, None);
            },
            5,
        ),
        conf(
            "ENI pool address outside its ENI's subnet",
            |c| {
                eni_pool(
                    c,
                    Some(json!({"enis": [{"name": "eth0", "subnet": "10.250.0.0/24", "ips": ["10.251.0.5"]}]})),
                )
            },
            7,
        ),
        conf(
            "ENI pool names an ENI the node lacks (fails after IPAM)",
            |c| {
                eni_pool(
                    c,
                    Some(json!({"enis": [{"name": "nope9", "subnet": "10.250.0.0/24", "ips": ["10.250.0.5"]}]})),
                )
            },
            102,
        ),
        conf(
            "ENI pool unknown backend",
            |c| c["ipam"] = json!({"type": "sluice-ipam", "eniPool": {"backend": "cloud-api"}}),
            7,
        ),
        // Fails after IPAM and the link: the datapath root is on tmpfs/ext4.
        conf(
            "datapath root not on bpffs (fails after the link exists)",
            |c| c["datapath"]["bpffs"] = json!(std::env::temp_dir().join("sluice-not-bpffs")),
            4,
        ),
        conf(
            "datapath unknown field",
            |c| c["datapath"]["sourcecheck"] = json!(false),
            7,
        ),
        conf(
            "datapath Maglev size not prime",
            |c| c["datapath"]["maglevTableSize"] = json!(16384),
            7,
        ),
        conf(
            "datapath unknown attach mode",
            |c| c["datapath"]["attach"] = json!("xdp"),
            7,
        ),
        // What an outside audit found the plugin accepting or hanging on.
        env(
            "CNI_NETNS is the plugin's own (the node's)",
            &[("CNI_NETNS", Some(NODE_NS))],
            4,
        ),
        env("CNI_NETNS is a FIFO", &[("CNI_NETNS", Some(FIFO))], 4),
        conf("logFile is a FIFO", |c| c["logFile"] = json!(fifo()), 7),
        env("CNI_IFNAME is a name template", &[("CNI_IFNAME", Some("eth%d"))], 4),
        conf(
            "datapath root climbs out of bpffs",
            |c| c["datapath"]["bpffs"] = json!("/sys/fs/bpf/sluice/../.."),
            7,
        ),
        conf(
            "conntrack timeout beyond 30 days",
            |c| c["datapath"]["ctTimeouts"] = json!({"tcpEstablished": 18_446_744_073u64}),
            7,
        ),
        conf("relative dataDir", |c| c["dataDir"] = json!("var/lib/sluice"), 7),
        conf("relative ipam dataDir", |c| c["ipam"]["dataDir"] = json!("ipam"), 7),
        env(
            "CNI_ARGS IP with junk after /",
            &[("CNI_ARGS", Some("IP=10.244.1.9/junk"))],
            7,
        ),
        conf(
            "ENI pool node file is a FIFO",
            |c| {
                c["link"].as_object_mut().unwrap().remove("parent");
                c["ipam"] = json!({"type": "sluice-ipam", "eniPool": {"backend": "file", "path": fifo()},
                                   "dataDir": c["ipam"]["dataDir"].clone()});
            },
            5,
        ),
        conf(
            "ENI pool node file larger than 1 MiB",
            |c| {
                c["link"].as_object_mut().unwrap().remove("parent");
                let big = std::env::temp_dir().join("sluice-bad-big-node-file.json");
                std::fs::File::create(&big).unwrap().set_len(2 << 20).unwrap();
                c["ipam"] = json!({"type": "sluice-ipam", "eniPool": {"backend": "file", "path": big},
                                   "dataDir": c["ipam"]["dataDir"].clone()});
            },
            5,
        ),
    ]
}

/// Stand-ins the table's static values use, replaced when a case runs.
const NODE_NS: &str = "@node-netns";
const FIFO: &str = "@fifo";

/// A FIFO the hostile cases name as a file (made once).
fn fifo() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("sluice-bad-fifo-{}", std::process::id()));
    if !p.exists() {
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
    }
    p
}

/// Point the config's IPAM at an ENI pool; write the node file unless `None`.
fn eni_pool(c: &mut Value, node: Option<Value>) {
    let data_dir = c["ipam"]["dataDir"].as_str().unwrap().to_string();
    let file = format!("{data_dir}.eni-pool.json");
    match node {
        Some(n) => std::fs::write(&file, n.to_string()).unwrap(),
        None => {
            let _ = std::fs::remove_file(&file);
        }
    }
    c["ipam"] = json!({"type": "sluice-ipam", "eniPool": {"backend": "file", "path": file}, "dataDir": data_dir});
}

#[test]
fn bad_input_table() {
    if !require_root("bad_input_table") {
        return;
    }
    let mut vpc = Vpc::new("bad", 1).unwrap();
    let pod = vpc.pod("p").unwrap();
    let taken = vpc.pod("t").unwrap();
    let base = vpc.main_conf(0, "1.1.0");
    // The exhausted-pool case needs its only address taken by another pod.
    let mut one = base.clone();
    (cases()
        .iter()
        .find(|c| c.name == "exhausted pool")
        .map(|c| match c.stdin {
            Stdin::Conf(f) => f,
            Stdin::Raw(_) => unreachable!(),
        }))
    .unwrap()(&mut one);
    vpc.sluice(0, "ADD", "holder", taken, &one).expect_ok("setup ADD");

    let cases = cases();
    assert!(cases.len() >= 20);
    let bin = cni_bin_dir().join("sluice");
    let mut failures = Vec::new();
    for case in &cases {
        let stdin = match &case.stdin {
            Stdin::Raw(s) => s.as_bytes().to_vec(),
            Stdin::Conf(f) => {
                let mut c = base.clone();
                f(&mut c);
                serde_json::to_vec(&c).unwrap()
            }
        };
        let mut vars: Vec<(&str, Option<String>)> = vec![
            ("CNI_COMMAND", Some("ADD".into())),
            ("CNI_CONTAINERID", Some("badpod".into())),
            ("CNI_NETNS", Some(vpc.pods[pod].path().display().to_string())),
            ("CNI_IFNAME", Some("eth0".into())),
            ("CNI_PATH", Some(cni_path())),
        ];
        for (k, v) in case.env {
            vars.retain(|(kk, _)| kk != k);
            let v = v.map(|v| match v {
                NODE_NS => vpc.nodes[0].path().display().to_string(),
                FIFO => fifo().display().to_string(),
                v => v.to_string(),
            });
            if let Some(v) = v {
                vars.push((k, Some(v)));
            }
        }
        let before = vpc.snapshot(0);
        let mut call = Call::new(&bin, Some(&vpc.nodes[0].name));
        for (k, v) in &vars {
            if let Some(v) = v {
                call = call.env(k, v);
            }
        }
        let started = std::time::Instant::now();
        let out = call.run(&stdin);
        let after = vpc.snapshot(0);
        if started.elapsed() > std::time::Duration::from_secs(10) {
            failures.push(format!("{}: took {:?}", case.name, started.elapsed()));
        }
        if out.success {
            failures.push(format!("{}: succeeded: {}", case.name, out.stdout));
            continue;
        }
        let v: Value = match serde_json::from_str(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!(
                    "{}: stdout not an error object ({e}): {:?}",
                    case.name, out.stdout
                ));
                continue;
            }
        };
        if v["code"] != case.code {
            failures.push(format!(
                "{}: code {} want {}: {}",
                case.name, v["code"], case.code, v["msg"]
            ));
        }
        if v["msg"].as_str().is_none_or(str::is_empty) || v["cniVersion"].as_str().is_none() {
            failures.push(format!("{}: error object lacks msg or cniVersion: {v}", case.name));
        }
        if before != after {
            failures.push(format!(
                "{}: left something behind:\n  before {before:?}\n  after  {after:?}",
                case.name
            ));
        }
        eprintln!("ok  {:<45} code {} {}", case.name, v["code"], v["msg"]);
    }
    let _ = std::fs::remove_file(fifo());
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

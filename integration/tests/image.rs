//! The DaemonSet's image, built by `scripts/image`, run by podman the way
//! `conf/kubernetes/sluice.yaml` runs it on a node: each container's
//! command, host mounts, privilege and host network are read from the
//! manifest, every host path mapped to one this test owns (the simulated
//! node's namespace stands in for the host network). The init container
//! installs CNI binaries that work on the host and chains sluice behind the
//! node's network; pods made through that chain get the datapath; the agent
//! container (manifests in place of the API server, one pass) writes a
//! Service into the node's pinned maps that a pod then calls, and collects
//! a pod whose netns went without a DEL, leaving the live ones alone, and
//! attaches the socket-level hooks to the cgroup mounted as the host's.

use serde_json::Value;
use sluice_integration::chain::Chain;
use sluice_integration::podman::{self, Podman};
use sluice_integration::probe::{EchoServer, tcp_request};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_integration::{bin_dir, cni_bin_dir, require_root};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

const TEST: &str = "the_daemonset_image_installs_chains_and_runs_the_agent";
const VIP: &str = "10.96.0.50";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The DaemonSet's pod spec.
fn pod_spec() -> Value {
    let text = std::fs::read_to_string(workspace().join("conf/kubernetes/sluice.yaml")).unwrap();
    let ds: Value = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .find(|d: &Value| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in sluice.yaml");
    ds["spec"]["template"]["spec"].clone()
}

/// `podman run` arguments for one of the pod's containers: host network,
/// privilege, env and mounts as the manifest gives them, each volume's host
/// path replaced through `host`, kubelet's `$(VAR)` expansion applied to
/// command and args.
fn run_args(
    spec: &Value,
    container: &Value,
    host: &BTreeMap<&str, PathBuf>,
    env: &BTreeMap<&str, String>,
) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "--rm".into()];
    if spec["hostNetwork"] == true {
        a.extend(["--network".into(), "host".into()]);
    }
    let security = &container["securityContext"];
    if security["privileged"] == true {
        a.push("--privileged".into());
    }
    for cap in security["capabilities"]["drop"].as_array().into_iter().flatten() {
        a.extend(["--cap-drop".into(), cap.as_str().unwrap().to_string()]);
    }
    for cap in security["capabilities"]["add"].as_array().into_iter().flatten() {
        a.extend(["--cap-add".into(), cap.as_str().unwrap().to_string()]);
    }
    if let Some(limit) = container["resources"]["limits"]["memory"].as_str() {
        a.extend(["--memory".into(), limit.replace("Mi", "m").replace("Gi", "g")]);
    }
    for (k, v) in env {
        a.extend(["--env".into(), format!("{k}={v}")]);
    }
    let volumes: BTreeMap<&str, &str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["hostPath"]["path"].as_str().unwrap()))
        .collect();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let host_path = volumes[m["name"].as_str().unwrap()];
        let mapped = host
            .get(host_path)
            .unwrap_or_else(|| panic!("the test maps no directory for the host path {host_path}"));
        let mut opts = Vec::new();
        if m["readOnly"] == true {
            opts.push("ro");
        }
        if m["mountPropagation"] == "HostToContainer" {
            opts.push("rslave");
        }
        let mut v = format!("{}:{}", mapped.display(), m["mountPath"].as_str().unwrap());
        if !opts.is_empty() {
            v = format!("{v}:{}", opts.join(","));
        }
        a.extend(["--volume".into(), v]);
    }
    let expand = |s: &str| {
        env.iter()
            .fold(s.to_string(), |s, (k, v)| s.replace(&format!("$({k})"), v))
    };
    let words = |key: &str| -> Vec<String> {
        container[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| expand(w.as_str().unwrap()))
            .collect()
    };
    let command = words("command");
    a.extend(["--entrypoint".into(), command[0].clone()]);
    a.push("IMAGE".into());
    a.extend(command[1..].iter().cloned());
    a.extend(words("args"));
    a
}

/// Run `podman run` with `args`, the image put in place of `IMAGE`.
fn run(podman: &Podman, node: &Path, image: &str, args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args
        .iter()
        .map(|a| if a == "IMAGE" { image } else { a.as_str() })
        .collect();
    podman.command(Some(node)).args(&args).output().unwrap()
}

#[test]
fn the_daemonset_image_installs_chains_and_runs_the_agent() {
    if !require_root(TEST) {
        return;
    }
    if let Some(why) = podman::missing() {
        sluice_integration::skip(TEST, &why);
        return;
    }
    let mut vpc = Vpc::new("im", 1).unwrap();
    let work = vpc.data_dir.join("image");
    let podman = Podman::new(&work.join("podman"), "").unwrap();
    let image = format!("localhost/sluice:{}", vpc.prefix);
    let mut build = std::process::Command::new(workspace().join("scripts/image"));
    build
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--cni-bin-dir")
        .arg(cni_bin_dir())
        .args(["--tag", &image]);
    podman.env(&mut build);
    let out = build.output().unwrap();
    assert!(
        out.status.success(),
        "scripts/image: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The node: its own network (reference macvlan + host-local) in its
    // CNI configuration directory, and the directories the DaemonSet mounts.
    let host_dir = work.join("host");
    let (cni_bin, cni_conf) = (host_dir.join("opt/cni/bin"), host_dir.join("etc/cni/net.d"));
    for d in [
        &cni_bin,
        &cni_conf,
        &host_dir.join("run/sluice"),
        &host_dir.join("manifests"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    let full = vpc.chained_conflist(0, "1.0.0");
    let mut node_own = full.clone();
    let sluice_entry = node_own["plugins"].as_array_mut().unwrap().pop().unwrap();
    std::fs::write(cni_conf.join("10-vpc.conflist"), node_own.to_string()).unwrap();
    // The host's cgroup root stands in as a cgroup of the test's own.
    let cg = sluice_integration::cgroup::TestCgroup::new(&vpc.prefix).unwrap();
    let host: BTreeMap<&str, PathBuf> = [
        ("/opt/cni/bin", cni_bin.clone()),
        ("/etc/cni/net.d", cni_conf.clone()),
        ("/sys/fs/bpf", vpc.bpffs[0].path().to_path_buf()),
        ("/run/sluice", host_dir.join("run/sluice")),
        // The node's plugin keeps its records where the Vpc's config says.
        ("/var/lib/sluice", vpc.data_dir.join("n0")),
        // The pods' namespaces are the real ones (mounted read only).
        ("/run/netns", PathBuf::from("/run/netns")),
        ("/sys/fs/cgroup", cg.path.clone()),
        ("/proc/timer_list", PathBuf::from("/proc/timer_list")),
    ]
    .into_iter()
    .collect();
    let env: BTreeMap<&str, String> = [
        ("NODE_NAME", vpc.node_name(0)),
        ("NODE_IP", sluice_integration::vpc::node_ip(0)),
    ]
    .into_iter()
    .collect();
    let spec = pod_spec();
    let node = vpc.nodes[0].path();
    // A node has a default route: the agent's `--uplink auto` finds eth0 by it.
    vpc.nodes[0]
        .ip(&[
            "route",
            "add",
            "default",
            "via",
            sluice_integration::vpc::VPC_ROUTER,
            "dev",
            "eth0",
        ])
        .unwrap();

    // The init container, with this node's sluice entry (its paths are the
    // test's, not the node defaults).
    let mut args = run_args(&spec, &spec["initContainers"][0], &host, &env);
    args.extend(["--plugin".into(), sluice_entry.to_string()]);
    let out = run(&podman, &node, &image, &args);
    assert!(
        out.status.success(),
        "install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed: Value =
        serde_json::from_str(&std::fs::read_to_string(cni_conf.join("00-sluice.conflist")).unwrap()).unwrap();
    assert_eq!(installed, full, "the node's network with sluice last");
    // The init container again (a restarted pod, a node rebooted): the
    // same conflist, sluice listed once, the binaries replaced by rename.
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(cni_bin.join("sluice")).unwrap().ino();
    let out = run(&podman, &node, &image, &args);
    assert!(
        out.status.success(),
        "install again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(cni_conf.join("00-sluice.conflist")).unwrap()).unwrap();
    assert_eq!(again, full, "installing again changes nothing");
    assert_ne!(
        std::fs::metadata(cni_bin.join("sluice")).unwrap().ino(),
        before,
        "replaced, not rewritten in place"
    );

    // Pods through the installed chain: the image's (stripped) sluice runs
    // on the host.
    let mut chain = Chain::new(installed, Some(vpc.node_name(0)));
    chain.path = vec![cni_bin.clone(), PathBuf::from("/usr/lib/cni")];
    let mut ips = BTreeMap::new();
    let mut pods = BTreeMap::new();
    for name in ["srv", "cli", "gone"] {
        let p = vpc.pod(name).unwrap();
        let netns = vpc.pods[p].path().display().to_string();
        let r = chain.add(name, &netns, "eth0").unwrap();
        ips.insert(name, result_ip(&r).parse::<IpAddr>().unwrap());
        pods.insert(name, (p, netns));
    }
    assert_eq!(
        vpc.pinned_links(0),
        ["cli:eth0", "gone:eth0", "srv:eth0"],
        "attached by the image's sluice"
    );
    let _echo = EchoServer::start(&vpc.pods[pods["srv"].0], 7000, "srv").unwrap();
    let gone = vpc.pods[pods["gone"].0].name.clone();
    sluice_integration::netns::ip(&["netns", "del", &gone]).unwrap();

    // The agent container, reading manifests instead of the API server, once.
    std::fs::write(
        host_dir.join("manifests/web.yaml"),
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  clusterIP: {VIP}
  ports: [{{name: http, port: 80, targetPort: 7000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 7000, protocol: TCP}}]
endpoints: [{{addresses: [{}]}}]
",
            ips["srv"]
        ),
    )
    .unwrap();
    let agent = &spec["containers"][0];
    let mut args = run_args(&spec, agent, &host, &env);
    let at = args
        .iter()
        .position(|a| a == "--kubernetes")
        .expect("the agent runs --kubernetes");
    args.splice(
        at..=at,
        [
            "--manifests".to_string(),
            "/manifests".to_string(),
            "--once".to_string(),
        ],
    );
    let image_at = args.iter().position(|a| a == "IMAGE").unwrap();
    let manifests = format!("{}:/manifests:ro", host_dir.join("manifests").display());
    args.splice(image_at..image_at, ["--volume".to_string(), manifests]);
    let out = run(&podman, &node, &image, &args);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent: {log}");
    assert!(
        log.contains("socket load balancing on"),
        "the agent attached the socket hooks to the (host's) cgroup: {log}"
    );
    assert!(
        log.contains("netns is gone"),
        "the agent collected the pod whose netns went: {log}"
    );
    assert!(
        log.contains("uplink programs attached") && log.contains("uplink=eth0"),
        "the agent put the uplink programs on the default route's interface: {log}"
    );
    assert!(
        log.contains("the programs read the clock from jiffies"),
        "the host's timer list, mounted past the runtime's mask, gave the programs' clock: {log}"
    );

    let left = vpc.endpoint_addrs(0).unwrap();
    let mut live = vec![ips["srv"], ips["cli"]];
    live.sort();
    assert_eq!(left, live, "only the live pods keep their endpoint entries");
    assert_eq!(vpc.pinned_links(0), ["cli:eth0", "srv:eth0"], "and their links");
    let reply = tcp_request(
        &vpc.pods[pods["cli"].0],
        SocketAddr::new(VIP.parse().unwrap(), 80),
        "hi",
    )
    .unwrap();
    assert_eq!(reply, "srv:hi", "the Service the containerized agent wrote");

    for name in ["srv", "cli", "gone"] {
        chain.del(name, &pods[name].1, "eth0").unwrap();
    }
    assert!(vpc.endpoints(0).is_empty() && vpc.pinned_links(0).is_empty());
    let out = podman.command(None).args(["rmi", "--force", &image]).output().unwrap();
    assert!(out.status.success(), "rmi: {}", String::from_utf8_lossy(&out.stderr));
}

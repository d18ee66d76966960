//! The default attach (`datapath.attach: auto`): ADD puts clsact filters on
//! the pod (no RCU grace period on the pod's start), and the agent moves
//! each pod onto pinned TCX links once no pod has started or gone for a
//! while, with a connection open across the move. CHECK passes before and
//! after; a new program version takes pods on filters and on links alike;
//! DEL leaves nothing.

use sluice_agent::promote::Moved;
use sluice_integration::agent::{AgentProcess, metrics_addr, sample, scrape};
use sluice_integration::chain::Chain;
use sluice_integration::datapath::{programs_on, tc_filters};
use sluice_integration::probe::{Session, StreamEcho};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_integration::{require_reference_plugins, require_root};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn on_filters(vpc: &Vpc, pod: usize) -> bool {
    ["egress", "ingress"]
        .iter()
        .all(|side| tc_filters(&vpc.pods[pod], "eth0", side).unwrap().contains("sl_"))
}

fn on_links(vpc: &Vpc, pod: usize) -> bool {
    let on = programs_on(&vpc.pods[pod], "eth0").unwrap();
    on.egress.len() == 1 && on.ingress.len() == 1
}

/// Wait until the node's pinned links are `want`; how long it took.
fn links_become(vpc: &Vpc, want: &[&str], within: Duration, log: &std::path::Path) -> Duration {
    let started = Instant::now();
    while vpc.pinned_links(0) != want {
        assert!(
            started.elapsed() < within,
            "pinned links {:?}, expected {want:?}; agent log:\n{}",
            vpc.pinned_links(0),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

#[test]
fn auto_starts_pods_on_filters_and_the_agent_moves_them_onto_links() {
    if !require_root("auto_starts_pods_on_filters_and_the_agent_moves_them_onto_links") {
        return;
    }
    let mut vpc = Vpc::new("pro", 1).unwrap();
    let mut conf = vpc.main_conf(0, "1.1.0");
    conf["datapath"].as_object_mut().unwrap().remove("attach");
    let (a, b) = (vpc.pod("a").unwrap(), vpc.pod("b").unwrap());
    vpc.sluice(0, "ADD", "ca", a, &conf).expect_ok("ADD a");
    let ip_b = result_ip(&vpc.sluice(0, "ADD", "cb", b, &conf).expect_ok("ADD b").json());

    // At ADD: filters, no link.
    assert!(vpc.pinned_links(0).is_empty(), "{:?}", vpc.pinned_links(0));
    assert!(on_filters(&vpc, a) && on_filters(&vpc, b));
    assert!(!on_links(&vpc, a));
    vpc.sluice(0, "CHECK", "ca", a, &conf).expect_ok("CHECK on filters");
    let _echo = StreamEcho::start(&vpc.pods[b], 7000, "b").unwrap();
    let to_b: SocketAddr = format!("{ip_b}:7000").parse().unwrap();
    let mut session = Session::open(&vpc.pods[a], to_b).unwrap();
    assert_eq!(session.ask("before").unwrap(), "b:before");

    // The agent moves both once the node is quiet.
    let work = tempfile::tempdir().unwrap();
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let log = work.path().join("agent.log");
    let cni_data = vpc.data_dir.join("n0");
    let agent = AgentProcess::start_with(
        &manifests,
        &vpc.bpffs[0].root(),
        &vpc.node_name(0),
        &log,
        &["--no-flows", "--cni-data-dir", cni_data.to_str().unwrap()],
    )
    .unwrap();
    let took = links_become(&vpc, &["ca:eth0", "cb:eth0"], Duration::from_secs(15), &log);
    eprintln!("both pods on TCX links {took:?} after the agent started");
    for p in [a, b] {
        assert!(on_links(&vpc, p), "TCX programs on pod {p}");
        assert!(!on_filters(&vpc, p), "its filters are gone");
    }
    assert_eq!(
        session.ask("after").unwrap(),
        "b:after",
        "the connection opened on filters goes on over the links"
    );
    vpc.sluice(0, "CHECK", "ca", a, &conf).expect_ok("CHECK on links");
    vpc.sluice(0, "CHECK", "cb", b, &conf).expect_ok("CHECK on links");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("pod moved from clsact filters onto TCX links").count(),
        2,
        "{text}"
    );
    let body = scrape(metrics_addr(&log).expect("metrics address logged")).unwrap();
    assert_eq!(
        sample(&body, "sluice_tcx_moves_total{result=\"moved\"}"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(sample(&body, "sluice_pods_on_filters"), Some(0.0), "{body}");

    // A pod started while the agent runs: on filters at ADD, moved after.
    let c = vpc.pod("c").unwrap();
    let started = Instant::now();
    vpc.sluice(0, "ADD", "cc", c, &conf).expect_ok("ADD c");
    assert!(on_filters(&vpc, c), "on filters right after ADD");
    let took = links_become(&vpc, &["ca:eth0", "cb:eth0", "cc:eth0"], Duration::from_secs(15), &log);
    assert!(
        started.elapsed() >= sluice_agent::promote::QUIET,
        "moved only once the node was quiet"
    );
    eprintln!("a new pod on links {took:?} after its ADD");

    // Another program version: the pods on links are moved by their pins,
    // a pod on filters (not moved yet) by its filters; all pass CHECK.
    let mut conf2 = conf.clone();
    conf2["datapath"]["ctTimeouts"] = serde_json::json!({"udp": 31});
    let d = vpc.pod("d").unwrap();
    vpc.sluice(0, "ADD", "cd", d, &conf2)
        .expect_ok("ADD d on a new version");
    assert_eq!(vpc.program_versions(0).len(), 1, "the old version unpinned");
    for (cid, p) in [("ca", a), ("cb", b), ("cc", c), ("cd", d)] {
        vpc.sluice(0, "CHECK", cid, p, &conf2)
            .expect_ok("CHECK after the upgrade");
    }
    assert_eq!(session.ask("upgraded").unwrap(), "b:upgraded");
    for p in [a, b, c] {
        assert!(
            on_links(&vpc, p) && !on_filters(&vpc, p),
            "the upgrade moved pod {p}'s links and put no filter back on it"
        );
    }
    links_become(
        &vpc,
        &["ca:eth0", "cb:eth0", "cc:eth0", "cd:eth0"],
        Duration::from_secs(15),
        &log,
    );
    vpc.sluice(0, "CHECK", "cd", d, &conf2).expect_ok("CHECK d on links");

    drop(session);
    // DEL of a pod on links while the agent runs: its interface taken down
    // and out of the way at once, deleted by the agent once the node is
    // quiet (two grace periods no DEL waits for).
    let links_of = |p: usize| -> Vec<String> {
        vpc.pods[p]
            .ip(&["-o", "link", "show"])
            .unwrap()
            .lines()
            .map(|l| {
                l.split(':')
                    .nth(1)
                    .unwrap()
                    .trim()
                    .split('@')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let retired_records = || sluice_integration::dir_names(&cni_data.join("retired"));
    for (cid, p) in [("ca", a), ("cb", b), ("cc", c)] {
        let ifindex = vpc.pods[p].ip(&["-o", "link", "show", "eth0"]).unwrap();
        let ifindex: u32 = ifindex.split(':').next().unwrap().trim().parse().unwrap();
        vpc.sluice(0, "DEL", cid, p, &conf2).expect_ok("DEL");
        let left = vpc.pods[p].ip(&["-o", "link", "show"]).unwrap();
        let retired = format!("sldel{ifindex:x}");
        assert!(
            !links_of(p).contains(&"eth0".to_string()) && left.contains(&format!("{ifindex}: {retired}@")),
            "right after DEL: eth0 gone, #{ifindex} renamed {retired}:\n{left}"
        );
        // It answers for no address of the pod's (the pool may lease them
        // again at once), and the pod's routes went with them.
        let addrs = vpc.pods[p].ip(&["-o", "addr", "show", "dev", &retired]).unwrap();
        assert!(!addrs.contains("inet ") && !addrs.contains("scope global"), "{addrs}");
        let routes = vpc.pods[p].ip(&["route", "show"]).unwrap();
        assert!(routes.trim().is_empty(), "{routes}");
    }
    assert!(vpc.pinned_links(0) == ["cd:eth0"] && vpc.endpoints(0).len() == 1);
    assert_eq!(retired_records().len(), 3, "{:?}", retired_records());
    let started = Instant::now();
    while [a, b, c].iter().any(|&p| links_of(p) != ["lo"]) || !retired_records().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not reaped: {:?} {:?} {:?}, records {:?}; agent log:\n{}",
            links_of(a),
            links_of(b),
            links_of(c),
            retired_records(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "three deleted pods' interfaces reaped {:?} after the last DEL",
        started.elapsed()
    );
    let retired_pins = vpc.datapath_dir(0).join("retired");
    assert!(
        sluice_integration::dir_names(&retired_pins).is_empty(),
        "retired links unpinned"
    );
    let body = scrape(metrics_addr(&log).expect("metrics address logged")).unwrap();
    assert_eq!(
        sample(&body, "sluice_pod_interfaces_reaped_total{result=\"deleted\"}"),
        Some(3.0),
        "{body}"
    );

    // With no agent, a DEL deletes the interface and its links itself.
    agent.kill().unwrap();
    vpc.sluice(0, "DEL", "cd", d, &conf2).expect_ok("DEL");
    assert_eq!(links_of(d), ["lo"], "no agent: the interface deleted by the DEL");
    assert!(retired_records().is_empty());
    assert!(vpc.pinned_links(0).is_empty() && vpc.endpoints(0).is_empty());
}

/// A move lists the pods that ask for links without the node's lock; a
/// pod whose DEL runs before the move takes the lock is found gone by the
/// record and nothing is pinned (links pinned then would outlive the pod).
/// In the chained role the interface is the first plugin's and stays
/// after sluice's DEL, so only the record can tell.
#[test]
fn a_pod_deleted_before_its_move_gets_no_links() {
    if !require_root("a_pod_deleted_before_its_move_gets_no_links") {
        return;
    }
    if !require_reference_plugins("a_pod_deleted_before_its_move_gets_no_links") {
        return;
    }
    let mut vpc = Vpc::new("prd", 1).unwrap();
    let mut list = vpc.chained_conflist(0, "1.0.0");
    list["plugins"][1]["datapath"].as_object_mut().unwrap().remove("attach");
    let mut chain = Chain::new(list.clone(), Some(vpc.node_name(0)));
    let a = vpc.pod("a").unwrap();
    let netns = vpc.pods[a].path().display().to_string();
    chain.add("da", &netns, "eth0").unwrap();
    let cni_data = vpc.data_dir.join("n0");
    let bpffs = vpc.bpffs[0].root();
    let listed = sluice_agent::promote::pending(&cni_data, &bpffs);
    assert_eq!(listed.len(), 1, "the pod asks for links: {listed:?}");

    // sluice's DEL alone, as a chain runs it: the interface stays.
    let mut conf = list["plugins"][1].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    vpc.sluice(0, "DEL", "da", a, &conf).expect_ok("sluice's DEL");
    let moved = sluice_agent::promote::promote(&cni_data, &bpffs, &listed[0]).unwrap();
    assert_eq!(moved, Moved::Gone);
    assert!(
        vpc.pinned_links(0).is_empty(),
        "links pinned: {:?}",
        vpc.pinned_links(0)
    );
    assert!(!on_links(&vpc, a), "TCX programs on a deleted pod's interface");
    chain.del("da", &netns, "eth0").unwrap();
}

/// ADD with the runtime's CNI_ARGS naming the pod `namespace/name`.
fn add_named(vpc: &Vpc, pod: usize, cid: &str, name: &str, conf: &serde_json::Value) {
    let bin = sluice_integration::cni_bin_dir().join("sluice");
    let netns = vpc.pods[pod].path().display().to_string();
    sluice_integration::cni::Call::new(&bin, Some(&vpc.nodes[0].name))
        .standard("ADD", cid, &netns, "eth0")
        .env(
            "CNI_ARGS",
            &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name}"),
        )
        .run(&serde_json::to_vec(conf).unwrap())
        .expect_ok("ADD");
}

const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: shop}
spec:
  containers:
  - name: web
    securityContext: {capabilities: {add: [NET_BIND_SERVICE, NET_RAW]}}
---
apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: shop}
spec:
  containers:
  - name: router
    securityContext: {capabilities: {add: [NET_ADMIN]}}
---
apiVersion: v1
kind: Pod
metadata: {name: priv, namespace: shop}
spec:
  containers:
  - name: web
  initContainers:
  - name: setup
    securityContext: {privileged: true}
";

/// With `--tcx-links net-admin`, only a pod that could take its filters
/// off (NET_ADMIN, privileged, in any container) is moved onto links, and
/// a pod with no Pod object; the others stay on filters, CHECK passes on
/// them, and one that gains NET_ADMIN (an ephemeral container) is moved
/// then. The default moves every pod.
#[test]
fn net_admin_links_move_only_the_pods_that_could_remove_their_filters() {
    if !require_root("net_admin_links_move_only_the_pods_that_could_remove_their_filters") {
        return;
    }
    let mut vpc = Vpc::new("prn", 1).unwrap();
    let mut conf = vpc.main_conf(0, "1.1.0");
    conf["datapath"].as_object_mut().unwrap().remove("attach");
    let pods: Vec<usize> = ["plain", "admin", "priv", "ghost", "other"]
        .iter()
        .map(|n| vpc.pod(n).unwrap())
        .collect();
    let (plain, ghost, other) = (pods[0], pods[3], pods[4]);
    for (p, name) in pods.iter().zip(["plain", "admin", "priv", "ghost"]) {
        add_named(&vpc, *p, &format!("c{name}"), name, &conf);
    }
    // A record naming no pod (a runtime outside Kubernetes).
    vpc.sluice(0, "ADD", "cother", other, &conf)
        .expect_ok("ADD without CNI_ARGS");

    let work = tempfile::tempdir().unwrap();
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("pods.yaml"), PODS).unwrap();
    let log = work.path().join("agent.log");
    let cni_data = vpc.data_dir.join("n0");
    let agent = AgentProcess::start_with(
        &manifests,
        &vpc.bpffs[0].root(),
        &vpc.node_name(0),
        &log,
        &[
            "--no-flows",
            "--tcx-links",
            "net-admin",
            "--cni-data-dir",
            cni_data.to_str().unwrap(),
        ],
    )
    .unwrap();
    let moved = ["cadmin:eth0", "cghost:eth0", "cother:eth0", "cpriv:eth0"];
    links_become(&vpc, &moved, Duration::from_secs(15), &log);
    // Past another quiet period and a few promotion passes: plain stays.
    std::thread::sleep(sluice_agent::promote::QUIET * 4);
    assert_eq!(vpc.pinned_links(0), moved);
    assert!(on_filters(&vpc, plain) && !on_links(&vpc, plain), "plain on filters");
    assert!(on_links(&vpc, ghost) && !on_filters(&vpc, ghost));
    vpc.sluice(0, "CHECK", "cplain", plain, &conf)
        .expect_ok("CHECK on filters");
    let body = scrape(metrics_addr(&log).expect("metrics address logged")).unwrap();
    assert_eq!(
        sample(&body, "sluice_pods_on_filters"),
        Some(0.0),
        "a pod kept on filters is not waiting: {body}"
    );

    // `kubectl debug --profile=netadmin`: an ephemeral container with
    // NET_ADMIN is added to the running pod.
    let debugged = PODS.replacen(
        "  - name: web\n    securityContext: {capabilities: {add: [NET_BIND_SERVICE, NET_RAW]}}\n",
        "  - name: web\n    securityContext: {capabilities: {add: [NET_BIND_SERVICE, NET_RAW]}}\n  ephemeralContainers:\n  - name: debugger\n    securityContext: {capabilities: {add: [NET_ADMIN, NET_RAW]}}\n",
        1,
    );
    assert_ne!(debugged, PODS);
    std::fs::write(manifests.join("pods.yaml"), debugged).unwrap();
    links_become(
        &vpc,
        &["cadmin:eth0", "cghost:eth0", "cother:eth0", "cplain:eth0", "cpriv:eth0"],
        Duration::from_secs(15),
        &log,
    );
    assert!(on_links(&vpc, plain) && !on_filters(&vpc, plain));
    drop(agent);

    // The default (`--tcx-links all`): a pod without NET_ADMIN is moved as well.
    let late = vpc.pod("late").unwrap();
    add_named(&vpc, late, "clate", "plain", &conf);
    std::fs::write(manifests.join("pods.yaml"), PODS).unwrap();
    let _agent = AgentProcess::start_with(
        &manifests,
        &vpc.bpffs[0].root(),
        &vpc.node_name(0),
        &log,
        &["--no-flows", "--cni-data-dir", cni_data.to_str().unwrap()],
    )
    .unwrap();
    links_become(
        &vpc,
        &[
            "cadmin:eth0",
            "cghost:eth0",
            "clate:eth0",
            "cother:eth0",
            "cplain:eth0",
            "cpriv:eth0",
        ],
        Duration::from_secs(15),
        &log,
    );
    for (cid, p) in ["cplain", "cadmin", "cpriv", "cghost", "cother", "clate"]
        .iter()
        .zip(pods.iter().copied().chain([late]))
    {
        vpc.sluice(0, "DEL", cid, p, &conf).expect_ok("DEL");
    }
    assert!(vpc.pinned_links(0).is_empty() && vpc.endpoints(0).is_empty());
}

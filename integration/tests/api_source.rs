//! The agent's API-server source over the wire: its kube-rs watchers
//! against a stand-in that speaks the API's list/watch protocol for the
//! six kinds (integration/src/api_server.rs), through the faults a real
//! API server has: lists that are slow and paged, a kind listed late,
//! watch connections cut mid-stream, history compacted under a watch
//! (`410 Gone`, forcing a re-list), bookmarks throughout.
//!
//! After each fault the agent's maps must equal what the manifest source
//! writes for the same objects (another node, `--once`); nothing may be
//! written before every kind is listed; a cut watch must lose no update
//! (it resumes from its resourceVersion and the server replays).

use serde_json::{Value, json};
use sluice_integration::agent::{AgentProcess, http_get, probes_addr};
use sluice_integration::api_server::{ApiServer, Faults};
use sluice_integration::vpc::Vpc;
use sluice_integration::{bin_dir, require_root};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NODE: &str = "api-node";

fn service(name: &str, ns: &str, vip: &str, port: u16, proto: &str, backends: &[&str]) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
               "spec": {"clusterIP": vip, "ports": [{"name": "p", "port": port, "targetPort": 8080, "protocol": proto}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4", "ports": [{"name": "p", "port": 8080, "protocol": proto}],
               "endpoints": backends.iter().map(|b| json!({"addresses": [b]})).collect::<Vec<_>>()}),
    ]
}

/// The cluster: two namespaces, this node, pods (one of them the node's
/// real pod, 10.244.1.2, which the policy selects), ten Services.
fn cluster() -> Vec<Value> {
    let mut v = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "shop"}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ops", "labels": {"team": "ops"}}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
               "status": {"addresses": [{"type": "InternalIP", "address": "172.31.0.11"}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
               "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]},
               "status": {"phase": "Running", "podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cli-0", "namespace": "shop", "labels": {"app": "cli"}},
               "spec": {"nodeName": "elsewhere", "containers": [{"name": "c", "image": "x"}]},
               "status": {"phase": "Running", "podIP": "10.244.2.7", "podIPs": [{"ip": "10.244.2.7"}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mon-0", "namespace": "ops", "labels": {"app": "mon"}},
               "spec": {"nodeName": "elsewhere", "containers": [{"name": "c", "image": "x"}]},
               "status": {"phase": "Running", "podIP": "10.244.2.8", "podIPs": [{"ip": "10.244.2.8"}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}},
                                              {"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
                                     "ports": [{"port": 8080}]}]}}),
    ];
    v.extend(service(
        "web",
        "shop",
        "10.96.0.70",
        80,
        "TCP",
        &["10.244.1.2", "10.244.2.10", "10.244.2.11"],
    ));
    v.extend(service("db", "shop", "10.96.0.71", 5432, "TCP", &["10.244.2.12"]));
    v.extend(service(
        "dns",
        "ops",
        "10.96.0.72",
        53,
        "UDP",
        &["10.244.2.13", "10.244.2.14"],
    ));
    for i in 0..7 {
        v.extend(service(
            &format!("filler{i}"),
            "ops",
            &format!("10.96.1.{i}"),
            80,
            "TCP",
            &[&format!("10.244.3.{i}")],
        ));
    }
    v
}

/// The manifest source's view of `objects`: written to a directory and
/// synced once by the agent on node `vpc` (its maps by difference).
fn manifest_sync(vpc: &Vpc, dir: &Path, objects: &[Value]) {
    let text: Vec<String> = objects.iter().map(|o| serde_yaml_ng::to_string(o).unwrap()).collect();
    std::fs::write(dir.join("cluster.yaml"), text.join("---\n")).unwrap();
    let out = Command::new(bin_dir().join("sluice-agent"))
        .arg("--manifests")
        .arg(dir)
        .arg("--bpffs")
        .arg(vpc.bpffs[0].root())
        .args(["--node-name", NODE, "--once", "--no-metrics", "--no-flows"])
        .arg("--cni-data-dir")
        .arg(vpc.data_dir.join("n0"))
        .arg("--policy-namespaces-file")
        .arg(vpc.data_dir.join("policy-namespaces.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "manifest agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drop what depends on allocation order (ids), sort what is a set.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["id", "revNatId", "identity", "ids"] {
                m.remove(k);
            }
            m.values_mut().for_each(normalize);
        }
        Value::Array(a) => {
            a.iter_mut().for_each(normalize);
            a.sort_by_key(|x| x.to_string());
        }
        _ => {}
    }
}

/// A node's Services, backends and policy, as sluicectl lists them.
fn view(vpc: &Vpc) -> Value {
    let mut out = serde_json::Map::new();
    for what in [["service", "list"], ["backend", "list"], ["policy", "list"]] {
        let mut v = vpc.sluicectl(0, &what);
        normalize(&mut v);
        out.insert(what[0].to_string(), v);
    }
    Value::Object(out)
}

/// Wait until node `a` shows what node `b` does.
fn converges(a: &Vpc, b: &Vpc, what: &str, within: Duration) {
    let want = view(b);
    let deadline = Instant::now() + within;
    loop {
        let got = view(a);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the API source's maps\n{got:#}\nare not the manifest source's\n{want:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node with one pod (the datapath loaded, the pod 10.244.1.2).
fn node(tag: &str) -> Vpc {
    let mut vpc = Vpc::new(tag, 1).unwrap();
    let p = vpc.pod("web-0").unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let r = vpc.sluice(0, "ADD", "web-0", p, &conf).expect_ok("ADD").json();
    assert_eq!(sluice_integration::vpc::result_ip(&r), "10.244.1.2");
    vpc
}

#[test]
fn the_api_source_converges_through_the_protocols_faults() {
    if !require_root("the_api_source_converges_through_the_protocols_faults") {
        return;
    }
    let (a, b) = (node("aa"), node("ab"));
    let work = tempfile::tempdir().unwrap();
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let mut objects = cluster();

    // Lists slow (150 ms a page) and short (3 items a page), bookmarks
    // every 100 ms; Nodes are listed only when the test says.
    let api = ApiServer::start(Faults {
        page: Some(3),
        list_delay: Duration::from_millis(150),
        bookmarks: Some(Duration::from_millis(100)),
    })
    .unwrap();
    for o in &objects {
        api.apply(o.clone()).unwrap();
    }
    api.hold("Node");
    let kubeconfig = work.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let log = work.path().join("agent.log");
    let mut agent = AgentProcess::start_kube(&kubeconfig, &a.bpffs[0].root(), NODE, &log, &["--no-flows"]).unwrap();

    // 1. Nothing is written before every kind is listed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.counts().lists.len() < 5 || api.open_watches("Pod") == 0 {
        assert!(
            Instant::now() < deadline,
            "the five other kinds not listed: {:?}\n{}",
            api.counts(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(" synced"), "synced with Nodes unlisted: {text}");
    assert_eq!(
        view(&a)["service"],
        json!([]),
        "Services written before every kind was listed"
    );
    let probes = probes_addr(&log).expect("the agent logs its probes address");
    let (code, body) = http_get(probes, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready before the first sync: {body}");
    assert!(body.contains("first sync"), "{body}");
    api.release("Node");
    agent.wait_synced(1, Duration::from_secs(20)).unwrap();
    assert_eq!(http_get(probes, "/readyz").unwrap().0, 200, "ready once synced");
    manifest_sync(&b, &manifests, &objects);
    converges(&a, &b, "first list", Duration::from_secs(10));
    let c = api.counts();
    assert!(c.pages_continued >= 4, "paged lists: {c:?}");

    // 2. Every watch cut mid-stream, changes made while the agent is
    //    away: it resumes from its resourceVersion and loses none.
    let lists_before = api.counts().lists.values().sum::<usize>();
    let cut = api.drop_watches();
    assert!(cut >= 6, "the agent watched every kind: {cut} watches");
    let mut changed = service("web", "shop", "10.96.0.70", 80, "TCP", &["10.244.1.2", "10.244.2.11"]);
    changed.extend(service("late", "ops", "10.96.0.73", 9000, "TCP", &["10.244.2.20"]));
    for o in &changed {
        api.apply(o.clone()).unwrap();
    }
    objects.retain(|o| {
        !changed
            .iter()
            .any(|c| c["kind"] == o["kind"] && c["metadata"] == o["metadata"])
    });
    objects.extend(changed);
    manifest_sync(&b, &manifests, &objects);
    converges(&a, &b, "after the watches were cut", Duration::from_secs(15));
    assert_eq!(
        api.counts().lists.values().sum::<usize>(),
        lists_before,
        "resumed by watching from the last resourceVersion, without a re-list"
    );

    // 3. The watches cut, a deletion, then the history compacted before
    //    any watch may come back: resuming gets 410 Gone, the agent lists
    //    again, and sees the deletion only through that list. (Without
    //    the hold a watch back before the deletion sees it live, and the
    //    410s come to the kinds that did not change.)
    api.hold_watches();
    api.drop_watches();
    api.delete("Service", "shop/db").unwrap();
    api.delete("EndpointSlice", "shop/db-1").unwrap();
    api.compact();
    api.release_watches();
    objects.retain(|o| {
        !(o["metadata"]["namespace"] == "shop" && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("db")))
    });
    manifest_sync(&b, &manifests, &objects);
    converges(&a, &b, "after 410 Gone and a re-list", Duration::from_secs(20));
    let c = api.counts();
    // The Services' and EndpointSlices' watches at least: their lists
    // brought the deletion.
    assert!(c.gone >= 2, "the resumed watches were answered 410: {c:?}");
    assert!(
        c.lists.values().sum::<usize>() > lists_before,
        "the agent listed again: {c:?}"
    );
    assert!(c.bookmarks > 0, "bookmarks were sent: {c:?}");
    assert!(
        view(&a)["service"].to_string().contains("10.96.0.73")
            && !view(&a)["service"].to_string().contains("10.96.0.71"),
        "the late Service is there, the deleted one gone"
    );

    // 4. One more change after all that: the watches are live again.
    let more = service("dns", "ops", "10.96.0.72", 53, "UDP", &["10.244.2.13"]);
    for o in &more {
        api.apply(o.clone()).unwrap();
    }
    objects.retain(|o| {
        !more
            .iter()
            .any(|c| c["kind"] == o["kind"] && c["metadata"] == o["metadata"])
    });
    objects.extend(more);
    manifest_sync(&b, &manifests, &objects);
    converges(&a, &b, "a change after the re-list", Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("watch failed; retrying"),
        "the agent saw its watches fail: {text}"
    );
    drop(agent);
}

/// Without kube-proxy nothing translates the `kubernetes` Service's
/// ClusterIP that the in-cluster configuration names, so the DaemonSet
/// gives the agent the API server's own address (`SLUICE_API_SERVER` from
/// the sluice-config ConfigMap, or `--api-server`): it replaces the
/// configured one and the agent syncs through it.
#[test]
fn the_api_server_address_replaces_the_configured_one() {
    if !require_root("the_api_server_address_replaces_the_configured_one") {
        return;
    }
    let a = node("ac");
    let work = tempfile::tempdir().unwrap();
    let api = ApiServer::start(Faults::default()).unwrap();
    for o in cluster() {
        api.apply(o).unwrap();
    }
    // The configured server is a closed port on the loopback (as an
    // untranslated ClusterIP would be: nothing answers).
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"http://127.0.0.1:1\"}\n\
         users:\n- name: u\n  user: {}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n",
    )
    .unwrap();
    let log = work.path().join("agent.log");
    let url = format!("http://{}", api.addr);
    let mut agent = AgentProcess::start_kube(
        &kubeconfig,
        &a.bpffs[0].root(),
        NODE,
        &log,
        &["--no-flows", "--api-server", &url],
    )
    .unwrap();
    agent.wait_synced(1, Duration::from_secs(20)).unwrap();
    assert!(
        view(&a)["service"].to_string().contains("10.96.0.70"),
        "synced through the given address"
    );
    assert_eq!(api.counts().lists.len(), 6, "every kind listed from it");
}

//! The node agent on its manifest source, end to end: real pods made by the
//! CNI binary, a Service written as ordinary manifests, the `sluice-agent`
//! binary watching them.
//!
//! - Editing the EndpointSlice reaches the maps within 1 second, each way,
//!   while a client keeps connecting: scaling 3 -> 1 (the two leaving
//!   endpoints terminating first, then gone, as a rolling update does) and
//!   back to 3, with no failed connection.
//! - kill -9 of the agent keeps established connections and Services
//!   working; the restarted agent finds nothing to write.

use serde_json::json;
use sluice_integration::agent::{
    AgentProcess, http_get, log_field, logged_addr, metrics_addr, sample, scrape, wait_logged_addr,
};
use sluice_integration::probe::{EchoServer, Session, StreamEcho};
use sluice_integration::require_root;
use sluice_integration::vpc::{Vpc, result_ip};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 10);

#[derive(Clone, Copy, PartialEq)]
enum State {
    Ready,
    Terminating,
    Gone,
}

/// The Service and its EndpointSlice, written atomically (a hidden
/// temporary file renamed into place, as editors and kubectl-like tools do).
fn write_manifests(dir: &Path, backends: &[(Ipv4Addr, State)]) {
    let mut endpoints = String::new();
    for (ip, st) in backends {
        let cond = match st {
            State::Ready => "{ready: true, serving: true, terminating: false}",
            State::Terminating => "{ready: false, serving: true, terminating: true}",
            State::Gone => continue,
        };
        endpoints.push_str(&format!("- addresses: [{ip}]\n  conditions: {cond}\n"));
    }
    if endpoints.is_empty() {
        endpoints = "[]\n".into();
    }
    let text = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  clusterIP: {VIP}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: stream, port: 7100, targetPort: 7100}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: stream, port: 7100, protocol: TCP}}
endpoints:
{endpoints}"
    );
    let tmp = dir.join(".web.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("web.yaml")).unwrap();
}

/// The namespace, the pods (c: app=client, s1..s3: app=web) and a policy:
/// web pods take connections from client pods only.
fn write_policy(dir: &Path, ips: &[Ipv4Addr]) {
    let mut text = String::from(
        "apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {kubernetes.io/metadata.name: demo}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
",
    );
    for (name, ip) in ["c", "s1", "s2", "s3"].iter().zip(ips) {
        let app = if *name == "c" { "client" } else { "web" };
        text.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}}}
spec: {{containers: [{{name: c, image: x}}]}}
status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"
        ));
    }
    let tmp = dir.join(".policy.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("policy.yaml")).unwrap();
}

/// Poll the node's maps until `ok` holds; the time it took.
fn until(
    maps: &sluice_tc_datapath::maps::Maps,
    what: &str,
    ok: impl Fn(&sluice_tc_datapath::maps::Maps) -> bool,
) -> Duration {
    let started = Instant::now();
    while !ok(maps) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: not in the maps after 5 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

fn active(maps: &sluice_tc_datapath::maps::Maps) -> usize {
    maps.lb()
        .services()
        .unwrap()
        .iter()
        .find(|s| s.vip == IpAddr::V4(VIP) && s.port == 80)
        .map_or(0, |s| s.active.len())
}

fn has_backend(maps: &sluice_tc_datapath::maps::Maps, ip: Ipv4Addr) -> bool {
    maps.lb().backends().unwrap().iter().any(|b| b.addr == IpAddr::V4(ip))
}

fn request(to: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"hi")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split(':').next().unwrap_or("").to_string())
}

/// The kubelet's probes: alive from the start, ready only once the node's
/// programs are loaded (the first pod's ADD loads them) and the first sync
/// is written.
#[test]
fn the_agent_is_ready_once_loaded_and_synced() {
    if !require_root("the_agent_is_ready_once_loaded_and_synced") {
        return;
    }
    let mut vpc = Vpc::new("ar", 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    write_manifests(&dir, &[(Ipv4Addr::new(10, 244, 1, 99), State::Ready)]);
    let log = work.path().join("agent.log");
    let mut agent = AgentProcess::start(&dir, &vpc.bpffs[0].root(), &vpc.node_name(0), &log).unwrap();
    let addr = wait_logged_addr(&log, "serving /healthz", Duration::from_secs(10)).unwrap();
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200, "alive while waiting");
    let (code, body) = http_get(addr, "/readyz").unwrap();
    assert_eq!(code, 503, "no programs on the node yet: {body}");
    assert!(body.contains("datapath"), "{body}");

    let p = vpc.pod("p").unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    vpc.sluice(0, "ADD", "p", p, &conf).expect_ok("ADD");
    agent.wait_synced(1, Duration::from_secs(10)).unwrap();
    let (code, body) = http_get(addr, "/readyz").unwrap();
    assert_eq!(code, 200, "loaded and synced: {body}");
    assert_eq!(http_get(addr, "/nothing").unwrap().0, 404);
    vpc.sluice(0, "DEL", "p", p, &conf).expect_ok("DEL");
}

/// This node's Node object, with the cluster autoscaler's taint or not.
fn write_node(dir: &Path, node: &str, to_be_deleted: bool) {
    let taints = if to_be_deleted {
        "[{key: ToBeDeletedByClusterAutoscaler, value: '1767225600', effect: NoSchedule}]"
    } else {
        "[]"
    };
    let text = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}\nspec: {{taints: {taints}}}\n");
    let tmp = dir.join(".node.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("node.yaml")).unwrap();
}

/// GET `path` until its status is `want`, for up to 10 s: the last answer.
fn http_until(addr: SocketAddr, path: &str, want: u16) -> (u16, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(addr, path).unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap_or(json!({"raw": body}));
        if code == want || Instant::now() > deadline {
            return (code, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node's proxy health where kube-proxy serves it (`--proxy-health`):
/// unhealthy once the first sync has waited past the timeout (no programs
/// on the node yet, so no NodePort served), healthy once synced; a node the
/// cluster autoscaler is removing fails `/healthz` but not `/livez`; a port
/// another process holds (kube-proxy, being replaced) is taken at a sync
/// once free. Its status port's `/proxyMode` names the proxy.
#[test]
fn the_agent_serves_the_proxy_health() {
    if !require_root("the_agent_serves_the_proxy_health") {
        return;
    }
    let mut vpc = Vpc::new("ph", 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    write_manifests(&dir, &[(Ipv4Addr::new(10, 244, 1, 99), State::Ready)]);
    let node = vpc.node_name(0);
    write_node(&dir, &node, false);
    let bpffs = vpc.bpffs[0].root();
    let log = work.path().join("agent-1.log");
    let extra = [
        "--proxy-health",
        "127.0.0.1:0",
        "--proxy-health-timeout-secs",
        "1",
        "--proxy-status",
        "127.0.0.1:0",
    ];
    let mut agent = AgentProcess::start_with(&dir, &bpffs, &node, &log, &extra).unwrap();
    let addr = wait_logged_addr(&log, "serving the node's proxy health", Duration::from_secs(10)).unwrap();
    // kube-proxy's status port names the proxy.
    let status = logged_addr(&log, "serving the proxy status").expect("the status port logged");
    assert_eq!(http_get(status, "/proxyMode").unwrap(), (200, "sluice".to_string()));
    std::thread::sleep(Duration::from_millis(1200));
    let (code, body) = http_get(addr, "/healthz").unwrap();
    assert_eq!(code, 503, "no sync within the timeout: {body}");
    assert_eq!(http_get(addr, "/livez").unwrap().0, 503);

    let p = vpc.pod("p").unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    vpc.sluice(0, "ADD", "p", p, &conf).expect_ok("ADD");
    agent.wait_synced(1, Duration::from_secs(10)).unwrap();
    let (code, body) = http_get(addr, "/healthz").unwrap();
    assert_eq!(code, 200, "synced: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["nodeEligible"], true, "{body}");
    assert!(body["lastUpdated"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");

    write_node(&dir, &node, true);
    let (code, body) = http_until(addr, "/healthz", 503);
    assert_eq!(code, 503, "the node is going away: {body}");
    assert_eq!(body["nodeEligible"], false, "{body}");
    assert_eq!(http_get(addr, "/livez").unwrap().0, 200, "the proxy itself is fine");
    write_node(&dir, &node, false);
    let (code, body) = http_until(addr, "/healthz", 200);
    assert_eq!(code, 200, "the taint is gone: {body}");
    drop(agent);

    // The port held by another process: served at the first sync after it
    // is free.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap();
    let log = work.path().join("agent-2.log");
    let want = held.to_string();
    let extra = ["--proxy-health", want.as_str()];
    let mut agent = AgentProcess::start_with(&dir, &bpffs, &node, &log, &extra).unwrap();
    agent.wait_synced(1, Duration::from_secs(10)).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("cannot serve the node's proxy health"), "{text}");
    assert!(logged_addr(&log, "serving the node's proxy health").is_none());
    drop(holder);
    write_node(&dir, &node, false);
    agent.wait_synced(2, Duration::from_secs(10)).unwrap();
    assert_eq!(logged_addr(&log, "serving the node's proxy health"), Some(held));
    assert_eq!(http_get(held, "/healthz").unwrap().0, 200);
    drop(agent);
    vpc.sluice(0, "DEL", "p", p, &conf).expect_ok("DEL");
}

#[test]
fn agent_follows_manifests_and_survives_kill() {
    if !require_root("agent_follows_manifests_and_survives_kill") {
        return;
    }
    let mut vpc = Vpc::new("ag", 1).unwrap();
    let mut conf = vpc.main_conf(0, "1.1.0");
    // Every new flow on the event ring, for `sluicectl observe` below.
    conf["datapath"]["flowSample"] = serde_json::json!(1);
    let mut pods = Vec::new();
    for name in ["c", "s1", "s2", "s3"] {
        let p = vpc.pod(name).unwrap();
        let r = vpc.sluice(0, "ADD", name, p, &conf).expect_ok("ADD").json();
        pods.push((p, result_ip(&r).parse::<Ipv4Addr>().unwrap()));
    }
    let _servers: Vec<EchoServer> = (1..4)
        .map(|i| EchoServer::start(&vpc.pods[pods[i].0], 8080, &format!("s{i}")).unwrap())
        .collect();
    let _streams: Vec<StreamEcho> = (1..4)
        .map(|i| StreamEcho::start(&vpc.pods[pods[i].0], 7100, &format!("s{i}")).unwrap())
        .collect();
    let ips: Vec<Ipv4Addr> = pods[1..].iter().map(|p| p.1).collect();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let all_ready: Vec<_> = ips.iter().map(|ip| (*ip, State::Ready)).collect();
    write_manifests(&dir, &all_ready);
    let bpffs = vpc.bpffs[0].root();
    let node = vpc.node_name(0);
    let mut agent = AgentProcess::start(&dir, &bpffs, &node, &work.path().join("agent-1.log")).unwrap();
    agent.wait_synced(1, Duration::from_secs(10)).unwrap();
    let maps = vpc.maps(0).unwrap();
    until(&maps, "the Service", |m| active(m) == 3);
    let vip = SocketAddr::new(VIP.into(), 80);

    // A client keeps connecting while the slice changes.
    let stop = AtomicBool::new(false);
    let answers: Mutex<Vec<(Instant, Result<String, String>)>> = Mutex::new(Vec::new());
    // (file written, change seen in the maps) per step: the maps cannot
    // change before the first, and have changed by the second.
    let mut marks = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            vpc.pods[pods[0].0]
                .run(|| {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        // Stamped when the connection starts: which backend
                        // a connection gets is decided by its first packet.
                        let started = Instant::now();
                        let r = request(vip).map_err(|e| e.to_string());
                        answers.lock().unwrap().push((started, r));
                    }
                })
                .unwrap();
        });
        std::thread::sleep(Duration::from_millis(300));
        let steps: [(&str, Vec<(Ipv4Addr, State)>); 3] = [
            (
                "3 -> 1: two terminating",
                vec![
                    (ips[0], State::Ready),
                    (ips[1], State::Terminating),
                    (ips[2], State::Terminating),
                ],
            ),
            (
                "3 -> 1: two gone",
                vec![(ips[0], State::Ready), (ips[1], State::Gone), (ips[2], State::Gone)],
            ),
            ("1 -> 3", all_ready.clone()),
        ];
        for (i, (what, backends)) in steps.iter().enumerate() {
            write_manifests(&dir, backends);
            let wrote = Instant::now();
            let took = match i {
                0 => until(&maps, what, |m| active(m) == 1),
                1 => until(&maps, what, |m| !has_backend(m, ips[1]) && !has_backend(m, ips[2])),
                _ => until(&maps, what, |m| active(m) == 3),
            };
            eprintln!(
                "{what}: in the maps {:.1} ms after the file was written",
                took.as_secs_f64() * 1e3
            );
            assert!(took < Duration::from_secs(1), "{what}: {took:?}, more than 1 s");
            marks.push((wrote, wrote + took));
            std::thread::sleep(Duration::from_millis(400));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let answers = answers.into_inner().unwrap();
    let failed: Vec<_> = answers.iter().filter(|a| a.1.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    let tags = |from: Instant, to: Instant| -> std::collections::BTreeSet<String> {
        answers
            .iter()
            .filter(|(t, _)| *t > from && *t < to)
            .filter_map(|(_, r)| r.clone().ok())
            .collect()
    };
    let only_s1 = tags(marks[0].1, marks[2].0);
    assert_eq!(
        only_s1.into_iter().collect::<Vec<_>>(),
        ["s1"],
        "scaled to 1: only s1 answers"
    );
    let after = tags(marks[2].1, Instant::now());
    assert!(
        after.len() >= 2,
        "scaled back to 3: several backends answer, got {after:?}"
    );
    eprintln!("{} connections, none failed", answers.len());

    // What the agent and the datapath say about all this, on /metrics.
    let addr = metrics_addr(&agent.log).expect("the agent logs its metrics address");
    let body = scrape(addr).unwrap();
    assert_eq!(sample(&body, "sluice_frontends"), Some(2.0), "web's two ports\n{body}");
    assert_eq!(sample(&body, "sluice_backends"), Some(6.0), "3 pods x 2 ports\n{body}");
    assert!(sample(&body, "sluice_syncs_total").unwrap() >= 4.0, "{body}");
    assert!(
        sample(&body, "sluice_source_to_map_seconds_count").unwrap() >= 3.0,
        "{body}"
    );
    assert!(sample(&body, "sluice_map_writes_total").unwrap() > 0.0, "{body}");
    let translated = r#"sluice_datapath_packets_total{reason="service-translated",direction="egress"}"#;
    assert!(
        sample(&body, translated).unwrap() >= answers.len() as f64,
        "every connection was translated at least once\n{body}"
    );
    assert_eq!(
        sample(&body, r#"sluice_map_entries{map="endpoints"}"#),
        Some(4.0),
        "{body}"
    );
    assert_eq!(sample(&body, "sluice_policies"), Some(0.0), "no policy yet\n{body}");
    assert_eq!(
        sample(&body, "sluice_conntrack_pods_at_limit"),
        Some(0.0),
        "conntrack pressure is exported\n{body}"
    );

    // kill -9 during traffic: the datapath keeps working on its own (an
    // open connection and a client connecting all along); the restarted
    // agent finds the maps as it would write them.
    let mut open = Session::open(&vpc.pods[pods[0].0], SocketAddr::new(VIP.into(), 7100)).unwrap();
    open.ask("before").unwrap();
    let stop = AtomicBool::new(false);
    let (agent, synced, during) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            vpc.pods[pods[0].0]
                .run(|| {
                    let mut results = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        results.push(request(vip).map_err(|e| e.to_string()));
                    }
                    results
                })
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(200));
        agent.kill().unwrap();
        assert!(
            open.ask("agent down").unwrap().ends_with("agent down"),
            "established connection survives"
        );
        std::thread::sleep(Duration::from_millis(300));
        let mut agent = AgentProcess::start(&dir, &bpffs, &node, &work.path().join("agent-2.log")).unwrap();
        let synced = agent.wait_synced(1, Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        (agent, synced, client.join().unwrap())
    });
    let failed: Vec<_> = during.iter().filter(|r| r.is_err()).collect();
    assert!(
        !during.is_empty() && failed.is_empty(),
        "{} of {} connections failed around the kill and restart: {:?}",
        failed.len(),
        during.len(),
        failed.first()
    );
    eprintln!("{} connections around the kill and restart, none failed", during.len());
    assert_eq!(
        log_field(&synced[0], "writes"),
        Some("0"),
        "the restarted agent rewrote entries: {}",
        synced[0]
    );
    assert!(open.ask("after").unwrap().ends_with("after"), "and after the restart");
    drop(open);

    // A NetworkPolicy as a manifest: the web pods take connections from the
    // client only. A web pod calling another is dropped, and the drop is a
    // flow event `sluicectl observe` shows with the policy that made it.
    write_policy(&dir, &pods.iter().map(|p| p.1).collect::<Vec<_>>());
    until(&maps, "the policy", |m| {
        m.policy().endpoint_policies().map(|e| e.len() == 3).unwrap_or(false)
    });
    let s2 = SocketAddr::new(ips[1].into(), 8080);
    let denied = vpc.pods[pods[1].0].run(|| request(s2)).unwrap();
    assert!(denied.is_err(), "s1 -> s2 is not allowed: {denied:?}");
    assert!(vpc.pods[pods[0].0].run(|| request(s2)).unwrap().is_ok(), "c -> s2 is");
    for _ in 0..3 {
        assert!(vpc.pods[pods[0].0].run(|| request(vip)).unwrap().is_ok(), "c -> web is");
    }
    std::thread::sleep(Duration::from_millis(300)); // the agent reads the ring every 100 ms
    let observe = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = std::process::Command::new(sluice_integration::bin_dir().join("sluicectl"))
            .args(["-o", "json", "observe", "--socket"])
            .arg(&agent.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let drops = observe(&["--verdict", "dropped", "--pod", "demo/s2"]);
    let d = drops.first().unwrap_or_else(|| panic!("no drop reported: {drops:?}"));
    assert_eq!(
        (
            &d["reason"],
            &d["direction"],
            &d["policy"],
            &d["source"]["pod"],
            &d["destination"]["port"]
        ),
        (
            &json!("drop-policy"),
            &json!("ingress"),
            &json!("demo/web"),
            &json!("demo/s1"),
            &json!(8080)
        ),
        "{d}"
    );
    let translated = observe(&["--verdict", "translated", "--pod", "c", "--port", "80", "--last", "5"]);
    assert!(!translated.is_empty() && translated.len() <= 5, "{translated:?}");
    for t in &translated {
        assert_eq!(
            (&t["source"]["pod"], &t["destination"]["ip"]),
            (&json!("demo/c"), &json!(VIP.to_string()))
        );
        assert!(t["backend"].as_str().is_some_and(|b| b.ends_with(":8080")), "{t}");
    }
    let allowed = observe(&["--verdict", "forwarded", "--pod", "demo/s2", "--port", "8080"]);
    assert!(
        allowed
            .iter()
            .any(|f| f["source"]["pod"] == "demo/c" && f["direction"] == "ingress"),
        "the allowed connection's new flow at s2: {allowed:?}"
    );
    drop(agent);
    for (name, (p, _)) in ["c", "s1", "s2", "s3"].iter().zip(&pods) {
        vpc.sluice(0, "DEL", name, *p, &conf).expect_ok("DEL");
    }
}

/// A pod whose netns went away without a CNI DEL (a runtime that
/// crashed): the agent removes its datapath state (endpoint entries,
/// pinned links) and leaves the plugin's record and lease to its DEL,
/// which then still succeeds.
#[test]
fn agent_collects_pods_whose_netns_is_gone() {
    if !require_root("agent_collects_pods_whose_netns_is_gone") {
        return;
    }
    let mut vpc = Vpc::new("ae", 1).unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let mut ips = Vec::new();
    let mut pods = Vec::new();
    for name in ["ga", "gb"] {
        let p = vpc.pod(name).unwrap();
        let r = vpc.sluice(0, "ADD", name, p, &conf).expect_ok("ADD").json();
        ips.push(result_ip(&r).parse::<IpAddr>().unwrap());
        pods.push(p);
    }
    let gone = vpc.pods[pods[0]].name.clone();
    sluice_integration::netns::ip(&["netns", "del", &gone]).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(sluice_integration::bin_dir().join("sluice-agent"))
        .arg("--manifests")
        .arg(work.path())
        .arg("--bpffs")
        .arg(vpc.bpffs[0].root())
        .args(["--node-name", &vpc.node_name(0), "--once", "--cni-data-dir"])
        .arg(vpc.data_dir.join("n0"))
        .arg("--policy-namespaces-file")
        .arg(vpc.data_dir.join("policy-namespaces.json"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("netns is gone"), "{log}");
    assert_eq!(
        vpc.endpoint_addrs(0).unwrap(),
        vec![ips[1]],
        "only the live pod keeps its endpoint entry"
    );
    assert_eq!(vpc.pinned_links(0), vec!["gb:eth0".to_string()], "and its links");
    assert_eq!(vpc.endpoints(0).len(), 2, "the plugin's records stay for its DEL");
    for (name, p) in ["ga", "gb"].iter().zip(&pods) {
        vpc.sluice(0, "DEL", name, *p, &conf).expect_ok("DEL");
    }
    assert!(vpc.endpoints(0).is_empty() && vpc.leases(0).is_empty());
}

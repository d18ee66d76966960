//! The translation on its own (no kernel): objects in, identities and
//! rules out, checked against what the NetworkPolicy spec says.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};
use sluice_policy::Translator;
use sluice_tc_datapath::layout::{Direction, ID_ANY};
use sluice_tc_datapath::maps::policy::Rule;
use std::net::IpAddr;

fn ns(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn pod(ns: &str, name: &str, ip: &str, labels: Value, ports: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "ports": ports}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})).unwrap()
}

struct World {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
}

fn world() -> World {
    World {
        namespaces: vec![ns("x", json!({"team": "a"})), ns("y", json!({"team": "b"}))],
        pods: vec![
            pod(
                "x",
                "web",
                "10.0.0.1",
                json!({"app": "web"}),
                json!([{"name": "http", "containerPort": 8080}]),
            ),
            pod(
                "x",
                "db",
                "10.0.0.2",
                json!({"app": "db"}),
                json!([{"name": "http", "containerPort": 9090}]),
            ),
            pod("y", "web", "10.0.1.1", json!({"app": "web"}), json!([])),
        ],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn identities_follow_label_sets_and_stay_stable() {
    let w = world();
    let mut t = Translator::new();
    let d = t.translate(&w.namespaces, &w.pods, &[]);
    assert_eq!(d.ipcache.len(), 3);
    let (web_x, web_y) = (d.ipcache[&ip("10.0.0.1")], d.ipcache[&ip("10.0.1.1")]);
    assert_ne!(web_x, web_y, "same labels, other namespace: another identity");
    assert!(d.endpoints.is_empty(), "no policy selects anyone");
    // A second pod with web's labels shares its identity; ids do not move.
    let mut pods = w.pods.clone();
    pods.push(pod("x", "web2", "10.0.0.3", json!({"app": "web"}), json!([])));
    let d2 = t.translate(&w.namespaces, &pods, &[]);
    assert_eq!(d2.ipcache[&ip("10.0.0.3")], web_x);
    assert_eq!(d2.ipcache[&ip("10.0.0.1")], web_x);
    assert_eq!(d2.ipcache[&ip("10.0.1.1")], web_y);
}

#[test]
fn policy_types_default_and_isolation() {
    let w = world();
    let mut t = Translator::new();
    // No policyTypes, no egress rules: ingress only, and an empty ingress
    // list is deny-all ingress.
    let deny = policy("x", "deny", json!({"podSelector": {"matchLabels": {"app": "db"}}}));
    // Egress rules without policyTypes: both directions.
    let both = policy("x", "both", json!({"podSelector": {}, "egress": [{}]}));
    let d = t.translate(&w.namespaces, &w.pods, std::slice::from_ref(&deny));
    let db = &d.endpoints["x/db"];
    assert!(db.ingress.is_some() && db.egress.is_none() && db.rules.is_empty());
    assert!(!d.endpoints.contains_key("x/web"), "not selected: unrestricted");
    let d = t.translate(&w.namespaces, &w.pods, &[deny, both]);
    let web = &d.endpoints["x/web"];
    assert!(web.ingress.is_some() && web.egress.is_some());
    assert_eq!(
        web.rules
            .iter()
            .map(|r| (r.dir, r.identity, r.proto))
            .collect::<Vec<_>>(),
        vec![(Direction::Egress, ID_ANY, 0)],
        "egress [{{}}] allows everything"
    );
    assert!(!d.endpoints.contains_key("y/web"), "other namespace");
}

#[test]
fn peers_ports_named_ports_and_ip_blocks() {
    let w = world();
    let mut t = Translator::new();
    let p = policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                // team b's namespace, web pods only (one peer: AND).
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}},
                           "podSelector": {"matchLabels": {"app": "web"}}}],
                 "ports": [{"port": "http"}, {"protocol": "UDP", "port": 53, "endPort": 55}]}
            ],
            "egress": [
                {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "http"}]},
                {"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                 "ports": [{"protocol": "SCTP"}, {"port": "http"}]}
            ]
        }),
    );
    let d = t.translate(&w.namespaces, &w.pods, &[p]);
    let web_y = d.ipcache[&ip("10.0.1.1")];
    let db = d.ipcache[&ip("10.0.0.2")];
    let block = d.cidrs[&"192.168.0.0/16".parse().unwrap()];
    let hole = d.cidrs[&"192.168.1.0/24".parse().unwrap()];
    type Seen = (Direction, u32, u8, Option<(u16, u16)>);
    let rules: Vec<Seen> = d.endpoints["x/web"]
        .rules
        .iter()
        .map(|r: &Rule| (r.dir, r.identity, r.proto, r.ports.map(|p| (p.first, p.last))))
        .collect();
    assert_eq!(
        rules,
        vec![
            (Direction::Egress, db, 6, Some((9090, 9090))),
            (Direction::Egress, block, 132, None),
            (Direction::Ingress, web_y, 6, Some((8080, 8080))),
            (Direction::Ingress, web_y, 17, Some((53, 55))),
        ],
        "ingress named port = the selected pod's; egress = the destination's; \
         no named port for an ipBlock; the except's identity is not allowed"
    );
    assert!(!rules.iter().any(|r| r.1 == hole));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn invalid_rules_allow_nothing_and_are_reported() {
    let w = world();
    let mut t = Translator::new();
    let p = policy(
        "x",
        "bad",
        json!({
            "podSelector": {},
            "ingress": [
                {"ports": [{"protocol": "ICMP"}]},
                {"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]},
                {"ports": [{"port": 80, "endPort": 70}]}
            ]
        }),
    );
    let d = t.translate(&w.namespaces, &w.pods, &[p]);
    assert_eq!(d.warnings.len(), 3, "{:?}", d.warnings);
    let web = &d.endpoints["x/web"];
    assert!(web.ingress.is_some(), "still isolates");
    assert!(web.rules.is_empty(), "and allows nothing: {:?}", web.rules);
}

/// The node's CNI records give a pod just started its addresses before the
/// kubelet reports them, and they win over a stale object of a pod gone
/// whose address the new pod was given.
#[test]
fn recorded_addresses_fill_in_and_win() {
    let nss = [ns("x", json!({}))];
    let mut fresh = pod("x", "new", "10.0.0.9", json!({"app": "new"}), json!([]));
    fresh.status = None;
    let stale = pod("x", "old", "10.0.0.9", json!({"app": "old"}), json!([]));
    let pol = policy("x", "p", json!({"podSelector": {"matchLabels": {"app": "new"}}}));
    let recorded = [("x/new".to_string(), vec![ip("10.0.0.9")])].into_iter().collect();
    let mut t = Translator::new();
    let d = t.translate_with_addresses(&nss, [&fresh, &stale], [&pol], &recorded);
    assert_eq!(d.endpoints["x/new"].ips, [ip("10.0.0.9")], "the recorded address");
    let id = d.endpoints["x/new"].identity;
    assert_eq!(
        d.ipcache[&ip("10.0.0.9")],
        id,
        "the new pod's identity, not the stale one's"
    );
    // Without the record the new pod has no address and selects nothing.
    let d = t.translate(&nss, [&fresh, &stale], [&pol]);
    assert!(d.endpoints.get("x/new").is_none_or(|e| e.ips.is_empty()));
}

/// 5,000 pods of one Deployment, each with its own `pod-template-hash`:
/// one identity while no selector reads the hash, one per pod once a
/// policy does, and back.
#[test]
fn identities_keep_only_the_labels_selectors_read() {
    let nss = [ns("x", json!({})), ns("y", json!({}))];
    let pods: Vec<Pod> = (0..5000)
        .map(|i| {
            pod(
                "x",
                &format!("web-{i}"),
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                json!({"app": "web", "pod-template-hash": format!("h{i}")}),
                json!([]),
            )
        })
        .chain([pod("y", "cli", "10.2.0.1", json!({"app": "cli"}), json!([]))])
        .collect();
    let by_app = policy(
        "x",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "cli"}}}]}]}),
    );
    let distinct = |d: &sluice_policy::Desired| d.ipcache.values().collect::<std::collections::BTreeSet<_>>().len();
    let mut t = Translator::new();
    let d = t.translate(&nss, &pods, [&by_app]);
    assert_eq!(distinct(&d), 2, "web and cli: the hash is read by no selector");
    assert_eq!(d.endpoints.len(), 5000, "every web pod is selected");
    let web = d.ipcache[&ip("10.1.0.1")];
    assert!(
        !d.identities[&web].contains("pod-template-hash"),
        "{}",
        d.identities[&web]
    );

    // A policy that selects on the hash: every pod its own identity, and
    // the one it names gets its rules.
    let by_hash = policy(
        "x",
        "canary",
        json!({"podSelector": {"matchLabels": {"pod-template-hash": "h7"}}, "policyTypes": ["Egress"], "egress": []}),
    );
    let d = t.translate(&nss, &pods, [&by_app, &by_hash]);
    assert_eq!(distinct(&d), 5001);
    assert!(d.endpoints["x/web-7"].egress.is_some() && d.endpoints["x/web-8"].egress.is_none());
    assert!(
        d.endpoints["x/web-8"].ingress.is_some(),
        "the first policy still selects every web pod"
    );

    // Gone again: one identity, and it is stable (the allocator's).
    let d = t.translate(&nss, &pods, [&by_app]);
    assert_eq!(distinct(&d), 2);

    // Excluded: the hash never counts, a selector on it reads it absent.
    let mut t = Translator::new();
    t.exclude_labels(["pod-template-hash".to_string()]);
    let d = t.translate(&nss, &pods, [&by_app, &by_hash]);
    assert_eq!(distinct(&d), 2);
    assert!(d.endpoints.get("x/web-7").is_none_or(|e| e.egress.is_none()));
    assert!(
        d.warnings.iter().any(|w| w.contains("pod-template-hash")),
        "{:?}",
        d.warnings
    );
}

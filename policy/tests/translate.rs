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

/// What a translation means, without its ids (two translators number
/// identities and policies each their own way): the ipcache by identity
/// name, and each selected pod's policy and rules by names.
fn meaning(d: &sluice_policy::Desired) -> String {
    let cidr_names: std::collections::BTreeMap<u32, String> =
        d.cidrs.iter().map(|(n, id)| (*id, n.to_string())).collect();
    let id_name = |id: u32| {
        if id == ID_ANY {
            return "any".to_string();
        }
        d.identities
            .get(&id)
            .or_else(|| cidr_names.get(&id))
            .cloned()
            .unwrap_or_else(|| format!("unnamed {id}"))
    };
    let pol = |id: Option<u32>| id.map(|i| d.policies[&i].clone());
    let mut out = String::new();
    for (ip, id) in d.ipcache.iter() {
        out += &format!("{ip} {}\n", id_name(*id));
    }
    let mut named: Vec<String> = d.identities.values().cloned().collect();
    named.sort();
    out += &format!("identities {named:?}\n");
    for (k, e) in &d.endpoints {
        out += &format!(
            "{k} {:?} {} in={:?} out={:?}\n",
            e.ips,
            id_name(e.identity),
            pol(e.ingress),
            pol(e.egress)
        );
        let mut rules: Vec<String> = e
            .rules
            .iter()
            .map(|r| {
                format!(
                    "  {:?} {} {} {:?} {}",
                    r.dir,
                    id_name(r.identity),
                    r.proto,
                    r.ports,
                    d.policies[&r.policy]
                )
            })
            .collect();
        rules.sort();
        for r in rules {
            out += &r;
            out += "\n";
        }
    }
    out
}

/// A pass told which pods changed means what a full pass means, and its
/// ipcache changes carry every address that moved: random changes
/// (labels, addresses, named ports, pods started, finished, gone, stale
/// objects whose address a recorded pod took, records coming and going)
/// against a fresh translator's full pass after each.
#[test]
fn changed_pods_translate_as_a_full_pass_would() {
    use sluice_policy::PodView;
    use std::collections::{BTreeMap, BTreeSet};
    let nss = [
        ns("a", json!({"team": "red"})),
        ns("b", json!({"team": "blue"})),
        ns("c", json!({"team": "red"})),
    ];
    let pols = [
        policy(
            "a",
            "web",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}, "podSelector": {"matchLabels": {"app": "cli"}}}],
                                "ports": [{"port": "http"}]}]}),
        ),
        policy(
            "b",
            "out",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]},
                              {"to": [{"ipBlock": {"cidr": "10.9.0.0/16", "except": ["10.9.1.0/24"]}}]}]}),
        ),
        policy(
            "c",
            "deny",
            json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["t1"]}]}}),
        ),
    ];
    // A deterministic walk (no crate for one generator).
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let mut rnd = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let view = |ns: &str, name: &str, ip: u64, app: u64, tier: u64, port: u64, inert: bool| PodView {
        name: name.into(),
        namespace: ns.into(),
        labels: [
            ("app".to_string(), ["web", "cli", "db"][app as usize].to_string()),
            ("tier".to_string(), format!("t{tier}")),
            ("pod-template-hash".to_string(), format!("h{name}")),
        ]
        .into(),
        inert,
        ips: vec![ip_n(ip)],
        ports: vec![sluice_policy::NamedPort {
            name: "http".into(),
            proto: 6,
            number: [8080, 9090][port as usize],
        }],
    };
    fn ip_n(i: u64) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 0, (i / 200) as u8, (i % 200) as u8 + 1))
    }
    let mut store: BTreeMap<String, PodView> = BTreeMap::new();
    let mut next = 0u64;
    for _ in 0..150 {
        let ns = ["a", "b", "c"][rnd(3) as usize];
        let p = view(ns, &format!("p{next}"), next, rnd(3), rnd(3), rnd(2), false);
        store.insert(p.key(), p);
        next += 1;
    }
    // This node: the first 30 addresses.
    let local: BTreeSet<IpAddr> = (0..30).map(ip_n).collect();
    let mut records: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut t = Translator::new();
    t.set_local(Some(local.clone()));
    let d = t.translate_changes(&nss, &store, None::<Vec<&str>>, &pols, &records);
    let mut mirror: BTreeMap<IpAddr, u32> = (*d.ipcache).clone();
    let mut last = d.pass;
    drop(d);
    let (mut incremental, mut pods_seen) = (0, 0);
    for step in 0..400 {
        let mut changed: BTreeSet<String> = BTreeSet::new();
        for _ in 0..1 + rnd(3) {
            let keys: Vec<String> = store.keys().cloned().collect();
            let k = keys[rnd(keys.len() as u64) as usize].clone();
            match rnd(8) {
                0 => {
                    let p = store.get_mut(&k).unwrap();
                    p.labels
                        .insert("app".into(), ["web", "cli", "db"][rnd(3) as usize].into());
                }
                1 => {
                    let p = store.get_mut(&k).unwrap();
                    p.labels.insert("tier".into(), format!("t{}", rnd(3)));
                }
                2 => {
                    store.remove(&k);
                }
                3 => {
                    // A new pod, perhaps on an address a stale object still
                    // claims.
                    let ip = if rnd(2) == 0 { rnd(next) } else { next };
                    let ns = ["a", "b", "c"][rnd(3) as usize];
                    let p = view(ns, &format!("p{next}"), ip, rnd(3), rnd(3), rnd(2), false);
                    changed.insert(p.key());
                    store.insert(p.key(), p);
                    next += 1;
                    continue;
                }
                4 => {
                    let p = store.get_mut(&k).unwrap();
                    p.ports[0].number = [8080, 9090][rnd(2) as usize];
                }
                5 => {
                    let p = store.get_mut(&k).unwrap();
                    p.inert = !p.inert;
                }
                6 => {
                    let p = store.get_mut(&k).unwrap();
                    p.ips = vec![ip_n(rnd(next + 5))];
                }
                _ => {
                    // This node's records: a pod recorded with a local
                    // address (perhaps taken from a stale object), or a
                    // record gone.
                    if rnd(2) == 0 || records.is_empty() {
                        records.insert(k.clone(), vec![ip_n(rnd(30))]);
                    } else {
                        let r: Vec<String> = records.keys().cloned().collect();
                        records.remove(&r[rnd(r.len() as u64) as usize]);
                    }
                    continue;
                }
            }
            changed.insert(k);
        }
        pods_seen += changed.len();
        let d = t.translate_changes(&nss, &store, Some(changed.iter().map(String::as_str)), &pols, &records);
        let mut full = Translator::new();
        full.set_local(Some(local.clone()));
        let f = full.translate_changes(&nss, &store, None::<Vec<&str>>, &pols, &records);
        assert_eq!(meaning(&d), meaning(&f), "step {step}: changed {changed:?}");
        let (since, moved) = d
            .ipcache_changes
            .clone()
            .expect("a pass told its changes knows what moved");
        assert_eq!(since, last, "step {step}");
        incremental += 1;
        for ip in moved {
            match d.ipcache.get(&ip) {
                Some(id) => mirror.insert(ip, *id),
                None => mirror.remove(&ip),
            };
        }
        assert_eq!(mirror, *d.ipcache, "step {step}: an address moved but was not said to");
        last = d.pass;
        // Ids are numbered from what live pods carry only.
        let live: BTreeSet<u32> = d.ipcache.values().copied().collect();
        assert!(live.iter().all(|id| d.identities.contains_key(id)), "step {step}");
    }
    assert_eq!(incremental, 400);
    assert!(pods_seen > 400, "the walk changed pods");
    // A namespace's labels change: every pod again (no change list to trust).
    let nss2 = [ns("a", json!({"team": "blue"})), nss[1].clone(), nss[2].clone()];
    let d = t.translate_changes(&nss2, &store, Some(Vec::<&str>::new()), &pols, &records);
    assert!(d.ipcache_changes.is_none());
    let mut full = Translator::new();
    full.set_local(Some(local));
    assert_eq!(
        meaning(&d),
        meaning(&full.translate_changes(&nss2, &store, None::<Vec<&str>>, &pols, &records))
    );
}

//! NetworkPolicy end to end: 3 namespaces x 3 labelled pods over two nodes
//! of the simulated VPC, every pod probing every other pod with real TCP
//! connections and UDP exchanges on two ports, scenario after scenario of
//! the upstream Kubernetes netpol suite. The policies go through
//! sluice-policy into each node's pinned maps; the expected matrix comes
//! from the evaluator below, written from the Kubernetes API documentation
//! and sharing no code with sluice-policy or the datapath.

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use sluice_integration::netns::Netns;
use sluice_integration::probe::{EchoServer, Session, StreamEcho};
use sluice_integration::services::{ServicePort, Services};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_integration::{bin_dir, require_root};
use sluice_policy::{NodeApplier, Translator};
use sluice_tc_datapath::maps::Maps;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// (protocol, port) every pod serves and is probed on.
const PROBES: [(&str, u16); 4] = [("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 81)];

// ---- the independent evaluator: the NetworkPolicy spec, read directly ----

struct Model {
    ns: String,
    name: String,
    ip: IpAddr,
    labels: BTreeMap<String, String>,
}

fn ns_labels(ns: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("ns".to_string(), ns.to_string()),
        ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
    ])
}

/// The port name each pod gives each served port: "serve-80-tcp".
fn port_name(proto: &str, port: u16) -> String {
    format!("serve-{port}-{}", proto.to_lowercase())
}

fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.clone().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| vals.contains(v)),
            "NotIn" => !labels.get(&e.key).is_some_and(|v| vals.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            other => panic!("operator {other}"),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn peer_matches(policy_ns: &str, peer: &NetworkPolicyPeer, other: &Model) -> bool {
    if let Some(b) = &peer.ip_block {
        let inside = |c: &str| c.parse::<IpNetwork>().unwrap().contains(other.ip);
        return inside(&b.cidr) && !b.except.iter().flatten().any(|e| inside(e));
    }
    let ns_ok = match &peer.namespace_selector {
        None => other.ns == policy_ns,
        Some(sel) => selects(sel, &ns_labels(&other.ns)),
    };
    ns_ok && peer.pod_selector.as_ref().is_none_or(|s| selects(s, &other.labels))
}

/// `named_on` is the pod whose container ports give names their numbers
/// (the destination, in either direction).
fn port_matches(ports: &[NetworkPolicyPort], proto: &str, port: u16) -> bool {
    ports.is_empty()
        || ports.iter().any(|p| {
            p.protocol.as_deref().unwrap_or("TCP") == proto
                && match (&p.port, p.end_port) {
                    (None, _) => true,
                    (Some(IntOrString::Int(n)), None) => i32::from(port) == *n,
                    (Some(IntOrString::Int(n)), Some(end)) => (*n..=end).contains(&i32::from(port)),
                    (Some(IntOrString::String(name)), _) => *name == port_name(proto, port),
                }
        })
}

fn types(p: &NetworkPolicy) -> Vec<String> {
    let spec = p.spec.as_ref().unwrap();
    match &spec.policy_types {
        Some(t) if !t.is_empty() => t.clone(),
        _ => {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                t.push("Egress".into());
            }
            t
        }
    }
}

fn applies(p: &NetworkPolicy, pod: &Model, kind: &str) -> bool {
    p.metadata.namespace.as_deref() == Some(pod.ns.as_str())
        && selects(
            p.spec
                .as_ref()
                .unwrap()
                .pod_selector
                .as_ref()
                .unwrap_or(&LabelSelector::default()),
            &pod.labels,
        )
        && types(p).iter().any(|t| t == kind)
}

/// May `from` reach `to` on (proto, port)?
fn expected(policies: &[NetworkPolicy], from: &Model, to: &Model, proto: &str, port: u16) -> bool {
    let egress: Vec<&NetworkPolicy> = policies.iter().filter(|p| applies(p, from, "Egress")).collect();
    let egress_ok = egress.is_empty()
        || egress.iter().any(|p| {
            let ns = p.metadata.namespace.as_deref().unwrap();
            p.spec.as_ref().unwrap().egress.iter().flatten().any(|r| {
                let peers = r.to.clone().unwrap_or_default();
                (peers.is_empty() || peers.iter().any(|pe| peer_matches(ns, pe, to)))
                    && port_matches(r.ports.as_deref().unwrap_or_default(), proto, port)
            })
        });
    let ingress: Vec<&NetworkPolicy> = policies.iter().filter(|p| applies(p, to, "Ingress")).collect();
    let ingress_ok = ingress.is_empty()
        || ingress.iter().any(|p| {
            let ns = p.metadata.namespace.as_deref().unwrap();
            p.spec.as_ref().unwrap().ingress.iter().flatten().any(|r| {
                let peers = r.from.clone().unwrap_or_default();
                (peers.is_empty() || peers.iter().any(|pe| peer_matches(ns, pe, from)))
                    && port_matches(r.ports.as_deref().unwrap_or_default(), proto, port)
            })
        });
    egress_ok && ingress_ok
}

// ---- the cluster: real pods, their objects, and the node maps ----

struct Cluster {
    vpc: Vpc,
    models: Vec<Model>,
    /// Pod index in `vpc.pods` for each model.
    netns: Vec<usize>,
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    translator: Translator,
    nodes: Vec<(Maps, NodeApplier)>,
    _servers: Vec<EchoServer>,
}

impl Cluster {
    fn new() -> Cluster {
        let mut vpc = Vpc::new("np", 2).unwrap();
        let (mut models, mut netns, mut pods, mut servers) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, (ns, name)) in NAMESPACES
            .iter()
            .flat_map(|ns| PODS.iter().map(move |p| (*ns, *p)))
            .enumerate()
        {
            let node = i % 2;
            let p = vpc.pod(&format!("{ns}{name}")).unwrap();
            let r: Value = vpc
                .sluice(node, "ADD", &format!("{ns}{name}"), p, &vpc.main_conf(node, "1.1.0"))
                .expect_ok("ADD")
                .json();
            let ip = result_ip(&r);
            for port in [80, 81] {
                servers.push(EchoServer::start(&vpc.pods[p], port, &format!("{ns}/{name}")).unwrap());
            }
            let ports: Vec<Value> = PROBES
                .iter()
                .map(|(proto, port)| json!({"name": port_name(proto, *port), "containerPort": port, "protocol": proto}))
                .collect();
            pods.push(
                serde_json::from_value(json!({
                    "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
                    "spec": {"containers": [{"name": "serve", "ports": ports}]},
                    "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
                }))
                .unwrap(),
            );
            models.push(Model {
                ns: ns.into(),
                name: name.into(),
                ip: ip.parse().unwrap(),
                labels: BTreeMap::from([("pod".to_string(), name.to_string())]),
            });
            netns.push(p);
        }
        let namespaces = NAMESPACES
            .iter()
            .map(|ns| serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"ns": ns}}})).unwrap())
            .collect();
        let nodes = (0..2)
            .map(|n| {
                let maps = vpc.maps(n).unwrap();
                let applier = NodeApplier::from_maps(&maps).unwrap();
                (maps, applier)
            })
            .collect();
        Cluster {
            vpc,
            models,
            netns,
            namespaces,
            pods,
            translator: Translator::new(),
            nodes,
            _servers: servers,
        }
    }

    fn ns(&self, i: usize) -> &Netns {
        &self.vpc.pods[self.netns[i]]
    }

    /// Translate `policies` once and write them to both nodes.
    fn apply(&mut self, policies: &[NetworkPolicy]) {
        let d = self.translator.translate(&self.namespaces, &self.pods, policies);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let hosts: Vec<IpAddr> = vec!["172.31.0.11".parse().unwrap(), "172.31.0.12".parse().unwrap()];
        for (maps, applier) in &mut self.nodes {
            applier.apply(maps, &d, &hosts).unwrap();
            // An agent restarting reads the maps back and finds nothing to do.
            let again = NodeApplier::from_maps(maps).unwrap().apply(maps, &d, &hosts).unwrap();
            assert_eq!((again.written, again.removed), (0, 0), "re-applying from the maps");
        }
    }

    /// Each scenario starts with no connection left over from the last.
    fn flush(&mut self) {
        for (maps, _) in &mut self.nodes {
            maps.ct_mut().flush().unwrap();
        }
    }

    fn probe(&self, from: usize, to: SocketAddr, proto: &str) -> bool {
        self.ns(from)
            .run(|| {
                if proto == "TCP" {
                    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(400)) else {
                        return false;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0u8; 64];
                    s.write_all(b"p").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0)
                } else {
                    let Ok(s) = UdpSocket::bind(("0.0.0.0", 0)) else {
                        return false;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                    let mut buf = [0u8; 64];
                    (0..2).any(|_| s.send_to(b"p", to).is_ok() && s.recv_from(&mut buf).is_ok())
                }
            })
            .unwrap()
    }

    /// Every pod to every other pod on every probe port, in parallel:
    /// (from, to, probe) -> reachable.
    fn matrix(&self, cells: &[(usize, usize, usize)]) -> Vec<bool> {
        let mut out = vec![false; cells.len()];
        std::thread::scope(|s| {
            let chunks: Vec<_> = cells
                .chunks(cells.len().div_ceil(48))
                .zip(out.chunks_mut(cells.len().div_ceil(48)))
                .collect();
            for (cs, os) in chunks {
                s.spawn(move || {
                    for ((from, to, probe), o) in cs.iter().zip(os.iter_mut()) {
                        let (proto, port) = PROBES[*probe];
                        *o = self.probe(*from, SocketAddr::new(self.models[*to].ip, port), proto);
                    }
                });
            }
        });
        out
    }

    /// Probe the full matrix and compare it with the evaluator's. A cell
    /// that disagrees is probed twice more (new connections, new ports)
    /// before it counts: the verdict must hold on every try.
    fn check(&self, scenario: &str, policies: &[NetworkPolicy]) {
        let n = self.models.len();
        let cells: Vec<(usize, usize, usize)> = (0..n)
            .flat_map(|f| (0..n).filter(move |t| *t != f).map(move |t| (f, t)))
            .flat_map(|(f, t)| (0..PROBES.len()).map(move |p| (f, t, p)))
            .collect();
        let want: Vec<bool> = cells
            .iter()
            .map(|(f, t, p)| expected(policies, &self.models[*f], &self.models[*t], PROBES[*p].0, PROBES[*p].1))
            .collect();
        let mut got = self.matrix(&cells);
        for _ in 0..2 {
            let wrong: Vec<usize> = (0..cells.len()).filter(|i| got[*i] != want[*i]).collect();
            if wrong.is_empty() {
                break;
            }
            let again = self.matrix(&wrong.iter().map(|i| cells[*i]).collect::<Vec<_>>());
            for (i, g) in wrong.iter().zip(again) {
                got[*i] = g;
            }
        }
        if got != want {
            let mut report = format!("{scenario}: observed != expected (from -> to probe: observed/expected)\n");
            for (i, (f, t, p)) in cells.iter().enumerate() {
                if got[i] != want[i] {
                    let (m, o) = (&self.models[*f], &self.models[*t]);
                    report += &format!(
                        "  {}/{} -> {}/{} {}/{}: {}/{}\n",
                        m.ns, m.name, o.ns, o.name, PROBES[*p].0, PROBES[*p].1, got[i], want[i]
                    );
                }
            }
            panic!("{report}");
        }
        let allowed = want.iter().filter(|w| **w).count();
        eprintln!("{scenario}: {} probes as expected ({allowed} reachable)", cells.len());
    }

    fn ip(&self, ns: &str, name: &str) -> IpAddr {
        self.models.iter().find(|m| m.ns == ns && m.name == name).unwrap().ip
    }
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})).unwrap()
}

/// The scenarios, each a set of policies (upstream netpol suite names).
fn scenarios(c: &Cluster) -> Vec<(&'static str, Vec<NetworkPolicy>)> {
    let yb = c.ip("y", "b");
    let zc = c.ip("z", "c");
    vec![
        ("no policy: everything reachable", vec![]),
        (
            "deny all ingress in x",
            vec![policy(
                "x",
                "deny-ingress",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
        ),
        (
            "deny all egress in x",
            vec![policy(
                "x",
                "deny-egress",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
        ),
        (
            "allow ingress from the same namespace",
            vec![policy(
                "x",
                "same-ns",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            )],
        ),
        (
            "allow x/a from another namespace by label",
            vec![policy(
                "x",
                "from-y",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            )],
        ),
        (
            "allow x/a from pods with a label in any namespace",
            vec![policy(
                "x",
                "from-b-anywhere",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
        ),
        (
            "namespace AND pod selector in one peer",
            vec![policy(
                "x",
                "and",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]},
                                              "podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            )],
        ),
        (
            "namespace OR pod selector in two peers",
            vec![policy(
                "x",
                "or",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]}},
                                             {"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            )],
        ),
        (
            "ipBlock with except",
            vec![policy(
                "x",
                "cidr-except",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{yb}/32")]}}]}]}),
            )],
        ),
        (
            "egress to one CIDR only",
            vec![policy(
                "x",
                "egress-cidr",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": format!("{zc}/32")}}]}]}),
            )],
        ),
        (
            "named port",
            vec![policy(
                "x",
                "named",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"ports": [{"port": "serve-81-tcp"}, {"protocol": "UDP", "port": "serve-80-udp"}]}]}),
            )],
        ),
        (
            "port range with endPort, and NotIn / DoesNotExist",
            vec![policy(
                "x",
                "range",
                json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["b", "c"]}]},
                       "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}}],
                                    "ports": [{"protocol": "TCP", "port": 81, "endPort": 90}]}]}),
            )],
        ),
        (
            "multiple policies on one pod add up; egress to a named port",
            vec![
                policy(
                    "x",
                    "p1",
                    json!({"podSelector": {"matchLabels": {"pod": "a"}},
                           "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]}),
                ),
                policy(
                    "x",
                    "p2",
                    json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]},
                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
                ),
                policy(
                    "z",
                    "egress-named",
                    json!({"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Egress"],
                           "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "UDP", "port": "serve-81-udp"}]}]}),
                ),
            ],
        ),
    ]
}

#[test]
fn network_policy_truth_table() {
    if !require_root("network_policy_truth_table") {
        return;
    }
    let mut c = Cluster::new();
    for (name, policies) in scenarios(&c) {
        c.flush();
        c.apply(&policies);
        c.check(name, &policies);
        if name == "named port" {
            // What the operator sees: x/a (node 0) isolated for ingress,
            // its named ports resolved to numbers, the policy named.
            let out = std::process::Command::new(bin_dir().join("sluicectl"))
                .arg("--bpffs")
                .arg(c.vpc.bpffs[0].root())
                .args(["-o", "json", "policy", "get", &c.ip("x", "a").to_string()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                (v["ingressIsolated"].clone(), v["egressIsolated"].clone()),
                (json!(true), json!(false))
            );
            let rules: Vec<(String, String, String, String)> = v["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let s = |k: &str| r[k].as_str().unwrap().to_string();
                    (s("peer"), s("proto"), s("ports"), s("policy"))
                })
                .collect();
            let want = |proto: &str, port: &str| {
                (
                    "*".to_string(),
                    proto.to_string(),
                    port.to_string(),
                    "x/named".to_string(),
                )
            };
            assert_eq!(rules, vec![want("tcp", "81"), want("udp", "80")], "{v}");
        }
    }

    // A policy changed while connections are open: add, change, delete.
    // Established connections keep the verdict they were opened with (see
    // docs/policy.md); new ones follow the policy in force.
    c.flush();
    c.apply(&[]);
    let (ya, xa) = (
        c.models.iter().position(|m| m.ns == "y" && m.name == "a").unwrap(),
        c.models.iter().position(|m| m.ns == "x" && m.name == "a").unwrap(),
    );
    let stream = StreamEcho::start(c.ns(xa), 7100, "xa").unwrap();
    let mut open = Session::open(c.ns(ya), SocketAddr::new(c.models[xa].ip, 7100)).unwrap();
    open.ask("before").unwrap();
    let deny = vec![policy(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )];
    c.apply(&deny);
    c.check("update: deny all ingress added", &deny);
    assert!(
        open.ask("after the deny").unwrap().ends_with("after the deny"),
        "an established connection keeps going"
    );
    let same_ns = vec![policy(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    )];
    c.apply(&same_ns);
    c.check("update: changed to allow the same namespace", &same_ns);
    c.apply(&[]);
    c.check("update: deleted", &[]);
    drop(open);
    drop(stream);

    services_and_policy(&mut c);

    // CNI DEL takes the pod's isolation with it: a sandbox that comes back
    // under the same endpoint id is not judged by a stale entry.
    c.apply(&deny);
    let node = xa % 2;
    let ep_id = c.nodes[node]
        .0
        .endpoints()
        .get(c.models[xa].ip)
        .unwrap()
        .map(|e| e.endpoint_id)
        .expect("x/a has an endpoint entry");
    assert!(
        c.nodes[node].0.policy().endpoint_policy(ep_id).unwrap().is_some(),
        "x/a is isolated"
    );
    let conf = c.vpc.main_conf(node, "1.1.0");
    c.vpc.sluice(node, "DEL", "xa", c.netns[xa], &conf).expect_ok("DEL x/a");
    assert_eq!(
        c.nodes[node].0.policy().endpoint_policy(ep_id).unwrap(),
        None,
        "DEL removed x/a's policy entry"
    );
}

/// A Service backed by x/a: ingress policy at the backend sees the real
/// client, egress policy at the client sees the backend (never the VIP),
/// and a pod reaching itself through the Service (hairpin) is judged as
/// itself. Expectations from the evaluator, as for the pod itself.
fn services_and_policy(c: &mut Cluster) {
    let xa = c.models.iter().position(|m| m.ns == "x" && m.name == "a").unwrap();
    let backend = SocketAddr::new(c.models[xa].ip, 80);
    let svcs = Services::new(&c.vpc).unwrap();
    svcs.put(&c.vpc, &ServicePort::new("10.96.0.50:80/tcp", &[backend]))
        .unwrap();
    // The agent wrote the maps (its sync of no policy removed this test's
    // entries): the test's appliers start again from what the maps hold.
    for (maps, applier) in &mut c.nodes {
        *applier = NodeApplier::from_maps(maps).unwrap();
    }
    let vip: SocketAddr = "10.96.0.50:80".parse().unwrap();
    let cases = [
        (
            "backend x/a admits namespace y only",
            vec![policy(
                "x",
                "svc-from-y",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            )],
        ),
        (
            "backend x/a admits pods a anywhere (itself too)",
            vec![policy(
                "x",
                "svc-from-a",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
            )],
        ),
        (
            "clients in z may only reach x/a on 80",
            vec![policy(
                "z",
                "egress-to-xa",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}},
                                           "podSelector": {"matchLabels": {"pod": "a"}}}],
                                   "ports": [{"port": 80}]}]}),
            )],
        ),
    ];
    for (name, policies) in cases {
        c.flush();
        c.apply(&policies);
        let mut wrong = Vec::new();
        for from in 0..c.models.len() {
            let want = expected(&policies, &c.models[from], &c.models[xa], "TCP", 80);
            // A disagreement must hold on three tries.
            if (0..3).all(|_| c.probe(from, vip, "TCP") != want) {
                wrong.push(format!(
                    "{}/{} -> VIP: expected {want}",
                    c.models[from].ns, c.models[from].name
                ));
            }
        }
        assert!(wrong.is_empty(), "{name}: {wrong:?}");
        eprintln!("services and policy, {name}: as expected");
    }
}

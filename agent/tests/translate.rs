//! The agent's translation, from real manifests: Services and
//! EndpointSlices to frontends (no privileges needed), then into a loaded
//! datapath's maps (root), where a second sync must write nothing and a
//! change only what it changes.

mod common;

use sluice_agent::agent::Agent;
use sluice_agent::objects::{Object, Objects};
use sluice_agent::services::{Frontend, NodeView, translate};
use sluice_agent::source::manifests::parse;
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::layout::{POLICY_F_EGRESS, POLICY_F_INGRESS, PROTO_TCP, PROTO_UDP};
use sluice_tc_datapath::loader;
use sluice_tc_datapath::maps::endpoints::Endpoint;
use sluice_tc_datapath::maps::lb::Algorithm::{Maglev as SVC_ALG_MAGLEV, Random as SVC_ALG_RANDOM};
use std::net::IpAddr;
use std::path::Path;

fn shop() -> Objects {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/shop.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut o = Objects::default();
    for obj in parse(&text, &path).unwrap() {
        o.insert(obj);
    }
    o
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn fe(vip: &str, port: u16, proto: u8) -> Frontend {
    Frontend::cluster(ip(vip), port, proto)
}

fn node_a() -> NodeView {
    NodeView {
        name: "node-a".into(),
        addresses: Vec::new(),
    }
}

#[test]
fn services_from_manifests() {
    let t = translate(&shop(), &node_a());
    let got = |f: Frontend| {
        let b = t.frontends.get(&f).unwrap_or_else(|| panic!("no frontend {f}"));
        let backends: Vec<(String, u16, bool)> = b
            .backends
            .iter()
            .map(|x| (x.addr.to_string(), x.port, x.active))
            .collect();
        (b.algorithm, b.affinity_timeout_secs, b.reject, backends)
    };
    let web_http = vec![
        ("10.244.1.5".into(), 8080, true),
        // Failing its readiness probe: keeps its connections, no new ones.
        ("10.244.1.7".into(), 8080, false),
        ("10.244.2.5".into(), 8080, true),
        // Terminating: keeps its connections, gets no new ones.
        ("10.244.2.6".into(), 8080, false),
        // The named port resolved differently for this slice's pods.
        ("10.244.3.5".into(), 8081, true),
    ];
    assert_eq!(
        got(fe("10.96.0.10", 80, PROTO_TCP)),
        (SVC_ALG_MAGLEV, 600, true, web_http)
    );
    let web_metrics = vec![
        ("10.244.1.5".into(), 9090, true),
        ("10.244.1.7".into(), 9090, false),
        ("10.244.2.5".into(), 9090, true),
        ("10.244.2.6".into(), 9090, false),
    ];
    assert_eq!(
        got(fe("10.96.0.10", 9090, PROTO_TCP)),
        (SVC_ALG_MAGLEV, 600, true, web_metrics)
    );
    // internalTrafficPolicy Local: the ClusterIP sees node-a's endpoint
    // only; the external IP and the node ports see all.
    let local = vec![("10.244.1.20".to_string(), 8443, true)];
    let all = vec![
        ("10.244.1.20".to_string(), 8443, true),
        ("10.244.2.20".to_string(), 8443, true),
    ];
    assert_eq!(got(fe("10.96.0.20", 443, PROTO_TCP)).3, local);
    for f in [
        fe("203.0.113.10", 443, PROTO_TCP),
        fe("172.31.0.11", 30443, PROTO_TCP),
        fe("172.31.0.12", 30443, PROTO_TCP),
    ] {
        assert_eq!(got(f), (SVC_ALG_RANDOM, 0, true, all.clone()), "{f}");
    }
    // A node's address is marked as such (its other ports pass); a VIP or
    // an external IP is not.
    assert!(t.frontends[&fe("172.31.0.11", 30443, PROTO_TCP)].node_address);
    assert!(!t.frontends[&fe("203.0.113.10", 443, PROTO_TCP)].node_address);
    assert!(!t.frontends[&fe("10.96.0.20", 443, PROTO_TCP)].node_address);
    assert_eq!(
        got(fe("172.31.0.12", 30053, PROTO_UDP)).3,
        vec![
            ("10.244.1.20".to_string(), 5353, true),
            ("10.244.2.20".to_string(), 5353, true)
        ]
    );
    // No endpoint: rejected; all terminating: the serving one takes new
    // connections, the one not serving none.
    assert_eq!(got(fe("10.96.0.30", 80, PROTO_TCP)).3, vec![]);
    assert_eq!(
        got(fe("10.96.0.40", 80, PROTO_TCP)).3,
        vec![
            ("10.244.1.30".to_string(), 8080, true),
            ("10.244.1.31".to_string(), 8080, false)
        ]
    );
    // Headless and SCTP get nothing; SCTP says why.
    assert!(!t.frontends.keys().any(|f| f.port == 5432 || f.vip == ip("10.96.0.50")));
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert!(t.warnings[0].contains("SCTP"), "{:?}", t.warnings);
    // From outside: node-a's own NodePorts and the external IP (eTP
    // Cluster: every endpoint), not node-b's NodePorts.
    for f in [
        Frontend::external(ip("203.0.113.10"), 443, PROTO_TCP),
        Frontend::external(ip("172.31.0.11"), 30443, PROTO_TCP),
    ] {
        assert_eq!(got(f), (SVC_ALG_RANDOM, 0, true, all.clone()), "{f}");
    }
    assert!(
        !t.frontends
            .contains_key(&Frontend::external(ip("172.31.0.12"), 30443, PROTO_TCP))
    );
    assert_eq!(
        t.frontends.len(),
        2 + 2 * 4 + 2 + 4,
        "{:?}",
        t.frontends.keys().collect::<Vec<_>>()
    );
}

fn objects(yaml: &str) -> Objects {
    let mut o = Objects::default();
    for obj in parse(yaml, Path::new("inline.yaml")).unwrap() {
        o.insert(obj);
    }
    o
}

/// Two endpoints, on node-a (zone z1) and node-b (zone z2), with hints.
fn edge(spec: &str, labels: &str, hints: [&str; 2]) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a, labels: {{topology.kubernetes.io/zone: z1}}}}\n\
         status: {{addresses: [{{type: InternalIP, address: 172.31.0.11}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: edge, namespace: ns, labels: {{{labels}}}}}\n\
         spec:\n  clusterIP: 10.96.1.1\n{spec}\n  ports: [{{name: p, port: 80, nodePort: 30080, protocol: TCP}}]\n\
         status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.1}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: edge-1, namespace: ns, \
         labels: {{kubernetes.io/service-name: edge}}}}\naddressType: IPv4\nports: [{{name: p, port: 8080, protocol: TCP}}]\n\
         endpoints:\n- {{addresses: [10.244.1.5], nodeName: node-a{}}}\n- {{addresses: [10.244.2.5], nodeName: node-b{}}}\n",
        hints[0], hints[1]
    )
}

#[test]
fn traffic_from_outside_follows_the_traffic_policies() {
    let backends = |t: &sluice_agent::services::Translated, f: Frontend| -> Vec<String> {
        t.frontends[&f].backends.iter().map(|b| b.addr.to_string()).collect()
    };
    let both = vec!["10.244.1.5".to_string(), "10.244.2.5".to_string()];
    let np = Frontend::external(ip("172.31.0.11"), 30080, PROTO_TCP);
    let lb = Frontend::external(ip("198.51.100.1"), 80, PROTO_TCP);

    // Cluster: every endpoint, rejecting when none; no health check.
    let t = translate(&objects(&edge("  type: LoadBalancer", "", ["", ""])), &node_a());
    assert_eq!(backends(&t, np), both);
    assert_eq!(backends(&t, lb), both);
    assert!(t.frontends[&np].reject && t.health_checks.is_empty());

    // Local: node-a's endpoint only, from outside; pods still see both
    // (kube-proxy's rule for traffic from inside); dropping, not
    // rejecting; the health check counts node-a's ready endpoints.
    let local = "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n  \
                 loadBalancerSourceRanges: [10.0.0.0/8, \"fd00::/8\", \"192.0.2.1/32\"]";
    let t = translate(&objects(&edge(local, "", ["", ""])), &node_a());
    assert_eq!(backends(&t, np), vec!["10.244.1.5".to_string()]);
    assert_eq!(backends(&t, lb), vec!["10.244.1.5".to_string()]);
    assert_eq!(backends(&t, Frontend::cluster(ip("198.51.100.1"), 80, PROTO_TCP)), both);
    assert!(!t.frontends[&np].reject, "eTP Local drops without a local endpoint");
    assert_eq!(t.health_checks[&32100].local_endpoints, 1);
    assert_eq!(t.health_checks[&32100].service, "ns/edge");
    // Source ranges: the load balancer's, of its family; not the NodePort's.
    assert_eq!(
        t.frontends[&lb].source_ranges,
        vec![(ip("10.0.0.0"), 8), (ip("192.0.2.1"), 32)]
    );
    assert!(t.frontends[&np].source_ranges.is_empty());
    // ... and the pods' frontend of the same address: held to them too.
    let lb_inside = Frontend::cluster(ip("198.51.100.1"), 80, PROTO_TCP);
    assert_eq!(
        t.frontends[&lb_inside].source_ranges,
        vec![(ip("10.0.0.0"), 8), (ip("192.0.2.1"), 32)]
    );
    // The node's own sockets: refused while no range holds its address
    // (172.31.0.11), as kube-proxy judges them by it; admitted once one
    // does; never refused without ranges, nor on the external frontend
    // (only the pods' and the node's frontend carries the flag).
    assert!(t.frontends[&lb_inside].node_denied, "the node outside the ranges");
    assert!(!t.frontends[&lb].node_denied && !t.frontends[&np].node_denied);
    let with_node = local.replace("\"192.0.2.1/32\"", "172.31.0.0/16");
    let t = translate(&objects(&edge(&with_node, "", ["", ""])), &node_a());
    assert!(!t.frontends[&lb_inside].node_denied, "the node inside a range");
    let t = translate(&objects(&edge("  type: LoadBalancer", "", ["", ""])), &node_a());
    assert!(!t.frontends[&lb_inside].node_denied, "no ranges");

    // An address of this node that no Node object lists (`--node-ip`):
    // its NodePort from outside, and the pods' frontend of it, whose VIP
    // marker puts the address in the filter the uplink reads first.
    let extra = NodeView {
        addresses: vec![ip("172.31.9.9")],
        ..node_a()
    };
    let t = translate(&objects(&edge("  type: NodePort", "", ["", ""])), &extra);
    assert_eq!(
        backends(&t, Frontend::external(ip("172.31.9.9"), 30080, PROTO_TCP)),
        both
    );
    let inside = &t.frontends[&Frontend::cluster(ip("172.31.9.9"), 30080, PROTO_TCP)];
    assert!(inside.node_address, "a node's address: its other ports pass");
    assert!(
        t.frontends
            .contains_key(&Frontend::cluster(ip("172.31.0.11"), 30080, PROTO_TCP))
    );

    // Another proxy's Service, or a headless-labelled one: nothing.
    for label in [
        "service.kubernetes.io/service-proxy-name: other",
        "service.kubernetes.io/headless: \"\"",
    ] {
        let t = translate(&objects(&edge("  type: LoadBalancer", label, ["", ""])), &node_a());
        assert!(t.frontends.is_empty(), "{label}: {:?}", t.frontends.keys());
    }

    // Topology hints: this zone's endpoint when every endpoint has hints
    // and some are for here; all otherwise.
    let z = |zone: &str| format!(", hints: {{forZones: [{{name: {zone}}}]}}");
    let cip = Frontend::cluster(ip("10.96.1.1"), 80, PROTO_TCP);
    let t = translate(&objects(&edge("", "", [&z("z1"), &z("z2")])), &node_a());
    assert_eq!(backends(&t, cip), vec!["10.244.1.5".to_string()]);
    let t = translate(&objects(&edge("", "", [&z("z1"), ""])), &node_a());
    assert_eq!(backends(&t, cip), both, "an endpoint without hints");
    let t = translate(&objects(&edge("", "", [&z("z2"), &z("z2")])), &node_a());
    assert_eq!(backends(&t, cip), both, "no endpoint for this zone");
    let n = |node: &str| format!(", hints: {{forNodes: [{{name: {node}}}], forZones: [{{name: z9}}]}}");
    let t = translate(&objects(&edge("", "", [&n("node-b"), &n("node-a")])), &node_a());
    assert_eq!(
        backends(&t, cip),
        vec!["10.244.2.5".to_string()],
        "forNodes before forZones"
    );
}

#[test]
fn sync_writes_the_difference() {
    if !common::is_root("sync_writes_the_difference") {
        return;
    }
    let cfg = DatapathConfig::default();
    let (_ebpf, mut maps) = loader::load_unpinned(&cfg).unwrap();
    // web-1 is this node's pod.
    maps.endpoints_mut()
        .add(&Endpoint {
            addr: ip("10.244.1.5"),
            ifindex: 1,
            endpoint_id: 7,
            mac: [2, 0, 0, 0, 0, 5],
            parent_ifindex: 0,
            netns_cookie: 0,
        })
        .unwrap();
    let mut agent = Agent::with_maps(maps, node_a(), vec![]).unwrap();
    let mut o = shop();
    let first = agent.sync(&o);
    assert_eq!(first.services.frontends, 16);
    assert!(first.writes() > 16, "{first:?}");
    let views = agent.maps().lb().services().unwrap();
    assert_eq!(views.len(), 16);
    let web = views
        .iter()
        .find(|v| v.vip == ip("10.96.0.10") && v.port == 80)
        .unwrap();
    assert_eq!(web.active.len(), 3, "three take new connections");
    assert_eq!((web.algorithm, web.affinity_timeout_secs), (SVC_ALG_MAGLEV, 600));
    let backends = agent.maps().lb().backends().unwrap();
    assert!(backends.iter().any(|b| b.port == 8081), "the other slice's port");
    // Policy: web-1 isolated both ways, its rules written.
    let ep = agent
        .maps()
        .policy()
        .endpoint_policy(7)
        .unwrap()
        .expect("web-1 has a policy entry");
    assert_eq!(ep.flags, POLICY_F_INGRESS | POLICY_F_EGRESS);
    let rules = agent.maps().policy().rule_entries(Some(7)).unwrap();
    let ports: Vec<u16> = rules.iter().map(|e| u16::from_be(e.rule.port)).collect();
    assert!(
        ports.contains(&8080) && ports.contains(&53),
        "named port and egress DNS: {ports:?}"
    );
    assert!(
        agent.maps().policy().cidrs().unwrap().len() >= 2,
        "the ipBlock and its except"
    );

    // The same objects again: nothing to write.
    let again = agent.sync(&o);
    assert_eq!((again.writes(), again.services.changed), (0, 0), "{again:?}");

    // One endpoint gone: only web's two frontends change.
    let mut slice = o.slices()["shop/web-abc12"].clone();
    slice.endpoints.retain(|e| e.addresses != ["10.244.2.5"]);
    o.insert(Object::EndpointSlice(Box::new(slice)));
    let change = agent.sync(&o);
    assert_eq!((change.services.changed, change.services.removed), (2, 0), "{change:?}");
    // (Maglev rewrites the table chunks the gone backend held.)
    assert!(change.writes() < first.writes() / 2, "{change:?} against {first:?}");
    assert!(
        !agent
            .maps()
            .lb()
            .backends()
            .unwrap()
            .iter()
            .any(|b| b.addr == ip("10.244.2.5")),
        "the gone endpoint's backends are removed"
    );

    // The Service gone: its frontends and VIP go.
    o.remove("Service", "shop/web");
    let gone = agent.sync(&o);
    assert_eq!(gone.services.removed, 2, "{gone:?}");
    assert_eq!(agent.maps().lb().vip_filter_count(ip("10.96.0.10")).unwrap(), 0);
    assert_eq!(agent.maps().lb().services().unwrap().len(), 14);

    // A restarted agent over the same maps finds nothing to write.
    let (_spare_ebpf, spare) = loader::load_unpinned(&cfg).unwrap();
    let maps = std::mem::replace(agent.maps_mut(), spare);
    let mut restarted = Agent::with_maps(maps, node_a(), vec![]).unwrap();
    let r = restarted.sync(&o);
    assert_eq!(r.writes(), 0, "{r:?}");
}

/// The API-server source fills the same objects: the manifests' objects
/// delivered as kube-rs watcher events (a list per kind) translate to the
/// same frontends.
#[test]
fn the_api_source_translates_the_same() {
    use kube::runtime::watcher::Event;
    use sluice_agent::source::kube::{KINDS, KubeStore};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/shop.yaml");
    let objects = parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let mut store = KubeStore::default();
    for kind in KINDS {
        store.apply(kind, Event::Init);
        for o in objects.iter().filter(|o| o.id().0 == kind) {
            store.apply(kind, Event::InitApply(o.clone()));
        }
        assert!(store.apply(kind, Event::InitDone));
    }
    assert!(store.synced());
    assert_eq!(store.objects(), &shop());
    assert_eq!(translate(store.objects(), &node_a()), translate(&shop(), &node_a()));
}

/// `sluice.io/unreachable: drop` makes a Service drop what it cannot serve
/// (kube-proxy's behaviour, REJECT, stays the default); another value is
/// reported and rejects.
#[test]
fn a_service_may_drop_what_it_cannot_serve() {
    let svc = |name: &str, ip: &str, annotation: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t, annotations: {{{annotation}}}}}\n\
             spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n---\n"
        )
    };
    let text = [
        svc("plain", "10.96.1.1", ""),
        svc("drops", "10.96.1.2", "sluice.io/unreachable: drop"),
        svc("odd", "10.96.1.3", "sluice.io/unreachable: maybe"),
    ]
    .concat();
    let mut o = Objects::default();
    for obj in parse(&text, Path::new("t")).unwrap() {
        o.insert(obj);
    }
    let t = translate(&o, &node_a());
    let reject = |vip: &str| t.frontends[&fe(vip, 80, PROTO_TCP)].reject;
    assert_eq!(
        (reject("10.96.1.1"), reject("10.96.1.2"), reject("10.96.1.3")),
        (true, false, true)
    );
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert!(t.warnings[0].contains("\"maybe\""), "{:?}", t.warnings);
}

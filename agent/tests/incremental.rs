//! The Service translation kept up to date object by object equals the
//! translation of everything at once, after any sequence of changes:
//! Services added, changed and removed; EndpointSlices added, changed,
//! moved from one Service to another by their label and removed; Node
//! addresses changed (every NodePort); frontends claimed by two Services.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use serde_json::json;
use sluice_agent::objects::{Object, Objects};
use sluice_agent::services::{NodeView, ServiceTranslation, translate};

#[derive(Debug, Clone)]
enum Change {
    /// Service `name` with a clusterIP from a small pool (so that two
    /// Services may claim one frontend), one or two ports, maybe a NodePort.
    Service {
        name: u8,
        ip: u8,
        ports: u8,
        node_port: bool,
    },
    RemoveService(u8),
    /// Slice `name`, labelled with Service `service`, endpoints from a small pool.
    Slice {
        name: u8,
        service: u8,
        endpoints: Vec<(u8, bool)>,
    },
    RemoveSlice(u8),
    /// Node `name` with one address from a small pool.
    Node {
        name: u8,
        ip: u8,
    },
    RemoveNode(u8),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0..6u8, 0..4u8, 1..3u8, any::<bool>()).prop_map(|(name, ip, ports, node_port)| Change::Service { name, ip, ports, node_port }),
        1 => (0..6u8).prop_map(Change::RemoveService),
        4 => (0..8u8, 0..6u8, proptest::collection::vec((0..5u8, any::<bool>()), 0..4))
            .prop_map(|(name, service, endpoints)| Change::Slice { name, service, endpoints }),
        1 => (0..8u8).prop_map(Change::RemoveSlice),
        1 => (0..2u8, 0..3u8).prop_map(|(name, ip)| Change::Node { name, ip }),
        1 => (0..2u8).prop_map(Change::RemoveNode),
    ]
}

fn apply(o: &mut Objects, c: &Change) {
    match c {
        Change::Service {
            name,
            ip,
            ports,
            node_port,
        } => {
            let mut p = vec![json!({"name": "http", "port": 80, "targetPort": 8080})];
            if *ports > 1 {
                p.push(json!({"name": "dns", "port": 53, "protocol": "UDP"}));
            }
            if *node_port {
                p[0]["nodePort"] = json!(30000 + u16::from(*name));
            }
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("s{name}"), "namespace": "ns"},
                "spec": {"clusterIP": format!("10.96.0.{ip}"), "ports": p}
            }))
            .unwrap();
            o.insert(Object::Service(Box::new(svc)));
        }
        Change::RemoveService(name) => o.remove("Service", &format!("ns/s{name}")),
        Change::Slice {
            name,
            service,
            endpoints,
        } => {
            let eps: Vec<_> = endpoints
                .iter()
                .map(|(a, ready)| json!({"addresses": [format!("10.244.1.{a}")], "conditions": {"ready": ready, "terminating": !ready}}))
                .collect();
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": format!("e{name}"), "namespace": "ns",
                             "labels": {"kubernetes.io/service-name": format!("s{service}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
                "endpoints": eps
            }))
            .unwrap();
            o.insert(Object::EndpointSlice(Box::new(slice)));
        }
        Change::RemoveSlice(name) => o.remove("EndpointSlice", &format!("ns/e{name}")),
        Change::Node { name, ip } => {
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": format!("node{name}")},
                "status": {"addresses": [{"type": "InternalIP", "address": format!("172.31.0.{ip}")}]}
            }))
            .unwrap();
            o.insert(Object::Node(Box::new(node)));
        }
        Change::RemoveNode(name) => o.remove("Node", &format!("node{name}")),
    }
}

/// Six Services s0..s5 on 10.96.0.0..5, port 80, NodePorts or not.
fn six_services(node_port: bool) -> Objects {
    let mut o = Objects::default();
    for name in 0..6 {
        let s = Change::Service {
            name,
            ip: name,
            ports: 1,
            node_port,
        };
        apply(&mut o, &s);
    }
    o
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn kept_up_to_date_equals_everything_at_once(
        changes in proptest::collection::vec(change(), 1..40),
        sync_every in 1..4usize,
    ) {
        let node = NodeView { name: "node0".into(), addresses: Vec::new() };
        let mut o = Objects::default();
        let mut kept = ServiceTranslation::default();
        for (i, c) in changes.iter().enumerate() {
            apply(&mut o, c);
            if i % sync_every == 0 || i + 1 == changes.len() {
                kept.update(&o, &node);
                let all = translate(&o, &node);
                prop_assert_eq!(kept.frontends(), &all.frontends, "after {:?}", &changes[..=i]);
                prop_assert_eq!(sorted(kept.warnings()), sorted(all.warnings));
            }
        }
    }
}

/// What the incremental path saves: a change to one Service's slice
/// translates that Service only; a Node address change, all of them.
#[test]
fn only_changed_services_are_translated_again() {
    let node = NodeView {
        name: "node0".into(),
        addresses: Vec::new(),
    };
    let mut o = six_services(true);
    // Slice e0, one ready endpoint, labelled for Service `service`.
    let slice0_of = |service| Change::Slice {
        name: 0,
        service,
        endpoints: vec![(1, true)],
    };
    let mut kept = ServiceTranslation::default();
    assert_eq!(kept.update(&o, &node), 6, "the first update translates all");
    assert_eq!(kept.update(&o, &node), 0, "nothing changed");
    apply(&mut o, &slice0_of(2));
    assert_eq!(kept.update(&o, &node), 1, "one slice: its Service");
    apply(&mut o, &slice0_of(3));
    assert_eq!(
        kept.update(&o, &node),
        2,
        "a slice relabelled: the Service it left and the one it joined"
    );
    apply(&mut o, &slice0_of(3));
    assert_eq!(kept.update(&o, &node), 0, "an equal object changes nothing");
    apply(&mut o, &Change::Node { name: 0, ip: 1 });
    assert_eq!(kept.update(&o, &node), 6, "a node address: every NodePort");
    assert_eq!(kept.frontends(), &translate(&o, &node).frontends);
}

/// Generations count per store: a translation given another store (or a
/// clone) starts over instead of taking its generations for the first one's.
#[test]
fn another_store_is_translated_whole() {
    let node = NodeView {
        name: "node0".into(),
        addresses: Vec::new(),
    };
    let a = six_services(false);
    let mut kept = ServiceTranslation::default();
    kept.update(&a, &node);
    let mut b = Objects::default();
    apply(
        &mut b,
        &Change::Service {
            name: 1,
            ip: 3,
            ports: 2,
            node_port: false,
        },
    );
    assert_eq!(kept.update(&b, &node), 1, "b's one Service, translated afresh");
    assert_eq!(kept.frontends(), &translate(&b, &node).frontends);
    let mut c = b.clone();
    apply(&mut c, &Change::RemoveService(1));
    kept.update(&c, &node);
    assert_eq!(kept.frontends(), &translate(&c, &node).frontends);
}

/// The store says which Pods changed after a generation (what the policy
/// pass translates again): inserted, changed and removed ones, not those
/// written again unchanged; a reader too far behind is told to read all.
#[test]
fn the_store_names_the_pods_changed_since() {
    use k8s_openapi::api::core::v1::Pod;
    let pod = |name: &str, app: &str| {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": name, "labels": {"app": app}},
            "status": {"podIP": "10.0.0.1"}
        }))
        .unwrap();
        Object::Pod(Box::new(p))
    };
    let mut o = Objects::default();
    for i in 0..10 {
        o.insert(pod(&format!("p{i}"), "web"));
    }
    let (_, g) = o.generation();
    let since = |o: &Objects, g| -> Option<Vec<String>> {
        o.pods_changed_since(g).map(|i| {
            let mut v: Vec<String> = i.map(String::from).collect();
            v.sort();
            v.dedup();
            v
        })
    };
    assert_eq!(since(&o, g), Some(vec![]));
    o.insert(pod("p3", "web"));
    assert_eq!(since(&o, g), Some(vec![]), "the same Pod again is no change");
    o.insert(pod("p3", "db"));
    o.remove("Pod", "x/p7");
    o.insert(pod("p10", "web"));
    assert_eq!(
        since(&o, g),
        Some(vec!["x/p10".to_string(), "x/p3".into(), "x/p7".into()])
    );
    let (_, g2) = o.generation();
    assert_eq!(since(&o, g2), Some(vec![]));
    // Far more changes than the log keeps: an old reader reads everything,
    // a recent one still gets its list.
    for i in 0..10_000 {
        o.insert(pod("p1", if i % 2 == 0 { "a" } else { "b" }));
    }
    assert_eq!(since(&o, g), None);
    let (_, g3) = o.generation();
    o.insert(pod("p2", "db"));
    assert_eq!(since(&o, g3), Some(vec!["x/p2".to_string()]));
}

//! One bad object must not stop everything (the audit's two ways in: an
//! EndpointSlice whose addresses are not of its addressType, and a Service
//! with more Maglev ports than the Maglev map holds tables): the rest of
//! the Services are written, policy is applied, and what cannot be done as
//! asked is done another way and said. Against a loaded datapath (root).

mod common;

use sluice_agent::agent::Agent;
use sluice_agent::objects::Objects;
use sluice_agent::services::NodeView;
use sluice_agent::source::manifests::parse;
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::layout::POLICY_F_INGRESS;
use sluice_tc_datapath::loader;
use sluice_tc_datapath::maps::endpoints::Endpoint;
use sluice_tc_datapath::maps::lb::Algorithm;
use std::net::IpAddr;
use std::path::Path;

fn objects(text: &str) -> Objects {
    let mut o = Objects::default();
    for obj in parse(text, Path::new("t")).unwrap() {
        o.insert(obj);
    }
    o
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A namespace with a local pod (10.244.1.5, endpoint 7) that a deny-all
/// policy isolates, and a healthy Service.
const BASE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: t, labels: {kubernetes.io/metadata.name: t}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: t, labels: {app: p}}
spec: {nodeName: n, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: t}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: v1
kind: Service
metadata: {name: good, namespace: t}
spec: {clusterIP: 10.96.0.1, ports: [{name: a, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: good-1, namespace: t, labels: {kubernetes.io/service-name: good}}
addressType: IPv4
ports: [{name: a, port: 8080}]
endpoints: [{addresses: [10.244.1.5]}]
---
";

/// The agent over a datapath of its own; keep the first value alive with it
/// (the loaded object).
fn agent() -> (impl Sized, Agent) {
    let cfg = DatapathConfig::default();
    let (ebpf, mut maps) = loader::load_unpinned(&cfg).unwrap();
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
    let node = NodeView {
        name: "n".into(),
        addresses: Vec::new(),
    };
    (ebpf, Agent::with_maps(maps, node, vec![]).unwrap())
}

/// The healthy Service is in the maps and the pod is isolated.
fn healthy(a: &Agent) {
    let lb = a.maps().lb();
    let good = lb
        .service(ip("10.96.0.1"), 80, 6)
        .unwrap()
        .expect("the good Service is written");
    assert_eq!(good.count, 1);
    let pol = a.maps().policy().endpoint_policy(7).unwrap().expect("policy applied");
    assert_eq!(pol.flags & POLICY_F_INGRESS, POLICY_F_INGRESS);
}

#[test]
fn a_slice_with_addresses_of_the_other_family_spoils_nothing() {
    if !common::is_root("a_slice_with_addresses_of_the_other_family_spoils_nothing") {
        return;
    }
    let (_ebpf, mut a) = agent();
    let bad = "
apiVersion: v1
kind: Service
metadata: {name: mixed, namespace: t}
spec: {clusterIP: 10.96.0.2, ports: [{name: a, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: mixed-1, namespace: t, labels: {kubernetes.io/service-name: mixed}}
addressType: IPv4
ports: [{name: a, port: 8080}]
endpoints: [{addresses: [10.244.1.5, 'fd00::5']}]
";
    let r = a.sync(&objects(&format!("{BASE}{bad}")));
    // Whatever happens to the mixed Service, the rest is written.
    healthy(&a);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert!(
        r.warnings.iter().any(|w| w.contains("fd00::5") && w.contains("IPv4")),
        "{:?}",
        r.warnings
    );
    let mixed = a.maps().lb().service(ip("10.96.0.2"), 80, 6).unwrap().expect("written");
    assert_eq!(
        mixed.count, 1,
        "the IPv4 endpoint is its backend, the IPv6 one is left out"
    );
}

#[test]
fn more_maglev_ports_than_tables_fall_back_to_random() {
    if !common::is_root("more_maglev_ports_than_tables_fall_back_to_random") {
        return;
    }
    let (_ebpf, mut a) = agent();
    let capacity = a.maps().lb().maglev_capacity();
    assert_eq!(capacity, 256, "room for 256 tables at the default table size");
    let ports = 300;
    let mut svc = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: wide, namespace: t, annotations: {sluice.io/lb-algorithm: maglev}}\n\
         spec:\n  clusterIP: 10.96.0.3\n  ports:\n",
    );
    let mut slice = String::from(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: wide-1, namespace: t, labels: {kubernetes.io/service-name: wide}}\naddressType: IPv4\nports:\n",
    );
    for i in 0..ports {
        svc += &format!("  - {{name: p{i}, port: {}}}\n", 1000 + i);
        slice += &format!("- {{name: p{i}, port: {}}}\n", 2000 + i);
    }
    slice += "endpoints: [{addresses: [10.244.1.5]}, {addresses: [10.244.1.6]}]\n";
    let mut o = objects(&format!("{BASE}{svc}{slice}"));
    let r = a.sync(&o);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    healthy(&a);
    let views = a.maps().lb().services().unwrap();
    let wide: Vec<_> = views.iter().filter(|v| v.vip == ip("10.96.0.3")).collect();
    assert_eq!(wide.len(), ports, "every port is served");
    let maglev = wide.iter().filter(|v| v.algorithm == Algorithm::Maglev).count();
    assert_eq!(maglev, capacity, "as many on Maglev as there are tables");
    assert_eq!(
        r.warnings.iter().filter(|w| w.contains("selects at random")).count(),
        ports - capacity,
        "each fallback is said"
    );
    assert_eq!(a.maps().lb().maglev_tables().unwrap().len(), capacity);
    // The Service leaves Maglev: its tables go.
    let plain = format!("{BASE}{svc}{slice}").replace("annotations: {sluice.io/lb-algorithm: maglev}", "");
    o = objects(&plain);
    let r = a.sync(&o);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert!(a.maps().lb().maglev_tables().unwrap().is_empty(), "every table freed");
}

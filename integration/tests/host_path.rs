//! The node and its own pods, with macvlan pods (whose interfaces cannot
//! talk to their parent): the host path the CNI binary makes at ADD (a
//! host-side child of the parent, a route per pod, and in each pod a route
//! to its node's addresses and the host-stack CIDRs) lets the node probe its
//! pods and the pods reach their node, IPv4 and IPv6, TCP and UDP, and a
//! node-local DNS cache at 169.254.20.10. A pod isolated by a NetworkPolicy
//! still answers its node, and still not another pod. The child goes with
//! the parent's last pod. The simulated nodes have no other way to their
//! pods (no default route), so every probe here fails without it.

use serde_json::{Value, json};
use sluice_integration::probe::{EchoServer, sa, tcp_request, udp_request};
use sluice_integration::require_root;
use sluice_integration::services::Services;
use sluice_integration::vpc::{Vpc, node_ip, result_addr};

const NODE_V6: &str = "fd00:31::11";
const DNS: &str = "169.254.20.10";

/// A dual-stack main-role config with the node-local DNS as a host-stack CIDR.
fn conf(vpc: &Vpc, node: usize) -> Value {
    let mut c = vpc.dual_stack_conf(node);
    c["hostStackCidrs"] = json!([format!("{DNS}/32")]);
    c
}

#[test]
fn the_node_and_its_pods_reach_each_other() {
    if !require_root("the_node_and_its_pods_reach_each_other") {
        return;
    }
    let mut vpc = Vpc::new("hp", 2).unwrap();
    let node0 = node_ip(0);
    for (node, v6) in [(0, NODE_V6), (1, "fd00:31::12")] {
        vpc.nodes[node]
            .ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])
            .unwrap();
    }
    vpc.nodes[0]
        .ip(&["addr", "add", &format!("{DNS}/32"), "dev", "lo"])
        .unwrap();
    let _node_server = EchoServer::start(&vpc.nodes[0], 7001, "node").unwrap();
    // Pods: two on node 0, one on node 1.
    let mut pods = Vec::new();
    for (node, name) in [(0, "a1"), (0, "a2"), (1, "b")] {
        let p = vpc.pod(name).unwrap();
        let r = vpc
            .sluice(node, "ADD", name, p, &conf(&vpc, node))
            .expect_ok("ADD")
            .json();
        let addr = |i: usize| result_addr(&r, i);
        pods.push((node, name, p, addr(0), addr(1), r));
    }
    let _servers: Vec<EchoServer> = pods
        .iter()
        .map(|(_, name, p, ..)| EchoServer::start(&vpc.pods[*p], 7000, name).unwrap())
        .collect();
    // The result lists the host-side interface, without a sandbox.
    let host_ifs: Vec<&Value> = pods[0].5["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("sandbox").is_none())
        .collect();
    assert_eq!(host_ifs.len(), 1, "{}", pods[0].5);
    let child = host_ifs[0]["name"].as_str().unwrap().to_string();
    assert!(child.starts_with("slh"), "{child}");

    for (node, name, p, v4, v6, _) in &pods {
        // The node probes each of its pods (the kubelet's TCP/HTTP probe).
        for ip in [v4, v6] {
            let reply = tcp_request(&vpc.nodes[*node], sa(ip, 7000), "probe")
                .unwrap_or_else(|e| panic!("node {node} probing {name} at {ip}: {e}"));
            assert_eq!(reply, format!("{name}:probe"));
            let reply = udp_request(&vpc.nodes[*node], sa(ip, 7000), "udp")
                .unwrap_or_else(|e| panic!("node {node} to {name} at {ip} over UDP: {e}"));
            assert_eq!(reply, format!("{name}:udp"));
        }
        if *node != 0 {
            continue;
        }
        // The pod reaches its node's addresses, TCP and UDP, and the DNS.
        for ip in [node0.as_str(), NODE_V6] {
            assert_eq!(
                tcp_request(&vpc.pods[*p], sa(ip, 7001), "hi").unwrap(),
                "node:hi",
                "{name} to {ip}"
            );
            assert_eq!(
                udp_request(&vpc.pods[*p], sa(ip, 7001), "hu").unwrap(),
                "node:hu",
                "{name} to {ip}"
            );
        }
        assert_eq!(udp_request(&vpc.pods[*p], sa(DNS, 7001), "dns?").unwrap(), "node:dns?");
    }

    // a2 isolated by a NetworkPolicy: its node still reaches it, a1 not.
    let svcs = Services::new(&vpc).unwrap();
    let pod_yaml = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: t, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: {}, containers: [{{name: c, image: x}}]}}\n\
             status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n---\n",
            vpc.node_name(0)
        )
    };
    let manifests = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: t, labels: {{kubernetes.io/metadata.name: t}}}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\n\
         status: {{addresses: [{{type: InternalIP, address: {node0}}}, {{type: InternalIP, address: '{NODE_V6}'}}]}}\n---\n\
         {}{}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: isolate-a2, namespace: t}}\n\
         spec: {{podSelector: {{matchLabels: {{app: a2}}}}, policyTypes: [Ingress]}}\n",
        vpc.node_name(0),
        pod_yaml("a1", &pods[0].3),
        pod_yaml("a2", &pods[1].3),
    );
    svcs.put_manifest(&vpc, "isolation", &manifests).unwrap();
    assert_eq!(
        tcp_request(&vpc.nodes[0], sa(&pods[1].3, 7000), "probe").unwrap(),
        "a2:probe",
        "the node probes its isolated pod"
    );
    assert!(
        tcp_request(&vpc.pods[pods[0].2], sa(&pods[1].3, 7000), "x").is_err(),
        "another pod is still held to the policy"
    );

    assert_eq!(
        vpc.netfilter().unwrap(),
        Vec::<String>::new(),
        "no conntrack entry, no rule"
    );

    // The child goes with the parent's last pod; a second DEL is a no-op.
    let has_child = |vpc: &Vpc| vpc.nodes[0].link_names().unwrap().contains(&child);
    let c0 = conf(&vpc, 0);
    vpc.sluice(0, "DEL", "a1", pods[0].2, &c0).expect_ok("DEL a1");
    assert!(has_child(&vpc), "a2 still uses it");
    vpc.sluice(0, "DEL", "a2", pods[1].2, &c0).expect_ok("DEL a2");
    assert!(
        !has_child(&vpc),
        "the last pod took the host child with it: {}\n{}",
        vpc.nodes[0].ip(&["route", "show", "table", "all"]).unwrap(),
        vpc.nodes[0].ip(&["-6", "route", "show", "table", "all"]).unwrap()
    );
    vpc.sluice(0, "DEL", "a2", pods[1].2, &c0).expect_ok("second DEL");
    let routes = vpc.nodes[0].ip(&["route", "show"]).unwrap();
    assert!(!routes.contains("10.244."), "no pod route left: {routes}");
    // `sluice-install --uninstall` takes node 1's, whose pod is still there.
    let conf_dir = tempfile::tempdir().unwrap();
    let out = vpc.nodes[1]
        .exec(
            &sluice_integration::bin_dir()
                .join("sluice-install")
                .display()
                .to_string(),
            &["--uninstall", "--cni-conf-dir", &conf_dir.path().display().to_string()],
        )
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !vpc.nodes[1].link_names().unwrap().iter().any(|l| l.starts_with("slh")),
        "uninstall removed the host path"
    );
}

//! Traffic from outside the node: hosts on the VPC fabric (outside the
//! cluster) reach NodePorts, a load-balancer IP and an external IP of
//! node 0, whose agent put the uplink programs on its `eth0`; backends on
//! node 0 and node 1, over TCP and UDP, IPv4 and IPv6.
//!
//! - externalTrafficPolicy Cluster: every backend answers; the one on the
//!   node sees the client's own address, the one on the other node sees
//!   node 0's (SNAT), and the replies come back from the frontend;
//! - externalTrafficPolicy Local: only node 0's backend, which sees the
//!   client; its healthCheckNodePort answers 200 with one local endpoint,
//!   then 503 once that endpoint is gone, and the NodePort drops;
//! - a client reusing its source port toward another frontend of the same
//!   backend (NodePort, then load-balancer IP) connects at once, though
//!   the backend holds that 4-tuple in TIME_WAIT from the first;
//!   two live connections sharing one client port to two such frontends
//!   are both answered (the second from another port at the backend);
//! - loadBalancerSourceRanges admits the listed client and drops another
//!   (counted as drop-source-range), and a pod calling that load-balancer
//!   IP from inside is held to the ranges too, and so are the node's own
//!   sockets (judged by its address, as kube-proxy judges them);
//! - a pod of the chained role (behind Debian's macvlan) is handed the
//!   client's connection too;
//! - ingress policy at the backend judges the real client (eTP Local): an
//!   ipBlock admits one outside host and keeps out the other;
//! - a router's "fragmentation needed" about a reply reaches the backend's
//!   kernel (path MTU discovery), and a datagram larger than the MTU
//!   crosses the NodePort in fragments both ways, to either backend;
//! - a UDP flow (one client port) leaves its backend for the other once
//!   its pod starts terminating;
//! - a NodePort without endpoints refuses a connection at once;
//! - the node calls its own NodePort (through the socket hooks);
//! - a pod's hostPort (the runtime's portMappings at ADD) answers from the
//!   fabric (the pod sees the client) and from the node's own sockets (in
//!   a cgroup with the socket hooks), TCP and UDP; another pod asking for
//!   the same port is refused (PortInUse) and leaves nothing behind; DEL
//!   frees it; one port held by three pods on 127.0.0.1/TCP, the node's
//!   address/TCP and the node's address/UDP, each reached at its own;
//! - no conntrack entry, iptables rule or nftables ruleset on any node;
//! - `sluice-install --uninstall` takes the programs off the uplink;
//! - a node no pod has started on serves its NodePort: its agent loads
//!   the programs from the node's network configuration.

use serde_json::Value;
use sluice_integration::agent::AgentProcess;
use sluice_integration::cgroup::{TestCgroup, cgroup2_root, sock_client};
use sluice_integration::datapath::programs_on;
use sluice_integration::netns::Netns;
use sluice_integration::probe::{
    EchoServer, exchange, sa, tcp_connect_from_port, tcp_request, tcp_request_from_port, udp_large_request, udp_request,
};
use sluice_integration::services::Services;
use sluice_integration::vpc::{VPC_GATEWAY6, VPC_ROUTER, Vpc, node_ip, result_addr};
use sluice_integration::{bin_dir, require_root};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

const LB_IP: &str = "198.51.100.10";
const LOCAL_LB_IP: &str = "198.51.100.11";
const RANGED_LB_IP: &str = "198.51.100.20";
const EXTERNAL_IP: &str = "203.0.113.10";
const CLIENT: &str = "172.31.0.100";
const CLIENT6: &str = "fd00:31::100";
const OTHER_CLIENT: &str = "172.31.0.101";
const HEALTH_PORT: u16 = 32000;
const HOST_PORT: u16 = 8081;

fn node6(i: usize) -> String {
    format!("fd00:31::{}", 11 + i)
}

/// "a@172.31.0.100:msg" -> ("a", "172.31.0.100").
fn who(reply: &str) -> (String, String) {
    let (tag, rest) = reply.split_once('@').unwrap_or_else(|| panic!("no peer in {reply:?}"));
    let peer = rest.rsplit_once(':').map_or(rest, |(p, _)| p);
    (tag.to_string(), peer.to_string())
}

fn nodes_yaml(vpc: &Vpc) -> String {
    (0..2)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nstatus:\n  addresses:\n  \
                 - {{type: InternalIP, address: \"{}\"}}\n  - {{type: InternalIP, address: \"{}\"}}\n",
                vpc.node_name(i),
                node_ip(i),
                node6(i)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A dual-stack Service's EndpointSlices: `endpoints` are (IPv4, IPv6,
/// node name) of pods listening on 8080 (TCP and UDP), ready but for the
/// one `terminating` names (its pod being deleted: serving, not ready).
fn slices(name: &str, ports: &[(&str, &str)], endpoints: &[(&str, &str, &str)], terminating: Option<usize>) -> String {
    let mut out = String::new();
    for (family, i) in [("IPv4", 0), ("IPv6", 1)] {
        let ports: Vec<String> = ports
            .iter()
            .map(|(n, proto)| format!("{{name: {n}, port: 8080, protocol: {proto}}}"))
            .collect();
        out += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{}\n  namespace: test\n  \
             labels: {{kubernetes.io/service-name: {name}}}\naddressType: {family}\nports: [{}]\nendpoints:\n",
            family.to_lowercase(),
            ports.join(", ")
        );
        for (n, e) in endpoints.iter().enumerate() {
            let a = if i == 0 { e.0 } else { e.1 };
            let conditions = if terminating == Some(n) {
                "{ready: false, serving: true, terminating: true}"
            } else {
                "{ready: true}"
            };
            out += &format!(
                "- {{addresses: [\"{a}\"], nodeName: {}, conditions: {conditions}}}\n",
                e.2
            );
        }
    }
    out
}

/// The Services: `web` (eTP Cluster: NodePorts 30080/tcp and 30053/udp, a
/// load-balancer IP, an external IP), `local` (eTP Local, NodePort 30081,
/// health check node port), `ranged` (a load-balancer IP admitting only
/// CLIENT). `local_endpoints` are the endpoints `local` has; `terminating`
/// names an endpoint of `web` whose pod is being deleted.
fn services_yaml(
    vpc: &Vpc,
    eps: &[(&str, &str, &str)],
    local_endpoints: &[(&str, &str, &str)],
    terminating: Option<usize>,
) -> String {
    let dual = "ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack";
    let mut out = nodes_yaml(vpc);
    out += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: test}}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: 10.96.9.1\n  clusterIPs: [10.96.9.1, \"fd00:96::9:1\"]\n  {dual}\n  externalIPs: [\"{EXTERNAL_IP}\"]\n  \
         externalTrafficPolicy: Cluster\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}}\n  \
         - {{name: dns, port: 53, targetPort: 8080, nodePort: 30053, protocol: UDP}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: \"{LB_IP}\"}}]}}}}\n"
    );
    out += &slices("web", &[("http", "TCP"), ("dns", "UDP")], eps, terminating);
    out += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: local, namespace: test}}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: 10.96.9.2\n  clusterIPs: [10.96.9.2, \"fd00:96::9:2\"]\n  {dual}\n  externalTrafficPolicy: Local\n  \
         healthCheckNodePort: {HEALTH_PORT}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: 30081, protocol: TCP}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: \"{LOCAL_LB_IP}\"}}]}}}}\n"
    );
    out += &slices("local", &[("http", "TCP")], local_endpoints, None);
    out += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: ranged, namespace: test}}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: 10.96.9.3\n  externalTrafficPolicy: Cluster\n  loadBalancerSourceRanges: [\"{CLIENT}/32\"]\n  \
         ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: 30082, protocol: TCP}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: \"{RANGED_LB_IP}\"}}]}}}}\n"
    );
    out += &slices("ranged", &[("http", "TCP")], eps, None);
    // No endpoint: refused from outside as from a pod (kube-proxy's REJECT).
    out += "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: test}\nspec:\n  type: NodePort\n  \
            clusterIP: 10.96.9.4\n  ports:\n  - {name: http, port: 80, targetPort: 8080, nodePort: 30090, protocol: TCP}\n";
    out
}

/// GET /healthz from `ns` to `to`: (status code, body).
fn http_get(ns: &Netns, to: SocketAddr) -> (u16, String) {
    ns.run(|| sluice_integration::agent::http_get(to, "/healthz"))
        .unwrap()
        .expect("an HTTP answer")
}

/// `sluicectl -o json <what> list` on node `node`, in its namespace.
fn sluicectl(vpc: &Vpc, node: usize, what: &str) -> Vec<Value> {
    vpc.sluicectl(node, &[what, "list"]).as_array().unwrap().clone()
}

#[test]
fn outside_clients_reach_nodeports_and_load_balancers() {
    if !require_root("outside_clients_reach_nodeports_and_load_balancers") {
        return;
    }
    let mut vpc = Vpc::new("ns", 2).unwrap();
    for a in [&format!("{VPC_GATEWAY6}/64"), "fd00:31::1/64"] {
        vpc.fabric.ip(&["-6", "addr", "add", a, "dev", "br0", "nodad"]).unwrap();
    }
    let fwd = vpc
        .fabric
        .exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    assert!(fwd.status.success());
    for node in 0..2 {
        let n = &vpc.nodes[node];
        n.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", node6(node)),
            "dev",
            "eth0",
            "nodad",
        ])
        .unwrap();
        n.ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])
            .unwrap();
        n.ip(&["-6", "route", "add", "default", "via", "fd00:31::1", "dev", "eth0"])
            .unwrap();
    }
    // Backends: pod a on node 0, pod b on node 1, each telling who it saw.
    let mut pods = Vec::new();
    for (node, name) in [(0, "a"), (1, "b")] {
        let p = vpc.pod(name).unwrap();
        let r = vpc
            .sluice(node, "ADD", name, p, &vpc.dual_stack_conf(node))
            .expect_ok("ADD")
            .json();
        pods.push((p, result_addr(&r, 0), result_addr(&r, 1)));
    }
    let _servers: Vec<EchoServer> = [(pods[0].0, "a"), (pods[1].0, "b")]
        .iter()
        .map(|(p, tag)| EchoServer::start_telling_peer(&vpc.pods[*p], 8080, tag).unwrap())
        .collect();
    let c1 = vpc.external_host("c1", &format!("{CLIENT}/16")).unwrap();
    let c2 = vpc.external_host("c2", &format!("{OTHER_CLIENT}/16")).unwrap();
    vpc.pods[c1]
        .ip(&["-6", "addr", "add", &format!("{CLIENT6}/64"), "dev", "eth0", "nodad"])
        .unwrap();
    // The cloud's load balancer, in short: its addresses lead to node 0.
    for c in [c1, c2] {
        for a in [LB_IP, LOCAL_LB_IP, RANGED_LB_IP, EXTERNAL_IP] {
            vpc.pods[c].ip(&["route", "add", a, "via", &node_ip(0)]).unwrap();
        }
    }
    let (a4, a6, b4, b6) = (&pods[0].1, &pods[0].2, &pods[1].1, &pods[1].2);
    let (n0, n1) = (vpc.node_name(0), vpc.node_name(1));
    let eps = [
        (a4.as_str(), a6.as_str(), n0.as_str()),
        (b4.as_str(), b6.as_str(), n1.as_str()),
    ];
    let svcs = Services::new(&vpc).unwrap();
    svcs.write_manifest("cluster", &services_yaml(&vpc, &eps, &eps, None))
        .unwrap();
    svcs.sync_node(&vpc, 1, &[]).unwrap();
    let log = vpc.data_dir.join("agent-n0.log");
    let cni_data = vpc.data_dir.join("n0").display().to_string();
    let mut agent = AgentProcess::start_in(
        &vpc.nodes[0].path(),
        svcs.dir(),
        &vpc.bpffs[0].root(),
        &n0,
        &log,
        &[
            "--uplink",
            "eth0",
            "--node-ip",
            &node_ip(0),
            "--cni-data-dir",
            &cni_data,
        ],
    )
    .unwrap();
    agent.wait_synced(1, Duration::from_secs(20)).unwrap();
    let (client, other) = (&vpc.pods[c1], &vpc.pods[c2]);

    // eTP Cluster, NodePort on node 0, TCP and UDP, IPv4 and IPv6: both
    // backends; node 0's sees the client, node 1's sees node 0.
    let expect = |family: &str| -> BTreeSet<(String, String)> {
        if family == "v4" {
            BTreeSet::from([("a".into(), CLIENT.into()), ("b".into(), node_ip(0))])
        } else {
            BTreeSet::from([("a".into(), CLIENT6.into()), ("b".into(), node6(0))])
        }
    };
    for (family, node_addr) in [("v4", node_ip(0)), ("v6", node6(0))] {
        let mut tcp = BTreeSet::new();
        let mut udp = BTreeSet::new();
        for i in 0..24 {
            let r = tcp_request(client, sa(&node_addr, 30080), &format!("t{i}")).unwrap_or_else(|e| {
                panic!(
                    "NodePort {family} TCP: {e:#}\n{}",
                    std::fs::read_to_string(&log).unwrap()
                )
            });
            tcp.insert(who(&r));
            let r = udp_request(client, sa(&node_addr, 30053), &format!("u{i}")).unwrap();
            udp.insert(who(&r));
        }
        assert_eq!(
            tcp,
            expect(family),
            "NodePort {family} TCP: backends and the sources they saw"
        );
        assert_eq!(
            udp,
            expect(family),
            "NodePort {family} UDP: backends and the sources they saw"
        );
    }

    // The load-balancer IP and the external IP (eTP Cluster).
    for front in [LB_IP, EXTERNAL_IP] {
        let mut seen = BTreeSet::new();
        for i in 0..16 {
            seen.insert(who(&tcp_request(client, sa(front, 80), &format!("l{i}")).unwrap()).0);
        }
        assert_eq!(seen, BTreeSet::from(["a".into(), "b".into()]), "{front}:80");
    }

    // eTP Local: node 0's backend only, seeing the client itself.
    for front in [sa(&node_ip(0), 30081), sa(LOCAL_LB_IP, 80)] {
        for i in 0..8 {
            let r = tcp_request(client, front, &format!("x{i}")).unwrap();
            assert_eq!(who(&r), ("a".into(), CLIENT.into()), "eTP Local {front}");
        }
    }
    // A client reusing its port toward another frontend of the same backend
    // (the NodePort, then the load-balancer IP; the kernel's port choice
    // does it by chance): the backend sees the same 4-tuple as before, still
    // in TIME_WAIT there, and the new connection opens at once (PAWS may
    // refuse the first SYN; the client's reset clears it). The ports are
    // below the kernel's ephemeral range: none of the client's own choosing.
    for port in 21000..21004 {
        let r = tcp_request_from_port(client, port, sa(&node_ip(0), 30081), "np", Duration::from_secs(2)).unwrap();
        assert_eq!(who(&r), ("a".into(), CLIENT.into()), "NodePort from port {port}");
        let r = tcp_request_from_port(client, port, sa(LOCAL_LB_IP, 80), "lb", Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("the load-balancer IP from port {port}, just used toward the NodePort: {e:#}"));
        assert_eq!(
            who(&r),
            ("a".into(), CLIENT.into()),
            "load-balancer IP from port {port}"
        );
    }
    // Two live connections from one client port to two frontends of that
    // backend (two clients behind one NAT can look like this): the second
    // cannot have the first's 4-tuple at the backend, so it comes from
    // another port of the client's address, and both are answered. The
    // echo server takes one connection at a time: the second's handshake
    // completes while the first is still open, then each is served.
    for port in 21010..21012 {
        let first = tcp_connect_from_port(client, port, sa(&node_ip(0), 30081), Duration::from_secs(2)).unwrap();
        let second = tcp_connect_from_port(client, port, sa(LOCAL_LB_IP, 80), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("a second connection from port {port}, the first still open: {e:#}"));
        let r = exchange(first, sa(&node_ip(0), 30081), "first").unwrap();
        assert_eq!(
            who(&r),
            ("a".into(), CLIENT.into()),
            "the first connection from port {port}"
        );
        let r = exchange(second, sa(LOCAL_LB_IP, 80), "second").unwrap();
        assert_eq!(
            who(&r),
            ("a".into(), CLIENT.into()),
            "the second connection from port {port}"
        );
    }
    let (code, body) = http_get(client, sa(&node_ip(0), HEALTH_PORT));
    assert_eq!(code, 200, "health check with a local endpoint: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 1, "{body}");
    assert_eq!(v["service"]["name"], "local", "{body}");

    // sluicectl shows the connections from outside and the uplink.
    let nat = sluicectl(&vpc, 0, "nat");
    assert!(
        nat.iter().any(|r| r["path"] == "snat" && r["direction"] == "reply")
            && nat.iter().any(|r| r["path"] == "local" && r["direction"] == "client"),
        "sluicectl nat list: {nat:?}"
    );
    // Every TCP connection completed its handshake: the client answered,
    // and its entries moved to the established table.
    let tcp: Vec<&Value> = nat.iter().filter(|r| r["proto"] == "tcp").collect();
    assert!(
        !tcp.is_empty() && tcp.iter().all(|r| r["answered"] == true),
        "TCP connections from outside, answered: {tcp:?}"
    );
    let up = sluicectl(&vpc, 0, "uplink");
    assert_eq!(
        (up.len(), &up[0]["name"], &up[0]["snatIpv4"]),
        (1, &Value::from("eth0"), &Value::from(node_ip(0)))
    );

    // Source ranges: CLIENT is listed, OTHER_CLIENT is not.
    let dropped = vpc.counted(0, "drop-source-range").unwrap();
    assert!(
        tcp_request(client, sa(RANGED_LB_IP, 80), "in").is_ok(),
        "a listed client"
    );
    assert!(
        tcp_request(other, sa(RANGED_LB_IP, 80), "out").is_err(),
        "an unlisted client"
    );
    assert!(
        vpc.counted(0, "drop-source-range").unwrap() > dropped,
        "the refusal is counted"
    );
    // ... which reaches the other Service's NodePorts (no range there).
    assert!(tcp_request(other, sa(&node_ip(0), 30080), "np").is_ok());
    // A pod calling the load-balancer IP is held to its ranges too
    // (kube-proxy's rules hold in-cluster clients to them): pod a is not
    // listed; the unranged load-balancer IP it reaches.
    let pod_a = &vpc.pods[pods[0].0];
    let dropped = vpc.counted(0, "drop-source-range").unwrap();
    assert!(
        tcp_request(pod_a, sa(RANGED_LB_IP, 80), "pod").is_err(),
        "a pod outside the source ranges"
    );
    assert!(
        vpc.counted(0, "drop-source-range").unwrap() > dropped,
        "the pod's refusal is counted"
    );
    assert!(
        tcp_request(pod_a, sa(LB_IP, 80), "pod").is_ok(),
        "a load-balancer IP without ranges"
    );

    // Ingress policy at the backend judges the real client (eTP Local): a
    // policy admitting CLIENT only lets it in, and not the other host.
    let policy = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: test, labels: {{kubernetes.io/metadata.name: test}}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: test, labels: {{app: a}}}}\n\
         spec: {{containers: [{{name: main, image: x}}]}}\n\
         status: {{podIP: \"{a4}\", podIPs: [{{ip: \"{a4}\"}}, {{ip: \"{a6}\"}}]}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: from-client, namespace: test}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress:\n  \
         - from: [{{ipBlock: {{cidr: \"{CLIENT}/32\"}}}}, {{ipBlock: {{cidr: \"{CLIENT6}/128\"}}}}]\n"
    );
    svcs.write_manifest("policy", &policy).unwrap();
    let np_local = sa(&node_ip(0), 30081);
    let mut denied = false;
    for _ in 0..40 {
        if tcp_request(other, np_local, "deny").is_err() {
            denied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(denied, "the policy keeps the unlisted client out");
    let r = tcp_request(client, np_local, "allowed").unwrap();
    assert_eq!(who(&r), ("a".into(), CLIENT.into()), "the listed client, as itself");
    std::fs::remove_file(svcs.dir().join("policy.yaml")).unwrap();

    // A NodePort without endpoints refuses at once (a reset out of the
    // uplink), rather than leaving the client to time out.
    let started = std::time::Instant::now();
    let to = sa(&node_ip(0), 30090);
    let refused = client
        .run(|| std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).map(|_| ()))
        .unwrap();
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "a NodePort without endpoints"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once: {:?}",
        started.elapsed()
    );

    path_mtu_errors_reach_the_backends(&vpc, client);
    large_datagrams_cross_the_nodeport(client);
    datagrams_leave_a_terminating_backend(&vpc, &svcs, client, &eps);

    // The last local endpoint goes: 503, and the NodePort drops (and `web`'s
    // endpoints are both ready again).
    svcs.write_manifest("cluster", &services_yaml(&vpc, &eps, &eps[1..], None))
        .unwrap();
    // (A file write may wake the agent more than once: wait for the answer.)
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let (mut code, mut body) = http_get(client, sa(&node_ip(0), HEALTH_PORT));
    while code != 503 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        (code, body) = http_get(client, sa(&node_ip(0), HEALTH_PORT));
    }
    assert_eq!(code, 503, "health check without a local endpoint: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["localEndpoints"], 0);
    assert!(
        tcp_request(client, sa(&node_ip(0), 30081), "gone").is_err(),
        "eTP Local without a local endpoint"
    );

    chained_backend(&mut vpc, c1, &svcs);
    host_ports(&mut vpc, c1, &svcs);
    one_port_three_pods(&mut vpc, c1, &svcs);

    // None of it went through netfilter.
    assert_eq!(vpc.netfilter().unwrap(), Vec::<String>::new());

    // `sluice-install --uninstall` takes the programs off the uplink: the
    // NodePort is an unserved port again.
    drop(agent);
    let conf_dir = tempfile::tempdir().unwrap();
    let out = vpc.nodes[0]
        .exec(
            &bin_dir().join("sluice-install").display().to_string(),
            &[
                "--uninstall",
                "--cni-conf-dir",
                &conf_dir.path().display().to_string(),
                "--bpffs",
                &vpc.bpffs[0].root().display().to_string(),
            ],
        )
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && log.contains("detached the uplink programs from eth0"),
        "{log}"
    );
    let left = programs_on(&vpc.nodes[0], "eth0").unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut left = (left.egress.len(), left.ingress.len());
    while left != (0, 0) && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        let p = programs_on(&vpc.nodes[0], "eth0").unwrap();
        left = (p.egress.len(), p.ingress.len());
    }
    assert_eq!(left, (0, 0), "programs left on the uplink after uninstall");
    assert!(tcp_request(&vpc.pods[c1], sa(&node_ip(0), 30080), "after").is_err());
}

/// A datagram larger than the path's MTU to the UDP NodePort: the client
/// sends it in fragments, the later ones follow their first through the
/// uplink to either backend (the local pod, and the one on node 1 behind
/// SNAT), and the answer, as large, comes back in fragments the same way;
/// IPv4 and IPv6.
/// A node no pod has started on yet (only hostNetwork pods, or its first
/// pod still being scheduled) serves its NodePorts all the same: its agent,
/// given the node's network configuration, loads the programs the first
/// ADD would have, and attaches its uplink. Here node 0 has no pod at all
/// and its NodePort's backend is on node 1 (SNAT).
#[test]
fn a_node_without_pods_serves_its_nodeports() {
    if !require_root("a_node_without_pods_serves_its_nodeports") {
        return;
    }
    let mut vpc = Vpc::new("np", 2).unwrap();
    for node in 0..2 {
        vpc.nodes[node]
            .ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])
            .unwrap();
    }
    let b = vpc.pod("b").unwrap();
    let r = vpc
        .sluice(1, "ADD", "b", b, &vpc.main_conf(1, "1.1.0"))
        .expect_ok("ADD")
        .json();
    let b4 = result_addr(&r, 0);
    let _server = EchoServer::start_telling_peer(&vpc.pods[b], 8080, "b").unwrap();
    let c1 = vpc.external_host("c1", &format!("{CLIENT}/16")).unwrap();
    let n1 = vpc.node_name(1);
    let svcs = Services::new(&vpc).unwrap();
    svcs.write_manifest(
        "web",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: test}}\nspec:\n  type: NodePort\n  \
             clusterIP: 10.96.9.1\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: test\n  \
             labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
             endpoints:\n- {{addresses: [\"{b4}\"], nodeName: {n1}, conditions: {{ready: true}}}}\n"
        ),
    )
    .unwrap();
    // The node's network configuration, as the installer writes it.
    let conflist = vpc.data_dir.join("00-sluice.conflist");
    let conf = vpc.main_conf(0, "1.1.0");
    let list = serde_json::json!({"cniVersion": "1.1.0", "name": conf["name"], "plugins": [conf]});
    std::fs::write(&conflist, list.to_string()).unwrap();
    assert!(
        !vpc.datapath_dir(0).exists(),
        "nothing loaded on node 0 before its agent"
    );
    let log = vpc.data_dir.join("agent-n0.log");
    let conflist = conflist.display().to_string();
    let mut agent = AgentProcess::start_in(
        &vpc.nodes[0].path(),
        svcs.dir(),
        &vpc.bpffs[0].root(),
        &vpc.node_name(0),
        &log,
        &["--uplink", "eth0", "--node-ip", &node_ip(0), "--cni-conf", &conflist],
    )
    .unwrap();
    agent
        .wait_synced(1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", std::fs::read_to_string(&log).unwrap()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("loaded from the network configuration"), "{text}");
    for i in 0..8 {
        let r = tcp_request(&vpc.pods[c1], sa(&node_ip(0), 30080), &format!("t{i}"))
            .unwrap_or_else(|e| panic!("NodePort of a node without pods: {e:#}\n{text}"));
        assert_eq!(
            who(&r),
            ("b".to_string(), node_ip(0)),
            "node 1's backend, SNATed to node 0"
        );
    }
    let on = programs_on(&vpc.nodes[0], "eth0").unwrap();
    assert!(!on.egress.is_empty() && !on.ingress.is_empty(), "the uplink's programs");
    drop(agent);
    vpc.sluice(1, "DEL", "b", b, &vpc.main_conf(1, "1.1.0"))
        .expect_ok("DEL");
}

fn large_datagrams_cross_the_nodeport(client: &Netns) {
    let payload: String = (0..4000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    for (family, node_addr) in [("v4", node_ip(0)), ("v6", node6(0))] {
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let reply = udp_large_request(client, sa(&node_addr, 30053), payload.as_bytes())
                .unwrap_or_else(|e| panic!("{family}: a 4000-byte datagram to the NodePort: {e:#}"));
            let (tag, rest) = reply.split_once('@').unwrap_or_else(|| panic!("{family}: {reply:.80}"));
            assert!(
                rest.ends_with(&format!(":{payload}")),
                "{family}: the whole datagram, both ways (from {tag}, {} bytes)",
                reply.len()
            );
            seen.insert(tag.to_string());
            if seen.len() == 2 {
                break;
            }
        }
        assert_eq!(
            seen,
            BTreeSet::from(["a".into(), "b".into()]),
            "{family}: both backends"
        );
    }
}

/// Path MTU discovery through a NodePort: a router on the way back to the
/// client sends "fragmentation needed" to the frontend (this node's
/// address) about a reply; the backend's own kernel must learn the MTU,
/// or a client behind a smaller MTU never gets a full-sized answer. For
/// each backend of the UDP NodePort (the pod on node 0, and the one on
/// node 1 behind SNAT), one client port's flow, then the error, sent from
/// the fabric: the backend's namespace then holds the MTU for the peer it
/// sent to.
fn path_mtu_errors_reach_the_backends(vpc: &Vpc, client: &Netns) {
    use std::net::{Ipv4Addr, UdpSocket};
    let to = sa(&node_ip(0), 30053);
    let mut flows: std::collections::BTreeMap<String, (UdpSocket, u16)> = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let sock = client.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        sock.send_to(b"m", to).unwrap();
        let mut buf = [0u8; 512];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let tag = who(&String::from_utf8_lossy(&buf[..n])).0;
            let port = sock.local_addr().unwrap().port();
            flows.entry(tag).or_insert((sock, port));
        }
        if flows.len() == 2 {
            break;
        }
    }
    assert_eq!(flows.len(), 2, "both backends answer the UDP NodePort");
    let node0: Ipv4Addr = node_ip(0).parse().unwrap();
    let client_ip: Ipv4Addr = CLIENT.parse().unwrap();
    let pod_ns = |tag: &str| {
        vpc.pods
            .iter()
            .find(|p| p.name == format!("{}-{tag}", vpc.prefix))
            .unwrap_or_else(|| panic!("pod {tag}"))
    };
    for (tag, peer) in [("a", CLIENT.to_string()), ("b", node_ip(0))] {
        let ns = pod_ns(tag);
        let cached = |ns: &Netns| ns.ip(&["-4", "route", "get", &peer]).unwrap();
        assert!(
            !cached(ns).contains("mtu"),
            "{tag}: no MTU known before: {}",
            cached(ns)
        );
        let port = flows[tag].1;
        // The quote: the reply as it left toward the client, 1,500 bytes.
        let mut quote = vec![0x45, 0, 0x05, 0xdc, 0, 0, 0x40, 0, 63, 17, 0, 0];
        quote.extend_from_slice(&node0.octets());
        quote.extend_from_slice(&client_ip.octets());
        let c = sluice_tc_datapath::checksum::of(&quote, 0);
        quote[10..12].copy_from_slice(&c.to_be_bytes());
        quote.extend_from_slice(&30053u16.to_be_bytes());
        quote.extend_from_slice(&port.to_be_bytes());
        quote.extend_from_slice(&[0x05, 0xc8, 0, 0]);
        let mut msg = vec![3, 4, 0, 0, 0, 0, 0x05, 0x00];
        msg.extend_from_slice(&quote);
        let c = sluice_tc_datapath::checksum::of(&msg, 0);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        vpc.fabric
            .run(|| {
                use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn};
                let fd = nix::sys::socket::socket(
                    AddressFamily::Inet,
                    SockType::Raw,
                    SockFlag::empty(),
                    SockProtocol::Icmp,
                )
                .expect("a raw ICMP socket");
                let dst = SockaddrIn::from(std::net::SocketAddrV4::new(node0, 0));
                nix::sys::socket::sendto(std::os::fd::AsRawFd::as_raw_fd(&fd), &msg, &dst, MsgFlags::empty())
                    .expect("sending the ICMP error");
            })
            .unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while !cached(ns).contains("mtu 1280") && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            cached(ns).contains("mtu 1280"),
            "{tag} learned no MTU toward {peer}: {}",
            cached(ns)
        );
    }
    drop(flows);
}

/// A datagram flow from outside follows its backend only while that takes
/// new flows, as a pod's does and as kube-proxy flushes a UDP conntrack
/// entry once its endpoint stops being ready: one client port keeps
/// sending to the UDP NodePort, its backend's pod starts terminating, and
/// the next datagram of the same flow reaches the other backend. (The
/// upstream e2e case: "Conntrack should be able to preserve UDP traffic
/// when server pod cycles for a NodePort service".)
fn datagrams_leave_a_terminating_backend(vpc: &Vpc, svcs: &Services, client: &Netns, eps: &[(&str, &str, &str)]) {
    let to = sa(&node_ip(0), 30053);
    // Bound in the client's namespace, used from here: a socket keeps the
    // namespace it was made in.
    let sock = client.run(|| std::net::UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let ask = |msg: &str| -> Option<String> {
        sock.send_to(msg.as_bytes(), to).unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        Some(who(&String::from_utf8_lossy(&buf[..n])).0)
    };
    let first = (0..5)
        .find_map(|i| ask(&format!("f{i}")))
        .expect("a UDP answer from the NodePort");
    for i in 0..5 {
        assert_eq!(
            ask(&format!("s{i}")).as_deref(),
            Some(first.as_str()),
            "one flow, one backend"
        );
    }
    let x = usize::from(first == "b");
    svcs.write_manifest("cluster", &services_yaml(vpc, eps, eps, Some(x)))
        .unwrap();
    let other = if x == 0 { "b" } else { "a" };
    let until = std::time::Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while std::time::Instant::now() < until {
        last = ask("t");
        if last.as_deref() == Some(other) {
            break;
        }
    }
    assert_eq!(
        last.as_deref(),
        Some(other),
        "the same client port's datagrams after backend {first} turned terminating; backends: {}",
        vpc.sluicectl(0, &["backend", "list"])
    );
    for i in 0..5 {
        assert_eq!(ask(&format!("o{i}")).as_deref(), Some(other), "and they stay there");
    }
}

/// A pod of the chained role (Debian's macvlan + host-local first) as an
/// eTP Local NodePort's backend: handed the client's connection through
/// the parent its interface names (IFLA_LINK), it sees the client.
fn chained_backend(vpc: &mut Vpc, c1: usize, svcs: &Services) {
    if !sluice_integration::require_reference_plugins("chained backend from outside") {
        return;
    }
    let mut list = vpc.chained_conflist(0, "1.0.0");
    // Off sluice-ipam's share of the range on this node.
    list["plugins"][0]["ipam"]["ranges"][0][0]["rangeStart"] = Value::from("10.244.1.200");
    let mut chain = sluice_integration::chain::Chain::new(list, Some(vpc.node_name(0)));
    let p = vpc.pod("ch").unwrap();
    let netns = vpc.pods[p].path().display().to_string();
    let r = chain
        .add("ch", &netns, "eth0")
        .unwrap_or_else(|e| panic!("chained ADD: {e:?}"));
    let ip = result_addr(&r, 0);
    let _server = EchoServer::start_telling_peer(&vpc.pods[p], 8080, "ch").unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: chained, namespace: test}}\nspec:\n  type: NodePort\n  \
         clusterIP: 10.96.9.5\n  externalTrafficPolicy: Local\n  \
         ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: 30083, protocol: TCP}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: chained-1, namespace: test, \
         labels: {{kubernetes.io/service-name: chained}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints:\n- {{addresses: [\"{ip}\"], nodeName: {}, conditions: {{ready: true}}}}\n",
        vpc.node_name(0)
    );
    svcs.write_manifest("chained", &yaml).unwrap();
    // (The agent syncs on the file's events: wait for the answer.)
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut r = tcp_request(&vpc.pods[c1], sa(&node_ip(0), 30083), "chained");
    while r.is_err() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        r = tcp_request(&vpc.pods[c1], sa(&node_ip(0), 30083), "chained");
    }
    let r = r.unwrap();
    assert_eq!(who(&r), ("ch".into(), CLIENT.into()), "a chained pod from outside");
    chain
        .del("ch", &netns, "eth0")
        .unwrap_or_else(|e| panic!("chained DEL: {e:?}"));
    std::fs::remove_file(svcs.dir().join("chained.yaml")).unwrap();
}

fn host_ports(vpc: &mut Vpc, c1: usize, svcs: &Services) {
    let with_ports = |vpc: &Vpc| {
        let mut conf = vpc.dual_stack_conf(0);
        conf["runtimeConfig"] = serde_json::json!({"portMappings": [
            {"hostPort": HOST_PORT, "containerPort": 8080, "protocol": "tcp"},
            {"hostPort": HOST_PORT, "containerPort": 8080, "protocol": "udp"},
        ]});
        conf
    };
    let h = vpc.pod("h").unwrap();
    let h2 = vpc.pod("h2").unwrap();
    let vpc = &*vpc;
    vpc.sluice(0, "ADD", "h", h, &with_ports(vpc))
        .expect_ok("ADD with portMappings");
    let _server = EchoServer::start_telling_peer(&vpc.pods[h], 8080, "h").unwrap();
    let listed = sluicectl(vpc, 0, "hostport");
    assert!(
        listed
            .iter()
            .any(|r| r["host"] == format!("{}:{HOST_PORT}", node_ip(0)) && r["proto"] == "udp"),
        "sluicectl hostport list: {listed:?}"
    );
    let client = &vpc.pods[c1];
    for (family, node_addr, me) in [
        ("v4", node_ip(0), CLIENT.to_string()),
        ("v6", node6(0), CLIENT6.to_string()),
    ] {
        let r = tcp_request(client, sa(&node_addr, HOST_PORT), "hp").unwrap();
        assert_eq!(
            who(&r),
            ("h".into(), me.clone()),
            "hostPort {family} TCP from the fabric"
        );
        let r = udp_request(client, sa(&node_addr, HOST_PORT), "hp").unwrap();
        assert_eq!(who(&r), ("h".into(), me), "hostPort {family} UDP from the fabric");
    }

    // From the node's own sockets, through the socket hooks.
    if cgroup2_root().is_some() {
        let cg = TestCgroup::new(&vpc.prefix).unwrap();
        let attach = [std::ffi::OsStr::new("--socket-lb-cgroup"), cg.path.as_os_str()];
        svcs.sync_node(vpc, 0, &attach).unwrap();
        let to = format!("{}:{HOST_PORT}", node_ip(0));
        let v = sock_client(&vpc.nodes[0], Some(&cg), &["tcp", &to, "n"]);
        assert!(
            v["reply"].as_str().is_some_and(|r| r.starts_with("h@")),
            "hostPort from the node: {v}"
        );
        assert_eq!(v["peer"], to, "the node's socket sees the hostPort as its peer: {v}");
        let v = sock_client(&vpc.nodes[0], Some(&cg), &["udp", &to, "n"]);
        assert_eq!(v["from"], to, "hostPort UDP from the node: {v}");
        // The node calling its own NodePort, at the socket too.
        let np = format!("{}:30080", node_ip(0));
        let v = sock_client(&vpc.nodes[0], Some(&cg), &["tcp", &np, "self"]);
        assert!(
            v["reply"]
                .as_str()
                .is_some_and(|r| r.starts_with("a@") || r.starts_with("b@")),
            "the node calling its own NodePort: {v}"
        );
        // The node's own sockets and loadBalancerSourceRanges: its
        // address is not listed, so it is refused (EPERM, at connect) as
        // kube-proxy's rules drop it; the unranged load-balancer IP answers.
        let ranged = format!("{RANGED_LB_IP}:80");
        let v = sock_client(&vpc.nodes[0], Some(&cg), &["tcp", &ranged, "self"]);
        assert_eq!(
            v["error"], "PermissionDenied",
            "the node outside the source ranges: {v}"
        );
        let v = sock_client(&vpc.nodes[0], Some(&cg), &["tcp", &format!("{LB_IP}:80"), "self"]);
        assert!(
            v["reply"].is_string(),
            "a load-balancer IP without ranges, from the node: {v}"
        );
    } else {
        sluice_integration::skip("hostPort from the node", "no cgroup v2 mount on this machine");
    }

    // Another pod may not have the port; its ADD leaves nothing behind.
    let out = vpc.sluice(0, "ADD", "h2", h2, &with_ports(vpc));
    assert_eq!(out.error_code(), 106, "a held hostPort is refused");
    assert!(
        vpc.endpoints(0).iter().all(|e| !e.contains("h2")),
        "no record of the refused pod"
    );
    assert_eq!(
        tcp_request(client, sa(&node_ip(0), HOST_PORT), "still")
            .map(|r| who(&r).0)
            .unwrap(),
        "h"
    );

    // DEL frees it.
    vpc.sluice(0, "DEL", "h", h, &with_ports(vpc)).expect_ok("DEL");
    assert!(
        tcp_request(client, sa(&node_ip(0), HOST_PORT), "gone").is_err(),
        "no hostPort after DEL"
    );
    vpc.sluice(0, "ADD", "h2", h2, &with_ports(vpc))
        .expect_ok("ADD once the port is free");
    vpc.sluice(0, "DEL", "h2", h2, &with_ports(vpc)).expect_ok("DEL");
}

/// Kubernetes conformance, "HostPort validates that there is no conflict
/// between pods with same hostPort but different hostIP and protocol": one
/// hostPort held by three pods at once, on 127.0.0.1 over TCP, on the
/// node's address over TCP and on the node's address over UDP, each
/// reached at its own (the first only from the node, as in the upstream
/// case, whose client is a hostNetwork pod).
fn one_port_three_pods(vpc: &mut Vpc, c1: usize, svcs: &Services) {
    let mapping = |vpc: &Vpc, host_ip: &str, proto: &str| {
        let mut conf = vpc.dual_stack_conf(0);
        conf["runtimeConfig"] = serde_json::json!({"portMappings": [
            {"hostPort": HOST_PORT, "containerPort": 8080, "protocol": proto, "hostIP": host_ip},
        ]});
        conf
    };
    let wants = [
        ("k1", "127.0.0.1".to_string(), "tcp"),
        ("k2", node_ip(0), "tcp"),
        ("k3", node_ip(0), "udp"),
    ];
    let pods: Vec<usize> = wants.iter().map(|(name, ..)| vpc.pod(name).unwrap()).collect();
    let vpc = &*vpc;
    let mut servers = Vec::new();
    for ((name, host_ip, proto), p) in wants.iter().zip(&pods) {
        vpc.sluice(0, "ADD", name, *p, &mapping(vpc, host_ip, proto))
            .expect_ok("ADD: the same hostPort on another hostIP or protocol");
        servers.push(EchoServer::start_telling_peer(&vpc.pods[*p], 8080, name).unwrap());
    }
    let client = &vpc.pods[c1];
    let from_fabric = tcp_request(client, sa(&node_ip(0), HOST_PORT), "c").map(|r| who(&r).0);
    assert_eq!(from_fabric.unwrap(), "k2", "TCP on the node's address, from the fabric");
    let from_fabric = udp_request(client, sa(&node_ip(0), HOST_PORT), "c").map(|r| who(&r).0);
    assert_eq!(from_fabric.unwrap(), "k3", "UDP on the node's address, from the fabric");
    if cgroup2_root().is_some() {
        let cg = TestCgroup::new(&vpc.prefix).unwrap();
        let attach = [std::ffi::OsStr::new("--socket-lb-cgroup"), cg.path.as_os_str()];
        svcs.sync_node(vpc, 0, &attach).unwrap();
        for (name, host_ip, proto) in &wants {
            let to = format!("{host_ip}:{HOST_PORT}");
            let v = sock_client(&vpc.nodes[0], Some(&cg), &[proto, &to, "n"]);
            assert!(
                v["reply"].as_str().is_some_and(|r| r.starts_with(&format!("{name}@"))),
                "{proto} to {to} from the node reaches {name}: {v}"
            );
        }
    } else {
        sluice_integration::skip(
            "hostPort on 127.0.0.1 from the node",
            "no cgroup v2 mount on this machine",
        );
    }
    drop(servers);
    for ((name, host_ip, proto), p) in wants.iter().zip(&pods) {
        vpc.sluice(0, "DEL", name, *p, &mapping(vpc, host_ip, proto))
            .expect_ok("DEL");
    }
}

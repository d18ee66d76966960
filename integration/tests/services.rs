//! Services end to end in the simulated VPC: two nodes, pods made by the
//! CNI main role and, separately, by the chained role behind the reference
//! macvlan; Services given to the node agent as manifests (its one writer
//! of Services) and written into each node's pinned maps; real TCP and UDP
//! through the VIPs; `sluicectl` shows what the maps hold. netfilter is shown to be out of
//! the path: no conntrack entry and no iptables/nftables rule anywhere,
//! before and after.

use serde_json::Value;
use sluice_integration::chain::Chain;
use sluice_integration::netns::Netns;
use sluice_integration::probe::{EchoServer, Session, StreamEcho, tcp_request, udp_large_request, udp_request};
use sluice_integration::services::{ServicePort, Services};
use sluice_integration::vpc::{VPC_ROUTER, Vpc, result_ip};
use sluice_integration::{bin_dir, require_reference_plugins, require_root};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Main,
    Chained,
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// `sluicectl --bpffs <node's root> args...`, which must succeed.
fn sluicectl(vpc: &Vpc, node: usize, args: &[&str]) -> String {
    let out = std::process::Command::new(bin_dir().join("sluicectl"))
        .arg("--bpffs")
        .arg(vpc.bpffs[node].root())
        .args(args)
        .output()
        .expect("run sluicectl");
    assert!(
        out.status.success(),
        "sluicectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// No conntrack entry and no firewall rule in any namespace of the VPC.
fn assert_netfilter_unused(vpc: &Vpc, when: &str) {
    let all: Vec<&Netns> = std::iter::once(&vpc.fabric)
        .chain(vpc.nodes.iter())
        .chain(vpc.pods.iter())
        .collect();
    for ns in all {
        let ct = ns.exec("conntrack", &["-L"]).unwrap();
        let listed = String::from_utf8_lossy(&ct.stdout);
        assert!(
            listed.trim().is_empty(),
            "{when}: conntrack entries in {}: {listed}",
            ns.name
        );
        let stderr = String::from_utf8_lossy(&ct.stderr);
        assert!(
            stderr.contains(" 0 flow entries"),
            "{when}: conntrack -L in {}: {stderr}",
            ns.name
        );
        let ipt = ns.exec("iptables-save", &[]).unwrap();
        let rules: Vec<String> = String::from_utf8_lossy(&ipt.stdout)
            .lines()
            .filter(|l| l.starts_with("-A"))
            .map(String::from)
            .collect();
        assert!(rules.is_empty(), "{when}: iptables rules in {}: {rules:?}", ns.name);
        let nft = ns.exec("nft", &["list", "ruleset"]).unwrap();
        assert!(nft.status.success(), "nft in {}", ns.name);
        assert!(
            String::from_utf8_lossy(&nft.stdout).trim().is_empty(),
            "{when}: nftables ruleset in {}",
            ns.name
        );
    }
}

struct Pods {
    chains: Vec<Chain>,
    role: Role,
}

impl Pods {
    fn new(vpc: &Vpc, role: Role) -> Pods {
        let chains = (0..vpc.nodes.len())
            .map(|n| Chain::new(vpc.chained_conflist(n, "1.0.0"), Some(vpc.node_name(n))))
            .collect();
        Pods { chains, role }
    }

    /// A pod on `node`: (index, address).
    fn add(&mut self, vpc: &mut Vpc, node: usize, name: &str) -> (usize, String) {
        let p = vpc.pod(name).unwrap();
        let r: Value = match self.role {
            Role::Main => vpc
                .sluice(node, "ADD", name, p, &vpc.main_conf(node, "1.1.0"))
                .expect_ok("ADD")
                .json(),
            Role::Chained => self.chains[node]
                .add(name, &vpc.pods[p].path().display().to_string(), "eth0")
                .unwrap_or_else(|e| panic!("chained ADD {name}: {e:?}")),
        };
        (p, result_ip(&r))
    }
}

/// Which backend answered ("b1:..." -> "b1").
fn who(reply: &str) -> String {
    reply.split(':').next().unwrap_or_default().to_string()
}

fn services_end_to_end(role: Role) {
    let mut vpc = Vpc::new(if role == Role::Main { "svm" } else { "svc" }, 2).unwrap();
    let mut pods = Pods::new(&vpc, role);
    let (c, _) = pods.add(&mut vpc, 0, "c");
    let (b1, ip1) = pods.add(&mut vpc, 0, "b1");
    let (b2, ip2) = pods.add(&mut vpc, 0, "b2");
    let (b3, ip3) = pods.add(&mut vpc, 1, "b3");
    let _servers: Vec<EchoServer> = [(b1, "b1"), (b2, "b2"), (b3, "b3")]
        .iter()
        .map(|(p, tag)| EchoServer::start(&vpc.pods[*p], 7000, tag).unwrap())
        .collect();
    let _streams: Vec<StreamEcho> = [(b1, "b1"), (b2, "b2"), (b3, "b3")]
        .iter()
        .map(|(p, tag)| StreamEcho::start(&vpc.pods[*p], 7100, tag).unwrap())
        .collect();
    assert_netfilter_unused(&vpc, "before");

    let svcs = Services::new(&vpc).unwrap();
    let put = |s: ServicePort| svcs.put(&vpc, &s).unwrap();
    let three = |port: u16| [sa(&ip1, port), sa(&ip2, port), sa(&ip3, port)];
    put(ServicePort::new("10.96.0.10:80/tcp", &three(7000)));
    put(ServicePort::new("10.96.0.10:53/udp", &three(7000)));
    put(ServicePort::new("10.96.0.12:80/tcp", &three(7100)));
    put(ServicePort::new("10.96.0.13:80/tcp", &three(7000)).affinity(60));

    // Service connections take the direct path: the DNATed frame is
    // addressed to the backend's own MAC (resolved in the client's
    // neighbour table), not to the VPC router. With the router's forwarding
    // off, every backend (on-link, on either node) is still reached.
    let forwarding = |on: &str| {
        let out = vpc
            .fabric
            .exec("sysctl", &["-qw", &format!("net.ipv4.ip_forward={on}")])
            .unwrap();
        assert!(out.status.success(), "sysctl in the fabric namespace");
    };
    forwarding("0");
    let mut direct: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..30 {
        let reply = tcp_request(&vpc.pods[c], sa("10.96.0.10", 80), &format!("d{i}"))
            .unwrap_or_else(|e| panic!("connection {i} to the VIP without the VPC router: {e}"));
        *direct.entry(who(&reply)).or_default() += 1;
    }
    assert_eq!(direct.len(), 3, "every backend reached directly: {direct:?}");
    forwarding("1");

    // 300 short connections reach every backend, each at least 15%.
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..300 {
        let reply = tcp_request(&vpc.pods[c], sa("10.96.0.10", 80), &format!("r{i}"))
            .unwrap_or_else(|e| panic!("connection {i} to the VIP: {e}"));
        assert!(reply.ends_with(&format!(":r{i}")), "{reply}");
        *hits.entry(who(&reply)).or_default() += 1;
    }
    assert_eq!(
        hits.keys().cloned().collect::<Vec<_>>(),
        vec!["b1", "b2", "b3"],
        "{hits:?}"
    );
    for (b, n) in &hits {
        assert!(*n >= 45, "backend {b} got {n} of 300 connections (< 15%): {hits:?}");
    }

    // UDP request/response through the VIP (backend on either node).
    for i in 0..10 {
        let reply = udp_request(&vpc.pods[c], sa("10.96.0.10", 53), &format!("u{i}")).unwrap();
        assert!(reply.starts_with('b') && reply.ends_with(&format!(":u{i}")), "{reply}");
    }

    // Hairpin: a backend reaching its own Service lands on itself.
    put(ServicePort::new("10.96.0.11:80/tcp", &[sa(&ip1, 7000)]));
    put(ServicePort::new("10.96.0.11:53/udp", &[sa(&ip1, 7000)]));
    assert_eq!(
        tcp_request(&vpc.pods[b1], sa("10.96.0.11", 80), "self").unwrap(),
        "b1:self"
    );
    assert_eq!(
        udp_request(&vpc.pods[b1], sa("10.96.0.11", 53), "self").unwrap(),
        "b1:self"
    );

    // One client port, two Services with their backend in common: the
    // pod's kernel may give a second connection the port of a first to
    // another destination, which would meet the first's 4-tuple at the
    // backend. While the first is live the second is refused at once
    // (counted), and the first carries on; once it closed, the port serves
    // the other Service.
    put(ServicePort::new("10.96.0.15:80/tcp", &[sa(&ip2, 7100)]));
    put(ServicePort::new("10.96.0.16:80/tcp", &[sa(&ip2, 7100)]));
    let clashes = vpc.counted(0, "drop-port-clash").unwrap();
    let (first_vip, second_vip) = (sa("10.96.0.15", 80), sa("10.96.0.16", 80));
    let mut first = Session::from_port(&vpc.pods[c], 23000, first_vip, Duration::from_secs(2)).unwrap();
    assert_eq!(first.ask("one").unwrap(), "b2:one");
    let second = Session::from_port(&vpc.pods[c], 23000, second_vip, Duration::from_secs(2));
    let refused = second
        .as_ref()
        .err()
        .and_then(|e| e.root_cause().downcast_ref::<nix::errno::Errno>())
        .copied();
    assert_eq!(
        refused,
        Some(nix::errno::Errno::ECONNREFUSED),
        "a second connection on the first's backend 4-tuple: {:?}",
        second.map(|_| ())
    );
    assert_eq!(first.ask("two").unwrap(), "b2:two", "the first connection carries on");
    assert_eq!(
        vpc.counted(0, "drop-port-clash").unwrap(),
        clashes + 1,
        "the refusal is counted"
    );
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let mut second = Session::from_port(&vpc.pods[c], 23000, second_vip, Duration::from_secs(2))
        .expect("the port, its first connection closed, serves the other Service");
    assert_eq!(second.ask("three").unwrap(), "b2:three");
    drop(second);
    for vip in ["10.96.0.15:80/tcp", "10.96.0.16:80/tcp"] {
        svcs.remove(&vpc, vip).unwrap();
    }

    // A closed backend port: the ICMP error is translated back to the VIP,
    // so the client's connected socket sees "connection refused".
    put(ServicePort::new("10.96.0.14:53/udp", &[sa(&ip2, 7999)]));
    let refused = vpc.pods[c]
        .run(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect("10.96.0.14:53").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send(b"anyone?").unwrap();
            s.recv(&mut [0u8; 64]).map(|_| ()).map_err(|e| e.kind())
        })
        .unwrap();
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));

    // A Service without backends that drops (`sluice.io/unreachable:
    // drop`) times the client's connect out; one that rejects (the
    // default, as kube-proxy) answers with port unreachable from the VIP
    // and the client is refused at once, and so is a port the VIP does not
    // serve.
    put(ServicePort::new("10.96.0.15:80/tcp", &[]).dropping());
    let connect = |port: u16| {
        vpc.pods[c]
            .run(|| {
                let t = std::time::Instant::now();
                let r = std::net::TcpStream::connect_timeout(&sa("10.96.0.15", port), Duration::from_secs(1));
                (r.map(|_| ()).map_err(|e| e.kind()), t.elapsed())
            })
            .unwrap()
    };
    assert_eq!(connect(80).0, Err(std::io::ErrorKind::TimedOut), "silent drop");
    put(ServicePort::new("10.96.0.15:80/tcp", &[]));
    for port in [80, 81] {
        let (r, took) = connect(port);
        assert_eq!(r, Err(std::io::ErrorKind::ConnectionRefused), "port {port} rejected");
        assert!(took < Duration::from_millis(500), "port {port}: refused after {took:?}");
    }

    // Affinity: every connection of one client goes to one backend.
    let pinned: Vec<String> = (0..20)
        .map(|i| who(&tcp_request(&vpc.pods[c], sa("10.96.0.13", 80), &format!("a{i}")).unwrap()))
        .collect();
    assert!(pinned.iter().all(|b| *b == pinned[0]), "affinity broken: {pinned:?}");

    // A backend leaving mid-stream: its established connection carries on,
    // new connections go elsewhere.
    let mut session = Session::open(&vpc.pods[c], sa("10.96.0.12", 80)).unwrap();
    let gone = who(&session.ask("one").unwrap());
    let ip_of = |b: &str| match b {
        "b1" => ip1.clone(),
        "b2" => ip2.clone(),
        _ => ip3.clone(),
    };
    let staying: Vec<SocketAddr> = ["b1", "b2", "b3"]
        .iter()
        .filter(|b| **b != gone)
        .map(|b| sa(&ip_of(b), 7100))
        .collect();
    put(ServicePort::new("10.96.0.12:80/tcp", &staying).terminating(sa(&ip_of(&gone), 7100)));
    let listed = sluicectl(&vpc, 0, &["backend", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&sa(&ip_of(&gone), 7100).to_string()) && l.contains("draining")),
        "{listed}"
    );
    for i in 0..30 {
        let reply = Session::open(&vpc.pods[c], sa("10.96.0.12", 80))
            .and_then(|mut s| s.ask(&format!("n{i}")))
            .unwrap();
        assert_ne!(who(&reply), gone, "a new connection reached the terminating backend");
    }
    assert_eq!(
        session.ask("two").unwrap(),
        format!("{gone}:two"),
        "established connection kept"
    );
    assert_eq!(session.ask("three").unwrap(), format!("{gone}:three"));
    // The connection's packets are addressed to the backend's own MAC,
    // learned from its replies (no neighbour lookup per packet).
    let local = session.local_addr().unwrap().to_string();
    let ct: Value = serde_json::from_str(&sluicectl(&vpc, 0, &["-o", "json", "ct", "list"])).unwrap();
    let entry = ct
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "service" && e["source"] == local.as_str() && e["destination"] == "10.96.0.12:80")
        .unwrap_or_else(|| panic!("no conntrack entry for {local}: {ct}"));
    let pod_of = |b: &str| match b {
        "b1" => b1,
        "b2" => b2,
        _ => b3,
    };
    let link = vpc.pods[pod_of(&gone)].ip(&["-br", "link", "show", "eth0"]).unwrap();
    let backend_mac = link.split_whitespace().nth(2).unwrap_or_default().to_string();
    assert_eq!(entry["nextHop"], backend_mac.as_str(), "{entry} vs {link}");
    drop(session);

    // The operator's view agrees with what happened.
    let ct: Value = serde_json::from_str(&sluicectl(&vpc, 0, &["-o", "json", "ct", "list"])).unwrap();
    assert!(ct.as_array().unwrap().len() >= 600, "two entries per connection");
    let metrics: Value = serde_json::from_str(&sluicectl(&vpc, 0, &["-o", "json", "metrics"])).unwrap();
    let count = |reason: &str| -> u64 {
        metrics
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["reason"] == reason)
            .map(|m| m["packets"].as_u64().unwrap())
            .sum()
    };
    assert!(count("service-translated") >= 300 && count("reply-translated") >= 300);
    assert!(count("hairpin") >= 2 && count("icmp-error-translated") >= 1);
    assert!(count("rejected") >= 2 && count("drop-no-backend") >= 2 && count("drop-unknown-port") >= 1);
    let listed: Value = serde_json::from_str(&sluicectl(&vpc, 1, &["-o", "json", "service", "list"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 8, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["vip"] == "10.96.0.15" && s["reject"] == true),
        "{listed}"
    );

    assert_netfilter_unused(&vpc, "after");

    // Removing a service: its VIP stops answering.
    svcs.remove(&vpc, "10.96.0.13:80/tcp").unwrap();
    assert!(tcp_request(&vpc.pods[c], sa("10.96.0.13", 80), "x").is_err());
}

#[test]
fn services_through_pods_of_the_main_role() {
    if require_root("services_through_pods_of_the_main_role") {
        services_end_to_end(Role::Main);
    }
}

#[test]
fn services_through_pods_of_the_chained_role() {
    if !require_root("services_through_pods_of_the_chained_role") {
        return;
    }
    if !require_reference_plugins("services_through_pods_of_the_chained_role") {
        return;
    }
    services_end_to_end(Role::Chained);
}

/// A dual-stack pod of the main role on `node`: (index, IPv6 address).
fn dual_stack_pod(vpc: &mut Vpc, node: usize, name: &str) -> (usize, String) {
    let mut conf = vpc.main_conf(node, "1.1.0");
    let mut ranges = vpc.ranges(node);
    ranges.as_array_mut().unwrap().push(serde_json::json!([{
        "subnet": "fd00:244::/64",
        "rangeStart": format!("fd00:244::{}:2", node + 1),
        "rangeEnd": format!("fd00:244::{}:ff", node + 1),
        "gateway": "fd00:244::1"
    }]));
    conf["ipam"]["ranges"] = ranges;
    conf["ipam"]["routes"] = serde_json::json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    let p = vpc.pod(name).unwrap();
    let r = vpc.sluice(node, "ADD", name, p, &conf).expect_ok("ADD").json();
    let v6 = r["ips"][1]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    (p, v6)
}

/// IPv6 Services: translated both ways, and what a Service cannot serve
/// is refused at once through a real socket: a connect within the call
/// (not after the SYN's retransmission a second later), a connected UDP
/// socket on its next receive.
#[test]
fn ipv6_services_translate_and_refuse_at_once() {
    if !require_root("ipv6_services_translate_and_refuse_at_once") {
        return;
    }
    let mut vpc = Vpc::new("sv6", 2).unwrap();
    vpc.fabric
        .ip(&["addr", "add", "fd00:244::1/64", "dev", "br0", "nodad"])
        .unwrap();
    let (c, _) = dual_stack_pod(&mut vpc, 0, "c");
    let (b, ip_b) = dual_stack_pod(&mut vpc, 1, "b");
    let _server = EchoServer::start(&vpc.pods[b], 7000, "b").unwrap();
    let svcs = Services::new(&vpc).unwrap();
    let backend: SocketAddr = format!("[{ip_b}]:7000").parse().unwrap();
    svcs.put(&vpc, &ServicePort::new("[fd00:96::a]:80/tcp", &[backend]))
        .unwrap();
    svcs.put(&vpc, &ServicePort::new("[fd00:96::a]:53/udp", &[backend]))
        .unwrap();
    svcs.put(&vpc, &ServicePort::new("[fd00:96::b]:80/tcp", &[])).unwrap();
    let to = |s: &str| -> SocketAddr { s.parse().unwrap() };
    assert_eq!(tcp_request(&vpc.pods[c], to("[fd00:96::a]:80"), "t6").unwrap(), "b:t6");
    assert_eq!(udp_request(&vpc.pods[c], to("[fd00:96::a]:53"), "u6").unwrap(), "b:u6");

    for (addr, what) in [
        ("[fd00:96::b]:80", "no endpoints"),
        ("[fd00:96::a]:81", "a port not served"),
    ] {
        for attempt in 0..5 {
            let (r, took) = vpc.pods[c]
                .run(|| {
                    let t = std::time::Instant::now();
                    let r = std::net::TcpStream::connect_timeout(&to(addr), Duration::from_secs(3));
                    (r.map(|_| ()).map_err(|e| e.kind()), t.elapsed())
                })
                .unwrap();
            assert_eq!(
                r,
                Err(std::io::ErrorKind::ConnectionRefused),
                "{what}, attempt {attempt}"
            );
            assert!(took < Duration::from_millis(200), "{what}: refused after {took:?}");
        }
    }
    let refused = vpc.pods[c]
        .run(|| {
            let s = std::net::UdpSocket::bind("[::]:0").unwrap();
            s.connect("[fd00:96::a]:54").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send(b"anyone?").unwrap();
            s.recv(&mut [0u8; 64]).map(|_| ()).map_err(|e| e.kind())
        })
        .unwrap();
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "UDP to a port not served"
    );
}

/// A backend whose readiness probe fails keeps its established TCP
/// connection (as kube-proxy, whose conntrack keeps it while the pod lives)
/// and gets no new ones; once it leaves the EndpointSlice (its pod is gone)
/// that connection is reset at its next segment, at once, instead of being
/// sent to another backend or left to time out. A connected UDP client
/// moves to a ready backend in both cases (kube-proxy's stale-UDP fix).
#[test]
fn a_backend_leaving_keeps_then_resets_its_connections() {
    if !require_root("a_backend_leaving_keeps_then_resets_its_connections") {
        return;
    }
    let mut vpc = Vpc::new("svl", 2).unwrap();
    let mut pods = Pods::new(&vpc, Role::Main);
    let (c, _) = pods.add(&mut vpc, 0, "c");
    let (b1, ip1) = pods.add(&mut vpc, 0, "b1");
    let (b2, ip2) = pods.add(&mut vpc, 1, "b2");
    let _streams: Vec<StreamEcho> = [(b1, "b1"), (b2, "b2")]
        .iter()
        .map(|(p, tag)| StreamEcho::start(&vpc.pods[*p], 7100, tag).unwrap())
        .collect();
    let _udp: Vec<EchoServer> = [(b1, "b1"), (b2, "b2")]
        .iter()
        .map(|(p, tag)| EchoServer::start(&vpc.pods[*p], 7000, tag).unwrap())
        .collect();
    let svcs = Services::new(&vpc).unwrap();
    let put = |s: ServicePort| svcs.put(&vpc, &s).unwrap();
    let ip_of = |b: &str| if b == "b1" { ip1.clone() } else { ip2.clone() };
    let other = |b: &str| if b == "b1" { "b2" } else { "b1" }.to_string();

    // TCP.
    put(ServicePort::new("10.96.0.20:80/tcp", &[sa(&ip1, 7100), sa(&ip2, 7100)]));
    let mut session = Session::open(&vpc.pods[c], sa("10.96.0.20", 80)).unwrap();
    let on = who(&session.ask("one").unwrap());
    let (stays, leaves) = (sa(&ip_of(&other(&on)), 7100), sa(&ip_of(&on), 7100));
    put(ServicePort::new("10.96.0.20:80/tcp", &[stays]).not_ready(leaves));
    for i in 0..3 {
        assert_eq!(
            session.ask(&format!("k{i}")).unwrap(),
            format!("{on}:k{i}"),
            "kept while not ready"
        );
    }
    for i in 0..20 {
        let reply = Session::open(&vpc.pods[c], sa("10.96.0.20", 80))
            .and_then(|mut s| s.ask(&format!("n{i}")))
            .unwrap();
        assert_eq!(
            who(&reply),
            other(&on),
            "a new connection reached a backend that is not ready"
        );
    }
    put(ServicePort::new("10.96.0.20:80/tcp", &[stays]));
    let t = std::time::Instant::now();
    let after = session.ask("gone?");
    let took = t.elapsed();
    let kind = after
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .map(|e| e.kind());
    assert_eq!(
        kind,
        Some(std::io::ErrorKind::ConnectionReset),
        "the connection of a backend that left: {after:?}"
    );
    assert!(took < Duration::from_millis(200), "reset after {took:?}");
    let reply = Session::open(&vpc.pods[c], sa("10.96.0.20", 80))
        .and_then(|mut s| s.ask("new"))
        .unwrap();
    assert_eq!(reply, format!("{}:new", other(&on)));

    // UDP: one connected socket keeps sending.
    let udp = |ns: &Netns| {
        ns.run(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect("10.96.0.21:53").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        })
        .unwrap()
    };
    let ask = |s: &std::net::UdpSocket, msg: &str| {
        s.send(msg.as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).unwrap_or_else(|e| panic!("UDP answer to {msg}: {e}"));
        who(&String::from_utf8_lossy(&buf[..n]))
    };
    let both = [sa(&ip1, 7000), sa(&ip2, 7000)];
    put(ServicePort::new("10.96.0.21:53/udp", &both));
    let s = udp(&vpc.pods[c]);
    let u = ask(&s, "u0");
    assert_eq!(ask(&s, "u1"), u, "a flow keeps its backend");
    let (ready, failing) = (sa(&ip_of(&other(&u)), 7000), sa(&ip_of(&u), 7000));
    put(ServicePort::new("10.96.0.21:53/udp", &[ready]).not_ready(failing));
    assert_eq!(ask(&s, "u2"), other(&u), "moved off a backend that is not ready");
    put(ServicePort::new("10.96.0.21:53/udp", &both));
    put(ServicePort::new("10.96.0.21:53/udp", &[failing]));
    assert_eq!(ask(&s, "u3"), u, "moved off a backend that left");
    let ct: Value = serde_json::from_str(&sluicectl(&vpc, 0, &["-o", "json", "ct", "list"])).unwrap();
    // The client's entries (its Service entry and its side of the flow)
    // name no backend that left; the backend pod's own entry of the flow,
    // on its node, is its own business.
    let gone = ready.to_string();
    assert!(
        !ct.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] != "in")
            .any(|e| e.to_string().contains(&gone)),
        "no client entry names the backend that left: {ct}"
    );
}

/// A datagram larger than the path MTU crosses a VIP in fragments both
/// ways (a large DNS answer over UDP): the later fragments follow the first
/// one's translation, in IPv4 and IPv6.
#[test]
fn fragmented_udp_crosses_a_vip_both_ways() {
    if !require_root("fragmented_udp_crosses_a_vip_both_ways") {
        return;
    }
    let mut vpc = Vpc::new("svf", 2).unwrap();
    vpc.fabric
        .ip(&["addr", "add", "fd00:244::1/64", "dev", "br0", "nodad"])
        .unwrap();
    let (c, _) = dual_stack_pod(&mut vpc, 0, "c");
    let (b, ip6) = dual_stack_pod(&mut vpc, 1, "b");
    let ip4 = vpc.pods[b].ip(&["-4", "-br", "addr", "show", "eth0"]).unwrap();
    let ip4 = ip4
        .split_whitespace()
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let _server = EchoServer::start(&vpc.pods[b], 7000, "b").unwrap();
    let svcs = Services::new(&vpc).unwrap();
    svcs.put(&vpc, &ServicePort::new("10.96.0.30:53/udp", &[sa(&ip4, 7000)]))
        .unwrap();
    let b6: SocketAddr = format!("[{ip6}]:7000").parse().unwrap();
    svcs.put(&vpc, &ServicePort::new("[fd00:96::30]:53/udp", &[b6]))
        .unwrap();
    let counter = |name: &str| -> u64 {
        let out = vpc.pods[c].exec("nstat", &["-az", name]).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for (vip, frags, reassembled) in [
        ("10.96.0.30:53", "IpFragCreates", "IpReasmOKs"),
        ("[fd00:96::30]:53", "Ip6FragCreates", "Ip6ReasmOKs"),
    ] {
        let (f0, r0) = (counter(frags), counter(reassembled));
        let payload: String = (0..4000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let reply = udp_large_request(&vpc.pods[c], vip.parse().unwrap(), payload.as_bytes())
            .unwrap_or_else(|e| panic!("4000-byte datagram through {vip}: {e:#}"));
        assert_eq!(reply, format!("b:{payload}"), "{vip}: the whole datagram, both ways");
        assert!(counter(frags) >= f0 + 3, "{vip}: the request left in fragments");
        assert!(counter(reassembled) > r0, "{vip}: the answer came in fragments");
    }
}

/// A Service whose endpoints are node addresses (hostNetwork pods; the
/// `kubernetes` Service, whose endpoints are the API servers' host
/// addresses): a pod reaches the one on its own node (through the host
/// path) and the one on the other node (through the VPC), over TCP and UDP.
#[test]
fn services_reach_endpoints_on_node_addresses() {
    if !require_root("services_reach_endpoints_on_node_addresses") {
        return;
    }
    let mut vpc = Vpc::new("svh", 2).unwrap();
    let mut pods = Pods::new(&vpc, Role::Main);
    let (c, _) = pods.add(&mut vpc, 0, "c");
    // Node 1's datapath is there once a pod is.
    pods.add(&mut vpc, 1, "d");
    let _servers: Vec<EchoServer> = (0..2)
        .map(|n| EchoServer::start(&vpc.nodes[n], 6443, &format!("node{n}")).unwrap())
        .collect();
    let svcs = Services::new(&vpc).unwrap();
    let nodes = [
        sa(&sluice_integration::vpc::node_ip(0), 6443),
        sa(&sluice_integration::vpc::node_ip(1), 6443),
    ];
    svcs.put(&vpc, &ServicePort::new("10.96.0.1:443/tcp", &nodes)).unwrap();
    svcs.put(&vpc, &ServicePort::new("10.96.0.1:53/udp", &nodes)).unwrap();
    // A node answers a pod of another node through the VPC router, as a
    // cloud node's default route does.
    for n in &vpc.nodes {
        n.ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])
            .unwrap();
    }
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..40 {
        let r = tcp_request(&vpc.pods[c], sa("10.96.0.1", 443), &format!("t{i}"))
            .unwrap_or_else(|e| panic!("connection {i} to a Service on node addresses: {e:#}"));
        *seen.entry(who(&r)).or_default() += 1;
        let r = udp_request(&vpc.pods[c], sa("10.96.0.1", 53), &format!("u{i}"))
            .unwrap_or_else(|e| panic!("datagram {i} to a Service on node addresses: {e:#}"));
        *seen.entry(format!("udp-{}", who(&r))).or_default() += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["node0", "node1", "udp-node0", "udp-node1"],
        "{seen:?}"
    );
    assert_netfilter_unused(&vpc, "after");
}

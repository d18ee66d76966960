//! Services from the host, at the socket: the agent attaches sluice's
//! cgroup hooks (connect, sendmsg, recvmsg, getpeername; IPv4 and IPv6) to
//! a cgroup v2 of this test's own, and a host-network client in it (in the
//! node's namespace) reaches a ClusterIP's backends, on its node and on
//! another, over TCP and UDP, connected or not, and reads the Service's
//! address as its peer and as the source of every reply; affinity and a
//! terminating backend as on the tc path. A Service with no
//! backend refuses the connect; a process outside the cgroup, or a socket
//! of another namespace inside it, is left alone, and pods keep their tc
//! path. Attaching again (an agent restart) keeps an open connection;
//! `sluice-install --uninstall` detaches them.
//!
//! Never the machine's own cgroups: only the processes this test puts in
//! its cgroup are ever translated.

use serde_json::Value;
use sluice_integration::cgroup::{TestCgroup, cgroup2_root, sock_client, sock_client_argv};
use sluice_integration::probe::{EchoServer, StreamEcho, sa, tcp_request};
use sluice_integration::services::{ServicePort, Services};
use sluice_integration::vpc::{VPC_GATEWAY6, VPC_ROUTER, Vpc, result_addr};
use sluice_integration::{bin_dir, require_root, skip};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const VIP: &str = "10.96.7.1";
const VIP6: &str = "fd00:96::7:1";
const EMPTY: &str = "10.96.7.2";
const STICKY: &str = "10.96.7.3";
const DRAINING: &str = "10.96.7.4";

/// Which backend answered ("b1:..." -> "b1").
fn who(v: &Value) -> String {
    v["reply"]
        .as_str()
        .unwrap_or_else(|| panic!("no reply: {v}"))
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn host_sockets_reach_services() {
    if !require_root("host_sockets_reach_services") {
        return;
    }
    if cgroup2_root().is_none() {
        skip("host_sockets_reach_services", "no cgroup v2 mount on this machine");
        return;
    }
    let mut vpc = Vpc::new("sk", 2).unwrap();
    // The VPC router for IPv6 too: the pods' gateway and the nodes'.
    for a in [&format!("{VPC_GATEWAY6}/64"), "fd00:31::1/64"] {
        vpc.fabric.ip(&["-6", "addr", "add", a, "dev", "br0", "nodad"]).unwrap();
    }
    let fwd = vpc
        .fabric
        .exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    assert!(fwd.status.success());
    for (node, v6) in [(0, "fd00:31::11"), (1, "fd00:31::12")] {
        vpc.nodes[node]
            .ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])
            .unwrap();
        // Another node's pods are behind the VPC router.
        vpc.nodes[node]
            .ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])
            .unwrap();
        vpc.nodes[node]
            .ip(&["-6", "route", "add", "default", "via", "fd00:31::1", "dev", "eth0"])
            .unwrap();
    }
    let mut backends = Vec::new();
    for (node, name) in [(0, "b1"), (1, "b2")] {
        let p = vpc.pod(name).unwrap();
        let r = vpc
            .sluice(node, "ADD", name, p, &vpc.dual_stack_conf(node))
            .expect_ok("ADD")
            .json();
        let addr = |i: usize| result_addr(&r, i);
        backends.push((p, name, addr(0), addr(1)));
    }
    let _echo: Vec<EchoServer> = backends
        .iter()
        .map(|(p, name, ..)| EchoServer::start(&vpc.pods[*p], 7000, name).unwrap())
        .collect();
    let _streams: Vec<StreamEcho> = backends
        .iter()
        .map(|(p, name, ..)| StreamEcho::start(&vpc.pods[*p], 7100, name).unwrap())
        .collect();
    let (b1, b2) = (&backends[0], &backends[1]);
    let svcs = Services::new(&vpc).unwrap();
    let v4 = [sa(&b1.2, 7000), sa(&b2.2, 7000)];
    let manifests = [
        ServicePort::new(&format!("{VIP}:80/tcp"), &v4),
        ServicePort::new(&format!("{VIP}:53/udp"), &v4),
        ServicePort::new(&format!("{VIP}:81/tcp"), &[sa(&b1.2, 7100), sa(&b2.2, 7100)]),
        ServicePort::new(&format!("[{VIP6}]:80/tcp"), &[sa(&b1.3, 7000), sa(&b2.3, 7000)]),
        ServicePort::new(&format!("[{VIP6}]:53/udp"), &[sa(&b1.3, 7000), sa(&b2.3, 7000)]),
        ServicePort::new(&format!("{EMPTY}:80/tcp"), &[]),
        ServicePort::new(&format!("{STICKY}:80/tcp"), &v4).affinity(60),
        // On the other port: a backend entry (address, port, protocol) is
        // shared by every Service, and one terminating anywhere is not
        // kept by affinity (docs/agent.md).
        ServicePort::new(&format!("{DRAINING}:80/tcp"), &[sa(&b1.2, 7100)]).terminating(sa(&b2.2, 7100)),
    ]
    .iter()
    .map(ServicePort::manifest)
    .collect::<Vec<_>>()
    .join("---\n");
    svcs.put_manifest(&vpc, "services", &manifests).unwrap();
    let node0 = &vpc.nodes[0];
    let cg = TestCgroup::new(&vpc.prefix).unwrap();

    // Without the hooks nothing on the host translates a ClusterIP.
    let before = sock_client(node0, Some(&cg), &["tcp", &format!("{VIP}:80"), "x"]);
    assert!(before.get("error").is_some(), "no translation yet: {before}");

    let attach: [&OsStr; 2] = [OsStr::new("--socket-lb-cgroup"), cg.path.as_os_str()];
    svcs.sync_node(&vpc, 0, &attach).unwrap();

    // TCP: both backends, the one on this node and the one on the other;
    // the socket's peer is the Service.
    let mut seen = BTreeSet::new();
    for i in 0..16 {
        let v = sock_client(node0, Some(&cg), &["tcp", &format!("{VIP}:80"), &format!("t{i}")]);
        assert_eq!(v["peer"], format!("{VIP}:80"), "getpeername: {v}");
        seen.insert(who(&v));
    }
    assert_eq!(seen, BTreeSet::from(["b1".to_string(), "b2".to_string()]), "TCP spread");

    // UDP, connected and not (a resolver's sendto/recvfrom): the reply's
    // source is the Service.
    let mut seen = BTreeSet::new();
    for i in 0..16 {
        for mode in ["udp-connected", "udp"] {
            let v = sock_client(node0, Some(&cg), &[mode, &format!("{VIP}:53"), &format!("u{i}")]);
            assert_eq!(v["from"], format!("{VIP}:53"), "{mode} reply source: {v}");
            if mode == "udp-connected" {
                assert_eq!(v["peer"], format!("{VIP}:53"), "{mode} peer: {v}");
            }
            seen.insert(who(&v));
        }
    }
    assert_eq!(seen.len(), 2, "UDP spread: {seen:?}");

    // IPv6 alike, backends on both nodes too.
    let mut seen = BTreeSet::new();
    for i in 0..12 {
        let v = sock_client(node0, Some(&cg), &["tcp", &format!("[{VIP6}]:80"), &format!("six{i}")]);
        assert_eq!(v["peer"], format!("[{VIP6}]:80"), "{v}");
        seen.insert(who(&v));
        for mode in ["udp-connected", "udp"] {
            let v = sock_client(node0, Some(&cg), &[mode, &format!("[{VIP6}]:53"), "six"]);
            assert_eq!(v["from"], format!("[{VIP6}]:53"), "{mode} v6 reply source: {v}");
            seen.insert(who(&v));
        }
    }
    assert_eq!(seen.len(), 2, "IPv6 spread: {seen:?}");

    // Affinity: the node is one client, so one backend; a terminating
    // backend takes no new connection while another is ready.
    for (vip, what) in [(STICKY, "affinity"), (DRAINING, "terminating")] {
        let seen: BTreeSet<String> = (0..8)
            .map(|i| {
                who(&sock_client(
                    node0,
                    Some(&cg),
                    &["tcp", &format!("{vip}:80"), &format!("a{i}")],
                ))
            })
            .collect();
        assert_eq!(seen.len(), 1, "{what}: {seen:?}");
        if what == "terminating" {
            assert_eq!(seen.first().map(String::as_str), Some("b1"), "{what}");
        }
    }

    // No backend: the connect is refused at once, as kube-proxy's REJECT.
    let started = std::time::Instant::now();
    let v = sock_client(node0, Some(&cg), &["tcp", &format!("{EMPTY}:80"), "x"]);
    assert_eq!(v["error"], "ConnectionRefused", "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused at once");

    // Outside the cgroup, or another namespace's socket inside it: untouched.
    let v = sock_client(node0, None, &["tcp", &format!("{VIP}:80"), "x"]);
    assert!(v.get("error").is_some(), "a process outside the cgroup: {v}");
    let v = sock_client(&vpc.nodes[1], Some(&cg), &["tcp", &format!("{VIP}:80"), "x"]);
    assert!(v.get("error").is_some(), "another namespace's socket: {v}");
    // A pod's socket, even in the cgroup, takes its tc path, as before.
    let n = vpc.counted(0, "sock-translated").unwrap();
    assert!(n >= 16 + 32 + 36 + 16, "the hooks counted their translations: {n}");
    let v = sock_client(&vpc.pods[b1.0], Some(&cg), &["tcp", &format!("{VIP}:80"), "pod"]);
    assert_eq!(v["peer"], format!("{VIP}:80"), "{v}");
    assert!(v.get("reply").is_some(), "the pod reaches the Service: {v}");
    assert_eq!(
        vpc.counted(0, "sock-translated").unwrap(),
        n,
        "no socket of a pod translated at the socket"
    );
    // And a pod reaching the Service from its own path is served.
    let reply = tcp_request(&vpc.pods[b2.0], sa(VIP, 80), "p").unwrap();
    assert!(reply.starts_with("b1:") || reply.starts_with("b2:"), "{reply}");

    assert_eq!(
        vpc.netfilter().unwrap(),
        Vec::<String>::new(),
        "no conntrack entry, no rule"
    );

    // An open connection outlives the agent attaching again (its restart):
    // the same backend answers, and new connections are still served.
    let mut session = Command::new("sh")
        .args(&sock_client_argv(node0, Some(&cg), &["tcp-session", &format!("{VIP}:81")])[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = session.stdin.take().unwrap();
    let mut output = BufReader::new(session.stdout.take().unwrap());
    let mut next = || -> Value {
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("session: {e}: {line:?}"))
    };
    assert_eq!(next()["peer"], format!("{VIP}:81"));
    writeln!(input, "one").unwrap();
    let first = next();
    let backend = who(&first);
    svcs.sync_node(&vpc, 0, &attach).unwrap();
    writeln!(input, "two").unwrap();
    let second = next();
    assert_eq!(
        (who(&second), second["peer"].as_str()),
        (backend, Some(&*format!("{VIP}:81"))),
        "{second}"
    );
    drop(input);
    let _ = session.wait();
    let v = sock_client(node0, Some(&cg), &["tcp", &format!("{VIP}:80"), "after"]);
    assert!(v.get("reply").is_some(), "after attaching again: {v}");

    // `sluice-install --uninstall` detaches them: the ClusterIP is a plain
    // address again for the host.
    let conf_dir = tempfile::tempdir().unwrap();
    let out = node0
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
        out.status.success() && log.contains("detached the socket hooks"),
        "{log}"
    );
    let n = vpc.counted(0, "sock-translated").unwrap();
    let v = sock_client(node0, Some(&cg), &["tcp", &format!("{VIP}:80"), "x"]);
    assert!(v.get("error").is_some(), "after uninstall: {v}");
    assert_eq!(
        vpc.counted(0, "sock-translated").unwrap(),
        n,
        "no hook ran after uninstall"
    );
}

//! The checks that run inside the kernel-matrix VM (`integration/vm/run`):
//! one process, many checks (a process start costs ~30 ms under TCG), each
//! reported on the serial console as `CHECK <name> PASS|FAIL <detail>`,
//! then `SUMMARY <n> passed, <m> failed`. The harness turns those lines
//! into the run's result.

use anyhow::{Context, Result, bail, ensure};
use sluice_integration::datapath::{programs_on, put_node_port, tc_filters};
use sluice_integration::netns::Netns;
use sluice_integration::probe::{EchoServer, Session, StreamEcho, tcp_request, udp_request};
use sluice_integration::vpc::{VPC_ROUTER, Vpc, node_ip, result_ip};
use sluice_tc_datapath::attach::{self, AttachMode, Attached, Node};
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::layout::{Direction, EpPolicyValue, POLICY_F_INGRESS, PROTO_TCP, PROTO_UDP, Reason};
use sluice_tc_datapath::loader;
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::maps::lb::{Algorithm, Backend, ServiceSpec};
use sluice_tc_datapath::pin::link_key;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// ipvlan exists here (the host kernel has none): a link in L2 and L3 mode
/// on a parent in a namespace of its own.
fn ipvlan_module() -> Result<String> {
    let ns = Netns::new("vmipv")?;
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"])?;
    for mode in ["l2", "l3"] {
        let name = format!("iv-{mode}");
        ns.ip(&[
            "link", "add", "link", "p0", "name", &name, "type", "ipvlan", "mode", mode,
        ])?;
        let shown = ns.ip(&["-d", "link", "show", &name])?;
        ensure!(shown.contains(&format!("ipvlan  mode {mode}")), "{shown}");
    }
    Ok("ipvlan l2 and l3 links made".into())
}

/// The programs pass this kernel's verifier.
fn datapath_loads() -> Result<String> {
    loader::load(&DatapathConfig::default(), None).context("loading the datapath")?;
    let hooks = attach::sock::verify(&DatapathConfig::default()).context("loading the socket hooks")?;
    Ok(format!(
        "the four tc programs and the {hooks} socket hooks verified on {}",
        kernel()
    ))
}

/// `auto` picks what the kernel has, by probing: TCX programs where it has
/// tcx, clsact filters where it has not; never both. Detach removes them
/// from an interface that stays (the chained role's DEL).
fn attach_auto(expect: Attached) -> Result<String> {
    let ns = Netns::new("vmtc")?;
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "v1"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    std::fs::create_dir_all("/sys/fs/bpf/vmcheck").context("bpffs")?;
    let root = Path::new("/sys/fs/bpf/vmcheck");
    let cfg = DatapathConfig {
        bpffs: root.to_path_buf(),
        ..Default::default()
    };
    let mut node = Node::open(&cfg).context("loading and pinning")?;
    let f = std::fs::File::open(ns.path())?;
    let how = node.attach(f.as_fd(), "eth0", "vm:eth0", AttachMode::Auto)?;
    if how != expect {
        bail!("auto chose {} on {}", how.as_str(), kernel());
    }
    let (egress, ingress) = node.program_ids()?;
    let ids = running(&ns, how)?;
    ensure!(
        ids == [vec![egress], vec![ingress]],
        "eth0 runs {ids:?}, expected only sluice's [{egress}], [{ingress}]"
    );
    if how == Attached::Tcx {
        ensure!(
            filter_ids(&ns, "egress")?.is_empty() && filter_ids(&ns, "ingress")?.is_empty(),
            "tc filters besides the TCX programs"
        );
    }
    node.check(f.as_fd(), "eth0", "vm:eth0", how)
        .map_err(|e| anyhow::anyhow!("check right after attach: {e}"))?;
    // As a chained plugin's DEL does: the interface stays, our programs go.
    attach::detach(node.dir(), Some(f.as_fd()), "eth0", "vm:eth0")?;
    // The kernel frees an unpinned link from a workqueue: it leaves the
    // interface a moment after the last pin goes.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut left = running(&ns, how)?;
    while !left.iter().all(Vec::is_empty) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = running(&ns, how)?;
    }
    ensure!(
        left.iter().all(Vec::is_empty),
        "2 s after detach eth0 still runs {left:?}"
    );
    ensure!(
        ns.link_names()?.contains(&"eth0".to_string()),
        "detach took eth0 with it"
    );
    Ok(format!(
        "auto attached {} on {} (by probing), detached leaving the interface",
        if how == Attached::Tcx {
            "TCX programs"
        } else {
            "clsact filters"
        },
        kernel()
    ))
}

/// A backend taking new connections.
fn backend(id: u32, addr: IpAddr, port: u16) -> Backend {
    Backend {
        id,
        addr,
        port,
        active: true,
    }
}

/// A Service port with random backend choice, no affinity, no reject.
fn random_service(vip: IpAddr, port: u16, proto: u8, rev_nat_id: u32, backends: Vec<Backend>) -> ServiceSpec {
    ServiceSpec {
        vip,
        port,
        proto,
        rev_nat_id,
        algorithm: Algorithm::Random,
        affinity_timeout_secs: 0,
        reject: false,
        node_address: false,
        scope: 0,
        source_ranges: false,
        node_denied: false,
        draining: Vec::new(),
        backends,
    }
}

/// The main-role config of node `node` with the pod link `kind`/`mode`.
fn link_conf(vpc: &Vpc, node: usize, kind: &str, mode: &str) -> serde_json::Value {
    let mut conf = vpc.main_conf(node, "1.1.0");
    conf["link"] = serde_json::json!({"kind": kind, "parent": "eth0", "mode": mode});
    // What this kernel attaches at ADD (no agent here to move pods from
    // filters onto links, as `auto` leaves it to).
    if let Some(a) = EXPECT.get() {
        conf["datapath"]["attach"] = serde_json::json!(a.as_str());
    }
    conf
}

/// The default attach through the CNI binary and the agent: pods start on
/// clsact filters; where the kernel has TCX the agent moves them onto
/// pinned links once the node is quiet, with a connection open across;
/// where it has not, it says so once and leaves them on filters. CHECK
/// passes either way, DEL leaves nothing.
fn default_attach(expect: Attached) -> Result<String> {
    let mut vpc = Vpc::new("vmpr", 1)?;
    let mut conf = link_conf(&vpc, 0, "ipvlan", "l2");
    conf["datapath"]
        .as_object_mut()
        .context("datapath section")?
        .remove("attach");
    let (a, _) = add(&mut vpc, 0, "a", &conf)?;
    let (b, ip_b) = add(&mut vpc, 0, "b", &conf)?;
    ensure!(
        vpc.pinned_links(0).is_empty(),
        "links made at ADD: {:?}",
        vpc.pinned_links(0)
    );
    for p in [a, b] {
        ensure!(
            tc_filters(&vpc.pods[p], "eth0", "egress")?.contains("sl_egress"),
            "pod {p} not on filters after ADD"
        );
    }
    let _echo = StreamEcho::start(&vpc.pods[b], 7300, "b")?;
    let mut session = Session::open(&vpc.pods[a], SocketAddr::new(ip_b, 7300))?;
    ensure!(session.ask("x")? == "b:x", "echo before");
    let work = tempfile::tempdir()?;
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    let log = work.path().join("agent.log");
    let cni_data = vpc.data_dir.join("n0");
    let _agent = sluice_integration::agent::AgentProcess::start_with(
        &manifests,
        &vpc.bpffs[0].root(),
        &vpc.node_name(0),
        &log,
        &["--no-flows", "--cni-data-dir", &cni_data.display().to_string()],
    )?;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let done = |vpc: &Vpc| match expect {
        Attached::Tcx => vpc.pinned_links(0).len() == 2,
        Attached::Tc => std::fs::read_to_string(&log).is_ok_and(|l| l.contains("no TCX on this kernel")),
    };
    while !done(&vpc) {
        ensure!(
            std::time::Instant::now() < until,
            "the agent did not finish within 30 s: links {:?}; log: {}",
            vpc.pinned_links(0),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ensure!(session.ask("y")? == "b:y", "echo after");
    for (name, p) in [("a", a), ("b", b)] {
        let out = vpc.sluice(0, "CHECK", name, p, &conf);
        ensure!(out.success, "CHECK {name}: {}", out.stdout);
        let on_filters = tc_filters(&vpc.pods[p], "eth0", "ingress")?.contains("sl_ingress");
        ensure!(
            on_filters == (expect == Attached::Tc),
            "pod {name} on filters: {on_filters} with {}",
            expect.as_str()
        );
    }
    drop(session);
    for (name, p) in [("a", a), ("b", b)] {
        let out = vpc.sluice(0, "DEL", name, p, &conf);
        ensure!(out.success, "DEL {name}: {}", out.stdout);
    }
    ensure!(
        vpc.pinned_links(0).is_empty() && vpc.endpoints(0).is_empty(),
        "DEL left state: links {:?}, endpoint records {:?}; agent log: {}",
        vpc.pinned_links(0),
        vpc.endpoints(0),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Ok(match expect {
        Attached::Tcx => {
            "pods on filters at ADD, moved onto TCX links by the agent with a connection open; CHECK, DEL clean".into()
        }
        Attached::Tc => "pods on filters at ADD; the agent found no TCX and left them there; CHECK, DEL clean".into(),
    })
}

/// The per-connection tables remade by the agent at its start, the
/// network's `datapath.tables` changed on a live node: two pods attached
/// as this kernel's default does, a TCP connection between them; the agent
/// started with the new sizes in its `--cni-conf` remakes the tables, the
/// connection carries on, a new connection is tracked in the new table
/// (the pods' programs are the ones loaded on it), DEL leaves nothing.
fn tables_resized() -> Result<String> {
    let mut vpc = Vpc::new("vmtr", 1)?;
    let mut conf = link_conf(&vpc, 0, "ipvlan", "l2");
    let datapath = conf["datapath"].as_object_mut().context("datapath section")?;
    datapath.remove("attach");
    datapath.insert("tables".into(), serde_json::json!({"conntrack": 16384}));
    let (a, ip_a) = add(&mut vpc, 0, "a", &conf)?;
    let (b, ip_b) = add(&mut vpc, 0, "b", &conf)?;
    let versioned = vpc.datapath_dir(0);
    let sizes = |v: &Path| loader::pinned_table_sizes(v).first().map(|(_, n)| *n);
    ensure!(sizes(&versioned) == Some(16384), "made at {:?}", sizes(&versioned));
    let _echo = StreamEcho::start(&vpc.pods[b], 7400, "b")?;
    let mut session = Session::open(&vpc.pods[a], SocketAddr::new(ip_b, 7400))?;
    ensure!(session.ask("x")? == "b:x", "echo before");

    let work = tempfile::tempdir()?;
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    let log = work.path().join("agent.log");
    let mut resized = conf.clone();
    resized["datapath"]["tables"] = serde_json::json!({"conntrack": 65536});
    let conflist = work.path().join("00-sluice.conflist");
    let list = serde_json::json!({"cniVersion": "1.0.0", "name": "vmtr", "plugins": [resized]});
    std::fs::write(&conflist, serde_json::to_vec(&list)?)?;
    let cni_data = vpc.data_dir.join("n0");
    let agent = sluice_integration::agent::AgentProcess::start_with(
        &manifests,
        &vpc.bpffs[0].root(),
        &vpc.node_name(0),
        &log,
        &[
            "--no-flows",
            "--cni-data-dir",
            &cni_data.display().to_string(),
            "--cni-conf",
            &conflist.display().to_string(),
        ],
    )?;
    // Done once the agent says so: the pins swap before the programs are
    // loaded again and the pods moved onto them.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let remade = || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("tables were remade"));
    while !remade() {
        ensure!(
            std::time::Instant::now() < until,
            "the agent did not remake the tables within 60 s: {:?}; log: {}",
            sizes(&versioned),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ensure!(sizes(&versioned) == Some(65536), "remade at {:?}", sizes(&versioned));
    ensure!(session.ask("y")? == "b:y", "echo after");
    let from_a = |vpc: &Vpc| -> Result<usize> {
        let maps = Maps::open_pinned(&vpc.datapath_dir(0))?;
        let at = sluice_tc_datapath::layout::addr(ip_a);
        Ok(maps.ct().entries()?.iter().filter(|(k, _)| k.saddr == at).count())
    };
    let before = from_a(&vpc)?;
    let mut fresh = Session::open(&vpc.pods[a], SocketAddr::new(ip_b, 7400))?;
    ensure!(fresh.ask("z")? == "b:z", "a new connection");
    ensure!(
        from_a(&vpc)? > before,
        "the new connection is not in the new table; agent log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop((session, fresh, agent));
    for (name, p) in [("a", a), ("b", b)] {
        let out = vpc.sluice(0, "DEL", name, p, &conf);
        ensure!(out.success, "DEL {name}: {}", out.stdout);
    }
    ensure!(
        vpc.pinned_links(0).is_empty() && vpc.endpoints(0).is_empty(),
        "DEL left state: links {:?}, endpoint records {:?}",
        vpc.pinned_links(0),
        vpc.endpoints(0)
    );
    Ok("conntrack remade from 16,384 to 65,536 entries by the agent's start; a connection carried on, a new one tracked in the new table; DEL clean".into())
}

/// The attach mode the VM's kernel has (`--expect-attach`).
static EXPECT: std::sync::OnceLock<Attached> = std::sync::OnceLock::new();

/// ADD pod `name` on node `node`; its address.
fn add(vpc: &mut Vpc, node: usize, name: &str, conf: &serde_json::Value) -> Result<(usize, IpAddr)> {
    let p = vpc.pod(name)?;
    let out = vpc.sluice(node, "ADD", name, p, conf);
    ensure!(out.success, "ADD {name}: {}", out.stdout);
    Ok((p, result_ip(&out.json()).parse()?))
}

/// Pods through the real CNI binary in the given link mode on two nodes of
/// the simulated VPC: two servers and a client on node 0's ENI, one server
/// on node 1's. TCP from the client to a pod on the same parent, to the pod
/// on the other node and to the VPC router (off the pod subnet, through the
/// default route); each node probes its pods over the host path, and the
/// client reaches its node; a Service over the three servers (DNAT at the client's
/// egress, reverse NAT at its ingress); an ingress policy isolating one
/// server with no rule: the client's call is dropped and counted; CHECK
/// passes on every pod; DEL leaves no lease on either node.
fn pods(kind: &str, mode: &str) -> Result<String> {
    let mut vpc = Vpc::new("vm", 2)?;
    if mode == "l3" {
        vpc.route_pod_ranges()?;
    }
    let confs = [link_conf(&vpc, 0, kind, mode), link_conf(&vpc, 1, kind, mode)];
    let mut pods = Vec::new();
    for (node, name) in [(0, "s1"), (0, "s2"), (1, "far"), (0, "c")] {
        let (p, ip) = add(&mut vpc, node, name, &confs[node])?;
        pods.push((node, name, p, ip));
    }
    let _servers: Vec<EchoServer> = pods[..3]
        .iter()
        .map(|(_, name, p, _)| EchoServer::start(&vpc.pods[*p], 8080, name))
        .collect::<Result<_>>()?;
    let _outside = EchoServer::start(&vpc.fabric, 8080, "vpc")?;
    let client = &vpc.pods[pods[3].2];
    let router: IpAddr = VPC_ROUTER.parse()?;
    for (to, tag) in [(pods[0].3, "s1"), (pods[2].3, "far"), (router, "vpc")] {
        let reply =
            tcp_request(client, SocketAddr::new(to, 8080), "hi").with_context(|| format!("c -> {tag} ({to})"))?;
        ensure!(reply == format!("{tag}:hi"), "c -> {tag}: {reply:?}");
    }
    // The host path: each node probes each of its pods (the kubelet's TCP
    // probe), and a pod reaches its node's address.
    let _node_server = EchoServer::start(&vpc.nodes[0], 8081, "node")?;
    for (node, name, _, ip) in &pods {
        if *name == "c" {
            continue;
        }
        let reply = tcp_request(&vpc.nodes[*node], SocketAddr::new(*ip, 8080), "probe")
            .with_context(|| format!("node {node} probing {name} ({ip})"))?;
        ensure!(reply == format!("{name}:probe"), "node {node} -> {name}: {reply:?}");
    }
    let node0: IpAddr = node_ip(0).parse()?;
    let reply = tcp_request(client, SocketAddr::new(node0, 8081), "hi").context("c -> its node")?;
    ensure!(reply == "node:hi", "c -> its node: {reply:?}");
    let mut maps = vpc.maps(0)?;
    let servers: Vec<IpAddr> = pods[..3].iter().map(|p| p.3).collect();
    service_reaches_all(&mut maps, client, &servers)?;
    isolated_pod_drops(&mut maps, client, pods[1].3)?;
    for verb in ["CHECK", "DEL"] {
        for (node, name, p, _) in &pods {
            let out = vpc.sluice(*node, verb, name, *p, &confs[*node]);
            ensure!(out.success, "{verb} {name}: {}", out.stdout);
        }
    }
    for node in 0..2 {
        ensure!(
            vpc.leases(node).is_empty(),
            "leases left on node {node}: {:?}",
            vpc.leases(node)
        );
    }
    Ok(format!(
        "{kind} {mode}: pod to pod on one ENI, across nodes and to the VPC router; each node probes its pods and a pod reaches its node (the host path); a TCP Service over 3 backends (all answered) and a UDP one; a policy drop counted; CHECK passes; DEL clean"
    ))
}

/// Traffic from outside in the given link mode: a host on the VPC fabric
/// calls node 0's NodePorts (TCP and UDP), backed by a pod on node 0 and
/// one on node 1, through the uplink programs on node 0's eth0 (the pods'
/// parent): both answer, the local one seeing the client's own address,
/// the other node 0's (SNAT).
fn north_south(kind: &str, mode: &str) -> Result<String> {
    let mut vpc = Vpc::new("vmns", 2)?;
    if mode == "l3" {
        vpc.route_pod_ranges()?;
    } else {
        for n in &vpc.nodes {
            n.ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])?;
        }
    }
    let confs = [link_conf(&vpc, 0, kind, mode), link_conf(&vpc, 1, kind, mode)];
    let (a, a_ip) = add(&mut vpc, 0, "a", &confs[0])?;
    let (b, b_ip) = add(&mut vpc, 1, "b", &confs[1])?;
    let _servers = [
        EchoServer::start_telling_peer(&vpc.pods[a], 8080, "a")?,
        EchoServer::start_telling_peer(&vpc.pods[b], 8080, "b")?,
    ];
    let x = vpc.external_host("x", "172.31.1.1/16")?;
    vpc.attach_uplink(0)?;
    let node0: IpAddr = node_ip(0).parse()?;
    let mut maps = vpc.maps(0)?;
    let backends = [(a_ip, 8080), (b_ip, 8080)];
    put_node_port(&mut maps, node0, 30080, PROTO_TCP, &backends, 101)?;
    put_node_port(&mut maps, node0, 30053, PROTO_UDP, &backends, 201)?;
    let client = &vpc.pods[x];
    let want: std::collections::BTreeSet<String> = ["a@172.31.1.1".to_string(), format!("b@{node0}")].into();
    for (proto, port) in [("TCP", 30080), ("UDP", 30053)] {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..64 {
            let to = SocketAddr::new(node0, port);
            let r = if proto == "TCP" {
                tcp_request(client, to, &format!("n{i}"))
            } else {
                udp_request(client, to, &format!("n{i}"))
            }
            .with_context(|| format!("NodePort {proto} from outside"))?;
            seen.insert(r.split(':').next().unwrap_or("").to_string());
            if seen == want {
                break;
            }
        }
        ensure!(
            seen == want,
            "NodePort {proto}: answered by (backend@source seen) {seen:?}, want {want:?}"
        );
    }
    for (node, name, p) in [(0, "a", a), (1, "b", b)] {
        let out = vpc.sluice(node, "DEL", name, p, &confs[node]);
        ensure!(out.success, "DEL {name}: {}", out.stdout);
    }
    Ok(format!(
        "{kind} {mode}: a host outside reaches node 0's NodePort (TCP, UDP) through the uplink programs; \
         the pod on node 0 sees the client, the one on node 1 sees node 0 (SNAT)"
    ))
}

/// A TCP Service over the three servers (random choice: asked until all
/// three have answered) and a UDP one over the same.
fn service_reaches_all(maps: &mut Maps, client: &Netns, servers: &[IpAddr]) -> Result<()> {
    let vip: IpAddr = "10.96.0.10".parse()?;
    // Service `id` over the servers' port 8080, backend ids of its own.
    let mut put = |port: u16, proto: u8, id: u32| {
        let backends = (0..3).map(|i| backend(3 * (id - 1) + i as u32 + 1, servers[i], 8080));
        maps.lb_mut()
            .upsert_service(&random_service(vip, port, proto, id, backends.collect()))
    };
    put(80, PROTO_TCP, 1)?;
    // Random choice: ask until all three have answered (64 tries miss one
    // of three with odds of about 1e-11).
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..64 {
        let r = tcp_request(client, SocketAddr::new(vip, 80), &format!("r{i}"))?;
        seen.insert(r.split(':').next().unwrap_or("").to_string());
        if seen.len() == 3 {
            break;
        }
    }
    ensure!(seen.len() == 3, "the Service reached only {seen:?}");
    // The same backends over UDP (no connection: conntrack alone carries
    // the reverse NAT).
    put(53, PROTO_UDP, 2)?;
    let reply = udp_request(client, SocketAddr::new(vip, 53), "dgram")?;
    ensure!(
        ["s1:dgram", "s2:dgram", "far:dgram"].contains(&reply.as_str()),
        "UDP through the VIP: {reply:?}"
    );
    Ok(())
}

/// `server` isolated for ingress with no rule: the client's call is
/// dropped and counted as drop-policy.
fn isolated_pod_drops(maps: &mut Maps, client: &Netns, server: IpAddr) -> Result<()> {
    let ep = maps
        .endpoints()
        .get(server)?
        .map(|e| e.endpoint_id)
        .context("s2's endpoint entry")?;
    maps.policy_mut().set_endpoint_policy(
        ep,
        EpPolicyValue {
            identity: 300,
            flags: POLICY_F_INGRESS,
            ..Default::default()
        },
    )?;
    let dropped0 = maps.observe().count(Reason::DropPolicy, Direction::Ingress)?;
    let denied = tcp_request(client, SocketAddr::new(server, 8080), "no");
    ensure!(denied.is_err(), "an isolated pod answered: {denied:?}");
    ensure!(
        maps.observe().count(Reason::DropPolicy, Direction::Ingress)? > dropped0,
        "the drop was not counted as drop-policy"
    );
    Ok(())
}

/// ipvlan L3S hands a pod's incoming packets over from the parent's IP
/// layer, past the pod interface's tc ingress hook: run here, pod to pod
/// worked and a Service did not (no reverse NAT on the reply). With the
/// datapath on, ADD refuses the mode (code 7) and leaves nothing.
fn l3s_refused() -> Result<String> {
    let mut vpc = Vpc::new("vml3s", 1)?;
    let conf = link_conf(&vpc, 0, "ipvlan", "l3s");
    let p = vpc.pod("p")?;
    let out = vpc.sluice(0, "ADD", "p", p, &conf);
    ensure!(
        out.error_code() == 7 && out.stdout.contains("l3s"),
        "ADD in l3s: {}",
        out.stdout
    );
    ensure!(vpc.pods[p].link_names()? == ["lo"], "the pod got a link");
    ensure!(vpc.nodes[0].link_names()? == ["lo", "eth0"], "the node kept a link");
    ensure!(vpc.leases(0).is_empty(), "a lease was taken");
    Ok("ADD in ipvlan l3s with the datapath: code 7, nothing left".into())
}

/// The ids of the programs in `ns`'s `side` filters of eth0.
fn filter_ids(ns: &Netns, side: &str) -> Result<Vec<u32>> {
    let text = tc_filters(ns, "eth0", side)?;
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "id")
        .map(|w| w[1].parse().with_context(|| format!("tc filter id in {text}")))
        .collect()
}

/// The ids of the programs on `ns`'s eth0, [egress, ingress]: its tc
/// filters' programs or its TCX programs.
fn running(ns: &Netns, how: Attached) -> Result<[Vec<u32>; 2]> {
    Ok(match how {
        Attached::Tc => [filter_ids(ns, "egress")?, filter_ids(ns, "ingress")?],
        Attached::Tcx => {
            let on = programs_on(ns, "eth0")?;
            [
                on.egress.iter().map(|p| p.id).collect(),
                on.ingress.iter().map(|p| p.id).collect(),
            ]
        }
    })
}

/// The attach path's whole life on this kernel (TCX links or clsact
/// filters, as `auto` finds them), through the CNI binary on ipvlan pods: ADD
/// attaches; a new program version (another configuration) moves the
/// running pods onto its programs in place (link update or filter replace)
/// while a TCP connection through a VIP carries on; CHECK passes on the new
/// version and catches a detached program; DEL leaves no program, pin or
/// lease.
fn upgrade(expect: Attached) -> Result<String> {
    let mut vpc = Vpc::new("vmup", 1)?;
    let conf = link_conf(&vpc, 0, "ipvlan", "l2");
    let (a, _) = add(&mut vpc, 0, "a", &conf)?;
    let (b, ip_b) = add(&mut vpc, 0, "b", &conf)?;
    // TCX links are pinned per attachment; clsact filters live on the device.
    let pinned = if expect == Attached::Tcx { 2 } else { 0 };
    ensure!(
        vpc.pinned_links(0).len() == pinned,
        "{} mode pins {pinned} attachments: {:?}",
        expect.as_str(),
        vpc.pinned_links(0)
    );
    let mut maps = vpc.maps(0)?;
    maps.lb_mut().upsert_service(&random_service(
        "10.96.0.10".parse()?,
        80,
        PROTO_TCP,
        1,
        vec![backend(1, ip_b, 7100)],
    ))?;
    let _stream = StreamEcho::start(&vpc.pods[b], 7100, "b")?;
    let mut session = Session::open(&vpc.pods[a], "10.96.0.10:80".parse()?)?;
    ensure!(session.ask("one")? == "b:one", "the VIP session");
    let before = running(&vpc.pods[a], expect)?;
    ensure!(
        before.iter().all(|ids| ids.len() == 1),
        "one sluice program on each side of a's eth0: {before:?}"
    );
    let old = vpc.program_versions(0);

    let mut conf2 = conf.clone();
    conf2["datapath"]["ctTimeouts"] = serde_json::json!({"udp": 30});
    let (c, _) = add(&mut vpc, 0, "c", &conf2)?;
    let new = vpc.program_versions(0);
    ensure!(new.len() == 1 && new != old, "versions {old:?} -> {new:?}");
    for (p, name) in [(a, "a"), (b, "b")] {
        let after = running(&vpc.pods[p], expect)?;
        for (i, side) in ["egress", "ingress"].into_iter().enumerate() {
            ensure!(
                after[i].len() == 1 && after[i] != before[i],
                "{name} {side} runs {:?} after the upgrade (a ran {:?})",
                after[i],
                before[i]
            );
        }
    }
    ensure!(session.ask("two")? == "b:two", "the VIP session after the upgrade");
    for (p, name) in [(a, "a"), (b, "b"), (c, "c")] {
        let out = vpc.sluice(0, "CHECK", name, p, &conf2);
        ensure!(out.success, "CHECK {name} on the new version: {}", out.stdout);
    }
    check_catches_a_detached_program(&vpc, a, &conf2, expect)?;
    drop(session);
    for (p, name) in [(a, "a"), (b, "b"), (c, "c")] {
        let out = vpc.sluice(0, "DEL", name, p, &conf2);
        ensure!(out.success, "DEL {name}: {}", out.stdout);
        ensure!(vpc.pods[p].link_names()? == ["lo"], "{name} keeps links after DEL");
    }
    ensure!(vpc.leases(0).is_empty(), "leases left: {:?}", vpc.leases(0));
    ensure!(vpc.endpoints(0).is_empty(), "endpoint records left");
    ensure!(vpc.pinned_links(0).is_empty(), "pins left: {:?}", vpc.pinned_links(0));
    Ok(format!(
        "ipvlan l2, {}: the upgrade moved both pods in place, the VIP connection carried on, CHECK passes and catches a detached program, DEL clean",
        expect.as_str()
    ))
}

/// Detach pod `a`'s ingress program behind sluice's back: CHECK says so.
fn check_catches_a_detached_program(vpc: &Vpc, a: usize, conf2: &serde_json::Value, expect: Attached) -> Result<()> {
    // Detach a's ingress program behind sluice's back.
    match expect {
        Attached::Tc => {
            vpc.pods[a].exec("tc", &["filter", "del", "dev", "eth0", "ingress"])?;
        }
        Attached::Tcx => {
            // The pin holds the only reference: unpinning detaches the link.
            let pin = vpc
                .datapath_dir(0)
                .join("links")
                .join(link_key("a", "eth0"))
                .join("ingress");
            std::fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
        }
    }
    ensure!(
        running(&vpc.pods[a], expect)?[1].is_empty(),
        "a's ingress still runs a program"
    );
    let out = vpc.sluice(0, "CHECK", "a", a, conf2);
    ensure!(
        out.error_code() == 103,
        "CHECK after the ingress program was detached: {}",
        out.stdout
    );
    Ok(())
}

/// netfilter is not in the path: its conntrack was never even loaded.
fn netfilter_untouched() -> Result<String> {
    let modules = std::fs::read_to_string("/proc/modules")?;
    ensure!(!modules.contains("nf_conntrack"), "nf_conntrack is loaded");
    ensure!(
        !Path::new("/proc/net/nf_conntrack").exists(),
        "/proc/net/nf_conntrack exists"
    );
    Ok("nf_conntrack not loaded after all of the above".into())
}

/// A check: what it showed, or why it failed.
type Check = Box<dyn Fn() -> Result<String>>;

/// `--expect-attach tc|tcx`: what the harness read in the kernel's build
/// config (the datapath itself probes).
fn expected_attach() -> Result<Attached> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--expect-attach") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| serde_json::from_value(serde_json::Value::String(v.clone())).ok())
            .context("--expect-attach takes tc or tcx"),
        None => bail!("usage: vm-checks --expect-attach tc|tcx"),
    }
}

fn main() {
    let expect = match expected_attach() {
        Ok(a) => a,
        Err(e) => {
            println!("CHECK arguments FAIL {e:#}");
            println!("SUMMARY 0 passed, 1 failed");
            return;
        }
    };
    let how = expect.as_str();
    let _ = EXPECT.set(expect);
    let checks: Vec<(String, Check)> = vec![
        ("ipvlan-module".into(), Box::new(ipvlan_module)),
        ("datapath-verifies".into(), Box::new(datapath_loads)),
        (
            format!("attach-auto-is-{how}-detach"),
            Box::new(move || attach_auto(expect)),
        ),
        (
            "ipvlan-l2-pods-service-policy".into(),
            Box::new(|| pods("ipvlan", "l2")),
        ),
        (
            "ipvlan-l3-pods-service-policy".into(),
            Box::new(|| pods("ipvlan", "l3")),
        ),
        ("ipvlan-l3s-refused".into(), Box::new(l3s_refused)),
        ("ipvlan-l2-north-south".into(), Box::new(|| north_south("ipvlan", "l2"))),
        ("ipvlan-l3-north-south".into(), Box::new(|| north_south("ipvlan", "l3"))),
        (
            "macvlan-pods-service-policy".into(),
            Box::new(|| pods("macvlan", "bridge")),
        ),
        (format!("upgrade-check-del-{how}"), Box::new(move || upgrade(expect))),
        (
            format!("default-attach-{how}"),
            Box::new(move || default_attach(expect)),
        ),
        ("tables-resized".into(), Box::new(tables_resized)),
        ("netfilter-untouched".into(), Box::new(netfilter_untouched)),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in checks {
        match check() {
            Ok(detail) => {
                passed += 1;
                println!("CHECK {name} PASS {detail}");
            }
            Err(e) => {
                failed += 1;
                println!("CHECK {name} FAIL {e:#}");
            }
        }
    }
    println!("SUMMARY {passed} passed, {failed} failed");
}

//! Connection rate between two pods of the simulated VPC with both
//! isolated and thousands of rules, beside the same pods unrestricted.

use super::*;

/// Two pods on one node through the real CNI binary.
pub(crate) fn connection_rate_bench(args: &Args) -> Result<ConnResult> {
    let mut vpc = Vpc::new("bp", 1)?;
    let conf = sluice_integration::bench::for_connection_rates(vpc.main_conf(0, "1.0.0"));
    let mut added = Vec::new();
    let mut ips = Vec::new();
    for role in ["c", "s"] {
        let pod = vpc.pod(role)?;
        let cid = format!("bp-{role}");
        let out = vpc.sluice(0, "ADD", &cid, pod, &conf);
        ensure!(out.success, "ADD {cid}: {}{}", out.stdout, out.stderr);
        ips.push(result_ip(&out.json()).parse::<Ipv4Addr>()?);
        added.push((cid, pod));
    }
    let result = (|| {
        let server = CrrServer::start(&vpc.pods[added[1].1], &PORTS)?;
        let r = measure_connections(args, &vpc, added[0].1, ips[0], ips[1]);
        drop(server);
        r
    })();
    for (cid, pod) in added {
        let out = vpc.sluice(0, "DEL", &cid, pod, &conf);
        if !out.success {
            eprintln!("DEL {cid} failed: {}{}", out.stdout, out.stderr);
        }
    }
    result
}

/// The client's egress rules and the server's ingress rules, each side's
/// allowing rule among `--conn-rules` others, written into the maps; the
/// endpoint entries that isolate the two.
fn write_rules(args: &Args, maps: &mut Maps, eps: [u32; 2], ids: [u32; 2]) -> Result<[EpPolicyValue; 2]> {
    let ([c_ep, s_ep], [c_id, s_id]) = (eps, ids);
    // The allowing rule last, after the others: the trie holds them all.
    let allow = |dir, identity| Rule {
        dir,
        identity,
        proto: PROTO_TCP,
        ports: Some(PortRange {
            first: PORTS[0],
            last: PORTS[2],
        }),
        policy: POLICY_ID,
    };
    let mut rules = [Vec::new(), Vec::new()]; // the client's, the server's
    for j in 0..args.conn_rules.saturating_sub(1) {
        rules[0].push(rule(Direction::Egress, j));
        rules[1].push(rule(Direction::Ingress, j));
    }
    rules[0].push(allow(Direction::Egress, s_id));
    rules[1].push(allow(Direction::Ingress, c_id));
    for (ep, rs) in [c_ep, s_ep].into_iter().zip(&rules) {
        for r in rs {
            maps.policy_mut().insert_rule(ep, r)?;
        }
    }
    Ok([
        isolated(c_id, POLICY_F_EGRESS, &rules[0]),
        isolated(s_id, POLICY_F_INGRESS, &rules[1]),
    ])
}

pub(crate) fn measure_connections(
    args: &Args,
    vpc: &Vpc,
    client: usize,
    c_ip: Ipv4Addr,
    s_ip: Ipv4Addr,
) -> Result<ConnResult> {
    let mut maps = vpc.maps(0)?;
    let id_of = |ip: Ipv4Addr| -> Result<u32> {
        maps.endpoints()
            .get(IpAddr::V4(ip))?
            .map(|e| e.endpoint_id)
            .with_context(|| format!("no endpoint entry for {ip}"))
    };
    let (c_ep, s_ep) = (id_of(c_ip)?, id_of(s_ip)?);
    let (c_id, s_id) = (peer_identity(PEERS + 10), peer_identity(PEERS + 11));
    maps.policy_mut().set_identity(IpAddr::V4(c_ip), c_id)?;
    maps.policy_mut().set_identity(IpAddr::V4(s_ip), s_id)?;
    for k in 0..PEERS {
        maps.policy_mut().set_identity(IpAddr::V4(peer(k)), peer_identity(k))?;
    }
    let entry = write_rules(args, &mut maps, [c_ep, s_ep], [c_id, s_id])?;
    let entries = maps.policy().rule_entries(None)?.len();
    let isolate = |maps: &mut Maps, on: bool| -> Result<()> {
        for (ep, v) in [c_ep, s_ep].into_iter().zip(entry) {
            if on {
                maps.policy_mut().set_endpoint_policy(ep, v)?;
            } else {
                maps.policy_mut().remove_endpoint_policy(ep)?;
            }
        }
        Ok(())
    };
    let to: Vec<SocketAddr> = PORTS
        .iter()
        .map(|p| SocketAddr::V4(SocketAddrV4::new(s_ip, *p)))
        .collect();
    let ns = &vpc.pods[client];
    // The policy must be what lets the traffic through: a stranger's port
    // is refused while isolated.
    isolate(&mut maps, true)?;
    let dropped0 = maps.observe().count(Reason::DropPolicy, Direction::Ingress)?;
    let refused =
        ns.run(|| std::net::TcpStream::connect_timeout(&SocketAddr::new(s_ip.into(), 9), Duration::from_millis(300)))?;
    ensure!(refused.is_err(), "a port the policy does not allow was reachable");
    ensure!(
        maps.observe().count(Reason::DropPolicy, Direction::Egress)?
            + maps.observe().count(Reason::DropPolicy, Direction::Ingress)?
            > dropped0,
        "the refused connection was not a policy drop"
    );
    let mut samples: [Vec<f64>; 2] = Default::default();
    let mut failed = 0;
    for round in 0..=args.rounds {
        for (m, on) in [false, true].into_iter().enumerate() {
            isolate(&mut maps, on)?;
            // Round 0 warms both modes up and is not counted.
            let secs = if round == 0 { 0.3 } else { args.seconds };
            let (rate, f) = connection_rate(ns, &to, secs, args.workers)?;
            ensure!(rate > 0.0, "no connection made");
            if round > 0 {
                samples[m].push(rate);
                failed += f;
            }
        }
    }
    let mut programs = Vec::new();
    for on in [false, true] {
        isolate(&mut maps, on)?;
        programs.push(bench::program_time(vpc, 0, ns, &to, args.seconds, args.workers)?);
    }
    isolate(&mut maps, false)?;
    let [a, b]: [ProgramTime; 2] = programs.try_into().ok().context("two passes")?;
    Ok(ConnResult {
        rate: samples.each_mut().map(|s| pct(s, 0.5)),
        failed,
        entries,
        programs: [a, b],
    })
}

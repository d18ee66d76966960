//! Translating and applying policy for a cluster of pods: the first sync
//! and one policy change, by difference.

use super::*;

pub(crate) fn local_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 2) as u8)
}

pub(crate) fn cluster(args: &Args) -> Result<Cluster> {
    let ns = |name: &str, labels: serde_json::Value| -> Result<Namespace> {
        let mut l = labels;
        l["kubernetes.io/metadata.name"] = json!(name);
        Ok(serde_json::from_value(
            json!({"metadata": {"name": name, "labels": l}}),
        )?)
    };
    let mut namespaces = vec![
        ns("shop", json!({"team": "shop"}))?,
        ns("monitoring", json!({"purpose": "monitoring"}))?,
    ];
    for k in 0..10 {
        namespaces.push(ns(&format!("clients-{k}"), json!({"role": "clients"}))?);
    }
    let pod = |ns: &str, name: String, labels: serde_json::Value, ip: Ipv4Addr| -> Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
        }))?)
    };
    let mut pods = Vec::new();
    for i in 0..args.endpoints {
        pods.push(pod(
            "shop",
            format!("web-{i}"),
            json!({"app": format!("web-{}", i % 20), "tier": "backend"}),
            local_ip(i),
        )?);
    }
    for i in 0..args.remote_pods {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 2)) + i as u32);
        pods.push(pod(
            &format!("clients-{}", i % 10),
            format!("client-{i}"),
            json!({"app": format!("client-{}", i % 20)}),
            ip,
        )?);
    }
    pods.push(pod(
        "monitoring",
        "prometheus".into(),
        json!({"app": "prometheus"}),
        Ipv4Addr::new(10, 246, 0, 2),
    )?);
    let mut policies = Vec::new();
    for a in 0..20 {
        policies.push(serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": format!("web-{a}")},
            "spec": {
                "podSelector": {"matchLabels": {"app": format!("web-{a}")}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"role": "clients"}},
                              "podSelector": {"matchLabels": {"app": format!("client-{a}")}}}],
                    "ports": [{"port": "http"}],
                }],
                "egress": [{
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 5432}],
                }],
            },
        }))?);
    }
    policies.push(monitoring_policy(9090)?);
    Ok(Cluster {
        namespaces,
        pods,
        policies,
    })
}

/// The namespace-wide policy the change edits: every pod of "shop" lets
/// the monitoring namespace scrape `port`.
pub(crate) fn monitoring_policy(port: u16) -> Result<NetworkPolicy> {
    Ok(serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "allow-monitoring"},
        "spec": {
            "podSelector": {},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"purpose": "monitoring"}}}],
                "ports": [{"port": port}],
            }],
        },
    }))?)
}

pub(crate) fn apply_bench(args: &Args) -> Result<ApplyResult> {
    let cfg = DatapathConfig::default();
    let (_ebpf, mut maps) = loader::load_unpinned(&cfg).context("loading the datapath")?;
    for i in 0..args.endpoints {
        maps.endpoints_mut().add(&Endpoint {
            addr: IpAddr::V4(local_ip(i)),
            ifindex: 1,
            endpoint_id: i as u32 + 1,
            mac: [0x02, 0, 0, 0, 0, 0x05],
            parent_ifindex: 0,
            netns_cookie: 0,
        })?;
    }
    let mut c = cluster(args)?;
    let mut translator = Translator::new();
    let mut applier = NodeApplier::from_maps(&maps)?;
    let mut step = |c: &Cluster, maps: &mut Maps| -> Result<(Step, usize)> {
        let t0 = Instant::now();
        let d = translator.translate(&c.namespaces, &c.pods, &c.policies);
        let t1 = Instant::now();
        let st = applier.apply(maps, &d, &[])?;
        let t2 = Instant::now();
        ensure!(d.warnings.is_empty(), "translation warnings: {:?}", d.warnings);
        Ok((
            (
                (t1 - t0).as_secs_f64() * 1e6,
                (t2 - t1).as_secs_f64() * 1e6,
                st.written,
                st.removed,
            ),
            st.endpoints,
        ))
    };
    let (full, endpoints) = step(&c, &mut maps)?;
    ensure!(
        endpoints == args.endpoints,
        "{endpoints} endpoints selected, expected {}",
        args.endpoints
    );
    let mut changes = Vec::new();
    for k in 0..args.changes {
        let port = if k % 2 == 0 { 9091 } else { 9090 };
        *c.policies.last_mut().context("policies")? = monitoring_policy(port)?;
        let (s, _) = step(&c, &mut maps)?;
        // Each endpoint: the old port's rule goes, the new one comes.
        ensure!(
            s.2 == args.endpoints && s.3 == args.endpoints,
            "change {k}: {} written, {} removed, expected {} each",
            s.2,
            s.3,
            args.endpoints
        );
        changes.push(s);
    }
    // What the maps hold now is what the last change asked for.
    let probe = maps.policy().rule_entries(Some(1))?;
    let last = if args.changes % 2 == 1 { 9091u16 } else { 9090 };
    ensure!(
        probe.iter().any(|e| u16::from_be(e.rule.port) == last),
        "endpoint 1 has no rule for port {last}"
    );
    eprintln!("apply: done");
    Ok(ApplyResult {
        full,
        changes,
        endpoints,
        pods: c.pods.len(),
        policies: c.policies.len(),
    })
}

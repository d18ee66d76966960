//! The agent's ENI pool against a local EC2 (moto's server on the
//! loopback, never a real cloud), with a proxy in front that throttles,
//! runs the subnet dry, or holds an attach while the test kills the agent.
//! The simulated node gets an interface with an ENI's MAC once the
//! emulator has attached it, as the cloud's would.
//!
//! What the emulator lacks, and so is shown against an in-memory cloud in
//! cloud/tests/pool.rs: prefix delegation (moto ignores `Ipv4PrefixCount`),
//! a subnet running out of addresses (moto never does: the proxy answers
//! `InsufficientFreeAddressesInSubnet` here), an attach that fails. moto
//! also hands out secondary addresses at random in the subnet (the network
//! address or one another ENI holds among them), which the pool skips.

use anyhow::Result;
use serde_json::{Value, json};
use sluice_cloud::Cloud;
use sluice_cloud::api::{Grant, NewEni, Revoke};
use sluice_cloud::ec2::{Ec2, Ec2Config};
use sluice_cloud::metrics::PoolMetrics;
use sluice_integration::agent::{AgentProcess, metrics_addr, sample, scrape};
use sluice_integration::ec2sim::{self, AGENT_ENV, Emulator, Plugger, Proxy, wait_for};
use sluice_integration::vpc::Vpc;
use sluice_integration::{require_root, skip};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn emulator_missing(test: &str) -> bool {
    match ec2sim::missing() {
        Some(why) => {
            skip(test, &why);
            true
        }
        None => false,
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_string()
}

#[test]
fn ec2_client_speaks_the_query_api() {
    if emulator_missing("ec2_client_speaks_the_query_api") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), None).unwrap();
    let setup = emu.setup("m5.large").unwrap();
    let instance = s(&setup, "instance");
    let metrics = PoolMetrics::default();
    block_on(async {
        let cfg = Ec2Config {
            region: Some("us-east-1".into()),
            endpoint: Some(emu.endpoint.clone()),
            instance_id: Some(instance.clone()),
            metadata_endpoint: None,
            ..Default::default()
        };
        let ec2 = Ec2::new_with_credentials(&cfg, ec2sim::test_credentials(), metrics.clone())
            .await
            .unwrap();
        let inst = ec2.instance().await.unwrap();
        assert_eq!(inst.instance_type, "m5.large");
        assert_eq!(inst.subnet_id, s(&setup, "subnet"));
        assert!(inst.security_groups.contains(&s(&setup, "securityGroup")), "{inst:?}");
        let attached = ec2.attached_enis(&instance).await.unwrap();
        assert_eq!(attached.len(), 1, "the primary ENI");
        assert_eq!(attached[0].device_index(), Some(0));
        let subnet = ec2.subnet(&inst.subnet_id).await.unwrap();
        assert_eq!(subnet.ipv4.to_string(), "10.96.0.0/20");
        assert!(subnet.ipv6.is_some(), "{subnet:?}");

        let tags = BTreeMap::from([
            ("sluice.dev/node".to_string(), instance.clone()),
            ("sluice.dev/cluster".to_string(), "t".to_string()),
        ]);
        let new = ec2
            .create_eni(&NewEni {
                subnet_id: inst.subnet_id.clone(),
                security_groups: inst.security_groups.clone(),
                description: "test".into(),
                tags: tags.clone(),
                ipv4_count: 3,
                ipv6_count: 0,
            })
            .await
            .unwrap();
        assert_eq!(new.secondary_ipv4.len(), 3, "{new:?}");
        assert_eq!(new.tags, tags, "tagged by the create call itself");
        assert_eq!(new.status, "available");
        let attachment = ec2.attach_eni(&new.id, &instance, 1).await.unwrap();
        ec2.grant(&new.id, Grant::Ipv4(2)).await.unwrap();
        ec2.grant(&new.id, Grant::Ipv6(2)).await.unwrap();
        let find = |list: Vec<sluice_cloud::api::CloudEni>| list.into_iter().find(|e| e.id == new.id).unwrap();
        let e = find(ec2.attached_enis(&instance).await.unwrap());
        assert_eq!(
            (e.secondary_ipv4.len(), e.ipv6.len(), e.device_index()),
            (5, 2, Some(1)),
            "{e:?}"
        );
        assert_eq!(e.mac, new.mac);
        ec2.revoke(&new.id, &Revoke::Ipv4(e.secondary_ipv4[..2].to_vec()))
            .await
            .unwrap();
        ec2.revoke(&new.id, &Revoke::Ipv6(e.ipv6[..1].to_vec())).await.unwrap();
        let e = find(ec2.attached_enis(&instance).await.unwrap());
        assert_eq!((e.secondary_ipv4.len(), e.ipv6.len()), (3, 1), "{e:?}");
        assert_eq!(ec2.tagged_enis(&tags).await.unwrap().len(), 1);
        ec2.detach_eni(&attachment).await.unwrap();
        let e = find(ec2.tagged_enis(&tags).await.unwrap());
        assert_eq!(
            (e.status.as_str(), e.attachment.is_none()),
            ("available", true),
            "{e:?}"
        );
        ec2.delete_eni(&new.id).await.unwrap();
        assert!(ec2.tagged_enis(&tags).await.unwrap().is_empty());

        // An error answer is read, and not retried when retrying cannot help.
        let e = ec2.subnet("subnet-nope").await.unwrap_err();
        assert!(e.code().unwrap().starts_with("InvalidSubnetID"), "{e}");
        let failed = metrics
            .cloud_calls
            .get_or_create(&vec![
                ("action", "DescribeSubnets".into()),
                ("result", "client_error".into()),
            ])
            .get();
        assert_eq!(failed, 1, "one attempt");
    });
}

/// One simulated node with the agent's pool on the emulator.
struct Node {
    vpc: Vpc,
    emu: Emulator,
    proxy: Proxy,
    setup: Value,
    _plugger: Plugger,
    pool_cfg: PathBuf,
    net: String,
}

impl Node {
    fn new(tag: &str, instance_type: &str, proxy_first: Value) -> Result<Node> {
        let vpc = Vpc::new(tag, 1)?;
        std::fs::create_dir_all(&vpc.data_dir)?;
        // On the node's loopback, where the agent under test runs.
        let ns = vpc.nodes[0].path();
        let emu = Emulator::start(&vpc.data_dir, Some(&ns))?;
        let proxy = Proxy::start(&emu.endpoint, &vpc.data_dir, Some(&ns))?;
        proxy.set(proxy_first)?;
        let setup = emu.setup(instance_type)?;
        let plugger = Plugger::start(&emu.endpoint, &s(&setup, "instance"), &vpc.nodes[0].name);
        let net = format!("{}-net", vpc.prefix);
        let pool_cfg = vpc.data_dir.join("eni-pool-config.json");
        Ok(Node {
            vpc,
            emu,
            proxy,
            setup,
            _plugger: plugger,
            pool_cfg,
            net,
        })
    }

    fn instance(&self) -> String {
        s(&self.setup, "instance")
    }

    fn node_file(&self) -> PathBuf {
        self.vpc.data_dir.join("eni-pool.json")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.vpc.data_dir.join("ipam")
    }

    /// Write the pool's configuration with these targets.
    fn configure(&self, targets: Value) -> Result<()> {
        let mut cfg = json!({
            "cloud": "ec2",
            "ec2": {"region": "us-east-1", "endpoint": self.proxy.endpoint, "instanceId": self.instance()},
            "cluster": "sluice-test",
            "nodeFile": self.node_file(),
            "ipam": {"dataDir": self.ipam_dir(), "network": self.net},
            "subnets": [s(&self.setup, "podSubnet")],
            "releaseAfterSeconds": 1.0,
            "resyncSeconds": 3.0,
            "pollSeconds": 0.2
        });
        for (k, v) in targets.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let tmp = self.pool_cfg.with_extension("tmp");
        std::fs::write(&tmp, cfg.to_string())?;
        std::fs::rename(&tmp, &self.pool_cfg)?;
        Ok(())
    }

    fn agent(&self, name: &str) -> Result<AgentProcess> {
        let manifests = self.vpc.data_dir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        AgentProcess::start_in_env(
            &self.vpc.nodes[0].path(),
            &manifests,
            &self.vpc.data_dir.join("bpffs-unused"),
            "node-0",
            &self.vpc.data_dir.join(format!("{name}.log")),
            &["--eni-pool", &self.pool_cfg.display().to_string(), "--no-flows"],
            AGENT_ENV,
        )
    }

    /// The node file: (addresses, cannotGrow).
    fn published(&self) -> (Vec<String>, Option<String>) {
        let Ok(bytes) = std::fs::read(self.node_file()) else {
            return (Vec::new(), None);
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let ips = v["enis"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["ips"].as_array().cloned().unwrap_or_default())
            .filter_map(|ip| ip.as_str().map(String::from))
            .collect();
        (ips, v["cannotGrow"].as_str().map(String::from))
    }

    fn wait_published(&self, what: &str, f: impl Fn(usize, Option<&str>) -> bool) -> Result<Vec<String>> {
        wait_for(Duration::from_secs(90), what, || {
            let (ips, why) = self.published();
            f(ips.len(), why.as_deref()).then_some(ips)
        })
    }

    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": self.net,
            "type": "sluice",
            "link": {"kind": "macvlan", "mode": "bridge"},
            "ipam": {
                "type": "sluice-ipam",
                "eniPool": {"backend": "file", "path": self.node_file()},
                "dataDir": self.ipam_dir()
            },
            "dataDir": self.vpc.data_dir.join("cni"),
            "logFile": self.vpc.data_dir.join("sluice.log"),
            "datapath": {"enabled": false}
        })
    }

    /// This node's ENIs in the emulator: (id, status, secondary IPv4s).
    fn enis_tagged_here(&self) -> Result<Vec<(String, String, Vec<String>)>> {
        Ok(self
            .emu
            .enis()?
            .into_iter()
            .filter(|e| e["tags"]["sluice.dev/node"].as_str() == Some(&self.instance()))
            .map(|e| {
                let ips = e["ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.as_str().map(String::from))
                    .collect();
                (s(&e, "id"), s(&e, "status"), ips)
            })
            .collect())
    }

    fn metric(&self, agent: &AgentProcess, series: &str) -> Option<f64> {
        let addr = metrics_addr(&agent.log)?;
        let body = self.vpc.nodes[0].run(|| scrape(addr)).ok()?.ok()?;
        sample(&body, series)
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

#[test]
fn pool_fills_serves_100_adds_without_the_cloud_and_shrinks_around_pods() {
    let test = "pool_fills_serves_100_adds_without_the_cloud_and_shrinks_around_pods";
    if !require_root(test) || emulator_missing(test) {
        return;
    }
    let mut node = Node::new("ecf", "m5.4xlarge", json!({})).unwrap();
    node.configure(json!({"minimumIpTarget": 105, "warmIpTarget": 5}))
        .unwrap();
    let agent = node.agent("agent").unwrap();

    // The pool fills to its target: 105 addresses on four ENIs, all on the node.
    let ips = node.wait_published("105 addresses published", |n, _| n >= 105).unwrap();
    assert_eq!(ips.len(), 105, "exactly the target: {}", ips.len());
    let created = node
        .proxy
        .calls()
        .iter()
        .filter(|(a, st)| a == "CreateNetworkInterface" && st == "200")
        .count();
    assert_eq!(
        created,
        4,
        "105 addresses need four ENIs of 29: {:?}",
        node.proxy.calls()
    );
    assert!(
        node.metric(&agent, "sluice_eni_pool_addresses")
            .is_some_and(|v| v == 105.0)
    );
    // The ENIs' interfaces appeared down; the pool brought them up.
    let links = node.vpc.nodes[0].ip(&["-o", "link", "show"]).unwrap();
    let enis: Vec<&str> = links
        .lines()
        .filter(|l| l.contains(": eni") && !l.contains("p@"))
        .collect();
    assert_eq!(enis.len(), 4, "{links}");
    assert!(enis.iter().all(|l| l.contains(",UP")), "{enis:#?}");

    // 100 ADDs with the agent stopped: not one cloud call on their way.
    signal(agent.pid(), nix::sys::signal::Signal::SIGSTOP);
    let calls_before = node.proxy.calls().len();
    let conf = node.conf();
    let mut pods = Vec::new();
    for i in 0..100 {
        let pod = node.vpc.pod(&format!("p{i}")).unwrap();
        let out = node.vpc.sluice(0, "ADD", &format!("c{i}"), pod, &conf).expect_ok("ADD");
        let ip = sluice_integration::vpc::result_ip(&out.json());
        assert!(ips.contains(&ip), "{ip} is not from the pool");
        pods.push(pod);
    }
    let calls_during = node.proxy.calls().len() - calls_before;
    signal(agent.pid(), nix::sys::signal::Signal::SIGCONT);
    assert_eq!(calls_during, 0, "cloud calls while 100 pods were added");
    let ipam = ipam_pool(&node.ipam_dir(), &node.node_file(), &node.net);
    assert_eq!(ipam.leases().unwrap().len(), 100);

    // Back to a warm target of 5 around the pods: 60 go, 40 stay.
    node.configure(json!({"minimumIpTarget": 0, "warmIpTarget": 5}))
        .unwrap();
    for (i, pod) in pods.iter().enumerate().take(60) {
        node.vpc
            .sluice(0, "DEL", &format!("c{i}"), *pod, &conf)
            .expect_ok("DEL");
    }
    let kept = node.wait_published("the surplus released", |n, _| n == 45).unwrap();
    let in_use: Vec<String> = ipam.leases().unwrap().iter().map(|(ip, _)| ip.to_string()).collect();
    assert_eq!(in_use.len(), 40);
    let assigned: HashSet<String> = node
        .enis_tagged_here()
        .unwrap()
        .into_iter()
        .flat_map(|(_, _, ips)| ips)
        .collect();
    for ip in &in_use {
        assert!(
            assigned.contains(ip),
            "{ip} is leased to a pod and went back to the cloud"
        );
        assert!(kept.contains(ip), "{ip} is leased to a pod and left the node file");
    }
    let released = node
        .proxy
        .calls()
        .iter()
        .filter(|(a, st)| a == "UnassignPrivateIpAddresses" && st == "200")
        .count();
    assert!(released >= 1);
    drop(agent);
}

fn ipam_pool(data_dir: &Path, node_file: &Path, net: &str) -> sluice_ipam::Pool {
    let cfg: sluice_ipam::IpamConfig = serde_json::from_value(json!({
        "type": "sluice-ipam",
        "eniPool": {"backend": "file", "path": node_file},
        "dataDir": data_dir
    }))
    .unwrap();
    sluice_ipam::Pool::new(net, &cfg).unwrap()
}

#[test]
fn kill_9_between_create_and_attach_leaks_nothing() {
    let test = "kill_9_between_create_and_attach_leaks_nothing";
    if !require_root(test) || emulator_missing(test) {
        return;
    }
    let node = Node::new("eck", "m5.large", json!({"hold": "AttachNetworkInterface"})).unwrap();
    node.configure(json!({"warmIpTarget": 6})).unwrap();
    let agent = node.agent("agent-1").unwrap();
    wait_for(Duration::from_secs(60), "the attach held", || {
        node.proxy
            .calls()
            .iter()
            .any(|(a, st)| a == "AttachNetworkInterface" && st == "held")
            .then_some(())
    })
    .unwrap();
    agent.kill().unwrap();
    let leaked: Vec<_> = node
        .enis_tagged_here()
        .unwrap()
        .into_iter()
        .filter(|(_, st, _)| st == "available")
        .collect();
    assert_eq!(
        leaked.len(),
        1,
        "the ENI created before the crash, attached nowhere: {leaked:?}"
    );

    node.proxy.set(json!({})).unwrap();
    let agent = node.agent("agent-2").unwrap();
    node.wait_published("the pool filled after the restart", |n, _| n >= 6)
        .unwrap();
    let enis = node.enis_tagged_here().unwrap();
    assert!(
        enis.iter().all(|(id, st, _)| st == "in-use" && *id != leaked[0].0),
        "the leaked ENI is gone, the rest attached: {enis:?}"
    );
    assert!(
        node.metric(&agent, "sluice_eni_leaked_deleted_total")
            .is_some_and(|v| v >= 1.0)
    );
}

#[test]
fn throttled_cloud_still_converges() {
    let test = "throttled_cloud_still_converges";
    if !require_root(test) || emulator_missing(test) {
        return;
    }
    // Every second request: 503 RequestLimitExceeded.
    let node = Node::new("ect", "m5.xlarge", json!({"throttle": 2})).unwrap();
    node.configure(json!({"warmIpTarget": 20})).unwrap();
    let agent = node.agent("agent").unwrap();
    let ips = node.wait_published("20 addresses", |n, _| n >= 20).unwrap();
    assert_eq!(ips.len(), 20);
    let throttled = node.proxy.calls().iter().filter(|(_, st)| st == "503").count();
    assert!(throttled >= 3, "the proxy throttled {throttled} requests");
    let counted = node
        .metric(
            &agent,
            "sluice_eni_cloud_calls_total{action=\"DescribeNetworkInterfaces\",result=\"throttled\"}",
        )
        .unwrap_or(0.0)
        + node
            .metric(
                &agent,
                "sluice_eni_cloud_calls_total{action=\"CreateNetworkInterface\",result=\"throttled\"}",
            )
            .unwrap_or(0.0);
    assert!(counted >= 1.0, "throttled calls counted in the metrics");
}

#[test]
fn dry_subnet_makes_status_50_until_it_recovers() {
    let test = "dry_subnet_makes_status_50_until_it_recovers";
    if !require_root(test) || emulator_missing(test) {
        return;
    }
    let mut node = Node::new("ecx", "m5.large", json!({"exhausted": true})).unwrap();
    node.configure(json!({"warmIpTarget": 4})).unwrap();
    let _agent = node.agent("agent").unwrap();
    node.wait_published("the pool saying it cannot grow", |n, why| {
        n == 0 && why.is_some_and(|w| w.contains("InsufficientFreeAddressesInSubnet"))
    })
    .unwrap();
    let conf = node.conf();
    let pod = node.vpc.pod("p0").unwrap();
    let out = node.vpc.sluice(0, "STATUS", "", pod, &conf);
    assert_eq!(out.error_code(), 50, "STATUS with an empty pool that cannot grow");
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("InsufficientFreeAddressesInSubnet")
            || out.json()["details"]
                .as_str()
                .unwrap_or_default()
                .contains("InsufficientFreeAddressesInSubnet"),
        "{}",
        out.json()
    );
    let add = node.vpc.sluice(0, "ADD", "c0", pod, &conf);
    assert_ne!(add.error_code(), 0, "no address to give");

    // The subnet has room again: the pool grows, STATUS is ready.
    node.proxy.set(json!({})).unwrap();
    node.wait_published("the pool recovered", |n, why| n >= 4 && why.is_none())
        .unwrap();
    node.vpc.sluice(0, "STATUS", "", pod, &conf).expect_ok("STATUS");
    node.vpc.sluice(0, "ADD", "c0", pod, &conf).expect_ok("ADD");
}

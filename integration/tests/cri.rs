//! Pod sandboxes through containerd's CRI plugin, driven over its gRPC
//! socket as the kubelet drives it (RunPodSandbox with metadata, DNS and
//! port mappings; CreateContainer/StartContainer; ExecSync;
//! StopPodSandbox; RemovePodSandbox), with sluice in each role on a
//! simulated node: chained behind the reference plugins by
//! `sluice-install` (found through containerd's own `conf_dir`), and in
//! the main role.
//!
//! containerd loads the conflist through libcni and caches it, passes the
//! pod's namespace, name and uid in `CNI_ARGS` and its port mappings in
//! `runtimeConfig`, calls DEL again on a repeated StopPodSandbox, and
//! keeps sandboxes across its own restart: each of those is exercised
//! here, with the state sluice keeps (endpoint records, leases, pinned
//! links, endpoint map entries) checked empty at the end.

use serde_json::Value;
use sluice_integration::agent::AgentProcess;
use sluice_integration::cri::{self, Containerd, Cri, PodSpec, Role, endpoint_records};
use sluice_integration::services::ServicePort;
use sluice_integration::vpc::{Vpc, node_ip};
use sluice_integration::{bin_dir, cni_bin_dir, require_root, skip};
use std::path::Path;
use std::time::{Duration, Instant};

const VIP: &str = "10.96.0.60";

/// The record sluice keeps for sandbox `id`.
fn record(vpc: &Vpc, id: &str) -> Option<Value> {
    endpoint_records(vpc).into_iter().find(|r| r["containerId"] == id)
}

/// HTTP GET from inside a container (busybox wget): the body.
async fn wget(cri: &mut Cri, container: &str, url: &str) -> anyhow::Result<String> {
    // busybox wget's own -T crashes in this static build: timeout(1) bounds it.
    let (code, out) = cri
        .exec(container, &["timeout", "5", "wget", "-q", "-O", "-", url], 10)
        .await?;
    anyhow::ensure!(code == 0, "wget {url} in {container}: exit {code}");
    Ok(out)
}

/// A pod with a container serving its own name over HTTP on 8080.
async fn serving_pod(cri: &mut Cri, spec: &PodSpec, logs: &Path) -> (String, String) {
    let config = spec.config(logs);
    let id = cri.run_pod(&config).await.expect("RunPodSandbox");
    let script = format!(
        "mkdir -p /tmp/www && echo {}/{} > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
        spec.namespace, spec.name
    );
    let c = cri
        .start_container(&id, &config, "web", &["sh", "-c", &script])
        .await
        .unwrap();
    (id, c)
}

/// A pod with a container that only sleeps (to exec clients in).
async fn client_pod(cri: &mut Cri, spec: &PodSpec, logs: &Path) -> (String, String) {
    let config = spec.config(logs);
    let id = cri.run_pod(&config).await.expect("RunPodSandbox");
    let c = cri
        .start_container(&id, &config, "client", &["sleep", "3600"])
        .await
        .unwrap();
    (id, c)
}

/// Retry `f` until it succeeds or `within` passes (a server just started).
async fn eventually<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Nothing sluice keeps for a pod is left on node 0.
fn nothing_left(vpc: &Vpc, what: &str) {
    assert!(endpoint_records(vpc).is_empty(), "{what}: endpoint records left");
    assert!(
        vpc.pinned_links(0).is_empty(),
        "{what}: links left: {:?}",
        vpc.pinned_links(0)
    );
    assert!(
        vpc.endpoint_addrs(0).unwrap_or_default().is_empty(),
        "{what}: endpoint map entries left"
    );
}

fn sluicectl_observe(socket: &Path) -> Vec<Value> {
    let out = std::process::Command::new(bin_dir().join("sluicectl"))
        .args(["-o", "json", "observe", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluicectl observe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Run `n` sandboxes of `namespace` at once; their ids.
fn run_at_once(rt: &tokio::runtime::Runtime, ctr: &Containerd, specs: &[PodSpec], logs: &Path) -> Vec<String> {
    rt.block_on(async {
        let mut tasks = Vec::new();
        for s in specs {
            let config = s.config(logs);
            let mut c = ctr.connect().await.unwrap();
            tasks.push(tokio::spawn(async move { c.run_pod(&config).await }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(id) => ids.push(id),
                Err(e) => panic!("RunPodSandbox: {e}\n{}", ctr.log_errors()),
            }
        }
        ids
    })
}

/// Stop, then remove, each sandbox, all at once.
fn stop_at_once(rt: &tokio::runtime::Runtime, ctr: &Containerd, ids: &[String]) {
    rt.block_on(async {
        let mut tasks = Vec::new();
        for id in ids {
            let id = id.clone();
            let mut c = ctr.connect().await.unwrap();
            tasks.push(tokio::spawn(async move {
                c.stop_pod(&id).await?;
                c.remove_pod(&id).await
            }));
        }
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                panic!("Stop/RemovePodSandbox: {e}\n{}", ctr.log_errors());
            }
        }
    });
}

/// The address leases the role's IPAM holds on node 0.
fn leases(vpc: &Vpc, role: Role) -> Vec<String> {
    match role {
        Role::Main => vpc.leases(0),
        _ => sluice_integration::dir_names(&vpc.data_dir.join("host-local").join(format!("{}-net", vpc.prefix)))
            .into_iter()
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .collect(),
    }
}

/// Everything the issue asks of a kubelet's runtime, in `role`.
fn scenarios(test: &str, tag: &str, role: Role) {
    if !require_root(test) {
        return;
    }
    if let Some(why) = cri::missing() {
        skip(test, &why);
        return;
    }
    let mut vpc = Vpc::new(tag, 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let archive = cri::build_image(work.path()).unwrap();
    let mut ctr = Containerd::start(&work.path().join("containerd"), &vpc.nodes[0].path(), &archive).unwrap();
    // Every new flow on the event ring, for `sluicectl observe` below.
    // The default attach (filters at ADD, links from the agent later).
    cri::install_network_with(&vpc, &ctr, role, &|p| {
        p["datapath"]["flowSample"] = serde_json::json!(1);
        p["datapath"].as_object_mut().unwrap().remove("attach");
    })
    .unwrap();
    let installed: Value =
        serde_json::from_str(&std::fs::read_to_string(ctr.conf_dir.join("00-sluice.conflist")).unwrap()).unwrap();
    let plugins = installed["plugins"].as_array().unwrap();
    let want = if role == Role::Chained {
        ["macvlan", "sluice"].as_slice()
    } else {
        ["sluice"].as_slice()
    };
    let types: Vec<&str> = plugins.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, want, "sluice-install's conflist in containerd's conf_dir");
    let logs = work.path().join("pod-logs");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let mut cri = rt.block_on(ctr.connect()).unwrap();

    // 1. Twenty sandboxes at once (a node drained onto this one), each
    //    with the pod's namespace, name and uid from CNI_ARGS in sluice's
    //    record; then stopped and removed at once.
    let specs: Vec<PodSpec> = (0..20).map(|i| PodSpec::new("batch", &format!("p{i}"))).collect();
    let ids = run_at_once(&rt, &ctr, &specs, &logs);
    for (s, id) in specs.iter().zip(&ids) {
        let r = record(&vpc, id).unwrap_or_else(|| panic!("no sluice record for {}", s.name));
        assert_eq!(r["pod"]["namespace"], "batch");
        assert_eq!(r["pod"]["name"], s.name.as_str(), "CNI_ARGS' pod name in the record");
        assert_eq!(r["pod"]["uid"], s.uid.as_str());
        assert_eq!(r["state"], "ready");
        let (state, ip) = rt.block_on(cri.pod_status(id)).unwrap();
        assert_eq!(state, "SANDBOX_READY");
        assert_eq!(
            r["ips"][0].as_str().unwrap().split('/').next(),
            Some(ip.as_str()),
            "the IP containerd reports"
        );
    }
    assert!(
        ids.iter().all(|id| record(&vpc, id).unwrap()["promoteToTcx"] == true),
        "on filters, to be moved onto links"
    );
    assert!(vpc.pinned_links(0).is_empty(), "no link made on the pods' start");
    assert_eq!(leases(&vpc, role).len(), 20);
    stop_at_once(&rt, &ctr, &ids);
    nothing_left(&vpc, "20 sandboxes stopped at once");
    assert!(
        leases(&vpc, role).is_empty(),
        "addresses released: {:?}",
        leases(&vpc, role)
    );

    // 2. Pods serving and calling: a server, a client, and a server with
    //    a hostPort (the runtime's port mapping).
    let (web, web_c) = rt.block_on(serving_pod(&mut cri, &PodSpec::new("shop", "web"), &logs));
    let (cli, cli_c) = rt.block_on(client_pod(&mut cri, &PodSpec::new("shop", "cli"), &logs));
    let mut hp_spec = PodSpec::new("shop", "hp");
    hp_spec.ports.push(("TCP", 8080, 30088));
    let (hp, _) = rt.block_on(serving_pod(&mut cri, &hp_spec, &logs));
    let web_ip = rt.block_on(cri.pod_status(&web)).unwrap().1;
    let body = rt
        .block_on(eventually(Duration::from_secs(10), || {
            let mut c = Cri {
                runtime: cri.runtime.clone(),
                images: cri.images.clone(),
            };
            let (cli_c, url) = (cli_c.clone(), format!("http://{web_ip}:8080/"));
            async move { wget(&mut c, &cli_c, &url).await }
        }))
        .unwrap();
    assert_eq!(body.trim(), "shop/web", "pod to pod");

    // 3. The agent on the node, on a manifests directory: a ClusterIP to
    //    the server; the uplink programs serve the hostPort from outside.
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let backend = std::net::SocketAddr::new(web_ip.parse().unwrap(), 8080);
    let web_svc = ServicePort::new(&format!("{VIP}:80/tcp"), &[backend]);
    std::fs::write(manifests.join("web.yaml"), web_svc.manifest()).unwrap();
    let log = work.path().join("agent.log");
    let cni_data = vpc.data_dir.join("n0").display().to_string();
    let mut agent = AgentProcess::start_in(
        &vpc.nodes[0].path(),
        &manifests,
        &vpc.bpffs[0].root(),
        &vpc.node_name(0),
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
    // The agent moves the running sandboxes onto TCX links once quiet.
    let live = endpoint_records(&vpc).len();
    let deadline = Instant::now() + Duration::from_secs(15);
    while vpc.pinned_links(0).len() != live {
        assert!(
            Instant::now() < deadline,
            "{} of {live} sandboxes on links: {}",
            vpc.pinned_links(0).len(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = rt.block_on(wget(&mut cri, &cli_c, &format!("http://{VIP}/"))).unwrap();
    assert_eq!(body.trim(), "shop/web", "the ClusterIP the agent wrote");
    let outside = vpc.external_host("x", "172.31.0.200/16").unwrap();
    assert!(hostport_listed(&vpc), "sluicectl hostport list shows the pod's mapping");
    assert_eq!(
        from_outside(&vpc, outside),
        "shop/hp",
        "the port mapping became a hostPort served from outside"
    );

    // 4. `sluicectl observe` names the client by what containerd passed
    //    in CNI_ARGS (the manifests hold no Pod objects).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = sluicectl_observe(&agent.socket);
        if flows
            .iter()
            .any(|f| f["source"]["pod"] == "shop/cli" && f["destination"]["ip"] == VIP && f["verdict"] == "translated")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no flow from shop/cli to {VIP} named: {flows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 5. StopPodSandbox twice (the kubelet retries): the second finds
    //    nothing to do and succeeds.
    rt.block_on(cri.stop_pod(&cli)).unwrap();
    assert!(record(&vpc, &cli).is_none(), "the first stop's DEL removed the record");
    rt.block_on(cri.stop_pod(&cli)).expect("a second StopPodSandbox");
    rt.block_on(cri.remove_pod(&cli)).unwrap();

    // 6. containerd restarted with sandboxes alive: they stay ready, keep
    //    serving, and stop cleanly afterwards.
    let (kept, _) = rt.block_on(client_pod(&mut cri, &PodSpec::new("shop", "kept"), &logs));
    ctr.restart().unwrap();
    let mut cri = rt.block_on(ctr.connect()).unwrap();
    for id in [&web, &hp, &kept] {
        assert_eq!(
            rt.block_on(cri.pod_status(id)).unwrap().0,
            "SANDBOX_READY",
            "{id} after the restart"
        );
    }
    assert_eq!(
        from_outside(&vpc, outside),
        "shop/hp",
        "served across containerd's restart"
    );

    // 7. A sandbox whose netns was removed behind containerd's back (the
    //    runtime then DELs with a path that no longer exists).
    let gone = rt
        .block_on(cri.run_pod(&PodSpec::new("shop", "gone").config(&logs)))
        .unwrap();
    let netns = record(&vpc, &gone).unwrap()["netns"].as_str().unwrap().to_string();
    nix::mount::umount2(netns.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(&netns).unwrap();
    rt.block_on(cri.stop_pod(&gone))
        .unwrap_or_else(|e| panic!("StopPodSandbox without its netns: {e}"));
    rt.block_on(cri.remove_pod(&gone)).unwrap();
    assert!(
        record(&vpc, &gone).is_none(),
        "DEL without the netns still removed the record"
    );

    // 8. sluice upgraded between the pods' ADD and DEL: the installer
    //    replaces the binaries in containerd's bin_dir (write and rename,
    //    as the DaemonSet's init container does on a new image); the new
    //    binary's DEL undoes the old one's ADD.
    let before = std::fs::metadata(ctr.bin_dir.join("sluice")).unwrap();
    let out = std::process::Command::new(bin_dir().join("sluice-install"))
        .arg("--from")
        .arg(cni_bin_dir())
        .arg("--cni-bin-dir")
        .arg(&ctr.bin_dir)
        .arg("--cni-conf-dir")
        .arg(&ctr.conf_dir)
        .args(install_args(&ctr, role))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice-install again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::metadata(ctr.bin_dir.join("sluice")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        before.ino(),
        after.ino(),
        "the binary was replaced, not written in place"
    );
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(ctr.conf_dir.join("00-sluice.conflist")).unwrap()).unwrap();
    assert_eq!(again, installed, "installing again is idempotent");
    stop_at_once(&rt, &ctr, &[web.clone(), hp.clone(), kept.clone()]);

    nothing_left(&vpc, "every sandbox stopped");
    assert!(
        leases(&vpc, role).is_empty(),
        "addresses released: {:?}",
        leases(&vpc, role)
    );
    assert!(
        sluice_integration::dir_names(&ctr.dir.join("state/netns")).is_empty(),
        "containerd's netns files gone"
    );
    assert_eq!(vpc.netfilter().unwrap(), Vec::<String>::new(), "no netfilter anywhere");
    assert!(!hostport_listed(&vpc), "the hostPort went with its pod");
    drop(agent);
    let _ = web_c;
}

/// Whether `sluicectl hostport list` shows hostPort 30088.
fn hostport_listed(vpc: &Vpc) -> bool {
    vpc.sluicectl(0, &["hostport", "list"]).to_string().contains("30088")
}

/// GET the node's hostPort 30088 from the host outside.
fn from_outside(vpc: &Vpc, outside: usize) -> String {
    let to: std::net::SocketAddr = format!("{}:30088", node_ip(0)).parse().unwrap();
    let (code, body) = vpc.pods[outside]
        .run(|| sluice_integration::agent::http_get(to, "/"))
        .unwrap()
        .unwrap_or_else(|e| panic!("GET {to} from outside: {e}"));
    assert_eq!(code, 200);
    body.trim().to_string()
}

/// The `sluice-install` arguments that put `role`'s configuration back.
fn install_args(ctr: &Containerd, role: Role) -> Vec<String> {
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string(ctr.conf_dir.join("00-sluice.conflist")).unwrap()).unwrap();
    match role {
        Role::Main => vec![
            "--conflist".into(),
            ctr.dir.join("sluice-main.conflist").display().to_string(),
        ],
        _ => vec![
            "--plugin".into(),
            conf["plugins"].as_array().unwrap().last().unwrap().to_string(),
        ],
    }
}

#[test]
fn cri_sandboxes_with_sluice_chained() {
    scenarios("cri_sandboxes_with_sluice_chained", "cc", Role::Chained);
}

#[test]
fn cri_sandboxes_with_sluice_in_the_main_role() {
    scenarios("cri_sandboxes_with_sluice_in_the_main_role", "cm", Role::Main);
}

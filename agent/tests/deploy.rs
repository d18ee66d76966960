//! The deployment manifests in `conf/kubernetes/` are valid objects of
//! their kinds, the RBAC grants only reads of what the agent reads, and
//! the DaemonSet runs the installer and the agent with the mounts they
//! need.

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

fn documents() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/kubernetes/sluice.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn of_kind(kind: &str) -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn rbac_reads_only_what_the_agent_reads() {
    let role: ClusterRole = serde_json::from_value(of_kind("ClusterRole")).unwrap();
    let mut granted = Vec::new();
    for r in role.rules.unwrap() {
        let groups = r.api_groups.clone().unwrap();
        if groups == ["events.k8s.io"] {
            // The one write: events on its node.
            assert_eq!(r.verbs, ["create", "patch"]);
            assert_eq!(r.resources.clone().unwrap(), ["events"]);
            continue;
        }
        assert_eq!(r.verbs, ["get", "list", "watch"], "read-only");
        for g in groups {
            for res in r.resources.clone().unwrap() {
                granted.push(format!("{g}/{res}"));
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "/namespaces",
            "/nodes",
            "/pods",
            "/services",
            "discovery.k8s.io/endpointslices",
            "networking.k8s.io/networkpolicies"
        ]
    );
    let binding = of_kind("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "sluice");
    assert_eq!(
        binding["subjects"][0]["name"],
        of_kind("ServiceAccount")["metadata"]["name"]
    );
}

#[test]
fn the_daemonset_installs_then_runs_the_agent() {
    let ds: DaemonSet = serde_json::from_value(of_kind("DaemonSet")).unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("sluice"));
    assert_eq!(pod.host_network, Some(true));
    let init = &pod.init_containers.unwrap()[0];
    let cmd = init.command.clone().unwrap();
    assert!(cmd[0].ends_with("/sluice-install"), "{cmd:?}");
    let mounts = |c: &k8s_openapi::api::core::v1::Container| -> Vec<String> {
        c.volume_mounts.iter().flatten().map(|m| m.mount_path.clone()).collect()
    };
    for (flag, dir) in [
        ("--cni-bin-dir", "/host/opt/cni/bin"),
        ("--cni-conf-dir", "/host/etc/cni/net.d"),
    ] {
        let at = cmd.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag}"));
        assert_eq!(cmd[at + 1], dir);
        assert!(mounts(init).contains(&dir.to_string()), "{dir} mounted");
    }
    let agent = &pod.containers[0];
    // Not privileged: named capabilities, a memory limit, metrics on the
    // node's address rather than every address of the host network.
    let sec = agent.security_context.clone().unwrap();
    assert_eq!(sec.privileged, Some(false));
    let caps = sec.capabilities.unwrap();
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    assert!(caps.add.unwrap().contains(&"BPF".to_string()));
    let limits = agent.resources.clone().unwrap().limits.unwrap();
    assert!(limits.contains_key("memory"), "a memory limit");
    let args = agent.args.clone().unwrap();
    let at = args.iter().position(|a| a == "--metrics").expect("--metrics");
    assert_eq!(args[at + 1], "$(NODE_IP):9464");
    let node_ip = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_IP")
        .expect("NODE_IP");
    assert_eq!(
        node_ip
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "status.hostIP"
    );
    // The API server's own address, from the config map when set: no
    // kube-proxy translates the kubernetes Service for the agent.
    let api = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SLUICE_API_SERVER")
        .expect("SLUICE_API_SERVER");
    let key = api.value_from.as_ref().unwrap().config_map_key_ref.as_ref().unwrap();
    assert_eq!(
        (key.name.as_str(), key.key.as_str(), key.optional),
        ("sluice-config", "api-server", Some(true))
    );
    let cmd = agent.command.clone().unwrap();
    assert!(
        cmd[0].ends_with("/sluice-agent") && cmd.contains(&"--kubernetes".to_string()),
        "{cmd:?}"
    );
    assert!(
        mounts(agent).contains(&"/run/sluice".to_string()),
        "the flow socket, for sluicectl on the host"
    );
    assert!(mounts(agent).contains(&"/sys/fs/bpf".to_string()), "the pinned maps");
    for dir in ["/var/lib/sluice", "/run/netns"] {
        let m = agent
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == dir)
            .unwrap_or_else(|| panic!("{dir} mounted: the endpoint GC needs records and namespaces"));
        assert_eq!(m.read_only, Some(true), "{dir} read only");
    }
    let volumes: Vec<String> = pod
        .volumes
        .unwrap()
        .iter()
        .map(|v| v.host_path.as_ref().unwrap().path.clone())
        .collect();
    assert!(volumes.contains(&"/sys/fs/bpf".to_string()) && volumes.contains(&"/etc/cni/net.d".to_string()));
}

// What the documents say of each other: volumes and mounts, `$(VAR)`
// references, the agent's command line (parsed by the agent's own parser),
// probes and ports against the addresses the agent serves on, and the
// image `scripts/image` tags.

fn pod_spec() -> PodSpec {
    let ds: DaemonSet = serde_json::from_value(of_kind("DaemonSet")).unwrap();
    ds.spec.unwrap().template.spec.unwrap()
}

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The command line with the kubelet's `$(VAR)` expansion, every variable
/// given a sample value; a reference to a variable the container does not
/// define stays as written, as the kubelet leaves it.
fn argv(c: &Container) -> Vec<String> {
    let defined: BTreeSet<String> = c.env.iter().flatten().map(|e| e.name.clone()).collect();
    let expand = |s: &String| {
        defined
            .iter()
            .fold(s.clone(), |s, v| s.replace(&format!("$({v})"), "10.0.0.7"))
    };
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(expand)
        .collect()
}

#[test]
fn mounts_volumes_and_variables_are_consistent() {
    let pod = pod_spec();
    let volumes: BTreeSet<&str> = pod.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    let mut used = BTreeSet::new();
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        let mut paths = BTreeSet::new();
        for mnt in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.contains(mnt.name.as_str()),
                "{}: volume {} is not defined",
                c.name,
                mnt.name
            );
            assert!(
                paths.insert(&mnt.mount_path),
                "{}: {} mounted twice",
                c.name,
                mnt.mount_path
            );
            used.insert(mnt.name.as_str());
        }
        for word in argv(c) {
            assert!(
                !word.contains("$("),
                "{}: {word} names a variable the container does not define",
                c.name
            );
        }
        // Every path argument is inside one of the container's mounts
        // (a path only the host has would not exist in the container).
        for w in argv(c).iter().filter(|w| w.starts_with("/host/")) {
            assert!(
                paths.iter().any(|p| w.starts_with(p.as_str())),
                "{}: {w} is not mounted",
                c.name
            );
        }
    }
    assert_eq!(used, volumes, "every volume is mounted somewhere");
    for v in pod.volumes.iter().flatten() {
        let host = v
            .host_path
            .as_ref()
            .expect("the DaemonSet's volumes are the node's paths");
        assert!(host.path.starts_with('/'), "{}: {}", v.name, host.path);
    }
}

/// `--flag VALUE` of a command line.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).map(|i| args[i + 1].as_str())
}

fn http_get(p: &Probe) -> (String, String, u16) {
    let g = p.http_get.as_ref().expect("an httpGet probe");
    let port = match &g.port {
        IntOrString::Int(n) => *n as u16,
        IntOrString::String(s) => panic!("probe port by name {s}: give the number"),
    };
    (
        g.host.clone().unwrap_or_default(),
        g.path.clone().unwrap_or_default(),
        port,
    )
}

#[test]
fn the_agent_command_line_parses_and_its_probes_reach_what_it_serves() {
    let pod = pod_spec();
    assert_eq!(pod.host_network, Some(true), "the agent is the node's");
    let agent = container(&pod, "agent");
    let args = argv(agent);
    assert_eq!(args[0], "/usr/local/bin/sluice-agent");
    let opts = sluice_agent::daemon::Options::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the agent refuses the manifest's command line: {e}"));
    assert!(opts.kubernetes && !opts.once && !opts.no_probes);

    // Probes: on the address the agent serves them on. A hostNetwork pod's
    // probe goes to the host, so the host must be the one the agent binds.
    let served = opts.probes;
    assert!(served.ip().is_loopback(), "probes stay on the node's loopback");
    let (host, path, port) = http_get(agent.liveness_probe.as_ref().expect("a liveness probe"));
    assert_eq!(
        (host.parse().ok(), port),
        (Some(served.ip()), served.port()),
        "liveness"
    );
    assert_eq!(path, "/healthz");
    let (host, path, port) = http_get(agent.readiness_probe.as_ref().expect("a readiness probe"));
    assert_eq!(
        (host.parse().ok(), port),
        (Some(served.ip()), served.port()),
        "readiness"
    );
    assert_eq!(path, "/readyz");
    // The paths are the ones the agent answers.
    let probes = sluice_agent::probes::Probes::new();
    for p in ["/healthz", "/readyz"] {
        assert_ne!(probes.answer(p).0, hyper::StatusCode::NOT_FOUND, "{p}");
    }
    // The list of policy namespaces is written where the host's CNI plugin
    // reads it: a host directory mounted at its parent.
    let dir = opts
        .policy_namespaces_file
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == dir)
        .unwrap_or_else(|| panic!("{dir} is not mounted from the host"));
    assert_ne!(mount.read_only, Some(true), "{dir} is written");
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
    assert_eq!(volume.host_path.as_ref().unwrap().path, dir, "the host's own {dir}");
    // The metrics port it declares is the one it serves.
    let metrics: SocketAddr = flag(&args, "--metrics").unwrap().parse().unwrap();
    let declared: Vec<i32> = agent.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(declared, [i32::from(metrics.port())]);
    assert!(
        !declared.contains(&i32::from(served.port())),
        "the probes are not advertised as a pod port"
    );
}

#[test]
fn the_install_container_and_the_image_match_the_build() {
    let pod = pod_spec();
    let install = container(&pod, "install");
    let args = argv(install);
    assert_eq!(args[0], "/usr/local/bin/sluice-install");
    assert!(flag(&args, "--cni-bin-dir").is_some() && flag(&args, "--cni-conf-dir").is_some());
    // The image scripts/image tags by default: sluice:<workspace version>.
    let version = env!("CARGO_PKG_VERSION");
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        assert_eq!(
            c.image.as_deref(),
            Some(format!("sluice:{version}").as_str()),
            "{}",
            c.name
        );
        let bin = argv(c)[0].rsplit('/').next().unwrap().to_string();
        let script = std::fs::read_to_string(workspace().join("scripts/image")).unwrap();
        let copied = script
            .lines()
            .find(|l| l.trim_start().starts_with("for b in sluice"))
            .expect("scripts/image's binary list");
        assert!(copied.split_whitespace().any(|w| w == bin), "{bin} is not in the image");
    }
}

//! The deployment manifests in `conf/kubernetes/` are valid objects of
//! their kinds, the RBAC grants only reads of what the agent reads, and
//! the DaemonSet runs the installer and the agent with the mounts they
//! need.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde_json::Value;
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

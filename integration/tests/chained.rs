//! The chained role: sluice as the second plugin of a conflist, behind
//! Debian's reference `macvlan` + `host-local` (and `ptp`), run by a
//! libcni-style runner.

use serde_json::{Value, json};
use sluice_integration::chain::Chain;
use sluice_integration::cni::Call;
use sluice_integration::datapath::RawPeer;
use sluice_integration::probe::{EchoServer, index_and_mac, netns_cookie, tcp_request};
use sluice_integration::services::Services;
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_integration::{
    bin_dir, cni_bin_dir, reference_plugins_present, require_reference_plugins, require_root, skip,
};

fn conflist(vpc: &Vpc, node: usize, version: &str) -> Value {
    vpc.chained_conflist(node, version)
}

fn host_local_leases(vpc: &Vpc) -> Vec<String> {
    let dir = vpc.data_dir.join("host-local").join(format!("{}-net", vpc.prefix));
    sluice_integration::dir_names(&dir)
        .into_iter()
        .filter(|n| n.starts_with("10."))
        .collect()
}

#[test]
fn chained_behind_reference_macvlan_and_host_local() {
    if !require_root("chained_behind_reference_macvlan_and_host_local") {
        return;
    }
    if !require_reference_plugins("chained_behind_reference_macvlan_and_host_local") {
        return;
    }
    for version in ["0.4.0", "1.0.0"] {
        let mut vpc = Vpc::new("ch", 2).unwrap();
        let mut chain0 = Chain::new(conflist(&vpc, 0, version), Some(vpc.node_name(0)));
        let mut chain1 = Chain::new(conflist(&vpc, 1, version), Some(vpc.node_name(1)));
        let a = vpc.pod("a").unwrap();
        let b = vpc.pod("b").unwrap();
        let ra = chain0
            .add("pa", &vpc.pods[a].path().display().to_string(), "eth0")
            .unwrap();
        let rb = chain1
            .add("pb", &vpc.pods[b].path().display().to_string(), "eth0")
            .unwrap();
        assert_eq!(ra["cniVersion"], version);
        // sluice passes the result on, with the interface's real MAC and sandbox.
        let iface = ra["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "eth0")
            .unwrap();
        assert_eq!(iface["sandbox"], vpc.pods[a].path().display().to_string());
        let mac = iface["mac"].as_str().unwrap();
        assert!(vpc.pods[a].ip(&["link", "show", "eth0"]).unwrap().contains(mac));
        if version == "0.4.0" {
            assert_eq!(ra["ips"][0]["version"], "4", "0.4.0 result shape kept");
        }
        let eps = vpc.endpoints(0);
        assert_eq!(eps, vec!["pa:eth0.json".to_string()]);
        let rec: Value = serde_json::from_slice(
            &std::fs::read(
                vpc.data_dir
                    .join("n0/endpoints")
                    .join(format!("{}-net", vpc.prefix))
                    .join("pa:eth0.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(rec["mac"], mac);
        assert_eq!(rec["role"], "chained");
        assert_eq!(rec["linkKind"], "macvlan");
        assert_eq!(rec["ips"][0], format!("{}/16", result_ip(&ra)));

        let _s = EchoServer::start(&vpc.pods[b], 7100, "b").unwrap();
        assert_eq!(
            tcp_request(&vpc.pods[a], format!("{}:7100", result_ip(&rb)).parse().unwrap(), "hi").unwrap(),
            "b:hi"
        );

        chain0
            .check("pa", &vpc.pods[a].path().display().to_string(), "eth0")
            .unwrap();
        // Someone removes the address behind everyone's back: sluice's CHECK notices.
        let addr = format!("{}/16", result_ip(&ra));
        vpc.pods[a].ip(&["addr", "del", &addr, "dev", "eth0"]).unwrap();
        let err = chain0
            .check("pa", &vpc.pods[a].path().display().to_string(), "eth0")
            .unwrap_err();
        assert_eq!(err.plugin, "macvlan", "macvlan checks first");
        vpc.pods[a].ip(&["addr", "add", &addr, "dev", "eth0"]).unwrap();

        chain0
            .del("pa", &vpc.pods[a].path().display().to_string(), "eth0")
            .unwrap();
        chain1
            .del("pb", &vpc.pods[b].path().display().to_string(), "eth0")
            .unwrap();
        assert!(vpc.endpoints(0).is_empty() && vpc.endpoints(1).is_empty());
        assert!(host_local_leases(&vpc).is_empty(), "{:?}", host_local_leases(&vpc));
        assert_eq!(vpc.pods[a].link_names().unwrap(), vec!["lo"]);
    }
}

/// Real first plugins send thin results (Terway: no MAC, the container id
/// where the netns path belongs). sluice trusts the namespace and fills in.
#[test]
fn chained_fills_in_a_thin_prev_result_and_verifies_it() {
    if !require_root("chained_fills_in_a_thin_prev_result_and_verifies_it") {
        return;
    }
    let mut vpc = Vpc::new("th", 1).unwrap();
    let p = vpc.pod("p").unwrap();
    let pod = &vpc.pods[p];
    vpc.nodes[0]
        .ip(&[
            "link", "add", "tmp0", "link", "eth0", "type", "macvlan", "mode", "bridge",
        ])
        .unwrap();
    vpc.nodes[0].ip(&["link", "set", "tmp0", "netns", &pod.name]).unwrap();
    pod.ip(&["link", "set", "tmp0", "name", "eth0"]).unwrap();
    pod.ip(&["addr", "add", "10.244.1.50/16", "dev", "eth0"]).unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    let real_mac = pod.ip(&["link", "show", "eth0"]).unwrap();

    let conf = |prev: Value| {
        json!({"cniVersion": "1.0.0", "name": "thin", "type": "sluice",
               "dataDir": vpc.data_dir.join("n0"), "datapath": vpc.datapath(0), "prevResult": prev})
    };
    let call = |cmd: &str, cid: &str, c: &Value| {
        Call::new(&cni_bin_dir().join("sluice"), Some(&vpc.nodes[0].name))
            .standard(cmd, cid, &vpc.pods[p].path().display().to_string(), "eth0")
            .run(&serde_json::to_vec(c).unwrap())
    };
    let thin = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "0123456789abcdef"}],
        "ips": [{"address": "10.244.1.50/16", "gateway": "10.244.0.1", "interface": 0}],
        "vendorExtension": {"eniId": "eni-123"}});
    let r = call("ADD", "c1", &conf(thin.clone())).expect_ok("ADD").json();
    let mac = r["interfaces"][0]["mac"].as_str().unwrap();
    assert!(
        !mac.is_empty() && real_mac.contains(mac),
        "MAC filled in from the kernel"
    );
    assert_eq!(r["interfaces"][0]["sandbox"], vpc.pods[p].path().display().to_string());
    assert_eq!(r["vendorExtension"]["eniId"], "eni-123", "unknown fields passed on");
    call("CHECK", "c1", &conf(r.clone())).expect_ok("CHECK");
    // sluice's own CHECK (no plugin before it to catch it): the address is gone.
    vpc.pods[p]
        .ip(&["addr", "del", "10.244.1.50/16", "dev", "eth0"])
        .unwrap();
    let out = call("CHECK", "c1", &conf(r.clone()));
    assert_eq!(out.error_code(), 103, "{}", out.stdout);
    assert!(out.stdout.contains("10.244.1.50"), "{}", out.stdout);
    vpc.pods[p]
        .ip(&["addr", "add", "10.244.1.50/16", "dev", "eth0"])
        .unwrap();
    call("DEL", "c1", &conf(r.clone())).expect_ok("DEL");
    assert_eq!(
        call("CHECK", "c1", &conf(r)).error_code(),
        103,
        "no endpoint record after DEL"
    );

    // The result claims an address the interface does not have.
    let mut lying = thin.clone();
    lying["ips"][0]["address"] = json!("10.244.1.99/16");
    let out = call("ADD", "c2", &conf(lying));
    assert_eq!(out.error_code(), 103, "{}", out.stdout);
    assert!(out.stdout.contains("10.244.1.99"));
    // No interface at all under CNI_IFNAME.
    let mut wrong_if = thin.clone();
    wrong_if["interfaces"][0]["name"] = json!("eth0");
    vpc.pods[p].ip(&["link", "set", "eth0", "name", "other0"]).unwrap();
    assert_eq!(call("ADD", "c3", &conf(wrong_if)).error_code(), 102);
    // No prevResult in the chained role.
    let out = Call::new(&cni_bin_dir().join("sluice"), Some(&vpc.nodes[0].name))
        .standard("ADD", "c4", &vpc.pods[p].path().display().to_string(), "eth0")
        .run(br#"{"cniVersion":"1.0.0","name":"thin","type":"sluice"}"#);
    assert_eq!(out.error_code(), 7);
    assert!(vpc.endpoints(0).is_empty(), "failed ADDs recorded nothing");
}

/// `sluice-install` on a node whose network is the reference macvlan +
/// host-local: the conflist it writes chains sluice last under the same
/// network name, works for a real pod (sluice records and attaches it), and
/// leaves the node's own file as it was; `--uninstall` removes only ours.
#[test]
fn installer_chains_sluice_behind_the_nodes_network() {
    let test = "installer_chains_sluice_behind_the_nodes_network";
    if !require_root(test) {
        return;
    }
    if !require_reference_plugins(test) {
        return;
    }
    let mut vpc = Vpc::new("in", 1).unwrap();
    let full = conflist(&vpc, 0, "1.0.0");
    let mut node_own = full.clone();
    let sluice_entry = node_own["plugins"].as_array_mut().unwrap().pop().unwrap();
    let host = tempfile::tempdir().unwrap();
    let (bin, conf) = (host.path().join("opt/cni/bin"), host.path().join("etc/cni/net.d"));
    std::fs::create_dir_all(&conf).unwrap();
    let own_text = serde_json::to_string_pretty(&node_own).unwrap();
    std::fs::write(conf.join("10-vpc.conflist"), &own_text).unwrap();
    let out = std::process::Command::new(bin_dir().join("sluice-install"))
        .arg("--from")
        .arg(cni_bin_dir())
        .arg("--cni-bin-dir")
        .arg(&bin)
        .arg("--cni-conf-dir")
        .arg(&conf)
        .args(["--plugin", &sluice_entry.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for b in ["sluice", "sluice-ipam"] {
        assert_eq!(
            std::fs::read(bin.join(b)).unwrap(),
            std::fs::read(cni_bin_dir().join(b)).unwrap(),
            "{b} installed"
        );
    }
    let installed: Value =
        serde_json::from_str(&std::fs::read_to_string(conf.join("00-sluice.conflist")).unwrap()).unwrap();
    assert_eq!(installed, full, "the node's network with sluice last");
    assert_eq!(std::fs::read_to_string(conf.join("10-vpc.conflist")).unwrap(), own_text);

    let mut chain = Chain::new(installed, Some(vpc.node_name(0)));
    let p = vpc.pod("a").unwrap();
    let netns = vpc.pods[p].path().display().to_string();
    chain.add("pa", &netns, "eth0").unwrap();
    assert_eq!(
        vpc.endpoints(0),
        vec!["pa:eth0.json".to_string()],
        "sluice ran for the pod"
    );
    assert_eq!(
        vpc.pinned_links(0),
        vec!["pa:eth0".to_string()],
        "and attached its programs"
    );
    chain.del("pa", &netns, "eth0").unwrap();
    assert!(vpc.endpoints(0).is_empty() && vpc.pinned_links(0).is_empty());

    let out = std::process::Command::new(bin_dir().join("sluice-install"))
        .arg("--cni-conf-dir")
        .arg(&conf)
        .arg("--uninstall")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!conf.join("00-sluice.conflist").exists());
    assert_eq!(std::fs::read_to_string(conf.join("10-vpc.conflist")).unwrap(), own_text);
}

/// Behind the reference `ptp` plugin (a veth pair, the host side holding
/// the range's gateway address and a route per pod), the host path is the
/// first plugin's: the node's probes reach the pod through sluice's
/// programs (its ingress tracks them), and a pod isolated by a
/// NetworkPolicy still answers its node, since the agent counts every
/// address of the node's namespace (the veth's too) as the node's, while
/// another pod is still held to the policy.
#[test]
fn behind_ptp_the_node_probes_its_pods_through_sluice() {
    if !require_root("behind_ptp_the_node_probes_its_pods_through_sluice") {
        return;
    }
    if !reference_plugins_present() || !std::path::Path::new("/usr/lib/cni/ptp").exists() {
        skip(
            "behind_ptp_the_node_probes_its_pods_through_sluice",
            "/usr/lib/cni/ptp or host-local missing (apt containernetworking-plugins)",
        );
        return;
    }
    let mut vpc = Vpc::new("ptp", 1).unwrap();
    let list = json!({
        "cniVersion": "1.0.0",
        "name": format!("{}-net", vpc.prefix),
        "plugins": [
            {"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                                      "dataDir": vpc.data_dir.join("host-local")}},
            {"type": "sluice", "dataDir": vpc.data_dir.join("n0"), "logFile": vpc.data_dir.join("sluice.log"),
             "logLevel": "debug", "datapath": vpc.datapath(0)}
        ]
    });
    let mut chain = Chain::new(list, Some(vpc.nodes[0].name.clone()));
    let mut pods = Vec::new();
    for name in ["p1", "p2"] {
        let p = vpc.pod(name).unwrap();
        let r = chain
            .add(name, &vpc.pods[p].path().display().to_string(), "eth0")
            .unwrap_or_else(|e| panic!("ADD {name}: {e:?}"));
        pods.push((p, result_ip(&r)));
    }
    let _servers: Vec<EchoServer> = pods
        .iter()
        .zip(["p1", "p2"])
        .map(|((p, _), tag)| EchoServer::start(&vpc.pods[*p], 7000, tag).unwrap())
        .collect();
    let to = |ip: &str| -> std::net::SocketAddr { format!("{ip}:7000").parse().unwrap() };
    assert_eq!(tcp_request(&vpc.nodes[0], to(&pods[0].1), "probe").unwrap(), "p1:probe");
    // The probe went through sluice's ingress: the pod's entry of the flow,
    // opened by the node.
    let p1: std::net::IpAddr = pods[0].1.parse().unwrap();
    let inbound = vpc
        .maps(0)
        .unwrap()
        .ct()
        .entries()
        .unwrap()
        .into_iter()
        .filter(|(k, v)| {
            k.saddr == sluice_tc_datapath::layout::addr(p1) && v.flags & sluice_tc_datapath::layout::CT_F_INBOUND != 0
        })
        .count();
    assert!(inbound >= 1, "the node's probe is tracked at the pod's ingress");

    let svcs = Services::new(&vpc).unwrap();
    let manifests = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: t, labels: {{kubernetes.io/metadata.name: t}}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: p1, namespace: t, labels: {{app: p1}}}}\n\
         spec: {{nodeName: {}, containers: [{{name: c, image: x}}]}}\n\
         status: {{phase: Running, podIP: {}, podIPs: [{{ip: {}}}]}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: isolate, namespace: t}}\n\
         spec: {{podSelector: {{matchLabels: {{app: p1}}}}, policyTypes: [Ingress]}}\n",
        vpc.node_name(0),
        pods[0].1,
        pods[0].1
    );
    svcs.put_manifest(&vpc, "isolation", &manifests).unwrap();
    assert_eq!(
        tcp_request(&vpc.nodes[0], to(&pods[0].1), "again").unwrap(),
        "p1:again",
        "the node still probes its isolated pod"
    );
    assert!(
        tcp_request(&vpc.pods[pods[1].0], to(&pods[0].1), "x").is_err(),
        "another pod is held to the policy"
    );
    for (i, (p, _)) in pods.iter().enumerate() {
        chain
            .del(["p1", "p2"][i], &vpc.pods[*p].path().display().to_string(), "eth0")
            .unwrap();
    }
}

/// Behind the reference macvlan every pod's interface is made inside the
/// pod, so every one is number 2 and the index tells no pods apart; a MAC
/// is anyone's to write with `CAP_NET_RAW`. Where the kernel lets tc
/// programs read a packet's socket's namespace, the source check holds the
/// socket to the pod's: b's packet socket cannot send as a.
#[test]
fn behind_reference_macvlan_a_pod_cannot_send_as_another() {
    let test = "behind_reference_macvlan_a_pod_cannot_send_as_another";
    if !require_root(test) || !require_reference_plugins(test) {
        return;
    }
    if !sluice_tc_datapath::loader::socket_netns_cookie_readable() {
        skip(
            test,
            "this kernel does not let tc programs read a socket's namespace (bpf_get_netns_cookie, added in 2025); \
             the main role's own interface indexes are checked by datapath_attach.rs",
        );
        return;
    }
    let mut vpc = Vpc::new("chs", 1).unwrap();
    let mut chain = Chain::new(conflist(&vpc, 0, "1.0.0"), Some(vpc.node_name(0)));
    let pods = ["a", "b", "c"].map(|n| vpc.pod(n).unwrap());
    let ips: Vec<std::net::Ipv4Addr> = pods
        .iter()
        .zip(["sa", "sb", "sc"])
        .map(|(&p, cid)| {
            let r = chain
                .add(cid, &vpc.pods[p].path().display().to_string(), "eth0")
                .unwrap();
            result_ip(&r).parse().unwrap()
        })
        .collect();
    let [(index_a, mac_a), (index_b, mac_b), (_, mac_c)] = pods.map(|p| index_and_mac(&vpc.pods[p], "eth0").unwrap());
    assert_eq!(
        index_a, index_b,
        "the premise: the first plugin numbers every pod's interface alike"
    );
    let maps = vpc.maps(0).unwrap();
    for (&p, ip) in pods.iter().zip(&ips) {
        let ep = maps.endpoints().get(std::net::IpAddr::V4(*ip)).unwrap().unwrap();
        assert_eq!(
            ep.netns_cookie,
            netns_cookie(&vpc.pods[p]).unwrap(),
            "the entry names the pod's namespace"
        );
    }

    let [a, b, c] = [0, 1, 2].map(|i| RawPeer {
        pod: pods[i],
        ip: ips[i],
        mac: [mac_a, mac_b, mac_c][i],
    });
    vpc.only_own_frames_leave(0, &b, &a, &c).unwrap();
    for (&p, cid) in pods.iter().zip(["sa", "sb", "sc"]) {
        chain
            .del(cid, &vpc.pods[p].path().display().to_string(), "eth0")
            .unwrap();
    }
}

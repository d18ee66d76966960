//! A real container runtime as the CNI client: podman 4.3 with its CNI
//! backend runs a container on a sluice network in a simulated node. ADD at
//! start, the container has its address and reaches another pod, DEL at exit
//! leaves no link, lease or endpoint record.

use serde_json::json;
use sluice_integration::podman::{self, Podman};
use sluice_integration::probe::EchoServer;
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_integration::{bin_dir, require_root};

#[test]
fn podman_runs_a_container_on_a_sluice_network() {
    if !require_root("podman_runs_a_container_on_a_sluice_network") {
        return;
    }
    if let Some(why) = podman::missing() {
        sluice_integration::skip("podman_runs_a_container_on_a_sluice_network", &why);
        return;
    }
    let mut vpc = Vpc::new("pm", 1).unwrap();
    let work = vpc.data_dir.join("podman");
    let rootfs = work.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static installed");
    for applet in ["sh", "ip", "nc", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let net_d = work.join("net.d");
    std::fs::create_dir_all(&net_d).unwrap();
    let network = format!("{}-net", vpc.prefix);
    let mut plugin = vpc.main_conf(0, "1.0.0");
    let obj = plugin.as_object_mut().unwrap();
    obj.remove("cniVersion");
    obj.remove("name");
    let conflist = json!({"cniVersion": "1.0.0", "name": network, "plugins": [plugin.clone()]});
    std::fs::write(
        net_d.join(format!("{network}.conflist")),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();
    let podman = Podman::new(
        &work,
        &format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n",
            bin_dir().display(),
            net_d.display()
        ),
    )
    .unwrap();

    // Another pod on the same node, made directly, with an echo server.
    let srv = vpc.pod("srv").unwrap();
    let mut srv_conf = plugin.clone();
    srv_conf["cniVersion"] = json!("1.0.0");
    srv_conf["name"] = json!(network);
    let srv_ip = result_ip(
        &vpc.sluice(0, "ADD", "srv", srv, &srv_conf)
            .expect_ok("server ADD")
            .json(),
    );
    let _echo = EchoServer::start(&vpc.pods[srv], 7300, "srv").unwrap();
    let links_before = vpc.nodes[0].link_names().unwrap();

    let out = podman
        .command(Some(&vpc.nodes[0].path()))
        .args(["run", "--rm", "--network", &network, "--rootfs"])
        .arg(&rootfs)
        .args([
            "/bin/sh",
            "-c",
            &format!("ip -o -4 addr show eth0; echo hello | nc -w 3 {srv_ip} 7300; echo; echo exit-ok"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "podman failed: {stdout}\n{stderr}");
    assert!(
        stdout.contains("inet 10.244.1."),
        "container got an address from node 0's range: {stdout}"
    );
    assert!(
        stdout.contains("srv:hello"),
        "container reached the other pod: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("exit-ok"));

    // DEL ran at exit: only the server pod remains in the stores, node links as before.
    assert_eq!(vpc.leases(0), vec![srv_ip.clone()]);
    assert_eq!(vpc.endpoints(0), vec!["srv:eth0.json".to_string()]);
    assert_eq!(vpc.nodes[0].link_names().unwrap(), links_before);
    let log = std::fs::read_to_string(vpc.data_dir.join("sluice.log")).unwrap_or_default();
    assert!(
        log.contains("pod interface ready") && log.contains("pod interface removed"),
        "ADD and DEL were called: {log}"
    );
    vpc.sluice(0, "DEL", "srv", srv, &srv_conf).expect_ok("server DEL");
}

//! A simulated VPC: one namespace holding a bridge (the VPC fabric and its
//! router at 10.244.0.1), and "node" namespaces whose `eth0` uplink (a veth
//! into the bridge) plays the node's ENI. Pods are namespaces of their own.
//! Everything is deleted when the Vpc is dropped.

use crate::bpffs::Bpffs;
use crate::netns::Netns;
use anyhow::Result;
use serde_json::{Value, json};
use std::path::PathBuf;

pub const POD_SUBNET: &str = "10.244.0.0/16";
pub const VPC_GATEWAY: &str = "10.244.0.1";
/// The VPC router's address on the node subnet, off the pod subnet: what a
/// pod reaches through its default route ("the outside").
pub const VPC_ROUTER: &str = "172.31.0.1";

/// The IPv6 pod subnet of dual-stack tests, and its gateway (an address
/// a test gives the fabric when the pods must route through it).
pub const POD_SUBNET6: &str = "fd00:244::/64";
pub const VPC_GATEWAY6: &str = "fd00:244::1";

/// Node `i`'s own address on its uplink.
pub fn node_ip(i: usize) -> String {
    format!("172.31.0.{}", 11 + i)
}

pub struct Vpc {
    pub prefix: String,
    pub data_dir: PathBuf,
    // Declared before `fabric` so nodes and pods go first when dropped.
    pub pods: Vec<Netns>,
    pub nodes: Vec<Netns>,
    /// Each node's own bpffs: its datapath maps, programs and links.
    pub bpffs: Vec<Bpffs>,
    pub fabric: Netns,
}

impl Vpc {
    pub fn new(tag: &str, nodes: usize) -> Result<Vpc> {
        let prefix = crate::unique_prefix(tag);
        let fabric = Netns::new(&format!("{prefix}-vpc"))?;
        fabric.ip(&["link", "add", "br0", "type", "bridge"])?;
        fabric.ip(&["link", "set", "br0", "up"])?;
        fabric.ip(&["addr", "add", &format!("{VPC_GATEWAY}/16"), "dev", "br0"])?;
        fabric.ip(&["addr", "add", &format!("{VPC_ROUTER}/16"), "dev", "br0"])?;
        // The fabric is the VPC router: it forwards what is sent to the
        // gateway's MAC, even back into the same subnet, without redirects.
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.br0.send_redirects", "0"),
        ] {
            let out = fabric.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
            anyhow::ensure!(out.status.success(), "sysctl {key} in the fabric namespace failed");
        }
        let data_dir = std::env::temp_dir().join(&prefix);
        let mut vpc = Vpc {
            prefix,
            data_dir,
            pods: Vec::new(),
            nodes: Vec::new(),
            bpffs: Vec::new(),
            fabric,
        };
        for i in 0..nodes {
            vpc.add_node(i)?;
        }
        Ok(vpc)
    }

    fn add_node(&mut self, i: usize) -> Result<()> {
        let node = Netns::new(&format!("{}-n{i}", self.prefix))?;
        let port = format!("n{i}");
        self.fabric.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node.name,
        ])?;
        self.fabric.ip(&["link", "set", &port, "master", "br0", "up"])?;
        node.ip(&["link", "set", "eth0", "up"])?;
        node.ip(&["addr", "add", &format!("{}/16", node_ip(i)), "dev", "eth0"])?;
        self.nodes.push(node);
        self.bpffs.push(Bpffs::new(&format!("n{i}"))?);
        Ok(())
    }

    /// The routes a VPC route table holds for routed pod networking (ipvlan
    /// L3, whose pod addresses answer no ARP, so the fabric cannot find them
    /// by neighbour discovery): each node's share of the pod subnet via the
    /// node, and each node's default route via the VPC router, which the
    /// parent's routing takes for what leaves its L3 pods.
    pub fn route_pod_ranges(&self) -> Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            node.ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])?;
            self.fabric
                .ip(&["route", "add", &format!("10.244.{}.0/24", i + 1), "via", &node_ip(i)])?;
        }
        Ok(())
    }

    /// Another uplink on node `i`, to play a second ENI (for the eni kind).
    pub fn add_eni(&self, node: usize, name: &str) -> Result<String> {
        let port = format!("e{node}{name}");
        self.fabric.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            name,
            "netns",
            &self.nodes[node].name,
        ])?;
        self.fabric.ip(&["link", "set", &port, "master", "br0", "up"])?;
        let mac = self.nodes[node].ip(&["-o", "link", "show", name])?;
        let mac = mac
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        Ok(mac)
    }

    /// A vSwitch of its own: a bridge in the fabric whose router address is
    /// `gw_cidr`, answering ARP only for its own address on its own port
    /// (`arp_ignore=1`) and routing between vSwitches, as a VPC does. An
    /// address used on the wrong vSwitch gets no traffic back.
    pub fn add_vswitch(&self, name: &str, gw_cidr: &str) -> Result<()> {
        self.fabric.ip(&["link", "add", name, "type", "bridge"])?;
        self.fabric.ip(&["link", "set", name, "up"])?;
        self.fabric.ip(&["addr", "add", gw_cidr, "dev", name])?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.arp_ignore", "1"),
            (&format!("net.ipv4.conf.{name}.arp_ignore"), "1"),
        ] {
            let out = self.fabric.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
            anyhow::ensure!(out.status.success(), "sysctl {key} in the fabric namespace failed");
        }
        Ok(())
    }

    /// Another ENI on node `node`, plugged into the fabric bridge `vswitch`
    /// (`br0` is the default one); returns its MAC.
    pub fn add_eni_on(&self, node: usize, name: &str, vswitch: &str) -> Result<String> {
        let mac = self.add_eni(node, name)?;
        self.fabric
            .ip(&["link", "set", &format!("e{node}{name}"), "master", vswitch])?;
        self.nodes[node].ip(&["link", "set", name, "up"])?;
        Ok(mac)
    }

    /// A new pod namespace; returns its index in `pods`.
    pub fn pod(&mut self, name: &str) -> Result<usize> {
        let ns = Netns::new(&format!("{}-{name}", self.prefix))?;
        self.pods.push(ns);
        Ok(self.pods.len() - 1)
    }

    /// A new pod namespace holding `eth0` (a veth) at 10.244.1.40/24, as
    /// the plugin before sluice in a chain leaves it; its index in `pods`.
    pub fn pod_with_eth0(&mut self, name: &str) -> Result<usize> {
        let p = self.pod(name)?;
        self.pods[p].ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])?;
        self.pods[p].ip(&["addr", "add", "10.244.1.40/24", "dev", "eth0"])?;
        Ok(p)
    }

    /// A host outside the cluster on the VPC fabric (a client of NodePorts
    /// and load balancers): namespace `<prefix>-<name>` whose `eth0` is on
    /// the fabric's bridge at `addr` (CIDR), with the VPC router as its
    /// default gateway. Deleted with the VPC.
    pub fn external_host(&mut self, name: &str, addr: &str) -> Result<usize> {
        let ns = Netns::new(&format!("{}-{name}", self.prefix))?;
        let port = format!("x{}", self.pods.len());
        self.fabric.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        self.fabric.ip(&["link", "set", &port, "master", "br0", "up"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["addr", "add", addr, "dev", "eth0"])?;
        ns.ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])?;
        // Kept with the pods: dropped before the fabric.
        self.pods.push(ns);
        Ok(self.pods.len() - 1)
    }

    /// What netfilter holds in any namespace of this VPC's nodes and pods
    /// (nothing, where sluice kept it out).
    pub fn netfilter(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for ns in self.nodes.iter().chain(self.pods.iter()) {
            found.extend(ns.netfilter()?.into_iter().map(|l| format!("{}: {l}", ns.name)));
        }
        Ok(found)
    }

    /// Run the sluice binary in node `node`'s namespace, as the runtime there would.
    pub fn sluice(&self, node: usize, cmd: &str, cid: &str, pod: usize, conf: &Value) -> crate::cni::CniOutput {
        let bin = crate::cni_bin_dir().join("sluice");
        let netns = self.pods[pod].path();
        crate::cni::Call::new(&bin, Some(&self.nodes[node].name))
            .standard(cmd, cid, &netns.display().to_string(), "eth0")
            .run(&serde_json::to_vec(conf).unwrap())
    }

    pub fn node_name(&self, i: usize) -> String {
        self.nodes[i].name.clone()
    }

    /// Node `i`'s share of the pod subnet, as host-local/sluice-ipam ranges.
    pub fn ranges(&self, node: usize) -> Value {
        json!([[{
            "subnet": POD_SUBNET,
            "rangeStart": format!("10.244.{}.2", node + 1),
            "rangeEnd": format!("10.244.{}.250", node + 1),
            "gateway": VPC_GATEWAY
        }]])
    }

    /// The sluice main-role config for node `i` with a macvlan on its uplink.
    pub fn main_conf(&self, node: usize, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": format!("{}-net", self.prefix),
            "type": "sluice",
            "link": {"kind": "macvlan", "parent": "eth0", "mode": "bridge"},
            "ipam": {
                "type": "sluice-ipam",
                "ranges": self.ranges(node),
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.data_dir.join(format!("ipam-n{node}"))
            },
            "dataDir": self.data_dir.join(format!("n{node}")),
            "logFile": self.data_dir.join("sluice.log"),
            "logLevel": "debug",
            "datapath": self.datapath(node)
        })
    }

    /// The main-role config for node `i`, dual stack: node `i`'s share of
    /// the IPv6 pod subnet too (fd00:244::<i+1>:2 onwards), both families'
    /// default routes via the VPC gateways.
    pub fn dual_stack_conf(&self, node: usize) -> Value {
        let mut c = self.main_conf(node, "1.1.0");
        let mut ranges = self.ranges(node);
        ranges.as_array_mut().expect("ranges are a list").push(json!([{
            "subnet": POD_SUBNET6,
            "rangeStart": format!("fd00:244::{}:2", node + 1),
            "rangeEnd": format!("fd00:244::{}:ff", node + 1),
            "gateway": VPC_GATEWAY6,
        }]));
        c["ipam"]["ranges"] = ranges;
        c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
        c
    }

    /// The chained form for node `i`: the reference macvlan + host-local
    /// make the interface, sluice follows.
    pub fn chained_conflist(&self, node: usize, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": format!("{}-net", self.prefix),
            "plugins": [
                {"type": "macvlan", "master": "eth0", "mode": "bridge",
                 "ipam": {"type": "host-local", "ranges": self.ranges(node), "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": self.data_dir.join("host-local")}},
                {"type": "sluice", "dataDir": self.data_dir.join(format!("n{node}")),
                 "logFile": self.data_dir.join("sluice.log"), "logLevel": "debug",
                 "datapath": self.datapath(node)}
            ]
        })
    }

    /// Node `i`'s `"datapath"` config section (its private bpffs).
    pub fn datapath(&self, node: usize) -> Value {
        self.bpffs[node].datapath()
    }

    /// The leases in node `i`'s sluice-ipam pool.
    pub fn leases(&self, node: usize) -> Vec<String> {
        let net = format!("{}-net", self.prefix);
        let p = self
            .data_dir
            .join(format!("ipam-n{node}"))
            .join(net)
            .join("leases.json");
        match std::fs::read(&p) {
            Ok(b) => {
                let v: Value = serde_json::from_slice(&b).expect("leases.json is JSON");
                v["leases"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Endpoint records on node `i`.
    pub fn endpoints(&self, node: usize) -> Vec<String> {
        let dir = self
            .data_dir
            .join(format!("n{node}"))
            .join("endpoints")
            .join(format!("{}-net", self.prefix));
        crate::dir_names(&dir)
    }
}

impl Drop for Vpc {
    fn drop(&mut self) {
        self.pods.clear();
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The pod's IPv4 address (without prefix) from an ADD result.
pub fn result_ip(result: &Value) -> String {
    result_addr(result, 0)
}

/// The `i`th address (without prefix) of an ADD result: 1 is a dual-stack
/// pod's IPv6 one.
pub fn result_addr(result: &Value, i: usize) -> String {
    result["ips"][i]["address"]
        .as_str()
        .expect("result has that many ips")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

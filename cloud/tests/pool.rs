//! The pool's logic against an in-memory cloud: targets, prefix
//! delegation and IPv6 (which the EC2 emulator the end-to-end tests use
//! does not model), release that never touches a leased address, leaked
//! ENIs, a dry subnet, the instance's limits. Leases are made by the real
//! IPAM pool reading the node file the pool writes.

use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::json;
use sluice_cloud::api::{Attachment, Cloud, CloudEni, CloudError, Grant, Instance, NewEni, Revoke, Subnet};
use sluice_cloud::metrics::PoolMetrics;
use sluice_cloud::pool::{TAG_CLUSTER, TAG_NODE};
use sluice_cloud::{EniPool, PoolConfig};
use sluice_ipam::eni::NodeEnis;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

#[derive(Default)]
struct State {
    enis: Vec<CloudEni>,
    next_eni: u32,
    next_v4: u32,
    next_prefix: u32,
    next_v6: u128,
    /// Addresses the subnet has left (None: plenty).
    subnet_left: Option<u32>,
    fail_attach: bool,
    /// Default m5.large.
    instance_type: Option<String>,
    calls: Vec<String>,
}

#[derive(Clone, Default)]
struct Fake(Rc<RefCell<State>>);

const INSTANCE: &str = "i-0fake";

fn dry(action: &str) -> CloudError {
    CloudError::Api {
        action: action.into(),
        status: 400,
        code: "InsufficientFreeAddressesInSubnet".into(),
        message: "no free addresses".into(),
    }
}

impl Fake {
    fn take_v4(&self, s: &mut State, n: u32, action: &str) -> Result<Vec<Ipv4Addr>, CloudError> {
        if let Some(left) = s.subnet_left {
            if left < n {
                return Err(dry(action));
            }
            s.subnet_left = Some(left - n);
        }
        Ok((0..n)
            .map(|_| {
                s.next_v4 += 1;
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 0)) + s.next_v4)
            })
            .collect())
    }

    fn calls(&self, action: &str) -> usize {
        self.0.borrow().calls.iter().filter(|c| *c == action).count()
    }

    fn eni_mut<T>(&self, id: &str, f: impl FnOnce(&mut CloudEni) -> T) -> Result<T, CloudError> {
        let mut s = self.0.borrow_mut();
        let e = s.enis.iter_mut().find(|e| e.id == id).ok_or_else(|| CloudError::Api {
            action: "x".into(),
            status: 400,
            code: "InvalidNetworkInterfaceID.NotFound".into(),
            message: id.into(),
        })?;
        Ok(f(e))
    }
}

impl Cloud for Fake {
    fn describe(&self) -> String {
        "fake".into()
    }
    async fn instance(&self) -> Result<Instance, CloudError> {
        self.0.borrow_mut().calls.push("DescribeInstances".into());
        Ok(Instance {
            id: INSTANCE.into(),
            instance_type: self
                .0
                .borrow()
                .instance_type
                .clone()
                .unwrap_or_else(|| "m5.large".into()),
            subnet_id: "subnet-a".into(),
            security_groups: vec!["sg-1".into()],
        })
    }
    async fn attached_enis(&self, instance: &str) -> Result<Vec<CloudEni>, CloudError> {
        let mut s = self.0.borrow_mut();
        s.calls.push("DescribeNetworkInterfaces".into());
        Ok(s.enis
            .iter()
            .filter(|e| e.attachment.as_ref().is_some_and(|a| a.instance_id == instance))
            .cloned()
            .collect())
    }
    async fn tagged_enis(&self, tags: &BTreeMap<String, String>) -> Result<Vec<CloudEni>, CloudError> {
        let mut s = self.0.borrow_mut();
        s.calls.push("DescribeNetworkInterfaces".into());
        Ok(s.enis
            .iter()
            .filter(|e| tags.iter().all(|(k, v)| e.tags.get(k) == Some(v)))
            .cloned()
            .collect())
    }
    async fn subnet(&self, id: &str) -> Result<Subnet, CloudError> {
        Ok(Subnet {
            id: id.into(),
            ipv4: "10.0.0.0/16".parse().unwrap(),
            ipv6: Some("2600:1f18:1:2::/64".parse().unwrap()),
        })
    }
    async fn create_eni(&self, new: &NewEni) -> Result<CloudEni, CloudError> {
        let mut s = self.0.borrow_mut();
        s.calls.push("CreateNetworkInterface".into());
        let primary = self.take_v4(&mut s, 1 + new.ipv4_count, "CreateNetworkInterface")?;
        s.next_eni += 1;
        let n = s.next_eni;
        let ipv6 = (0..new.ipv6_count)
            .map(|_| {
                s.next_v6 += 1;
                Ipv6Addr::from(u128::from("2600:1f18:1:2::100".parse::<Ipv6Addr>().unwrap()) + s.next_v6)
            })
            .collect();
        let eni = CloudEni {
            id: format!("eni-{n}"),
            mac: format!("02:00:00:00:00:{n:02x}"),
            subnet_id: new.subnet_id.clone(),
            status: "available".into(),
            attachment: None,
            primary_ip: Some(primary[0]),
            secondary_ipv4: primary[1..].to_vec(),
            ipv4_prefixes: Vec::new(),
            ipv6,
            tags: new.tags.clone(),
        };
        s.enis.push(eni.clone());
        Ok(eni)
    }
    async fn attach_eni(&self, eni: &str, instance: &str, device_index: u32) -> Result<String, CloudError> {
        self.0.borrow_mut().calls.push("AttachNetworkInterface".into());
        if self.0.borrow().fail_attach {
            return Err(CloudError::Api {
                action: "AttachNetworkInterface".into(),
                status: 400,
                code: "AttachmentLimitExceeded".into(),
                message: "no".into(),
            });
        }
        self.eni_mut(eni, |e| {
            e.status = "in-use".into();
            e.attachment = Some(Attachment {
                id: format!("attach-{}", e.id),
                instance_id: instance.into(),
                device_index,
            });
            format!("attach-{}", e.id)
        })
    }
    async fn detach_eni(&self, attachment: &str) -> Result<(), CloudError> {
        self.0.borrow_mut().calls.push("DetachNetworkInterface".into());
        let id = attachment.trim_start_matches("attach-").to_string();
        self.eni_mut(&id, |e| {
            e.attachment = None;
            e.status = "available".into();
        })
    }
    async fn delete_eni(&self, eni: &str) -> Result<(), CloudError> {
        let mut s = self.0.borrow_mut();
        s.calls.push("DeleteNetworkInterface".into());
        s.enis.retain(|e| e.id != eni);
        Ok(())
    }
    async fn grant(&self, eni: &str, grant: Grant) -> Result<(), CloudError> {
        let mut s = self.0.borrow_mut();
        s.calls.push("Assign".into());
        match grant {
            Grant::Ipv4(n) => {
                let ips = self.take_v4(&mut s, n, "AssignPrivateIpAddresses")?;
                s.enis
                    .iter_mut()
                    .find(|e| e.id == eni)
                    .unwrap()
                    .secondary_ipv4
                    .extend(ips);
            }
            Grant::Ipv4Prefixes(n) => {
                self.take_v4(&mut s, 16 * n, "AssignPrivateIpAddresses")?;
                let prefixes: Vec<Ipv4Network> = (0..n)
                    .map(|_| {
                        s.next_prefix += 1;
                        let base = u32::from(Ipv4Addr::new(10, 0, 128, 0)) + 16 * s.next_prefix;
                        Ipv4Network::new(Ipv4Addr::from(base), 28).unwrap()
                    })
                    .collect();
                s.enis
                    .iter_mut()
                    .find(|e| e.id == eni)
                    .unwrap()
                    .ipv4_prefixes
                    .extend(prefixes);
            }
            Grant::Ipv6(n) => {
                let ips: Vec<Ipv6Addr> = (0..n)
                    .map(|_| {
                        s.next_v6 += 1;
                        Ipv6Addr::from(u128::from("2600:1f18:1:2::100".parse::<Ipv6Addr>().unwrap()) + s.next_v6)
                    })
                    .collect();
                s.enis.iter_mut().find(|e| e.id == eni).unwrap().ipv6.extend(ips);
            }
        }
        Ok(())
    }
    async fn revoke(&self, eni: &str, revoke: &Revoke) -> Result<(), CloudError> {
        self.0.borrow_mut().calls.push("Unassign".into());
        self.eni_mut(eni, |e| match revoke {
            Revoke::Ipv4(ips) => e.secondary_ipv4.retain(|a| !ips.contains(a)),
            Revoke::Ipv4Prefixes(ps) => e.ipv4_prefixes.retain(|p| !ps.contains(p)),
            Revoke::Ipv6(ips) => e.ipv6.retain(|a| !ips.contains(a)),
        })
    }
}

struct Node {
    dir: tempfile::TempDir,
    macs: Rc<RefCell<HashSet<String>>>,
}

impl Node {
    fn new() -> Node {
        Node {
            dir: tempfile::tempdir().unwrap(),
            macs: Rc::default(),
        }
    }
    fn cfg(&self, extra: serde_json::Value) -> PoolConfig {
        let mut v = json!({
            "cloud": "ec2", "cluster": "c1",
            "nodeFile": self.dir.path().join("eni-pool.json"),
            "ipam": {"dataDir": self.dir.path().join("ipam"), "network": "pods"},
            "releaseAfterSeconds": 0.0, "resyncSeconds": 3600.0
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let c: PoolConfig = serde_json::from_value(v).unwrap();
        c.validate().unwrap();
        c
    }
    /// Every ENI the fake attached shows up on the node.
    fn plug_all(&self, fake: &Fake) {
        for e in &fake.0.borrow().enis {
            self.macs.borrow_mut().insert(e.mac.clone());
        }
    }
    fn file(&self) -> NodeEnis {
        serde_json::from_slice(&std::fs::read(self.dir.path().join("eni-pool.json")).unwrap()).unwrap()
    }
    fn published(&self) -> Vec<IpAddr> {
        self.file().enis.iter().flat_map(|e| e.ips.clone()).collect()
    }
    /// The CNI side: the real IPAM pool over the node file.
    fn ipam(&self) -> sluice_ipam::Pool {
        let cfg: sluice_ipam::IpamConfig = serde_json::from_value(json!({
            "type": "sluice-ipam",
            "eniPool": {"backend": "file", "path": self.dir.path().join("eni-pool.json")},
            "dataDir": self.dir.path().join("ipam")
        }))
        .unwrap();
        sluice_ipam::Pool::new("pods", &cfg).unwrap()
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn pool(fake: &Fake, node: &Node, cfg: PoolConfig) -> EniPool<Fake> {
    let macs = node.macs.clone();
    EniPool::start(
        fake.clone(),
        cfg,
        PoolMetrics::default(),
        Box::new(move || macs.borrow().clone()),
    )
    .await
    .unwrap()
}

fn all_assigned(fake: &Fake) -> HashSet<IpAddr> {
    let s = fake.0.borrow();
    s.enis
        .iter()
        .flat_map(|e| {
            e.secondary_ipv4
                .iter()
                .map(|a| IpAddr::V4(*a))
                .chain(e.ipv4_prefixes.iter().flat_map(|p| p.iter().map(IpAddr::V4)))
                .chain(e.ipv6.iter().map(|a| IpAddr::V6(*a)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn fills_to_target_and_publishes_enis_once_on_the_node() {
    let fake = Fake::default();
    let node = Node::new();
    block_on(async {
        let mut p = pool(&fake, &node, node.cfg(json!({"warmIpTarget": 12}))).await;
        let r = p.pass().await.unwrap();
        // m5.large: 3 ENIs of 10 addresses, the primary ENI not the pool's.
        assert_eq!((r.granted, r.enis_created, r.target), (12, 2, 12), "{r:?}");
        assert!(
            node.published().is_empty(),
            "no interface on the node yet: nothing published"
        );
        node.plug_all(&fake);
        let r = p.pass().await.unwrap();
        assert_eq!((r.granted, r.addresses), (0, 12), "{r:?}");
        assert_eq!(node.published().len(), 12);
        let tags = fake.0.borrow().enis[0].tags.clone();
        assert_eq!((tags[TAG_CLUSTER].as_str(), tags[TAG_NODE].as_str()), ("c1", INSTANCE));
        // A pass with nothing to do calls the cloud for nothing.
        let before = fake.0.borrow().calls.len();
        p.pass().await.unwrap();
        assert_eq!(fake.0.borrow().calls.len(), before);
        // Pods take addresses: the pool keeps 12 free above them.
        let ipam = node.ipam();
        for i in 0..5 {
            ipam.allocate(&format!("c{i}"), "eth0", &[]).unwrap();
        }
        let r = p.pass().await.unwrap();
        assert_eq!((r.in_use, r.target, r.granted), (5, 17, 5), "{r:?}");
    });
}

#[test]
fn surplus_goes_back_but_never_a_leased_address() {
    let fake = Fake::default();
    let node = Node::new();
    block_on(async {
        let mut p = pool(&fake, &node, node.cfg(json!({"minimumIpTarget": 18}))).await;
        p.pass().await.unwrap();
        node.plug_all(&fake);
        p.pass().await.unwrap();
        assert_eq!(node.published().len(), 18);
        let ipam = node.ipam();
        let mut leased = Vec::new();
        for i in 0..7 {
            leased.push(ipam.allocate(&format!("c{i}"), "eth0", &[]).unwrap()[0].address.ip());
        }
        // Targets drop: 7 in use, 2 warm.
        p.retarget(node.cfg(json!({"warmIpTarget": 2, "minimumIpTarget": 0})))
            .unwrap();
        let r = p.pass().await.unwrap();
        assert_eq!(r.released, 9, "{r:?}");
        let assigned = all_assigned(&fake);
        assert_eq!(assigned.len(), 9);
        for ip in &leased {
            assert!(assigned.contains(ip), "{ip} is leased and was released");
            assert!(node.published().contains(ip), "{ip} is leased and left the node file");
        }
        // All pods gone: the ENIs empty out and go back whole.
        for i in 0..7 {
            ipam.release(&format!("c{i}"), "eth0").unwrap();
        }
        p.retarget(node.cfg(json!({"warmIpTarget": 0, "minimumIpTarget": 0})))
            .unwrap();
        let r = p.pass().await.unwrap();
        assert_eq!((r.released, r.enis_deleted), (9, 2), "{r:?}");
        assert!(fake.0.borrow().enis.is_empty());
        assert!(node.file().enis.is_empty());
    });
}

#[test]
fn nothing_goes_back_while_the_lease_store_was_never_written() {
    let fake = Fake::default();
    let node = Node::new();
    block_on(async {
        // The wrong network: the plugin's leases are elsewhere.
        let wrong = |t: serde_json::Value| {
            let mut c = node.cfg(t);
            c.ipam.network = "not-the-conflist".into();
            c
        };
        let mut p = pool(&fake, &node, wrong(json!({"warmIpTarget": 9}))).await;
        p.pass().await.unwrap();
        p.retarget(wrong(json!({"warmIpTarget": 1}))).unwrap();
        let r = p.pass().await.unwrap();
        assert_eq!(r.released, 0, "{r:?}");
        assert_eq!(all_assigned(&fake).len(), 9);
        // Once the store holds a lease (and then none), the surplus goes.
        let mut p = pool(&fake, &node, node.cfg(json!({"warmIpTarget": 1}))).await;
        node.plug_all(&fake);
        p.pass().await.unwrap();
        let ipam = node.ipam();
        ipam.allocate("c0", "eth0", &[]).unwrap();
        ipam.release("c0", "eth0").unwrap();
        let r = p.pass().await.unwrap();
        assert_eq!(r.released, 8, "{r:?}");
    });
}

#[test]
fn no_release_before_the_cooldown() {
    let fake = Fake::default();
    let node = Node::new();
    block_on(async {
        let mut p = pool(
            &fake,
            &node,
            node.cfg(json!({"warmIpTarget": 9, "releaseAfterSeconds": 3600.0})),
        )
        .await;
        p.pass().await.unwrap();
        p.retarget(node.cfg(json!({"warmIpTarget": 1, "releaseAfterSeconds": 3600.0})))
            .unwrap();
        let r = p.pass().await.unwrap();
        assert_eq!(r.released, 0);
        assert_eq!(all_assigned(&fake).len(), 9);
    });
}

#[test]
fn prefix_delegation_grows_and_shrinks_by_whole_prefixes() {
    let fake = Fake::default();
    let node = Node::new();
    block_on(async {
        let cfg = json!({"prefixDelegation": true, "warmPrefixTarget": 1});
        let mut p = pool(&fake, &node, node.cfg(cfg.clone())).await;
        p.pass().await.unwrap();
        node.plug_all(&fake);
        let r = p.pass().await.unwrap();
        assert_eq!(r.addresses, 16, "{r:?}");
        let published = node.published();
        assert_eq!(published.len(), 16);
        // One pod: its prefix is in use, one more free prefix is wanted.
        let ipam = node.ipam();
        let ip = ipam.allocate("c0", "eth0", &[]).unwrap()[0].address.ip();
        let r = p.pass().await.unwrap();
        assert_eq!((r.granted, r.target), (16, 32), "{r:?}");
        // Back to no free prefix wanted: the free prefix goes, the pod's stays.
        p.retarget(node.cfg(json!({"prefixDelegation": true, "warmPrefixTarget": 0})))
            .unwrap();
        let r = p.pass().await.unwrap();
        assert_eq!(r.released, 16, "{r:?}");
        let prefixes = fake.0.borrow().enis[0].ipv4_prefixes.clone();
        assert_eq!(prefixes.len(), 1);
        assert!(prefixes[0].contains(match ip {
            IpAddr::V4(v) => v,
            _ => unreachable!(),
        }));
        assert_eq!(node.published().len(), 16);
        let f = node.file();
        assert_eq!(f.enis[0].subnet, "10.0.0.0/16".parse::<IpNetwork>().unwrap());
    });
}

#[test]
fn ipv6_pool() {
    let fake = Fake::default();
    let node = Node::new();
    block_on(async {
        let mut p = pool(&fake, &node, node.cfg(json!({"family": "ipv6", "warmIpTarget": 4}))).await;
        p.pass().await.unwrap();
        node.plug_all(&fake);
        p.pass().await.unwrap();
        let published = node.published();
        assert_eq!(published.len(), 4);
        assert!(published.iter().all(IpAddr::is_ipv6));
        assert_eq!(node.file().enis[0].subnet.to_string(), "2600:1f18:1:2::/64");
        let got = node.ipam().allocate("c0", "eth0", &[]).unwrap();
        assert!(got[0].address.ip().is_ipv6());
    });
}

#[test]
fn leaked_enis_of_this_node_are_deleted_at_start() {
    let fake = Fake::default();
    let node = Node::new();
    let tagged = |id: &str, node_tag: &str| CloudEni {
        id: id.into(),
        status: "available".into(),
        tags: BTreeMap::from([
            (TAG_CLUSTER.to_string(), "c1".to_string()),
            (TAG_NODE.to_string(), node_tag.to_string()),
        ]),
        ..Default::default()
    };
    fake.0.borrow_mut().enis = vec![
        tagged("eni-leak", INSTANCE),
        tagged("eni-other-node", "i-other"),
        CloudEni {
            id: "eni-untagged".into(),
            status: "available".into(),
            ..Default::default()
        },
    ];
    block_on(async {
        pool(&fake, &node, node.cfg(json!({"warmIpTarget": 0, "minimumIpTarget": 0}))).await;
    });
    let left: Vec<String> = fake.0.borrow().enis.iter().map(|e| e.id.clone()).collect();
    assert_eq!(left, vec!["eni-other-node", "eni-untagged"]);
}

#[test]
fn a_dry_subnet_is_said_in_the_node_file_until_it_has_room_again() {
    let fake = Fake::default();
    let node = Node::new();
    fake.0.borrow_mut().subnet_left = Some(6);
    block_on(async {
        let mut p = pool(&fake, &node, node.cfg(json!({"warmIpTarget": 8}))).await;
        let r = p.pass().await.unwrap();
        assert!(
            r.cannot_grow
                .as_deref()
                .unwrap()
                .contains("InsufficientFreeAddressesInSubnet"),
            "{r:?}"
        );
        assert!(node.file().cannot_grow.is_some());
        // The IPAM STATUS a CNI STATUS asks says why.
        assert!(
            node.ipam()
                .cannot_grow()
                .unwrap()
                .unwrap()
                .contains("InsufficientFreeAddressesInSubnet")
        );
        fake.0.borrow_mut().subnet_left = None;
        node.plug_all(&fake);
        // Not asked again every poll: the next pass keeps the reason and
        // calls the cloud for nothing.
        let calls = fake.0.borrow().calls.len();
        let r = p.pass().await.unwrap();
        assert!(r.cannot_grow.is_some(), "{r:?}");
        assert_eq!(fake.0.borrow().calls.len(), calls, "{:?}", fake.0.borrow().calls);
        // At the next resync it is.
        p.retarget(node.cfg(json!({"warmIpTarget": 8, "resyncSeconds": 0.0})))
            .unwrap();
        let r = p.pass().await.unwrap();
        assert_eq!(r.cannot_grow, None, "{r:?}");
        node.plug_all(&fake);
        p.pass().await.unwrap();
        assert_eq!(node.published().len(), 8);
        assert_eq!(node.file().cannot_grow, None);
    });
}

#[test]
fn the_instance_type_caps_the_pool() {
    let fake = Fake::default();
    let node = Node::new();
    block_on(async {
        let mut p = pool(&fake, &node, node.cfg(json!({"warmIpTarget": 100}))).await;
        let r = p.pass().await.unwrap();
        assert_eq!(r.addresses, 18, "two ENIs of nine secondary addresses: {r:?}");
        assert!(r.cannot_grow.unwrap().contains("at most 18"));
        assert_eq!(fake.calls("CreateNetworkInterface"), 2);
    });
}

#[test]
fn an_eni_that_fails_to_attach_is_deleted() {
    let fake = Fake::default();
    let node = Node::new();
    fake.0.borrow_mut().fail_attach = true;
    block_on(async {
        let mut p = pool(&fake, &node, node.cfg(json!({"warmIpTarget": 3}))).await;
        let e = p.pass().await.unwrap_err();
        assert!(e.to_string().contains("AttachmentLimitExceeded"), "{e}");
    });
    assert!(
        fake.0.borrow().enis.is_empty(),
        "the ENI made for the failed attach is gone"
    );
    assert_eq!(fake.calls("DeleteNetworkInterface"), 1);
}

#[test]
fn an_instance_type_not_in_the_table_needs_limits() {
    let fake = Fake::default();
    fake.0.borrow_mut().instance_type = Some("x9.mega".into());
    let node = Node::new();
    block_on(async {
        let e = EniPool::start(
            fake.clone(),
            node.cfg(json!({})),
            PoolMetrics::default(),
            Box::new(HashSet::new),
        )
        .await
        .err()
        .expect("an unknown instance type without limits");
        assert!(
            e.to_string().contains("x9.mega") && e.to_string().contains("\"limits\""),
            "{e}"
        );
        let cfg = node.cfg(json!({"warmIpTarget": 4, "limits": {"enis": 2, "ipv4PerEni": 3, "ipv6PerEni": 3}}));
        let mut p = pool(&fake, &node, cfg).await;
        let r = p.pass().await.unwrap();
        // One ENI besides the primary, two secondary addresses on it.
        assert_eq!(r.addresses, 2, "{r:?}");
        assert!(r.cannot_grow.unwrap().contains("at most 2"));
    });
}

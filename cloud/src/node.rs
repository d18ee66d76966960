//! The pool's side on the node: the CNI plugin's leases (read under the
//! lease store's lock) and the node file the plugin allocates from
//! (written under the same lock, atomically).
//!
//! The lock is what keeps an address in use from going back to the cloud:
//! the pool picks what to release and writes the node file without it
//! while holding the lock an ADD takes to lease from that file, so an ADD
//! either leased the address before (and the pool sees the lease) or reads
//! the file after (and never sees the address).

use sluice_ipam::eni::NodeEnis;
use sluice_ipam::store::LockedStore;
use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct NodeSide {
    node_file: PathBuf,
    store_dir: PathBuf,
    network: String,
}

/// How long to wait for an ADD or DEL holding the lease store's lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

impl NodeSide {
    pub fn new(node_file: &Path, ipam_data_dir: &Path, network: &str) -> NodeSide {
        NodeSide {
            node_file: node_file.to_path_buf(),
            store_dir: ipam_data_dir.join(network),
            network: network.to_string(),
        }
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    fn lock(&self, exclusive: bool) -> Result<LockedStore, String> {
        LockedStore::lock(&self.store_dir, &self.network, LOCK_WAIT, exclusive).map_err(|e| e.to_string())
    }

    /// The addresses leased to pods now.
    pub fn leased(&self) -> Result<HashSet<IpAddr>, String> {
        let store = self.lock(false)?;
        leases_of(&store)
    }

    /// Under the lease store's lock: read the leases, let `build` make the
    /// node file from them (and from whether the store has ever been
    /// written), write it if it changed.
    pub fn publish<T>(&self, build: impl FnOnce(&HashSet<IpAddr>, bool) -> (NodeEnis, T)) -> Result<T, String> {
        let store = self.lock(true)?;
        let leased = leases_of(&store)?;
        let (node, out) = build(&leased, store.has_state());
        node.validate(&self.node_file.display().to_string())
            .map_err(|e| format!("the pool built a node file the plugin would refuse: {e}"))?;
        let bytes = serde_json::to_vec_pretty(&node).expect("node file serializes");
        if std::fs::read(&self.node_file).ok().as_deref() != Some(&bytes[..]) {
            write_atomically(&self.node_file, &bytes)
                .map_err(|e| format!("writing the node file {}: {e}", self.node_file.display()))?;
        }
        drop(store);
        Ok(out)
    }
}

fn leases_of(store: &LockedStore) -> Result<HashSet<IpAddr>, String> {
    // A store put aside as corrupt is not an empty one: nothing is known
    // to be free, so the pool releases nothing until it is rebuilt.
    let state = store.load().map_err(|e| format!("reading the leases: {e}"))?;
    Ok(state.leases.keys().copied().collect())
}

/// Write, sync, rename: a reader sees the old file or the new one, whole.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// The node's interfaces, as the pool needs them: which ENIs have shown
/// up (by MAC, lower case), and bringing one up (a secondary ENI the OS
/// left down carries no pod traffic: a macvlan's carrier follows it).
pub trait NodeLinks {
    fn macs(&self) -> HashSet<String>;
    fn ensure_up(&self, mac: &str) -> Result<(), String>;
}

/// A closure listing MACs, for tests: nothing to bring up.
impl<F: Fn() -> HashSet<String>> NodeLinks for F {
    fn macs(&self) -> HashSet<String> {
        self()
    }
    fn ensure_up(&self, _mac: &str) -> Result<(), String> {
        Ok(())
    }
}

/// This network namespace's interfaces, asked of the kernel over netlink
/// (getifaddrs), not read from /sys, which shows the namespace it was
/// mounted in.
pub struct KernelLinks;

fn mac_of(a: &nix::ifaddrs::InterfaceAddress) -> Option<String> {
    let m = a.address.as_ref()?.as_link_addr()?.addr()?;
    Some(m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

impl NodeLinks for KernelLinks {
    fn macs(&self) -> HashSet<String> {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return HashSet::new();
        };
        addrs.filter_map(|a| mac_of(&a)).collect()
    }

    fn ensure_up(&self, mac: &str) -> Result<(), String> {
        use nix::net::if_::InterfaceFlags;
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("listing interfaces: {e}"))?;
        let Some(link) = addrs.into_iter().find(|a| mac_of(a).as_deref() == Some(mac)) else {
            return Err(format!("no interface with MAC {mac}"));
        };
        if link.flags.contains(InterfaceFlags::IFF_UP) {
            return Ok(());
        }
        set_up(&link.interface_name).map_err(|e| format!("bringing {} ({mac}) up: {e}", link.interface_name))
    }
}

/// SIOCSIFFLAGS with IFF_UP added: one ioctl, no netlink client for it.
fn set_up(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other("interface name too long"));
    }
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; the name fits (checked) with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a valid socket and ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

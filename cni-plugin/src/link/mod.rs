//! The pod interface of the main role, one file per kind. Each kind knows
//! how to create its interface inside the pod's namespace and how to take it
//! down again; the pure request builders are unit-tested without a kernel.

pub mod eni;
pub mod ipvlan;
pub mod macvlan;

use netlink_packet_route::link::LinkMessage;

/// The first interface index a pod link is given.
const POD_IFINDEX_BASE: u32 = 1 << 24;

/// The interface index a macvlan or ipvlan made for `container_id`'s
/// `ifname` gets, inside its pod.
///
/// Made in a pod's fresh namespace the kernel numbers it 2, in every pod.
/// The source check binds each address to its pod's interface index (and
/// MAC; an ipvlan's is its parent's, and any pod with `CAP_NET_RAW` can write
/// another's into a frame), so on a node where every pod's interface was
/// number 2 a pod could send as any other. The index is derived from the
/// pod's endpoint id (its owner tag in the maps, which no two live pods
/// may share), above the numbers the node's own namespace hands out (they
/// count up from 1 and do not reach 2^24), so the kernel, given it at
/// creation, finds it free in the node's namespace and in the pod's.
pub fn pod_ifindex(container_id: &str, ifname: &str) -> u32 {
    let id = sluice_tc_datapath::pin::attachment_id(container_id, ifname);
    POD_IFINDEX_BASE + id % (i32::MAX as u32 - POD_IFINDEX_BASE)
}

/// `msg` asking for its link to be given `index`.
pub fn with_index(mut msg: LinkMessage, index: u32) -> LinkMessage {
    msg.header.index = index;
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_indexes_are_valid_distinct_and_clear_of_the_nodes() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let idx = pod_ifindex(&format!("{i:064x}"), "eth0");
            assert!((POD_IFINDEX_BASE..i32::MAX as u32).contains(&idx), "{idx}");
            assert!(seen.insert(idx), "two containers of 10,000 got index {idx}");
        }
        assert_eq!(pod_ifindex("c", "eth0"), pod_ifindex("c", "eth0"));
        assert_ne!(pod_ifindex("c", "eth0"), pod_ifindex("c", "net1"));
    }

    #[test]
    fn the_request_carries_the_index() {
        let msg = with_index(LinkMessage::default(), 1 << 25);
        assert_eq!(msg.header.index, 1 << 25);
    }
}

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map key and value of the sluice datapath, defined once. The Rust
 * side mirrors each struct with a #[repr(C)] type; build.rs compiles
 * layout_dump.c against this header for the host and a test compares every
 * size and field offset with the Rust types.
 *
 * Pinned maps outlive programs, the agent and the CNI binary, so these
 * layouts are an on-disk format: any change bumps SLUICE_LAYOUT_VERSION,
 * which names the bpffs directory the maps are pinned in.
 *
 * Addresses are 16 bytes for both families; IPv4 is stored v4-mapped
 * (::ffff:a.b.c.d), so one code path and one map serve both. Ports are in
 * network byte order, as on the wire. Every key has explicit padding
 * fields, and writers zero them: hash maps compare keys bytewise.
 */
#ifndef SLUICE_LAYOUT_H
#define SLUICE_LAYOUT_H

#include <linux/types.h>

#ifndef SLUICE_LAYOUT_TEST_BUMP
#define SLUICE_LAYOUT_VERSION 12
#else
/* A build only the upgrade test loads (build.rs makes it beside the real
 * one): another version, and a conntrack value whose every field moved. */
#define SLUICE_LAYOUT_VERSION 1007
#endif

/* ---- backends: id -> address ---- */
#define BACKEND_ACTIVE 0
#define BACKEND_TERMINATING 1

struct backend_value {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 state;
};

/* ---- services: (VIP, port, proto, slot) -> service or backend slot ----
 * Slot 0 is the service itself; slots 1..count hold the ids (and entries)
 * of the backends that take new connections, unless the service holds
 * them itself (SVC_F_INLINE, below). A terminating backend is simply not
 * in a slot: its conntrack entries still name it, so established flows
 * keep going.
 * A marker entry (port 0, proto 0, slot 0) exists for every VIP, so that a
 * packet to a known VIP on an unknown port is told apart from other traffic.
 */
struct svc_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 scope;		/* SVC_SCOPE_* */
	__u16 slot;
	__u16 pad1;
};

/* Who a frontend serves. The pods' and the host sockets' programs look up
 * the cluster scope; the uplink program (traffic from outside the node)
 * the external one, whose entries the agent writes for this node's
 * NodePorts, load-balancer IPs and external IPs: with only this node's
 * endpoints under externalTrafficPolicy Local, and the source ranges of
 * loadBalancerSourceRanges. So one address and port can mean all
 * endpoints to a pod and local ones to an outside client, as kube-proxy
 * has it. */
#define SVC_SCOPE_CLUSTER 0
#define SVC_SCOPE_EXTERNAL 1

#define SVC_ALG_RANDOM 0
#define SVC_ALG_MAGLEV 1

#define SVC_F_REJECT 0x01	/* answer no-backend / unknown-port drops (TCP reset, ICMP port unreachable) */
#define SVC_F_VIP_MARKER 0x02	/* the per-VIP marker entry */
#define SVC_F_NODE_ADDRESS 0x04	/* on a marker: a node's address (NodePorts), not a VIP: other ports pass */
#define SVC_F_SOURCE_RANGES 0x08	/* external: only clients in its sl_lb_sources prefixes */
#define SVC_F_SLOT_BACKEND 0x10	/* on a slot: `backend` holds the backend's entry */
#define SVC_F_INLINE 0x20	/* on a frontend: its backends are `inline_backends`, it has no slots */
#define SVC_F_NODE_DENIED 0x40	/* a load-balancer IP's cluster frontend whose source ranges hold none of the node's addresses: the node's own sockets are refused */

/* A frontend with at most this many backends taking new connections
 * carries them (ids and entries) and has no slots: a new connection costs
 * one lookup in sl_services instead of two, and none in sl_backends. Four
 * fill the value to the allocator's 256-byte class; a bigger Service has
 * slots, each with its backend's entry. */
#define SVC_INLINE 4

struct svc_backend {
	__u32 id;
	struct backend_value entry;
};

struct svc_value {
	__u32 backend_id;	/* slot > 0 */
	__u32 rev_nat_id;	/* slot 0: how replies are translated back */
	__u16 count;		/* slot 0: active backends in slots 1..count */
	__u8 flags;
	__u8 algorithm;
	__u32 affinity_timeout;	/* seconds; 0 = no session affinity */
	/* Slot > 0 with SVC_F_SLOT_BACKEND: a copy of the backend's entry in
	 * sl_backends (an id never changes its address, port or protocol), so
	 * that a connection picked at random costs no third lookup in a third
	 * table, at 100,000 Services a cache and TLB miss. A slot holds only
	 * backends that take new connections: its copy says BACKEND_ACTIVE;
	 * stickiness across frontends (affinity) reads the state in
	 * sl_backends. */
	struct backend_value backend;
	/* Slot 0 with SVC_F_INLINE: its `count` backends, as slots would hold
	 * them (entries with state BACKEND_ACTIVE, as above). An established
	 * connection through the frontend finds its backend here too; one no
	 * longer here (terminating, gone) is looked up in sl_backends. So a
	 * reused port or a datagram keeps a backend that this frontend still
	 * sends new connections to, even while another frontend sharing it
	 * holds the shared entry as terminating. */
	struct svc_backend inline_backends[SVC_INLINE];
};

/* ---- the VIP filter: may this address be a VIP? ----
 * Every packet a pod sends would otherwise look its destination up in
 * sl_services, whose bucket array (16 MiB at 100,000 Service ports) makes
 * each lookup a cache and TLB miss. This small table answers first: one
 * 8-bit counter per hash slot, packed 8 to a 64-bit word (1 MiB), counting
 * the VIPs that hash there. Zero = certainly no VIP; nonzero = look it up
 * (about 9% of other addresses at 100,000 VIPs, 0.1% at 1,000). Counters
 * make removal exact; one that reaches 255 stays there (a false positive
 * costs only the lookup). The hash is vip_slot() here and in Rust. */
#define VIP_FILTER_BITS 20
#define VIP_FILTER_WORDS ((1 << VIP_FILTER_BITS) / 8)

static inline __u32 vip_slot(const __u8 addr[16])
{
	const __u32 *w = (const __u32 *)addr;

	return ((w[0] ^ w[1] ^ w[2] ^ w[3]) * 0x9E3779B1u) >> (32 - VIP_FILTER_BITS);
}

/* ---- reverse NAT: rev_nat_id (__u32) -> the VIP replies must come from.
 * One id per (VIP, port, proto): 32 bits, because a cluster may have more
 * than 65,535 Service ports. */
struct revnat_value {
	__u8 addr[16];
	__be16 port;
	__u16 pad0;
};

/* ---- Maglev: per service, a table of M backend ids, M a prime chosen at
 * load time. Stored in chunks so that M is not baked into the map layout. */
#define MAGLEV_CHUNK 1024

struct maglev_key {
	__u32 rev_nat_id;
	__u32 chunk;
};

struct maglev_value {
	__u32 backend_ids[MAGLEV_CHUNK];
};

/* ---- session affinity (LRU): (client, service) -> backend ---- */
struct affinity_key {
	__u8 client[16];
	__u32 rev_nat_id;
};

struct affinity_value {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad0;
};

/* ---- fragments (LRU): the first fragment's ports, for the rest ----
 * Only the first fragment of a datagram carries its L4 header. It leaves
 * its ports here under (source, destination, IP identification, protocol),
 * as seen at the hook, so the later fragments find them: they follow the
 * flow's conntrack entry, its translation and its policy like the first
 * (a large DNS answer over UDP comes back in fragments). A later fragment
 * that arrives before its first one is not matched. Entries are not
 * removed: the LRU ages them out.
 */
struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id;		/* IPv4: the 16-bit identification; IPv6: the fragment header's 32 */
	__u8 proto;
	__u8 pad0[3];
};

struct frag_value {
	__be16 sport;
	__be16 dport;
};

/* ---- socket-level load balancing: socket cookie -> what it was given ----
 * The frontend a socket named and the backend the cgroup hooks sent it to
 * instead, which its peer (getpeername) and the source of what it
 * receives (recvmsg) must read as the frontend. A connect uses slot 0; an
 * unconnected UDP socket (a resolver's sendto) takes the slot already
 * naming its backend, else the next one in turn. The entry goes when the
 * socket is released (a sock_release hook). Not socket-local storage:
 * creating that costs two allocations per socket, ~2 us; not an LRU:
 * its update costs as much once sockets come and go by the thousand.
 */
#define SOCK_REV_SLOTS 4

struct sock_rev_slot {
	__u8 backend[16];
	__u8 frontend[16];
	__be16 backend_port;
	__be16 frontend_port;
};

struct sock_rev {
	struct sock_rev_slot slot[SOCK_REV_SLOTS];
	__u32 next;
};

/* ---- conntrack shares: endpoint id -> its entries ----
 * A pod's share of the conntrack table, so that one pod's flood cannot
 * evict the others' flows: the programs add what they create, and refuse
 * a new flow to a pod at cfg_ct_pod_limit; the agent sets the true count
 * at every collection pass (LRU evictions and expiries are not seen by the
 * programs, so between passes a count is high, never low).
 */
struct ct_pod_value {
	__u32 entries;
	__u32 pad0;
};

/* ---- conntrack (LRU) ----
 * Every flow of every pod is tracked, at each end that is a pod of this
 * node, by one CT_FLOW entry keyed from that pod's side: saddr/sport are
 * the pod's (local), daddr/dport the peer's, whichever way the packet goes.
 * So a packet at egress looks up (src, dst, sport, dport) and a packet at
 * ingress (dst, src, dport, sport): one lookup finds the flow in both
 * directions, and the two ends of a flow between pods of one node have
 * distinct entries (each holds its own pod's policy verdict). CT_F_INBOUND
 * says the peer opened the flow (the entry was made at ingress).
 *
 * A Service connection adds, at the client, the CT_SERVICE entry keyed by
 * the tuple the client sent (to the VIP), read on every egress packet to
 * find the backend chosen once; its CT_FLOW entry is keyed by the
 * translated tuple and carries the rev-NAT id that translates replies (and
 * ICMP errors about the flow) back to the VIP.
 *
 * ICMP echo is tracked with the identifier as the port of the side that
 * sent the request: a request carries (sport = id, dport = 0), a reply
 * (sport = 0, dport = id), so both land on one entry and a ping in the
 * other direction with the same id is another flow.
 */
#define CT_SERVICE 1
#define CT_FLOW 2
#define CT_NAT 3	/* sl_nat: a flow from outside, at the uplink */

struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 kind;
	__u16 pad0;
};

#define CT_NEW 0		/* only the client has spoken (SYN, first datagram) */
#define CT_ESTABLISHED 1	/* the server answered */
#define CT_CLOSING 2		/* FIN or RST seen */

#define CT_F_HAIRPIN 0x01	/* a pod reaching itself through a Service */
#define CT_F_INBOUND 0x02	/* the peer opened the flow */
#define CT_F_NAT 0x04		/* nat_addr and nat_port hold the translation */

/* The source a hairpinned connection gets, so that the pod's own reply
 * leaves its stack (a reply to itself would stay on loopback) and comes
 * back through the egress program to be translated. Link-local for IPv4
 * (routed by the pod's default route); a ULA for IPv6, which would route
 * link-local onto the wire. */
#define HAIRPIN_V4 0xa9fe2a01	/* 169.254.42.1 */
#define HAIRPIN_V6_PREFIX 0xfd, 0x5c, 0x5c, 0x5c	/* fd5c:5c5c::1 */

/* The L2 next hop toward the backend, learned from the source MAC of the
 * backend's replies at the client's ingress: once known, the client's
 * packets of that connection get it as destination MAC and leave at once,
 * without the neighbour lookup and second egress pass of bpf_redirect_neigh.
 * In CT_SERVICE entries it is what egress uses; in CT_FLOW entries it is the
 * last source seen, so that a change (a new router, a moved backend) is
 * noticed on the reply that shows it without an extra lookup per reply.
 * nh_ifindex 0 = not learned. */
struct ct_value {
#ifdef SLUICE_LAYOUT_TEST_BUMP
	__u64 test_bump;
#endif
	__u64 expires_ns;	/* CLOCK_MONOTONIC deadline (the programs read it coarse: ct_now) */
	__u32 backend_id;
	__u32 rev_nat_id;
	__u8 state;
	__u8 flags;
	__u8 nh_mac[6];
	__u32 nh_ifindex;	/* the pod interface nh_mac was seen on */
	__be16 nat_port;
	__u16 pad0;
	/* With CT_F_NAT, the other side of a Service connection's translation:
	 * in its CT_SERVICE entry the backend the VIP goes to, in its CT_FLOW
	 * entry the VIP and port the replies come back from. So an established
	 * segment is translated from its conntrack entry alone, without the
	 * frontend's lookup in sl_services (at 100,000 Services a cache and TLB
	 * miss) or its backend's, and a reply without the sl_revnat lookup.
	 * Entries carried over from layout 9 have no CT_F_NAT: they are
	 * translated through those maps, as before. */
	__u8 nat_addr[16];
};

/* ---- endpoints: the pods on this node, by address ---- */
struct endpoint_key {
	__u8 addr[16];
};

struct endpoint_value {
	__u32 ifindex;		/* the pod interface, in the pod's netns */
	__u32 endpoint_id;
	__u8 mac[6];		/* the pod interface's MAC */
	__u16 flags;
	/* The node-side device the pod's interface hangs off (its macvlan or
	 * ipvlan parent), where a frame for the pod can be handed in; 0 = none
	 * (an ENI of its own): traffic from outside reaches it by routing. */
	__u32 parent_ifindex;
	__u32 pad0;
	/* The pod's network namespace (its cookie); 0 = not known. Where the
	 * kernel lets tc programs read it (cfg_socket_netns_check), a packet
	 * from a socket must come from a socket of this namespace: another
	 * pod's packet socket cannot send as this pod even where the two
	 * pods' interfaces share an index (see source.h). */
	__u64 netns_cookie;
};

/* ---- uplinks: the node's interfaces toward the VPC, by ifindex ----
 * The addresses a connection from outside is source-NATed to when its
 * backend is on another node (v4-mapped IPv4, IPv6; zero = none). */
struct uplink_value {
	__u8 addr4[16];
	__u8 addr6[16];
};

/* ---- hostPort: (node address, port, protocol) -> the pod ----
 * Written by the CNI binary from the runtime's portMappings (its one
 * writer), for each of the node's addresses (or the mapping's hostIP),
 * and removed at DEL. The uplink programs serve them to traffic from
 * outside, the socket hooks to the node's own sockets. */
struct hostport_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 pad0;
};

struct hostport_value {
	__u8 addr[16];		/* the pod's address */
	__be16 port;		/* its containerPort */
	__u16 pad0;
	__u32 endpoint_id;	/* the pod's endpoint: who holds the port */
};

/* ---- load-balancer source ranges (LPM trie) ----
 * The client prefixes an external frontend with SVC_F_SOURCE_RANGES
 * admits: prefixlen = 32 (the frontend's rev_nat_id) + the address bits
 * (IPv4 v4-mapped: 32 + 96 + its length). */
struct lb_source_key {
	__u32 prefixlen;
	__u32 rev_nat_id;
	__u8 addr[16];
};

/* ---- NAT of traffic from outside (LRU): the uplink program's flows ----
 * A connection to a NodePort, load-balancer IP or external IP has two
 * entries, keyed by a ct_key of kind CT_NAT as each direction's packets
 * arrive: the client's (client -> frontend), rewritten to the backend
 * (and, for a backend on another node, from this node's address and a
 * port of its own: SNAT), and the backend's replies, rewritten back to
 * come from the frontend and go to the client. A backend on this node
 * gets the client's own address: its replies are turned back as they
 * leave through the uplink. Both entries live in sl_nat_new until the
 * client answers the backend's first reply, then move to sl_nat. */
#define NAT_F_REPLY 0x01	/* translates replies (else the client's packets) */
#define NAT_F_LOCAL 0x02	/* the backend is a pod here: handed in through `ifindex` */
#define NAT_F_SNAT 0x04	/* the backend is elsewhere: from this node's address */
#define NAT_F_REMAP 0x08	/* NAT_F_LOCAL: from another port of the client's (a clash) */

/* How long a SNAT connection's port (or a remapped one's: NAT_F_REMAP)
 * stays taken after its FIN or RST (in sl_snat_held): the backend holds the 4-tuple in TIME_WAIT for 60 s after
 * a close it began, and a new SYN on it from a client whose timestamps are
 * not the old one's is refused by PAWS (the client resets and retries 1 s
 * later). */
#define NAT_SNAT_HOLD_NS (65ULL * 1000000000ULL)

struct nat_value {
	__u64 expires_ns;
	__u8 saddr[16];		/* the packet's new source */
	__u8 daddr[16];		/* ... and destination */
	__be16 sport;
	__be16 dport;
	__u32 ifindex;		/* NAT_F_LOCAL: the pod's parent device */
	__u32 backend_id;
	__u8 mac[6];		/* NAT_F_LOCAL: the pod's MAC */
	__u8 state;		/* CT_NEW ... */
	__u8 flags;		/* NAT_F_* */
	__u32 pad0;
};

/* ---- network policy ----
 * Identities name label sets (a pod's namespace, its labels and its
 * namespace's labels) and CIDRs, so that rules never name addresses: a
 * pod's address changes its ipcache entry, not a rule. */
#define ID_ANY 0		/* in policy keys: any peer */
#define ID_HOST 1		/* this node's own addresses: may always reach its pods */
#define ID_WORLD 2		/* no pod, no CIDR of any policy */
#define ID_FIRST_ALLOCATED 256

/* ipcache: the identity of every pod address of the cluster (exact). */
struct ipcache_value {
	__u32 identity;
	__u32 pad0;
};

/* CIDR identities (LPM trie): every prefix some ipBlock names, its
 * `except` prefixes included, is an identity of its own; the longest one
 * containing an address is that address's CIDR identity, and a rule allows
 * the identities of the prefixes inside its block and outside its excepts.
 * IPv4 prefixes are v4-mapped: prefixlen = 96 + the IPv4 length. */
struct cidr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* A pod's policy state, by endpoint id. No entry = no policy selects the
 * pod: unrestricted both ways. */
#define POLICY_F_INGRESS 0x01	/* some policy isolates the pod for ingress */
#define POLICY_F_EGRESS 0x02	/* ... for egress */
/* Set by CNI ADD on a pod that a policy may select before the agent has
 * written its own (with both flags above, no rules): it may talk to its
 * node only, both ways, until the agent replaces the entry. */
#define POLICY_F_PENDING 0x04

/* Which kinds of rule a pod has in a direction (kinds[DIR_*]): a new flow
 * looks up only the kinds that exist, the exact port always. */
#define RULE_K_ANY_PORT 0x01	/* every port of a protocol */
#define RULE_K_ANY_PROTO 0x02	/* every protocol */
#define RULE_K_RANGE 0x04	/* a port range (endPort) in the range trie */

struct ep_policy_value {
	__u32 identity;		/* the pod's own (a hairpinned flow comes from it) */
	__u32 ingress_policy;	/* a policy isolating it (named in drop events) */
	__u32 egress_policy;
	__u8 flags;
	__u8 kinds[2];		/* RULE_K_*, by DIR_* */
	__u8 pad0;
};

/* Verdicts already made: a new flow's policy decision takes a lookup of
 * the peer's identity and one of the rule, though a pod sees new flows
 * from the same peer to the same port again and again (every DNS query,
 * every connection of a client without keep-alive). Each CPU keeps the
 * allowed (endpoint, direction, peer, protocol, port) tuples it decided
 * last, direct-mapped, in sl_verdicts. A slot counts only while its
 * `generation` is sl_policy_gen's + 1: the writers store there the time
 * of each write that could take a verdict back (all but a rule's
 * insertion), after the write. A denied flow is never cached: its drop is
 * reported with the peer's identity, which the lookups give. */
#define VERDICT_SLOTS 1024

struct verdict_slot {
	__u64 peer[2];		/* the peer's address, as two words */
	__u64 flow;		/* endpoint id << 32 | dir << 24 | proto << 16 | port (network order) */
	__u64 generation;	/* the one it was made under, + 1 (0: empty) */
};

/* Policy rules: what an endpoint allows, from/to an identity, by protocol
 * and port. ID_ANY in `identity` = from/to anywhere. Rules for one port,
 * every port (port 0) or every protocol (proto 0, port 0) are exact keys
 * of a hash (sl_policy): O(1) whatever the number of rules. A port range
 * is a few aligned blocks in an LPM trie (sl_policy_ranges), keyed by
 * policy_key: the prefix length is 80 (endpoint, identity, direction,
 * protocol) plus the block's bits; the trie matches the bytes of struct
 * policy_match in memory order, so only `port`, kept in network byte order,
 * is ever matched in part. A block of one port is an exact key instead. */
struct policy_match {
	__u32 endpoint_id;
	__u32 identity;
	__u8 dir;		/* DIR_EGRESS / DIR_INGRESS */
	__u8 proto;		/* IPPROTO_*; 0 = every protocol */
	__be16 port;		/* 0 = every port */
};

struct policy_key {
	__u32 prefixlen;
	struct policy_match m;
};

/* How the tools and the Rust side name a rule's entry: the prefix length
 * it would have in one trie. 72 = every protocol, 80 = every port, 96 =
 * one port (all three in the hash), in between = a range block. */
#define POLICY_BITS_ANY_PROTO 72
#define POLICY_BITS_ANY_PORT 80
#define POLICY_BITS_EXACT 96

struct policy_value {
	__u32 policy;		/* the policy the rule came from */
	__u32 pad0;
};

/* Names for the tools (never read by the programs): identity -> labels,
 * policy id -> namespace/name. */
#define NAME_IDENTITY 1
#define NAME_POLICY 2
#define NAME_LEN 248

struct name_key {
	__u32 kind;
	__u32 id;
};

struct name_value {
	char name[NAME_LEN];
};

/* Flow events (ring buffer): one per drop of a parsed packet (policy, no
 * backend, unknown port, spoofed source, fragment to a VIP) and, sampled 1
 * in cfg_flow_sample (0 = none), one per new flow at each pod end
 * (reason forwarded, or service-translated with the backend chosen).
 * Submitted without a wakeup: a flood costs no interrupt per packet; the
 * reader polls. */
struct flow_event {
	__u64 time_ns;		/* bpf_ktime_get_ns() */
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 reason;
	__u32 endpoint_id;
	__u32 peer_identity;
	__u32 policy;		/* 0 = not known */
	__u32 backend_id;	/* service-translated: the backend chosen */
};

/* ---- metrics: per-CPU counters, index = reason * 2 + direction ---- */
#define DIR_EGRESS 0
#define DIR_INGRESS 1

enum reason {
	REASON_FORWARDED = 0,
	REASON_SERVICE_TRANSLATED = 1,	/* forwarded after DNAT to a backend */
	REASON_REPLY_TRANSLATED = 2,	/* forwarded after reverse NAT */
	DROP_NO_BACKEND = 3,		/* service without an active backend */
	DROP_UNKNOWN_PORT = 4,		/* known VIP, no service on that port/proto */
	DROP_SOURCE_ADDRESS = 5,	/* pod sent from an address not its own */
	DROP_MALFORMED = 6,		/* truncated or unparsable headers */
	DROP_FRAGMENT = 7,		/* fragment to a VIP whose first fragment was not seen */
	DROP_NAT_FAILED = 8,		/* rewriting the packet failed */
	DROP_BACKEND_GONE = 9,		/* a connection's backend left (TCP reset), or maglev/affinity named one gone */
	REASON_HAIRPIN = 10,		/* a pod's packet to itself via a Service, turned around */
	REASON_ICMP_ERROR_TRANSLATED = 11,	/* ICMP error about a translated flow, reverse-NATed */
	REASON_REJECTED = 12,		/* a drop answered with a reset or port unreachable (SVC_F_REJECT) */
	DROP_POLICY = 13,		/* no network policy rule allows the flow */
	DROP_ETHERTYPE = 14,		/* a pod's VLAN-tagged frame, or of an ethertype not IPv4, IPv6 or ARP */
	DROP_CT_POD_LIMIT = 15,		/* a new flow of a pod that holds its share of the conntrack table */
	REASON_SOCK_TRANSLATED = 16,	/* a socket's Service address replaced by a backend's (cgroup hooks) */
	DROP_SOURCE_RANGE = 17,		/* a client outside a load balancer's source ranges */
	DROP_NO_SNAT_PORT = 18,		/* no free port (or no address) to source-NAT a connection from outside */
	DROP_PORT_CLASH = 19,		/* a pod's connection to a Service whose backend 4-tuple another Service's live one holds (refused with a reset) */
	REASON_MAX = 20,
};

/* Metrics slots: room for 64 reasons in both directions, so a new reason is
 * not a layout change. */
#define METRICS_SLOTS 128

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* ---- info: what the attached programs were loaded with (one entry) ----
 * The programs read their configuration from .rodata, never from here; this
 * copy is for the tools (writers need the Maglev table size, and everyone
 * wants to see which build is attached with which settings). `config` is
 * the settings compiled into the programs as the JSON the CNI config
 * spells them in, so that no setting can be left out of it. Written by
 * whoever loads a new program version, after every link has moved to it.
 */
#define DP_INFO_CONFIG_LEN 504

struct dp_info {
	__u64 prog_hash;	/* the program version: FNV-1a of the object and config */
	char config[DP_INFO_CONFIG_LEN];	/* JSON, NUL-padded */
};

#endif

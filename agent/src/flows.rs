//! Flow events: drained from the datapath's ring (submitted without
//! wakeups, so polled), named (pods by address, policies by id, backends),
//! kept as the last `BACKLOG` and streamed to `sluicectl observe` over a
//! Unix socket, one JSON object per line.
//!
//! The protocol: the client sends one line, `{"follow": true|false}`; the
//! agent answers with the backlog, oldest first, then (follow) every new
//! flow as it comes, until the client goes.

use serde::Serialize;
use sluice_tc_datapath::layout::{Direction, FlowEvent, NAME_POLICY, Reason, ip, proto_name};
use sluice_tc_datapath::maps::Maps;
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Flows kept for a client that connects later.
pub const BACKLOG: usize = 4096;

/// One end of a flow.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct End {
    pub ip: IpAddr,
    pub port: u16,
    /// "namespace/name" when the address is a known pod's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// A flow event, named.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// "forwarded", "translated" or "dropped".
    pub verdict: &'static str,
    /// The datapath's reason ("drop-policy", "service-translated", ...).
    pub reason: &'static str,
    /// At the pod end the event comes from: "egress" (the pod sent it) or
    /// "ingress" (it was delivered to the pod).
    pub direction: &'static str,
    pub protocol: String,
    pub source: End,
    pub destination: End,
    /// The backend a Service flow was given, "address:port".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The policy that isolates the pod (a policy drop), "namespace/name".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// CLOCK_MONOTONIC (the datapath's clock) to wall-clock, now.
fn wall_offset_ns() -> i128 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    wall - i128::from(sluice_tc_datapath::maps::ct::now_ns())
}

/// Pod names ("namespace/name") by address.
pub trait PodNames {
    fn pod_name(&self, ip: &IpAddr) -> Option<&str>;
}

impl PodNames for BTreeMap<IpAddr, String> {
    fn pod_name(&self, ip: &IpAddr) -> Option<&str> {
        self.get(ip).map(String::as_str)
    }
}

/// Name an event: `pods` name pod addresses, tried in order (the cluster's
/// Pod objects, then what the runtime told the CNI plugin).
pub fn name(e: &FlowEvent, pods: &[&dyn PodNames], maps: &Maps, wall_offset: i128) -> Flow {
    let reason = Reason::from_u32(u32::from(e.reason));
    let end = |a, port: u16| {
        let ip = ip(a);
        End {
            ip,
            port: u16::from_be(port),
            pod: pods.iter().find_map(|m| m.pod_name(&ip)).map(String::from),
        }
    };
    let verdict = match reason {
        Some(Reason::Forwarded) => "forwarded",
        Some(Reason::ServiceTranslated) | Some(Reason::ReplyTranslated) => "translated",
        _ => "dropped",
    };
    Flow {
        time_unix_ns: (i128::from(e.time_ns) + wall_offset).max(0) as u64,
        verdict,
        reason: reason.map_or("unknown", Reason::name),
        direction: if e.dir == Direction::Egress as u8 {
            "egress"
        } else {
            "ingress"
        },
        protocol: proto_name(e.proto),
        source: end(&e.saddr, e.sport),
        destination: end(&e.daddr, e.dport),
        backend: (e.backend_id != 0)
            .then(|| maps.lb().backend(e.backend_id).ok().flatten())
            .flatten()
            .map(|b| std::net::SocketAddr::new(b.addr, b.port).to_string()),
        policy: (e.policy != 0)
            .then(|| maps.observe().name(NAME_POLICY, e.policy))
            .flatten(),
    }
}

/// How many clients are served at once (one more is refused at once).
pub const MAX_CLIENTS: usize = 64;
/// Lines queued for one follower; one that falls further behind is dropped
/// rather than slowing the agent.
const FOLLOWER_QUEUE: usize = 8192;

/// The backlog and the queues of the clients following it.
#[derive(Default)]
struct Shared {
    backlog: VecDeque<String>,
    followers: Vec<std::sync::mpsc::SyncSender<Arc<str>>>,
    clients: usize,
}

/// The Unix-socket server of `sluicectl observe`. Every client is served
/// by a thread of its own, so a silent or slow one delays no other; the
/// agent's loop only queues lines, never writes to a socket.
#[derive(Clone, Default)]
pub struct FlowServer {
    shared: Arc<Mutex<Shared>>,
}

impl FlowServer {
    /// Listen on `path` (a stale socket file is replaced) from a thread of
    /// its own.
    pub fn listen(path: &Path) -> std::io::Result<FlowServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        let server = FlowServer::default();
        let s = server.clone();
        std::thread::Builder::new().name("flows".into()).spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                {
                    let mut sh = s.shared.lock().expect("flows lock");
                    if sh.clients >= MAX_CLIENTS {
                        continue; // dropped: closed at once
                    }
                    sh.clients += 1;
                }
                let s2 = s.clone();
                let spawned = std::thread::Builder::new().name("flows-client".into()).spawn(move || {
                    s2.serve(conn);
                    s2.shared.lock().expect("flows lock").clients -= 1;
                });
                if spawned.is_err() {
                    s.shared.lock().expect("flows lock").clients -= 1;
                }
            }
        })?;
        Ok(server)
    }

    /// One client, on its own thread: its request, the backlog, then (to
    /// a follower) what its queue brings until it goes.
    fn serve(&self, mut conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let follow = match conn.try_clone().map(BufReader::new).map(|mut r| r.read_line(&mut line)) {
            Ok(Ok(_)) => serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("follow")?.as_bool())
                .unwrap_or(false),
            _ => return,
        };
        // The backlog and the registration under one lock: a flow published
        // meanwhile is in one or the other, never lost or doubled.
        let (backlog, queue) = {
            let mut sh = self.shared.lock().expect("flows lock");
            let backlog: String = sh.backlog.iter().map(String::as_str).collect();
            let queue = follow.then(|| {
                let (tx, rx) = std::sync::mpsc::sync_channel(FOLLOWER_QUEUE);
                sh.followers.push(tx);
                rx
            });
            (backlog, queue)
        };
        if conn.write_all(backlog.as_bytes()).is_err() {
            return;
        }
        for l in queue.into_iter().flatten() {
            if conn.write_all(l.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// Keep `flows` and queue them for every follower (one whose queue is
    /// full, or that went, is dropped).
    pub fn publish(&self, flows: &[Flow]) {
        if flows.is_empty() {
            return;
        }
        let mut sh = self.shared.lock().expect("flows lock");
        let mut text = String::new();
        for f in flows {
            let mut l = serde_json::to_string(f).expect("a flow serializes");
            l.push('\n');
            text.push_str(&l);
            if sh.backlog.len() == BACKLOG {
                sh.backlog.pop_front();
            }
            sh.backlog.push_back(l);
        }
        let text: Arc<str> = text.into();
        sh.followers.retain(|q| q.try_send(text.clone()).is_ok());
    }
}

/// Drains the ring and names what it finds.
pub struct FlowReader {
    events: sluice_tc_datapath::maps::observe::Events,
}

impl FlowReader {
    pub fn open(versioned: &Path) -> Result<FlowReader, sluice_tc_datapath::maps::MapsError> {
        Ok(FlowReader {
            events: sluice_tc_datapath::maps::observe::Events::open_pinned(versioned)?,
        })
    }

    pub fn read(&mut self, pods: &[&dyn PodNames], maps: &Maps) -> Vec<Flow> {
        let events = self.events.drain();
        if events.is_empty() {
            return Vec::new();
        }
        let off = wall_offset_ns();
        events.iter().map(|e| name(e, pods, maps, off)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn flow(port: u16) -> Flow {
        let end = |p| End {
            ip: "10.244.1.5".parse().unwrap(),
            port: p,
            pod: None,
        };
        Flow {
            time_unix_ns: 1,
            verdict: "forwarded",
            reason: "forwarded",
            direction: "egress",
            protocol: "tcp".into(),
            source: end(port),
            destination: end(80),
            backend: None,
            policy: None,
        }
    }

    /// Clients that connect and say nothing delay no other: the audit saw
    /// three of them hold a real one up for 6 s.
    #[test]
    fn silent_clients_delay_no_one() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("flows.sock");
        let server = FlowServer::listen(&path).unwrap();
        server.publish(&[flow(1), flow(2)]);
        let silent: Vec<UnixStream> = (0..3).map(|_| UnixStream::connect(&path).unwrap()).collect();
        let t = std::time::Instant::now();
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"{\"follow\": false}\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(t.elapsed() < Duration::from_millis(500), "served in {:?}", t.elapsed());
        drop(silent);
    }

    /// A follower that reads nothing does not slow publishing: it is cut
    /// off once its queue is full.
    #[test]
    fn a_stuck_follower_does_not_hold_the_agent() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("flows.sock");
        let server = FlowServer::listen(&path).unwrap();
        let mut stuck = UnixStream::connect(&path).unwrap();
        stuck.write_all(b"{\"follow\": true}\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t = std::time::Instant::now();
        for i in 0..(4 * FOLLOWER_QUEUE) {
            server.publish(&[flow(i as u16)]);
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "publishing took {:?}",
            t.elapsed()
        );
        assert!(
            server.shared.lock().unwrap().followers.is_empty(),
            "the stuck follower was dropped"
        );
    }
}

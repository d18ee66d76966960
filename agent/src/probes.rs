//! The agent's own liveness and readiness, for the kubelet's probes:
//! `/healthz` answers 200 while the agent's loop keeps turning, `/readyz`
//! once the node's programs are loaded and the first sync is written (a
//! node whose agent is not ready has pods without Services or policy).
//! Served on the loopback by default, as Cilium's agent serves its own:
//! the DaemonSet's probes name the host, so nothing else on the node's
//! network sees them.

use hyper::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The loop turns at least this often (it waits no longer for input).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A loop silent this long is stuck: `/healthz` fails and the kubelet
/// restarts the agent.
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

/// What the probes read, written by the agent's loop.
#[derive(Debug)]
pub struct Probes {
    start: Instant,
    /// Milliseconds since `start` of the loop's last turn.
    beat_ms: AtomicU64,
    loaded: AtomicBool,
    synced: AtomicBool,
}

impl Probes {
    pub fn new() -> Arc<Probes> {
        Arc::new(Probes {
            start: Instant::now(),
            beat_ms: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            synced: AtomicBool::new(false),
        })
    }

    /// The loop turned.
    pub fn beat(&self) {
        self.beat_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The node's programs and maps are open.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
        self.beat();
    }

    /// The first sync is written.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
        self.beat();
    }

    /// `/healthz`: the loop turned within `STUCK_AFTER`.
    pub fn alive(&self) -> Result<(), String> {
        let silent = self
            .start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.beat_ms.load(Ordering::Relaxed)));
        if silent > STUCK_AFTER {
            return Err(format!("the agent's loop has not turned for {}s", silent.as_secs()));
        }
        Ok(())
    }

    /// `/readyz`: alive, loaded and synced.
    pub fn ready(&self) -> Result<(), String> {
        self.alive()?;
        if !self.loaded.load(Ordering::Relaxed) {
            return Err("waiting for the datapath (sluice's programs are not loaded on this node yet)".into());
        }
        if !self.synced.load(Ordering::Relaxed) {
            return Err("waiting for the first sync (every kind listed and written)".into());
        }
        Ok(())
    }

    /// The answer to a probe's path.
    pub fn answer(&self, path: &str) -> crate::http::Reply {
        let verdict = match path {
            "/healthz" | "/livez" => self.alive(),
            "/readyz" => self.ready(),
            _ => {
                return (
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "not found: try /healthz or /readyz\n".into(),
                );
            }
        };
        match verdict {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".into()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        }
    }
}

/// Serve the probes on `addr`; returns the address bound.
pub fn serve(addr: SocketAddr, probes: Arc<Probes>) -> std::io::Result<SocketAddr> {
    crate::http::serve(
        addr,
        "probes",
        move |path| probes.answer(path),
        crate::http::Limits::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_loaded_and_synced() {
        let p = Probes::new();
        assert_eq!(p.answer("/healthz").0, StatusCode::OK);
        let (code, _, body) = p.answer("/readyz");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("datapath"), "{body}");
        p.set_loaded();
        assert!(p.answer("/readyz").2.contains("first sync"));
        p.set_synced();
        assert_eq!(p.answer("/readyz").0, StatusCode::OK);
        assert_eq!(p.answer("/other").0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_silent_loop_is_not_alive() {
        let p = Probes {
            start: Instant::now() - STUCK_AFTER - Duration::from_secs(1),
            beat_ms: AtomicU64::new(0),
            loaded: AtomicBool::new(true),
            synced: AtomicBool::new(true),
        };
        assert_eq!(p.answer("/healthz").0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p.answer("/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        p.beat();
        assert_eq!(p.answer("/healthz").0, StatusCode::OK);
    }
}

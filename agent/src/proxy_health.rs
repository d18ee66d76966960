//! The node's service-proxy health, where kube-proxy serves it (its
//! `--healthz-bind-address`, port 10256), for a node whose Services sluice
//! serves in kube-proxy's place. Cloud load balancers probe it to pick the
//! nodes that take an `externalTrafficPolicy: Cluster` Service's traffic
//! (KEP-3836), and a node draining for the cluster autoscaler says no
//! there, so it stops getting new connections before it goes.
//!
//! - `/healthz`: 200 while no change of the cluster's objects has waited
//!   longer than the timeout to be written into the maps and the node is
//!   eligible (its Node object not being deleted, not tainted
//!   `ToBeDeletedByClusterAutoscaler`); else 503.
//! - `/livez`: the same without the node's eligibility.
//!
//! The body is kube-proxy's JSON (`lastUpdated`, `currentTime`, and on
//! `/healthz` `nodeEligible`), its times in RFC 3339. One difference:
//! kube-proxy counts itself healthy until its first sync, where here the
//! wait for it counts as any change's. Until the node's programs are
//! loaded (by the agent with `--cni-conf`, else by the first pod's ADD)
//! nothing serves its NodePorts, so a load balancer that has waited the
//! timeout should not pick it.

use hyper::StatusCode;
use k8s_openapi::api::core::v1::Node;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// kube-proxy's: twice its default sync period.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The taint the cluster autoscaler puts on a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug)]
struct State {
    /// When the oldest change not yet written arrived.
    pending_since: Option<Instant>,
    /// When the maps last said all the source says.
    last_updated: Option<SystemTime>,
    node_eligible: bool,
}

/// What the health server reads, written by the agent's loop.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<State>,
}

impl ProxyHealth {
    /// The first list and sync are pending from now.
    pub fn new(timeout: Duration) -> Arc<ProxyHealth> {
        Arc::new(ProxyHealth {
            timeout,
            state: Mutex::new(State {
                pending_since: Some(Instant::now()),
                last_updated: None,
                node_eligible: true,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("proxy health lock")
    }

    /// A change arrived at `at`: pending until a sync writes it (the
    /// oldest one counts).
    pub fn queued(&self, at: Instant) {
        self.state().pending_since.get_or_insert(at);
    }

    /// A sync wrote every Service change (policy is not the proxy's).
    pub fn updated(&self) {
        let mut s = self.state();
        s.pending_since = None;
        s.last_updated = Some(SystemTime::now());
    }

    /// This node's Node object, as the last sync read it (None: not
    /// listed, which leaves it eligible, as kube-proxy before its first
    /// Node event).
    pub fn set_node(&self, node: Option<&Node>) {
        self.state().node_eligible = node.is_none_or(eligible);
    }

    /// Whether the maps are not behind by more than the timeout at `now`.
    fn healthy(&self, now: Instant) -> bool {
        self.state()
            .pending_since
            .is_none_or(|t| now.saturating_duration_since(t) < self.timeout)
    }

    /// The answer to a request for `path`.
    pub fn answer(&self, path: &str) -> crate::http::Reply {
        self.answer_at(path, Instant::now())
    }

    fn answer_at(&self, path: &str, now: Instant) -> crate::http::Reply {
        let with_node = match path {
            "/healthz" => true,
            "/livez" => false,
            _ => {
                return (
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "not found: try /healthz or /livez\n".into(),
                );
            }
        };
        let healthy = self.healthy(now);
        let (eligible, last) = {
            let s = self.state();
            (s.node_eligible, s.last_updated)
        };
        let ok = healthy && (eligible || !with_node);
        let current = SystemTime::now();
        // As kube-proxy: a healthy proxy reports the current time as its
        // last update (its sync loop ran, even with nothing to change).
        let last = if ok { Some(current) } else { last };
        let mut body = serde_json::json!({
            "lastUpdated": last.map(rfc3339).unwrap_or_default(),
            "currentTime": rfc3339(current),
        });
        if with_node {
            body["nodeEligible"] = eligible.into();
        }
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, "application/json", body.to_string())
    }
}

/// Being deleted, or about to be by the cluster autoscaler: not eligible.
fn eligible(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .any(|t| t.key == TO_BE_DELETED_TAINT)
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
}

/// What kube-proxy's status port (its `--metrics-bind-address`,
/// 127.0.0.1:10249) names the proxy mode: `/proxyMode`, for the tools that
/// ask which proxy a node runs.
pub const PROXY_MODE: &str = "sluice";

/// The status port's answer: `/proxyMode`, and `/healthz` as the probes'
/// liveness says.
pub fn status_answer(path: &str, probes: &crate::probes::Probes) -> crate::http::Reply {
    match path {
        "/proxyMode" => (StatusCode::OK, "text/plain", PROXY_MODE.into()),
        "/healthz" => probes.answer("/healthz"),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /proxyMode or /healthz\n".into(),
        ),
    }
}

/// Serve on `addr` (`[::]`: both families, see `http::bind`); returns the
/// address bound.
pub fn serve(addr: SocketAddr, health: Arc<ProxyHealth>) -> std::io::Result<SocketAddr> {
    crate::http::serve(
        addr,
        "proxy-health",
        move |path| health.answer(path),
        crate::http::Limits::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn body(r: &crate::http::Reply) -> serde_json::Value {
        serde_json::from_str(&r.2).unwrap()
    }

    #[test]
    fn a_change_waiting_past_the_timeout_is_unhealthy() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(h.answer_at("/healthz", start).0, StatusCode::OK, "starting");
        let late = start + Duration::from_secs(61);
        let r = h.answer_at("/healthz", late);
        assert_eq!(r.0, StatusCode::SERVICE_UNAVAILABLE, "no first sync in 61 s");
        assert_eq!(body(&r)["lastUpdated"], "", "never updated");
        assert_eq!(h.answer_at("/livez", late).0, StatusCode::SERVICE_UNAVAILABLE);
        h.updated();
        let r = h.answer_at("/healthz", late);
        assert_eq!(r.0, StatusCode::OK);
        assert_eq!(body(&r)["nodeEligible"], true);
        assert!(body(&r)["lastUpdated"].as_str().unwrap().ends_with('Z'), "{}", r.2);

        // The oldest pending change counts, not the newest.
        let t = Instant::now();
        h.queued(t);
        h.queued(t + Duration::from_secs(50));
        assert_eq!(h.answer_at("/healthz", t + Duration::from_secs(59)).0, StatusCode::OK);
        assert_eq!(
            h.answer_at("/healthz", t + Duration::from_secs(60)).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.updated();
        assert_eq!(h.answer_at("/healthz", t + Duration::from_secs(600)).0, StatusCode::OK);
    }

    #[test]
    fn the_status_port_names_the_proxy() {
        let p = crate::probes::Probes::new();
        assert_eq!(
            status_answer("/proxyMode", &p),
            (StatusCode::OK, "text/plain", "sluice".into())
        );
        assert_eq!(status_answer("/healthz", &p).0, StatusCode::OK);
        assert_eq!(status_answer("/metrics", &p).0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_node_going_away_fails_healthz_not_livez() {
        let h = ProxyHealth::new(DEFAULT_TIMEOUT);
        h.updated();
        h.set_node(Some(&node(
            "metadata: {name: n}\nspec: {taints: [{key: ToBeDeletedByClusterAutoscaler, value: '1', effect: NoSchedule}]}",
        )));
        let r = h.answer("/healthz");
        assert_eq!(r.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(&r)["nodeEligible"], false);
        assert_eq!(h.answer("/livez").0, StatusCode::OK);
        assert!(body(&h.answer("/livez")).get("nodeEligible").is_none());

        h.set_node(Some(&node(
            "metadata: {name: n, deletionTimestamp: '2026-01-01T00:00:00Z'}",
        )));
        assert_eq!(h.answer("/healthz").0, StatusCode::SERVICE_UNAVAILABLE);
        h.set_node(Some(&node(
            "metadata: {name: n}\nspec: {taints: [{key: node.kubernetes.io/unschedulable, effect: NoSchedule}]}",
        )));
        assert_eq!(h.answer("/healthz").0, StatusCode::OK, "cordoned is still eligible");
        h.set_node(None);
        assert_eq!(h.answer("/healthz").0, StatusCode::OK);
        assert_eq!(h.answer("/metrics").0, StatusCode::NOT_FOUND);
    }
}

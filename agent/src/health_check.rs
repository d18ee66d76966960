//! Health check node ports: for each Service with `externalTrafficPolicy:
//! Local`, an HTTP server on its `healthCheckNodePort` that tells a cloud
//! load balancer whether this node has a ready endpoint, as kube-proxy's
//! does: 200 with the count of local endpoints, 503 when there is none.
//! The body is kube-proxy's JSON, so tools that read it keep working.

use crate::services::HealthCheck;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;
use tracing::{info, warn};

type Checks = Arc<Mutex<BTreeMap<u16, HealthCheck>>>;

/// The servers, one listener per port, on a runtime thread of their own.
pub struct HealthServers {
    rt: tokio::runtime::Handle,
    checks: Checks,
    listeners: BTreeMap<u16, AbortHandle>,
}

impl HealthServers {
    pub fn start() -> std::io::Result<HealthServers> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("health-checks".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        Ok(HealthServers {
            rt: handle,
            checks: Arc::default(),
            listeners: BTreeMap::new(),
        })
    }

    /// Serve exactly `want`: new ports listened on, gone ones closed, the
    /// answers of the others updated in place.
    pub fn set(&mut self, want: BTreeMap<u16, HealthCheck>) {
        let gone: Vec<u16> = self
            .listeners
            .keys()
            .filter(|p| !want.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(h) = self.listeners.remove(&port) {
                h.abort();
                info!(port, "health check node port closed");
            }
        }
        for (&port, check) in &want {
            if self.listeners.contains_key(&port) {
                continue;
            }
            match listen(port) {
                Ok(l) => {
                    let checks = self.checks.clone();
                    let h = self.rt.spawn(serve(l, port, checks));
                    self.listeners.insert(port, h.abort_handle());
                    info!(port, service = %check.service, "serving the health check node port");
                }
                // Tried again at the next sync.
                Err(e) => {
                    warn!(port, service = %check.service, error = %e, "cannot listen on the health check node port")
                }
            }
        }
        *self.checks.lock().expect("health check lock") = want;
    }

    /// The ports listened on.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }
}

/// Every address of both families where the node has IPv6, else IPv4's.
fn listen(port: u16) -> std::io::Result<std::net::TcpListener> {
    crate::http::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
}

async fn serve(l: std::net::TcpListener, port: u16, checks: Checks) {
    let answer = move |_: &str| answer(checks.lock().expect("health check lock").get(&port));
    crate::http::accept_loop(l, Arc::new(answer), crate::http::Limits::default()).await
}

/// kube-proxy's answer: `{"service":{"namespace":..,"name":..},
/// "localEndpoints":N,"serviceProxyHealthy":true}`, 200 or 503.
pub fn answer(check: Option<&HealthCheck>) -> Response<Full<Bytes>> {
    let (ns, name, n) = match check {
        Some(c) => {
            let (ns, name) = c.service.split_once('/').unwrap_or(("", c.service.as_str()));
            (ns.to_string(), name.to_string(), c.local_endpoints)
        }
        None => (String::new(), String::new(), 0),
    };
    let body = serde_json::json!({
        "service": {"namespace": ns, "name": name},
        "localEndpoints": n,
        "serviceProxyHealthy": true,
    });
    let status = if n > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_kube_proxy_does() {
        let c = HealthCheck {
            service: "shop/web".into(),
            local_endpoints: 2,
        };
        let r = answer(Some(&c));
        assert_eq!(r.status(), StatusCode::OK);
        let r = answer(Some(&HealthCheck {
            local_endpoints: 0,
            ..c
        }));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer(None).status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

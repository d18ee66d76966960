//! The agent's small HTTP endpoints (metrics, probes, health check node
//! ports): hyper HTTP/1, each listener's connections answered by path.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Status, content type and body.
pub type Reply = (StatusCode, &'static str, String);

/// What a listener answers a request's path with.
pub type Answer = Arc<dyn Fn(&str) -> Response<Full<Bytes>> + Send + Sync>;

pub fn response((status, content_type, body): Reply) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// What one listener grants its clients. A health check node port faces
/// whoever can reach the node, the cloud's load balancer among them, so a
/// client must not be able to hold a connection, or the agent's threads,
/// for nothing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must be in within this, or the connection is
    /// closed (one that sends nothing, or dribbles them).
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Answer every connection `l` accepts, until the task is dropped: one
/// request per connection (no idle keep-alive to hold), within `limits`.
pub async fn accept_loop(l: std::net::TcpListener, answer: Answer, limits: Limits) {
    let Ok(listener) = tokio::net::TcpListener::from_std(l) else {
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                stream
            }
            // Out of descriptors or buffers: accepting again at once would
            // spin on the same error.
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let answer = answer.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let resp = answer(req.uri().path());
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        tokio::task::spawn(async move {
            let _slot = slot;
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(false)
                .serve_connection(io, service)
                .await;
        });
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A non-blocking listener on `addr`. The unspecified IPv6 address takes
/// both families, or IPv4's alone where the node has no IPv6.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = match std::net::TcpListener::bind(addr) {
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port()))).map_err(|_| e)?
        }
        r => r?,
    };
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serve `answer(path)` on `addr` (see [`bind`]) from a thread named
/// `name`, within `limits`; returns the address bound (port 0 picks one).
pub fn serve(
    addr: SocketAddr,
    name: &str,
    answer: impl Fn(&str) -> Reply + Send + Sync + 'static,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    let l = bind(addr)?;
    let bound = l.local_addr()?;
    let answer: Answer = Arc::new(move |path| response(answer(path)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || rt.block_on(accept_loop(l, answer, limits)))?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::{Limits, serve};
    use hyper::StatusCode;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    fn server(limits: Limits) -> std::net::SocketAddr {
        serve(
            "127.0.0.1:0".parse().unwrap(),
            "http-test",
            |_| (StatusCode::OK, "text/plain", "ok".into()),
            limits,
        )
        .unwrap()
    }

    fn get(addr: std::net::SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    /// Whether the server closes `c` within `within` (EOF or a reset).
    fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
        c.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// A client that sends nothing, or its headers a byte at a time, is
    /// cut off at the header timeout; an answered one is closed at once
    /// (one request per connection).
    #[test]
    fn slow_and_idle_clients_are_cut_off() {
        let addr = server(Limits {
            header_timeout: Duration::from_millis(400),
            max_connections: 64,
        });
        let started = Instant::now();
        let mut idle = TcpStream::connect(addr).unwrap();
        let mut slow = TcpStream::connect(addr).unwrap();
        for b in b"GET /healthz HTTP/1.1\r\nHo" {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        assert!(
            closed_within(&mut slow, Duration::from_secs(3)),
            "a dribbling client kept its connection"
        );
        assert!(
            closed_within(&mut idle, Duration::from_secs(3)),
            "a silent client kept its connection"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        let reply = get(addr);
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok"), "{reply}");
        assert!(reply.to_ascii_lowercase().contains("connection: close"), "{reply}");
    }

    /// Many silent connections do not keep a request from its answer; at
    /// the cap, the next waits until the header timeout frees a slot.
    #[test]
    fn held_connections_do_not_starve_a_request() {
        let addr = server(Limits::default());
        let held: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let started = Instant::now();
        assert!(get(addr).ends_with("ok"));
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        drop(held);

        let addr = server(Limits {
            header_timeout: Duration::from_millis(500),
            max_connections: 2,
        });
        let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        assert!(get(addr).ends_with("ok"));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "the third connection waited {waited:?} for a slot"
        );
        drop(held);
    }
}

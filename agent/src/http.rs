//! The agent's small HTTP endpoints (metrics, probes): one hyper HTTP/1
//! server per listener on a thread of its own, answering by path.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// Status, content type and body.
pub type Reply = (StatusCode, &'static str, String);

/// Serve `answer(path)` on `addr` from a thread named `name`; returns the
/// address bound (port 0 picks one).
pub fn serve(
    addr: SocketAddr,
    name: &str,
    answer: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let answer = Arc::new(answer);
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    std::thread::Builder::new().name(name.into()).spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                return;
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let answer = answer.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, content_type, body) = answer(req.uri().path());
                    let resp = Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)))
                        .expect("a valid response");
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                tokio::task::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
    })?;
    Ok(bound)
}

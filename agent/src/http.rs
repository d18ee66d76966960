//! The agent's small HTTP endpoints (metrics, probes, health check node
//! ports): hyper HTTP/1, each listener's connections answered by path.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

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

/// Answer every connection `l` accepts, until the task is dropped.
pub async fn accept_loop(l: std::net::TcpListener, answer: Answer) {
    let Ok(listener) = tokio::net::TcpListener::from_std(l) else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let resp = answer(req.uri().path());
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        tokio::task::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Serve `answer(path)` on `addr` from a thread named `name`; returns the
/// address bound (port 0 picks one).
pub fn serve(
    addr: SocketAddr,
    name: &str,
    answer: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let bound = l.local_addr()?;
    let answer: Answer = Arc::new(move |path| response(answer(path)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || rt.block_on(accept_loop(l, answer)))?;
    Ok(bound)
}

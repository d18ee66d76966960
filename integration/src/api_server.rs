//! A stand-in for the Kubernetes API server's list/watch protocol, for the
//! six kinds the agent watches, so that the agent's kube-rs watchers run
//! over HTTP in the tests (no kube-apiserver can be had here).
//!
//! What it speaks, as the API server does:
//! - lists with `metadata.resourceVersion`, paged by `limit`/`continue`
//!   over one snapshot (a page may be shorter than asked: [`Faults::page`]);
//! - watches from a resourceVersion: the events after it replayed, then
//!   live ones as newline-delimited JSON over a chunked response;
//!   `BOOKMARK` events when asked for (`allowWatchBookmarks`);
//! - a watch from a resourceVersion older than the kept history gets an
//!   `ERROR` event with a `410 Expired` status, which makes a client list
//!   again ([`ApiServer::compact`]);
//! - events POSTed by the agent are accepted.
//!
//! And the faults a real one has: open watches cut mid-stream
//! ([`ApiServer::drop_watches`]), slow lists, short pages, a kind whose
//! lists are held back ([`ApiServer::hold`]), watches held back
//! ([`ApiServer::hold_watches`]).

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// (kind, resource, API path prefix, apiVersion).
pub const KINDS: [(&str, &str, &str, &str); 6] = [
    ("Service", "services", "/api/v1", "v1"),
    (
        "EndpointSlice",
        "endpointslices",
        "/apis/discovery.k8s.io/v1",
        "discovery.k8s.io/v1",
    ),
    (
        "NetworkPolicy",
        "networkpolicies",
        "/apis/networking.k8s.io/v1",
        "networking.k8s.io/v1",
    ),
    ("Pod", "pods", "/api/v1", "v1"),
    ("Namespace", "namespaces", "/api/v1", "v1"),
    ("Node", "nodes", "/api/v1", "v1"),
];

/// Faults the server puts in its answers.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The most items in one list page, whatever the client's `limit`.
    pub page: Option<usize>,
    /// Every list (each page) answers this late.
    pub list_delay: Duration,
    /// Bookmarks on every watch that asks for them, this often.
    pub bookmarks: Option<Duration>,
}

/// What was asked of the server, for the tests to check the protocol was
/// exercised (a re-list after a 410, pages).
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub lists: BTreeMap<String, usize>,
    pub pages_continued: usize,
    pub watches: BTreeMap<String, usize>,
    pub gone: usize,
    pub bookmarks: usize,
    pub events_posted: usize,
}

type Line = Result<Bytes, std::io::Error>;

#[derive(Default)]
struct Kind {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, type, object), oldest first, after `compacted`.
    history: Vec<(u64, &'static str, Value)>,
    compacted: u64,
}

#[derive(Default)]
struct State {
    rv: u64,
    kinds: BTreeMap<&'static str, Kind>,
    watches: Vec<(&'static str, mpsc::UnboundedSender<Line>)>,
    snapshots: HashMap<String, (u64, Vec<Value>)>,
    faults: Faults,
    held: BTreeSet<&'static str>,
    watches_held: bool,
    counts: Counts,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    // Dropped with the server: its runtime stops, connections close.
    _rt: tokio::runtime::Runtime,
}

fn key(o: &Value) -> String {
    let m = &o["metadata"];
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", m["name"].as_str().unwrap_or_default()),
        None => m["name"].as_str().unwrap_or_default().to_string(),
    }
}

fn resource_of(kind: &str) -> Option<&'static str> {
    KINDS.iter().find(|k| k.0 == kind).map(|k| k.1)
}

fn line(kind_type: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind_type, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

impl ApiServer {
    /// Serve on a loopback port of its own.
    pub fn start(faults: Faults) -> Result<ApiServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut st = State {
            faults,
            ..State::default()
        };
        for k in KINDS {
            st.kinds.insert(k.1, Kind::default());
        }
        let state = Arc::new(Mutex::new(st));
        let s = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| serve(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(ApiServer { addr, state, _rt: rt })
    }

    /// A kubeconfig naming this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self, path: &std::path::Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster: {{server: \"http://{}\"}}\n\
             users:\n- name: agent\n  user: {{}}\ncontexts:\n- name: stand-in\n  context: {{cluster: stand-in, user: agent}}\n\
             current-context: stand-in\n",
            self.addr
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("api server state")
    }

    /// Create or replace an object (ADDED or MODIFIED to its watchers).
    pub fn apply(&self, mut o: Value) -> Result<()> {
        let kind = o["kind"].as_str().context("an object without kind")?.to_string();
        let res = resource_of(&kind).with_context(|| format!("{kind} is not one of the six kinds"))?;
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        o["metadata"]["resourceVersion"] = json!(rv.to_string());
        let k = key(&o);
        let kind_state = st.kinds.get_mut(res).expect("every kind");
        let ty = if kind_state.objects.insert(k, o.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        kind_state.history.push((rv, ty, o.clone()));
        let l = line(ty, &o);
        st.watches.retain(|(r, tx)| *r != res || tx.send(Ok(l.clone())).is_ok());
        Ok(())
    }

    /// Delete an object by kind and "namespace/name" (or "name").
    pub fn delete(&self, kind: &str, key_: &str) -> Result<()> {
        let res = resource_of(kind).with_context(|| format!("{kind} is not one of the six kinds"))?;
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let kind_state = st.kinds.get_mut(res).expect("every kind");
        let mut o = kind_state
            .objects
            .remove(key_)
            .with_context(|| format!("no {kind} {key_}"))?;
        o["metadata"]["resourceVersion"] = json!(rv.to_string());
        kind_state.history.push((rv, "DELETED", o.clone()));
        let l = line("DELETED", &o);
        st.watches.retain(|(r, tx)| *r != res || tx.send(Ok(l.clone())).is_ok());
        Ok(())
    }

    /// Forget the history: a watch resuming from before now gets `410 Gone`.
    pub fn compact(&self) {
        let mut st = self.lock();
        let rv = st.rv;
        for k in st.kinds.values_mut() {
            k.history.clear();
            k.compacted = rv;
        }
    }

    /// Cut every open watch mid-stream (the connection fails, as when an
    /// API server restarts or a load balancer drops it).
    pub fn drop_watches(&self) -> usize {
        let mut st = self.lock();
        let n = st.watches.len();
        for (_, tx) in st.watches.drain(..) {
            let _ = tx.send(Err(std::io::Error::other("connection cut by the test")));
        }
        n
    }

    /// Hold back lists of `kind` until [`ApiServer::release`].
    pub fn hold(&self, kind: &str) {
        if let Some(r) = resource_of(kind) {
            self.lock().held.insert(r);
        }
    }

    pub fn release(&self, kind: &str) {
        if let Some(r) = resource_of(kind) {
            self.lock().held.remove(r);
        }
    }

    /// Hold back new watches until [`ApiServer::release_watches`]: what
    /// changes meanwhile reaches a client only through what it asks for
    /// afterwards (the history, or a list after a 410).
    pub fn hold_watches(&self) {
        self.lock().watches_held = true;
    }

    pub fn release_watches(&self) {
        self.lock().watches_held = false;
    }

    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
    }

    /// Open watches of `kind`'s resource.
    pub fn open_watches(&self, kind: &str) -> usize {
        let r = resource_of(kind);
        let mut st = self.lock();
        st.watches.retain(|(_, tx)| !tx.is_closed());
        st.watches.iter().filter(|(k, _)| Some(*k) == r).count()
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts.clone()
    }
}

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).map_err(|e| match e {}).boxed())
        .expect("a response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn serve(
    state: Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    // The agent's Warning events on its node.
    if matches!(*req.method(), Method::POST | Method::PATCH) && path.ends_with("/events") || path.contains("/events/") {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        state.lock().expect("state").counts.events_posted += 1;
        let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
        return Ok(full(StatusCode::CREATED, &v));
    }
    let Some(&(kind, res, _, api_version)) = KINDS.iter().find(|k| path == format!("{}/{}", k.2, k.1)) else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", &format!("{path}: not served here")),
        ));
    };
    let q = query(&req);
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        while state.lock().expect("state").watches_held {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return Ok(watch(state, res, &q));
    }
    // A list: held back, slowed, paged over one snapshot.
    loop {
        let held = state.lock().expect("state").held.contains(res);
        if !held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delay = state.lock().expect("state").faults.list_delay;
    tokio::time::sleep(delay).await;
    let mut st = state.lock().expect("state");
    *st.counts.lists.entry(kind.to_string()).or_default() += 1;
    let (token, offset) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            st.counts.pages_continued += 1;
            let (t, o) = c.rsplit_once('-').unwrap_or((c, "0"));
            (t.to_string(), o.parse::<usize>().unwrap_or(0))
        }
        None => {
            let t = format!("{res}{}", st.rv);
            let items: Vec<Value> = st.kinds[res].objects.values().cloned().collect();
            let rv = st.rv;
            st.snapshots.insert(t.clone(), (rv, items));
            (t, 0)
        }
    };
    let Some((rv, items)) = st.snapshots.get(&token).cloned() else {
        return Ok(full(
            StatusCode::GONE,
            &status(410, "Expired", "the continue token is too old"),
        ));
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let page = limit.min(st.faults.page.unwrap_or(usize::MAX)).max(1);
    let end = (offset + page).min(items.len());
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        metadata["continue"] = json!(format!("{token}-{end}"));
    }
    let list = json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": metadata,
        "items": items[offset..end],
    });
    Ok(full(StatusCode::OK, &list))
}

/// A watch: the history after its resourceVersion, then live events; or
/// a 410 when that history is gone.
fn watch(state: Arc<Mutex<State>>, res: &'static str, q: &BTreeMap<String, String>) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel::<Line>();
    let mut st = state.lock().expect("state");
    *st.counts.watches.entry(res.to_string()).or_default() += 1;
    let from = q
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let k = &st.kinds[res];
    if from == 0 {
        // "Any": the current objects as ADDED, then live.
        for o in k.objects.values() {
            let _ = tx.send(Ok(line("ADDED", o)));
        }
    } else if from < k.compacted {
        let _ = tx.send(Ok(line(
            "ERROR",
            &status(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", k.compacted),
            ),
        )));
        st.counts.gone += 1;
        drop(tx);
        return stream_response(rx);
    } else {
        for (rv, ty, o) in &k.history {
            if *rv > from {
                let _ = tx.send(Ok(line(ty, o)));
            }
        }
    }
    let bookmarks = st
        .faults
        .bookmarks
        .filter(|_| q.get("allowWatchBookmarks").is_some_and(|b| b == "true"));
    if let Some(every) = bookmarks {
        let (state, tx) = (state.clone(), tx.clone());
        let kind = KINDS.iter().find(|k| k.1 == res).expect("a kind");
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let rv = {
                    let mut st = state.lock().expect("state");
                    st.counts.bookmarks += 1;
                    st.rv
                };
                let mark =
                    json!({"kind": kind.0, "apiVersion": kind.3, "metadata": {"resourceVersion": rv.to_string()}});
                if tx.send(Ok(line("BOOKMARK", &mark))).is_err() {
                    return;
                }
            }
        });
    }
    st.watches.push((res, tx));
    drop(st);
    stream_response(rx)
}

fn stream_response(rx: mpsc::UnboundedReceiver<Line>) -> Response<Body> {
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map(Frame::data), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("a response")
}

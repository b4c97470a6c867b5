//! Fault-injecting HTTP/1.1 proxy for integration tests.
//!
//! Sits between tidemark (the `elasticsearch` crate over reqwest/hyper) and the search
//! server, and injects the faults no server produces on demand (see DESIGN.md, protocol
//! invariant 6): whole-request 503s, item-level 429s inside `_bulk` answers, write blocks,
//! 413s from a size-limiting front, slow requests, answers held back after the server
//! executed the request, and connection resets. It also keeps a log of the `_bulk` traffic,
//! so a test can assert who shipped what, and when.
//!
//! ```ignore
//! let proxy = FaultProxy::start(&es_url).await;
//! proxy.set(Faults { bulk_item_429: 0.3, only_path: Some("_bulk".into()), ..Faults::default() });
//! // point tidemark at proxy.url() ...
//! assert!(proxy.stats().items_429 > 0);
//! ```
//!
//! The client side is hyper's HTTP/1.1 server (keep-alive, pipelining, chunked bodies,
//! `Expect: 100-continue`, and 400/431 answers to malformed requests are all hyper's); the
//! upstream side is a pooled reqwest client. Each request is read whole, faulted, forwarded
//! whole, and its answer read whole, so every answer carries a recomputed `Content-Length`.
//! Dropping the [`FaultProxy`] aborts the listener and every open connection.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Largest accepted request head (request line and headers); hyper answers 431 beyond it.
const MAX_HEAD: usize = 16 * 1024;

const UNAVAILABLE_BODY: &str = r#"{"error":{"type":"unavailable_shards_exception","reason":"injected by fault proxy"},"status":503}"#;
const REJECTED_REASON: &str = "rejected execution (injected by fault proxy)";
/// What nginx answers when a body exceeds `client_max_body_size`: the page a client meets
/// when a size-limiting front sits before the search server.
const TOO_LARGE_BODY: &str =
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n\
    <body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n\
    <hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// The fault plan. All probabilities are in `0.0..=1.0`; values outside behave as the
/// nearest bound (NaN as 0).
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability (0.0..=1.0) that a whole request is answered 503 without being forwarded.
    pub unavailable: f64,
    /// Probability that each item of a `_bulk` request is answered with an item-level 429
    /// (es_rejected_execution_exception) instead of being forwarded: the proxy removes those
    /// items from the NDJSON it forwards (action line + source line; `delete` has no source
    /// line), forwards the rest, and splices 429 items into the upstream's `items` array at
    /// the right positions, setting `errors: true`. If all items are rejected, it answers
    /// without forwarding.
    pub bulk_item_429: f64,
    /// Probability that a request is delayed by `delay` before being forwarded.
    pub slow: f64,
    pub delay: Duration,
    /// Probability that a request is forwarded at once and the upstream's answer held for
    /// `delay_answer` before it is returned: a `_bulk` the server has already executed while
    /// the client may time out and send it again.
    pub slow_answer: f64,
    pub delay_answer: Duration,
    /// Probability that the connection is reset (RST) after reading the request, without an
    /// answer (the request is NOT forwarded).
    pub reset: f64,
    /// Probability that a `_bulk` request is answered, without being forwarded, as by an
    /// index with a write block (`cluster_block_exception`).
    pub write_block: f64,
    /// The status of a write-block answer: 403 as OpenSearch and Elasticsearch 7+ answer
    /// `index.blocks.write`; Elasticsearch 8 answers 429 to the flood-stage disk block.
    pub write_block_status: u16,
    /// Plays a size-limiting front (nginx's `client_max_body_size`): a request whose body is
    /// larger is answered 413 with nginx's HTML page, not forwarded. Applies to every path.
    pub max_body: Option<usize>,
    /// Only requests whose path contains this substring are subject to the faults above
    /// except `max_body` (None = all). Useful to fault `_bulk` only and let index admin
    /// calls through.
    pub only_path: Option<String>,
    /// Deterministic first: the next `fail_next` matching requests get 503 regardless of
    /// probabilities.
    pub fail_next: u32,
    /// Plays a secured server: requests whose `Authorization` header is not exactly this
    /// are answered 401 (security_exception), as Elasticsearch answers wrong credentials.
    pub require_authorization: Option<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            unavailable: 0.0,
            bulk_item_429: 0.0,
            slow: 0.0,
            delay: Duration::ZERO,
            slow_answer: 0.0,
            delay_answer: Duration::ZERO,
            reset: 0.0,
            write_block: 0.0,
            write_block_status: 403,
            max_body: None,
            only_path: None,
            fail_next: 0,
            require_authorization: None,
        }
    }
}

/// What the proxy has done so far.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct FaultStats {
    /// Requests sent upstream (faulted or not).
    pub forwarded: u64,
    /// Requests answered 503 by the proxy (`fail_next` and `unavailable`).
    pub unavailable: u64,
    /// `_bulk` items answered 429 by the proxy.
    pub items_429: u64,
    /// Requests delayed by `delay`.
    pub slowed: u64,
    /// Connections reset after reading a request.
    pub resets: u64,
    /// Requests answered 413 (`max_body`).
    pub too_large: u64,
    /// Answers held back by `delay_answer`.
    pub answers_delayed: u64,
    /// `_bulk` requests answered with a write block.
    pub write_blocked: u64,
    /// Requests being handled right now (a gauge, not a count).
    pub in_flight: u64,
}

/// One `_bulk` request the proxy forwarded, as [`FaultProxy::bulk_log`] returns it.
#[derive(Clone, Debug)]
pub struct BulkRecord {
    /// When the request reached the proxy (its head was read).
    pub start: Instant,
    /// When its answer was handed back to the client (after any `delay_answer`).
    pub end: Instant,
    /// The HTTP status the client got.
    pub status: u16,
    /// The actions the server received, in order. Items the `bulk_item_429` fault rejected
    /// are not among them; empty if the body could not be split (e.g. compressed).
    pub actions: Vec<BulkAction>,
}

/// One action line of a `_bulk` body.
#[derive(Clone, Debug, PartialEq)]
pub struct BulkAction {
    /// `index`, `create`, `update` or `delete`.
    pub op: String,
    /// `_index`, or the index of a `/<index>/_bulk` path.
    pub index: Option<String>,
    pub id: Option<String>,
    /// The external `version`, if the action carried one.
    pub version: Option<u64>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts on 127.0.0.1:0 in a background tokio task, forwarding to `upstream`
    /// (e.g. "http://127.0.0.1:9200").
    pub async fn start(upstream: &str) -> FaultProxy {
        FaultProxy::start_on("127.0.0.1:0", upstream).await
    }

    /// Starts on a given address (a port a process was already told to use, to play a
    /// server that comes back).
    pub async fn start_on(addr: &str, upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("fault proxy: bind {addr}: {e}"));
        let addr = listener.local_addr().expect("fault proxy: local_addr");
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("fault proxy: build reqwest client");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            faults: Mutex::new(Faults::default()),
            stats: Counters::default(),
            bulk_log: Mutex::new(Vec::new()),
            handlers: Mutex::new(JoinSet::new()),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy { addr, shared, task }
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the active fault plan (takes effect for the next request).
    pub fn set(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// No faults.
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    /// Counts of what was injected so far, by kind, and of requests forwarded.
    pub fn stats(&self) -> FaultStats {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        FaultStats {
            forwarded: get(&s.forwarded),
            unavailable: get(&s.unavailable),
            items_429: get(&s.items_429),
            slowed: get(&s.slowed),
            resets: get(&s.resets),
            too_large: get(&s.too_large),
            answers_delayed: get(&s.answers_delayed),
            write_blocked: get(&s.write_blocked),
            in_flight: get(&s.in_flight),
        }
    }

    /// The `_bulk` requests forwarded so far (since the last [`FaultProxy::clear_log`]),
    /// in the order their answers were returned.
    pub fn bulk_log(&self) -> Vec<BulkRecord> {
        lock(&self.shared.bulk_log).clone()
    }

    pub fn clear_log(&self) {
        lock(&self.shared.bulk_log).clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task,
        // and so closes every connection. The request handlers are aborted too (they hold
        // the shared state, which so is freed).
        self.task.abort();
        lock(&self.shared.handlers).abort_all();
    }
}

// ---------------------------------------------------------------------------------------
// Shared state and the fault draw

struct Shared {
    upstream: String,
    client: reqwest::Client,
    faults: Mutex<Faults>,
    stats: Counters,
    bulk_log: Mutex<Vec<BulkRecord>>,
    /// The tasks carrying requests through (see [`handle`]).
    handlers: Mutex<JoinSet<()>>,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    unavailable: AtomicU64,
    items_429: AtomicU64,
    slowed: AtomicU64,
    resets: AtomicU64,
    too_large: AtomicU64,
    answers_delayed: AtomicU64,
    write_blocked: AtomicU64,
    in_flight: AtomicU64,
}

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::SeqCst);
}

/// Holds one unit of the `in_flight` gauge while a request is handled. It is dropped
/// before the answer is handed to hyper: a client that has its answer never sees its own
/// request still in flight.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: Arc<Shared>) -> Self {
        shared.stats.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn chance<R: Rng>(rng: &mut R, p: f64) -> bool {
    // `p > 0.0` is false for NaN; gen::<f64>() is in [0, 1), so p >= 1.0 always fires.
    p > 0.0 && rng.gen::<f64>() < p
}

enum Action {
    Pass,
    Unavailable,
    Reset,
    /// Answer as a write-blocked index, with this status.
    WriteBlock(u16),
}

struct Decision {
    action: Action,
    delay: Option<Duration>,
    delay_answer: Option<Duration>,
    bulk_item_429: f64,
}

impl Shared {
    /// Draws the faults for one request (synchronously: the rng never crosses an await).
    fn decide(&self, path: &str, bulk: bool) -> Decision {
        let pass = Decision {
            action: Action::Pass,
            delay: None,
            delay_answer: None,
            bulk_item_429: 0.0,
        };
        let mut f = lock(&self.faults);
        if f.only_path
            .as_ref()
            .is_some_and(|only| !path.contains(only.as_str()))
        {
            return pass;
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
            return Decision {
                action: Action::Unavailable,
                ..pass
            };
        }
        let mut rng = rand::thread_rng();
        if chance(&mut rng, f.reset) {
            return Decision {
                action: Action::Reset,
                ..pass
            };
        }
        if chance(&mut rng, f.unavailable) {
            return Decision {
                action: Action::Unavailable,
                ..pass
            };
        }
        if bulk && chance(&mut rng, f.write_block) {
            return Decision {
                action: Action::WriteBlock(f.write_block_status),
                ..pass
            };
        }
        let mut held = |d: Duration, p: f64| (!d.is_zero() && chance(&mut rng, p)).then_some(d);
        Decision {
            action: Action::Pass,
            delay: held(f.delay, f.slow),
            delay_answer: held(f.delay_answer, f.slow_answer),
            bulk_item_429: f.bulk_item_429,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client side: hyper serves each connection

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                conns.spawn(serve_connection(stream, shared.clone()));
            }
            // e.g. EMFILE: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // hyper owns the stream and closes it with a FIN. For the `reset` fault we keep a second
    // handle on the same socket: SO_LINGER 0 set through it turns that close into a RST, what
    // a crashed server or a load balancer gives the client.
    let Ok((stream, linger)) = with_second_handle(stream) else {
        return;
    };
    let linger = Arc::new(linger);
    let service = service_fn(move |req| handle(shared.clone(), linger.clone(), req));
    // Errors here are the client's (malformed input, which hyper has answered, or a peer
    // gone) or our injected resets: either way the connection is over.
    let _ = http1::Builder::new()
        .max_header_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn with_second_handle(stream: TcpStream) -> io::Result<(TcpStream, TcpSocket)> {
    let std = stream.into_std()?;
    let second = std.try_clone()?;
    Ok((
        TcpStream::from_std(std)?,
        TcpSocket::from_std_stream(second),
    ))
}

/// The service: answers one request. An `Err` makes hyper drop the connection without an
/// answer, which is how the `reset` fault is delivered.
async fn handle(
    shared: Arc<Shared>,
    linger: Arc<TcpSocket>,
    req: Request<hyper::body::Incoming>,
) -> io::Result<Response<Full<Bytes>>> {
    let start = Instant::now();
    let in_flight = InFlight::enter(shared.clone());
    let (head, body) = req.into_parts();
    // The body is read whole before anything is decided, even for a 413 (nginx drains it
    // too): a client still sending when the proxy answered and closed would see a broken
    // pipe instead of the answer. hyper answers a malformed head itself; a malformed or
    // truncated body is ours to answer.
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            let reason = format!("fault proxy: malformed request body: {e}{cause}");
            let mut answer = Answer::error(400, &reason);
            answer
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(answer.into_response(false));
        }
    };
    // A request once read is carried through even if its client goes away meanwhile (hyper
    // then drops this future), as a server would: it still reaches the upstream, is counted
    // and logged; only its answer has nowhere to go. So it runs in a task of its own.
    let head_request = head.method == Method::HEAD;
    let (tx, rx) = oneshot::channel();
    {
        let mut handlers = lock(&shared.handlers);
        while handlers.try_join_next().is_some() {}
        handlers.spawn(async move {
            let answer = respond(&in_flight.0, &head, body, start).await;
            drop(in_flight);
            let _ = tx.send(answer);
        });
    }
    match rx.await {
        Ok(Some(answer)) => Ok(answer.into_response(head_request)),
        Ok(None) => {
            linger.set_zero_linger()?;
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "reset injected by the fault proxy",
            ))
        }
        Err(_) => Err(io::Error::other("the fault proxy was stopped")),
    }
}

/// An answer, complete (the proxy edits `_bulk` answers, so they are read whole).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    /// An answer made up by the proxy, dressed as Elasticsearch dresses its own.
    fn json(status: u16, body: &Value) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "x-elastic-product",
            HeaderValue::from_static("Elasticsearch"),
        );
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Answer {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }

    fn error(status: u16, reason: &str) -> Answer {
        let body =
            json!({"error": {"type": "fault_proxy_exception", "reason": reason}, "status": status});
        Answer::json(status, &body)
    }

    fn into_response(self, head_request: bool) -> Response<Full<Bytes>> {
        let mut headers = self.headers;
        // hyper sets the length of the body we send; for HEAD the upstream's Content-Length
        // describes the GET body and is kept.
        if !head_request {
            headers.remove(header::CONTENT_LENGTH);
        }
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = headers;
        resp
    }
}

// ---------------------------------------------------------------------------------------
// Fault application and forwarding

/// The answer to one request, or `None` to reset the connection.
async fn respond(shared: &Shared, head: &Parts, body: Bytes, start: Instant) -> Option<Answer> {
    let (max_body, required) = {
        let f = lock(&shared.faults);
        (f.max_body, f.require_authorization.clone())
    };
    // The size-limiting front answers before the server sees anything.
    if max_body.is_some_and(|max| body.len() > max) {
        count(&shared.stats.too_large, 1);
        return Some(too_large());
    }
    if let Some(required) = required {
        if head
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            != Some(required.as_bytes())
        {
            let body = json!({
                "error": {"type": "security_exception", "reason": "unable to authenticate user for REST request"},
                "status": 401,
            });
            return Some(Answer::json(401, &body));
        }
    }

    let bulk = is_bulk(head);
    let default_index = path_index(head.uri.path());
    let items = if bulk && !is_encoded(head) {
        parse_bulk(&body, default_index.as_deref()).unwrap_or_default()
    } else {
        Vec::new()
    };
    let decision = shared.decide(head.uri.path(), bulk);
    match decision.action {
        Action::Reset => {
            count(&shared.stats.resets, 1);
            return None;
        }
        Action::Unavailable => {
            count(&shared.stats.unavailable, 1);
            let body: Value = serde_json::from_str(UNAVAILABLE_BODY).unwrap_or_default();
            return Some(Answer::json(503, &body));
        }
        Action::WriteBlock(status) => {
            count(&shared.stats.write_blocked, 1);
            let index = default_index.or_else(|| items.iter().find_map(|i| i.action.index.clone()));
            return Some(write_blocked(status, index.as_deref().unwrap_or("x")));
        }
        Action::Pass => {}
    }
    if let Some(delay) = decision.delay {
        count(&shared.stats.slowed, 1);
        tokio::time::sleep(delay).await;
    }

    let rejected: Vec<bool> = {
        let mut rng = rand::thread_rng();
        items
            .iter()
            .map(|_| chance(&mut rng, decision.bulk_item_429))
            .collect()
    };
    let n_rejected = rejected.iter().filter(|r| **r).count();
    if n_rejected > 0 && n_rejected == items.len() {
        count(&shared.stats.items_429, n_rejected as u64);
        let all: Vec<Value> = items.iter().map(rejected_item).collect();
        return Some(Answer::json(
            200,
            &json!({"took": 0, "errors": true, "items": all}),
        ));
    }
    let answer = if n_rejected > 0 {
        let mut kept = Vec::with_capacity(body.len());
        for (item, _) in items.iter().zip(&rejected).filter(|(_, rej)| !**rej) {
            kept.extend_from_slice(&body[item.range.clone()]);
        }
        let answer = forward(shared, head, kept.into()).await;
        splice_rejections(shared, answer, &items, &rejected)
    } else {
        forward(shared, head, body).await
    };

    if let Some(delay) = decision.delay_answer {
        count(&shared.stats.answers_delayed, 1);
        tokio::time::sleep(delay).await;
    }
    if bulk {
        let actions = items
            .into_iter()
            .zip(&rejected)
            .filter(|(_, rej)| !**rej)
            .map(|(i, _)| i.action);
        let record = BulkRecord {
            start,
            end: Instant::now(),
            status: answer.status.as_u16(),
            actions: actions.collect(),
        };
        lock(&shared.bulk_log).push(record);
    }
    Some(answer)
}

fn too_large() -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    // nginx does not keep a connection alive after a 413.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Answer {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        headers,
        body: Bytes::from_static(TOO_LARGE_BODY.as_bytes()),
    }
}

/// The `cluster_block_exception` a write-blocked index answers to `_bulk`.
fn write_blocked(status: u16, index: &str) -> Answer {
    let block = if status == 429 {
        "TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block"
    } else {
        "FORBIDDEN/8/index write (api)"
    };
    let error = json!({"type": "cluster_block_exception", "reason": format!("index [{index}] blocked by: [{block}];")});
    let body = json!({
        "error": {"root_cause": [error.clone()], "type": error["type"], "reason": error["reason"]},
        "status": status,
    });
    Answer::json(status, &body)
}

fn is_bulk(head: &Parts) -> bool {
    matches!(head.method, Method::POST | Method::PUT)
        && head.uri.path().trim_end_matches('/').rsplit('/').next() == Some("_bulk")
}

/// A compressed body cannot be split into items (nor its answer edited).
fn is_encoded(head: &Parts) -> bool {
    head.headers.get(header::CONTENT_ENCODING).is_some_and(|e| {
        !e.as_bytes().trim_ascii().is_empty()
            && !e.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity")
    })
}

/// The index named in `/<index>/_bulk`, if any.
fn path_index(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [index, "_bulk"] => Some((*index).to_string()),
        _ => None,
    }
}

struct BulkItem {
    action: BulkAction,
    /// Byte range of the item in the request body (action line and source line, with
    /// their newlines).
    range: Range<usize>,
}

/// Splits a `_bulk` NDJSON body into items: an action line, then a source line unless the
/// action is a `delete`. `None` when the body is not something we can split faithfully
/// (then it is forwarded untouched and the server judges it).
fn parse_bulk(body: &[u8], default_index: Option<&str>) -> Option<Vec<BulkItem>> {
    if body.last() != Some(&b'\n') {
        return None; // the server rejects a missing final newline: let it
    }
    let next_line = |pos: usize| -> Option<(Range<usize>, usize)> {
        let nl = pos + body.get(pos..)?.iter().position(|b| *b == b'\n')?;
        Some((pos..nl, nl + 1))
    };
    let mut items = Vec::new();
    let mut pos = 0;
    while let Some((line, after)) = next_line(pos) {
        if body[line.clone()].trim_ascii().is_empty() {
            pos = after; // empty lines between items are skipped (by ES too)
            continue;
        }
        let action: Value = serde_json::from_slice(&body[line.clone()]).ok()?;
        let (op, meta) = match action.as_object()? {
            obj if obj.len() == 1 => obj.iter().next()?,
            _ => return None,
        };
        let end = match op.as_str() {
            "delete" => after,
            "index" | "create" | "update" => next_line(after)?.1,
            _ => return None,
        };
        let text = |key: &str| match meta.get(key)? {
            Value::String(s) => Some(s.clone()),
            v @ Value::Number(_) => Some(v.to_string()),
            _ => None,
        };
        let action = BulkAction {
            op: op.clone(),
            index: text("_index").or(default_index.map(str::to_string)),
            id: text("_id"),
            version: text("version").and_then(|v| v.parse().ok()),
        };
        items.push(BulkItem {
            action,
            range: line.start..end,
        });
        pos = end;
    }
    (!items.is_empty()).then_some(items)
}

fn rejected_item(item: &BulkItem) -> Value {
    let a = &item.action;
    let mut inner = serde_json::Map::new();
    if let Some(index) = &a.index {
        inner.insert("_index".into(), index.as_str().into());
    }
    if let Some(id) = &a.id {
        inner.insert("_id".into(), id.as_str().into());
    }
    inner.insert("status".into(), 429.into());
    inner.insert(
        "error".into(),
        json!({"type": "es_rejected_execution_exception", "reason": REJECTED_REASON}),
    );
    json!({ a.op.as_str(): inner })
}

/// Puts the rejected items back into the upstream's answer to the rest, at their places.
fn splice_rejections(
    shared: &Shared,
    mut answer: Answer,
    items: &[BulkItem],
    rejected: &[bool],
) -> Answer {
    if answer.status != StatusCode::OK || answer.headers.contains_key(header::CONTENT_ENCODING) {
        return answer; // whole-request failure: pass it on as it is
    }
    let Ok(mut json) = serde_json::from_slice::<Value>(&answer.body) else {
        return answer;
    };
    let Some(obj) = json.as_object_mut() else {
        return answer;
    };
    let n_rejected = rejected.iter().filter(|r| **r).count();
    match obj.get_mut("items").and_then(Value::as_array_mut) {
        Some(upstream) if upstream.len() == items.len() - n_rejected => {
            let mut upstream = std::mem::take(upstream).into_iter();
            let merged: Vec<Value> = items
                .iter()
                .zip(rejected)
                .map(|(item, rej)| {
                    if *rej {
                        rejected_item(item)
                    } else {
                        upstream.next().unwrap_or_default()
                    }
                })
                .collect();
            obj.insert("items".into(), Value::Array(merged));
        }
        // `filter_path` without items: nothing to splice into, but the errors flag still tells.
        None => {}
        Some(_) => return answer, // unexpected shape: do not pretend
    }
    obj.insert("errors".into(), true.into());
    count(&shared.stats.items_429, n_rejected as u64);
    answer.body = serde_json::to_vec(&json).unwrap_or_default().into();
    answer
}

/// Hop-by-hop headers concern one connection and are not passed on (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ];
    HOP_BY_HOP.contains(&name)
}

/// Sends the request, with `body`, upstream and returns the answer, or a 502 if the
/// upstream cannot be reached.
async fn forward(shared: &Shared, head: &Parts, body: Bytes) -> Answer {
    // Headers named in Connection are hop-by-hop too.
    let connection_tokens: Vec<String> = head
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in &head.headers {
        // Accept-Encoding is dropped so that the answer arrives uncompressed and `_bulk`
        // answers can be edited; the proxy's reqwest has no decompression. Host, length and
        // Expect are reqwest's to set.
        let n = name.as_str();
        if !is_hop_by_hop(n)
            && !matches!(n, "host" | "content-length" | "expect" | "accept-encoding")
            && !connection_tokens.iter().any(|t| t == n)
        {
            headers.append(name, value.clone());
        }
    }
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = shared
        .client
        .request(head.method.clone(), format!("{}{target}", shared.upstream))
        .headers(headers);
    if !body.is_empty() || head.headers.contains_key(header::CONTENT_LENGTH) {
        request = request.body(body);
    }
    count(&shared.stats.forwarded, 1);
    let upstream = match request.send().await {
        Ok(r) => r,
        Err(e) => return Answer::error(502, &format!("fault proxy: upstream request failed: {e}")),
    };
    let status = upstream.status();
    let headers: HeaderMap = upstream
        .headers()
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    match upstream.bytes().await {
        Ok(body) => Answer {
            status,
            headers,
            body,
        },
        Err(e) => Answer::error(
            502,
            &format!("fault proxy: reading upstream answer failed: {e}"),
        ),
    }
}

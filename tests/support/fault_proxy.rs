//! Fault-injecting HTTP/1.1 proxy for integration tests.
//!
//! Sits between tidemark (the `elasticsearch` crate over reqwest/hyper) and the search
//! server, and injects the faults no server produces on demand (see docs/design.md, protocol
//! invariant 6): whole-request 503s, item-level 429s inside `_bulk` answers, write blocks,
//! 413s from a size-limiting front, slow requests, answers held back after the server
//! executed the request, and connection resets. It also keeps a log of the `_bulk` traffic,
//! so a test can assert who shipped what, and when.
//!
//! ```ignore
//! let proxy = FaultProxy::start(&es_url).await;
//! proxy.set(Faults { bulk_item_429: 0.3, ..Faults::on("_bulk") });
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
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
const UNAUTHORIZED_BODY: &str =
    r#"{"error":{"type":"security_exception","reason":"unable to authenticate user for REST request"},"status":401}"#;
const REJECTED_REASON: &str = "rejected execution (injected by fault proxy)";
/// What nginx answers when a body exceeds `client_max_body_size`: the page a client meets
/// when a size-limiting front sits before the search server.
const TOO_LARGE_BODY: &str = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n\
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
    /// Probability that a request is delayed by `delay` before being forwarded. A request
    /// whose client gives up meanwhile still reaches the server when the delay ends.
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

impl Faults {
    /// No faults yet, and only requests whose path contains `path` subject to those set:
    /// `Faults { bulk_item_429: 0.3, ..Faults::on("_bulk") }`.
    pub fn on(path: &str) -> Faults {
        Faults { only_path: Some(path.into()), ..Faults::default() }
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
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("fault proxy: bind {addr}: {e}"));
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
            stats: Mutex::default(),
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
        lock(&self.shared.stats).clone()
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
    stats: Mutex<FaultStats>,
    bulk_log: Mutex<Vec<BulkRecord>>,
    /// The tasks carrying requests through (see [`handle`]).
    handlers: Mutex<JoinSet<()>>,
}

/// Holds one unit of the `in_flight` gauge while a request is handled. It is dropped
/// before the answer is handed to hyper: a client that has its answer never sees its own
/// request still in flight.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: Arc<Shared>) -> Self {
        shared.count(|s| s.in_flight += 1);
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.count(|s| s.in_flight -= 1);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn chance<R: Rng>(rng: &mut R, p: f64) -> bool {
    // `p > 0.0` is false for NaN; gen::<f64>() is in [0, 1), so p >= 1.0 always fires.
    p > 0.0 && rng.gen::<f64>() < p
}

/// What the fault plan holds for one request.
enum Plan {
    Reset,
    Unavailable,
    /// Answer as a write-blocked index, with this status.
    WriteBlock(u16),
    Forward(Forward),
}

/// The faults drawn for a request that is forwarded.
#[derive(Default)]
struct Forward {
    /// Held before forwarding.
    delay: Option<Duration>,
    /// Held after the upstream answered.
    delay_answer: Option<Duration>,
    bulk_item_429: f64,
}

impl Shared {
    fn count(&self, update: impl FnOnce(&mut FaultStats)) {
        update(&mut lock(&self.stats));
    }

    /// Draws the faults for one request (synchronously: the rng never crosses an await).
    fn decide(&self, path: &str, bulk: bool) -> Plan {
        let mut f = lock(&self.faults);
        if f.only_path.as_ref().is_some_and(|only| !path.contains(only.as_str())) {
            return Plan::Forward(Forward::default());
        }
        let mut rng = rand::thread_rng();
        if f.fail_next > 0 {
            f.fail_next -= 1;
            Plan::Unavailable
        } else if chance(&mut rng, f.reset) {
            Plan::Reset
        } else if chance(&mut rng, f.unavailable) {
            Plan::Unavailable
        } else if bulk && chance(&mut rng, f.write_block) {
            Plan::WriteBlock(f.write_block_status)
        } else {
            let mut held = |d: Duration, p: f64| (!d.is_zero() && chance(&mut rng, p)).then_some(d);
            Plan::Forward(Forward {
                delay: held(f.delay, f.slow),
                delay_answer: held(f.delay_answer, f.slow_answer),
                bulk_item_429: f.bulk_item_429,
            })
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
    let _ = http1::Builder::new().max_header_size(MAX_HEAD).serve_connection(TokioIo::new(stream), service).await;
}

fn with_second_handle(stream: TcpStream) -> io::Result<(TcpStream, TcpSocket)> {
    let std = stream.into_std()?;
    let second = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, TcpSocket::from_std_stream(second)))
}

/// The service: answers one request. An `Err` makes hyper drop the connection without an
/// answer, which is how the `reset` fault is delivered.
async fn handle(shared: Arc<Shared>, linger: Arc<TcpSocket>, req: Request<hyper::body::Incoming>) -> io::Result<Response<Full<Bytes>>> {
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
            let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
            let reason = format!("fault proxy: malformed request body: {e}{cause}");
            let mut answer = error_answer(StatusCode::BAD_REQUEST, &reason);
            answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(into_response(answer, false));
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
        Ok(Some(answer)) => Ok(into_response(answer, head_request)),
        Ok(None) => {
            linger.set_zero_linger()?;
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset injected by the fault proxy"))
        }
        Err(_) => Err(io::Error::other("the fault proxy was stopped")),
    }
}

/// An answer, complete: the proxy edits `_bulk` answers, so it reads them whole.
type Answer = Response<Bytes>;

/// An answer made up by the proxy, dressed as Elasticsearch dresses its own.
fn json_answer(status: StatusCode, body: String) -> Answer {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-elastic-product", "Elasticsearch")
        .body(Bytes::from(body))
        .expect("a valid status and static headers")
}

fn error_answer(status: StatusCode, reason: &str) -> Answer {
    let body = json!({"error": {"type": "fault_proxy_exception", "reason": reason}, "status": status.as_u16()});
    json_answer(status, body.to_string())
}

fn into_response(mut answer: Answer, head_request: bool) -> Response<Full<Bytes>> {
    // hyper sets the length of the body we send; for HEAD the upstream's Content-Length
    // describes the GET body and is kept.
    if !head_request {
        answer.headers_mut().remove(header::CONTENT_LENGTH);
    }
    answer.map(Full::new)
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
        shared.count(|s| s.too_large += 1);
        return Some(too_large());
    }
    let authorization = head.headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if required.is_some_and(|r| authorization != Some(r.as_bytes())) {
        return Some(json_answer(StatusCode::UNAUTHORIZED, UNAUTHORIZED_BODY.into()));
    }

    let bulk = is_bulk(head);
    let default_index = path_index(head.uri.path());
    let items = if bulk { parse_bulk(&body, default_index.as_deref()).unwrap_or_default() } else { Vec::new() };
    let plan = match shared.decide(head.uri.path(), bulk) {
        Plan::Reset => {
            shared.count(|s| s.resets += 1);
            return None;
        }
        Plan::Unavailable => {
            shared.count(|s| s.unavailable += 1);
            return Some(json_answer(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_BODY.into()));
        }
        Plan::WriteBlock(status) => {
            shared.count(|s| s.write_blocked += 1);
            let index = default_index.or_else(|| items.iter().find_map(|i| i.action.index.clone()));
            return Some(write_blocked(status, index.as_deref().unwrap_or("x")));
        }
        Plan::Forward(plan) => plan,
    };
    if let Some(delay) = plan.delay {
        shared.count(|s| s.slowed += 1);
        tokio::time::sleep(delay).await;
    }

    let rejected: Vec<bool> = items.iter().map(|_| chance(&mut rand::thread_rng(), plan.bulk_item_429)).collect();
    let n_rejected = rejected.iter().filter(|r| **r).count();
    if n_rejected > 0 && n_rejected == items.len() {
        shared.count(|s| s.items_429 += n_rejected as u64);
        let all: Vec<Value> = items.iter().map(rejected_item).collect();
        let body = json!({"took": 0, "errors": true, "items": all});
        return Some(json_answer(StatusCode::OK, body.to_string()));
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

    if let Some(delay) = plan.delay_answer {
        shared.count(|s| s.answers_delayed += 1);
        tokio::time::sleep(delay).await;
    }
    if bulk {
        let actions = items.into_iter().zip(&rejected).filter(|(_, rej)| !**rej).map(|(i, _)| i.action);
        let record = BulkRecord { start, end: Instant::now(), status: answer.status().as_u16(), actions: actions.collect() };
        lock(&shared.bulk_log).push(record);
    }
    Some(answer)
}

fn too_large() -> Answer {
    Response::builder()
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .header(header::CONTENT_TYPE, "text/html")
        // nginx does not keep a connection alive after a 413.
        .header(header::CONNECTION, "close")
        .body(Bytes::from_static(TOO_LARGE_BODY.as_bytes()))
        .expect("a valid status and static headers")
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
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    json_answer(status, body.to_string())
}

fn is_bulk(head: &Parts) -> bool {
    matches!(head.method, Method::POST | Method::PUT) && head.uri.path().trim_end_matches('/').rsplit('/').next() == Some("_bulk")
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
/// action is a `delete`. `None` when the body is not something we can split faithfully,
/// a compressed one for instance (then it is forwarded untouched and the server judges it).
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
        items.push(BulkItem { action, range: line.start..end });
        pos = end;
    }
    (!items.is_empty()).then_some(items)
}

fn rejected_item(item: &BulkItem) -> Value {
    let a = &item.action;
    let error = json!({"type": "es_rejected_execution_exception", "reason": REJECTED_REASON});
    let mut inner = json!({"_index": a.index, "_id": a.id, "status": 429, "error": error});
    if let Some(fields) = inner.as_object_mut() {
        fields.retain(|_, v| !v.is_null());
    }
    json!({ a.op.as_str(): inner })
}

/// Puts the rejected items back into the upstream's answer to the rest, at their places.
fn splice_rejections(shared: &Shared, mut answer: Answer, items: &[BulkItem], rejected: &[bool]) -> Answer {
    if answer.status() != StatusCode::OK {
        return answer; // whole-request failure: pass it on as it is
    }
    let Ok(mut json) = serde_json::from_slice::<Value>(answer.body()) else {
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
                .map(|(item, rej)| if *rej { rejected_item(item) } else { upstream.next().unwrap_or_default() })
                .collect();
            obj.insert("items".into(), Value::Array(merged));
        }
        // `filter_path` without items: nothing to splice into, but the errors flag still tells.
        None => {}
        Some(_) => return answer, // unexpected shape: do not pretend
    }
    obj.insert("errors".into(), true.into());
    shared.count(|s| s.items_429 += n_rejected as u64);
    *answer.body_mut() = serde_json::to_vec(&json).unwrap_or_default().into();
    answer
}

/// Hop-by-hop headers concern one connection and are not passed on (RFC 9110 §7.6.1).
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

/// Sends the request, with `body`, upstream and returns the answer, or a 502 if the
/// upstream cannot be reached.
async fn forward(shared: &Shared, head: &Parts, body: Bytes) -> Answer {
    let mut headers = head.headers.clone();
    // Headers named in Connection are hop-by-hop too. Accept-Encoding is dropped so that the
    // answer arrives uncompressed and `_bulk` answers can be edited (the proxy's reqwest has
    // no decompression). Host, length and Expect are reqwest's to set.
    let named: Vec<String> = head
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let dropped = ["host", "content-length", "expect", "accept-encoding"];
    for name in HOP_BY_HOP.iter().chain(&dropped).copied().chain(named.iter().map(String::as_str)) {
        headers.remove(name);
    }
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = shared.client.request(head.method.clone(), format!("{}{target}", shared.upstream)).headers(headers);
    if !body.is_empty() || head.headers.contains_key(header::CONTENT_LENGTH) {
        request = request.body(body);
    }
    shared.count(|s| s.forwarded += 1);
    let upstream = match request.send().await {
        Ok(r) => r,
        Err(e) => return error_answer(StatusCode::BAD_GATEWAY, &format!("fault proxy: upstream request failed: {e}")),
    };
    let (status, mut headers) = (upstream.status(), upstream.headers().clone());
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    match upstream.bytes().await {
        Ok(body) => {
            let mut answer = Response::new(body);
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            answer
        }
        Err(e) => error_answer(StatusCode::BAD_GATEWAY, &format!("fault proxy: reading upstream answer failed: {e}")),
    }
}

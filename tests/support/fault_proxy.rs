//! Fault-injecting HTTP/1.1 proxy for integration tests.
//!
//! Sits between tidemark (the `elasticsearch` crate over reqwest/hyper) and the
//! search server, and injects the faults no server produces on demand: whole-request
//! 503s, item-level 429s inside `_bulk` responses, slow answers and connection
//! resets (see DESIGN.md, protocol invariant 6).
//!
//! ```ignore
//! let proxy = FaultProxy::start(&es_url).await;
//! proxy.set(Faults { bulk_item_429: 0.3, only_path: Some("_bulk".into()), ..Faults::default() });
//! // point tidemark at proxy.url() ...
//! assert!(proxy.stats().items_429 > 0);
//! ```
//!
//! The client side is parsed by hand (request line, headers, `Content-Length` or
//! chunked bodies, `Expect: 100-continue`, keep-alive and pipelining); the upstream
//! side uses a pooled reqwest client. Every answer carries a recomputed
//! `Content-Length`. Dropping the [`FaultProxy`] aborts the listener and every open
//! connection.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Longest accepted request line or header line.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 200;
/// Largest accepted request body.
const MAX_BODY: u64 = 1 << 30;

const UNAVAILABLE_BODY: &str = r#"{"error":{"type":"unavailable_shards_exception","reason":"injected by fault proxy"},"status":503}"#;
const REJECTED_REASON: &str = "rejected execution (injected by fault proxy)";

/// The fault plan. All probabilities are in `0.0..=1.0`; values outside behave as the
/// nearest bound (NaN as 0).
#[derive(Clone, Default, Debug)]
pub struct Faults {
    /// Probability (0.0..=1.0) that a whole request is answered 503 without being forwarded.
    pub unavailable: f64,
    /// Probability that each item of a `_bulk` request is answered with an item-level 429
    /// (es_rejected_execution_exception) instead of being forwarded: the proxy removes those
    /// items from the NDJSON it forwards (action line + source line; `delete` has no source line),
    /// forwards the rest, and splices 429 items into the upstream's `items` array at the right
    /// positions, setting `errors: true`. If all items are rejected, answer without forwarding.
    pub bulk_item_429: f64,
    /// Probability that a request is delayed by `delay` before being forwarded.
    pub slow: f64,
    pub delay: Duration,
    /// Probability that the connection is closed (reset) after reading the request, without an answer
    /// (the request is NOT forwarded).
    pub reset: f64,
    /// Only requests whose path contains this substring are subject to faults (None = all). Useful
    /// to fault `_bulk` only and let index admin calls through.
    pub only_path: Option<String>,
    /// Deterministic first: the next `fail_next` matching requests get 503 regardless of probabilities.
    pub fail_next: u32,
    /// Plays a secured server: requests whose `Authorization` header is not exactly this
    /// are answered 401 (security_exception), as Elasticsearch answers wrong credentials.
    pub require_authorization: Option<String>,
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
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts on 127.0.0.1:0 in a background tokio task, forwarding to `upstream` (e.g. "http://127.0.0.1:9200").
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
            stats: Counters::default(),
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
        FaultStats {
            forwarded: s.forwarded.load(Ordering::SeqCst),
            unavailable: s.unavailable.load(Ordering::SeqCst),
            items_429: s.items_429.load(Ordering::SeqCst),
            slowed: s.slowed.load(Ordering::SeqCst),
            resets: s.resets.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Shared state

struct Shared {
    upstream: String,
    client: reqwest::Client,
    faults: Mutex<Faults>,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    unavailable: AtomicU64,
    items_429: AtomicU64,
    slowed: AtomicU64,
    resets: AtomicU64,
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
}

struct Decision {
    action: Action,
    delay: Option<Duration>,
    bulk_item_429: f64,
}

impl Shared {
    /// Draws the faults for one request (synchronously: the rng never crosses an await).
    fn decide(&self, path: &str) -> Decision {
        let pass = Decision { action: Action::Pass, delay: None, bulk_item_429: 0.0 };
        let mut f = lock(&self.faults);
        if let Some(only) = &f.only_path {
            if !path.contains(only.as_str()) {
                return pass;
            }
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
            return Decision { action: Action::Unavailable, ..pass };
        }
        let mut rng = rand::thread_rng();
        if chance(&mut rng, f.reset) {
            return Decision { action: Action::Reset, ..pass };
        }
        if chance(&mut rng, f.unavailable) {
            return Decision { action: Action::Unavailable, ..pass };
        }
        let delay = (!f.delay.is_zero() && chance(&mut rng, f.slow)).then_some(f.delay);
        Decision { action: Action::Pass, delay, bulk_item_429: f.bulk_item_429 }
    }
}

// ---------------------------------------------------------------------------------------
// Client side: connections and HTTP/1.1 parsing

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                conns.spawn(serve_connection(stream, shared.clone()));
            }
            // e.g. EMFILE: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

struct Request {
    method: String,
    /// Origin-form target: path plus optional `?query`.
    target: String,
    http10: bool,
    headers: Vec<(String, Vec<u8>)>,
    /// Whether the request carried a body (Content-Length or chunked), even an empty one.
    has_body: bool,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(|b| *b == b','))
            .any(|t| trim_ascii(t).eq_ignore_ascii_case(token.as_bytes()))
    }

    fn keep_alive(&self) -> bool {
        if self.http10 {
            self.header_has_token("connection", "keep-alive")
        } else {
            !self.header_has_token("connection", "close")
        }
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

enum ReadError {
    /// The peer went away (or the socket failed): just close.
    Io,
    /// Malformed request: answer with this status and close.
    Bad(u16, &'static str),
}

impl From<std::io::Error> for ReadError {
    fn from(_: std::io::Error) -> Self {
        ReadError::Io
    }
}

struct Response {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![
                (HeaderName::from_static("content-type"), HeaderValue::from_static("application/json")),
                (HeaderName::from_static("x-elastic-product"), HeaderValue::from_static("Elasticsearch")),
            ],
            body,
        }
    }

    fn unavailable() -> Response {
        Response::json(503, UNAVAILABLE_BODY.as_bytes().to_vec())
    }

    fn error(status: u16, reason: &str) -> Response {
        let body = serde_json::json!({
            "error": {"type": "fault_proxy_exception", "reason": reason},
            "status": status,
        });
        Response::json(status, body.to_string().into_bytes())
    }
}

enum Outcome {
    Respond(Response),
    Reset,
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut conn = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let req = match read_request(&mut conn).await {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Bad(status, reason)) => {
                let bytes = encode_response(&Response::error(status, reason), false, true);
                let _ = conn.get_mut().write_all(&bytes).await;
                let _ = conn.get_mut().shutdown().await;
                return;
            }
        };
        let keep_alive = req.keep_alive();
        match handle(&shared, &req).await {
            Outcome::Reset => {
                // SO_LINGER 0: closing sends RST instead of FIN.
                let _ = conn.get_ref().set_zero_linger();
                return;
            }
            Outcome::Respond(resp) => {
                let bytes = encode_response(&resp, req.method == "HEAD", !keep_alive);
                if conn.get_mut().write_all(&bytes).await.is_err() {
                    return;
                }
                if !keep_alive {
                    let _ = conn.get_mut().shutdown().await;
                    return;
                }
            }
        }
    }
}

/// Reads one line (through `\n`), at most `MAX_LINE` bytes. `Ok(None)` on EOF before any byte.
async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, ReadError> {
    let mut line = Vec::new();
    let n = (&mut *r).take(MAX_LINE).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if n as u64 >= MAX_LINE {
            return Err(ReadError::Bad(431, "request line or header line too long"));
        }
        return Err(ReadError::Io); // EOF mid-line
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

async fn read_request(conn: &mut BufReader<TcpStream>) -> Result<Option<Request>, ReadError> {
    // Request line (RFC 9112 allows empty lines before it).
    let mut request_line = None;
    for _ in 0..8 {
        match read_line(conn).await? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => {
                request_line = Some(l);
                break;
            }
        }
    }
    let request_line = request_line.ok_or(ReadError::Bad(400, "no request line"))?;
    let request_line = String::from_utf8(request_line).map_err(|_| ReadError::Bad(400, "request line is not UTF-8"))?;
    let mut parts = request_line.split_ascii_whitespace();
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m.to_string(), t.to_string(), v),
        _ => return Err(ReadError::Bad(400, "malformed request line")),
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ReadError::Bad(505, "only HTTP/1.0 and HTTP/1.1 are supported")),
    };
    if reqwest::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(ReadError::Bad(400, "malformed method"));
    }
    let target = origin_form(&target).ok_or(ReadError::Bad(400, "malformed request target"))?;

    let mut headers = Vec::new();
    loop {
        let line = read_line(conn).await?.ok_or(ReadError::Io)?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::Bad(431, "too many headers"));
        }
        let colon = line.iter().position(|b| *b == b':').ok_or(ReadError::Bad(400, "malformed header line"))?;
        let name = std::str::from_utf8(&line[..colon])
            .ok()
            .filter(|n| !n.is_empty() && !n.contains(|c: char| c.is_ascii_whitespace()))
            .ok_or(ReadError::Bad(400, "malformed header name"))?
            .to_string();
        headers.push((name, trim_ascii(&line[colon + 1..]).to_vec()));
    }
    let mut req = Request { method, target, http10, headers, has_body: false, body: Vec::new() };

    let chunked = match req.header("transfer-encoding") {
        None => false,
        Some(te) => {
            let last = te.rsplit(|b| *b == b',').next().map(trim_ascii).unwrap_or_default();
            if !last.eq_ignore_ascii_case(b"chunked") {
                return Err(ReadError::Bad(400, "unsupported transfer-encoding"));
            }
            true
        }
    };
    let content_length = if chunked {
        None
    } else {
        let mut value: Option<u64> = None;
        for (n, v) in &req.headers {
            if !n.eq_ignore_ascii_case("content-length") {
                continue;
            }
            let parsed = std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(ReadError::Bad(400, "malformed content-length"))?;
            if value.is_some_and(|old| old != parsed) {
                return Err(ReadError::Bad(400, "conflicting content-length headers"));
            }
            value = Some(parsed);
        }
        value
    };
    if content_length.is_some_and(|n| n > MAX_BODY) {
        return Err(ReadError::Bad(413, "request body too large"));
    }
    let expects_body = chunked || content_length.is_some_and(|n| n > 0);
    if expects_body && !req.http10 && req.header_has_token("expect", "100-continue") {
        conn.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    if chunked {
        req.has_body = true;
        req.body = read_chunked(conn).await?;
    } else if let Some(len) = content_length {
        req.has_body = true;
        read_exact_len(conn, len, &mut req.body).await?;
    }
    Ok(Some(req))
}

/// Appends exactly `len` bytes to `out` (growing as data arrives, so a bogus length
/// cannot make us allocate up front).
async fn read_exact_len<R: AsyncRead + Unpin>(r: &mut R, len: u64, out: &mut Vec<u8>) -> Result<(), ReadError> {
    let n = (&mut *r).take(len).read_to_end(out).await?;
    if (n as u64) < len {
        return Err(ReadError::Io);
    }
    Ok(())
}

async fn read_chunked(conn: &mut BufReader<TcpStream>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(conn).await?.ok_or(ReadError::Io)?;
        let size = line.split(|b| *b == b';').next().map(trim_ascii).unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty())
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or(ReadError::Bad(400, "malformed chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            for _ in 0..MAX_HEADERS {
                let line = read_line(conn).await?.ok_or(ReadError::Io)?;
                if line.is_empty() {
                    return Ok(body);
                }
            }
            return Err(ReadError::Bad(431, "too many trailers"));
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err(ReadError::Bad(413, "request body too large"));
        }
        read_exact_len(conn, size, &mut body).await?;
        let end = read_line(conn).await?.ok_or(ReadError::Io)?;
        if !end.is_empty() {
            return Err(ReadError::Bad(400, "malformed chunk"));
        }
    }
}

/// `/path?q` stays; `http://host:port/path?q` (absolute-form) becomes `/path?q`.
fn origin_form(target: &str) -> Option<String> {
    if target.starts_with('/') {
        return Some(target.to_string());
    }
    let lower = target.to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return None;
    };
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => Some(rest[i..].to_string()),
        Some(i) => Some(format!("/{}", &rest[i..])),
        None => Some("/".to_string()),
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &b[start..end]
}

fn encode_response(resp: &Response, head_request: bool, close: bool) -> Vec<u8> {
    let reason = reqwest::StatusCode::from_u16(resp.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Unknown");
    let bodyless = head_request || resp.status < 200 || resp.status == 204 || resp.status == 304;
    let mut out = Vec::with_capacity(256 + resp.body.len());
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", resp.status, reason).as_bytes());
    for (name, value) in &resp.headers {
        // For HEAD the upstream's Content-Length describes the GET body: keep it.
        if name == "content-length" && !head_request {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !bodyless {
        out.extend_from_slice(format!("content-length: {}\r\n", resp.body.len()).as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodyless {
        out.extend_from_slice(&resp.body);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Fault application and forwarding

async fn handle(shared: &Shared, req: &Request) -> Outcome {
    let required = lock(&shared.faults).require_authorization.clone();
    if let Some(required) = required {
        if req.header("authorization") != Some(required.as_bytes()) {
            let body = serde_json::json!({
                "error": {"type": "security_exception", "reason": "unable to authenticate user for REST request"},
                "status": 401,
            });
            return Outcome::Respond(Response::json(401, body.to_string().into_bytes()));
        }
    }
    let decision = shared.decide(req.path());
    match decision.action {
        Action::Reset => {
            shared.stats.resets.fetch_add(1, Ordering::SeqCst);
            return Outcome::Reset;
        }
        Action::Unavailable => {
            shared.stats.unavailable.fetch_add(1, Ordering::SeqCst);
            return Outcome::Respond(Response::unavailable());
        }
        Action::Pass => {}
    }
    if let Some(delay) = decision.delay {
        shared.stats.slowed.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
    }
    if decision.bulk_item_429 > 0.0 && is_bulk(req) {
        if let Some(items) = parse_bulk(&req.body) {
            let rejected: Vec<bool> = {
                let mut rng = rand::thread_rng();
                items.iter().map(|_| chance(&mut rng, decision.bulk_item_429)).collect()
            };
            if rejected.iter().any(|r| *r) {
                return Outcome::Respond(bulk_with_rejections(shared, req, &items, &rejected).await);
            }
        }
    }
    Outcome::Respond(forward(shared, req, None).await)
}

fn is_bulk(req: &Request) -> bool {
    let method_ok = req.method == "POST" || req.method == "PUT";
    let encoded =
        req.header("content-encoding").is_some_and(|e| !trim_ascii(e).eq_ignore_ascii_case(b"identity") && !trim_ascii(e).is_empty());
    method_ok && !encoded && req.path().trim_end_matches('/').rsplit('/').next() == Some("_bulk")
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
    op: String,
    index: Option<String>,
    id: Option<String>,
    /// Byte range of the item in the request body (action line and source line, with
    /// their newlines).
    range: Range<usize>,
}

/// Splits a `_bulk` NDJSON body into items. `None` when the body is not something we can
/// split faithfully (then it is forwarded untouched and the server judges it).
fn parse_bulk(body: &[u8]) -> Option<Vec<BulkItem>> {
    if body.last() != Some(&b'\n') {
        return None; // the server rejects a missing final newline: let it
    }
    let mut items = Vec::new();
    let mut pos = 0;
    let next_line = |pos: usize| -> Option<(Range<usize>, usize)> {
        if pos >= body.len() {
            return None;
        }
        let nl = body[pos..].iter().position(|b| *b == b'\n').map(|i| pos + i)?;
        Some((pos..nl, nl + 1))
    };
    while let Some((line, after)) = next_line(pos) {
        if trim_ascii(&body[line.clone()]).is_empty() {
            pos = after; // empty lines between items are skipped (by ES too)
            continue;
        }
        let action: serde_json::Value = serde_json::from_slice(&body[line.clone()]).ok()?;
        let obj = action.as_object()?;
        if obj.len() != 1 {
            return None;
        }
        let (op, meta) = obj.iter().next()?;
        let meta = meta.as_object()?;
        let end = match op.as_str() {
            "delete" => after,
            "index" | "create" | "update" => next_line(after)?.1,
            _ => return None,
        };
        let text = |key: &str| match meta.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v @ serde_json::Value::Number(_)) => Some(v.to_string()),
            _ => None,
        };
        items.push(BulkItem { op: op.clone(), index: text("_index"), id: text("_id"), range: line.start..end });
        pos = end;
    }
    if items.is_empty() {
        return None;
    }
    Some(items)
}

fn rejected_item(item: &BulkItem, default_index: Option<&str>) -> serde_json::Value {
    let mut inner = serde_json::Map::new();
    if let Some(index) = item.index.as_deref().or(default_index) {
        inner.insert("_index".into(), index.into());
    }
    if let Some(id) = &item.id {
        inner.insert("_id".into(), id.as_str().into());
    }
    inner.insert("status".into(), 429.into());
    inner.insert("error".into(), serde_json::json!({"type": "es_rejected_execution_exception", "reason": REJECTED_REASON}));
    let mut outer = serde_json::Map::new();
    outer.insert(item.op.clone(), serde_json::Value::Object(inner));
    serde_json::Value::Object(outer)
}

async fn bulk_with_rejections(shared: &Shared, req: &Request, items: &[BulkItem], rejected: &[bool]) -> Response {
    let default_index = path_index(req.path());
    let n_rejected = rejected.iter().filter(|r| **r).count() as u64;
    let rejected_json = |i: usize| rejected_item(&items[i], default_index.as_deref());

    if n_rejected as usize == items.len() {
        shared.stats.items_429.fetch_add(n_rejected, Ordering::SeqCst);
        let all: Vec<_> = (0..items.len()).map(rejected_json).collect();
        let body = serde_json::json!({"took": 0, "errors": true, "items": all});
        return Response::json(200, body.to_string().into_bytes());
    }

    let mut kept_body = Vec::with_capacity(req.body.len());
    for (item, rej) in items.iter().zip(rejected) {
        if !rej {
            kept_body.extend_from_slice(&req.body[item.range.clone()]);
        }
    }
    let kept = items.len() - n_rejected as usize;
    let mut resp = forward(shared, req, Some(kept_body)).await;
    if resp.status != 200 || resp.headers.iter().any(|(n, _)| n == "content-encoding") {
        return resp; // whole-request failure: pass it on as it is
    }
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&resp.body) else {
        return resp;
    };
    let Some(obj) = json.as_object_mut() else {
        return resp;
    };
    match obj.get_mut("items").and_then(|v| v.as_array_mut()) {
        Some(upstream_items) if upstream_items.len() == kept => {
            let mut upstream_items = std::mem::take(upstream_items).into_iter();
            let merged: Vec<serde_json::Value> = rejected
                .iter()
                .enumerate()
                .map(|(i, rej)| if *rej { rejected_json(i) } else { upstream_items.next().unwrap_or_default() })
                .collect();
            obj.insert("items".into(), serde_json::Value::Array(merged));
        }
        // `filter_path` without items: nothing to splice into, but the errors flag still tells.
        None => {}
        Some(_) => return resp, // unexpected shape: do not pretend
    }
    obj.insert("errors".into(), true.into());
    shared.stats.items_429.fetch_add(n_rejected, Ordering::SeqCst);
    resp.body = serde_json::to_vec(&json).unwrap_or_default();
    resp
}

fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Sends the request (with `body` instead of the original when given) upstream and
/// returns the answer, or a 502 if the upstream cannot be reached.
async fn forward(shared: &Shared, req: &Request, body: Option<Vec<u8>>) -> Response {
    let Ok(method) = reqwest::Method::from_bytes(req.method.as_bytes()) else {
        return Response::error(400, "malformed method");
    };
    // Headers named in Connection are hop-by-hop too.
    let connection_tokens: Vec<String> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(|b| *b == b',').map(|t| String::from_utf8_lossy(trim_ascii(t)).to_ascii_lowercase()))
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        // Accept-Encoding is dropped so that the answer arrives uncompressed and `_bulk`
        // answers can be edited; the proxy's reqwest has no decompression.
        if is_hop_by_hop(&lower)
            || matches!(lower.as_str(), "host" | "content-length" | "expect" | "accept-encoding")
            || connection_tokens.contains(&lower)
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let url = format!("{}{}", shared.upstream, req.target);
    let mut builder = shared.client.request(method, url).headers(headers);
    match body {
        Some(b) => builder = builder.body(b),
        None if req.has_body => builder = builder.body(req.body.clone()),
        None => {}
    }
    shared.stats.forwarded.fetch_add(1, Ordering::SeqCst);
    let upstream = match builder.send().await {
        Ok(r) => r,
        Err(e) => return Response::error(502, &format!("fault proxy: upstream request failed: {e}")),
    };
    let status = upstream.status().as_u16();
    let headers: Vec<(HeaderName, HeaderValue)> =
        upstream.headers().iter().filter(|(n, _)| !is_hop_by_hop(n.as_str())).map(|(n, v)| (n.clone(), v.clone())).collect();
    match upstream.bytes().await {
        Ok(body) => Response { status, headers, body: body.to_vec() },
        Err(e) => Response::error(502, &format!("fault proxy: reading upstream answer failed: {e}")),
    }
}

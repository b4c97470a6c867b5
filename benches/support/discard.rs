//! A discarding search endpoint: answers `_bulk` exactly as a server that accepted every
//! op would (one `{"index":{"_index":..,"_id":..,"_version":1,"result":"created","status":201}}`
//! item per action line), and just enough of the rest (`GET /`, `HEAD /<index>`,
//! `GET /_alias/<alias>`, `GET /_cat/indices/<pattern>`, `PUT /<index>`, `POST /_aliases`,
//! `PUT /<index>/_doc/<id>`, `_refresh`, `_count`, `DELETE`) for tidemark's client to
//! work. It stores nothing, so what is measured against it is tidemark's own cost:
//! database reads, document building, encoding, HTTP, and reading the answers.
//!
//! It runs on its own OS thread with its own single-threaded runtime, so its work does
//! not queue behind the measured code's tasks, and its CPU time is reported apart.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

#[derive(Default)]
struct State {
    indices: BTreeSet<String>,
    /// alias → indices
    aliases: BTreeMap<String, BTreeSet<String>>,
    /// The last source of every document, per index, as the bytes received. Kept only so
    /// that `_count` and `_mget` (tidemark's verification before an alias swap) answer
    /// truthfully; nothing is parsed or indexed.
    docs: HashMap<String, HashMap<u64, Box<[u8]>>>,
    /// When set, every `"last_name":"F<digits>"` stamp received, with its arrival time
    /// (the freshness benchmark's writers stamp documents this way).
    stamps: Option<Vec<(u64, std::time::Instant)>>,
}

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub bulk_requests: AtomicU64,
    pub bulk_items: AtomicU64,
    pub doc_requests: AtomicU64,
    pub bytes_in: AtomicU64,
}

pub struct Discard {
    pub url: String,
    pub counters: Arc<Counters>,
    state: Arc<Mutex<State>>,
    /// `/proc/self/task/<tid>/stat` of the serving thread.
    stat_path: Arc<Mutex<Option<String>>>,
}

impl Discard {
    /// Starts the endpoint on 127.0.0.1 (a free port). `preset` names aliases that exist
    /// from the start, each with its physical index: tidemark then finds its index
    /// without creating it (and without marking every student, as a first index does).
    pub fn start(preset: &[(String, String)]) -> Discard {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", std_listener.local_addr().unwrap());
        let mut st = State::default();
        for (alias, index) in preset {
            st.indices.insert(index.clone());
            st.aliases.entry(alias.clone()).or_default().insert(index.clone());
        }
        let state = Arc::new(Mutex::new(st));
        let counters = Arc::new(Counters::default());
        let stat_path = Arc::new(Mutex::new(None));
        let (s2, c2, p2) = (state.clone(), counters.clone(), stat_path.clone());
        std::thread::Builder::new()
            .name("discard-endpoint".into())
            .spawn(move || {
                if let Ok(link) = std::fs::read_link("/proc/thread-self") {
                    *p2.lock().unwrap() = Some(format!("/proc/{}/stat", link.display()).replace("/proc//proc/", "/proc/"));
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    loop {
                        let Ok((sock, _)) = listener.accept().await else { continue };
                        let (s, c) = (s2.clone(), c2.clone());
                        tokio::spawn(async move {
                            let _ = serve(sock, s, c).await;
                        });
                    }
                });
            })
            .unwrap();
        Discard { url, counters, state, stat_path }
    }

    /// CPU time the serving thread has used so far.
    pub fn cpu(&self) -> Duration {
        let path = self.stat_path.lock().unwrap().clone();
        path.and_then(|p| super::cpu::stat_cpu(&p)).unwrap_or_default()
    }

    /// Starts recording the stamps of the documents received (see [`State::stamps`]).
    pub fn record_stamps(&self) {
        self.state.lock().unwrap().stamps = Some(Vec::new());
    }

    /// The stamps received so far, with their arrival times.
    pub fn take_stamps(&self) -> Vec<(u64, std::time::Instant)> {
        self.state.lock().unwrap().stamps.take().unwrap_or_default()
    }

    pub fn bulk_items(&self) -> u64 {
        self.counters.bulk_items.load(Ordering::Relaxed)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(256 * 1024);
    sock.read_buf(buf).await
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<State>>, counters: Arc<Counters>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    loop {
        // Head.
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p;
            }
            if read_more(&mut sock, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut close = false;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else { continue };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => content_length = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut pos = head_end + 4;
        // Body.
        let body: Vec<u8> = if chunked {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(p) = find(&buf[pos..], b"\r\n") {
                        break pos + p;
                    }
                    if read_more(&mut sock, &mut buf).await? == 0 {
                        return Ok(());
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
                pos = line_end + 2;
                while buf.len() < pos + size + 2 {
                    if read_more(&mut sock, &mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                body.extend_from_slice(&buf[pos..pos + size]);
                pos += size + 2;
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            while buf.len() < pos + content_length {
                if read_more(&mut sock, &mut buf).await? == 0 {
                    return Ok(());
                }
            }
            let b = buf[pos..pos + content_length].to_vec();
            pos += content_length;
            b
        };
        buf.drain(..pos);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters.bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);

        let (status, payload) = route(&method, &target, &body, &state, &counters);
        if std::env::var_os("DISCARD_TRACE").is_some() {
            eprintln!(
                "[discard] {method} {target} ({} bytes) -> {status} {}",
                body.len(),
                String::from_utf8_lossy(&payload[..payload.len().min(160)])
            );
        }
        let reason = match status {
            200 => "OK",
            201 => "Created",
            400 => "Bad Request",
            404 => "Not Found",
            _ => "Status",
        };
        let mut out = Vec::with_capacity(payload.len() + 128);
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\n\r\n",
            payload.len()
        );
        if method != "HEAD" {
            out.extend_from_slice(&payload);
        }
        sock.write_all(&out).await?;
        if close {
            return Ok(());
        }
    }
}

fn json(status: u16, v: serde_json::Value) -> (u16, Vec<u8>) {
    (status, serde_json::to_vec(&v).unwrap())
}

fn not_found(what: &str) -> (u16, Vec<u8>) {
    json(
        404,
        serde_json::json!({"error": {"type": "index_not_found_exception", "reason": format!("no such index [{what}]")}, "status": 404}),
    )
}

fn glob(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn route(method: &str, target: &str, body: &[u8], state: &Mutex<State>, counters: &Counters) -> (u16, Vec<u8>) {
    let path = target.split('?').next().unwrap_or("/");
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match (method, segs.as_slice()) {
        ("GET", []) => json(
            200,
            serde_json::json!({"name": "discard", "cluster_name": "discard", "version": {"number": "8.19.0", "distribution": "discard"}, "tagline": "You Know, for Search"}),
        ),
        ("POST" | "PUT", ["_bulk"]) | ("POST" | "PUT", [_, "_bulk"]) => {
            counters.bulk_requests.fetch_add(1, Ordering::Relaxed);
            let default_index = if segs.len() == 2 { segs[0] } else { "" };
            let require_alias = target.contains("require_alias=true");
            let (items, out) = bulk_answer(body, default_index, require_alias, &mut state.lock().unwrap());
            counters.bulk_items.fetch_add(items, Ordering::Relaxed);
            (200, out)
        }
        ("PUT" | "POST", [index, "_doc", id]) | ("PUT" | "POST", [index, "_create", id]) => {
            counters.doc_requests.fetch_add(1, Ordering::Relaxed);
            let index = resolve(state, index);
            if let Ok(n) = id.parse::<u64>() {
                store(&mut state.lock().unwrap(), &index, n, body);
            }
            json(
                201,
                serde_json::json!({"_index": index, "_id": id, "_version": 1, "result": "created",
                    "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1}),
            )
        }
        ("GET", ["_alias", alias]) => {
            let st = state.lock().unwrap();
            match st.aliases.get(*alias).filter(|s| !s.is_empty()) {
                Some(indices) => {
                    let mut m = serde_json::Map::new();
                    for i in indices {
                        m.insert(i.clone(), serde_json::json!({"aliases": {*alias: {}}}));
                    }
                    json(200, serde_json::Value::Object(m))
                }
                None => json(404, serde_json::json!({"error": format!("alias [{alias}] missing"), "status": 404})),
            }
        }
        ("GET", ["_cat", "indices", pattern]) => {
            let st = state.lock().unwrap();
            let rows: Vec<serde_json::Value> =
                st.indices.iter().filter(|i| glob(pattern, i)).map(|i| serde_json::json!({"index": i})).collect();
            json(200, serde_json::Value::Array(rows))
        }
        ("GET", ["_cat", "indices"]) => {
            let st = state.lock().unwrap();
            json(200, serde_json::Value::Array(st.indices.iter().map(|i| serde_json::json!({"index": i})).collect()))
        }
        ("POST", ["_aliases"]) => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let mut st = state.lock().unwrap();
            for action in v["actions"].as_array().cloned().unwrap_or_default() {
                if let Some(a) = action.get("add") {
                    if let (Some(i), Some(al)) = (a["index"].as_str(), a["alias"].as_str()) {
                        st.aliases.entry(al.to_string()).or_default().insert(i.to_string());
                    }
                }
                if let Some(a) = action.get("remove") {
                    if let (Some(i), Some(al)) = (a["index"].as_str(), a["alias"].as_str()) {
                        if let Some(set) = st.aliases.get_mut(al) {
                            set.remove(i);
                        }
                    }
                }
            }
            json(200, serde_json::json!({"acknowledged": true}))
        }
        ("HEAD", [name]) => {
            let st = state.lock().unwrap();
            if st.indices.contains(*name) || st.aliases.get(*name).is_some_and(|s| !s.is_empty()) {
                (200, Vec::new())
            } else {
                (404, Vec::new())
            }
        }
        ("PUT", [index]) if !index.starts_with('_') => {
            let mut st = state.lock().unwrap();
            if !st.indices.insert(index.to_string()) {
                return json(
                    400,
                    serde_json::json!({"error": {"type": "resource_already_exists_exception", "reason": format!("index [{index}] already exists")}, "status": 400}),
                );
            }
            // Aliases given with the index.
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if let Some(aliases) = v["aliases"].as_object() {
                for alias in aliases.keys() {
                    st.aliases.entry(alias.clone()).or_default().insert(index.to_string());
                }
            }
            json(200, serde_json::json!({"acknowledged": true, "shards_acknowledged": true, "index": index}))
        }
        ("DELETE", [index]) => {
            let mut st = state.lock().unwrap();
            let pattern = index.to_string();
            let gone: Vec<String> = st.indices.iter().filter(|i| glob(&pattern, i)).cloned().collect();
            for i in &gone {
                st.indices.remove(i);
                st.docs.remove(i);
                for set in st.aliases.values_mut() {
                    set.remove(i);
                }
            }
            json(200, serde_json::json!({"acknowledged": true}))
        }
        (_, [_, "_refresh"]) => json(200, serde_json::json!({"_shards": {"total": 1, "successful": 1, "failed": 0}})),
        ("PUT", [_, "_settings"]) => json(200, serde_json::json!({"acknowledged": true})),
        (_, [name, "_count"]) => {
            let index = resolve(state, name);
            let st = state.lock().unwrap();
            let n = st.docs.get(&index).map_or(0, |d| d.len());
            json(200, serde_json::json!({"count": n, "_shards": {"total": 1, "successful": 1, "failed": 0}}))
        }
        ("GET" | "POST", [name, "_mget"]) => {
            let index = resolve(state, name);
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let st = state.lock().unwrap();
            let mut out = Vec::from(&br#"{"docs":["#[..]);
            for (i, id) in v["ids"].as_array().cloned().unwrap_or_default().iter().enumerate() {
                let id = id.as_str().map(str::to_string).unwrap_or_else(|| id.to_string());
                if i > 0 {
                    out.push(b',');
                }
                let found = id.parse::<u64>().ok().and_then(|n| st.docs.get(&index)?.get(&n));
                match found {
                    Some(src) => {
                        let _ = write!(out, r#"{{"_index":"{index}","_id":"{id}","_version":1,"found":true,"_source":"#);
                        out.extend_from_slice(src);
                        out.push(b'}');
                    }
                    None => {
                        let _ = write!(out, r#"{{"_index":"{index}","_id":"{id}","found":false}}"#);
                    }
                }
            }
            out.extend_from_slice(b"]}");
            (200, out)
        }
        (_, [name, ..]) => not_found(name),
        _ => not_found(path),
    }
}

fn store(st: &mut State, index: &str, id: u64, source: &[u8]) {
    let docs = match st.docs.get_mut(index) {
        Some(d) => d,
        None => st.docs.entry(index.to_string()).or_default(),
    };
    docs.insert(id, source.into());
}

fn resolve(state: &Mutex<State>, name: &str) -> String {
    let st = state.lock().unwrap();
    st.aliases.get(name).and_then(|s| s.iter().next().cloned()).unwrap_or_else(|| name.to_string())
}

/// The value of `"key":"…"` in an action line (ids and index names need no unescaping here).
fn field<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    // `key` is `"name"`; the value is the next string after the colon (spaces allowed).
    let mut i = find(line, key)? + key.len();
    while i < line.len() && (line[i] == b' ' || line[i] == b':') {
        i += 1;
    }
    let start = i + usize::from(line.get(i) == Some(&b'"'));
    let len = line[start..].iter().position(|b| *b == b'"' || *b == b',' || *b == b'}')?;
    Some(&line[start..start + len])
}

/// The concrete index a write to `name` lands in: the index behind an alias, or `name`
/// itself (created on the fly, as a server does) unless `require_alias` forbids it.
fn concrete(st: &mut State, name: &str, require_alias: bool) -> Option<String> {
    if let Some(index) = st.aliases.get(name).and_then(|s| s.iter().next()) {
        return Some(index.clone());
    }
    if require_alias {
        return None;
    }
    st.indices.insert(name.to_string());
    Some(name.to_string())
}

/// One item per action line; the line after an `index`/`create`/`update` action is its
/// source and is skipped (kept for `_mget`).
fn bulk_answer(body: &[u8], default_index: &str, require_alias: bool, st: &mut State) -> (u64, Vec<u8>) {
    let mut out = Vec::with_capacity(body.len() / 4 + 64);
    let mut items = 0u64;
    let mut errors = false;
    // The targets of one request are few: resolve each name once.
    let mut resolved: Vec<(Vec<u8>, Option<String>)> = Vec::new();
    let now = std::time::Instant::now();
    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    while let Some(action) = lines.next() {
        // {"index":{...}}: the op is the first key.
        let op = action.get(2..).and_then(|r| r.iter().position(|b| *b == b'"').map(|e| &r[..e])).unwrap_or(b"index");
        let name = field(action, br#""_index""#).unwrap_or(default_index.as_bytes());
        let id = field(action, br#""_id""#).unwrap_or(b"");
        let index = match resolved.iter().find(|(n, _)| n == name) {
            Some((_, c)) => c.clone(),
            None => {
                let c = concrete(st, std::str::from_utf8(name).unwrap_or(""), require_alias);
                resolved.push((name.to_vec(), c.clone()));
                c
            }
        };
        let doc_id = std::str::from_utf8(id).ok().and_then(|s| s.parse::<u64>().ok());
        let source = if op != b"delete" { lines.next() } else { None };
        if items > 0 {
            out.push(b',');
        }
        items += 1;
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(op);
        out.extend_from_slice(br#"":{"_index":""#);
        let Some(index) = index else {
            errors = true;
            out.extend_from_slice(name);
            out.extend_from_slice(br#"","_id":""#);
            out.extend_from_slice(id);
            out.extend_from_slice(br#"","status":404,"error":{"type":"index_not_found_exception","reason":"no such index and [require_alias] request flag is [true] and it is not an alias"}}}"#);
            continue;
        };
        if let (Some(stamps), Some(src)) = (st.stamps.as_mut(), source) {
            if let Some(v) = field(src, br#""last_name""#).and_then(|v| v.strip_prefix(b"F")) {
                if let Some(k) = std::str::from_utf8(v).ok().and_then(|t| t.parse::<u64>().ok()) {
                    stamps.push((k, now));
                }
            }
        }
        match (source, doc_id) {
            (Some(src), Some(n)) => store(st, &index, n, src),
            (None, Some(n)) => {
                if let Some(d) = st.docs.get_mut(&index) {
                    d.remove(&n);
                }
            }
            _ => {}
        }
        out.extend_from_slice(index.as_bytes());
        out.extend_from_slice(br#"","_id":""#);
        out.extend_from_slice(id);
        if op == b"delete" {
            out.extend_from_slice(br#"","_version":1,"result":"deleted","status":200}}"#);
        } else {
            out.extend_from_slice(br#"","_version":1,"result":"created","status":201}}"#);
        }
    }
    out.extend_from_slice(b"]}");
    let head: &[u8] = if errors { br#"{"took":1,"errors":true,"items":["# } else { br#"{"took":1,"errors":false,"items":["# };
    out.splice(0..0, head.iter().copied());
    (items, out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bulk_items_follow_actions() {
        let body = b"{\"index\":{\"_index\":\"s_1\",\"_id\":\"7\",\"version\":3,\"version_type\":\"external\"}}\n{\"a\":1}\n{\"delete\":{\"_index\":\"s_1\",\"_id\":\"8\"}}\n";
        let (n, out) = super::bulk_answer(body, "", false, &mut super::State::default());
        assert_eq!(n, 2);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["items"][0]["index"]["_id"], "7");
        assert_eq!(v["items"][1]["delete"]["status"], 200);
    }
}

//! Self-test of the harness, against the real services (`deploy/local/test.sh`): the
//! fault-injecting proxy in front of a real search server, and the cleanup of every test's
//! environment.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fault_proxy::{BulkAction, FaultProxy, FaultStats, Faults};
use support::{eventually, run_aside, unique, Env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn es_url() -> String {
    support::service_url("ELASTICSEARCH_URL").trim().trim_end_matches('/').to_string()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

/// A test index (`<run>-<6 hex>-fault_proxy_<tag>`, so a killed run's are swept), deleted
/// when dropped.
struct TestIndex(String);

impl TestIndex {
    /// Creates it through `base` (the server, or a proxy in front of it).
    async fn create(c: &reqwest::Client, base: &str, tag: &str) -> TestIndex {
        let index = TestIndex(format!("{}-fault_proxy_{tag}", unique()));
        let r =
            c.put(format!("{base}/{index}")).json(&json!({"mappings": {"properties": {"n": {"type": "integer"}}}})).send().await.unwrap();
        assert!(r.status().is_success(), "create {index}: {} {}", r.status(), r.text().await.unwrap());
        index
    }
}

/// A proxy in front of the server, and a client.
async fn proxy_and_client() -> (FaultProxy, reqwest::Client) {
    (FaultProxy::start(&es_url()).await, client())
}

/// A proxy in front of the server, a client, and a test index created directly.
async fn setup(tag: &str) -> (FaultProxy, reqwest::Client, TestIndex) {
    let (proxy, c) = proxy_and_client().await;
    let index = TestIndex::create(&c, &es_url(), tag).await;
    (proxy, c, index)
}

impl std::ops::Deref for TestIndex {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TestIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for TestIndex {
    fn drop(&mut self) {
        let url = format!("{}/{}", es_url(), self.0);
        run_aside("delete a test index", Duration::from_secs(30), async move {
            let _ = reqwest::Client::new().delete(url).send().await;
        });
    }
}

async fn bulk(c: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let r = c.post(url).header("content-type", "application/x-ndjson").body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A `_bulk` request that must succeed, every item with it.
async fn bulk_ok(c: &reqwest::Client, url: &str, body: String) {
    let (status, resp) = bulk(c, url, body).await;
    assert_eq!((status, resp["errors"].clone()), (200, json!(false)), "{resp}");
}

async fn count(c: &reqwest::Client, index: &str) -> u64 {
    let r: Value = c.get(format!("{}/{index}/_count", es_url())).send().await.unwrap().json().await.unwrap();
    r["count"].as_u64().unwrap_or_else(|| panic!("bad _count answer {r}"))
}

/// Ids among `ids` that exist in `index`, read directly from the server.
async fn existing(c: &reqwest::Client, index: &str, ids: &[String]) -> BTreeSet<String> {
    let r: Value = c.post(format!("{}/{index}/_mget", es_url())).json(&json!({ "ids": ids })).send().await.unwrap().json().await.unwrap();
    let docs = r["docs"].as_array().unwrap_or_else(|| panic!("bad _mget answer {r}"));
    assert_eq!(docs.len(), ids.len());
    docs.iter().filter(|d| d["found"] == json!(true)).map(|d| d["_id"].as_str().unwrap().to_string()).collect()
}

/// The proxy's stats once `done` holds for them (within 10 s): what a request the client
/// gave up on does next happens in its own time.
async fn stats_when(proxy: &FaultProxy, what: &str, done: impl Fn(&FaultStats) -> bool) -> FaultStats {
    eventually(what, Duration::from_secs(10), || async {
        let stats = proxy.stats();
        if done(&stats) {
            Ok(stats)
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await
}

/// The proxy's stats once no request is in flight any more.
async fn settled(proxy: &FaultProxy) -> FaultStats {
    stats_when(proxy, "no request in flight", |s| s.in_flight == 0).await
}

fn assert_injected_429(item: &Value, op: &str, index: &str, id: &str) {
    let inner = &item[op];
    assert_eq!(inner["status"], json!(429), "{item}");
    assert_eq!(inner["_index"], json!(index), "{item}");
    assert_eq!(inner["_id"], json!(id), "{item}");
    assert_eq!(inner["error"]["type"], json!("es_rejected_execution_exception"), "{item}");
    assert_eq!(inner["error"]["reason"], json!("rejected execution (injected by fault proxy)"), "{item}");
}

#[tokio::test]
async fn bulk_item_429_rejects_exactly_the_reported_items() {
    let (proxy, c) = proxy_and_client().await;
    let index = TestIndex::create(&c, &proxy.url(), "bulk429").await;

    proxy.set(Faults { bulk_item_429: 0.3, ..Faults::on("_bulk") });
    let mut body = String::new();
    for i in 0..100 {
        body.push_str(&format!("{{\"index\":{{\"_id\":\"{i}\"}}}}\n{{\"n\":{i}}}\n"));
    }
    let (status, resp) = bulk(&c, &format!("{}/{index}/_bulk?refresh=true", proxy.url()), body).await;
    assert_eq!(status, 200, "{resp}");
    let items = resp["items"].as_array().unwrap();
    assert_eq!(items.len(), 100);
    let mut rejected = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let id = i.to_string();
        assert_eq!(item["index"]["_id"], json!(id), "item {i} out of place: {item}");
        if item["index"]["status"] == json!(429) {
            assert_injected_429(item, "index", &index, &id);
            rejected.insert(id);
        } else {
            assert_eq!(item["index"]["status"], json!(201), "{item}");
        }
    }
    assert!(!rejected.is_empty() && rejected.len() < 100, "{} rejected", rejected.len());
    assert_eq!(resp["errors"], json!(true));
    assert_eq!(proxy.stats(), FaultStats { forwarded: 2, items_429: rejected.len() as u64, ..FaultStats::default() });

    // The server holds exactly the items that were not rejected.
    assert_eq!(count(&c, &index).await, 100 - rejected.len() as u64);
    let ids: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let found = existing(&c, &index, &ids).await;
    let expected: BTreeSet<String> = ids.iter().filter(|id| !rejected.contains(*id)).cloned().collect();
    assert_eq!(found, expected);
}

#[tokio::test]
async fn bulk_item_429_splits_deletes_and_other_ops_correctly() {
    let (proxy, c, index) = setup("bulkmixed").await;

    // 40 documents to delete, written directly.
    let mut seed = String::new();
    for i in 0..40 {
        seed.push_str(&format!("{{\"index\":{{\"_id\":\"d{i}\"}}}}\n{{\"n\":{i}}}\n"));
    }
    bulk_ok(&c, &format!("{}/{index}/_bulk?refresh=true", es_url()), seed).await;

    // Through the proxy, on `/_bulk` with `_index` in the metadata: delete d_i (no source
    // line), then index / create / update (with source lines), interleaved.
    proxy.set(Faults { bulk_item_429: 0.5, ..Faults::default() });
    let mut body = String::new();
    let mut expected_ops = Vec::new();
    for i in 0..40 {
        body.push_str(&format!("{{\"delete\":{{\"_index\":\"{index}\",\"_id\":\"d{i}\"}}}}\n"));
        expected_ops.push(("delete", format!("d{i}")));
        let (op, source) = match i % 3 {
            0 => ("index", format!("{{\"n\":{i}}}")),
            1 => ("create", format!("{{\"n\":{i}}}")),
            _ => ("update", format!("{{\"doc\":{{\"n\":{i}}},\"doc_as_upsert\":true}}")),
        };
        body.push_str(&format!("{{\"{op}\":{{\"_index\":\"{index}\",\"_id\":\"n{i}\"}}}}\n{source}\n"));
        expected_ops.push((op, format!("n{i}")));
    }
    let (status, resp) = bulk(&c, &format!("{}/_bulk?refresh=wait_for", proxy.url()), body).await;
    assert_eq!(status, 200, "{resp}");
    let items = resp["items"].as_array().unwrap();
    assert_eq!(items.len(), 80);
    let mut rejected = BTreeSet::new();
    for (item, (op, id)) in items.iter().zip(&expected_ops) {
        let obj = item.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), vec![op], "{item}");
        assert_eq!(item[*op]["_id"], json!(id), "{item}");
        match item[*op]["status"].as_u64().unwrap() {
            429 => {
                assert_injected_429(item, op, &index, id);
                rejected.insert(id.clone());
            }
            200 | 201 => {}
            other => panic!("unexpected status {other}: {item}"),
        }
    }
    assert!(!rejected.is_empty() && rejected.len() < 80);
    assert_eq!(resp["errors"], json!(true));
    assert_eq!(proxy.stats().items_429, rejected.len() as u64);
    assert_eq!(proxy.stats().forwarded, 1);

    // d_i survives iff its delete was rejected; n_i exists iff its write was not.
    let ids: Vec<String> = expected_ops.iter().map(|(_, id)| id.clone()).collect();
    let found = existing(&c, &index, &ids).await;
    let expected: BTreeSet<String> = ids.iter().filter(|id| id.starts_with('d') == rejected.contains(*id)).cloned().collect();
    assert_eq!(found, expected);
}

#[tokio::test]
async fn bulk_all_items_rejected_is_answered_without_forwarding() {
    let (proxy, c, index) = setup("bulkall").await;

    proxy.set(Faults { bulk_item_429: 1.0, ..Faults::default() });
    let body = "{\"index\":{\"_id\":\"a\"}}\n{\"n\":1}\n{\"delete\":{\"_id\":\"b\"}}\n".to_string();
    let (status, resp) = bulk(&c, &format!("{}/{index}/_bulk?refresh=true", proxy.url()), body).await;
    assert_eq!(status, 200);
    assert_eq!(resp["errors"], json!(true));
    let items = resp["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_injected_429(&items[0], "index", &index, "a");
    assert_injected_429(&items[1], "delete", &index, "b");
    assert_eq!(proxy.stats(), FaultStats { items_429: 2, ..FaultStats::default() });
    assert_eq!(count(&c, &index).await, 0);

    // Not a bulk body we can split faithfully (no final newline): forwarded untouched,
    // the server judges it.
    let (status, _) = bulk(&c, &format!("{}/{index}/_bulk", proxy.url()), "{\"index\":{}}\n{}".into()).await;
    assert_eq!(status, 400);
    assert_eq!(proxy.stats().forwarded, 1);
}

#[tokio::test]
async fn fail_next_gives_503s_then_passes_and_only_path_filters() {
    let (proxy, c, index) = setup("failnext").await;
    let count_url = format!("{}/{index}/_count", proxy.url());

    proxy.set(Faults { fail_next: 2, ..Faults::default() });
    for _ in 0..2 {
        let r = c.get(&count_url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!({"error":{"type":"unavailable_shards_exception","reason":"injected by fault proxy"},"status":503}));
    }
    let r = c.get(&count_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(proxy.stats(), FaultStats { forwarded: 1, unavailable: 2, ..FaultStats::default() });

    // only_path: fail_next and probabilities apply to matching paths only.
    proxy.set(Faults { fail_next: 1, unavailable: 1.0, ..Faults::on("_bulk") });
    for _ in 0..3 {
        assert_eq!(c.get(&count_url).send().await.unwrap().status().as_u16(), 200);
    }
    let body = "{\"index\":{\"_id\":\"x\"}}\n{\"n\":1}\n".to_string();
    let (status, resp) = bulk(&c, &format!("{}/{index}/_bulk", proxy.url()), body.clone()).await;
    assert_eq!((status, resp["status"].clone()), (503, json!(503)));
    let (status, _) = bulk(&c, &format!("{}/{index}/_bulk", proxy.url()), body.clone()).await;
    assert_eq!(status, 503);
    assert_eq!(proxy.stats(), FaultStats { forwarded: 4, unavailable: 4, ..FaultStats::default() });

    proxy.clear();
    bulk_ok(&c, &format!("{}/{index}/_bulk?refresh=true", proxy.url()), body).await;
    assert_eq!(count(&c, &index).await, 1);
}

#[tokio::test]
async fn unavailable_probability_is_applied_per_request() {
    let (proxy, c) = proxy_and_client().await;
    proxy.set(Faults { unavailable: 0.5, ..Faults::default() });
    let (mut ok, mut failed) = (0u64, 0u64);
    for _ in 0..200 {
        match c.get(proxy.url()).send().await.unwrap().status().as_u16() {
            200 => ok += 1,
            503 => failed += 1,
            other => panic!("status {other}"),
        }
    }
    assert!(ok > 30 && failed > 30, "ok {ok}, failed {failed}");
    assert_eq!(proxy.stats(), FaultStats { forwarded: ok, unavailable: failed, ..FaultStats::default() });
}

#[tokio::test]
async fn reset_is_a_connection_error_and_the_client_recovers() {
    let (proxy, c) = proxy_and_client().await;
    // A first request leaves a pooled keep-alive connection behind.
    assert_eq!(c.get(proxy.url()).send().await.unwrap().status().as_u16(), 200);

    proxy.set(Faults { reset: 1.0, ..Faults::default() });
    for _ in 0..3 {
        let err = c.get(proxy.url()).send().await.expect_err("a reset must be an error");
        assert!(err.is_request() || err.is_connect(), "{err:?}");
        assert!(err.status().is_none());
        // A reset (RST), not a clean close.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut reset = false;
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                reset |= io.kind() == std::io::ErrorKind::ConnectionReset;
            }
            source = e.source();
        }
        assert!(reset, "expected ConnectionReset somewhere in {err:?}");
    }
    assert_eq!(proxy.stats(), FaultStats { forwarded: 1, resets: 3, ..FaultStats::default() });

    proxy.clear();
    assert_eq!(c.get(proxy.url()).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(proxy.stats().forwarded, 2);
}

#[tokio::test]
async fn slow_delays_requests() {
    let (proxy, c) = proxy_and_client().await;
    let delay = Duration::from_millis(400);
    proxy.set(Faults { slow: 1.0, delay, ..Faults::default() });
    let started = Instant::now();
    assert_eq!(c.get(proxy.url()).send().await.unwrap().status().as_u16(), 200);
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(proxy.stats(), FaultStats { forwarded: 1, slowed: 1, ..FaultStats::default() });

    // A client timeout shorter than the delay sees a timeout.
    let err = c.get(proxy.url()).timeout(Duration::from_millis(100)).send().await.expect_err("must time out");
    assert!(err.is_timeout(), "{err:?}");
    // The request the client gave up on still reaches the server, late: what a server that
    // has fallen behind does with a request it has read.
    assert_eq!(settled(&proxy).await, FaultStats { forwarded: 2, slowed: 2, ..FaultStats::default() });

    proxy.set(Faults { slow: 1.0, delay: Duration::from_secs(10), ..Faults::on("_bulk") });
    let started = Instant::now();
    assert_eq!(c.get(proxy.url()).send().await.unwrap().status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(proxy.stats().slowed, 2);
}

/// Writes raw bytes on one connection and reads until the server closes it.
async fn raw_exchange(url: &str, request: &[u8]) -> String {
    raw_exchange_with(url, request, false).await
}

/// Like `raw_exchange`; with `half_close`, also shuts down our writing side (the
/// request is truncated for good).
async fn raw_exchange_with(url: &str, request: &[u8], half_close: bool) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("the proxy must close the connection").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn raw_http_keep_alive_pipelining_chunked_and_malformed_input() {
    let (proxy, c, index) = setup("raw").await;

    // Three pipelined requests on one connection, the last one closing it.
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /{index}/_count HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD /{index} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let out = raw_exchange(&proxy.url(), req.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
    assert!(out.contains("\"count\":0"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "HEAD answer must have no body: {out}");

    // A chunked `_bulk` body with Expect: 100-continue, with faults on.
    proxy.set(Faults { bulk_item_429: 0.5, ..Faults::default() });
    let ndjson = "{\"index\":{\"_id\":\"1\"}}\n{\"n\":1}\n{\"index\":{\"_id\":\"2\"}}\n{\"n\":2}\n";
    let (a, b) = ndjson.split_at(17);
    let req = format!(
        "POST /{index}/_bulk?refresh=true HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n\
         Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n\
         {:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    let out = raw_exchange(&proxy.url(), req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), "{out}");
    let json_start = out.find("\r\n\r\n{").expect("a JSON body") + 4;
    let head = out[..json_start].to_ascii_lowercase();
    let resp: Value = serde_json::from_str(&out[json_start..]).unwrap();
    assert!(head.contains(&format!("content-length: {}\r\n", out.len() - json_start)), "{out}");
    assert!(!head.contains("transfer-encoding"), "{out}");
    let statuses: Vec<u64> = resp["items"].as_array().unwrap().iter().map(|i| i["index"]["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses.len(), 2);
    let accepted = statuses.iter().filter(|s| **s == 201).count() as u64;
    assert_eq!(statuses.len() as u64 - accepted, proxy.stats().items_429);
    assert_eq!(count(&c, &index).await, accepted);
    proxy.clear();

    let forwarded_before = proxy.stats().forwarded;
    // Malformed input gets a 400 and a closed connection; the proxy keeps serving. hyper
    // answers a malformed head (an unknown version included) with an empty 400; a
    // malformed body is the proxy's to answer, with a JSON 400.
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let out = raw_exchange(&proxy.url(), garbage).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.to_ascii_lowercase().contains("connection: close\r\n"), "{out}");
    }
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
    let out = raw_exchange(&proxy.url(), long.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    // A truncated head: the peer went away, nothing to answer. A truncated body is answered
    // 400 (the client only closed its sending side), and nothing is forwarded.
    assert_eq!(raw_exchange_with(&proxy.url(), b"GET / HTT", true).await, "");
    let truncated = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
    let out = raw_exchange_with(&proxy.url(), truncated, true).await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("malformed request body"), "{out}");
    assert_eq!(proxy.stats().forwarded, forwarded_before, "malformed requests are not forwarded");
    // HTTP/1.0 without keep-alive is answered in HTTP/1.0 and closed after the answer.
    let out = raw_exchange(&proxy.url(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
    assert_eq!(c.get(proxy.url()).send().await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn dropping_the_proxy_stops_it() {
    let proxy = FaultProxy::start(&es_url()).await;
    let url = proxy.url();
    let addr = url.trim_start_matches("http://").to_string();
    // An idle keep-alive connection, open when the proxy is dropped.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));

    drop(proxy);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(&addr).await.is_err(), "listener still open after drop");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "open connection not closed after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_proxies_in_parallel_under_concurrent_load() {
    let es = es_url();
    let mut handles = Vec::new();
    for p in 0..4 {
        let es = es.clone();
        handles.push(tokio::spawn(async move {
            let proxy = FaultProxy::start(&es).await;
            proxy.set(Faults { unavailable: 0.2, ..Faults::default() });
            let c = client();
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (c, url) = (c.clone(), proxy.url());
                tasks.push(tokio::spawn(async move {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    for _ in 0..25 {
                        match c.get(&url).send().await.unwrap().status().as_u16() {
                            200 => ok += 1,
                            503 => failed += 1,
                            other => panic!("status {other}"),
                        }
                    }
                    (ok, failed)
                }));
            }
            let (mut ok, mut failed) = (0, 0);
            for t in tasks {
                let (o, f) = t.await.unwrap();
                ok += o;
                failed += f;
            }
            assert_eq!(ok + failed, 200, "proxy {p}");
            assert_eq!(proxy.stats(), FaultStats { forwarded: ok, unavailable: failed, ..FaultStats::default() });
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test]
async fn max_body_answers_413_like_nginx_without_forwarding() {
    let (proxy, c, index) = setup("toolarge").await;
    proxy.set(Faults { max_body: Some(1000), ..Faults::default() });

    let doc = |i: usize| format!("{{\"index\":{{\"_id\":\"{i}\"}}}}\n{{\"n\":{i}}}\n");
    let large: String = (0..100).map(doc).collect();
    assert!(large.len() > 1000);
    let r = c
        .post(format!("{}/{index}/_bulk?refresh=true", proxy.url()))
        .header("content-type", "application/x-ndjson")
        .body(large)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(r.headers()["content-type"], "text/html");
    // nginx closes the connection after a 413.
    assert_eq!(r.headers()["connection"], "close");
    let page = r.text().await.unwrap();
    assert!(page.starts_with("<html>\r\n<head><title>413 Request Entity Too Large</title></head>"), "{page}");
    assert_eq!(proxy.stats(), FaultStats { too_large: 1, ..FaultStats::default() });
    assert_eq!(count(&c, &index).await, 0);

    // At the limit and below, requests pass (on any path: the limit is not `only_path`'s).
    let small: String = (0..10).map(doc).collect();
    assert!(small.len() <= 1000);
    bulk_ok(&c, &format!("{}/{index}/_bulk?refresh=true", proxy.url()), small).await;
    assert_eq!(c.get(format!("{}/{index}/_count", proxy.url())).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(proxy.stats(), FaultStats { forwarded: 2, too_large: 1, ..FaultStats::default() });
    assert_eq!(count(&c, &index).await, 10);
}

#[tokio::test]
async fn delay_answer_holds_the_answer_of_an_executed_bulk() {
    let (proxy, c, index) = setup("delayanswer").await;
    let hold = Duration::from_millis(1500);
    proxy.set(Faults { slow_answer: 1.0, delay_answer: hold, ..Faults::on("_bulk") });

    // The client gives up before the answer comes, yet the server has executed the bulk.
    let body = "{\"index\":{\"_id\":\"a\"}}\n{\"n\":1}\n{\"index\":{\"_id\":\"b\"}}\n{\"n\":2}\n";
    let err = c
        .post(format!("{}/{index}/_bulk?refresh=true", proxy.url()))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("the client must time out");
    assert!(err.is_timeout(), "{err:?}");
    let stats = stats_when(&proxy, "an answer held", |s| s.answers_delayed == 1).await;
    assert_eq!((stats.answers_delayed, stats.in_flight), (1, 1), "the answer is held, and so still in flight");
    assert_eq!(count(&c, &index).await, 2, "the server executed the bulk before the answer was held");

    // A patient client gets the answer, late.
    let started = Instant::now();
    bulk_ok(&c, &format!("{}/{index}/_bulk", proxy.url()), body.to_string()).await;
    assert!(started.elapsed() >= hold, "{:?}", started.elapsed());

    // Other paths are not held (only_path).
    let started = Instant::now();
    assert_eq!(c.get(format!("{}/{index}/_count", proxy.url())).send().await.unwrap().status().as_u16(), 200);
    assert!(started.elapsed() < hold, "{:?}", started.elapsed());

    assert_eq!(
        settled(&proxy).await,
        FaultStats { forwarded: 3, answers_delayed: 2, ..FaultStats::default() },
        "the first bulk was forwarded, and its answer has been dropped since"
    );
    let log = proxy.bulk_log();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.end - r.start >= hold && r.status == 200), "{log:?}");
}

#[tokio::test]
async fn write_block_answers_a_cluster_block_exception_without_forwarding() {
    let (proxy, c, index) = setup("writeblock").await;
    let body = "{\"index\":{\"_id\":\"a\"}}\n{\"n\":1}\n".to_string();

    proxy.set(Faults { write_block: 1.0, ..Faults::default() });
    let (status, resp) = bulk(&c, &format!("{}/{index}/_bulk?refresh=true", proxy.url()), body.clone()).await;
    let reason = format!("index [{index}] blocked by: [FORBIDDEN/8/index write (api)];");
    let error = json!({"type": "cluster_block_exception", "reason": reason});
    assert_eq!(status, 403);
    assert_eq!(resp, json!({"error": {"root_cause": [error], "type": "cluster_block_exception", "reason": reason}, "status": 403}));
    // Only `_bulk` is blocked: reads pass.
    assert_eq!(c.get(format!("{}/{index}/_count", proxy.url())).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(proxy.stats(), FaultStats { forwarded: 1, write_blocked: 1, ..FaultStats::default() });
    assert!(proxy.bulk_log().is_empty(), "a blocked bulk was not forwarded");

    // Elasticsearch 8's flood-stage block answers 429; the index comes from `_index` here.
    proxy.set(Faults { write_block: 1.0, write_block_status: 429, ..Faults::default() });
    let body_with_index = format!("{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"a\"}}}}\n{{\"n\":1}}\n");
    let (status, resp) = bulk(&c, &format!("{}/_bulk", proxy.url()), body_with_index).await;
    assert_eq!((status, resp["status"].clone()), (429, json!(429)), "{resp}");
    assert_eq!(resp["error"]["type"], json!("cluster_block_exception"));
    let reason = resp["error"]["reason"].as_str().unwrap();
    assert!(reason.starts_with(&format!("index [{index}] blocked by: [TOO_MANY_REQUESTS/12/")), "{reason}");
    assert_eq!(proxy.stats().write_blocked, 2);
    assert_eq!(count(&c, &index).await, 0);

    proxy.clear();
    bulk_ok(&c, &format!("{}/{index}/_bulk?refresh=true", proxy.url()), body).await;
    assert_eq!(count(&c, &index).await, 1);
}

#[tokio::test]
async fn bulk_log_records_who_shipped_what_and_when() {
    let (proxy, c, index) = setup("bulklog").await;
    let action = |op: &str, index: Option<&str>, id: &str, version: Option<u64>| BulkAction {
        op: op.into(),
        index: index.map(str::to_string),
        id: Some(id.into()),
        version,
    };

    // Externally versioned writes on `/<index>/_bulk`, then a delete with `_index` on `/_bulk`.
    let before = Instant::now();
    let body = "{\"index\":{\"_id\":\"a\",\"version\":5,\"version_type\":\"external\"}}\n{\"n\":1}\n\
                {\"index\":{\"_id\":\"b\",\"version\":7,\"version_type\":\"external\"}}\n{\"n\":2}\n";
    bulk_ok(&c, &format!("{}/{index}/_bulk?refresh=true", proxy.url()), body.into()).await;
    let body = format!("{{\"delete\":{{\"_index\":\"{index}\",\"_id\":\"a\",\"version\":6,\"version_type\":\"external\"}}}}\n");
    bulk_ok(&c, &format!("{}/_bulk?refresh=true", proxy.url()), body).await;
    // Not `_bulk`: not logged.
    assert_eq!(c.get(format!("{}/{index}/_count", proxy.url())).send().await.unwrap().status().as_u16(), 200);
    let after = Instant::now();

    let log = proxy.bulk_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].actions, vec![action("index", Some(&index), "a", Some(5)), action("index", Some(&index), "b", Some(7))]);
    assert_eq!(log[1].actions, vec![action("delete", Some(&index), "a", Some(6))]);
    assert!(before <= log[0].start && log[0].start <= log[0].end && log[0].end <= log[1].start, "{log:?}");
    assert!(log[1].end <= after && log.iter().all(|r| r.status == 200), "{log:?}");

    // Items the proxy rejected with a 429 never reached the server: the log leaves them out.
    // A bulk rejected whole was not forwarded at all.
    proxy.clear_log();
    assert!(proxy.bulk_log().is_empty());
    proxy.set(Faults { bulk_item_429: 0.5, ..Faults::default() });
    let body: String = (0..40).map(|i| format!("{{\"index\":{{\"_id\":\"n{i}\"}}}}\n{{\"n\":{i}}}\n")).collect();
    let (_, resp) = bulk(&c, &format!("{}/{index}/_bulk", proxy.url()), body).await;
    let accepted: Vec<BulkAction> = resp["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["index"]["status"] != json!(429))
        .map(|i| action("index", Some(&index), i["index"]["_id"].as_str().unwrap(), None))
        .collect();
    assert!(!accepted.is_empty() && accepted.len() < 40, "{resp}");
    proxy.set(Faults { bulk_item_429: 1.0, ..Faults::default() });
    let (_, resp) = bulk(&c, &format!("{}/{index}/_bulk", proxy.url()), "{\"delete\":{\"_id\":\"b\"}}\n".into()).await;
    assert_eq!(resp["items"][0]["delete"]["status"], json!(429), "{resp}");
    let log = proxy.bulk_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].actions, accepted);
}

#[tokio::test]
async fn in_flight_counts_the_requests_being_handled() {
    let (proxy, c) = proxy_and_client().await;
    let delay = Duration::from_secs(2);
    proxy.set(Faults { slow: 1.0, delay, ..Faults::default() });
    assert_eq!(proxy.stats().in_flight, 0);
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let (c, url) = (c.clone(), proxy.url());
            tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    assert_eq!(stats_when(&proxy, "three requests in flight", |s| s.in_flight == 3).await.in_flight, 3);
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    // Each request left the gauge before its answer was written.
    assert_eq!(proxy.stats(), FaultStats { forwarded: 3, slowed: 3, ..FaultStats::default() });
}

/// Makes an environment with something of every kind it cleans up — databases (its own and
/// one it made), an index and its alias, an index template, Redis keys, a file — and drops
/// it while its test panics. Then asserts that nothing is left.
async fn an_env_dropped_by_a_panic_leaves_nothing() {
    use futures::FutureExt;
    let env = Env::new().await;
    env.create_index().await;
    env.sql(&format!("CREATE DATABASE {}_made", env.db_name)).await;
    let template = json!({"index_patterns": [format!("{}_*", env.alias)], "template": {"settings": {"index": {}}}});
    env.es_json(reqwest::Method::PUT, &format!("/_index_template/{}-t", env.alias), Some(template)).await;
    redis::cmd("SET").arg(format!("{}:k", env.namespace)).arg(1).query_async::<()>(&mut env.redis().await).await.unwrap();
    let file = env.file("f", "x");
    let (db, alias, namespace) = (env.db_name.clone(), env.alias.clone(), env.namespace.clone());
    let failed = std::panic::AssertUnwindSafe(async move {
        let _env = env;
        panic!("a failing test");
    })
    .catch_unwind()
    .await;
    assert!(failed.is_err());
    let admin = sqlx::PgPool::connect(&support::service_url("DATABASE_URL")).await.unwrap();
    let dbs: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1 || '%'").bind(&db).fetch_all(&admin).await.unwrap();
    assert!(dbs.is_empty(), "databases left: {dbs:?}");
    let c = client();
    let indices: Value = c.get(format!("{}/_cat/indices/{alias}*?format=json", es_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(indices, json!([]), "indices left");
    let templates = c.get(format!("{}/_index_template/{alias}*", es_url())).send().await.unwrap().json::<Value>().await.unwrap();
    assert!(templates["index_templates"].as_array().is_none_or(|t| t.is_empty()), "templates left: {templates}");
    let redis = redis::Client::open(support::service_url("REDIS_URL")).unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut redis.get_multiplexed_async_connection().await.unwrap())
        .await
        .unwrap();
    assert!(keys.is_empty(), "Redis keys left: {keys:?}");
    assert!(!file.exists(), "{} is left", file.display());
}

#[tokio::test]
async fn an_env_cleans_up_when_its_test_panics_in_a_single_threaded_runtime() {
    an_env_dropped_by_a_panic_leaves_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_cleans_up_when_its_test_panics_in_a_multi_threaded_runtime() {
    an_env_dropped_by_a_panic_leaves_nothing().await;
}

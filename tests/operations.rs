//! Operations: the admin endpoint (/metrics, /healthz, /readyz) of real worker and
//! scheduler processes, the metric catalogue (docs/metrics.md) against what they export,
//! JSON logs, and a graceful stop under orchestration.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{eventually, fault_proxy::Faults, free_port, Env, RedisServer};

/// One catalogued metric: its type and its labels with their allowed values (empty: any).
#[derive(Debug)]
struct Catalogued {
    kind: String,
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// docs/metrics.md's catalogue table.
fn catalogue() -> BTreeMap<String, Catalogued> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `tidemark_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let mut labels = BTreeMap::new();
        if cells[4] != "—" {
            for label in cells[4].split(';') {
                let (label, values) = label.split_once(':').unwrap_or((label, ""));
                let values = values.split(',').map(|v| v.trim().trim_matches('`').to_string()).filter(|v| !v.is_empty()).collect();
                labels.insert(label.trim().trim_matches('`').to_string(), values);
            }
        }
        out.insert(name, Catalogued { kind: cells[2].to_string(), labels });
    }
    out
}

/// A scrape: the type of each metric, and each sample (name, labels, value).
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                s.types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (head, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = match head.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (head, ""),
                };
                let labels = labels
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                s.samples.push((name.to_string(), labels, value.parse().unwrap()));
            }
        }
        s
    }

    /// The sum of a metric's samples whose labels include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && with.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.2)
            .sum()
    }
}

async fn scrape(addr: &str) -> Scrape {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    Scrape::parse(&text)
}

async fn wait_for_admin(addr: &str) {
    let healthz = format!("http://{addr}/healthz");
    eventually("the admin endpoint answers", Duration::from_secs(30), || async { reqwest::get(&healthz).await.is_ok() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalogued_metric_is_exported_as_declared_and_a_stuck_mark_shows_as_rising_lag() {
    let catalogue = catalogue();
    assert!(catalogue.len() >= 20, "the catalogue parses: {catalogue:?}");
    let env = Env::with_directory().await;
    let proxy = env.proxy().await;
    let (worker_addr, scheduler_addr) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut worker = env.spawn(&["worker", "--admin-addr", &worker_addr], |c| {
        c.env("ELASTICSEARCH_URL", proxy.url());
    });
    let mut scheduler = env.spawn(&["scheduler", "--interval", "1s", "--admin-addr", &scheduler_addr], |_| {});
    wait_for_admin(&worker_addr).await;
    wait_for_admin(&scheduler_addr).await;
    // A real sync: inserts, a rename (fan-out), updates, deletes, a reindex, and some 429s.
    env.add_students_at(2500, "1 + g % 2").await;
    eventually("the inserts", Duration::from_secs(90), || env.synced()).await;
    proxy.set(Faults { bulk_item_429: 0.2, ..Faults::on("_bulk") });
    env.sql("UPDATE universities SET name = 'MIT2' WHERE id = 1").await;
    env.sql("UPDATE students SET age = 21 WHERE id <= 100; DELETE FROM students WHERE id > 2400").await;
    eventually("the changes", Duration::from_secs(90), || env.synced()).await;
    proxy.clear();
    env.run(&["admin", "reindex", "--wait"]).expect_ok();
    eventually("the reindex", Duration::from_secs(90), || env.synced()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // The search application, with its own admin endpoint: a few pages and API calls.
    let (serve_addr, serve_admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let serve = env.spawn(&["serve", "--addr", &serve_addr, "--admin-addr", &serve_admin], |_| {});
    wait_for_admin(&serve_admin).await;
    for path in ["/", "/api/search?q=N1", "/api/suggest?q=N", "/students/7", "/students/999999", "/api/search?size=oops"] {
        let _ = reqwest::get(format!("http://{serve_addr}{path}")).await.unwrap();
    }
    let ready: Value = reqwest::get(format!("http://{serve_admin}/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], Value::Bool(true), "serve is ready without Redis: {ready}");
    assert!(ready["checks"].get("redis").is_none(), "serve does not use Redis: {ready}");

    let (w, s, v) = (scrape(&worker_addr).await, scrape(&scheduler_addr).await, scrape(&serve_admin).await);
    for (name, c) in &catalogue {
        let exported = w.types.get(name).or_else(|| s.types.get(name)).or_else(|| v.types.get(name));
        assert_eq!(exported.map(String::as_str), Some(c.kind.as_str()), "{name} is exported as a {}", c.kind);
    }
    // Routes are labelled by their template, never by the path requested.
    assert!(v.sum("tidemark_http_requests_total", &[("route", "/students/{id}"), ("status_class", "4xx")]) >= 1.0);
    assert!(v.sum("tidemark_http_requests_total", &[("route", "/api/search"), ("status_class", "4xx")]) >= 1.0);
    assert!(v.samples.iter().all(|(_, l, _)| l.get("route").is_none_or(|r| !r.contains("999999"))));
    for scrape in [&w, &s, &v] {
        for (name, labels, _) in &scrape.samples {
            assert!(name.starts_with("tidemark_"), "{name}: every name starts with tidemark_");
            let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            let c = catalogue.get(name).or_else(|| catalogue.get(base)).unwrap_or_else(|| panic!("{name} is not in docs/metrics.md"));
            if c.kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} ends in _total");
            }
            for (k, value) in labels {
                if k == "le" {
                    continue;
                }
                let allowed = c.labels.get(k).unwrap_or_else(|| panic!("{name} has label {k}, not in the catalogue"));
                assert!(allowed.is_empty() || allowed.contains(value), "{name}{{{k}={value}}}: not one of {allowed:?}");
            }
        }
    }
    // Outcomes add up to the items sent; a 409 is superseded, not an error.
    let sent = w.sum("tidemark_bulk_items_total", &[]);
    let outcomes = w.sum("tidemark_documents_total", &[]);
    assert!(sent > 2500.0, "{sent}");
    assert_eq!(outcomes, sent, "outcomes add up to the items sent");
    assert!(w.sum("tidemark_documents_total", &[("outcome", "transient")]) > 0.0, "the 429s are counted as transient");
    assert!(w.sum("tidemark_documents_total", &[("outcome", "deleted")]) >= 100.0);
    assert!(w.sum("tidemark_retries_total", &[("stage", "ship")]) > 0.0);
    assert!(w.sum("tidemark_fanout_students_total", &[]) > 1000.0);
    assert!(w.sum("tidemark_reindex_documents_total", &[]) >= 2400.0);
    assert_eq!(s.sum("tidemark_marks_outstanding", &[]), 0.0);
    assert_eq!(s.sum("tidemark_workers_live", &[]), 1.0);

    // A stuck mark: the search server refuses every _bulk. The lag rises; the freshness
    // histogram (what was acknowledged) does not move.
    proxy.set(Faults { unavailable: 1.0, ..Faults::on("_bulk") });
    env.sql("UPDATE students SET last_name = 'Stuck' WHERE id = 5").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (w1, s1) = (scrape(&worker_addr).await, scrape(&scheduler_addr).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (w2, s2) = (scrape(&worker_addr).await, scrape(&scheduler_addr).await);
    let (lag1, lag2) = (s1.sum("tidemark_oldest_mark_age_seconds", &[]), s2.sum("tidemark_oldest_mark_age_seconds", &[]));
    assert!(lag1 >= 1.0 && lag2 >= lag1 + 2.0, "the lag rises while the mark is stuck: {lag1} then {lag2}");
    assert_eq!(s2.sum("tidemark_marks_outstanding", &[]), 1.0);
    assert_eq!(w1.sum("tidemark_freshness_seconds_count", &[]), w2.sum("tidemark_freshness_seconds_count", &[]), "nothing acknowledged");
    assert!(w2.sum("tidemark_bulk_requests_total", &[("status_class", "5xx")]) > 0.0);
    proxy.clear();
    eventually("the stuck mark goes through once the server takes writes", Duration::from_secs(60), || env.synced()).await;
    drop(serve);
    assert!(worker.terminate().success());
    assert!(scheduler.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_redis_when_it_is_down_while_healthz_stays_ok() {
    let env = Env::new().await;
    let mut redis = RedisServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let _worker = env.spawn(&["worker", "--admin-addr", &addr], |c| {
        c.env("REDIS_URL", redis.url());
    });
    wait_for_admin(&addr).await;
    // Ready once its checks have answered (each is bounded; a loaded machine may take a
    // moment after the endpoint comes up).
    let url = format!("http://{addr}/readyz");
    eventually("the worker is ready", Duration::from_secs(30), || async {
        reqwest::get(&url).await.map(|r| r.status() == 200).unwrap_or(false)
    })
    .await;
    let ready = reqwest::get(&url).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    for check in ["postgres", "search", "redis"] {
        assert_eq!(body["checks"][check]["ok"], Value::Bool(true), "{body}");
    }
    redis.kill();
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["redis"]["ok"], Value::Bool(false), "{body}");
    assert_eq!(body["checks"]["postgres"]["ok"], Value::Bool(true), "{body}");
    assert!(body["checks"]["redis"]["error"].as_str().unwrap().contains("Redis"), "{body}");
    let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "alive without Redis");
    redis.respawn();
    eventually("ready again once Redis is back", Duration::from_secs(20), || async {
        reqwest::get(format!("http://{addr}/readyz")).await.unwrap().status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_with_stable_fields_and_nothing_per_document_at_info() {
    let env = Env::new().await;
    let proxy = env.proxy().await;
    env.create_index().await;
    let mut worker = env.spawn(&["worker", "--log-format", "json"], |c| {
        c.env("ELASTICSEARCH_URL", proxy.url());
    });
    env.add_students(300).await;
    eventually("the inserts", Duration::from_secs(60), || env.synced()).await;
    // A step that fails, to see an error line.
    proxy.set(Faults { require_authorization: Some("Basic nobody".into()), ..Faults::default() });
    env.sql("UPDATE students SET age = 30 WHERE id = 1").await;
    eventually("a failed step is logged", Duration::from_secs(20), || async { worker.output().contains("sync step failed") }).await;
    proxy.clear();
    eventually("the update", Duration::from_secs(60), || env.synced()).await;
    assert!(worker.terminate().success());
    let lines: Vec<Value> = worker
        .output()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let batch = lines.iter().find(|l| l["fields"]["message"] == "batch synced").expect("a batch line");
    for field in ["indexed", "deleted", "cleared", "load_ms", "ship_ms", "ack_ms", "requests"] {
        assert!(batch["fields"].get(field).is_some(), "batch line has {field}: {batch}");
    }
    for field in ["batch_id", "size", "indices", "owner"] {
        assert!(batch["span"].get(field).is_some(), "batch span has {field}: {batch}");
    }
    let error = lines.iter().find(|l| l["fields"]["message"] == "sync step failed; marks stay and are retried").expect("an error line");
    assert_eq!(error["fields"]["stage"], "sync_step");
    assert_eq!(error["fields"]["error_type"], "search_credentials");
    let per_document = lines.iter().filter(|l| l["level"] == "INFO" && l["fields"].get("student_id").is_some()).count();
    assert_eq!(per_document, 0, "nothing is logged per document at info level");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_a_worker_with_a_batch_in_flight_exits_0_and_leaves_no_lease() {
    let env = Env::new().await;
    let proxy = env.proxy().await;
    env.create_index().await;
    let config = env.file("stop.toml", "[worker]\nshutdown_timeout = \"2s\"\n");
    let mut worker = env.spawn(&["--config", config.to_str().unwrap(), "worker"], |c| {
        c.env("ELASTICSEARCH_URL", proxy.url());
    });
    // Every _bulk answer is held 10 s: the batch is in flight when the stop comes.
    proxy.set(Faults { slow_answer: 1.0, delay_answer: Duration::from_secs(10), ..Faults::on("_bulk") });
    env.add_students(50).await;
    eventually("a batch is in flight", Duration::from_secs(20), || async { proxy.stats().in_flight > 0 }).await;
    let stopped = Instant::now();
    let status = worker.terminate();
    assert!(status.success(), "exit 0 on SIGTERM:\n{}", worker.output());
    assert!(stopped.elapsed() < Duration::from_secs(8), "within the grace period (2 s + margin): {:?}", stopped.elapsed());
    let leased = env
        .scalar_i64(
            "SELECT (SELECT count(*) FROM tidemark.marks WHERE lease_owner IS NOT NULL)
                  + (SELECT count(*) FROM tidemark.parents WHERE lease_owner IS NOT NULL)
                  + (SELECT count(*) FROM tidemark.reindex_chunks WHERE lease_owner IS NOT NULL AND NOT done)",
        )
        .await;
    assert_eq!(leased, 0, "no lease is left behind");
    assert_eq!(env.outstanding().await, 50, "the marks stay for the next worker");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.workers").await, 0, "the worker said it is gone");
    proxy.clear();
}

/// docs/metrics.md's "Which process exports what": the catalogue's names a process's row
/// covers (`bulk_*` covers every name that starts so).
fn exported_by(process: &str) -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let row = text.lines().find(|l| l.starts_with(&format!("| `{process}`"))).unwrap_or_else(|| panic!("a row for {process}"));
    row.split('|').nth(2).unwrap().split(',').map(|n| format!("tidemark_{}", n.trim().trim_matches('`'))).collect()
}

/// Every catalogued counter a process exports whose labels all come from fixed sets, with
/// each combination of its label values: present in `w` (at 0 if nothing happened).
fn assert_fixed_label_counters(w: &Scrape, process: &str) -> usize {
    let covers = exported_by(process);
    let mut checked = 0;
    for (name, c) in catalogue().iter().filter(|(n, c)| {
        c.kind == "counter"
            && c.labels.values().all(|v| !v.is_empty())
            && covers.iter().any(|p| p.strip_suffix('*').map_or(n.trim_end_matches("_total") == p.as_str(), |p| n.starts_with(p)))
    }) {
        let mut combos: Vec<Vec<(&str, &str)>> = vec![vec![]];
        for (k, values) in &c.labels {
            combos = combos
                .into_iter()
                .flat_map(|combo| values.iter().map(move |v| [combo.clone(), vec![(k.as_str(), v.as_str())]].concat()))
                .collect();
        }
        for combo in combos {
            let present =
                w.samples.iter().any(|(n, l, _)| n == name && combo.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)));
            assert!(present, "{name}{combo:?} is exported by a healthy {process} (at 0 if nothing happened)");
            checked += 1;
        }
    }
    checked
}

/// Issue 20, item 3: every catalogued counter whose labels all come from fixed sets is
/// exported from the start, at 0, by a worker that has seen no fault (and by `serve`, for
/// its own): an alert or a dashboard on `rate(tidemark_retries_total[5m])` sees 0, not
/// "no data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_worker_exports_every_fixed_label_counter_at_zero_from_the_start() {
    let env = Env::with_directory().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut worker = env.spawn(&["worker", "--admin-addr", &addr], |_| {});
    wait_for_admin(&addr).await;
    // A clean sync: nothing is retried, nothing dead-lettered.
    env.add_students_at(20, "1").await;
    eventually("the inserts", Duration::from_secs(60), || env.synced()).await;
    let w = scrape(&addr).await;
    let checked = assert_fixed_label_counters(&w, "worker");
    assert!(checked >= 15, "the catalogue's fixed-label counters of a worker were checked: {checked}");
    assert_eq!(w.sum("tidemark_retries_total", &[("stage", "ship")]), 0.0, "nothing was retried");
    assert_eq!(w.sum("tidemark_dead_lettered_total", &[]), 0.0);
    assert!(worker.terminate().success());

    let admin = format!("127.0.0.1:{}", free_port());
    let app = format!("127.0.0.1:{}", free_port());
    let mut serve = env.spawn(&["serve", "--addr", &app, "--admin-addr", &admin], |_| {});
    wait_for_admin(&admin).await;
    let s = scrape(&admin).await;
    let checked = assert_fixed_label_counters(&s, "serve");
    assert!(checked >= 14, "serve's cache and engine counters were checked: {checked}");
    assert!(serve.terminate().success());
}

/// Issue 20, item 2: a worker asked to stop while it writes a reindex chunk finishes that
/// chunk and claims nothing after the signal: the marks waiting meanwhile are left to the
/// other workers (here: still there, unleased, when it has stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_asked_to_stop_during_a_reindex_chunk_claims_no_new_work() {
    let env = Env::with_directory().await;
    let proxy = env.proxy().await;
    env.add_students(3000).await;
    env.drain().await;
    // A build for the worker (reaching the engine through the proxy) to work on.
    env.start_reindex(10_000).await;
    // Every _bulk answer is held 3 s: the worker is inside the chunk when the stop comes.
    proxy.set(Faults { slow_answer: 1.0, delay_answer: Duration::from_secs(3), ..Faults::on("_bulk") });
    let worker = env.start_worker(env.services_via(&proxy), 1);
    eventually("the worker writes a reindex chunk", Duration::from_secs(30), || async {
        proxy.stats().in_flight > 0
            && env.scalar_i64("SELECT count(*) FROM tidemark.reindex_chunks WHERE lease_owner IS NOT NULL AND NOT done").await == 1
    })
    .await;
    // Changes wait to be synced while the chunk is being written.
    env.sql("UPDATE students SET age = 21 WHERE id <= 100").await;
    assert_eq!(env.outstanding().await, 100);
    let stopped = Instant::now();
    worker.stop().await;
    // The chunk in hand goes on (it writes to the build only); a sync batch would also write
    // to the live index.
    let synced_after_stop: Vec<_> = proxy
        .bulk_log()
        .into_iter()
        .filter(|r| r.start > stopped && r.actions.iter().any(|a| a.index.as_deref() == Some(env.alias.as_str())))
        .collect();
    assert!(synced_after_stop.is_empty(), "no sync batch is shipped after the stop: {synced_after_stop:?}");
    assert_eq!(env.outstanding().await, 100, "the waiting marks were not taken");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.marks WHERE lease_owner IS NOT NULL").await, 0, "nor leased");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM tidemark.reindex_chunks WHERE done AND reindex_id = (SELECT max(id) FROM tidemark.reindexes)")
            .await,
        1,
        "the chunk in hand was finished"
    );
    proxy.clear();
}

//! 6. The search application (`tidemark serve`, a release process on its own port):
//!
//! - `/api/search` with facets and `/api/suggest` latency (p50/p95/p99) and throughput
//!   under 1, 8 and 32 concurrent connections, at 100,000 and 1,000,000 students, while
//!   writes run at 100 writes/s (a worker syncs them, so the index really refreshes), for
//!   two query mixes: a *Zipf* mix drawn (seeded, printed) over realistic request shapes
//!   (landing page, one facet value, two facets, a typed word, paging, `distinct`) and the
//!   *uniform* rotation over 8 facet searches. Each is measured side by side with the
//!   *same* requests sent straight to the engine (one `_search` body with hits and counts
//!   together, [`one_request`]: what an application without tidemark's cache would send), so
//!   tidemark's gain or overhead is a ratio from one run; at 1 and the most connections,
//!   also through a second `serve` with reuse off (`cache_max_age = "0s"`), so before and
//!   after reuse are side by side too;
//! - facets by the index against the same request answered by `engine=sql` (PostgreSQL
//!   builds every document by the model's document query, then counts them: the same
//!   answer, a yardstick rather than a tuned `GROUP BY`; section 5 checks the tutorial's
//!   "up to 10× faster" claim against `GROUP BY`), at every size, with disjunctive facets,
//!   a histogram and hits, through the serve with reuse off (a repeated request would
//!   otherwise measure serve's cache). `BENCH_SERVE_SKIP_SQL=1` leaves it out
//!   (a shorter run for the load figures alone).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tidemark::{
    model::Model,
    web::{query, Request},
};

use super::{
    env::{BenchEnv, Services},
    report::{Outcome, Row},
    stats::{self, Dist},
    Plan,
};
use crate::progress;

const BENCH: &str = "6. Search application";

/// Facet requests a search page makes: selections in one to three facets, a text query, a
/// histogram bar, distinct counts; every one asks for hits, three terms facets and the age
/// histogram in one `_search`.
const SEARCHES: [&str; 8] = [
    "course=CS101",
    "university=MIT&year=FR",
    "q=anna&course=MATH101",
    "course=CS101&course=PHYS102&age_gte=18&age_lt=22",
    "university=KPI&university=MGU&sort=last_name",
    "year=SR&course=CHEM102&distinct=university",
    "q=maria+lopez",
    "",
];

/// serve's configuration with reuse off: before issue 19's answer reuse.
const NO_REUSE: &str = "[serve]\ncache_max_age = \"0s\"\n";

/// Two- and three-letter prefixes typed into the search box.
const PREFIXES: [&str; 12] = ["an", "mar", "jo", "ka", "el", "sa", "li", "pe", "mi", "da", "to", "ch"];

/// Requests to send: a URL, and the JSON body of a POST (None: a GET).
type Requests = Vec<(String, Option<Value>)>;

/// Requests under load that answered 503 (counted in the latencies with their time).
static LOAD_UNAVAILABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How each client picks its next request: round robin from its own offset (the uniform
/// mix), or drawn from a Zipf distribution over the requests' ranks by a generator seeded
/// per client (the same sequence for the engine and for tidemark).
#[derive(Clone, Copy, Debug)]
enum Pick {
    RoundRobin,
    Zipf { seed: u64, exponent: f64 },
}

/// One measured load: every latency (seconds) and the wall time it ran.
struct Samples {
    times: Vec<f64>,
    secs: f64,
}

/// Latencies of `connections` clients sending `requests` (as `pick` says) for `secs`.
async fn load(http: &reqwest::Client, requests: Arc<Requests>, pick: Pick, connections: usize, secs: f64, round: u64) -> Result<Samples> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let cdf = Arc::new(match pick {
        Pick::Zipf { exponent, .. } => zipf_cdf(requests.len(), exponent),
        Pick::RoundRobin => Vec::new(),
    });
    let clients = (0..connections).map(|c| {
        let (http, requests, cdf) = (http.clone(), requests.clone(), cdf.clone());
        async move {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(match pick {
                Pick::Zipf { seed, .. } => seed ^ (round << 32) ^ c as u64,
                Pick::RoundRobin => 0,
            });
            let mut times = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let k = match pick {
                    Pick::RoundRobin => i % requests.len(),
                    Pick::Zipf { .. } => {
                        let u: f64 = rng.gen();
                        cdf.partition_point(|&p| p < u).min(requests.len() - 1)
                    }
                };
                let (url, body) = &requests[k];
                i += 1;
                let t = Instant::now();
                let resp = match body {
                    Some(b) => http.post(url).json(b).send().await?,
                    None => http.get(url).send().await?,
                };
                let status = resp.status();
                let bytes = resp.bytes().await?;
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    // tidemark's bound on the engine ran out: counted and reported, its time kept.
                    LOAD_UNAVAILABLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else if !status.is_success() {
                    bail!("{url} answered {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
                }
                times.push(t.elapsed().as_secs_f64());
            }
            Ok::<_, anyhow::Error>(times)
        }
    });
    let times: Vec<f64> = futures::future::try_join_all(clients).await?.into_iter().flatten().collect();
    Ok(Samples { times, secs: started.elapsed().as_secs_f64() })
}

/// Cumulative probabilities of ranks 1..=n with weight 1 / rank^exponent.
fn zipf_cdf(n: usize, exponent: f64) -> Vec<f64> {
    let w: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(exponent)).collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    w.iter()
        .map(|x| {
            acc += x / total;
            acc
        })
        .collect()
}

/// The Zipf mix's seed and exponent (printed with the results).
const ZIPF_SEED: u64 = 19;
const ZIPF_EXPONENT: f64 = 1.0;

/// Request shapes of the Zipf mix, most popular first: the landing page, then a seeded
/// interleaving of one facet value, a typed word, two facets, paging and `distinct`
/// (values from the seed data: courses, universities, years, first names).
fn zipf_shapes() -> Vec<(String, &'static str)> {
    use rand::{seq::SliceRandom, Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(ZIPF_SEED);
    let lines = |s: &'static str| s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<&str>>();
    let courses = lines(include_str!("../../seeds/courses.txt"));
    let universities = lines(include_str!("../../seeds/universities.txt"));
    let names = lines(include_str!("../../seeds/first_names.txt"));
    let years = ["FR", "SO", "JR", "SR"];
    let enc = |s: &str| -> String { url::form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    let pick = |rng: &mut rand::rngs::StdRng, xs: &[&str]| xs[rng.gen_range(0..xs.len())].to_string();
    // (kind, weight in the interleaving, generator)
    let mut kinds: Vec<(&'static str, f64, Vec<String>)> = Vec::new();
    let mut one = Vec::new();
    for _ in 0..60 {
        one.push(match rng.gen_range(0..3) {
            0 => format!("course={}", enc(&pick(&mut rng, &courses))),
            1 => format!("university={}", enc(&pick(&mut rng, &universities))),
            _ => format!("year={}", pick(&mut rng, &years)),
        });
    }
    kinds.push(("one facet value", 0.30, one));
    let mut word = Vec::new();
    for _ in 0..40 {
        let n = pick(&mut rng, &names).to_lowercase();
        word.push(format!("q={}", enc(&n)));
    }
    kinds.push(("a typed word", 0.20, word));
    let mut two = Vec::new();
    for _ in 0..40 {
        two.push(format!(
            "{}&year={}",
            if rng.gen_bool(0.5) {
                format!("course={}", enc(&pick(&mut rng, &courses)))
            } else {
                format!("university={}", enc(&pick(&mut rng, &universities)))
            },
            pick(&mut rng, &years)
        ));
    }
    kinds.push(("two facets", 0.20, two));
    let mut paging = Vec::new();
    for _ in 0..30 {
        let page = rng.gen_range(2..6);
        paging.push(match rng.gen_range(0..3) {
            0 => format!("page={page}"),
            1 => format!("course={}&page={page}", enc(&pick(&mut rng, &courses))),
            _ => format!("sort=last_name&page={page}"),
        });
    }
    kinds.push(("paging", 0.20, paging));
    let mut distinct = Vec::new();
    for _ in 0..10 {
        let d = ["course", "university", "year"].choose(&mut rng).copied().unwrap_or("university");
        distinct.push(match rng.gen_range(0..2) {
            0 => format!("distinct={d}"),
            _ => format!("year={}&distinct={d}", pick(&mut rng, &years)),
        });
    }
    kinds.push(("distinct", 0.10, distinct));
    let mut out: Vec<(String, &'static str)> = vec![(String::new(), "landing page")];
    // Weighted interleaving: at each rank the kind furthest behind its share comes next.
    let mut taken = vec![0usize; kinds.len()];
    while let Some(k) = (0..kinds.len())
        .filter(|&k| taken[k] < kinds[k].2.len())
        .min_by(|&a, &b| (taken[a] as f64 / kinds[a].1).partial_cmp(&(taken[b] as f64 / kinds[b].1)).unwrap())
    {
        let q = kinds[k].2[taken[k]].clone();
        taken[k] += 1;
        if !out.iter().any(|(o, _)| *o == q) {
            out.push((q, kinds[k].0));
        }
    }
    out
}

/// A request of the students model (the one this section serves).
fn parse(q: &str) -> Result<Request> {
    Request::parse(&Model::students(), Some(q)).map_err(|e| anyhow::anyhow!("{q}: {e}"))
}

/// The request as one `_search` body, hits and counts together: tidemark's counts body
/// (the facets' aggregations, the selections as `post_filter`, which narrows the hits and
/// the total but not the facets) with its hits body's page, sort, source and highlight.
fn one_request(r: &Request) -> Value {
    let mut body = query::counts_body(r);
    let hits = query::hits_body(r);
    for key in ["size", "from", "sort", "_source", "search_after", "highlight", "track_scores"] {
        if let Some(v) = hits.get(key) {
            body[key] = v.clone();
        }
    }
    body
}

/// `/api/search` requests and the same bodies for the engine.
fn searches<'a>(app: &str, es: &str, alias: &str, queries: impl IntoIterator<Item = &'a str>) -> Result<(Requests, Requests)> {
    let mut via = Vec::new();
    let mut direct = Vec::new();
    for q in queries {
        let req = parse(q)?;
        via.push((format!("{app}/api/search?{q}"), None));
        direct.push((format!("{es}/{alias}/_search"), Some(one_request(&req))));
    }
    Ok((via, direct))
}

fn suggests(app: &str, es: &str, alias: &str) -> (Requests, Requests) {
    let via = PREFIXES.iter().map(|p| (format!("{app}/api/suggest?q={p}"), None)).collect();
    let model = Model::students();
    let sg = model.search.as_ref().and_then(|v| v.suggest.as_ref()).expect("the students model declares its suggestions");
    let direct = PREFIXES.iter().map(|p| (format!("{es}/{alias}/_search"), Some(query::suggest_body(sg, p, 8)))).collect();
    (via, direct)
}

/// One side of a comparison: latencies and requests answered per second.
#[derive(serde::Serialize)]
struct Side {
    dist: Dist,
    per_sec: f64,
}

/// Alternates `rounds` times between the request sets in `sides` (the engine directly,
/// then tidemark, then tidemark with reuse off where given), so drift on a shared machine
/// hits all alike; returns one [`Side`] per set, in order.
async fn side_by_side(
    http: &reqwest::Client,
    sides: Vec<Requests>,
    pick: Pick,
    connections: usize,
    secs: f64,
    rounds: usize,
) -> Result<Vec<Side>> {
    let sides: Vec<Arc<Requests>> = sides.into_iter().map(Arc::new).collect();
    // Warm-up: caches, connections, JIT.
    for s in &sides {
        load(http, s.clone(), pick, connections, 2.0, 99).await?;
    }
    let mut samples: Vec<Vec<Samples>> = sides.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (s, out) in sides.iter().zip(&mut samples) {
            out.push(load(http, s.clone(), pick, connections, secs / rounds as f64, round as u64).await?);
        }
    }
    Ok(samples.iter().map(|s| pool(s)).collect())
}

fn pool(ss: &[Samples]) -> Side {
    let all: Vec<f64> = ss.iter().flat_map(|s| s.times.iter().copied()).collect();
    let secs: f64 = ss.iter().map(|s| s.secs).sum();
    Side { per_sec: all.len() as f64 / secs.max(1e-9), dist: stats::dist(&all) }
}

/// One client, each request `runs` times after a warm-up: (index, SQL) medians per request.
/// A request that answers 503 (tidemark's bound on the database, 5 s, or on the engine,
/// 10 s, ran out) is sent once more, noted in `unavailable`; if it answers 503 again, its
/// time is counted as it is (a lower bound) and (request, engine) is noted in `capped`.
async fn index_vs_sql(
    http: &reqwest::Client,
    app: &str,
    runs: usize,
    unavailable: &mut Vec<String>,
    capped: &mut Vec<(String, String)>,
) -> Result<Vec<(String, f64, f64)>> {
    let mut out = Vec::new();
    for q in SEARCHES {
        let mut times = [Vec::new(), Vec::new()];
        for (k, engine) in ["index", "sql"].iter().enumerate() {
            let url = format!("{app}/api/search?{q}{}engine={engine}", if q.is_empty() { "" } else { "&" });
            let mut i = 0;
            let mut tries = 0;
            while i < runs + 1 {
                let t = Instant::now();
                let resp = http.get(&url).send().await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && tries >= 1 {
                    // Not a passing stall: the request takes longer than tidemark's bound
                    // (`engine=sql` at 1,000,000). One such answer says it; more would
                    // only spend the bound again and again.
                    times[k].push(t.elapsed().as_secs_f64());
                    if !capped.iter().any(|(cq, ce)| cq == q && ce == engine) {
                        capped.push((q.to_string(), engine.to_string()));
                    }
                    break;
                }
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    // The database or engine did not answer within tidemark's bound (perhaps a
                    // stall on the shared machine): noted, and the request sent again.
                    tries += 1;
                    unavailable.push(format!(
                        "{}: {}",
                        url.rsplit('/').next().unwrap_or(&url),
                        String::from_utf8_lossy(&body[..body.len().min(80)])
                    ));
                    progress!("serve: {url} answered 503; again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                if !status.is_success() {
                    bail!("{url}: {status}: {}", String::from_utf8_lossy(&body));
                }
                if i > 0 {
                    times[k].push(t.elapsed().as_secs_f64());
                }
                i += 1;
            }
        }
        out.push((q.to_string(), stats::median(&times[0]), stats::median(&times[1])));
    }
    Ok(out)
}

#[derive(serde::Serialize)]
struct SizeResult {
    students: u64,
    /// (request, index median s, SQL median s); empty when not measured at this size.
    facets: Vec<(String, f64, f64)>,
    /// Requests of the index-vs-SQL comparison that answered 503 and were sent again.
    unavailable: Vec<String>,
    /// (request, engine) that answered 503 again: their times are lower bounds.
    capped: Vec<(String, String)>,
    load: Option<LoadResult>,
}

#[derive(serde::Serialize)]
struct Cell {
    mix: &'static str,
    connections: usize,
    direct: Side,
    via: Side,
    /// What serve's metrics counted during the cell (warm-up included): (sample, increase).
    serve: Vec<(String, f64)>,
    /// The same requests through a second serve with reuse off (`cache_max_age = "0s"`:
    /// still split counts/hits, single flight and the engine bound), where measured.
    via_no_reuse: Option<Side>,
    /// That serve's metrics over the cell.
    serve_no_reuse: Vec<(String, f64)>,
}

/// serve's cache look-ups and engine requests so far: (`name{labels}`, value).
async fn serve_counters(http: &reqwest::Client, admin: &str) -> Vec<(String, f64)> {
    let Ok(resp) = http.get(format!("{admin}/metrics")).send().await else { return Vec::new() };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("tidemark_search_cache_lookups_total") || l.starts_with("tidemark_search_engine_requests_total"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse::<f64>().ok()?))))
        .collect()
}

fn increase(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    after.iter().map(|(k, v)| (k.clone(), v - before.iter().find(|(b, _)| b == k).map_or(0.0, |(_, x)| *x))).collect()
}

/// The sum of the samples whose name and labels contain every one of `parts`.
fn sum_of(samples: &[(String, f64)], parts: &[&str]) -> f64 {
    samples.iter().filter(|(k, _)| parts.iter().all(|p| k.contains(p))).map(|(_, v)| v).sum()
}

#[derive(serde::Serialize)]
struct LoadResult {
    /// The engine's work per request, each change on its own.
    work: Vec<Work>,
    cells: Vec<Cell>,
    suggest_connections: usize,
    suggest_direct: Side,
    suggest_via: Side,
    /// Writes committed per second during the load, and marks left when it ended.
    writes_per_sec: f64,
    marks_left_after: i64,
    /// `refresh` operations the engine counted on the index during the load.
    refreshes: u64,
}

/// Starts `tidemark serve` (with `toml` as its `--config`, if given, logged as `name`): its
/// URL and its admin endpoint's.
async fn start_serve(env: &mut BenchEnv, toml: Option<&str>, name: &str) -> Result<(String, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{admin_port}");
    let mut args = Vec::new();
    let config = env.log_dir.join(format!("{}-{name}.toml", env.kind));
    if let Some(text) = toml {
        std::fs::write(&config, text)?;
        args = vec!["--config".to_string(), config.display().to_string()];
    }
    args.extend(["serve", "--addr", &addr, "--admin-addr", &admin].map(String::from));
    env.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>(), name)?;
    let url = format!("http://{addr}");
    let start = Instant::now();
    while env.http.get(format!("{url}/api/search?size=1")).send().await.map(|r| r.status().is_success()).ok() != Some(true) {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("tidemark serve did not answer within 60 s; see {}", env.log_dir.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((url, format!("http://{admin}")))
}

/// Writes at `rate` per second until `stop`: one-row `UPDATE`s of a random student's age
/// and year (facet fields: every refresh changes the counts). Returns the writes done.
async fn writer(pool: sqlx::PgPool, n: u64, rate: u32, stop: Arc<std::sync::atomic::AtomicBool>) -> Result<u64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(ZIPF_SEED);
    let start = Instant::now();
    let mut k = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep_until((start + Duration::from_secs_f64(k as f64 / rate as f64)).into()).await;
        let id = rng.gen_range(1..=n as i64);
        let age = rng.gen_range(17..28);
        let year = ["FR", "SO", "JR", "SR"][rng.gen_range(0..4)];
        sqlx::query("UPDATE students SET age = $1, year_in_school = $2 WHERE id = $3").bind(age).bind(year).bind(id).execute(&pool).await?;
        k += 1;
    }
    Ok(k)
}

async fn refresh_total(env: &BenchEnv) -> u64 {
    let path = format!("/{}/_stats/refresh", env.alias);
    match env.es(reqwest::Method::GET, &path, None).await {
        Ok(v) => v["_all"]["primaries"]["refresh"]["total"].as_u64().unwrap_or(0),
        Err(_) => 0,
    }
}

/// One engine-work comparison: what, and the median time per request (seconds) of the
/// old and the new way, over the requests it applies to.
#[derive(serde::Serialize)]
struct Work {
    what: String,
    old_label: &'static str,
    new_label: &'static str,
    /// (request, old median, new median)
    per_request: Vec<(String, f64, f64)>,
}

/// Replaces every `precision_threshold` in a body.
fn with_precision(v: &mut Value, p: u32) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "precision_threshold" {
                    *x = json!(p);
                } else {
                    with_precision(x, p);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| with_precision(x, p)),
        _ => {}
    }
}

/// Median seconds of `runs` sends of `bodies` at once (each to `path` on the engine).
async fn time_engine(http: &reqwest::Client, es: &str, bodies: &[(String, Value)], runs: usize) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..runs + 1 {
        let t = Instant::now();
        let sends = bodies.iter().map(|(path, b)| async move {
            let resp = http.post(format!("{es}{path}")).json(b).send().await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            if !status.is_success() {
                bail!("{path} answered {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
            }
            Ok::<_, anyhow::Error>(())
        });
        futures::future::try_join_all(sends).await?;
        times.push(t.elapsed().as_secs_f64());
    }
    // The first run warms up, unless it is the only one (a cold measure: runs = 0).
    if runs > 0 {
        times.remove(0);
    }
    Ok(stats::median(&times))
}

/// The engine's work per request, each change measured on its own (one client, engine
/// direct, with the writes running): one request vs counts + hits; the shard request
/// cache; top-level vs `filter`-wrapped aggregations; hits that count vs hits that do not;
/// distinct precision; eager global ordinals (the first search after a refresh).
async fn engine_work(env: &BenchEnv, http: &reqwest::Client, runs: usize) -> Result<Vec<Work>> {
    let es = env.services.es_url.clone();
    let search = format!("/{}/_search", env.alias);
    let nocache = format!("/{}/_search?request_cache=false", env.alias);
    let reqs: Vec<(String, Request)> = SEARCHES.iter().map(|q| Ok((q.to_string(), parse(q)?))).collect::<Result<_>>()?;
    let label = |q: &str| if q.is_empty() { "(no filter)".to_string() } else { q.to_string() };
    let mut out = Vec::new();
    let mut compare = |what: &str, old_label: &'static str, new_label: &'static str, rows: Vec<(String, f64, f64)>| {
        progress!(
            "serve: engine work, {what}: {old_label} {:.1} ms, {new_label} {:.1} ms (medians)",
            stats::median(&rows.iter().map(|r| r.1).collect::<Vec<_>>()) * 1e3,
            stats::median(&rows.iter().map(|r| r.2).collect::<Vec<_>>()) * 1e3
        );
        out.push(Work { what: what.to_string(), old_label, new_label, per_request: rows });
    };

    // 1. One request vs counts (engine cache off) and hits at once.
    let mut rows = Vec::new();
    for (q, r) in &reqs {
        let one = time_engine(http, &es, &[(search.clone(), one_request(r))], runs).await?;
        let hits = query::hits_body(r);
        let split = time_engine(http, &es, &[(nocache.clone(), query::counts_body(r)), (search.clone(), hits)], runs).await?;
        rows.push((label(q), one, split));
    }
    compare("one request vs counts + hits at once (shard request cache off)", "one request", "counts + hits", rows);

    // 2. The counts request with the shard request cache off and on.
    let mut rows = Vec::new();
    for (q, r) in &reqs {
        let off = time_engine(http, &es, &[(nocache.clone(), query::counts_body(r))], runs).await?;
        let on = time_engine(http, &es, &[(search.clone(), query::counts_body(r))], runs).await?;
        rows.push((label(q), off, on));
    }
    compare("counts request: shard request cache off vs on (refreshed every second by the writes)", "cache off", "cache on", rows);

    // 3. No selection: each facet inside a match-all `filter` aggregation vs top level.
    let mut rows = Vec::new();
    for (q, r) in reqs.iter().filter(|(_, r)| !r.has_filters()) {
        let new = query::counts_body(r);
        let mut old = new.clone();
        if let Some(aggs) = old["aggs"].as_object_mut() {
            for (_, a) in aggs.iter_mut() {
                *a = json!({"filter": {"match_all": {}}, "aggs": {"top": a.clone()}});
            }
        }
        let o = time_engine(http, &es, &[(nocache.clone(), old)], runs).await?;
        let n = time_engine(http, &es, &[(nocache.clone(), new)], runs).await?;
        rows.push((label(q), o, n));
    }
    compare("no selection: facets in `filter` aggregations vs top level (cache off)", "filter-wrapped", "top level", rows);

    // 4. Hits that count to 10,000 (selections in post_filter) vs hits that count nothing.
    let mut rows = Vec::new();
    for (q, r) in &reqs {
        let mut old = one_request(r);
        if let Some(o) = old.as_object_mut() {
            o.remove("aggs");
        }
        let o = time_engine(http, &es, &[(search.clone(), old)], runs).await?;
        let n = time_engine(http, &es, &[(search.clone(), query::hits_body(r))], runs).await?;
        rows.push((label(q), o, n));
    }
    compare("hits: counting to 10,000 with post_filter vs counting nothing, filters in the query", "counting", "not counting", rows);

    // 5. Distinct counts: precision threshold 100 (the students' pages before the model
    // served them) vs tidemark's 3,000.
    let mut rows = Vec::new();
    for q in ["distinct=university", "year=SR&course=CHEM102&distinct=university", "distinct=course", "university=MIT&distinct=year"] {
        let r = parse(q)?;
        let new = query::counts_body(&r);
        let mut old = new.clone();
        with_precision(&mut old, 100);
        let o = time_engine(http, &es, &[(nocache.clone(), old)], runs).await?;
        let n = time_engine(http, &es, &[(nocache.clone(), new)], runs).await?;
        rows.push((q.to_string(), o, n));
    }
    compare("distinct counts: precision_threshold 100 vs 3,000 (cache off)", "100", "3,000", rows);

    // 6. Eager global ordinals: the first counts request after a refresh, and the refresh.
    let landing = query::counts_body(&parse("")?);
    let mut rows = Vec::new();
    // On first, then off: the index is left as tidemark maps it (off).
    for eager in [true, false] {
        let kw = json!({"type": "keyword", "eager_global_ordinals": eager});
        env.es(
            reqwest::Method::PUT,
            &format!("/{}/_mapping", env.alias),
            Some(&json!({"properties": {"year_in_school": kw, "course_names": kw, "university": {"properties": {"name": kw}}}})),
        )
        .await?;
        let (mut refresh, mut first) = (Vec::new(), Vec::new());
        for _ in 0..runs.max(5) {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let t = Instant::now();
            env.es(reqwest::Method::POST, &format!("/{}/_refresh", env.alias), None).await?;
            refresh.push(t.elapsed().as_secs_f64());
            first.push(time_engine(http, &es, &[(nocache.clone(), landing.clone())], 0).await?);
        }
        rows.push((format!("eager {eager}: refresh"), stats::median(&refresh), f64::NAN));
        rows.push((format!("eager {eager}: first landing-page counts after it"), stats::median(&first), f64::NAN));
    }
    // (old = eager off, new = on) per measure.
    let rows = vec![
        ("refresh".to_string(), rows[2].1, rows[0].1),
        ("first landing-page counts after the refresh".to_string(), rows[3].1, rows[1].1),
    ];
    compare("eager global ordinals on the facet fields: off vs on", "off", "on", rows);
    Ok(out)
}

/// The query mixes under load, with writes running: every mix at every connection count,
/// then suggestions at the most connections.
/// `off`: a second serve with reuse off (its URL and admin URL), sent the same requests at
/// one and the most connections: before (no answer reused) and after, side by side.
async fn under_load(
    plan: &Plan,
    env: &mut BenchEnv,
    http: &reqwest::Client,
    (app, admin): (&str, &str),
    (app_off, admin_off): (&str, &str),
) -> Result<LoadResult> {
    let max_c = plan.serve_load_connections.iter().copied().max().unwrap_or(1);
    // A worker syncs the writes (it polls the change log by itself; no scheduler needed).
    env.spawn(&["worker"], "serve-worker")?;
    let t = Instant::now();
    while !std::fs::read_dir(&env.log_dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("serve-worker"))
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|l| l.contains("worker started")))
    {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the worker did not start within 60 s; see {}", env.log_dir.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = tokio::spawn(writer(env.pool.clone(), env.students, plan.serve_write_rate, stop.clone()));
    let refreshes0 = refresh_total(env).await;
    let started = Instant::now();
    let r = async {
        let work = engine_work(env, http, if env.students > 100_000 { 5 } else { 10 }).await.context("engine work")?;
        let zipf = zipf_shapes();
        let uniform: Vec<&str> = SEARCHES.to_vec();
        let mut cells = Vec::new();
        for (mix, pick, queries) in [
            ("Zipf", Pick::Zipf { seed: ZIPF_SEED, exponent: ZIPF_EXPONENT }, zipf.iter().map(|(q, _)| q.as_str()).collect::<Vec<_>>()),
            ("uniform", Pick::RoundRobin, uniform),
        ] {
            for &c in &plan.serve_load_connections {
                let (via, direct) = searches(app, &env.services.es_url, &env.alias, queries.iter().copied())?;
                let mut sides = vec![direct, via];
                let off = c == 1 || c == max_c;
                if off {
                    sides.push(searches(app_off, &env.services.es_url, &env.alias, queries.iter().copied())?.0);
                }
                let (counters, counters_off) = (serve_counters(http, admin).await, serve_counters(http, admin_off).await);
                let mut got = side_by_side(http, sides, pick, c, plan.serve_load_secs, 2)
                    .await
                    .with_context(|| format!("{mix} mix, {c} connections"))?
                    .into_iter();
                let (d, v, n) = (got.next().context("direct")?, got.next().context("via")?, got.next());
                progress!(
                    "serve: {} students, {mix} mix, {c} connections: via p50 {:.1} ms p99 {:.1} ms {:.0}/s; engine p50 {:.1} ms p99 {:.1} ms {:.0}/s{}",
                    stats::int(env.students),
                    v.dist.p50 * 1e3,
                    v.dist.p99 * 1e3,
                    v.per_sec,
                    d.dist.p50 * 1e3,
                    d.dist.p99 * 1e3,
                    d.per_sec,
                    n.as_ref().map_or(String::new(), |n| format!(
                        "; reuse off p50 {:.1} ms p99 {:.1} ms {:.0}/s",
                        n.dist.p50 * 1e3,
                        n.dist.p99 * 1e3,
                        n.per_sec
                    ))
                );
                let serve = increase(&counters, &serve_counters(http, admin).await);
                let serve_no_reuse = if off { increase(&counters_off, &serve_counters(http, admin_off).await) } else { Vec::new() };
                cells.push(Cell { mix, connections: c, direct: d, via: v, serve, via_no_reuse: n, serve_no_reuse });
            }
        }
        let c = plan.serve_load_connections.iter().copied().max().unwrap_or(plan.serve_connections);
        let (via, direct) = suggests(app, &env.services.es_url, &env.alias);
        let mut got = side_by_side(http, vec![direct, via], Pick::RoundRobin, c, plan.serve_load_secs, 2).await.context("suggest load")?.into_iter();
        let (suggest_direct, suggest_via) = (got.next().context("direct")?, got.next().context("via")?);
        progress!("serve: suggest at {c} connections: p99 {:.1} ms (engine {:.1} ms)", suggest_via.dist.p99 * 1e3, suggest_direct.dist.p99 * 1e3);
        Ok::<_, anyhow::Error>((cells, c, suggest_direct, suggest_via, work))
    }
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let wrote = writes.await??;
    let secs = started.elapsed().as_secs_f64();
    let refreshes = refresh_total(env).await.saturating_sub(refreshes0);
    let (cells, suggest_connections, suggest_direct, suggest_via, work) = r?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let marks_left_after = env.marks_left().await?.0;
    Ok(LoadResult {
        work,
        cells,
        suggest_connections,
        suggest_direct,
        suggest_via,
        writes_per_sec: wrote as f64 / secs,
        marks_left_after,
        refreshes,
    })
}

async fn one_size(
    plan: &Plan,
    services: &Services,
    n: u64,
    with_sql: bool,
    with_load: bool,
    reuse: Option<BenchEnv>,
) -> Result<SizeResult> {
    let reused = reuse.is_some();
    let mut env = match reuse {
        Some(e) => e,
        None => BenchEnv::new(services, "serve", plan.out_dir.join("logs")).await?,
    };
    let r = async {
        if !reused {
            env.seed(n).await?;
            env.first_index(2).await?;
        }
        let (app, admin) = start_serve(&mut env, None, "serve").await?;
        // Reuse off: the load's "before" side, and the index side of index vs SQL (a request
        // repeated within `cache_max_age` would otherwise be answered from serve's cache).
        let (app_off, admin_off) = start_serve(&mut env, Some(NO_REUSE), "serve-no-reuse").await?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).timeout(Duration::from_secs(300)).build()?;
        let runs = if n > 100_000 { plan.serve_sql_runs.min(5) } else { plan.serve_sql_runs };
        let (mut unavailable, mut capped) = (Vec::new(), Vec::new());
        let facets = if with_sql {
            let f = index_vs_sql(&http, &app_off, runs, &mut unavailable, &mut capped).await.context("index vs SQL")?;
            let (i, s): (Vec<f64>, Vec<f64>) = f.iter().map(|(_, i, s)| (*i, *s)).unzip();
            progress!(
                "serve: {} students: facets index median {:.1} ms, SQL {:.1} ms",
                stats::int(n),
                stats::median(&i) * 1e3,
                stats::median(&s) * 1e3
            );
            f
        } else {
            Vec::new()
        };
        let load = if with_load { Some(under_load(plan, &mut env, &http, (&app, &admin), (&app_off, &admin_off)).await?) } else { None };
        Ok::<_, anyhow::Error>(SizeResult { students: n, facets, unavailable, capped, load })
    }
    .await;
    env.cleanup().await;
    r
}

/// `reuse`: a database and index of one of the sizes, left by the facets benchmark.
pub async fn run(plan: &Plan, services: &Services, mut reuse: Option<BenchEnv>) -> Result<Outcome> {
    let mut sizes = Vec::new();
    let skip_sql = std::env::var("BENCH_SERVE_SKIP_SQL").is_ok_and(|v| v == "1");
    let mut all: Vec<u64> =
        plan.serve_sizes.iter().chain(&plan.serve_load_sizes).copied().filter(|n| !skip_sql || plan.serve_load_sizes.contains(n)).collect();
    all.sort_unstable();
    all.dedup();
    for &n in &all {
        let env = match reuse.take() {
            Some(e) if e.students == n => Some(e),
            other => {
                reuse = other;
                None
            }
        };
        let r = one_size(plan, services, n, !skip_sql && plan.serve_sizes.contains(&n), plan.serve_load_sizes.contains(&n), env).await;
        if r.is_err() {
            if let Some(e) = reuse.take() {
                e.cleanup().await;
            }
        }
        sizes.push(r?);
    }
    if let Some(e) = reuse.take() {
        e.cleanup().await;
    }
    let mut out = Outcome::default();
    for s in sizes.iter().filter(|s| !s.facets.is_empty()) {
        let label = stats::int(s.students);
        let (i, q): (Vec<f64>, Vec<f64>) = s.facets.iter().map(|(_, i, q)| (*i, *q)).unzip();
        let ratios: Vec<f64> = s.facets.iter().map(|(_, i, q)| q / i).collect();
        let r = stats::median(&ratios);
        out.rows.push(
            Row::new(
                BENCH,
                format!("facets through `/api/search` (reuse off), {label} students: index vs `engine=sql` (median of medians)"),
            )
            .figure(stats::ms(stats::median(&i)))
            .baseline(format!(
                "{} SQL{}",
                stats::ms(stats::median(&q)),
                if s.capped.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({} of {} requests answered 503 at tidemark's time bound every time: their times are lower bounds)",
                        s.capped.len(),
                        s.facets.len()
                    )
                }
            ))
            .ratio(stats::ratio(r))
            .target(
                "— (a yardstick: `engine=sql` builds every document per request; the tutorial's claim against `GROUP BY` is section 5)",
                None,
            ),
        );
    }
    let largest = plan.serve_load_sizes.iter().copied().max().unwrap_or(0);
    for s in &sizes {
        let Some(l) = &s.load else { continue };
        let label = stats::int(s.students);
        let max_c = plan.serve_load_connections.iter().copied().max().unwrap_or(1);
        for cell in l.cells.iter().filter(|c| c.connections == max_c) {
            let x = cell.via.per_sec / cell.direct.per_sec.max(1e-9);
            let judged = s.students == largest && cell.mix == "Zipf";
            out.rows.push(
                Row::new(
                    BENCH,
                    format!(
                        "`/api/search`, {} mix, {label} students, {} connections, {} writes/s: p50 / p99, throughput",
                        cell.mix, cell.connections, plan.serve_write_rate
                    ),
                )
                .figure(format!(
                    "{} / {}, {}/s",
                    stats::ms(cell.via.dist.p50),
                    stats::ms(cell.via.dist.p99),
                    stats::int(cell.via.per_sec.round() as u64)
                ))
                .baseline(format!(
                    "engine direct {} / {}, {}/s",
                    stats::ms(cell.direct.dist.p50),
                    stats::ms(cell.direct.dist.p99),
                    stats::int(cell.direct.per_sec.round() as u64)
                ))
                .ratio(format!("{} throughput", stats::ratio(x)))
                .target(
                    if judged { "p99 ≤ 100 ms and ≥ 10× the engine-direct throughput" } else { "— (reported: where the time goes)" },
                    judged.then_some(cell.via.dist.p99 <= 0.100 && x >= 10.0),
                ),
            );
            if let Some(off) = &cell.via_no_reuse {
                out.rows.push(
                    Row::new(
                        BENCH,
                        format!(
                            "`/api/search`, {} mix, {label} students, {} connections: reuse on (after) vs off (`cache_max_age = \"0s\"`, before)",
                            cell.mix, cell.connections
                        ),
                    )
                    .figure(format!(
                        "{} / {}, {}/s",
                        stats::ms(cell.via.dist.p50),
                        stats::ms(cell.via.dist.p99),
                        stats::int(cell.via.per_sec.round() as u64)
                    ))
                    .baseline(format!(
                        "reuse off {} / {}, {}/s",
                        stats::ms(off.dist.p50),
                        stats::ms(off.dist.p99),
                        stats::int(off.per_sec.round() as u64)
                    ))
                    .ratio(format!(
                        "{} throughput, p99 {}",
                        stats::ratio(cell.via.per_sec / off.per_sec.max(1e-9)),
                        stats::ratio(cell.via.dist.p99 / off.dist.p99.max(1e-9))
                    ))
                    .target("— (before and after in one run)", None),
                );
            }
        }
        for cell in l.cells.iter().filter(|c| c.connections == 1) {
            out.rows.push(
                Row::new(
                    BENCH,
                    format!("`/api/search`, {} mix, {label} students, one connection (no load but the writes): median", cell.mix),
                )
                .figure(stats::ms(cell.via.dist.p50))
                .baseline(format!(
                    "engine direct {}{}",
                    stats::ms(cell.direct.dist.p50),
                    cell.via_no_reuse.as_ref().map_or(String::new(), |n| format!(" (serve with reuse off {})", stats::ms(n.dist.p50)))
                ))
                .ratio(stats::ratio(cell.via.dist.p50 / cell.direct.dist.p50.max(1e-9)))
                .target("at most the engine's own", Some(cell.via.dist.p50 <= cell.direct.dist.p50)),
            );
        }
        out.rows.push(
            Row::new(BENCH, format!("`/api/suggest` per keystroke, {label} students, {} connections: p50 / p99", l.suggest_connections))
                .figure(format!("{} / {}", stats::ms(l.suggest_via.dist.p50), stats::ms(l.suggest_via.dist.p99)))
                .baseline(format!("engine direct {} / {}", stats::ms(l.suggest_direct.dist.p50), stats::ms(l.suggest_direct.dist.p99)))
                .ratio(format!("{} (p99)", stats::pct(l.suggest_via.dist.p99 / l.suggest_direct.dist.p99)))
                .target("p99 ≤ 20 ms", Some(l.suggest_via.dist.p99 <= 0.020)),
        );
    }
    let zipf = zipf_shapes();
    let cdf = zipf_cdf(zipf.len(), ZIPF_EXPONENT);
    let share = |k: usize| cdf[k] - if k == 0 { 0.0 } else { cdf[k - 1] };
    let mut by_kind: Vec<(&str, f64, usize)> = Vec::new();
    for (k, (_, kind)) in zipf.iter().enumerate() {
        match by_kind.iter_mut().find(|(n, _, _)| n == kind) {
            Some(e) => {
                e.1 += share(k);
                e.2 += 1;
            }
            None => by_kind.push((kind, share(k), 1)),
        }
    }
    let mut sec = format!(
        "`tidemark serve` runs as a release process on its own port, on the index `tidemark` built (seeded students, first \
         full index). Everything shares the machine's cores: the engine, PostgreSQL, tidemark, a worker and the load \
         generator.\n\n\
         **Latency under load.** Clients each send their next request as soon as the last is answered, for {:.0} s per side \
         in two alternating rounds (engine direct, then through tidemark, then, at 1 and the most connections, through a \
         second tidemark with reuse off), after a 2 s warm-up of each, while {} one-row \
         `UPDATE`s per second change a random student's age and year (a `tidemark worker` syncs them: the index refreshes \
         and its counts change every second). *Engine direct* sends, for the same request, the one `_search` body an \
         application without tidemark's work would send (hits, the three disjunctive terms facets, the age histogram and any \
         distinct counts together: `one_request`) to `POST /<alias>/_search`.\n\n\
         - **Zipf mix**: {} request shapes ranked by popularity, each client drawing ranks with probability ∝ 1/rank^{} \
         from a generator seeded with {} (and its client number and round: the engine and tidemark get the same \
         sequences). Shares: {}. The most frequent: {}.\n\
         - **Uniform mix**: round robin over {} facet searches (one to three facets selected, text queries, a histogram \
         range, distinct counts): {}.\n\
         - Suggestions rotate over {} two- and three-letter prefixes, the completion suggester inside `_search` likewise.\n\n",
        plan.serve_load_secs,
        plan.serve_write_rate,
        zipf.len(),
        ZIPF_EXPONENT,
        ZIPF_SEED,
        by_kind.iter().map(|(k, p, n)| format!("{k} {:.0} % ({n} shapes)", p * 100.0)).collect::<Vec<_>>().join(", "),
        zipf.iter()
            .take(8)
            .enumerate()
            .map(|(k, (q, _))| format!("`{}` {:.1} %", if q.is_empty() { "(no filter)" } else { q }, share(k) * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        SEARCHES.len(),
        SEARCHES.iter().map(|q| format!("`{}`", if q.is_empty() { "(no filter)" } else { q })).collect::<Vec<_>>().join(", "),
        PREFIXES.len()
    );
    sec.push_str(
        "| students | mix | connections | via tidemark p50 | p95 | p99 | requests/s | engine direct p50 | p95 | p99 | requests/s | throughput via ÷ direct |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in &sizes {
        let Some(l) = &s.load else { continue };
        for c in &l.cells {
            sec.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {} |\n",
                stats::int(s.students),
                c.mix,
                c.connections,
                stats::ms(c.via.dist.p50),
                stats::ms(c.via.dist.p95),
                stats::ms(c.via.dist.p99),
                c.via.per_sec,
                stats::ms(c.direct.dist.p50),
                stats::ms(c.direct.dist.p95),
                stats::ms(c.direct.dist.p99),
                c.direct.per_sec,
                stats::ratio(c.via.per_sec / c.direct.per_sec.max(1e-9))
            ));
        }
        sec.push_str(&format!(
            "| {} | `/api/suggest` | {} | {} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {} |\n",
            stats::int(s.students),
            l.suggest_connections,
            stats::ms(l.suggest_via.dist.p50),
            stats::ms(l.suggest_via.dist.p95),
            stats::ms(l.suggest_via.dist.p99),
            l.suggest_via.per_sec,
            stats::ms(l.suggest_direct.dist.p50),
            stats::ms(l.suggest_direct.dist.p95),
            stats::ms(l.suggest_direct.dist.p99),
            l.suggest_direct.per_sec,
            stats::ratio(l.suggest_via.per_sec / l.suggest_direct.per_sec.max(1e-9))
        ));
    }
    sec.push_str(
        "\n**Reuse on vs off, side by side** (the same requests, clients and rounds, alternating with the two sides \
         above): a second `tidemark serve` with `[serve] cache_max_age = \"0s\"`, which turns reuse (and renewal) \
         off but keeps the split counts/hits requests, top-level aggregations, single flight and the engine bound: \
         the closest to the pre-issue-19 serve that configuration allows.\n\n\
         | students | mix | connections | reuse on p50 | p95 | p99 | requests/s | reuse off p50 | p95 | p99 | requests/s | on ÷ off throughput | off ÷ engine direct throughput |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in &sizes {
        let Some(l) = &s.load else { continue };
        for c in &l.cells {
            let Some(n) = &c.via_no_reuse else { continue };
            sec.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {} | {} |\n",
                stats::int(s.students),
                c.mix,
                c.connections,
                stats::ms(c.via.dist.p50),
                stats::ms(c.via.dist.p95),
                stats::ms(c.via.dist.p99),
                c.via.per_sec,
                stats::ms(n.dist.p50),
                stats::ms(n.dist.p95),
                stats::ms(n.dist.p99),
                n.per_sec,
                stats::ratio(c.via.per_sec / n.per_sec.max(1e-9)),
                stats::ratio(n.per_sec / c.direct.per_sec.max(1e-9))
            ));
        }
    }
    sec.push_str(
        "\nWhat tidemark did meanwhile (its own metrics over each row, warm-up included): the share of counts and of \
         hits reused from its cache, and what reached the engine per request answered (counts, hits and alias \
         look-ups sent; single-flight joins are not sent).\n\n\
         | students | mix | connections | counts reused | hits reused | engine requests per request: counts / hits / alias |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in &sizes {
        let Some(l) = &s.load else { continue };
        for c in &l.cells {
            let off = [(c.mix.to_string(), &c.serve)].into_iter();
            let off = off.chain((c.via_no_reuse.is_some()).then(|| (format!("{}, reuse off", c.mix), &c.serve_no_reuse)));
            for (mix, counters) in off {
                let share = |kind: &str| {
                    let hit = sum_of(counters, &["lookups", &format!("kind=\"{kind}\""), "result=\"hit\""]);
                    let all = sum_of(counters, &["lookups", &format!("kind=\"{kind}\"")]);
                    if all > 0.0 {
                        format!("{:.0} %", hit / all * 100.0)
                    } else {
                        "—".into()
                    }
                };
                // Requests answered: one hits look-up each; with reuse off (no look-ups), one
                // hits fetch each, sent or joined.
                let lookups = sum_of(counters, &["lookups", "kind=\"hits\""]);
                let answered = if lookups > 0.0 { lookups } else { sum_of(counters, &["engine_requests", "kind=\"hits\""]) }.max(1.0);
                let sent = |kind: &str| sum_of(counters, &["engine_requests", &format!("kind=\"{kind}\""), "outcome=\"sent\""]) / answered;
                sec.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:.2} / {:.2} / {:.2} |\n",
                    stats::int(s.students),
                    mix,
                    c.connections,
                    share("counts"),
                    share("hits"),
                    sent("counts"),
                    sent("hits"),
                    sent("alias")
                ));
            }
        }
    }
    for s in &sizes {
        if let Some(l) = &s.load {
            sec.push_str(&format!(
                "\n{} students: writes ran at {:.1}/s during the load; the engine refreshed the index {} times; {} student \
                 mark(s) were left 2 s after the load.",
                stats::int(s.students),
                l.writes_per_sec,
                l.refreshes,
                l.marks_left_after
            ));
        }
    }
    sec.push_str(
        "\n\n**Engine work per request, each change on its own** (engine direct, one client, the same writes running; \
         per request the median of its runs, then the median over the requests; the JSON has every request):\n\n\
         | students | change | old | new | new ÷ old |\n| --- | --- | --- | --- | --- |\n",
    );
    for s in &sizes {
        let Some(l) = &s.load else { continue };
        for w in &l.work {
            let eager = w.per_request.len() == 2 && w.what.starts_with("eager");
            // Eager ordinals: the figure is the first search after a refresh (the detail has the refresh).
            let (o, n) = if eager {
                (w.per_request[1].1, w.per_request[1].2)
            } else {
                (
                    stats::median(&w.per_request.iter().map(|r| r.1).collect::<Vec<_>>()),
                    stats::median(&w.per_request.iter().map(|r| r.2).collect::<Vec<_>>()),
                )
            };
            let detail = if eager {
                w.per_request.iter().map(|(k, o, n)| format!("{k}: {} → {}", stats::ms(*o), stats::ms(*n))).collect::<Vec<_>>().join("; ")
            } else {
                format!("{} {} → {} {}", w.old_label, stats::ms(o), w.new_label, stats::ms(n))
            };
            sec.push_str(&format!(
                "| {} | {} | {} | {} | {} ({detail}) |\n",
                stats::int(s.students),
                w.what,
                stats::ms(o),
                stats::ms(n),
                stats::ratio(n / o)
            ));
        }
    }
    sec.push('\n');
    if sizes.iter().any(|s| !s.facets.is_empty()) {
        sec.push_str(
            "\n**Index vs SQL facets**: one client, each request through `/api/search` with `engine=index` and with \
             `engine=sql` (the same hits, facets, histogram and distinct counts by SQL over every document the model's \
             document query builds, exact; section 5 compares the index with a tuned `GROUP BY`), one warm-up then the runs counted; medians per request. Sent to the serve with \
             reuse off: a request repeated within `cache_max_age` would otherwise be answered from serve's cache. No \
             writes run meanwhile, so the engine's own shard request cache may answer the index side's counts request \
             (section 5 measures the aggregations with it off).\n\n\
             | students | request | index | SQL | SQL ÷ index |\n| --- | --- | --- | --- | --- |\n",
        );
    }
    for s in &sizes {
        for (q, i, sq) in &s.facets {
            let bound = |engine: &str| if s.capped.iter().any(|(cq, ce)| cq == q && ce == engine) { "≥ " } else { "" };
            sec.push_str(&format!(
                "| {} | `{}` | {}{} | {}{} | {}{} |\n",
                stats::int(s.students),
                if q.is_empty() { "(no filter)" } else { q },
                bound("index"),
                stats::ms(*i),
                bound("sql"),
                stats::ms(*sq),
                bound("sql"),
                stats::ratio(sq / i)
            ));
        }
    }
    let under_load = LOAD_UNAVAILABLE.load(std::sync::atomic::Ordering::Relaxed);
    if under_load > 0 {
        sec.push_str(&format!(
            "\nUnder load, {under_load} request(s) answered 503 (tidemark's bound on the engine ran out); they are counted in \
             the latencies above with the time they took.\n"
        ));
    }
    for s in &sizes {
        if !s.unavailable.is_empty() {
            sec.push_str(&format!(
                "\n{} students: {} request(s) answered 503 (a bound of tidemark's ran out: 30 s for `engine=sql`, 10 s for \
                 the engine) and were sent once more: {}. Where the resent request answered 503 again, that one time is \
                 counted and no more runs are sent (marked ≥: the request takes longer than tidemark allows it).\n",
                stats::int(s.students),
                s.unavailable.len(),
                s.unavailable.join("; ")
            ));
        }
    }
    out.section = sec;
    out.raw = json!(sizes);
    Ok(out)
}

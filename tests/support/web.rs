//! The search application (`tidemark serve`) as the tests call it: its router driven in
//! process, as the server drives it (`tower::ServiceExt::oneshot`), with no socket; the
//! answers read back as text or JSON; the services it is built from, some of them pointed
//! at addresses where nothing listens or at a fault proxy.

use std::{sync::Arc, time::Duration};

use axum::{body::Body, http::Request, Router};
use http_body_util::BodyExt;
use serde_json::Value;
use tidemark::{
    config::{Config, Secret},
    search::Search,
    services::Services,
    web,
};
use tower::ServiceExt;

use super::{
    fault_proxy::{FaultProxy, Faults},
    Env,
};

/// An answer of the application: its status, headers and body as text.
pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body as JSON (panics, showing it, when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET uri`, whatever its status.
pub async fn get(app: &Router, uri: &str) -> Answer {
    let resp = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

/// `GET` expecting 200 JSON.
pub async fn api(app: &Router, uri: &str) -> Value {
    let a = get(app, uri).await;
    assert_eq!(a.status, 200, "{uri}: {}", a.body);
    a.json()
}

/// `GET` expecting a 200 HTML page; its text.
pub async fn page(app: &Router, uri: &str) -> String {
    page_with(app, uri, 200).await
}

/// `GET` expecting this status and an HTML page (an error page, say); its text.
pub async fn page_with(app: &Router, uri: &str, status: u16) -> String {
    let a = get(app, uri).await;
    assert_eq!(a.status, status, "{uri}: {}", a.body);
    assert!(a.headers["content-type"].to_str().unwrap().starts_with("text/html"), "{uri}");
    a.body
}

/// `GET` expecting this status and a JSON error; the error's message.
pub async fn error_message(app: &Router, uri: &str, status: u16) -> String {
    let a = get(app, uri).await;
    assert_eq!(a.status, status, "{uri}: {}", a.body);
    assert!(a.headers["content-type"].to_str().unwrap().starts_with("application/json"), "{uri}");
    a.json()["error"]["message"].as_str().unwrap_or_else(|| panic!("{uri}: no error message: {}", a.body)).to_string()
}

/// Every hit of a search, page after page: `next` followed from the first to the last.
pub async fn every_hit(app: &Router, base: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut uri = base.to_string();
    for _ in 0..1000 {
        let v = api(app, &uri).await;
        out.extend(v["hits"].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(next) => uri = format!("{base}&after={}", encode(next)),
            None => return out,
        }
    }
    panic!("{base}: more than 1000 pages");
}

/// The buckets of an answer's facet `facet`.
pub fn buckets<'a>(v: &'a Value, facet: &str) -> &'a [Value] {
    v["facets"][facet]["buckets"].as_array().unwrap_or_else(|| panic!("no facet {facet}: {v}"))
}

/// The bars (buckets) of an answer's histogram `name`.
pub fn bars<'a>(v: &'a Value, name: &str) -> &'a [Value] {
    v["histograms"][name]["buckets"].as_array().unwrap_or_else(|| panic!("no histogram {name}: {v}"))
}

/// The ids of an `/api/search` answer's hits, in their order.
pub fn ids(v: &Value) -> Vec<i64> {
    v["hits"].as_array().unwrap().iter().map(|h| h["id"].as_i64().unwrap()).collect()
}

/// The ids of an `/api/search` answer's hits, sorted (where their order is not the point).
pub fn sorted_ids(v: &Value) -> Vec<i64> {
    let mut ids = ids(v);
    ids.sort();
    ids
}

/// `/api/search?<q>` answered by the index and by `engine=sql`.
pub async fn both_engines(app: &Router, q: &str) -> (Value, Value) {
    let index = api(app, &format!("/api/search?{q}")).await;
    let sql = api(app, &format!("/api/search?{q}&engine=sql")).await;
    assert_eq!(sql["engine"], "sql", "{q}");
    (index, sql)
}

/// Text as a query-string value (`url::form_urlencoded`), e.g. a `next` cursor.
pub fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Syncs everything outstanding, refreshes the index, and returns the application over
/// this test's services: what was written is searchable.
pub async fn searchable(env: &Env) -> Router {
    env.drain_and_refresh().await;
    web::router(env.services())
}

/// Services whose search server and/or database are addresses where nothing listens, with
/// credentials in the URLs that must never be shown.
pub fn services_with(env: &Env, es: Option<String>, db: Option<String>) -> Services {
    let mut config = (*env.config).clone();
    if let Some(es) = es {
        config.elasticsearch_url = Some(Secret::new(es));
    }
    let pool = match db {
        Some(url) => sqlx::postgres::PgPoolOptions::new().acquire_timeout(Duration::from_secs(1)).connect_lazy(&url).unwrap(),
        None => env.pool.clone(),
    };
    Services::new(pool, Search::new(&config).unwrap(), Arc::new(config))
}

/// The application with its search server at a port where nothing listens, given with the
/// credentials `elastic:hunter2`; the port.
pub fn without_search_server(env: &Env) -> (Router, u16) {
    let port = super::free_port();
    (web::router(services_with(env, Some(format!("http://elastic:hunter2@127.0.0.1:{port}")), None)), port)
}

/// The application with its database at a port where nothing listens, given with the
/// credentials `tidemark:s3cret`; the port.
pub fn without_database(env: &Env) -> (Router, u16) {
    let port = super::free_port();
    (web::router(services_with(env, None, Some(format!("postgres://tidemark:s3cret@127.0.0.1:{port}/tidemark")))), port)
}

/// Asserts that no answer shows any of `secrets`.
pub fn assert_not_shown(answers: &[&Answer], secrets: &[&str]) {
    for a in answers {
        for secret in secrets {
            assert!(!a.body.contains(secret), "{secret} shown: {}", a.body);
        }
    }
}

/// Config where the application may keep its answers up to `bound` (`60s`), the index
/// refreshing as often.
pub fn answers_kept_for(c: &mut Config, bound: &str) {
    c.index.refresh_interval = bound.parse().unwrap();
    c.serve.cache_max_age = bound.parse().unwrap();
}

/// The application reaching the search server through a fault proxy that holds every
/// search 300 ms, so that requests sent at once overlap; the proxy's `stats().slowed`
/// counts the searches the engine received.
pub async fn with_slow_searches(env: &Env) -> (FaultProxy, Router) {
    let proxy = FaultProxy::start(&env.es_url).await;
    let app = web::router(services_with(env, Some(proxy.url()), None));
    proxy.set(Faults { slow: 1.0, delay: Duration::from_millis(300), only_path: Some("_search".into()), ..Default::default() });
    (proxy, app)
}

/// refine.bio's tables (an environment of [`Env::with_model`]): four experiments over eight
/// samples of three organisms on two platforms. Samples 1 and 3 are each in two
/// experiments, so a facet value's unique samples are not the sum of its experiments'
/// samples. Experiment 4's title is an attack.
pub async fn four_experiments(env: &Env) {
    env.sql(
        "INSERT INTO organisms (id, name) VALUES (1, 'Homo sapiens'), (2, 'Mus musculus'), (3, 'Danio rerio');
         INSERT INTO platforms (id, name) VALUES (1, 'Illumina HiSeq 2500'), (2, 'Affymetrix HG-U133');
         INSERT INTO samples (id, accession_code, organism_id, platform_id) VALUES
           (1, 'GSM1', 1, 1), (2, 'GSM2', 1, 1), (3, 'GSM3', 2, 1), (4, 'GSM4', 2, 2), (5, 'GSM5', 2, 2),
           (6, 'GSM6', 3, 1), (7, 'GSM7', 3, 1), (8, 'GSM8', 1, 2);
         INSERT INTO experiments (id, accession_code, title, description, technology) VALUES
           (1, 'GSE1', 'Human liver expression', 'RNA of human livers', 'RNA-SEQ'),
           (2, 'GSE2', 'Mouse brain arrays', 'Arrays of mouse brains', 'MICROARRAY'),
           (3, 'GSE3', 'Zebrafish development', 'Embryos over time', 'RNA-SEQ'),
           (4, 'GSE4', '<script>alert(1)</script> human', 'An attack in a title', 'MICROARRAY');
         INSERT INTO experiment_samples VALUES (1, 1), (1, 2), (1, 3), (2, 3), (2, 4), (2, 5), (3, 6), (3, 7), (4, 1), (4, 8);",
    )
    .await;
}

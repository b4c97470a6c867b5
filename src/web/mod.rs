//! The search application of `tidemark serve`, for whatever model is loaded, driven by its
//! `[search]` view: the faceted page (`/`) and its JSON API (`/api/search`), autocomplete
//! (`/api/suggest`), and each document's page read from PostgreSQL (`/{plural}/{id}`,
//! `/api/{plural}/{id}`: `/students/42` for the shipped student directory). Read-only: it
//! never writes the database or the index, and it searches through the alias, so a
//! reindex's swap never breaks a page.
//!
//! | module | holds |
//! | --- | --- |
//! | `params` | the parse-and-validate edge every route shares: query-string pairs, path parameters, bounded numbers and text, 400s that say what to do |
//! | `request` | one search ([`Request`]): the parameters the view declares ⇄ query string |
//! | `query` | the one query builder (request → `_search` bodies: counts and hits) and the reading of the answers |
//! | `sql` | `engine=sql`: the same request by SQL built from the model, same semantics |
//! | `response` | the one response type, whichever engine answered |
//! | `reuse` | asking the engine once: which index the alias names, single flight, the answer cache |
//! | `flight`, `cache`, `gate` | single flight, the byte-bounded answer cache and the engine gate (renewals first) under `reuse` |
//! | `document` | a document from the database, compared with the index's copy |
//! | `pages`, `api`, `assets` | HTTP: HTML pages (askama), JSON, embedded CSS and JS |

mod api;
mod assets;
pub mod cache;
pub mod document;
pub mod flight;
pub mod gate;
mod pages;
pub mod params;
pub mod query;
pub mod request;
pub mod response;
pub mod reuse;
pub mod sql;
#[cfg(test)]
mod tests;

use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use elasticsearch::http::Method;
use serde::Serialize;
use serde_json::Value;

pub use params::BadRequest;
pub use request::{Id, Request};
pub use response::Response as SearchResponse;

use crate::{search::SearchError, services::Services};
use params::Engine;
use response::CountsAge;

/// How long a page waits for the search server or the database before saying it is not
/// answering (the sync's own request timeout is meant for large `_bulk` writes).
const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
const DB_TIMEOUT: Duration = Duration::from_secs(5);
/// `engine=sql` reads every row the request matches (a yardstick, not a way to serve): it
/// may take longer than a page's own reads before the database counts as not answering.
const SQL_ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The application's state: the process's services and what it keeps of the engine's
/// answers (cheap to clone).
#[derive(Clone)]
pub struct App {
    services: Services,
    reuse: Arc<reuse::Reuse>,
}

impl App {
    pub fn new(services: Services) -> App {
        let serve = &services.config.serve;
        let settings = reuse::Settings {
            max_age: serve.cache_max_age.0.min(services.config.index.refresh_interval.0),
            bytes: usize::try_from(serve.cache_bytes).unwrap_or(usize::MAX),
            engine_concurrency: serve.engine_concurrency as usize,
        };
        App { services, reuse: Arc::new(reuse::Reuse::new(settings)) }
    }

    /// What one document is called: the loaded model's noun ("student").
    pub fn noun(&self) -> String {
        self.services.model.view().noun.clone()
    }

    /// What the answer cache holds (entries, bytes, budget).
    pub fn cache_usage(&self) -> cache::Usage {
        self.reuse.usage()
    }
}

/// The router of `tidemark serve`, for the server and for tests (which call it without a
/// socket).
pub fn router(services: Services) -> Router {
    router_for(App::new(services))
}

/// The router of an application state the caller keeps (tests read its cache's usage): the
/// loaded model's documents at `/{plural}/{id}` (and `/api/{plural}/{id}`).
pub fn router_for(app: App) -> Router {
    let plural = app.services.model.view().plural.clone();
    Router::new()
        .route("/", get(pages::search))
        .route(&format!("/{plural}/{{id}}"), get(pages::document))
        .route("/api/search", get(api::search))
        .route("/api/suggest", get(api::suggest))
        .route(&format!("/api/{plural}/{{id}}"), get(api::document))
        .route("/assets/{name}", get(assets::asset))
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(app.clone(), utf8_parameters))
        .layer(middleware::from_fn(http_metrics))
        .layer(middleware::map_response(security_headers))
        .with_state(app)
}

/// Every route, whatever parameters it reads: a query-string name or value, or a path
/// parameter, whose bytes are not UTF-8 is a 400 that says which (never read with
/// replacement characters), as JSON under `/api/` and as an HTML page elsewhere.
async fn utf8_parameters(State(app): State<App>, request: axum::extract::Request, next: middleware::Next) -> Response {
    let uri = request.uri();
    let checked = params::query_pairs(uri.query()).and_then(|_| match request.extensions().get::<axum::extract::MatchedPath>() {
        Some(route) => params::check_path_params(route.as_str(), uri.path(), || document::id_how(&app.services.model)),
        None => Ok(()),
    });
    match checked {
        Ok(()) => next.run(request).await,
        Err(e) if request.uri().path().starts_with("/api/") => api::ApiError(e.into(), app.noun()).into_response(),
        Err(e) => pages::error_page(&app, &e.into(), None).await,
    }
}

/// Counts every answer by route template and status class, with its latency
/// (`tidemark_http_*`, docs/metrics.md).
async fn http_metrics(request: axum::extract::Request, next: middleware::Next) -> Response {
    let route = request.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    crate::telemetry::http_request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// The Content-Security-Policy of every answer: only this origin's script, style and
/// fetches; no inline script or style anywhere, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                       form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// Why a request could not be answered. Messages are for the person reading the page:
/// what went wrong and what to do, never a server's address or credentials (the details
/// go to the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Failure {
    BadRequest(String),
    NotFound(String),
    /// The search server did not answer, or answered with an error (the reason is safe to show).
    SearchDown(String),
    /// The alias does not exist yet.
    IndexMissing,
    DatabaseDown,
    /// A fault of tidemark's own (the details are in the log).
    Internal,
}

impl Failure {
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::NotFound(_) => StatusCode::NOT_FOUND,
            Failure::SearchDown(_) | Failure::IndexMissing | Failure::DatabaseDown => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            Failure::BadRequest(_) => "This search cannot be run",
            Failure::NotFound(_) => "Not found",
            Failure::SearchDown(_) | Failure::IndexMissing => "Search is unavailable",
            Failure::DatabaseDown => "The database is not answering",
            Failure::Internal => "Something went wrong",
        }
    }

    /// The message, naming the documents whose pages read the database (`noun`: "student").
    pub fn message_about(&self, noun: &str) -> String {
        let pages = {
            let mut c = noun.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        };
        match self {
            Failure::BadRequest(m) | Failure::NotFound(m) => m.clone(),
            Failure::SearchDown(why) => format!(
                "The search server {why}, so searching is unavailable right now. {pages} pages still work: they read the \
                 database. Try again in a moment; if it persists, check that the search server is up (`tidemark admin status`)."
            ),
            Failure::IndexMissing => format!(
                "The search index has not been built yet: tidemark builds it when the first worker runs (`tidemark worker`). \
                 {pages} pages already work: they read the database."
            ),
            Failure::DatabaseDown => "The database is not answering, so this page cannot be shown right now. Try again in a \
                                      moment; if it persists, check that PostgreSQL is up (`tidemark admin status`)."
                .into(),
            Failure::Internal => "tidemark could not answer this request because of a fault of its own; the server's log says \
                                  what went wrong. Please report it."
                .into(),
        }
    }
}

impl From<BadRequest> for Failure {
    fn from(b: BadRequest) -> Failure {
        Failure::BadRequest(b.0)
    }
}

/// What a search-server failure may say to a reader: the kind, no address.
fn search_down(e: &SearchError) -> Failure {
    tracing::warn!(error = %e, "search server request failed");
    Failure::SearchDown(match e {
        SearchError::Unreachable { .. } => "cannot be reached".into(),
        SearchError::Unauthorized { status, .. } => format!("refused tidemark's credentials (HTTP {status})"),
        SearchError::Status { status, .. } => format!("answered with an error (HTTP {status})"),
        SearchError::Malformed { .. } => "gave an answer that could not be read".into(),
        SearchError::Config(_) | SearchError::Certificate { .. } => "is not configured correctly".into(),
    })
}

/// A database error: the server not answering (503), or a fault of ours (500).
fn database_down(e: &sqlx::Error) -> Failure {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => {
            tracing::warn!(error = %e, "database not answering");
            Failure::DatabaseDown
        }
        E::Database(d) if d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) => {
            tracing::warn!(error = %e, "database not answering");
            Failure::DatabaseDown
        }
        _ => {
            tracing::error!(error = %e, "database query failed");
            Failure::Internal
        }
    }
}

/// A database call bounded by [`DB_TIMEOUT`].
async fn db<T>(f: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, Failure> {
    db_within(DB_TIMEOUT, f).await
}

/// A database call bounded by `timeout`.
async fn db_within<T>(timeout: Duration, f: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(database_down(&e)),
        Err(_) => {
            tracing::warn!(?timeout, "database did not answer in time");
            Err(Failure::DatabaseDown)
        }
    }
}

/// A search-server request through the alias, bounded by [`SEARCH_TIMEOUT`]: the answer's
/// status and JSON body.
async fn engine(services: &Services, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value), Failure> {
    let bytes = body.map(|b| serde_json::to_vec(b).expect("a JSON value always serialises"));
    let reply = match tokio::time::timeout(SEARCH_TIMEOUT, services.search.request(method, path, bytes, false)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(search_down(&e)),
        Err(_) => {
            tracing::warn!(timeout = ?SEARCH_TIMEOUT, path, "search server did not answer in time");
            return Err(Failure::SearchDown("did not answer in time".into()));
        }
    };
    let v = reply.json(path).map_err(|e| search_down(&e))?;
    Ok((reply.status, v))
}

/// The failure an error answer of the search server means for a reader.
fn engine_failure(status: u16, v: &Value, path: &str) -> Failure {
    let kind = v["error"]["type"].as_str().unwrap_or_default();
    if status == 404 && kind == "index_not_found_exception" {
        return Failure::IndexMissing;
    }
    tracing::warn!(status, path, answer = %v, "search server answered with an error");
    let detail = if kind.is_empty() { String::new() } else { format!(", {kind}") };
    Failure::SearchDown(format!("answered with an error (HTTP {status}{detail})"))
}

/// Longest autocomplete prefix, and suggestions per answer (default and cap).
pub const MAX_SUGGEST_CHARS: usize = 100;
pub const DEFAULT_SUGGESTIONS: u32 = 8;
pub const MAX_SUGGESTIONS: u32 = 20;

/// Runs a search of the loaded model on the engine it names: in the index, the counts and
/// the hits as two requests to the physical index the alias names, each maybe reused (see [`reuse`]).
pub async fn search(app: &App, req: &Request) -> Result<SearchResponse, Failure> {
    let started = Instant::now();
    match req.engine {
        Engine::Index => {
            let (counts, hits) = (query::counts_body(req), query::hits_body(req));
            let mut tries = 0;
            loop {
                let target = app.reuse.target(&app.services).await?;
                let both = tokio::try_join!(
                    app.reuse.cached(&app.services, &target, "counts", &counts),
                    app.reuse.cached(&app.services, &target, "hits", &hits)
                );
                let (c, h) = match both {
                    Ok(v) => v,
                    Err(Failure::IndexMissing) if tries == 0 => {
                        tries += 1;
                        continue;
                    }
                    Err(f) => return Err(f),
                };
                let raw = query::read(req, &c.json, &h.json);
                let mut resp = SearchResponse::assemble(req, raw, req.engine, started.elapsed().as_secs_f64() * 1e3);
                resp.counts = CountsAge {
                    age_ms: (c.age.as_secs_f64() * 1e4).round() / 10.0,
                    max_age_ms: target.max_age.as_secs_f64() * 1e3,
                    reused: c.reused,
                };
                resp.hits_age_ms = (h.age.as_secs_f64() * 1e4).round() / 10.0;
                return Ok(resp);
            }
        }
        Engine::Sql => {
            let raw = db_within(SQL_ENGINE_TIMEOUT, sql::search(&app.services.pool, &app.services.model, req)).await?;
            Ok(SearchResponse::assemble(req, raw, req.engine, started.elapsed().as_secs_f64() * 1e3))
        }
    }
}

/// One autocomplete entry: a document, by id, labelled by the view's suggest label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    pub id: Id,
    pub name: String,
    /// What the view's suggest `detail` says of it (absent without one, or when empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The document's page.
    pub href: String,
}

/// Documents whose completion inputs start with `prefix`, one entry per document.
pub async fn suggest(app: &App, prefix: &str, size: u32) -> Result<Vec<Suggestion>, Failure> {
    let model = &app.services.model;
    let Some(view) = &model.search else { return Ok(Vec::new()) };
    let Some(sg) = &view.suggest else { return Ok(Vec::new()) };
    let body = query::suggest_body(sg, prefix, size);
    let mut tries = 0;
    let answer = loop {
        let target = app.reuse.target(&app.services).await?;
        match app.reuse.cached(&app.services, &target, "suggest", &body).await {
            Err(Failure::IndexMissing) if tries == 0 => tries += 1,
            other => break other?,
        }
    };
    let mut out: Vec<Suggestion> = Vec::new();
    for o in answer.json["suggest"]["s"][0]["options"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(id) = o["_id"].as_str().and_then(|s| Id::parse(model.root.key_type, s)) else { continue };
        if out.iter().any(|s| s.id == id) {
            continue;
        }
        let href = format!("/{}/{id}", view.plural);
        let detail = sg.detail.as_ref().map(|d| d.render(&o["_source"])).filter(|d| !d.trim().is_empty());
        out.push(Suggestion { id, name: sg.label.render(&o["_source"]), detail, href });
    }
    Ok(out)
}

/// Warns at start when the index behind the alias lacks what the pages need: the alias
/// itself, or the key again (`number`, a uuid key's `key_field`), the pages' tie-break: a
/// model that declares none (its pages then page by number only, without `next` cursors),
/// or an index built before it existed (`tidemark admin reindex` adds it).
pub async fn check_index(services: &Services) {
    let alias = &services.config.index_alias;
    let model = &services.model;
    let plural = model.plural();
    if let Some(note) = model.paging_note() {
        tracing::warn!(model = %model.name, "{note}");
    }
    let kind = match model.root.key_type {
        crate::model::KeyType::Integer => "long",
        crate::model::KeyType::Uuid => "keyword",
    };
    match services.search.json(Method::Get, &format!("/{alias}/_mapping"), None).await {
        Ok(v) => {
            let Some(field) = model.key_field.as_deref() else { return };
            let has_id = v.as_object().is_some_and(|o| o.values().all(|m| m["mappings"]["properties"][field]["type"] == kind));
            if !has_id {
                tracing::warn!(
                    alias = %alias,
                    "the index has no `{field}` field of type {kind} (built before the model declared it): deep pages may repeat \
                     or skip {plural} with equal sort values; run `tidemark admin reindex` to rebuild it with the current mapping"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, alias = %alias, "could not read the index mapping; searches will say what is wrong"),
    }
}

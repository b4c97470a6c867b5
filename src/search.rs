//! The search server: one client built from the configuration, and the few calls tidemark
//! makes. Everything goes through [`Search::request`], which turns transport failures into
//! [`SearchError`]s that name the server by its redacted URL, never with credentials.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use elasticsearch::{
    auth::Credentials,
    cert::{Certificate, CertificateValidation},
    http::{
        headers::{HeaderMap, HeaderValue, CONTENT_TYPE},
        transport::{SingleNodeConnectionPool, TransportBuilder},
        Method,
    },
    Elasticsearch,
};
use serde_json::{json, Value};
use url::Url;

use crate::config::{redact_message, redact_url, redact_urls, split_urls, Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search server at {url} is unreachable ({reason}); check ELASTICSEARCH_URL and that the server is up")]
    Unreachable { url: String, reason: String },
    #[error("search server at {url} refused the credentials (HTTP {status}); check the user/password in ELASTICSEARCH_URL or ELASTICSEARCH_API_KEY, and that this user may write the index")]
    Unauthorized { url: String, status: u16 },
    #[error("search server answered {method} {path} with HTTP {status}: {reason}")]
    Status { method: String, path: String, status: u16, reason: String },
    #[error("search server answered {path} with a body that is not the JSON expected: {reason}")]
    Malformed { path: String, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use the CA certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
}

impl SearchError {
    /// Worth trying again later: the server is down, overloaded, restarting, or blocks
    /// writes for now.
    pub fn is_transient(&self) -> bool {
        match self {
            SearchError::Unreachable { .. } => true,
            SearchError::Status { status, reason, .. } => {
                matches!(status, 408 | 429 | 500..) || reason.starts_with("cluster_block_exception")
            }
            _ => false,
        }
    }
}

/// A raw answer: status and body.
pub struct Reply {
    pub status: u16,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn json(&self, path: &str) -> Result<Value, SearchError> {
        serde_json::from_slice(&self.body).map_err(|e| SearchError::Malformed { path: path.to_string(), reason: e.to_string() })
    }
}

/// One node of the cluster ELASTICSEARCH_URL lists.
#[derive(Clone)]
struct Node {
    client: Elasticsearch,
    /// For messages: the node's URL with any password replaced.
    url: String,
}

/// The search server, as one or several nodes of one cluster (ELASTICSEARCH_URL may list
/// several, comma-separated). Requests go to one node, the first listed to begin with; when
/// that node cannot be reached, the request goes to the next one at once if it never left
/// (the connection was refused or could not be made: nothing was sent, so nothing can be
/// applied twice), and later requests go to the next node from then on. A request that failed
/// after it was sent (a reset, a timeout) is not resent here: it fails as
/// [`SearchError::Unreachable`], which callers retry, and their retry goes to the next node.
#[derive(Clone)]
pub struct Search {
    nodes: Arc<[Node]>,
    /// The node requests go to first (an index into `nodes`), shared by every clone.
    current: Arc<AtomicUsize>,
    /// For messages: the URL list with any password replaced.
    url: String,
    timeout: Duration,
    /// The largest request body the server (or a proxy in front of it) is known to take:
    /// unknown (`usize::MAX`) until a 413 teaches it. Shared by every clone, so one batch's
    /// lesson spares the next.
    request_limit: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Search").field("url", &self.url).finish()
    }
}

impl Search {
    pub fn new(config: &Config) -> Result<Search, SearchError> {
        let raw = config.elasticsearch_url()?;
        let nodes = split_urls(raw.expose()).into_iter().map(|node| Search::node(config, node)).collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(ConfigError::BadUrl {
                name: "ELASTICSEARCH_URL",
                reason: "it lists no URL".into(),
                example: "http://127.0.0.1:9200",
            }
            .into());
        }
        Ok(Search {
            nodes: nodes.into(),
            current: Arc::new(AtomicUsize::new(0)),
            url: redact_urls(raw.expose()),
            timeout: config.sync.request_timeout.0,
            request_limit: Arc::new(AtomicUsize::new(usize::MAX)),
        })
    }

    /// The client of one node.
    fn node(config: &Config, raw: &str) -> Result<Node, SearchError> {
        let mut url = Url::parse(raw).map_err(|e| ConfigError::BadUrl {
            name: "ELASTICSEARCH_URL",
            reason: e.to_string(),
            example: "http://127.0.0.1:9200",
        })?;
        // Credentials leave the URL and travel as a header, so no error message built from
        // the request URL can ever show them.
        let credentials = if !url.username().is_empty() || url.password().is_some() {
            let user = percent_decode(url.username());
            let pass = percent_decode(url.password().unwrap_or(""));
            let _ = url.set_username("");
            let _ = url.set_password(None);
            Some(Credentials::Basic(user, pass))
        } else {
            config.elasticsearch_api_key.as_ref().map(|k| Credentials::EncodedApiKey(k.expose().to_string()))
        };
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url.clone()))
            .timeout(config.sync.request_timeout.0)
            .enable_meta_header(false);
        if let Some(c) = credentials {
            builder = builder.auth(c);
        }
        if let Some(path) = &config.elasticsearch_ca_cert {
            let cert_err = |reason: String| SearchError::Certificate { path: path.display().to_string(), reason };
            let pem = std::fs::read(path).map_err(|e| cert_err(e.to_string()))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| cert_err(e.to_string()))?;
            builder = builder.cert_validation(CertificateValidation::Full(cert));
        }
        let transport = builder
            .build()
            .map_err(|e| SearchError::Unreachable { url: redact_url(raw), reason: format!("client could not be built: {e}") })?;
        Ok(Node { client: Elasticsearch::new(transport), url: redact_url(raw) })
    }

    /// The server's address (every node listed), safe to print.
    pub fn redacted_url(&self) -> &str {
        &self.url
    }

    /// Node `i` could not be reached: unless another request already moved on, later requests
    /// go to the next node listed.
    fn leave(&self, i: usize, reason: &str) {
        let n = self.nodes.len();
        if n > 1 && self.current.compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(
                node = %self.nodes[i].url,
                next = %self.nodes[(i + 1) % n].url,
                %reason,
                "search node unreachable; sending to the next node ELASTICSEARCH_URL lists"
            );
        }
    }

    /// The largest request body known to be taken (`usize::MAX` while none was refused).
    pub fn request_limit(&self) -> usize {
        self.request_limit.load(Ordering::Relaxed)
    }

    /// Learns from a request of `refused` bytes answered 413: from now on requests carry
    /// at most half of it (halving again at each 413 until one is taken).
    pub fn learn_request_limit(&self, refused: usize) {
        let limit = (refused / 2).max(1);
        if self.request_limit.fetch_min(limit, Ordering::Relaxed) > limit {
            tracing::warn!(
                refused_bytes = refused,
                now_at_most = limit,
                "the search server (or a proxy in front of it) refused a request as too large (HTTP 413); sending smaller \
                 requests from now on. Set sync.bulk_max_bytes below its limit to skip the splitting"
            );
        }
    }

    /// One request. A status is not an error here (callers classify it), except that 401, and
    /// a 403 other than a write block, become [`SearchError::Unauthorized`], and no answer at
    /// all becomes `Unreachable` (after every node listed refused the connection, or when the
    /// one it went to failed after it was sent; see [`Search`]).
    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>, ndjson: bool) -> Result<Reply, SearchError> {
        let mut headers = HeaderMap::new();
        if ndjson {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        }
        let body = body.map(bytes::Bytes::from);
        let n = self.nodes.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut refused = 0;
        let (i, response) = loop {
            let i = (first + refused) % n;
            let node = &self.nodes[i];
            let sent = node.client.transport().send(method, path, headers.clone(), None::<&()>, body.clone(), Some(self.timeout)).await;
            match sent {
                Ok(response) => break (i, response),
                Err(e) => {
                    let reason = redact_message(&root_cause(&e), None);
                    self.leave(i, &reason);
                    refused += 1;
                    if !never_sent(&e) || refused == n {
                        // Every node refused: name them all (one node: its URL, as before).
                        let url = if refused == n && never_sent(&e) { self.url.clone() } else { node.url.clone() };
                        return Err(SearchError::Unreachable { url, reason });
                    }
                }
            }
        };
        let status = response.status_code().as_u16();
        let body = response.bytes().await.map_err(|e| {
            let reason = redact_message(&root_cause(&e), None);
            self.leave(i, &reason);
            SearchError::Unreachable { url: self.nodes[i].url.clone(), reason }
        })?;
        let reply = Reply { status, body };
        // 401, and a 403 that is not a write block (which is 403 in OpenSearch and
        // Elasticsearch 7+): the credentials, or the rights they carry.
        if status == 401 || (status == 403 && reply_type(&reply).as_deref() != Some("cluster_block_exception")) {
            return Err(SearchError::Unauthorized { url: self.nodes[i].url.clone(), status });
        }
        Ok(reply)
    }

    /// A JSON request whose non-2xx answers are errors.
    pub async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, SearchError> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("a JSON value always serialises"));
        let reply = self.request(method, path, bytes, false).await?;
        if !(200..300).contains(&reply.status) {
            return Err(status_error(method, path, &reply));
        }
        reply.json(path)
    }

    /// `GET /`: proves the server answers and the credentials work.
    pub async fn ping(&self) -> Result<(), SearchError> {
        self.json(Method::Get, "/", None).await.map(|_| ())
    }

    /// The physical indices an alias points to; empty when the alias does not exist.
    pub async fn alias_targets(&self, alias: &str) -> Result<Vec<String>, SearchError> {
        let Some(v) = self.get_unless_missing(&format!("/_alias/{alias}")).await? else { return Ok(Vec::new()) };
        let mut names: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        Ok(names)
    }

    /// A GET whose 404 means "none" rather than an error.
    async fn get_unless_missing(&self, path: &str) -> Result<Option<Value>, SearchError> {
        let reply = self.request(Method::Get, path, None, false).await?;
        match reply.status {
            404 => Ok(None),
            200..=299 => reply.json(path).map(Some),
            _ => Err(status_error(Method::Get, path, &reply)),
        }
    }

    /// Whether a physical index exists. Only a 404 means no: a 429 or 5xx is an error (a
    /// transient one), not a verdict.
    pub async fn index_exists(&self, index: &str) -> Result<bool, SearchError> {
        let path = format!("/{index}");
        let reply = self.request(Method::Head, &path, None, false).await?;
        match reply.status {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(status_error(Method::Head, &path, &reply)),
        }
    }

    /// Names of existing indices matching `pattern` (e.g. `students_*`).
    pub async fn indices(&self, pattern: &str) -> Result<Vec<String>, SearchError> {
        let Some(v) = self.get_unless_missing(&format!("/_cat/indices/{pattern}?format=json&h=index")).await? else {
            return Ok(Vec::new());
        };
        Ok(v.as_array().map(|a| a.iter().filter_map(|r| r["index"].as_str().map(str::to_string)).collect()).unwrap_or_default())
    }

    /// Document count of an index or alias (after a refresh when asked).
    pub async fn count(&self, target: &str) -> Result<u64, SearchError> {
        let v = self.json(Method::Get, &format!("/{target}/_count"), None).await?;
        v["count"]
            .as_u64()
            .ok_or_else(|| SearchError::Malformed { path: format!("/{target}/_count"), reason: "no count in the answer".into() })
    }

    pub async fn refresh(&self, target: &str) -> Result<(), SearchError> {
        self.json(Method::Post, &format!("/{target}/_refresh"), None).await.map(|_| ())
    }
}

/// The index operations tidemark makes, each written once.
impl Search {
    /// Creates an index with `body` (settings and mappings). `Ok(false)` when an index of
    /// that name already exists, so a caller can pick another name.
    pub async fn create_index(&self, index: &str, body: &Value) -> Result<bool, SearchError> {
        let path = format!("/{index}");
        let reply =
            self.request(Method::Put, &path, Some(serde_json::to_vec(body).expect("a JSON value always serialises")), false).await?;
        match reply.status {
            200..=299 => Ok(true),
            400 if reply_type(&reply).as_deref() == Some("resource_already_exists_exception") => Ok(false),
            _ => Err(status_error(Method::Put, &path, &reply)),
        }
    }

    /// Deletes an index; an index that is already gone is not an error.
    pub async fn delete_index(&self, index: &str) -> Result<(), SearchError> {
        let path = format!("/{index}");
        let reply = self.request(Method::Delete, &path, None, false).await?;
        match reply.status {
            200..=299 | 404 => Ok(()),
            _ => Err(status_error(Method::Delete, &path, &reply)),
        }
    }

    /// Changes dynamic index settings (`{"index": {...}}`).
    pub async fn put_settings(&self, index: &str, settings: &Value) -> Result<(), SearchError> {
        self.json(Method::Put, &format!("/{index}/_settings"), Some(settings)).await.map(|_| ())
    }

    /// Moves `alias` off `from` and onto `to` in one atomic `_aliases` call: readers never
    /// see it missing or pointing nowhere in between. The whole move fails if the alias is
    /// not on one of `from` (someone moved it meanwhile).
    pub async fn move_alias(&self, alias: &str, from: &[String], to: &[String]) -> Result<(), SearchError> {
        let actions: Vec<Value> = from
            .iter()
            .map(|i| json!({"remove": {"index": i, "alias": alias}}))
            .chain(to.iter().map(|i| json!({"add": {"index": i, "alias": alias}})))
            .collect();
        if actions.is_empty() {
            return Ok(());
        }
        self.json(Method::Post, "/_aliases", Some(&json!({ "actions": actions }))).await.map(|_| ())
    }

    /// Points `alias` at exactly the indices in `to`, wherever it points now.
    pub async fn point_alias(&self, alias: &str, to: &[String]) -> Result<(), SearchError> {
        let current = self.alias_targets(alias).await?;
        let from: Vec<String> = current.iter().filter(|i| !to.contains(i)).cloned().collect();
        let add: Vec<String> = to.iter().filter(|i| !current.contains(i)).cloned().collect();
        self.move_alias(alias, &from, &add).await
    }

    /// The sources of the documents `ids` in `index`, by id (absent ones are not in the map).
    pub async fn mget(&self, index: &str, ids: &[i64]) -> Result<HashMap<i64, Value>, SearchError> {
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        let v = self.json(Method::Post, &format!("/{index}/_mget"), Some(&json!({ "ids": ids }))).await?;
        Ok(v["docs"]
            .as_array()
            .map(|docs| {
                docs.iter()
                    .filter(|d| d["found"] == json!(true))
                    .filter_map(|d| Some((d["_id"].as_str()?.parse().ok()?, d["_source"].clone())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Which of `ids` have a document in `index` (sources not fetched).
    pub async fn existing(&self, index: &str, ids: &[i64]) -> Result<std::collections::HashSet<i64>, SearchError> {
        let mut found = std::collections::HashSet::new();
        for part in ids.chunks(5000) {
            let ids: Vec<String> = part.iter().map(i64::to_string).collect();
            let v = self.json(Method::Post, &format!("/{index}/_mget?_source=false"), Some(&json!({ "ids": ids }))).await?;
            found.extend(
                v["docs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|d| d["found"] == json!(true))
                    .filter_map(|d| d["_id"].as_str()?.parse::<i64>().ok()),
            );
        }
        Ok(found)
    }

    /// Calls `f` with the id and source (`Value::Null` when `with_source` is false) of every
    /// document in `target`. Scrolls, which Elasticsearch and OpenSearch spell alike (their
    /// point-in-time APIs differ: `/_pit` against `/_search/point_in_time`).
    pub async fn scan(&self, target: &str, with_source: bool, mut f: impl FnMut(i64, &Value)) -> Result<(), SearchError> {
        let body = json!({"size": 5000, "_source": with_source, "sort": ["_doc"], "query": {"match_all": {}}});
        let mut page = self.json(Method::Post, &format!("/{target}/_search?scroll=2m"), Some(&body)).await?;
        let result = loop {
            let hits = page["hits"]["hits"].as_array().map(Vec::as_slice).unwrap_or_default();
            if hits.is_empty() {
                break Ok(());
            }
            for h in hits {
                if let Some(id) = h["_id"].as_str().and_then(|s| s.parse().ok()) {
                    f(id, &h["_source"]);
                }
            }
            let Some(scroll_id) = page["_scroll_id"].as_str().map(str::to_string) else { break Ok(()) };
            match self.json(Method::Post, "/_search/scroll", Some(&json!({"scroll": "2m", "scroll_id": scroll_id}))).await {
                Ok(next) => page = next,
                Err(e) => break Err(e),
            }
        };
        if let Some(id) = page["_scroll_id"].as_str() {
            let _ = self.json(Method::Delete, "/_search/scroll", Some(&json!({"scroll_id": id}))).await;
        }
        result
    }
}

/// The `error.type` of an answer, if it has one.
fn reply_type(reply: &Reply) -> Option<String> {
    let v: Value = serde_json::from_slice(&reply.body).ok()?;
    v["error"]["type"].as_str().map(str::to_string)
}

pub(crate) fn status_error(method: Method, path: &str, reply: &Reply) -> SearchError {
    let reason = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| {
            let e = &v["error"];
            let ty = e["type"].as_str().or_else(|| e.as_str())?;
            Some(match e["reason"].as_str() {
                Some(r) => format!("{ty}: {r}"),
                None => ty.to_string(),
            })
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]).into_owned());
    SearchError::Status { method: format!("{method:?}").to_uppercase(), path: path.to_string(), status: reply.status, reason }
}

/// Whether a failed request never left: the connection could not be made (refused, no
/// route, DNS, TLS handshake), so the server cannot have acted on it.
fn never_sent(e: &elasticsearch::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<reqwest::Error>() {
            return r.is_connect();
        }
        source = s.source();
    }
    false
}

/// The innermost cause ("Connection refused", "operation timed out"), which says more than
/// the outer "error sending request".
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let (outer, root) = (e.to_string(), inner.to_string());
    if outer == root {
        outer
    } else {
        format!("{root}; {outer}")
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

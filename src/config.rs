//! Configuration: defaults, then an optional TOML file, then the environment, then flags.
//!
//! Every option has a doc comment and a default; unknown keys in the file are refused, and
//! cross-field rules are checked once, in [`Config::validate`], into a [`ConfigError`] that
//! says what was wrong and what to do. Secrets (the three service URLs may carry passwords,
//! and the API key) are held in [`Secret`], whose `Debug`/`Display` never show them.

use std::{fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use url::Url;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{name} is not set: {hint}")]
    Missing { name: &'static str, hint: &'static str },
    #[error("{name} is not a valid URL ({reason}); expected something like {example}")]
    BadUrl { name: &'static str, reason: String, example: &'static str },
    #[error("{name} = {value:?} is not valid: {reason}")]
    Invalid { name: &'static str, value: String, reason: String },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}

/// A string that must never reach a log, an error or a status line.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The real value, for the one place that hands it to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A URL shown with its password (and any `password=`-style query value) replaced by `***`.
/// Use it everywhere a service address appears in a message.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            if pairs.iter().any(|(k, _)| is_secret_key(k)) {
                let mut q = url.query_pairs_mut();
                q.clear();
                for (k, v) in &pairs {
                    q.append_pair(k, if is_secret_key(k) { "***" } else { v });
                }
            }
            url.to_string()
        }
        // Not a URL: say nothing of its content, it may be a password pasted in the wrong place.
        Err(_) => "<unparseable URL>".to_string(),
    }
}

/// A message that may quote service URLs (an error from a client library): every URL in it
/// shown as [`redact_url`] shows it, and the password of `secret_url` (the URL the client
/// was given) replaced wherever it appears. With [`redact_url`], the one redactor of
/// everything tidemark says.
pub fn redact_message(message: &str, secret_url: Option<&str>) -> String {
    let mut out = String::with_capacity(message.len());
    for word in message.split_inclusive(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        if word.contains("://") && word.contains('@') {
            let trimmed = word.trim_end_matches(|c: char| c.is_whitespace() || c == ')' || c == '(');
            out.push_str(&redact_url(trimmed));
            out.push_str(&word[trimmed.len()..]);
        } else {
            out.push_str(word);
        }
    }
    let password = secret_url.and_then(|u| Url::parse(u).ok()).and_then(|u| u.password().map(str::to_string));
    match password {
        Some(p) if !p.is_empty() => out.replace(&p, "***"),
        _ => out,
    }
}

/// The URLs of a comma-separated list (`ELASTICSEARCH_URL` may name several nodes), trimmed,
/// empty ones left out.
pub fn split_urls(list: &str) -> Vec<&str> {
    list.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// [`redact_url`] of each URL of a comma-separated list, joined again by commas.
pub fn redact_urls(list: &str) -> String {
    split_urls(list).into_iter().map(redact_url).collect::<Vec<_>>().join(",")
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.contains("token") || k.contains("key")
}

/// A duration written the way people write them: `250ms`, `5s`, `1m30s`, `2h` (parsed and
/// shown by `humantime`, which also refuses values too large to represent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 250ms, 5s, 1m30s or 1h"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// The whole configuration. In the TOML file every key is optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PostgreSQL URL (env `DATABASE_URL`), e.g. `postgres://user:pass@host:5432/app`.
    pub database_url: Option<Secret>,
    /// Redis URL (env `REDIS_URL`), e.g. `redis://:pass@host:6379/0`.
    pub redis_url: Option<Secret>,
    /// Search server URL (env `ELASTICSEARCH_URL`); basic auth may sit in the URL. Several
    /// nodes of one cluster may be listed, comma-separated (`http://a:9200,http://b:9200`):
    /// requests go to the first one that answers, and a node that cannot be reached is left
    /// for the next one listed (see [`crate::search::Search`]).
    pub elasticsearch_url: Option<Secret>,
    /// API key for the search server (env `ELASTICSEARCH_API_KEY`), base64 `id:key` as Elastic
    /// prints it. Mutually exclusive with a password in the URL.
    pub elasticsearch_api_key: Option<Secret>,
    /// PEM file of a CA to trust for the search server's TLS (env `ELASTICSEARCH_CA_CERT`).
    pub elasticsearch_ca_cert: Option<PathBuf>,
    /// The alias searches use; physical indices are `<alias>_<generation>`.
    pub index_alias: String,
    /// Prefix of every Redis key tidemark writes, so several deployments can share a Redis.
    pub queue_namespace: String,
    /// The model: the path of a model file, or a shipped model (`students`, the default;
    /// `refinebio`). Env `TIDEMARK_MODEL`, flag `--model`.
    pub model: String,
    /// The model, loaded by [`Config::validate`].
    #[serde(skip)]
    loaded_model: std::sync::OnceLock<std::sync::Arc<crate::model::Model>>,
    pub sync: SyncConfig,
    pub scheduler: SchedulerConfig,
    pub worker: WorkerConfig,
    pub reindex: ReindexConfig,
    pub index: IndexConfig,
    pub serve: ServeConfig,
}

/// `tidemark serve`: what it keeps of the engine's answers (README, "Search"; the argument
/// is in `src/web/reuse.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// How long counts (facets, histogram, totals), hits and suggestions may be reused. Never
    /// more than the index's refresh interval (`[index] refresh_interval`, and the index's
    /// own setting as the engine reports it): the engine itself shows no write sooner.
    /// `"0s"` turns reuse off (identical requests under way at once still share one
    /// engine request).
    pub cache_max_age: HumanDuration,
    /// Most bytes of answers kept (keys and answers as the engine sent them, plus a fixed
    /// overhead per entry); the least recently used go first.
    pub cache_bytes: u64,
    /// Most searches serve has under way at the engine at once, renewals of popular answers
    /// included; more wait in serve (where identical ones share one, and renewals are
    /// handed a slot before misses). About the engine's search threads: a node's is
    /// 1.5 × its cores + 1. An answer that queued in the engine past `cache_max_age` could
    /// not be reused.
    pub engine_concurrency: u32,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig { cache_max_age: HumanDuration(Duration::from_secs(1)), cache_bytes: 64 << 20, engine_concurrency: 4 }
    }
}

/// Settings of the physical indices tidemark creates (a build's own settings while it
/// loads are no refresh and no replicas; these are restored before the alias moves).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Primary shards of a new index.
    pub number_of_shards: u32,
    /// Replicas of each shard: 1 in production (a lost node loses nothing); 0 for a single
    /// local node (1 works there too: the index is yellow, and nothing waits for green).
    pub number_of_replicas: u32,
    /// How soon a write becomes searchable (the engine's refresh).
    pub refresh_interval: HumanDuration,
    /// How long the engine remembers a delete (its tombstone) against older versions. A
    /// write with an older version that arrives later than this would bring a deleted
    /// student back, so it must exceed the longest a write can take to arrive:
    /// `sync.batch_timeout` + `sync.request_timeout` + however long the server may sit on a
    /// request its client gave up on (docs/protocol.md, rule 9).
    pub gc_deletes: HumanDuration,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            number_of_shards: 1,
            number_of_replicas: 1,
            refresh_interval: HumanDuration(Duration::from_secs(1)),
            gc_deletes: HumanDuration(Duration::from_secs(600)),
        }
    }
}

/// How a sync batch is claimed, shipped and retried.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Marks claimed per batch. Larger batches amortise the round trips; smaller ones spread
    /// work across more workers.
    pub batch_size: u32,
    /// Most documents in one `_bulk` request.
    pub bulk_max_docs: u32,
    /// Most bytes in one `_bulk` request (Elastic advises 5–15 MB).
    pub bulk_max_bytes: u64,
    /// `_bulk` requests of one batch in flight at once.
    pub bulk_concurrency: u32,
    /// How long a claim is owned before another worker may take it over (a crashed worker's
    /// marks come back after this).
    pub lease: HumanDuration,
    /// Students marked per fan-out step when a university or course changes.
    pub fanout_chunk: u32,
    /// Tries of a transiently failing item within one batch before the batch gives the mark
    /// back (it stays dirty and is tried again by a later sync).
    pub max_attempts: u32,
    /// First retry delay; doubles each try, capped at `backoff_cap`, fully jittered.
    pub backoff_base: HumanDuration,
    /// The longest single retry delay.
    pub backoff_cap: HumanDuration,
    /// Timeout of one request to the search server.
    pub request_timeout: HumanDuration,
    /// How long a batch may send after its claim: no `_bulk` request of a batch starts
    /// later (what is left keeps its marks for a later batch). With `request_timeout` it
    /// bounds how late any write can reach the server (see `index.gc_deletes`).
    pub batch_timeout: HumanDuration,
    /// How often each worker and scheduler process looks at the mark sequence to see whether
    /// anything changed (then it wakes a worker at once). The writers' transactions do nothing
    /// for it. Shorter picks a change up sooner; each look is one trivial query.
    pub wakeup_interval: HumanDuration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How often the scheduler enqueues a sync (also the worst-case freshness if every
    /// wake-up were missed). Whole seconds, at least 1s.
    pub interval: HumanDuration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Sync jobs one worker process runs at once.
    pub concurrency: u32,
    /// How long a stopping worker waits for its running jobs before giving their marks back.
    pub shutdown_timeout: HumanDuration,
}

/// Full reindexes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReindexConfig {
    /// Student ids per chunk job (`admin reindex --chunk-size` overrides it).
    pub chunk_size: u32,
    /// Previous indices kept after a swap, for `admin rollback`.
    pub keep_previous: u32,
    /// Documents compared with their freshly built version before the alias moves.
    pub verify_sample: u32,
    /// How long a build may wait to be verified (while outstanding changes could still
    /// explain a difference) before it fails, saying why.
    pub verify_timeout: HumanDuration,
    /// How long `admin reindex --wait` waits while no worker is alive and the build makes
    /// no progress, before it says so and exits.
    pub idle_wait: HumanDuration,
}

impl Default for ReindexConfig {
    fn default() -> Self {
        ReindexConfig {
            chunk_size: 10_000,
            keep_previous: 1,
            verify_sample: 200,
            verify_timeout: HumanDuration(Duration::from_secs(300)),
            idle_wait: HumanDuration(Duration::from_secs(30)),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: None,
            redis_url: None,
            elasticsearch_url: None,
            elasticsearch_api_key: None,
            elasticsearch_ca_cert: None,
            index_alias: "students".into(),
            queue_namespace: "tidemark".into(),
            model: "students".into(),
            loaded_model: std::sync::OnceLock::new(),
            sync: SyncConfig::default(),
            scheduler: SchedulerConfig::default(),
            worker: WorkerConfig::default(),
            reindex: ReindexConfig::default(),
            serve: ServeConfig::default(),
            index: IndexConfig::default(),
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_size: 2000,
            bulk_max_docs: 1000,
            bulk_max_bytes: 8 * 1024 * 1024,
            bulk_concurrency: 2,
            lease: HumanDuration(Duration::from_secs(60)),
            fanout_chunk: 10_000,
            max_attempts: 6,
            backoff_base: HumanDuration(Duration::from_millis(100)),
            backoff_cap: HumanDuration(Duration::from_secs(5)),
            request_timeout: HumanDuration(Duration::from_secs(30)),
            batch_timeout: HumanDuration(Duration::from_secs(30)),
            wakeup_interval: HumanDuration(Duration::from_millis(50)),
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { interval: HumanDuration(Duration::from_secs(5)) }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig { concurrency: 2, shutdown_timeout: HumanDuration(Duration::from_secs(30)) }
    }
}

impl Config {
    /// Defaults, overlaid by the TOML file (if any), then by the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.into(),
                    // toml's message quotes the offending line; a secret may stand on it.
                    message: scrub_toml_error(&text, &e),
                })?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok());
        Ok(config)
    }

    /// Environment variables win over the file (the twelve-factor habit).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        if let Some(v) = nonempty("DATABASE_URL") {
            self.database_url = Some(Secret(v));
        }
        if let Some(v) = nonempty("REDIS_URL") {
            self.redis_url = Some(Secret(v));
        }
        if let Some(v) = nonempty("ELASTICSEARCH_URL") {
            self.elasticsearch_url = Some(Secret(v));
        }
        if let Some(v) = nonempty("ELASTICSEARCH_API_KEY") {
            self.elasticsearch_api_key = Some(Secret(v));
        }
        if let Some(v) = nonempty("ELASTICSEARCH_CA_CERT") {
            self.elasticsearch_ca_cert = Some(v.into());
        }
        if let Some(v) = nonempty("TIDEMARK_INDEX_ALIAS") {
            self.index_alias = v;
        }
        if let Some(v) = nonempty("TIDEMARK_QUEUE_NAMESPACE") {
            self.queue_namespace = v;
        }
        if let Some(v) = nonempty("TIDEMARK_MODEL") {
            self.set_model(v);
        }
    }

    /// Chooses another model (a path, or a shipped model's name); [`Config::validate`] loads it.
    pub fn set_model(&mut self, spec: impl Into<String>) {
        self.model = spec.into();
        self.loaded_model = std::sync::OnceLock::new();
    }

    /// The model, as [`Config::validate`] loaded it.
    ///
    /// # Panics
    /// When called on a configuration `validate` refused (every process validates first).
    pub fn model(&self) -> std::sync::Arc<crate::model::Model> {
        self.loaded_model
            .get_or_init(|| std::sync::Arc::new(crate::model::Model::load(&self.model).unwrap_or_else(|e| panic!("{e}"))))
            .clone()
    }

    /// Checks every rule once; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.loaded_model.get().is_none() {
            let model = crate::model::Model::load(&self.model).map_err(ConfigError::Model)?;
            let _ = self.loaded_model.set(std::sync::Arc::new(model));
        }
        let url = |name: &'static str, v: &Option<Secret>, schemes: &[&str], example: &'static str| {
            let Some(v) = v else { return Ok(()) };
            let parsed = Url::parse(v.expose()).map_err(|e| ConfigError::BadUrl { name, reason: e.to_string(), example })?;
            if !schemes.contains(&parsed.scheme()) {
                return Err(ConfigError::BadUrl {
                    name,
                    reason: format!("scheme {:?} is not one of {}", parsed.scheme(), schemes.join(", ")),
                    example,
                });
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(ConfigError::BadUrl { name, reason: "it has no host".into(), example });
            }
            Ok(())
        };
        url("DATABASE_URL", &self.database_url, &["postgres", "postgresql"], "postgres://user:pass@127.0.0.1:5432/app")?;
        url("REDIS_URL", &self.redis_url, &["redis", "rediss"], "redis://127.0.0.1:6379")?;
        if let Some(es) = &self.elasticsearch_url {
            let example = "http://127.0.0.1:9200 (or several nodes: http://10.0.0.1:9200,http://10.0.0.2:9200)";
            let nodes = split_urls(es.expose());
            if nodes.is_empty() {
                return Err(ConfigError::BadUrl { name: "ELASTICSEARCH_URL", reason: "it lists no URL".into(), example });
            }
            for node in nodes {
                url("ELASTICSEARCH_URL", &Some(Secret::new(node)), &["http", "https"], example)?;
            }
        }
        if let (Some(es), Some(_)) = (&self.elasticsearch_url, &self.elasticsearch_api_key) {
            if split_urls(es.expose()).iter().any(|n| Url::parse(n).map(|u| u.password().is_some()).unwrap_or(false)) {
                return Err(ConfigError::Invalid {
                    name: "ELASTICSEARCH_API_KEY",
                    value: "***".into(),
                    reason: "ELASTICSEARCH_URL already carries a password; use one or the other".into(),
                });
            }
        }
        if let Some(ca) = &self.elasticsearch_ca_cert {
            if !ca.is_file() {
                return Err(ConfigError::Invalid {
                    name: "elasticsearch_ca_cert",
                    value: ca.display().to_string(),
                    reason: "no such file; give the path of a PEM-encoded CA certificate".into(),
                });
            }
        }
        let ident_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
                && !s.starts_with(['_', '-'])
        };
        if !ident_ok(&self.index_alias) {
            return Err(ConfigError::Invalid {
                name: "index_alias",
                value: self.index_alias.clone(),
                reason: "use lowercase letters, digits, '_' or '-' (not first), at most 100 characters".into(),
            });
        }
        if self.queue_namespace.is_empty() || self.queue_namespace.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid {
                name: "queue_namespace",
                value: self.queue_namespace.clone(),
                reason: "must be non-empty and contain no spaces".into(),
            });
        }
        let s = &self.sync;
        let positive = |name: &'static str, v: u64, max: u64| {
            if v == 0 || v > max {
                Err(ConfigError::Invalid { name, value: v.to_string(), reason: format!("must be between 1 and {max}") })
            } else {
                Ok(())
            }
        };
        positive("sync.batch_size", s.batch_size.into(), 100_000)?;
        positive("sync.bulk_max_docs", s.bulk_max_docs.into(), 100_000)?;
        positive("sync.fanout_chunk", s.fanout_chunk.into(), 1_000_000)?;
        positive("sync.bulk_concurrency", s.bulk_concurrency.into(), 64)?;
        positive("sync.max_attempts", s.max_attempts.into(), 100)?;
        positive("worker.concurrency", self.worker.concurrency.into(), 1024)?;
        positive("reindex.chunk_size", self.reindex.chunk_size.into(), 1_000_000)?;
        positive("reindex.verify_sample", self.reindex.verify_sample.into(), 10_000)?;
        if s.bulk_max_bytes < 1024 || s.bulk_max_bytes > 100 * 1024 * 1024 {
            return Err(ConfigError::Invalid {
                name: "sync.bulk_max_bytes",
                value: s.bulk_max_bytes.to_string(),
                reason: "must be between 1024 and 104857600 (100 MiB; servers refuse larger requests)".into(),
            });
        }
        if s.wakeup_interval.0 < Duration::from_millis(1) || s.wakeup_interval.0 > Duration::from_secs(60) {
            return Err(ConfigError::Invalid {
                name: "sync.wakeup_interval",
                value: s.wakeup_interval.to_string(),
                reason: "must be between 1ms and 1m (50ms by default: each look at the database is one trivial query)".into(),
            });
        }
        if s.backoff_base.0.is_zero() || s.backoff_base.0 > s.backoff_cap.0 {
            return Err(ConfigError::Invalid {
                name: "sync.backoff_base",
                value: s.backoff_base.to_string(),
                reason: format!("must be above zero and at most sync.backoff_cap ({})", s.backoff_cap),
            });
        }
        // Every request of a batch ends (on the client) before its lease can run out, even if
        // renewing the lease fails: another worker never ships the same marks meanwhile.
        let batch_life = s.batch_timeout.0 + s.request_timeout.0;
        if s.batch_timeout.0.is_zero() || s.lease.0 < batch_life {
            return Err(ConfigError::Invalid {
                name: "sync.lease",
                value: s.lease.to_string(),
                reason: format!(
                    "must be at least sync.batch_timeout + sync.request_timeout ({}) so every request of a batch ends inside its lease",
                    HumanDuration(batch_life)
                ),
            });
        }
        // A write arrives at most batch_life after its version was drawn (plus however long
        // the server sits on a request its client gave up on): the engine must remember a
        // newer delete for longer than that, with a minute to spare at least.
        let floor = batch_life + Duration::from_secs(60);
        if self.index.gc_deletes.0 < floor {
            return Err(ConfigError::Invalid {
                name: "index.gc_deletes",
                value: self.index.gc_deletes.to_string(),
                reason: format!(
                    "must be at least sync.batch_timeout + sync.request_timeout + 1m ({}): a write that arrives after the engine forgot a newer delete brings a deleted student back",
                    HumanDuration(floor)
                ),
            });
        }
        positive("index.number_of_shards", self.index.number_of_shards.into(), 1024)?;
        if self.index.number_of_replicas > 16 {
            return Err(ConfigError::Invalid {
                name: "index.number_of_replicas",
                value: self.index.number_of_replicas.to_string(),
                reason: "must be between 0 and 16".into(),
            });
        }
        if self.serve.engine_concurrency == 0 {
            return Err(ConfigError::Invalid {
                name: "serve.engine_concurrency",
                value: "0".into(),
                reason: "must be at least 1 (searches under way at the engine at once)".into(),
            });
        }
        if self.index.refresh_interval.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                name: "index.refresh_interval",
                value: self.index.refresh_interval.to_string(),
                reason: "must be at least 100ms (the engine refreshes at most that often usefully)".into(),
            });
        }
        if self.scheduler.interval.0 < Duration::from_secs(1) || self.scheduler.interval.0.subsec_millis() != 0 {
            return Err(ConfigError::Invalid {
                name: "scheduler.interval",
                value: self.scheduler.interval.to_string(),
                reason: "must be whole seconds, at least 1s (the wake-up brings changes in sooner)".into(),
            });
        }
        Ok(())
    }

    pub fn database_url(&self) -> Result<&Secret, ConfigError> {
        self.database_url.as_ref().ok_or(ConfigError::Missing {
            name: "DATABASE_URL",
            hint: "set it in the environment or as database_url in the --config file, e.g. postgres://user:pass@127.0.0.1:5432/app",
        })
    }

    pub fn redis_url(&self) -> Result<&Secret, ConfigError> {
        self.redis_url.as_ref().ok_or(ConfigError::Missing {
            name: "REDIS_URL",
            hint: "set it in the environment or as redis_url in the --config file, e.g. redis://127.0.0.1:6379",
        })
    }

    pub fn elasticsearch_url(&self) -> Result<&Secret, ConfigError> {
        self.elasticsearch_url.as_ref().ok_or(ConfigError::Missing {
            name: "ELASTICSEARCH_URL",
            hint: "set it in the environment or as elasticsearch_url in the --config file, e.g. http://127.0.0.1:9200",
        })
    }
}

/// toml's errors quote the offending source line, which may hold a secret. Say instead
/// which line and key (`[table] key`) the problem is on, and what is wrong with it.
fn scrub_toml_error(text: &str, e: &toml::de::Error) -> String {
    let mut msg = e.message().to_string();
    // A value echoed in the message (a mistyped URL, say) must not show a password.
    if msg.contains("://") && msg.contains('@') {
        msg = "a value of the wrong type".to_string();
    }
    let Some(span) = e.span() else { return msg };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_string());
    match line.split_once('=') {
        Some((key, _)) => {
            let key = key.trim();
            let path = table.map_or(key.to_string(), |t| format!("{t}.{key}"));
            format!("line {line_no}, key {path}: {msg}")
        }
        None => format!("line {line_no}: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_quoting_a_url_or_its_password_is_redacted() {
        let m = super::redact_message("error sending request for url (http://u:hunter2@h:9200/_bulk)", None);
        assert!(!m.contains("hunter2") && m.contains("http://u:***@h:9200/_bulk)"), "{m}");
        let m = super::redact_message("WRONGPASS invalid password hunter2 for user", Some("redis://u:hunter2@h:6379"));
        assert_eq!(m, "WRONGPASS invalid password *** for user");
    }

    use super::*;

    #[test]
    fn redacts_passwords_and_secret_query_values() {
        assert_eq!(redact_url("postgres://app:hunter2@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("redis://:hunter2@r:6379/0"), "redis://:***@r:6379/0");
        let r = redact_url("postgres://db/x?sslmode=require&password=hunter2");
        assert!(!r.contains("hunter2") && r.contains("sslmode=require"), "{r}");
        assert_eq!(redact_url("hunter2"), "<unparseable URL>");
    }

    #[test]
    fn durations_parse_and_reject_clearly() {
        assert_eq!("250ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(250));
        assert_eq!("2m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(120));
        assert_eq!("1m30s".parse::<HumanDuration>().unwrap().0, Duration::from_secs(90));
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "1m 30s");
        let no_unit = "5".parse::<HumanDuration>().unwrap_err();
        assert!(no_unit.contains("unit") && no_unit.contains("1m30s"), "{no_unit}");
        assert!("fast".parse::<HumanDuration>().unwrap_err().contains("not a duration"));
        // Too large for a Duration: refused, not wrapped around.
        assert!("99999999999999999999h".parse::<HumanDuration>().unwrap_err().contains("not a duration"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("index_alias = \"s\"\n[sync]\nbatch_sise = 3\n").unwrap_err();
        assert!(err.message().contains("batch_sise"), "{}", err.message());
    }

    #[test]
    fn parse_errors_name_the_key_but_never_quote_the_line() {
        let text = "database_url = \"postgres://u:hunter2@db/x\"\n[worker]\nconcurrency = -1\n";
        let e = toml::from_str::<Config>(text).unwrap_err();
        let m = scrub_toml_error(text, &e);
        assert!(m.contains("line 3, key worker.concurrency") && m.contains("-1"), "{m}");
        let text = "[sync]\nbatch_size = \"postgres://u:hunter2@db/x\"\n";
        let m = scrub_toml_error(text, &toml::from_str::<Config>(text).unwrap_err());
        assert!(m.contains("sync.batch_size") && !m.contains("hunter2"), "{m}");
    }

    #[test]
    fn validation_names_the_field() {
        let c = Config { redis_url: Some(Secret::new("http://x:6379")), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("REDIS_URL"));
        let mut c = Config::default();
        c.sync.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("sync.batch_size"));
        let c = Config {
            database_url: Some(Secret::new("postgres://u:hunter2@db/x")),
            elasticsearch_url: Some(Secret::new("not a url hunter2")),
            ..Config::default()
        };
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("ELASTICSEARCH_URL") && !msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn elasticsearch_url_may_list_several_nodes() {
        let with = |list: &str| Config { elasticsearch_url: Some(Secret::new(list)), ..Config::default() }.validate();
        with("http://a:9200, http://b:9200,https://u:p@c:9200").unwrap();
        let msg = with("http://a:9200,redis://b:6379").unwrap_err().to_string();
        assert!(msg.contains("ELASTICSEARCH_URL") && msg.contains("several nodes"), "{msg}");
        assert!(with(" , ").unwrap_err().to_string().contains("lists no URL"));
        assert_eq!(split_urls("http://a:9200, http://b:9200,"), ["http://a:9200", "http://b:9200"]);
        assert_eq!(redact_urls("http://u:hunter2@a:9200,http://b:9200"), "http://u:***@a:9200/,http://b:9200/");
        let c = Config {
            elasticsearch_url: Some(Secret::new("http://a:9200,http://u:hunter2@b:9200")),
            elasticsearch_api_key: Some(Secret::new("k")),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("already carries a password"));
    }

    #[test]
    fn environment_overrides_file() {
        let mut c: Config = toml::from_str("redis_url = \"redis://file:6379\"").unwrap();
        c.apply_env(|k| (k == "REDIS_URL").then(|| "redis://env:6379".to_string()));
        assert_eq!(c.redis_url.unwrap().expose(), "redis://env:6379");
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}

//! One benchmark's isolated world on the real services, like tests/support does for tests:
//! its own database (`tidemark_bench_<kind>_<id>`), index alias (`bench_<kind>_<id>`) and
//! Redis namespace, tidemark processes started from the release binary, and a cleanup
//! that drops all of it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tidemark::{
    config::{Config, Secret},
    search::Search,
    sync::{DrainReport, Syncer},
};

use crate::progress;

/// The services bench.sh started (or found): from the environment.
#[derive(Clone, Debug)]
pub struct Services {
    pub database_url: String,
    pub redis_url: String,
    pub es_url: String,
}

impl Services {
    pub fn from_env() -> Result<Services> {
        let get = |k: &str| {
            std::env::var(k).with_context(|| {
                format!("{k} is not set: run the benchmarks with deploy/local/bench.sh, which starts the services and sets it")
            })
        };
        Ok(Services { database_url: get("DATABASE_URL")?, redis_url: get("REDIS_URL")?, es_url: get("ELASTICSEARCH_URL")? })
    }
}

/// The release binary built next to this harness (`cargo bench` builds it).
pub fn tidemark_bin() -> PathBuf {
    std::env::var_os("TIDEMARK_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tidemark")))
}

pub fn with_db(base: &str, db: &str) -> String {
    let mut u = url::Url::parse(base).expect("DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

pub struct BenchEnv {
    pub kind: String,
    pub db_name: String,
    pub database_url: String,
    pub alias: String,
    pub namespace: String,
    pub pool: PgPool,
    pub services: Services,
    pub http: reqwest::Client,
    pub log_dir: PathBuf,
    /// Documents seeded: students, or another model's root rows (experiments).
    pub students: u64,
    /// The model its tidemark runs (`students`, or a shipped model's name).
    pub model: String,
    /// The search server given to the tidemark processes, when not the real one.
    pub proc_es_url: Option<String>,
    procs: Vec<Proc>,
}

impl BenchEnv {
    pub async fn new(services: &Services, kind: &str, log_dir: PathBuf) -> Result<BenchEnv> {
        BenchEnv::with_model(services, kind, log_dir, "students").await
    }

    /// Same, for a shipped model (`students`, `refinebio`): its tables (the seeder's
    /// schema) are created before the migration installs their capture.
    pub async fn with_model(services: &Services, kind: &str, log_dir: PathBuf, model: &str) -> Result<BenchEnv> {
        let id = format!("{:x}{:04x}", std::process::id() & 0xffff, rand::random::<u16>());
        let db_name = format!("tidemark_bench_{kind}_{id}");
        let admin = PgPoolOptions::new().max_connections(1).connect(&services.database_url).await.context("connect to DATABASE_URL")?;
        sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&admin).await.context("create the benchmark database")?;
        admin.close().await;
        let database_url = with_db(&services.database_url, &db_name);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(60))
            .connect(&database_url)
            .await
            .context("connect to the benchmark database")?;
        match model {
            "students" => tidemark_seeds::students_schema(&pool).await.context("the students' tables")?,
            "refinebio" => {
                sqlx::raw_sql(tidemark_seeds::refinebio::SCHEMA).execute(&pool).await.context("refinebio's tables")?;
            }
            other => bail!("no schema for model {other:?} in the benchmarks"),
        }
        let loaded = tidemark::model::Model::load(model).map_err(|e| anyhow::anyhow!("{e}"))?;
        tidemark::db::migrate(&pool, &loaded).await.context("migrations")?;
        std::fs::create_dir_all(&log_dir)?;
        Ok(BenchEnv {
            kind: kind.to_string(),
            db_name,
            database_url,
            alias: format!("bench_{kind}_{id}"),
            namespace: format!("bench_{kind}_{id}"),
            pool,
            services: services.clone(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?,
            log_dir,
            students: 0,
            model: model.to_string(),
            proc_es_url: None,
            procs: Vec::new(),
        })
    }

    /// The tutorial's way, the per-document baseline: for each of `ids`, read its document
    /// (one query, as an ORM `save()` does) and send one `PUT /<index>/_doc/<id>` with it,
    /// in order.
    pub async fn per_document(&self, es_url: &str, index: &str, ids: &[String]) -> Result<()> {
        let model = tidemark::model::Model::load(&self.model).map_err(|e| anyhow::anyhow!("{e}"))?;
        for id in ids {
            let docs = tidemark::pipeline::load::load(&self.pool, &model, std::slice::from_ref(id)).await?;
            let tidemark::pipeline::Op::Index(doc) = &docs[0].1 else { continue };
            let resp = self
                .http
                .put(format!("{es_url}/{index}/_doc/{id}"))
                .header("content-type", "application/json")
                .body(doc.json().to_string())
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("baseline request for {} document {id} answered {}", self.model, resp.status());
            }
        }
        Ok(())
    }

    /// The configuration tidemark would build from this environment, pointed at `es_url`.
    pub fn config(&self, es_url: &str, tweak: impl FnOnce(&mut Config)) -> Arc<Config> {
        let mut c = Config::default();
        c.database_url = Some(Secret::new(self.database_url.clone()));
        c.redis_url = Some(Secret::new(self.services.redis_url.clone()));
        c.elasticsearch_url = Some(Secret::new(es_url.to_string()));
        c.index_alias = self.alias.clone();
        c.queue_namespace = self.namespace.clone();
        c.set_model(self.model.clone());
        tweak(&mut c);
        c.validate().expect("benchmark configuration is valid");
        Arc::new(c)
    }

    /// In-process services (as a worker process builds them) against `es_url`.
    pub fn services(&self, es_url: &str, tweak: impl FnOnce(&mut Config)) -> tidemark::services::Services {
        let config = self.config(es_url, tweak);
        let search = Search::new(&config).expect("search client");
        tidemark::services::Services::new(self.pool.clone(), search, config)
    }

    /// An in-process syncer (no queue) against `es_url`.
    pub fn engine(&self, es_url: &str, tweak: impl FnOnce(&mut Config)) -> Syncer {
        Syncer::new(self.services(es_url, tweak))
    }

    pub fn search(&self, es_url: &str) -> Search {
        Search::new(&self.config(es_url, |_| {})).expect("search client")
    }

    /// Seeds `n` students (tidemark_seeds; the capture triggers mark every one), then
    /// VACUUM ANALYZE, as any database that has been running a while would be.
    pub async fn seed(&mut self, n: u64) -> Result<Duration> {
        let t = Instant::now();
        let r = tidemark_seeds::seed(&self.pool, &tidemark_seeds::SeedOptions { students: n, seed: 1 }).await?;
        let seeded = t.elapsed();
        sqlx::raw_sql("VACUUM ANALYZE").execute(&self.pool).await?;
        self.students = r.students;
        progress!(
            "{}: seeded {} students ({} enrollments) in {:.1}s, vacuumed in {:.1}s",
            self.kind,
            r.students,
            r.enrollments,
            seeded.as_secs_f64(),
            (t.elapsed() - seeded).as_secs_f64()
        );
        Ok(seeded)
    }

    /// Seeds `n` refine.bio experiments (tidemark_seeds::refinebio; the capture logs every
    /// one), then VACUUM ANALYZE.
    pub async fn seed_refinebio(&mut self, n: u64) -> Result<Duration> {
        let t = Instant::now();
        let r = tidemark_seeds::refinebio::seed(&self.pool, &tidemark_seeds::refinebio::Options { experiments: n, seed: 1 }).await?;
        let seeded = t.elapsed();
        sqlx::raw_sql("VACUUM ANALYZE").execute(&self.pool).await?;
        self.students = r.experiments;
        progress!(
            "{}: seeded {} experiments ({} samples, {} experiment-sample pairs) in {:.1}s",
            self.kind,
            r.experiments,
            r.samples,
            r.pairs,
            seeded.as_secs_f64()
        );
        Ok(seeded)
    }

    pub async fn sql(&self, q: &str) -> Result<()> {
        sqlx::raw_sql(q).execute(&self.pool).await.with_context(|| q.to_string())?;
        Ok(())
    }

    pub async fn scalar(&self, q: &str) -> Result<i64> {
        sqlx::query_scalar(q).fetch_one(&self.pool).await.with_context(|| q.to_string())
    }

    /// Two `bigint` columns of one row.
    pub async fn scalar2(&self, q: &str) -> Result<(i64, i64)> {
        sqlx::query_as(q).fetch_one(&self.pool).await.with_context(|| q.to_string())
    }

    /// Empties what the capture writes: the writers' change log, student marks and
    /// university/course/set marks.
    pub async fn clear_marks(&self) -> Result<()> {
        self.sql("TRUNCATE tidemark.changes, tidemark.marks, tidemark.parents").await
    }

    /// (changes outstanding for students — marks and log rows not yet absorbed, as
    /// `tidemark.outstanding` lists them; a student may count twice —, university/course/set
    /// marks) still waiting. (0, 0): every change synced.
    pub async fn marks_left(&self) -> Result<(i64, i64)> {
        Ok(sqlx::query_as("SELECT (SELECT count(*) FROM tidemark.outstanding), (SELECT count(*) FROM tidemark.parents)")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Creates the physical index and the alias on the search server *without* marking
    /// every student (what `index::ensure` does for a first index), so a benchmark can
    /// choose which students to index.
    pub async fn create_index_unmarked(&self, es_url: &str) -> Result<String> {
        let search = self.search(es_url);
        let name = format!("{}_1", self.alias);
        let body = serde_json::to_vec(&tidemark::document::build_body(&Default::default(), &tidemark::model::Model::students()))?;
        let reply = search.request(elasticsearch::http::Method::Put, &format!("/{name}"), Some(body), false).await?;
        if !(200..300).contains(&reply.status) {
            bail!("creating {name}: HTTP {}: {}", reply.status, String::from_utf8_lossy(&reply.body));
        }
        search
            .json(
                elasticsearch::http::Method::Post,
                "/_aliases",
                Some(&json!({"actions": [{"add": {"index": name, "alias": self.alias}}]})),
            )
            .await?;
        Ok(name)
    }

    /// The first index of every student, as a first run does: no alias yet, so a full
    /// build (as the first step would start by itself), drained by `parallel` engines. The
    /// seed's marks are dropped first (the build reads every student anyway). Returns the
    /// seconds it took.
    pub async fn first_index(&self, parallel: usize) -> Result<f64> {
        self.clear_marks().await?;
        let es = self.services.es_url.clone();
        let t = Instant::now();
        start_build(self, &es, "benchmark: first index").await?;
        self.drain(&es, parallel, |_| {}).await?;
        let secs = t.elapsed().as_secs_f64();
        let n = self.count(json!({"match_all": {}})).await?;
        if n != self.students {
            bail!("the first index holds {n} documents for {} rows", self.students);
        }
        progress!("{}: first index of {} documents in {:.1}s ({:.0} docs/s)", self.kind, self.students, secs, self.students as f64 / secs);
        Ok(secs)
    }

    /// Drains every mark with `parallel` in-process engines against `es_url`.
    pub async fn drain(&self, es_url: &str, parallel: usize, tweak: impl Fn(&mut Config)) -> Result<DrainReport> {
        let engines: Vec<Syncer> = (0..parallel).map(|_| self.engine(es_url, &tweak)).collect();
        let mut total = DrainReport::default();
        for _round in 0..5 {
            let reports = futures::future::try_join_all(engines.iter().map(|e| e.drain())).await?;
            for r in reports {
                total.batches += r.batches;
                total.indexed += r.indexed;
                total.deleted += r.deleted;
                total.dead += r.dead;
                total.fanned_out += r.fanned_out;
                total.reindexed += r.reindexed;
            }
            if self.marks_left().await? == (0, 0) && tidemark::catalog::active(&self.pool, &self.alias).await?.is_none() {
                return Ok(total);
            }
        }
        bail!("marks remain after draining: {:?}", self.marks_left().await?)
    }

    // ----------------------------------------------------------------- search server

    /// Sends pre-encoded `_bulk` bodies to the search server, `parallel` requests in flight,
    /// and fails on any error item: the server's own pace, with no database and no tidemark.
    pub async fn send_bulk_bodies(&self, bodies: Vec<Vec<u8>>, parallel: usize) -> Result<()> {
        let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
        let url = format!("{}/_bulk", self.services.es_url);
        let senders = (0..parallel).map(|_| {
            let (queue, http, url) = (queue.clone(), self.http.clone(), url.clone());
            async move {
                loop {
                    let Some(b) = queue.lock().unwrap().pop() else { return Ok::<_, anyhow::Error>(()) };
                    let resp = http.post(&url).header("content-type", "application/x-ndjson").body(b).send().await?;
                    let status = resp.status();
                    let v: Value = resp.json().await?;
                    if !status.is_success() || v["errors"] == serde_json::json!(true) {
                        bail!("bulk: {status} {}", v.to_string().chars().take(300).collect::<String>());
                    }
                }
            }
        });
        futures::future::try_join_all(senders).await?;
        Ok(())
    }

    pub async fn es(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut r = self.http.request(method, format!("{}{path}", self.services.es_url));
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await.with_context(|| format!("search server: {path}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("search server answered {path} with {status}: {v}");
        }
        Ok(v)
    }

    /// Documents behind the alias matching `query`.
    pub async fn count(&self, query: Value) -> Result<u64> {
        let v = self.es(reqwest::Method::POST, &format!("/{}/_count", self.alias), Some(&json!({"query": query}))).await?;
        v["count"].as_u64().context("no count in the answer")
    }

    pub async fn index_name(&self) -> Result<String> {
        let v = self.es(reqwest::Method::GET, &format!("/_alias/{}", self.alias), None).await?;
        v.as_object().and_then(|o| o.keys().next().cloned()).context("alias has no index")
    }

    // ------------------------------------------------------------------- processes

    /// Starts `tidemark <args>` with this environment; its stderr goes to a log file.
    pub fn spawn(&mut self, args: &[&str], log_name: &str) -> Result<u32> {
        let log_path = self.log_dir.join(format!("{}-{log_name}.log", self.kind));
        // Appended, with a header: a benchmark that starts its processes twice keeps both logs.
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        {
            use std::io::Write;
            writeln!(log, "=== {} tidemark {}", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"), args.join(" "))?;
        }
        let child = Command::new(tidemark_bin())
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.services.redis_url)
            .env("ELASTICSEARCH_URL", self.proc_es_url.as_ref().unwrap_or(&self.services.es_url))
            .env("TIDEMARK_INDEX_ALIAS", &self.alias)
            .env("TIDEMARK_QUEUE_NAMESPACE", &self.namespace)
            .env("TIDEMARK_MODEL", &self.model)
            // BENCH_PROCESS_LOG overrides the processes' log filter (e.g. `debug` to trace a slow run).
            .env(
                "RUST_LOG",
                std::env::var("BENCH_PROCESS_LOG")
                    .unwrap_or_else(|_| "info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_redis=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} {args:?} (build it with `cargo build --release`)", tidemark_bin().display()))?;
        let pid = child.id();
        self.procs.push(Proc { child, log: log_path });
        Ok(pid)
    }

    /// A scheduler and two workers (each with its default concurrency), as the demo runs.
    pub async fn start_deployment(&mut self) -> Result<Vec<u32>> {
        self.start_deployment_with(None).await
    }

    /// Same, with a TOML configuration file given to every process (`--config`).
    pub async fn start_deployment_with(&mut self, toml: Option<&str>) -> Result<Vec<u32>> {
        let mut base: Vec<String> = Vec::new();
        if let Some(text) = toml {
            let path = self.log_dir.join(format!("{}-config.toml", self.kind));
            std::fs::write(&path, text)?;
            base = vec!["--config".into(), path.display().to_string()];
        }
        let with = |extra: &[&str]| -> Vec<String> { base.iter().cloned().chain(extra.iter().map(|s| s.to_string())).collect() };
        let (a, b, c) = (with(&["scheduler", "--interval", "5s"]), with(&["worker"]), with(&["worker"]));
        let pids = vec![
            self.spawn(&a.iter().map(String::as_str).collect::<Vec<_>>(), "scheduler")?,
            self.spawn(&b.iter().map(String::as_str).collect::<Vec<_>>(), "worker-1")?,
            self.spawn(&c.iter().map(String::as_str).collect::<Vec<_>>(), "worker-2")?,
        ];
        // Ready when all three watch the mark sequence (each has its `tidemark wakeup`
        // connection, src/process/wakeup.rs) and both workers say they started.
        let start = Instant::now();
        loop {
            let listening: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tidemark wakeup'",
            )
            .fetch_one(&self.pool)
            .await?;
            let started = self.procs.iter().filter(|p| std::fs::read_to_string(&p.log).is_ok_and(|l| l.contains("worker started"))).count();
            if listening >= 3 && started >= 2 {
                break;
            }
            for p in &mut self.procs {
                if let Some(status) = p.child.try_wait()? {
                    bail!("{} exited ({status}); see {}", p.log.display(), p.log.display());
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "scheduler and workers not ready within 60 s (watching the sequence: {listening}, started: {started}); see {}",
                    self.log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(pids)
    }

    /// Lines of the processes' logs logged at or after `since` that contain one of
    /// `patterns`: (seconds after `since`, process log name, the line without colours).
    pub fn log_events(&self, since: chrono::DateTime<chrono::Utc>, patterns: &[&str]) -> Vec<(f64, String, String)> {
        let mut out = Vec::new();
        for p in &self.procs {
            let name = p.log.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let Ok(text) = std::fs::read_to_string(&p.log) else { continue };
            for line in text.lines() {
                let clean = strip_ansi(line);
                if !patterns.iter().any(|pat| clean.contains(pat)) {
                    continue;
                }
                let Some(ts) = clean.split_whitespace().next().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) else { continue };
                let dt = (ts.with_timezone(&chrono::Utc) - since).num_microseconds().unwrap_or(0) as f64 / 1e6;
                if dt >= 0.0 {
                    out.push((dt, name.clone(), clean));
                }
            }
        }
        out.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        out
    }

    /// SIGTERM every process started, and waits (bounded) for them to exit.
    pub async fn stop_processes(&mut self) {
        for p in &self.procs {
            let _ = Command::new("kill").arg("-TERM").arg(p.child.id().to_string()).status();
        }
        let start = Instant::now();
        for p in &mut self.procs {
            while matches!(p.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(45) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        self.procs.clear();
    }

    /// Drops the processes, indices, Redis keys and database (best effort).
    pub async fn cleanup(mut self) {
        self.stop_processes().await;
        let _ = self.es(reqwest::Method::DELETE, &format!("/{}_*", self.alias), None).await;
        self.pool.close().await;
        if let Ok(client) = redis::Client::open(self.services.redis_url.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> =
                    redis::cmd("KEYS").arg(format!("{}:*", self.namespace)).query_async(&mut conn).await.unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
            }
        }
        if let Ok(admin) = PgPoolOptions::new().max_connections(1).connect(&self.services.database_url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name)).execute(&admin).await;
        }
    }
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` every `every` until it returns Some or `limit` passes.
pub async fn poll<T, F, Fut>(what: &str, every: Duration, limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Starts a full build of `env`'s alias on `es_url` (what `tidemark admin reindex` does),
/// chunks of 10,000 students, then `ANALYZE tidemark.reindex_chunks`.
///
/// The ANALYZE was a workaround for a claim bug (without statistics PostgreSQL re-ran
/// `claim_chunk`'s `LIMIT 1 … FOR UPDATE SKIP LOCKED` sub-select for every chunk row, so one
/// claim leased every chunk); the claims are fixed (e941e1c) and it is now a harmless
/// no-op kept for older checkouts. The reindex benchmark's `claim_chunk` canary keeps
/// checking for the bug.
pub async fn start_build(env: &BenchEnv, es_url: &str, reason: &str) -> Result<tidemark::catalog::Build> {
    let b = tidemark::reindex::start(&env.services(es_url, |_| {}), 10_000, reason).await?;
    env.sql("ANALYZE tidemark.reindex_chunks").await?;
    Ok(b)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … letter
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

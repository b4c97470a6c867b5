//! Test support: every test gets its own database, Redis namespace and index alias on the
//! real services that `deploy/local/test.sh` provides, dropped with its [`Env`] (a panicking
//! test's too), and an *independent* oracle: the expected document of a student is built
//! here in SQL, not with tidemark's own code.
//!
//! Tests reach tidemark's library through these helpers where they can (`drain`, `services`,
//! `build`, ...), so a change of the library's API touches few lines.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod foreign;
mod process;
pub mod web;

#[allow(unused_imports)]
pub use process::{free_port, Proc, Ran, RedisServer, SlowLink};

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    future::Future,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use fault_proxy::FaultProxy;
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tidemark::{
    catalog::Build,
    config::{Config, Secret},
    pipeline::fanout,
    search::Search,
    services::Services,
    sync::{DrainReport, Syncer},
};

pub fn service_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `deploy/local/test.sh`, which starts PostgreSQL, Redis and the OpenSearch node and sets it")
    })
}

/// This suite run's id (`deploy/local/test.sh` sets `TIDEMARK_TEST_RUN`): every index,
/// alias and Redis namespace a test creates starts with `<run>-`, every database with
/// `tidemark_test_<run>_`, so test.sh can sweep what a killed run left, and only that.
pub fn run_id() -> String {
    std::env::var("TIDEMARK_TEST_RUN").unwrap_or_else(|_| format!("r{:08x}", std::process::id()))
}

/// A name of this run no other test of it uses: `<run>-<6 hex>`.
pub fn unique() -> String {
    format!("{}-{:06x}", run_id(), rand::random::<u32>() & 0xffffff)
}

/// The database URL with its path replaced by `db`.
fn with_db(base: &str, db: &str) -> String {
    let mut u = url::Url::parse(base).expect("DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// What a check given to [`eventually`] answers: `bool`, `Option<T>` (done, with a value) or
/// `Result<T, String>` (not yet, and why: the last reason is in the timeout's message).
pub trait Outcome {
    type Value;
    fn into_result(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T> Outcome for Result<T, String> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self
    }
}

/// Polls `check` (every 100 ms) until it is done, and returns its value; panics once
/// `timeout` has passed. The one way the tests wait for something.
pub async fn eventually<O, F, Fut>(what: &str, timeout: Duration, mut check: F) -> O::Value
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let start = Instant::now();
    loop {
        let why = match check().await.into_result() {
            Ok(v) => return v,
            Err(why) => why,
        };
        if start.elapsed() >= timeout {
            let why = if why.is_empty() { why } else { format!("; last: {why}") };
            panic!("timed out after {timeout:?} waiting for: {what}{why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `work` on a thread of its own, on a runtime of its own, and waits for it at most
/// `limit`: what a `Drop` can do in every test (it cannot await, and blocking the test's
/// runtime on its own tasks could hang a single-threaded one). Never panics.
pub fn run_aside(what: &str, limit: Duration, work: impl Future<Output = ()> + Send + 'static) {
    let (done, wait) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name(what.into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(work),
            Err(e) => eprintln!("no runtime: {e}"),
        }
        let _ = done.send(());
    });
    if spawned.is_err() || wait.recv_timeout(limit).is_err() {
        eprintln!("{what}: not done within {limit:?} (deploy/local/test.sh sweeps what is left)");
    }
}

/// How a test database is set up.
enum Setup {
    /// The model's tables (this SQL), then tidemark's `migrate`.
    Current(String),
    /// An installation of tidemark 0.9, with its sqlx migrations below this number.
    Before(u32),
}

pub struct Env {
    pub db_name: String,
    pub database_url: String,
    pub redis_url: String,
    pub es_url: String,
    pub alias: String,
    pub namespace: String,
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub search: Search,
    /// Files of this test (config files, logs), removed with it.
    pub dir: PathBuf,
    admin_url: String,
    http: reqwest::Client,
}

impl Env {
    pub async fn new() -> Env {
        Env::with_config(|_| {}).await
    }

    pub async fn with_config(tweak: impl FnOnce(&mut Config)) -> Env {
        Env::create(tweak, Setup::Current(tidemark_seeds::STUDENTS_SCHEMA.to_string())).await
    }

    /// An environment for another model: `spec` (a shipped model's name or a model file),
    /// its tables created by `schema` before `migrate` installs the capture.
    pub async fn with_model(spec: &str, schema: &str, tweak: impl FnOnce(&mut Config)) -> Env {
        let spec = spec.to_string();
        Env::create(
            move |c| {
                c.set_model(spec);
                tweak(c);
            },
            Setup::Current(schema.to_string()),
        )
        .await
    }

    /// An environment of the shipped refinebio model (seeds/refinebio), its tables created.
    pub async fn refinebio() -> Env {
        Env::with_model("refinebio", tidemark_seeds::refinebio::SCHEMA, |_| {}).await
    }

    /// With the [`small_directory`] (MIT and KPI, CS101 and MATH201) inserted.
    pub async fn with_directory() -> Env {
        let env = Env::new().await;
        small_directory(&env).await;
        env
    }

    /// An environment whose database has only the migrations numbered below `first_new`
    /// (an installation of an earlier tidemark, to be upgraded by `tidemark::db::migrate`).
    pub async fn before_migration(first_new: u32) -> Env {
        Env::create(|_| {}, Setup::Before(first_new)).await
    }

    /// `students` seeded students (and the seed's universities, courses, enrollments), all
    /// indexed by a first drain.
    pub async fn seeded(students: u64) -> Env {
        Env::seeded_with(students, |_| {}).await
    }

    pub async fn seeded_with(students: u64, tweak: impl FnOnce(&mut Config)) -> Env {
        let env = Env::with_config(tweak).await;
        env.seed(students).await;
        env.drain().await;
        env
    }

    /// An environment whose engine (`engine`, `services`; not `command`) reaches the search
    /// server through a fault proxy, with no faults set yet.
    pub async fn behind_proxy(tweak: impl FnOnce(&mut Config)) -> (Env, FaultProxy) {
        let proxy = FaultProxy::start(&service_url("ELASTICSEARCH_URL")).await;
        let env = Env::with_config(|c| {
            c.elasticsearch_url = Some(Secret::new(proxy.url()));
            tweak(c);
        })
        .await;
        (env, proxy)
    }

    async fn create(tweak: impl FnOnce(&mut Config), setup: Setup) -> Env {
        let admin_url = service_url("DATABASE_URL");
        let redis_url = service_url("REDIS_URL");
        let es_url = service_url("ELASTICSEARCH_URL");
        let id = unique();
        let db_name = format!("tidemark_test_{}", id.replace('-', "_"));
        let admin = PgPoolOptions::new().max_connections(1).connect(&admin_url).await.expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&admin).await.expect("create test database");
        admin.close().await;
        let dir = std::env::temp_dir().join(&db_name);
        std::fs::create_dir_all(&dir).unwrap();
        let database_url = with_db(&admin_url, &db_name);
        let pool = PgPoolOptions::new().max_connections(8).connect(&database_url).await.expect("connect to test database");
        let alias = format!("{id}-students");
        let mut config = Config::default();
        config.database_url = Some(Secret::new(database_url.clone()));
        config.redis_url = Some(Secret::new(redis_url.clone()));
        config.elasticsearch_url = Some(Secret::new(es_url.clone()));
        config.index_alias = alias.clone();
        config.queue_namespace = id.clone();
        // Small batches so tests exercise many batches; quick retries.
        config.sync.batch_size = 500;
        config.sync.backoff_base = "20ms".parse().unwrap();
        config.sync.backoff_cap = "500ms".parse().unwrap();
        config.sync.max_attempts = 8;
        // One local node: no replicas (a test that wants them says so).
        config.index.number_of_replicas = 0;
        tweak(&mut config);
        config.validate().expect("test config is valid");
        match setup {
            Setup::Current(schema) => {
                sqlx::raw_sql(&schema).execute(&pool).await.expect("the model's tables");
                tidemark::db::migrate(&pool, &config.model()).await.expect("migrations");
            }
            Setup::Before(first_new) => {
                // The sqlx migrations of tidemark 0.9 numbered below `first_new` (the student
                // directory's tables among them), applied as that version's `migrate` did.
                let older = dir.join("migrations");
                std::fs::create_dir_all(&older).unwrap();
                for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/migrations-0.9")).unwrap() {
                    let path = entry.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    if name.split('_').next().unwrap().parse::<u32>().unwrap() < first_new {
                        std::fs::copy(&path, older.join(&name)).unwrap();
                    }
                }
                sqlx::migrate::Migrator::new(older.as_path()).await.unwrap().run(&pool).await.expect("older migrations");
            }
        }
        let search = Search::new(&config).expect("search client");
        let http = reqwest::Client::new();
        Env { db_name, database_url, redis_url, es_url, alias, namespace: id, pool, config: Arc::new(config), search, dir, admin_url, http }
    }

    // -----------------------------------------------------------------------------------
    // tidemark, in process and as processes

    /// This test's services, as a process would build them (a new identity each call).
    pub fn services(&self) -> Services {
        Services::new(self.pool.clone(), self.search.clone(), self.config.clone())
    }

    pub fn services_with(&self, tweak: impl FnOnce(&mut Config)) -> Services {
        let mut c = (*self.config).clone();
        tweak(&mut c);
        Services::new(self.pool.clone(), Search::new(&c).unwrap(), Arc::new(c))
    }

    /// Services that reach the search server through `proxy`.
    pub fn services_via(&self, proxy: &FaultProxy) -> Services {
        self.services_with(|c| c.elasticsearch_url = Some(Secret::new(proxy.url())))
    }

    /// An in-process syncer without a queue (drains directly).
    pub fn engine(&self) -> Syncer {
        Syncer::new(self.services())
    }

    pub fn engine_with(&self, tweak: impl FnOnce(&mut Config)) -> Syncer {
        Syncer::new(self.services_with(tweak))
    }

    /// A worker of its own claims the next parent mark (a lease of a minute), expands one
    /// chunk of `chunk` documents of it, then dies, its lease left to run out; the step it took.
    pub async fn expand_a_chunk_and_die(&self, chunk: i64) -> fanout::Step {
        let (crashed, lease) = (self.engine(), Duration::from_secs(60));
        let mut parent = fanout::claim_parent(&self.pool, crashed.owner(), lease).await.expect("claim").expect("a parent mark");
        fanout::expand_step(&self.pool, &crashed.services.model, crashed.owner(), lease, &mut parent, chunk).await.expect("a step")
    }

    /// Syncs everything outstanding, in process.
    pub async fn drain(&self) -> DrainReport {
        self.engine().drain().await.expect("drain")
    }

    /// Syncs everything outstanding, in process, then refreshes the index: what was written
    /// is searchable.
    pub async fn drain_and_refresh(&self) -> DrainReport {
        let report = self.drain().await;
        self.refresh().await;
        report
    }

    /// A worker running in this process (`tidemark::process::worker`) with `services`.
    pub fn start_worker(&self, services: Services, concurrency: usize) -> Worker {
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task =
            tokio::spawn(async move { tidemark::process::worker::run(services, concurrency, shutdown).await.map_err(|e| e.to_string()) });
        Worker { stop, task }
    }

    /// This test's queue (the Redis namespace).
    pub async fn queue(&self) -> tidemark::workers::Queue {
        tidemark::workers::Queue::connect(&self.redis_url, &self.namespace, str::to_string).await.expect("the queue")
    }

    /// What `admin status` reports (without a queue).
    pub async fn status(&self) -> tidemark::admin::Status {
        tidemark::admin::status(&self.services(), Err("not asked".into())).await.expect("status")
    }

    /// Moves the writers' log into marks, as every claim does first; the rows moved.
    pub async fn absorb(&self) -> u64 {
        tidemark::pipeline::claim::absorb(&self.pool, 10_000).await.expect("absorb")
    }

    /// A fault proxy in front of this test's search server (for the processes and engines
    /// told to use it).
    pub async fn proxy(&self) -> FaultProxy {
        FaultProxy::start(&self.es_url).await
    }

    /// Creates the (empty) index behind the alias, as the first sync on an empty database
    /// does: a build with nothing to copy, promoted at once.
    pub async fn create_index(&self) {
        self.drain().await;
        assert_eq!(self.alias_targets().await.len(), 1, "the alias exists");
    }

    /// Starts a full reindex (as `admin reindex` does) in chunks of `chunk_size` students.
    pub async fn start_reindex(&self, chunk_size: u32) -> Build {
        tidemark::reindex::start(&self.services(), chunk_size, "test").await.expect("start a reindex")
    }

    /// The build `id` as `tidemark.reindexes` records it.
    pub async fn build(&self, id: i64) -> Build {
        tidemark::catalog::get(&self.pool, id).await.expect("the build's row")
    }

    /// The `tidemark` binary with this test's services in its environment.
    pub fn command(&self) -> Command {
        self.command_of(env!("CARGO_BIN_EXE_tidemark"))
    }

    /// `binary` (e.g. a private copy of tidemark) with this test's services in its environment.
    pub fn command_of(&self, binary: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(binary);
        c.env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("ELASTICSEARCH_URL", &self.es_url)
            .env("TIDEMARK_INDEX_ALIAS", &self.alias)
            .env("TIDEMARK_QUEUE_NAMESPACE", &self.namespace)
            .env("RUST_LOG", "info");
        process::die_with_parent(&mut c);
        c
    }

    /// Starts a long-running subcommand (worker, scheduler) whose stderr is captured.
    pub fn spawn(&self, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Proc {
        let mut c = self.command();
        c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        tweak(&mut c);
        Proc::spawn(c)
    }

    /// Runs a command to its end.
    pub fn run(&self, args: &[&str]) -> Ran {
        self.run_with(args, &[])
    }

    /// Runs a command to its end with these environment variables set.
    pub fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Ran {
        let mut c = self.command();
        c.args(args).envs(vars.iter().copied());
        Ran::from(c.output().expect("run tidemark"))
    }

    /// `admin status --json`, which must succeed.
    pub async fn status_json(&self) -> Value {
        let out = self.run(&["admin", "status", "--json"]);
        assert!(out.ok(), "{out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("admin status --json: {e}: {out:?}"))
    }

    /// Writes a file into this test's directory (removed with it) and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    // -----------------------------------------------------------------------------------
    // The database

    pub async fn sql(&self, q: &str) {
        sqlx::raw_sql(q).execute(&self.pool).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    }

    pub async fn scalar_i64(&self, q: &str) -> i64 {
        sqlx::query_scalar(q).fetch_one(&self.pool).await.unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    /// Every row of the query `q`, each as a `T` (a tuple of its columns).
    pub async fn rows<T>(&self, q: &str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        sqlx::query_as(q).fetch_all(&self.pool).await.unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    /// Seeds `students` students with the seeds crate (a fixed seed).
    pub async fn seed(&self, students: u64) -> tidemark_seeds::SeedReport {
        tidemark_seeds::seed(&self.pool, &tidemark_seeds::SeedOptions { students, seed: 7 }).await.expect("seed")
    }

    /// Inserts students 1..=n (`N<id>`, `L`, 20, `FR`), without a university.
    pub async fn add_students(&self, n: i64) {
        self.add_students_at(n, "NULL").await;
    }

    /// Inserts students 1..=n (`N<id>`, `L`, 20, `FR`) at `university`, SQL over the id `g`
    /// (`1`, `1 + g % 2`).
    pub async fn add_students_at(&self, n: i64, university: &str) {
        self.sql(&format!(
            "INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id)
             SELECT g, 'N' || g, 'L', 20, 'FR', {university} FROM generate_series(1, {n}) g"
        ))
        .await;
    }

    /// Students with a change not yet acknowledged (marked or in the writers' log).
    pub async fn outstanding(&self) -> i64 {
        self.scalar_i64("SELECT count(DISTINCT key) FROM tidemark.outstanding").await
    }

    pub async fn dead_letters(&self) -> i64 {
        self.scalar_i64("SELECT count(*) FROM tidemark.dead_letters").await
    }

    /// Whether everything is in the index: no marks, no fan-outs, no build under way, and
    /// the alias exists.
    pub async fn synced(&self) -> bool {
        self.scalar_i64(
            "SELECT (SELECT count(*) FROM tidemark.outstanding) + (SELECT count(*) FROM tidemark.parents)
                  + (SELECT count(*) FROM tidemark.reindexes WHERE state IN ('building', 'verifying'))
                  + (SELECT count(*) FROM tidemark.resync_requests)",
        )
        .await
            == 0
            && !self.search.alias_targets(&self.alias).await.unwrap_or_default().is_empty()
    }

    /// The document tidemark must have indexed for each existing student, built in SQL
    /// independently of tidemark's loader.
    pub async fn expected_docs(&self) -> BTreeMap<i64, Value> {
        let rows: Vec<(i64, Value)> = sqlx::query_as(
            r#"SELECT s.id, json_build_object(
                   'first_name', s.first_name,
                   'last_name', s.last_name,
                   'age', s.age,
                   'year_in_school', s.year_in_school::text,
                   'university', CASE WHEN u.id IS NULL THEN NULL ELSE json_build_object('id', u.id, 'name', u.name) END,
                   'course_names', coalesce((SELECT json_agg(n ORDER BY n COLLATE "C")
                                               FROM (SELECT DISTINCT c.name AS n FROM student_courses sc
                                                      JOIN courses c ON c.id = sc.course_id WHERE sc.student_id = s.id) x),
                                            '[]'::json),
                   'name_complete', json_build_object('input', json_build_array(s.first_name, s.last_name, s.first_name || ' ' || s.last_name)),
                   'id', s.id
               )::jsonb::json
               FROM students s LEFT JOIN universities u ON u.id = s.university_id"#,
        )
        .fetch_all(&self.pool)
        .await
        .expect("expected documents");
        rows.into_iter().collect()
    }

    /// refinebio's document of every experiment (an environment of [`Env::refinebio`]), by
    /// id, built here from the tables in Rust, independently of tidemark's document query.
    pub async fn expected_experiments(&self) -> BTreeMap<i64, Value> {
        let experiments: Vec<(i64, String, String, String, String, bool)> =
            sqlx::query_as("SELECT id, accession_code, title, description, technology, is_public FROM experiments")
                .fetch_all(&self.pool)
                .await
                .expect("experiments");
        let links: Vec<(i64, i64, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT es.experiment_id, s.id, o.name, p.name FROM experiment_samples es JOIN samples s ON s.id = es.sample_id
               LEFT JOIN organisms o ON o.id = s.organism_id LEFT JOIN platforms p ON p.id = s.platform_id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("experiment samples");
        type Sets = (BTreeSet<i64>, BTreeSet<String>, BTreeSet<String>);
        let mut per: HashMap<i64, Sets> = HashMap::new();
        for (e, s, o, p) in links {
            let sets = per.entry(e).or_default();
            sets.0.insert(s);
            sets.1.extend(o);
            sets.2.extend(p);
        }
        experiments
            .into_iter()
            .map(|(id, accession, title, description, technology, public)| {
                let (samples, organisms, platforms) = per.remove(&id).unwrap_or_default();
                let doc = json!({
                    "accession_code": accession,
                    "title": title,
                    "description": description,
                    "technology": technology,
                    "is_public": public,
                    "sample_ids": samples,
                    "organism_names": organisms,
                    "platform_names": platforms,
                    "title_complete": {"input": [title, accession]},
                    "id": id,
                });
                (id, doc)
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------
    // The search server, directly

    /// A request to the search server (directly, not through any proxy); status 0 with the
    /// error when it cannot be sent.
    pub async fn es_try(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.es_url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        match r.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    async fn es(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, v) = self.es_try(method, path, body).await;
        assert_ne!(status, 0, "the search server answers {path}: {v}");
        (status, v)
    }

    pub async fn es_json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.es(method, path, body).await;
        assert!((200..300).contains(&status), "{path}: HTTP {status}: {v}");
        v
    }

    /// The indices the alias points at.
    pub async fn alias_targets(&self) -> Vec<String> {
        self.search.alias_targets(&self.alias).await.expect("the alias's indices")
    }

    /// The name of tidemark's index of generation `g`: `<alias>_<g>`.
    pub fn generation(&self, g: u32) -> String {
        format!("{}_{g}", self.alias)
    }

    /// One document as the index holds it (after a refresh), or None.
    pub async fn doc(&self, id: i64) -> Option<Value> {
        let (status, v) = self.es(reqwest::Method::GET, &format!("/{}/_doc/{id}", self.alias), None).await;
        (status == 200 && v["found"] == json!(true)).then(|| v["_source"].clone())
    }

    /// Every document behind the alias, by `_id` as text (any key type), as the index
    /// returns it (scrolls, so any size works).
    pub async fn indexed_sources(&self) -> BTreeMap<String, Value> {
        self.refresh().await;
        let mut out = BTreeMap::new();
        let search = json!({"size": 5000, "query": {"match_all": {}}});
        let mut page = self.es_json(reqwest::Method::POST, &format!("/{}/_search?scroll=1m", self.alias), Some(search)).await;
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            for h in hits {
                out.insert(h["_id"].as_str().expect("an _id").to_string(), h["_source"].clone());
            }
            let scroll_id = page["_scroll_id"].as_str().expect("scroll id").to_string();
            page = self.es_json(reqwest::Method::POST, "/_search/scroll", Some(json!({"scroll": "1m", "scroll_id": scroll_id}))).await;
        }
        out
    }

    /// Every document behind the alias, by id (of a model keyed by integers).
    pub async fn indexed_docs(&self) -> BTreeMap<i64, Value> {
        self.indexed_sources().await.into_iter().map(|(id, doc)| (id.parse().expect("an integer _id"), doc)).collect()
    }

    pub async fn refresh(&self) {
        let _ = self.es(reqwest::Method::POST, &format!("/{}/_refresh", self.alias), None).await;
    }

    pub async fn count(&self, query: Value) -> u64 {
        self.refresh().await;
        let v = self.es_json(reqwest::Method::POST, &format!("/{}/_count", self.alias), Some(json!({"query": query}))).await;
        v["count"].as_u64().unwrap()
    }

    /// The index against the database, document by document and field by field.
    pub async fn compare(&self) -> Comparison {
        Comparison::of(self.expected_docs().await, self.indexed_docs().await)
    }

    /// Asserts the index equals the database, and shows the differences when it does not.
    pub async fn assert_converged(&self) {
        let c = self.compare().await;
        assert!(c.is_clean(), "index differs from database:\n{}", c.render());
    }

    // -----------------------------------------------------------------------------------
    // Redis

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.redis_url.as_str()).unwrap();
        client.get_multiplexed_async_connection().await.expect("connect to Redis")
    }

    /// This test's Redis keys matching `<namespace>:<pattern>`.
    pub async fn redis_keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS").arg(format!("{}:{pattern}", self.namespace)).query_async(&mut self.redis().await).await.unwrap()
    }

    /// Deletes every Redis key of this test (the queue is lost).
    pub async fn flush_redis(&self) {
        let keys = self.redis_keys("*").await;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(keys).query_async::<()>(&mut self.redis().await).await.unwrap();
        }
    }
}

/// Drops the test's indices (its alias's family: `<alias>*`), index templates, Redis keys,
/// databases (its own and any `<db_name>_*` it made) and files, when the test ends, passes
/// or panics. Bounded, and silent on failure: test.sh sweeps what a dead run left.
impl Drop for Env {
    fn drop(&mut self) {
        let (es, alias, namespace) = (self.es_url.clone(), self.alias.clone(), self.namespace.clone());
        let (redis_url, admin_url, db) = (self.redis_url.clone(), self.admin_url.clone(), self.db_name.clone());
        let _ = std::fs::remove_dir_all(&self.dir);
        run_aside(&format!("cleanup of {namespace}"), Duration::from_secs(60), async move {
            let bounded = Duration::from_secs(20);
            let http = reqwest::Client::builder().timeout(bounded).build().unwrap();
            let get = |url: String| {
                let http = http.clone();
                async move { http.get(url).send().await.ok()?.json::<Value>().await.ok() }
            };
            // Each by its name: a wildcard delete may be forbidden (destructive_requires_name).
            let indices = get(format!("{es}/_cat/indices/{alias}*?format=json&h=index&expand_wildcards=all")).await.unwrap_or_default();
            for index in indices.as_array().into_iter().flatten().filter_map(|i| i["index"].as_str()) {
                let _ = http.delete(format!("{es}/{index}")).send().await;
            }
            let templates = get(format!("{es}/_index_template/{alias}*")).await.unwrap_or_default();
            for template in templates["index_templates"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()) {
                let _ = http.delete(format!("{es}/_index_template/{template}")).send().await;
            }
            let _ = tokio::time::timeout(bounded, async {
                let mut conn = redis::Client::open(redis_url.as_str()).ok()?.get_multiplexed_async_connection().await.ok()?;
                let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{namespace}:*")).query_async(&mut conn).await.ok()?;
                if !keys.is_empty() {
                    redis::cmd("DEL").arg(keys).query_async::<()>(&mut conn).await.ok()?;
                }
                Some(())
            })
            .await;
            let _ = tokio::time::timeout(bounded, async {
                let admin = PgPoolOptions::new().max_connections(1).connect(&admin_url).await.ok()?;
                let dbs: Vec<String> =
                    sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname = $1 OR datname LIKE $1 || '\\_%'")
                        .bind(&db)
                        .fetch_all(&admin)
                        .await
                        .ok()?;
                for db in dbs {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).execute(&admin).await;
                }
                admin.close().await;
                Some(())
            })
            .await;
        });
    }
}

/// A worker running in the test's process ([`Env::start_worker`]).
pub struct Worker {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Worker {
    /// Asks it to stop, as a SIGTERM does, and waits until it has; it must end well.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the worker's task").expect("the worker ends well");
    }
}

/// Inserts a small, known directory: universities MIT and KPI, courses CS101 and MATH201.
pub async fn small_directory(env: &Env) {
    env.sql(
        "INSERT INTO universities (id, name) VALUES (1, 'MIT'), (2, 'KPI');
         INSERT INTO courses (id, name) VALUES (1, 'CS101'), (2, 'MATH201');
         SELECT setval(pg_get_serial_sequence('universities', 'id'), 2);
         SELECT setval(pg_get_serial_sequence('courses', 'id'), 2);",
    )
    .await;
}

/// A field that differs: its name, the expected value, the indexed value.
pub type FieldDiff = (String, Value, Value);

/// The index against the database ([`Env::compare`]).
pub struct Comparison {
    pub missing: Vec<i64>,
    pub extra: Vec<i64>,
    /// Student, then (field, expected, indexed) for each field that differs.
    pub differing: Vec<(i64, Vec<FieldDiff>)>,
    pub expected_docs: BTreeMap<i64, Value>,
    pub indexed_docs: BTreeMap<i64, Value>,
}

impl Comparison {
    pub fn of(expected: BTreeMap<i64, Value>, indexed: BTreeMap<i64, Value>) -> Comparison {
        let missing = expected.keys().filter(|k| !indexed.contains_key(k)).copied().collect();
        let extra = indexed.keys().filter(|k| !expected.contains_key(k)).copied().collect();
        let mut differing = Vec::new();
        for (id, e) in &expected {
            let Some(a) = indexed.get(id).filter(|a| *a != e) else { continue };
            let fields: BTreeSet<&String> = e.as_object().into_iter().chain(a.as_object()).flat_map(|o| o.keys()).collect();
            let diffs = fields
                .into_iter()
                .filter_map(|f| {
                    let (ev, av) = (e.get(f).cloned().unwrap_or(Value::Null), a.get(f).cloned().unwrap_or(Value::Null));
                    // A field absent on one side and null on the other still differs as JSON.
                    (ev != av || e.get(f).is_some() != a.get(f).is_some()).then(|| (f.clone(), ev, av))
                })
                .collect();
            differing.push((*id, diffs));
        }
        Comparison { missing, extra, differing, expected_docs: expected, indexed_docs: indexed }
    }

    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "checker: {} students in the database, {} documents behind the alias: {} missing, {} extra, {} differing",
            self.expected_docs.len(),
            self.indexed_docs.len(),
            self.missing.len(),
            self.extra.len(),
            self.differing.len(),
        );
        if !self.missing.is_empty() {
            let _ = writeln!(out, "  missing (first 20): {:?}", &self.missing[..self.missing.len().min(20)]);
            for id in self.missing.iter().take(3) {
                let _ = writeln!(out, "    {id} expected {}", self.expected_docs[id]);
            }
        }
        if !self.extra.is_empty() {
            let _ = writeln!(out, "  extra (first 20): {:?}", &self.extra[..self.extra.len().min(20)]);
            for id in self.extra.iter().take(3) {
                let _ = writeln!(out, "    {id} indexed {}", self.indexed_docs[id]);
            }
        }
        if !self.differing.is_empty() {
            let mut by_field: BTreeMap<&str, usize> = BTreeMap::new();
            for (f, _, _) in self.differing.iter().flat_map(|(_, fields)| fields) {
                *by_field.entry(f.as_str()).or_default() += 1;
            }
            let ids: Vec<i64> = self.differing.iter().map(|(id, _)| *id).take(20).collect();
            let _ = writeln!(out, "  differing by field: {by_field:?}\n  differing (first 20): {ids:?}");
            for (id, fields) in self.differing.iter().take(5) {
                for (f, e, a) in fields {
                    let _ = writeln!(out, "    {id}.{f}: expected {e}, index has {a}");
                }
                let _ = writeln!(out, "    {id} expected {}\n    {id} indexed  {}", self.expected_docs[id], self.indexed_docs[id]);
            }
        }
        out
    }
}

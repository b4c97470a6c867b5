//! Test support: every test gets its own database, Redis namespace and index alias on the
//! real services that `deploy/local/test.sh` provides, and an *independent* oracle: the
//! expected document of a student is built here in SQL, not with tidemark's own code.
#![allow(dead_code)]

pub mod fault_proxy;

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tidemark::{config::Config, search::Search, services::Services, sync::Syncer};

pub fn service_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `deploy/local/test.sh`, which starts PostgreSQL, Redis and the OpenSearch node and sets it")
    })
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
    http: reqwest::Client,
}

/// This suite run's id (`deploy/local/test.sh` sets `TIDEMARK_TEST_RUN`): every index,
/// alias and Redis namespace a test creates starts with `<run>-`, every database with
/// `tidemark_test_<run>_`, so test.sh can sweep what a killed run left, and only that.
pub fn run_id() -> String {
    std::env::var("TIDEMARK_TEST_RUN").unwrap_or_else(|_| format!("r{:08x}", std::process::id()))
}

/// A name of this run no other test of it uses: `<run>-<6 hex>`.
fn unique() -> String {
    format!("{}-{:06x}", run_id(), rand::random::<u32>() & 0xffffff)
}

/// The database URL with its path replaced by `db`.
fn with_db(base: &str, db: &str) -> String {
    let mut u = url::Url::parse(base).expect("DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

impl Env {
    pub async fn new() -> Env {
        Env::with_config(|_| {}).await
    }

    pub async fn with_config(tweak: impl FnOnce(&mut Config)) -> Env {
        Env::build(tweak, None).await
    }

    /// An environment whose database has only the migrations numbered below `first_new`
    /// (an installation of an earlier tidemark, to be upgraded by `tidemark::db::migrate`).
    pub async fn before_migration(first_new: u32) -> Env {
        Env::build(|_| {}, Some(first_new)).await
    }

    async fn build(tweak: impl FnOnce(&mut Config), before: Option<u32>) -> Env {
        let base = service_url("DATABASE_URL");
        let redis_url = service_url("REDIS_URL");
        let es_url = service_url("ELASTICSEARCH_URL");
        let id = unique();
        let db_name = format!("tidemark_test_{}", id.replace('-', "_"));
        let admin = PgPoolOptions::new().max_connections(1).connect(&base).await.expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&admin).await.expect("create test database");
        admin.close().await;
        let database_url = with_db(&base, &db_name);
        let pool = PgPoolOptions::new().max_connections(8).connect(&database_url).await.expect("connect to test database");
        match before {
            None => tidemark::db::migrate(&pool).await.expect("migrations"),
            Some(first_new) => {
                // The migration files numbered below `first_new`, applied by sqlx as an older
                // tidemark's `migrate` did (same files, so the checksums match later).
                let dir = std::env::temp_dir().join(format!("{db_name}-migrations"));
                std::fs::create_dir_all(&dir).unwrap();
                for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
                    let path = entry.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    let number: u32 = name.split('_').next().unwrap().parse().unwrap();
                    if number < first_new {
                        std::fs::copy(&path, dir.join(&name)).unwrap();
                    }
                }
                sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap().run(&pool).await.expect("older migrations");
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let alias = format!("{id}-students");
        let mut config = Config::default();
        config.database_url = Some(tidemark::config::Secret::new(database_url.clone()));
        config.redis_url = Some(tidemark::config::Secret::new(redis_url.clone()));
        config.elasticsearch_url = Some(tidemark::config::Secret::new(es_url.clone()));
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
        let search = Search::new(&config).expect("search client");
        Env {
            db_name,
            database_url,
            redis_url,
            es_url,
            alias,
            namespace: id,
            pool,
            config: Arc::new(config),
            search,
            http: reqwest::Client::new(),
        }
    }

    /// This test's services, as a process would build them (a new identity each call).
    pub fn services(&self) -> Services {
        Services::new(self.pool.clone(), self.search.clone(), self.config.clone())
    }

    /// An in-process syncer without a queue (drains directly).
    pub fn engine(&self) -> Syncer {
        Syncer::new(self.services())
    }

    pub fn engine_with(&self, tweak: impl FnOnce(&mut Config)) -> Syncer {
        let mut c = (*self.config).clone();
        tweak(&mut c);
        Syncer::new(Services::new(self.pool.clone(), Search::new(&c).unwrap(), Arc::new(c)))
    }

    /// Creates the (empty) index behind the alias, as the first sync on an empty database
    /// does: a build with nothing to copy, promoted at once.
    pub async fn create_index(&self) {
        self.engine().drain().await.expect("first sync");
        assert_eq!(self.search.alias_targets(&self.alias).await.unwrap().len(), 1, "the alias exists");
    }

    /// The `tidemark` binary with this test's services in its environment.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        c.env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("ELASTICSEARCH_URL", &self.es_url)
            .env("TIDEMARK_INDEX_ALIAS", &self.alias)
            .env("TIDEMARK_QUEUE_NAMESPACE", &self.namespace)
            .env("RUST_LOG", "info");
        c
    }

    /// Starts a long-running subcommand (worker, scheduler) whose stderr is captured.
    pub fn spawn(&self, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Proc {
        let mut c = self.command();
        c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        tweak(&mut c);
        Proc::start(c)
    }

    pub async fn sql(&self, q: &str) {
        sqlx::raw_sql(q).execute(&self.pool).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    }

    pub async fn scalar_i64(&self, q: &str) -> i64 {
        sqlx::query_scalar(q).fetch_one(&self.pool).await.unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    /// The document tidemark must have indexed for each existing student, built in SQL
    /// independently of tidemark's loader.
    pub async fn expected_docs(&self) -> std::collections::BTreeMap<i64, Value> {
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

    async fn es(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.es_url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("search server answers");
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    pub async fn es_json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.es(method, path, body).await;
        assert!((200..300).contains(&status), "{path}: HTTP {status}: {v}");
        v
    }

    /// One document as the index holds it (after a refresh), or None.
    pub async fn doc(&self, id: i64) -> Option<Value> {
        let (status, v) = self.es(reqwest::Method::GET, &format!("/{}/_doc/{id}", self.alias), None).await;
        (status == 200 && v["found"] == json!(true)).then(|| v["_source"].clone())
    }

    /// Every document behind the alias, by id (scrolls, so any size works).
    pub async fn indexed_docs(&self) -> std::collections::BTreeMap<i64, Value> {
        self.refresh().await;
        let mut out = std::collections::BTreeMap::new();
        let mut page = self
            .es_json(
                reqwest::Method::POST,
                &format!("/{}/_search?scroll=1m", self.alias),
                Some(json!({"size": 5000, "query": {"match_all": {}}})),
            )
            .await;
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            for h in hits {
                out.insert(h["_id"].as_str().unwrap().parse().unwrap(), h["_source"].clone());
            }
            let scroll_id = page["_scroll_id"].as_str().expect("scroll id").to_string();
            page = self.es_json(reqwest::Method::POST, "/_search/scroll", Some(json!({"scroll": "1m", "scroll_id": scroll_id}))).await;
        }
        out
    }

    pub async fn refresh(&self) {
        let _ = self.es(reqwest::Method::POST, &format!("/{}/_refresh", self.alias), None).await;
    }

    pub async fn count(&self, query: Value) -> u64 {
        self.refresh().await;
        let v = self.es_json(reqwest::Method::POST, &format!("/{}/_count", self.alias), Some(json!({"query": query}))).await;
        v["count"].as_u64().unwrap()
    }

    /// Asserts the index equals the database, document by document, and prints the first
    /// differences when it does not.
    pub async fn assert_converged(&self) {
        let expected = self.expected_docs().await;
        let actual = self.indexed_docs().await;
        let missing: Vec<_> = expected.keys().filter(|k| !actual.contains_key(k)).take(5).collect();
        let extra: Vec<_> = actual.keys().filter(|k| !expected.contains_key(k)).take(5).collect();
        let differing: Vec<_> = expected
            .iter()
            .filter(|(k, v)| actual.get(k).is_some_and(|a| a != *v))
            .take(3)
            .map(|(k, v)| format!("{k}: expected {v}, index has {}", actual[k]))
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty() && differing.is_empty(),
            "index differs from database ({} expected, {} indexed): missing {missing:?}, extra {extra:?}, differing {differing:#?}",
            expected.len(),
            actual.len()
        );
    }

    /// Polls `check` until it holds or `timeout` passes.
    pub async fn eventually<F, Fut>(&self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out after {timeout:?} waiting for: {what}");
    }

    /// Whether everything is in the index: no marks, no fan-outs, no build under way, and
    /// the alias exists.
    pub async fn synced(&self) -> bool {
        self.scalar_i64(
            "SELECT (SELECT count(*) FROM tidemark.outstanding) + (SELECT count(*) FROM tidemark.dirty_parents)
                  + (SELECT count(*) FROM tidemark.reindexes WHERE state IN ('building', 'verifying'))
                  + (SELECT count(*) FROM tidemark.resync_requests)",
        )
        .await
            == 0
            && !self.search.alias_targets(&self.alias).await.unwrap_or_default().is_empty()
    }

    /// Waits (bounded) until [`Env::synced`].
    pub async fn wait_synced(&self, what: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.synced().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out after {timeout:?} waiting for: {what}");
    }

    /// Drops the index and database (best effort; test.sh also sweeps leftovers).
    pub async fn cleanup(self) {
        for index in self.search.alias_targets(&self.alias).await.unwrap_or_default() {
            let _ = self.es(reqwest::Method::DELETE, &format!("/{index}"), None).await;
        }
        let _ = self.es(reqwest::Method::DELETE, &format!("/{}_*", self.alias), None).await;
        self.pool.close().await;
        if let Ok(client) = redis::Client::open(self.redis_url.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> =
                    redis::cmd("KEYS").arg(format!("{}:*", self.namespace)).query_async(&mut conn).await.unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
            }
        }
        if let Ok(admin) = PgPoolOptions::new().max_connections(1).connect(&service_url("DATABASE_URL")).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name)).execute(&admin).await;
        }
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

/// A child process whose stderr is collected in the background.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<std::sync::Mutex<String>>,
}

impl Proc {
    /// Starts any command (e.g. a private copy of the binary) with its stderr collected.
    pub fn spawn(mut c: Command) -> Proc {
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        Proc::start(c)
    }

    fn start(mut c: Command) -> Proc {
        let mut child = c.spawn().expect("spawn tidemark");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc { child, stderr }
    }

    pub fn output(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then wait (bounded) for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(40) {
                let _ = self.child.kill();
                panic!("process did not stop within 40s of SIGTERM; output:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failing test shows what its processes said (the last 20,000 characters).
        if std::thread::panicking() {
            let out = self.output();
            let from = out.len().saturating_sub(20_000);
            let from = (from..out.len()).find(|&i| out.is_char_boundary(i)).unwrap_or(out.len());
            let tail = &out[from..];
            eprintln!("--- stderr of tidemark process {} (tail) ---\n{tail}\n--- end ---", self.child.id());
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// A TCP proxy that delays everything the upstream sends by `delay` (a far-away or
/// overloaded server, e.g. Redis). Stops when dropped.
pub struct SlowLink {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    /// `upstream` is a service URL (`redis://host:port/...`); the link forwards to its host
    /// and port.
    pub async fn start(upstream: &str, delay: Duration) -> SlowLink {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let u = url::Url::parse(upstream).expect("upstream is a URL");
        let target = format!("{}:{}", u.host_str().expect("upstream host"), u.port().unwrap_or(6379));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind slow link");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                });
                // Upstream → client: each chunk leaves `delay` after it arrived (latency,
                // not a throughput limit).
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_rx.read(&mut buf).await {
                        if n == 0 || tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some((due, bytes)) = rx.recv().await {
                        tokio::time::sleep_until(due.into()).await;
                        if client_tx.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        SlowLink { addr, task }
    }

    /// `upstream` with its host and port replaced by the link's.
    pub fn url_for(&self, upstream: &str) -> String {
        let mut u = url::Url::parse(upstream).expect("upstream is a URL");
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

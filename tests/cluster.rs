//! A node lost mid-sync (issue 9, item 6). The test starts its own 3-node OpenSearch
//! cluster (deploy/opensearch/opensearch.sh, one JVM per node) and an index with one
//! replica per shard. While writers change students, universities and courses and two
//! in-process workers sync, a data node holding a primary is SIGKILLed; writes go on, and
//! must keep reaching the index through the surviving nodes; the node is restarted with the
//! same command line. Once writes stop and the workers drain, the index equals the database
//! field by field, and nothing was dead-lettered.
//!
//! The workers are given every node's URL (ELASTICSEARCH_URL may list several), the killed
//! node's first: a client that sticks to one node stalls for the whole outage.

mod support;

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use support::{eventually, Env};
use tidemark::{config::Secret, search::Search, services::Services};

/// Bounds for the cluster's steps: three JVMs start on two shared cores (the launcher's
/// README measured 34-50 s to green, 17-26 s from a restart to green).
const FORMATION: Duration = Duration::from_secs(150);
const RESTART: Duration = Duration::from_secs(120);
/// How long the node stays down while writes go on.
const OUTAGE: Duration = Duration::from_secs(10);
/// Students the directory starts with.
const STUDENTS: i64 = 1_000;
/// The student only the test itself writes (the outage probe).
const PROBE: i64 = 1;

fn log(what: impl std::fmt::Display) {
    eprintln!("[cluster {:>6.1}s] {what}", started().elapsed().as_secs_f64());
}

fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// One node of the test's cluster: the launcher's command line (the same for a restart),
/// its process while it runs, and what its JSON line said.
struct Node {
    name: String,
    http_port: u16,
    transport_port: u16,
    data: PathBuf,
    json: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn command(&self, cluster: &str, seeds: &str) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/opensearch/opensearch.sh");
        let mut c = Command::new(script);
        c.env("TIDEMARK_OPENSEARCH_HEAP", "512m")
            .args(["--cluster-name", cluster, "--node-name", &self.name])
            .args(["--http-port", &self.http_port.to_string(), "--transport-port", &self.transport_port.to_string()])
            .arg("--data")
            .arg(&self.data)
            .args(["--seed-hosts", seeds, "--initial-cluster-manager-nodes", "n1,n2,n3"])
            .args(["--parent-pid", &std::process::id().to_string()]);
        c
    }

    /// Starts the node (stdout: the JSON line, a fresh file; stderr appended to its log).
    fn start(&mut self, cluster: &str, seeds: &str) {
        let out = File::create(&self.json).unwrap();
        let err = File::options().create(true).append(true).open(&self.log).unwrap();
        let child = self.command(cluster, seeds).stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| {
            panic!("cannot run deploy/opensearch/opensearch.sh ({e}); it needs bash, Java 17 and Maven (see deploy/opensearch/README.md)")
        });
        self.child = Some(child);
    }

    /// Waits for the node's JSON line; a launcher that exits first fails the test with the
    /// tail of its log.
    async fn wait_started(&mut self, timeout: Duration) -> Value {
        eventually(&format!("node {} to start", self.name), timeout, || std::future::ready(self.started())).await
    }

    /// The node's JSON line, once it has printed it.
    fn started(&mut self) -> Result<Value, String> {
        if let Ok(text) = std::fs::read_to_string(&self.json) {
            if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
                return Ok(serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.json.display())));
            }
        }
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!(
                "OpenSearch node {} exited ({status}) before it served HTTP. The launcher needs Java 17 and Maven \
                 (`deploy/opensearch/opensearch.sh --prepare` resolves and compiles it; see deploy/opensearch/README.md). \
                 Its log ends with:\n{}",
                self.name,
                tail(&self.log)
            );
        }
        Err(format!("its log ends with:\n{}", tail(&self.log)))
    }

    /// SIGKILL: no goodbye to the cluster.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The test's cluster; its nodes are killed and its files removed when it is dropped (and
/// `--parent-pid` stops them if the test process dies first).
struct Cluster {
    name: String,
    seeds: String,
    dir: PathBuf,
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts three nodes at once (each prints its line only once a cluster-manager is
    /// elected, which needs two of them).
    fn start() -> Cluster {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/opensearch/opensearch.sh");
        assert!(script.is_file(), "{} is missing", script.display());
        // Six distinct free ports: all bound at once, then released.
        let listeners: Vec<_> = (0..6).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(listeners);
        let name = format!("{}-cluster", support::run_id());
        let dir = std::env::temp_dir().join(format!("tidemark-cluster-{}-{:06x}", std::process::id(), rand::random::<u32>() & 0xffffff));
        std::fs::create_dir_all(&dir).unwrap();
        let seeds = (0..3).map(|i| format!("127.0.0.1:{}", ports[3 + i])).collect::<Vec<_>>().join(",");
        let mut nodes: Vec<Node> = (0..3)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                http_port: ports[i],
                transport_port: ports[3 + i],
                data: dir.join(format!("n{}", i + 1)),
                json: dir.join(format!("n{}.json", i + 1)),
                log: dir.join(format!("n{}.log", i + 1)),
                child: None,
            })
            .collect();
        for n in &mut nodes {
            n.start(&name, &seeds);
        }
        log(format!("started nodes n1..n3 (HTTP ports {:?}) under {}", &ports[..3], dir.display()));
        Cluster { name, seeds, dir, nodes, http: reqwest::Client::builder().timeout(Duration::from_secs(150)).build().unwrap() }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    async fn get(&self, node: usize, path: &str) -> Value {
        let url = format!("{}{path}", self.nodes[node].url());
        let resp = self.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success() || status.as_u16() == 408, "GET {url}: HTTP {status}: {body}");
        body
    }

    /// Waits (through `via`) until the cluster has `nodes` nodes and the status `status`.
    async fn wait_health(&self, via: usize, nodes: usize, status: &str, timeout: Duration) -> Value {
        let path = format!("/_cluster/health?wait_for_nodes={nodes}&wait_for_status={status}&timeout=10s");
        eventually(&format!("the cluster to reach {nodes} nodes and {status}"), timeout, || async {
            let h = self.get(via, &path).await;
            if h["timed_out"] == json!(false) {
                Ok(h)
            } else {
                Err(h.to_string())
            }
        })
        .await
    }

    /// The elected cluster-manager's node name.
    async fn manager(&self, via: usize) -> String {
        let v = self.get(via, "/_cat/cluster_manager?format=json&h=node").await;
        v[0]["node"].as_str().expect("a cluster-manager").to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            eprintln!("cluster {} files kept for inspection: {}", self.name, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writers: single-row SQL changes of students (every field, enrollments), and renames of
/// universities and courses (each touches all their students), until `stop`.
fn start_writers(database_url: &str, stop: Arc<AtomicBool>, writes: Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    // Pauses between writes (ms): ~40 student changes a second, and a rename of a university
    // (~20 students) and of a course (~80) every 1.5 s; modest, for two shared cores.
    let kinds: [(&str, u64); 3] = [("students", 25), ("universities", 1500), ("courses", 1500)];
    kinds
        .into_iter()
        .enumerate()
        .map(|(w, (kind, every_ms))| {
            let (url, stop, writes) = (database_url.to_string(), stop.clone(), writes.clone());
            tokio::spawn(async move {
                let pool = PgPoolOptions::new().max_connections(1).connect(&url).await.expect("writer connects");
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = rand::random::<u64>();
                    // Students 2.. only: the probe is the test's own.
                    let student = 2 + (r % (STUDENTS as u64 - 1)) as i64;
                    let sql = match (kind, r % 8) {
                        ("students", 0) => format!("UPDATE students SET first_name = 'F{w}x{n}' WHERE id = {student}"),
                        ("students", 1) => format!("UPDATE students SET last_name = 'L{w}x{n}', age = {} WHERE id = {student}", 1 + r % 100),
                        ("students", 2) => format!(
                            "UPDATE students SET year_in_school = (ARRAY['FR','SO','JR','SR'])[{}] WHERE id = {student}",
                            1 + (r >> 8) % 4
                        ),
                        ("students", 3) => format!(
                            "UPDATE students SET university_id = (SELECT id FROM universities ORDER BY id OFFSET {} LIMIT 1) WHERE id = {student}",
                            (r >> 8) % 40
                        ),
                        ("students", 4) => format!("UPDATE students SET university_id = NULL WHERE id = {student}"),
                        ("students", 5) => format!(
                            "INSERT INTO student_courses (student_id, course_id)
                               SELECT {student}, id FROM courses ORDER BY id OFFSET {} LIMIT 1 ON CONFLICT DO NOTHING",
                            (r >> 8) % 60
                        ),
                        ("students", _) => format!(
                            "DELETE FROM student_courses WHERE (student_id, course_id) IN
                               (SELECT student_id, course_id FROM student_courses WHERE student_id = {student} LIMIT 1)"
                        ),
                        (table, _) => format!(
                            "UPDATE {table} SET name = split_part(name, ' #', 1) || ' #{n}' WHERE id = (SELECT id FROM {table} ORDER BY id OFFSET {} LIMIT 1)",
                            (r >> 8) % 40
                        ),
                    };
                    sqlx::raw_sql(&sql).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                    writes.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(every_ms)).await;
                }
                pool.close().await;
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_node_killed_mid_sync_and_restarted_loses_nothing_and_dead_letters_nothing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    }
    started();
    let mut cluster = Cluster::start();
    let urls = cluster.urls();

    // While the JVMs start: the database.
    let mut env = Env::with_config(|c| {
        c.elasticsearch_url = Some(Secret::new(urls.join(",")));
        c.index.number_of_shards = 3;
        c.index.number_of_replicas = 1;
        // Quick retries, but patient enough to outlast a primary's failover.
        c.sync.max_attempts = 10;
        c.sync.request_timeout = "20s".parse().unwrap();
    })
    .await;
    env.es_url = urls[0].clone();

    for i in 0..3 {
        let line = cluster.nodes[i].wait_started(FORMATION).await;
        assert_eq!(line["mode"], json!("cluster"), "{line}");
    }
    let h = cluster.wait_health(0, 3, "green", FORMATION).await;
    log(format!("cluster formed: {} nodes, {}", h["number_of_nodes"], h["status"]));

    // The first sync creates the index (three shards, a replica each).
    env.create_index().await;
    let index = env.alias_targets().await.remove(0);
    let settings = cluster.get(0, &format!("/{index}/_settings")).await;
    assert_eq!(settings[&index]["settings"]["index"]["number_of_replicas"], json!("1"), "{settings}");
    // The lost node's copies wait for it (rather than being rebuilt on the others after the
    // default minute, which a restart on loaded cores can outlast): it recovers them from its
    // own disk, and the test stays short.
    let delayed = json!({"index": {"unassigned.node_left.delayed_timeout": "5m"}});
    let r = cluster.http.put(format!("{}/{index}/_settings", urls[0])).json(&delayed).send().await.unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    cluster.wait_health(0, 3, "green", FORMATION).await;
    tidemark_seeds::seed(&env.pool, &tidemark_seeds::SeedOptions { students: STUDENTS as u64, seed: 96 }).await.unwrap();
    log(format!("index {index} created; {STUDENTS} students seeded"));

    // The victim: a data node holding a primary of the index, not the elected
    // cluster-manager if one such exists.
    let manager = cluster.manager(0).await;
    let shards = cluster.get(0, &format!("/_cat/shards/{index}?format=json&h=shard,prirep,state,node")).await;
    let holds_primary = |name: &str| shards.as_array().unwrap().iter().any(|s| s["prirep"] == json!("p") && s["node"] == json!(name));
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let victim = names
        .iter()
        .position(|n| *n != manager && holds_primary(n))
        .or_else(|| names.iter().position(|n| holds_primary(n)))
        .expect("some node holds a primary");
    let survivor = (0..3).find(|&i| i != victim && names[i] != manager).unwrap_or((victim + 1) % 3);
    env.es_url = urls[survivor].clone();
    log(format!("shards: {shards}; manager {manager}; victim {}", names[victim]));

    // Two workers, their ELASTICSEARCH_URL listing the victim first.
    let mut worker_urls = vec![urls[victim].clone()];
    worker_urls.extend((0..3).filter(|&i| i != victim).map(|i| urls[i].clone()));
    let mut worker_config = (*env.config).clone();
    worker_config.elasticsearch_url = Some(Secret::new(worker_urls.join(",")));
    let worker_config = Arc::new(worker_config);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let pool = PgPoolOptions::new().max_connections(6).connect(&env.database_url).await.unwrap();
        workers.push(env.start_worker(Services::new(pool, Search::new(&worker_config).unwrap(), worker_config.clone()), 2));
    }
    eventually("the workers index the directory", Duration::from_secs(90), || env.synced()).await;
    log(format!("workers indexed the {STUDENTS} students"));

    let stop_writers = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writers = start_writers(&env.database_url, stop_writers.clone(), writes.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Node loss.
    cluster.nodes[victim].kill();
    let killed = Instant::now();
    log(format!("SIGKILLed {} after {} writes", names[victim], writes.load(Ordering::Relaxed)));
    let h = cluster.wait_health(survivor, 2, "yellow", RESTART).await;
    log(format!(
        "cluster without {}: {} nodes, {}, {} unassigned shards",
        names[victim], h["number_of_nodes"], h["status"], h["unassigned_shards"]
    ));

    // Sync goes on through the surviving nodes: a change made now is searchable soon.
    env.sql(&format!("UPDATE students SET last_name = 'DuringOutage' WHERE id = {PROBE}")).await;
    let probe_written = Instant::now();
    eventually("a change made while the node is down is searchable (through the surviving nodes)", Duration::from_secs(30), || async {
        env.refresh().await;
        env.doc(PROBE).await.is_some_and(|d| d["last_name"] == json!("DuringOutage"))
    })
    .await;
    log(format!("change made during the outage searchable after {:.1}s", probe_written.elapsed().as_secs_f64()));
    if let Some(rest) = OUTAGE.checked_sub(killed.elapsed()) {
        tokio::time::sleep(rest).await;
    }

    // The node comes back with the same command line (same name, ports, data).
    let (name, seeds) = (cluster.name.clone(), cluster.seeds.clone());
    cluster.nodes[victim].start(&name, &seeds);
    let restarted = Instant::now();
    cluster.nodes[victim].wait_started(RESTART).await;
    cluster.wait_health(survivor, 3, "yellow", RESTART).await;
    log(format!(
        "{} back in the cluster after {:.1}s; writes go on while its shards recover",
        names[victim],
        restarted.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop_writers.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let total_writes = writes.load(Ordering::Relaxed);
    let h = cluster.wait_health(survivor, 3, "green", RESTART).await;
    log(format!(
        "writers stopped after {total_writes} writes; cluster {} ({:.1}s after the restart)",
        h["status"],
        restarted.elapsed().as_secs_f64()
    ));

    eventually("the workers drain every mark", Duration::from_secs(90), || env.synced()).await;
    for w in workers {
        w.stop().await;
    }
    let last = env.drain().await;
    log(format!("workers stopped; a last drain found {} batches", last.batches));

    let dead = tidemark::admin::failed(&env.pool, 20).await.unwrap();
    assert!(dead.is_empty(), "a lost node dead-lettered documents:\n{}", tidemark::admin::render_failed(&dead));
    assert_eq!(last.dead, 0);
    env.assert_converged().await;
    let docs = env.count(json!({"match_all": {}})).await;
    log(format!("converged: {docs} documents equal the database field by field; nothing dead-lettered"));
    drop(cluster);
}

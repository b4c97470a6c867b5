//! Stress: convergence under crashes, concurrency and faults (docs/design.md, "The result to
//! prove in tests").
//!
//! Several writers do random operations on their own connections — student inserts,
//! updates and deletes, enrollment changes, university and course inserts, renames and
//! deletes, bulk statements over thousands of rows, transactions that roll back (whole or
//! to a savepoint) — while real `tidemark worker` processes are SIGKILLed and restarted,
//! the scheduler is SIGKILLed and restarted, a private Redis is flushed and restarted,
//! the workers' (and now and then the writers') PostgreSQL connections are terminated,
//! every request to the search server goes through a fault proxy (item-level 429s, 503s,
//! slow answers, connection resets), and a full reindex is started in the middle with
//! `tidemark admin reindex`. The chaos comes in waves (see [`is_calm`]) so that the build
//! can also be verified and promoted while faults and writes go on.
//!
//! Around the reindexes an [`Operator`] does what operators do: once a build it requested
//! is promoted, it deletes a few students while the new index is live, rolls back with
//! `tidemark admin rollback` (the old index must catch up, those deletes included), and
//! then requests another `admin reindex`; a soak repeats the cycle. Every reindex request
//! is surrounded by an [`InsertBurst`]: single-row inserts at full speed, on connections of
//! their own, whose new ids lie above the current maximum, so students are born while the
//! build takes its count and cuts its chunks. In waves of their own ([`body_limited`]) the
//! proxy also plays a reverse proxy with a body limit (`max_body`, 64 KiB), answering
//! larger requests 413: tidemark must split them, never dead-letter a document for it.
//! Before anything runs, an unrelated index named like a generation, `<alias>_2024` (a
//! yearly archive), is created with one document and an alias of its own ([`ForeignIndex`]):
//! tidemark must never number after it, prune it, write to it or put its aliases on it.
//!
//! Then writes stop, faults stop, the workers drain, and a checker whose SQL is written
//! independently of tidemark's document code ([`Env::expected_docs`]) compares every
//! document field by field: no missing, no extra, no difference, no dead letters (none for a
//! 413 above all), no failed or refused reindex or rollback, no stray index, and the foreign
//! index as it was. It prints what it did; the processes' logs and the chaos timeline go to
//! a directory under the temp dir, kept when the test fails.
//!
//! The same harness runs on the shipped refinebio model
//! ([`refinebio_converges_after_crashes_concurrency_and_faults`]): seeded experiments,
//! samples, organisms and platforms; writers insert, update and delete experiments and
//! samples, rename, insert, merge and delete organisms and platforms, add, remove and
//! repoint experiment-sample rows, move samples to other organisms and platforms, change
//! an experiment's id, run bulk statements and transactions that roll back; the operator
//! deletes experiments before its rollback, the bursts insert experiments (with samples);
//! the checker builds each experiment's document from the tables in Rust
//! ([`Env::expected_experiments`]).
//! Only [`model::Model`] and the writers' operations know the model; the fleet, the chaos,
//! the faults, the operator and the report are shared. The two tests run one after the
//! other (each loads two cores by itself).
//!
//! Knobs (environment): `STRESS_SECONDS` (chaos duration, default 60 for students, 45 for
//! refinebio; a soak is the same test with a bigger number), `STRESS_SEED` (default:
//! random, printed), `STRESS_STUDENTS` (seeded students, default 6000),
//! `STRESS_EXPERIMENTS` (seeded refinebio experiments, default 500), `STRESS_WRITERS` (4),
//! `STRESS_WORKERS` (3),
//! `STRESS_CONVERGE_SECONDS` (bound on the final drain, default 300), `STRESS_FAULT_PATH`
//! (fault only requests whose path contains this, e.g. `_bulk`; default: every request),
//! `STRESS_KEEP_LOGS=1` (keep the process logs even when the test passes).
//!
//! The harness's parts: [`model`] (what differs between models), [`settings`] (these
//! knobs, the workers' config, the fault plan and the waves), [`fleet`] (the processes and what is done to them), [`writers`] and [`ops`]
//! (the writers, their SQL helpers and the students' operations), [`refinebio`] (refinebio's
//! operations), [`operator`] and [`burst`] (reindexes, rollbacks and
//! the insert bursts around them), [`chaos`] (the loop and the drain) and [`report`] (what
//! is checked, and the summary).

#[path = "../support/mod.rs"]
mod support;

mod burst;
mod chaos;
mod fleet;
mod model;
mod operator;
mod ops;
mod refinebio;
mod report;
mod settings;
mod writers;

use std::{path::PathBuf, time::Instant};

use chaos::Chaos;
use fleet::Fleet;
use model::Model;
use report::{Findings, Summary};
use settings::{chaos_faults, Settings, WORKER_CONFIG};
use support::{foreign::ForeignIndex, Env, RedisServer};
use writers::Writers;

/// One stress run at a time in this binary: each one loads two cores by itself.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_converges_to_the_database_after_crashes_concurrency_and_faults() {
    let _one = ONE_AT_A_TIME.lock().await;
    stress(Model::Students).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refinebio_converges_after_crashes_concurrency_and_faults() {
    let _one = ONE_AT_A_TIME.lock().await;
    stress(Model::Refinebio).await;
}

async fn stress(model: Model) {
    let s = Settings::from_env(model);
    let t0 = Instant::now();
    say(&s.describe());
    let env = model.env().await;
    let files = Files::prepare(&env);
    // A private Redis, so flushing and restarting it disturbs no other test.
    let redis = RedisServer::start();
    redis.wait_ready().await;
    let proxy = env.proxy().await;
    // Before tidemark's first build: someone else's index named like one of its generations.
    let foreign = ForeignIndex::create(&env).await;
    say(&format!("created {} (not tidemark's: one document, alias {})", foreign.name, foreign.alias));
    starting_point(&env, &s, t0).await;

    let mut fleet = Fleet::new(&env, &files, proxy.url(), redis, s.workers);
    fleet.event(&format!(
        "foreign index {} (not tidemark's: 1 document, alias {}) exists since before tidemark's first build",
        foreign.name, foreign.alias
    ));
    fleet.start_all();
    proxy.set(chaos_faults(s.fault_path.clone(), false));
    let writers = Writers::start(&env, &s);
    let mut chaos = Chaos::new(&s, writers.start, &env.database_url);
    chaos.run(&mut fleet, &proxy, writers.deadline).await;
    let writes = writers.stop(&mut fleet).await;
    let faults = chaos.stop(&mut fleet, &proxy).await;
    let drained = chaos.drain(&mut fleet, s.converge).await;

    let findings = Findings::collect(model, &env, &foreign, drained.converged).await;
    // Stop the processes (SIGTERM, bounded) and keep their logs.
    let stopped = fleet.stop_all();
    let _ = std::fs::remove_file(&files.binary);
    let summary =
        Summary { s: &s, t0, writes, faults, fleet: &fleet, operator: &chaos.operator, drained, findings, stopped, files: &files };
    let report = summary.render();
    println!("{report}");
    let failures = summary.failures();
    summary.show_and_keep(&report, failures.is_empty());
    drop(fleet);
    drop(proxy);
    if failures.is_empty() && !s.keep_logs {
        let _ = std::fs::remove_dir_all(&files.log_dir);
    }
    assert!(
        failures.is_empty(),
        "stress test of the {} model failed (seed {}, rerun with STRESS_SEED={}):\n- {}",
        model.name(),
        s.seed,
        s.seed,
        failures.join("\n- ")
    );
}

/// The starting point: an index, then seeded data indexed by a first drain (direct, no
/// faults). The index comes first so the seeded documents are written once.
async fn starting_point(env: &Env, s: &Settings, t0: Instant) {
    env.create_index().await;
    let seeded = s.model.seed(env, s.rows, s.seed).await;
    let drained = env.drain().await;
    assert!(!drained.stalled);
    say(&format!(
        "seeded {seeded}; first drain indexed {} into {:?} ({:.1}s)",
        drained.indexed + drained.reindexed,
        env.alias_targets().await,
        t0.elapsed().as_secs_f64()
    ));
}

/// The run's files, in a directory of their own under the temp dir (kept when the test
/// fails): the workers' config, a private copy of the binary, the processes' logs, the
/// chaos timeline and the summary.
pub struct Files {
    pub log_dir: PathBuf,
    pub config_path: PathBuf,
    pub binary: PathBuf,
}

impl Files {
    fn prepare(env: &Env) -> Files {
        let log_dir = std::env::temp_dir().join(format!("tidemark-stress-{}", env.namespace));
        std::fs::create_dir_all(&log_dir).unwrap();
        let config_path = log_dir.join("worker.toml");
        std::fs::write(&config_path, WORKER_CONFIG).unwrap();
        // A private copy of the binary: every restart in this run runs the same code, even if
        // a `cargo build` elsewhere replaces target/debug/tidemark meanwhile.
        let binary = log_dir.join("tidemark");
        std::fs::copy(env!("CARGO_BIN_EXE_tidemark"), &binary).expect("copy the tidemark binary");
        say(&format!("process logs go to {}", log_dir.display()));
        Files { log_dir, config_path, binary }
    }
}

/// Text without the terminal colour codes of tracing's output.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn say(what: &str) {
    eprintln!("[stress] {what}");
}

fn with_app_name(url: &str, name: &str) -> String {
    let mut u = url::Url::parse(url).expect("database URL");
    u.query_pairs_mut().append_pair("application_name", name);
    u.to_string()
}

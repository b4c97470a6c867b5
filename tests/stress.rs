//! Stress: convergence under crashes, concurrency and faults (DESIGN.md, "The result to
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
//! Knobs (environment): `STRESS_SECONDS` (chaos duration, default 60; a soak is the same
//! test with a bigger number), `STRESS_SEED` (default: random, printed), `STRESS_STUDENTS`
//! (seeded students, default 6000), `STRESS_WRITERS` (4), `STRESS_WORKERS` (3),
//! `STRESS_CONVERGE_SECONDS` (bound on the final drain, default 300), `STRESS_FAULT_PATH`
//! (fault only requests whose path contains this, e.g. `_bulk`; default: every request),
//! `STRESS_KEEP_LOGS=1` (keep the process logs even when the test passes).

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use support::{
    fault_proxy::{FaultProxy, Faults},
    free_port, Env, Proc,
};

// ---------------------------------------------------------------------------------------
// Settings

struct Settings {
    seed: u64,
    chaos: Duration,
    students: u64,
    writers: usize,
    workers: usize,
    converge: Duration,
    fault_path: Option<String>,
    keep_logs: bool,
}

fn knob<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let random_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000;
        Settings {
            seed: knob("STRESS_SEED", random_seed),
            chaos: Duration::from_secs(knob("STRESS_SECONDS", 60u64).max(5)),
            students: knob("STRESS_STUDENTS", 6_000u64).max(100),
            writers: knob("STRESS_WRITERS", 4usize).max(1),
            workers: knob("STRESS_WORKERS", 3usize).max(1),
            converge: Duration::from_secs(knob("STRESS_CONVERGE_SECONDS", 300u64)),
            fault_path: std::env::var("STRESS_FAULT_PATH").ok().filter(|s| !s.is_empty()),
            keep_logs: std::env::var("STRESS_KEEP_LOGS").is_ok_and(|v| !v.is_empty() && v != "0"),
        }
    }
}

/// What the worker processes read with `--config`: a short lease, so a killed worker's
/// marks and chunks come back within seconds, yet one that covers a batch's sending as
/// `Config::validate` demands (batch_timeout + request_timeout = 20 s). Small batches keep
/// one `_bulk` (dual-written during the rebuild: 2 × 200 ops) short; the request timeout is
/// generous because a search server on a shared 2-core machine can take seconds per
/// `_bulk` when every worker writes at once, and a timed-out `_bulk` is still executed by
/// the server, so a short timeout only multiplies its load.
const WORKER_CONFIG: &str = r#"
[sync]
batch_size = 200
bulk_max_docs = 500
lease = "20s"
backoff_base = "50ms"
backoff_cap = "1s"
max_attempts = 5
request_timeout = "15s"
batch_timeout = "5s"

[index]
number_of_replicas = 0

[reindex]
chunk_size = 500
"#;

const LOG_FILTER: &str = "info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_redis=warn";

/// Moderate fault rates: plenty of faults, and still progress. With `body_limited`, the
/// proxy also refuses bodies over [`BODY_LIMIT`] with 413, as a reverse proxy would.
fn chaos_faults(only_path: Option<String>, body_limited: bool) -> Faults {
    Faults {
        bulk_item_429: 0.1,
        unavailable: 0.05,
        reset: 0.02,
        slow: 0.05,
        delay: Duration::from_millis(200),
        max_body: body_limited.then_some(BODY_LIMIT),
        only_path,
        ..Faults::default()
    }
}

/// The body limit of the 413 windows: nginx's `client_max_body_size` set to 64k. A sync
/// batch (200 students, twice that while a build runs) and a reindex chunk (500 students)
/// are larger; a single document is far smaller, so nothing may end as a dead letter.
const BODY_LIMIT: usize = 64 * 1024;

/// The 413 windows: 7 s in every 14, shifted by `phase` (0..14, from the seed), so they fall
/// on busy and calm waves, on builds, promotions and rollbacks alike.
fn body_limited(since_start: Duration, phase: u64) -> bool {
    (since_start.as_secs() + phase) % 14 < 7
}

// ---------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_converges_to_the_database_after_crashes_concurrency_and_faults() {
    let s = Settings::from_env();
    let t0 = Instant::now();
    say(&format!(
        "seed {} (STRESS_SEED), {}s of chaos (STRESS_SECONDS), {} students, {} writers, {} workers",
        s.seed,
        s.chaos.as_secs(),
        s.students,
        s.writers,
        s.workers
    ));
    let env = Env::new().await;
    let log_dir = std::env::temp_dir().join(format!("tidemark-stress-{}", env.namespace));
    std::fs::create_dir_all(&log_dir).unwrap();
    let config_path = log_dir.join("worker.toml");
    std::fs::write(&config_path, WORKER_CONFIG).unwrap();
    // A private copy of the binary: every restart in this run runs the same code, even if
    // a `cargo build` elsewhere replaces target/debug/tidemark meanwhile.
    let binary = log_dir.join("tidemark");
    std::fs::copy(env!("CARGO_BIN_EXE_tidemark"), &binary).expect("copy the tidemark binary");
    say(&format!("process logs go to {}", log_dir.display()));

    // A private Redis, so flushing and restarting it disturbs no other test.
    let redis = PrivateRedis::start(free_port());
    assert!(redis.wait_ready(Duration::from_secs(10)).await, "private redis-server did not come up");
    let proxy = FaultProxy::start(&env.es_url).await;

    // Before tidemark's first build: someone else's index named like one of its generations.
    let foreign = ForeignIndex::create(&env).await;
    say(&format!("created {} (not tidemark's: one document, alias {})", foreign.name, foreign.alias));

    // The starting point: an index, then seeded students indexed by a first drain (direct,
    // no faults). The index comes first so the seeded students are written once.
    env.create_index().await;
    let seeded = tidemark_seeds::seed(&env.pool, &tidemark_seeds::SeedOptions { students: s.students, seed: s.seed }).await.expect("seed");
    let drained = env.engine().drain().await.expect("first drain");
    assert!(!drained.stalled);
    let first_index = env.search.alias_targets(&env.alias).await.unwrap();
    say(&format!(
        "seeded {} students, {} universities, {} courses, {} enrollments; first drain indexed {} into {:?} ({:.1}s)",
        seeded.students,
        seeded.universities,
        seeded.courses,
        seeded.enrollments,
        drained.indexed + drained.reindexed,
        first_index,
        t0.elapsed().as_secs_f64()
    ));

    let mut fleet = Fleet {
        env: &env,
        binary: binary.clone(),
        log_dir: log_dir.clone(),
        config_path: config_path.display().to_string(),
        worker_db_url: with_app_name(&env.database_url, "tidemark_worker"),
        scheduler_db_url: with_app_name(&env.database_url, "tidemark_scheduler"),
        proxy_url: proxy.url(),
        redis,
        redis_back_at: None,
        workers: (0..s.workers).map(|i| Slot::new(format!("worker{i}"))).collect(),
        scheduler: Slot::new("scheduler".into()),
        started: Instant::now(),
        events: Vec::new(),
        counts: ChaosCounts::default(),
    };
    fleet.event(&format!(
        "foreign index {} (not tidemark's: 1 document, alias {}) exists since before tidemark's first build",
        foreign.name, foreign.alias
    ));
    fleet.start_all();
    proxy.set(chaos_faults(s.fault_path.clone(), false));

    // Writers.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(WriterStats::default()));
    let writer_url = with_app_name(&env.database_url, "tidemark_stress_writer");
    let chaos_start = Instant::now();
    let deadline = chaos_start + s.chaos;
    let writers: Vec<_> = (0..s.writers)
        .map(|w| {
            let (url, stop, stats) = (writer_url.clone(), stop.clone(), stats.clone());
            let seed = s.seed.wrapping_mul(1_000_003).wrapping_add(w as u64);
            let target = s.students as i64;
            tokio::spawn(async move {
                writer(Writer { w, seed, url, target_students: target, stop, start: chaos_start, deadline, stats }).await
            })
        })
        .collect();

    // Chaos; the operator's reindexes, rollbacks and the insert bursts around them; the
    // 413 windows.
    let mut rng = StdRng::seed_from_u64(s.seed ^ 0x5eed_c4a0);
    let mut next_action = chaos_start + Duration::from_millis(rng.gen_range(1500..4000));
    // The first reindex early enough that the build usually completes, is verified and
    // promoted while the chaos goes on; then a rollback and another reindex (see
    // [`Operator`]); a soak rebuilds again every two minutes.
    let mut operator = Operator::new(s.seed, chaos_start + s.chaos / 6, with_app_name(&env.database_url, "tidemark_stress_burst"));
    let body_limit_phase = s.seed % 14;
    let mut body_limit = BodyLimitWindow::default();
    let mut watch = BuildWatch::default();
    let mut was_calm = false;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fleet.tend(&mut rng);
        watch.look(&env, &mut fleet).await;
        operator.step(&mut fleet).await;
        let limited = body_limited(chaos_start.elapsed(), body_limit_phase);
        if limited != body_limit.on {
            proxy.set(chaos_faults(s.fault_path.clone(), limited));
            body_limit.switch(limited, proxy.stats().too_large, &mut fleet);
        }
        let calm = is_calm(chaos_start.elapsed());
        if calm && !was_calm {
            fleet.resume_build().await;
        }
        was_calm = calm;
        if Instant::now() >= next_action {
            next_action = Instant::now() + Duration::from_millis(rng.gen_range(1500..4000));
            // In the calm windows only terminated connections (and the search faults,
            // which never stop) go on.
            let roll = if calm { rng.gen_range(45..65) } else { rng.gen_range(0..100) };
            fleet.act(roll, &mut rng).await;
        }
    }

    // Writes stop.
    stop.store(true, Ordering::SeqCst);
    let writes_stopped = Instant::now();
    for w in writers {
        if tokio::time::timeout(Duration::from_secs(60), w).await.is_err() {
            fleet.event("a writer did not stop within 60s");
        }
    }
    fleet.event(&format!("writers stopped ({:.1}s after the deadline)", writes_stopped.elapsed().as_secs_f64()));
    // Faults stop; everything that is down comes back.
    proxy.clear();
    if body_limit.on {
        body_limit.switch(false, proxy.stats().too_large, &mut fleet);
    }
    fleet.heal().await;
    let faults = proxy.stats();
    fleet.event(&format!("faults cleared: {faults:?}"));
    // A chaos too short for the operator's cycle (a promotion, a rollback, another reindex)
    // has it completed in the drain; nothing new starts once it is.
    operator.winding_down = true;

    // Drain: bounded wait until nothing is outstanding, no build runs and the operator's
    // cycle is complete.
    let converge_start = Instant::now();
    let mut last_report = Instant::now();
    let converged = loop {
        fleet.tend(&mut rng);
        watch.look(&env, &mut fleet).await;
        operator.step(&mut fleet).await;
        let (marks, parents, active): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM tidemark.outstanding), (SELECT count(*) FROM tidemark.dirty_parents),
                    (SELECT count(*) FROM tidemark.reindexes WHERE state IN ('building', 'verifying'))",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if marks == 0 && parents == 0 && active == 0 && operator.is_done() {
            break true;
        }
        if converge_start.elapsed() > s.converge {
            fleet.event(&format!(
                "NOT converged after {:?}: {marks} marks, {parents} parent marks, {active} active builds; the operator {}",
                s.converge,
                operator.describe()
            ));
            break false;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            let build = tidemark::catalog::active(&env.pool, &env.alias).await.unwrap();
            say(&format!(
                "draining: {marks} student marks, {parents} parent marks{}",
                build.map(|b| format!(", build #{} {} {}/{} chunks", b.id, b.state, b.chunks_done, b.chunks_total)).unwrap_or_default()
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let converge_time = converge_start.elapsed();
    operator.settle(&mut fleet).await;
    watch.checked = None;
    watch.look(&env, &mut fleet).await;
    fleet.event(&format!("drain ended after {:.1}s (converged: {converged})", converge_time.as_secs_f64()));

    // The checker.
    let check = if converged { Some(check(&env).await) } else { None };
    let dead_letters: Vec<(i64, Option<i32>, String, i32)> =
        sqlx::query_as("SELECT student_id, status, error, attempts FROM tidemark.dead_letters ORDER BY student_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let builds: Vec<BuildRow> =
        sqlx::query_as("SELECT id, state, target_index, message, reason, previous_index FROM tidemark.reindexes ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let alias_now = env.search.alias_targets(&env.alias).await.unwrap();
    // Every physical index of this alias's family, with its size: a stray one (say, an
    // index auto-created under the build alias's name) blocks the next reindex.
    let indices: Vec<(String, String)> = env
        .es_json(reqwest::Method::GET, &format!("/_cat/indices/{}*?format=json&h=index,docs.count", env.alias), None)
        .await
        .as_array()
        .map(|a| {
            a.iter().map(|i| (i["index"].as_str().unwrap_or("").to_string(), i["docs.count"].as_str().unwrap_or("").to_string())).collect()
        })
        .unwrap_or_default();
    let build_alias = tidemark::catalog::build_alias(&env.alias);
    let foreign_problems = foreign.problems(&env, &[env.alias.as_str(), build_alias.as_str()]).await;
    let dead_413 = dead_letters.iter().filter(|(_, status, error, _)| *status == Some(413) || error.contains("413")).count();

    // Stop the processes (SIGTERM, bounded) and keep their logs.
    let stop_report = fleet.stop_all();
    let _ = std::fs::remove_file(&binary);
    let logs = fleet.all_logs();
    let panics: Vec<String> = logs.iter().filter(|(_, text)| text.contains("panicked")).map(|(name, _)| name.clone()).collect();
    // Log lines that contain every one of `needles`.
    let seen_all =
        |needles: &[&str]| logs.iter().flat_map(|(_, text)| text.lines()).filter(|l| needles.iter().all(|n| l.contains(n))).count();
    let seen = |needle: &str| seen_all(&[needle]);

    // The report.
    let stats = stats.lock().unwrap().clone();
    let mut out = String::new();
    let _ = writeln!(out, "\n==== tidemark stress summary (seed {}) ====", s.seed);
    let _ = writeln!(
        out,
        "chaos {:.1}s with {} writers and {} worker processes (--concurrency 2) + 1 scheduler; whole test {:.1}s",
        s.chaos.as_secs_f64(),
        s.writers,
        s.workers,
        t0.elapsed().as_secs_f64()
    );
    out.push_str(&stats.render());
    out.push_str(&fleet.counts.render());
    let _ = writeln!(
        out,
        "what the processes logged: {} batches synced, {} fan-outs done, {} sync steps failed (retried), {} requests timed out, {} queue-loop restarts ({} after apalis declared the worker dead: \"worker not registered\"), {} failed builds, {} bulk requests sent again in halves after a refusal ({} processes taught a smaller size by a 413)",
        seen("batch synced"),
        seen("fan-out done"),
        seen("sync step failed"),
        seen("operation timed out"),
        seen("queue worker failed"),
        seen_all(&["queue worker failed", "worker not registered"]),
        seen("reindex failed"),
        seen("sending its halves"),
        seen("refused a request as too large")
    );
    let _ = writeln!(
        out,
        "search faults injected: {} item-level 429s, {} 503s, {} connection resets, {} slowed by 200ms, {} bodies over {} KiB refused with 413 in {} windows ({} requests forwarded){}",
        faults.items_429,
        faults.unavailable,
        faults.resets,
        faults.slowed,
        faults.too_large,
        BODY_LIMIT / 1024,
        fleet.counts.body_limit_windows,
        faults.forwarded,
        s.fault_path.as_ref().map(|p| format!(", only on paths containing {p:?}")).unwrap_or_else(|| ", on every path".into())
    );
    out.push_str(&operator.render(check.as_ref()));
    for (id, state, target, message, reason, previous) in &builds {
        let _ = writeln!(
            out,
            "  build #{id} {target}: {state} — {} (reason: {reason}){}",
            message.as_deref().unwrap_or(""),
            previous.as_ref().map(|p| format!("; previous {p}")).unwrap_or_default()
        );
    }
    let _ = writeln!(out, "alias {} → {:?}; indices (name, documents): {:?}", env.alias, alias_now, indices);
    if foreign_problems.is_empty() {
        let _ = writeln!(
            out,
            "foreign index {}: untouched (the same one document at _version 1, the same uuid, its own alias {} and no alias of tidemark's)",
            foreign.name, foreign.alias
        );
    } else {
        let _ = writeln!(out, "foreign index {}: TOUCHED: {}", foreign.name, foreign_problems.join("; "));
    }
    let _ = writeln!(
        out,
        "converged: {converged}, {:.1}s after writes and faults stopped (bound {}s)",
        converge_time.as_secs_f64(),
        s.converge.as_secs()
    );
    if let Some(c) = &check {
        out.push_str(&c.render());
    }
    let _ = writeln!(out, "dead letters: {} ({dead_413} of them for a 413)", dead_letters.len());
    for d in dead_letters.iter().take(5) {
        let _ = writeln!(out, "  {d:?}");
    }
    out.push_str(&stop_report);
    if !panics.is_empty() {
        let _ = writeln!(out, "panics in process logs: {panics:?}");
    }
    let _ = writeln!(out, "process logs: {}", log_dir.display());
    println!("{out}");

    // Verdict.
    let mut failures = Vec::new();
    if !converged {
        failures.push(format!("the workers did not drain within {}s", s.converge.as_secs()));
    }
    match &check {
        Some(c) if !c.is_clean() => failures.push(format!(
            "the index differs from the database: {} missing, {} extra, {} differing",
            c.missing.len(),
            c.extra.len(),
            c.differing.len()
        )),
        _ => {}
    }
    if dead_413 > 0 {
        failures
            .push(format!("{dead_413} documents dead-lettered for a 413: a request too large must be split, never a document given up"));
    }
    if !dead_letters.is_empty() {
        failures.push(format!("{} dead letters although no permanent fault was injected", dead_letters.len()));
    }
    if s.chaos >= Duration::from_secs(30) && faults.too_large == 0 {
        failures.push(format!(
            "no request was refused with 413 in {} windows of a {} KiB body limit",
            fleet.counts.body_limit_windows,
            BODY_LIMIT / 1024
        ));
    }
    if !foreign_problems.is_empty() {
        failures.push(format!("the foreign index {} was touched: {}", foreign.name, foreign_problems.join("; ")));
    }
    failures.extend(operator.failures(converged, check.as_ref()));
    for (id, state, _, message, _, _) in &builds {
        if state == "failed" {
            failures.push(format!("reindex #{id} failed: {}", message.as_deref().unwrap_or("")));
        }
    }
    if operator.reindexes.iter().all(|r| r.id.is_none()) {
        failures.push("the mid-run reindex was not started".into());
    }
    for r in operator.reindexes.iter().filter(|r| r.id.is_none()) {
        let why = r.outcome.as_deref().unwrap_or("no answer");
        // Refused because a build already runs is a fair answer; anything else is not.
        if !why.contains("already running") {
            failures.push(format!("`admin reindex` at {:.1}s was refused: {why}", r.at.as_secs_f64()));
        }
    }
    if indices.iter().any(|(name, _)| *name == build_alias) {
        failures.push(format!(
            "a concrete index named {build_alias} exists (a write addressed to the build alias after the alias was gone created it); every later reindex fails on it"
        ));
    }
    if converged {
        match builds.last() {
            Some((_, state, target, _, _, _)) if state == "done" && alias_now != vec![target.clone()] => {
                failures.push(format!("the last build ({target}, {state}) is not what the alias serves ({alias_now:?})"));
            }
            Some((_, state, target, _, _, Some(previous))) if state == "rolled_back" && alias_now != vec![previous.clone()] => {
                failures.push(format!("the last build ({target}) was rolled back to {previous}, yet the alias serves {alias_now:?}"));
            }
            _ => {}
        }
    }
    if stats.unexpected() > 0 {
        failures.push(format!("{} writer operations failed for reasons a writer should never see (see above)", stats.unexpected()));
    }
    if !panics.is_empty() {
        failures.push(format!("processes panicked: {panics:?}"));
    }
    let ok = failures.is_empty();
    if !ok {
        // The end of each process's last log says what it was doing.
        for (name, text) in fleet.last_logs() {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            eprintln!("---- tail of {name} ----");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        eprintln!("---- chaos timeline ----\n{}", fleet.events.join("\n"));
    } else {
        say(&format!("chaos timeline: {} events (kept in {})", fleet.events.len(), log_dir.join("chaos.log").display()));
    }
    let _ = std::fs::write(log_dir.join("chaos.log"), fleet.events.join("\n"));
    let _ = std::fs::write(log_dir.join("summary.txt"), &out);
    drop(fleet);
    drop(proxy);
    foreign.delete(&env).await;
    env.cleanup().await;
    if ok && !s.keep_logs {
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    assert!(ok, "stress test failed (seed {}, rerun with STRESS_SEED={}):\n- {}", s.seed, s.seed, failures.join("\n- "));
}

/// A build as `tidemark.reindexes` records it: id, state, target index, message, reason,
/// previous index.
type BuildRow = (i64, String, String, Option<String>, String, Option<String>);

/// Makes a child die with the test: SIGKILL when the thread that spawned it goes away
/// (a killed or interrupted test runs no destructors, and must not leave workers behind).
fn die_with_parent(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    extern "C" {
        fn prctl(option: std::os::raw::c_int, ...) -> std::os::raw::c_int;
    }
    const PR_SET_PDEATHSIG: std::os::raw::c_int = 1;
    const SIGKILL: std::os::raw::c_ulong = 9;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            Ok(())
        });
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

// ---------------------------------------------------------------------------------------
// The checker: every document, field by field, against documents built in SQL by the
// test support (independent of tidemark's loader and document code).

/// A field that differs: its name, the expected value, the indexed value.
type FieldDiff = (String, Value, Value);

struct Check {
    expected: usize,
    indexed: usize,
    missing: Vec<i64>,
    extra: Vec<i64>,
    /// Student, then (field, expected, indexed) for each field that differs.
    differing: Vec<(i64, Vec<FieldDiff>)>,
    expected_docs: BTreeMap<i64, Value>,
    indexed_docs: BTreeMap<i64, Value>,
}

impl Check {
    fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "checker: {} students in the database, {} documents behind the alias: {} missing, {} extra, {} differing (mismatches: {})",
            self.expected,
            self.indexed,
            self.missing.len(),
            self.extra.len(),
            self.differing.len(),
            self.missing.len() + self.extra.len() + self.differing.len()
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
            for (_, fields) in &self.differing {
                for (f, _, _) in fields {
                    *by_field.entry(f.as_str()).or_default() += 1;
                }
            }
            let _ = writeln!(out, "  differing by field: {by_field:?}");
            let ids: Vec<i64> = self.differing.iter().map(|(id, _)| *id).take(20).collect();
            let _ = writeln!(out, "  differing (first 20): {ids:?}");
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

async fn check(env: &Env) -> Check {
    let expected = env.expected_docs().await;
    let indexed = env.indexed_docs().await;
    let missing: Vec<i64> = expected.keys().filter(|k| !indexed.contains_key(k)).copied().collect();
    let extra: Vec<i64> = indexed.keys().filter(|k| !expected.contains_key(k)).copied().collect();
    let mut differing = Vec::new();
    for (id, e) in &expected {
        let Some(a) = indexed.get(id) else { continue };
        if a == e {
            continue;
        }
        let (eo, ao) = (e.as_object(), a.as_object());
        let fields: BTreeSet<String> = eo.iter().chain(ao.iter()).flat_map(|o| o.keys().cloned()).collect();
        let diffs: Vec<(String, Value, Value)> = fields
            .into_iter()
            .filter_map(|f| {
                let ev = e.get(&f).cloned().unwrap_or(Value::Null);
                let av = a.get(&f).cloned().unwrap_or(Value::Null);
                // A field absent on one side and null on the other still differs as JSON.
                let present_differently = e.get(&f).is_some() != a.get(&f).is_some();
                (ev != av || present_differently).then_some((f, ev, av))
            })
            .collect();
        differing.push((*id, diffs));
    }
    Check { expected: expected.len(), indexed: indexed.len(), missing, extra, differing, expected_docs: expected, indexed_docs: indexed }
}

// ---------------------------------------------------------------------------------------
// The mid-run reindex, requested through the CLI as an operator would, and watched.

/// Notes in the timeline when a build appears, gets chunks done, and changes state.
#[derive(Default)]
struct BuildWatch {
    last: Option<(i64, tidemark::catalog::BuildState, i64)>,
    checked: Option<Instant>,
}

impl BuildWatch {
    async fn look(&mut self, env: &Env, fleet: &mut Fleet<'_>) {
        if self.checked.is_some_and(|t| t.elapsed() < Duration::from_millis(500)) {
            return;
        }
        self.checked = Some(Instant::now());
        let Ok(Some(b)) = tidemark::catalog::latest(&env.pool, &env.alias).await else { return };
        let now = (b.id, b.state, b.chunks_done);
        if self.last.as_ref() != Some(&now) {
            fleet.event(&format!(
                "build #{} {}: {} ({}/{} chunks){}",
                b.id,
                b.target_index,
                b.state,
                b.chunks_done,
                b.chunks_total,
                b.message.map(|m| format!(" — {m}")).unwrap_or_default()
            ));
            self.last = Some(now);
        }
    }
}

/// An `admin reindex` or `admin rollback`, run in the background as an operator would.
struct AdminRequest {
    /// `reindex` or `rollback`.
    what: &'static str,
    at: Duration,
    handle: Option<tokio::task::JoinHandle<std::io::Result<std::process::Output>>>,
    outcome: Option<String>,
    /// The build a reindex request started.
    id: Option<i64>,
    /// It exited 0.
    ok: bool,
}

impl AdminRequest {
    /// `c` is the binary with the services of the test: the search server directly (faults
    /// are for the workers), and the workers' Redis, to wake them.
    fn start(mut c: Command, what: &'static str, args: &[&str], at: Duration) -> AdminRequest {
        c.arg("admin").args(args).env("RUST_LOG", "warn");
        AdminRequest { what, at, handle: Some(tokio::task::spawn_blocking(move || c.output())), outcome: None, id: None, ok: false }
    }

    fn reindex(c: Command, at: Duration) -> AdminRequest {
        AdminRequest::start(c, "reindex", &["reindex", "--chunk-size", "500"], at)
    }

    fn rollback(c: Command, at: Duration) -> AdminRequest {
        AdminRequest::start(c, "rollback", &["rollback"], at)
    }

    async fn poll(&mut self) {
        if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            self.finish().await;
        }
    }

    async fn finish(&mut self) {
        let Some(h) = self.handle.take() else { return };
        let out = match tokio::time::timeout(Duration::from_secs(60), h).await {
            Ok(Ok(Ok(out))) => out,
            other => {
                self.outcome = Some(format!("the CLI did not answer: {other:?}"));
                return;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = plain(String::from_utf8_lossy(&out.stderr).trim());
        self.id = stdout.strip_prefix("reindex #").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok());
        self.ok = out.status.success();
        self.outcome = Some(format!("exit {:?}: {stdout} {stderr}", out.status.code()));
        say(&format!("admin {}: {}", self.what, self.outcome.as_deref().unwrap()));
    }
}

// ---------------------------------------------------------------------------------------
// The operator: reindexes, a rollback after a promotion and another reindex after it, and
// the insert bursts around every reindex request.

/// What the [`Operator`] does next.
enum Step {
    /// Request a full reindex at this time, inside an insert burst.
    Reindex(Instant),
    /// The last reindex request: waiting for its answer, then for its build to end.
    Build,
    /// A build of the operator's was just promoted: at this time, delete a few students
    /// while it is live.
    Delete(Instant),
    /// Students were deleted while the newer index was live: roll back once their deletes
    /// reached it (their marks are gone), or at `until` regardless.
    Rollback { ids: Vec<i64>, since: Instant, until: Instant },
    /// `admin rollback` is running.
    RollingBack,
}

/// How many students the operator deletes from a newly promoted index before rolling it
/// back.
const DELETE_BEFORE_ROLLBACK: i64 = 20;

/// An operator at work: the mid-run reindex; once a build of its own is promoted, a few
/// students deleted while that index is live, then `admin rollback` (the older index must
/// catch up, those deletes included), then another `admin reindex`. A soak repeats it:
/// every odd promotion is rolled back, every even one followed by a reindex two minutes
/// later. Every reindex request is surrounded by an [`InsertBurst`].
struct Operator {
    step: Step,
    rng: StdRng,
    burst_url: String,
    promotions: u32,
    reindexes: Vec<AdminRequest>,
    rollbacks: Vec<AdminRequest>,
    burst: Option<InsertBurst>,
    bursts: Vec<BurstReport>,
    /// Students deleted while a newer index was live, just before a rollback from it.
    deleted_before_rollback: Vec<i64>,
    /// When the last reindex whose build has ended was requested (timeline clock).
    last_build_ended: Option<Duration>,
    /// After the chaos: no new cycle once one is complete, and no waiting for a soak's two
    /// minutes.
    winding_down: bool,
}

impl Operator {
    fn new(seed: u64, first_reindex: Instant, burst_url: String) -> Operator {
        Operator {
            step: Step::Reindex(first_reindex),
            rng: StdRng::seed_from_u64(seed ^ 0x0be7_a7e5),
            burst_url,
            promotions: 0,
            reindexes: Vec::new(),
            rollbacks: Vec::new(),
            burst: None,
            bursts: Vec::new(),
            deleted_before_rollback: Vec::new(),
            last_build_ended: None,
            winding_down: false,
        }
    }

    /// The last rollback is followed by a reindex whose build has ended: what every run must
    /// do, within the chaos or, when that is too short, in the drain.
    fn cycle_complete(&self) -> bool {
        self.rollbacks.last().is_some_and(|rb| self.last_build_ended.is_some_and(|at| at > rb.at))
    }

    fn idle(&self) -> bool {
        self.burst.is_none() && self.reindexes.iter().chain(&self.rollbacks).all(|r| r.handle.is_none())
    }

    /// The drain may end: the cycle is complete and nothing of the operator's is running.
    fn is_done(&self) -> bool {
        self.cycle_complete() && self.idle()
    }

    fn describe(&self) -> String {
        let step = match &self.step {
            Step::Reindex(_) => "is about to request a reindex",
            Step::Build => "waits for its build to end",
            Step::Delete(_) => "is about to delete students before a rollback",
            Step::Rollback { .. } => "waits for deletes to be indexed before rolling back",
            Step::RollingBack => "waits for `admin rollback`",
        };
        format!("{step} (cycle complete: {}, {} promotions of its builds)", self.cycle_complete(), self.promotions)
    }

    async fn step(&mut self, fleet: &mut Fleet<'_>) {
        for r in self.reindexes.iter_mut().chain(self.rollbacks.iter_mut()) {
            r.poll().await;
        }
        self.tend_burst(fleet).await;
        let now = Instant::now();
        let (idle, cycle_complete) = (self.idle(), self.cycle_complete());
        let env = fleet.env;
        let (pool, alias) = (&env.pool, &env.alias);
        match &mut self.step {
            Step::Reindex(at) => {
                if self.winding_down {
                    if cycle_complete {
                        return;
                    }
                    *at = (*at).min(now + Duration::from_secs(3));
                }
                if now < *at || !idle {
                    return;
                }
                if tidemark::catalog::active(pool, alias).await.ok().flatten().is_some() {
                    // A build tidemark started by itself: the request would be refused.
                    *at = now + Duration::from_secs(2);
                    return;
                }
                // The burst first, so that it runs at full speed when the build takes its
                // count and cuts its chunks.
                self.burst = Some(InsertBurst::start(pool, &self.burst_url, self.rng.gen(), fleet.started.elapsed()).await);
                tokio::time::sleep(Duration::from_millis(300)).await;
                fleet.event(
                    "requesting a full reindex: tidemark admin reindex --chunk-size 500 (inside a burst of single-row inserts on 2 connections)",
                );
                fleet.counts.reindex_requests += 1;
                self.reindexes.push(AdminRequest::reindex(fleet.command(), fleet.started.elapsed()));
                self.step = Step::Build;
            }
            Step::Build => {
                let Some(r) = self.reindexes.last() else { return };
                if r.handle.is_some() {
                    return;
                }
                let Some(id) = r.id else {
                    // Refused (a build already runs, say): ask again a little later.
                    self.step = Step::Reindex(now + Duration::from_secs(5));
                    return;
                };
                let requested_at = r.at;
                let Ok(b) = tidemark::catalog::get(pool, id).await else { return };
                if b.is_active() {
                    return;
                }
                self.last_build_ended = Some(requested_at);
                if b.state == tidemark::catalog::BuildState::Done {
                    self.promotions += 1;
                    if self.promotions % 2 == 1 && !(self.winding_down && self.cycle_complete()) {
                        let wait = Duration::from_millis(self.rng.gen_range(1000..4000));
                        fleet.event(&format!(
                            "operator: build #{id} ({}) is live; in {} ms some students are deleted from it, then it is rolled back",
                            b.target_index,
                            wait.as_millis()
                        ));
                        self.step = Step::Delete(now + wait);
                        return;
                    }
                }
                // A soak rebuilds every two minutes.
                self.step = Step::Reindex(now + Duration::from_secs(120));
            }
            Step::Delete(at) => {
                if now < *at {
                    return;
                }
                if tidemark::catalog::active(pool, alias).await.ok().flatten().is_some() {
                    // `admin rollback` is refused while a build runs.
                    *at = now + Duration::from_secs(2);
                    return;
                }
                let live = env.search.alias_targets(alias).await.unwrap_or_default();
                let deleted: Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(
                    "DELETE FROM students WHERE id IN (SELECT id FROM students ORDER BY random() LIMIT $1) RETURNING id",
                )
                .bind(DELETE_BEFORE_ROLLBACK)
                .fetch_all(pool)
                .await;
                let mut ids = match deleted {
                    Ok(ids) => ids,
                    Err(e) => {
                        fleet.event(&format!("operator: deleting students before the rollback failed: {e}"));
                        Vec::new()
                    }
                };
                ids.sort_unstable();
                fleet.counts.deleted_before_rollback += ids.len() as u64;
                fleet.event(&format!("operator: deleted {} students while {live:?} is live: {ids:?}", ids.len()));
                self.deleted_before_rollback.extend(&ids);
                self.step = Step::Rollback { ids, since: now, until: now + Duration::from_secs(15) };
            }
            Step::Rollback { ids, since, until } => {
                let left: i64 =
                    sqlx::query_scalar("SELECT count(DISTINCT student_id) FROM tidemark.outstanding WHERE student_id = ANY($1)")
                        .bind(&*ids)
                        .fetch_one(pool)
                        .await
                        .unwrap_or(-1);
                if left != 0 && now < *until {
                    return;
                }
                let said = if left == 0 {
                    format!("their deletes were indexed {:.1}s after them", since.elapsed().as_secs_f64())
                } else {
                    format!("{left} of their deletes still unindexed after {:.1}s", since.elapsed().as_secs_f64())
                };
                fleet.event(&format!("operator: tidemark admin rollback ({said})"));
                self.rollbacks.push(AdminRequest::rollback(fleet.command(), fleet.started.elapsed()));
                self.step = Step::RollingBack;
            }
            Step::RollingBack => {
                let Some(r) = self.rollbacks.last() else { return };
                if r.handle.is_some() {
                    return;
                }
                let said = r.outcome.clone().unwrap_or_default();
                if r.ok {
                    fleet.counts.rollbacks += 1;
                }
                let wait = Duration::from_millis(self.rng.gen_range(3000..6000));
                fleet.event(&format!("operator: admin rollback answered ({said}); another reindex in {} ms", wait.as_millis()));
                self.step = Step::Reindex(now + wait);
            }
        }
    }

    /// Ends the burst once the request it surrounds was answered (half a second later), or
    /// after [`BURST_MAX`].
    async fn tend_burst(&mut self, fleet: &mut Fleet<'_>) {
        let Some(b) = self.burst.as_mut() else { return };
        let answered = self.reindexes.last().is_some_and(|r| r.handle.is_none() && r.at >= b.at);
        if answered && b.stop_at.is_none() {
            b.stop_at = Some(Instant::now() + Duration::from_millis(500));
        }
        if !(b.stop_at.is_some_and(|t| Instant::now() >= t) || b.started.elapsed() >= BURST_MAX) {
            return;
        }
        let b = self.burst.take().expect("checked above");
        let build = self.reindexes.last().and_then(|r| r.id);
        let report = b.finish(build).await;
        fleet.counts.insert_bursts += 1;
        fleet.counts.burst_inserts += report.ids.len() as u64;
        fleet.event(&report.describe());
        self.bursts.push(report);
    }

    /// Waits (bounded) for what still runs: CLI answers, a burst.
    async fn settle(&mut self, fleet: &mut Fleet<'_>) {
        for r in self.reindexes.iter_mut().chain(self.rollbacks.iter_mut()) {
            r.finish().await;
        }
        if let Some(b) = self.burst.as_mut() {
            b.stop_at = Some(Instant::now());
        }
        self.tend_burst(fleet).await;
    }

    fn render(&self, check: Option<&Check>) -> String {
        let mut out = String::new();
        for r in self.reindexes.iter().chain(&self.rollbacks) {
            let _ = writeln!(out, "{} requested at {:.1}s: {}", r.what, r.at.as_secs_f64(), r.outcome.as_deref().unwrap_or("(no answer)"));
        }
        for b in &self.bursts {
            let _ = writeln!(out, "  {}", b.describe());
        }
        if let Some(c) = check {
            let burst_ids: BTreeSet<i64> = self.bursts.iter().flat_map(|b| b.ids.iter().copied()).collect();
            let living: Vec<i64> = burst_ids.iter().copied().filter(|id| c.expected_docs.contains_key(id)).collect();
            let unindexed = living.iter().filter(|id| !c.indexed_docs.contains_key(id)).count();
            let _ = writeln!(
                out,
                "students of the insert bursts: {} inserted, {} of them still in the database at the end, {unindexed} of those not in the index",
                burst_ids.len(),
                living.len()
            );
            let resurrected = self.deleted_before_rollback.iter().filter(|id| c.indexed_docs.contains_key(id)).count();
            let _ = writeln!(
                out,
                "students deleted while a newer index was live, just before a rollback from it: {}; in the index at the end: {resurrected}",
                self.deleted_before_rollback.len()
            );
        }
        out
    }

    fn failures(&self, converged: bool, check: Option<&Check>) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.rollbacks.iter().filter(|r| !r.ok) {
            out.push(format!("`admin rollback` at {:.1}s failed: {}", r.at.as_secs_f64(), r.outcome.as_deref().unwrap_or("no answer")));
        }
        if converged && !self.cycle_complete() {
            out.push(format!("the operator's cycle (promotion, rollback, reindex) did not complete: it {}", self.describe()));
        }
        if converged && self.rollbacks.is_empty() {
            out.push("no `admin rollback` was done".into());
        }
        for b in self.bursts.iter().filter(|b| b.ids.is_empty()) {
            out.push(format!("the insert burst at {:.1}s inserted nothing ({:?})", b.at.as_secs_f64(), b.refused));
        }
        for b in self.bursts.iter().filter(|b| b.at_or_below_max() > 0) {
            out.push(format!("the insert burst at {:.1}s made {} ids not above the max id", b.at.as_secs_f64(), b.at_or_below_max()));
        }
        if let Some(c) = check {
            let back: Vec<i64> = self.deleted_before_rollback.iter().copied().filter(|id| c.indexed_docs.contains_key(id)).collect();
            if !back.is_empty() {
                out.push(format!("students deleted while the newer index was live are in the index after the rollback: {back:?}"));
            }
        }
        out
    }
}

/// How long a burst runs at most.
const BURST_MAX: Duration = Duration::from_secs(6);
/// Inserts per burst connection at most.
const BURST_MAX_ROWS: usize = 2_000;
const BURST_CONNECTIONS: u64 = 2;

/// Single-row inserts at full speed, each its own transaction, on connections of their own
/// (`application_name` `tidemark_stress_burst`: never terminated by the chaos), from just
/// before a reindex request until half a second after its answer. Their ids come from the
/// sequence, so they lie above the maximum id when the build counts and cuts its chunks.
struct InsertBurst {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<BurstTally>>,
    started: Instant,
    /// When it started, on the timeline's clock.
    at: Duration,
    max_before: i64,
    stop_at: Option<Instant>,
}

#[derive(Default)]
struct BurstTally {
    ids: Vec<i64>,
    refused: BTreeMap<String, u64>,
}

struct BurstReport {
    at: Duration,
    seconds: f64,
    build: Option<i64>,
    max_before: i64,
    ids: Vec<i64>,
    refused: BTreeMap<String, u64>,
}

impl BurstReport {
    fn at_or_below_max(&self) -> usize {
        self.ids.iter().filter(|&&id| id <= self.max_before).count()
    }

    fn describe(&self) -> String {
        format!(
            "insert burst at {:.1}s around the reindex request{}: {} single-row inserts on {BURST_CONNECTIONS} connections in {:.1}s ({:.0}/s), ids {}..={} (max id {} when it began; {} not above it){}",
            self.at.as_secs_f64(),
            self.build.map(|b| format!(" (build #{b})")).unwrap_or_default(),
            self.ids.len(),
            self.seconds,
            self.ids.len() as f64 / self.seconds.max(0.001),
            self.ids.first().copied().unwrap_or(0),
            self.ids.last().copied().unwrap_or(0),
            self.max_before,
            self.at_or_below_max(),
            if self.refused.is_empty() { String::new() } else { format!("; refused: {:?}", self.refused) }
        )
    }
}

impl InsertBurst {
    /// `at` is now on the timeline's clock.
    async fn start(pool: &sqlx::PgPool, url: &str, seed: u64, at: Duration) -> InsertBurst {
        let max_before: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM students").fetch_one(pool).await.unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let until = Instant::now() + BURST_MAX;
        let tasks = (0..BURST_CONNECTIONS)
            .map(|i| tokio::spawn(burst_inserts(url.to_string(), seed.wrapping_add(i), stop.clone(), until)))
            .collect();
        InsertBurst { stop, tasks, started: Instant::now(), at, max_before, stop_at: None }
    }

    async fn finish(self, build: Option<i64>) -> BurstReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut ids = Vec::new();
        let mut refused = BTreeMap::new();
        for t in self.tasks {
            match tokio::time::timeout(Duration::from_secs(30), t).await {
                Ok(Ok(tally)) => {
                    ids.extend(tally.ids);
                    for (k, v) in tally.refused {
                        *refused.entry(k).or_default() += v;
                    }
                }
                Ok(Err(e)) => *refused.entry(format!("burst task: {e}")).or_default() += 1,
                Err(_) => *refused.entry("burst task did not stop within 30s".into()).or_default() += 1,
            }
        }
        ids.sort_unstable();
        BurstReport { at: self.at, seconds: self.started.elapsed().as_secs_f64(), build, max_before: self.max_before, ids, refused }
    }
}

async fn burst_inserts(url: String, seed: u64, stop: Arc<AtomicBool>, until: Instant) -> BurstTally {
    let mut tally = BurstTally::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn = match connect_writer(&url).await {
        Ok(c) => c,
        Err(e) => {
            tally.refused.insert(format!("connect: {}", cause(&e).0), 1);
            return tally;
        }
    };
    while !stop.load(Ordering::Relaxed) && Instant::now() < until && tally.ids.len() < BURST_MAX_ROWS {
        match insert_one(&mut conn, &mut rng).await {
            Ok(id) => tally.ids.push(id),
            Err(e) => {
                let (what, _, reconnect) = cause(&e);
                *tally.refused.entry(what).or_default() += 1;
                if reconnect {
                    break;
                }
            }
        }
    }
    let _ = conn.close().await;
    tally
}

/// One student, one transaction (autocommit). Boxed as `Send` for `tokio::spawn` (see
/// [`run_op`]).
fn insert_one<'a>(c: &'a mut PgConnection, rng: &mut StdRng) -> futures::future::BoxFuture<'a, Result<i64, sqlx::Error>> {
    let (f, l, a, y, u) = (first(rng), last(rng), age(rng), year(rng), rng.gen_range(0..150i64));
    Box::pin(async move {
        sqlx::query_scalar(
            "INSERT INTO students (first_name, last_name, age, year_in_school, university_id)
             VALUES ($1, $2, $3, $4, (SELECT id FROM universities WHERE id >= $5 ORDER BY id LIMIT 1)) RETURNING id",
        )
        .bind(f)
        .bind(l)
        .bind(a)
        .bind(y)
        .bind(u)
        .fetch_one(&mut *c)
        .await
    })
}

// ---------------------------------------------------------------------------------------
// The 413 windows.

/// Whether the proxy refuses large bodies now, and what it refused since the window began.
#[derive(Default)]
struct BodyLimitWindow {
    on: bool,
    refused_before: u64,
}

impl BodyLimitWindow {
    /// `refused` is the proxy's count of 413s so far.
    fn switch(&mut self, on: bool, refused: u64, fleet: &mut Fleet<'_>) {
        if on {
            fleet.counts.body_limit_windows += 1;
            fleet.event(&format!("proxy: bodies over {} KiB answered 413 from now on (a reverse proxy's limit)", BODY_LIMIT / 1024));
        } else {
            fleet.event(&format!("proxy: body limit lifted ({} requests refused with 413 in that window)", refused - self.refused_before));
        }
        self.on = on;
        self.refused_before = refused;
    }
}

// ---------------------------------------------------------------------------------------
// The foreign index: someone else's, named like one of tidemark's generations.

/// `<alias>_2024`, a yearly archive with one document and an alias of its own
/// (`<alias>_archive`), created before tidemark's first build. tidemark numbers its
/// generations from its own records, so it must never number after it, prune it, write to
/// it, or put one of its aliases on it.
struct ForeignIndex {
    name: String,
    alias: String,
    doc: Value,
    uuid: String,
}

impl ForeignIndex {
    async fn create(env: &Env) -> ForeignIndex {
        let name = format!("{}_2024", env.alias);
        let alias = format!("{}_archive", env.alias);
        // Shaped like a student, under an id the seeded students have too.
        let doc = serde_json::json!({
            "first_name": "Archived", "last_name": "Student", "age": 42, "year_in_school": "SR",
            "university": null, "course_names": ["ARCHIVE2024"], "note": "yearly archive, not tidemark's"
        });
        let mut aliases = serde_json::Map::new();
        aliases.insert(alias.clone(), serde_json::json!({}));
        let body = serde_json::json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}, "aliases": aliases});
        env.es_json(reqwest::Method::PUT, &format!("/{name}"), Some(body)).await;
        env.es_json(reqwest::Method::PUT, &format!("/{name}/_doc/1?refresh=true"), Some(doc.clone())).await;
        let settings = env.es_json(reqwest::Method::GET, &format!("/{name}/_settings"), None).await;
        let uuid = settings[&name]["settings"]["index"]["uuid"].as_str().expect("index uuid").to_string();
        ForeignIndex { name, alias, doc, uuid }
    }

    /// What differs from how it was created; `ours` are tidemark's aliases.
    async fn problems(&self, env: &Env, ours: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let (status, settings) = es_try(env, reqwest::Method::GET, &format!("/{}/_settings", self.name)).await;
        if status != 200 {
            return vec![format!("it is gone (GET /{}/_settings: HTTP {status})", self.name)];
        }
        let uuid = settings[&self.name]["settings"]["index"]["uuid"].as_str().unwrap_or("");
        if uuid != self.uuid {
            out.push(format!("it was deleted and created again (uuid {} → {uuid})", self.uuid));
        }
        let (_, doc) = es_try(env, reqwest::Method::GET, &format!("/{}/_doc/1", self.name)).await;
        if doc["_source"] != self.doc || doc["_version"] != serde_json::json!(1) {
            out.push(format!("its document changed: {doc}"));
        }
        let _ = es_try(env, reqwest::Method::POST, &format!("/{}/_refresh", self.name)).await;
        let (_, count) = es_try(env, reqwest::Method::GET, &format!("/{}/_count", self.name)).await;
        if count["count"] != serde_json::json!(1) {
            out.push(format!("it holds {} documents, not 1", count["count"]));
        }
        let (_, aliases) = es_try(env, reqwest::Method::GET, &format!("/{}/_alias", self.name)).await;
        let names: BTreeSet<String> = aliases[&self.name]["aliases"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        if names != BTreeSet::from([self.alias.clone()]) {
            out.push(format!("its aliases are {names:?}, not [{:?}]", self.alias));
        }
        if let Some(a) = ours.iter().find(|a| names.contains(**a)) {
            out.push(format!("it carries tidemark's alias {a}"));
        }
        out
    }

    async fn delete(&self, env: &Env) {
        let _ = es_try(env, reqwest::Method::DELETE, &format!("/{}", self.name)).await;
    }
}

/// A request to the search server (directly, not through the proxy) that may fail.
async fn es_try(env: &Env, method: reqwest::Method, path: &str) -> (u16, Value) {
    match reqwest::Client::new().request(method, format!("{}{path}", env.es_url)).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

// ---------------------------------------------------------------------------------------
// A private Redis on its own port.

struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let mut r = PrivateRedis { port, child: None };
        r.respawn();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn respawn(&mut self) {
        self.kill();
        let mut c = Command::new("redis-server");
        c.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut c);
        let child = c.spawn().expect("redis-server (install the redis-server package)");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    async fn wait_ready(&self, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(mut c) = self.connection().await {
                if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn flushall(&self) -> Result<(), String> {
        let mut c = self.connection().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut c).await.map_err(|e| e.to_string())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// The worker and scheduler processes, and the chaos done to them.

#[derive(Default)]
struct ChaosCounts {
    worker_kills: u64,
    kill_all: u64,
    scheduler_kills: u64,
    restarts: u64,
    exited_by_themselves: u64,
    pg_terminations: u64,
    pg_backends_terminated: u64,
    pg_writers_terminated: u64,
    redis_flushes: u64,
    redis_restarts: u64,
    resumes: u64,
    body_limit_windows: u64,
    reindex_requests: u64,
    insert_bursts: u64,
    burst_inserts: u64,
    rollbacks: u64,
    deleted_before_rollback: u64,
}

impl ChaosCounts {
    fn render(&self) -> String {
        format!(
            "chaos: {} worker SIGKILLs ({} of them all workers at once), {} scheduler SIGKILLs, {} process restarts, {} processes exited by themselves;\n       {} pg_terminate_backend rounds ({} connections, {} of them writers'), {} Redis FLUSHALLs, {} Redis SIGKILL+restarts, {} `admin reindex --resume`;\n       {} windows of a {} KiB body limit (413), {} `admin reindex` requests with {} insert bursts ({} single-row inserts), {} `admin rollback` ({} students deleted from the newer index just before)\n",
            self.worker_kills,
            self.kill_all,
            self.scheduler_kills,
            self.restarts,
            self.exited_by_themselves,
            self.pg_terminations,
            self.pg_backends_terminated,
            self.pg_writers_terminated,
            self.redis_flushes,
            self.redis_restarts,
            self.resumes,
            self.body_limit_windows,
            BODY_LIMIT / 1024,
            self.reindex_requests,
            self.insert_bursts,
            self.burst_inserts,
            self.rollbacks,
            self.deleted_before_rollback
        )
    }
}

struct Slot {
    name: String,
    proc: Option<Proc>,
    generation: u32,
    restart_at: Option<Instant>,
    /// Logs of earlier generations (killed or exited), by file name.
    logs: Vec<(String, String)>,
}

impl Slot {
    fn new(name: String) -> Slot {
        Slot { name, proc: None, generation: 0, restart_at: None, logs: Vec::new() }
    }

    fn log_name(&self) -> String {
        format!("{}-{}.log", self.name, self.generation)
    }

    /// Keeps the log of the running generation and forgets the process.
    fn retire(&mut self, dir: &std::path::Path) {
        if let Some(p) = self.proc.take() {
            let text = p.output();
            let _ = std::fs::write(dir.join(self.log_name()), &text);
            self.logs.push((self.log_name(), text));
        }
    }
}

struct Fleet<'a> {
    env: &'a Env,
    /// The copy of the `tidemark` binary every process of this run executes.
    binary: PathBuf,
    log_dir: PathBuf,
    config_path: String,
    worker_db_url: String,
    scheduler_db_url: String,
    proxy_url: String,
    redis: PrivateRedis,
    /// When a killed Redis is to be started again.
    redis_back_at: Option<Instant>,
    workers: Vec<Slot>,
    scheduler: Slot,
    started: Instant,
    events: Vec<String>,
    counts: ChaosCounts,
}

impl Fleet<'_> {
    fn event(&mut self, what: &str) {
        let line = format!("{:>7.2}s {what}", self.started.elapsed().as_secs_f64());
        eprintln!("[stress] {line}");
        self.events.push(line);
    }

    /// The binary with this test's services in its environment (as [`Env::command`]).
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        for (k, v) in self.env.command().get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c.env("REDIS_URL", self.redis.url());
        die_with_parent(&mut c);
        c
    }

    /// A worker or the scheduler: its database connections carry `application_name`, and
    /// it reaches the search server through the fault proxy.
    fn process(&self, db_url: &str, args: &[&str]) -> Proc {
        let mut c = self.command();
        c.args(["--config", &self.config_path])
            .args(args)
            .env("DATABASE_URL", db_url)
            .env("ELASTICSEARCH_URL", &self.proxy_url)
            .env("RUST_LOG", LOG_FILTER);
        Proc::spawn(c)
    }

    fn spawn_worker(&mut self, i: usize) {
        let p = self.process(&self.worker_db_url, &["worker", "--concurrency", "2"]);
        let slot = &mut self.workers[i];
        slot.generation += 1;
        slot.proc = Some(p);
        slot.restart_at = None;
    }

    fn spawn_scheduler(&mut self) {
        let p = self.process(&self.scheduler_db_url, &["scheduler", "--interval", "1s"]);
        self.scheduler.generation += 1;
        self.scheduler.proc = Some(p);
        self.scheduler.restart_at = None;
    }

    fn start_all(&mut self) {
        self.spawn_scheduler();
        for i in 0..self.workers.len() {
            self.spawn_worker(i);
        }
        let n = self.workers.len();
        self.event(&format!("started the scheduler (--interval 1s) and {n} workers (--concurrency 2) behind the fault proxy"));
    }

    /// Restarts what is due, and notices processes that exited by themselves.
    fn tend(&mut self, rng: &mut StdRng) {
        let now = Instant::now();
        if self.redis_back_at.is_some_and(|t| now >= t) {
            self.redis.respawn();
            self.redis_back_at = None;
            self.event("redis-server started again (empty)");
        }
        for i in 0..self.workers.len() {
            if let Some(p) = self.workers[i].proc.as_mut() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    self.counts.exited_by_themselves += 1;
                    let name = self.workers[i].log_name();
                    self.workers[i].retire(&self.log_dir);
                    self.workers[i].restart_at = Some(now + Duration::from_millis(rng.gen_range(200..1000)));
                    self.event(&format!("{name} exited by itself ({status}); restarting it"));
                }
            }
            if self.workers[i].proc.is_none() && self.workers[i].restart_at.is_some_and(|t| now >= t) {
                self.spawn_worker(i);
                self.counts.restarts += 1;
                let name = self.workers[i].log_name();
                self.event(&format!("started {name}"));
            }
        }
        if let Some(p) = self.scheduler.proc.as_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                self.counts.exited_by_themselves += 1;
                let name = self.scheduler.log_name();
                self.scheduler.retire(&self.log_dir);
                self.scheduler.restart_at = Some(now);
                self.event(&format!("{name} exited by itself ({status}); restarting it"));
            }
        }
        if self.scheduler.proc.is_none() && self.scheduler.restart_at.is_some_and(|t| now >= t) {
            self.spawn_scheduler();
            self.counts.restarts += 1;
            let name = self.scheduler.log_name();
            self.event(&format!("started {name}"));
        }
    }

    fn kill_worker(&mut self, i: usize, back_in: Duration) {
        let slot = &mut self.workers[i];
        let Some(p) = slot.proc.as_mut() else { return };
        p.kill();
        let name = slot.log_name();
        slot.retire(&self.log_dir);
        slot.restart_at = Some(Instant::now() + back_in);
        self.counts.worker_kills += 1;
        self.event(&format!("SIGKILL {name}; restart in {} ms", back_in.as_millis()));
    }

    fn kill_random_worker(&mut self, rng: &mut StdRng) {
        let alive: Vec<usize> = (0..self.workers.len()).filter(|i| self.workers[*i].proc.is_some()).collect();
        if let Some(&i) = alive.choose(rng) {
            let back_in = Duration::from_millis(rng.gen_range(100..2000));
            self.kill_worker(i, back_in);
        }
    }

    fn kill_all_workers(&mut self, rng: &mut StdRng) {
        self.counts.kill_all += 1;
        self.event("SIGKILL every worker at once");
        let back_in = Duration::from_millis(rng.gen_range(500..3000));
        for i in 0..self.workers.len() {
            self.kill_worker(i, back_in);
        }
    }

    fn kill_scheduler(&mut self, rng: &mut StdRng) {
        let Some(p) = self.scheduler.proc.as_mut() else { return };
        p.kill();
        let name = self.scheduler.log_name();
        self.scheduler.retire(&self.log_dir);
        let back_in = Duration::from_millis(rng.gen_range(200..3000));
        self.scheduler.restart_at = Some(Instant::now() + back_in);
        self.counts.scheduler_kills += 1;
        self.event(&format!("SIGKILL {name}; restart in {} ms", back_in.as_millis()));
    }

    /// One chaos action, by `roll` in 0..100.
    async fn act(&mut self, roll: u32, rng: &mut StdRng) {
        match roll {
            0..=39 => self.kill_random_worker(rng),
            40..=44 => self.kill_all_workers(rng),
            45..=64 => {
                // Now and then the writers' connections too, mid-transaction as it comes.
                let writers_too = rng.gen_bool(0.3);
                let (n, w): (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE application_name = 'tidemark_stress_writer')
                       FROM (SELECT pg_terminate_backend(pid), application_name FROM pg_stat_activity
                              WHERE datname = current_database()
                                AND (application_name IN ('tidemark_worker', 'tidemark_scheduler')
                                     OR ($1 AND application_name = 'tidemark_stress_writer'))) t",
                )
                .bind(writers_too)
                .fetch_one(&self.env.pool)
                .await
                .unwrap();
                self.counts.pg_terminations += 1;
                self.counts.pg_backends_terminated += n as u64;
                self.counts.pg_writers_terminated += w as u64;
                self.event(&format!("pg_terminate_backend: {n} connections ({w} of them writers')"));
            }
            65..=79 if self.redis_back_at.is_none() => match self.redis.flushall().await {
                Ok(()) => {
                    self.counts.redis_flushes += 1;
                    self.event("redis FLUSHALL");
                }
                Err(e) => self.event(&format!("redis FLUSHALL failed: {e}")),
            },
            80..=89 if self.redis_back_at.is_none() => {
                self.redis.kill();
                self.counts.redis_restarts += 1;
                let down = Duration::from_millis(rng.gen_range(300..3000));
                self.event(&format!("redis-server SIGKILLed; back in {} ms", down.as_millis()));
                self.redis_back_at = Some(Instant::now() + down);
            }
            90.. => self.kill_scheduler(rng),
            _ => {}
        }
    }

    /// What an operator does after crashes: give the chunks of vanished workers back at
    /// once, rather than when their leases run out.
    async fn resume_build(&mut self) {
        if self.redis_back_at.is_some() || tidemark::catalog::active(&self.env.pool, &self.env.alias).await.unwrap().is_none() {
            return;
        }
        let mut c = self.command();
        c.args(["admin", "reindex", "--resume"]).env("RUST_LOG", "warn");
        let out = tokio::task::spawn_blocking(move || c.output()).await.unwrap().expect("tidemark admin reindex --resume");
        self.counts.resumes += 1;
        let said = plain(String::from_utf8_lossy(if out.status.success() { &out.stdout } else { &out.stderr }).trim());
        self.event(&format!("calm: tidemark admin reindex --resume: {said}"));
    }

    /// After the chaos: Redis up, and every process that waits for its restart started.
    async fn heal(&mut self) {
        let now = Instant::now();
        if self.redis_back_at.is_some() || !self.redis.is_running() {
            self.redis_back_at = Some(now);
        }
        for s in self.workers.iter_mut().chain(std::iter::once(&mut self.scheduler)) {
            if s.proc.is_none() {
                s.restart_at = Some(now);
            }
        }
        self.tend(&mut StdRng::seed_from_u64(0));
        assert!(self.redis.wait_ready(Duration::from_secs(10)).await, "private redis-server did not come back");
    }

    /// SIGTERM to every process, bounded; says which did not stop cleanly.
    fn stop_all(&mut self) -> String {
        let mut out = String::new();
        let slots: Vec<&mut Slot> = self.workers.iter_mut().chain(std::iter::once(&mut self.scheduler)).collect();
        let mut stopping = Vec::new();
        for s in slots {
            if let Some(p) = s.proc.as_ref() {
                let _ = Command::new("kill").arg("-TERM").arg(p.child.id().to_string()).status();
                stopping.push(s);
            }
        }
        let start = Instant::now();
        for s in stopping {
            let name = s.log_name();
            let p = s.proc.as_mut().unwrap();
            let status = loop {
                if let Ok(Some(st)) = p.child.try_wait() {
                    break Some(st);
                }
                if start.elapsed() > Duration::from_secs(45) {
                    p.kill();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            match status {
                Some(st) if st.success() => {}
                Some(st) => {
                    let _ = writeln!(out, "note: {name} exited with {st} on SIGTERM");
                }
                None => {
                    let _ = writeln!(out, "note: {name} did not stop within 45s of SIGTERM (killed)");
                }
            }
            s.retire(&self.log_dir);
        }
        out
    }

    fn all_logs(&self) -> Vec<(String, String)> {
        self.workers.iter().chain(std::iter::once(&self.scheduler)).flat_map(|s| s.logs.iter().cloned()).collect()
    }

    fn last_logs(&self) -> Vec<(String, String)> {
        self.workers.iter().chain(std::iter::once(&self.scheduler)).filter_map(|s| s.logs.last().cloned()).collect()
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        for s in self.workers.iter_mut().chain(std::iter::once(&mut self.scheduler)) {
            if let Some(p) = s.proc.as_mut() {
                p.kill();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writers

/// The chaos comes in waves: in every 20 s, 10 s of everything at full speed, then 10 s
/// in which writers send a trickle of single-student changes, no process is killed and
/// Redis stays up, while the search faults and terminated connections go on. At the start
/// of a calm the operator gives back the chunks of killed workers (`admin reindex
/// --resume`), so a build can complete, be verified and be promoted under faults and with
/// writes still landing, not only after everything stops.
fn is_calm(since_start: Duration) -> bool {
    since_start.as_secs() % 20 >= 10
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    UpdateStudent,
    InsertStudent,
    DeleteStudent,
    Enroll,
    Unenroll,
    ChangeUniversity,
    RenameUniversity,
    RenameCourse,
    InsertUniversity,
    InsertCourse,
    DeleteUniversity,
    DeleteCourse,
    MultiStatementTx,
    RolledBackTx,
    SavepointRollback,
    BulkUpdate,
    BulkEnroll,
    BulkUnenroll,
    BulkInsert,
    BulkDelete,
    MergeUniversities,
    MoveStudentId,
    NoopBulkUpdate,
}

impl Op {
    /// Weighted choice of the next operation.
    fn pick(rng: &mut StdRng) -> Op {
        const TABLE: &[(Op, u32)] = &[
            (Op::UpdateStudent, 240),
            (Op::InsertStudent, 70),
            (Op::DeleteStudent, 50),
            (Op::Enroll, 110),
            (Op::Unenroll, 80),
            (Op::ChangeUniversity, 60),
            (Op::RenameUniversity, 10),
            (Op::RenameCourse, 10),
            (Op::InsertUniversity, 12),
            (Op::InsertCourse, 12),
            (Op::DeleteUniversity, 10),
            (Op::DeleteCourse, 10),
            (Op::MultiStatementTx, 50),
            (Op::RolledBackTx, 40),
            (Op::SavepointRollback, 20),
            (Op::BulkUpdate, 12),
            (Op::BulkEnroll, 5),
            (Op::BulkUnenroll, 5),
            (Op::BulkInsert, 5),
            (Op::BulkDelete, 5),
            (Op::MergeUniversities, 5),
            (Op::MoveStudentId, 10),
            (Op::NoopBulkUpdate, 4),
        ];
        let total: u32 = TABLE.iter().map(|(_, w)| w).sum();
        let mut x = rng.gen_range(0..total);
        for (op, w) in TABLE {
            if x < *w {
                return *op;
            }
            x -= w;
        }
        unreachable!()
    }

    /// Operations of the calm windows: a trickle of single-student changes that leaves the
    /// number of students alone.
    fn is_calm(self) -> bool {
        matches!(self, Op::UpdateStudent | Op::Enroll | Op::Unenroll | Op::ChangeUniversity | Op::SavepointRollback | Op::RolledBackTx)
    }

    /// Operations that touch hundreds or thousands of rows; a writer runs at most one every
    /// few seconds so the index can keep up at all.
    fn is_bulk(self) -> bool {
        matches!(
            self,
            Op::BulkUpdate
                | Op::BulkEnroll
                | Op::BulkUnenroll
                | Op::BulkInsert
                | Op::BulkDelete
                | Op::MergeUniversities
                | Op::NoopBulkUpdate
        )
    }

    fn name(self) -> &'static str {
        match self {
            Op::UpdateStudent => "update student",
            Op::InsertStudent => "insert student (+ enrollments)",
            Op::DeleteStudent => "delete student",
            Op::Enroll => "enroll",
            Op::Unenroll => "unenroll",
            Op::ChangeUniversity => "change a student's university",
            Op::RenameUniversity => "rename university",
            Op::RenameCourse => "rename course",
            Op::InsertUniversity => "insert university (+ students moved in)",
            Op::InsertCourse => "insert course (+ students enrolled)",
            Op::DeleteUniversity => "delete university",
            Op::DeleteCourse => "delete course",
            Op::MultiStatementTx => "multi-statement transaction",
            Op::RolledBackTx => "transaction rolled back",
            Op::SavepointRollback => "rollback to savepoint, then commit",
            Op::BulkUpdate => "bulk update (thousands of rows)",
            Op::BulkEnroll => "bulk enroll",
            Op::BulkUnenroll => "bulk unenroll",
            Op::BulkInsert => "bulk insert students",
            Op::BulkDelete => "bulk delete students",
            Op::MergeUniversities => "merge universities (move all students)",
            Op::MoveStudentId => "change a student's id",
            Op::NoopBulkUpdate => "no-op bulk update",
        }
    }
}

#[derive(Clone, Default)]
struct WriterStats {
    ok: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    /// Why operations were refused: SQLSTATE and constraint, or the connection error.
    causes: BTreeMap<String, u64>,
    /// Causes a correct writer should never see (a bug in this test's SQL).
    unexpected: BTreeMap<String, u64>,
    rows: u64,
    reconnects: u64,
}

impl WriterStats {
    fn unexpected(&self) -> u64 {
        self.unexpected.values().sum()
    }

    fn render(&self) -> String {
        let mut out = String::from("operations by kind (committed or rolled back as intended / refused):\n");
        let kinds: BTreeSet<&str> = self.ok.keys().chain(self.refused.keys()).copied().collect();
        for k in kinds {
            let _ = writeln!(out, "  {k:<42} {:>7} / {}", self.ok.get(k).unwrap_or(&0), self.refused.get(k).unwrap_or(&0));
        }
        let ok: u64 = self.ok.values().sum();
        let refused: u64 = self.refused.values().sum();
        let _ = writeln!(out, "  {:<42} {ok:>7} / {refused}   ({} rows written, {} reconnects)", "total", self.rows, self.reconnects);
        if !self.causes.is_empty() {
            let _ = writeln!(out, "refused because: {:?}", self.causes);
        }
        if !self.unexpected.is_empty() {
            let _ = writeln!(out, "UNEXPECTED writer errors: {:?}", self.unexpected);
        }
        out
    }
}

/// Why a statement failed, and whether the connection must be replaced.
fn cause(e: &sqlx::Error) -> (String, bool, bool) {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.to_string()).unwrap_or_default();
            let what = match d.constraint() {
                Some(c) => format!("{code} {c}"),
                None => format!("{code} {}", d.message().chars().take(60).collect::<String>()),
            };
            // Unique names, foreign keys raced by deletes, deadlocks between bulk writers,
            // lock and statement timeouts, a terminated connection.
            let expected = matches!(code.as_str(), "23505" | "23503" | "40P01" | "40001" | "55P03" | "57014")
                || code.starts_with("57P")
                || code.starts_with("08");
            let reconnect = code.starts_with("57P") || code.starts_with("08");
            (what, expected, reconnect)
        }
        other => (format!("connection: {}", other.to_string().chars().take(80).collect::<String>()), true, true),
    }
}

fn connect_writer(url: &str) -> futures::future::BoxFuture<'_, Result<PgConnection, sqlx::Error>> {
    Box::pin(async move {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?.options([("statement_timeout", "20s"), ("lock_timeout", "10s")]);
        PgConnection::connect_with(&options).await
    })
}

/// One writer task: its number and seed, the database, how many students to keep around,
/// and when to stop.
struct Writer {
    w: usize,
    seed: u64,
    url: String,
    target_students: i64,
    stop: Arc<AtomicBool>,
    start: Instant,
    deadline: Instant,
    stats: Arc<Mutex<WriterStats>>,
}

async fn writer(plan: Writer) {
    let Writer { w, seed, url, target_students, stop, start, deadline, stats } = plan;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn: Option<PgConnection> = None;
    let mut last_bulk = Instant::now() - Duration::from_secs(60);
    let mut n: u64 = 0;
    // Bounded twice: by the deadline and by a (generous) number of operations.
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 5_000_000 {
        n += 1;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect_writer(&url).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    let (what, _, _) = cause(&e);
                    *stats.lock().unwrap().causes.entry(format!("connect: {what}")).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let calm = is_calm(start.elapsed());
        let mut op = Op::pick(&mut rng);
        if calm && !op.is_calm() {
            op = Op::UpdateStudent;
        }
        if op.is_bulk() {
            if last_bulk.elapsed() < Duration::from_secs(5) {
                op = Op::UpdateStudent;
            } else {
                last_bulk = Instant::now();
            }
        }
        let result = match rebalance(c, op).await {
            Ok(o) => {
                op = o;
                run_op(c, &mut rng, op, w, n, target_students).await
            }
            Err(e) => Err(e),
        };
        {
            let mut st = stats.lock().unwrap();
            match result {
                Ok(rows) => {
                    *st.ok.entry(op.name()).or_default() += 1;
                    st.rows += rows;
                }
                Err(e) => {
                    *st.refused.entry(op.name()).or_default() += 1;
                    let (what, expected, reconnect) = cause(&e);
                    if expected {
                        *st.causes.entry(what).or_default() += 1;
                    } else {
                        *st.unexpected.entry(format!("{}: {what}: {e}", op.name())).or_default() += 1;
                    }
                    if reconnect {
                        conn = None;
                        st.reconnects += 1;
                    }
                }
            }
        }
        let pause = if calm { rng.gen_range(100..300) } else { rng.gen_range(5..40) };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

const FIRST: &[&str] = &["Ann", "Bob", "Zoë", "José", "Łukasz", "Anne-Marie", "Jean Luc", "ann", "Ängel", "Mia", "Noah", "Chloé"];
const LAST: &[&str] = &["Lee", "O'Brien", "Müller", "García", "van der Berg", "Nguyễn", "lee", "Smith", "Østergaard", "Dupont"];
const YEARS: &[&str] = &["FR", "SO", "JR", "SR"];
/// Names several writers may pick at once: unique-name violations are part of the game.
const SHARED_NAMES: &[&str] = &["Shared Name A", "Shared Name B", "shared name a", "Ünïversität Shared"];
/// Course name prefixes whose byte order differs from a linguistic order.
const COURSE_PREFIX: &[&str] = &["CS", "cs", "Math", "ÉCO", "bio", "Zoo", "_x", "ß-Lab", "a"];

fn first(rng: &mut StdRng) -> &'static str {
    FIRST.choose(rng).unwrap()
}
fn last(rng: &mut StdRng) -> &'static str {
    LAST.choose(rng).unwrap()
}
fn year(rng: &mut StdRng) -> &'static str {
    YEARS.choose(rng).unwrap()
}
fn age(rng: &mut StdRng) -> i32 {
    rng.gen_range(1..=100)
}

fn university_name(rng: &mut StdRng, w: usize, n: u64) -> String {
    if rng.gen_bool(0.15) {
        return SHARED_NAMES.choose(rng).unwrap().to_string();
    }
    let word = ["University", "Universität", "École", "Institute", "College", "Sø Akademi"].choose(rng).unwrap();
    format!("{word} {w}-{n}")
}

fn course_name(rng: &mut StdRng, w: usize, n: u64) -> String {
    if rng.gen_bool(0.1) {
        return SHARED_NAMES.choose(rng).unwrap().to_string();
    }
    format!("{}{}{w}", COURSE_PREFIX.choose(rng).unwrap(), n % 1000)
}

/// An existing student id (or none when the table is empty).
async fn some_student(c: &mut PgConnection, rng: &mut StdRng) -> Result<Option<i64>, sqlx::Error> {
    let max: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM students").fetch_one(&mut *c).await?;
    let Some(max) = max else { return Ok(None) };
    let at = rng.gen_range(1..=max.max(1));
    sqlx::query_scalar("SELECT id FROM students WHERE id >= $1 ORDER BY id LIMIT 1").bind(at).fetch_optional(&mut *c).await
}

async fn some_row(c: &mut PgConnection, table: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY random() LIMIT 1")).fetch_optional(&mut *c).await
}

async fn count(c: &mut PgConnection, table: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&mut *c).await
}

/// One random update of one student, on any executor (a transaction or the connection).
async fn update_one(c: &mut PgConnection, rng: &mut StdRng, id: i64) -> Result<u64, sqlx::Error> {
    let q = match rng.gen_range(0..6) {
        0 => sqlx::query("UPDATE students SET first_name = $2 WHERE id = $1").bind(id).bind(first(rng)),
        1 => sqlx::query("UPDATE students SET last_name = $2 WHERE id = $1").bind(id).bind(last(rng)),
        2 => sqlx::query("UPDATE students SET age = $2 WHERE id = $1").bind(id).bind(age(rng)),
        3 => sqlx::query("UPDATE students SET year_in_school = $2 WHERE id = $1").bind(id).bind(year(rng)),
        4 => sqlx::query("UPDATE students SET first_name = $2, last_name = $3, age = $4, year_in_school = $5 WHERE id = $1")
            .bind(id)
            .bind(first(rng))
            .bind(last(rng))
            .bind(age(rng))
            .bind(year(rng)),
        // Sets what is already there: marks nothing.
        _ => sqlx::query("UPDATE students SET age = age WHERE id = $1").bind(id),
    };
    Ok(q.execute(&mut *c).await?.rows_affected())
}

/// Keeps the number of universities and courses within bounds: an insert past the upper
/// bound becomes a delete, a delete under the lower bound an insert.
fn rebalance(c: &mut PgConnection, op: Op) -> futures::future::BoxFuture<'_, Result<Op, sqlx::Error>> {
    Box::pin(async move {
        Ok(match op {
            Op::InsertUniversity if count(c, "universities").await? > 120 => Op::DeleteUniversity,
            Op::DeleteUniversity if count(c, "universities").await? < 10 => Op::InsertUniversity,
            Op::InsertCourse if count(c, "courses").await? > 150 => Op::DeleteCourse,
            Op::DeleteCourse if count(c, "courses").await? < 10 => Op::InsertCourse,
            other => other,
        })
    })
}

/// One operation. Boxed as `Send` here, where every lifetime is concrete: left to infer
/// it through `tokio::spawn`, rustc cannot prove sqlx's executor bounds for all lifetimes.
fn run_op<'a>(
    c: &'a mut PgConnection,
    rng: &'a mut StdRng,
    op: Op,
    w: usize,
    n: u64,
    target: i64,
) -> futures::future::BoxFuture<'a, Result<u64, sqlx::Error>> {
    Box::pin(run_op_inner(c, rng, op, w, n, target))
}

async fn run_op_inner(c: &mut PgConnection, rng: &mut StdRng, op: Op, w: usize, n: u64, target: i64) -> Result<u64, sqlx::Error> {
    match op {
        Op::UpdateStudent => {
            let Some(id) = some_student(c, rng).await? else { return Ok(0) };
            update_one(c, rng, id).await
        }
        Op::InsertStudent => {
            let uni = if rng.gen_bool(0.8) { some_row(c, "universities").await? } else { None };
            let mut tx = c.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO students (first_name, last_name, age, year_in_school, university_id) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(first(rng))
            .bind(last(rng))
            .bind(age(rng))
            .bind(year(rng))
            .bind(uni)
            .fetch_one(&mut *tx)
            .await?;
            let k = rng.gen_range(0..4);
            if k > 0 {
                sqlx::query(
                    "INSERT INTO student_courses (student_id, course_id)
                     SELECT $1, id FROM (SELECT id FROM courses ORDER BY random() LIMIT $2) c ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(k as i64)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(1 + k)
        }
        Op::DeleteStudent => {
            let Some(id) = some_student(c, rng).await? else { return Ok(0) };
            Ok(sqlx::query("DELETE FROM students WHERE id = $1").bind(id).execute(&mut *c).await?.rows_affected())
        }
        Op::Enroll => {
            let (Some(s), Some(course)) = (some_student(c, rng).await?, some_row(c, "courses").await?) else { return Ok(0) };
            Ok(sqlx::query("INSERT INTO student_courses (student_id, course_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(s)
                .bind(course)
                .execute(&mut *c)
                .await?
                .rows_affected())
        }
        Op::Unenroll => {
            let Some(s) = some_student(c, rng).await? else { return Ok(0) };
            Ok(sqlx::query(
                "DELETE FROM student_courses WHERE (student_id, course_id) IN
                   (SELECT student_id, course_id FROM student_courses WHERE student_id >= $1 ORDER BY student_id LIMIT 1)",
            )
            .bind(s)
            .execute(&mut *c)
            .await?
            .rows_affected())
        }
        Op::ChangeUniversity => {
            let Some(s) = some_student(c, rng).await? else { return Ok(0) };
            let uni = if rng.gen_bool(0.85) { some_row(c, "universities").await? } else { None };
            Ok(sqlx::query("UPDATE students SET university_id = $2 WHERE id = $1")
                .bind(s)
                .bind(uni)
                .execute(&mut *c)
                .await?
                .rows_affected())
        }
        Op::RenameUniversity => {
            let Some(u) = some_row(c, "universities").await? else { return Ok(0) };
            Ok(sqlx::query("UPDATE universities SET name = $2 WHERE id = $1")
                .bind(u)
                .bind(university_name(rng, w, n))
                .execute(&mut *c)
                .await?
                .rows_affected())
        }
        Op::RenameCourse => {
            let Some(k) = some_row(c, "courses").await? else { return Ok(0) };
            Ok(sqlx::query("UPDATE courses SET name = $2 WHERE id = $1")
                .bind(k)
                .bind(course_name(rng, w, n))
                .execute(&mut *c)
                .await?
                .rows_affected())
        }
        Op::InsertUniversity => {
            let mut tx = c.begin().await?;
            let id: i64 = sqlx::query_scalar("INSERT INTO universities (name) VALUES ($1) RETURNING id")
                .bind(university_name(rng, w, n))
                .fetch_one(&mut *tx)
                .await?;
            let moved = sqlx::query("UPDATE students SET university_id = $1 WHERE id % 97 = $2")
                .bind(id)
                .bind(rng.gen_range(0..97i64))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(1 + moved)
        }
        Op::InsertCourse => {
            let mut tx = c.begin().await?;
            let id: i64 = sqlx::query_scalar("INSERT INTO courses (name) VALUES ($1) RETURNING id")
                .bind(course_name(rng, w, n))
                .fetch_one(&mut *tx)
                .await?;
            let enrolled =
                sqlx::query("INSERT INTO student_courses (student_id, course_id) SELECT id, $1 FROM students WHERE id % 89 = $2")
                    .bind(id)
                    .bind(rng.gen_range(0..89i64))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            tx.commit().await?;
            Ok(1 + enrolled)
        }
        Op::DeleteUniversity => {
            let Some(u) = some_row(c, "universities").await? else { return Ok(0) };
            // ON DELETE SET NULL rewrites its students' rows.
            Ok(sqlx::query("DELETE FROM universities WHERE id = $1").bind(u).execute(&mut *c).await?.rows_affected())
        }
        Op::DeleteCourse => {
            let Some(k) = some_row(c, "courses").await? else { return Ok(0) };
            // ON DELETE CASCADE removes its enrollments.
            Ok(sqlx::query("DELETE FROM courses WHERE id = $1").bind(k).execute(&mut *c).await?.rows_affected())
        }
        Op::MultiStatementTx => {
            let a = some_student(c, rng).await?;
            let b = some_student(c, rng).await?;
            let course = some_row(c, "courses").await?;
            let uni = some_row(c, "universities").await?;
            let mut tx = c.begin().await?;
            let mut rows = 0;
            for id in [a, b].into_iter().flatten() {
                rows += update_one(&mut tx, rng, id).await?;
            }
            if let (Some(s), Some(k)) = (a, course) {
                rows += sqlx::query("INSERT INTO student_courses (student_id, course_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(s)
                    .bind(k)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            if let Some(u) = uni {
                if rng.gen_bool(0.1) {
                    rows += sqlx::query("UPDATE universities SET name = $2 WHERE id = $1")
                        .bind(u)
                        .bind(university_name(rng, w, n))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                if let Some(s) = b {
                    rows += sqlx::query("UPDATE students SET university_id = $2 WHERE id = $1")
                        .bind(s)
                        .bind(u)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
            }
            tx.commit().await?;
            Ok(rows)
        }
        Op::RolledBackTx => {
            // Everything here is undone: nothing of it may ever reach the index.
            let a = some_student(c, rng).await?;
            let uni = some_row(c, "universities").await?;
            let course = some_row(c, "courses").await?;
            let mut tx = c.begin().await?;
            if let Some(id) = a {
                sqlx::query("UPDATE students SET first_name = 'ROLLED BACK', age = 99 WHERE id = $1").bind(id).execute(&mut *tx).await?;
                if rng.gen_bool(0.3) {
                    sqlx::query("DELETE FROM students WHERE id = $1").bind(id).execute(&mut *tx).await?;
                }
            }
            sqlx::query("INSERT INTO students (first_name, last_name, age, year_in_school) VALUES ('ROLLED BACK', 'Ghost', 50, 'SR')")
                .execute(&mut *tx)
                .await?;
            if let Some(u) = uni {
                sqlx::query("UPDATE universities SET name = 'ROLLED BACK ' || id WHERE id = $1").bind(u).execute(&mut *tx).await?;
            }
            if let Some(k) = course {
                if rng.gen_bool(0.3) {
                    sqlx::query("DELETE FROM courses WHERE id = $1").bind(k).execute(&mut *tx).await?;
                } else {
                    sqlx::query("UPDATE courses SET name = 'ROLLED BACK ' || id WHERE id = $1").bind(k).execute(&mut *tx).await?;
                }
            }
            if rng.gen_bool(0.2) {
                sqlx::query("UPDATE students SET last_name = 'ROLLED BACK' WHERE id % 13 = $1")
                    .bind(rng.gen_range(0..13i64))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.rollback().await?;
            Ok(0)
        }
        Op::SavepointRollback => {
            let a = some_student(c, rng).await?;
            let b = some_student(c, rng).await?;
            let course = some_row(c, "courses").await?;
            let mut tx = c.begin().await?;
            let mut rows = 0;
            if let Some(id) = a {
                rows += update_one(&mut tx, rng, id).await?;
            }
            sqlx::query("SAVEPOINT sp").execute(&mut *tx).await?;
            if let Some(id) = b {
                sqlx::query("UPDATE students SET last_name = 'UNDONE BY SAVEPOINT' WHERE id = $1").bind(id).execute(&mut *tx).await?;
            }
            if let Some(k) = course {
                sqlx::query("UPDATE courses SET name = 'UNDONE ' || id WHERE id = $1").bind(k).execute(&mut *tx).await?;
            }
            sqlx::query("ROLLBACK TO SAVEPOINT sp").execute(&mut *tx).await?;
            if let Some(id) = b {
                rows += sqlx::query("UPDATE students SET age = $2 WHERE id = $1")
                    .bind(id)
                    .bind(age(rng))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(rows)
        }
        Op::BulkUpdate => {
            let q = match rng.gen_range(0..4) {
                0 => sqlx::query("UPDATE students SET age = 1 + (age + $1) % 100 WHERE id % $2 = $3")
                    .bind(rng.gen_range(1..50i32))
                    .bind(rng.gen_range(2..5i64))
                    .bind(rng.gen_range(0..2i64)),
                1 => {
                    let max: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM students").fetch_one(&mut *c).await?;
                    let lo = rng.gen_range(0..max.max(1));
                    sqlx::query("UPDATE students SET last_name = $1 WHERE id BETWEEN $2 AND $3")
                        .bind(format!("{} {w}", last(rng)))
                        .bind(lo)
                        .bind(lo + rng.gen_range(1000..4000))
                }
                2 => sqlx::query("UPDATE students SET year_in_school = (ARRAY['FR','SO','JR','SR'])[1 + (id + $1) % 4] WHERE id % 3 <> $2")
                    .bind(rng.gen_range(0..4i64))
                    .bind(rng.gen_range(0..3i64)),
                _ => sqlx::query("UPDATE students SET first_name = $1, age = 1 + (id % 100) WHERE id % $2 = 0")
                    .bind(first(rng))
                    .bind(rng.gen_range(2..4i64)),
            };
            Ok(q.execute(&mut *c).await?.rows_affected())
        }
        Op::BulkEnroll => {
            let Some(k) = some_row(c, "courses").await? else { return Ok(0) };
            Ok(sqlx::query(
                "INSERT INTO student_courses (student_id, course_id) SELECT id, $1 FROM students WHERE id % $2 = $3 ON CONFLICT DO NOTHING",
            )
            .bind(k)
            .bind(rng.gen_range(3..8i64))
            .bind(rng.gen_range(0..3i64))
            .execute(&mut *c)
            .await?
            .rows_affected())
        }
        Op::BulkUnenroll => {
            let Some(k) = some_row(c, "courses").await? else { return Ok(0) };
            Ok(sqlx::query("DELETE FROM student_courses WHERE course_id = $1 OR student_id % 41 = $2")
                .bind(k)
                .bind(rng.gen_range(0..41i64))
                .execute(&mut *c)
                .await?
                .rows_affected())
        }
        Op::BulkInsert | Op::BulkDelete => {
            // Keep the directory near its starting size.
            if count(c, "students").await? < target {
                let uni = some_row(c, "universities").await?;
                Ok(sqlx::query(
                    "INSERT INTO students (first_name, last_name, age, year_in_school, university_id)
                     SELECT 'Bulk' || g, $1, 1 + g % 100, (ARRAY['FR','SO','JR','SR'])[1 + g % 4], CASE WHEN g % 3 = 0 THEN NULL ELSE $2 END
                       FROM generate_series(1, $3) g",
                )
                .bind(format!("{} {w}", last(rng)))
                .bind(uni)
                .bind(rng.gen_range(200..1000i64))
                .execute(&mut *c)
                .await?
                .rows_affected())
            } else {
                Ok(sqlx::query("DELETE FROM students WHERE id IN (SELECT id FROM students WHERE id % 17 = $1 ORDER BY id LIMIT $2)")
                    .bind(rng.gen_range(0..17i64))
                    .bind(rng.gen_range(200..800i64))
                    .execute(&mut *c)
                    .await?
                    .rows_affected())
            }
        }
        Op::MergeUniversities => {
            let (Some(a), Some(b)) = (some_row(c, "universities").await?, some_row(c, "universities").await?) else { return Ok(0) };
            Ok(sqlx::query("UPDATE students SET university_id = $1 WHERE university_id = $2")
                .bind(a)
                .bind(b)
                .execute(&mut *c)
                .await?
                .rows_affected())
        }
        Op::MoveStudentId => {
            // The old document must go and the new one come. A student with enrollments
            // cannot move (no ON UPDATE CASCADE): the FK refuses, which is fine.
            let Some(s) = some_student(c, rng).await? else { return Ok(0) };
            Ok(sqlx::query("UPDATE students SET id = nextval(pg_get_serial_sequence('students', 'id')) WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM student_courses WHERE student_id = $1)")
                .bind(s)
                .execute(&mut *c)
                .await?
                .rows_affected())
        }
        Op::NoopBulkUpdate => Ok(sqlx::query("UPDATE students SET age = age, university_id = university_id WHERE id % 5 = $1")
            .bind(rng.gen_range(0..5i64))
            .execute(&mut *c)
            .await?
            .rows_affected()),
    }
}

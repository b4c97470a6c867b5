//! 7. Write throughput under concurrency: what the capture costs writers as users meet it,
//!    with many connections at once. pgbench drives three kinds of transaction at several
//!    client counts against one seeded database, with the capture triggers enabled and
//!    disabled in turn (interleaved, several rounds), once with no worker running and once
//!    with a scheduler and two workers draining the change log meanwhile. Between the two
//!    phases, the wake-up's idle cost: a worker and a scheduler polling the mark sequence
//!    with nothing to do, against the same pair polling once a minute.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use sqlx::PgPool;

use super::{
    cpu::{self, PgCpu, ProcCpu},
    env::{BenchEnv, Services},
    report::{Outcome, Row},
    stats, Plan,
};
use crate::progress;

const BENCH: &str = "7. Write throughput";

/// One kind of transaction: a pgbench script. Variables given with `-D`: `n` (students,
/// ids 1..=n), `nuni` (universities) and `ncourses` (courses), ids from 1 in both.
struct Kind {
    key: &'static str,
    label: &'static str,
    script: &'static str,
}

const KINDS: [Kind; 3] = [
    Kind {
        key: "update1",
        label: "(a) one-row `UPDATE` of a random student, autocommit",
        script: "\\set id random(1, :n)\n\
                 UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id = :id;\n",
    },
    Kind {
        key: "insert",
        label: "(b) `INSERT` of a student and its 3 enrollments, one transaction",
        // One statement per row, as an ORM saving a student and its enrollments does: the
        // capture fires for each of the four statements.
        script: "\\set uni random(1, :nuni)\n\
                 \\set age random(18, 30)\n\
                 \\set c1 random(1, :ncourses)\n\
                 \\set c2 :c1 % :ncourses + 1\n\
                 \\set c3 :c2 % :ncourses + 1\n\
                 BEGIN;\n\
                 INSERT INTO students (first_name, last_name, age, year_in_school, university_id) VALUES ('Bench', 'Writer', :age, 'FR', :uni) RETURNING id \\gset\n\
                 INSERT INTO student_courses (student_id, course_id) VALUES (:id, :c1);\n\
                 INSERT INTO student_courses (student_id, course_id) VALUES (:id, :c2);\n\
                 INSERT INTO student_courses (student_id, course_id) VALUES (:id, :c3);\n\
                 END;\n",
    },
    Kind {
        key: "update5",
        label: "(c) one transaction updating 5 random students",
        // One id from each fifth of the table, in increasing order: writers lock students
        // in one order, so they never deadlock each other (and the ids stay random).
        script: "\\set fifth :n / 5\n\
                 \\set id1 random(1, :fifth)\n\
                 \\set id2 :fifth + random(1, :fifth)\n\
                 \\set id3 2 * :fifth + random(1, :fifth)\n\
                 \\set id4 3 * :fifth + random(1, :fifth)\n\
                 \\set id5 4 * :fifth + random(1, :fifth)\n\
                 BEGIN;\n\
                 UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id = :id1;\n\
                 UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id = :id2;\n\
                 UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id = :id3;\n\
                 UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id = :id4;\n\
                 UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id = :id5;\n\
                 END;\n",
    },
];

/// The sides compared in one cell (kind × clients × phase).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
enum Variant {
    /// The capture triggers disabled.
    Off,
    /// The capture as migrated.
    On,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Off => "no capture",
            Variant::On => "capture",
        }
    }
}

/// The targets (issue 16), with no workers: at this many clients, capture ÷ no
/// capture tps at least `min_ratio` (per kind, in `KINDS` order); at one client, the latency
/// overhead at most [`ONE_CLIENT_OVERHEAD`].
const TARGET_CLIENTS: usize = 32;
const TARGET_RATIO: [f64; 3] = [0.80, 0.70, 0.70];
const ONE_CLIENT_OVERHEAD: f64 = 1.15;

/// Phase 0: nothing drains the marks. Phase 1: a scheduler and two workers run.
const PHASES: [&str; 2] = ["none", "2 workers + scheduler"];

/// What one pgbench run measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct PgbenchRun {
    tps: f64,
    processed: u64,
    failed: u64,
    retried: u64,
    /// Per-transaction latencies (s), from pgbench's `--log`.
    #[serde(skip)]
    latencies: Vec<f64>,
}

/// One measured run, for the raw numbers.
#[derive(Clone, Debug, serde::Serialize)]
struct RunRecord {
    phase: &'static str,
    kind: &'static str,
    clients: usize,
    variant: Variant,
    round: usize,
    tps: f64,
    processed: u64,
    failed: u64,
    retried: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// 1-minute load average when the run started.
    load1: f64,
    /// Changes outstanding when pgbench ended (marks and log rows, `tidemark.outstanding`,
    /// + parent/set rows).
    marks_at_end: i64,
    /// With workers and capture: seconds until the workers had drained every mark (None:
    /// not within the limit).
    drained_s: Option<f64>,
}

#[derive(Default)]
struct Cell {
    /// tps by round.
    tps: BTreeMap<usize, f64>,
    latencies: Vec<f64>,
    failed: u64,
    retried: u64,
    marks_at_end: Vec<f64>,
    drained_s: Vec<f64>,
    undrained: usize,
    /// What pgbench's backends were doing, sampled during the runs: wait event → samples.
    waits: BTreeMap<String, u64>,
    /// CPU seconds of pgbench's backends, and transactions, summed over the rounds.
    backend_cpu_s: f64,
    processed: u64,
    /// Share of the machine's CPU time busy during each run (all cores, /proc/stat).
    machine_busy: Vec<f64>,
    /// With workers: CPU seconds of the tidemark processes, of the database's other backends
    /// (theirs, mostly), and of the search server during the runs, and the runs' seconds.
    workers_cpu_s: f64,
    other_backend_cpu_s: f64,
    server_cpu_s: f64,
    run_s: f64,
}

struct Ctx {
    pgbench: PathBuf,
    max_tries: bool,
    dir: PathBuf,
    scripts: Vec<PathBuf>,
    /// `-D` variables.
    vars: Vec<String>,
    /// Highest student id before any run: inserted students (above it) are removed after each run.
    base_max_id: i64,
}

pub async fn run(plan: &Plan, services: &Services) -> Result<Outcome> {
    // Before anything is created: a missing pgbench fails at once, with the way to get it.
    let pgbench = find_pgbench()?;
    let mut env = BenchEnv::new(services, "writes", plan.out_dir.join("logs")).await?;
    let r = inner(plan, &mut env, pgbench).await;
    env.cleanup().await;
    r
}

/// pgbench: `$PGBENCH`, else Debian's `/usr/lib/postgresql/<major>/bin/pgbench` (the newest
/// major), else `pgbench` on the PATH (on Debian a wrapper that picks a version).
fn find_pgbench() -> Result<PathBuf> {
    let usable = |p: &Path| std::process::Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    if let Some(p) = std::env::var_os("PGBENCH") {
        let p = PathBuf::from(p);
        ensure!(usable(&p), "PGBENCH={} does not run (`{} --version` failed)", p.display(), p.display());
        return Ok(p);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin/pgbench"))))
                .filter(|(_, p)| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    debian.sort();
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("pgbench")).filter(|p| p.is_file()).collect::<Vec<_>>())
        .unwrap_or_default();
    debian.into_iter().rev().map(|(_, p)| p).chain(on_path).find(|p| usable(p)).context(
        "pgbench not found (looked for $PGBENCH, /usr/lib/postgresql/*/bin/pgbench and pgbench on the PATH): \
         it ships with PostgreSQL (Debian: package postgresql-<major>, e.g. `apt-get install postgresql-15`); \
         or set PGBENCH=/path/to/pgbench",
    )
}

fn pgbench_major(pgbench: &Path) -> Option<u32> {
    let out = std::process::Command::new(pgbench).arg("--version").output().ok()?;
    // "pgbench (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let version = text.split_whitespace().nth(2)?;
    version.split('.').next()?.parse().ok()
}

/// Enables or disables the capture on `students` and `student_courses`.
///
/// `DISABLE TRIGGER USER` disables every trigger that is not internally generated: on these
/// two tables, exactly the capture triggers (`tidemark_capture_*`). The foreign keys' triggers
/// (`RI_ConstraintTrigger_*`) are internal and stay enabled (`DISABLE TRIGGER ALL` would
/// disable them too, and the inserts would skip their FK checks): checked below, both ways.
async fn set_capture(env: &BenchEnv, on: bool) -> Result<()> {
    let verb = if on { "ENABLE" } else { "DISABLE" };
    env.sql(&format!("ALTER TABLE students {verb} TRIGGER USER; ALTER TABLE student_courses {verb} TRIGGER USER")).await?;
    let (user_disabled, user_enabled) = env
        .scalar2(
            "SELECT count(*) FILTER (WHERE tgenabled = 'D'), count(*) FILTER (WHERE tgenabled <> 'D') FROM pg_trigger \
             WHERE NOT tgisinternal AND tgrelid IN ('students'::regclass, 'student_courses'::regclass)",
        )
        .await?;
    let (fk_disabled, fk_enabled) = env
        .scalar2(
            "SELECT count(*) FILTER (WHERE tgenabled = 'D'), count(*) FILTER (WHERE tgenabled <> 'D') FROM pg_trigger \
             WHERE tgisinternal AND tgrelid IN ('students'::regclass, 'student_courses'::regclass)",
        )
        .await?;
    ensure!(fk_disabled == 0 && fk_enabled > 0, "foreign-key triggers: {fk_enabled} enabled, {fk_disabled} disabled");
    ensure!(
        if on { user_disabled == 0 && user_enabled > 0 } else { user_enabled == 0 && user_disabled > 0 },
        "capture triggers after {verb}: {user_enabled} enabled, {user_disabled} disabled"
    );
    Ok(())
}

/// Every run starts alike: no marks and an empty change log, tables vacuumed, and right after
/// a checkpoint (so each run pays the full-page images of the pages it first touches,
/// whatever ran before it).
async fn settle(env: &BenchEnv) -> Result<()> {
    env.clear_marks().await?;
    env.sql("VACUUM students, student_courses, tidemark.changes, tidemark.marks, tidemark.parents").await?;
    env.sql("CHECKPOINT").await
}

/// Removes the students a run inserted (and their enrollments), with every trigger off for
/// this transaction only (`session_replication_role = replica`: no capture, no marks; the
/// enrollments are deleted first, as the FK's cascade is off too).
async fn remove_inserted(env: &BenchEnv, base_max_id: i64) -> Result<()> {
    env.sql(&format!(
        "BEGIN; SET LOCAL session_replication_role = replica; \
         DELETE FROM student_courses WHERE student_id > {base_max_id}; DELETE FROM students WHERE id > {base_max_id}; COMMIT"
    ))
    .await
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// Runs pgbench once: `clients` connections for `secs` seconds (or `transactions` per
/// client), prepared statements, per-transaction log.
async fn pgbench(ctx: &Ctx, env: &BenchEnv, kind: usize, clients: usize, length: Length, tag: &str) -> Result<PgbenchRun> {
    let prefix = ctx.dir.join(format!("log-{tag}"));
    let mut args: Vec<String> =
        vec!["-n".into(), "-M".into(), "prepared".into(), "-c".into(), clients.to_string(), "-j".into(), clients.min(2).to_string()];
    match length {
        Length::Secs(s) => args.extend(["-T".into(), s.to_string()]),
        Length::Transactions(t) => args.extend(["-t".into(), t.to_string()]),
    }
    if ctx.max_tries {
        // Deadlocks (writers against the workers' mark deletions) are retried, as an
        // application would, and counted.
        args.push("--max-tries=10".into());
    }
    for v in &ctx.vars {
        args.extend(["-D".into(), v.clone()]);
    }
    args.extend(["--log".into(), format!("--log-prefix={}", prefix.display()), "-f".into(), ctx.scripts[kind].display().to_string()]);
    args.push(env.database_url.clone());
    let limit = Duration::from_secs(match length {
        Length::Secs(s) => s + 120,
        Length::Transactions(_) => 120,
    });
    let mut attempt = 0;
    let out = loop {
        attempt += 1;
        let mut cmd = tokio::process::Command::new(&ctx.pgbench);
        cmd.args(&args).stdin(std::process::Stdio::null()).kill_on_drop(true).env_remove("PGOPTIONS");
        let out =
            tokio::time::timeout(limit, cmd.output()).await.with_context(|| format!("pgbench {tag}: timed out after {limit:?}"))??;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        // The PostgreSQL server is shared: other test suites and benchmarks may hold the
        // connections for a while. Waited for (3 minutes at most), then the run is skipped.
        if !out.status.success() && (stderr.contains("too many clients") || stderr.contains("remaining connection slots")) {
            remove_logs(&prefix);
            if attempt >= NO_SLOT_ATTEMPTS {
                return Err(NoFreeConnection.into());
            }
            if attempt == 1 || attempt % 6 == 0 {
                progress!("writes: {tag}: no free connection for {clients} clients (try {attempt}); again in 5 s");
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        break out;
    };
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        remove_logs(&prefix);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        bail!(
            "pgbench {tag} failed ({}): {}\n{}",
            out.status,
            tail.join("\n"),
            stdout.lines().rev().take(10).collect::<Vec<_>>().join("\n")
        );
    }
    let field = |prefix: &str| -> Option<f64> {
        // "tps = 386.05 (…)", "number of failed transactions: 0 (0.000%)", "… processed: 3/3" (with -t).
        let rest = stdout.lines().find_map(|l| l.trim().strip_prefix(prefix))?;
        rest.split_whitespace().next()?.split('/').next()?.parse().ok()
    };
    let mut r = PgbenchRun {
        tps: field("tps = ").with_context(|| format!("no tps in pgbench's output:\n{stdout}"))?,
        processed: field("number of transactions actually processed: ").map_or(0, |x| x as u64),
        failed: field("number of failed transactions: ").map_or(0, |x| x as u64),
        retried: field("number of transactions retried: ").map_or(0, |x| x as u64),
        latencies: Vec::new(),
    };
    // "client_id transaction_no time script_no time_epoch time_us [retries]": time is the
    // transaction's latency in µs ("failed" for a failed one).
    for path in log_files(&prefix) {
        let text = std::fs::read_to_string(&path)?;
        r.latencies.extend(text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()).map(|us| us / 1e6));
        let _ = std::fs::remove_file(&path);
    }
    ensure!(!r.latencies.is_empty(), "pgbench {tag}: no per-transaction log under {}", prefix.display());
    Ok(r)
}

/// How many times a run is tried while the shared server has no free connection for it.
const NO_SLOT_ATTEMPTS: u32 = 36;

/// The server had no free connection for a run's clients, try after try: the run is skipped.
#[derive(Debug)]
struct NoFreeConnection;

impl std::fmt::Display for NoFreeConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no free connection on the server, {NO_SLOT_ATTEMPTS} tries 5 s apart")
    }
}

impl std::error::Error for NoFreeConnection {}

#[derive(Clone, Copy)]
enum Length {
    Secs(u64),
    Transactions(u64),
}

/// pgbench's log files: `<prefix>.<pid>` and `<prefix>.<pid>.<thread>`.
fn log_files(prefix: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(stem)) = (prefix.parent(), prefix.file_name().and_then(|s| s.to_str())) else { return Vec::new() };
    let stem = format!("{stem}.");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|s| s.to_str()).is_some_and(|n| n.starts_with(&stem)))
                .collect()
        })
        .unwrap_or_default()
}

fn remove_logs(prefix: &Path) {
    for p in log_files(prefix) {
        let _ = std::fs::remove_file(p);
    }
}

/// What was sampled during one pgbench run.
#[derive(Default)]
struct Sampled {
    /// Wait event of pgbench's backends inside a transaction → samples.
    waits: BTreeMap<String, u64>,
    /// CPU of pgbench's backends over the run: per backend, the last reading less the first
    /// (its start-up before the first sample is left out), summed; seconds.
    backend_cpu_s: f64,
    /// The same for the database's other backends (the workers' and the scheduler's
    /// connections, the harness's own).
    other_backend_cpu_s: f64,
}

/// Samples, every 50 ms until `stop`, what pgbench's backends inside a transaction are
/// waiting on (`pg_stat_activity`; no wait event: running, or ready to run, on a CPU), and
/// every pgbench backend's CPU (`/proc/<pid>/stat`: the server runs on this machine).
async fn sample_run(pool: PgPool, stop: Arc<AtomicBool>) -> Result<Sampled> {
    let mut out = Sampled::default();
    // pid → (pgbench's, first reading, last reading)
    let mut seen: BTreeMap<i32, (bool, Duration, Duration)> = BTreeMap::new();
    let mut conn = pool.acquire().await?;
    while !stop.load(Ordering::Relaxed) {
        let rows: Vec<(i32, bool, Option<String>, String)> = sqlx::query_as(
            "SELECT pid, application_name = 'pgbench', state, coalesce(wait_event_type || ':' || wait_event, 'CPU') \
               FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'",
        )
        .fetch_all(&mut *conn)
        .await?;
        for (pid, pgbench, state, wait) in rows {
            if pgbench && state.as_deref().is_some_and(|s| s != "idle") {
                *out.waits.entry(wait).or_default() += 1;
            }
            if let Some(c) = cpu::pid_cpu(pid as u32) {
                seen.entry(pid).and_modify(|e| e.2 = c).or_insert((pgbench, c, c));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (pgbench, first, last) in seen.values() {
        let spent = last.saturating_sub(*first).as_secs_f64();
        if *pgbench {
            out.backend_cpu_s += spent;
        } else {
            out.other_backend_cpu_s += spent;
        }
    }
    Ok(out)
}

/// (busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat).
fn machine_cpu() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// What each script's capture writes, checked before the runs: three transactions of each
/// kind, one client, from a session that `LISTEN`s on the channel the capture used to
/// notify. Returns, per kind, (rows appended to `tidemark.changes`, rows in
/// `tidemark.marks`, notifications received). The capture under measurement must
/// append to the log, upsert no mark and notify no one.
async fn check_log(ctx: &Ctx, env: &BenchEnv) -> Result<Vec<(i64, i64, usize)>> {
    set_capture(env, true).await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&env.pool).await?;
    listener.listen("tidemark_sync").await?;
    let mut out = Vec::new();
    for (k, kind) in KINDS.iter().enumerate() {
        env.clear_marks().await?;
        pgbench(ctx, env, k, 1, Length::Transactions(3), &format!("check-{}", kind.key)).await?;
        let (logged, marks) = env.scalar2("SELECT (SELECT count(*) FROM tidemark.changes), (SELECT count(*) FROM tidemark.marks)").await?;
        let mut notified = 0;
        while let Ok(r) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
            r?;
            notified += 1;
        }
        ensure!(
            logged > 0 && marks == 0 && notified == 0,
            "{}: the capture appended {logged} log row(s), upserted {marks} mark(s) and sent {notified} notification(s)",
            kind.key
        );
        out.push((logged, marks, notified));
    }
    listener.unlisten_all().await?;
    drop(listener);
    remove_inserted(env, ctx.base_max_id).await?;
    env.clear_marks().await?;
    Ok(out)
}

/// The wake-up's idle cost, one measurement: a worker and a scheduler (`--interval 5s`, as
/// in the phase with workers) with `sync.wakeup_interval = interval`, started against the
/// indexed database with nothing to do; after they settle, `plan.writes_idle_secs` seconds of
/// the database's transactions (`pg_stat_database`) and CPU (the `tidemark wakeup` backends,
/// every backend of the database, the two processes).
#[derive(Clone, Debug, serde::Serialize)]
struct Idle {
    interval: String,
    secs: f64,
    /// Transactions committed (or rolled back) in the database per second, all clients.
    xacts_per_s: f64,
    /// The harness's own transactions in that count (its two reads of the statistics).
    harness_xacts: i64,
    /// The `tidemark wakeup` connections (one per process) and their backends' CPU, ms/s.
    wakeup_backends: usize,
    wakeup_backend_cpu_ms_per_s: f64,
    /// Every backend of the database (wake-up, the processes' pools, the harness's pool).
    all_backends_cpu_ms_per_s: f64,
    /// The worker and scheduler processes themselves.
    processes_cpu_ms_per_s: f64,
    /// 1-minute load average at the end.
    load1: f64,
    /// Transactions holding an xid in this database at the start and at the end, and the
    /// longest open at the end (s): the wake-up watches this database's transactions running
    /// when the sequence last moved, with a second query per poll until they have ended.
    open_xids: (i64, i64),
    longest_open_s: f64,
}

async fn db_xacts(env: &BenchEnv) -> Result<i64> {
    // A fresh snapshot of the statistics each time (they are cached per transaction).
    env.sql("SELECT pg_stat_clear_snapshot()").await?;
    env.scalar("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()").await
}

async fn idle_cost(plan: &Plan, env: &mut BenchEnv, interval: &str) -> Result<Idle> {
    let config = env.log_dir.join(format!("{}-idle-{interval}.toml", env.kind));
    std::fs::write(&config, format!("[sync]\nwakeup_interval = \"{interval}\"\n"))?;
    let config = config.display().to_string();
    let pids = vec![
        env.spawn(&["--config", &config, "scheduler", "--interval", "5s"], &format!("idle-{interval}-scheduler"))?,
        env.spawn(&["--config", &config, "worker"], &format!("idle-{interval}-worker"))?,
    ];
    let wakeups: Vec<i32> = super::env::poll("the wake-up connections", Duration::from_millis(100), Duration::from_secs(60), || async {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tidemark wakeup'",
        )
        .fetch_all(&env.pool)
        .await?;
        Ok((pids.len() >= 2).then_some(pids))
    })
    .await?;
    // Past the start (the first polls, the worker's start-up step, the first scheduler tick).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let wake_cpu0: Vec<Duration> = wakeups.iter().map(|p| cpu::pid_cpu(*p as u32).unwrap_or_default()).collect();
    let procs = ProcCpu::start(&pids);
    let pg = PgCpu::start(&env.pool, &env.db_name).await;
    let open0 = env.scalar("SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND datname = current_database()").await?;
    let x0 = db_xacts(env).await?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(plan.writes_idle_secs)).await;
    let x1 = db_xacts(env).await?;
    let secs = t.elapsed().as_secs_f64();
    let (open1, longest): (i64, f64) = sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM max(now() - xact_start)), 0)::float8 FROM pg_stat_activity \
         WHERE backend_xid IS NOT NULL AND datname = current_database()",
    )
    .fetch_one(&env.pool)
    .await?;
    let wake_cpu: Duration = wakeups.iter().zip(&wake_cpu0).map(|(p, c0)| cpu::pid_cpu(*p as u32).unwrap_or(*c0).saturating_sub(*c0)).sum();
    let procs_cpu = procs.spent();
    let pg_cpu = pg.spent(&env.pool).await;
    let load1 = load1();
    env.stop_processes().await;
    // The harness's own transactions between the two counts: the first count, and the
    // second read's `pg_stat_clear_snapshot`.
    let harness_xacts = 2;
    let idle = Idle {
        interval: interval.to_string(),
        secs,
        xacts_per_s: (x1 - x0 - harness_xacts) as f64 / secs,
        harness_xacts,
        wakeup_backends: wakeups.len(),
        wakeup_backend_cpu_ms_per_s: wake_cpu.as_secs_f64() * 1e3 / secs,
        all_backends_cpu_ms_per_s: pg_cpu.as_secs_f64() * 1e3 / secs,
        processes_cpu_ms_per_s: procs_cpu.as_secs_f64() * 1e3 / secs,
        load1,
        open_xids: (open0, open1),
        longest_open_s: longest,
    };
    progress!(
        "writes: idle, wakeup_interval {interval}: {:.1} transactions/s, wake-up backends {:.2} ms CPU/s, all backends {:.2} ms/s, processes {:.2} ms/s (load {load1:.2})",
        idle.xacts_per_s,
        idle.wakeup_backend_cpu_ms_per_s,
        idle.all_backends_cpu_ms_per_s,
        idle.processes_cpu_ms_per_s
    );
    Ok(idle)
}

async fn inner(plan: &Plan, env: &mut BenchEnv, pgbench_path: PathBuf) -> Result<Outcome> {
    let started = Instant::now();
    let load_before = loadavg();
    let pgbench_version = std::process::Command::new(&pgbench_path)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let major = pgbench_major(&pgbench_path);
    progress!("writes: {pgbench_version} ({})", pgbench_path.display());

    env.seed(plan.writes_students).await?;
    env.clear_marks().await?;
    let n = env.students as i64;
    let (lo, hi) = env.scalar2("SELECT min(id), max(id) FROM students").await?;
    ensure!(lo == 1 && hi == n, "expected student ids 1..={n}, found {lo}..={hi}");
    let (nuni, uni_max) = env.scalar2("SELECT count(*), max(id) FROM universities").await?;
    let (ncourses, course_max) = env.scalar2("SELECT count(*), max(id) FROM courses").await?;
    ensure!(nuni == uni_max && ncourses == course_max && ncourses >= 3, "universities/courses ids are not 1..=count");

    let dir = plan.out_dir.join("writes");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut scripts = Vec::new();
    for k in &KINDS {
        let p = dir.join(format!("{}.sql", k.key));
        std::fs::write(&p, k.script)?;
        scripts.push(p);
    }
    let ctx = Ctx {
        pgbench: pgbench_path,
        max_tries: major.is_some_and(|m| m >= 15),
        dir,
        scripts,
        vars: vec![format!("n={n}"), format!("nuni={nuni}"), format!("ncourses={ncourses}")],
        base_max_id: n,
    };
    let logged = check_log(&ctx, env).await?;
    progress!("writes: the capture logs ({logged:?}: log rows, marks, notifications per kind)");

    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'wal_sync_method', \
         'shared_buffers', 'max_connections', 'commit_delay', 'full_page_writes') ORDER BY name",
    )
    .fetch_all(&env.pool)
    .await?;
    let max_clients = plan.writes_clients.iter().copied().max().unwrap_or(1);
    let free_slots = env.scalar("SELECT current_setting('max_connections')::bigint - (SELECT count(*) FROM pg_stat_activity)").await?;
    if free_slots < max_clients as i64 + 25 {
        progress!("writes: warning: {free_slots} free connection slots on the server for {max_clients} clients (+ workers)");
    }

    let runs_total = plan.writes_rounds * KINDS.len() * plan.writes_clients.len() * 4;
    progress!(
        "writes: {runs_total} pgbench runs of {} s ({} rounds × {} kinds × {:?} clients × 2 sides × 2 phases)",
        plan.writes_secs,
        plan.writes_rounds,
        KINDS.len(),
        plan.writes_clients
    );
    let mut cells: BTreeMap<(usize, usize, usize, Variant), Cell> = BTreeMap::new();
    let mut records: Vec<RunRecord> = Vec::new();
    let mut loads: Vec<f64> = Vec::new();
    let mut capture_on: Option<bool> = None;
    let mut index_secs = 0.0;
    let mut idle = Vec::new();
    let mut deployment: Vec<u32> = Vec::new();
    // Runs the shared server had no connections for.
    let mut skipped: Vec<String> = Vec::new();
    let server_pid: Vec<u32> = cpu::search_server_pid().into_iter().collect();
    for (phase, phase_name) in PHASES.iter().enumerate() {
        if phase == 1 {
            // The workers need an index: the first full index, as a first run builds it
            // (the capture on, as it is in production while it runs).
            set_capture(env, true).await?;
            capture_on = Some(true);
            index_secs = env.first_index(2).await?;
            // With an index and nothing to do: what the wake-up costs, polling every 50 ms
            // (the default) against once a minute, in alternation.
            for round in 0..plan.writes_idle_rounds {
                let order: [&str; 2] = if round % 2 == 0 { ["50ms", "60s"] } else { ["60s", "50ms"] };
                for interval in order {
                    idle.push(idle_cost(plan, env, interval).await?);
                }
            }
            deployment = env.start_deployment().await?;
            progress!("writes: scheduler and 2 workers running");
        }
        for round in 0..plan.writes_rounds {
            for (k, kind) in KINDS.iter().enumerate() {
                for &clients in &plan.writes_clients {
                    // Sides in a rotating order: each side takes each place in turn across rounds.
                    let mut order: Vec<Variant> = vec![Variant::On, Variant::Off];
                    let len = order.len();
                    order.rotate_left(round % len);
                    let mut line = Vec::new();
                    for v in order {
                        let on = v == Variant::On;
                        if capture_on != Some(on) {
                            set_capture(env, on).await?;
                            capture_on = Some(on);
                        }
                        settle(env).await?;
                        let load = load1();
                        loads.push(load);
                        let tag = format!("p{phase}-r{round}-{}-c{clients}-{v:?}", kind.key);
                        let stop = Arc::new(AtomicBool::new(false));
                        let sampler = tokio::spawn(sample_run(env.pool.clone(), stop.clone()));
                        let (workers_cpu, server_cpu) = (ProcCpu::start(&deployment), ProcCpu::start(&server_pid));
                        let (machine0, t0) = (machine_cpu(), Instant::now());
                        let r = pgbench(&ctx, env, k, clients, Length::Secs(plan.writes_secs), &tag).await;
                        let (machine1, run_s) = (machine_cpu(), t0.elapsed().as_secs_f64());
                        let (workers_cpu, server_cpu) = (workers_cpu.spent().as_secs_f64(), server_cpu.spent().as_secs_f64());
                        stop.store(true, Ordering::Relaxed);
                        let sampled = sampler.await??;
                        let r = match r {
                            Err(e) if e.is::<NoFreeConnection>() => {
                                progress!("writes: {tag}: skipped ({e})");
                                skipped.push(tag);
                                line.push(format!("{} skipped", v.label()));
                                if kind.key == "insert" {
                                    remove_inserted(env, ctx.base_max_id).await?;
                                }
                                continue;
                            }
                            r => r?,
                        };
                        let busy = (machine1.0 - machine0.0) as f64 / (machine1.1 - machine0.1).max(1) as f64;
                        let marks_at_end = {
                            let (s, p) = env.marks_left().await?;
                            s + p
                        };
                        let mut drained_s = None;
                        if phase == 0 {
                            ensure!((marks_at_end > 0) == on, "{tag}: {marks_at_end} marks after the run");
                        } else if on {
                            // Let the workers catch up before the next run (bounded), and time it.
                            let t = Instant::now();
                            loop {
                                if env.marks_left().await? == (0, 0) {
                                    drained_s = Some(t.elapsed().as_secs_f64());
                                    break;
                                }
                                if t.elapsed().as_secs_f64() > plan.writes_drain_secs {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        if kind.key == "insert" {
                            remove_inserted(env, ctx.base_max_id).await?;
                        }
                        let d = stats::dist(&r.latencies);
                        line.push(format!("{} {:.0} tps", v.label(), r.tps));
                        records.push(RunRecord {
                            phase: phase_name,
                            kind: kind.key,
                            clients,
                            variant: v,
                            round,
                            tps: r.tps,
                            processed: r.processed,
                            failed: r.failed,
                            retried: r.retried,
                            p50_ms: d.p50 * 1e3,
                            p99_ms: d.p99 * 1e3,
                            load1: load,
                            marks_at_end,
                            drained_s,
                        });
                        let cell = cells.entry((phase, k, clients, v)).or_default();
                        cell.tps.insert(round, r.tps);
                        cell.latencies.extend(r.latencies);
                        cell.failed += r.failed;
                        cell.retried += r.retried;
                        for (w, n) in sampled.waits {
                            *cell.waits.entry(w).or_default() += n;
                        }
                        cell.backend_cpu_s += sampled.backend_cpu_s;
                        cell.processed += r.processed;
                        cell.machine_busy.push(busy);
                        cell.workers_cpu_s += workers_cpu;
                        cell.other_backend_cpu_s += sampled.other_backend_cpu_s;
                        cell.server_cpu_s += server_cpu;
                        cell.run_s += run_s;
                        if phase == 1 && on {
                            cell.marks_at_end.push(marks_at_end as f64);
                            match drained_s {
                                Some(s) => cell.drained_s.push(s),
                                None => cell.undrained += 1,
                            }
                        }
                    }
                    progress!(
                        "writes: workers {phase_name}, round {}/{}, {}, {clients} clients: {} (load {:.2})",
                        round + 1,
                        plan.writes_rounds,
                        kind.key,
                        line.join(", "),
                        load1()
                    );
                }
            }
        }
        if phase == 1 {
            env.stop_processes().await;
            deployment.clear();
        }
    }
    set_capture(env, true).await?;
    let load_after = loadavg();
    let elapsed = started.elapsed().as_secs_f64();
    Ok(outcome(
        plan,
        env,
        &cells,
        records,
        &loads,
        (&load_before, &load_after),
        &settings,
        &pgbench_version,
        index_secs,
        &logged,
        &idle,
        &skipped,
        elapsed,
    ))
}

/// Median over rounds of `v`'s tps ÷ `Off`'s tps in the same round.
fn paired_ratio(cells: &BTreeMap<(usize, usize, usize, Variant), Cell>, phase: usize, k: usize, c: usize, v: Variant) -> f64 {
    let (Some(a), Some(b)) = (cells.get(&(phase, k, c, v)), cells.get(&(phase, k, c, Variant::Off))) else { return f64::NAN };
    let r: Vec<f64> = a.tps.iter().filter_map(|(round, x)| Some(x / b.tps.get(round)?)).collect();
    stats::median(&r)
}

fn median_tps(cell: &Cell) -> f64 {
    stats::median(&cell.tps.values().copied().collect::<Vec<_>>())
}

/// Microseconds with a sign.
fn signed_us(s: f64) -> String {
    if s.is_finite() {
        format!("{:+.0} µs", s * 1e6)
    } else {
        "n/a".into()
    }
}

/// Milliseconds, two decimals below 10 ms.
fn ms(s: f64) -> String {
    if !s.is_finite() {
        "n/a".into()
    } else if s < 0.01 {
        format!("{:.2}", s * 1e3)
    } else {
        format!("{:.1}", s * 1e3)
    }
}

#[allow(clippy::too_many_arguments)]
fn outcome(
    plan: &Plan,
    env: &BenchEnv,
    cells: &BTreeMap<(usize, usize, usize, Variant), Cell>,
    records: Vec<RunRecord>,
    loads: &[f64],
    (load_before, load_after): (&str, &str),
    settings: &[(String, String)],
    pgbench_version: &str,
    index_secs: f64,
    logged: &[(i64, i64, usize)],
    idle: &[Idle],
    skipped: &[String],
    elapsed: f64,
) -> Outcome {
    let mut out = Outcome::default();
    let side = |cell: Option<&Cell>| -> String {
        match cell {
            Some(c) => {
                let d = stats::dist(&c.latencies);
                let mut s = format!("{} tps · {} / {} ms", stats::int(median_tps(c).round() as u64), ms(d.p50), ms(d.p99));
                if c.failed > 0 || c.retried > 0 {
                    s.push_str(&format!(" ({} retried, {} failed)", c.retried, c.failed));
                }
                s
            }
            None => "—".into(),
        }
    };
    // (tps ratio, p50 ratio, p99 ratio, mean latency ratio) of capture ÷ none.
    let ratios = |phase: usize, k: usize, c: usize| -> Option<(f64, f64, f64, f64)> {
        let (a, b) = (cells.get(&(phase, k, c, Variant::On))?, cells.get(&(phase, k, c, Variant::Off))?);
        let (da, db) = (stats::dist(&a.latencies), stats::dist(&b.latencies));
        Some((paired_ratio(cells, phase, k, c, Variant::On), da.p50 / db.p50, da.p99 / db.p99, da.mean / db.mean))
    };
    let versus = |phase: usize, k: usize, c: usize| -> String {
        match ratios(phase, k, c) {
            Some((t, p50, p99, _)) => format!("**{}** · {} / {}", stats::ratio(t), stats::ratio(p50), stats::ratio(p99)),
            None => "—".into(),
        }
    };
    let max_clients = plan.writes_clients.iter().copied().max().unwrap_or(1);
    let target_clients = if plan.writes_clients.contains(&TARGET_CLIENTS) { TARGET_CLIENTS } else { max_clients };
    for (k, kind) in KINDS.iter().enumerate() {
        let tps = |phase: usize, c: usize, v: Variant| cells.get(&(phase, k, c, v)).map_or(f64::NAN, median_tps);
        let r = paired_ratio(cells, 0, k, target_clients, Variant::On);
        out.rows.push(
            Row::new(BENCH, format!("{}, {target_clients} clients, no workers: tps with capture", kind.label))
                .figure(format!(
                    "{:.0} tps (with 2 workers + scheduler draining: {:.0}; {max_clients} clients: {:.0} / {:.0})",
                    tps(0, target_clients, Variant::On),
                    tps(1, target_clients, Variant::On),
                    tps(0, max_clients, Variant::On),
                    tps(1, max_clients, Variant::On)
                ))
                .baseline(format!(
                    "{:.0} tps without capture (with workers: {:.0}; {max_clients} clients: {:.0} / {:.0})",
                    tps(0, target_clients, Variant::Off),
                    tps(1, target_clients, Variant::Off),
                    tps(0, max_clients, Variant::Off),
                    tps(1, max_clients, Variant::Off)
                ))
                .ratio(format!(
                    "{} (with workers: {}; {max_clients} clients: {} / {})",
                    stats::ratio(r),
                    stats::ratio(paired_ratio(cells, 1, k, target_clients, Variant::On)),
                    stats::ratio(paired_ratio(cells, 0, k, max_clients, Variant::On)),
                    stats::ratio(paired_ratio(cells, 1, k, max_clients, Variant::On))
                ))
                .target(
                    format!("≥ {:.0} % of no capture at {TARGET_CLIENTS} clients, no workers (issue 16)", TARGET_RATIO[k] * 100.0),
                    r.is_finite().then_some(r >= TARGET_RATIO[k]),
                ),
        );
    }
    if plan.writes_clients.contains(&1) {
        for (k, kind) in KINDS.iter().enumerate() {
            let Some((t, p50, p99, mean)) = ratios(0, k, 1) else { continue };
            let (a, b) = (&cells[&(0, k, 1, Variant::On)], &cells[&(0, k, 1, Variant::Off)]);
            let (da, db) = (stats::dist(&a.latencies), stats::dist(&b.latencies));
            out.rows.push(
                Row::new(BENCH, format!("{}, 1 client, no workers: latency with capture (p50; mean)", kind.label))
                    .figure(format!("{} ms; {} ms", ms(da.p50), ms(da.mean)))
                    .baseline(format!("{} ms; {} ms without capture", ms(db.p50), ms(db.mean)))
                    .ratio(format!(
                        "p50 {}; mean {} (p99 {}; tps {})",
                        stats::pct(p50),
                        stats::pct(mean),
                        stats::ratio(p99),
                        stats::ratio(t)
                    ))
                    .target("≤ 15 % latency overhead at 1 client (issue 16; judged on the p50)", Some(p50 <= ONE_CLIENT_OVERHEAD)),
            );
        }
    }

    let s = &mut out.section;
    let mut sorted_loads = loads.to_vec();
    sorted_loads.sort_by(f64::total_cmp);
    s.push_str(&format!(
        "{} students seeded (`tidemark_seeds`, then `VACUUM ANALYZE`); the capture as migrated (0009: each capturing \
         statement draws one number and appends a row per changed student to `tidemark.changes`; no mark upserted, no \
         notification). {pgbench_version}, `-M prepared`, `-j` min(clients, 2), {} s per run{}, per-transaction log \
         (`--log`) for the latencies; the tps are pgbench's own (without the connection time).\n\n\
         - **(a)** `UPDATE students SET age = … WHERE id = :random` in autocommit. \
         **(b)** `BEGIN`, `INSERT` a student (`RETURNING id`), three `INSERT`s of its enrollments (one statement \
         each, as an ORM saves them), `END`; the students a run inserted are deleted after it (with \
         `session_replication_role = replica`: no capture), so every run starts from the same data. \
         **(c)** `BEGIN`, five `UPDATE`s of random students (one from each fifth of the ids, in increasing order: \
         writers never deadlock each other), `END`. Scripts: `target/bench/writes/*.sql`.\n\
         - **Sides**, switched between runs on the same database: *no capture*: `ALTER TABLE students, \
         student_courses DISABLE TRIGGER USER` (the capture triggers; the foreign keys' internal triggers stay \
         enabled, checked); *capture*: as migrated. Checked before the runs, three transactions of each kind from a \
         session that `LISTEN`s on `tidemark_sync`: (a), (b), (c) appended {} log rows, upserted {} marks and sent {} \
         notifications.\n\
         - **Interleaved**: for each kind and client count the sides run back to back, in an order that alternates \
         from round to round; {} rounds. Before every run: the log and the marks emptied (`tidemark.changes`, \
         `tidemark.marks`, `tidemark.parents`), `VACUUM` of those and of `students` and \
         `student_courses`, `CHECKPOINT`. No workers: the log grows during a run as between two syncs (checked: \
         empty without capture, not with).\n\
         - **With workers**: the {} students first indexed in OpenSearch ({:.1} s, 2 in-process engines), then \
         `tidemark scheduler --interval 5s` and two `tidemark worker` (release build, default configuration: each \
         polls the mark sequence every 50 ms, and absorbs the log into marks at every claim) run through the whole \
         phase; after each capture run the harness waits (up to {:.0} s) until nothing is outstanding \
         (`tidemark.outstanding`: log and marks) and times it.\n\
         - **Cells**: median tps over the rounds · p50 / p99 latency in ms (every transaction of every round). \
         **Ratios**: tps as the median over rounds of the paired ratio (capture ÷ no capture, same round) · \
         p50 ratio / p99 ratio. Below 1× for tps and above 1× for latency is the capture's cost.\n\n",
        stats::int(env.students),
        plan.writes_secs,
        if plan.quick { " (quick mode)" } else { "" },
        logged.iter().map(|l| l.0.to_string()).collect::<Vec<_>>().join("/"),
        logged.iter().map(|l| l.1.to_string()).collect::<Vec<_>>().join("/"),
        logged.iter().map(|l| l.2.to_string()).collect::<Vec<_>>().join("/"),
        plan.writes_rounds,
        stats::int(env.students),
        index_secs,
        plan.writes_drain_secs,
    ));
    for (k, kind) in KINDS.iter().enumerate() {
        s.push_str(&format!(
            "### {}\n\n\
             | clients | workers | no capture | capture | capture ÷ none | workers: outstanding at the end → drained in |\n\
             | --- | --- | --- | --- | --- | --- |\n",
            kind.label
        ));
        for (phase, phase_name) in PHASES.iter().enumerate() {
            for &c in &plan.writes_clients {
                let get = |v: Variant| cells.get(&(phase, k, c, v));
                let backlog = match get(Variant::On) {
                    Some(cell) if phase == 1 => format!(
                        "{} → {}{}",
                        stats::int(stats::median(&cell.marks_at_end).round() as u64),
                        stats::secs(stats::median(&cell.drained_s)),
                        if cell.undrained > 0 {
                            format!(" ({} not within {:.0} s)", cell.undrained, plan.writes_drain_secs)
                        } else {
                            String::new()
                        }
                    ),
                    _ => "—".into(),
                };
                s.push_str(&format!(
                    "| {c} | {phase_name} | {} | {} | {} | {backlog} |\n",
                    side(get(Variant::Off)),
                    side(get(Variant::On)),
                    versus(phase, k, c),
                ));
            }
        }
        s.push('\n');
    }
    let mut sampled: Vec<usize> = vec![target_clients, max_clients];
    sampled.dedup();
    s.push_str(&format!(
        "**Where the time goes**, at {}: what pgbench's backends inside a transaction were doing, sampled from \
         `pg_stat_activity` every 50 ms during every round's run (share of samples; *CPU*: no wait event, running or \
         ready to run). `LWLock:WALWrite`/`IO:WALSync`: the commit's WAL flush (waiting for it, or flushing); \
         `LWLock:WALInsert`: copying WAL records into the shared buffers; `LWLock:BufferContent`: a page another \
         backend holds (e.g. the log's last heap page, its index's rightmost leaf, the sequence's page); \
         `Lock:transactionid`: a row another transaction holds; `Client:ClientRead`: waiting for pgbench's next \
         statement.\n\n\
         | kind | clients | workers | side | samples | top wait events |\n| --- | --- | --- | --- | --- | --- |\n",
        sampled.iter().map(|c| format!("{c} clients")).collect::<Vec<_>>().join(" and ")
    ));
    for (k, kind) in KINDS.iter().enumerate() {
        for &c in &sampled {
            for (phase, phase_name) in PHASES.iter().enumerate() {
                for v in [Variant::Off, Variant::On] {
                    let Some(cell) = cells.get(&(phase, k, c, v)) else { continue };
                    let total: u64 = cell.waits.values().sum();
                    let mut top: Vec<(&String, &u64)> = cell.waits.iter().collect();
                    top.sort_by(|a, b| b.1.cmp(a.1));
                    let top: Vec<String> =
                        top.iter().take(5).map(|(w, n)| format!("{w} {:.0} %", **n as f64 * 100.0 / total.max(1) as f64)).collect();
                    s.push_str(&format!(
                        "| {} | {c} | {phase_name} | {} | {} | {} |\n",
                        kind.key,
                        v.label(),
                        stats::int(total),
                        top.join(", ")
                    ));
                }
            }
        }
    }
    s.push('\n');
    s.push_str(
        "**CPU per transaction**: the CPU time of pgbench's backends (`/proc/<pid>/stat`, read with the wait \
         events) divided by the transactions pgbench processed, every round; *machine busy*: the share of both \
         cores' time not idle during the runs (`/proc/stat`: everything on the machine, median over the rounds); with \
         workers, the CPU of the scheduler and the two workers, of the database's other backends (their connections: \
         absorb, claim, read, acknowledge) and of the OpenSearch node during the capture runs, in cores (CPU seconds ÷ \
         seconds).\n\n\
         | kind | clients | workers | backend CPU per transaction: no capture | capture | capture − none | machine busy: no capture / capture | tidemark processes / their backends / OpenSearch during the capture runs (cores) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (k, kind) in KINDS.iter().enumerate() {
        for (phase, phase_name) in PHASES.iter().enumerate() {
            for &c in &plan.writes_clients {
                let (Some(a), Some(b)) = (cells.get(&(phase, k, c, Variant::Off)), cells.get(&(phase, k, c, Variant::On))) else {
                    continue;
                };
                let per = |x: &Cell| x.backend_cpu_s / x.processed.max(1) as f64;
                let others = if phase == 1 && b.run_s > 0.0 {
                    format!("{:.2} / {:.2} / {:.2}", b.workers_cpu_s / b.run_s, b.other_backend_cpu_s / b.run_s, b.server_cpu_s / b.run_s)
                } else {
                    "—".into()
                };
                s.push_str(&format!(
                    "| {} | {c} | {phase_name} | {} | {} | {} | {:.0} % / {:.0} % | {others} |\n",
                    kind.key,
                    stats::us(per(a)),
                    stats::us(per(b)),
                    signed_us(per(b) - per(a)),
                    stats::median(&a.machine_busy) * 100.0,
                    stats::median(&b.machine_busy) * 100.0,
                ));
            }
        }
    }
    s.push('\n');
    if !idle.is_empty() {
        s.push_str(&format!(
            "**The wake-up's idle cost** (before the phase with workers, the database indexed, no writes): a `tidemark worker` \
             and a `tidemark scheduler --interval 5s` started with `sync.wakeup_interval` at its default, 50 ms, or at \
             60 s (the wake-up then polls about once in the window: what remains is everything else an idle pair does — \
             the scheduler's sync every 5 s and the worker's step, heartbeats, the gauges), in alternation; {:.0} s each \
             after 5 s to settle. *Transactions*: the database's `xact_commit + xact_rollback` (`pg_stat_database`), less \
             the harness's own reads; each wake-up poll is one statement in autocommit, so one transaction. *CPU*: \
             utime + stime from `/proc/<pid>/stat` of the backends whose `application_name` is `tidemark wakeup` (one per \
             process), of every backend of the database, and of the two tidemark processes; ms of CPU per second of wall \
             time.\n\n\
             *Open in the database*: transactions holding a transaction id in the benchmark's database (the wake-up \
             watches this database's transactions only; others on the shared server are none of its business) at the \
             start and the end, and the longest open at the end — the wake-up watches those that were running when the \
             sequence last moved, with a second query at every poll until they end.\n\n\
             | `wakeup_interval` | transactions/s (database) | wake-up backends: CPU ms/s (both) | all backends: CPU ms/s | worker + scheduler processes: CPU ms/s | open in the database (start → end; longest) | load (1 min) |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
            plan.writes_idle_secs as f64
        ));
        for i in idle {
            s.push_str(&format!(
                "| {} | {:.1} | {:.2} | {:.2} | {:.2} | {} → {}; {} | {:.2} |\n",
                i.interval,
                i.xacts_per_s,
                i.wakeup_backend_cpu_ms_per_s,
                i.all_backends_cpu_ms_per_s,
                i.processes_cpu_ms_per_s,
                i.open_xids.0,
                i.open_xids.1,
                stats::secs(i.longest_open_s),
                i.load1
            ));
        }
        let mean = |iv: &str, f: fn(&Idle) -> f64| {
            let v: Vec<f64> = idle.iter().filter(|i| i.interval == iv).map(f).collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let dx = mean("50ms", |i| i.xacts_per_s) - mean("60s", |i| i.xacts_per_s);
        s.push_str(&format!(
            "\nPolling every 50 ms adds {:.1} transactions/s for the two processes, {:.1} per process (one query per poll, \
             20/s; two while it watches transactions left open), at {:.2} ms of backend CPU per second for both wake-up connections \
             ({:.2} ms/s with the 60 s interval), and {:+.2} ms/s of CPU in the two processes.\n\n",
            dx,
            dx / 2.0,
            mean("50ms", |i| i.wakeup_backend_cpu_ms_per_s),
            mean("60s", |i| i.wakeup_backend_cpu_ms_per_s),
            mean("50ms", |i| i.processes_cpu_ms_per_s) - mean("60s", |i| i.processes_cpu_ms_per_s),
        ));
    }
    s.push_str(&format!(
        "Load average (1 min) at the start of each run: median {:.2}, min {:.2}, max {:.2}; before the section {load_before}, \
         after it {load_after} (2 cores, shared with other builds and tests: the interleaving is what keeps the ratios \
         meaningful). The section took {:.0} s. PostgreSQL settings: {}.{}\n",
        stats::median(loads),
        sorted_loads.first().copied().unwrap_or(f64::NAN),
        sorted_loads.last().copied().unwrap_or(f64::NAN),
        elapsed,
        settings.iter().map(|(k, v)| format!("`{k}={v}`")).collect::<Vec<_>>().join(", "),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(
                " Skipped, the shared server having no free connection for them for 3 minutes (their rounds' pairs are left \
                 out of the ratios): {}.",
                skipped.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
            )
        },
    ));

    let mut agg = Vec::new();
    for ((phase, k, c, v), cell) in cells {
        let d = stats::dist(&cell.latencies);
        agg.push(json!({
            "phase": PHASES[*phase], "kind": KINDS[*k].key, "clients": c, "variant": v,
            "tps_by_round": cell.tps.values().collect::<Vec<_>>(), "tps_median": median_tps(cell),
            "tps_ratio_vs_off": paired_ratio(cells, *phase, *k, *c, *v),
            "latency_s": d, "failed": cell.failed, "retried": cell.retried,
            "marks_at_end": cell.marks_at_end, "drained_s": cell.drained_s, "undrained": cell.undrained, "waits": cell.waits,
            "backend_cpu_s": cell.backend_cpu_s, "processed": cell.processed, "machine_busy": cell.machine_busy,
            "workers_cpu_s": cell.workers_cpu_s, "other_backend_cpu_s": cell.other_backend_cpu_s, "server_cpu_s": cell.server_cpu_s, "run_s": cell.run_s,
        }));
    }
    out.raw = json!({
        "students": env.students, "secs_per_run": plan.writes_secs, "rounds": plan.writes_rounds, "clients": plan.writes_clients,
        "pgbench": pgbench_version, "load_before": load_before, "load_after": load_after, "load1_per_run": loads,
        "capture_check": logged, "idle": idle, "skipped": skipped,
        "cells": agg, "runs": records, "elapsed_s": elapsed,
    });
    out
}

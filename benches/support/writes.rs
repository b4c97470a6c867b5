//! 7. Write throughput under concurrency: what the capture costs writers as users meet it,
//!    with many connections at once. pgbench drives three kinds of transaction at several
//!    client counts against one seeded database, with the capture triggers enabled and
//!    disabled in turn (interleaved, several rounds), once with no worker running and once
//!    with a scheduler and two workers draining the marks meanwhile. In the no-worker phase a
//!    third side runs the capture with `pg_notify` made a no-op, which splits the capture's
//!    cost into the mark's share and the notification's.

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
use sqlx::{postgres::PgListener, PgPool};

use super::{
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
    /// The capture as migrated, `pg_notify` resolved to a no-op (pgbench's sessions only).
    Quiet,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Off => "no capture",
            Variant::On => "capture",
            Variant::Quiet => "capture, `pg_notify` no-op",
        }
    }
}

/// Phase 0: nothing drains the marks. Phase 1: a scheduler and two workers run.
const PHASES: [&str; 2] = ["none", "2 workers + scheduler"];

/// The schema of the `pg_notify` shadow, created in the benchmark's database only.
const QUIET_SCHEMA: &str = "tidemark_bench";
/// An IMMUTABLE one-`SELECT` SQL function is inlined and folded to a constant when the
/// calling expression is planned: the call then costs nothing at all.
const QUIET_SQL: &str = "CREATE SCHEMA tidemark_bench;\n\
     CREATE FUNCTION tidemark_bench.pg_notify(text, text) RETURNS void LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT NULL::void';";
/// The capture functions call `pg_notify` unqualified and have no `SET search_path`, so
/// PL/pgSQL resolves it with the session's `search_path` when it plans the expression (once
/// per session). `pg_catalog` is searched first unless it is named in the path: naming it
/// after the shadow's schema makes the shadow win. Given through PGOPTIONS to pgbench's
/// sessions of that side only; nothing else (the database, the role, the migrations) changes.
const QUIET_PGOPTIONS: &str = "-c search_path=tidemark_bench,pg_catalog,public";

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
    /// Marks waiting when pgbench ended (student marks + parent/set rows).
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

/// Every run starts alike: no marks, tables vacuumed, and right after a checkpoint (so each
/// run pays the full-page images of the pages it first touches, whatever ran before it).
async fn settle(env: &BenchEnv) -> Result<()> {
    env.clear_marks().await?;
    env.sql("VACUUM students, student_courses, tidemark.dirty_students, tidemark.dirty_parents").await?;
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
async fn pgbench(ctx: &Ctx, env: &BenchEnv, kind: usize, clients: usize, length: Length, quiet: bool, tag: &str) -> Result<PgbenchRun> {
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
        cmd.args(&args).stdin(std::process::Stdio::null()).kill_on_drop(true);
        if quiet {
            cmd.env("PGOPTIONS", QUIET_PGOPTIONS);
        } else {
            cmd.env_remove("PGOPTIONS");
        }
        let out =
            tokio::time::timeout(limit, cmd.output()).await.with_context(|| format!("pgbench {tag}: timed out after {limit:?}"))??;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        // The PostgreSQL server is shared: another test suite may hold the connections for a moment.
        if !out.status.success() && attempt < 4 && (stderr.contains("too many clients") || stderr.contains("remaining connection slots")) {
            progress!("writes: {tag}: no free connection for {clients} clients; again in 5 s");
            remove_logs(&prefix);
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

/// Samples, every 50 ms until `stop`, what pgbench's backends inside a transaction are
/// waiting on (`pg_stat_activity`; no wait event: running, or ready to run, on a CPU).
async fn sample_waits(pool: PgPool, stop: Arc<AtomicBool>) -> Result<BTreeMap<String, u64>> {
    let mut waits = BTreeMap::new();
    let mut conn = pool.acquire().await?;
    while !stop.load(Ordering::Relaxed) {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'pgbench' AND state <> 'idle' GROUP BY 1",
        )
        .fetch_all(&mut *conn)
        .await?;
        for (w, n) in rows {
            *waits.entry(w).or_default() += n as u64;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(waits)
}

/// Notifications received on `listener` until none came for 500 ms.
async fn notifications(listener: &mut PgListener) -> Result<usize> {
    let mut n = 0;
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
        r?;
        n += 1;
    }
    Ok(n)
}

/// Checks, from a session LISTENing on `tidemark_sync`, that pgbench's sessions with the
/// shadow send no notification while still writing marks, and that the capture as migrated
/// does send one (so the check can fail). Returns (notifications with the shadow, marks it
/// wrote, notifications without).
async fn check_quiet(ctx: &Ctx, env: &BenchEnv) -> Result<(usize, i64, usize)> {
    set_capture(env, true).await?;
    let mut listener = PgListener::connect_with(&env.pool).await?;
    listener.listen("tidemark_sync").await?;
    notifications(&mut listener).await?;
    env.clear_marks().await?;
    for (k, kind) in KINDS.iter().enumerate() {
        pgbench(ctx, env, k, 1, Length::Transactions(3), true, &format!("check-quiet-{}", kind.key)).await?;
    }
    let quiet = notifications(&mut listener).await?;
    let (marks, _) = env.marks_left().await?;
    env.clear_marks().await?;
    pgbench(ctx, env, 0, 1, Length::Transactions(3), false, "check-loud").await?;
    let loud = notifications(&mut listener).await?;
    listener.unlisten_all().await?;
    drop(listener);
    remove_inserted(env, ctx.base_max_id).await?;
    env.clear_marks().await?;
    ensure!(quiet == 0, "the pg_notify no-op did not take effect: {quiet} notification(s) from sessions with {QUIET_PGOPTIONS:?}");
    ensure!(marks > 0, "with the pg_notify no-op the capture wrote no marks");
    ensure!(loud > 0, "the capture as migrated sent no notification: the no-op check proves nothing");
    Ok((quiet, marks, loud))
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
    env.sql(QUIET_SQL).await?;
    let (_, quiet_marks, loud) = check_quiet(&ctx, env).await?;
    progress!("writes: pg_notify no-op verified (0 notifications, {quiet_marks} marks; {loud} as migrated)");

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

    let runs_total = plan.writes_rounds * KINDS.len() * plan.writes_clients.len() * 5;
    progress!(
        "writes: {runs_total} pgbench runs of {} s ({} rounds × {} kinds × {:?} clients × 3 sides without workers + 2 with)",
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
    for (phase, phase_name) in PHASES.iter().enumerate() {
        if phase == 1 {
            // The workers need an index: the first full index, as a first run builds it
            // (the capture on, as it is in production while it runs).
            set_capture(env, true).await?;
            capture_on = Some(true);
            index_secs = env.first_index(2).await?;
            env.start_deployment().await?;
            progress!("writes: scheduler and 2 workers running");
        }
        for round in 0..plan.writes_rounds {
            for (k, kind) in KINDS.iter().enumerate() {
                for &clients in &plan.writes_clients {
                    // Sides in a rotating order: each side takes each place in turn across rounds.
                    let mut order: Vec<Variant> =
                        if phase == 0 { vec![Variant::On, Variant::Off, Variant::Quiet] } else { vec![Variant::On, Variant::Off] };
                    let len = order.len();
                    order.rotate_left(round % len);
                    let mut line = Vec::new();
                    for v in order {
                        let on = v != Variant::Off;
                        if capture_on != Some(on) {
                            set_capture(env, on).await?;
                            capture_on = Some(on);
                        }
                        settle(env).await?;
                        let load = load1();
                        loads.push(load);
                        let tag = format!("p{phase}-r{round}-{}-c{clients}-{v:?}", kind.key);
                        let stop = Arc::new(AtomicBool::new(false));
                        let sampler = tokio::spawn(sample_waits(env.pool.clone(), stop.clone()));
                        let r = pgbench(&ctx, env, k, clients, Length::Secs(plan.writes_secs), v == Variant::Quiet, &tag).await;
                        stop.store(true, Ordering::Relaxed);
                        let waits = sampler.await??;
                        let r = r?;
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
                        for (w, n) in waits {
                            *cell.waits.entry(w).or_default() += n;
                        }
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
        quiet_marks,
        loud,
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
    quiet_marks: i64,
    loud: usize,
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
    let versus = |phase: usize, k: usize, c: usize, v: Variant| -> String {
        let (Some(a), Some(b)) = (cells.get(&(phase, k, c, v)), cells.get(&(phase, k, c, Variant::Off))) else { return "—".into() };
        let (da, db) = (stats::dist(&a.latencies), stats::dist(&b.latencies));
        format!(
            "**{}** · {} / {}",
            stats::ratio(paired_ratio(cells, phase, k, c, v)),
            stats::ratio(da.p50 / db.p50),
            stats::ratio(da.p99 / db.p99)
        )
    };
    let max_clients = plan.writes_clients.iter().copied().max().unwrap_or(1);
    for (k, kind) in KINDS.iter().enumerate() {
        let tps = |phase: usize, v: Variant| cells.get(&(phase, k, max_clients, v)).map_or(f64::NAN, median_tps);
        out.rows.push(
            Row::new(
                BENCH,
                format!("{}, {max_clients} clients: tps with capture (no workers / 2 workers + scheduler draining)", kind.label),
            )
            .figure(format!("{:.0} / {:.0} tps", tps(0, Variant::On), tps(1, Variant::On)))
            .baseline(format!("{:.0} / {:.0} tps without capture", tps(0, Variant::Off), tps(1, Variant::Off)))
            .ratio(format!(
                "{} / {} (`pg_notify` no-op, no workers: {})",
                stats::ratio(paired_ratio(cells, 0, k, max_clients, Variant::On)),
                stats::ratio(paired_ratio(cells, 1, k, max_clients, Variant::On)),
                stats::ratio(paired_ratio(cells, 0, k, max_clients, Variant::Quiet))
            ))
            .target("— (measured before the capture change, issue 16)", None),
        );
    }

    let s = &mut out.section;
    let mut sorted_loads = loads.to_vec();
    sorted_loads.sort_by(f64::total_cmp);
    s.push_str(&format!(
        "{} students seeded (`tidemark_seeds`, then `VACUUM ANALYZE`); the capture as migrated. {pgbench_version}, \
         `-M prepared`, `-j` min(clients, 2), {} s per run{}, per-transaction log (`--log`) for the latencies; \
         the tps are pgbench's own (without the connection time).\n\n\
         - **(a)** `UPDATE students SET age = … WHERE id = :random` in autocommit. \
         **(b)** `BEGIN`, `INSERT` a student (`RETURNING id`), three `INSERT`s of its enrollments (one statement \
         each, as an ORM saves them), `END`; the students a run inserted are deleted after it (with \
         `session_replication_role = replica`: no capture), so every run starts from the same data. \
         **(c)** `BEGIN`, five `UPDATE`s of random students (one from each fifth of the ids, in increasing order: \
         writers never deadlock each other), `END`. Scripts: `target/bench/writes/*.sql`.\n\
         - **Sides**, switched between runs on the same database: *no capture*: `ALTER TABLE students, \
         student_courses DISABLE TRIGGER USER` (the capture triggers; the foreign keys' internal triggers stay \
         enabled, checked); *capture*: as migrated; *capture, `pg_notify` no-op*: as migrated, but pgbench's \
         sessions get `PGOPTIONS='{QUIET_PGOPTIONS}'`, with `{QUIET_SCHEMA}.pg_notify(text, text)` an IMMUTABLE \
         SQL function folded to a constant where it is called: the capture functions call `pg_notify` unqualified, \
         so it resolves to the shadow. Nothing else changes (no migration, no database or role setting). \
         Verified before the runs from a session that `LISTEN`s: the three scripts with the shadow sent 0 \
         notifications and wrote {quiet_marks} marks; the capture as migrated sent {loud}. So *no-op ÷ none* is \
         the mark's share of the cost, and *capture ÷ no-op* the notification's.\n\
         - **Interleaved**: for each kind and client count the sides run back to back, in an order that rotates \
         from round to round; {} rounds. Before every run: marks emptied (`tidemark.dirty_students`, \
         `tidemark.dirty_parents`), `VACUUM` of the four tables, `CHECKPOINT`. No workers: the marks pile up during \
         a run as between two syncs (checked: none without capture, some with).\n\
         - **With workers**: the {} students first indexed in OpenSearch ({:.1} s, 2 in-process engines), then \
         `tidemark scheduler --interval 5s` and two `tidemark worker` (release build, default configuration) run \
         through the whole phase, LISTENing; after each capture run the harness waits (up to {:.0} s) until they \
         have drained every mark.\n\
         - **Cells**: median tps over the rounds · p50 / p99 latency in ms (every transaction of every round). \
         **Ratios**: tps as the median over rounds of the paired ratio (this side ÷ no capture, same round) · \
         p50 ratio / p99 ratio. Below 1× for tps and above 1× for latency is the capture's cost.\n\n",
        stats::int(env.students),
        plan.writes_secs,
        if plan.quick { " (quick mode)" } else { "" },
        plan.writes_rounds,
        stats::int(env.students),
        index_secs,
        plan.writes_drain_secs,
    ));
    for (k, kind) in KINDS.iter().enumerate() {
        s.push_str(&format!(
            "### {}\n\n\
             | clients | workers | no capture | capture | capture, `pg_notify` no-op | capture ÷ none | no-op ÷ none | capture ÷ no-op (tps) | workers: marks at the end → drained in |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
            kind.label
        ));
        for (phase, phase_name) in PHASES.iter().enumerate() {
            for &c in &plan.writes_clients {
                let get = |v: Variant| cells.get(&(phase, k, c, v));
                let notify_share = if phase == 0 {
                    match (get(Variant::On), get(Variant::Quiet)) {
                        (Some(a), Some(b)) => {
                            let r: Vec<f64> = a.tps.iter().filter_map(|(round, x)| Some(x / b.tps.get(round)?)).collect();
                            stats::ratio(stats::median(&r))
                        }
                        _ => "—".into(),
                    }
                } else {
                    "—".into()
                };
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
                    "| {c} | {phase_name} | {} | {} | {} | {} | {} | {notify_share} | {backlog} |\n",
                    side(get(Variant::Off)),
                    side(get(Variant::On)),
                    side(get(Variant::Quiet)),
                    versus(phase, k, c, Variant::On),
                    if phase == 0 { versus(phase, k, c, Variant::Quiet) } else { "—".into() },
                ));
            }
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "**Where the time goes**, at {max_clients} clients: what pgbench's backends inside a transaction were doing, \
         sampled from `pg_stat_activity` every 50 ms during every round's run (share of samples; *CPU*: no wait \
         event, running or ready to run). `Lock:object` is the lock `NOTIFY` takes at commit (PostgreSQL's \
         `PreCommit_Notify` locks one object per database, exclusively, until the transaction has committed — its \
         WAL flush included — so that notifications enter the queue in commit order): committing transactions that \
         notified go one at a time. `IO:WALSync`/`LWLock:WALWrite`: the commit's WAL flush; `Client:ClientRead`: \
         waiting for pgbench's next statement.\n\n\
         | kind | workers | side | samples | top wait events |\n| --- | --- | --- | --- | --- |\n"
    ));
    for (k, kind) in KINDS.iter().enumerate() {
        for (phase, phase_name) in PHASES.iter().enumerate() {
            for v in [Variant::Off, Variant::On, Variant::Quiet] {
                let Some(cell) = cells.get(&(phase, k, max_clients, v)) else { continue };
                let total: u64 = cell.waits.values().sum();
                let mut top: Vec<(&String, &u64)> = cell.waits.iter().collect();
                top.sort_by(|a, b| b.1.cmp(a.1));
                let top: Vec<String> =
                    top.iter().take(5).map(|(w, n)| format!("{w} {:.0} %", **n as f64 * 100.0 / total.max(1) as f64)).collect();
                s.push_str(&format!("| {} | {phase_name} | {} | {} | {} |\n", kind.key, v.label(), stats::int(total), top.join(", ")));
            }
        }
    }
    s.push('\n');
    s.push_str(&format!(
        "Load average (1 min) at the start of each run: median {:.2}, min {:.2}, max {:.2}; before the section {load_before}, \
         after it {load_after} (2 cores, shared with other builds and tests: the interleaving is what keeps the ratios \
         meaningful). The section took {:.0} s. PostgreSQL settings: {}.\n",
        stats::median(loads),
        sorted_loads.first().copied().unwrap_or(f64::NAN),
        sorted_loads.last().copied().unwrap_or(f64::NAN),
        elapsed,
        settings.iter().map(|(k, v)| format!("`{k}={v}`")).collect::<Vec<_>>().join(", "),
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
        }));
    }
    out.raw = json!({
        "students": env.students, "secs_per_run": plan.writes_secs, "rounds": plan.writes_rounds, "clients": plan.writes_clients,
        "pgbench": pgbench_version, "load_before": load_before, "load_after": load_after, "load1_per_run": loads,
        "notify_check": {"quiet_notifications": 0, "quiet_marks": quiet_marks, "loud_notifications": loud},
        "cells": agg, "runs": records, "elapsed_s": elapsed,
    });
    out
}

//! 3. Write overhead of the capture triggers: single-row `UPDATE` latency and one
//!    100,000-row `UPDATE`, each with the trigger enabled and disabled on the same table,
//!    alternating so drift hits both sides alike.

use std::time::Instant;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{
    env::{BenchEnv, Services},
    report::{Outcome, Row},
    stats, Plan,
};
use crate::progress;

const BENCH: &str = "3. Write overhead";
/// Statements run, unmeasured, after each switch of the trigger (plan caches, buffers).
const WARM_UP: usize = 50;
const SINGLE: &str = "UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id = $1";
const BULK: &str = "UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id <= 100000";
/// A mid-sized statement, for the plan a connection's earlier single-row statements leave.
const MEDIUM_ROWS: i64 = 10_000;
const MEDIUM: &str = "UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id <= 10000";
/// The bound on the mid-sized statement (it runs in ~0.3 s on a fresh connection).
const MEDIUM_TIMEOUT_S: u64 = 120;

/// The capture trigger that fires for an `UPDATE` of `students`: one statement trigger, which
/// also logs both sides of an id change (migration 0009; there is no row trigger).
const CAPTURE_TRIGGER: &str = "tidemark_capture_update";

async fn set_capture(env: &BenchEnv, on: bool) -> Result<()> {
    let verb = if on { "ENABLE" } else { "DISABLE" };
    env.sql(&format!("ALTER TABLE students {verb} TRIGGER {CAPTURE_TRIGGER}")).await
}

/// Experimental capture variants, created in the benchmark's own database only, to see
/// where the overhead goes. Each is a trigger on `students`, created disabled.
const VARIANTS_SQL: &str = r#"
CREATE SCHEMA bench;
-- The statement trigger with transition tables, doing nothing: the price of the mechanism.
CREATE FUNCTION bench.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER bench_noop AFTER UPDATE ON students
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.noop();
-- The capture before issue 16 (migrations 0005 + 0006, as shipped until 0009): an upserted
-- mark per changed student below 1,000 rows (one row: the simpler pairing of 0006), one set
-- row in the parents table from 1,000 up (JIT off and work_mem 32 MB for that one query, as
-- large_statement_settings did), and a NOTIFY.
CREATE FUNCTION bench.capture_before_16() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    was text[];
    nudged text;
    rows_changed bigint;
    marked bigint;
BEGIN
    rows_changed := (SELECT count(*) FROM new_rows);
    IF rows_changed >= 1000 THEN
        was := ARRAY[current_setting('jit'), current_setting('work_mem')];
        PERFORM set_config('jit', 'off', true);
        IF pg_size_bytes(was[2]) < 32 * 1024 * 1024 THEN
            PERFORM set_config('work_mem', '32MB', true);
        END IF;
        PERFORM tidemark.mark_keys(ARRAY(
            SELECT coalesce(n.id, o.id)::text
              FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
             WHERE n.id IS NULL OR o.id IS NULL
                OR (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
                   IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)));
        PERFORM pg_notify('tidemark_sync', '');
        PERFORM set_config('jit', was[1], true);
        PERFORM set_config('work_mem', was[2], true);
        RETURN NULL;
    END IF;
    v := nextval('tidemark.seq');
    IF rows_changed = 1 THEN
        INSERT INTO tidemark.marks AS d (key, seq)
        SELECT n.id::text, v
          FROM new_rows n, old_rows o
         WHERE n.id = o.id
           AND (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
               IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)
        ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq
        WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
        GET DIAGNOSTICS marked = ROW_COUNT;
        IF marked > 0 THEN
            nudged := pg_notify('tidemark_sync', '');
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO tidemark.marks AS d (key, seq)
    SELECT coalesce(n.id, o.id)::text, v
      FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
     WHERE n.id IS NULL OR o.id IS NULL
        OR (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
           IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)
     ORDER BY 1
    ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    IF FOUND THEN
        nudged := pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_before_16 AFTER UPDATE ON students
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.capture_before_16();
-- One upserted mark per changed row straight from the transition tables, whatever the
-- statement's size, and a NOTIFY: tidemark's capture before large statements became one
-- set row (migrations/0002).
CREATE FUNCTION bench.capture_per_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.marks AS d (key, seq)
    SELECT coalesce(n.id, o.id)::text, v
      FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
     WHERE n.id IS NULL OR o.id IS NULL
        OR (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
           IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)
     ORDER BY 1
    ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    IF FOUND THEN
        PERFORM pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_per_row AFTER UPDATE ON students
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.capture_per_row();
-- The same upsert without the NOTIFY: the upserted mark alone, what the log replaced.
CREATE FUNCTION bench.upsert_per_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.marks AS d (key, seq)
    SELECT coalesce(n.id, o.id)::text, v
      FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
     WHERE n.id IS NULL OR o.id IS NULL
        OR (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
           IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)
     ORDER BY 1
    ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_upsert AFTER UPDATE ON students
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.upsert_per_row();
-- A row-level trigger: one upsert per changed row, no transition tables.
CREATE FUNCTION bench.capture_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tidemark.marks AS d (key, seq) VALUES (NEW.id::text, nextval('tidemark.seq'))
    ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq;
    PERFORM pg_notify('tidemark_sync', '');
    RETURN NULL;
END $$;
CREATE TRIGGER bench_row AFTER UPDATE ON students FOR EACH ROW
    WHEN ((NEW.first_name, NEW.last_name, NEW.age, NEW.year_in_school, NEW.university_id)
          IS DISTINCT FROM (OLD.first_name, OLD.last_name, OLD.age, OLD.year_in_school, OLD.university_id))
    EXECUTE FUNCTION bench.capture_row();
ALTER TABLE students DISABLE TRIGGER bench_noop, DISABLE TRIGGER bench_before_16, DISABLE TRIGGER bench_per_row,
    DISABLE TRIGGER bench_upsert, DISABLE TRIGGER bench_row;
"#;

/// (trigger enabled on `students` besides none, label)
const VARIANTS: [(&str, &str); 7] = [
    ("", "no trigger"),
    ("bench_noop", "statement trigger with transition tables that does nothing"),
    (
        CAPTURE_TRIGGER,
        "**tidemark's capture** (as shipped, migration 0009: one `tidemark.changes` row per changed student at any size, no `NOTIFY`)",
    ),
    ("bench_before_16", "the capture before issue 16 (0005/0006: upserted marks below 1,000 rows, one set row from 1,000 up, `NOTIFY`)"),
    ("bench_upsert", "one upserted mark per changed row at any size, no `NOTIFY` (the upsert the log replaced)"),
    ("bench_per_row", "the same with its `NOTIFY`: the capture before large statements (migration 0002)"),
    ("bench_row", "row-level trigger (`WHEN` changed): one upsert + `NOTIFY` per row"),
];

async fn only_trigger(env: &BenchEnv, name: &str) -> Result<()> {
    let mut sql = String::from("ALTER TABLE students");
    let names = VARIANTS.iter().map(|(t, _)| *t).filter(|t| !t.is_empty());
    for (i, t) in names.enumerate() {
        let on = t == name;
        sql.push_str(if i == 0 { " " } else { ", " });
        sql.push_str(if on { "ENABLE TRIGGER " } else { "DISABLE TRIGGER " });
        sql.push_str(t);
    }
    env.sql(&sql).await
}

/// Runs `warm_up` single-row UPDATEs unmeasured, then `count` timed ones, on `conn`.
async fn single_latencies(
    conn: &mut sqlx::PgConnection,
    n: i64,
    warm_up: usize,
    count: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<Vec<f64>> {
    for _ in 0..warm_up {
        sqlx::query(SINGLE).bind(rng.gen_range(1..=n)).execute(&mut *conn).await?;
    }
    let mut v = Vec::with_capacity(count);
    for _ in 0..count {
        let id = rng.gen_range(1..=n);
        let t = Instant::now();
        sqlx::query(SINGLE).bind(id).execute(&mut *conn).await?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(v)
}

/// Moves the whole change log into marks, as workers do at each claim (`absorb`, chunks of
/// 10,000: a worker absorbs max(batch size, `sync.fanout_chunk`) rows, 10,000 by default);
/// returns the log rows moved.
async fn absorb_all(env: &BenchEnv) -> Result<u64> {
    let mut moved = 0;
    loop {
        let n = tidemark::pipeline::claim::absorb(&env.pool, 10_000).await?;
        if n == 0 {
            return Ok(moved);
        }
        moved += n;
    }
}

/// (seconds of `MEDIUM` on a fresh connection, seconds on a connection that has just run
/// `WARM_UP` single-row UPDATEs — None: cancelled at `MEDIUM_TIMEOUT_S`), capture on.
async fn medium_after_single(env: &BenchEnv, n: i64, rng: &mut rand::rngs::StdRng) -> Result<(f64, Option<f64>)> {
    use sqlx::Connection;
    env.clear_marks().await?;
    env.sql("VACUUM students").await?;
    let mut fresh = sqlx::PgConnection::connect(&env.database_url).await?;
    let t = Instant::now();
    let r = sqlx::query(MEDIUM).execute(&mut fresh).await?;
    let fresh_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(r.rows_affected() == MEDIUM_ROWS as u64, "the mid-sized UPDATE touched {} rows", r.rows_affected());
    fresh.close().await?;
    let mut used = sqlx::PgConnection::connect(&env.database_url).await?;
    sqlx::query(&format!("SET statement_timeout = '{MEDIUM_TIMEOUT_S}s'")).execute(&mut used).await?;
    single_latencies(&mut used, n, WARM_UP, 0, rng).await?;
    let t = Instant::now();
    let r = sqlx::query(MEDIUM).execute(&mut used).await;
    let used_s = t.elapsed().as_secs_f64();
    let used_s = match r {
        Ok(_) => Some(used_s),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("57014") => None,
        Err(e) => return Err(e.into()),
    };
    used.close().await?;
    progress!(
        "{}: {MEDIUM_ROWS}-row UPDATE: fresh connection {fresh_s:.3}s, after single rows {}",
        env.kind,
        used_s.map_or(format!("> {MEDIUM_TIMEOUT_S} s (cancelled)"), |s| format!("{s:.3}s"))
    );
    Ok((fresh_s, used_s))
}

async fn bulk_once(env: &BenchEnv) -> Result<f64> {
    env.clear_marks().await?;
    env.sql("VACUUM students").await?;
    env.sql("CHECKPOINT").await?;
    let t = Instant::now();
    sqlx::query(BULK).execute(&env.pool).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// Each variant alone on the table: mean single-row latency (two passes in opposite
/// orders, averaged) and one 100k-row UPDATE.
async fn variants(plan: &Plan, env: &BenchEnv) -> Result<String> {
    env.sql(VARIANTS_SQL).await?;
    let n = env.students as i64;
    // Each variant gets a quarter of the main measurement's statements per pass.
    let count = plan.overhead_single_rounds * plan.overhead_single_per_round / 4;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut single = vec![Vec::new(); VARIANTS.len()];
    for pass in 0..2 {
        let order: Vec<usize> = if pass == 0 { (0..VARIANTS.len()).collect() } else { (0..VARIANTS.len()).rev().collect() };
        for i in order {
            only_trigger(env, VARIANTS[i].0).await?;
            env.clear_marks().await?;
            let mut conn = env.pool.acquire().await?;
            single[i].extend(single_latencies(&mut conn, n, 100, count, &mut rng).await?);
        }
    }
    let mut bulk = Vec::new();
    for (t, _) in VARIANTS {
        only_trigger(env, t).await?;
        bulk.push(bulk_once(env).await?);
    }
    only_trigger(env, CAPTURE_TRIGGER).await?;
    env.sql("DROP SCHEMA bench CASCADE").await?;
    let base = stats::dist(&single[0]);
    let mut s = format!(
        "**Where the overhead goes**: each variant alone on the same table (experimental triggers created in the \
         benchmark's database only); single-row: two passes of {} statements in opposite orders (the median is the \
         steadier figure: the mean carries the commits' occasional multi-millisecond `fsync`s); bulk: one \
         100,000-row `UPDATE` each.\n\n\
         | capture variant | single-row p50 | vs none | single-row mean | vs none | 100,000-row `UPDATE` | vs none |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        stats::int(count as u64)
    );
    for (i, (_, label)) in VARIANTS.iter().enumerate() {
        let d = stats::dist(&single[i]);
        s.push_str(&format!(
            "| {label} | {} µs | {} | {} µs | {} | {} | {} |\n",
            (d.p50 * 1e6).round(),
            stats::pct(d.p50 / base.p50),
            (d.mean * 1e6).round(),
            stats::pct(d.mean / base.mean),
            stats::secs(bulk[i]),
            stats::ratio(bulk[i] / bulk[0])
        ));
    }
    Ok(s)
}

pub async fn run(plan: &Plan, services: &Services) -> Result<Outcome> {
    let mut env = BenchEnv::new(services, "overhead", plan.out_dir.join("logs")).await?;
    let r = inner(plan, &mut env).await;
    env.cleanup().await;
    r
}

async fn inner(plan: &Plan, env: &mut BenchEnv) -> Result<Outcome> {
    env.seed(plan.overhead_students).await?;
    let n = env.students as i64;
    env.clear_marks().await?;
    let settings: Vec<(String, String)> =
        sqlx::query_as("SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'wal_sync_method', 'shared_buffers', 'work_mem') ORDER BY name")
            .fetch_all(&env.pool)
            .await?;

    // Single-row UPDATEs, one connection, autocommit: what an application does.
    let mut lat = [Vec::new(), Vec::new()]; // [off, on]
    let mut round_means = [Vec::new(), Vec::new()];
    let mut rng = rand::rngs::StdRng::from_entropy();
    for round in 0..plan.overhead_single_rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for on in order {
            set_capture(env, on).await?;
            env.clear_marks().await?;
            let mut conn = env.pool.acquire().await?;
            let v = single_latencies(&mut conn, n, WARM_UP, plan.overhead_single_per_round, &mut rng).await?;
            round_means[on as usize].push(stats::dist(&v).mean);
            lat[on as usize].extend(v);
        }
        progress!("{}: single-row round {} done", env.kind, round + 1);
    }
    let (off, on) = (stats::dist(&lat[0]), stats::dist(&lat[1]));
    let single_ratio = on.mean / off.mean;
    // Each round's pair measured minutes apart at most: the steadiest view of the overhead
    // on a machine whose speed drifts.
    let mut pair_ratios: Vec<f64> = round_means[1].iter().zip(&round_means[0]).map(|(a, b)| a / b).collect();
    pair_ratios.sort_by(f64::total_cmp);

    // The 100,000-row UPDATE, from a clean state each time.
    let mut bulk = [Vec::new(), Vec::new()];
    let mut expansion = Vec::new();
    for round in 0..plan.overhead_bulk_rounds.max(1) {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for on in order {
            set_capture(env, on).await?;
            env.clear_marks().await?;
            env.sql("VACUUM students").await?;
            env.sql("CHECKPOINT").await?;
            let t = Instant::now();
            let r = sqlx::query(BULK).execute(&env.pool).await?;
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(r.rows_affected() == 100_000, "the bulk UPDATE touched {} rows", r.rows_affected());
            if on {
                // Every changed student is one log row, all with the statement's one number
                // (migration 0009); no set row any more.
                let (rows, numbers) = env.scalar2("SELECT count(*), count(DISTINCT seq) FROM tidemark.changes").await?;
                let sets = env.scalar("SELECT count(*) FROM tidemark.parents").await?;
                anyhow::ensure!(
                    rows == 100_000 && numbers == 1 && sets == 0,
                    "the bulk UPDATE logged {rows} row(s) under {numbers} number(s) and left {sets} set row(s)"
                );
                // What the writer no longer does, a worker does later: absorb the log into marks.
                let t = Instant::now();
                let moved = absorb_all(env).await?;
                expansion.push(t.elapsed().as_secs_f64());
                let marks = env.scalar("SELECT count(*) FROM tidemark.marks").await?;
                anyhow::ensure!(moved == 100_000 && marks == 100_000, "absorbing the log moved {moved} rows into {marks} marks");
            }
            bulk[on as usize].push(secs);
            progress!("{}: 100k-row UPDATE, capture {}: {:.3}s", env.kind, if on { "on" } else { "off" }, secs);
        }
    }
    set_capture(env, true).await?;
    let (boff, bon) = (stats::median(&bulk[0]), stats::median(&bulk[1]));

    // Single rows on a connection that has just run the 100,000-row UPDATE: PL/pgSQL keeps
    // each trigger query's plan for the connection, planned for the transition tables'
    // size at the time, and a plan made for 100,000 rows must never serve one (a trigger
    // that did this once made every later single-row UPDATE on the connection ~90 ms).
    env.clear_marks().await?;
    let after_bulk_lat = {
        let mut conn = env.pool.acquire().await?;
        sqlx::query(BULK).execute(&mut *conn).await?;
        single_latencies(&mut conn, n, WARM_UP, plan.overhead_single_per_round * 2, &mut rng).await?
    };
    let after_bulk = stats::dist(&after_bulk_lat);
    let after_bulk_ratio = after_bulk.mean / on.mean;
    let after_bulk_slow = after_bulk_lat.iter().filter(|x| **x > 0.05).count();
    progress!("{}: single rows after a bulk UPDATE on the same connection: {}", env.kind, stats::us(after_bulk.mean));

    // The other way round: a mid-sized UPDATE on a connection that has run single-row
    // UPDATEs (every pooled application connection has), against the same statement on a
    // fresh connection. Nothing may invalidate the connection's plans in between (a TRUNCATE
    // of the log would: the log is emptied before, not between).
    let medium = medium_after_single(env, n, &mut rng).await?;
    let medium_ratio = medium.1.unwrap_or(MEDIUM_TIMEOUT_S as f64) / medium.0;
    progress!("{}: capture variants", env.kind);
    let variants = variants(plan, env).await?;
    let bulk_ratio = bon / boff;

    let mut out = Outcome::default();
    out.rows.push(
        Row::new(BENCH, "single-row `UPDATE` (autocommit), mean latency with capture")
            .figure(format!("{} (p50 {}, p95 {})", stats::us(on.mean), stats::us(on.p50), stats::us(on.p95)))
            .baseline(format!("{} (p50 {}, p95 {}) without", stats::us(off.mean), stats::us(off.p50), stats::us(off.p95)))
            .ratio(format!(
                "{} ({}; p50 {}; median of {} paired rounds {})",
                stats::ratio(single_ratio),
                stats::pct(single_ratio),
                stats::pct(on.p50 / off.p50),
                pair_ratios.len(),
                stats::pct(stats::median(&pair_ratios))
            ))
            .target("≤ 15 % latency", Some(single_ratio <= 1.15)),
    );
    out.rows.push(
        Row::new(BENCH, "one `UPDATE` of 100,000 rows, with capture (median)")
            .figure(stats::secs(bon))
            .baseline(format!("{} without", stats::secs(boff)))
            .ratio(stats::ratio(bulk_ratio))
            .target("≤ 2×", Some(bulk_ratio <= 2.0)),
    );
    out.rows.push(
        Row::new(BENCH, "single-row `UPDATE` with capture on a connection that just ran the 100,000-row `UPDATE`")
            .figure(format!(
                "{} (p50 {}, p95 {}; {} of {} statements over 50 ms)",
                stats::us(after_bulk.mean),
                stats::us(after_bulk.p50),
                stats::us(after_bulk.p95),
                after_bulk_slow,
                after_bulk_lat.len()
            ))
            .baseline(format!("{} on connections that did not (the rounds above)", stats::us(on.mean)))
            .ratio(stats::ratio(after_bulk_ratio))
            .target("no slower (a large statement leaves no plan behind)", Some(after_bulk_ratio <= 1.5)),
    );
    out.rows.push(
        Row::new(
            BENCH,
            format!(
                "one `UPDATE` of {} rows with capture on a connection that has run {WARM_UP} single-row `UPDATE`s (as a pooled application connection has)",
                stats::int(MEDIUM_ROWS as u64)
            ),
        )
        .figure(match medium.1 {
            Some(t) => stats::secs(t),
            None => format!("> {MEDIUM_TIMEOUT_S} s (cancelled by `statement_timeout`)"),
        })
        .baseline(format!("{} on a fresh connection", stats::secs(medium.0)))
        .ratio(if medium.1.is_some() { stats::ratio(medium_ratio) } else { format!("> {}", stats::ratio(medium_ratio)) })
        .target("no slower (a small statement leaves no plan behind)", Some(medium.1.is_some() && medium_ratio <= 1.5)),
    );
    let s = &mut out.section;
    s.push_str(&format!(
        "{} students seeded. The capture trigger on `students` for an `UPDATE` (`tidemark_capture_update`, statement-level, \
         transition tables; it also logs both sides of an id change: there is no row trigger) is switched with `ALTER TABLE … ENABLE/DISABLE TRIGGER` between measurements on the same table; sides \
         alternate in order from round to round. No workers run, so the change log accumulates as it would between two \
         syncs (the log and the marks are emptied before each measurement).\n\n\
         **Single row**: `{SINGLE}` with a random id, one connection, autocommit (so every statement includes its \
         commit; the capture sends no notification since migration 0009); {} rounds × {} statements per side, each after {WARM_UP} warm-up \
         statements; short rounds alternating sides, so that the machine's drift hits both alike.\n\n\
         | | mean | p50 | p95 | p99 | max |\n| --- | --- | --- | --- | --- | --- |\n\
         | without capture | {} | {} | {} | {} | {} |\n\
         | with capture | {} | {} | {} | {} | {} |\n\
         | ratio | {} | {} | {} | {} | |\n\n\
         Per round, mean with capture ÷ mean without: median {}, lowest {}, highest {}.\n\n\
         **Bulk**: `{BULK}` (one statement, one transaction), after `VACUUM students` and `CHECKPOINT`, \
         {} round(s) per side. With capture the statement appends 100,000 rows to `tidemark.changes`, one per \
         changed student, all under the statement's one number (checked; no set row any more), and a worker later \
         absorbs them into marks, off the writer's transaction (timed apart below).\n\n\
         | | runs (s) | median |\n| --- | --- | --- |\n\
         | without capture | {} | {} |\n\
         | with capture | {} | {} |\n\
         | later, in a worker: the log absorbed into 100,000 marks (`pipeline::claim::absorb`, 10 × 10,000 rows, each its own transaction) | {} | {} |\n\n\
         PostgreSQL settings: {}.\n\n",
        stats::int(env.students),
        plan.overhead_single_rounds,
        stats::int(plan.overhead_single_per_round as u64),
        stats::us(off.mean),
        stats::us(off.p50),
        stats::us(off.p95),
        stats::us(off.p99),
        stats::us(off.max),
        stats::us(on.mean),
        stats::us(on.p50),
        stats::us(on.p95),
        stats::us(on.p99),
        stats::us(on.max),
        stats::ratio(single_ratio),
        stats::ratio(on.p50 / off.p50),
        stats::ratio(on.p95 / off.p95),
        stats::ratio(on.p99 / off.p99),
        stats::ratio(stats::median(&pair_ratios)),
        stats::ratio(pair_ratios.first().copied().unwrap_or(f64::NAN)),
        stats::ratio(pair_ratios.last().copied().unwrap_or(f64::NAN)),
        plan.overhead_bulk_rounds.max(1),
        bulk[0].iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "),
        stats::secs(boff),
        bulk[1].iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "),
        stats::secs(bon),
        expansion.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "),
        stats::secs(stats::median(&expansion)),
        settings.iter().map(|(k, v)| format!("`{k}={v}`")).collect::<Vec<_>>().join(", "),
    ));
    s.push_str(&format!(
        "**Plans a connection keeps**: PL/pgSQL plans a trigger's query once per connection and keeps the plan until \
         something invalidates it (e.g. an `ANALYZE` of a table it reads or writes — autovacuum's, as the log churns — \
         or a `TRUNCATE`), planned for the transition tables' size at that first run. Two checks, capture on: \
         (1) single-row `UPDATE`s on a connection that has just run the 100,000-row `UPDATE` (the plan made for \
         100,000 rows): {} mean, p50 {}, p95 {}, {} of {} statements over 50 ms, against {} on the other connections; \
         (2) one `UPDATE` of {} rows on a connection that has run {WARM_UP} single-row `UPDATE`s (the plan made for \
         one row), bounded by `statement_timeout = {MEDIUM_TIMEOUT_S}s`: {}, against {} on a fresh connection.\n\n",
        stats::us(after_bulk.mean),
        stats::us(after_bulk.p50),
        stats::us(after_bulk.p95),
        after_bulk_slow,
        after_bulk_lat.len(),
        stats::us(on.mean),
        stats::int(MEDIUM_ROWS as u64),
        medium.1.map_or(format!("> {MEDIUM_TIMEOUT_S} s (cancelled)"), stats::secs),
        stats::secs(medium.0),
    ));
    s.push_str(&variants);
    out.raw = json!({"single_off": off, "single_on": on, "single_round_means": round_means, "bulk_off_s": bulk[0], "bulk_on_s": bulk[1], "bulk_expansion_s": expansion, "single_after_bulk": after_bulk, "single_after_bulk_over_50ms": after_bulk_slow, "medium_rows": MEDIUM_ROWS, "medium_fresh_s": medium.0, "medium_after_single_s": medium.1});
    Ok(out)
}

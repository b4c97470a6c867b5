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

async fn set_capture(env: &BenchEnv, on: bool) -> Result<()> {
    env.sql(&format!("ALTER TABLE students {} TRIGGER tidemark_capture_update", if on { "ENABLE" } else { "DISABLE" })).await
}

/// Experimental capture variants, created in the benchmark's own database only, to see
/// where the overhead goes. Each is a trigger on `students`, created disabled.
const VARIANTS_SQL: &str = r#"
CREATE SCHEMA bench;
-- The statement trigger with transition tables, doing nothing: the price of the mechanism.
CREATE FUNCTION bench.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER bench_noop AFTER UPDATE ON students
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.noop();
-- One mark per changed row straight from the transition tables, whatever the statement's
-- size: tidemark's capture before large statements became one set row (migrations/0002).
CREATE FUNCTION bench.capture_per_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.dirty_students AS d (student_id, seq)
    SELECT coalesce(n.id, o.id), v
      FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
     WHERE n.id IS NULL OR o.id IS NULL
        OR (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
           IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)
     ORDER BY 1
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    IF FOUND THEN
        PERFORM pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_per_row AFTER UPDATE ON students
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.capture_per_row();
-- A row-level trigger: one upsert per changed row, no transition tables.
CREATE FUNCTION bench.capture_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tidemark.dirty_students AS d (student_id, seq) VALUES (NEW.id, nextval('tidemark.seq'))
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq;
    PERFORM pg_notify('tidemark_sync', '');
    RETURN NULL;
END $$;
CREATE TRIGGER bench_row AFTER UPDATE ON students FOR EACH ROW
    WHEN ((NEW.first_name, NEW.last_name, NEW.age, NEW.year_in_school, NEW.university_id)
          IS DISTINCT FROM (OLD.first_name, OLD.last_name, OLD.age, OLD.year_in_school, OLD.university_id))
    EXECUTE FUNCTION bench.capture_row();
ALTER TABLE students DISABLE TRIGGER bench_noop, DISABLE TRIGGER bench_per_row, DISABLE TRIGGER bench_row;
"#;

/// (trigger enabled on `students` besides none, label)
const VARIANTS: [(&str, &str); 5] = [
    ("", "no trigger"),
    ("bench_noop", "statement trigger with transition tables that does nothing"),
    ("tidemark_capture_update", "**tidemark's capture** (as shipped: marks below 1,000 rows, one set row from 1,000 up)"),
    ("bench_per_row", "one mark per changed row at any size (the capture before sets, migration 0002)"),
    ("bench_row", "row-level trigger (`WHEN` changed): one upsert + `NOTIFY` per row"),
];

async fn only_trigger(env: &BenchEnv, name: &str) -> Result<()> {
    let mut sql = String::from("ALTER TABLE students");
    for (i, (t, _)) in VARIANTS.iter().filter(|(t, _)| !t.is_empty()).enumerate() {
        sql.push_str(if i == 0 { " " } else { ", " });
        sql.push_str(if *t == name { "ENABLE TRIGGER " } else { "DISABLE TRIGGER " });
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

/// Expands every statement set into marks, as a worker's fan-out step does (chunks of
/// 10,000, the default); returns the students marked.
async fn expand_all(env: &BenchEnv) -> Result<u64> {
    use tidemark::pipeline::fanout::{claim_parent, expand_step, Step};
    let lease = std::time::Duration::from_secs(60);
    let mut marked = 0;
    while let Some(mut set) = claim_parent(&env.pool, "bench", lease).await? {
        loop {
            match expand_step(&env.pool, "bench", lease, &mut set, 10_000).await? {
                Step::Marked(n) => marked += n,
                Step::Finished(n) => {
                    marked += n;
                    break;
                }
                Step::Restarted => break,
            }
        }
    }
    Ok(marked)
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
    only_trigger(env, "tidemark_capture_update").await?;
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
                // A large statement leaves one set row with every changed id (migration 0005).
                let (rows, ids) = env
                    .scalar2("SELECT count(*), coalesce(sum(cardinality(ids)), 0) FROM tidemark.dirty_parents WHERE kind = 'students'")
                    .await?;
                anyhow::ensure!(rows == 1 && ids == 100_000, "the bulk UPDATE left {rows} set row(s) of {ids} students");
                // What the writer no longer does, a worker does later: expand the set into marks.
                let t = Instant::now();
                let marked = expand_all(env).await?;
                expansion.push(t.elapsed().as_secs_f64());
                anyhow::ensure!(marked == 100_000, "expanding the set marked {marked} students");
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
    let after_bulk = {
        let mut conn = env.pool.acquire().await?;
        sqlx::query(BULK).execute(&mut *conn).await?;
        stats::dist(&single_latencies(&mut conn, n, WARM_UP, plan.overhead_single_per_round * 2, &mut rng).await?)
    };
    let after_bulk_ratio = after_bulk.mean / on.mean;
    progress!("{}: single rows after a bulk UPDATE on the same connection: {}", env.kind, stats::us(after_bulk.mean));
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
            .figure(format!("{} (p50 {})", stats::us(after_bulk.mean), stats::us(after_bulk.p50)))
            .baseline(format!("{} on connections that did not (the rounds above)", stats::us(on.mean)))
            .ratio(stats::ratio(after_bulk_ratio))
            .target("no slower (a large statement leaves no plan behind)", Some(after_bulk_ratio <= 1.5)),
    );
    let s = &mut out.section;
    s.push_str(&format!(
        "{} students seeded. The capture trigger on `students` (`tidemark_capture_update`, statement-level, transition \
         tables) is switched with `ALTER TABLE … ENABLE/DISABLE TRIGGER` between measurements on the same table; sides \
         alternate in order from round to round. No workers run, so marks accumulate as they would between two syncs \
         (the marks table is emptied before each measurement).\n\n\
         **Single row**: `{SINGLE}` with a random id, one connection, autocommit (so every statement includes its \
         commit and, with capture, its `NOTIFY`); {} rounds × {} statements per side, each after {WARM_UP} warm-up \
         statements; short rounds alternating sides, so that the machine's drift hits both alike.\n\n\
         | | mean | p50 | p95 | p99 | max |\n| --- | --- | --- | --- | --- | --- |\n\
         | without capture | {} | {} | {} | {} | {} |\n\
         | with capture | {} | {} | {} | {} | {} |\n\
         | ratio | {} | {} | {} | {} | |\n\n\
         Per round, mean with capture ÷ mean without: median {}, lowest {}, highest {}.\n\n\
         **Bulk**: `{BULK}` (one statement, one transaction), after `VACUUM students` and `CHECKPOINT`, \
         {} round(s) per side. With capture the statement leaves one row holding the 100,000 changed ids \
         (checked), and a worker later expands it into marks, off the writer's transaction (timed apart below).\n\n\
         | | runs (s) | median |\n| --- | --- | --- |\n\
         | without capture | {} | {} |\n\
         | with capture | {} | {} |\n\
         | later, in a worker: the set expanded into 100,000 marks (10 chunks of 10,000, each its own transaction) | {} | {} |\n\n\
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
    s.push_str(&variants);
    out.raw = json!({"single_off": off, "single_on": on, "single_round_means": round_means, "bulk_off_s": bulk[0], "bulk_on_s": bulk[1], "bulk_expansion_s": expansion, "single_after_bulk": after_bulk});
    Ok(out)
}

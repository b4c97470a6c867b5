//! 3. Write overhead of the capture triggers: single-row `UPDATE` latency and one
//! 100,000-row `UPDATE`, each with the trigger enabled and disabled on the same table,
//! alternating so drift hits both sides alike.

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
const SINGLE: &str = "UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id = $1";
const BULK: &str = "UPDATE students SET age = CASE WHEN age >= 100 THEN 1 ELSE age + 1 END WHERE id <= 100000";

async fn set_capture(env: &BenchEnv, on: bool) -> Result<()> {
    env.sql(&format!("ALTER TABLE students {} TRIGGER tidemark_capture_update", if on { "ENABLE" } else { "DISABLE" })).await
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
    env.sql("TRUNCATE tidemark.dirty_students").await?;
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
            env.sql("TRUNCATE tidemark.dirty_students").await?;
            let mut conn = env.pool.acquire().await?;
            for _ in 0..200 {
                sqlx::query(SINGLE).bind(rng.gen_range(1..=n)).execute(&mut *conn).await?;
            }
            let mut v = Vec::with_capacity(plan.overhead_single_per_round);
            for _ in 0..plan.overhead_single_per_round {
                let id = rng.gen_range(1..=n);
                let t = Instant::now();
                sqlx::query(SINGLE).bind(id).execute(&mut *conn).await?;
                v.push(t.elapsed().as_secs_f64());
            }
            round_means[on as usize].push(stats::dist(&v).mean);
            lat[on as usize].extend(v);
        }
        progress!("{}: single-row round {} done", env.kind, round + 1);
    }
    let (off, on) = (stats::dist(&lat[0]), stats::dist(&lat[1]));
    let single_ratio = on.mean / off.mean;

    // The 100,000-row UPDATE, from a clean state each time.
    let mut bulk = [Vec::new(), Vec::new()];
    for round in 0..plan.overhead_bulk_rounds.max(1) {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for on in order {
            set_capture(env, on).await?;
            env.sql("TRUNCATE tidemark.dirty_students").await?;
            env.sql("VACUUM students").await?;
            env.sql("CHECKPOINT").await?;
            let t = Instant::now();
            let r = sqlx::query(BULK).execute(&env.pool).await?;
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(r.rows_affected() == 100_000, "the bulk UPDATE touched {} rows", r.rows_affected());
            if on {
                let marked = env.scalar("SELECT count(*) FROM tidemark.dirty_students").await?;
                anyhow::ensure!(marked == 100_000, "the bulk UPDATE marked {marked} students");
            }
            bulk[on as usize].push(secs);
            progress!("{}: 100k-row UPDATE, capture {}: {:.3}s", env.kind, if on { "on" } else { "off" }, secs);
        }
    }
    set_capture(env, true).await?;
    let (boff, bon) = (stats::median(&bulk[0]), stats::median(&bulk[1]));
    let bulk_ratio = bon / boff;

    let mut out = Outcome::default();
    out.rows.push(
        Row::new(BENCH, "single-row `UPDATE` (autocommit), mean latency with capture")
            .figure(format!("{} (p50 {}, p95 {})", stats::ms(on.mean), stats::ms(on.p50), stats::ms(on.p95)))
            .baseline(format!("{} (p50 {}, p95 {}) without", stats::ms(off.mean), stats::ms(off.p50), stats::ms(off.p95)))
            .ratio(format!("{} ({})", stats::ratio(single_ratio), stats::pct(single_ratio)))
            .target("≤ 15 % latency", Some(single_ratio <= 1.15)),
    );
    out.rows.push(
        Row::new(BENCH, "one `UPDATE` of 100,000 rows, with capture (median)")
            .figure(stats::secs(bon))
            .baseline(format!("{} without", stats::secs(boff)))
            .ratio(stats::ratio(bulk_ratio))
            .target("≤ 2×", Some(bulk_ratio <= 2.0)),
    );
    let s = &mut out.section;
    s.push_str(&format!(
        "{} students seeded. The capture trigger on `students` (`tidemark_capture_update`, statement-level, transition \
         tables) is switched with `ALTER TABLE … ENABLE/DISABLE TRIGGER` between measurements on the same table; sides \
         alternate in order from round to round. No workers run, so marks accumulate as they would between two syncs \
         (the marks table is emptied before each measurement).\n\n\
         **Single row**: `{SINGLE}` with a random id, one connection, autocommit (so every statement includes its \
         commit and, with capture, its `NOTIFY`); {} rounds × {} statements per side after 200 warm-up statements.\n\n\
         | | mean | p50 | p95 | p99 | max |\n| --- | --- | --- | --- | --- | --- |\n\
         | without capture | {} | {} | {} | {} | {} |\n\
         | with capture | {} | {} | {} | {} | {} |\n\
         | ratio | {} | {} | {} | {} | |\n\n\
         Per-round means, without: {}; with: {}.\n\n\
         **Bulk**: `{BULK}` (one statement, one transaction), after `VACUUM students` and `CHECKPOINT`, \
         {} round(s) per side; with capture every one of the 100,000 students ends up marked (checked).\n\n\
         | | runs (s) | median |\n| --- | --- | --- |\n\
         | without capture | {} | {} |\n\
         | with capture | {} | {} |\n\n\
         PostgreSQL settings: {}.\n\n",
        stats::int(env.students),
        plan.overhead_single_rounds,
        stats::int(plan.overhead_single_per_round as u64),
        stats::ms(off.mean),
        stats::ms(off.p50),
        stats::ms(off.p95),
        stats::ms(off.p99),
        stats::ms(off.max),
        stats::ms(on.mean),
        stats::ms(on.p50),
        stats::ms(on.p95),
        stats::ms(on.p99),
        stats::ms(on.max),
        stats::ratio(single_ratio),
        stats::ratio(on.p50 / off.p50),
        stats::ratio(on.p95 / off.p95),
        stats::ratio(on.p99 / off.p99),
        round_means[0].iter().map(|m| stats::ms(*m)).collect::<Vec<_>>().join(", "),
        round_means[1].iter().map(|m| stats::ms(*m)).collect::<Vec<_>>().join(", "),
        plan.overhead_bulk_rounds.max(1),
        bulk[0].iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "),
        stats::secs(boff),
        bulk[1].iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "),
        stats::secs(bon),
        settings.iter().map(|(k, v)| format!("`{k}={v}`")).collect::<Vec<_>>().join(", "),
    ));
    out.raw = json!({"single_off": off, "single_on": on, "single_round_means": round_means, "bulk_off_s": bulk[0], "bulk_on_s": bulk[1]});
    Ok(out)
}

//! 8. The shipped `refinebio` model (issue 18): an organism renamed — two levels down from
//!    the experiment, through the experiment–sample join table — reaches every experiment
//!    with a sample of it; and the full reindex's own cost, side by side with `students` in
//!    the same run.
//!
//! - **Fan-out**: a scheduler and two worker processes (`TIDEMARK_MODEL=refinebio`) against
//!   the OpenSearch node; rename an organism with one `UPDATE organisms SET name = …` and
//!   poll `_count` with a `term` query on `organism_names` until every experiment with a
//!   sample of it matches, checking the marks at each poll (as section 1 does for a
//!   university). Two organisms: the rarest and the most common. Baseline in the same run:
//!   one request per experiment (read it, `PUT` its document). tidemark's own part: the same
//!   rename drained by 2 in-process engines into the discarding endpoint.
//! - **Reindex**: `reindex::start` then 2 in-process engines into the discarding endpoint
//!   (section 2's measured operation), on N experiments and on N students, alternating.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::{
    cpu::{self, PgCpu, ProcCpu},
    discard::Discard,
    env::{BenchEnv, Services},
    fanout::wait_searchable,
    reindex::{measured_run, Path, Run},
    report::{Outcome, Row},
    stats, Plan,
};
use crate::progress;

const BENCH: &str = "8. refinebio";

/// Experiments with a sample of organism `id`: the documents its rename changes.
async fn experiments_of(env: &BenchEnv, organism: i64, limit: Option<i64>) -> Result<Vec<String>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT es.experiment_id FROM experiment_samples es JOIN samples s ON s.id = es.sample_id
          WHERE s.organism_id = $1 ORDER BY es.experiment_id LIMIT $2",
    )
    .bind(organism)
    .bind(limit.unwrap_or(i64::MAX))
    .fetch_all(&env.pool)
    .await?;
    Ok(ids.into_iter().map(|id| id.to_string()).collect())
}

pub async fn run(plan: &Plan, services: &Services) -> Result<Outcome> {
    let mut out = Outcome::default();
    let mut raw = serde_json::Map::new();
    let mut env = BenchEnv::with_model(services, "refinebio", plan.out_dir.join("logs"), "refinebio").await?;
    let r = async {
        env.seed_refinebio(plan.refinebio_experiments).await?;
        reindex_part(plan, services, &mut env, &mut out, &mut raw).await?;
        // A failed fan-out keeps the reindex figures above it.
        if let Err(e) = fanout_part(plan, &mut env, &mut out, &mut raw).await {
            progress!("refinebio: the fan-out part failed: {e:#}");
            out.rows.push(Row::new(BENCH, "fan-out: an organism renamed").figure(format!("failed: {e:#}")).target("—", Some(false)));
            out.section.push_str(&format!("**The fan-out part failed:** `{e:#}`\n\n"));
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    env.cleanup().await;
    r?;
    out.raw = serde_json::Value::Object(raw);
    Ok(out)
}

/// The full reindex into the discarding endpoint, refinebio and students alternating.
async fn reindex_part(
    plan: &Plan,
    services: &Services,
    rb: &mut BenchEnv,
    out: &mut Outcome,
    raw: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let n = rb.students;
    let mut st = BenchEnv::new(services, "refinebio_students", plan.out_dir.join("logs")).await?;
    let r = async {
        st.seed(n).await?;
        let d_rb = Discard::start(&[(rb.alias.clone(), format!("{}_1", rb.alias))]);
        let d_st = Discard::start(&[(st.alias.clone(), format!("{}_1", st.alias))]);
        let (mut runs_rb, mut runs_st): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
        let bytes = |d: &Discard| d.counters.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
        let (mut bytes_rb, mut bytes_st) = (0u64, 0u64);
        for round in 0..plan.refinebio_repeats.max(1) {
            // Alternate which model goes first.
            for model in if round % 2 == 0 { ["refinebio", "students"] } else { ["students", "refinebio"] } {
                let (env, d, runs, b) = if model == "refinebio" {
                    (&*rb, &d_rb, &mut runs_rb, &mut bytes_rb)
                } else {
                    (&st, &d_st, &mut runs_st, &mut bytes_st)
                };
                let b0 = bytes(d);
                runs.push(measured_run(env, &d.url, Path::Reindex, 2, Some(d)).await?);
                *b = bytes(d) - b0;
            }
        }
        Ok::<_, anyhow::Error>((runs_rb, runs_st, bytes_rb, bytes_st))
    }
    .await;
    st.cleanup().await;
    let (runs_rb, runs_st, bytes_rb, bytes_st) = r?;
    let med = |runs: &[Run], f: fn(&Run) -> f64| stats::median(&runs.iter().map(f).collect::<Vec<_>>());
    let (rate_rb, rate_st) = (med(&runs_rb, |r| r.docs_per_s), med(&runs_st, |r| r.docs_per_s));
    let per_cpu = |r: &Run| r.docs as f64 / (r.cpu_tidemark + r.cpu_postgres);
    let (cpu_rb, cpu_st) = (med(&runs_rb, per_cpu), med(&runs_st, per_cpu));
    let label = stats::int(n);
    out.rows.push(
        Row::new(BENCH, format!("full reindex, tidemark's own cost: {label} experiments into a discarding `_bulk` endpoint, 2 engines"))
            .figure(format!("{} ({} per CPU-second of tidemark + PostgreSQL)", stats::rate(rate_rb), stats::rate(cpu_rb)))
            .baseline(format!(
                "{label} students the same way, alternating: {} ({} per CPU-second)",
                stats::rate(rate_st),
                stats::rate(cpu_st)
            ))
            .ratio(stats::ratio(rate_rb / rate_st))
            .target("a deeper model may cost more: measured and reported (issue 18)", None),
    );
    let s = &mut out.section;
    s.push_str(&format!(
        "### Full reindex: {label} experiments against {label} students\n\n\
         `reindex::start` (what `tidemark admin reindex` calls), then 2 in-process engines process the chunks of 10,000 \
         into a discarding endpoint that answers like `_bulk` (section 2's measured operation), until the build is \
         verified and the alias swapped; the two models alternate, {} rounds. An experiment's document is built with \
         three many-to-many relations through `experiment_samples` (its sample ids, its samples' organism names and \
         platform names, each two tables away); a student's with one belongs-to and one many-to-many.\n\n\
         | model | round | seconds | documents/s | CPU: tidemark | CPU: PostgreSQL | bytes sent per document |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        plan.refinebio_repeats.max(1)
    ));
    for (model, runs, bytes) in [("refinebio", &runs_rb, bytes_rb), ("students", &runs_st, bytes_st)] {
        for (i, r) in runs.iter().enumerate() {
            s.push_str(&format!(
                "| {model} | {} | {:.2} | **{}** | {:.2} s | {:.2} s | {} |\n",
                i + 1,
                r.secs,
                stats::rate(r.docs_per_s),
                r.cpu_tidemark,
                r.cpu_postgres,
                if i + 1 == runs.len() { format!("{:.0}", bytes as f64 / r.docs.max(1) as f64) } else { String::new() }
            ));
        }
    }
    s.push('\n');
    raw.insert(
        "reindex".into(),
        json!({"documents": n, "refinebio": runs_rb, "students": runs_st, "bytes_refinebio": bytes_rb, "bytes_students": bytes_st}),
    );
    Ok(())
}

/// Organism renames through OpenSearch with the deployment running, then tidemark's own
/// part into the discarding endpoint, then the per-document baseline.
async fn fanout_part(
    plan: &Plan,
    env: &mut BenchEnv,
    out: &mut Outcome,
    raw: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let es = env.services.es_url.clone();
    let initial = env.first_index(2).await?;
    let mut pids = env.start_deployment().await?;
    let warm = Instant::now();
    env.sql("UPDATE experiments SET title = 'Warmup' WHERE id = 1").await?;
    wait_searchable(env, json!({"term": {"title.raw": "Warmup"}}), 1, Duration::from_millis(20), Duration::from_secs(60), warm, false)
        .await?;
    let warmup = warm.elapsed().as_secs_f64();
    if let Some(p) = cpu::search_server_pid() {
        pids.push(p);
    }
    // The rarest organism (fewest experiments, at least one) and the most common one.
    let counts: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT o.id, o.name, count(DISTINCT es.experiment_id) FROM organisms o
           JOIN samples s ON s.organism_id = o.id JOIN experiment_samples es ON es.sample_id = s.id
          GROUP BY o.id, o.name ORDER BY 3, 1",
    )
    .fetch_all(&env.pool)
    .await?;
    let (Some(rare), Some(common)) = (counts.first().cloned(), counts.last().cloned()) else { bail!("no organism has an experiment") };
    let mut cases = Vec::new();
    for (id, original, n) in [rare, common] {
        let n = n as u64;
        let label = stats::int(n);
        let every = Duration::from_millis(if n > 5_000 { 100 } else { 20 });
        let limit = Duration::from_secs(600);
        let procs = ProcCpu::start(&pids);
        let pg = PgCpu::start(&env.pool, &env.db_name).await;
        let mut tries = Vec::new();
        for r in 0..plan.refinebio_repeats.max(1) {
            let name = format!("{original} renamed {r}");
            let t0 = Instant::now();
            sqlx::query("UPDATE organisms SET name = $1 WHERE id = $2").bind(&name).bind(id).execute(&env.pool).await?;
            let update = t0.elapsed().as_secs_f64();
            let m = wait_searchable(env, json!({"term": {"organism_names": name}}), n, every, limit, t0, true).await?;
            progress!("refinebio: {original} ({label} experiments) acknowledged after {:.2}s, searchable after {:.2}s", m.acked, m.all);
            tries.push((update, m));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (proc_cpu, pg_cpu) = (procs.spent(), pg.spent(&env.pool).await);
        cases.push((id, original, n, tries, proc_cpu, pg_cpu));
    }
    env.stop_processes().await;
    if env.marks_left().await? != (0, 0) {
        bail!("marks left after the renames: {:?}", env.marks_left().await?);
    }

    let index = env.index_name().await?;
    let s = &mut out.section;
    s.push_str(&format!(
        "### Fan-out: an organism renamed ({} experiments seeded, all indexed)\n\n\
         One `UPDATE organisms SET name = …`; every experiment with a sample of that organism must show the new name in \
         `organism_names` (experiment → `experiment_samples` → samples → organism). Processes: `tidemark scheduler \
         --interval 5s` and two `tidemark worker` (`TIDEMARK_MODEL=refinebio`, default configuration), started from the \
         release binary; one warm-up change went through them first (searchable after {}). The initial index ({} \
         documents, 2 in-process engines) took {} ({}: the search server's pace here). *Acknowledged*: no mark left, \
         checked at each poll; *searchable*: the poll's `_count` sees them all (no refresh requested).\n\n\
         | organism | experiments changed | rename | `UPDATE` returned | **all acknowledged** | first searchable | **all searchable** |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        stats::int(env.students),
        stats::secs(warmup),
        stats::int(env.students),
        stats::secs(initial),
        stats::rate(env.students as f64 / initial)
    ));
    let mut case_raw = Vec::new();
    for (id, original, n, tries, proc_cpu, pg_cpu) in &cases {
        let (id, n) = (*id, *n);
        let label = stats::int(n);
        for (i, (update, m)) in tries.iter().enumerate() {
            out.section.push_str(&format!(
                "| {original} | {label} | {} | {} | **{}** | {} | **{}** |\n",
                i + 1,
                stats::secs(*update),
                stats::secs(m.acked),
                stats::secs(m.first),
                stats::secs(m.all)
            ));
        }
        let median_ack = stats::median(&tries.iter().map(|t| t.1.acked).collect::<Vec<_>>());
        let median_all = stats::median(&tries.iter().map(|t| t.1.all).collect::<Vec<_>>());

        // tidemark's own part: the same rename drained into the discarding endpoint.
        let discard = Discard::start(&[(env.alias.clone(), index.clone())]);
        let cpu0 = (cpu::self_cpu(), discard.cpu());
        let t0 = Instant::now();
        sqlx::query("UPDATE organisms SET name = $1 WHERE id = $2")
            .bind(format!("{original} (discard)"))
            .bind(id)
            .execute(&env.pool)
            .await?;
        env.drain(&discard.url, 2, |_| {}).await?;
        let own = t0.elapsed().as_secs_f64();
        let own_cpu = (cpu::self_cpu() - cpu0.0).saturating_sub(discard.cpu() - cpu0.1);
        let own_ops = discard.bulk_items();

        // Baseline: one request per experiment through OpenSearch (a sample, extrapolated).
        let sample = plan.refinebio_baseline_sample.min(n as usize);
        let name3 = format!("{original} (baseline)");
        let t0 = Instant::now();
        sqlx::query("UPDATE organisms SET name = $1 WHERE id = $2").bind(&name3).bind(id).execute(&env.pool).await?;
        let ids = experiments_of(env, id, Some(sample as i64)).await?;
        env.per_document(&es, &index, &ids).await?;
        let base_measured = t0.elapsed().as_secs_f64();
        let base = base_measured * n as f64 / ids.len().max(1) as f64;
        // The baseline's documents are in the index; the rest of the marks (the rename's
        // own) are synced so the next case starts clean.
        env.drain(&es, 2, |_| {}).await?;
        progress!(
            "refinebio: {original}: own part {:.2}s ({own_ops} ops); baseline {:.2}s for {} → {:.1}s for {label}",
            own,
            base_measured,
            ids.len(),
            base
        );
        let target = if n > 10_000 { 15.0 } else { 1.0 };
        out.rows.push(
            Row::new(
                BENCH,
                format!("rename an organism of {label} experiments (two levels through a many-to-many) → all acknowledged / all searchable (scheduler + 2 workers, OpenSearch)"),
            )
            .figure(format!("{} / {} (medians of {})", stats::secs(median_ack), stats::secs(median_all), tries.len()))
            .baseline(format!(
                "{} one request per experiment{}",
                stats::secs(base),
                if ids.len() < n as usize { format!(" (extrapolated from {})", stats::int(ids.len() as u64)) } else { String::new() }
            ))
            .ratio(stats::ratio(base / median_ack))
            .target(format!("as students' fan-out: < {target} s to acknowledged"), Some(median_ack < target)),
        );
        out.rows.push(
            Row::new(BENCH, format!("same rename of {label} experiments, tidemark's own part (discarding endpoint, 2 in-process engines)"))
                .figure(format!("{} ({} of tidemark CPU, {} ops)", stats::secs(own), stats::dur(own_cpu), stats::int(own_ops)))
                .target(format!("< {target} s"), Some(own < target)),
        );
        out.section.push_str(&format!(
            "| {original}: same rename into the discarding endpoint (tidemark's own part) | {label} | | | **{}** | | |\n\
             | {original}: baseline, one request per experiment | {} | | | {} | | |\n",
            stats::secs(own),
            stats::int(ids.len() as u64),
            stats::secs(base_measured)
        ));
        case_raw.push(json!({
            "organism": original, "experiments": n, "milestones": tries.iter().map(|t| t.1.clone()).collect::<Vec<_>>(),
            "updates_s": tries.iter().map(|t| t.0).collect::<Vec<_>>(), "median_acked_s": median_ack, "median_all_s": median_all,
            "cpu_processes_and_server_s": proc_cpu.as_secs_f64(), "cpu_postgres_s": pg_cpu.as_secs_f64(),
            "own_s": own, "own_ops": own_ops, "own_cpu_s": own_cpu.as_secs_f64(),
            "baseline_sample": ids.len(), "baseline_measured_s": base_measured, "baseline_s": base,
        }));
    }
    out.section.push('\n');
    raw.insert("fanout".into(), json!({"experiments": env.students, "initial_index_s": initial, "warmup_s": warmup, "cases": case_raw}));
    Ok(())
}

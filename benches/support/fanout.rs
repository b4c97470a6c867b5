//! 1. Fan-out: rename a university and time from the renaming commit until every one of its
//!    students is searchable under the new name, with a scheduler and two worker processes
//!    running against osmem. Baseline in the same run: the tutorial's way, one request per
//!    student (read the student, index its document), then the same poll.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::{
    cpu::{self, PgCpu, ProcCpu},
    discard::Discard,
    env::{BenchEnv, Services},
    report::{Outcome, Row},
    stats, FanoutCase, Plan,
};
use crate::progress;

const BENCH: &str = "1. Fan-out";

/// A timeline event: seconds since the change, what happened, and where (process log).
type Event = (f64, String, String);

/// When the renamed documents became searchable, seconds after the rename was sent.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Milestones {
    first: f64,
    half: f64,
    all: f64,
    polls: u64,
}

/// Polls the index until `want` documents match `query`; times are from `t0`.
async fn wait_searchable(
    env: &BenchEnv,
    query: serde_json::Value,
    want: u64,
    every: Duration,
    limit: Duration,
    t0: Instant,
) -> Result<Milestones> {
    let mut m = Milestones { first: f64::NAN, half: f64::NAN, all: f64::NAN, polls: 0 };
    loop {
        let n = env.count(query.clone()).await?;
        m.polls += 1;
        let t = t0.elapsed().as_secs_f64();
        if std::env::var_os("BENCH_TRACE").is_some() {
            eprintln!("[poll] {t:.3} s: {n}");
        }
        if n > 0 && m.first.is_nan() {
            m.first = t;
        }
        if n * 2 >= want && m.half.is_nan() {
            m.half = t;
        }
        if n >= want {
            m.all = t;
            return Ok(m);
        }
        if t0.elapsed() > limit {
            bail!("only {n} of {want} documents searchable after {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Seconds osmem takes to index the renamed university's current documents on its own: read
/// and encoded before the clock starts, then `_bulk` requests of 1,000 ops, 2 in flight.
async fn server_alone(env: &BenchEnv, n: u64) -> Result<f64> {
    use tidemark::pipeline::encode::{body, encode, split};
    let index = env.index_name().await?;
    let ids = renamed_ids(env, n as usize).await?;
    let mut docs = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(10_000) {
        docs.extend(tidemark::pipeline::load::load(&env.pool, chunk).await?);
    }
    // A version above every write so far: these are accepted as updates, not 409s.
    let version = tidemark::pipeline::claim::draw_version(&env.pool).await?;
    let encoded = encode(&docs, &[index], version);
    let all: Vec<usize> = (0..encoded.ops.len()).collect();
    let bodies: Vec<Vec<u8>> = split(&encoded.ops, &all, 1000, usize::MAX).iter().map(|r| body(&encoded, r)).collect();
    let t = Instant::now();
    env.send_bulk_bodies(bodies, 2).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// The first `limit` students of the renamed university, in id order.
async fn renamed_ids(env: &BenchEnv, limit: usize) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar("SELECT id FROM students WHERE university_id = 1 ORDER BY id LIMIT $1")
        .bind(limit as i64)
        .fetch_all(&env.pool)
        .await?)
}

/// The tutorial's way: for each student, read it (one query, as an ORM `save()` does) and
/// send one `PUT /<index>/_doc/<id>` with its document, in order.
async fn per_student(env: &BenchEnv, es_url: &str, index: &str, ids: &[i64]) -> Result<()> {
    for id in ids {
        let docs = tidemark::pipeline::load::load(&env.pool, &[*id]).await?;
        let Some(doc) = &docs[0].1 else { continue };
        let resp = env.http.put(format!("{es_url}/{index}/_doc/{id}")).json(doc).send().await?;
        if !resp.status().is_success() {
            bail!("baseline request for student {id} answered {}", resp.status());
        }
    }
    Ok(())
}

pub async fn run(plan: &Plan, services: &Services) -> Result<Outcome> {
    let mut out = Outcome::default();
    let mut raw = Vec::new();
    out.section.push_str(
        "Rename university 1 (MIT in the seed data: ~10 % of the students) with one `UPDATE universities SET name = …`, \
         then poll `_count` with a `term` query on `university.name` until every one of its students matches. \
         The clock starts just before the `UPDATE` is sent (so it includes the commit) and stops when the poll that \
         sees all of them returns. Processes: `tidemark scheduler --interval 5s` and two `tidemark worker` \
         (default configuration: batch 2,000, fan-out chunk 10,000, concurrency 2 each), started from the release binary; \
         one warm-up change goes through them first.\n\n\
         Baseline, same database and index, after tidemark's run: the tutorial's way — rename, then for each student \
         read it (one query, as an ORM `save()` does) and send one `PUT /<index>/_doc/<id>` with its document, in order, \
         then the same poll.\n\n",
    );
    let mut update_ms = Vec::new();
    for case in &plan.fanout {
        let kind = if case.students >= 1_000_000 { "fanout1m" } else { "fanout16k" };
        let mut env = BenchEnv::new(services, kind, plan.out_dir.join("logs")).await?;
        let r = run_case(&mut env, case, &mut out).await;
        env.cleanup().await;
        let (v, upd) = r?;
        update_ms.push(upd);
        raw.push(v);
    }
    if update_ms.len() >= 2 {
        let (small, big) = (update_ms[0], update_ms[update_ms.len() - 1]);
        out.rows.push(
            Row::new(BENCH, "the renaming `UPDATE` itself, 100k-student university vs 1,600")
                .figure(format!("{} vs {}", stats::ms(big), stats::ms(small)))
                .ratio(stats::ratio(big / small))
                .target("O(1) (same cost whatever the size)", Some(big < 0.05 && big / small < 3.0)),
        );
    }
    out.raw = json!(raw);
    Ok(out)
}

async fn run_case(env: &mut BenchEnv, case: &FanoutCase, out: &mut Outcome) -> Result<(serde_json::Value, f64)> {
    let es = env.services.es_url.clone();
    env.seed(case.students).await?;
    let n = env.scalar("SELECT count(*) FROM students WHERE university_id = 1").await? as u64;
    let label = stats::int(n);

    // The index: everybody (a first build, as a first run does), or, to stay within osmem's
    // memory, only the renamed university's students (marked and synced).
    let (indexed, initial_what, initial) = if case.index_only_renamed {
        env.clear_marks().await?;
        env.create_index_unmarked(&es).await?;
        env.sql("SELECT tidemark.mark_students_now(ARRAY(SELECT id FROM students WHERE university_id = 1))").await?;
        progress!("{}: indexing the {label} students of the university to be renamed", env.kind);
        let t = Instant::now();
        env.drain(&es, 2, |_| {}).await?;
        let secs = t.elapsed().as_secs_f64();
        let in_index = env.count(json!({"match_all": {}})).await?;
        if in_index != n {
            bail!("the index holds {in_index} documents, expected {n}");
        }
        (n, format!("only the {label} students of the university to be renamed are indexed (osmem holds its data in memory)"), secs)
    } else {
        let secs = env.first_index(2).await?;
        (env.students, format!("all {} students are indexed", stats::int(env.students)), secs)
    };
    let server_rate = indexed as f64 / initial;

    // The deployment, and one warm-up change through it.
    let worker_toml = std::env::var("BENCH_WORKER_TOML").ok();
    let mut pids = env.start_deployment_with(worker_toml.as_deref()).await?;
    let warm_t = Instant::now();
    env.sql("UPDATE students SET last_name = 'Warmup' WHERE id = (SELECT min(id) FROM students WHERE university_id = 1)").await?;
    wait_searchable(env, json!({"term": {"last_name.raw": "Warmup"}}), 1, Duration::from_millis(20), Duration::from_secs(60), warm_t)
        .await?;
    let warmup = warm_t.elapsed().as_secs_f64();

    // The measured renames, one after the other.
    if let Some(p) = cpu::search_server_pid() {
        pids.push(p);
    }
    let every = std::env::var("BENCH_POLL_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis).unwrap_or(if n > 10_000 {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(20)
    });
    let limit = Duration::from_secs(if n > 10_000 { 900 } else { 120 });
    // (seconds of the UPDATE, milestones, timeline events, server load) per try.
    let mut tries: Vec<(f64, Milestones, Vec<Event>, String)> = Vec::new();
    let procs = ProcCpu::start(&pids);
    let pg = PgCpu::start(&env.pool, &env.db_name).await;
    let mut name = String::new();
    for r in 0..case.repeats.max(1) {
        name = format!("Renamed University {} #{r}", chrono::Utc::now().format("%H%M%S%.3f"));
        progress!("{}: renaming a university of {label} students ({}/{})", env.kind, r + 1, case.repeats.max(1));
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string();
        let wall0 = chrono::Utc::now();
        let t0 = Instant::now();
        sqlx::query("UPDATE universities SET name = $1 WHERE id = 1").bind(&name).execute(&env.pool).await?;
        let update = t0.elapsed().as_secs_f64();
        let m = wait_searchable(env, json!({"term": {"university.name": name}}), n, every, limit, t0).await?;
        progress!("{}: all {label} searchable after {:.2}s (UPDATE {:.1} ms, load {load})", env.kind, m.all, update * 1e3);
        // Let the batch's acknowledgement land and be logged before the next rename.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let all = m.all;
        let events: Vec<(f64, String, String)> = env
            .log_events(wall0, &["fan-out done", "batch synced", "changed again"])
            .into_iter()
            .filter(|(t, _, _)| *t <= all + 0.5)
            .collect();
        tries.push((update, m, events, load));
    }
    let proc_cpu = procs.spent();
    let pg_cpu = pg.spent(&env.pool).await;
    env.stop_processes().await;
    if env.marks_left().await? != (0, 0) {
        bail!("marks left after the fan-out: {:?}", env.marks_left().await?);
    }
    let alls: Vec<f64> = tries.iter().map(|t| t.1.all).collect();
    let median_all = stats::median(&alls);
    let best_all = alls.iter().copied().fold(f64::INFINITY, f64::min);
    let update = stats::median(&tries.iter().map(|t| t.0).collect::<Vec<_>>());
    let m = tries[tries.len() / 2].1.clone();

    // The server alone: the same documents, pre-encoded by tidemark's encoder, sent as the
    // workers send them (requests of 1,000, 2 in flight), as updates of the live documents.
    let server_alone = server_alone(env, n).await?;
    progress!("{}: osmem alone took {:.3}s for the {label} documents", env.kind, server_alone);

    // tidemark's own part, against the discarding endpoint (no server cost).
    let mut own = None;
    if case.discard_too {
        let index = env.index_name().await?;
        let discard = Discard::start(&[(env.alias.clone(), index.clone())]);
        let name2 = format!("{name} (discard)");
        let cpu0 = (cpu::self_cpu(), discard.cpu());
        let t0 = Instant::now();
        sqlx::query("UPDATE universities SET name = $1 WHERE id = 1").bind(&name2).execute(&env.pool).await?;
        env.drain(&discard.url, 2, |_| {}).await?;
        let secs = t0.elapsed().as_secs_f64();
        let items = discard.bulk_items();
        let tm_cpu = (cpu::self_cpu() - cpu0.0).saturating_sub(discard.cpu() - cpu0.1);
        progress!("{}: the same fan-out into the discarding endpoint: {:.2}s ({} ops)", env.kind, secs, items);
        // The tutorial's way against the same endpoint: what one request per student costs
        // the client side alone.
        let sample = case.baseline_sample.map_or(n as usize, |s| s.min(n as usize));
        let ids = renamed_ids(env, sample).await?;
        let t0 = Instant::now();
        per_student(env, &discard.url, &index, &ids).await?;
        let per_doc = t0.elapsed().as_secs_f64() * n as f64 / ids.len().max(1) as f64;
        progress!("{}: one request per student into the discarding endpoint: {:.2}s for {}", env.kind, per_doc, label);
        own = Some((secs, items, tm_cpu, per_doc));
    }

    // Baseline: one request per student, in order.
    let sample = case.baseline_sample.map_or(n as usize, |s| s.min(n as usize));
    let index = env.index_name().await?;
    let name3 = format!("{name} (baseline)");
    progress!("{}: baseline, one request per student ({} of {label})", env.kind, stats::int(sample as u64));
    let t0 = Instant::now();
    sqlx::query("UPDATE universities SET name = $1 WHERE id = 1").bind(&name3).execute(&env.pool).await?;
    let ids = renamed_ids(env, sample).await?;
    per_student(env, &env.services.es_url, &index, &ids).await?;
    let bm = wait_searchable(
        env,
        json!({"term": {"university.name": name3}}),
        sample as u64,
        Duration::from_millis(20),
        Duration::from_secs(900),
        t0,
    )
    .await?;
    let base_measured = bm.all;
    let base = base_measured * n as f64 / sample as f64;
    let extrapolated = sample < n as usize;
    progress!(
        "{}: baseline {:.2}s for {} students{}",
        env.kind,
        base_measured,
        stats::int(sample as u64),
        if extrapolated { format!(" → {:.1}s extrapolated to {label}", base) } else { String::new() }
    );

    // Rows.
    let (target, limit_s) = if n > 10_000 { ("< 15 s", 15.0) } else { ("< 1 s", 1.0) };
    let base_text = if extrapolated {
        format!("{} (extrapolated from {} requests: {})", stats::secs(base), stats::int(sample as u64), stats::secs(base_measured))
    } else {
        stats::secs(base)
    };
    out.rows.push(
        Row::new(BENCH, format!("rename a university of {label} students → all searchable (scheduler + 2 workers, osmem)"))
            .figure(if tries.len() > 1 {
                format!("{} (median of {}; best {})", stats::secs(median_all), tries.len(), stats::secs(best_all))
            } else {
                stats::secs(median_all)
            })
            .baseline(format!("{base_text}, one request per student"))
            .ratio(stats::ratio(base / median_all))
            .target(target, Some(median_all < limit_s)),
    );
    // However fast tidemark is, osmem needs `server_alone` to index these documents: the
    // ratio through it cannot exceed this.
    let ceiling = base / server_alone;
    out.rows.push(
        Row::new(BENCH, format!("batched sync vs one request per document, through osmem (fan-out of {label})"))
            .figure(stats::ratio(base / median_all))
            .baseline(format!(
                "ceiling here: {} (the per-document run ÷ {}, osmem's own time for these {label} documents in bulk, no tidemark)",
                stats::ratio(ceiling),
                stats::secs(server_alone)
            ))
            .target("≥ 20×", Some(base / median_all >= 20.0)),
    );
    if let Some((secs, _items, _tm_cpu, per_doc)) = own {
        out.rows.push(
            Row::new(BENCH, format!("same fan-out of {label}, tidemark's own part (discarding endpoint, 2 in-process engines)"))
                .figure(stats::secs(secs))
                .baseline(format!("{} one request per student into the same endpoint", stats::secs(per_doc)))
                .ratio(stats::ratio(per_doc / secs))
                .target(
                    if n > 10_000 { "≥ 20× (and < 15 s)" } else { "≥ 20× (and < 1 s)" },
                    Some(per_doc / secs >= 20.0 && secs < limit_s),
                ),
        );
    }

    // Section.
    let s = &mut out.section;
    s.push_str(&format!("### University of {label} students ({} seeded; {initial_what})\n\n", stats::int(env.students)));
    s.push_str("| rename | `UPDATE` returned (committed) | first renamed document searchable | half | **all searchable** | load average (1 min) |\n| --- | --- | --- | --- | --- | --- |\n");
    for (i, (upd, m, _, load)) in tries.iter().enumerate() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | **{}** | {load} |\n",
            i + 1,
            stats::secs(*upd),
            stats::secs(m.first),
            stats::secs(m.half),
            stats::secs(m.all)
        ));
    }
    s.push_str(&format!(
        "| baseline, one request per student | | | | {} ({} students) | |\n\n",
        stats::secs(base_measured),
        stats::int(sample as u64)
    ));
    let events = &tries[0].2;
    if !events.is_empty() {
        s.push_str("What the workers logged during the first rename (seconds after it was sent; a batch is logged once acknowledged, after its `_bulk` answers):\n\n");
        let mut batches = 0;
        let mut docs = 0u64;
        for (t, proc_name, line) in events {
            if line.contains("batch synced") {
                batches += 1;
                let k: u64 = line
                    .split("size=")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                docs += k;
                if batches <= 12 {
                    let ms = |key: &str| {
                        line.split(key)
                            .nth(1)
                            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|x| x.parse::<f64>().ok())
                    };
                    let stages = match (ms("load_ms="), ms("ship_ms="), ms("ack_ms=")) {
                        (Some(l), Some(sh), Some(a)) => {
                            format!(" (read {}, `_bulk` {}, acknowledge {})", stats::ms(l / 1e3), stats::ms(sh / 1e3), stats::ms(a / 1e3))
                        }
                        _ => String::new(),
                    };
                    s.push_str(&format!("- {}: {proc_name}: batch of {} synced{stages}\n", stats::secs(*t), stats::int(k)));
                }
            } else if line.contains("fan-out done") {
                s.push_str(&format!("- {}: {proc_name}: fan-out done (every student marked)\n", stats::secs(*t)));
            } else {
                s.push_str(&format!("- {}: {proc_name}: {}\n", stats::secs(*t), line.chars().skip(28).take(120).collect::<String>()));
            }
        }
        if batches > 12 {
            s.push_str(&format!("- … {} batches, {} documents in all\n", batches, stats::int(docs)));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "- Poll every {} ms ({} polls in the median rename). Warm-up change (one student) searchable after {}.\n",
        every.as_millis(),
        m.polls,
        stats::secs(warmup)
    ));
    s.push_str(&format!(
        "- CPU during the renames: tidemark processes + search server {}, PostgreSQL backends {}.\n",
        stats::dur(proc_cpu),
        stats::dur(pg_cpu)
    ));
    s.push_str(&format!(
        "- The initial index ({} documents, 2 in-process engines) ran at {}: that is the search server's pace on this \
           machine, so indexing {label} documents cannot take less than ~{} here.\n",
        stats::int(indexed),
        stats::rate(server_rate),
        stats::secs(n as f64 / server_rate)
    ));
    if let Some((secs, items, tm_cpu, per_doc)) = own {
        s.push_str(&format!(
            "- The same rename drained by 2 in-process engines into the discarding endpoint (tidemark's own cost: \
               fan-out, reads, encoding, HTTP, acknowledgements): {} for {} ops ({} of tidemark CPU); one request \
               per student into the same endpoint: {}.\n",
            stats::secs(secs),
            stats::int(items),
            stats::dur(tm_cpu),
            stats::secs(per_doc)
        ));
    }
    s.push_str(&format!(
        "- The server alone: the same {label} documents, read and encoded before the clock starts, sent as the workers \
           send them (`_bulk` requests of 1,000, 2 in flight) as updates of the live documents: {}. So through osmem \
           the batched/per-document ratio is capped by the server, at {} here (the per-document run, {}, ÷ that), \
           whatever the client does; the median rename spent {} on top of the server's own time. Elasticsearch and \
           OpenSearch pay more per request (a translog `fsync` per write request by default), which widens the gap.\n",
        stats::secs(server_alone),
        stats::ratio(ceiling),
        stats::secs(base),
        stats::secs((median_all - server_alone).max(0.0))
    ));
    if extrapolated {
        s.push_str(&format!(
            "- The baseline ran on the first {} students only and is extrapolated linearly to {label} (it is strictly sequential).\n",
            stats::int(sample as u64)
        ));
    }
    s.push('\n');
    let raw = json!({
        "students_seeded": env.students, "renamed_university_students": n, "indexed": indexed,
        "initial_index_s": initial, "server_docs_per_s": server_rate, "warmup_s": warmup,
        "update_s": update, "milestones": tries.iter().map(|t| t.1.clone()).collect::<Vec<_>>(), "median_all_s": median_all, "cpu_tidemark_and_server_s": proc_cpu.as_secs_f64(), "cpu_postgres_s": pg_cpu.as_secs_f64(),
        "baseline_sample": sample, "baseline_measured_s": base_measured, "baseline_s": base,
        "server_alone_s": server_alone, "discard_s": own.map(|o| o.0), "discard_ops": own.map(|o| o.1), "discard_per_doc_s": own.map(|o| o.3),
    });
    Ok((raw, update))
}

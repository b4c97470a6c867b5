//! 1. Fan-out: rename a university and time from the renaming commit until every one of its
//!    students is acknowledged (every `_bulk` answered, every mark cleared) and until it is
//!    searchable under the new name (polled), with a scheduler and two worker processes
//!    running against the OpenSearch node. Baseline in the same run: the tutorial's way, one
//!    request per student (read the student, index its document), then the same poll.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::{
    cpu::{self, PgCpu, ProcCpu},
    discard::Discard,
    env::{BenchEnv, Services},
    reindex::Kept,
    report::{Outcome, Row},
    stats, FanoutCase, Plan,
};
use crate::progress;

const BENCH: &str = "1. Fan-out";

/// A timeline event: seconds since the change, what happened, and where (process log).
type Event = (f64, String, String);

/// When the renamed documents were acknowledged and became searchable, seconds after the
/// rename was sent.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Milestones {
    /// Every mark gone (the university's and its students'): every `_bulk` answered and
    /// acknowledged. For the per-document baseline: the last request answered.
    pub acked: f64,
    pub first: f64,
    pub half: f64,
    pub all: f64,
    pub polls: u64,
}

/// Polls the index until `want` documents match `query`; times are from `t0`. With
/// `marks`, each poll also checks tidemark's marks (university and students, one
/// statement) until none is left: the time everything was acknowledged.
pub async fn wait_searchable(
    env: &BenchEnv,
    query: serde_json::Value,
    want: u64,
    every: Duration,
    limit: Duration,
    t0: Instant,
    marks: bool,
) -> Result<Milestones> {
    let mut m = Milestones { acked: f64::NAN, first: f64::NAN, half: f64::NAN, all: f64::NAN, polls: 0 };
    loop {
        if marks && m.acked.is_nan() && env.marks_left().await? == (0, 0) {
            m.acked = t0.elapsed().as_secs_f64();
        }
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
            if marks && m.acked.is_nan() {
                // Searchable before the last acknowledgement landed (the `_bulk` answered,
                // the marks not yet cleared): wait for it.
                while env.marks_left().await? != (0, 0) {
                    if t0.elapsed() > limit {
                        bail!("marks left {limit:?} after the change: {:?}", env.marks_left().await?);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                m.acked = t0.elapsed().as_secs_f64();
            }
            return Ok(m);
        }
        if t0.elapsed() > limit {
            bail!("only {n} of {want} documents searchable after {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Seconds the search server takes to index the renamed university's current documents on its own: read
/// and encoded before the clock starts, then `_bulk` requests of 1,000 ops, 2 in flight.
async fn server_alone(env: &BenchEnv, n: u64) -> Result<f64> {
    use tidemark::pipeline::encode::{body, encode, split};
    let index = env.index_name().await?;
    let ids = renamed_ids(env, n as usize).await?;
    let mut docs = Vec::with_capacity(ids.len());
    let model = tidemark::model::Model::students();
    for chunk in ids.chunks(10_000) {
        docs.extend(tidemark::pipeline::load::load(&env.pool, &model, chunk).await?);
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
async fn renamed_ids(env: &BenchEnv, limit: usize) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT id::text FROM students WHERE university_id = 1 ORDER BY id LIMIT $1")
        .bind(limit as i64)
        .fetch_all(&env.pool)
        .await?)
}

/// `keep`: sizes a later benchmark (the facets) reuses. A case of such a size that indexed
/// every student leaves its database and index in `kept.search`, made consistent again
/// first (the university's name restored and every mark synced).
pub async fn run(plan: &Plan, services: &Services, kept: &mut Kept, keep: &[u64]) -> Result<Outcome> {
    let mut out = Outcome::default();
    let mut raw = Vec::new();
    out.section.push_str(
        "Rename university 1 (MIT in the seed data: ~10 % of the students) with one `UPDATE universities SET name = …`, \
         then poll `_count` with a `term` query on `university.name` until every one of its students matches, checking \
         tidemark's marks at each poll. The clock starts just before the `UPDATE` is sent (so it includes the commit); \
         *acknowledged* is when no mark is left (every `_bulk` answered and acknowledged), *searchable* when the poll that \
         sees all of them returns. Processes: `tidemark scheduler --interval 5s` and two `tidemark worker` \
         (default configuration: batch 2,000, fan-out chunk 10,000, concurrency 2 each), started from the release binary; \
         one warm-up change goes through them first.\n\n\
         Baseline, same database and index, after tidemark's run: the tutorial's way — rename, then for each student \
         read it (one query, as an ORM `save()` does) and send one `PUT /<index>/_doc/<id>` with its document, in order \
         (acknowledged when the last request is answered), then the same poll (searchable).\n\n",
    );
    let mut update_ms = Vec::new();
    for case in &plan.fanout {
        let kind = if case.students >= 1_000_000 { "fanout1m" } else { "fanout16k" };
        let mut env = BenchEnv::new(services, kind, plan.out_dir.join("logs")).await?;
        let mut r = run_case(&mut env, case, &mut out).await;
        if !case.index_only_renamed && keep.contains(&env.students) {
            if let Ok((_, _, original)) = &r {
                match restore(&env, original).await {
                    Ok(()) => {
                        if let Some(old) = kept.search.replace(env) {
                            old.cleanup().await;
                        }
                        let (v, upd, _) = r?;
                        update_ms.push(upd);
                        raw.push(v);
                        continue;
                    }
                    Err(e) => r = Err(e),
                }
            }
        }
        env.cleanup().await;
        let (v, upd, _) = r?;
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

/// Renames university 1 back to `original` and syncs every mark left (the baseline's rename
/// included) with in-process engines, then waits until the index shows it (polled).
async fn restore(env: &BenchEnv, original: &str) -> Result<()> {
    let es = env.services.es_url.clone();
    sqlx::query("UPDATE universities SET name = $1 WHERE id = 1").bind(original).execute(&env.pool).await?;
    env.drain(&es, 2, |_| {}).await?;
    let n = env.scalar("SELECT count(*) FROM students WHERE university_id = 1").await? as u64;
    let t0 = Instant::now();
    wait_searchable(
        env,
        json!({"term": {"university.name": original}}),
        n,
        Duration::from_millis(200),
        Duration::from_secs(300),
        t0,
        false,
    )
    .await?;
    progress!("{}: university 1 renamed back to {original:?} and synced; kept for the facets", env.kind);
    Ok(())
}

/// One case: (raw numbers, seconds of the renaming `UPDATE`, the university's original name).
async fn run_case(env: &mut BenchEnv, case: &FanoutCase, out: &mut Outcome) -> Result<(serde_json::Value, f64, String)> {
    let es = env.services.es_url.clone();
    env.seed(case.students).await?;
    let n = env.scalar("SELECT count(*) FROM students WHERE university_id = 1").await? as u64;
    let label = stats::int(n);
    let original: String = sqlx::query_scalar("SELECT name FROM universities WHERE id = 1").fetch_one(&env.pool).await?;

    // The index: everybody (a first build, as a first run does), or, to keep the run short,
    // only the renamed university's students (marked and synced).
    let (indexed, initial_what, initial) = if case.index_only_renamed {
        env.clear_marks().await?;
        env.create_index_unmarked(&es).await?;
        env.sql("SELECT tidemark.mark_now(ARRAY(SELECT id::text FROM students WHERE university_id = 1))").await?;
        progress!("{}: indexing the {label} students of the university to be renamed", env.kind);
        let t = Instant::now();
        env.drain(&es, 2, |_| {}).await?;
        let secs = t.elapsed().as_secs_f64();
        let in_index = env.count(json!({"match_all": {}})).await?;
        if in_index != n {
            bail!("the index holds {in_index} documents, expected {n}");
        }
        (n, format!("only the {label} students of the university to be renamed are indexed, to keep the run short"), secs)
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
    wait_searchable(
        env,
        json!({"term": {"last_name.raw": "Warmup"}}),
        1,
        Duration::from_millis(20),
        Duration::from_secs(60),
        warm_t,
        false,
    )
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
        let m = wait_searchable(env, json!({"term": {"university.name": name}}), n, every, limit, t0, true).await?;
        progress!(
            "{}: all {label} acknowledged after {:.2}s, searchable after {:.2}s (UPDATE {:.1} ms, load {load})",
            env.kind,
            m.acked,
            m.all,
            update * 1e3
        );
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
    let acks: Vec<f64> = tries.iter().map(|t| t.1.acked).collect();
    let median_ack = stats::median(&acks);
    let best_ack = acks.iter().copied().fold(f64::INFINITY, f64::min);
    let update = stats::median(&tries.iter().map(|t| t.0).collect::<Vec<_>>());
    let m = tries[tries.len() / 2].1.clone();

    // The server alone: the same documents, pre-encoded by tidemark's encoder, sent as the
    // workers send them (requests of 1,000, 2 in flight), as updates of the live documents.
    let server_alone = server_alone(env, n).await?;
    progress!("{}: the search server alone took {:.3}s for the {label} documents", env.kind, server_alone);

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
        env.per_document(&discard.url, &index, &ids).await?;
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
    env.per_document(&env.services.es_url, &index, &ids).await?;
    let base_ack_measured = t0.elapsed().as_secs_f64();
    let bm = wait_searchable(
        env,
        json!({"term": {"university.name": name3}}),
        sample as u64,
        Duration::from_millis(20),
        Duration::from_secs(900),
        t0,
        false,
    )
    .await?;
    let base_measured = bm.all;
    let base = base_measured * n as f64 / sample as f64;
    let base_ack = base_ack_measured * n as f64 / sample as f64;
    let extrapolated = sample < n as usize;
    progress!(
        "{}: baseline {:.2}s for {} students{}",
        env.kind,
        base_measured,
        stats::int(sample as u64),
        if extrapolated { format!(" → {:.1}s extrapolated to {label}", base) } else { String::new() }
    );

    // Rows. The time target is on the acknowledgement; the searchable time must follow
    // within a refresh (`refresh_interval`, 1 s by default) and the poll that sees it.
    let (target, limit_s) = if n > 10_000 {
        ("< 15 s to acknowledged, searchable at the next refresh", 15.0)
    } else {
        ("< 1 s to acknowledged, searchable at the next refresh", 1.0)
    };
    let refresh_s = 1.0;
    let after_refresh = refresh_s + 2.0 * every.as_secs_f64();
    let base_text = if extrapolated {
        format!(
            "{} acknowledged, {} searchable (extrapolated from {} requests: {} / {})",
            stats::secs(base_ack),
            stats::secs(base),
            stats::int(sample as u64),
            stats::secs(base_ack_measured),
            stats::secs(base_measured)
        )
    } else {
        format!("{} acknowledged, {} searchable", stats::secs(base_ack), stats::secs(base))
    };
    let of = if tries.len() > 1 {
        format!(" (medians of {}; best {} / {})", tries.len(), stats::secs(best_ack), stats::secs(best_all))
    } else {
        String::new()
    };
    out.rows.push(
        Row::new(
            BENCH,
            format!("rename a university of {label} students → all acknowledged / all searchable (scheduler + 2 workers, OpenSearch)"),
        )
        .figure(format!("{} / {}{of}", stats::secs(median_ack), stats::secs(median_all)))
        .baseline(format!("{base_text}, one request per student"))
        .ratio(format!("{} / {}", stats::ratio(base_ack / median_ack), stats::ratio(base / median_all)))
        .target(target, Some(median_ack < limit_s && median_all - median_ack <= after_refresh)),
    );
    // However fast tidemark is, the server needs `server_alone` to index these documents:
    // the ratio through it cannot exceed this.
    let ceiling = base_ack / server_alone;
    out.rows.push(
        Row::new(BENCH, format!("batched sync vs one request per document, through OpenSearch, acknowledged (fan-out of {label})"))
            .figure(stats::ratio(base_ack / median_ack))
            .baseline(format!(
                "ceiling here: {} (the per-document run ÷ {}, the server's own time for these {label} documents in bulk, no tidemark)",
                stats::ratio(ceiling),
                stats::secs(server_alone)
            ))
            .target("≥ 20×", Some(base_ack / median_ack >= 20.0)),
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
    s.push_str("| rename | `UPDATE` returned (committed) | **all acknowledged** | first renamed document searchable | half | **all searchable** | load average (1 min) |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for (i, (upd, m, _, load)) in tries.iter().enumerate() {
        s.push_str(&format!(
            "| {} | {} | **{}** | {} | {} | **{}** | {load} |\n",
            i + 1,
            stats::secs(*upd),
            stats::secs(m.acked),
            stats::secs(m.first),
            stats::secs(m.half),
            stats::secs(m.all)
        ));
    }
    s.push_str(&format!(
        "| baseline, one request per student ({} students) | | {} | | | {} | |\n\n",
        stats::int(sample as u64),
        stats::secs(base_ack_measured),
        stats::secs(base_measured)
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
        "- *Acknowledged*: no mark left (the university's mark is removed with its last chunk of student marks, and a \
           student's mark only once its `_bulk` item answered), checked at each poll. *Searchable*: the poll's `_count` \
           (no refresh requested) sees them all; OpenSearch refreshes every second, so this follows the acknowledgement by \
           up to a refresh interval. The target is judged on the acknowledgement, with the searchable time within {} of it \
           (the refresh interval and two polls).\n\
         - Poll every {} ms ({} polls in the median rename). Warm-up change (one student) searchable after {}.\n",
        stats::secs(after_refresh),
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
           send them (`_bulk` requests of 1,000, 2 in flight) as updates of the live documents: {}. So through this \
           server the acknowledged batched/per-document ratio is capped at {} here (the per-document run, {} to \
           acknowledged, ÷ that), whatever the client does; the median rename took {} to acknowledged, {} on top of the \
           server's own time. OpenSearch pays per write request (a translog `fsync` per request by default), which is \
           what the per-document baseline pays {} times.\n",
        stats::secs(server_alone),
        stats::ratio(ceiling),
        stats::secs(base_ack),
        stats::secs(median_ack),
        stats::secs((median_ack - server_alone).max(0.0)),
        stats::int(n)
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
        "update_s": update, "milestones": tries.iter().map(|t| t.1.clone()).collect::<Vec<_>>(), "median_all_s": median_all, "median_acked_s": median_ack, "cpu_tidemark_and_server_s": proc_cpu.as_secs_f64(), "cpu_postgres_s": pg_cpu.as_secs_f64(),
        "baseline_sample": sample, "baseline_measured_s": base_measured, "baseline_s": base, "baseline_acked_measured_s": base_ack_measured, "baseline_acked_s": base_ack,
        "server_alone_s": server_alone, "discard_s": own.map(|o| o.0), "discard_ops": own.map(|o| o.1), "discard_per_doc_s": own.map(|o| o.3),
    });
    Ok((raw, update, original))
}

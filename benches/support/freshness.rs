//! 4. Freshness under load: writers commit single-row UPDATEs at a steady rate, each
//!    stamping a student's last name with its sequence number, and the time each stamp
//!    became searchable is recorded. Scheduler and two workers run.
//!
//! Twice: into the OpenSearch node, observed by a poller searching the index for stamps
//! (searchable) and another polling what tidemark still has outstanding — marks and the
//! writers' change log, `tidemark.outstanding` — (acknowledged: the `_bulk` answered and the
//! mark cleared); and into the discarding endpoint, which records when each stamp
//! arrives in a `_bulk` body — the same deployment and load with the search server's
//! indexing taken out, so tidemark's own latency shows.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::json;

use super::{
    cpu::{self, PgCpu, ProcCpu},
    discard::Discard,
    env::{BenchEnv, Services},
    report::{Outcome, Row},
    stats::{self, Dist},
    Plan,
};
use crate::progress;

const BENCH: &str = "4. Freshness";
const WRITERS: u64 = 4;

fn stamp(k: u64) -> String {
    format!("F{k:09}")
}

pub async fn run(plan: &Plan, services: &Services) -> Result<Outcome> {
    let mut env = BenchEnv::new(services, "freshness", plan.out_dir.join("logs")).await?;
    let r = inner(plan, &mut env).await;
    env.cleanup().await;
    r
}

/// How the time a stamp becomes visible is observed.
enum Observe<'a> {
    /// Search the index for stamps.
    Poll,
    /// The discarding endpoint's record of stamps received.
    Arrivals(&'a Discard),
}

#[derive(Debug, Clone, serde::Serialize)]
struct Load {
    what: &'static str,
    writes: u64,
    writers_secs: f64,
    achieved: f64,
    latency: Dist,
    /// Commit → acknowledged (mark cleared), when observed (the search server run).
    acked: Option<Dist>,
    unacked: u64,
    write_latency: Dist,
    unseen: u64,
    early: u64,
    polls: u64,
    poll_cycle_ms: f64,
    max_backlog: i64,
    backlog: Vec<i64>,
    /// p99 per 5-second window (by commit time), ms.
    windows_p99_ms: Vec<Option<f64>>,
    cpu_workers: f64,
    cpu_server: f64,
    cpu_postgres: f64,
}

async fn inner(plan: &Plan, env: &mut BenchEnv) -> Result<Outcome> {
    env.seed(plan.fresh_students).await?;
    let n = env.students;
    let (lo_id, hi_id): (i64, i64) = sqlx::query_as("SELECT min(id), max(id) FROM students").fetch_one(&env.pool).await?;
    if lo_id != 1 || hi_id as u64 != n {
        bail!("expected student ids 1..={n}, found {lo_id}..={hi_id}");
    }
    env.first_index(2).await?;

    // A: into the search server, observed by searching (and the marks).
    let engine = run_load(plan, env, Observe::Poll, 0).await?;

    // B: the same into the discarding endpoint.
    let index = env.index_name().await?;
    let discard = Discard::start(&[(env.alias.clone(), index)]);
    env.proc_es_url = Some(discard.url.clone());
    let offset = plan.fresh_rate as u64 * plan.fresh_secs;
    let own = run_load(plan, env, Observe::Arrivals(&discard), offset).await;
    env.proc_es_url = None;
    let own = own?;

    let mut out = Outcome::default();
    let d = &engine.latency;
    let a = engine.acked.clone().unwrap_or_default();
    out.rows.push(
        Row::new(
            BENCH,
            format!(
                "commit → acknowledged at {} writes/s for {} s (scheduler + 2 workers, OpenSearch; `_bulk` answered, mark cleared)",
                plan.fresh_rate, plan.fresh_secs
            ),
        )
        .figure(format!("p99 {} (p50 {}, p95 {}, max {})", stats::secs(a.p99), stats::secs(a.p50), stats::secs(a.p95), stats::secs(a.max)))
        .target("— (reported apart from searchable)", None),
    );
    out.rows.push(
        Row::new(BENCH, "commit → searchable, same load (OpenSearch, `refresh_interval` 1 s; polled by search, no refresh forced)")
            .figure(format!(
                "p99 {} (p50 {}, p95 {}, max {})",
                stats::secs(d.p99),
                stats::secs(d.p50),
                stats::secs(d.p95),
                stats::secs(d.max)
            ))
            .target(
                if plan.fresh_rate >= 500 { "p99 ≤ 2 s at 500 writes/s" } else { "p99 ≤ 2 s at 500 writes/s (quick: lower rate)" },
                Some(d.p99 <= 2.0 && engine.unseen == 0 && (plan.fresh_rate < 500 || engine.achieved >= 0.95 * plan.fresh_rate as f64)),
            ),
    );
    let o = &own.latency;
    out.rows.push(
        Row::new(
            BENCH,
            format!("same load, tidemark's own part: commit → `_bulk` received by the discarding endpoint ({} writes/s)", plan.fresh_rate),
        )
        .figure(format!("p99 {} (p50 {}, p95 {}, max {})", stats::secs(o.p99), stats::secs(o.p50), stats::secs(o.p95), stats::secs(o.max)))
        .target("p99 ≤ 2 s (tidemark's share)", Some(o.p99 <= 2.0 && own.unseen == 0)),
    );
    let mut s = format!(
        "{} students seeded and indexed; `tidemark scheduler --interval 5s` and two `tidemark worker` (default \
         configuration). {WRITERS} writer connections commit `UPDATE students SET last_name = 'F<k>' WHERE id = <k mod N + 1>` \
         for k = 0, 1, 2, …, write k due at k / {} s after the start (each its own transaction; the capture appends one \
         row to `tidemark.changes` and sends no notification: the workers and the scheduler notice the change by \
         polling the mark sequence every 50 ms, `sync.wakeup_interval`). The commit time is taken when the `UPDATE` returns.\n\n\
         - **A, OpenSearch**: a poller searches the alias (`range` on `last_name.raw` from the lowest stamp not yet seen, \
           oldest first, every ~25 ms plus the query's own time; no refresh is requested, so a stamp shows after the \
           node's next periodic refresh, every 1 s) and records when each stamp — or a later stamp of the same student — \
           is first returned: *searchable*. Another poller reads `tidemark.outstanding` (the marks and the writers' change \
           log not yet absorbed into marks) every ~25 ms: a write whose commit preceded the read and whose student is \
           no longer in it is *acknowledged* (its log row absorbed, its `_bulk` item answered and the mark cleared).\n\
         - **B, tidemark's own part**: the same processes and load, with `ELASTICSEARCH_URL` pointing at the \
           discarding endpoint, which records when each stamp arrives in a `_bulk` body (no indexing, no polling).\n\n\
         | | A: OpenSearch, searchable | B: discarding endpoint, received |\n| --- | --- | --- |\n",
        stats::int(n),
        plan.fresh_rate,
    );
    let row = |label: &str, a: String, b: String| format!("| {label} | {a} | {b} |\n");
    let fmt_d = |d: &Dist| {
        format!(
            "**p50 {}, p95 {}, p99 {}, max {}** (mean {})",
            stats::secs(d.p50),
            stats::secs(d.p95),
            stats::secs(d.p99),
            stats::secs(d.max),
            stats::secs(d.mean)
        )
    };
    let writes = |l: &Load| format!("{} in {:.1} s = {:.0}/s", stats::int(l.writes), l.writers_secs, l.achieved);
    let wl = |l: &Load| {
        format!(
            "p50 {}, p99 {}, max {}",
            stats::secs(l.write_latency.p50),
            stats::secs(l.write_latency.p99),
            stats::secs(l.write_latency.max)
        )
    };
    s.push_str(&row("writes", writes(&engine), writes(&own)));
    s.push_str(&row("write latency (UPDATE + commit)", wl(&engine), wl(&own)));
    s.push_str(&row(
        "commit → acknowledged (mark cleared after the `_bulk` answered)",
        engine.acked.as_ref().map_or("—".into(), &fmt_d),
        "—".into(),
    ));
    s.push_str(&row("**commit → visible** (A: searchable; B: received)", fmt_d(&engine.latency), fmt_d(&own.latency)));
    s.push_str(&row(
        "not visible 60 s after the load stopped",
        format!("{} ({} not acknowledged)", engine.unseen, engine.unacked),
        own.unseen.to_string(),
    ));
    s.push_str(&row("seen before the writer had its commit acknowledged (counted as 0)", engine.early.to_string(), own.early.to_string()));
    s.push_str(&row("polls", format!("{} ({:.0} ms per cycle)", engine.polls, engine.poll_cycle_ms), "—".into()));
    s.push_str(&row(
        "students outstanding (marks or log rows, sampled each second): max",
        engine.max_backlog.to_string(),
        own.max_backlog.to_string(),
    ));
    s.push_str(&row(
        "CPU: workers + scheduler / search server / PostgreSQL",
        format!("{:.1} s / {:.1} s / {:.1} s", engine.cpu_workers, engine.cpu_server, engine.cpu_postgres),
        format!("{:.1} s / {:.1} s (endpoint) / {:.1} s", own.cpu_workers, own.cpu_server, own.cpu_postgres),
    ));
    let win = |l: &Load| l.windows_p99_ms.iter().map(|w| w.map_or("–".into(), |v| format!("{v:.0}"))).collect::<Vec<_>>().join(", ");
    s.push_str(&row("p99 per 5-second window (ms)", win(&engine), win(&own)));
    s.push_str(&format!(
        "\nStudents outstanding (a mark or a log row), sampled each second — A: {}; B: {}.\n",
        engine.backlog.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(" "),
        own.backlog.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(" ")
    ));
    out.section = s;
    out.raw = json!({"students": n, "search_server": engine, "discard": own});
    Ok(out)
}

/// One load: writers at the planned rate, the deployment started (and stopped) around it,
/// stamps `offset + k`.
async fn run_load(plan: &Plan, env: &mut BenchEnv, observe: Observe<'_>, offset: u64) -> Result<Load> {
    let n = env.students;
    let worker_pids = env.start_deployment().await?;
    // Warm-up: one change through the deployment.
    match &observe {
        Observe::Poll => {
            env.sql("UPDATE students SET last_name = 'Warmup' WHERE id = 1").await?;
            let t = Instant::now();
            while env.count(json!({"term": {"last_name.raw": "Warmup"}})).await? != 1 {
                if t.elapsed() > Duration::from_secs(60) {
                    bail!("warm-up change not searchable within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Observe::Arrivals(d) => {
            d.record_stamps();
            env.sql("UPDATE students SET last_name = 'Warmup2' WHERE id = 1").await?;
            let t = Instant::now();
            while env.marks_left().await?.0 != 0 {
                if t.elapsed() > Duration::from_secs(60) {
                    bail!("warm-up change not synced within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            d.take_stamps();
            d.record_stamps();
        }
    }

    let rate = plan.fresh_rate as f64;
    let total = plan.fresh_rate as u64 * plan.fresh_secs;
    let commit_at: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(vec![f64::NAN; total as usize]));
    let write_lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let server_pids: Vec<u32> = match &observe {
        Observe::Poll => cpu::search_server_pid().into_iter().collect(),
        Observe::Arrivals(_) => Vec::new(),
    };
    let workers_cpu = ProcCpu::start(&worker_pids);
    let server_cpu = ProcCpu::start(&server_pids);
    let endpoint_cpu0 = match &observe {
        Observe::Arrivals(d) => d.cpu(),
        Observe::Poll => Duration::ZERO,
    };
    let pg = PgCpu::start(&env.pool, &env.db_name).await;
    let what = match &observe {
        Observe::Poll => "the OpenSearch node",
        Observe::Arrivals(_) => "discarding endpoint",
    };
    progress!("{}: {} writes/s for {} s into {what}", env.kind, plan.fresh_rate, plan.fresh_secs);
    let start = Instant::now();

    // Writers: write k is due at start + k / rate; each is its own transaction.
    let writers = (0..WRITERS).map(|_| {
        let (pool, next, commit_at, write_lat) = (env.pool.clone(), next.clone(), commit_at.clone(), write_lat.clone());
        async move {
            let mut conn = pool.acquire().await?;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep_until((start + Duration::from_secs_f64(k as f64 / rate)).into()).await;
                let id = (k % n) as i64 + 1;
                let t = Instant::now();
                sqlx::query("UPDATE students SET last_name = $1 WHERE id = $2")
                    .bind(stamp(offset + k))
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                let committed = start.elapsed().as_secs_f64();
                commit_at.lock().unwrap()[k as usize] = committed;
                write_lat.lock().unwrap().push(t.elapsed().as_secs_f64());
            }
        }
    });
    let writers = async {
        let r = futures::future::try_join_all(writers).await;
        done.store(true, Ordering::Relaxed);
        r.map(|_| start.elapsed().as_secs_f64())
    };

    // Backlog sampler: marks waiting, once a second.
    let backlog = async {
        let mut samples = Vec::new();
        while !done.load(Ordering::Relaxed) {
            // Students with a change outstanding: a mark, or a log row not yet absorbed.
            let b: i64 = sqlx::query_scalar("SELECT count(DISTINCT key) FROM tidemark.outstanding").fetch_one(&env.pool).await.unwrap_or(0);
            samples.push(b);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        samples
    };

    // Marks a stamp (and every earlier stamp of the same student) seen at `t`.
    fn see(seen: &mut [f64], lo: u64, n: u64, s: u64, t: f64) {
        let mut k = s as i64;
        while k >= lo as i64 && seen[k as usize].is_nan() {
            seen[k as usize] = t;
            k -= n as i64;
        }
    }

    // Observer.
    let observer = async {
        let mut seen = vec![f64::NAN; total as usize];
        let mut polls = 0u64;
        match &observe {
            Observe::Poll => {
                let mut lo = 0u64;
                let mut done_at: Option<Instant> = None;
                let url = format!("{}/{}/_search", env.services.es_url, env.alias);
                while lo < total {
                    if done.load(Ordering::Relaxed) {
                        let d = *done_at.get_or_insert_with(Instant::now);
                        if d.elapsed() > Duration::from_secs(60) {
                            break;
                        }
                    }
                    let q = json!({
                        "size": 10000, "_source": ["last_name"], "sort": [{"last_name.raw": "asc"}],
                        "query": {"range": {"last_name.raw": {"gte": stamp(offset + lo), "lte": "F999999999"}}}
                    });
                    let resp: serde_json::Value = env.http.post(&url).json(&q).send().await?.json().await?;
                    let t = start.elapsed().as_secs_f64();
                    polls += 1;
                    for hit in resp["hits"]["hits"].as_array().cloned().unwrap_or_default() {
                        let Some(id) = hit["_id"].as_str().and_then(|s| s.parse::<u64>().ok()) else { continue };
                        let Some(s) =
                            hit["_source"]["last_name"].as_str().and_then(|s| s.strip_prefix('F')).and_then(|s| s.parse::<u64>().ok())
                        else {
                            continue;
                        };
                        let Some(s) = s.checked_sub(offset) else { continue };
                        if s >= total || (s % n) + 1 != id {
                            continue;
                        }
                        see(&mut seen, lo, n, s, t);
                    }
                    while lo < total && !seen[lo as usize].is_nan() {
                        lo += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
            Observe::Arrivals(d) => {
                // Wait for the load to end and the backlog to drain (bounded), then read
                // the endpoint's record.
                while !done.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let t = Instant::now();
                while env.marks_left().await?.0 != 0 && t.elapsed() < Duration::from_secs(60) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut arrivals = d.take_stamps();
                arrivals.sort_by_key(|a| a.1);
                for (s, at) in arrivals {
                    let Some(s) = s.checked_sub(offset) else { continue };
                    if s >= total {
                        continue;
                    }
                    let t = at.checked_duration_since(start).map_or(0.0, |d| d.as_secs_f64());
                    see(&mut seen, 0, n, s, t);
                }
            }
        }
        Ok::<_, anyhow::Error>((seen, polls))
    };

    // Acknowledgements (search server run only): a write whose commit preceded a read of
    // what is outstanding, and whose student is not in it (no mark, no log row: one
    // snapshot sees both, and an absorb moves a row from one to the other in one
    // transaction), has been acknowledged by then.
    let acker = async {
        let mut acked = vec![f64::NAN; total as usize];
        if !matches!(observe, Observe::Poll) {
            return Ok::<_, anyhow::Error>(acked);
        }
        let mut lo = 0u64;
        let mut done_at: Option<Instant> = None;
        while lo < total {
            if done.load(Ordering::Relaxed) {
                let d = *done_at.get_or_insert_with(Instant::now);
                if d.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            let before = start.elapsed().as_secs_f64();
            let marked: HashSet<i64> = sqlx::query_scalar::<_, i64>("SELECT key::bigint FROM tidemark.outstanding")
                .fetch_all(&env.pool)
                .await?
                .into_iter()
                .collect();
            let t = start.elapsed().as_secs_f64();
            let upto = next.load(Ordering::Relaxed).min(total);
            {
                let commits = commit_at.lock().unwrap();
                for k in lo..upto {
                    let k = k as usize;
                    if acked[k].is_nan() && commits[k] < before && !marked.contains(&((k as u64 % n) as i64 + 1)) {
                        acked[k] = t;
                    }
                }
            }
            while lo < total && !acked[lo as usize].is_nan() {
                lo += 1;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(acked)
    };

    let (writers_secs, backlog_samples, observed, acked) = tokio::join!(writers, backlog, observer, acker);
    let writers_secs = writers_secs?;
    let (seen, polls) = observed?;
    let acked = acked?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_workers = workers_cpu.spent().as_secs_f64();
    let cpu_server = match &observe {
        Observe::Poll => server_cpu.spent().as_secs_f64(),
        Observe::Arrivals(d) => (d.cpu() - endpoint_cpu0).as_secs_f64(),
    };
    let cpu_postgres = pg.spent(&env.pool).await.as_secs_f64();
    env.stop_processes().await;

    let commit_at = commit_at.lock().unwrap().clone();
    let mut lat = Vec::new();
    let (mut unseen, mut early) = (0, 0);
    let secs = plan.fresh_secs as usize;
    let mut by_sec: Vec<Vec<f64>> = vec![Vec::new(); secs + 1];
    for (c, s) in commit_at.iter().zip(&seen) {
        if c.is_nan() {
            continue;
        }
        if s.is_nan() {
            unseen += 1;
            continue;
        }
        if s < c {
            early += 1;
        }
        lat.push((s - c).max(0.0));
        by_sec[(*c as usize).min(secs)].push((s - c).max(0.0));
    }
    let latency = stats::dist(&lat);
    let (acked, unacked) = if matches!(observe, Observe::Poll) {
        let mut a = Vec::new();
        let mut missing = 0;
        for (c, k) in commit_at.iter().zip(&acked) {
            if c.is_nan() {
                continue;
            }
            if k.is_nan() {
                missing += 1;
            } else {
                a.push((k - c).max(0.0));
            }
        }
        (Some(stats::dist(&a)), missing)
    } else {
        (None, 0)
    };
    progress!(
        "{}: into {what}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {} unseen",
        env.kind,
        latency.p50 * 1e3,
        latency.p99 * 1e3,
        latency.max * 1e3,
        unseen
    );
    let windows_p99_ms = by_sec
        .chunks(5)
        .map(|w| {
            let all: Vec<f64> = w.iter().flatten().copied().collect();
            (!all.is_empty()).then(|| stats::dist(&all).p99 * 1e3)
        })
        .collect();
    let write_latency = stats::dist(&write_lat.lock().unwrap().clone());
    Ok(Load {
        what,
        writes: total,
        writers_secs,
        achieved: total as f64 / writers_secs,
        latency,
        acked,
        unacked,
        write_latency,
        unseen,
        early,
        polls,
        poll_cycle_ms: if polls > 0 { elapsed * 1e3 / polls as f64 } else { 0.0 },
        max_backlog: backlog_samples.iter().copied().max().unwrap_or(0),
        backlog: backlog_samples,
        windows_p99_ms,
        cpu_workers,
        cpu_server,
        cpu_postgres,
    })
}

//! 4. Freshness under load: writers commit single-row UPDATEs at a steady rate, each
//! stamping a student's last name with its sequence number; a poller searches the index for
//! stamps and records when each first became searchable. Scheduler and two workers run.

use std::{
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
    env::{BenchEnv, Services},
    report::{Outcome, Row},
    stats, Plan,
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

async fn inner(plan: &Plan, env: &mut BenchEnv) -> Result<Outcome> {
    env.seed(plan.fresh_students).await?;
    let n = env.students;
    let (lo_id, hi_id): (i64, i64) = sqlx::query_as("SELECT min(id), max(id) FROM students").fetch_one(&env.pool).await?;
    if lo_id != 1 || hi_id as u64 != n {
        bail!("expected student ids 1..={n}, found {lo_id}..={hi_id}");
    }
    env.first_index(2).await?;
    let mut pids = env.start_deployment().await?;
    // Warm-up: one change through the deployment.
    env.sql("UPDATE students SET last_name = 'Warmup' WHERE id = 1").await?;
    let t = Instant::now();
    while env.count(json!({"term": {"last_name.raw": "Warmup"}})).await? != 1 {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("warm-up change not searchable within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let rate = plan.fresh_rate as f64;
    let total = plan.fresh_rate as u64 * plan.fresh_secs;
    let commit_at: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(vec![f64::NAN; total as usize]));
    let write_lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    if let Some(p) = cpu::search_server_pid() {
        pids.push(p);
    }
    let procs = ProcCpu::start(&pids);
    let pg = PgCpu::start(&env.pool, &env.db_name).await;
    progress!("{}: {} writes/s for {} s", env.kind, plan.fresh_rate, plan.fresh_secs);
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
                sqlx::query("UPDATE students SET last_name = $1 WHERE id = $2").bind(stamp(k)).bind(id).execute(&mut *conn).await?;
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
        let mut max = 0i64;
        let mut samples = Vec::new();
        while !done.load(Ordering::Relaxed) {
            let b: i64 = sqlx::query_scalar("SELECT count(*) FROM tidemark.dirty_students").fetch_one(&env.pool).await.unwrap_or(0);
            max = max.max(b);
            samples.push(b);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        (max, samples)
    };

    // Poller: every stamp at or above the lowest unseen one, oldest first.
    let poller = async {
        let mut seen = vec![f64::NAN; total as usize];
        let mut lo = 0u64;
        let mut polls = 0u64;
        let mut done_at: Option<Instant> = None;
        let url = format!("{}/{}/_search", env.services.es_url, env.alias);
        loop {
            if lo >= total {
                break;
            }
            if done.load(Ordering::Relaxed) {
                let d = *done_at.get_or_insert_with(Instant::now);
                if d.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            let q = json!({
                "size": 10000, "_source": ["last_name"], "sort": [{"last_name.raw": "asc"}],
                "query": {"range": {"last_name.raw": {"gte": stamp(lo), "lte": "F999999999"}}}
            });
            let resp: serde_json::Value = env.http.post(&url).json(&q).send().await?.json().await?;
            let t = start.elapsed().as_secs_f64();
            polls += 1;
            for hit in resp["hits"]["hits"].as_array().cloned().unwrap_or_default() {
                let Some(id) = hit["_id"].as_str().and_then(|s| s.parse::<u64>().ok()) else { continue };
                let Some(s) = hit["_source"]["last_name"].as_str().and_then(|s| s.strip_prefix('F')).and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                if s >= total || (s % n) + 1 != id {
                    continue;
                }
                // This write, and every earlier write to the same student, is now reflected.
                let mut k = s as i64;
                while k >= lo as i64 && seen[k as usize].is_nan() {
                    seen[k as usize] = t;
                    k -= n as i64;
                }
            }
            while lo < total && !seen[lo as usize].is_nan() {
                lo += 1;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok::<_, anyhow::Error>((seen, polls))
    };

    let (writers_secs, (max_backlog, backlog_samples), poll) = tokio::join!(writers, backlog, poller);
    let writers_secs = writers_secs?;
    let (seen, polls) = poll?;
    let proc_cpu = procs.spent();
    let pg_cpu = pg.spent(&env.pool).await;
    let elapsed = start.elapsed().as_secs_f64();

    let commit_at = commit_at.lock().unwrap().clone();
    let mut lat = Vec::new();
    let mut unseen = 0;
    let mut early = 0;
    for (c, s) in commit_at.iter().zip(&seen) {
        if c.is_nan() {
            continue;
        }
        if s.is_nan() {
            unseen += 1;
        } else {
            if s < c {
                early += 1;
            }
            lat.push((s - c).max(0.0));
        }
    }
    let d = stats::dist(&lat);
    let wl = stats::dist(&write_lat.lock().unwrap());
    let achieved = total as f64 / writers_secs;
    progress!("{}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {} unseen", env.kind, d.p50 * 1e3, d.p99 * 1e3, d.max * 1e3, unseen);
    env.stop_processes().await;

    let mut out = Outcome::default();
    out.rows.push(
        Row::new(BENCH, format!("commit → searchable at {} writes/s for {} s (scheduler + 2 workers, osmem)", plan.fresh_rate, plan.fresh_secs))
            .figure(format!("p99 {} (p50 {}, p95 {}, max {})", stats::secs(d.p99), stats::secs(d.p50), stats::secs(d.p95), stats::secs(d.max)))
            .target(
                if plan.fresh_rate >= 500 { "p99 ≤ 2 s at 500 writes/s" } else { "p99 ≤ 2 s at 500 writes/s (quick: lower rate)" },
                Some(d.p99 <= 2.0 && unseen == 0 && (plan.fresh_rate < 500 || achieved >= 0.95 * rate)),
            ),
    );
    out.section = format!(
        "{} students seeded and indexed; `tidemark scheduler --interval 5s` and two `tidemark worker` (default \
         configuration). {WRITERS} writer connections commit `UPDATE students SET last_name = 'F<k>' WHERE id = <k mod N + 1>` \
         for k = 0, 1, 2, …, write k due at k / {} s after the start (each its own transaction, so each sends its \
         notification). The commit time is taken when the `UPDATE` returns. A poller searches the alias every ~25 ms \
         for stamps at or above the lowest one not yet seen (`range` on `last_name.raw`, oldest first) and records when \
         each stamp — or a later stamp of the same student — is first returned.\n\n\
         | | |\n| --- | --- |\n\
         | writes | {} in {:.1} s = {:.0}/s achieved (target rate {}/s) |\n\
         | write latency (UPDATE + commit) | p50 {}, p99 {}, max {} |\n\
         | **commit → searchable** | **p50 {}, p95 {}, p99 {}, max {}** (mean {}) |\n\
         | not searchable 60 s after the load stopped | {} |\n\
         | seen before the writer had its commit acknowledged (counted as 0) | {} |\n\
         | polls | {} in {:.1} s ({:.0} ms per cycle) |\n\
         | marks waiting, sampled each second | max {}, samples {} |\n\
         | CPU during the run | workers + scheduler + search server {}, PostgreSQL backends {} |\n",
        stats::int(n),
        plan.fresh_rate,
        stats::int(total),
        writers_secs,
        achieved,
        plan.fresh_rate,
        stats::secs(wl.p50),
        stats::secs(wl.p99),
        stats::secs(wl.max),
        stats::secs(d.p50),
        stats::secs(d.p95),
        stats::secs(d.p99),
        stats::secs(d.max),
        stats::secs(d.mean),
        unseen,
        early,
        polls,
        elapsed,
        elapsed * 1e3 / polls.max(1) as f64,
        max_backlog,
        backlog_samples.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(" "),
        stats::dur(proc_cpu),
        stats::dur(pg_cpu),
    );
    // Latency over time, by second of the run (when the write committed).
    let secs = plan.fresh_secs as usize;
    let mut by_sec: Vec<Vec<f64>> = vec![Vec::new(); secs + 1];
    for (c, s) in commit_at.iter().zip(&seen) {
        if !c.is_nan() && !s.is_nan() {
            by_sec[(*c as usize).min(secs)].push(s - c);
        }
    }
    out.section.push_str("\nCommit → searchable p99 per 5-second window of the run: ");
    let windows: Vec<String> = by_sec
        .chunks(5)
        .map(|w| {
            let all: Vec<f64> = w.iter().flatten().copied().collect();
            if all.is_empty() { "–".into() } else { format!("{:.0} ms", stats::dist(&all).p99 * 1e3) }
        })
        .collect();
    out.section.push_str(&windows.join(", "));
    out.section.push_str(".\n");
    out.raw = json!({
        "students": n, "rate": plan.fresh_rate, "secs": plan.fresh_secs, "writes": total, "achieved_rate": achieved,
        "latency": d, "write_latency": wl, "unseen": unseen, "early": early, "polls": polls, "max_backlog": max_backlog,
        "cpu_procs_s": proc_cpu.as_secs_f64(), "cpu_postgres_s": pg_cpu.as_secs_f64(),
    });
    Ok(out)
}

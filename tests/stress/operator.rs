//! The operator: the mid-run reindexes, requested through the CLI as an operator would, a
//! rollback after a promotion and another reindex after it, and the insert bursts around
//! every reindex request.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::{
    burst::{BurstReport, InsertBurst, BURST_MAX},
    fleet::Fleet,
    model::Model,
    plain, say,
    support::Comparison,
};

/// An `admin reindex` or `admin rollback`, run in the background as an operator would.
pub struct AdminRequest {
    /// `reindex` or `rollback`.
    what: &'static str,
    pub at: Duration,
    handle: Option<tokio::task::JoinHandle<std::io::Result<std::process::Output>>>,
    pub outcome: Option<String>,
    /// The build a reindex request started.
    pub id: Option<i64>,
    /// It exited 0.
    ok: bool,
}

impl AdminRequest {
    /// `c` is the binary with the services of the test: the search server directly (faults
    /// are for the workers), and the workers' Redis, to wake them.
    fn start(mut c: Command, what: &'static str, args: &[&str], at: Duration) -> AdminRequest {
        c.arg("admin").args(args).env("RUST_LOG", "warn");
        AdminRequest { what, at, handle: Some(tokio::task::spawn_blocking(move || c.output())), outcome: None, id: None, ok: false }
    }

    fn reindex(c: Command, chunk_size: u32, at: Duration) -> AdminRequest {
        AdminRequest::start(c, "reindex", &["reindex", "--chunk-size", &chunk_size.to_string()], at)
    }

    fn rollback(c: Command, at: Duration) -> AdminRequest {
        AdminRequest::start(c, "rollback", &["rollback"], at)
    }

    async fn poll(&mut self) {
        if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            self.finish().await;
        }
    }

    async fn finish(&mut self) {
        let Some(h) = self.handle.take() else { return };
        let out = match tokio::time::timeout(Duration::from_secs(60), h).await {
            Ok(Ok(Ok(out))) => out,
            other => {
                self.outcome = Some(format!("the CLI did not answer: {other:?}"));
                return;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = plain(String::from_utf8_lossy(&out.stderr).trim());
        self.id = stdout.strip_prefix("reindex #").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok());
        self.ok = out.status.success();
        self.outcome = Some(format!("exit {:?}: {stdout} {stderr}", out.status.code()));
        say(&format!("admin {}: {}", self.what, self.outcome.as_deref().unwrap()));
    }
}

/// What the [`Operator`] does next.
enum Step {
    /// Request a full reindex at this time, inside an insert burst.
    Reindex(Instant),
    /// The last reindex request: waiting for its answer, then for its build to end.
    Build,
    /// A build of the operator's was just promoted: at this time, delete a few students
    /// while it is live.
    Delete(Instant),
    /// Students were deleted while the newer index was live: roll back once their deletes
    /// reached it (their marks are gone), or at `until` regardless.
    Rollback { ids: Vec<i64>, since: Instant, until: Instant },
    /// `admin rollback` is running.
    RollingBack,
}

/// How many students the operator deletes from a newly promoted index before rolling it
/// back.
const DELETE_BEFORE_ROLLBACK: i64 = 20;

/// An operator at work: the mid-run reindex; once a build of its own is promoted, a few
/// students deleted while that index is live, then `admin rollback` (the older index must
/// catch up, those deletes included), then another `admin reindex`. A soak repeats it:
/// every odd promotion is rolled back, every even one followed by a reindex two minutes
/// later. Every reindex request is surrounded by an [`InsertBurst`].
pub struct Operator {
    model: Model,
    step: Step,
    rng: StdRng,
    burst_url: String,
    promotions: u32,
    pub reindexes: Vec<AdminRequest>,
    rollbacks: Vec<AdminRequest>,
    burst: Option<InsertBurst>,
    bursts: Vec<BurstReport>,
    /// Students deleted while a newer index was live, just before a rollback from it.
    deleted_before_rollback: Vec<i64>,
    /// When the last reindex whose build has ended was requested (timeline clock).
    last_build_ended: Option<Duration>,
    /// After the chaos: no new cycle once one is complete, and no waiting for a soak's two
    /// minutes.
    pub winding_down: bool,
}

impl Operator {
    pub fn new(model: Model, seed: u64, first_reindex: Instant, burst_url: String) -> Operator {
        Operator {
            model,
            step: Step::Reindex(first_reindex),
            rng: StdRng::seed_from_u64(seed ^ 0x0be7_a7e5),
            burst_url,
            promotions: 0,
            reindexes: Vec::new(),
            rollbacks: Vec::new(),
            burst: None,
            bursts: Vec::new(),
            deleted_before_rollback: Vec::new(),
            last_build_ended: None,
            winding_down: false,
        }
    }

    /// The last rollback is followed by a reindex whose build has ended: what every run must
    /// do, within the chaos or, when that is too short, in the drain.
    fn cycle_complete(&self) -> bool {
        self.rollbacks.last().is_some_and(|rb| self.last_build_ended.is_some_and(|at| at > rb.at))
    }

    fn idle(&self) -> bool {
        self.burst.is_none() && self.reindexes.iter().chain(&self.rollbacks).all(|r| r.handle.is_none())
    }

    /// The drain may end: the cycle is complete and nothing of the operator's is running.
    pub fn is_done(&self) -> bool {
        self.cycle_complete() && self.idle()
    }

    pub fn describe(&self) -> String {
        let step = match &self.step {
            Step::Reindex(_) => "is about to request a reindex",
            Step::Build => "waits for its build to end",
            Step::Delete(_) => "is about to delete documents' rows before a rollback",
            Step::Rollback { .. } => "waits for deletes to be indexed before rolling back",
            Step::RollingBack => "waits for `admin rollback`",
        };
        format!("{step} (cycle complete: {}, {} promotions of its builds)", self.cycle_complete(), self.promotions)
    }

    pub async fn step(&mut self, fleet: &mut Fleet<'_>) {
        for r in self.reindexes.iter_mut().chain(self.rollbacks.iter_mut()) {
            r.poll().await;
        }
        self.tend_burst(fleet).await;
        let now = Instant::now();
        let (idle, cycle_complete) = (self.idle(), self.cycle_complete());
        let env = fleet.env;
        let (pool, alias, table) = (&env.pool, &env.alias, self.model.table());
        match &mut self.step {
            Step::Reindex(at) => {
                if self.winding_down {
                    if cycle_complete {
                        return;
                    }
                    *at = (*at).min(now + Duration::from_secs(3));
                }
                if now < *at || !idle {
                    return;
                }
                if tidemark::catalog::active(pool, alias).await.ok().flatten().is_some() {
                    // A build tidemark started by itself: the request would be refused.
                    *at = now + Duration::from_secs(2);
                    return;
                }
                // The burst first, so that it runs at full speed when the build takes its
                // count and cuts its chunks.
                self.burst = Some(InsertBurst::start(self.model, pool, &self.burst_url, self.rng.gen(), fleet.started.elapsed()).await);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let chunk_size = self.model.chunk_size();
                fleet.event(&format!(
                    "requesting a full reindex: tidemark admin reindex --chunk-size {chunk_size} (inside a burst of single-row inserts on 2 connections)"
                ));
                fleet.counts.reindex_requests += 1;
                self.reindexes.push(AdminRequest::reindex(fleet.command(), chunk_size, fleet.started.elapsed()));
                self.step = Step::Build;
            }
            Step::Build => {
                let Some(r) = self.reindexes.last() else { return };
                if r.handle.is_some() {
                    return;
                }
                let Some(id) = r.id else {
                    // Refused (a build already runs, say): ask again a little later.
                    self.step = Step::Reindex(now + Duration::from_secs(5));
                    return;
                };
                let requested_at = r.at;
                let Ok(b) = tidemark::catalog::get(pool, id).await else { return };
                if b.is_active() {
                    return;
                }
                self.last_build_ended = Some(requested_at);
                if b.state == tidemark::catalog::BuildState::Done {
                    self.promotions += 1;
                    if self.promotions % 2 == 1 && !(self.winding_down && self.cycle_complete()) {
                        let wait = Duration::from_millis(self.rng.gen_range(1000..4000));
                        fleet.event(&format!(
                            "operator: build #{id} ({}) is live; in {} ms some {table} are deleted from it, then it is rolled back",
                            b.target_index,
                            wait.as_millis()
                        ));
                        self.step = Step::Delete(now + wait);
                        return;
                    }
                }
                // A soak rebuilds every two minutes.
                self.step = Step::Reindex(now + Duration::from_secs(120));
            }
            Step::Delete(at) => {
                if now < *at {
                    return;
                }
                if tidemark::catalog::active(pool, alias).await.ok().flatten().is_some() {
                    // `admin rollback` is refused while a build runs.
                    *at = now + Duration::from_secs(2);
                    return;
                }
                let live = env.search.alias_targets(alias).await.unwrap_or_default();
                let deleted: Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(&format!(
                    "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY random() LIMIT $1) RETURNING id"
                ))
                .bind(DELETE_BEFORE_ROLLBACK)
                .fetch_all(pool)
                .await;
                let mut ids = match deleted {
                    Ok(ids) => ids,
                    Err(e) => {
                        fleet.event(&format!("operator: deleting {table} before the rollback failed: {e}"));
                        Vec::new()
                    }
                };
                ids.sort_unstable();
                fleet.counts.deleted_before_rollback += ids.len() as u64;
                fleet.event(&format!("operator: deleted {} {table} while {live:?} is live: {ids:?}", ids.len()));
                self.deleted_before_rollback.extend(&ids);
                self.step = Step::Rollback { ids, since: now, until: now + Duration::from_secs(15) };
            }
            Step::Rollback { ids, since, until } => {
                let left: i64 =
                    sqlx::query_scalar("SELECT count(DISTINCT key) FROM tidemark.outstanding WHERE key = ANY($1::bigint[]::text[])")
                        .bind(&*ids)
                        .fetch_one(pool)
                        .await
                        .unwrap_or(-1);
                if left != 0 && now < *until {
                    return;
                }
                let said = if left == 0 {
                    format!("their deletes were indexed {:.1}s after them", since.elapsed().as_secs_f64())
                } else {
                    format!("{left} of their deletes still unindexed after {:.1}s", since.elapsed().as_secs_f64())
                };
                fleet.event(&format!("operator: tidemark admin rollback ({said})"));
                self.rollbacks.push(AdminRequest::rollback(fleet.command(), fleet.started.elapsed()));
                self.step = Step::RollingBack;
            }
            Step::RollingBack => {
                let Some(r) = self.rollbacks.last() else { return };
                if r.handle.is_some() {
                    return;
                }
                let said = r.outcome.clone().unwrap_or_default();
                if r.ok {
                    fleet.counts.rollbacks += 1;
                }
                let wait = Duration::from_millis(self.rng.gen_range(3000..6000));
                fleet.event(&format!("operator: admin rollback answered ({said}); another reindex in {} ms", wait.as_millis()));
                self.step = Step::Reindex(now + wait);
            }
        }
    }

    /// Ends the burst once the request it surrounds was answered (half a second later), or
    /// after [`BURST_MAX`].
    async fn tend_burst(&mut self, fleet: &mut Fleet<'_>) {
        let Some(b) = self.burst.as_mut() else { return };
        let answered = self.reindexes.last().is_some_and(|r| r.handle.is_none() && r.at >= b.at);
        if answered && b.stop_at.is_none() {
            b.stop_at = Some(Instant::now() + Duration::from_millis(500));
        }
        if !(b.stop_at.is_some_and(|t| Instant::now() >= t) || b.started.elapsed() >= BURST_MAX) {
            return;
        }
        let b = self.burst.take().expect("checked above");
        let build = self.reindexes.last().and_then(|r| r.id);
        let report = b.finish(build).await;
        fleet.counts.insert_bursts += 1;
        fleet.counts.burst_inserts += report.ids.len() as u64;
        fleet.event(&report.describe());
        self.bursts.push(report);
    }

    /// Waits (bounded) for what still runs: CLI answers, a burst.
    pub async fn settle(&mut self, fleet: &mut Fleet<'_>) {
        for r in self.reindexes.iter_mut().chain(self.rollbacks.iter_mut()) {
            r.finish().await;
        }
        if let Some(b) = self.burst.as_mut() {
            b.stop_at = Some(Instant::now());
        }
        self.tend_burst(fleet).await;
    }

    pub fn render(&self, check: Option<&Comparison>) -> String {
        let mut out = String::new();
        for r in self.reindexes.iter().chain(&self.rollbacks) {
            let _ = writeln!(out, "{} requested at {:.1}s: {}", r.what, r.at.as_secs_f64(), r.outcome.as_deref().unwrap_or("(no answer)"));
        }
        for b in &self.bursts {
            let _ = writeln!(out, "  {}", b.describe());
        }
        if let Some(c) = check {
            let burst_ids: BTreeSet<i64> = self.bursts.iter().flat_map(|b| b.ids.iter().copied()).collect();
            let living: Vec<i64> = burst_ids.iter().copied().filter(|id| c.expected_docs.contains_key(id)).collect();
            let unindexed = living.iter().filter(|id| !c.indexed_docs.contains_key(id)).count();
            let _ = writeln!(
                out,
                "{} of the insert bursts: {} inserted, {} of them still in the database at the end, {unindexed} of those not in the index",
                self.model.table(),
                burst_ids.len(),
                living.len()
            );
            let resurrected = self.deleted_before_rollback.iter().filter(|id| c.indexed_docs.contains_key(id)).count();
            let _ = writeln!(
                out,
                "{} deleted while a newer index was live, just before a rollback from it: {}; in the index at the end: {resurrected}",
                self.model.table(),
                self.deleted_before_rollback.len()
            );
        }
        out
    }

    pub fn failures(&self, converged: bool, check: Option<&Comparison>) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.rollbacks.iter().filter(|r| !r.ok) {
            out.push(format!("`admin rollback` at {:.1}s failed: {}", r.at.as_secs_f64(), r.outcome.as_deref().unwrap_or("no answer")));
        }
        if converged && !self.cycle_complete() {
            out.push(format!("the operator's cycle (promotion, rollback, reindex) did not complete: it {}", self.describe()));
        }
        if converged && self.rollbacks.is_empty() {
            out.push("no `admin rollback` was done".into());
        }
        for b in self.bursts.iter().filter(|b| b.ids.is_empty()) {
            out.push(format!("the insert burst at {:.1}s inserted nothing ({:?})", b.at.as_secs_f64(), b.refused));
        }
        for b in self.bursts.iter().filter(|b| b.at_or_below_max() > 0) {
            out.push(format!("the insert burst at {:.1}s made {} ids not above the max id", b.at.as_secs_f64(), b.at_or_below_max()));
        }
        if let Some(c) = check {
            let back: Vec<i64> = self.deleted_before_rollback.iter().copied().filter(|id| c.indexed_docs.contains_key(id)).collect();
            if !back.is_empty() {
                out.push(format!(
                    "{} deleted while the newer index was live are in the index after the rollback: {back:?}",
                    self.model.table()
                ));
            }
        }
        out
    }
}

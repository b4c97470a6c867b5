//! The sync engine: strings the pipeline stages into one *step* (what one job does), and
//! drains (steps until nothing is left). The stages are public so tests can hold a batch
//! between its load and its acknowledgement.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tracing::Instrument;

use crate::{
    config::Config,
    document::StudentDoc,
    index::{self, Targets},
    reindex::{self, Finish},
    pipeline::{
        acknowledge::{acknowledge, verdicts, Acked, Verdict},
        claim,
        encode::encode,
        fanout::{self, Step},
        load::load,
        retry::Backoff,
        ship::{ship, ShipLimits},
        Mark,
    },
    search::{Search, SearchError},
    workers::{Queue, SyncJob, SyncRunner},
};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Search(#[from] SearchError),
}

/// A batch read and ready to ship: the claim, the version drawn before the read, and the
/// documents read (None for a deleted student).
#[derive(Debug)]
pub struct Prepared {
    pub marks: Vec<Mark>,
    pub targets: Targets,
    pub version: i64,
    pub docs: Vec<(i64, Option<StudentDoc>)>,
    /// How long the read took.
    pub load: Duration,
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub claimed: usize,
    pub indexed: usize,
    pub deleted: usize,
    pub acked: Acked,
    pub requests: u32,
    pub retried_ops: u64,
    /// Where the batch's time went: reading the documents, shipping them (all attempts,
    /// backoff included), acknowledging.
    pub load: Duration,
    pub ship: Duration,
    pub ack: Duration,
}

/// What one step did.
#[derive(Debug, Default)]
pub struct StepReport {
    /// Students marked by expanding a university or course.
    pub fanned_out: u64,
    /// Documents written by a full-reindex chunk.
    pub reindexed: usize,
    /// A full reindex is still building or verifying.
    pub building: bool,
    pub batch: Option<BatchReport>,
}

impl StepReport {
    /// Nothing done this step.
    pub fn idle(&self) -> bool {
        self.fanned_out == 0 && self.reindexed == 0 && self.batch.is_none()
    }
}

pub struct Engine {
    pub pool: PgPool,
    pub search: Search,
    pub config: Arc<Config>,
    /// Who holds the leases this engine takes (unique per process).
    pub owner: String,
    /// Where to nudge when a step sees more work than it takes (None: no queue, as in
    /// `tidemark sync` and tests that drain in-process).
    pub queue: Option<Queue>,
    /// One partial batch of this engine in flight at a time ("natural batching"): while it
    /// ships, new marks pile up and the next claim takes them all. A server that falls
    /// behind thus gets fewer, larger `_bulk` requests instead of many small ones — osmem
    /// spent 0.6-0.9 ms per document in requests of 5-100 and 0.25 ms in requests of 500
    /// (BENCHMARKS.md, "Freshness"), and Elasticsearch likewise pays per request — while an
    /// idle one still gets each change at once. A full batch releases the gate as soon as it
    /// is claimed: the backlog is then large and parallel batches pay.
    batch_gate: tokio::sync::Semaphore,
}

impl Engine {
    pub fn new(pool: PgPool, search: Search, config: Arc<Config>, queue: Option<Queue>) -> Engine {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let owner = format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>());
        Engine { pool, search, config, owner, queue, batch_gate: tokio::sync::Semaphore::new(1) }
    }

    fn lease(&self) -> Duration {
        self.config.sync.lease.0
    }

    /// Claims the next batch of student marks (possibly empty).
    pub async fn claim(&self, limit: usize) -> Result<Vec<Mark>, EngineError> {
        Ok(claim::claim_students(&self.pool, &self.owner, self.lease(), limit as i64).await?)
    }

    /// Decides the targets, draws the version, then reads the documents (in that order:
    /// protocol invariant 3). On failure the claim is given back.
    pub async fn prepare(&self, marks: Vec<Mark>) -> Result<Prepared, EngineError> {
        let ids: Vec<i64> = marks.iter().map(|m| m.student_id).collect();
        let started = Instant::now();
        let result = async {
            let targets = self.targets().await?;
            let version = claim::draw_version(&self.pool).await?;
            let docs = load(&self.pool, &ids).await?;
            Ok::<_, EngineError>((targets, version, docs))
        }
        .await;
        match result {
            Ok((targets, version, docs)) => Ok(Prepared { marks, targets, version, docs, load: started.elapsed() }),
            Err(e) => {
                self.give_back(&ids).await;
                Err(e)
            }
        }
    }

    /// Encodes, ships with retries, and acknowledges under the sequence guard.
    pub async fn deliver(&self, p: Prepared) -> Result<BatchReport, EngineError> {
        let ids: Vec<i64> = p.marks.iter().map(|m| m.student_id).collect();
        let started = Instant::now();
        let encoded = encode(&p.docs, &p.targets.indices, p.version);
        let shipped = match ship(&self.search, &encoded, self.ship_limits()).await {
            Ok(s) => s,
            Err(e) => {
                self.give_back(&ids).await;
                return Err(e.into());
            }
        };
        let verdicts = verdicts(encoded.ops.iter().zip(shipped.outcomes).map(|(op, o)| (op.student_id, o)));
        for (id, v) in &verdicts {
            if let Verdict::Dead { status, reason } = v {
                tracing::warn!(student_id = id, status, %reason, "the index refused this document; it is in the dead-letter table (tidemark admin failed)");
            }
        }
        let shipped_at = Instant::now();
        let acked = acknowledge(&self.pool, &self.owner, &p.marks, &verdicts).await?;
        if acked.later > 0 {
            tracing::warn!(students = acked.later, "some documents still failed after retries; their marks stay and a later sync retries them");
        }
        let deleted = p.docs.iter().filter(|(_, d)| d.is_none()).count();
        Ok(BatchReport {
            claimed: p.marks.len(),
            indexed: p.docs.len() - deleted,
            deleted,
            acked,
            requests: shipped.requests,
            retried_ops: shipped.retried_ops,
            load: p.load,
            ship: shipped_at - started,
            ack: shipped_at.elapsed(),
        })
    }

    /// The indices a batch claimed now writes to (see [`index::targets`]).
    pub async fn targets(&self) -> Result<Targets, EngineError> {
        index::targets(&self.pool, &self.search, &self.config.index_alias, self.config.reindex.chunk_size).await
    }

    pub fn ship_limits(&self) -> ShipLimits {
        let s = &self.config.sync;
        ShipLimits {
            max_docs: s.bulk_max_docs as usize,
            max_bytes: s.bulk_max_bytes as usize,
            max_attempts: s.max_attempts,
            backoff: Backoff { base: s.backoff_base.0, cap: s.backoff_cap.0 },
            concurrency: s.bulk_concurrency as usize,
        }
    }

    /// Works on a running full reindex: one chunk, and the promotion once all are done.
    async fn reindex_step(&self) -> Result<(usize, Option<Finish>), EngineError> {
        let alias = &self.config.index_alias;
        match reindex::take_resync_request(&self.pool, &self.search, alias, self.config.reindex.chunk_size).await {
            Ok(_) => {}
            Err(reindex::ReindexError::Engine(e)) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "could not act on a TRUNCATE yet"),
        }
        let Some(build) = reindex::active(&self.pool, alias).await? else {
            return Ok((0, None));
        };
        let mut written = 0;
        if let Some(chunk) = reindex::claim_chunk(&self.pool, build.id, &self.owner, self.lease()).await? {
            // More chunks likely wait: let idle workers join now.
            self.nudge("reindex").await;
            let span = tracing::info_span!("reindex_chunk", id = build.id, lo = chunk.lo, hi = chunk.hi);
            match reindex::process_chunk(self, &build, &chunk).instrument(span).await? {
                Some(n) => written = n.max(1),
                None => tracing::warn!(lo = chunk.lo, "reindex chunk still failing after retries; it will be tried again"),
            }
        }
        let finish = reindex::finish(self, build.id).await?;
        match &finish {
            Finish::Promoted | Finish::Failed(_) => self.nudge("reindex-finished").await,
            Finish::Waiting(why) => tracing::debug!(%why, "reindex verification waits"),
            Finish::NotYet => {}
        }
        Ok((written, Some(finish)))
    }

    async fn give_back(&self, ids: &[i64]) {
        if let Err(e) = claim::release(&self.pool, &self.owner, ids).await {
            tracing::warn!(error = %e, "could not give back a claim; its lease runs out by itself");
        }
    }

    /// Expands one claimed university/course mark completely, chunk by chunk.
    async fn fan_out_one(&self) -> Result<u64, EngineError> {
        let Some(mut parent) = fanout::claim_parent(&self.pool, &self.owner, self.lease()).await? else {
            return Ok(0);
        };
        let span = tracing::info_span!("fanout", kind = %parent.kind, id = parent.parent_id);
        let chunk = self.config.sync.fanout_chunk as i64;
        let mut total = 0;
        async move { loop {
            match fanout::expand_step(&self.pool, &self.owner, self.lease(), &mut parent, chunk).await? {
                Step::Marked(n) => {
                    total += n;
                    // Others can index what is marked while this expansion goes on.
                    self.nudge("fanout").await;
                }
                Step::Finished(n) => {
                    total += n;
                    tracing::info!(students = total, "fan-out done");
                    return Ok(total);
                }
                Step::Restarted => {
                    tracing::info!(students = total, "changed again during fan-out; it starts over");
                    return Ok(total.max(1));
                }
            }
        } }
        .instrument(span)
        .await
    }

    async fn nudge(&self, reason: &str) {
        if let Some(q) = &self.queue {
            if let Err(e) = q.nudge(reason).await {
                tracing::warn!(error = %e, "could not nudge the queue; the scheduler's next tick will");
            }
        }
    }

    /// One job's work: expand at most one university/course mark, then sync one batch.
    pub async fn step(&self) -> Result<StepReport, EngineError> {
        // Makes sure there is somewhere to write (a missing index starts a rebuild).
        self.targets().await?;
        let fanned_out = self.fan_out_one().await?;
        let (reindexed, finish) = self.reindex_step().await?;
        let building = matches!(finish, Some(Finish::NotYet | Finish::Waiting(_)));
        let batch_size = self.config.sync.batch_size as usize;
        let gate = self.batch_gate.acquire().await.expect("the gate is never closed");
        let marks = self.claim(batch_size).await?;
        let _gate = (marks.len() < batch_size).then_some(gate);
        if marks.is_empty() {
            return Ok(StepReport { fanned_out, reindexed, building, batch: None });
        }
        if marks.len() == batch_size {
            // Probably more waiting: let another worker start on it now.
            self.nudge("more").await;
        }
        let span = tracing::info_span!("batch", size = marks.len(), owner = %self.owner);
        let report = async { self.deliver(self.prepare(marks).await?).await }.instrument(span.clone()).await?;
        span.in_scope(|| {
            tracing::info!(
                indexed = report.indexed,
                deleted = report.deleted,
                cleared = report.acked.cleared,
                changed_in_flight = report.acked.changed_in_flight,
                dead = report.acked.dead,
                later = report.acked.later,
                requests = report.requests,
                load_ms = report.load.as_millis() as u64,
                ship_ms = report.ship.as_millis() as u64,
                ack_ms = report.ack.as_millis() as u64,
                "batch synced"
            )
        });
        if report.acked.changed_in_flight > 0 || report.acked.later > 0 {
            self.nudge("leftover").await;
        }
        Ok(StepReport { fanned_out, reindexed, building, batch: Some(report) })
    }

    /// Steps until a step finds nothing to do. Marks that keep failing transiently stop
    /// the drain after `max_idle_rounds` rounds without progress.
    pub async fn drain(&self) -> Result<DrainReport, EngineError> {
        let mut report = DrainReport::default();
        let mut stalled = 0;
        loop {
            let step = self.step().await?;
            if step.idle() {
                if !step.building {
                    return Ok(report);
                }
                // A build waits for chunks leased by others (or a crashed worker's leases
                // to run out): wait for it rather than report done.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            report.fanned_out += step.fanned_out;
            report.reindexed += step.reindexed as u64;
            if let Some(b) = step.batch {
                report.batches += 1;
                report.indexed += b.indexed as u64;
                report.deleted += b.deleted as u64;
                report.dead += b.acked.dead;
                if b.acked.cleared == 0 && step.fanned_out == 0 {
                    stalled += 1;
                    if stalled >= 3 {
                        report.stalled = true;
                        return Ok(report);
                    }
                } else {
                    stalled = 0;
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct DrainReport {
    pub batches: u64,
    pub reindexed: u64,
    pub indexed: u64,
    pub deleted: u64,
    pub dead: u64,
    pub fanned_out: u64,
    /// Stopped because batches kept failing (the marks remain for later).
    pub stalled: bool,
}

impl SyncRunner for Engine {
    async fn run(&self, job: SyncJob) -> Result<(), String> {
        let span = tracing::info_span!("sync_job", reason = %job.reason);
        match self.step().instrument(span).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "sync step failed; marks stay and are retried");
                // Try again soon rather than only at the next tick.
                Err(e.to_string())
            }
        }
    }
}

//! A sync *step* (what one job does): expand at most one renamed university, course or
//! set of students into marks, work on a running full reindex, then sync one batch; and a
//! *drain* (steps until nothing is left), for `tidemark sync` and tests.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    pipeline::{
        batch::{self, BatchReport},
        fanout::{self, Step},
        targets, PipelineError,
    },
    reindex::{self, Finish, ReindexError},
    services::Services,
    telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Reindex(#[from] ReindexError),
    #[error(
        "the index holds writes with version {index_version}, but tidemark.seq is at {sequence}: the database was restored from a backup older than the index (or the sequence was reset), and every write would be refused as older than what the index holds. Run `tidemark admin repair-sequence` (it moves the sequence past the index), then `tidemark admin reindex` to rebuild the index from the database as it is now"
    )]
    SequenceBehind { index_version: i64, sequence: i64 },
}

impl SyncError {
    /// A short, stable name of what went wrong, for logs and dashboards.
    pub fn kind(&self) -> &'static str {
        use crate::search::SearchError as S;
        let search = |e: &S| match e {
            S::Unreachable { .. } => "search_unreachable",
            S::Unauthorized { .. } => "search_credentials",
            S::Status { .. } => "search_status",
            S::Malformed { .. } => "search_malformed",
            S::Config(_) | S::Certificate { .. } => "config",
        };
        match self {
            SyncError::Pipeline(PipelineError::Db(_)) | SyncError::Reindex(ReindexError::Db(_)) => "database",
            SyncError::Pipeline(PipelineError::Search(e)) | SyncError::Reindex(ReindexError::Search(e)) => search(e),
            SyncError::Pipeline(PipelineError::NoIndex(_)) => "no_index",
            SyncError::Reindex(_) => "reindex",
            SyncError::SequenceBehind { .. } => "sequence_behind",
        }
    }
}

/// The sequence behind every version, against the highest version the index holds (read
/// from its most recent writes): `Some((index_version, sequence))` when the index is ahead,
/// which only a database restored from an older backup (or a reset sequence) can cause.
///
/// The index is read first and the sequence after it. Every version the index holds was
/// drawn from the sequence before it was written, so a sequence read *after* the index can
/// only be at or past what the index showed, however long the search waited in a busy
/// engine and whatever other workers wrote meanwhile. (Read the other way round, versions
/// written while the search waited looked like a restored backup: issue 20.)
pub async fn sequence_behind(services: &Services) -> Result<Option<(i64, i64)>, SyncError> {
    let alias = &services.config.index_alias;
    let search = &services.search;
    let mut highest = 0;
    for target in [alias.clone(), crate::catalog::build_alias(alias)] {
        if search.alias_targets(&target).await.map_err(PipelineError::from)?.is_empty() {
            continue;
        }
        // `_seq_no` orders each shard's writes: the last ones carry the newest versions.
        let body = serde_json::json!({"size": 20, "version": true, "_source": false, "sort": [{"_seq_no": "desc"}]});
        let v = search
            .json(elasticsearch::http::Method::Post, &format!("/{target}/_search"), Some(&body))
            .await
            .map_err(PipelineError::from)?;
        highest = v["hits"]["hits"].as_array().into_iter().flatten().filter_map(|h| h["_version"].as_i64()).fold(highest, i64::max);
    }
    let sequence: i64 = sqlx::query_scalar("SELECT last_value FROM tidemark.seq").fetch_one(&services.pool).await?;
    Ok((highest > sequence).then_some((highest, sequence)))
}

/// Refuses to sync when [`sequence_behind`] finds the index ahead of the sequence.
pub async fn check_sequence(services: &Services) -> Result<(), SyncError> {
    match sequence_behind(services).await? {
        Some((index_version, sequence)) => Err(SyncError::SequenceBehind { index_version, sequence }),
        None => Ok(()),
    }
}

/// The way out of [`SyncError::SequenceBehind`]: moves the sequence past the highest version
/// the index holds. Returns the new sequence value.
pub async fn repair_sequence(services: &Services) -> Result<i64, SyncError> {
    let (index_version, sequence) = sequence_behind(services).await?.unwrap_or((0, 0));
    let next: i64 = sqlx::query_scalar("SELECT setval('tidemark.seq', greatest($1, $2, (SELECT last_value FROM tidemark.seq)) + 1)")
        .bind(index_version)
        .bind(sequence)
        .fetch_one(&services.pool)
        .await?;
    Ok(next)
}

impl From<sqlx::Error> for SyncError {
    fn from(e: sqlx::Error) -> Self {
        SyncError::Pipeline(e.into())
    }
}

/// What a step left behind for the next one: the job handler decides from it whether to
/// enqueue another step at once (the step itself knows nothing of the queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Left {
    /// Nothing this step knows of waits (a build being verified is looked at again by the
    /// scheduler's ticks and the steps of other changes).
    #[default]
    Nothing,
    /// More work waits now: a full batch (probably more marks), marks left for later or
    /// changed in flight, a rebuild just started, or a build just promoted or failed.
    More(&'static str),
}

/// Most parent marks one step expands (each is bounded by its own chunks; a step also stops
/// once a batch's worth of documents is marked).
pub const MAX_PARENTS_PER_STEP: u64 = 100;

/// What one step did.
#[derive(Debug, Default)]
pub struct StepReport {
    /// Documents marked by expanding a parent mark.
    pub fanned_out: u64,
    /// Parent marks expanded (one that contained no document counts too).
    pub expanded: u64,
    /// Documents written by a full-reindex chunk.
    pub reindexed: usize,
    /// A full reindex is still building or verifying.
    pub building: bool,
    pub batch: Option<BatchReport>,
    /// What it left for the next step.
    pub left: Left,
}

impl StepReport {
    /// Nothing done this step.
    pub fn idle(&self) -> bool {
        self.expanded == 0 && self.reindexed == 0 && self.batch.is_none()
    }
}

/// What a drain did.
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

/// Runs steps for one process: its services, the gate of natural batching, and a signal for
/// whoever runs the steps that work is waiting *while* a step still works on its part.
pub struct Syncer {
    pub services: Services,
    /// Raised (coalescing) the moment a step sees more work than it takes — a reindex chunk
    /// or a fan-out chunk claimed (others remain), a full batch claimed — so the process can
    /// start another step alongside at once instead of after this one. The worker turns it
    /// into a nudge; `tidemark sync` and tests ignore it.
    spread: Arc<tokio::sync::Notify>,
    /// One partial batch of this process in flight at a time ("natural batching"): while it
    /// ships, new marks pile up and the next claim takes them all. A server that falls
    /// behind thus gets fewer, larger `_bulk` requests instead of many small ones (search
    /// servers pay per request; BENCHMARKS.md, "Freshness"), while an idle one still gets
    /// each change at once. A full batch releases the gate as soon as it is claimed: the
    /// backlog is then large and parallel batches pay.
    batch_gate: tokio::sync::Semaphore,
    /// The lease owner of [`Syncer::claim`], [`Syncer::prepare`] and [`Syncer::deliver`].
    owner: String,
    /// Batches finished, and when the last one was (for the worker's heartbeat).
    batches: AtomicU64,
    last_batch_at: std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    /// The process was asked to stop: a step finishes the part in hand (a fan-out chunk, a
    /// reindex chunk, a batch) and starts no other.
    stop: CancellationToken,
    /// The sequence was found behind the index (`(index_version, sequence)`): every step
    /// refuses until a check finds it repaired.
    refused: std::sync::Mutex<Option<(i64, i64)>>,
}

impl Syncer {
    pub fn new(services: Services) -> Syncer {
        let owner = services.identity.lease_owner();
        Syncer {
            services,
            spread: Arc::new(tokio::sync::Notify::new()),
            batch_gate: tokio::sync::Semaphore::new(1),
            owner,
            batches: AtomicU64::new(0),
            last_batch_at: std::sync::Mutex::new(None),
            stop: CancellationToken::new(),
            refused: std::sync::Mutex::new(None),
        }
    }

    /// Steps stop starting new parts once `stop` is cancelled (a worker's SIGTERM).
    pub fn stopping_on(mut self, stop: CancellationToken) -> Syncer {
        self.stop = stop;
        self
    }

    fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Compares the sequence with the index ([`sequence_behind`]) and remembers the answer:
    /// while the sequence is behind, every step refuses (nothing is shipped, every mark
    /// stays). Says so when the state changes (log and `tidemark_sync_refused`). Returns
    /// whether sync is refused now; an error leaves the last answer in place.
    pub async fn check_sequence(&self) -> Result<bool, SyncError> {
        let behind = sequence_behind(&self.services).await?;
        let was = std::mem::replace(&mut *self.refused.lock().expect("never poisoned"), behind);
        match (was, behind) {
            (None, Some((index_version, sequence))) => {
                let e = SyncError::SequenceBehind { index_version, sequence };
                tracing::error!(error = %e, "refusing to sync: nothing is shipped and every mark stays until the sequence is repaired");
            }
            (Some(_), None) => tracing::info!("tidemark.seq is past every version the index holds again: sync resumes"),
            _ => {}
        }
        telemetry::sync_refused(behind.is_some());
        Ok(behind.is_some())
    }

    /// Whether the last [`Syncer::check_sequence`] found the sequence behind.
    pub fn refused(&self) -> bool {
        self.refused.lock().expect("never poisoned").is_some()
    }

    /// Who holds the leases taken through [`Syncer::claim`] (each [`Syncer::step`] takes its
    /// own: steps of one process never hold, renew or give back each other's leases).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Batches finished by this syncer, and when the last one finished.
    pub fn batches(&self) -> (u64, Option<chrono::DateTime<chrono::Utc>>) {
        (self.batches.load(Ordering::Relaxed), *self.last_batch_at.lock().expect("never poisoned"))
    }

    /// The stages of one batch, for a caller that wants to hold a batch in between (tests).
    pub async fn claim(&self, limit: usize) -> Result<Vec<crate::pipeline::Mark>, PipelineError> {
        batch::claim(&self.services, self.owner(), limit).await
    }

    pub async fn prepare(&self, marks: Vec<crate::pipeline::Mark>) -> Result<batch::Prepared, PipelineError> {
        batch::prepare(&self.services, self.owner(), marks).await
    }

    pub async fn deliver(&self, prepared: batch::Prepared) -> Result<BatchReport, PipelineError> {
        batch::deliver(&self.services, self.owner(), prepared).await
    }

    /// Raised while a step works, when it sees more work than it takes (see the field).
    pub fn spread(&self) -> Arc<tokio::sync::Notify> {
        self.spread.clone()
    }

    /// There is nowhere to write (no alias, no build: a first run, or a search server that
    /// lost its index): starts a full rebuild from the database, unless a failed one asks to
    /// wait first.
    async fn rebuild(&self) -> Result<(), SyncError> {
        let alias = &self.services.config.index_alias;
        if let Some(last) = crate::catalog::latest(&self.services.pool, alias).await? {
            let wait = last.retry_after.map(|t| (t - chrono::Utc::now()).num_seconds()).unwrap_or(0);
            if last.state == crate::catalog::BuildState::Failed && wait > 0 {
                let why = last.message.unwrap_or_default();
                return Err(ReindexError::RebuildLater { alias: alias.clone(), why, wait_s: wait as u64 }.into());
            }
        }
        let why = format!("alias {alias} does not exist (first run, or the search server lost its index): rebuilding it from the database");
        match reindex::start(&self.services, self.services.config.reindex.chunk_size, &why).await {
            Ok(b) => tracing::warn!(index = %b.target_index, "{why}"),
            // Another worker started it a moment ago.
            Err(ReindexError::AlreadyRunning { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Works on a running full reindex: one chunk, and the promotion once all are done.
    async fn reindex_step(&self, owner: &str) -> Result<(usize, Option<Finish>), SyncError> {
        let services = &self.services;
        match reindex::take_resync_request(services).await {
            Ok(_) => {}
            Err(e @ (ReindexError::Db(_) | ReindexError::Search(_))) => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "could not act on a TRUNCATE yet"),
        }
        let Some(build) = crate::catalog::active(&services.pool, &services.config.index_alias).await? else {
            return Ok((0, None));
        };
        if self.stopping() {
            return Ok((0, None));
        }
        let mut written = 0;
        if let Some(chunk) = reindex::claim_chunk(&services.pool, build.id, owner, services.lease()).await? {
            // More chunks likely wait: let idle workers join now.
            self.spread.notify_one();
            let span = tracing::info_span!("reindex_chunk", id = build.id, lo = chunk.lo, hi = chunk.hi);
            match reindex::process_chunk(services, owner, &build, &chunk).instrument(span).await? {
                Some(n) => written = n.max(1),
                None => tracing::warn!(lo = chunk.lo, "reindex chunk still failing after retries; it will be tried again"),
            }
        }
        if self.stopping() {
            // The promotion (and verification) is left to a worker that goes on.
            return Ok((written, Some(Finish::NotYet)));
        }
        let finish = reindex::finish(services, build.id).await?;
        if let Finish::Waiting(why) = &finish {
            tracing::debug!(%why, "reindex verification waits");
        }
        Ok((written, Some(finish)))
    }

    /// Expands one claimed parent mark completely, chunk by chunk: how many documents it
    /// marked, or None when there was none to expand.
    async fn fan_out_one(&self, owner: &str) -> Result<Option<u64>, SyncError> {
        let services = &self.services;
        if self.stopping() {
            return Ok(None);
        }
        let Some(mut parent) = fanout::claim_parent(&services.pool, owner, services.lease()).await? else {
            return Ok(None);
        };
        let span = tracing::info_span!("fanout", kind = %parent.kind, key = %parent.key);
        let chunk = services.config.sync.fanout_chunk as i64;
        let mut total = 0;
        async move {
            loop {
                match fanout::expand_step(&services.pool, &services.model, owner, services.lease(), &mut parent, chunk).await? {
                    Step::Marked(n) => {
                        telemetry::fanned_out(n);
                        total += n;
                        // Others can index what is marked while this expansion goes on.
                        self.spread.notify_one();
                        if self.stopping() {
                            // The cursor is committed: whoever claims the parent next resumes here.
                            tracing::info!(documents = total, "stop requested: fan-out left to resume at its cursor");
                            return Ok(Some(total));
                        }
                    }
                    Step::Finished(n) => {
                        telemetry::fanned_out(n);
                        total += n;
                        tracing::info!(documents = total, "fan-out done");
                        return Ok(Some(total));
                    }
                    Step::Restarted => {
                        tracing::info!(documents = total, "changed again during fan-out; it starts over");
                        return Ok(Some(total));
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Expands parent marks one after the other until a batch's worth of documents is
    /// marked or [`MAX_PARENTS_PER_STEP`] were expanded (many small parents — samples moved
    /// between organisms — would otherwise drain at one a step): how many parents, and how
    /// many documents they marked.
    async fn fan_out(&self, owner: &str) -> Result<(u64, u64), SyncError> {
        let batch_size = u64::from(self.services.config.sync.batch_size);
        let (mut parents, mut documents) = (0, 0);
        while parents < MAX_PARENTS_PER_STEP && documents < batch_size {
            match self.fan_out_one(owner).await? {
                Some(n) => {
                    parents += 1;
                    documents += n;
                }
                None => break,
            }
        }
        Ok((parents, documents))
    }

    /// One job's work: expand parent marks (a batch's worth at most), work on a running build,
    /// then sync one batch. Says in [`StepReport::left`] what it left for the next step.
    pub async fn step(&self) -> Result<StepReport, SyncError> {
        if let Some((index_version, sequence)) = *self.refused.lock().expect("never poisoned") {
            return Err(SyncError::SequenceBehind { index_version, sequence });
        }
        if self.stopping() {
            return Ok(StepReport::default());
        }
        let owner = self.services.identity.lease_owner();
        let (expanded, fanned_out) = self.fan_out(&owner).await?;
        let (reindexed, finish) = self.reindex_step(&owner).await?;
        let building = matches!(finish, Some(Finish::NotYet | Finish::Waiting(_)));
        // A build promoted or failed: the live index changed under the batches to come.
        let finished = matches!(finish, Some(Finish::Promoted | Finish::Failed(_)));
        let mut report = StepReport {
            expanded,
            fanned_out,
            reindexed,
            building,
            batch: None,
            left: if finished { Left::More("reindex-finished") } else { Left::Nothing },
        };
        let batch_size = self.services.config.sync.batch_size as usize;
        let gate = self.batch_gate.acquire().await.expect("the gate is never closed");
        // No claim starts after a stop request: the marks are left to the other workers.
        if self.stopping() {
            return Ok(report);
        }
        let marks = batch::claim(&self.services, &owner, batch_size).await?;
        let _gate = (marks.len() < batch_size).then_some(gate);
        if marks.is_empty() {
            // Nothing to write, but is there somewhere to write? (A first run on an empty
            // database, or a server that lost its index: no batch would ever find out.)
            if !building && finish.is_none() && targets::decide(&self.services).await?.is_none() {
                self.rebuild().await?;
                report.left = Left::More("rebuild");
            }
            return Ok(report);
        }
        if marks.len() == batch_size {
            // Probably more waiting: let another step start on it now.
            self.spread.notify_one();
        }
        // Stable field names for log pipelines: batch_id is the batch's version (unique).
        let span = tracing::info_span!("batch", batch_id = tracing::field::Empty, size = marks.len(), indices = tracing::field::Empty, owner = %owner);
        let full = marks.len() == batch_size;
        let delivered = async {
            let prepared = batch::prepare(&self.services, &owner, marks).await?;
            let span = tracing::Span::current();
            span.record("batch_id", prepared.version);
            span.record("indices", prepared.targets.indices.join(",").as_str());
            batch::deliver(&self.services, &owner, prepared).await
        }
        .instrument(span.clone())
        .await;
        let batch = match delivered {
            // Nowhere to write (the targets are read once, by the batch): the claim went back,
            // a rebuild starts, and the next step writes to it.
            Err(PipelineError::NoIndex(_)) => {
                self.rebuild().await?;
                report.left = Left::More("rebuild");
                return Ok(report);
            }
            other => {
                telemetry::batch(other.is_ok());
                other?
            }
        };
        span.in_scope(|| {
            tracing::info!(
                indexed = batch.indexed,
                deleted = batch.deleted,
                cleared = batch.acked.cleared,
                changed_in_flight = batch.acked.changed_in_flight,
                dead = batch.acked.dead,
                later = batch.acked.later,
                requests = batch.requests,
                load_ms = batch.load.as_millis() as u64,
                ship_ms = batch.ship.as_millis() as u64,
                ack_ms = batch.ack.as_millis() as u64,
                "batch synced"
            )
        });
        self.batches.fetch_add(1, Ordering::Relaxed);
        *self.last_batch_at.lock().expect("never poisoned") = Some(chrono::Utc::now());
        if batch.acked.changed_in_flight > 0 || batch.acked.later > 0 {
            report.left = Left::More("leftover");
        } else if full {
            report.left = Left::More("more");
        }
        report.batch = Some(batch);
        Ok(report)
    }

    /// Steps until a step finds nothing to do. Marks that keep failing transiently stop
    /// the drain after three rounds without progress.
    pub async fn drain(&self) -> Result<DrainReport, SyncError> {
        let mut report = DrainReport::default();
        let mut stalled = 0;
        loop {
            let step = self.step().await?;
            if step.idle() && step.left == Left::Nothing {
                if !step.building {
                    if let Err(e) = reindex::drop_build_alias(&self.services).await {
                        tracing::debug!(error = %e, "could not remove the build alias yet");
                    }
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

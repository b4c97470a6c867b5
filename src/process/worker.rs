//! `tidemark worker`: runs sync jobs from the queue, `concurrency` at a time, until
//! shutdown; then stops taking jobs, gives running ones `worker.shutdown_timeout` to
//! finish, and gives back every lease it still holds.
//!
//! While it runs it records a heartbeat (`tidemark.workers`: alive, batches, last batch),
//! which `admin status` counts, and checks that the database's sequence is not behind the
//! index (a database restored from an older backup): then it refuses to sync.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tracing::Instrument;

use tokio_util::sync::CancellationToken;

use super::{stop_token, ProcessError};
use crate::{
    catalog::{self, HEARTBEAT_EVERY},
    pipeline::claim,
    retry::Backoff,
    search::SearchError,
    services::{Services, ServicesError},
    sync::{Left, SyncError, Syncer},
    telemetry,
    workers::{self, Queue, SyncJob},
};

/// How often a running worker checks that the sequence is not behind the index.
const SEQUENCE_CHECK_EVERY: Duration = Duration::from_secs(60);

/// Runs until `shutdown` completes. Redis going away restarts the queue loop (after a
/// backoff); the leases of the steps it cut short are given back at once.
pub async fn run(services: Services, concurrency: usize, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ProcessError> {
    let stop = stop_token(shutdown);
    match services.search.ping().await {
        Ok(()) => tracing::info!(url = services.search.redacted_url(), "search server reachable"),
        Err(e @ SearchError::Unauthorized { .. }) => return Err(ServicesError::from(e).into()),
        Err(e) => tracing::warn!(error = %e, "search server not reachable yet; sync jobs will keep failing and retrying until it is"),
    }
    // Old generations a failed prune left behind (tidemark's own only, never a rollback target).
    if let Err(e) = crate::reindex::prune(&services).await {
        tracing::debug!(error = %e, "could not prune old generations at start");
    }
    let identity = services.identity.as_str().to_string();
    let _ = telemetry::install();
    telemetry::worker_started();
    let syncer = Arc::new(Syncer::new(services.clone()).stopping_on(stop.clone()));
    // A sequence behind the index (a database restored from an older backup) makes every
    // step refuse, without ending the process: the heartbeat checks again and sync resumes
    // once the operator has repaired it.
    if let Err(e) = syncer.check_sequence().await {
        tracing::warn!(error = %e, "could not compare the sequence with the index yet");
    }
    let heartbeat = tokio::spawn(heartbeat(syncer.clone(), stop.clone()));
    let failures = Arc::new(AtomicU32::new(0));
    super::supervise(services.clone(), stop.clone(), "queue worker", |queue| {
        let work = Work { services: services.clone(), syncer: syncer.clone(), stop: stop.clone(), failures: failures.clone(), concurrency };
        Box::pin(work.run(queue)) as futures::future::BoxFuture<'static, Result<(), crate::workers::QueueError>>
    })
    .await?;
    let released = claim::release_all(&services.pool, &identity).await?;
    heartbeat.abort();
    if let Err(e) = catalog::worker_stopped(&services.pool, &identity).await {
        tracing::debug!(error = %e, "could not remove the worker's heartbeat row; it ages out");
    }
    tracing::info!(released, "worker stopped; leases given back");
    Ok(())
}

/// Records the worker's heartbeat every [`HEARTBEAT_EVERY`], and checks the sequence every
/// [`SEQUENCE_CHECK_EVERY`] — every heartbeat while sync is refused, so that it resumes within
/// seconds of `tidemark admin repair-sequence` (and nudges the queue for the marks that waited).
async fn heartbeat(syncer: Arc<Syncer>, stop: CancellationToken) {
    let services = &syncer.services;
    let mut checked = Instant::now();
    loop {
        let (batches, last) = syncer.batches();
        if let Err(e) = catalog::heartbeat(&services.pool, services.identity.as_str(), batches as i64, last).await {
            tracing::warn!(error = %e, "could not record the worker's heartbeat");
        }
        // The build alias of a build that ended one batch's life ago.
        if let Err(e) = crate::reindex::drop_build_alias(services).await {
            tracing::debug!(error = %e, "could not remove the build alias yet");
        }
        let was_refused = syncer.refused();
        if was_refused || checked.elapsed() >= SEQUENCE_CHECK_EVERY {
            checked = Instant::now();
            match syncer.check_sequence().await {
                // The marks that waited: a step at once (through the spread signal).
                Ok(false) if was_refused => syncer.spread().notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not compare the sequence with the index; trying again later"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// After a failed step the queue is nudged again after a wait drawn from this policy, by the
/// number of steps that failed in a row: soon after a blip, at most every 30 s while a
/// service stays down (the scheduler's ticks keep coming meanwhile).
const STEP_RETRY: Backoff = Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(30) };

/// What a worker does with a job: one step, then what the step left decides the queue —
/// another job at once when more work waits, a delayed one after a failure (the marks stay
/// in PostgreSQL either way), nothing when sync is refused (the heartbeat's check wakes the
/// workers once the sequence is repaired).
fn step_handler(syncer: Arc<Syncer>, queue: Queue, failures: Arc<AtomicU32>) -> workers::Handler {
    workers::Handler::new(move |job: SyncJob| {
        let (syncer, queue, failures) = (syncer.clone(), queue.clone(), failures.clone());
        Box::pin(async move {
            let span = tracing::info_span!("sync_job", reason = %job.reason);
            match syncer.step().instrument(span).await {
                Ok(report) => {
                    failures.store(0, Ordering::Relaxed);
                    if let Left::More(reason) = report.left {
                        if let Err(e) = queue.nudge(reason).await {
                            tracing::warn!(error = %e, "could not nudge the queue; the database watch or the scheduler's next tick will");
                        }
                    }
                }
                Err(e @ SyncError::SequenceBehind { .. }) => tracing::debug!(error = %e, "sync step refused"),
                Err(e) => {
                    let failed = failures.fetch_add(1, Ordering::Relaxed) + 1;
                    telemetry::retried("step", 1);
                    let wait = STEP_RETRY.delay(failed, &mut rand::thread_rng());
                    tracing::warn!(stage = "sync_step", error_type = e.kind(), error = %e, retry_in_ms = wait.as_millis() as u64, "sync step failed; marks stay and are retried");
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = queue.nudge("retry").await;
                    });
                }
            }
        })
    })
}

/// What the worker runs on one connection to the queue.
struct Work {
    services: Services,
    syncer: Arc<Syncer>,
    stop: CancellationToken,
    failures: Arc<AtomicU32>,
    concurrency: usize,
}

impl Work {
    /// Runs jobs from `queue` until the stop (then the running ones get their grace) or
    /// until the queue fails.
    async fn run(self, queue: Queue) -> Result<(), crate::workers::QueueError> {
        let Work { services, syncer, stop, failures, concurrency } = self;
        let identity = services.identity.as_str().to_string();
        tracing::info!(concurrency, queue = %services.config.queue_namespace, identity = %identity, "worker started");
        // A step that sees more work than it takes says so at once (`Syncer::spread`):
        // another step starts alongside rather than after it.
        let spread = syncer.spread();
        let spreading = tokio::spawn({
            let queue = queue.clone();
            async move {
                loop {
                    spread.notified().await;
                    if let Err(e) = queue.nudge("spread").await {
                        tracing::debug!(error = %e, "could not nudge the queue");
                    }
                }
            }
        });
        // Whatever was left before this (re)start is looked for at once.
        let _ = queue.nudge("worker-start").await;
        let run = workers::run_worker(
            queue.clone(),
            &identity,
            concurrency,
            step_handler(syncer, queue, failures),
            stop.clone().cancelled_owned(),
        );
        // After a stop request, running jobs get `shutdown_timeout` to finish; then the
        // process gives their marks back and exits anyway.
        let timeout = services.config.worker.shutdown_timeout;
        let grace = async {
            stop.cancelled().await;
            tokio::time::sleep(timeout.0).await;
        };
        let result = tokio::select! {
            r = run => r,
            () = grace => {
                tracing::warn!(%timeout, "running jobs did not finish in time; giving their marks back");
                Ok(())
            }
        };
        spreading.abort();
        if !stop.is_cancelled() {
            // Steps that were running are gone with the queue worker: give their marks
            // back now rather than when their leases run out.
            match claim::release_all(&services.pool, &identity).await {
                Ok(n) if n > 0 => tracing::info!(released = n, "leases of interrupted steps given back"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not give back leases; they run out by themselves"),
            }
        }
        result
    }
}

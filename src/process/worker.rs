//! `tidemark worker`: runs sync jobs from the queue, `concurrency` at a time, until
//! shutdown; then stops taking jobs, gives running ones `worker.shutdown_timeout` to
//! finish, and gives back every lease it still holds.
//!
//! While it runs it records a heartbeat (`tidemark.workers`: alive, batches, last batch),
//! which `admin status` counts, and checks that the database's sequence is not behind the
//! index (a database restored from an older backup): then it refuses to sync.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::{connect_queue, stop_token, wakeup, ProcessError};
use crate::{
    catalog::{self, HEARTBEAT_EVERY},
    pipeline::claim,
    retry::Backoff,
    search::SearchError,
    services::{Services, ServicesError},
    sync::Syncer,
    telemetry, workers,
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
    let mut listening = None;
    let mut restarts = Backoff::RECONNECT.delays();
    while !stop.is_cancelled() {
        let Some(queue) = connect_queue(&services.config, &stop).await? else { break };
        tracing::info!(concurrency, queue = %services.config.queue_namespace, identity = %identity, "worker started");
        if listening.is_none() {
            listening = Some(tokio::spawn(wakeup::run(
                services.config.database_url()?.clone(),
                queue.clone(),
                services.config.sync.wakeup_interval.0,
                stop.clone().cancelled_owned(),
            )));
        }
        syncer.set_queue(Some(queue.clone()));
        // Whatever was left before this (re)start is looked for at once.
        let _ = queue.nudge("worker-start").await;
        let started = Instant::now();
        let run = workers::run_worker(queue, syncer.clone(), &identity, concurrency, stop.clone().cancelled_owned());
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
        match result {
            Ok(()) if stop.is_cancelled() => break,
            Ok(()) => tracing::warn!("queue worker ended; restarting"),
            Err(e) => tracing::warn!(error = %e, "queue worker failed (Redis lost?); reconnecting"),
        }
        // Steps that were running are gone with the queue worker: give their marks back
        // now rather than when their leases run out.
        match claim::release_all(&services.pool, &identity).await {
            Ok(n) if n > 0 => tracing::info!(released = n, "leases of interrupted steps given back"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not give back leases; they run out by themselves"),
        }
        if started.elapsed() > Duration::from_secs(60) {
            restarts = Backoff::RECONNECT.delays();
        }
        super::pause(restarts.next().expect("backoff delays never end"), &stop).await;
    }
    if let Some(l) = listening {
        let _ = l.await;
    }
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
                Ok(false) if was_refused => syncer.nudge("sequence-repaired").await,
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

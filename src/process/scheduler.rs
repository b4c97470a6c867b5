//! `tidemark scheduler`: enqueues a sync every interval (safe to run more than one: a job
//! is enqueued only when none waits), and on every database notification.

use std::{future::Future, time::Duration};

use super::{connect_queue, listener, stop_token, ProcessError};
use crate::{retry::Backoff, services::Services, workers};

/// Runs until `shutdown` completes, reconnecting when Redis goes away.
pub async fn run(services: Services, interval: Duration, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ProcessError> {
    let stop = stop_token(shutdown);
    let mut listening = None;
    let mut restarts = Backoff::RECONNECT.delays();
    while !stop.is_cancelled() {
        let Some(queue) = connect_queue(&services.config, &stop).await? else { break };
        if listening.is_none() {
            listening = Some(tokio::spawn(listener::run(services.pool.clone(), queue.clone(), stop.clone().cancelled_owned())));
        }
        tracing::info!(interval = %humantime::format_duration(interval), "scheduler started");
        match workers::run_scheduler(queue, interval, stop.clone().cancelled_owned()).await {
            Ok(()) if stop.is_cancelled() => break,
            Ok(()) => tracing::warn!("scheduler ended; restarting"),
            Err(e) => tracing::warn!(error = %e, "scheduler failed (Redis lost?); reconnecting"),
        }
        let wait = restarts.next().expect("backoff delays never end");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => {}
        }
    }
    if let Some(l) = listening {
        let _ = l.await;
    }
    Ok(())
}

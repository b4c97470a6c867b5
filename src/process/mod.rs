//! The long-running processes, each a `run(…, shutdown)` function that works until the
//! `shutdown` future completes (as mini-redis does): the binary passes a signal handler,
//! tests pass a future they control and run a worker in-process.
//!
//! - [`worker`]: runs sync jobs from the queue, reconnecting when Redis goes away.
//! - [`scheduler`]: enqueues a sync every interval.
//! - [`wakeup`]: nudges the queue when the database changed, by polling the mark sequence
//!   (run by both of the above; the writers' transactions do nothing for it).
//! - [`admin`]: the admin endpoint (`/metrics`, `/healthz`, `/readyz`) beside any of them.
//! - [`serve`]: the search application (`crate::web`) on an address.

pub mod admin;

pub mod scheduler;
pub mod serve;
pub mod wakeup;
pub mod worker;

use std::{future::Future, time::Duration};

use backon::Retryable;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{redact_message, redact_url, Config, ConfigError},
    retry::Backoff,
    services::{Services, ServicesError},
    workers::{Queue, QueueError},
};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Services(#[from] ServicesError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error("cannot serve on {addr}: {reason}; choose a free address (--admin-addr / --addr)")]
    Bind { addr: std::net::SocketAddr, reason: String },
}

/// Completes on SIGTERM or SIGINT: the `shutdown` the binary hands to a process.
pub async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stop requested");
}

/// A token cancelled on SIGTERM or SIGINT: one stop for everything a process runs (its
/// loop and its admin endpoint).
pub fn on_signal() -> CancellationToken {
    stop_token(signal())
}

/// A token cancelled when `shutdown` completes, so the many places of a process that stop
/// on it can each wait on a clone.
fn stop_token(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        cancel.cancel();
    });
    token
}

/// Waits `wait`, or less if `stop` comes first.
async fn pause(wait: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = stop.cancelled() => {}
    }
}

/// Connects to Redis, retrying on the [`Backoff::RECONNECT`] schedule until it answers;
/// `None` when `stop` comes first. Wrong credentials are not retried: waiting cannot mend them.
async fn connect_queue(config: &Config, stop: &CancellationToken) -> Result<Option<Queue>, ProcessError> {
    let url = config.redis_url()?;
    let attempt = (|| Queue::connect(url.expose(), &config.queue_namespace, |m| redact_message(m, Some(url.expose()))))
        .retry(Backoff::RECONNECT)
        .when(|e| !matches!(e, QueueError::Unauthorized { .. }))
        .notify(|e, wait| tracing::warn!(error = %e, retry_in_s = wait.as_secs_f64(), "waiting for Redis"));
    tokio::select! {
        q = attempt => Ok(Some(q?)),
        () = stop.cancelled() => Ok(None),
    }
}

/// The loop of both queue processes (worker and scheduler): connect to Redis (retrying until
/// it answers), start the database watch ([`wakeup`]) once, and run `body` with the queue
/// until it ends. An end before `stop` (Redis lost) is said and followed, after a backoff,
/// by a fresh connection and another `body`; the backoff starts over after a minute of
/// running. Returns when `stop` comes, after the watch has ended.
pub(crate) async fn supervise<F, Fut>(
    services: Services,
    stop: CancellationToken,
    what: &'static str,
    mut body: F,
) -> Result<(), ProcessError>
where
    F: FnMut(Queue) -> Fut,
    Fut: Future<Output = Result<(), QueueError>>,
{
    let mut watching = None;
    let mut restarts = Backoff::RECONNECT.delays();
    while !stop.is_cancelled() {
        let Some(queue) = connect_queue(&services.config, &stop).await? else { break };
        if watching.is_none() {
            let (url, interval) = (services.config.database_url()?.clone(), services.config.sync.wakeup_interval.0);
            watching = Some(tokio::spawn(wakeup::run(url, queue.clone(), interval, stop.clone().cancelled_owned())));
        }
        let started = std::time::Instant::now();
        match body(queue).await {
            Ok(()) if stop.is_cancelled() => break,
            Ok(()) => tracing::warn!("{what} ended; restarting"),
            Err(e) => tracing::warn!(error = %e, "{what} failed (Redis lost?); reconnecting"),
        }
        if started.elapsed() > Duration::from_secs(60) {
            restarts = Backoff::RECONNECT.delays();
        }
        pause(restarts.next().expect("backoff delays never end"), &stop).await;
    }
    if let Some(w) = watching {
        let _ = w.await;
    }
    Ok(())
}

/// One quick attempt at Redis, for commands that must not hang on it (admin).
pub async fn connect_queue_once(config: &Config) -> Result<Queue, ProcessError> {
    let url = config.redis_url()?;
    let redacted = redact_url(url.expose());
    let connect = Queue::connect(url.expose(), &config.queue_namespace, |m| redact_message(m, Some(url.expose())));
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(q) => Ok(q?),
        Err(_) => Err(QueueError::Unreachable { url: redacted, reason: "no answer within 5 s".into() }.into()),
    }
}

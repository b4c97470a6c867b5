//! `tidemark scheduler`: enqueues a sync every interval (safe to run more than one: a job
//! is enqueued only when none waits), and whenever the database changed (`wakeup`). The scheduler
//! that holds a PostgreSQL advisory lock also computes the gauges read from the database
//! (marks, lag, dead letters, queue depth, live workers, reindex progress) once per
//! interval and publishes them on its `/metrics`: one process's queries, whatever the
//! number of processes and scrapes.

use std::{future::Future, time::Duration};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::{stop_token, ProcessError};
use crate::{admin, services::Services, workers, workers::Queue};

/// Runs until `shutdown` completes, reconnecting when Redis goes away.
pub async fn run(services: Services, interval: Duration, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ProcessError> {
    let stop = stop_token(shutdown);
    super::supervise(services.clone(), stop.clone(), "scheduler", |queue| {
        let (services, stop) = (services.clone(), stop.clone());
        Box::pin(async move {
            let gauges_stop = stop.child_token();
            let gauges = tokio::spawn(publish_gauges(services, queue.clone(), interval, gauges_stop.clone()));
            tracing::info!(interval = %humantime::format_duration(interval), "scheduler started");
            let result = workers::run_scheduler(queue, interval, stop.cancelled_owned()).await;
            gauges_stop.cancel();
            let _ = gauges.await;
            result
        }) as futures::future::BoxFuture<'static, Result<(), crate::workers::QueueError>>
    })
    .await
}

/// Every `interval`: if this scheduler holds (or can take) the gauges lock, computes the
/// database gauges and publishes them. The lock is a session-level advisory lock on a
/// connection of its own, so it passes to another scheduler when this one dies.
async fn publish_gauges(services: Services, queue: Queue, interval: Duration, stop: CancellationToken) {
    let mut leader: Option<PgConnection> = None;
    loop {
        if leader.is_none() {
            leader = take_lock(&services).await;
            if leader.is_some() {
                tracing::info!("this scheduler computes the database gauges");
            }
        }
        if let Some(conn) = leader.as_mut() {
            if conn.ping().await.is_err() {
                // Lost with the connection: another scheduler (or this one, next time) takes it.
                leader = None;
            } else {
                match admin::status(&services, Ok(&queue)).await {
                    Ok(status) => status.gauges().publish(),
                    Err(e) => tracing::warn!(error = %e, "could not compute the database gauges"),
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval.max(Duration::from_secs(1))) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn take_lock(services: &Services) -> Option<PgConnection> {
    let url = services.config.database_url().ok()?;
    let mut conn = PgConnection::connect(url.expose()).await.ok()?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('tidemark.gauges.' || $1))")
        .bind(&services.config.index_alias)
        .fetch_one(&mut conn)
        .await
        .ok()?;
    got.then_some(conn)
}

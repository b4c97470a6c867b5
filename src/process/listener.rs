//! Turns database notifications (one per writing transaction, sent by the capture
//! triggers) into nudges, so a change is picked up within milliseconds rather than at the
//! next scheduler tick. Workers and schedulers both run one.

use std::future::Future;

use sqlx::{postgres::PgListener, PgPool};

use crate::{retry::Backoff, workers::Queue};

/// The channel the capture triggers notify.
pub const CHANNEL: &str = "tidemark_sync";

/// Listens until `shutdown`, reconnecting on the [`Backoff::RECONNECT`] schedule.
pub async fn run(pool: PgPool, queue: Queue, shutdown: impl Future<Output = ()> + Send + 'static) {
    let stop = super::stop_token(shutdown);
    let mut waits = Backoff::RECONNECT.delays();
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            l = connected => match l {
                Ok(l) => l,
                Err(e) => {
                    let wait = waits.next().expect("backoff delays never end");
                    tracing::warn!(error = %e, retry_in_s = wait.as_secs_f64(), "cannot listen for change notifications");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            },
            () = stop.cancelled() => return,
        };
        waits = Backoff::RECONNECT.delays();
        loop {
            let received = tokio::select! {
                r = listener.recv() => r,
                () = stop.cancelled() => return,
            };
            match received {
                Ok(_) => {
                    // Coalesce a burst: whatever else already arrived rides on this nudge.
                    // (next_buffered does not wait; try_recv would.)
                    while listener.next_buffered().is_some() {}
                    if let Err(e) = queue.nudge("notify").await {
                        tracing::debug!(error = %e, "nudge after notification failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change-notification connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

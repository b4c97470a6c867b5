//! For Rust writers: commit, then nudge the queue, so the change is indexed in
//! milliseconds without waiting for the processes' watch of the database (or the scheduler's tick).
//!
//! The capture triggers already marked the rows inside the transaction, so the nudge is
//! only about *when*: if Redis is down the commit still succeeds and the marks are found by
//! the next sync.

use sqlx::{Postgres, Transaction};

use crate::workers::Queue;

pub async fn commit_and_nudge(tx: Transaction<'_, Postgres>, queue: &Queue) -> Result<(), sqlx::Error> {
    tx.commit().await?;
    if let Err(e) = queue.nudge("writer").await {
        tracing::warn!(error = %e, "committed, but could not nudge the queue; the processes' watch or the next tick syncs the change");
    }
    Ok(())
}

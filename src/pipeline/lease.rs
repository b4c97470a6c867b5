//! Lease renewal: while a batch ships (or a reindex chunk is written) its lease is extended
//! every third of `sync.lease`, so another worker never takes over marks still being worked
//! on. When a renewal finds fewer rows than the step holds, the lease was lost (the step
//! stalled past it and another worker took the marks over): `lost` fires, and the step
//! stops sending at once (protocol invariant 5 still guards what it acknowledges).
//!
//! If a renewal cannot reach the database, nothing is decided: the step's deadline
//! (`sync.batch_timeout`, with `batch_timeout + request_timeout <= lease`) ends every
//! request of it before its last renewed lease runs out.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::services::Services;

/// What a step holds a lease on.
#[derive(Clone, Debug)]
pub enum Held {
    /// Marks, by key.
    Marks(Vec<String>),
    /// One chunk of a build (its number).
    Chunk { build: i64, n: i32 },
}

/// A running renewal; stops when dropped.
pub struct Renewal {
    task: JoinHandle<()>,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews `owner`'s lease on `held` until the returned [`Renewal`] is dropped; cancels
/// `lost` if the lease turns out lost. The lease is checked before this returns (and
/// renewed if less than two thirds of it is left), so a step that stalled before it started
/// shipping learns it before it sends anything.
pub async fn renew(services: &Services, owner: &str, held: Held, lost: CancellationToken) -> Renewal {
    let (pool, lease, owner) = (services.pool.clone(), services.lease(), owner.to_string());
    let every = lease / 3;
    // The first check inline; the renewals in the background, every third of the lease.
    if let Ok(false) = first_check(&pool, &owner, &held, lease).await {
        tracing::warn!(owner = %owner, "lease lost before sending (the step stalled past it and another worker took over); sending nothing");
        lost.cancel();
        return Renewal { task: tokio::spawn(async {}) };
    }
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every.max(Duration::from_millis(50))).await;
            match extend(&pool, &owner, &held, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(owner = %owner, "lease lost (the step stalled past it and another worker took over); stopping this step's sends");
                    lost.cancel();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not renew a lease; the step's deadline ends it in time"),
            }
        }
    });
    Renewal { task }
}

/// Whether `owner` still holds all of `held`, before the step sends anything. Marks whose
/// lease has at least two thirds of it left (the claim set it a moment ago) are
/// only read, not renewed: the background renewal a third of the lease from now comes
/// well before they run out, and another worker cannot take marks over before that. Reading
/// 10,000 marks costs a fraction of locking and rewriting each (the renewal took about a
/// third of PostgreSQL's time on the sync path: BENCHMARKS.md §9). Marks with less left (a
/// step that stalled between its claim and its sending) are renewed here, as every chunk is.
async fn first_check(pool: &sqlx::PgPool, owner: &str, held: &Held, lease: Duration) -> Result<bool, sqlx::Error> {
    if let Held::Marks(ids) = held {
        let margin = lease - lease / 3;
        let (owned, fresh): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE lease_owner = $1),
                    count(*) FILTER (WHERE lease_owner = $1 AND lease_until > clock_timestamp() + $3 * interval '1 millisecond')
               FROM tidemark.marks WHERE key = ANY($2)",
        )
        .bind(owner)
        .bind(ids)
        .bind(margin.as_millis() as f64)
        .fetch_one(pool)
        .await?;
        if owned as usize != ids.len() {
            return Ok(false);
        }
        if fresh == owned {
            return Ok(true);
        }
    }
    extend(pool, owner, held, lease).await
}

/// Extends the lease; `false` when `owner` no longer holds all of `held`.
async fn extend(pool: &sqlx::PgPool, owner: &str, held: &Held, lease: Duration) -> Result<bool, sqlx::Error> {
    let millis = lease.as_millis() as f64;
    match held {
        Held::Marks(ids) => {
            // Rows locked in key order, as every other writer of marks locks them: none of
            // them deadlocks with the renewal. The locking sub-select is an uncorrelated
            // ARRAY(...), run once: as a joined sub-select it could be planned as the inner
            // side of a nested loop (when the statistics say the marks are few) and scanned
            // again for every mark, minutes for a batch of 10,000 (claim.rs, `release`).
            let r = sqlx::query(
                "UPDATE tidemark.marks SET lease_until = clock_timestamp() + $3 * interval '1 millisecond'
                  WHERE key = ANY(ARRAY(SELECT key FROM tidemark.marks
                                         WHERE lease_owner = $1 AND key = ANY($2) ORDER BY key FOR UPDATE))",
            )
            .bind(owner)
            .bind(ids)
            .bind(millis)
            .execute(pool)
            .await?;
            Ok(r.rows_affected() as usize == ids.len())
        }
        Held::Chunk { build, n } => {
            let r = sqlx::query(
                "UPDATE tidemark.reindex_chunks SET lease_until = clock_timestamp() + $4 * interval '1 millisecond'
                  WHERE reindex_id = $1 AND n = $2 AND lease_owner = $3",
            )
            .bind(build)
            .bind(n)
            .bind(owner)
            .bind(millis)
            .execute(pool)
            .await?;
            Ok(r.rows_affected() == 1)
        }
    }
}

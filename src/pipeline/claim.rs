//! Claim: take a batch of marks without blocking other workers, and draw the version.
//!
//! `FOR UPDATE SKIP LOCKED` keeps concurrent claimers off each other's rows while the claim
//! runs; the lease written by the claim keeps them off afterwards, until it runs out (which
//! is how a crashed worker's marks come back).

use std::time::Duration;

use sqlx::{PgExecutor, PgPool};

use super::Mark;

/// Moves up to `limit` changes from the writers' log (`tidemark.changes`, oldest first) into
/// the marks, in one transaction, and returns how many log rows it moved.
///
/// Writers append to the log (an insert, no row anyone else locks: migration 0009); marks
/// coalesce here. A document's moved changes become one mark carrying the highest of their
/// numbers, *replacing* the number of a mark already there (never keeping the larger): a
/// batch that claimed that mark before this change committed then fails its conditional
/// acknowledgement and the document is written again, whether the new number is higher or
/// lower than the claimed one (docs/protocol.md, rule 17). Concurrent movers take disjoint
/// rows (`SKIP LOCKED`) and lock marks in id order, as every other writer of marks does.
pub async fn absorb(db: impl PgExecutor<'_>, limit: i64) -> Result<u64, sqlx::Error> {
    let moved: i64 = sqlx::query_scalar(
        "WITH taken AS (
             DELETE FROM tidemark.changes
              WHERE ctid = ANY(ARRAY(SELECT ctid FROM tidemark.changes ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED))
          RETURNING key, seq, marked_at
         ), marked AS (
             INSERT INTO tidemark.marks AS d (key, seq, marked_at)
             SELECT key, max(seq), min(marked_at) FROM taken GROUP BY key ORDER BY key
             ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq, marked_at = least(d.marked_at, EXCLUDED.marked_at)
         )
         SELECT count(*) FROM taken",
    )
    .bind(limit)
    .fetch_one(db)
    .await?;
    Ok(moved as u64)
}

/// Claims up to `limit` unleased marks, oldest number first, for `owner` until `lease` ends.
pub async fn claim_marks(db: impl PgExecutor<'_>, owner: &str, lease: Duration, limit: i64) -> Result<Vec<Mark>, sqlx::Error> {
    // The candidates are picked by an uncorrelated ARRAY(...) sub-select, which PostgreSQL
    // runs exactly once. (A `FROM (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` join may be
    // re-scanned per outer row, each re-scan skipping the rows just locked — and so
    // claim far more than n.)
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "UPDATE tidemark.marks
            SET lease_owner = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond'
          WHERE key = ANY(ARRAY(
                SELECT key FROM tidemark.marks
                 WHERE lease_until IS NULL OR lease_until < clock_timestamp()
                 ORDER BY seq
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED))
      RETURNING key, seq",
    )
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(key, seq)| Mark { key, seq }).collect())
}

/// Draws the version for one processing, from the marks' own sequence, *before* the
/// snapshot the documents are read from (docs/design.md, "Why the version is taken by the
/// reader"). Must be called after the claim and before [`super::load`].
pub async fn draw_version(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT nextval('tidemark.seq')").fetch_one(db).await
}

/// Gives back the leases this owner still holds on these students, so the marks that
/// were not acknowledged can be claimed again at once.
pub async fn release(db: impl PgExecutor<'_>, owner: &str, ids: &[String]) -> Result<u64, sqlx::Error> {
    // Rows locked in id order, as the capture triggers lock them (no deadlock with a writer),
    // by an uncorrelated ARRAY(...) sub-select that runs once. Joined instead (`FROM (SELECT
    // … FOR UPDATE) s WHERE d.key = s.key`), it was planned as a nested loop scanning the
    // sub-select again for every mark when the statistics said the marks table was empty,
    // as a queue table's often do: minutes of CPU for 10,000 marks.
    let r = sqlx::query(
        "UPDATE tidemark.marks SET lease_owner = NULL, lease_until = NULL
          WHERE key = ANY(ARRAY(SELECT key FROM tidemark.marks
                                 WHERE key = ANY($1) AND lease_owner = $2 ORDER BY key FOR UPDATE))",
    )
    .bind(ids)
    .bind(owner)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// Gives back every lease the steps of one process hold (lease owners `<identity>#<n>`):
/// a stopping worker's last act, and what a worker does for the steps a lost queue cut short.
pub async fn release_all(pool: &PgPool, identity: &str) -> Result<u64, sqlx::Error> {
    let prefix = format!("{identity}#");
    let a = sqlx::query(
        "UPDATE tidemark.marks SET lease_owner = NULL, lease_until = NULL
          WHERE key = ANY(ARRAY(SELECT key FROM tidemark.marks
                                 WHERE starts_with(lease_owner, $1) ORDER BY key FOR UPDATE))",
    )
    .bind(&prefix)
    .execute(pool)
    .await?;
    let b = sqlx::query("UPDATE tidemark.parents SET lease_owner = NULL, lease_until = NULL WHERE starts_with(lease_owner, $1)")
        .bind(&prefix)
        .execute(pool)
        .await?;
    let c = sqlx::query(
        "UPDATE tidemark.reindex_chunks SET lease_owner = NULL, lease_until = NULL WHERE starts_with(lease_owner, $1) AND NOT done",
    )
    .bind(&prefix)
    .execute(pool)
    .await?;
    Ok(a.rows_affected() + b.rows_affected() + c.rows_affected())
}

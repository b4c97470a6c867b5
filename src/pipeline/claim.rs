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
/// coalesce here. A student's moved changes become one mark carrying the highest of their
/// numbers, *replacing* the number of a mark already there (never keeping the larger): a
/// batch that claimed that mark before this change committed then fails its conditional
/// acknowledgement and the student is indexed again, whether the new number is higher or
/// lower than the claimed one (docs/protocol.md, rule 17). Concurrent movers take disjoint
/// rows (`SKIP LOCKED`) and lock marks in id order, as every other writer of marks does.
pub async fn absorb(db: impl PgExecutor<'_>, limit: i64) -> Result<u64, sqlx::Error> {
    let moved: i64 = sqlx::query_scalar(
        "WITH taken AS (
             DELETE FROM tidemark.changes
              WHERE ctid = ANY(ARRAY(SELECT ctid FROM tidemark.changes ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED))
          RETURNING student_id, seq, marked_at
         ), marked AS (
             INSERT INTO tidemark.dirty_students AS d (student_id, seq, marked_at)
             SELECT student_id, max(seq), min(marked_at) FROM taken GROUP BY student_id ORDER BY student_id
             ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq, marked_at = least(d.marked_at, EXCLUDED.marked_at)
         )
         SELECT count(*) FROM taken",
    )
    .bind(limit)
    .fetch_one(db)
    .await?;
    Ok(moved as u64)
}

/// Claims up to `limit` unleased marks, oldest number first, for `owner` until `lease` ends.
pub async fn claim_students(db: impl PgExecutor<'_>, owner: &str, lease: Duration, limit: i64) -> Result<Vec<Mark>, sqlx::Error> {
    // The candidates are picked by an uncorrelated ARRAY(...) sub-select, which PostgreSQL
    // runs exactly once. (A `FROM (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` join may be
    // re-scanned per outer row, each re-scan skipping the rows just locked — and so
    // claim far more than n.)
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "UPDATE tidemark.dirty_students
            SET lease_owner = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond'
          WHERE student_id = ANY(ARRAY(
                SELECT student_id FROM tidemark.dirty_students
                 WHERE lease_until IS NULL OR lease_until < clock_timestamp()
                 ORDER BY seq
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED))
      RETURNING student_id, seq",
    )
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(student_id, seq)| Mark { student_id, seq }).collect())
}

/// Draws the version for one processing, from the marks' own sequence, *before* the
/// snapshot the documents are read from (docs/design.md, "Why the version is taken by the
/// reader"). Must be called after the claim and before [`super::load`].
pub async fn draw_version(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT nextval('tidemark.seq')").fetch_one(db).await
}

/// Gives back the leases this owner still holds on these students, so the marks that
/// were not acknowledged can be claimed again at once.
pub async fn release(db: impl PgExecutor<'_>, owner: &str, ids: &[i64]) -> Result<u64, sqlx::Error> {
    // Rows locked in id order, as the capture triggers lock them (no deadlock with a writer).
    let r = sqlx::query(
        "UPDATE tidemark.dirty_students d SET lease_owner = NULL, lease_until = NULL
           FROM (SELECT student_id FROM tidemark.dirty_students
                  WHERE student_id = ANY($1) AND lease_owner = $2 ORDER BY student_id FOR UPDATE) s
          WHERE d.student_id = s.student_id",
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
        "UPDATE tidemark.dirty_students d SET lease_owner = NULL, lease_until = NULL
           FROM (SELECT student_id FROM tidemark.dirty_students
                  WHERE starts_with(lease_owner, $1) ORDER BY student_id FOR UPDATE) s
          WHERE d.student_id = s.student_id",
    )
    .bind(&prefix)
    .execute(pool)
    .await?;
    let b = sqlx::query("UPDATE tidemark.dirty_parents SET lease_owner = NULL, lease_until = NULL WHERE starts_with(lease_owner, $1)")
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

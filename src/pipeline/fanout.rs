//! Fan-out: a renamed university or course becomes marks on its students, in bounded
//! chunks that each commit with the expansion's cursor, so a crash resumes mid-way and a
//! 100,000-student university never needs one huge transaction.

use std::time::Duration;

use sqlx::PgPool;

/// A claimed university or course mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentMark {
    pub kind: String,
    pub parent_id: i64,
    pub seq: i64,
    /// Students with an id up to here are already marked for this `seq`.
    pub cursor: i64,
}

/// Claims one parent mark (the oldest unleased), or none.
pub async fn claim_parent(pool: &PgPool, owner: &str, lease: Duration) -> Result<Option<ParentMark>, sqlx::Error> {
    let row: Option<(String, i64, i64, i64)> = sqlx::query_as(
        // One candidate, picked once (see claim.rs on why not a FROM sub-select).
        "UPDATE tidemark.dirty_parents
            SET lease_owner = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond'
          WHERE ctid = (SELECT ctid FROM tidemark.dirty_parents
                         WHERE lease_until IS NULL OR lease_until < clock_timestamp()
                         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING kind, parent_id, seq, cursor",
    )
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(kind, parent_id, seq, cursor)| ParentMark { kind, parent_id, seq, cursor }))
}

/// What one expansion step did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Marked this many students and moved the cursor; more may follow.
    Marked(u64),
    /// The last chunk: the parent mark is gone.
    Finished(u64),
    /// The parent changed again while being expanded: its mark now has a new number and a
    /// reset cursor, and will be expanded afresh (by whoever claims it next).
    Restarted,
}

/// Marks the next `chunk` students of the parent, in one transaction with the cursor move.
pub async fn expand_step(pool: &PgPool, owner: &str, lease: Duration, parent: &mut ParentMark, chunk: i64) -> Result<Step, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = match parent.kind.as_str() {
        "university" => sqlx::query_scalar(
            "SELECT id FROM students WHERE university_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        ),
        _ => sqlx::query_scalar(
            "SELECT student_id FROM student_courses WHERE course_id = $1 AND student_id > $2 ORDER BY student_id LIMIT $3",
        ),
    }
    .bind(parent.parent_id)
    .bind(parent.cursor)
    .bind(chunk)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("SELECT tidemark.mark_students($1)").bind(&ids).execute(&mut *tx).await?;
    let last = (ids.len() as i64) < chunk;
    let moved = if last {
        sqlx::query("DELETE FROM tidemark.dirty_parents WHERE kind = $1 AND parent_id = $2 AND seq = $3")
            .bind(&parent.kind)
            .bind(parent.parent_id)
            .bind(parent.seq)
            .execute(&mut *tx)
            .await?
    } else {
        sqlx::query(
            "UPDATE tidemark.dirty_parents
                SET cursor = $4, lease_owner = $5, lease_until = clock_timestamp() + $6 * interval '1 millisecond'
              WHERE kind = $1 AND parent_id = $2 AND seq = $3",
        )
        .bind(&parent.kind)
        .bind(parent.parent_id)
        .bind(parent.seq)
        .bind(ids.last().copied().unwrap_or(parent.cursor))
        .bind(owner)
        .bind(lease.as_millis() as f64)
        .execute(&mut *tx)
        .await?
    };
    // The marks made are right whatever happened to the parent, so commit them either way.
    tx.commit().await?;
    if moved.rows_affected() == 0 {
        // Renamed again meanwhile: the trigger gave it a new number and cursor 0; release so
        // it is expanded from the start.
        sqlx::query(
            "UPDATE tidemark.dirty_parents SET lease_owner = NULL, lease_until = NULL
              WHERE kind = $1 AND parent_id = $2 AND lease_owner = $3",
        )
        .bind(&parent.kind)
        .bind(parent.parent_id)
        .bind(owner)
        .execute(pool)
        .await?;
        return Ok(Step::Restarted);
    }
    let n = ids.len() as u64;
    if last {
        Ok(Step::Finished(n))
    } else {
        parent.cursor = *ids.last().expect("a full chunk is not empty");
        Ok(Step::Marked(n))
    }
}

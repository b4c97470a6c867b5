//! Fan-out: a renamed university or course, or a set of students (what `mark_students` writes
//! for many students at once, e.g. a rollback's),
//! becomes marks on its students, in bounded chunks that each commit with the expansion's
//! cursor, so a crash resumes mid-way and a 100,000-student university never needs one
//! huge transaction.
//!
//! The three kinds of row in `tidemark.dirty_parents`:
//!
//! | kind | what changed | `cursor` |
//! | --- | --- | --- |
//! | `university` | its name: every student of it | highest student id already marked |
//! | `course` | its name: every student enrolled | highest student id already marked |
//! | `students` | a set of ids (migration 0005; `tidemark.mark_students`): the ids it holds | ids already marked |

use std::time::Duration;

use sqlx::PgPool;

use crate::retry::Backoff;

/// What a parent mark stands for. Stored as text (`tidemark.dirty_parents.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ParentKind {
    /// A university whose name changed: every student of it.
    University,
    /// A course whose name changed: every student enrolled.
    Course,
    /// A set of student ids (migration 0005; what `tidemark.mark_students` writes for many).
    Students,
}

impl std::fmt::Display for ParentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParentKind::University => "university",
            ParentKind::Course => "course",
            ParentKind::Students => "students",
        })
    }
}

/// A claimed university, course or statement-set mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentMark {
    pub kind: ParentKind,
    pub parent_id: i64,
    pub seq: i64,
    /// How far the expansion got for this `seq`: the highest student id marked (university,
    /// course), or the number of ids marked (statement set).
    pub cursor: i64,
    /// Drawn at the first claim, after the change committed: a student whose mark already
    /// carries a higher number is not re-marked (that mark's reader reads the change).
    pub expansion_seq: i64,
}

/// Claims one parent mark (the oldest unleased), or none.
pub async fn claim_parent(pool: &PgPool, owner: &str, lease: Duration) -> Result<Option<ParentMark>, sqlx::Error> {
    let row: Option<(ParentKind, i64, i64, i64, i64)> = sqlx::query_as(
        // One candidate, picked once (see claim.rs on why not a FROM sub-select). The row is
        // visible, so its change has committed: a number drawn now comes after it.
        "UPDATE tidemark.dirty_parents
            SET lease_owner = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond',
                expansion_seq = coalesce(expansion_seq, nextval('tidemark.seq'))
          WHERE ctid = (SELECT ctid FROM tidemark.dirty_parents
                         WHERE lease_until IS NULL OR lease_until < clock_timestamp()
                         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING kind, parent_id, seq, cursor, expansion_seq",
    )
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(kind, parent_id, seq, cursor, expansion_seq)| ParentMark { kind, parent_id, seq, cursor, expansion_seq }))
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
///
/// The marks go in id order, but a writer's transaction may mark students in any order over
/// several statements, so the two can deadlock; PostgreSQL then aborts one of them. When
/// it aborts this one, nothing of it happened: the chunk is done again (a few times, after
/// a short jittered pause), rather than failing the step.
pub async fn expand_step(pool: &PgPool, owner: &str, lease: Duration, parent: &mut ParentMark, chunk: i64) -> Result<Step, sqlx::Error> {
    const ATTEMPTS: u32 = 10;
    let mut attempt = 1;
    let (ids, last, cursor, moved) = loop {
        let mut tx = pool.begin().await?;
        match mark_chunk(&mut tx, owner, lease, parent, chunk).await {
            Ok(done) => {
                // The marks made are right whatever happened to the parent, so commit them either way.
                tx.commit().await?;
                break done;
            }
            Err(e) => {
                let _ = tx.rollback().await;
                if !crate::db::is_conflict(&e) || attempt == ATTEMPTS {
                    return Err(e);
                }
                tracing::debug!(attempt, error = %e, "fan-out chunk aborted by a conflict with a writer; doing it again");
                let pause = CONFLICT_RETRY.delay(attempt, &mut rand::thread_rng());
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        }
    };
    if moved == 0 {
        // Renamed again meanwhile: the trigger gave it a new number and cursor 0; release so
        // it is expanded from the start.
        sqlx::query(
            "UPDATE tidemark.dirty_parents SET lease_owner = NULL, lease_until = NULL
              WHERE kind = $1 AND parent_id = $2 AND lease_owner = $3",
        )
        .bind(parent.kind)
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
        parent.cursor = cursor;
        Ok(Step::Marked(n))
    }
}

/// The pause before a chunk aborted by a deadlock is done again.
const CONFLICT_RETRY: Backoff = Backoff { base: Duration::from_millis(20), cap: Duration::from_millis(500) };

/// One try at a chunk, inside `tx`: the ids marked, whether it was the last chunk, the new
/// cursor, and how many parent rows the cursor move found (0: the parent changed meanwhile).
async fn mark_chunk(
    tx: &mut sqlx::PgConnection,
    owner: &str,
    lease: Duration,
    parent: &ParentMark,
    chunk: i64,
) -> Result<(Vec<i64>, bool, i64, u64), sqlx::Error> {
    // Never make a writer wait long, nor let PostgreSQL pick a writer as a deadlock's victim:
    // a chunk that would wait on a writer's uncommitted mark gives up first (before the
    // deadlock check, 1 s by default) and is done again after the writer committed.
    sqlx::query("SET LOCAL lock_timeout = '200ms'").execute(&mut *tx).await?;
    let ids: Vec<i64> = match parent.kind {
        // A statement set: the next slice of its ids (in the order the statement wrote them).
        ParentKind::Students => sqlx::query_scalar::<_, Vec<i64>>(
            "SELECT coalesce(ids[($2 + 1)::int : ($2 + $3)::int], '{}') FROM tidemark.dirty_parents WHERE kind = 'students' AND parent_id = $1",
        )
        .bind(parent.parent_id)
        .bind(parent.cursor)
        .bind(chunk)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_default(),
        kind => sqlx::query_scalar(if kind == ParentKind::University {
            "SELECT id FROM students WHERE university_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        } else {
            "SELECT student_id FROM student_courses WHERE course_id = $1 AND student_id > $2 ORDER BY student_id LIMIT $3"
        })
        .bind(parent.parent_id)
        .bind(parent.cursor)
        .bind(chunk)
        .fetch_all(&mut *tx)
        .await?,
    };
    // Directly as marks (`mark_students` would turn a large chunk back into a set), leaving
    // marks made after the change committed as they are.
    sqlx::query("SELECT tidemark.mark_students_now($1, $2)").bind(&ids).bind(parent.expansion_seq).execute(&mut *tx).await?;
    let last = (ids.len() as i64) < chunk;
    let cursor =
        if parent.kind == ParentKind::Students { parent.cursor + ids.len() as i64 } else { ids.last().copied().unwrap_or(parent.cursor) };
    let moved = if last {
        sqlx::query("DELETE FROM tidemark.dirty_parents WHERE kind = $1 AND parent_id = $2 AND seq = $3")
            .bind(parent.kind)
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
        .bind(parent.kind)
        .bind(parent.parent_id)
        .bind(parent.seq)
        .bind(cursor)
        .bind(owner)
        .bind(lease.as_millis() as f64)
        .execute(&mut *tx)
        .await?
    };
    Ok((ids, last, cursor, moved.rows_affected()))
}

//! Fan-out: a changed row below the root of the model (a renamed university, an organism,
//! at any depth), or a set of root keys (what `tidemark.mark_keys` writes for many
//! documents at once, e.g. a rollback's), becomes marks on its documents, in bounded chunks
//! that each commit with the expansion's cursor, so a crash resumes mid-way and a
//! 100,000-document parent never needs one huge transaction.
//!
//! The rows of `tidemark.parents`:
//!
//! | `kind` | what changed | progress |
//! | --- | --- | --- |
//! | a place of the model (`university`, `organism_names.organism`) | the row `key` there: every document that contains it, found by the model's fan-out query | `cursor`: the last root key marked |
//! | `keys` | a set of root keys (`ids`) | `position`: how many are marked |

use std::time::Duration;

use sqlx::PgPool;

use crate::{model::Model, retry::Backoff};

/// The kind of a set of root keys (other kinds are places of the model).
pub const SET: &str = "keys";

/// A claimed parent mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentMark {
    /// A place of the model, or [`SET`].
    pub kind: String,
    /// The row's key there (a set's own number).
    pub key: String,
    pub seq: i64,
    /// How far the expansion got for this `seq`: the last root key marked (places).
    pub cursor: Option<String>,
    /// How many of a set's keys are marked.
    pub position: i32,
    /// Drawn at the first claim, after the change committed: a document whose mark already
    /// carries a higher number is not re-marked (that mark's reader reads the change).
    pub expansion_seq: i64,
}

/// Claims one parent mark (the oldest unleased), or none.
pub async fn claim_parent(pool: &PgPool, owner: &str, lease: Duration) -> Result<Option<ParentMark>, sqlx::Error> {
    let row: Option<(String, String, i64, Option<String>, i32, i64)> = sqlx::query_as(
        // One candidate, picked once (see claim.rs on why not a FROM sub-select). The row is
        // visible, so its change has committed: a number drawn now comes after it.
        "UPDATE tidemark.parents
            SET lease_owner = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond',
                expansion_seq = coalesce(expansion_seq, nextval('tidemark.seq'))
          WHERE ctid = (SELECT ctid FROM tidemark.parents
                         WHERE lease_until IS NULL OR lease_until < clock_timestamp()
                         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING kind, key, seq, cursor, position, expansion_seq",
    )
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(kind, key, seq, cursor, position, expansion_seq)| ParentMark { kind, key, seq, cursor, position, expansion_seq }))
}

/// What one expansion step did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Marked this many documents and moved the cursor; more may follow.
    Marked(u64),
    /// The last chunk: the parent mark is gone.
    Finished(u64),
    /// The parent changed again while being expanded: its mark now has a new number and a
    /// reset cursor, and will be expanded afresh (by whoever claims it next).
    Restarted,
}

/// Marks the next `chunk` documents of the parent, in one transaction with the cursor move.
/// A place the model does not have (the model changed since the mark was made) cannot be
/// expanded: its mark is dropped and a rebuild of the index requested, which covers it.
///
/// The marks go in key order, as every other writer of marks locks them; a conflict that
/// aborts the chunk anyway (a deadlock, a lock timeout) is done again a few times, after a
/// short jittered pause, rather than failing the step.
pub async fn expand_step(
    pool: &PgPool,
    model: &Model,
    owner: &str,
    lease: Duration,
    parent: &mut ParentMark,
    chunk: i64,
) -> Result<Step, sqlx::Error> {
    if parent.kind != SET && model.fanout(&parent.kind).is_none() {
        let mut tx = pool.begin().await?;
        sqlx::query("DELETE FROM tidemark.parents WHERE kind = $1 AND key = $2")
            .bind(&parent.kind)
            .bind(&parent.key)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO tidemark.resync_requests (reason) VALUES ($1)")
            .bind(format!("a change at `{}`, which model {} does not have", parent.kind, model.name))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::warn!(kind = %parent.kind, model = %model.name, "a parent mark of another model: a rebuild is requested instead");
        return Ok(Step::Finished(0));
    }
    const ATTEMPTS: u32 = 10;
    let mut attempt = 1;
    let (ids, last, cursor, position, moved) = loop {
        let mut tx = pool.begin().await?;
        match mark_chunk(&mut tx, model, owner, lease, parent, chunk).await {
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
            "UPDATE tidemark.parents SET lease_owner = NULL, lease_until = NULL
              WHERE kind = $1 AND key = $2 AND lease_owner = $3",
        )
        .bind(&parent.kind)
        .bind(&parent.key)
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
        parent.position = position;
        Ok(Step::Marked(n))
    }
}

/// The pause before a chunk aborted by a deadlock is done again.
const CONFLICT_RETRY: Backoff = Backoff { base: Duration::from_millis(20), cap: Duration::from_millis(500) };

/// One try at a chunk, inside `tx`: the keys marked, whether it was the last chunk, the new
/// cursor and position, and how many parent rows the move found (0: it changed meanwhile).
async fn mark_chunk(
    tx: &mut sqlx::PgConnection,
    model: &Model,
    owner: &str,
    lease: Duration,
    parent: &ParentMark,
    chunk: i64,
) -> Result<(Vec<String>, bool, Option<String>, i32, u64), sqlx::Error> {
    // Never make anyone wait long: a chunk that would wait on another transaction's lock
    // gives up first (before the deadlock check, 1 s by default) and is done again.
    sqlx::query("SET LOCAL lock_timeout = '200ms'").execute(&mut *tx).await?;
    let ids: Vec<String> = if parent.kind == SET {
        // A set: the next slice of its keys.
        sqlx::query_scalar::<_, Vec<String>>(
            "SELECT coalesce(ids[($2 + 1)::int : ($2 + $3)::int], '{}') FROM tidemark.parents WHERE kind = 'keys' AND key = $1",
        )
        .bind(&parent.key)
        .bind(parent.position)
        .bind(chunk)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_default()
    } else {
        let q = model.fanout(&parent.kind).expect("checked by the caller");
        sqlx::query_scalar(q).bind(&parent.key).bind(&parent.cursor).bind(chunk).fetch_all(&mut *tx).await?
    };
    // Directly as marks (`mark_keys` would turn a large chunk back into a set), leaving
    // marks made after the change committed as they are.
    sqlx::query("SELECT tidemark.mark_now($1, $2)").bind(&ids).bind(parent.expansion_seq).execute(&mut *tx).await?;
    let last = (ids.len() as i64) < chunk;
    let (cursor, position) = if parent.kind == SET {
        (None, parent.position + ids.len() as i32)
    } else {
        (ids.last().cloned().or_else(|| parent.cursor.clone()), 0)
    };
    let moved = if last {
        sqlx::query("DELETE FROM tidemark.parents WHERE kind = $1 AND key = $2 AND seq = $3")
            .bind(&parent.kind)
            .bind(&parent.key)
            .bind(parent.seq)
            .execute(&mut *tx)
            .await?
    } else {
        sqlx::query(
            "UPDATE tidemark.parents
                SET cursor = $4, position = $5, lease_owner = $6, lease_until = clock_timestamp() + $7 * interval '1 millisecond'
              WHERE kind = $1 AND key = $2 AND seq = $3",
        )
        .bind(&parent.kind)
        .bind(&parent.key)
        .bind(parent.seq)
        .bind(&cursor)
        .bind(position)
        .bind(owner)
        .bind(lease.as_millis() as f64)
        .execute(&mut *tx)
        .await?
    };
    Ok((ids, last, cursor, position, moved.rows_affected()))
}

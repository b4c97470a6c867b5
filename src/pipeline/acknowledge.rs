//! Acknowledge: clear a mark only if it still carries the number claimed (protocol
//! invariant 5), dead-letter what the index refused for good, and give back the rest.
//!
//! A change that landed while the batch was in flight re-numbered its mark, so the
//! conditional delete leaves it, and it is indexed again by a later batch.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;

use super::{classify::ItemOutcome, Mark};

/// The verdict on one student, over every index the batch wrote to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every target holds this write or a newer one.
    Done,
    /// Some target refused it for good.
    Dead { status: u16, reason: String },
    /// Some target still failed transiently after the retries: keep the mark.
    Later,
}

/// Folds per-op outcomes (one per student per target) into one verdict per student.
pub fn verdicts(ops: impl IntoIterator<Item = (String, Option<ItemOutcome>)>) -> HashMap<String, Verdict> {
    let mut out: HashMap<String, Verdict> = HashMap::new();
    for (id, outcome) in ops {
        let v = match outcome {
            Some(ItemOutcome::Written | ItemOutcome::Superseded) => Verdict::Done,
            Some(ItemOutcome::Permanent { status, reason }) => Verdict::Dead { status, reason },
            Some(ItemOutcome::Transient(_)) | None => Verdict::Later,
        };
        let slot = out.entry(id).or_insert(Verdict::Done);
        // Dead beats Later beats Done.
        let rank = |v: &Verdict| match v {
            Verdict::Done => 0,
            Verdict::Later => 1,
            Verdict::Dead { .. } => 2,
        };
        if rank(&v) > rank(slot) {
            *slot = v;
        }
    }
    out
}

#[derive(Debug, Default, PartialEq)]
pub struct Acked {
    /// Marks cleared.
    pub cleared: u64,
    /// Marks kept because a newer change re-numbered them while the batch was in flight.
    pub changed_in_flight: u64,
    /// Students dead-lettered.
    pub dead: u64,
    /// Students left dirty for a later try (transient failures).
    pub later: u64,
    /// For each cleared mark, the seconds from its change's commit to now.
    pub waited: Vec<f64>,
}

pub async fn acknowledge(pool: &PgPool, owner: &str, marks: &[Mark], verdicts: &HashMap<String, Verdict>) -> Result<Acked, sqlx::Error> {
    let mut done = (Vec::new(), Vec::new());
    let mut dead = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut acked = Acked::default();
    for m in marks {
        match verdicts.get(&m.key).unwrap_or(&Verdict::Later) {
            Verdict::Done => {
                done.0.push(m.key.clone());
                done.1.push(m.seq);
            }
            Verdict::Dead { status, reason } => {
                dead.0.push(m.key.clone());
                dead.1.push(m.seq);
                dead.2.push(i32::from(*status));
                dead.3.push(reason.clone());
            }
            Verdict::Later => acked.later += 1,
        }
    }
    // Clear done and dead marks, each only under its claimed number, and forget the dead
    // letters of documents that now index fine: one statement, so one round trip and atomic
    // on its own. Only a batch with refused documents needs a transaction, to record them
    // together with clearing their marks.
    let ids: Vec<String> = done.0.iter().chain(&dead.0).cloned().collect();
    let seqs: Vec<i64> = done.1.iter().chain(&dead.1).copied().collect();
    // Each cleared mark also says how long its change waited (the database's clock on both
    // ends): commit → acknowledged, the freshness this batch delivered.
    let clear = sqlx::query_as::<_, (String, f64)>(
        // The marks are locked in id order first, as the capture triggers lock them, so a
        // writer re-marking these students meanwhile waits and never deadlocks with us: the
        // sorted (key, number) pairs drive the lookups (a LATERAL sub-select is always the
        // inner side, one index probe a pair), and the locked keys go to the DELETE as an
        // array computed once. A plain join of the marks with the pairs could be planned
        // with the marks outside (when the statistics say the table is empty, as a queue
        // table's often do) and read every pair again for every mark: minutes for 10,000.
        "WITH gone AS (
             DELETE FROM tidemark.marks
              WHERE key = ANY(ARRAY(
                    SELECT m.key FROM (SELECT * FROM unnest($1::text[], $2::bigint[]) AS u(key, seq) ORDER BY key) a
                     CROSS JOIN LATERAL (SELECT d.key FROM tidemark.marks d WHERE d.key = a.key AND d.seq = a.seq FOR UPDATE) m))
          RETURNING key, extract(epoch FROM clock_timestamp() - marked_at)::float8 AS waited),
         healed AS (DELETE FROM tidemark.dead_letters WHERE key = ANY($3))
         SELECT key, waited FROM gone",
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(&done.0);
    let gone: Vec<(String, f64)> = if ids.is_empty() {
        Vec::new()
    } else if dead.0.is_empty() {
        clear.fetch_all(pool).await?
    } else {
        let mut tx = pool.begin().await?;
        record_dead(&mut tx, &dead.0, &dead.2, &dead.3).await?;
        acked.dead = dead.0.len() as u64;
        let gone = clear.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        gone
    };
    acked.cleared = gone.len() as u64;
    acked.changed_in_flight = (ids.len() - gone.len()) as u64;
    acked.waited = gone.iter().map(|(_, w)| *w).collect();
    // Whatever is left (re-numbered in flight, or to retry later) is given back at once.
    let cleared: HashSet<String> = gone.into_iter().map(|(id, _)| id).collect();
    let left: Vec<String> = marks.iter().map(|m| m.key.clone()).filter(|id| !cleared.contains(id)).collect();
    if !left.is_empty() {
        super::claim::release(pool, owner, &left).await?;
    }
    Ok(acked)
}

async fn record_dead(conn: &mut sqlx::PgConnection, ids: &[String], statuses: &[i32], reasons: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tidemark.dead_letters AS d (key, status, error)
         SELECT * FROM unnest($1::text[], $2::int[], $3::text[])
         ON CONFLICT (key) DO UPDATE
            SET status = EXCLUDED.status, error = EXCLUDED.error,
                attempts = d.attempts + 1, last_failed_at = now()",
    )
    .bind(ids)
    .bind(statuses)
    .bind(reasons)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Records documents refused for good outside a sync batch (a reindex chunk has no marks).
pub async fn dead_letter(pool: &PgPool, dead: &[(String, i32, String)]) -> Result<(), sqlx::Error> {
    let ids: Vec<String> = dead.iter().map(|d| d.0.clone()).collect();
    let statuses: Vec<i32> = dead.iter().map(|d| d.1).collect();
    let reasons: Vec<String> = dead.iter().map(|d| d.2.clone()).collect();
    let mut conn = pool.acquire().await?;
    record_dead(&mut conn, &ids, &statuses, &reasons).await
}

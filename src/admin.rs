//! Admin: status, dead letters, and retrying them. Nothing here prints credentials: the
//! status shows service addresses only through [`crate::config::redact_url`].

use serde::Serialize;
use sqlx::PgPool;

use crate::{
    catalog::{Build, WorkerRow, HEARTBEAT_FRESH},
    services::Services,
    workers::Queue,
};

/// A snapshot of the sync's health.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Students whose document is not in the index yet.
    pub outstanding_marks: i64,
    /// Of those, claimed by a worker right now.
    pub in_flight: i64,
    /// Seconds since the oldest change not yet indexed (0 when all is indexed): the
    /// freshness lag.
    pub lag_seconds: f64,
    /// Universities and courses whose students are still being marked.
    pub pending_fanouts: i64,
    /// Students of sets (what `mark_keys` writes for many, e.g. a rollback's) not yet
    /// expanded into marks.
    pub pending_statement_students: i64,
    pub dead_letters: i64,
    pub alias: String,
    /// The physical indices behind the alias (empty: not created yet).
    pub indices: Vec<String>,
    /// Documents in the index (None when the search server could not be asked).
    pub documents: Option<u64>,
    /// Sync jobs waiting in Redis (None when Redis could not be asked).
    pub queue_depth: Option<u64>,
    /// The running full reindex, or else the last one.
    pub reindex: Option<Build>,
    /// Worker processes whose heartbeat is recent (`tidemark.workers`).
    pub live_workers: i64,
    /// Every worker process that reported, alive or not (most recent first).
    pub workers: Vec<WorkerRow>,
    /// Problems met while gathering the status (a service down).
    pub problems: Vec<String>,
}

/// How far the index is behind the database: what `admin status` shows first and what the
/// search page's footer shows, from this one function.
#[derive(Clone, Debug, Serialize)]
pub struct Freshness {
    /// Students whose document is not in the index yet.
    pub outstanding_marks: i64,
    /// Of those, claimed by a worker right now.
    pub in_flight: i64,
    /// Seconds since the oldest change not yet indexed (0 when all is indexed).
    pub lag_seconds: f64,
    /// Universities and courses whose students are still being marked.
    pub pending_fanouts: i64,
    /// Students of sets not yet expanded into marks.
    pub pending_statement_students: i64,
}

/// Reads the [`Freshness`] from tidemark's tables (two small aggregates).
pub async fn freshness(pool: &PgPool) -> Result<Freshness, sqlx::Error> {
    let (outstanding_marks, in_flight, lag_marks): (i64, i64, Option<f64>) = sqlx::query_as(
        // Marks, and the writers' changes not yet moved into them (a document may be both).
        "SELECT (SELECT count(DISTINCT key) FROM tidemark.outstanding),
                count(*) FILTER (WHERE lease_until > clock_timestamp()),
                extract(epoch FROM clock_timestamp() - (SELECT min(marked_at) FROM tidemark.outstanding))::float8
           FROM tidemark.marks",
    )
    .fetch_one(pool)
    .await?;
    let (pending_fanouts, pending_statement_students, lag_parents): (i64, i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind <> 'keys'),
                coalesce(sum(cardinality(ids) - position) FILTER (WHERE kind = 'keys'), 0)::int8,
                extract(epoch FROM clock_timestamp() - min(marked_at))::float8
           FROM tidemark.parents",
    )
    .fetch_one(pool)
    .await?;
    Ok(Freshness {
        outstanding_marks,
        in_flight,
        lag_seconds: lag_marks.into_iter().chain(lag_parents).fold(0.0, f64::max),
        pending_fanouts,
        pending_statement_students,
    })
}

/// Gathers the status. A search server or Redis that does not answer is a problem listed in
/// the status, not an error: the database's half is still worth showing.
/// `queue` is the connected queue, or why it could not be reached.
pub async fn status(services: &Services, queue: Result<&Queue, String>) -> Result<Status, sqlx::Error> {
    let (pool, search, alias) = (&services.pool, &services.search, &services.config.index_alias);
    let Freshness { outstanding_marks, in_flight, lag_seconds, pending_fanouts, pending_statement_students } = freshness(pool).await?;
    let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM tidemark.dead_letters").fetch_one(pool).await?;
    let mut problems = Vec::new();
    let (indices, documents) = match search.alias_targets(alias).await {
        Ok(indices) if indices.is_empty() => (indices, None),
        Ok(indices) => match search.count(alias).await {
            Ok(n) => (indices, Some(n)),
            Err(e) => {
                problems.push(e.to_string());
                (indices, None)
            }
        },
        Err(e) => {
            problems.push(e.to_string());
            (Vec::new(), None)
        }
    };
    let queue_depth = match queue {
        Ok(q) => match q.depth().await {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        },
        Err(reason) => {
            problems.push(reason);
            None
        }
    };
    match crate::sync::sequence_behind(services).await {
        Ok(Some((index_version, sequence))) => {
            problems.push(crate::sync::SyncError::SequenceBehind { index_version, sequence }.to_string())
        }
        Ok(None) => {}
        Err(e) => problems.push(format!("could not compare the sequence with the index: {e}")),
    }
    let reindex = crate::catalog::latest(pool, alias).await?;
    let model = &services.model;
    let installed: Option<(String, String)> = sqlx::query_as("SELECT name, fingerprint FROM tidemark.model").fetch_optional(pool).await?;
    match installed {
        Some((_, fingerprint)) if fingerprint == model.fingerprint => {}
        Some((name, _)) => problems.push(format!(
            "the capture installed in the database is of model {name} as it was when `tidemark migrate` last ran, not of model {} as it is now: run `tidemark migrate`",
            model.name
        )),
        None => problems.push("no model's capture is installed: run `tidemark migrate`".into()),
    }
    let live_model: Option<Option<String>> = sqlx::query_scalar(
        "SELECT model FROM tidemark.reindexes WHERE alias = $1 AND state = 'done' AND target_index = ANY($2) ORDER BY id DESC LIMIT 1",
    )
    .bind(alias)
    .bind(&indices)
    .fetch_optional(pool)
    .await?;
    if let Some(Some(built)) = live_model {
        if built != model.fingerprint {
            problems.push(format!(
                "the live index was built from another model (or another version of model {}): its documents and mapping are not the model's; `tidemark admin reindex` rebuilds it",
                model.name
            ));
        }
    }
    let workers: Vec<WorkerRow> = sqlx::query_as(
        "SELECT identity, started_at, seen_at, last_batch_at, batches, seen_at > now() - $1 * interval '1 millisecond' AS alive
           FROM tidemark.workers ORDER BY seen_at DESC LIMIT 50",
    )
    .bind(HEARTBEAT_FRESH.as_millis() as f64)
    .fetch_all(pool)
    .await?;
    let live_workers = workers.iter().filter(|w| w.alive).count() as i64;
    Ok(Status {
        reindex,
        outstanding_marks,
        in_flight,
        lag_seconds,
        pending_fanouts,
        pending_statement_students,
        dead_letters,
        alias: alias.clone(),
        indices,
        documents,
        queue_depth,
        live_workers,
        workers,
        problems,
    })
}

impl Status {
    /// The status as metrics (published by the elected scheduler).
    pub fn gauges(&self) -> crate::telemetry::DbGauges {
        let active = self.reindex.as_ref().filter(|b| b.is_active());
        crate::telemetry::DbGauges {
            marks_outstanding: self.outstanding_marks + self.pending_statement_students,
            marks_in_flight: self.in_flight,
            oldest_mark_age_seconds: self.lag_seconds,
            fanouts_pending: self.pending_fanouts,
            dead_letters: self.dead_letters,
            queue_depth: self.queue_depth,
            workers_live: self.live_workers,
            reindex_active: active.is_some(),
            reindex_progress_ratio: active.map_or(0.0, |b| {
                if b.docs_total > 0 {
                    (b.docs_done as f64 / b.docs_total as f64).min(1.0)
                } else {
                    1.0
                }
            }),
        }
    }

    /// The human table.
    pub fn render(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "unknown".to_string(), |n| n.to_string());
        let rows = [
            ("outstanding marks", self.outstanding_marks.to_string()),
            ("  in flight", self.in_flight.to_string()),
            ("freshness lag", format!("{:.1}s", self.lag_seconds)),
            ("pending fan-outs", self.pending_fanouts.to_string()),
            ("documents in sets", self.pending_statement_students.to_string()),
            ("dead letters", self.dead_letters.to_string()),
            ("alias", self.alias.clone()),
            ("index", if self.indices.is_empty() { "(none yet)".to_string() } else { self.indices.join(", ") }),
            ("documents", opt(self.documents)),
            ("queue depth", opt(self.queue_depth)),
            ("live workers", self.live_workers.to_string()),
        ];
        let mut out = String::new();
        let reindex = self.reindex.as_ref().map(|b| {
            let pct = if b.docs_total > 0 { 100 * b.docs_done / b.docs_total } else { 100 };
            if b.is_active() {
                format!(
                    "#{} {} {}: {}/{} documents ({pct}%), {}/{} chunks",
                    b.id, b.state, b.target_index, b.docs_done, b.docs_total, b.chunks_done, b.chunks_total
                )
            } else {
                let when = b.finished_at.unwrap_or(b.started_at).format("%Y-%m-%d %H:%M:%S UTC");
                format!(
                    "#{} {} {} at {when}{}",
                    b.id,
                    b.state,
                    b.target_index,
                    b.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
                )
            }
        });
        let rows = rows.into_iter().chain(reindex.map(|r| ("reindex", r)));
        for (k, v) in rows {
            out.push_str(&format!("{k:<20} {v}\n"));
        }
        for w in self.workers.iter().filter(|w| w.alive) {
            let last = w.last_batch_at.map_or("no batch yet".to_string(), |t| format!("last batch {}", t.format("%H:%M:%S UTC")));
            out.push_str(&format!("  worker {}  {} batches, {last}\n", w.identity, w.batches));
        }
        for p in &self.problems {
            out.push_str(&format!("problem: {p}\n"));
        }
        out
    }
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    /// The document's key.
    pub key: String,
    pub status: Option<i32>,
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: chrono::DateTime<chrono::Utc>,
    pub last_failed_at: chrono::DateTime<chrono::Utc>,
}

/// The dead letters as a table for people.
pub fn render_failed(rows: &[DeadLetter]) -> String {
    if rows.is_empty() {
        return "no dead letters\n".into();
    }
    let mut out = format!("{:>10}  {:>6}  {:>8}  {:<20}  reason\n", "key", "status", "attempts", "last failed");
    for r in rows {
        out.push_str(&format!(
            "{:>10}  {:>6}  {:>8}  {:<20}  {}\n",
            r.key,
            r.status.map_or("-".into(), |s| s.to_string()),
            r.attempts,
            r.last_failed_at.format("%Y-%m-%d %H:%M:%S"),
            r.error
        ));
    }
    out
}

pub async fn failed(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT key, status, error, attempts, first_failed_at, last_failed_at
           FROM tidemark.dead_letters ORDER BY last_failed_at DESC, key LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Re-marks every dead letter (or the given keys) so the next sync tries them again.
/// The dead-letter rows stay until their document is indexed, so a second failure is
/// counted on the same row.
pub async fn retry_failed(pool: &PgPool, only: Option<&[String]>) -> Result<u64, sqlx::Error> {
    let ids: Vec<String> = match only {
        Some(ids) => sqlx::query_scalar("SELECT key FROM tidemark.dead_letters WHERE key = ANY($1)").bind(ids).fetch_all(pool).await?,
        None => sqlx::query_scalar("SELECT key FROM tidemark.dead_letters").fetch_all(pool).await?,
    };
    sqlx::query("SELECT tidemark.mark_keys($1)").bind(&ids).execute(pool).await?;
    Ok(ids.len() as u64)
}

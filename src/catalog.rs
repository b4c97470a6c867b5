//! The catalog: tidemark's own records in PostgreSQL — the full rebuilds of an alias
//! (builds: which physical index each built, what it replaced, how it ended), and the
//! worker processes (their heartbeats). The pipeline asks it which index a batch must also
//! write to; reindex keeps the builds; workers keep their heartbeats.

use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};

/// Where a build is. Stored as text (`tidemark.reindexes.state`), parsed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    /// Chunks are being written into the new index.
    Building,
    /// Every chunk is in; the new index is being checked before the alias moves.
    Verifying,
    /// Verified, and the alias moved to it.
    Done,
    /// Verification refused it, or its index vanished; the alias never moved.
    Failed,
    /// Abandoned by `admin reindex --cancel` (or by a TRUNCATE that started afresh).
    Cancelled,
    /// Was live, then `admin rollback` moved the alias back to the index it replaced.
    RolledBack,
}

impl BuildState {
    /// Building or verifying: the build still receives writes.
    pub fn is_active(self) -> bool {
        matches!(self, BuildState::Building | BuildState::Verifying)
    }
}

impl std::fmt::Display for BuildState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BuildState::Building => "building",
            BuildState::Verifying => "verifying",
            BuildState::Done => "done",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
            BuildState::RolledBack => "rolled_back",
        })
    }
}

/// A build as stored, with its progress.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Build {
    pub id: i64,
    pub alias: String,
    pub target_index: String,
    pub previous_index: Option<String>,
    pub state: BuildState,
    pub reason: String,
    pub chunk_size: i32,
    pub docs_total: i64,
    pub message: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A failed build: no automatic rebuild starts before this.
    pub retry_after: Option<chrono::DateTime<chrono::Utc>>,
    pub chunks_total: i64,
    pub chunks_done: i64,
    pub docs_done: i64,
}

impl Build {
    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }
}

const SELECT_BUILD: &str = "SELECT r.id, r.alias, r.target_index, r.previous_index, r.state, r.reason, r.chunk_size,
        r.docs_total, r.message, r.started_at, r.finished_at, r.retry_after,
        (SELECT count(*) FROM tidemark.reindex_chunks c WHERE c.reindex_id = r.id) AS chunks_total,
        (SELECT count(*) FROM tidemark.reindex_chunks c WHERE c.reindex_id = r.id AND c.done) AS chunks_done,
        (SELECT coalesce(sum(docs), 0)::bigint FROM tidemark.reindex_chunks c WHERE c.reindex_id = r.id AND c.done) AS docs_done
   FROM tidemark.reindexes r";

/// The running build of `alias`, if any.
pub async fn active(db: impl PgExecutor<'_>, alias: &str) -> Result<Option<Build>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_BUILD} WHERE r.alias = $1 AND r.state IN ('building', 'verifying')"))
        .bind(alias)
        .fetch_optional(db)
        .await
}

/// The most recent build of `alias`, whatever its state.
pub async fn latest(db: impl PgExecutor<'_>, alias: &str) -> Result<Option<Build>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_BUILD} WHERE r.alias = $1 ORDER BY r.id DESC LIMIT 1")).bind(alias).fetch_optional(db).await
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Build, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_BUILD} WHERE r.id = $1")).bind(id).fetch_one(db).await
}

/// Records how a build ended (failed, cancelled), with the reason shown to operators.
pub async fn end(db: impl PgExecutor<'_>, id: i64, state: BuildState, message: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tidemark.reindexes SET state = $2, message = $3, finished_at = now() WHERE id = $1")
        .bind(id)
        .bind(state)
        .bind(message)
        .execute(db)
        .await
        .map(|_| ())
}

/// Serialises index creation and alias moves of one alias across every worker and admin,
/// until the transaction ends.
pub async fn lock(tx: &mut PgConnection, alias: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tidemark.index.' || $1))").bind(alias).execute(tx).await.map(|_| ())
}

/// Like [`lock`], but gives up at once: `false` when someone else holds it.
pub async fn try_lock(tx: &mut PgConnection, alias: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('tidemark.index.' || $1))").bind(alias).fetch_one(tx).await
}

/// The write alias of the index being built. Writes go through aliases with
/// `require_alias`, so a write can never auto-create an index that was deleted meanwhile
/// (with a guessed mapping): it fails, and is retried against fresh targets.
pub fn build_alias(alias: &str) -> String {
    format!("{alias}_building")
}

/// A worker process as its heartbeats describe it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    pub identity: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub seen_at: chrono::DateTime<chrono::Utc>,
    /// When it last finished a sync batch.
    pub last_batch_at: Option<chrono::DateTime<chrono::Utc>>,
    pub batches: i64,
    /// Its heartbeat is recent ([`HEARTBEAT_FRESH`]).
    pub alive: bool,
}

/// How often a worker records its heartbeat.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// A worker whose last heartbeat is older than this is taken for dead (three missed beats).
pub const HEARTBEAT_FRESH: std::time::Duration = std::time::Duration::from_secs(15);

/// Worker processes with a recent heartbeat.
pub async fn live_workers(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM tidemark.workers WHERE seen_at > now() - $1 * interval '1 millisecond'")
        .bind(HEARTBEAT_FRESH.as_millis() as f64)
        .fetch_one(pool)
        .await
}

/// Records a worker's heartbeat: alive now, and how many batches it finished, when last.
pub async fn heartbeat(
    pool: &PgPool,
    identity: &str,
    batches: i64,
    last_batch_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tidemark.workers (identity, batches, last_batch_at) VALUES ($1, $2, $3)
         ON CONFLICT (identity) DO UPDATE SET seen_at = now(), batches = EXCLUDED.batches, last_batch_at = EXCLUDED.last_batch_at",
    )
    .bind(identity)
    .bind(batches)
    .bind(last_batch_at)
    .execute(pool)
    .await
    .map(|_| ())
}

/// A stopping worker's last word: it is gone (rather than dead). Rows of dead processes
/// are kept a day, so a crash is visible in the status.
pub async fn worker_stopped(pool: &PgPool, identity: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM tidemark.workers WHERE identity = $1 OR seen_at < now() - interval '1 day'")
        .bind(identity)
        .execute(pool)
        .await
        .map(|_| ())
}

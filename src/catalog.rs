//! The catalog: tidemark's own record, in PostgreSQL, of the full rebuilds of an alias
//! (builds) — which physical index each built, what it replaced, and how it ended. The
//! pipeline asks it which index a batch must also write to; reindex keeps it.

use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};

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

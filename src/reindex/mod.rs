//! Zero-downtime full reindex (docs/design.md, protocol invariant 7), by what each part does:
//!
//! - [`start`](start()): create `<alias>_<next generation>` with build-time settings (no
//!   refresh, no replicas) while the live index keeps serving, and split the student id
//!   space into chunks stored in PostgreSQL; also [`cancel`], [`resume`], and the rebuild
//!   a `TRUNCATE` asks for ([`take_resync_request`]).
//! - [`chunk`]: every worker takes chunks (`SKIP LOCKED` + lease, like marks); a crashed
//!   worker's chunk comes back when its lease runs out, and a flushed Redis loses nothing
//!   because the chunks are here, not in the queue.
//! - [`promote`](finish): when every chunk is done, restore the settings, refresh, verify
//!   (the count, and a random sample equal to freshly built documents), then move the alias
//!   in one atomic `_aliases` call. The previous index is kept for rollback.
//! - [`rollback`](rollback()): point the alias back at the index the last promotion replaced.
//! - [`prune`](prune()): delete generations beyond what is kept.
//! - [`watch`]: follow a build until it ends (`admin reindex --wait`).
//!
//! Writes made during the build are never lost: a sync batch decides its targets *after*
//! its claim, and while a build is active it writes to the live index and the new one.
//! A chunk draws its version before it reads, like any reader, so a change the chunk
//! missed carries a higher version and wins in the new index too.

mod chunk;
mod promote;
mod prune;
mod rollback;
mod start;
mod watch;

pub use chunk::{claim_chunk, process_chunk, Chunk};
pub use promote::{finish, Finish};
pub use prune::{drop_build_alias, prune};
pub use rollback::rollback;
pub use start::{cancel, resume, start, take_resync_request};
pub use watch::watch;

use crate::{search::SearchError, verify::VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("a reindex of alias {alias} is already running (#{id}, building {index}, started {started}); wait for it, or abandon it with `tidemark admin reindex --cancel`")]
    AlreadyRunning { alias: String, id: i64, index: String, started: String },
    #[error("no reindex of alias {0} is running")]
    NotRunning(String),
    #[error("nothing to roll back to: {0}")]
    NoRollback(String),
    #[error("reindex #{id} made no progress for {idle_wait} and no worker is alive: start one (`tidemark worker`); the build waits meanwhile and loses nothing (`tidemark admin reindex --resume --wait` to follow it again)")]
    NoWorker { id: i64, idle_wait: String },
    #[error("alias {alias} has no index: the last rebuild failed ({why}); the next one starts in {wait_s} s (`tidemark admin status` shows it; `tidemark admin reindex` starts one now)")]
    RebuildLater { alias: String, why: String, wait_s: u64 },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Search(#[from] SearchError),
}

impl From<VerifyError> for ReindexError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Db(e) => ReindexError::Db(e),
            VerifyError::Search(e) => ReindexError::Search(e),
        }
    }
}

/// `<alias>_<n>` → `n`.
fn generation(alias: &str, index: &str) -> Option<u64> {
    index.strip_prefix(alias)?.strip_prefix('_')?.parse().ok()
}

//! Which physical indices a batch writes to. Physical indices are `<alias>_<generation>`
//! behind the alias, so a full reindex can build the next generation and swap the alias.

use sqlx::PgPool;

use crate::{
    engine::EngineError,
    reindex::{self, ReindexError},
    search::Search,
};

/// What a batch writes to: the alias (the live index), plus the build alias of the index a
/// full reindex is building. Writes go through aliases with `require_alias`, so a write
/// whose index vanished fails (and is retried) instead of auto-creating it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub indices: Vec<String>,
}

/// Decides the targets. Called *after* a batch's claim (protocol invariant 7): the build
/// is read from PostgreSQL first and the alias second, because a promotion moves the alias
/// before it records the build as done — so a batch never misses both.
///
/// With no alias and no build (a first run on a database that already holds students, or
/// a search server that lost its data) this starts a full reindex by itself and says why;
/// until it is promoted, batches write to the index being built.
pub async fn targets(pool: &PgPool, search: &Search, alias: &str, chunk_size: u32) -> Result<Targets, EngineError> {
    let build = reindex::active(pool, alias).await?;
    let mut indices = Vec::new();
    if !search.alias_targets(alias).await?.is_empty() {
        indices.push(alias.to_string());
    }
    if build.is_some() {
        indices.push(reindex::build_alias(alias));
    }
    if indices.is_empty() {
        let why = format!("alias {alias} does not exist (first run, or the search server lost its index): rebuilding it from the database");
        match reindex::start(pool, search, alias, chunk_size, &why).await {
            Ok(b) => tracing::warn!(index = %b.target_index, "{why}"),
            // Another worker started it a moment ago.
            Err(ReindexError::AlreadyRunning { .. }) => {}
            Err(ReindexError::Engine(e)) => return Err(e),
            Err(e) => unreachable!("start only refuses a running build: {e}"),
        }
        indices.push(reindex::build_alias(alias));
    }
    Ok(Targets { indices })
}

//! Which physical indices a batch writes to. Physical indices are `<alias>_<generation>`
//! behind the alias, so a full reindex can build the next generation and swap the alias.

use sqlx::PgPool;

use crate::{
    engine::EngineError,
    reindex::{self, ReindexError},
    search::Search,
};

/// The indices a batch writes to: the live one(s) behind the alias, plus the one a full
/// reindex is building.
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
    let mut indices = search.alias_targets(alias).await?;
    if let Some(b) = build {
        if !indices.contains(&b.target_index) {
            indices.push(b.target_index);
        }
    }
    if indices.is_empty() {
        let why = format!("alias {alias} does not exist (first run, or the search server lost its index): rebuilding it from the database");
        let build = match reindex::start(pool, search, alias, chunk_size, &why).await {
            Ok(b) => {
                tracing::warn!(index = %b.target_index, "{why}");
                b
            }
            // Another worker started it a moment ago.
            Err(ReindexError::AlreadyRunning { .. }) => match reindex::active(pool, alias).await? {
                Some(b) => b,
                None => return Box::pin(targets(pool, search, alias, chunk_size)).await,
            },
            Err(ReindexError::Engine(e)) => return Err(e),
            Err(e) => unreachable!("start only refuses a running build: {e}"),
        };
        indices.push(build.target_index);
    }
    Ok(Targets { indices })
}

//! Targets: which indices a batch writes to, decided *after* its claim (protocol
//! invariant 7) — the live index through the alias, plus the index a full reindex is
//! building, through its build alias. Writes go through aliases with `require_alias`, so
//! a write whose index vanished fails (and is retried) instead of auto-creating it.

use super::PipelineError;
use crate::{catalog, services::Services};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub indices: Vec<String>,
}

/// The targets of a batch claimed now, or `None` when there is nowhere to write: no alias
/// and no build (a first run on a database that already holds students, or a search server
/// that lost its index) — the caller then starts a rebuild.
///
/// The build is read from PostgreSQL first and the alias second, because a promotion moves
/// the alias before it records the build as done: so a batch never misses both.
pub async fn decide(services: &Services) -> Result<Option<Targets>, PipelineError> {
    let alias = &services.config.index_alias;
    let build = catalog::active(&services.pool, alias).await?;
    let mut indices = Vec::new();
    if !services.search.alias_targets(alias).await?.is_empty() {
        indices.push(alias.clone());
    }
    if build.is_some() {
        indices.push(catalog::build_alias(alias));
    }
    Ok((!indices.is_empty()).then_some(Targets { indices }))
}

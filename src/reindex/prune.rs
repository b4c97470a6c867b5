//! Pruning: tidemark deletes only indices it created (the targets of its builds, as
//! PostgreSQL records them), never the live one, the one being built, or the one a
//! rollback would return to; of the others it keeps the `reindex.keep_previous` newest.

use super::{generation, ReindexError};
use crate::{catalog, services::Services};

/// Deletes the generations beyond what is kept.
pub async fn prune(services: &Services) -> Result<(), ReindexError> {
    let (pool, search, alias) = (&services.pool, &services.search, &services.config.index_alias);
    let live = search.alias_targets(alias).await?;
    let active = catalog::active(pool, alias).await?.map(|b| b.target_index);
    let rollback_target: Option<String> =
        sqlx::query_scalar("SELECT previous_index FROM tidemark.reindexes WHERE alias = $1 AND state = 'done' ORDER BY id DESC LIMIT 1")
            .bind(alias)
            .fetch_optional(pool)
            .await?
            .flatten();
    let ours: Vec<String> =
        sqlx::query_scalar("SELECT target_index FROM tidemark.reindexes WHERE alias = $1 AND state IN ('done', 'rolled_back')")
            .bind(alias)
            .fetch_all(pool)
            .await?;
    let mut older: Vec<(u64, String)> = ours
        .into_iter()
        .filter(|i| !live.contains(i) && Some(i) != active.as_ref() && Some(i) != rollback_target.as_ref())
        .filter_map(|i| generation(alias, &i).map(|g| (g, i)))
        .collect();
    older.sort();
    older.dedup();
    // The rollback target counts as one of those kept.
    let keep = (services.config.reindex.keep_previous as usize).saturating_sub(usize::from(rollback_target.is_some()));
    let excess = older.len().saturating_sub(keep);
    for (_, index) in older.into_iter().take(excess) {
        if search.index_exists(&index).await? {
            tracing::info!(index = %index, "deleting an old generation");
            search.delete_index(&index).await?;
        }
    }
    Ok(())
}

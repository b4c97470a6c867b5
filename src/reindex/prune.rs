//! Pruning: old generations beyond the ones kept for rollback are deleted.

use super::{generation, ReindexError};
use crate::{catalog, services::Services};

/// Deletes generations older than the live index and the `reindex.keep_previous` ones.
pub async fn prune(services: &Services) -> Result<(), ReindexError> {
    let (search, alias) = (&services.search, &services.config.index_alias);
    let live = search.alias_targets(alias).await?;
    let active = catalog::active(&services.pool, alias).await?.map(|b| b.target_index);
    let mut older: Vec<(u64, String)> = search
        .indices(&format!("{alias}_*"))
        .await?
        .into_iter()
        .filter(|i| !live.contains(i) && Some(i) != active.as_ref())
        .filter_map(|i| generation(alias, &i).map(|g| (g, i)))
        .collect();
    older.sort();
    let excess = older.len().saturating_sub(services.config.reindex.keep_previous as usize);
    for (_, index) in older.into_iter().take(excess) {
        tracing::info!(index = %index, "deleting an old generation");
        search.delete_index(&index).await?;
    }
    Ok(())
}

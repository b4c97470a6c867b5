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

/// Removes the build alias once no batch can still write through it: the latest build of
/// the alias ended (promoted, failed, cancelled) more than one batch's life ago
/// (`sync.batch_timeout + sync.request_timeout`). A batch writes to the build only if it
/// read the build as running, so after its claim and before the build's end was recorded;
/// it starts no request later than `batch_timeout` after its claim, and its client gives
/// each request up after `request_timeout` (docs/protocol.md, rule 16). Until then the
/// alias stays parked on the live index, so such a late write lands somewhere live, and a
/// late delete never meets a missing alias (Elasticsearch would auto-create an index under
/// its name). Holds the alias's lock, so a build starting meanwhile keeps its alias.
/// Returns whether it removed the alias.
pub async fn drop_build_alias(services: &Services) -> Result<bool, ReindexError> {
    let (pool, search, alias) = (&services.pool, &services.search, &services.config.index_alias);
    let batch_life = services.config.sync.batch_timeout.0 + services.config.sync.request_timeout.0;
    // One cheap look first: almost always there is nothing to do.
    let due: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM tidemark.reindexes
          WHERE id = (SELECT max(id) FROM tidemark.reindexes WHERE alias = $1)
            AND state NOT IN ('building', 'verifying') AND NOT build_alias_dropped
            AND finished_at < now() - $2 * interval '1 millisecond'",
    )
    .bind(alias)
    .bind(batch_life.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    let Some(id) = due else { return Ok(false) };
    let mut tx = pool.begin().await?;
    let result = async {
        if !catalog::try_lock(&mut tx, alias).await? {
            return Ok(false); // a build starts or ends right now: next time
        }
        let latest = catalog::latest(&mut *tx, alias).await?;
        if latest.is_none_or(|b| b.id != id) {
            return Ok(false);
        }
        let building = catalog::build_alias(alias);
        let holders = search.alias_targets(&building).await?;
        search.move_alias(&building, &holders, &[]).await?;
        sqlx::query("UPDATE tidemark.reindexes SET build_alias_dropped = true WHERE id = $1").bind(id).execute(&mut *tx).await?;
        if !holders.is_empty() {
            tracing::info!(alias = %building, "the build alias is removed (the last build ended one batch's life ago)");
        }
        Ok(true)
    }
    .await;
    match result {
        Ok(done) => {
            tx.commit().await?;
            Ok(done)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

//! Starting, cancelling and resuming a build; and the rebuild a `TRUNCATE` asks for.

use super::{generation, ReindexError};
use crate::{
    catalog::{self, build_alias, Build, BuildState},
    document::build_body,
    model::sql::ident,
    services::Services,
};

pub(super) async fn refuse_if_running(services: &Services) -> Result<(), ReindexError> {
    let alias = &services.config.index_alias;
    match catalog::active(&services.pool, alias).await? {
        Some(b) => Err(ReindexError::AlreadyRunning {
            alias: alias.clone(),
            id: b.id,
            index: b.target_index,
            started: b.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        }),
        None => Ok(()),
    }
}

/// Starts a build: creates the next generation's index and the chunks. Refused while
/// another build of the alias runs.
pub async fn start(services: &Services, chunk_size: u32, reason: &str) -> Result<Build, ReindexError> {
    let (pool, search, alias) = (&services.pool, &services.search, &services.config.index_alias);
    let mut tx = pool.begin().await?;
    catalog::lock(&mut tx, alias).await?;
    refuse_if_running(services).await?;
    let previous = search.alias_targets(alias).await?.into_iter().next();
    // Numbered from tidemark's own record only, never from what else is on the server (an
    // archive named `<alias>_2024` is not generation 2024), and never reused, even for an
    // index that is gone: a late write to a deleted name would otherwise land in the new
    // build. A name that someone else's index holds is skipped, never touched.
    let ours: Vec<String> =
        sqlx::query_scalar("SELECT target_index FROM tidemark.reindexes WHERE alias = $1").bind(alias).fetch_all(&mut *tx).await?;
    let mut next = ours.iter().filter_map(|i| generation(alias, i)).max().unwrap_or(0) + 1;
    // An index *named* like the build alias can only be an artefact: Elasticsearch
    // auto-creates indices for externally versioned deletes even with require_alias. It
    // holds nothing but tombstones, and it would block the alias: remove it.
    let building = build_alias(alias);
    if search.indices(&building).await?.contains(&building) {
        tracing::warn!(index = %building, "deleting an index auto-created under the build alias's name");
        search.delete_index(&building).await?;
    }
    let body = build_body(&services.config.index, &services.model);
    let target = loop {
        let name = format!("{alias}_{next}");
        if search.create_index(&name, &body).await? {
            break name;
        }
        tracing::warn!(index = %name, "an index tidemark did not create has this name; leaving it alone and numbering on");
        next += 1;
    };
    // Move the build alias here in one step, from wherever it was (it stays on the live
    // index between builds, so a late write through it lands somewhere sensible).
    search.point_alias(&building, std::slice::from_ref(&target)).await?;
    let model = &services.model;
    let (table, key) = (ident(&model.root.table), ident(&model.root.key));
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&mut *tx).await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tidemark.reindexes (alias, target_index, previous_index, state, reason, chunk_size, docs_total, model)
         VALUES ($1, $2, $3, 'building', $4, $5, $6, $7) RETURNING id",
    )
    .bind(alias)
    .bind(&target)
    .bind(&previous)
    .bind(reason)
    .bind(chunk_size as i32)
    .bind(count)
    .bind(&model.fingerprint)
    .fetch_one(&mut *tx)
    .await?;
    // Chunks of `chunk_size` rows, cut at every chunk_size-th key in the key's own order
    // (any key type, sparse or not). They cover the whole key space, not just the keys
    // counted: the first is open below and the last open above (NULL), so a row inserted
    // between the count and this commit — whose batch may not have seen the build yet, and
    // wrote only to the live index — is still read by a chunk, which reads after this commit.
    sqlx::query(&format!(
        "WITH cuts AS (
             SELECT c.k::text AS k, row_number() OVER (ORDER BY c.k) AS n
               FROM (SELECT k FROM (SELECT {key} AS k, row_number() OVER (ORDER BY {key}) AS rn FROM {table}) r
                      WHERE rn > 1 AND (rn - 1) % $2 = 0) c)
         INSERT INTO tidemark.reindex_chunks (reindex_id, n, lo, hi)
         SELECT $1, n, lag(k) OVER (ORDER BY n), k FROM cuts
         UNION ALL
         SELECT $1, (SELECT count(*) FROM cuts) + 1, (SELECT k FROM cuts ORDER BY n DESC LIMIT 1), NULL"
    ))
    .bind(id)
    .bind(i64::from(chunk_size))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(id, index = %target, previous = ?previous, documents = count, reason, "reindex started");
    Ok(catalog::get(pool, id).await?)
}

/// Acts on a TRUNCATE recorded by the capture triggers: a running build (which may already
/// hold truncated students) is abandoned, and a new one starts from the database as it is
/// now. Returns the new build, if a request was taken.
pub async fn take_resync_request(services: &Services) -> Result<Option<Build>, ReindexError> {
    let pool = &services.pool;
    // Every step asks; almost always there is nothing: one cheap look before a transaction.
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tidemark.resync_requests)").fetch_one(pool).await?;
    if !any {
        return Ok(None);
    }
    let mut tx = pool.begin().await?;
    let reasons: Vec<String> = sqlx::query_scalar("DELETE FROM tidemark.resync_requests RETURNING reason").fetch_all(&mut *tx).await?;
    if reasons.is_empty() {
        return Ok(None);
    }
    let reason = format!("{} (rows removed without row triggers)", reasons.join(", "));
    if catalog::active(pool, &services.config.index_alias).await?.is_some() {
        cancel(services).await?;
    }
    let build = start(services, services.config.reindex.chunk_size, &reason).await?;
    tracing::warn!(index = %build.target_index, %reason, "rebuilding the index");
    tx.commit().await?;
    Ok(Some(build))
}

/// Abandons the running build and deletes its index; the alias never moved.
pub async fn cancel(services: &Services) -> Result<Build, ReindexError> {
    let (pool, alias) = (&services.pool, &services.config.index_alias);
    let mut tx = pool.begin().await?;
    catalog::lock(&mut tx, alias).await?;
    let build = catalog::active(pool, alias).await?.ok_or_else(|| ReindexError::NotRunning(alias.clone()))?;
    catalog::end(&mut *tx, build.id, BuildState::Cancelled, "cancelled by admin").await?;
    tx.commit().await?;
    park_build_alias(services, &build).await;
    services.search.delete_index(&build.target_index).await?;
    tracing::info!(id = build.id, index = %build.target_index, "reindex cancelled; its index is deleted");
    Ok(catalog::get(pool, build.id).await?)
}

/// Gives back every chunk lease of the running build, so the chunks of a vanished
/// worker are taken at once rather than when their leases run out.
pub async fn resume(services: &Services) -> Result<(Build, u64), ReindexError> {
    let (pool, alias) = (&services.pool, &services.config.index_alias);
    let build = catalog::active(pool, alias).await?.ok_or_else(|| ReindexError::NotRunning(alias.clone()))?;
    let r = sqlx::query(
        "UPDATE tidemark.reindex_chunks SET lease_owner = NULL, lease_until = NULL WHERE reindex_id = $1 AND NOT done AND lease_owner IS NOT NULL",
    )
    .bind(build.id)
    .execute(pool)
    .await?;
    Ok((build, r.rows_affected()))
}

/// Moves the build alias off an abandoned build onto the live index, so batches that chose
/// their targets while the build ran write somewhere live rather than to a dead build.
pub(super) async fn park_build_alias(services: &Services, build: &Build) {
    let search = &services.search;
    let result = async {
        let live = search.alias_targets(&build.alias).await?;
        search.move_alias(&build_alias(&build.alias), std::slice::from_ref(&build.target_index), &live).await
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "build alias already moved");
    }
}

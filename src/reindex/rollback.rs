//! Rollback: point the alias back at the index the last promotion replaced.

use super::{start::refuse_if_running, ReindexError};
use crate::{catalog, services::Services};

/// Points the alias back at the index the last promotion replaced, and marks every document
/// of the database or of that index, so it catches up with the changes (deletes included)
/// made while it was not live.
/// Returns the index the alias left and the one it points at now.
pub async fn rollback(services: &Services) -> Result<(String, String), ReindexError> {
    let (pool, search, alias) = (&services.pool, &services.search, &services.config.index_alias);
    let mut tx = pool.begin().await?;
    catalog::lock(&mut tx, alias).await?;
    refuse_if_running(services).await?;
    let last: Option<(i64, String, Option<String>)> = sqlx::query_as(
        "SELECT id, target_index, previous_index FROM tidemark.reindexes WHERE alias = $1 AND state = 'done' ORDER BY id DESC LIMIT 1",
    )
    .bind(alias)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, from, Some(to))) = last else {
        return Err(ReindexError::NoRollback(format!("no promoted reindex of {alias} has a previous index")));
    };
    if !search.index_exists(&to).await? {
        return Err(ReindexError::NoRollback(format!("the previous index {to} no longer exists")));
    }
    search.point_alias(alias, std::slice::from_ref(&to)).await?;
    sqlx::query("UPDATE tidemark.reindexes SET state = 'rolled_back', message = 'rolled back by admin' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // Changes made while `to` was not live reached only `from`: resync everything into it —
    // every student in the database, and every document `to` holds (a student deleted
    // meanwhile was deleted only from `from`; marked, its absence becomes a delete here).
    let mut ids: Vec<String> = Vec::new();
    search.scan(&to, false, |id, _| ids.push(id)).await?;
    let model = &services.model;
    sqlx::query(&format!(
        "SELECT tidemark.mark_keys(ARRAY(SELECT {key}::text FROM {table} UNION SELECT unnest($1::text[])))",
        key = crate::model::sql::ident(&model.root.key),
        table = crate::model::sql::ident(&model.root.table)
    ))
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(from = %from, to = %to, "rolled back; every document is marked so the restored index catches up");
    if let Err(e) = super::prune(services).await {
        tracing::warn!(error = %e, "could not delete old generations yet");
    }
    Ok((from, to))
}

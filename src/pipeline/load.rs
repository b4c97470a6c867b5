//! Load: the current rows of a batch of documents, in one query whatever the model's depth
//! (no N+1: the root's relations are joined set-wise for the whole batch, deeper ones are
//! subqueries of their row; `model::sql::document_query`), as documents. A sync batch reads a set
//! of keys (a key that has no row any more comes back as a `delete`); a reindex chunk reads a
//! key range.

use std::collections::HashMap;

use sqlx::{types::Json, PgExecutor};

use super::Op;
use crate::{
    document::Document,
    model::{sql::Rows, Model},
};

/// The op of each of `keys`, in the order of `keys`: its document, or a delete for a key
/// that has no row.
pub async fn load(db: impl PgExecutor<'_>, model: &Model, keys: &[String]) -> Result<Vec<(String, Op)>, sqlx::Error> {
    let rows: Vec<(String, Json<Document>)> = sqlx::query_as(model.query(Rows::Keys)).bind(keys).fetch_all(db).await?;
    let mut found: HashMap<String, Document> = rows.into_iter().map(|(k, Json(d))| (k, d)).collect();
    Ok(keys.iter().map(|k| (k.clone(), found.remove(k).map_or(Op::Delete, Op::Index))).collect())
}

/// Documents of every row with `lo <= key < hi` (`None`: no bound), in key order.
pub async fn load_range(
    db: impl PgExecutor<'_>,
    model: &Model,
    lo: Option<&str>,
    hi: Option<&str>,
) -> Result<Vec<(String, Op)>, sqlx::Error> {
    let q = sqlx::query_as(model.query(Rows::Range { lo: lo.is_some(), hi: hi.is_some() }));
    let q = match (lo, hi) {
        (Some(lo), Some(hi)) => q.bind(lo).bind(hi),
        (Some(b), None) | (None, Some(b)) => q.bind(b),
        (None, None) => q,
    };
    let rows: Vec<(String, Json<Document>)> = q.fetch_all(db).await?;
    Ok(rows.into_iter().map(|(k, Json(d))| (k, Op::Index(d))).collect())
}

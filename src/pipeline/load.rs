//! Load: the current rows of a batch of documents, in one query whatever the model's depth
//! (no N+1: the root's relations are joined set-wise for the whole batch, deeper ones are
//! subqueries of their row; `model::sql::row_query`), as documents. A sync batch reads a set
//! of keys (a key that has no row any more comes back as a `delete`); a reindex chunk reads a
//! key range.

use std::collections::HashMap;

use sqlx::{postgres::PgRow, PgExecutor, Row};

use super::Op;
use crate::{
    document::Document,
    model::{sql::Rows, Model},
};

fn document(model: &Model, row: &PgRow) -> Result<(String, Document), sqlx::Error> {
    Ok((row.try_get(0)?, Document::from_row(model.parts(), row)?))
}

/// The op of each of `keys`, in the order of `keys`: its document, or a delete for a key
/// that has no row.
pub async fn load(db: impl PgExecutor<'_>, model: &Model, keys: &[String]) -> Result<Vec<(String, Op)>, sqlx::Error> {
    let rows = sqlx::query(model.row_query(Rows::Keys)).bind(keys).fetch_all(db).await?;
    let mut found: HashMap<String, Document> = rows.iter().map(|r| document(model, r)).collect::<Result<_, _>>()?;
    Ok(keys.iter().map(|k| (k.clone(), found.remove(k).map_or(Op::Delete, Op::Index))).collect())
}

/// Documents of every row with `lo <= key < hi` (`None`: no bound), in key order.
pub async fn load_range(
    db: impl PgExecutor<'_>,
    model: &Model,
    lo: Option<&str>,
    hi: Option<&str>,
) -> Result<Vec<(String, Op)>, sqlx::Error> {
    let q = sqlx::query(model.row_query(Rows::Range { lo: lo.is_some(), hi: hi.is_some() }));
    let q = match (lo, hi) {
        (Some(lo), Some(hi)) => q.bind(lo).bind(hi),
        (Some(b), None) | (None, Some(b)) => q.bind(b),
        (None, None) => q,
    };
    let rows = q.fetch_all(db).await?;
    rows.iter().map(|r| document(model, r).map(|(k, d)| (k, Op::Index(d)))).collect()
}

//! Load: the current rows of a batch of documents, in one query whatever the model's depth
//! (no N+1: the root's relations are joined set-wise for the whole batch, deeper ones are
//! subqueries of their row; `model::sql::row_query`), as documents. A sync batch reads a set
//! of keys (a key that has no row any more comes back as a `delete`); a reindex chunk reads a
//! key range.

use std::collections::HashMap;

use futures::TryStreamExt;
use sqlx::PgExecutor;

use super::Op;
use crate::{
    document::Document,
    model::{sql::Rows, Model},
};

/// The op of each of `keys`, in the order of `keys`: its document, or a delete for a key
/// that has no row.
pub async fn load(db: impl PgExecutor<'_>, model: &Model, keys: &[String]) -> Result<Vec<(String, Op)>, sqlx::Error> {
    let mut found = HashMap::with_capacity(keys.len());
    let mut reader = Document::reader(model.parts());
    let mut rows = sqlx::query(model.row_query(Rows::Keys)).bind(keys).fetch(db);
    while let Some(row) = rows.try_next().await? {
        let (key, doc) = reader.read(&row)?;
        found.insert(key, doc);
    }
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
    let mut out = Vec::new();
    let mut reader = Document::reader(model.parts());
    let mut rows = q.fetch(db);
    while let Some(row) = rows.try_next().await? {
        let (key, doc) = reader.read(&row)?;
        out.push((key, Op::Index(doc)));
    }
    Ok(out)
}

//! Load: the current rows of a batch of documents, in one query whatever the model's depth
//! (no N+1: the root's relations are joined set-wise for the whole batch, deeper ones are
//! subqueries of their row; `model::sql::row_query`), as documents. A sync batch reads a set
//! of keys (a key that has no row any more comes back as a `delete`); a reindex chunk reads a
//! key range.

use std::collections::HashMap;

use futures::TryStreamExt;
use sqlx::{
    postgres::{PgArguments, Postgres},
    query::Query,
    PgExecutor,
};

use super::Op;
use crate::{
    document::Document,
    model::{sql::Rows, Model},
};

/// Hands `each` the key and the document of every row `query` (the model's row query)
/// returns, written as the rows arrive.
async fn documents(
    db: impl PgExecutor<'_>,
    model: &Model,
    query: Query<'_, Postgres, PgArguments>,
    mut each: impl FnMut(String, Document),
) -> Result<(), sqlx::Error> {
    let mut reader = Document::reader(model);
    let mut rows = query.fetch(db);
    while let Some(row) = rows.try_next().await? {
        let (key, doc) = reader.read(&row)?;
        each(key, doc);
    }
    Ok(())
}

/// The op of each of `keys`, in the order of `keys`: its document, or a delete for a key
/// that has no row.
pub async fn load(db: impl PgExecutor<'_>, model: &Model, keys: &[String]) -> Result<Vec<(String, Op)>, sqlx::Error> {
    let mut found = HashMap::with_capacity(keys.len());
    documents(db, model, sqlx::query(model.row_query(Rows::Keys)).bind(keys), |k, d| {
        found.insert(k, d);
    })
    .await?;
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
    documents(db, model, q, |k, d| out.push((k, Op::Index(d)))).await?;
    Ok(out)
}

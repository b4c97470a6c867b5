//! The index behind the alias: physical indices are `<alias>_<generation>`, so a full
//! reindex can build the next generation and swap the alias.

use sqlx::PgPool;

use crate::{
    document::index_body,
    engine::EngineError,
    search::{Search, SearchError},
};
use elasticsearch::http::Method;

/// The indices a batch writes to, decided when the batch is claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub indices: Vec<String>,
}

/// The indices behind `alias`, creating `<alias>_<next generation>` with its mapping (and
/// marking every student for a first full index) when the alias does not exist yet: a
/// database that already holds students is indexed without manual steps.
pub async fn ensure(pool: &PgPool, search: &Search, alias: &str) -> Result<Targets, EngineError> {
    let indices = search.alias_targets(alias).await?;
    if !indices.is_empty() {
        return Ok(Targets { indices });
    }
    // One creator at a time across every worker: an advisory lock held by a transaction.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tidemark.index.' || $1))").bind(alias).execute(&mut *tx).await?;
    let indices = search.alias_targets(alias).await?;
    if !indices.is_empty() {
        return Ok(Targets { indices });
    }
    let generation = search
        .indices(&format!("{alias}_*"))
        .await?
        .iter()
        .filter_map(|name| name.strip_prefix(alias)?.strip_prefix('_')?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let name = format!("{alias}_{generation}");
    create(search, &name).await?;
    search
        .json(Method::Post, "/_aliases", Some(&serde_json::json!({"actions": [{"add": {"index": name, "alias": alias}}]})))
        .await?;
    let marked: i64 = sqlx::query_scalar(
        "WITH ids AS (SELECT array_agg(id) AS a FROM students)
         SELECT coalesce(cardinality(a), 0)::bigint FROM ids, LATERAL (SELECT tidemark.mark_students(coalesce(a, '{}'))) m",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(index = %name, alias, marked, "created the index behind the alias; every student is marked for a first full index");
    Ok(Targets { indices: vec![name] })
}

/// Creates a physical index with the mapping; one that already exists is left as it is.
pub async fn create(search: &Search, name: &str) -> Result<(), SearchError> {
    let reply = search
        .request(Method::Put, &format!("/{name}"), Some(serde_json::to_vec(&index_body()).expect("static JSON")), false)
        .await?;
    if (200..300).contains(&reply.status) {
        return Ok(());
    }
    let err = crate::search::status_error(Method::Put, &format!("/{name}"), &reply);
    if let SearchError::Status { reason, .. } = &err {
        if reason.contains("already_exists") {
            return Ok(());
        }
    }
    Err(err)
}

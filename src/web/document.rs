//! A document as the database holds it now (the same query the sync reads with), and the
//! index's copy compared with it: the page a reader opens never shows the index's lag,
//! and says when the index is behind.

use elasticsearch::http::Method;
use serde::Serialize;
use serde_json::Value;

use super::{db, engine, App, Failure};
use crate::{
    model::{article, KeyType, Model},
    pipeline::load::load,
    services::Services,
};

/// The index's copy of a document, compared with the one the database's rows build now.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IndexCopy {
    /// The index holds exactly the document built from the database now.
    InSync,
    /// The index holds a different document (a change not synced yet).
    Differs { differences: Vec<FieldDiff> },
    /// The index has no copy of it (not indexed yet).
    Missing,
    /// The index holds a copy although the database has no such row (a delete not synced
    /// yet).
    Stale,
    /// Neither the database nor the index knows it.
    Absent,
    /// The search server could not be asked.
    Unavailable { reason: String },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldDiff {
    pub field: String,
    pub database: Value,
    pub index: Value,
}

/// The fields `shown` where the two copies differ; when none does, the whole documents
/// (they differ in a derived field).
fn differences(built: &Value, indexed: &Value, shown: &[&str]) -> Vec<FieldDiff> {
    let built = built.clone();
    let mut out: Vec<FieldDiff> = shown
        .iter()
        .filter(|f| built[**f] != indexed[**f])
        .map(|f| FieldDiff { field: f.to_string(), database: built[*f].clone(), index: indexed[*f].clone() })
        .collect();
    if out.is_empty() {
        // Differs only in a derived field (or a field the index should not have).
        out.push(FieldDiff { field: "(derived fields)".into(), database: built, index: indexed.clone() });
    }
    out
}

/// The document of `key` from the database (None: no such row), how the index's copy
/// compares (on the fields `shown`), and how long a change to it has waited, if one has.
pub async fn compare(services: &Services, key: &str, shown: &[&str]) -> Result<(Option<Value>, IndexCopy, Option<f64>), Failure> {
    let pool = &services.pool;
    let id = key;
    let (rows, pending) = db(async {
        let rows = load(pool, &services.model, &[key.to_string()]).await?;
        let pending: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM clock_timestamp() - min(marked_at))::float8 FROM tidemark.outstanding WHERE key = $1",
        )
        .bind(key)
        .fetch_one(pool)
        .await?;
        Ok((rows, pending))
    })
    .await?;
    let document = rows.into_iter().next().and_then(|(_, op)| op.into_document()).map(|d| d.value());
    let path =
        format!("/{}/_doc/{}", services.config.index_alias, percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC));
    let indexed = match engine(services, Method::Get, &path, None).await {
        Ok((200, v)) if v["found"] == true => Ok(Some(v["_source"].clone())),
        Ok((404, _)) => Ok(None),
        Ok((status, v)) => Err(super::engine_failure(status, &v, &path)),
        Err(e) => Err(e),
    };
    let index = match (indexed, &document) {
        (Err(Failure::IndexMissing), None) => IndexCopy::Absent,
        (Err(Failure::IndexMissing), Some(_)) => IndexCopy::Missing,
        (Err(Failure::SearchDown(why)), _) => IndexCopy::Unavailable { reason: format!("the search server {why}") },
        (Err(e), _) => IndexCopy::Unavailable { reason: e.message_about(&services.model.view().noun) },
        (Ok(None), None) => IndexCopy::Absent,
        (Ok(None), Some(_)) => IndexCopy::Missing,
        (Ok(Some(_)), None) => IndexCopy::Stale,
        (Ok(Some(v)), Some(doc)) if v == *doc => IndexCopy::InSync,
        (Ok(Some(v)), Some(doc)) => IndexCopy::Differs { differences: differences(doc, &v, shown) },
    };
    Ok((document, index, pending))
}

/// A document key from the path: a positive whole number, or a uuid, as the model's key is.
fn parse_key(model: &Model, noun: &str, plural: &str, raw: &str) -> Result<String, Failure> {
    // The key as the database writes it ("42" for "042" or "+42"): the text the rows,
    // the index's `_id` and the marks are looked up by.
    let key = match model.root.key_type {
        KeyType::Integer => raw.parse::<i64>().ok().filter(|n| *n > 0).map(|n| n.to_string()),
        KeyType::Uuid => uuid_like(raw).then(|| raw.to_ascii_lowercase()),
    };
    if let Some(key) = key {
        Ok(key)
    } else {
        let example = match model.root.key_type {
            KeyType::Integer => "ids are positive whole numbers, as in",
            KeyType::Uuid => "ids are uuids, as in",
        };
        let sample = if model.root.key_type == KeyType::Integer { "42" } else { "0b6f0c4e-5b1a-4c1e-9a0e-8f4c2b7d1e3a" };
        Err(Failure::BadRequest(format!(
            "{:?} is not {} id: {example} /{plural}/{sample}",
            raw.chars().take(40).collect::<String>(),
            article(noun)
        )))
    }
}

/// What an id of the model's documents looks like, for messages: "an experiment id is a
/// positive whole number, as in /experiments/42".
pub fn id_how(model: &Model) -> String {
    let view = model.view();
    match model.root.key_type {
        KeyType::Integer => format!("{} id is a positive whole number, as in /{}/42", article(&view.noun), view.plural),
        KeyType::Uuid => format!("{} id is a uuid, as in /{}/0b6f0c4e-5b1a-4c1e-9a0e-8f4c2b7d1e3a", article(&view.noun), view.plural),
    }
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// The document's own fields (what the index copy is compared on): every root field and
/// relation.
fn compared(model: &Model) -> Vec<String> {
    model.root.fields.iter().map(|f| f.name.clone()).chain(model.root.relations.iter().map(|r| r.name.clone())).collect()
}

pub async fn read(app: &App, raw: &str) -> Result<(String, Option<Value>, IndexCopy, Option<f64>), Failure> {
    let model = &app.services.model;
    let view = model.view();
    let key = parse_key(model, &view.noun, &view.plural, raw)?;
    let fields = compared(model);
    let shown: Vec<&str> = fields.iter().map(String::as_str).collect();
    let (doc, index, pending) = compare(&app.services, &key, &shown).await?;
    Ok((key, doc, index, pending))
}

//! A student as the database holds it now (the same query the sync reads with), and the
//! index's copy compared with it: the page a reader opens never shows the index's lag,
//! and says when the index is behind.

use elasticsearch::http::Method;
use serde::Serialize;
use serde_json::Value;

use super::{db, engine, Failure};
use crate::{pipeline::load::load, services::Services};

/// What the student page shows.
#[derive(Clone, Debug, Serialize)]
pub struct StudentView {
    pub id: i64,
    /// None: no such student in the database.
    pub student: Option<Value>,
    pub index: IndexCopy,
    /// Seconds since this student's change was marked and not yet indexed, if one is.
    pub pending_change_seconds: Option<f64>,
}

/// The index's copy of the student, compared with the database's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IndexCopy {
    /// The index holds exactly the document built from the database now.
    InSync,
    /// The index holds a different document (a change not synced yet).
    Differs { differences: Vec<FieldDiff> },
    /// The index has no document for this student (not indexed yet; or deleted and synced).
    Missing,
    /// The index holds a document although the database has no such student (a delete
    /// not synced yet).
    Stale,
    /// Neither the database nor the index knows the student.
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

/// Fields a person reads; `name_complete` and `id` only follow the names and the id.
const SHOWN: [&str; 6] = ["first_name", "last_name", "age", "year_in_school", "university", "course_names"];

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

/// The student `id` from the database, and how the index's copy compares. The database
/// being down is an error (the page cannot be shown); the search server being down is not
/// (the page shows the database's row and says the index could not be asked).
pub async fn view(services: &Services, id: i64) -> Result<StudentView, Failure> {
    let (student, index, pending) = compare(services, &id.to_string(), &SHOWN).await?;
    Ok(StudentView { id, student, index, pending_change_seconds: pending })
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
    let student = rows.into_iter().next().and_then(|(_, op)| op.into_document()).map(|d| d.value());
    let path =
        format!("/{}/_doc/{}", services.config.index_alias, percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC));
    let indexed = match engine(services, Method::Get, &path, None).await {
        Ok((200, v)) if v["found"] == true => Ok(Some(v["_source"].clone())),
        Ok((404, _)) => Ok(None),
        Ok((status, v)) => Err(super::engine_failure(status, &v, &path)),
        Err(e) => Err(e),
    };
    let index = match (indexed, &student) {
        (Err(Failure::IndexMissing), None) => IndexCopy::Absent,
        (Err(Failure::IndexMissing), Some(_)) => IndexCopy::Missing,
        (Err(Failure::SearchDown(why)), _) => IndexCopy::Unavailable { reason: format!("the search server {why}") },
        (Err(e), _) => IndexCopy::Unavailable { reason: e.message() },
        (Ok(None), None) => IndexCopy::Absent,
        (Ok(None), Some(_)) => IndexCopy::Missing,
        (Ok(Some(_)), None) => IndexCopy::Stale,
        (Ok(Some(v)), Some(doc)) if v == *doc => IndexCopy::InSync,
        (Ok(Some(v)), Some(doc)) => IndexCopy::Differs { differences: differences(doc, &v, shown) },
    };
    Ok((student, index, pending))
}

/// A student id from the path: a positive whole number.
pub fn parse_id(raw: &str) -> Result<i64, Failure> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(Failure::BadRequest(format!(
            "{:?} is not a student id: ids are positive whole numbers, as in /students/42",
            raw.chars().take(40).collect::<String>()
        ))),
    }
}

//! Index against database: the one comparison of a document in the index with the document
//! built from the database now. A reindex checks its new index with it before the alias
//! moves; `admin verify` checks the live index (missing, extra and differing documents)
//! and, with `--repair`, re-marks those students so the next sync rewrites (or deletes) them.
//!
//! Students with an outstanding mark are skipped by `admin verify`: their document is
//! about to change anyway, and a difference there is a change in flight, not drift.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
};

use elasticsearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    document::StudentDoc,
    pipeline::load::{load, load_range},
    search::SearchError,
    services::Services,
};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Search(#[from] SearchError),
}

/// How two sets of documents differ, by student id.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Differences {
    /// Students with no document.
    pub missing: Vec<i64>,
    /// Documents of students that do not exist.
    pub extra: Vec<i64>,
    /// Documents that differ from the one built from the database now.
    pub differing: Vec<i64>,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }

    /// Every student named, in id order.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.missing.iter().chain(&self.extra).chain(&self.differing).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn record(&mut self, id: i64, indexed: Option<&Value>, built: Option<&StudentDoc>) {
        match (indexed, built) {
            (None, Some(_)) => self.missing.push(id),
            (Some(_), None) => self.extra.push(id),
            (Some(v), Some(d)) if !same(v, d) => self.differing.push(id),
            _ => {}
        }
    }

    fn sort(&mut self) {
        for v in [&mut self.missing, &mut self.extra, &mut self.differing] {
            v.sort_unstable();
            v.dedup();
        }
    }
}

/// Whether a document's source in the index is exactly the document built from the database.
pub fn same(indexed: &Value, built: &StudentDoc) -> bool {
    serde_json::to_value(built).is_ok_and(|b| b == *indexed)
}

/// A fingerprint of a document's content, for comparing millions without holding them:
/// serde_json's maps are ordered, so equal documents serialise to equal bytes.
fn fingerprint(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// Compares the documents of `ids` in `index` with the ones built from the database now.
pub async fn compare(services: &Services, index: &str, ids: &[i64]) -> Result<Differences, VerifyError> {
    let mut out = Differences::default();
    for part in ids.chunks(1000) {
        let built = load(&services.pool, part).await?;
        let indexed = services.search.mget(index, part).await?;
        for (id, doc) in &built {
            out.record(*id, indexed.get(id), doc.document());
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `n` random students from the database, and `n` random documents from the index.
    Sample(u32),
    /// Every student and every document.
    Full,
}

/// What `admin verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Documents compared.
    pub checked: u64,
    #[serde(flatten)]
    pub differences: Differences,
    /// Skipped because a change of theirs is still being synced.
    pub in_flight: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    pub fn render(&self) -> String {
        let list = |v: &[i64]| {
            let shown: Vec<String> = v.iter().take(20).map(i64::to_string).collect();
            let more = if v.len() > 20 { format!(" … and {} more", v.len() - 20) } else { String::new() };
            format!("{}{}", shown.join(", "), more)
        };
        let d = &self.differences;
        let mut out = format!("checked {} documents ({} skipped: changes in flight)\n", self.checked, self.in_flight);
        for (what, v) in [("missing", &d.missing), ("extra", &d.extra), ("differing", &d.differing)] {
            out.push_str(&format!("{what:<10} {:>6}  {}\n", v.len(), list(v)));
        }
        out
    }
}

async fn marked(services: &Services) -> Result<HashSet<i64>, sqlx::Error> {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT student_id FROM tidemark.outstanding").fetch_all(&services.pool).await?;
    Ok(ids.into_iter().collect())
}

/// Compares the index behind the alias with the database.
pub async fn verify(services: &Services, mode: Mode) -> Result<Report, VerifyError> {
    let alias = &services.config.index_alias;
    services.search.refresh(alias).await?;
    let marked = marked(services).await?;
    let mut report = Report::default();
    match mode {
        Mode::Full => {
            let mut indexed: HashMap<i64, u64> = HashMap::new();
            services
                .search
                .scan(alias, true, |id, source| {
                    indexed.insert(id, fingerprint(source));
                })
                .await?;
            let (min, max): (Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT min(id), max(id) FROM students").fetch_one(&services.pool).await?;
            if let (Some(min), Some(max)) = (min, max) {
                let mut lo = min;
                while lo <= max {
                    for (id, doc) in load_range(&services.pool, lo, Some(lo + 10_000)).await? {
                        let got = indexed.remove(&id);
                        if marked.contains(&id) {
                            report.in_flight += 1;
                            continue;
                        }
                        report.checked += 1;
                        let built = doc.document().map(|d| serde_json::to_value(d).expect("a document serialises"));
                        match (got, built) {
                            (None, _) => report.differences.missing.push(id),
                            (Some(h), Some(b)) if h != fingerprint(&b) => report.differences.differing.push(id),
                            _ => {}
                        }
                    }
                    lo += 10_000;
                }
            }
            for id in indexed.into_keys() {
                if marked.contains(&id) {
                    report.in_flight += 1;
                } else {
                    report.checked += 1;
                    report.differences.extra.push(id);
                }
            }
        }
        Mode::Sample(n) => {
            let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM students ORDER BY random() LIMIT $1")
                .bind(i64::from(n))
                .fetch_all(&services.pool)
                .await?;
            // Extra documents can only be found from the index side: sample it too.
            let v = services
                .search
                .json(
                    Method::Post,
                    &format!("/{alias}/_search"),
                    Some(&json!({"size": n, "_source": false, "query": {"function_score": {"random_score": {}}}})),
                )
                .await?;
            let sampled = v["hits"]["hits"].as_array().into_iter().flatten().filter_map(|h| h["_id"].as_str()?.parse::<i64>().ok());
            let mut candidates: Vec<i64> = ids.into_iter().chain(sampled).collect();
            candidates.sort_unstable();
            candidates.dedup();
            let (skipped, checked): (Vec<i64>, Vec<i64>) = candidates.into_iter().partition(|id| marked.contains(id));
            let found = compare(services, alias, &checked).await?;
            report.checked = checked.len() as u64;
            report.in_flight = skipped.len() as u64;
            report.differences = found;
        }
    }
    report.differences.sort();
    Ok(report)
}

/// Re-marks every student the report names; returns how many.
pub async fn repair(services: &Services, report: &Report) -> Result<u64, VerifyError> {
    let ids = report.differences.ids();
    sqlx::query("SELECT tidemark.mark_students($1)").bind(&ids).execute(&services.pool).await?;
    Ok(ids.len() as u64)
}

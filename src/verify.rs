//! Index against database: the one comparison of a document in the index with the document
//! built from the database now. A reindex checks its new index with it before the alias
//! moves; `admin verify` checks the live index (missing, extra and differing documents)
//! and, with `--repair`, re-marks those documents so the next sync rewrites (or deletes) them.
//!
//! Documents with an outstanding change are skipped by `admin verify`: they are about to
//! change anyway, and a difference there is a change in flight, not drift.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
};

use elasticsearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{document::Document, pipeline::load::load, search::SearchError, services::Services};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Search(#[from] SearchError),
}

/// How two sets of documents differ, by key.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Differences {
    /// Rows with no document.
    pub missing: Vec<String>,
    /// Documents of rows that do not exist.
    pub extra: Vec<String>,
    /// Documents that differ from the one built from the database now.
    pub differing: Vec<String>,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }

    /// Every key named, in order.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.missing.iter().chain(&self.extra).chain(&self.differing).cloned().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn record(&mut self, id: &str, indexed: Option<&Value>, built: Option<&Document>) {
        match (indexed, built) {
            (None, Some(_)) => self.missing.push(id.to_string()),
            (Some(_), None) => self.extra.push(id.to_string()),
            (Some(v), Some(d)) if !same(v, d) => self.differing.push(id.to_string()),
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
pub fn same(indexed: &Value, built: &Document) -> bool {
    *indexed == built.value()
}

/// A fingerprint of a document's content, for comparing millions without holding them:
/// serde_json's maps are ordered, so equal documents serialise to equal bytes.
fn fingerprint(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// Compares the documents of `ids` in `index` with the ones built from the database now.
pub async fn compare(services: &Services, index: &str, ids: &[String]) -> Result<Differences, VerifyError> {
    let mut out = Differences::default();
    for part in ids.chunks(1000) {
        let built = load(&services.pool, &services.model, part).await?;
        let indexed = services.search.mget(index, part).await?;
        for (id, doc) in &built {
            out.record(id, indexed.get(id), doc.document());
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `n` random rows from the database, and `n` random documents from the index.
    Sample(u32),
    /// Every row and every document.
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
        let list = |v: &[String]| {
            let shown: Vec<String> = v.iter().take(20).cloned().collect();
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

async fn marked(services: &Services) -> Result<HashSet<String>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT key FROM tidemark.outstanding").fetch_all(&services.pool).await?;
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
            let mut indexed: HashMap<String, u64> = HashMap::new();
            services
                .search
                .scan(alias, true, |id, source| {
                    indexed.insert(id, fingerprint(source));
                })
                .await?;
            // Every row, in key order, a page at a time.
            let mut after: Option<String> = None;
            loop {
                let keys: Vec<String> =
                    sqlx::query_scalar(&services.model.keys().after).bind(&after).bind(10_000_i64).fetch_all(&services.pool).await?;
                let Some(last) = keys.last().cloned() else { break };
                for (id, op) in load(&services.pool, &services.model, &keys).await? {
                    let got = indexed.remove(&id);
                    if marked.contains(&id) {
                        report.in_flight += 1;
                        continue;
                    }
                    report.checked += 1;
                    match (got, op.document()) {
                        (None, Some(_)) => report.differences.missing.push(id),
                        (Some(h), Some(b)) if h != fingerprint(&b.value()) => report.differences.differing.push(id),
                        _ => {}
                    }
                }
                after = Some(last);
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
            let ids: Vec<String> = sqlx::query_scalar(&services.model.keys().sample).bind(i64::from(n)).fetch_all(&services.pool).await?;
            // Extra documents can only be found from the index side: sample it too.
            let v = services
                .search
                .json(
                    Method::Post,
                    &format!("/{alias}/_search"),
                    Some(&json!({"size": n, "_source": false, "query": {"function_score": {"random_score": {}}}})),
                )
                .await?;
            let sampled = v["hits"]["hits"].as_array().into_iter().flatten().filter_map(|h| Some(h["_id"].as_str()?.to_string()));
            let mut candidates: Vec<String> = ids.into_iter().chain(sampled).collect();
            candidates.sort_unstable();
            candidates.dedup();
            let (skipped, checked): (Vec<String>, Vec<String>) = candidates.into_iter().partition(|id| marked.contains(id));
            let found = compare(services, alias, &checked).await?;
            report.checked = checked.len() as u64;
            report.in_flight = skipped.len() as u64;
            report.differences = found;
        }
    }
    report.differences.sort();
    Ok(report)
}

/// Re-marks every document the report names; returns how many.
pub async fn repair(services: &Services, report: &Report) -> Result<u64, VerifyError> {
    let ids = report.differences.ids();
    sqlx::query("SELECT tidemark.mark_keys($1)").bind(&ids).execute(&services.pool).await?;
    Ok(ids.len() as u64)
}

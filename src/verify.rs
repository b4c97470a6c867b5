//! `admin verify`: compares the index behind the alias with the database — missing, extra
//! and differing documents, by content hash — and, with `--repair`, re-marks those
//! students so the next sync rewrites (or deletes) them.
//!
//! Students with an outstanding mark are skipped: their document is about to change
//! anyway, and a difference there is a change in flight, not drift.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
};

use elasticsearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    engine::{Engine, EngineError},
    pipeline::load::{load, load_range},
    reindex::mget,
};

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `n` random students from the database, and `n` random documents from the index.
    Sample(u32),
    /// Every student and every document.
    Full,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Documents compared.
    pub checked: u64,
    /// Students with no document.
    pub missing: Vec<i64>,
    /// Documents of students that do not exist.
    pub extra: Vec<i64>,
    /// Documents that differ from the one built from the database now.
    pub differing: Vec<i64>,
    /// Skipped because a change of theirs is still being synced.
    pub in_flight: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }

    pub fn render(&self) -> String {
        let list = |v: &[i64]| {
            let shown: Vec<String> = v.iter().take(20).map(i64::to_string).collect();
            let more = if v.len() > 20 { format!(" … and {} more", v.len() - 20) } else { String::new() };
            format!("{}{}", shown.join(", "), more)
        };
        let mut out = format!("checked {} documents ({} skipped: changes in flight)\n", self.checked, self.in_flight);
        for (what, v) in [("missing", &self.missing), ("extra", &self.extra), ("differing", &self.differing)] {
            out.push_str(&format!("{what:<10} {:>6}  {}\n", v.len(), list(v)));
        }
        out
    }

    fn ids(&self) -> Vec<i64> {
        self.missing.iter().chain(&self.extra).chain(&self.differing).copied().collect()
    }
}

fn content_hash(v: &Value) -> u64 {
    // serde_json's maps are ordered, so equal documents serialise to equal bytes.
    let mut h = DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

fn doc_hash(doc: &crate::document::StudentDoc) -> u64 {
    content_hash(&serde_json::to_value(doc).expect("a document serialises"))
}

async fn marked(engine: &Engine) -> Result<HashSet<i64>, EngineError> {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT student_id FROM tidemark.dirty_students").fetch_all(&engine.pool).await?;
    Ok(ids.into_iter().collect())
}

pub async fn verify(engine: &Engine, mode: Mode) -> Result<Report, EngineError> {
    let alias = &engine.config.index_alias;
    engine.search.refresh(alias).await?;
    let marked = marked(engine).await?;
    let mut report = Report::default();
    match mode {
        Mode::Full => {
            let mut indexed: HashMap<i64, u64> = HashMap::new();
            scroll(engine, alias, |id, source| {
                indexed.insert(id, content_hash(source));
            })
            .await?;
            let (min, max): (Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT min(id), max(id) FROM students").fetch_one(&engine.pool).await?;
            if let (Some(min), Some(max)) = (min, max) {
                let mut lo = min;
                while lo <= max {
                    for (id, doc) in load_range(&engine.pool, lo, lo + 10_000).await? {
                        let got = indexed.remove(&id);
                        if marked.contains(&id) {
                            report.in_flight += 1;
                            continue;
                        }
                        report.checked += 1;
                        match (got, doc) {
                            (None, _) => report.missing.push(id),
                            (Some(h), Some(d)) if h != doc_hash(&d) => report.differing.push(id),
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
                    report.extra.push(id);
                }
            }
        }
        Mode::Sample(n) => {
            let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM students ORDER BY random() LIMIT $1")
                .bind(i64::from(n))
                .fetch_all(&engine.pool)
                .await?;
            let got = mget(&engine.search, alias, &ids).await?;
            for (id, doc) in load(&engine.pool, &ids).await? {
                if marked.contains(&id) {
                    report.in_flight += 1;
                    continue;
                }
                report.checked += 1;
                match (got.get(&id), doc) {
                    (None, Some(_)) => report.missing.push(id),
                    (Some(v), Some(d)) if content_hash(v) != doc_hash(&d) => report.differing.push(id),
                    _ => {}
                }
            }
            // Extra documents can only be found from the index side: sample it too.
            let v = engine
                .search
                .json(
                    Method::Post,
                    &format!("/{alias}/_search"),
                    Some(&json!({"size": n, "_source": false, "query": {"function_score": {"random_score": {}}}})),
                )
                .await?;
            let sampled: Vec<i64> = v["hits"]["hits"]
                .as_array()
                .map(|h| h.iter().filter_map(|h| h["_id"].as_str()?.parse().ok()).collect())
                .unwrap_or_default();
            let existing: Vec<i64> = sqlx::query_scalar("SELECT id FROM students WHERE id = ANY($1)").bind(&sampled).fetch_all(&engine.pool).await?;
            for id in sampled {
                if !existing.contains(&id) && !marked.contains(&id) {
                    report.checked += 1;
                    report.extra.push(id);
                }
            }
        }
    }
    for v in [&mut report.missing, &mut report.extra, &mut report.differing] {
        v.sort_unstable();
        v.dedup();
    }
    Ok(report)
}

/// Re-marks every student the report names; returns how many.
pub async fn repair(engine: &Engine, report: &Report) -> Result<u64, EngineError> {
    let ids = report.ids();
    sqlx::query("SELECT tidemark.mark_students($1)").bind(&ids).execute(&engine.pool).await?;
    Ok(ids.len() as u64)
}

/// Calls `f` with the id and source of every document in `target` (a scroll).
async fn scroll(engine: &Engine, target: &str, mut f: impl FnMut(i64, &Value)) -> Result<(), EngineError> {
    let search = &engine.search;
    let mut page = search
        .json(Method::Post, &format!("/{target}/_search?scroll=2m"), Some(&json!({"size": 5000, "query": {"match_all": {}}})))
        .await?;
    loop {
        let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            break;
        }
        for h in &hits {
            if let Some(id) = h["_id"].as_str().and_then(|s| s.parse().ok()) {
                f(id, &h["_source"]);
            }
        }
        let Some(scroll_id) = page["_scroll_id"].as_str().map(str::to_string) else { break };
        page = search.json(Method::Post, "/_search/scroll", Some(&json!({"scroll": "2m", "scroll_id": scroll_id}))).await?;
    }
    if let Some(id) = page["_scroll_id"].as_str() {
        let _ = search.json(Method::Delete, "/_search/scroll", Some(&json!({"scroll_id": id}))).await;
    }
    Ok(())
}

//! A foreign index: someone else's, named like one of tidemark's generations.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use super::Env;

/// `<alias>_2024`, a yearly archive with one document and an alias of its own
/// (`<alias>_archive`), created before tidemark's first build. tidemark numbers its
/// generations from its own records, so it must never number after it, prune it, write to
/// it, or put one of its aliases on it.
pub struct ForeignIndex {
    pub name: String,
    pub alias: String,
    doc: Value,
    uuid: String,
}

impl ForeignIndex {
    pub async fn create(env: &Env) -> ForeignIndex {
        let name = format!("{}_2024", env.alias);
        let alias = format!("{}_archive", env.alias);
        // Shaped like a student, under an id the seeded students have too.
        let doc = json!({
            "first_name": "Archived", "last_name": "Student", "age": 42, "year_in_school": "SR",
            "university": null, "course_names": ["ARCHIVE2024"], "note": "yearly archive, not tidemark's"
        });
        let mut aliases = serde_json::Map::new();
        aliases.insert(alias.clone(), json!({}));
        let body = json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}, "aliases": aliases});
        env.es_json(Method::PUT, &format!("/{name}"), Some(body)).await;
        env.es_json(Method::PUT, &format!("/{name}/_doc/1?refresh=true"), Some(doc.clone())).await;
        let settings = env.es_json(Method::GET, &format!("/{name}/_settings"), None).await;
        let uuid = settings[&name]["settings"]["index"]["uuid"].as_str().expect("index uuid").to_string();
        ForeignIndex { name, alias, doc, uuid }
    }

    /// What differs from how it was created; `ours` are tidemark's aliases.
    pub async fn problems(&self, env: &Env, ours: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let (status, settings) = env.es_try(Method::GET, &format!("/{}/_settings", self.name), None).await;
        if status != 200 {
            return vec![format!("it is gone (GET /{}/_settings: HTTP {status})", self.name)];
        }
        let uuid = settings[&self.name]["settings"]["index"]["uuid"].as_str().unwrap_or("");
        if uuid != self.uuid {
            out.push(format!("it was deleted and created again (uuid {} → {uuid})", self.uuid));
        }
        let (_, doc) = env.es_try(Method::GET, &format!("/{}/_doc/1", self.name), None).await;
        if doc["_source"] != self.doc || doc["_version"] != json!(1) {
            out.push(format!("its document changed: {doc}"));
        }
        let _ = env.es_try(Method::POST, &format!("/{}/_refresh", self.name), None).await;
        let (_, count) = env.es_try(Method::GET, &format!("/{}/_count", self.name), None).await;
        if count["count"] != json!(1) {
            out.push(format!("it holds {} documents, not 1", count["count"]));
        }
        let (_, aliases) = env.es_try(Method::GET, &format!("/{}/_alias", self.name), None).await;
        let names: BTreeSet<String> = aliases[&self.name]["aliases"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        if names != BTreeSet::from([self.alias.clone()]) {
            out.push(format!("its aliases are {names:?}, not [{:?}]", self.alias));
        }
        if let Some(a) = ours.iter().find(|a| names.contains(**a)) {
            out.push(format!("it carries tidemark's alias {a}"));
        }
        out
    }
}

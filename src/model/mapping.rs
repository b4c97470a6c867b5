//! The index mapping of a model: `dynamic: strict` (a document that drifts from the model is
//! refused and dead-lettered, never silently remapped), each field with its declared type,
//! a text field's keyword sub-field, related tables as objects, the completion field, and
//! the key again (a number, or a uuid as a keyword).

use serde_json::{json, Map, Value};

use super::{FieldType, KeyType, Model, Node};

/// The `mappings` of an index of `model`; `facets` are the fields the search application
/// aggregates on (their ordinals are built at refresh, not at the first search after it).
pub fn mappings(model: &Model) -> Value {
    let facets: Vec<&str> = model.search.as_ref().map(|s| s.facets.iter().map(|f| f.field.as_str()).collect()).unwrap_or_default();
    let mut properties = node_properties(&model.root, "", &facets);
    if let Some(c) = &model.completion {
        properties.insert(c.name.clone(), json!({"type": "completion"}));
    }
    if let Some(n) = &model.key_field {
        let kind = match model.root.key_type {
            KeyType::Integer => "long",
            KeyType::Uuid => "keyword",
        };
        properties.insert(n.clone(), json!({ "type": kind }));
    }
    json!({"dynamic": "strict", "properties": properties})
}

fn scalar(kind: FieldType, keyword: Option<&str>, path: &str, facets: &[&str]) -> Value {
    let eager = |p: &str| facets.contains(&p);
    match (kind, keyword) {
        (FieldType::Text, Some(k)) => {
            let sub = format!("{path}.{k}");
            let mut kw = json!({"type": "keyword"});
            if eager(&sub) {
                kw["eager_global_ordinals"] = json!(true);
            }
            json!({"type": "text", "fields": {k: kw}})
        }
        (FieldType::Keyword, _) if eager(path) => json!({"type": "keyword", "eager_global_ordinals": true}),
        (kind, _) => json!({"type": kind.name()}),
    }
}

fn node_properties(node: &Node, prefix: &str, facets: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    let path = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
    for f in &node.fields {
        out.insert(f.name.clone(), scalar(f.kind, f.keyword.as_deref(), &path(&f.name), facets));
    }
    for r in &node.relations {
        let here = path(&r.name);
        let value = match &r.value {
            Some(p) => {
                let (kind, keyword) = value_field(&r.node, p);
                scalar(kind, keyword.as_deref(), &here, facets)
            }
            None => json!({"properties": node_properties(&r.node, &here, facets)}),
        };
        out.insert(r.name.clone(), value);
    }
    out
}

fn value_field(node: &Node, path: &[String]) -> (FieldType, Option<String>) {
    let (first, rest) = path.split_first().expect("validated");
    if rest.is_empty() {
        let f = node.fields.iter().find(|f| &f.name == first).expect("validated");
        return (f.kind, f.keyword.clone());
    }
    let r = node.relations.iter().find(|r| &r.name == first).expect("validated");
    value_field(&r.node, rest)
}

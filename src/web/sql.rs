//! `engine=sql` for any model: the same request answered by PostgreSQL from the model's
//! own document query (`model::sql::document_query`, the one the sync indexes with), so the
//! documents compared are exactly the ones the index holds once synced. Every document
//! path of the view becomes a `jsonb_path_query` over the built document; facets are
//! counted with the same disjunctive semantics as the index (each under every selection
//! but its own), a document counted once per value (`count(DISTINCT key)`), distinct
//! counts exact.
//!
//! It builds every document of the table for each request: a yardstick to compare the
//! index with, not a way to serve a large table. Where it differs from the index, on
//! purpose: a text query matches whole words of the query fields, case-insensitively,
//! without typo tolerance, and every hit scores 1 (relevance order is key order).
//!
//! Statements are built from the model (validated names, quoted) and fixed fragments;
//! every value from the request is a bind parameter.

use std::collections::HashMap;

use serde_json::{json, Value};
use sqlx::{postgres::PgArguments, types::Json, Arguments, PgPool, Row};

use super::{
    params::MAX_RESULT_WINDOW,
    query::contains_ignoring_case,
    request::{Id, Request},
    response::{bucket_order, Raw, RawBucket, RawFacet, Relation, Total},
};
use crate::model::{sql::literal, FieldType, KeyType, Model};

struct Stmt {
    args: PgArguments,
    n: usize,
}

impl Stmt {
    fn new() -> Stmt {
        Stmt { args: PgArguments::default(), n: 0 }
    }

    fn bind<T>(&mut self, v: T) -> String
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
    {
        self.args.add(v).expect("a plain value always encodes");
        self.n += 1;
        format!("${}", self.n)
    }
}

/// The document path holding a field's values: a keyword sub-field (`title.raw`) is its
/// text field's.
fn source_path(model: &Model, path: &str) -> String {
    if let Some((parent, _)) = path.rsplit_once('.') {
        if let Some(r) = model.resolve(parent) {
            if r.kind == FieldType::Text && r.exact.as_deref() == Some(path) {
                return parent.to_string();
            }
        }
    }
    path.to_string()
}

/// A jsonpath (a SQL literal) reaching every value at a document path, through arrays.
fn jsonpath(model: &Model, path: &str) -> String {
    let p: String = source_path(model, path).split('.').map(|s| format!(".\"{s}\"[*]")).collect();
    literal(&format!("${p}"))
}

fn kind(model: &Model, path: &str) -> FieldType {
    model.resolve(path).map_or(FieldType::Keyword, |r| r.kind)
}

/// The conditions of the request on the document `d.doc`: the text query and every
/// selection but the one `except` names (`f{i}` or `h{i}`).
fn conditions(st: &mut Stmt, model: &Model, req: &Request, except: &str) -> String {
    let mut c: Vec<String> = vec!["true".into()];
    for w in req.words() {
        let p = st.bind(w.to_lowercase());
        let any: Vec<String> = req
            .view
            .query
            .iter()
            .map(|f| {
                format!(
                    "EXISTS (SELECT 1 FROM jsonb_path_query(d.doc, {}) x WHERE {p} = ANY(regexp_split_to_array(lower(x #>> '{{}}'), '[^[:alnum:]]+')))",
                    jsonpath(model, f)
                )
            })
            .collect();
        c.push(if any.is_empty() { "false".into() } else { format!("({})", any.join(" OR ")) });
    }
    for (i, f) in req.view.facets.iter().enumerate() {
        if except == format!("f{i}") || req.selected[i].is_empty() {
            continue;
        }
        let p = st.bind(req.selected[i].clone());
        c.push(format!("EXISTS (SELECT 1 FROM jsonb_path_query(d.doc, {}) x WHERE x #>> '{{}}' = ANY({p}))", jsonpath(model, &f.field)));
    }
    for (i, h) in req.view.histograms.iter().enumerate() {
        let r = req.ranges[i];
        if except == format!("h{i}") || r.is_empty() {
            continue;
        }
        let mut within = Vec::new();
        if let Some(g) = r.gte {
            within.push(format!("(x #>> '{{}}')::numeric >= {}", st.bind(g)));
        }
        if let Some(l) = r.lt {
            within.push(format!("(x #>> '{{}}')::numeric < {}", st.bind(l)));
        }
        c.push(format!("EXISTS (SELECT 1 FROM jsonb_path_query(d.doc, {}) x WHERE {})", jsonpath(model, &h.field), within.join(" AND ")));
    }
    c.join(" AND ")
}

/// Every document of the model, as `d(key, doc jsonb)`.
fn documents(model: &Model) -> String {
    format!("d AS MATERIALIZED (SELECT x.key, x.doc::jsonb AS doc FROM ({}) x(key, doc))", model.documents_query())
}

/// Total, facets and histograms in one statement: rows of (aggregation, key, count, distinct).
fn counts_sql(st: &mut Stmt, model: &Model, req: &Request) -> String {
    let distinct_join = |alias: &str| match req.distinct {
        Some(d) => (
            format!(
                " LEFT JOIN LATERAL (SELECT x #>> '{{}}' AS k FROM jsonb_path_query({alias}.doc, {}) x) dv ON true",
                jsonpath(model, &req.view.distinct[d].field)
            ),
            "count(DISTINCT dv.k)::int8",
        ),
        None => (String::new(), "NULL::int8"),
    };
    let mut parts = Vec::new();
    for (i, f) in req.view.facets.iter().enumerate() {
        let cond = conditions(st, model, req, &format!("f{i}"));
        let (join, dn) = distinct_join("d");
        parts.push(format!(
            "SELECT 'f{i}'::text AS agg, v.k, count(DISTINCT d.key)::int8 AS n, {dn} AS dn
               FROM d CROSS JOIN LATERAL (SELECT DISTINCT x #>> '{{}}' AS k FROM jsonb_path_query(d.doc, {path}) x) v{join}
              WHERE v.k IS NOT NULL AND {cond} GROUP BY v.k",
            path = jsonpath(model, &f.field)
        ));
    }
    for (i, h) in req.view.histograms.iter().enumerate() {
        let cond = conditions(st, model, req, &format!("h{i}"));
        let (join, dn) = distinct_join("d");
        let interval = h.interval.max(1);
        parts.push(format!(
            "SELECT 'h{i}'::text AS agg, v.k, count(DISTINCT d.key)::int8 AS n, {dn} AS dn
               FROM d CROSS JOIN LATERAL (SELECT DISTINCT (floor((x #>> '{{}}')::numeric / {interval}) * {interval})::int8::text AS k
                                             FROM jsonb_path_query(d.doc, {path}) x WHERE jsonb_typeof(x) = 'number') v{join}
              WHERE {cond} GROUP BY v.k",
            path = jsonpath(model, &h.field)
        ));
    }
    let cond = conditions(st, model, req, "");
    parts.push(format!(
        "SELECT 'total'::text, NULL::text, count(*)::int8, NULL::int8 FROM (SELECT 1 FROM d WHERE {cond} LIMIT {}) t",
        MAX_RESULT_WINDOW + 1
    ));
    format!("WITH {} {}", documents(model), parts.join(" UNION ALL "))
}

/// A sort field's first value in the document, typed for ordering.
fn sort_expr(model: &Model, path: &str) -> String {
    let first = format!("(jsonb_path_query_first(d.doc, {}) #>> '{{}}')", jsonpath(model, path));
    match kind(model, path) {
        k if k.is_numeric() => format!("{first}::numeric"),
        FieldType::Boolean => format!("{first}::boolean"),
        _ => format!("{first} COLLATE \"C\""),
    }
}

/// The document's key, typed: the last sort key, as the index's key field is.
fn key_expr(req: &Request) -> &'static str {
    match req.key_type {
        KeyType::Integer => "d.key::int8",
        KeyType::Uuid => "d.key::uuid",
    }
}

/// Strictly after the cursor in the order `ORDER BY k1, …, key` (keys NULLS LAST).
fn after_condition(st: &mut Stmt, model: &Model, req: &Request) -> Option<String> {
    let after = req.after.as_ref()?;
    let id = match Id::of_cursor(req.key_type, after.last()?)? {
        Id::Integer(n) => st.bind(n),
        Id::Uuid(u) => format!("{}::uuid", st.bind(u)),
    };
    let key = key_expr(req);
    let Some(i) = req.order.sort else { return Some(format!("{key} > {id}")) };
    let cmp = if req.order.descending { "<" } else { ">" };
    let mut cond = format!("{key} > {id}");
    for (f, v) in req.view.sorts[i].fields.iter().zip(after).rev() {
        let e = sort_expr(model, f);
        let k = kind(model, f);
        cond = match v {
            Value::Null => format!("({e} IS NULL AND {cond})"),
            v => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let p = st.bind(text);
                let typed = match k {
                    k if k.is_numeric() => format!("{p}::numeric"),
                    FieldType::Boolean => format!("{p}::boolean"),
                    _ => format!("{p} COLLATE \"C\""),
                };
                format!("({e} {cmp} {typed} OR {e} IS NULL OR ({e} = {typed} AND {cond}))")
            }
        };
    }
    Some(cond)
}

fn hits_sql(st: &mut Stmt, model: &Model, req: &Request) -> String {
    let mut cond = conditions(st, model, req, "");
    if let Some(a) = after_condition(st, model, req) {
        cond = format!("{cond} AND {a}");
    }
    let key = key_expr(req);
    let order = match req.order.sort {
        None => key.to_string(),
        Some(i) => {
            let dir = if req.order.descending { "DESC" } else { "ASC" };
            let mut keys: Vec<String> =
                req.view.sorts[i].fields.iter().map(|f| format!("{} {dir} NULLS LAST", sort_expr(model, f))).collect();
            keys.push(key.to_string());
            keys.join(", ")
        }
    };
    let limit = st.bind(req.size as i64 + 1);
    let offset = st.bind(if req.after.is_some() { 0 } else { (req.page as i64 - 1) * req.size as i64 });
    format!("WITH {} SELECT d.key, d.doc FROM d WHERE {cond} ORDER BY {order} LIMIT {limit} OFFSET {offset}", documents(model))
}

fn terms(req: &Request, i: usize, rows: Vec<RawBucket<String>>) -> RawFacet {
    let mut all = rows;
    let selected: Vec<RawBucket<String>> = all.iter().filter(|b| req.selected[i].contains(&b.key)).cloned().collect();
    if let Some(s) = req.facet_search(i) {
        all.retain(|b| contains_ignoring_case(&b.key, s));
    }
    all.sort_by(bucket_order);
    let size = req.facet_size as usize;
    let sum_other = all.iter().skip(size).filter(|b| !req.selected[i].contains(&b.key)).map(|b| b.doc_count).sum();
    all.truncate(size);
    RawFacet { top: all, sum_other, selected }
}

/// (key, count, distinct count) of one aggregation.
type CountRow = (Option<String>, i64, Option<i64>);

pub async fn search(pool: &PgPool, model: &Model, req: &Request) -> Result<Raw, sqlx::Error> {
    let mut cs = Stmt::new();
    let counts = counts_sql(&mut cs, model, req);
    let mut hs = Stmt::new();
    let hits = hits_sql(&mut hs, model, req);
    let (count_rows, hit_rows) =
        tokio::try_join!(sqlx::query_with(&counts, cs.args).fetch_all(pool), sqlx::query_with(&hits, hs.args).fetch_all(pool))?;
    let mut by_agg: HashMap<String, Vec<CountRow>> = HashMap::new();
    for r in count_rows {
        by_agg.entry(r.try_get(0)?).or_default().push((r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
    }
    let total_n = by_agg.get("total").and_then(|t| t.first()).map_or(0, |r| r.1).max(0) as u64;
    let total = if total_n > MAX_RESULT_WINDOW {
        Total { value: MAX_RESULT_WINDOW, relation: Relation::Gte }
    } else {
        Total { value: total_n, relation: Relation::Eq }
    };
    let rows_of = |agg: &str| by_agg.get(agg).cloned().unwrap_or_default();
    let facets = (0..req.view.facets.len())
        .map(|i| {
            let rows = rows_of(&format!("f{i}"))
                .into_iter()
                .filter_map(|(k, n, d)| Some(RawBucket { key: k?, doc_count: n as u64, distinct: d.map(|d| d as u64) }))
                .collect();
            terms(req, i, rows)
        })
        .collect();
    let histograms = (0..req.view.histograms.len())
        .map(|i| {
            rows_of(&format!("h{i}"))
                .into_iter()
                .filter_map(|(k, n, d)| Some(RawBucket { key: k?.parse().ok()?, doc_count: n as u64, distinct: d.map(|d| d as u64) }))
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(hit_rows.len());
    for r in hit_rows {
        let Json(doc): Json<Value> = r.try_get(1)?;
        let Some(id) = Id::parse(req.key_type, r.try_get(0)?) else { continue };
        let cursor = match req.order.sort {
            None => vec![json!(1.0), id.json()],
            Some(i) => {
                let mut c: Vec<Value> = req.view.sorts[i]
                    .fields
                    .iter()
                    .map(|f| match crate::model::value_at(&doc, &source_path(model, f)) {
                        Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
                        v => v,
                    })
                    .collect();
                c.push(id.json());
                c
            }
        };
        let highlight = (!req.q.is_empty()).then_some(&Value::Null);
        out.push(super::query::hit(req, id, &doc, 1.0, highlight, cursor));
    }
    Ok(Raw { total, hits: out, facets, histograms })
}

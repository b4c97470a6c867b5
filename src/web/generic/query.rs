//! A model's request as `_search` bodies, built from its view: the counts (total, every
//! facet, every histogram, distinct counts; `size: 0`) and the hits, as the students'
//! builder splits them (`super::super::query`). Facets are disjunctive: each facet is
//! counted under every selection but its own, the selections narrow the hits. User text
//! only ever appears as a JSON string value.

use serde_json::{json, Map, Value};

use super::{Hit, Id, Raw, RawBucket, RawFacet, Request, PRECISION_THRESHOLD};
use crate::{
    model::{KeyType, Model, Piece},
    web::{
        params::MAX_RESULT_WINDOW,
        query::{contains_ignoring_case, contains_regex},
        response::{segments, Relation, Segment, Total},
    },
};

const PRE: char = '\u{E000}';
const POST: char = '\u{E001}';

fn facet_clause(req: &Request, i: usize) -> Option<Value> {
    let values = &req.selected[i];
    (!values.is_empty()).then(|| json!({"terms": {req.view.facets[i].field.as_str(): values}}))
}

fn range_clause(req: &Request, i: usize) -> Option<Value> {
    let r = &req.ranges[i];
    if r.is_empty() {
        return None;
    }
    let mut range = Map::new();
    if let Some(g) = r.gte {
        range.insert("gte".into(), json!(g));
    }
    if let Some(l) = r.lt {
        range.insert("lt".into(), json!(l));
    }
    Some(json!({"range": {req.view.histograms[i].field.as_str(): range}}))
}

/// What is left out of a filter: a facet's own selection, or a histogram's range.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Except {
    Nothing,
    Facet(usize),
    Histogram(usize),
}

/// Every selection but `except`'s, as one filter; None when there is none.
fn selections(req: &Request, except: Except) -> Option<Value> {
    let mut clauses: Vec<Value> =
        (0..req.view.facets.len()).filter(|i| except != Except::Facet(*i)).filter_map(|i| facet_clause(req, i)).collect();
    clauses.extend((0..req.view.histograms.len()).filter(|i| except != Except::Histogram(*i)).filter_map(|i| range_clause(req, i)));
    (!clauses.is_empty()).then(|| json!({"bool": {"filter": clauses}}))
}

/// Each word must match one of the view's query fields, with typos forgiven.
fn text_query(req: &Request) -> Value {
    let words = req.words();
    if words.is_empty() {
        return json!({"match_all": {}});
    }
    let must: Vec<Value> = words
        .iter()
        .map(|w| json!({"multi_match": {"query": w, "fields": req.view.query, "fuzziness": "AUTO", "lenient": true}}))
        .collect();
    json!({"bool": {"must": must}})
}

fn with_distinct(mut agg: Value, req: &Request) -> Value {
    if let Some(d) = req.distinct {
        agg["aggs"] =
            json!({"distinct": {"cardinality": {"field": req.view.distinct[d].field, "precision_threshold": PRECISION_THRESHOLD}}});
    }
    agg
}

/// The counts of a search: total, facets, histograms, distinct counts; no hits.
pub fn counts_body(req: &Request) -> Value {
    let mut aggs = Map::new();
    for (i, f) in req.view.facets.iter().enumerate() {
        let size = req.facet_size;
        let mut terms = json!({
            "field": f.field,
            "size": size,
            "shard_size": size * 3 / 2 + 10,
            "order": [{"_count": "desc"}, {"_key": "asc"}],
        });
        if let Some(text) = req.facet_search(i) {
            terms["include"] = json!(contains_regex(text));
        }
        let mut inner = Map::new();
        inner.insert("top".into(), with_distinct(json!({ "terms": terms }), req));
        let selected = &req.selected[i];
        if !selected.is_empty() {
            inner.insert(
                "selected".into(),
                with_distinct(json!({"terms": {"field": f.field, "include": selected, "size": selected.len(), "min_doc_count": 0}}), req),
            );
        }
        let filter = selections(req, Except::Facet(i)).unwrap_or_else(|| json!({"match_all": {}}));
        aggs.insert(format!("f{i}"), json!({"filter": filter, "aggs": inner}));
    }
    for (i, h) in req.view.histograms.iter().enumerate() {
        let filter = selections(req, Except::Histogram(i)).unwrap_or_else(|| json!({"match_all": {}}));
        let histogram = with_distinct(json!({"histogram": {"field": h.field, "interval": h.interval, "min_doc_count": 0}}), req);
        aggs.insert(format!("h{i}"), json!({"filter": filter, "aggs": {"histogram": histogram}}));
    }
    let mut body = json!({"size": 0, "query": text_query(req), "track_total_hits": MAX_RESULT_WINDOW, "aggs": aggs});
    if let Some(all) = selections(req, Except::Nothing) {
        body["post_filter"] = all;
    }
    body
}

/// Relevance without a text query: every score is the same, hits are in key order.
fn by_key_alone(req: &Request) -> bool {
    req.q.is_empty() && req.order.sort.is_none()
}

fn sort(req: &Request) -> Value {
    // The tie-break: the key again (`Request::key_field`), a long or a keyword. Not `_id`,
    // which newer engines refuse to sort on (its fielddata is off by default).
    let unmapped = match req.key_type {
        KeyType::Integer => "long",
        KeyType::Uuid => "keyword",
    };
    let Some(key_field) = &req.key_field else {
        // None declared: ties go by `_seq_no`, the order the shard received the documents
        // in. It is unique within a shard only and a rewritten document moves to the end,
        // so no cursor can rest on it; but unlike the engine's own order of ties (a
        // document's position among the segments, which a merge of segments that are not
        // neighbours changes) it holds while nothing is written, which is what `page=N`
        // (`from`) needs.
        let written = json!({"_seq_no": {"order": "asc"}});
        return match req.order.sort {
            None => json!([{"_score": {"order": "desc"}}, written]),
            Some(i) => {
                let order = if req.order.descending { "desc" } else { "asc" };
                let mut keys: Vec<Value> =
                    req.view.sorts[i].fields.iter().map(|f| json!({f.as_str(): {"order": order, "missing": "_last"}})).collect();
                keys.push(written);
                Value::Array(keys)
            }
        };
    };
    let key = json!({key_field.as_str(): {"order": "asc", "unmapped_type": unmapped}});
    match req.order.sort {
        None if by_key_alone(req) => json!([key]),
        None => json!([{"_score": {"order": "desc"}}, key]),
        Some(i) => {
            let order = if req.order.descending { "desc" } else { "asc" };
            let mut keys: Vec<Value> =
                req.view.sorts[i].fields.iter().map(|f| json!({f.as_str(): {"order": order, "missing": "_last"}})).collect();
            keys.push(key);
            Value::Array(keys)
        }
    }
}

/// What a hit needs from `_source`: the title's fields and the fields shown (its key is
/// its `_id`).
pub fn source(model: &Model, req: &Request) -> Vec<String> {
    let mut s: Vec<String> = req.view.title.fields().map(str::to_string).collect();
    s.extend(req.view.show.iter().cloned());
    let _ = model;
    s.dedup();
    s
}

/// The hits of a search: one page, and one more hit to know whether another follows.
pub fn hits_body(model: &Model, req: &Request) -> Value {
    let query = match selections(req, Except::Nothing) {
        None => text_query(req),
        Some(filter) => json!({"bool": {"must": [text_query(req)], "filter": [filter]}}),
    };
    let end = if req.after.is_some() { 0 } else { req.page as u64 * req.size as u64 };
    let size = if end + 1 > MAX_RESULT_WINDOW { req.size } else { req.size + 1 };
    let mut body = json!({
        "query": query,
        "size": size,
        "track_total_hits": false,
        "_source": source(model, req),
        "sort": sort(req),
    });
    if let Some(after) = &req.after {
        body["search_after"] = if by_key_alone(req) { json!([after.last()]) } else { Value::Array(after.clone()) };
    } else if req.page > 1 {
        body["from"] = json!((req.page - 1) * req.size);
    }
    if !req.q.is_empty() {
        let fields: Map<String, Value> = req.view.query.iter().map(|f| (f.clone(), json!({}))).collect();
        body["highlight"] =
            json!({"pre_tags": [PRE.to_string()], "post_tags": [POST.to_string()], "number_of_fragments": 0, "fields": fields});
        body["track_scores"] = json!(true);
    }
    body
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn buckets(agg: &Value, req: &Request) -> Vec<RawBucket<String>> {
    agg["buckets"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .filter_map(|b| {
                    let key = match &b["key"] {
                        Value::String(s) => s.clone(),
                        Value::Null => return None,
                        other => b["key_as_string"].as_str().map_or_else(|| other.to_string(), str::to_string),
                    };
                    Some(RawBucket {
                        key,
                        doc_count: u64_of(&b["doc_count"]),
                        distinct: req.distinct.map(|_| u64_of(&b["distinct"]["value"])),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A document's value at a path (`university.name`): arrays of objects give arrays.
pub fn value_at(doc: &Value, path: &str) -> Value {
    let mut v = doc.clone();
    for part in path.split('.') {
        v = match v {
            Value::Array(a) => Value::Array(a.iter().map(|x| x[part].clone()).filter(|x| !x.is_null()).collect()),
            Value::Object(o) => o.get(part).cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        };
    }
    v
}

/// A hit as the page and the API show it, from a document's source (and highlight).
pub fn hit(req: &Request, id: Id, source: &Value, score: f64, highlight: Option<&Value>, cursor: Vec<Value>) -> Hit {
    let title = super::title(&req.view, source, &id);
    let blank = req.view.title.render(source).trim().is_empty();
    let highlight = highlight.map(|h| {
        if blank {
            // Titled by its key (see `super::title`), which no query matches.
            return Segment::plain(&title);
        }
        let mut out: Vec<Segment> = Vec::new();
        for p in &req.view.title.0 {
            match p {
                Piece::Text(t) => out.extend(Segment::plain(t)),
                Piece::Field(f) => match h[f.as_str()][0].as_str() {
                    Some(fragment) => out.extend(segments(fragment, PRE, POST)),
                    None => out.extend(Segment::plain(&crate::model::Template(vec![p.clone()]).render(source))),
                },
            }
        }
        out.retain(|s| !s.text.is_empty());
        out
    });
    let fields = super::Ordered(req.view.show.iter().map(|f| (f.clone(), value_at(source, f))).collect());
    Hit { id, score, title, highlight, fields, cursor }
}

/// Reads the engine's answers to [`counts_body`] and [`hits_body`].
pub fn read(req: &Request, counts: &Value, hits: &Value) -> Raw {
    let aggs = &counts["aggregations"];
    let facets = (0..req.view.facets.len())
        .map(|i| {
            let agg = &aggs[format!("f{i}")];
            let (top, selected) = (buckets(&agg["top"], req), buckets(&agg["selected"], req));
            let pinned: u64 = selected
                .iter()
                .filter(|s| !top.iter().any(|t| t.key == s.key))
                .filter(|s| req.facet_search(i).is_none_or(|text| contains_ignoring_case(&s.key, text)))
                .map(|s| s.doc_count)
                .sum();
            RawFacet { sum_other: u64_of(&agg["top"]["sum_other_doc_count"]).saturating_sub(pinned), top, selected }
        })
        .collect();
    let histograms = (0..req.view.histograms.len())
        .map(|i| {
            aggs[format!("h{i}")]["histogram"]["buckets"]
                .as_array()
                .map(|bs| {
                    bs.iter()
                        .filter_map(|b| {
                            Some(RawBucket {
                                key: b["key"].as_f64()? as i64,
                                doc_count: u64_of(&b["doc_count"]),
                                distinct: req.distinct.map(|_| u64_of(&b["distinct"]["value"])),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let total = &counts["hits"]["total"];
    let total = Total { value: u64_of(&total["value"]), relation: if total["relation"] == "gte" { Relation::Gte } else { Relation::Eq } };
    let with_highlight = !req.q.is_empty();
    let hits = hits["hits"]["hits"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter_map(|h| {
                    let s = &h["_source"];
                    let id = Id::parse(req.key_type, h["_id"].as_str()?)?;
                    let score = h["_score"].as_f64().unwrap_or(1.0);
                    // The sort values, the key last (as the key field gives it, and as `_id`
                    // does where a model declares none).
                    let mut cursor = match req.order.sort {
                        None => vec![json!(score)],
                        Some(i) => h["sort"]
                            .as_array()
                            .map(|s| s.iter().take(req.view.sorts[i].fields.len()).cloned().collect())
                            .unwrap_or_default(),
                    };
                    cursor.push(id.json());
                    Some(hit(req, id, s, score, with_highlight.then_some(&h["highlight"]), cursor))
                })
                .collect()
        })
        .unwrap_or_default();
    Raw { total, hits, facets, histograms }
}

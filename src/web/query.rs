//! A request as `_search` bodies, built from the model's view: the counts (total, every
//! facet, every histogram, distinct counts; `size: 0`) and the hits, two requests, so that
//! each can be reused on its own (`super::reuse`). Facets are disjunctive: each facet is
//! counted under every selection but its own, the selections narrow the hits. User text
//! only ever appears as a JSON string value.

use serde_json::{json, Map, Value};

use super::{
    params::MAX_RESULT_WINDOW,
    request::{Id, Request},
    response::{segments, Hit, Ordered, Raw, RawBucket, RawFacet, Relation, Segment, Total, PRECISION_THRESHOLD},
};
use crate::model::{value_at, KeyType, Piece, Suggest};

const PRE: char = '\u{E000}';
const POST: char = '\u{E001}';

/// The two cases of a letter that has exactly one of each (`a` → `(a, A)`); None for
/// anything else, which only matches itself.
fn case_pair(c: char) -> Option<(char, char)> {
    let (lo, up): (Vec<char>, Vec<char>) = (c.to_lowercase().collect(), c.to_uppercase().collect());
    (c.is_alphabetic() && lo.len() == 1 && up.len() == 1 && lo[0] != up[0]).then(|| (lo[0], up[0]))
}

/// Whether `value` contains `text` ignoring case, exactly as [`contains_regex`] matches
/// it in the index: each letter in either of its cases, everything else as itself.
pub fn contains_ignoring_case(value: &str, text: &str) -> bool {
    let pattern: Vec<(char, char)> = text.chars().map(|c| case_pair(c).unwrap_or((c, c))).collect();
    let value: Vec<char> = value.chars().collect();
    pattern.is_empty() || value.windows(pattern.len()).any(|w| w.iter().zip(&pattern).all(|(c, (lo, up))| c == lo || c == up))
}

/// A Lucene regular expression matching any value that contains `text`, ignoring case:
/// letters become `[aA]`, everything else that is not a letter or digit is escaped.
pub fn contains_regex(text: &str) -> String {
    let mut re = String::from(".*");
    for c in text.chars() {
        if let Some((lo, up)) = case_pair(c) {
            re.push('[');
            re.push(lo);
            re.push(up);
            re.push(']');
        } else if c.is_alphanumeric() {
            re.push(c);
        } else {
            re.push('\\');
            re.push(c);
        }
    }
    re.push_str(".*");
    re
}

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
        let top = with_distinct(json!({ "terms": terms }), req);
        let selected = &req.selected[i];
        let selected = (!selected.is_empty()).then(|| {
            with_distinct(json!({"terms": {"field": f.field, "include": selected, "size": selected.len(), "min_doc_count": 0}}), req)
        });
        // Under other selections, inside a `filter` aggregation; under none, at the top
        // level, where the engine skips a bucket aggregation's work.
        match selections(req, Except::Facet(i)) {
            None => {
                aggs.insert(format!("f{i}"), top);
                if let Some(s) = selected {
                    aggs.insert(format!("f{i}_selected"), s);
                }
            }
            Some(filter) => {
                let mut inner = Map::new();
                inner.insert("top".into(), top);
                if let Some(s) = selected {
                    inner.insert("selected".into(), s);
                }
                aggs.insert(format!("f{i}"), json!({"filter": filter, "aggs": inner}));
            }
        }
    }
    for (i, h) in req.view.histograms.iter().enumerate() {
        let histogram = with_distinct(json!({"histogram": {"field": h.field, "interval": h.interval, "min_doc_count": 0}}), req);
        match selections(req, Except::Histogram(i)) {
            None => aggs.insert(format!("h{i}"), histogram),
            Some(filter) => aggs.insert(format!("h{i}"), json!({"filter": filter, "aggs": {"histogram": histogram}})),
        };
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
    let tie = match &req.key_field {
        Some(key_field) => json!({key_field.as_str(): {"order": "asc", "unmapped_type": unmapped}}),
        // None declared: ties go by `_seq_no`, the order the shard received the documents
        // in. It is unique within a shard only and a rewritten document moves to the end,
        // so no cursor can rest on it; but unlike the engine's own order of ties (a
        // document's position among the segments, which a merge of segments that are not
        // neighbours changes) it holds while nothing is written, which is what `page=N`
        // (`from`) needs.
        None => json!({"_seq_no": {"order": "asc"}}),
    };
    match req.order.sort {
        None if req.key_field.is_some() && by_key_alone(req) => json!([tie]),
        None => json!([{"_score": {"order": "desc"}}, tie]),
        Some(i) => {
            let order = if req.order.descending { "desc" } else { "asc" };
            let mut keys: Vec<Value> =
                req.view.sorts[i].fields.iter().map(|f| json!({f.as_str(): {"order": order, "missing": "_last"}})).collect();
            keys.push(tie);
            Value::Array(keys)
        }
    }
}

/// What a hit needs from `_source`: the title's fields and the fields shown (its key is
/// its `_id`).
pub fn source(req: &Request) -> Vec<String> {
    let mut s: Vec<String> = req.view.title.fields().chain(req.view.show.iter().map(String::as_str)).map(str::to_string).collect();
    s.sort();
    s.dedup();
    s
}

/// The hits of a search: one page, and one more hit to know whether another follows.
pub fn hits_body(req: &Request) -> Value {
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
        "_source": source(req),
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

/// Autocomplete: the documents whose completion inputs start with `prefix` (every one, not
/// one per input: two documents labelled alike are two entries), with what the label and
/// the detail read.
pub fn suggest_body(sg: &Suggest, prefix: &str, size: u32) -> Value {
    let source: Vec<&str> = sg.label.fields().chain(sg.detail.iter().flat_map(|d| d.fields())).collect();
    json!({
        "size": 0,
        "_source": source,
        "suggest": {"s": {"prefix": prefix, "completion": {"field": sg.field, "skip_duplicates": false, "size": size}}}
    })
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

/// A hit as the page and the API show it, from a document's source (and highlight).
pub fn hit(req: &Request, id: Id, source: &Value, score: f64, highlight: Option<&Value>, cursor: Vec<Value>) -> Hit {
    let title = super::request::title(&req.view, source, &id);
    let blank = req.view.title.render(source).trim().is_empty();
    let highlight = highlight.map(|h| {
        if blank {
            // Titled by its key (see `super::request::title`), which no query matches.
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
    let fields = Ordered(req.view.show.iter().map(|f| (f.clone(), value_at(source, f))).collect());
    Hit { id, score, title, highlight, fields, cursor }
}

/// Reads the engine's answers to [`counts_body`] and [`hits_body`].
pub fn read(req: &Request, counts: &Value, hits: &Value) -> Raw {
    let aggs = &counts["aggregations"];
    let facets = (0..req.view.facets.len())
        .map(|i| {
            // Where `counts_body` put them: at the top level, or in the facet's filter.
            let (top, selected) = match selections(req, Except::Facet(i)) {
                None => (&aggs[format!("f{i}")], &aggs[format!("f{i}_selected")]),
                Some(_) => (&aggs[format!("f{i}")]["top"], &aggs[format!("f{i}")]["selected"]),
            };
            let sum_other = u64_of(&top["sum_other_doc_count"]);
            let (top, selected) = (buckets(top, req), buckets(selected, req));
            let pinned: u64 = selected
                .iter()
                .filter(|s| !top.iter().any(|t| t.key == s.key))
                .filter(|s| req.facet_search(i).is_none_or(|text| contains_ignoring_case(&s.key, text)))
                .map(|s| s.doc_count)
                .sum();
            RawFacet { sum_other: sum_other.saturating_sub(pinned), top, selected }
        })
        .collect();
    let histograms = (0..req.view.histograms.len())
        .map(|i| {
            let h = match selections(req, Except::Histogram(i)) {
                None => &aggs[format!("h{i}")],
                Some(_) => &aggs[format!("h{i}")]["histogram"],
            };
            h["buckets"]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn students(q: &str) -> Request {
        Request::parse(&crate::model::Model::students(), Some(q)).unwrap()
    }

    #[test]
    fn user_text_stays_a_string_value() {
        let nasty = r#"x"}}, "script": {"source": "boom"}, {"#;
        let req = students(&format!("q={}&course={}", urlencode(nasty), urlencode("a\"b")));
        for body in [counts_body(&req), hits_body(&req)] {
            assert!(body.to_string().contains(r#""query":"x\"}},"#), "{body}");
            assert!(body.get("script").is_none());
        }
    }

    #[test]
    fn facet_search_is_an_escaped_case_insensitive_regex() {
        assert_eq!(contains_regex("ma.t("), ".*[mM][aA]\\.[tT]\\(.*");
        assert_eq!(contains_regex("101"), ".*101.*");
        let body = counts_body(&students("course_q=ma.t"));
        assert_eq!(body["aggs"]["f0"]["terms"]["include"], json!(".*[mM][aA]\\.[tT].*"));
    }

    #[test]
    fn the_facet_search_predicate_matches_what_the_regex_matches() {
        for (value, text, matches) in [
            ("MATH201", "mAtH", true),
            ("MATH201", "h2", true),
            ("CS101", "math", false),
            ("Université Paris", "UNIVERSITÉ", true),
            ("A.B", ".", true),
            ("AxB", "a.b", false),
            ("MIT", "", true),
            ("MI", "MIT", false),
        ] {
            assert_eq!(contains_ignoring_case(value, text), matches, "{value:?} contains {text:?}");
        }
    }

    #[test]
    fn each_facet_ignores_its_own_selection() {
        let req = students("course=CS101&university=MIT");
        let body = counts_body(&req);
        let course_filter = body["aggs"]["f0"]["filter"].to_string();
        assert!(course_filter.contains("MIT") && !course_filter.contains("CS101"), "{course_filter}");
        let university_filter = body["aggs"]["f1"]["filter"].to_string();
        assert!(university_filter.contains("CS101") && !university_filter.contains("MIT"), "{university_filter}");
        // A facet no other selection narrows is counted at the top level, without a filter.
        let only = counts_body(&students("course=CS101"));
        assert_eq!(only["aggs"]["f0"]["terms"]["field"], "course_names", "{only}");
        assert_eq!(only["aggs"]["f0_selected"]["terms"]["include"], json!(["CS101"]), "{only}");
        assert!(only["aggs"]["f0"]["filter"].is_null() && only["aggs"]["h0"]["filter"].to_string().contains("CS101"), "{only}");
        assert_eq!(counts_body(&students(""))["aggs"]["h0"]["histogram"]["field"], "age");
        let hits = hits_body(&req).to_string();
        assert!(hits.contains("MIT") && hits.contains("CS101"), "{hits}");
    }

    fn urlencode(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }
}

//! The one query builder: a [`SearchRequest`] becomes `_search` bodies, and the engine's
//! answers become a [`Raw`] for [`super::response`]. User text only ever appears here as a
//! JSON string value (a match query, a term, an escaped regular expression), never as
//! query JSON.
//!
//! `tidemark serve` splits a search in two requests, each asking the engine only for what
//! it needs ([`counts_body`], [`hits_body`]):
//!
//! - **counts** (total, facets, histogram, distinct counts) do not depend on the page, the
//!   sort or `after`: a `size: 0` request, which the engine's shard request cache can
//!   answer until the next refresh (tidemark itself may reuse it, as it may the hits:
//!   `super::reuse`).
//!   A facet whose other facets have no selection is a top-level aggregation, not one
//!   inside a `filter` aggregation (with no selection at all, every one is); distinct
//!   counts are asked only here, never of the hits, and not where the answer is known
//!   without counting (a single-valued field's own facet: one per non-empty bucket);
//! - **hits** counts nothing (`track_total_hits: false`: the total comes with the counts),
//!   puts the selections in the query's filter (no aggregation needs them left out), and
//!   without a text query orders by the id alone (every score is the same), which the
//!   engine answers without visiting every match.
//!
//! Both answer exactly what [`search_body`], the same search in one request, answers
//! ([`read_answer`] and [`read_split`] give the same [`Raw`]); `search_body` is kept for
//! `engine=sql`'s tests and the benchmarks' engine-direct baseline.
//!
//! Facets are disjunctive, as faceted-search tools build them: every selection goes into
//! `post_filter` (it narrows the hits, not the aggregations), and each facet's aggregation
//! sits inside a `filter` aggregation holding the *other* facets' selections. So each
//! facet counts what selecting one more of its values would add (OR within a facet), under
//! the other facets' selections (AND across).

use serde_json::{json, Map, Value};

use super::{
    params::{Facet, SearchRequest, SortKey, AGE_INTERVAL, MAX_RESULT_WINDOW},
    response::{segments, Hit, NameHighlight, Raw, RawBucket, RawFacet, Relation, Segment, Total, PRECISION_THRESHOLD},
};

/// Highlight markers: private-use characters no name is expected to hold. Even if one
/// did, the worst outcome is a wrongly marked piece of text: segments are text, escaped
/// by the page.
const PRE: char = '\u{E000}';
const POST: char = '\u{E001}';

/// What a hit needs from `_source`.
const SOURCE: [&str; 7] = ["id", "first_name", "last_name", "age", "year_in_school", "university.name", "course_names"];

/// The filter clause of one facet's selection (OR within it), if any.
fn facet_clause(req: &SearchRequest, facet: Facet) -> Option<Value> {
    let values = req.selected(facet);
    (!values.is_empty()).then(|| json!({"terms": {facet.field(): values}}))
}

fn age_clause(req: &SearchRequest) -> Option<Value> {
    if req.age.is_empty() {
        return None;
    }
    let mut range = Map::new();
    if let Some(g) = req.age.gte {
        range.insert("gte".into(), json!(g));
    }
    if let Some(l) = req.age.lt {
        range.insert("lt".into(), json!(l));
    }
    Some(json!({"range": {"age": range}}))
}

/// The selections of every facet but `except` (None: all of them), as one filter.
fn filters_except(req: &SearchRequest, except: Option<Facet>, except_age: bool) -> Value {
    let mut clauses: Vec<Value> = Facet::ALL.into_iter().filter(|f| Some(*f) != except).filter_map(|f| facet_clause(req, f)).collect();
    if !except_age {
        clauses.extend(age_clause(req));
    }
    if clauses.is_empty() {
        json!({"match_all": {}})
    } else {
        json!({"bool": {"filter": clauses}})
    }
}

/// Each word must match the first or the last name, with typos forgiven (`AUTO`: none
/// for 1-2 letters, one for 3-5, two beyond).
fn text_query(req: &SearchRequest) -> Value {
    let words = req.words();
    if words.is_empty() {
        return json!({"match_all": {}});
    }
    let must: Vec<Value> =
        words.iter().map(|w| json!({"multi_match": {"query": w, "fields": ["first_name", "last_name"], "fuzziness": "AUTO"}})).collect();
    json!({"bool": {"must": must}})
}

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

fn distinct_agg(req: &SearchRequest) -> Option<Value> {
    req.distinct.map(|d| json!({"distinct": {"cardinality": {"field": d.field(), "precision_threshold": PRECISION_THRESHOLD}}}))
}

fn with_distinct(mut agg: Value, req: &SearchRequest) -> Value {
    if let Some(d) = distinct_agg(req) {
        agg["aggs"] = d;
    }
    agg
}

fn sort(req: &SearchRequest) -> Value {
    let order = if req.sort.descending { "desc" } else { "asc" };
    // `unmapped_type`: an index built before the numeric id existed still answers (its
    // pages are then ordered by the first key only; a reindex adds the id).
    let id = json!({"id": {"order": "asc", "unmapped_type": "long"}});
    match req.sort.key {
        SortKey::Relevance => json!([{"_score": {"order": "desc"}}, id]),
        SortKey::LastName => json!([{"last_name.raw": {"order": order}}, id]),
        SortKey::Age => json!([{"age": {"order": order}}, id]),
    }
}

/// Hits to fetch: one more than the page, to know whether another follows, except on the
/// last page a number reaches (the engines refuse `from + size` past the result window).
pub fn fetch_size(req: &SearchRequest) -> u32 {
    let end = if req.after.is_some() { 0 } else { req.page as u64 * req.size as u64 };
    if end + 1 > MAX_RESULT_WINDOW {
        req.size
    } else {
        req.size + 1
    }
}

/// The `_search` body of a request.
pub fn search_body(req: &SearchRequest) -> Value {
    let mut aggs = Map::new();
    for facet in Facet::ALL {
        let size = req.facet_size;
        let mut terms = json!({
            "field": facet.field(),
            "size": size,
            // More candidates per shard than shown, so counts stay right on several shards.
            "shard_size": size * 3 / 2 + 10,
            "order": [{"_count": "desc"}, {"_key": "asc"}],
        });
        if let Some(text) = req.facet_search(facet) {
            terms["include"] = json!(contains_regex(text));
        }
        let mut inner = Map::new();
        inner.insert("top".into(), with_distinct(json!({ "terms": terms }), req));
        let selected = req.selected(facet);
        if !selected.is_empty() {
            inner.insert(
                "selected".into(),
                with_distinct(
                    json!({"terms": {"field": facet.field(), "include": selected, "size": selected.len(), "min_doc_count": 0}}),
                    req,
                ),
            );
        }
        aggs.insert(facet.param().into(), json!({"filter": filters_except(req, Some(facet), false), "aggs": inner}));
    }
    aggs.insert(
        "age".into(),
        json!({
            "filter": filters_except(req, None, true),
            "aggs": {"histogram": with_distinct(json!({"histogram": {"field": "age", "interval": AGE_INTERVAL, "min_doc_count": 0}}), req)}
        }),
    );
    let mut body = json!({
        "query": text_query(req),
        "size": fetch_size(req),
        "track_total_hits": MAX_RESULT_WINDOW,
        "_source": SOURCE,
        "sort": sort(req),
        "aggs": aggs,
    });
    if req.has_filters() {
        body["post_filter"] = filters_except(req, None, false);
    }
    if let Some(after) = &req.after {
        body["search_after"] = after.search_after();
    } else if req.page > 1 {
        body["from"] = json!((req.page - 1) * req.size);
    }
    if !req.q.is_empty() {
        body["highlight"] = json!({
            "pre_tags": [PRE.to_string()],
            "post_tags": [POST.to_string()],
            "number_of_fragments": 0,
            "fields": {"first_name": {}, "last_name": {}}
        });
        // Sorting by anything else still wants the score (the page shows it).
        body["track_scores"] = json!(true);
    }
    body
}

/// The counts of a search: total (up to [`MAX_RESULT_WINDOW`]), facets, histogram and any
/// distinct counts, without hits. Depends only on the text query, the selections, the
/// facet-value searches, `facet_size` and `distinct`.
pub fn counts_body(req: &SearchRequest) -> Value {
    let mut aggs = Map::new();
    for facet in Facet::ALL {
        let size = req.facet_size;
        let mut terms = json!({
            "field": facet.field(),
            "size": size,
            "shard_size": size * 3 / 2 + 10,
            "order": [{"_count": "desc"}, {"_key": "asc"}],
        });
        if let Some(text) = req.facet_search(facet) {
            terms["include"] = json!(contains_regex(text));
        }
        let counted = |agg: Value| if counts_itself(req, facet) { agg } else { with_distinct(agg, req) };
        let top = counted(json!({ "terms": terms }));
        let selected = req.selected(facet);
        let selected = (!selected.is_empty())
            .then(|| counted(json!({"terms": {"field": facet.field(), "include": selected, "size": selected.len(), "min_doc_count": 0}})));
        match other_selections(req, Some(facet), false) {
            None => {
                aggs.insert(facet.param().into(), top);
                if let Some(s) = selected {
                    aggs.insert(format!("{}_selected", facet.param()), s);
                }
            }
            Some(filter) => {
                let mut inner = Map::new();
                inner.insert("top".into(), top);
                if let Some(s) = selected {
                    inner.insert("selected".into(), s);
                }
                aggs.insert(facet.param().into(), json!({"filter": filter, "aggs": inner}));
            }
        }
    }
    let histogram = with_distinct(json!({"histogram": {"field": "age", "interval": AGE_INTERVAL, "min_doc_count": 0}}), req);
    match other_selections(req, None, true) {
        None => aggs.insert("age".into(), histogram),
        Some(filter) => aggs.insert("age".into(), json!({"filter": filter, "aggs": {"histogram": histogram}})),
    };
    let mut body = json!({
        "size": 0,
        "query": text_query(req),
        "track_total_hits": MAX_RESULT_WINDOW,
        "aggs": aggs,
    });
    if req.has_filters() {
        body["post_filter"] = filters_except(req, None, false);
    }
    body
}

/// Whether the distinct count asked for is of this facet's own field, a field each student
/// has at most one value of: every non-empty bucket then has exactly one distinct value,
/// and nothing needs counting.
fn counts_itself(req: &SearchRequest, facet: Facet) -> bool {
    req.distinct == Some(facet) && facet.single_valued()
}

/// The selections of every facet but `except` as one filter; None when there are none.
fn other_selections(req: &SearchRequest, except: Option<Facet>, except_age: bool) -> Option<Value> {
    let f = filters_except(req, except, except_age);
    (f.get("match_all").is_none()).then_some(f)
}

/// Orders by the id alone: no text query, so every score is the same and relevance order
/// is id order; the engine can then skip matches that cannot make the page.
fn by_id_alone(req: &SearchRequest) -> bool {
    req.q.is_empty() && req.sort.key == SortKey::Relevance
}

/// The hits of a search: one page (and one more hit, to know whether another follows),
/// counting nothing.
pub fn hits_body(req: &SearchRequest) -> Value {
    let query = match other_selections(req, None, false) {
        None => text_query(req),
        Some(filter) => json!({"bool": {"must": [text_query(req)], "filter": [filter]}}),
    };
    let mut body = json!({
        "query": query,
        "size": fetch_size(req),
        "track_total_hits": false,
        "_source": SOURCE,
        "sort": if by_id_alone(req) { json!([{"id": {"order": "asc", "unmapped_type": "long"}}]) } else { sort(req) },
    });
    if let Some(after) = &req.after {
        body["search_after"] = if by_id_alone(req) { json!([after.id]) } else { after.search_after() };
    } else if req.page > 1 {
        body["from"] = json!((req.page - 1) * req.size);
    }
    if !req.q.is_empty() {
        body["highlight"] = json!({
            "pre_tags": [PRE.to_string()],
            "post_tags": [POST.to_string()],
            "number_of_fragments": 0,
            "fields": {"first_name": {}, "last_name": {}}
        });
        body["track_scores"] = json!(true);
    }
    body
}

/// The completion suggester inside `_search` (the old `_suggest` endpoint is gone): the
/// first `size` students whose first name, last name or full name starts with `prefix`,
/// with only what a suggestion shows from `_source`.
pub fn suggest_body(prefix: &str, size: u32) -> Value {
    json!({
        "size": 0,
        "_source": ["first_name", "last_name", "university.name"],
        "suggest": {"s": {"prefix": prefix, "completion": {"field": "name_complete", "skip_duplicates": false, "size": size}}}
    })
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn distinct_of(b: &Value, req: &SearchRequest) -> Option<u64> {
    req.distinct.map(|_| u64_of(&b["distinct"]["value"]))
}

/// `own`: the distinct count is of this facet's own single-valued field and was not asked
/// of the engine: one per non-empty bucket.
fn terms_buckets(agg: &Value, req: &SearchRequest, own: bool) -> Vec<RawBucket<String>> {
    agg["buckets"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .filter_map(|b| {
                    let doc_count = u64_of(&b["doc_count"]);
                    Some(RawBucket {
                        key: b["key"].as_str()?.to_string(),
                        doc_count,
                        distinct: if own { Some(u64::from(doc_count > 0)) } else { distinct_of(b, req) },
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn highlight(h: &Value, field: &str, plain: &str) -> Vec<Segment> {
    match h[field][0].as_str() {
        Some(fragment) => segments(fragment, PRE, POST),
        None => Segment::plain(plain),
    }
}

fn hit(h: &Value, with_highlight: bool) -> Option<Hit> {
    let s = &h["_source"];
    let id = s["id"].as_i64().or_else(|| h["_id"].as_str()?.parse().ok())?;
    let first_name = s["first_name"].as_str().unwrap_or_default().to_string();
    let last_name = s["last_name"].as_str().unwrap_or_default().to_string();
    let highlight = with_highlight.then(|| NameHighlight {
        first_name: highlight(&h["highlight"], "first_name", &first_name),
        last_name: highlight(&h["highlight"], "last_name", &last_name),
    });
    Some(Hit {
        id,
        age: s["age"].as_i64().unwrap_or_default() as i32,
        year_in_school: s["year_in_school"].as_str().unwrap_or_default().to_string(),
        university: s["university"]["name"].as_str().map(str::to_string),
        courses: s["course_names"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        score: h["_score"].as_f64().unwrap_or(1.0),
        highlight,
        first_name,
        last_name,
    })
}

fn read_total(v: &Value) -> Total {
    let total = &v["hits"]["total"];
    Total { value: u64_of(&total["value"]), relation: if total["relation"] == "gte" { Relation::Gte } else { Relation::Eq } }
}

fn read_hits(req: &SearchRequest, v: &Value) -> Vec<Hit> {
    v["hits"]["hits"].as_array().map(|hs| hs.iter().filter_map(|h| hit(h, !req.q.is_empty())).collect()).unwrap_or_default()
}

/// A facet's `top` and `selected` aggregations and the histogram, wherever the body that
/// asked for them put them (inside a `filter` aggregation, or at the top level).
fn read_counts(req: &SearchRequest, aggs: &Value, split: bool) -> ([RawFacet; 3], Vec<RawBucket<i32>>) {
    let facets = Facet::ALL.map(|f| {
        let (top, selected) = if split && other_selections(req, Some(f), false).is_none() {
            (&aggs[f.param()], &aggs[format!("{}_selected", f.param())])
        } else {
            (&aggs[f.param()]["top"], &aggs[f.param()]["selected"])
        };
        let own = split && counts_itself(req, f);
        let (top, selected) = (terms_buckets(top, req, own), terms_buckets(selected, req, own));
        // The engine's `sum_other_doc_count` counts every value outside the top, selected
        // ones too (those the facet-value search lets in); but a selected value is listed
        // after the top, so it is not left out.
        let pinned: u64 = selected
            .iter()
            .filter(|s| !top.iter().any(|t| t.key == s.key))
            .filter(|s| req.facet_search(f).is_none_or(|text| contains_ignoring_case(&s.key, text)))
            .map(|s| s.doc_count)
            .sum();
        let sum_other = if split && other_selections(req, Some(f), false).is_none() {
            u64_of(&aggs[f.param()]["sum_other_doc_count"])
        } else {
            u64_of(&aggs[f.param()]["top"]["sum_other_doc_count"])
        };
        RawFacet { sum_other: sum_other.saturating_sub(pinned), top, selected }
    });
    let histogram = if split && other_selections(req, None, true).is_none() { &aggs["age"] } else { &aggs["age"]["histogram"] };
    let age = histogram["buckets"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .filter_map(|b| {
                    Some(RawBucket { key: b["key"].as_f64()? as i32, doc_count: u64_of(&b["doc_count"]), distinct: distinct_of(b, req) })
                })
                .collect()
        })
        .unwrap_or_default();
    (facets, age)
}

/// Reads the engine's answer to [`search_body`].
pub fn read_answer(req: &SearchRequest, v: &Value) -> Raw {
    let (facets, age) = read_counts(req, &v["aggregations"], false);
    Raw { total: read_total(v), hits: read_hits(req, v), facets, age }
}

/// Reads the engine's answers to [`counts_body`] and [`hits_body`] of the same request.
pub fn read_split(req: &SearchRequest, counts: &Value, hits: &Value) -> Raw {
    let (facets, age) = read_counts(req, &counts["aggregations"], true);
    Raw { total: read_total(counts), hits: read_hits(req, hits), facets, age }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_stays_a_string_value() {
        let nasty = r#"x"}}, "script": {"source": "boom"}, {"#;
        let req = SearchRequest::parse(Some(&format!("q={}&course={}", urlencode(nasty), urlencode("a\"b")))).unwrap();
        let body = search_body(&req);
        assert!(body.to_string().contains(r#""query":"x\"}},"#), "{body}");
        assert!(body.get("script").is_none());
    }

    #[test]
    fn facet_search_is_an_escaped_case_insensitive_regex() {
        assert_eq!(contains_regex("ma.t("), ".*[mM][aA]\\.[tT]\\(.*");
        assert_eq!(contains_regex("101"), ".*101.*");
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
        let req = SearchRequest::parse(Some("course=CS101&university=MIT")).unwrap();
        let body = search_body(&req);
        let course_filter = body["aggs"]["course"]["filter"].to_string();
        assert!(course_filter.contains("MIT") && !course_filter.contains("CS101"), "{course_filter}");
        let post = body["post_filter"].to_string();
        assert!(post.contains("MIT") && post.contains("CS101"));
    }

    fn urlencode(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }
}

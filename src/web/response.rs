//! The one response type of a search, whichever engine answered: the JSON of
//! `/api/search` and what the page renders. Engines hand over [`Raw`] counts; everything a
//! reader sees (selected values kept visible, the cursor of the next page, the distinct
//! count's precision) is decided here, once.

use std::collections::HashMap;

use serde::Serialize;

use super::params::{AgeRange, Cursor, CursorKey, Engine, Facet, SearchRequest, SortKey, AGE_INTERVAL};

/// `cardinality`'s `precision_threshold`: what the stated error needs, and no more. Below
/// it the engines count distinct values in a hash set (close to exact); above it, with a
/// HyperLogLog++ sketch whose precision the engines derive from the threshold: 100 gives
/// 2^10 registers, a relative standard error of 1.04/√1024 ≈ 3.3 %, within the 5 %
/// stated. (The former 1,000 kept 2^13 registers per bucket, 8× the memory and work, for
/// an error of 1.2 % that the page never promised.) tidemark's fields have fewer distinct
/// values than 100 (66 courses, 52 universities, 4 years in the demo data), so their
/// counts stay close to exact.
pub const PRECISION_THRESHOLD: u32 = 100;
/// The error stated for distinct counts: at most this fraction of the true count.
pub const DISTINCT_MAX_ERROR: f64 = 0.05;

#[derive(Clone, Debug, Serialize)]
pub struct SearchResponse {
    /// `index` or `sql`.
    pub engine: Engine,
    /// Time spent answering, in milliseconds, measured by tidemark around the engine's
    /// request(s).
    pub took_ms: f64,
    pub total: Total,
    pub hits: Vec<Hit>,
    /// The `after` of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    pub facets: Facets,
    pub age: Histogram,
    /// Present when `distinct=` was asked: what the per-bucket `distinct` counts count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct: Option<DistinctInfo>,
    /// How old the counts (total, facets, histogram, distinct counts) are.
    pub counts: CountsAge,
    /// How long ago the hits were asked of the engine (at most `counts.max_age_ms`: hits
    /// are reused under the same bound).
    pub hits_age_ms: f64,
}

/// How old the counts are: the engine's answer may be reused for up to `max_age_ms`
/// (the index's refresh interval at most; 0 when nothing is reused), and this one was
/// asked of the engine `age_ms` ago.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CountsAge {
    pub age_ms: f64,
    pub max_age_ms: f64,
    /// Whether they came from tidemark's cache.
    pub reused: bool,
}

/// Matching students. `relation` is `eq` when `value` is exact and `gte` when counting
/// stopped at `value` (10,000: beyond that only the facets count every student).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Total {
    pub value: u64,
    pub relation: Relation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    Eq,
    Gte,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub id: i64,
    pub first_name: String,
    pub last_name: String,
    pub age: i32,
    pub year_in_school: String,
    pub university: Option<String>,
    pub courses: Vec<String>,
    /// Relevance (index engine with a text query; 1 otherwise).
    pub score: f64,
    /// The name with the parts the query matched marked; absent without a text query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlight: Option<NameHighlight>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NameHighlight {
    pub first_name: Vec<Segment>,
    pub last_name: Vec<Segment>,
}

/// A piece of a highlighted name. Text, never markup: the page escapes it and wraps
/// matched pieces in `<mark>` itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub text: String,
    #[serde(rename = "match")]
    pub matched: bool,
}

impl Segment {
    pub fn plain(text: &str) -> Vec<Segment> {
        vec![Segment { text: text.to_string(), matched: false }]
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Facets {
    pub course: TermsFacet,
    pub university: TermsFacet,
    pub year: TermsFacet,
}

impl Facets {
    pub fn get(&self, f: Facet) -> &TermsFacet {
        match f {
            Facet::Course => &self.course,
            Facet::University => &self.university,
            Facet::Year => &self.year,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TermsFacet {
    /// The top values by count (ties by value), then any selected value not among them.
    pub buckets: Vec<Bucket>,
    /// The counts of the values not listed, summed (the engines' `sum_other_doc_count`,
    /// less any selected value listed after the top): students for university and year;
    /// enrollments for courses, where a student in two values not listed counts twice.
    pub sum_other_doc_count: u64,
    /// The facet-value search that narrowed the values, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub key: String,
    /// Students with this value that match the other facets' selections (not this one's:
    /// OR within a facet).
    pub doc_count: u64,
    pub selected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Histogram {
    pub interval: i32,
    /// Every bucket from the lowest to the highest age present, empty ones included.
    pub buckets: Vec<AgeBucket>,
    #[serde(skip_serializing_if = "AgeRange::is_empty")]
    pub selected: AgeRange,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgeBucket {
    /// `from <= age < to`.
    pub from: i32,
    pub to: i32,
    pub doc_count: u64,
    pub selected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DistinctInfo {
    /// The field counted: course, university or year.
    pub field: Facet,
    pub approximate: bool,
    pub precision_threshold: u32,
    /// The stated error bound, as a fraction of the true count.
    pub max_error: f64,
    pub note: &'static str,
}

/// One value's counts, as an engine reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct RawBucket<K> {
    pub key: K,
    pub doc_count: u64,
    pub distinct: Option<u64>,
}

/// A terms facet as an engine reports it: the top values (already ordered by count, then
/// value), what is left out (values neither among the top nor selected: a selected value
/// is listed after the top), and the counts of the selected values (any order; a selected
/// value with no student may be missing).
#[derive(Clone, Debug, Default)]
pub struct RawFacet {
    pub top: Vec<RawBucket<String>>,
    pub sum_other: u64,
    pub selected: Vec<RawBucket<String>>,
}

/// What an engine found.
#[derive(Clone, Debug)]
pub struct Raw {
    pub total: Total,
    /// Up to `size + 1` hits: one more than the page, to know whether a next page exists.
    pub hits: Vec<Hit>,
    pub facets: [RawFacet; 3],
    /// Histogram buckets by lower bound, any order, empty ones possibly missing.
    pub age: Vec<RawBucket<i32>>,
}

/// The terms-facet bucket order both engines use: count descending, then the value's
/// bytes ascending (a keyword's order).
pub fn bucket_order<K: Ord>(a: &RawBucket<K>, b: &RawBucket<K>) -> std::cmp::Ordering {
    b.doc_count.cmp(&a.doc_count).then_with(|| a.key.cmp(&b.key))
}

impl SearchResponse {
    pub fn assemble(req: &SearchRequest, raw: Raw, engine: Engine, took_ms: f64) -> SearchResponse {
        let [course, university, year] = raw.facets;
        let facet = |f: Facet, raw: RawFacet| terms_facet(req, f, raw);
        let mut hits = raw.hits;
        // One hit more than the page was asked for; at the deepest numbered page the
        // total says whether more follow.
        let window_end = req.page as u64 * req.size as u64;
        let more = hits.len() > req.size as usize
            || (req.after.is_none()
                && window_end >= super::params::MAX_RESULT_WINDOW
                && hits.len() == req.size as usize
                && (raw.total.relation == Relation::Gte || raw.total.value > window_end));
        hits.truncate(req.size as usize);
        let next = if more { hits.last().map(|h| cursor_of(req, h).to_param()) } else { None };
        SearchResponse {
            engine,
            counts: CountsAge::default(),
            hits_age_ms: 0.0,
            took_ms: (took_ms * 10.0).round() / 10.0,
            total: raw.total,
            hits,
            next,
            facets: Facets {
                course: facet(Facet::Course, course),
                university: facet(Facet::University, university),
                year: facet(Facet::Year, year),
            },
            age: histogram(req, raw.age),
            distinct: req.distinct.map(|field| DistinctInfo {
                field,
                approximate: true,
                precision_threshold: PRECISION_THRESHOLD,
                max_error: DISTINCT_MAX_ERROR,
                note: "approximate (HyperLogLog++ `cardinality` in the index; exact in SQL): below the precision threshold \
                       counts are expected to be close to exact, and within 5 % of the true count above it",
            }),
        }
    }
}

/// Where the page after `hit` starts.
fn cursor_of(req: &SearchRequest, hit: &Hit) -> Cursor {
    let key = match req.sort.key {
        SortKey::Relevance => CursorKey::Score(hit.score),
        SortKey::LastName => CursorKey::Text(hit.last_name.clone()),
        SortKey::Age => CursorKey::Number(hit.age as i64),
    };
    Cursor { key, id: hit.id }
}

fn terms_facet(req: &SearchRequest, facet: Facet, raw: RawFacet) -> TermsFacet {
    let selected = req.selected(facet);
    let counts: HashMap<&str, &RawBucket<String>> = raw.selected.iter().map(|b| (b.key.as_str(), b)).collect();
    let mut buckets: Vec<Bucket> = raw
        .top
        .iter()
        .map(|b| Bucket { key: b.key.clone(), doc_count: b.doc_count, selected: selected.contains(&b.key), distinct: b.distinct })
        .collect();
    // A selected value stays visible even when it is not among the top values (or has no
    // student at all with the other selections): it can always be deselected.
    for v in selected {
        if !buckets.iter().any(|b| &b.key == v) {
            let (doc_count, distinct) = match counts.get(v.as_str()) {
                Some(b) => (b.doc_count, b.distinct),
                None => (0, req.distinct.map(|_| 0)),
            };
            buckets.push(Bucket { key: v.clone(), doc_count, selected: true, distinct });
        }
    }
    TermsFacet { buckets, sum_other_doc_count: raw.sum_other, search: req.facet_search(facet).map(str::to_string) }
}

/// Every bucket from the lowest to the highest present, empty ones as 0.
fn histogram(req: &SearchRequest, raw: Vec<RawBucket<i32>>) -> Histogram {
    let by_key: HashMap<i32, &RawBucket<i32>> = raw.iter().filter(|b| b.doc_count > 0).map(|b| (b.key, b)).collect();
    let mut buckets = Vec::new();
    if let (Some(lo), Some(hi)) = (by_key.keys().min(), by_key.keys().max()) {
        let mut k = *lo;
        while k <= *hi {
            let (doc_count, distinct) = match by_key.get(&k) {
                Some(b) => (b.doc_count, b.distinct),
                None => (0, req.distinct.map(|_| 0)),
            };
            buckets.push(AgeBucket { from: k, to: k + AGE_INTERVAL, doc_count, selected: req.age.overlaps(k, k + AGE_INTERVAL), distinct });
            k += AGE_INTERVAL;
        }
    }
    Histogram { interval: AGE_INTERVAL, buckets, selected: req.age }
}

/// Splits a highlighted fragment (matches between `pre` and `post` markers) into segments.
pub fn segments(fragment: &str, pre: char, post: char) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut current = String::new();
    let mut matched = false;
    for c in fragment.chars() {
        if c == pre || c == post {
            if !current.is_empty() {
                out.push(Segment { text: std::mem::take(&mut current), matched });
            }
            matched = c == pre;
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        out.push(Segment { text: current, matched });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlight_fragments_become_segments() {
        let s = segments("\u{E000}Ann\u{E001}-Marie", '\u{E000}', '\u{E001}');
        assert_eq!(s, vec![Segment { text: "Ann".into(), matched: true }, Segment { text: "-Marie".into(), matched: false }]);
    }

    #[test]
    fn selected_values_stay_visible_and_gaps_are_filled() {
        let req = SearchRequest::parse(Some("university=KPI&age_gte=20&age_lt=22&distinct=course")).unwrap();
        let raw = Raw {
            total: Total { value: 0, relation: Relation::Eq },
            hits: vec![],
            facets: [
                RawFacet::default(),
                RawFacet { top: vec![RawBucket { key: "MIT".into(), doc_count: 3, distinct: Some(2) }], sum_other: 0, selected: vec![] },
                RawFacet::default(),
            ],
            age: vec![RawBucket { key: 18, doc_count: 1, distinct: Some(1) }, RawBucket { key: 22, doc_count: 2, distinct: Some(1) }],
        };
        let r = SearchResponse::assemble(&req, raw, Engine::Index, 1.0);
        assert_eq!(r.facets.university.buckets[1], Bucket { key: "KPI".into(), doc_count: 0, selected: true, distinct: Some(0) });
        let ages: Vec<(i32, u64, bool)> = r.age.buckets.iter().map(|b| (b.from, b.doc_count, b.selected)).collect();
        assert_eq!(ages, vec![(18, 1, false), (20, 0, true), (22, 2, false)]);
    }
}

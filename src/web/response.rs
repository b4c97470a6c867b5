//! The one response type of a search, whichever engine answered: the JSON of
//! `/api/search` and what the page renders. Engines hand over [`Raw`] counts; everything a
//! reader sees (selected values kept visible, the cursor of the next page, the distinct
//! count's precision) is decided here, once.

use serde::Serialize;
use serde_json::Value;

use super::{
    params::{Engine, MAX_RESULT_WINDOW},
    request::{Id, Range, Request},
};

/// `cardinality`'s `precision_threshold` for distinct counts. A distinct field may hold
/// far more values than the students' (refine.bio's samples: thousands per value), where
/// 100 (2^10 registers, a relative standard error of 3.3 %) would miss the stated 5 % for
/// one bucket in seven. 3,000 gives the engines' precision 14 (2^14 registers, 16 KiB per
/// bucket): counts up to 3,000 close to exact, and above it a standard error of 0.8 %, so
/// the stated 5 % is six standard errors.
pub const PRECISION_THRESHOLD: u32 = 3_000;
/// The error stated for distinct counts: at most this fraction of the true count.
pub const DISTINCT_MAX_ERROR: f64 = 0.05;

/// The answer to a search, whichever engine answered: `/api/search`'s JSON and what the
/// page renders.
#[derive(Clone, Debug, Serialize)]
pub struct Response {
    pub engine: Engine,
    pub took_ms: f64,
    pub total: Total,
    pub hits: Vec<Hit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// A model without a key field (no cursors): the number of the page after this one,
    /// when more hits follow and it is within the result window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page: Option<u32>,
    /// By parameter, in the view's order.
    pub facets: Ordered<TermsFacet>,
    /// By parameter, in the view's order.
    pub histograms: Ordered<Histogram>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct: Option<DistinctInfo>,
    pub counts: CountsAge,
    pub hits_age_ms: f64,
}

/// A JSON object whose keys keep their order.
#[derive(Clone, Debug)]
pub struct Ordered<T>(pub Vec<(String, T)>);

impl<T: Serialize> Serialize for Ordered<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// The document's key.
    pub id: Id,
    /// Relevance (index engine with a text query; 1 otherwise).
    pub score: f64,
    /// The view's title of the document.
    pub title: String,
    /// The title with the parts the query matched marked; absent without a text query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlight: Option<Vec<Segment>>,
    /// The fields the view shows, by path.
    pub fields: Ordered<Value>,
    /// Where the page after this hit starts (its sort values).
    #[serde(skip)]
    pub cursor: Vec<Value>,
}

impl PartialEq for Ordered<Value> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TermsFacet {
    pub label: String,
    pub buckets: Vec<Bucket>,
    /// The counts of the values not listed, summed.
    pub sum_other_doc_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub key: String,
    pub doc_count: u64,
    pub selected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Histogram {
    pub label: String,
    pub interval: i64,
    pub buckets: Vec<RangeBucket>,
    #[serde(skip_serializing_if = "Range::is_empty")]
    pub selected: Range,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RangeBucket {
    pub from: i64,
    pub to: i64,
    pub doc_count: u64,
    pub selected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DistinctInfo {
    /// The `distinct` parameter's value, and what it counts.
    pub param: String,
    pub label: String,
    pub approximate: bool,
    pub precision_threshold: u32,
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

/// A facet as an engine reports it (see `super::response::RawFacet`).
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
    /// Up to `size + 1` hits.
    pub hits: Vec<Hit>,
    pub facets: Vec<RawFacet>,
    /// Per histogram: buckets by lower bound, any order, empty ones possibly missing.
    pub histograms: Vec<Vec<RawBucket<i64>>>,
}

pub fn bucket_order<K: Ord>(a: &RawBucket<K>, b: &RawBucket<K>) -> std::cmp::Ordering {
    b.doc_count.cmp(&a.doc_count).then_with(|| a.key.cmp(&b.key))
}

impl Response {
    pub fn assemble(req: &Request, raw: Raw, engine: Engine, took_ms: f64) -> Response {
        let mut hits = raw.hits;
        let window_end = req.page as u64 * req.size as u64;
        let more = hits.len() > req.size as usize
            || (req.after.is_none()
                && window_end >= MAX_RESULT_WINDOW
                && hits.len() == req.size as usize
                && (raw.total.relation == super::response::Relation::Gte || raw.total.value > window_end));
        let next_page =
            (req.key_field.is_none() && hits.len() > req.size as usize && (req.page as u64 + 1) * req.size as u64 <= MAX_RESULT_WINDOW)
                .then(|| req.page + 1);
        hits.truncate(req.size as usize);
        let next = match req.key_field {
            Some(_) if more => hits.last().map(|h| Value::Array(h.cursor.clone()).to_string()),
            _ => None,
        };
        let facets =
            req.view.facets.iter().enumerate().zip(raw.facets).map(|((i, f), raw)| (f.param.clone(), terms_facet(req, i, raw))).collect();
        let histograms = req
            .view
            .histograms
            .iter()
            .enumerate()
            .zip(raw.histograms)
            .map(|((i, h), raw)| (h.param.clone(), histogram(req, i, raw)))
            .collect();
        Response {
            engine,
            took_ms: (took_ms * 10.0).round() / 10.0,
            total: raw.total,
            hits,
            next,
            next_page,
            facets: Ordered(facets),
            histograms: Ordered(histograms),
            distinct: req.distinct.map(|d| DistinctInfo {
                param: req.view.distinct[d].param.clone(),
                label: req.view.distinct[d].label.clone(),
                approximate: true,
                precision_threshold: PRECISION_THRESHOLD,
                max_error: DISTINCT_MAX_ERROR,
                note: "approximate (HyperLogLog++ `cardinality` in the index; exact in SQL): below the precision threshold \
                       counts are expected to be close to exact, and within 5 % of the true count above it",
            }),
            counts: CountsAge::default(),
            hits_age_ms: 0.0,
        }
    }
}

fn terms_facet(req: &Request, i: usize, raw: RawFacet) -> TermsFacet {
    let selected = &req.selected[i];
    let mut buckets: Vec<Bucket> = raw
        .top
        .iter()
        .map(|b| Bucket { key: b.key.clone(), doc_count: b.doc_count, selected: selected.contains(&b.key), distinct: b.distinct })
        .collect();
    for v in selected {
        if !buckets.iter().any(|b| &b.key == v) {
            let (doc_count, distinct) = match raw.selected.iter().find(|b| &b.key == v) {
                Some(b) => (b.doc_count, b.distinct),
                None => (0, req.distinct.map(|_| 0)),
            };
            buckets.push(Bucket { key: v.clone(), doc_count, selected: true, distinct });
        }
    }
    TermsFacet {
        label: req.view.facets[i].label.clone(),
        buckets,
        sum_other_doc_count: raw.sum_other,
        search: req.facet_search(i).map(str::to_string),
    }
}

fn histogram(req: &Request, i: usize, raw: Vec<RawBucket<i64>>) -> Histogram {
    let interval = i64::from(req.view.histograms[i].interval.max(1));
    let present: Vec<&RawBucket<i64>> = raw.iter().filter(|b| b.doc_count > 0).collect();
    let mut buckets = Vec::new();
    if let (Some(lo), Some(hi)) = (present.iter().map(|b| b.key).min(), present.iter().map(|b| b.key).max()) {
        let mut k = lo;
        while k <= hi {
            let (doc_count, distinct) = match present.iter().find(|b| b.key == k) {
                Some(b) => (b.doc_count, b.distinct),
                None => (0, req.distinct.map(|_| 0)),
            };
            buckets.push(RangeBucket { from: k, to: k + interval, doc_count, selected: req.ranges[i].overlaps(k, k + interval), distinct });
            k += interval;
        }
    }
    Histogram { label: req.view.histograms[i].label.clone(), interval, buckets, selected: req.ranges[i] }
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

/// Matching documents. `relation` is `eq` when `value` is exact and `gte` when counting
/// stopped at `value` (10,000: beyond that only the facets count every document).
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
}

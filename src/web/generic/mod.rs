//! The search application of any declared model, driven by its `[search]` view
//! ([`SearchView`]): the request its parameters make ([`Request`], parameter names from the
//! view), the engine bodies ([`query`]), `engine=sql` by SQL built from the model
//! ([`sql`]), the one response ([`Response`]) and the pages ([`pages`]).
//!
//! The shipped student directory keeps its own, older pages (`super::pages`): while the
//! loaded model is exactly the shipped students model, those answer (their answers and
//! pages are pinned by the tests); any other model is served from here. Everything generic
//! of those (parameter reading, the reuse and single flight of engine answers, the
//! failures, the security headers) is shared.

pub mod pages;
pub mod query;
pub mod sql;

use std::{sync::Arc, time::Instant};

use serde::Serialize;
use serde_json::Value;
use url::form_urlencoded;

use super::{
    params::{bad, number, page_size, query_pairs, text, BadRequest, Engine, MAX_QUERY_CHARS, MAX_QUERY_WORDS, MAX_RESULT_WINDOW},
    response::{CountsAge, Segment, Total, DISTINCT_MAX_ERROR},
    App, Failure,
};
use crate::model::{FieldType, KeyType, Model, SearchView};

/// Hits per page: default and cap; values per facet: default and cap.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;
pub const DEFAULT_FACET_SIZE: u32 = 10;
pub const MAX_FACET_SIZE: u32 = 100;
/// `cardinality`'s `precision_threshold` for a model's distinct counts. A model's distinct
/// field may hold far more values than the students' (refine.bio's samples: thousands per
/// value), where the students' 100 (2^10 registers, a relative standard error of 3.3 %)
/// would miss the stated 5 % for one bucket in seven. 3,000 gives the engines' precision
/// 14 (2^14 registers, 16 KiB per bucket): counts up to 3,000 close to exact, and above it
/// a standard error of 0.8 %, so the stated 5 % is six standard errors.
pub const PRECISION_THRESHOLD: u32 = 3_000;
/// Values selected in one facet, and the longest value.
pub const MAX_VALUES_PER_FACET: usize = 20;
pub const MAX_VALUE_CHARS: usize = 200;

/// A histogram's filter: `gte <= value < lt`, either bound optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Range {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gte: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lt: Option<i64>,
}

impl Range {
    pub fn is_empty(&self) -> bool {
        self.gte.is_none() && self.lt.is_none()
    }

    pub fn overlaps(&self, from: i64, to: i64) -> bool {
        !self.is_empty() && self.gte.is_none_or(|g| to > g) && self.lt.is_none_or(|l| from < l)
    }

    /// "18–19", "18 and over", "under 20", with the histogram's label.
    pub fn label(&self, what: &str) -> String {
        match (self.gte, self.lt) {
            (Some(g), Some(l)) if l == g + 1 => format!("{what} {g}"),
            (Some(g), Some(l)) => format!("{what} {g}–{}", l - 1),
            (Some(g), None) => format!("{what} {g} and over"),
            (None, Some(l)) => format!("{what} under {l}"),
            (None, None) => format!("any {what}"),
        }
    }
}

/// What hits are ordered by: relevance (best first), or a declared sort.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Order {
    /// Index into the view's sorts; None: relevance.
    pub sort: Option<usize>,
    pub descending: bool,
}

/// A document's key as the API shows it: a number for an integer key, a string for a uuid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Id {
    Integer(i64),
    Uuid(String),
}

impl Id {
    /// The key whose text is `text` (an `_id`, a cursor's last value), if it is one of
    /// `key_type`: a uuid only in the form PostgreSQL writes it (lower-case hex), whose
    /// order as text is the uuids' own, in the index as in SQL.
    pub fn parse(key_type: KeyType, text: &str) -> Option<Id> {
        match key_type {
            KeyType::Integer => text.parse().ok().map(Id::Integer),
            KeyType::Uuid => (text.len() == 36
                && text
                    .char_indices()
                    .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { matches!(c, '0'..='9' | 'a'..='f') }))
            .then(|| Id::Uuid(text.to_string())),
        }
    }

    /// A cursor's last value (the tie-break's).
    pub fn of_cursor(key_type: KeyType, v: &Value) -> Option<Id> {
        match v {
            Value::Number(n) if key_type == KeyType::Integer => n.as_i64().map(Id::Integer),
            Value::String(s) if key_type == KeyType::Uuid => Id::parse(key_type, s),
            _ => None,
        }
    }

    pub fn json(&self) -> Value {
        match self {
            Id::Integer(n) => Value::from(*n),
            Id::Uuid(s) => Value::from(s.as_str()),
        }
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Integer(n) => n.fmt(f),
            Id::Uuid(s) => f.write_str(s),
        }
    }
}

/// One search of a model, as both engines take it and as the page's links carry it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub view: Arc<SearchView>,
    /// The field holding the key again (`number`, or a uuid key's `key_field`): every order
    /// ends with it, ascending, so that no two documents tie and a cursor (`after`) names
    /// one place. A uuid's is a keyword, sorted as text: PostgreSQL's lower-case text of
    /// uuids sorts as the uuids do, so `engine=sql` (ordering by the key itself) agrees.
    ///
    /// None when the model declares none: nothing then tells hits of equal sort values
    /// apart in the index, so no cursor can say where a page ends among them. Such a model
    /// pages by number only (`page`, within the result window; answers name the next
    /// page's number, `next_page`) and `after` is refused, on both engines alike.
    pub key_field: Option<String>,
    pub key_type: KeyType,
    pub q: String,
    /// Selected values per facet, in the view's order.
    pub selected: Vec<Vec<String>>,
    /// A range per histogram, in the view's order.
    pub ranges: Vec<Range>,
    /// A facet-value search per facet.
    pub facet_search: Vec<Option<String>>,
    pub order: Order,
    pub size: u32,
    pub page: u32,
    /// The sort values of the last hit of the page before (the `next` it gave).
    pub after: Option<Vec<Value>>,
    /// Index into the view's distinct counts.
    pub distinct: Option<usize>,
    pub engine: Engine,
    pub facet_size: u32,
}

/// The names a request takes, for error messages.
fn known(view: &SearchView) -> String {
    let mut k = vec!["q".to_string()];
    k.extend(view.facets.iter().map(|f| f.param.clone()));
    for h in &view.histograms {
        k.push(format!("{}_gte", h.param));
        k.push(format!("{}_lt", h.param));
    }
    k.extend(view.facets.iter().map(|f| format!("{}_q", f.param)));
    k.extend(["sort", "size", "page", "after"].map(String::from));
    if !view.distinct.is_empty() {
        k.push("distinct".into());
    }
    k.extend(["engine", "facet_size"].map(String::from));
    k.join(", ")
}

impl Request {
    /// The request with nothing asked: every document, first page.
    pub fn new(model: &Model) -> Request {
        let view = Arc::new(model.search.clone().unwrap_or_else(|| empty_view(model)));
        Request {
            key_field: model.key_field.clone(),
            key_type: model.root.key_type,
            q: String::new(),
            selected: vec![Vec::new(); view.facets.len()],
            ranges: vec![Range::default(); view.histograms.len()],
            facet_search: vec![None; view.facets.len()],
            order: Order::default(),
            size: DEFAULT_PAGE_SIZE,
            page: 1,
            after: None,
            distinct: None,
            engine: Engine::Index,
            facet_size: DEFAULT_FACET_SIZE,
            view,
        }
    }

    /// The sorts a request may name, for messages.
    fn sort_choices(&self) -> String {
        let mut c = vec!["relevance".to_string()];
        for s in &self.view.sorts {
            c.push(s.param.clone());
            c.push(format!("-{}", s.param));
        }
        c.join(", ")
    }

    /// Parses a query string against the model's view. Every parameter is known (the
    /// view names the filters), given at most once (filters may repeat) and within bounds;
    /// empty values count as absent, as an HTML form sends them.
    pub fn parse(model: &Model, query: Option<&str>) -> Result<Request, BadRequest> {
        let mut r = Request::new(model);
        let view = r.view.clone();
        let mut seen: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        let mut page_given = false;
        for (key, value) in query_pairs(query)? {
            let (key, value) = (key.as_str(), value.as_str());
            if let Some(i) = view.facets.iter().position(|f| f.param == key) {
                let v = text(key, value, MAX_VALUE_CHARS)?;
                if v.is_empty() {
                    continue;
                }
                let list = &mut r.selected[i];
                if !list.contains(&v) {
                    if list.len() == MAX_VALUES_PER_FACET {
                        return Err(bad(format!("at most {MAX_VALUES_PER_FACET} values of `{key}` can be selected at once")));
                    }
                    list.push(v);
                }
                continue;
            }
            let is_known = |k: &str| known(&view).split(", ").any(|x| x == k);
            if !is_known(key) {
                return Err(bad(format!("unknown parameter `{key}`; the known ones are {}", known(&view))));
            }
            if value.trim().is_empty() && key != "q" {
                continue;
            }
            if seen.iter().any(|k| k == key) {
                return Err(bad(format!("`{key}` is given more than once; give it once")));
            }
            seen.push(key.to_string());
            if let Some((i, h)) = view.histograms.iter().enumerate().find(|(_, h)| key == format!("{}_gte", h.param)) {
                r.ranges[i].gte = Some(number(key, value, h.min, h.max)?);
                continue;
            }
            if let Some((i, h)) = view.histograms.iter().enumerate().find(|(_, h)| key == format!("{}_lt", h.param)) {
                r.ranges[i].lt = Some(number(key, value, h.min, h.max)?);
                continue;
            }
            if let Some(i) = view.facets.iter().position(|f| key == format!("{}_q", f.param)) {
                r.facet_search[i] = Some(text(key, value, MAX_VALUE_CHARS)?);
                continue;
            }
            match key {
                "q" => {
                    let q = text("q", value, MAX_QUERY_CHARS)?;
                    if q.split_whitespace().count() > MAX_QUERY_WORDS {
                        return Err(bad(format!("`q` has more than {MAX_QUERY_WORDS} words; search for fewer")));
                    }
                    r.q = q.split_whitespace().collect::<Vec<_>>().join(" ");
                }
                "sort" => {
                    let v = value.trim();
                    let (descending, name) = match v.strip_prefix('-') {
                        Some(rest) => (true, rest),
                        None => (false, v),
                    };
                    r.order = match name {
                        "relevance" if !descending => Order::default(),
                        _ => match view.sorts.iter().position(|s| s.param == name) {
                            Some(i) => Order { sort: Some(i), descending },
                            None => return Err(bad(format!("`sort` must be one of {}, not {value:?}", r.sort_choices()))),
                        },
                    };
                }
                "size" => {
                    r.size =
                        page_size(value, if r.key_field.is_some() { "follow `next` for more" } else { "ask for the next `page` for more" })?
                }
                "facet_size" => r.facet_size = number(key, value, 1, MAX_FACET_SIZE)?,
                "page" => {
                    r.page = number(key, value, 1u32, u32::MAX)?;
                    page_given = true;
                }
                "after" => after = Some(value.to_string()),
                "distinct" => {
                    r.distinct = Some(view.distinct.iter().position(|d| d.param == value.trim()).ok_or_else(|| {
                        let names: Vec<&str> = view.distinct.iter().map(|d| d.param.as_str()).collect();
                        bad(format!(
                            "`distinct` must be {} (what each bucket counts the distinct values of), not {value:?}",
                            names.join(" or ")
                        ))
                    })?)
                }
                "engine" => {
                    r.engine = match value.trim() {
                        "index" => Engine::Index,
                        "sql" => Engine::Sql,
                        _ => return Err(bad(format!("`engine` must be index or sql, not {value:?}"))),
                    }
                }
                _ => return Err(bad(format!("unknown parameter `{key}`; the known ones are {}", known(&view)))),
            }
        }
        for (h, range) in view.histograms.iter().zip(&r.ranges) {
            if let (Some(g), Some(l)) = (range.gte, range.lt) {
                if g >= l {
                    let p = &h.param;
                    return Err(bad(format!("`{p}_gte` ({g}) must be less than `{p}_lt` ({l}): the range is {p}_gte <= {p} < {p}_lt")));
                }
            }
        }
        if let (Some(_), Some(add)) = (&after, model.key_field_hint()) {
            return Err(bad(format!(
                "`after` (a page cursor) cannot be used with this model: its {plural} repeat their key in no field, so nothing \
                 tells {plural} of equal sort values apart and no cursor can say where a page ends among them; page with \
                 `page=N` instead (within the first {MAX_RESULT_WINDOW} results), or add {add} under [document] in the model \
                 file and run `tidemark admin reindex` to page at any depth with `next` cursors",
                plural = model.plural()
            )));
        }
        if let Some(a) = after {
            if page_given {
                return Err(bad(
                    "give either `page` or `after`, not both: `after` (the `next` of the page before) already says where the page starts",
                ));
            }
            r.after = Some(r.parse_cursor(&a)?);
        }
        let end = r.page as u64 * r.size as u64;
        if let (true, Some(add)) = (end > MAX_RESULT_WINDOW, model.key_field_hint()) {
            return Err(bad(format!(
                "page {} of {} hits reaches past the first {MAX_RESULT_WINDOW} results, which is as deep as a page number goes, and \
                 this model's {plural} are paged by number only: narrow the search (`q` or a filter) to reach the rest, or add \
                 {add} under [document] in the model file and run `tidemark admin reindex` to page at any depth",
                r.page,
                r.size,
                plural = model.plural()
            )));
        }
        if end > MAX_RESULT_WINDOW {
            return Err(bad(format!(
                "page {} of {} hits reaches past the first {MAX_RESULT_WINDOW} results, which is as deep as a page number goes; to go \
                 deeper, follow the `next` cursor from page to page (after=…), which works at any depth",
                r.page, r.size
            )));
        }
        Ok(r)
    }

    /// A cursor: the sort values of a hit (the score for relevance) and its key.
    fn parse_cursor(&self, s: &str) -> Result<Vec<Value>, BadRequest> {
        let what = |why: String| {
            bad(format!(
                "`after` is not a page cursor for sort={} ({why}): use the `next` value of the page before; to start over, leave \
                 `after` out",
                self.sort_param()
            ))
        };
        let v: Vec<Value> = serde_json::from_str(s).map_err(|_| what("not a JSON array".into()))?;
        let keys = self.order.sort.map_or(1, |i| self.view.sorts[i].fields.len());
        if v.len() != keys + 1 {
            return Err(what(format!("it takes {} values, a hit's sort values and its key, not {}", keys + 1, v.len())));
        }
        if v.last().and_then(|k| Id::of_cursor(self.key_type, k)).is_none() {
            return Err(what(match self.key_type {
                KeyType::Integer => "its last value is not a key: a whole number".into(),
                KeyType::Uuid => "its last value is not a key: a uuid in lower case".into(),
            }));
        }
        for k in &v[..keys] {
            let ok = match k {
                Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
                Value::String(t) => t.chars().count() <= MAX_VALUE_CHARS,
                Value::Null | Value::Bool(_) => self.order.sort.is_some(),
                _ => false,
            };
            if !ok {
                return Err(what(format!("{k} is not a sort value")));
            }
        }
        Ok(v)
    }

    pub fn sort_param(&self) -> String {
        match self.order.sort {
            None => "relevance".into(),
            Some(i) => format!("{}{}", if self.order.descending { "-" } else { "" }, self.view.sorts[i].param),
        }
    }

    pub fn facet_search(&self, facet: usize) -> Option<&str> {
        self.facet_search[facet].as_deref().filter(|s| !s.is_empty())
    }

    pub fn has_filters(&self) -> bool {
        self.selected.iter().any(|s| !s.is_empty()) || self.ranges.iter().any(|r| !r.is_empty())
    }

    pub fn words(&self) -> Vec<&str> {
        self.q.split_whitespace().collect()
    }

    /// The query string of this request, canonical (only what differs from the defaults).
    pub fn to_query(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if !self.q.is_empty() {
            s.append_pair("q", &self.q);
        }
        for (f, values) in self.view.facets.iter().zip(&self.selected) {
            for v in values {
                s.append_pair(&f.param, v);
            }
        }
        for (h, r) in self.view.histograms.iter().zip(&self.ranges) {
            if let Some(g) = r.gte {
                s.append_pair(&format!("{}_gte", h.param), &g.to_string());
            }
            if let Some(l) = r.lt {
                s.append_pair(&format!("{}_lt", h.param), &l.to_string());
            }
        }
        for (i, f) in self.view.facets.iter().enumerate() {
            if let Some(v) = self.facet_search(i) {
                s.append_pair(&format!("{}_q", f.param), v);
            }
        }
        if self.order != Order::default() {
            s.append_pair("sort", &self.sort_param());
        }
        if self.size != DEFAULT_PAGE_SIZE {
            s.append_pair("size", &self.size.to_string());
        }
        if self.facet_size != DEFAULT_FACET_SIZE {
            s.append_pair("facet_size", &self.facet_size.to_string());
        }
        if let Some(d) = self.distinct {
            s.append_pair("distinct", &self.view.distinct[d].param);
        }
        if self.engine != Engine::Index {
            s.append_pair("engine", self.engine.param());
        }
        if self.page > 1 {
            s.append_pair("page", &self.page.to_string());
        }
        if let Some(a) = &self.after {
            s.append_pair("after", &Value::Array(a.clone()).to_string());
        }
        s.finish()
    }

    pub fn href(&self) -> String {
        let q = self.to_query();
        if q.is_empty() {
            "/".into()
        } else {
            format!("/?{q}")
        }
    }

    pub fn first_page(&self) -> Request {
        Request { page: 1, after: None, ..self.clone() }
    }

    pub fn toggled(&self, facet: usize, value: &str) -> Request {
        let mut r = self.first_page();
        let list = &mut r.selected[facet];
        if let Some(at) = list.iter().position(|v| v == value) {
            list.remove(at);
        } else {
            list.push(value.to_string());
        }
        r
    }

    pub fn with_range(&self, histogram: usize, range: Range) -> Request {
        let mut r = self.first_page();
        r.ranges[histogram] = range;
        r
    }

    pub fn with_order(&self, order: Order) -> Request {
        Request { order, ..self.first_page() }
    }

    pub fn with_engine(&self, engine: Engine) -> Request {
        Request { engine, ..self.first_page() }
    }

    pub fn with_distinct(&self, distinct: Option<usize>) -> Request {
        Request { distinct, ..self.first_page() }
    }

    pub fn cleared(&self) -> Request {
        Request {
            selected: vec![Vec::new(); self.view.facets.len()],
            ranges: vec![Range::default(); self.view.histograms.len()],
            ..self.first_page()
        }
    }
}

/// A model without a `[search]` section: text search over its root's text and keyword
/// fields, nothing else (the page still lists and opens documents), each titled by the
/// first of those fields.
fn empty_view(model: &Model) -> SearchView {
    let query = model
        .root
        .fields
        .iter()
        .filter(|f| matches!(f.kind, FieldType::Text | FieldType::Keyword))
        .map(|f| f.name.clone())
        .collect::<Vec<_>>();
    // Its title: the first of those fields (a hit whose value is empty shows its key, see
    // [`title`]); none: the key.
    let title = crate::model::Template(query.first().map(|f| crate::model::Piece::Field(f.clone())).into_iter().collect());
    SearchView {
        noun: "document".into(),
        plural: "documents".into(),
        query,
        facets: vec![],
        histograms: vec![],
        sorts: vec![],
        suggest: None,
        distinct: vec![],
        title,
        show: model.root.fields.iter().map(|f| f.name.clone()).collect(),
    }
}

/// A document's title by the view: its template, or the document's key where that comes
/// out blank (a view without title fields, or a document whose fields are empty), so that
/// no hit or page has an empty title.
pub fn title(view: &SearchView, doc: &Value, key: &dyn std::fmt::Display) -> String {
    let t = view.title.render(doc);
    if t.trim().is_empty() {
        key.to_string()
    } else {
        t
    }
}

// ---------------------------------------------------------------------------------------
// The response

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

// ---------------------------------------------------------------------------------------
// Running a search

/// Runs a search of the loaded model on the engine it names: in the index, the counts and
/// the hits as two requests, each maybe reused (`super::reuse`), as for the students.
pub async fn search(app: &App, req: &Request) -> Result<Response, Failure> {
    let started = Instant::now();
    match req.engine {
        Engine::Index => {
            let model = &app.services.model;
            let (counts, hits) = (query::counts_body(req), query::hits_body(model, req));
            let mut tries = 0;
            loop {
                let target = app.reuse.target(&app.services).await?;
                let both = tokio::try_join!(
                    app.reuse.cached(&app.services, &target, "counts", &counts),
                    app.reuse.cached(&app.services, &target, "hits", &hits)
                );
                let (c, h) = match both {
                    Ok(v) => v,
                    Err(Failure::IndexMissing) if tries == 0 => {
                        tries += 1;
                        continue;
                    }
                    Err(f) => return Err(f),
                };
                let raw = query::read(req, &c.json, &h.json);
                let mut resp = Response::assemble(req, raw, req.engine, started.elapsed().as_secs_f64() * 1e3);
                resp.counts = CountsAge {
                    age_ms: (c.age.as_secs_f64() * 1e4).round() / 10.0,
                    max_age_ms: target.max_age.as_secs_f64() * 1e3,
                    reused: c.reused,
                };
                resp.hits_age_ms = (h.age.as_secs_f64() * 1e4).round() / 10.0;
                return Ok(resp);
            }
        }
        Engine::Sql => {
            let raw = super::db_within(super::SQL_ENGINE_TIMEOUT, sql::search(&app.services.pool, &app.services.model, req)).await?;
            Ok(Response::assemble(req, raw, req.engine, started.elapsed().as_secs_f64() * 1e3))
        }
    }
}

/// One autocomplete entry: a document, by id, labelled by the view's suggest label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    pub id: Id,
    pub name: String,
    /// The document's page.
    pub href: String,
}

/// Documents whose completion inputs start with `prefix`, one entry per document.
pub async fn suggest(app: &App, prefix: &str, size: u32) -> Result<Vec<Suggestion>, Failure> {
    let model = &app.services.model;
    let Some(view) = &model.search else { return Ok(Vec::new()) };
    let Some(sg) = &view.suggest else { return Ok(Vec::new()) };
    let source: Vec<String> = sg.label.fields().map(str::to_string).collect();
    let body = serde_json::json!({
        "size": 0,
        "_source": source,
        "suggest": {"s": {"prefix": prefix, "completion": {"field": sg.field, "skip_duplicates": false, "size": size}}}
    });
    let mut tries = 0;
    let answer = loop {
        let target = app.reuse.target(&app.services).await?;
        match app.reuse.cached(&app.services, &target, "suggest", &body).await {
            Err(Failure::IndexMissing) if tries == 0 => tries += 1,
            other => break other?,
        }
    };
    let mut out: Vec<Suggestion> = Vec::new();
    for o in answer.json["suggest"]["s"][0]["options"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(id) = o["_id"].as_str().and_then(|s| Id::parse(model.root.key_type, s)) else { continue };
        if out.iter().any(|s| s.id == id) {
            continue;
        }
        let href = format!("/{}/{id}", view.plural);
        out.push(Suggestion { id, name: sg.label.render(&o["_source"]), href });
    }
    Ok(out)
}

/// Whether the loaded model is exactly the shipped student directory (its tables, its
/// document and its view), which the students' own pages serve.
pub fn is_shipped_students(model: &Model) -> bool {
    let students = Model::students();
    model.root == students.root
        && model.search == students.search
        && model.key_field == students.key_field
        && model.completion == students.completion
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refinebio() -> Model {
        Model::load("refinebio").unwrap()
    }

    #[test]
    fn parameters_come_from_the_view_and_round_trip() {
        let m = refinebio();
        let r = Request::parse(
            &m,
            Some("q=liver&organism=Mus+musculus&organism=Homo+sapiens&platform_q=illu&sort=-accession&distinct=samples"),
        )
        .unwrap();
        assert_eq!(r.selected[1], ["Mus musculus", "Homo sapiens"]);
        assert_eq!(r.facet_search(2), Some("illu"));
        assert_eq!(r.order, Order { sort: Some(0), descending: true });
        assert_eq!(r.distinct, Some(0));
        assert_eq!(Request::parse(&m, Some(&r.to_query())).unwrap(), r);
        let after = Request { after: Some(vec![json!("GSE2"), json!(2)]), ..r.clone() };
        assert_eq!(Request::parse(&m, Some(&after.to_query())).unwrap(), after);
        assert_eq!(r.toggled(1, "Mus musculus").selected[1], ["Homo sapiens"]);
    }

    #[test]
    fn refuses_what_the_view_does_not_declare() {
        let m = refinebio();
        for (q, says) in [
            ("course=CS101", "unknown parameter `course`; the known ones are q, technology, organism, platform"),
            ("age_gte=3", "unknown parameter `age_gte`"),
            ("distinct=university", "`distinct` must be samples"),
            ("sort=age", "`sort` must be one of relevance, accession, -accession"),
            ("after=[1]&sort=accession", "not a page cursor"),
            ("q=a&q=b", "more than once"),
        ] {
            let e = Request::parse(&m, Some(q)).unwrap_err();
            assert!(e.0.contains(says), "{q}: {e}");
        }
        let students = Model::students();
        let e = Request::parse(&students, Some("age_gte=30&age_lt=20")).unwrap_err();
        assert!(e.0.contains("`age_gte` (30) must be less than `age_lt` (20)"), "{e}");
        assert_eq!(Request::parse(&students, Some("age_gte=18&age_lt=20")).unwrap().ranges[0], Range { gte: Some(18), lt: Some(20) });
    }

    /// A model repeating its key in no field (no `number`, no `key_field`): an integer
    /// year before its text title.
    const KEYLESS: &str = "name = \"m\"\n[document]\ntable = \"books\"\nkey = \"id\"\n[[document.fields]]\nname = \"year\"\n\
                           type = \"integer\"\n[[document.fields]]\nname = \"title\"\ntype = \"text\"\n";

    fn keyless(patch: impl Fn(String) -> String) -> Model {
        Model::parse(&patch(KEYLESS.to_string()), "t").unwrap()
    }

    fn uuid_keys(m: String) -> String {
        m.replace("key = \"id\"", "key = \"id\"\nkey_type = \"uuid\"")
    }

    #[test]
    fn a_model_without_a_key_field_refuses_cursors_saying_what_to_add() {
        let (integer, uuid) = (keyless(|m| m), keyless(uuid_keys));
        for (m, add) in [(&integer, "add number = \"id\" under [document]"), (&uuid, "add key_field = \"id\" under [document]")] {
            for q in ["after=[1.0,5]", "after=garbage", "engine=sql&after=[1.0,5]", "page=2&after=[1.0,5]"] {
                let e = Request::parse(m, Some(q)).unwrap_err();
                assert!(e.0.starts_with("`after` (a page cursor) cannot be used with this model") && e.0.contains("`page=N`"), "{q}: {e}");
                assert!(e.0.contains(add), "{q}: {e}");
            }
            let e = Request::parse(m, Some("size=100&page=101")).unwrap_err();
            assert!(e.0.contains("past the first 10000 results") && e.0.contains(add) && !e.0.contains("follow the `next`"), "{e}");
            let e = Request::parse(m, Some("size=1000")).unwrap_err();
            assert!(e.0.contains("ask for the next `page`"), "{e}");
            let r = Request::parse(m, Some("page=3&size=50")).unwrap();
            assert_eq!((r.page, r.size, r.key_field.as_deref()), (3, 50, None));
        }
        // A name the document already uses is not suggested.
        let taken = keyless(|m| m.replace("name = \"year\"", "name = \"id\""));
        assert_eq!(taken.key_field_hint().as_deref(), Some("number = \"key\""));
        // A model that declares the field takes cursors, and has nothing to add.
        let keyed = keyless(|m| m.replace("key = \"id\"", "key = \"id\"\nnumber = \"id\""));
        assert_eq!((keyed.key_field_hint(), keyed.paging_note()), (None, None));
        assert!(Request::parse(&keyed, Some("after=[1.0,5]")).unwrap().after.is_some());
        let e = Request::parse(&keyed, Some("size=100&page=101")).unwrap_err();
        assert!(e.0.contains("follow the `next` cursor"), "{e}");
        let note = uuid.paging_note().unwrap();
        assert!(note.contains("no `next` cursor") && note.contains("key_field = \"id\""), "{note}");
    }

    fn hits(n: usize, key_type: KeyType) -> Vec<Hit> {
        (0..n)
            .map(|i| Hit {
                id: Id::parse(key_type, &(i + 1).to_string()).unwrap(),
                score: 1.0,
                title: format!("t{i}"),
                highlight: None,
                fields: Ordered(Vec::new()),
                cursor: vec![json!(1.0), json!(i + 1)],
            })
            .collect()
    }

    fn raw(n: usize, total: u64) -> Raw {
        Raw {
            total: Total { value: total, relation: super::super::response::Relation::Eq },
            hits: hits(n, KeyType::Integer),
            facets: vec![],
            histograms: vec![],
        }
    }

    #[test]
    fn answers_without_a_key_field_name_the_next_page_instead_of_a_cursor() {
        let m = keyless(|m| m);
        let r = Request::parse(&m, Some("size=10&page=2")).unwrap();
        let a = Response::assemble(&r, raw(11, 50), Engine::Index, 1.0);
        assert_eq!((a.hits.len(), a.next.as_deref(), a.next_page), (10, None, Some(3)));
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!((v.get("next"), &v["next_page"]), (None, &json!(3)));
        // The last page; the last page a number reaches.
        assert_eq!(Response::assemble(&r, raw(10, 20), Engine::Sql, 1.0).next_page, None);
        let deep = Request::parse(&m, Some("size=100&page=100")).unwrap();
        assert_eq!(Response::assemble(&deep, raw(101, 10_000), Engine::Sql, 1.0).next_page, None);
        // A model with the field: a cursor, no page number.
        let keyed = keyless(|m| m.replace("key = \"id\"", "key = \"id\"\nnumber = \"id\""));
        let r = Request::parse(&keyed, Some("size=10&page=2")).unwrap();
        let a = Response::assemble(&r, raw(11, 50), Engine::Index, 1.0);
        assert_eq!((a.next.as_deref(), a.next_page), (Some("[1.0,10]"), None));
    }

    #[test]
    fn without_a_key_field_the_index_breaks_ties_in_the_order_documents_were_written() {
        let m = keyless(|m| m);
        let body = query::hits_body(&m, &Request::parse(&m, None).unwrap());
        assert_eq!(body["sort"], json!([{"_score": {"order": "desc"}}, {"_seq_no": {"order": "asc"}}]));
        let students = Model::students();
        let body = query::hits_body(&students, &Request::parse(&students, Some("sort=-age")).unwrap());
        assert_eq!(body["sort"][1], json!({"id": {"order": "asc", "unmapped_type": "long"}}), "{body}");
    }

    #[test]
    fn without_a_search_section_hits_are_titled_by_the_first_text_field_or_the_key() {
        let m = keyless(|m| m);
        let r = Request::parse(&m, None).unwrap();
        assert_eq!(r.view.title, crate::model::Template(vec![crate::model::Piece::Field("title".into())]));
        let hit = |doc: Value| query::hit(&r, Id::Integer(7), &doc, 1.0, None, vec![]);
        assert_eq!(hit(json!({"year": 1999, "title": "Dune"})).title, "Dune");
        assert_eq!(hit(json!({"year": 1999, "title": null})).title, "7", "an empty title: the key");
        let q = Request::parse(&m, Some("q=dune")).unwrap();
        let h = query::hit(&q, Id::Integer(7), &json!({"title": ""}), 1.0, Some(&json!({})), vec![]);
        assert_eq!((h.title.as_str(), h.highlight), ("7", Some(Segment::plain("7"))));
        // No text or keyword field at all: the key (here a uuid).
        let m = keyless(|m| uuid_keys(m).replace("type = \"text\"", "type = \"integer\""));
        let r = Request::parse(&m, None).unwrap();
        let id = "0b6f0c4e-5b1a-4c1e-9a0e-8f4c2b7d1e3a";
        let h = query::hit(&r, Id::parse(KeyType::Uuid, id).unwrap(), &json!({"year": 1, "title": 2}), 1.0, None, vec![]);
        assert_eq!(h.title, id);
        assert_eq!(title(&r.view, &json!({}), &id), id);
    }

    #[test]
    fn only_the_shipped_students_model_is_served_by_the_students_pages() {
        assert!(is_shipped_students(&Model::students()));
        assert!(!is_shipped_students(&refinebio()));
    }
}

//! One search of the loaded model ([`Request`]): the parameters its `[search]` view
//! declares (facets, histograms, sorts, distinct counts; their names come from the view),
//! read from a query string and refused with a reason, and written back into one, so
//! every link of the page carries the whole state in its URL.
//!
//! Filters are repeated keys (`course=CS101&course=MATH201`), which serde's
//! `application/x-www-form-urlencoded` support does not map to lists; the parser is ours.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use url::form_urlencoded;

use super::params::{
    bad, number, page_size, query_pairs, text, BadRequest, Engine, DEFAULT_FACET_SIZE, DEFAULT_PAGE_SIZE, MAX_FACET_SIZE, MAX_QUERY_CHARS,
    MAX_QUERY_WORDS, MAX_RESULT_WINDOW, MAX_VALUES_PER_FACET, MAX_VALUE_CHARS,
};
use crate::model::{FieldType, KeyType, Model, SearchView};

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

/// "FR, SO, JR or SR".
fn one_of(values: &[String]) -> String {
    match values {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Whether a request takes the parameter `key` (one of [`known`]), without writing them out.
fn is_known(view: &SearchView, key: &str) -> bool {
    matches!(key, "q" | "sort" | "size" | "page" | "after" | "engine" | "facet_size")
        || (key == "distinct" && !view.distinct.is_empty())
        || view.facets.iter().any(|f| f.param == key || key.strip_suffix("_q") == Some(f.param.as_str()))
        || view.histograms.iter().any(|h| key.strip_prefix(h.param.as_str()).is_some_and(|rest| rest == "_gte" || rest == "_lt"))
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
        let view = model.view();
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
                let declared = &view.facets[i].values;
                if !declared.is_empty() && !declared.contains(&v) {
                    return Err(bad(format!("`{key}` must be {}, not {v:?}", one_of(declared))));
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
            if !is_known(&view, key) {
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
            r.after = Some(r.parse_cursor(model, &a)?);
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
    fn parse_cursor(&self, model: &Model, s: &str) -> Result<Vec<Value>, BadRequest> {
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
        // Each value of the kind its sort key holds (a score is a number), so that neither
        // engine is handed one it cannot compare: the index would refuse it, SQL fail to cast it.
        let finite = |k: &Value| k.as_f64().is_some_and(f64::is_finite);
        for (n, k) in v[..keys].iter().enumerate() {
            let ok = match self.order.sort {
                None => finite(k),
                Some(i) => {
                    let path = &self.view.sorts[i].fields[n];
                    match model.resolve(path).map_or(FieldType::Keyword, |r| r.kind) {
                        _ if k.is_null() => true,
                        t if t.is_numeric() => finite(k),
                        FieldType::Boolean => k.is_boolean() || finite(k),
                        FieldType::Date => finite(k) || k.as_str().is_some_and(|t| t.chars().count() <= MAX_VALUE_CHARS),
                        _ => k.as_str().is_some_and(|t| t.chars().count() <= MAX_VALUE_CHARS),
                    }
                }
            };
            if !ok {
                return Err(what(format!("{k} is not a sort value of `{}`", self.sort_param())));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameters_taken_are_exactly_the_ones_named_in_messages() {
        for model in [Model::students(), Model::load("refinebio").unwrap()] {
            let view = model.view();
            let names = known(&view);
            for name in names.split(", ") {
                assert!(is_known(&view, name), "{}: {name}", model.name);
            }
            for other in ["colour", "course_gte", "age", "age_q", "q_q", "_q", "_lt", "qq", "distinct_q", "sort_q"] {
                assert_eq!(is_known(&view, other), names.split(", ").any(|n| n == other), "{}: {other}", model.name);
            }
        }
    }
}

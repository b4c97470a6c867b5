//! The parse-and-validate edge: a query string becomes a [`SearchRequest`] (or a
//! [`BadRequest`] that says what was wrong and what to do), and a request becomes a query
//! string again, so every link of the page carries the whole state in its URL.
//!
//! Filters are repeated keys (`course=CS101&course=MATH201`), which serde's
//! `application/x-www-form-urlencoded` support does not map to lists; the parser is ours.

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use url::form_urlencoded;

/// The longest text query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// The most words a text query may have (each must match a name).
pub const MAX_QUERY_WORDS: usize = 8;
/// Hits per page: default and cap.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;
/// Values shown per facet: default and cap.
pub const DEFAULT_FACET_SIZE: u32 = 10;
pub const MAX_FACET_SIZE: u32 = 100;
/// Values selected in one facet, and the longest value (the database allows 50).
pub const MAX_VALUES_PER_FACET: usize = 20;
pub const MAX_VALUE_CHARS: usize = 50;
/// Pages reachable by number (`page`): the first 10,000 results, the engines' default
/// `index.max_result_window`. Deeper pages are reached by the `after` cursor, at any depth.
pub const MAX_RESULT_WINDOW: u64 = crate::model::RESULT_WINDOW;
/// Accepted bounds of an age filter.
pub const AGE_BOUNDS: (i32, i32) = (0, 200);
/// The age histogram's interval.
pub const AGE_INTERVAL: i32 = 2;

/// A request refused: the message says what was wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// The longest piece of an address an error message quotes.
const MAX_QUOTED_CHARS: usize = 60;

/// `s` cut to [`MAX_QUOTED_CHARS`] characters, with `…` when cut.
fn quoted(s: &str) -> String {
    if s.chars().count() > MAX_QUOTED_CHARS {
        s.chars().take(MAX_QUOTED_CHARS).chain(['…']).collect()
    } else {
        s.to_string()
    }
}

/// What to do about text that is not UTF-8.
const UTF8_HOW: &str = "percent-encode text as the bytes of its UTF-8 encoding (é is %C3%A9), as browsers and `curl --data-urlencode` do";

/// One name or value of a query string decoded as an HTML form encodes it (`+` is a
/// space, `%XX` a byte; a `%` not followed by two hex digits stays itself): its text, or
/// None when the bytes are not UTF-8.
fn form_decode(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|t| t.into_owned())
}

/// The query string's parameters in order, names and values decoded: the one reading of a
/// query string every route shares. A name or value whose decoded bytes are not UTF-8
/// (`q=%C3%28`) is refused, naming it, rather than read with replacement characters.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, BadRequest> {
    let mut out = Vec::new();
    for piece in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
        let Some(key) = form_decode(raw_key) else {
            return Err(bad(format!(
                "a parameter name is not valid UTF-8: `{}` decodes to bytes that are not UTF-8 text; {UTF8_HOW}",
                quoted(raw_key)
            )));
        };
        let Some(value) = form_decode(raw_value) else {
            return Err(bad(format!(
                "`{}` is not valid UTF-8: `{}` decodes to bytes that are not UTF-8 text; {UTF8_HOW}",
                quoted(&key),
                quoted(raw_value)
            )));
        };
        out.push((key, value));
    }
    Ok(out)
}

/// Checks the parameters a route takes from its path (`{id}` of `/students/{id}`, as
/// `template` names them) the way [`query_pairs`] checks the query string: one whose
/// percent-decoded bytes are not UTF-8 is refused, naming it.
pub fn check_path_params(template: &str, path: &str) -> Result<(), BadRequest> {
    check_path_params_of(template, path, "a student id is a positive whole number, as in /students/42")
}

/// [`check_path_params`], saying `id_how` of an `id` (what a document id looks like).
pub fn check_path_params_of(template: &str, path: &str, id_how: &str) -> Result<(), BadRequest> {
    for (part, raw) in template.split('/').zip(path.split('/')) {
        let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else { continue };
        if percent_encoding::percent_decode_str(raw).decode_utf8().is_err() {
            let how = if name == "id" { id_how } else { UTF8_HOW };
            return Err(bad(format!(
                "`{name}` in the path is not valid UTF-8: `{}` decodes to bytes that are not UTF-8 text; {how}",
                quoted(raw)
            )));
        }
    }
    Ok(())
}

/// The terms facets, by the name of their filter parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Facet {
    Course,
    University,
    Year,
}

impl Facet {
    pub const ALL: [Facet; 3] = [Facet::Course, Facet::University, Facet::Year];

    /// The filter parameter (`course=…`).
    pub fn param(self) -> &'static str {
        match self {
            Facet::Course => "course",
            Facet::University => "university",
            Facet::Year => "year",
        }
    }

    /// The keyword field of the document.
    pub fn field(self) -> &'static str {
        match self {
            Facet::Course => "course_names",
            Facet::University => "university.name",
            Facet::Year => "year_in_school",
        }
    }

    /// The facet-value search parameter, for the facets long enough to need one.
    pub fn search_param(self) -> Option<&'static str> {
        match self {
            Facet::Course => Some("course_q"),
            Facet::University => Some("university_q"),
            Facet::Year => None,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Facet::Course => "Courses",
            Facet::University => "University",
            Facet::Year => "Year in school",
        }
    }

    /// What a distinct count of this field counts, in the singular.
    pub fn singular(self) -> &'static str {
        match self {
            Facet::Course => "course",
            Facet::University => "university",
            Facet::Year => "year",
        }
    }

    /// What a distinct count of this field counts, in the plural.
    pub fn plural(self) -> &'static str {
        match self {
            Facet::Course => "courses",
            Facet::University => "universities",
            Facet::Year => "years",
        }
    }

    /// What a bucket count summed over values counts, singular and plural: students for a
    /// field a student has one value of; for courses (many per student) enrollments, a
    /// student in two of the values counted twice.
    pub fn counted(self) -> (&'static str, &'static str) {
        match self {
            Facet::Course => ("enrollment", "enrollments"),
            Facet::University | Facet::Year => ("student", "students"),
        }
    }

    /// Where those are, before the values' plural: "in courses", "at universities".
    pub fn preposition(self) -> &'static str {
        match self {
            Facet::University => "at",
            Facet::Course | Facet::Year => "in",
        }
    }

    /// Whether a student has at most one value of this field (a university, a year; but
    /// many courses).
    pub fn single_valued(self) -> bool {
        match self {
            Facet::Course => false,
            Facet::University | Facet::Year => true,
        }
    }

    fn from_param(s: &str) -> Option<Facet> {
        Facet::ALL.into_iter().find(|f| f.param() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Who answers: the index (the product) or PostgreSQL by `GROUP BY` (to compare).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    #[default]
    Index,
    Sql,
}

impl Engine {
    pub fn param(self) -> &'static str {
        match self {
            Engine::Index => "index",
            Engine::Sql => "sql",
        }
    }
}

/// What hits are ordered by; the student id breaks ties, so the order is total and a
/// cursor names one place in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    #[default]
    Relevance,
    LastName,
    Age,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    /// Descending (`sort=-age`); relevance is always best first.
    pub descending: bool,
}

impl Sort {
    pub const CHOICES: &'static str = "relevance, last_name, -last_name, age or -age";

    fn parse(s: &str) -> Option<Sort> {
        let (descending, name) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let key = match name {
            "relevance" if !descending => SortKey::Relevance,
            "last_name" => SortKey::LastName,
            "age" => SortKey::Age,
            _ => return None,
        };
        Some(Sort { key, descending })
    }

    pub fn param(self) -> String {
        let name = match self.key {
            SortKey::Relevance => "relevance",
            SortKey::LastName => "last_name",
            SortKey::Age => "age",
        };
        if self.descending {
            format!("-{name}")
        } else {
            name.to_string()
        }
    }
}

/// The age filter: `age_gte <= age < age_lt`, either bound optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgeRange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gte: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lt: Option<i32>,
}

impl AgeRange {
    pub fn is_empty(&self) -> bool {
        self.gte.is_none() && self.lt.is_none()
    }

    /// Whether `[from, to)` overlaps the range.
    pub fn overlaps(&self, from: i32, to: i32) -> bool {
        !self.is_empty() && self.gte.is_none_or(|g| to > g) && self.lt.is_none_or(|l| from < l)
    }

    /// "18–19", "18 and over", "under 20".
    pub fn label(&self) -> String {
        match (self.gte, self.lt) {
            (Some(g), Some(l)) if l == g + 1 => format!("age {g}"),
            (Some(g), Some(l)) => format!("ages {g}–{}", l - 1),
            (Some(g), None) => format!("ages {g} and over"),
            (None, Some(l)) => format!("ages under {l}"),
            (None, None) => "any age".into(),
        }
    }
}

/// Where a page starts: after the hit with these sort values (the `next` of the page
/// before). In the URL as compact JSON, e.g. `after=["Lee",123]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    pub key: CursorKey,
    pub id: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CursorKey {
    Score(f64),
    Text(String),
    Number(i64),
}

impl Cursor {
    pub fn to_param(&self) -> String {
        let key = match &self.key {
            CursorKey::Score(s) => serde_json::json!(s),
            CursorKey::Text(t) => serde_json::json!(t),
            CursorKey::Number(n) => serde_json::json!(n),
        };
        serde_json::json!([key, self.id]).to_string()
    }

    /// The values for the engine's `search_after`.
    pub fn search_after(&self) -> Value {
        Value::Array(vec![
            match &self.key {
                CursorKey::Score(s) => serde_json::json!(s),
                CursorKey::Text(t) => Value::String(t.clone()),
                CursorKey::Number(n) => serde_json::json!(n),
            },
            serde_json::json!(self.id),
        ])
    }

    fn parse(s: &str, sort: Sort) -> Result<Cursor, BadRequest> {
        let what = || {
            bad(format!(
                "`after` is not a page cursor for sort={}: use the `next` value of the page before (e.g. after=[\"Lee\",123] \
                 for sort=last_name); to start over, leave `after` out",
                sort.param()
            ))
        };
        let v: Vec<Value> = serde_json::from_str(s).map_err(|_| what())?;
        let [key, id] = v.as_slice() else { return Err(what()) };
        let id = id.as_i64().ok_or_else(what)?;
        let key = match sort.key {
            SortKey::Relevance => CursorKey::Score(key.as_f64().filter(|f| f.is_finite()).ok_or_else(what)?),
            SortKey::LastName => {
                let t = key.as_str().ok_or_else(what)?;
                if t.chars().count() > MAX_VALUE_CHARS {
                    return Err(what());
                }
                CursorKey::Text(t.to_string())
            }
            SortKey::Age => CursorKey::Number(key.as_i64().ok_or_else(what)?),
        };
        Ok(Cursor { key, id })
    }
}

/// One search, as both engines take it and as the page's links carry it.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchRequest {
    /// Words that must each match a first or last name (typo-tolerant in the index);
    /// empty: every student.
    pub q: String,
    /// Selected values per facet, in [`Facet::ALL`] order: OR within a facet, AND across.
    pub selected: [Vec<String>; 3],
    pub age: AgeRange,
    /// Facet-value search per facet (narrows the values a long facet lists).
    pub facet_search: [Option<String>; 3],
    pub sort: Sort,
    pub size: u32,
    /// 1-based page number, for jumps within the first [`MAX_RESULT_WINDOW`] results.
    pub page: u32,
    pub after: Option<Cursor>,
    /// Each bucket also counts the distinct values of this field among its students.
    pub distinct: Option<Facet>,
    pub engine: Engine,
    pub facet_size: u32,
}

impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest {
            q: String::new(),
            selected: Default::default(),
            age: AgeRange::default(),
            facet_search: Default::default(),
            sort: Sort::default(),
            size: DEFAULT_PAGE_SIZE,
            page: 1,
            after: None,
            distinct: None,
            engine: Engine::Index,
            facet_size: DEFAULT_FACET_SIZE,
        }
    }
}

const KNOWN: &str =
    "q, course, university, year, age_gte, age_lt, course_q, university_q, sort, size, page, after, distinct, engine, facet_size";

pub(crate) fn number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(key: &str, v: &str, lo: T, hi: T) -> Result<T, BadRequest> {
    match v.trim().parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(bad(format!("`{key}` must be a whole number from {lo} to {hi}, not {v:?}"))),
    }
}

/// `size`: the hits a page holds, 1 to [`MAX_PAGE_SIZE`]; `more` says how to get the hits
/// after a page ("follow `next` for more").
pub(crate) fn page_size(value: &str, more: &str) -> Result<u32, BadRequest> {
    match value.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_PAGE_SIZE as u64).contains(&n) => Ok(n as u32),
        Ok(n) if n > MAX_PAGE_SIZE as u64 => Err(bad(format!(
            "`size` {n} is more than the {MAX_PAGE_SIZE} hits a page may hold; ask for {MAX_PAGE_SIZE} or fewer and {more}"
        ))),
        _ => Err(bad(format!("`size` must be a whole number from 1 to {MAX_PAGE_SIZE}, not {value:?}"))),
    }
}

/// A bounded, printable text value.
pub(crate) fn text(key: &str, v: &str, max: usize) -> Result<String, BadRequest> {
    let t = v.trim();
    if t.chars().count() > max {
        return Err(bad(format!("`{key}` is longer than {max} characters; shorten it")));
    }
    if t.chars().any(char::is_control) {
        return Err(bad(format!("`{key}` contains control characters; remove them")));
    }
    Ok(t.to_string())
}

impl SearchRequest {
    /// Parses a query string (without the `?`). Every parameter is known, given at most
    /// once (filters may repeat) and within bounds; empty values count as absent, as an
    /// HTML form sends them.
    pub fn parse(query: Option<&str>) -> Result<SearchRequest, BadRequest> {
        let mut r = SearchRequest::default();
        let mut seen: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        let mut page_given = false;
        for (key, value) in query_pairs(query)? {
            let (key, value) = (key.as_str(), value.as_str());
            let once = |seen: &mut Vec<String>| -> Result<(), BadRequest> {
                if seen.iter().any(|k| k == key) {
                    return Err(bad(format!("`{key}` is given more than once; give it once")));
                }
                seen.push(key.to_string());
                Ok(())
            };
            if let Some(facet) = Facet::from_param(key) {
                let v = text(key, value, MAX_VALUE_CHARS)?;
                if v.is_empty() {
                    continue;
                }
                if facet == Facet::Year && !["FR", "SO", "JR", "SR"].contains(&v.as_str()) {
                    return Err(bad(format!("`year` must be FR, SO, JR or SR, not {v:?}")));
                }
                let list = &mut r.selected[facet.index()];
                if !list.contains(&v) {
                    if list.len() == MAX_VALUES_PER_FACET {
                        return Err(bad(format!("at most {MAX_VALUES_PER_FACET} values of `{key}` can be selected at once")));
                    }
                    list.push(v);
                }
                continue;
            }
            if value.trim().is_empty() && key != "q" {
                if !KNOWN.split(", ").any(|k| k == key) {
                    return Err(bad(format!("unknown parameter `{key}`; the known ones are {KNOWN}")));
                }
                continue;
            }
            once(&mut seen)?;
            match key {
                "q" => {
                    let q = text("q", value, MAX_QUERY_CHARS)?;
                    if q.split_whitespace().count() > MAX_QUERY_WORDS {
                        return Err(bad(format!("`q` has more than {MAX_QUERY_WORDS} words; search for fewer")));
                    }
                    r.q = q.split_whitespace().collect::<Vec<_>>().join(" ");
                }
                "age_gte" => r.age.gte = Some(number(key, value, AGE_BOUNDS.0, AGE_BOUNDS.1)?),
                "age_lt" => r.age.lt = Some(number(key, value, AGE_BOUNDS.0, AGE_BOUNDS.1)?),
                "course_q" | "university_q" => {
                    let facet = if key == "course_q" { Facet::Course } else { Facet::University };
                    r.facet_search[facet.index()] = Some(text(key, value, MAX_VALUE_CHARS)?);
                }
                "sort" => {
                    r.sort =
                        Sort::parse(value.trim()).ok_or_else(|| bad(format!("`sort` must be one of {}, not {value:?}", Sort::CHOICES)))?;
                }
                "size" => r.size = page_size(value, "follow `next` for more")?,
                "facet_size" => r.facet_size = number(key, value, 1, MAX_FACET_SIZE)?,
                "page" => {
                    r.page = number(key, value, 1u32, u32::MAX)?;
                    page_given = true;
                }
                "after" => after = Some(value.to_string()),
                "distinct" => {
                    r.distinct = Some(Facet::from_param(value.trim()).ok_or_else(|| {
                        bad(format!(
                        "`distinct` must be course, university or year (the field whose distinct values each bucket counts), not {value:?}"
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
                _ => return Err(bad(format!("unknown parameter `{key}`; the known ones are {KNOWN}"))),
            }
        }
        if let (Some(g), Some(l)) = (r.age.gte, r.age.lt) {
            if g >= l {
                return Err(bad(format!("`age_gte` ({g}) must be less than `age_lt` ({l}): the range is age_gte <= age < age_lt")));
            }
        }
        if let Some(a) = after {
            if page_given {
                return Err(bad(
                    "give either `page` or `after`, not both: `after` (the `next` of the page before) already says where the page starts",
                ));
            }
            r.after = Some(Cursor::parse(&a, r.sort)?);
        }
        let end = r.page as u64 * r.size as u64;
        if end > MAX_RESULT_WINDOW {
            return Err(bad(format!(
                "page {} of {} hits reaches past the first {MAX_RESULT_WINDOW} results, which is as deep as a page number goes; to go \
                 deeper, follow the `next` cursor from page to page (after=…), which works at any depth",
                r.page, r.size
            )));
        }
        Ok(r)
    }

    pub fn selected(&self, facet: Facet) -> &[String] {
        &self.selected[facet.index()]
    }

    pub fn facet_search(&self, facet: Facet) -> Option<&str> {
        self.facet_search[facet.index()].as_deref().filter(|s| !s.is_empty())
    }

    /// Whether any filter is set (text queries are not filters).
    pub fn has_filters(&self) -> bool {
        self.selected.iter().any(|s| !s.is_empty()) || !self.age.is_empty()
    }

    /// The words of the text query.
    pub fn words(&self) -> Vec<&str> {
        self.q.split_whitespace().collect()
    }

    /// The query string of this request, canonical (only what differs from the defaults).
    pub fn to_query(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if !self.q.is_empty() {
            s.append_pair("q", &self.q);
        }
        for facet in Facet::ALL {
            for v in self.selected(facet) {
                s.append_pair(facet.param(), v);
            }
        }
        if let Some(g) = self.age.gte {
            s.append_pair("age_gte", &g.to_string());
        }
        if let Some(l) = self.age.lt {
            s.append_pair("age_lt", &l.to_string());
        }
        for facet in Facet::ALL {
            if let (Some(p), Some(v)) = (facet.search_param(), self.facet_search(facet)) {
                s.append_pair(p, v);
            }
        }
        if self.sort != Sort::default() {
            s.append_pair("sort", &self.sort.param());
        }
        if self.size != DEFAULT_PAGE_SIZE {
            s.append_pair("size", &self.size.to_string());
        }
        if self.facet_size != DEFAULT_FACET_SIZE {
            s.append_pair("facet_size", &self.facet_size.to_string());
        }
        if let Some(d) = self.distinct {
            s.append_pair("distinct", d.param());
        }
        if self.engine != Engine::Index {
            s.append_pair("engine", self.engine.param());
        }
        if self.page > 1 {
            s.append_pair("page", &self.page.to_string());
        }
        if let Some(a) = &self.after {
            s.append_pair("after", &a.to_param());
        }
        s.finish()
    }

    /// `/?<query>` (or `/` when there is none).
    pub fn href(&self) -> String {
        let q = self.to_query();
        if q.is_empty() {
            "/".into()
        } else {
            format!("/?{q}")
        }
    }

    /// The same search from its first page: what every change of the filters leads to.
    pub fn first_page(&self) -> SearchRequest {
        SearchRequest { page: 1, after: None, ..self.clone() }
    }

    /// With `value` of `facet` selected if it was not, deselected if it was.
    pub fn toggled(&self, facet: Facet, value: &str) -> SearchRequest {
        let mut r = self.first_page();
        let list = &mut r.selected[facet.index()];
        if let Some(at) = list.iter().position(|v| v == value) {
            list.remove(at);
        } else {
            list.push(value.to_string());
        }
        r
    }

    pub fn with_age(&self, age: AgeRange) -> SearchRequest {
        SearchRequest { age, ..self.first_page() }
    }

    pub fn with_sort(&self, sort: Sort) -> SearchRequest {
        SearchRequest { sort, ..self.first_page() }
    }

    pub fn with_engine(&self, engine: Engine) -> SearchRequest {
        SearchRequest { engine, ..self.first_page() }
    }

    pub fn with_distinct(&self, distinct: Option<Facet>) -> SearchRequest {
        SearchRequest { distinct, ..self.first_page() }
    }

    /// Without any filter (the text query and the view settings stay).
    pub fn cleared(&self) -> SearchRequest {
        SearchRequest { selected: Default::default(), age: AgeRange::default(), ..self.first_page() }
    }

    pub fn next_page(&self, after: Cursor) -> SearchRequest {
        SearchRequest { page: 1, after: Some(after), ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_filters_and_round_trips() {
        let r =
            SearchRequest::parse(Some("q=ann&course=CS101&course=MATH201&university=MIT&year=FR&age_gte=18&age_lt=20&sort=-age")).unwrap();
        assert_eq!(r.selected(Facet::Course), ["CS101", "MATH201"]);
        assert_eq!(r.age, AgeRange { gte: Some(18), lt: Some(20) });
        assert_eq!(r.sort, Sort { key: SortKey::Age, descending: true });
        assert_eq!(SearchRequest::parse(Some(&r.to_query())).unwrap(), r);
        let next = r.next_page(Cursor { key: CursorKey::Number(19), id: 42 });
        assert_eq!(SearchRequest::parse(Some(&next.to_query())).unwrap(), next);
    }

    #[test]
    fn refuses_what_it_cannot_serve_with_a_reason() {
        for (q, says) in [
            ("colour=red", "unknown parameter `colour`"),
            ("size=101", "more than the 100 hits"),
            ("size=0", "`size` must be"),
            ("year=XX", "`year` must be FR"),
            ("age_gte=20&age_lt=20", "must be less than"),
            ("age_gte=abc", "`age_gte` must be a whole number"),
            ("sort=name", "`sort` must be one of"),
            ("page=501", "first 10000 results"),
            ("after=[1,2]&sort=last_name", "not a page cursor"),
            ("q=a&q=b", "more than once"),
            ("distinct=colour", "`distinct` must be"),
            ("engine=solr", "`engine` must be"),
        ] {
            let e = SearchRequest::parse(Some(q)).unwrap_err();
            assert!(e.0.contains(says), "{q}: {e}");
        }
        let long = format!("q={}", "a".repeat(MAX_QUERY_CHARS + 1));
        assert!(SearchRequest::parse(Some(&long)).unwrap_err().0.contains("longer than"));
    }

    #[test]
    fn query_strings_decode_as_forms_and_refuse_bytes_that_are_not_utf8() {
        let pairs = query_pairs(Some("q=ann+lee&course=CS%20101&x=100%&&empty=&bare&%C3%A9=%C3%A9")).unwrap();
        let want = [("q", "ann lee"), ("course", "CS 101"), ("x", "100%"), ("empty", ""), ("bare", ""), ("é", "é")];
        assert_eq!(pairs, want.map(|(k, v)| (k.to_string(), v.to_string())));
        let e = query_pairs(Some("course=CS101&q=%C3%28")).unwrap_err();
        assert!(e.0.starts_with("`q` is not valid UTF-8: `%C3%28` decodes to bytes that are not UTF-8 text; percent-encode"), "{e}");
        let e = query_pairs(Some("%FF=1")).unwrap_err();
        assert!(e.0.starts_with("a parameter name is not valid UTF-8: `%FF`"), "{e}");
        let e = SearchRequest::parse(Some("university=%E9cole")).unwrap_err();
        assert!(e.0.starts_with("`university` is not valid UTF-8"), "{e}");
        assert!(check_path_params("/students/{id}", "/students/42").is_ok());
        let e = check_path_params("/students/{id}", "/students/%C3%28").unwrap_err();
        assert!(e.0.starts_with("`id` in the path is not valid UTF-8: `%C3%28`") && e.0.contains("/students/42"), "{e}");
    }

    #[test]
    fn toggling_a_value_goes_back_to_the_first_page() {
        let r = SearchRequest::parse(Some("course=CS101&page=3")).unwrap();
        let t = r.toggled(Facet::Course, "CS101");
        assert!(t.selected(Facet::Course).is_empty());
        assert_eq!(t.page, 1);
        assert_eq!(r.toggled(Facet::University, "MIT").href(), "/?course=CS101&university=MIT");
    }
}

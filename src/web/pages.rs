//! The HTML pages: the search page (`/`), the student page (`/students/{id}`) and the error
//! pages. Templates are askama's (`templates/`), compiled into the binary and checked at
//! compile time; every value is HTML-escaped by them. Each page is built from the same
//! [`SearchResponse`] the API returns, turned here into strings and links: the URL is the
//! state, so every facet, bar, sort and page is a plain link that works without script.

use askama::Template;
use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
};
use url::form_urlencoded;

use super::{
    api::ApiError,
    params::{AgeRange, Engine, Facet, SearchRequest, Sort, SortKey},
    response::{Relation, SearchResponse, Segment},
    student::{self, IndexCopy, StudentView},
    App, Failure,
};
use crate::admin;

/// What every page shows around its content: the search box and the footer.
pub(super) struct Chrome {
    pub(super) q: String,
    /// The state the search box carries along (filters, sort, engine, …).
    pub(super) hidden: Vec<(String, String)>,
    pub(super) footer: String,
    /// What the documents are called ("students"), the search box's label and the
    /// suggestions' label.
    pub(super) plural: String,
    pub(super) search_label: String,
    pub(super) suggest_label: String,
    /// Another model's noun and plural, for the script's messages (None: the students').
    pub(super) nouns: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    chrome: Chrome,
    v: SearchView,
}

#[derive(Template)]
#[template(path = "student.html")]
struct StudentPage {
    chrome: Chrome,
    id: i64,
    name: String,
    age: i32,
    year: String,
    university: String,
    courses: Vec<String>,
    notice: Notice,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    title: String,
    message: String,
    note: Option<String>,
}

pub(super) struct Link {
    pub(super) label: String,
    pub(super) href: String,
    pub(super) current: bool,
}

struct BucketView {
    key: String,
    count: String,
    distinct: Option<String>,
    href: String,
    selected: bool,
    empty: bool,
}

struct FacetSearchView {
    param: &'static str,
    value: String,
    hidden: Vec<(String, String)>,
}

struct FacetView {
    param: &'static str,
    title: &'static str,
    buckets: Vec<BucketView>,
    other: Option<String>,
    search: Option<FacetSearchView>,
}

struct BarView {
    from: i32,
    href: String,
    title: String,
    selected: bool,
    /// A CSS class `h0`…`h20`: the bar's height in 5 % steps (no inline styles under the CSP).
    height: String,
}

struct HitView {
    id: i64,
    href: String,
    first: Vec<Segment>,
    last: Vec<Segment>,
    meta: String,
    courses: String,
}

struct SearchView {
    title: String,
    q: String,
    summary: String,
    engine_info: String,
    sort_links: Vec<Link>,
    engine_links: Vec<Link>,
    distinct_links: Vec<Link>,
    distinct_note: Option<String>,
    active: Vec<Link>,
    clear_href: String,
    without_q: Option<String>,
    facets: Vec<FacetView>,
    bars: Vec<BarView>,
    age_min: String,
    age_max: String,
    age_clear: Option<String>,
    hits: Vec<HitView>,
    first_href: Option<String>,
    next_href: Option<String>,
}

pub(super) struct Notice {
    pub(super) state: &'static str,
    pub(super) class: &'static str,
    pub(super) headline: String,
    pub(super) text: String,
    pub(super) diffs: Vec<(String, String, String)>,
}

/// How old the counts and hits are, as the page says it: "; counts as of 0.3 s ago,
/// students as of 0.1 s ago (kept for at most 1.0 s: the index refreshes no more often)".
fn counts_age(resp: &SearchResponse) -> String {
    let c = &resp.counts;
    if c.max_age_ms <= 0.0 {
        return String::new();
    }
    format!(
        "; counts as of {:.1} s ago, students as of {:.1} s ago (kept for at most {:.1} s: the index refreshes no more often)",
        c.age_ms / 1e3,
        resp.hits_age_ms / 1e3,
        c.max_age_ms / 1e3
    )
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// The query string's pairs, for hidden form fields, without `except`.
fn pairs(req: &SearchRequest, except: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(req.to_query().as_bytes()).filter(|(k, _)| k != except).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// The footer: the sync's freshness, from the same function as `tidemark admin status`.
async fn footer(app: &App) -> String {
    match super::db(admin::freshness(&app.services.pool)).await {
        Ok(f) => {
            let mut s = format!(
                "Index freshness: lag {:.1} s, {} (as `tidemark admin status` reports).",
                f.lag_seconds,
                plural(f.outstanding_marks.max(0) as u64, "outstanding mark", "outstanding marks"),
            );
            if f.pending_fanouts > 0 {
                s.push_str(&format!(
                    " {} still being expanded.",
                    if app.students {
                        plural(f.pending_fanouts as u64, "renamed university or course", "renamed universities or courses")
                    } else {
                        plural(f.pending_fanouts as u64, "change to a related row", "changes to related rows")
                    }
                ));
            }
            s
        }
        Err(_) => "Index freshness unknown: the database is not answering.".into(),
    }
}

pub(super) async fn chrome(app: &App, q: &str, hidden: Vec<(String, String)>) -> Chrome {
    let (plural, search_label) = match &app.services.model.search {
        Some(v) if !app.students => (v.plural.clone(), format!("Search {} by {}", v.plural, v.query.join(", ").replace('_', " "))),
        _ => ("students".to_string(), "Search students by name".to_string()),
    };
    let nouns = app.services.model.search.as_ref().filter(|_| !app.students).map(|v| (v.noun.clone(), v.plural.clone()));
    Chrome { q: q.to_string(), hidden, footer: footer(app).await, suggest_label: format!("Matching {plural}"), plural, search_label, nouns }
}

pub(super) fn render(status: StatusCode, t: impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; the log says why").into_response()
        }
    }
}

pub(super) async fn error_page(app: &App, failure: &Failure, note: Option<String>) -> Response {
    let page = ErrorPage {
        chrome: chrome(app, "", Vec::new()).await,
        status: failure.status().as_u16(),
        title: failure.title().into(),
        message: failure.message_about(&app.noun()),
        note,
    };
    render(failure.status(), page)
}

pub async fn search(State(app): State<App>, req: Result<SearchRequest, ApiError>) -> Response {
    let req = match req {
        Ok(r) => r,
        Err(ApiError(f)) => return error_page(&app, &f, None).await,
    };
    let (answer, chrome) = tokio::join!(super::search(&app, &req), chrome(&app, &req.q, pairs(&req.first_page(), "q")));
    match answer {
        Ok(resp) => render(StatusCode::OK, SearchPage { chrome, v: search_view(&req, &resp) }),
        Err(f) => error_page(&app, &f, None).await,
    }
}

fn search_view(req: &SearchRequest, resp: &SearchResponse) -> SearchView {
    let distinct_label = |d: Option<u64>| d.zip(req.distinct).map(|(n, f)| format!("~{}", plural(n, f.singular(), f.plural())));
    let facets = Facet::ALL
        .into_iter()
        .map(|f| {
            let facet = resp.facets.get(f);
            FacetView {
                param: f.param(),
                title: f.title(),
                // Selected values first (a person looks for what they chose where they
                // left it), then the rest in the engine's order.
                buckets: facet
                    .buckets
                    .iter()
                    .filter(|b| b.selected)
                    .chain(facet.buckets.iter().filter(|b| !b.selected))
                    .map(|b| BucketView {
                        key: b.key.clone(),
                        count: thousands(b.doc_count),
                        distinct: distinct_label(b.distinct),
                        href: req.toggled(f, &b.key).href(),
                        selected: b.selected,
                        empty: b.doc_count == 0,
                    })
                    .collect(),
                // "+ 22,693 more enrollments in courses not listed": for courses the
                // number counts enrollments, not students.
                other: (facet.sum_other_doc_count > 0).then(|| {
                    let (one, many) = f.counted();
                    format!(
                        "+ {} more {} {} {} not listed{}",
                        thousands(facet.sum_other_doc_count),
                        if facet.sum_other_doc_count == 1 { one } else { many },
                        f.preposition(),
                        f.plural(),
                        if f.search_param().is_some() { "; find one above" } else { "" }
                    )
                }),
                search: f.search_param().map(|param| FacetSearchView {
                    param,
                    value: req.facet_search(f).unwrap_or_default().to_string(),
                    hidden: pairs(&req.first_page(), param),
                }),
            }
        })
        .collect();
    let max = resp.age.buckets.iter().map(|b| b.doc_count).max().unwrap_or(0).max(1);
    let bars = resp
        .age
        .buckets
        .iter()
        .map(|b| {
            let range = AgeRange { gte: Some(b.from), lt: Some(b.to) };
            // A selected bar's link takes its filter off again.
            let href = if b.selected && req.age == range { req.with_age(AgeRange::default()).href() } else { req.with_age(range).href() };
            let count = plural(b.doc_count, "student", "students");
            let distinct = distinct_label(b.distinct).map(|d| format!(", {d}")).unwrap_or_default();
            BarView {
                from: b.from,
                href,
                title: format!("{}: {count}{distinct}", range.label()),
                selected: b.selected,
                height: format!("h{}", if b.doc_count == 0 { 0 } else { ((b.doc_count * 20).div_ceil(max)).clamp(1, 20) }),
            }
        })
        .collect();
    let mut active = Vec::new();
    for f in Facet::ALL {
        for v in req.selected(f) {
            active.push(Link { label: format!("{}: {v}", f.title()), href: req.toggled(f, v).href(), current: true });
        }
    }
    if !req.age.is_empty() {
        active.push(Link { label: req.age.label(), href: req.with_age(AgeRange::default()).href(), current: true });
    }
    let total = match resp.total.relation {
        Relation::Eq => plural(resp.total.value, "student", "students"),
        Relation::Gte => format!("More than {} students", thousands(resp.total.value)),
    };
    let summary = if req.q.is_empty() { total } else { format!("{total} matching “{}”", req.q) };
    let sort_links = [
        ("Relevance", Sort { key: SortKey::Relevance, descending: false }),
        ("Last name", Sort { key: SortKey::LastName, descending: false }),
        ("Youngest", Sort { key: SortKey::Age, descending: false }),
        ("Oldest", Sort { key: SortKey::Age, descending: true }),
    ]
    .into_iter()
    .map(|(label, s)| Link { label: label.into(), href: req.with_sort(s).href(), current: req.sort == s })
    .collect();
    let engine_links = [("Index", Engine::Index), ("SQL", Engine::Sql)]
        .into_iter()
        .map(|(label, e)| Link { label: label.into(), href: req.with_engine(e).href(), current: req.engine == e })
        .collect();
    let distinct_links = std::iter::once(("off", None))
        .chain(Facet::ALL.into_iter().map(|f| (f.plural(), Some(f))))
        .map(|(label, d)| Link { label: label.into(), href: req.with_distinct(d).href(), current: req.distinct == d })
        .collect();
    let hits = resp
        .hits
        .iter()
        .map(|h| {
            let (first, last) = match &h.highlight {
                Some(hl) => (hl.first_name.clone(), hl.last_name.clone()),
                None => (Segment::plain(&h.first_name), Segment::plain(&h.last_name)),
            };
            HitView {
                id: h.id,
                href: format!("/students/{}", h.id),
                first,
                last,
                meta: format!("{} · {} · age {}", h.university.as_deref().unwrap_or("no university"), h.year_in_school, h.age),
                courses: if h.courses.is_empty() { "no courses".into() } else { h.courses.join(", ") },
            }
        })
        .collect();
    let deeper = req.page > 1 || req.after.is_some();
    SearchView {
        title: if req.q.is_empty() { "Students".into() } else { format!("“{}” — students", req.q) },
        q: req.q.clone(),
        summary,
        engine_info: format!(
            "answered by {} in {:.1} ms{}",
            match resp.engine {
                Engine::Index => "the search index",
                Engine::Sql => "PostgreSQL (SQL GROUP BY)",
            },
            resp.took_ms,
            counts_age(resp)
        ),
        sort_links,
        engine_links,
        distinct_links,
        distinct_note: resp.distinct.as_ref().map(|d| {
            format!(
                "Each value also shows the approximate number of distinct {} among its students (cardinality, precision threshold {}; within {:.0} %).",
                d.field.plural(),
                d.precision_threshold,
                d.max_error * 100.0
            )
        }),
        active,
        clear_href: req.cleared().href(),
        without_q: (!req.q.is_empty()).then(|| SearchRequest { q: String::new(), ..req.first_page() }.href()),
        facets,
        bars,
        age_min: resp.age.buckets.first().map(|b| b.from.to_string()).unwrap_or_default(),
        age_max: resp.age.buckets.last().map(|b| (b.to - 1).to_string()).unwrap_or_default(),
        age_clear: (!req.age.is_empty()).then(|| req.with_age(AgeRange::default()).href()),
        hits,
        first_href: deeper.then(|| req.first_page().href()),
        next_href: resp.next.as_ref().map(|n| match req.first_page().to_query() {
            q if q.is_empty() => format!("/?after={}", enc(n)),
            q => format!("/?{q}&after={}", enc(n)),
        }),
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(super) fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(json_text).collect::<Vec<_>>().join(", "),
        serde_json::Value::Object(o) if o.contains_key("name") => json_text(&o["name"]),
        other => other.to_string(),
    }
}

fn notice(view: &StudentView) -> Notice {
    notice_of(&view.index, view.pending_change_seconds, "student")
}

/// What the detail page of a `noun` says of the index's copy.
pub(super) fn notice_of(index: &IndexCopy, pending: Option<f64>, noun: &str) -> Notice {
    let pending = pending.map(|s| format!(" A change to this {noun} is waiting to be indexed (marked {s:.1} s ago).")).unwrap_or_default();
    match index {
        IndexCopy::InSync => Notice {
            state: "in_sync",
            class: "ok",
            headline: "The search index agrees with the database.".into(),
            text: pending,
            diffs: vec![],
        },
        IndexCopy::Differs { differences } => Notice {
            state: "differs",
            class: "warn",
            headline: format!("The search index still shows an older version of this {noun}."),
            text: format!("Search results show the index's copy until the next sync writes the database's.{pending}"),
            diffs: differences.iter().map(|d| (d.field.clone(), json_text(&d.database), json_text(&d.index))).collect(),
        },
        IndexCopy::Missing => Notice {
            state: "missing",
            class: "warn",
            headline: format!("This {noun} is not in the search index yet."),
            text: format!("They will appear in search results after the next sync.{pending}"),
            diffs: vec![],
        },
        IndexCopy::Unavailable { reason } => Notice {
            state: "unavailable",
            class: "bad",
            headline: format!("The search index could not be asked about this {noun}."),
            text: format!("{reason}. The details above come from the database and are current."),
            diffs: vec![],
        },
        IndexCopy::Stale | IndexCopy::Absent => {
            Notice { state: "absent", class: "warn", headline: String::new(), text: String::new(), diffs: vec![] }
        }
    }
}

pub async fn student(State(app): State<App>, Path(raw): Path<String>) -> Response {
    let id = match student::parse_id(&raw) {
        Ok(id) => id,
        Err(f) => return error_page(&app, &f, None).await,
    };
    let view = match student::view(&app.services, id).await {
        Ok(v) => v,
        Err(f) => return error_page(&app, &f, None).await,
    };
    let Some(doc) = &view.student else {
        let note = (view.index == IndexCopy::Stale).then(|| {
            format!(
                "The search index still holds a copy of student {id}: the delete reaches it at the next sync, until then searches may still list them."
            )
        });
        return error_page(&app, &Failure::NotFound(format!("There is no student with id {id} in the database.")), note).await;
    };
    let page = StudentPage {
        chrome: chrome(&app, "", Vec::new()).await,
        id,
        name: format!("{} {}", doc["first_name"].as_str().unwrap_or_default(), doc["last_name"].as_str().unwrap_or_default()),
        age: doc["age"].as_i64().unwrap_or_default() as i32,
        year: doc["year_in_school"].as_str().unwrap_or_default().to_string(),
        university: doc["university"]["name"].as_str().map_or_else(|| "none".to_string(), str::to_string),
        courses: doc["course_names"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(str::to_string)).collect(),
        notice: notice(&view),
    };
    render(StatusCode::OK, page)
}

pub async fn not_found(State(app): State<App>) -> Response {
    error_page(&app, &Failure::NotFound("There is no page at this address.".into()), None).await
}

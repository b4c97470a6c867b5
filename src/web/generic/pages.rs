//! The pages of any model: the search page (`/`) from its view, and the detail page
//! (`/{plural}/{id}`) read from the database by the model's document query. askama
//! templates (`templates/model_search.html`, `templates/document.html`), every value
//! HTML-escaped; every facet, bar, sort and page is a plain link carrying the whole state.

use askama::Template;
use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};
use url::form_urlencoded;

use super::{Range, Request};
use crate::{
    model::{KeyType, Model, SearchView},
    web::{
        pages::{chrome, error_page, json_text, notice_of, plural, render, thousands, Chrome, Link, Notice},
        params::{Engine, MAX_RESULT_WINDOW},
        response::{Relation, Segment},
        student::{compare, IndexCopy},
        App, Failure,
    },
};

#[derive(Template)]
#[template(path = "model_search.html")]
struct SearchPage {
    chrome: Chrome,
    v: PageView,
}

#[derive(Template)]
#[template(path = "document.html")]
struct DocumentPage {
    chrome: Chrome,
    noun: String,
    id: String,
    title: String,
    fields: Vec<(String, String, Vec<String>)>,
    notice: Notice,
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
    param: String,
    value: String,
    hidden: Vec<(String, String)>,
}

struct FacetView {
    param: String,
    title: String,
    buckets: Vec<BucketView>,
    other: Option<String>,
    search: FacetSearchView,
}

struct BarView {
    from: i64,
    href: String,
    title: String,
    selected: bool,
    height: String,
}

struct HistogramView {
    param: String,
    title: String,
    bars: Vec<BarView>,
    min: String,
    max: String,
    clear: Option<String>,
}

struct HitView {
    id: String,
    href: String,
    title: Vec<Segment>,
    meta: String,
}

struct PageView {
    title: String,
    plural: String,
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
    histograms: Vec<HistogramView>,
    hits: Vec<HitView>,
    first_href: Option<String>,
    /// Numbered paging (a model without a key field): the page before, this page's number,
    /// and a note when more hits lie past the last page a number reaches.
    previous_href: Option<String>,
    page_label: Option<String>,
    window_note: Option<String>,
    next_href: Option<String>,
}

fn pairs(req: &Request, except: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(req.to_query().as_bytes()).filter(|(k, _)| k != except).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// "organism_names" → "organism names".
fn field_label(path: &str) -> String {
    path.replace(['_', '.'], " ")
}

/// A request of the loaded model from a query string (a 400 page or JSON names what is wrong).
pub fn parse(model: &Model, query: Option<&str>) -> Result<Request, Failure> {
    Request::parse(model, query).map_err(Failure::from)
}

pub async fn search(State(app): State<App>, uri: axum::http::Uri) -> Response {
    let req = match parse(&app.services.model, uri.query()) {
        Ok(r) => r,
        Err(f) => return error_page(&app, &f, None).await,
    };
    let (answer, chrome) = tokio::join!(super::search(&app, &req), chrome(&app, &req.q, pairs(&req.first_page(), "q")));
    match answer {
        Ok(resp) => render(StatusCode::OK, SearchPage { chrome, v: page_view(&req, &resp) }),
        Err(f) => error_page(&app, &f, None).await,
    }
}

/// A failure answered as JSON, its message naming the model's documents.
pub struct ModelApiError(Failure, String);

impl IntoResponse for ModelApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        (status, Json(json!({"error": {"status": status.as_u16(), "message": self.0.message_about(&self.1)}}))).into_response()
    }
}

fn api_error(app: &App) -> impl Fn(Failure) -> ModelApiError + '_ {
    move |f| ModelApiError(f, app.noun())
}

pub async fn api_search(State(app): State<App>, uri: axum::http::Uri) -> Result<Response, ModelApiError> {
    let req = parse(&app.services.model, uri.query()).map_err(api_error(&app))?;
    Ok(Json(super::search(&app, &req).await.map_err(api_error(&app))?).into_response())
}

pub async fn api_suggest(State(app): State<App>, uri: axum::http::Uri) -> Result<Response, ModelApiError> {
    let view = super::Request::new(&app.services.model).view;
    let fields: Vec<String> = view.suggest.iter().flat_map(|s| s.label.fields().map(field_label)).collect();
    let what = format!("{}'s {}", article(&view.noun), if fields.is_empty() { "name".into() } else { fields.join(" or ") });
    let short = format!("{}'s {}", article(&view.noun), fields.first().map_or("name", String::as_str));
    let p = crate::web::api::SuggestParams::parse(uri.query(), [&what, &short, "ab"]).map_err(api_error(&app))?;
    Ok(Json(super::suggest(&app, &p.q, p.size).await.map_err(api_error(&app))?).into_response())
}

fn page_view(req: &Request, resp: &super::Response) -> PageView {
    let view: &SearchView = &req.view;
    let distinct_label = |d: Option<u64>| d.zip(req.distinct).map(|(n, i)| format!("~{} {}", thousands(n), view.distinct[i].label));
    let facets = view
        .facets
        .iter()
        .enumerate()
        .zip(&resp.facets.0)
        .map(|((i, f), (_, facet))| FacetView {
            param: f.param.clone(),
            title: f.label.clone(),
            buckets: facet
                .buckets
                .iter()
                .filter(|b| b.selected)
                .chain(facet.buckets.iter().filter(|b| !b.selected))
                .map(|b| BucketView {
                    key: b.key.clone(),
                    count: thousands(b.doc_count),
                    distinct: distinct_label(b.distinct),
                    href: req.toggled(i, &b.key).href(),
                    selected: b.selected,
                    empty: b.doc_count == 0,
                })
                .collect(),
            other: (facet.sum_other_doc_count > 0).then(|| {
                format!(
                    "+ {} more {} with a {} not listed; find one above",
                    thousands(facet.sum_other_doc_count),
                    f.counts,
                    f.label.to_lowercase()
                )
            }),
            search: FacetSearchView {
                param: format!("{}_q", f.param),
                value: req.facet_search(i).unwrap_or_default().to_string(),
                hidden: pairs(&req.first_page(), &format!("{}_q", f.param)),
            },
        })
        .collect();
    let histograms = view
        .histograms
        .iter()
        .enumerate()
        .zip(&resp.histograms.0)
        .map(|((i, h), (_, hist))| {
            let max = hist.buckets.iter().map(|b| b.doc_count).max().unwrap_or(0).max(1);
            let what = h.label.to_lowercase();
            HistogramView {
                param: h.param.clone(),
                title: h.label.clone(),
                bars: hist
                    .buckets
                    .iter()
                    .map(|b| {
                        let range = Range { gte: Some(b.from), lt: Some(b.to) };
                        let href = if b.selected && req.ranges[i] == range {
                            req.with_range(i, Range::default()).href()
                        } else {
                            req.with_range(i, range).href()
                        };
                        let count = plural(b.doc_count, &view.noun, &view.plural);
                        let distinct = distinct_label(b.distinct).map(|d| format!(", {d}")).unwrap_or_default();
                        BarView {
                            from: b.from,
                            href,
                            title: format!("{}: {count}{distinct}", range.label(&what)),
                            selected: b.selected,
                            height: format!("h{}", if b.doc_count == 0 { 0 } else { ((b.doc_count * 20).div_ceil(max)).clamp(1, 20) }),
                        }
                    })
                    .collect(),
                min: hist.buckets.first().map(|b| b.from.to_string()).unwrap_or_default(),
                max: hist.buckets.last().map(|b| (b.to - 1).to_string()).unwrap_or_default(),
                clear: (!req.ranges[i].is_empty()).then(|| req.with_range(i, Range::default()).href()),
            }
        })
        .collect();
    let mut active = Vec::new();
    for (i, f) in view.facets.iter().enumerate() {
        for v in &req.selected[i] {
            active.push(Link { label: format!("{}: {v}", f.label), href: req.toggled(i, v).href(), current: true });
        }
    }
    for (i, h) in view.histograms.iter().enumerate() {
        if !req.ranges[i].is_empty() {
            active.push(Link {
                label: req.ranges[i].label(&h.label.to_lowercase()),
                href: req.with_range(i, Range::default()).href(),
                current: true,
            });
        }
    }
    let total = match resp.total.relation {
        Relation::Eq => plural(resp.total.value, &view.noun, &view.plural),
        Relation::Gte => format!("More than {} {}", thousands(resp.total.value), view.plural),
    };
    let summary = if req.q.is_empty() { total } else { format!("{total} matching “{}”", req.q) };
    let mut orders = vec![("Relevance".to_string(), super::Order::default())];
    for (i, s) in view.sorts.iter().enumerate() {
        orders.push((s.label.clone(), super::Order { sort: Some(i), descending: false }));
        orders.push((format!("{} (descending)", s.label), super::Order { sort: Some(i), descending: true }));
    }
    let sort_links = orders.into_iter().map(|(label, o)| Link { label, href: req.with_order(o).href(), current: req.order == o }).collect();
    let engine_links = [("Index", Engine::Index), ("SQL", Engine::Sql)]
        .into_iter()
        .map(|(label, e)| Link { label: label.into(), href: req.with_engine(e).href(), current: req.engine == e })
        .collect();
    let distinct_links = std::iter::once(("off".to_string(), None))
        .chain(view.distinct.iter().enumerate().map(|(i, d)| (d.label.clone(), Some(i))))
        .map(|(label, d)| Link { label, href: req.with_distinct(d).href(), current: req.distinct == d })
        .collect();
    let hits = resp
        .hits
        .iter()
        .map(|h| HitView {
            id: h.id.to_string(),
            href: format!("/{}/{}", view.plural, h.id),
            title: h.highlight.clone().unwrap_or_else(|| Segment::plain(&h.title)),
            meta: h
                .fields
                .0
                .iter()
                .map(|(k, v)| format!("{}: {}", field_label(k), if v.is_null() { "none".into() } else { json_text(v) }))
                .collect::<Vec<_>>()
                .join(" · "),
        })
        .collect();
    let deeper = req.page > 1 || req.after.is_some();
    let numbered = req.key_field.is_none();
    let at_page = |page: u32| Request { page, after: None, ..req.clone() }.href();
    let next_href = match (&resp.next, resp.next_page) {
        (Some(n), _) => Some(match req.first_page().to_query() {
            q if q.is_empty() => format!("/?after={}", enc(n)),
            q => format!("/?{q}&after={}", enc(n)),
        }),
        (None, Some(page)) => Some(at_page(page)),
        (None, None) => None,
    };
    let shown_to = req.page as u64 * req.size as u64;
    let beyond = resp.total.relation == Relation::Gte || resp.total.value > shown_to;
    let plural_title = {
        let mut c = view.plural.chars();
        c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
    };
    PageView {
        title: if req.q.is_empty() { plural_title } else { format!("“{}” — {}", req.q, view.plural) },
        plural: view.plural.clone(),
        q: req.q.clone(),
        summary,
        engine_info: format!(
            "answered by {} in {:.1} ms{}",
            match resp.engine {
                Engine::Index => "the search index",
                Engine::Sql => "PostgreSQL (SQL over the model's documents)",
            },
            resp.took_ms,
            if resp.counts.max_age_ms > 0.0 {
                format!(
                    "; counts as of {:.1} s ago, {} as of {:.1} s ago (kept for at most {:.1} s: the index refreshes no more often)",
                    resp.counts.age_ms / 1e3,
                    view.plural,
                    resp.hits_age_ms / 1e3,
                    resp.counts.max_age_ms / 1e3
                )
            } else {
                String::new()
            }
        ),
        sort_links,
        engine_links,
        distinct_links,
        distinct_note: resp.distinct.as_ref().map(|d| {
            format!(
                "Each value also shows the approximate number of {} among its {} (cardinality, precision threshold {}; within {:.0} %).",
                d.label,
                view.plural,
                d.precision_threshold,
                d.max_error * 100.0
            )
        }),
        active,
        clear_href: req.cleared().href(),
        without_q: (!req.q.is_empty()).then(|| Request { q: String::new(), ..req.first_page() }.href()),
        facets,
        histograms,
        hits,
        first_href: if numbered { (req.page > 2).then(|| req.first_page().href()) } else { deeper.then(|| req.first_page().href()) },
        previous_href: (numbered && req.page > 1).then(|| at_page(req.page - 1)),
        page_label: (numbered && (req.page > 1 || next_href.is_some())).then(|| format!("Page {}", thousands(req.page.into()))),
        window_note: (numbered && next_href.is_none() && beyond && !resp.hits.is_empty()).then(|| {
            format!(
                "Page numbers reach the first {} {} only (the model repeats their key in no field, which deeper pages \
                 need): narrow the search to see the rest.",
                thousands(MAX_RESULT_WINDOW),
                view.plural
            )
        }),
        next_href,
    }
}

/// A document key from the path: a positive whole number, or a uuid, as the model's key is.
fn parse_key(model: &Model, noun: &str, plural: &str, raw: &str) -> Result<String, Failure> {
    let ok = match model.root.key_type {
        KeyType::Integer => raw.parse::<i64>().is_ok_and(|n| n > 0),
        KeyType::Uuid => uuid_like(raw),
    };
    if ok {
        Ok(raw.to_string())
    } else {
        let example = match model.root.key_type {
            KeyType::Integer => "ids are positive whole numbers, as in",
            KeyType::Uuid => "ids are uuids, as in",
        };
        let sample = if model.root.key_type == KeyType::Integer { "42" } else { "0b6f0c4e-5b1a-4c1e-9a0e-8f4c2b7d1e3a" };
        Err(Failure::BadRequest(format!(
            "{:?} is not {} id: {example} /{plural}/{sample}",
            raw.chars().take(40).collect::<String>(),
            article(noun)
        )))
    }
}

/// What an id of the model's documents looks like, for messages: "an experiment id is a
/// positive whole number, as in /experiments/42".
pub fn id_how(model: &Model) -> String {
    let view = super::Request::new(model).view;
    match model.root.key_type {
        KeyType::Integer => format!("{} id is a positive whole number, as in /{}/42", article(&view.noun), view.plural),
        KeyType::Uuid => format!("{} id is a uuid, as in /{}/0b6f0c4e-5b1a-4c1e-9a0e-8f4c2b7d1e3a", article(&view.noun), view.plural),
    }
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

fn article(noun: &str) -> String {
    if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {noun}")
    } else {
        format!("a {noun}")
    }
}

/// The document's own fields (what the index copy is compared on): every root field and
/// relation.
fn compared(model: &Model) -> Vec<String> {
    model.root.fields.iter().map(|f| f.name.clone()).chain(model.root.relations.iter().map(|r| r.name.clone())).collect()
}

async fn read(app: &App, raw: &str) -> Result<(String, Option<Value>, IndexCopy, Option<f64>), Failure> {
    let model = &app.services.model;
    let view = super::Request::new(model).view;
    let key = parse_key(model, &view.noun, &view.plural, raw)?;
    let fields = compared(model);
    let shown: Vec<&str> = fields.iter().map(String::as_str).collect();
    let (doc, index, pending) = compare(&app.services, &key, &shown).await?;
    Ok((key, doc, index, pending))
}

pub async fn document(State(app): State<App>, Path(raw): Path<String>) -> Response {
    let view = super::Request::new(&app.services.model).view;
    let (key, doc, index, pending) = match read(&app, &raw).await {
        Ok(v) => v,
        Err(f) => return error_page(&app, &f, None).await,
    };
    let Some(doc) = doc else {
        let note = (index == IndexCopy::Stale).then(|| {
            format!(
                "The search index still holds a copy of {} {key}: the delete reaches it at the next sync, until then searches may still list it.",
                view.noun
            )
        });
        let f = Failure::NotFound(format!("There is no {} with id {key} in the database.", view.noun));
        return error_page(&app, &f, note).await;
    };
    let fields = view
        .show
        .iter()
        .map(|f| {
            let v = super::query::value_at(&doc, f);
            let list = match &v {
                Value::Array(a) => a.iter().map(json_text).collect(),
                _ => Vec::new(),
            };
            let text = if v.is_null() { "none".to_string() } else { json_text(&v) };
            (field_label(f), if list.is_empty() { text } else { String::new() }, list)
        })
        .collect();
    let page = DocumentPage {
        chrome: chrome(&app, "", Vec::new()).await,
        noun: view.noun.clone(),
        title: super::title(&view, &doc, &key),
        id: key,
        fields,
        notice: notice_of(&index, pending, &view.noun),
    };
    render(StatusCode::OK, page)
}

pub async fn api_document(State(app): State<App>, Path(raw): Path<String>) -> Result<Response, ModelApiError> {
    let view = super::Request::new(&app.services.model).view;
    let (key, doc, index, pending) = read(&app, &raw).await.map_err(api_error(&app))?;
    let Some(doc) = doc else {
        let note =
            if index == IndexCopy::Stale { " (the search index still holds a copy: the delete reaches it at the next sync)" } else { "" };
        return Err(api_error(&app)(Failure::NotFound(format!("no {} with id {key} in the database{note}", view.noun))));
    };
    Ok(Json(json!({
        "id": key,
        "title": super::title(&view, &doc, &key),
        "document": doc,
        "index": index,
        "pending_change_seconds": pending,
    }))
    .into_response())
}

//! The HTML pages: the search page (`/`) from the model's view, each document's page
//! (`/{plural}/{id}`) read from the database by the model's document query, and the error
//! pages. Templates are askama's (`templates/`), compiled into the binary and checked at
//! compile time; every value is HTML-escaped by them. Each page is built from the same
//! response the API returns, turned here into strings and links: the URL is the state, so
//! every facet, bar, sort and page is a plain link that works without script.

use askama::Template;
use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
};
use serde_json::Value;
use url::form_urlencoded;

use super::{
    document::{self, IndexCopy},
    params::{Engine, MAX_RESULT_WINDOW},
    request::{title, Order, Range, Request},
    response::{Relation, Response as SearchResponse, Segment},
    App, Failure,
};
use crate::{
    admin,
    model::{plural, thousands, SearchView},
};

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
    /// What one document is called, for the script's messages.
    pub(super) noun: String,
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

pub(super) struct Notice {
    pub(super) state: &'static str,
    pub(super) class: &'static str,
    pub(super) headline: String,
    pub(super) text: String,
    pub(super) diffs: Vec<(String, String, String)>,
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
                    plural(f.pending_fanouts as u64, "change to a related row", "changes to related rows")
                ));
            }
            s
        }
        Err(_) => "Index freshness unknown: the database is not answering.".into(),
    }
}

pub(super) async fn chrome(app: &App, q: &str, hidden: Vec<(String, String)>) -> Chrome {
    let view = app.services.model.view();
    let search_label = format!("Search {} by {}", view.plural, view.query.join(", ").replace('_', " "));
    Chrome {
        q: q.to_string(),
        hidden,
        footer: footer(app).await,
        suggest_label: format!("Matching {}", view.plural),
        plural: view.plural.clone(),
        search_label,
        noun: view.noun.clone(),
    }
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

pub(super) fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) if a.is_empty() => "none".into(),
        serde_json::Value::Array(a) => a.iter().map(json_text).collect::<Vec<_>>().join(", "),
        serde_json::Value::Object(o) if o.contains_key("name") => json_text(&o["name"]),
        other => other.to_string(),
    }
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

#[derive(Template)]
#[template(path = "search.html")]
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

pub async fn search(State(app): State<App>, uri: axum::http::Uri) -> Response {
    let req = match Request::parse(&app.services.model, uri.query()) {
        Ok(r) => r,
        Err(e) => return error_page(&app, &e.into(), None).await,
    };
    let (answer, chrome) = tokio::join!(super::search(&app, &req), chrome(&app, &req.q, pairs(&req.first_page(), "q")));
    match answer {
        Ok(resp) => render(StatusCode::OK, SearchPage { chrome, v: page_view(&req, &resp) }),
        Err(f) => error_page(&app, &f, None).await,
    }
}

fn page_view(req: &Request, resp: &SearchResponse) -> PageView {
    let view: &SearchView = &req.view;
    let distinct_label =
        |d: Option<u64>| d.zip(req.distinct).map(|(n, i)| format!("~{}", plural(n, &view.distinct[i].one, &view.distinct[i].label)));
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
                // "+ 22,693 more enrollments in courses not listed": what a count counts,
                // and how the model names the values left out.
                let more = plural(facet.sum_other_doc_count, &format!("more {}", f.counts_one), &format!("more {}", f.counts));
                format!("+ {more} {} not listed; find one above", f.others)
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
    let mut orders = vec![("Relevance".to_string(), Order::default())];
    for (i, s) in view.sorts.iter().enumerate() {
        orders.push((s.label.clone(), Order { sort: Some(i), descending: false }));
        orders.push((format!("{} (descending)", s.label), Order { sort: Some(i), descending: true }));
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
                .map(|(k, v)| format!("{}: {}", view.label_of(k), if v.is_null() { "none".into() } else { json_text(v) }))
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

pub async fn document(State(app): State<App>, Path(raw): Path<String>) -> Response {
    let view = app.services.model.view();
    let (key, doc, index, pending) = match document::read(&app, &raw).await {
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
            let v = crate::model::value_at(&doc, f);
            let list = match &v {
                Value::Array(a) => a.iter().map(json_text).collect(),
                _ => Vec::new(),
            };
            let text = if v.is_null() { "none".to_string() } else { json_text(&v) };
            (view.label_of(f), if list.is_empty() { text } else { String::new() }, list)
        })
        .collect();
    let page = DocumentPage {
        chrome: chrome(&app, "", Vec::new()).await,
        noun: view.noun.clone(),
        title: title(&view, &doc, &key),
        id: key,
        fields,
        notice: notice_of(&index, pending, &view.noun),
    };
    render(StatusCode::OK, page)
}

pub async fn not_found(State(app): State<App>) -> Response {
    error_page(&app, &Failure::NotFound("There is no page at this address.".into()), None).await
}

#[cfg(test)]
mod tests {
    use super::{
        super::response::{Raw, RawBucket, RawFacet, Total},
        *,
    };
    use crate::model::Model;

    fn facet(top: &[(&str, u64, u64)], sum_other: u64) -> RawFacet {
        let top = top.iter().map(|&(k, n, d)| RawBucket { key: k.to_string(), doc_count: n, distinct: Some(d) }).collect();
        RawFacet { top, sum_other, selected: vec![] }
    }

    fn view_of(model: &Model, query: &str, raw: Raw) -> PageView {
        let req = Request::parse(model, Some(query)).unwrap();
        page_view(&req, &SearchResponse::assemble(&req, raw, Engine::Index, 1.0))
    }

    fn others(v: &PageView) -> Vec<Option<&str>> {
        v.facets.iter().map(|f| f.other.as_deref()).collect()
    }

    fn distincts(f: &FacetView) -> Vec<&str> {
        f.buckets.iter().map(|b| b.distinct.as_deref().unwrap_or("-")).collect()
    }

    /// Every count the page writes before a word of the model reads singular for 1 and
    /// plural for any other number: the facets' "more …" lines (a declared `counts` and the
    /// documents' default), the distinct counts of buckets and bars, the bars' own counts
    /// and the total.
    #[test]
    fn a_count_of_one_reads_singular_and_any_other_plural() {
        let students = Model::students();
        let raw = |total: u64, sum_other: [u64; 3], bars: Vec<RawBucket<i64>>| Raw {
            total: Total { value: total, relation: Relation::Eq },
            hits: vec![],
            facets: vec![
                facet(&[("CS101", 1, 1), ("MATH201", 3, 2)], sum_other[0]),
                facet(&[("MIT", 2, 1)], sum_other[1]),
                facet(&[("SR", 1, 0)], sum_other[2]),
            ],
            histograms: vec![bars],
        };
        let bars = vec![RawBucket { key: 18, doc_count: 1, distinct: Some(1) }, RawBucket { key: 20, doc_count: 2, distinct: Some(2) }];
        let v = view_of(&students, "distinct=university", raw(1, [1, 1, 1], bars.clone()));
        assert_eq!(
            others(&v),
            [
                Some("+ 1 more enrollment in courses not listed; find one above"),
                Some("+ 1 more student at universities not listed; find one above"),
                Some("+ 1 more student in years not listed; find one above"),
            ]
        );
        assert_eq!(distincts(&v.facets[0]), ["~1 university", "~2 universities"]);
        assert_eq!(distincts(&v.facets[2]), ["~0 universities"]);
        let titles: Vec<&str> = v.histograms[0].bars.iter().map(|b| b.title.as_str()).collect();
        assert_eq!(titles, ["age 18–19: 1 student, ~1 university", "age 20–21: 2 students, ~2 universities"]);
        assert_eq!(v.summary, "1 student");
        // Two and more: plural.
        let v = view_of(&students, "distinct=course", raw(2, [2, 1_234, 0], bars));
        assert_eq!(
            others(&v),
            [
                Some("+ 2 more enrollments in courses not listed; find one above"),
                Some("+ 1,234 more students at universities not listed; find one above"),
                None,
            ]
        );
        assert_eq!(distincts(&v.facets[0]), ["~1 course", "~2 courses"]);
        let titles: Vec<&str> = v.histograms[0].bars.iter().map(|b| b.title.as_str()).collect();
        assert_eq!(titles, ["age 18–19: 1 student, ~1 course", "age 20–21: 2 students, ~2 courses"]);
        assert_eq!(v.summary, "2 students");
        // The distinct links and note name the values in the plural, as a kind, not a count.
        assert_eq!(v.distinct_links.iter().map(|l| l.label.as_str()).collect::<Vec<_>>(), ["off", "universities", "courses", "years"]);
        assert!(v.distinct_note.as_deref().unwrap().contains("approximate number of courses among its students"), "{:?}", v.distinct_note);

        // refine.bio: the facets count experiments (the documents' noun), the distinct
        // count unique samples.
        let refinebio = Model::load("refinebio").unwrap();
        let raw = Raw {
            total: Total { value: 3, relation: Relation::Eq },
            hits: vec![],
            facets: vec![facet(&[("RNA-SEQ", 2, 1)], 1), facet(&[("Mus musculus", 2, 2)], 2), facet(&[], 0)],
            histograms: vec![],
        };
        let v = view_of(&refinebio, "distinct=samples", raw);
        assert_eq!(
            others(&v),
            [
                Some("+ 1 more experiment with a technology not listed; find one above"),
                Some("+ 2 more experiments with an organism not listed; find one above"),
                None,
            ]
        );
        assert_eq!((distincts(&v.facets[0]), distincts(&v.facets[1])), (vec!["~1 unique sample"], vec!["~2 unique samples"]));
    }
}

//! The search application serving another model than the students (issue 18, item 5):
//! refine.bio's experiments (seeds/refinebio/model.toml), against real PostgreSQL and
//! OpenSearch. The page, `/api/search`, `/api/suggest` and the experiment page are driven by
//! the model's `[search]` view; counts are checked against counts computed here,
//! independently, in SQL.

mod support;

use std::collections::BTreeMap;

use axum::Router;
use serde_json::{json, Value};
use support::{
    web::{
        answers_kept_for, api, assert_not_shown, both_engines, buckets, error_message, every_hit, four_experiments, get, ids, page,
        page_with, searchable, sorted_ids, with_slow_searches, without_database, without_search_server,
    },
    Env,
};
use tidemark::web;

/// The [`four_experiments`], synced and searchable.
async fn experiments(env: &Env) -> Router {
    four_experiments(env).await;
    searchable(env).await
}

/// (experiments, unique samples) per value of a facet, computed here in SQL: `values` is a
/// query of (experiment id, value) rows; `filter` restricts the experiments.
async fn sql_counts(env: &Env, values: &str, filter: &str) -> BTreeMap<String, (i64, i64)> {
    let q = format!(
        "WITH v AS ({values}), e AS (SELECT id FROM experiments WHERE {filter})
         SELECT v.value, count(DISTINCT v.eid)::int8, count(DISTINCT es.sample_id)::int8
           FROM v JOIN e ON e.id = v.eid LEFT JOIN experiment_samples es ON es.experiment_id = v.eid
          GROUP BY v.value"
    );
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(&q).fetch_all(&env.pool).await.unwrap();
    rows.into_iter().map(|(k, n, d)| (k, (n, d))).collect()
}

const TECHNOLOGY: &str = "SELECT id AS eid, technology AS value FROM experiments";
const ORGANISM: &str = "SELECT es.experiment_id AS eid, o.name AS value FROM experiment_samples es
                          JOIN samples s ON s.id = es.sample_id JOIN organisms o ON o.id = s.organism_id";
const PLATFORM: &str = "SELECT es.experiment_id AS eid, p.name AS value FROM experiment_samples es
                          JOIN samples s ON s.id = es.sample_id JOIN platforms p ON p.id = s.platform_id";

/// (doc_count, distinct) per bucket of a facet of an answer.
fn facet_counts(v: &Value, facet: &str) -> BTreeMap<String, (i64, i64)> {
    buckets(v, facet)
        .iter()
        .map(|b| (b["key"].as_str().unwrap().to_string(), (b["doc_count"].as_i64().unwrap(), b["distinct"].as_i64().unwrap_or(-1))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facets_show_each_values_unique_samples_as_sql_counts_them() {
    let env = Env::refinebio().await;
    let app = experiments(&env).await;
    let v = api(&app, "/api/search?distinct=samples").await;
    assert_eq!(v["total"], json!({"value": 4, "relation": "eq"}));
    let facets: Vec<&String> = v["facets"].as_object().unwrap().keys().collect();
    assert_eq!(facets.len(), 3, "{facets:?}");
    assert_eq!(v["facets"]["organism"]["label"], "Organism");
    assert_eq!(v["distinct"]["param"], "samples");
    assert_eq!(v["distinct"]["label"], "unique samples");
    for (facet, values) in [("technology", TECHNOLOGY), ("organism", ORGANISM), ("platform", PLATFORM)] {
        assert_eq!(facet_counts(&v, facet), sql_counts(&env, values, "true").await, "{facet}");
    }
    // Homo sapiens: experiments 1 and 4, whose samples are 1, 2, 3 and 1, 8: four unique.
    assert_eq!(facet_counts(&v, "organism")["Homo sapiens"], (2, 4));
    assert_eq!(facet_counts(&v, "organism")["Mus musculus"], (2, 5));

    // The page shows the same facets, each value with its unique samples.
    let html = page(&app, "/?distinct=samples").await;
    for id in ["facet-technology", "facet-organism", "facet-platform"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id}: {html}");
    }
    assert!(html.contains("<span class=\"distinct\">~4 unique samples</span>"), "{html}");
    assert!(html.contains("4 experiments"), "{html}");
    assert!(html.contains("href=\"/experiments/1\""), "{html}");
    assert!(!html.contains("students"), "nothing of the students' page: {html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picking_an_organism_filters_the_experiments_and_changes_the_other_counts() {
    let env = Env::refinebio().await;
    let app = experiments(&env).await;
    let all = api(&app, "/api/search?distinct=samples").await;
    let mouse = api(&app, "/api/search?distinct=samples&organism=Mus+musculus").await;
    assert_eq!(mouse["total"]["value"], json!(2));
    assert_eq!(sorted_ids(&mouse), [1, 2], "the experiments with a mouse sample");
    // Disjunctive: the organism facet is counted without its own selection.
    assert_eq!(facet_counts(&mouse, "organism"), facet_counts(&all, "organism"));
    let selected = buckets(&mouse, "organism").iter().find(|b| b["key"] == "Mus musculus").unwrap();
    assert_eq!(selected["selected"], json!(true));
    // The other facets count only the mouse experiments.
    let mouse_filter = format!("id IN (SELECT eid FROM ({ORGANISM}) o WHERE value = 'Mus musculus')");
    for (facet, values) in [("technology", TECHNOLOGY), ("platform", PLATFORM)] {
        let want = sql_counts(&env, values, &mouse_filter).await;
        assert_eq!(facet_counts(&mouse, facet), want, "{facet}");
        assert_ne!(facet_counts(&mouse, facet), facet_counts(&all, facet), "{facet} changes");
    }
    // Two organisms: OR within the facet; with a technology: AND across.
    let two = api(&app, "/api/search?organism=Mus+musculus&organism=Danio+rerio&technology=RNA-SEQ").await;
    assert_eq!(sorted_ids(&two), [1, 3]);

    // The page: the chosen value is marked, a chip removes it, counts are the filtered ones.
    let html = page(&app, "/?distinct=samples&organism=Mus+musculus").await;
    assert!(html.contains("2 experiments"), "{html}");
    assert!(html.contains("Organism: Mus musculus"), "{html}");
    assert!(html.contains("class=\"value selected\" data-value=\"Mus musculus\""), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_come_from_the_model_and_others_get_a_400_naming_them() {
    let env = Env::refinebio().await;
    let app = experiments(&env).await;
    for (uri, says) in [
        ("/api/search?course=CS101", "unknown parameter `course`"),
        ("/api/search?age_gte=20", "unknown parameter `age_gte`"),
        ("/api/search?colour=red", "unknown parameter `colour`"),
        ("/api/search?distinct=university", "`distinct` must be samples"),
        ("/api/search?sort=last_name", "`sort` must be one of relevance, accession, -accession"),
        ("/api/search?size=101", "more than the 100 hits"),
        ("/api/search?engine=solr", "`engine` must be"),
        ("/api/search?after=[1]&sort=accession", "not a page cursor"),
        ("/api/search?q=a&q=b", "more than once"),
        ("/api/search?page=501", "first 10000 results"),
        ("/api/search?organism=%C3%28", "`organism` is not valid UTF-8"),
        ("/api/suggest", "`q` is required: the first letters of an experiment's accession code or title"),
        ("/api/suggest?q=ab&colour=red", "unknown parameter `colour`; /api/suggest takes q and size"),
    ] {
        let message = error_message(&app, uri, 400).await;
        assert!(message.contains(says), "{uri}: {message}");
    }
    let known = error_message(&app, "/api/search?course=CS101", 400).await;
    assert!(known.contains("organism") && known.contains("platform") && known.contains("technology"), "{known}");
    let html = page_with(&app, "/?year=FR", 400).await;
    assert!(html.contains("unknown parameter `year`"), "{html}");
    // Security headers on every answer of this model too.
    for uri in ["/", "/api/search", "/experiments/1", "/api/suggest?q=gs", "/nope", "/api/search?x=1"] {
        let a = get(&app, uri).await;
        assert_eq!(a.headers["content-security-policy"], web::CSP, "{uri}");
        assert_eq!(a.headers["x-content-type-options"], "nosniff", "{uri}");
        assert_eq!(a.headers["x-frame-options"], "DENY", "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_experiment_page_reads_the_database_and_says_when_the_index_lags() {
    let env = Env::refinebio().await;
    let app = experiments(&env).await;
    let html = page(&app, "/experiments/2").await;
    assert!(html.contains("<h1 id=\"document-title\">GSE2: Mouse brain arrays</h1>"), "{html}");
    assert!(html.contains("<li>Mus musculus</li>"), "{html}");
    assert!(html.contains("MICROARRAY"), "{html}");
    assert!(html.contains("data-state=\"in_sync\""), "{html}");
    let v = api(&app, "/api/experiments/2").await;
    assert_eq!(v["title"], "GSE2: Mouse brain arrays");
    assert_eq!(v["document"]["organism_names"], json!(["Mus musculus"]));
    assert_eq!(v["index"]["state"], "in_sync");

    // The database moves on; the page shows it and says the index is behind.
    env.sql("UPDATE experiments SET title = 'Mouse brain arrays, revised' WHERE id = 2").await;
    let html = page(&app, "/experiments/2").await;
    assert!(html.contains("GSE2: Mouse brain arrays, revised"), "{html}");
    assert!(html.contains("data-state=\"differs\""), "{html}");
    assert!(html.contains("an older version of this experiment"), "{html}");
    let v = api(&app, "/api/experiments/2").await;
    assert_eq!(
        v["index"]["differences"],
        json!([{"field": "title", "database": "Mouse brain arrays, revised", "index": "Mouse brain arrays"}])
    );

    let missing = get(&app, "/experiments/99").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("There is no experiment with id 99 in the database."), "{}", missing.body);
    let bad = error_message(&app, "/api/experiments/abc", 400).await;
    assert!(bad.contains("is not an experiment id"), "{bad}");
    assert_eq!(get(&app, "/students/1").await.status, 404, "no student pages for this model");
    let not_utf8 = get(&app, "/experiments/%C3%28").await;
    assert_eq!(not_utf8.status, 400);
    assert!(not_utf8.body.contains("an experiment id is a positive whole number, as in /experiments/42"), "{}", not_utf8.body);

    // Escaped everywhere.
    for uri in ["/", "/experiments/4", "/?q=human", "/?organism=%3Cscript%3Ealert(3)%3C/script%3E"] {
        let body = get(&app, uri).await.body;
        assert!(!body.contains("<script>alert"), "{uri}: {body}");
    }
    // askama escapes with numeric character references (&#60; is <).
    let html = page(&app, "/experiments/4").await;
    assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62; human"), "{html}");
    assert_eq!(html.matches("<script").count(), 1, "only the application's own script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_engine_gives_the_same_counts_as_the_index() {
    let env = Env::refinebio().await;
    let app = experiments(&env).await;
    for q in [
        "",
        "distinct=samples",
        "organism=Mus+musculus&distinct=samples",
        "organism=Homo+sapiens&organism=Danio+rerio&technology=RNA-SEQ",
        "platform=Illumina+HiSeq+2500&distinct=samples",
        "q=mouse",
        "organism_q=mus&facet_size=1",
        "technology=MICROARRAY&sort=-accession",
        "sort=accession&size=2",
        "organism=Nothing+here",
    ] {
        let (index, sql) = both_engines(&app, q).await;
        assert_eq!(index["total"], sql["total"], "{q}");
        assert_eq!(index["facets"], sql["facets"], "{q}");
        assert_eq!(index["distinct"], sql["distinct"], "{q}");
        assert_eq!(ids(&index), ids(&sql), "{q}: the same hits in the same order");
        assert_eq!(index["next"].is_null(), sql["next"].is_null(), "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_each_other_and_suggestions_open_experiments() {
    let env = Env::refinebio().await;
    let app = experiments(&env).await;
    for engine in ["index", "sql"] {
        for sort in ["accession", "-accession", "relevance"] {
            let hits = every_hit(&app, &format!("/api/search?sort={sort}&size=1&engine={engine}")).await;
            let seen: Vec<i64> = hits.iter().map(|h| h["id"].as_i64().unwrap()).collect();
            let want: Vec<i64> = if sort == "-accession" { vec![4, 3, 2, 1] } else { vec![1, 2, 3, 4] };
            assert_eq!(seen, want, "{engine} sort={sort}");
        }
    }
    let s = api(&app, "/api/suggest?q=mouse").await;
    assert_eq!(s, json!([{"id": 2, "name": "GSE2: Mouse brain arrays", "href": "/experiments/2"}]));
    let s = api(&app, "/api/suggest?q=zebra").await;
    assert_eq!(s[0]["href"], "/experiments/3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_gives_a_503_that_says_so_and_experiment_pages_read_the_database() {
    let env = Env::refinebio().await;
    let _ = experiments(&env).await;
    let (app, port) = without_search_server(&env);
    let page = get(&app, "/?organism=Mus+musculus").await;
    assert_eq!(page.status, 503);
    assert!(
        page.body.contains("The search server cannot be reached") && page.body.contains("Experiment pages still work"),
        "{}",
        page.body
    );
    let answer = get(&app, "/api/search").await;
    assert_eq!(answer.status, 503);
    assert!(answer.json()["error"]["message"].as_str().unwrap().contains("Experiment pages still work"), "{}", answer.body);
    assert_eq!(get(&app, "/api/suggest?q=mo").await.status, 503);
    let experiment = get(&app, "/experiments/1").await;
    assert_eq!(experiment.status, 200);
    assert!(experiment.body.contains("GSE1: Human liver expression") && experiment.body.contains(r#"data-state="unavailable""#));
    assert_not_shown(&[&page, &answer, &experiment], &["hunter2", &port.to_string()]);
    // engine=sql does not need the search server.
    assert_eq!(api(&app, "/api/search?engine=sql&organism=Mus+musculus").await["total"]["value"], json!(2));

    let (app, port) = without_database(&env);
    let experiment = get(&app, "/experiments/1").await;
    assert_eq!(experiment.status, 503);
    assert!(experiment.body.contains("The database is not answering"), "{}", experiment.body);
    assert_eq!(get(&app, "/api/experiments/1").await.status, 503);
    assert_eq!(get(&app, "/api/search?engine=sql").await.status, 503);
    let search = get(&app, "/?organism=Mus+musculus").await;
    assert_eq!(search.status, 200, "searching the index still works");
    assert_not_shown(&[&experiment, &search], &["s3cret", &port.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_experiments_count_the_same_unique_samples_in_the_index_and_in_sql() {
    // The seeder's refine.bio (as `tidemark seed --model refinebio` makes it): shared
    // samples, ten organisms, ten platforms.
    let env = Env::refinebio().await;
    tidemark_seeds::refinebio::seed(&env.pool, &tidemark_seeds::refinebio::Options { experiments: 300, seed: 5 }).await.unwrap();
    let app = searchable(&env).await;
    for q in [
        "distinct=samples&facet_size=20",
        "distinct=samples&facet_size=20&organism=MUS_MUSCULUS",
        "distinct=samples&technology=RNA-SEQ&facet_size=20",
    ] {
        let (index, sql) = both_engines(&app, q).await;
        assert_eq!(index["total"], sql["total"], "{q}");
        let filter = if q.contains("MUS_MUSCULUS") {
            format!("id IN (SELECT eid FROM ({ORGANISM}) o WHERE value = 'MUS_MUSCULUS')")
        } else if q.contains("RNA-SEQ") {
            "technology = 'RNA-SEQ'".to_string()
        } else {
            "true".to_string()
        };
        for (facet, values) in [("technology", TECHNOLOGY), ("organism", ORGANISM), ("platform", PLATFORM)] {
            // Each facet is counted under every selection but its own.
            let own = match facet {
                "organism" if q.contains("MUS_MUSCULUS") => "true",
                "technology" if q.contains("RNA-SEQ") => "true",
                _ => filter.as_str(),
            };
            let want = sql_counts(&env, values, own).await;
            let (from_index, from_sql) = (facet_counts(&index, facet), facet_counts(&sql, facet));
            assert_eq!(from_sql, want, "{q}: {facet} by engine=sql, exact");
            assert_eq!(from_index.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{q}: {facet}");
            for (k, (n, d)) in &from_index {
                let (wn, wd) = want[k];
                assert_eq!(*n, wn, "{q}: {facet} {k}: experiments");
                assert!((d - wd).abs() as f64 <= 0.05 * wd as f64, "{q}: {facet} {k}: ~{d} unique samples, {wd} in fact");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_searches_of_a_model_make_one_engine_request_and_answers_are_reused() {
    // Answers may be kept 5 s (the index refreshes every 5 s): a slow machine still reuses.
    let env = Env::with_model("refinebio", tidemark_seeds::refinebio::SCHEMA, |c| answers_kept_for(c, "5s")).await;
    let _ = experiments(&env).await;
    let (proxy, app) = with_slow_searches(&env).await;
    let searches = || proxy.stats().slowed;
    let before = searches();
    let alone = api(&app, "/api/search?organism=Danio+rerio&distinct=samples").await;
    let one = searches() - before;
    assert!(one >= 1);
    assert_eq!(alone["counts"]["reused"], json!(false));
    let before = searches();
    let answers = futures::future::join_all((0..20).map(|_| api(&app, "/api/search?organism=Mus+musculus&distinct=samples"))).await;
    assert_eq!(searches() - before, one, "20 identical searches at once cost the engine what one costs");
    assert!(answers.iter().all(|a| ids(a) == ids(&answers[0]) && a["facets"] == answers[0]["facets"]));
    // Asked again within the bound: reused, as old as it says.
    let again = api(&app, "/api/search?organism=Mus+musculus&distinct=samples").await;
    assert_eq!(again["counts"]["reused"], json!(true), "{}", again["counts"]);
    assert!(again["counts"]["age_ms"].as_f64().unwrap() <= again["counts"]["max_age_ms"].as_f64().unwrap());
    let before = searches();
    let suggestions = futures::future::join_all((0..20).map(|_| api(&app, "/api/suggest?q=zeb"))).await;
    assert_eq!(searches() - before, 1, "20 identical suggestions at once make one engine request");
    assert!(suggestions.iter().all(|s| s == &suggestions[0]));
}

//! The search application (`tidemark serve`, issue 12) against real PostgreSQL and
//! OpenSearch: the router is called as the server calls it (`tower::ServiceExt::oneshot`),
//! and one test runs the binary on a real port. Counts are checked against counts computed
//! here, independently, in SQL.

mod support;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::Router;
use serde_json::{json, Value};
use support::{
    free_port, small_directory,
    web::{
        answers_kept_for, api, assert_not_shown, bars, both_engines, buckets, encode, error_message, every_hit, get, ids, page, page_with,
        searchable, sorted_ids, with_slow_searches, without_database, without_search_server,
    },
    Env,
};
use tidemark::{services::Services, web};

/// The six students of the small directory (MIT = 1, KPI = 2; CS101 = 1, MATH201 = 2),
/// synced and searchable. Student 6 is named like an attack.
async fn directory(env: &Env) -> Router {
    small_directory(env).await;
    env.sql(
        "INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES
           (1, 'Ann', 'Lee', 20, 'FR', 1), (2, 'Ann', 'Park', 22, 'SO', 2), (3, 'Bob', 'Lee', 19, 'JR', 1),
           (4, 'Cy', 'Oz', 30, 'SR', NULL), (5, 'Anna', 'Smith', 21, 'FR', 2),
           (6, '<script>alert(1)</script>', 'Evil', 20, 'FR', 1);
         SELECT setval(pg_get_serial_sequence('students', 'id'), 6);
         INSERT INTO student_courses VALUES (1, 1), (1, 2), (2, 1), (3, 2), (5, 2), (6, 1);",
    )
    .await;
    searchable(env).await
}

/// `n` seeded students (the demo's generator), synced and searchable.
async fn seeded(env: &Env, n: u64) -> Router {
    seeded_with(env, n, 7).await
}

/// `n` students from the generator with this seed (`tidemark seed --seed`), synced and
/// searchable.
async fn seeded_with(env: &Env, n: u64, seed: u64) -> Router {
    tidemark_seeds::seed(&env.pool, &tidemark_seeds::SeedOptions { students: n, seed }).await.unwrap();
    searchable(env).await
}

/// A facet's buckets as value → count.
fn counts(v: &Value, facet: &str) -> BTreeMap<String, i64> {
    buckets(v, facet).iter().map(|b| (b["key"].as_str().unwrap().to_string(), b["doc_count"].as_i64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_names_despite_typos_filters_sorts_and_highlights() {
    let env = Env::new().await;
    let app = directory(&env).await;

    let all = api(&app, "/api/search").await;
    assert_eq!(all["total"], json!({"value": 6, "relation": "eq"}));
    assert_eq!(all["engine"], "index");

    // A typo still finds both Lees, and the matched name part is marked.
    let lee = api(&app, "/api/search?q=Lea").await;
    assert_eq!(sorted_ids(&lee), vec![1, 3], "{lee}");
    // The title ("{first_name} {last_name}") in pieces: the last name marked, the rest not.
    let pieces = lee["hits"][0]["highlight"].as_array().unwrap();
    let text: String = pieces.iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert_eq!(text, lee["hits"][0]["title"].as_str().unwrap(), "{lee}");
    let marked: Vec<&Value> = pieces.iter().filter(|p| p["match"] == true).map(|p| &p["text"]).collect();
    assert_eq!(marked, [&json!("Lee")], "{lee}");
    assert!(text.starts_with(&format!("{} ", pieces[0]["text"].as_str().unwrap().trim())) && pieces[0]["match"] == false, "{lee}");
    // Every word must match a first or last name.
    assert_eq!(ids(&api(&app, "/api/search?q=ann+lee").await), vec![1]);

    // OR within a facet, AND across facets.
    assert_eq!(sorted_ids(&api(&app, "/api/search?course=CS101&course=MATH201").await), vec![1, 2, 3, 5, 6]);
    assert_eq!(sorted_ids(&api(&app, "/api/search?course=CS101&university=MIT").await), vec![1, 6]);
    assert_eq!(sorted_ids(&api(&app, "/api/search?year=FR&age_gte=20&age_lt=21").await), vec![1, 6]);

    // Sorts, with the id breaking ties.
    assert_eq!(ids(&api(&app, "/api/search?sort=age").await), vec![3, 1, 6, 5, 2, 4]);
    assert_eq!(ids(&api(&app, "/api/search?sort=-age").await), vec![4, 2, 5, 1, 6, 3]);
    assert_eq!(ids(&api(&app, "/api/search?sort=last_name").await), vec![6, 1, 3, 4, 2, 5]);
    let hit = &api(&app, "/api/search?q=smith").await["hits"][0];
    assert_eq!(
        (hit["title"].clone(), hit["fields"]["university.name"].clone(), hit["fields"]["course_names"].clone()),
        (json!("Anna Smith"), json!("KPI"), json!(["MATH201"]))
    );
    assert_eq!((hit["fields"]["year_in_school"].clone(), hit["fields"]["age"].clone()), (json!("FR"), json!(21)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facets_are_disjunctive_and_agree_with_counts_from_the_database() {
    let env = Env::new().await;
    let app = seeded(&env, 1500).await;
    let (course, university, year) = ("CS101", "MIT", "FR");
    // Independent counts: each facet under every selection but its own.
    let by_sql = |sql: &'static str| {
        let pool = env.pool.clone();
        async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(sql).bind(course).bind(university).bind(year).fetch_all(&pool).await.unwrap();
            rows.into_iter().collect::<BTreeMap<_, _>>()
        }
    };
    let want_course = by_sql(
        "SELECT c.name, count(*) FROM student_courses sc JOIN courses c ON c.id = sc.course_id JOIN students s ON s.id = sc.student_id
           JOIN universities u ON u.id = s.university_id
          WHERE u.name = $2 AND s.year_in_school = $3 AND $1 = $1 GROUP BY c.name",
    )
    .await;
    let want_university = by_sql(
        "SELECT u.name, count(*) FROM students s JOIN universities u ON u.id = s.university_id
          WHERE s.year_in_school = $3 AND $2 = $2
            AND EXISTS (SELECT 1 FROM student_courses x JOIN courses c ON c.id = x.course_id WHERE x.student_id = s.id AND c.name = $1)
          GROUP BY u.name",
    )
    .await;
    let want_year = by_sql(
        "SELECT s.year_in_school::text, count(*) FROM students s JOIN universities u ON u.id = s.university_id
          WHERE u.name = $2 AND $3 = $3
            AND EXISTS (SELECT 1 FROM student_courses x JOIN courses c ON c.id = x.course_id WHERE x.student_id = s.id AND c.name = $1)
          GROUP BY 1",
    )
    .await;
    let want_hits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM students s JOIN universities u ON u.id = s.university_id
          WHERE u.name = $2 AND s.year_in_school = $3
            AND EXISTS (SELECT 1 FROM student_courses x JOIN courses c ON c.id = x.course_id WHERE x.student_id = s.id AND c.name = $1)",
    )
    .bind(course)
    .bind(university)
    .bind(year)
    .fetch_one(&env.pool)
    .await
    .unwrap();

    let v = api(&app, &format!("/api/search?course={course}&university={university}&year={year}&facet_size=100")).await;
    assert_eq!(v["total"]["value"].as_i64().unwrap(), want_hits, "hits respect every selection");
    assert_eq!(counts(&v, "course"), want_course, "course counts ignore the course selection");
    assert_eq!(counts(&v, "university"), want_university, "university counts ignore the university selection");
    assert_eq!(counts(&v, "year"), want_year, "year counts ignore the year selection");
    // Selecting MIT still shows the other universities, with their counts.
    let others: Vec<&String> = want_university.keys().filter(|k| *k != university).collect();
    assert!(others.len() > 3, "{want_university:?}");
    for other in others {
        assert!(buckets(&v, "university").iter().any(|b| &b["key"] == other && b["selected"] == false), "{other}");
    }
    let mit = buckets(&v, "university").iter().find(|b| b["key"] == "MIT").unwrap().clone();
    assert_eq!(mit["selected"], json!(true));

    // Top 5 courses: the rest is reported as sum_other_doc_count.
    let top5 = api(&app, &format!("/api/search?university={university}&year={year}&facet_size=5")).await;
    let mut sorted: Vec<i64> = want_course.values().copied().collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(buckets(&top5, "course").len(), 5);
    assert_eq!(top5["facets"]["course"]["sum_other_doc_count"].as_i64().unwrap(), sorted[5..].iter().sum::<i64>());

    // A facet-value search narrows a long facet to the values containing the text.
    let math = api(&app, &format!("/api/search?university={university}&year={year}&course_q=mAtH&facet_size=100")).await;
    let narrowed = counts(&math, "course");
    let want: BTreeMap<String, i64> = want_course.iter().filter(|(k, _)| k.contains("MATH")).map(|(k, v)| (k.clone(), *v)).collect();
    assert!(!want.is_empty());
    assert_eq!(narrowed, want);
    assert_eq!(math["facets"]["course"]["search"], "mAtH");
    // Regular-expression characters in the text are only text.
    assert_eq!(counts(&api(&app, "/api/search?course_q=.%2A").await, "course"), BTreeMap::new());
}

/// (value, count) rows of `sql`, in the facets' order (count descending, then value).
async fn per_value(env: &Env, sql: &str) -> Vec<(String, i64)> {
    sqlx::query_as(sql).fetch_all(&env.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Enrollments per course, in the facets' order.
const COURSE_COUNTS: &str = "SELECT c.name, count(*) FROM student_courses sc JOIN courses c ON c.id = sc.course_id
                              GROUP BY c.name ORDER BY count(*) DESC, c.name COLLATE \"C\"";

/// A facet's listed values and what it leaves out, from per-value counts (count
/// descending, then value): the top `size` of the values containing `search` (ignoring
/// case), plus the selected values not among them; the rest is the "other" count.
fn listed_and_left_out(all: &[(String, i64)], search: Option<&str>, size: usize, selected: &[&str]) -> (Vec<String>, i64) {
    let candidates: Vec<&(String, i64)> =
        all.iter().filter(|(k, _)| search.is_none_or(|s| k.to_lowercase().contains(&s.to_lowercase()))).collect();
    let mut listed: Vec<String> = candidates.iter().take(size).map(|(k, _)| k.clone()).collect();
    for v in selected {
        if !listed.iter().any(|k| k == v) {
            listed.push(v.to_string());
        }
    }
    let other = candidates.iter().filter(|(k, _)| !listed.contains(k)).map(|(_, n)| n).sum();
    (listed, other)
}

/// Issue 20, defect 4: a selected value pinned after the top values was listed *and*
/// counted in `sum_other_doc_count` (course=CS101 on 5,000 students, seed 31: 23,107
/// where the database gives 22,693), on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_left_out_never_counts_a_value_that_is_listed() {
    let env = Env::new().await;
    let app = seeded_with(&env, 5000, 31).await;
    // The database's own counts per value, in the facets' order (no other selection, so
    // each facet counts everyone: a facet ignores its own selection).
    let courses = per_value(&env, COURSE_COUNTS).await;
    let universities = per_value(
        &env,
        "SELECT u.name, count(*) FROM students s JOIN universities u ON u.id = s.university_id
          GROUP BY u.name ORDER BY count(*) DESC, u.name COLLATE \"C\"",
    )
    .await;
    let enrollments: i64 = courses.iter().map(|(_, n)| n).sum();
    let rank = |all: &[(String, i64)], v: &str| all.iter().position(|(k, _)| k == v).unwrap();
    assert!(rank(&courses, "CS101") >= 10, "CS101 must fall outside the top 10 for this test: {courses:?}");
    // A MATH course outside the top 2 MATH courses, and a university outside the top 10.
    let maths: Vec<&String> = courses.iter().map(|(k, _)| k).filter(|k| k.contains("MATH")).collect();
    let math = maths[maths.len() - 1].clone();
    let university = universities[15].0.clone();

    for (query, facet, all, search, size, selected) in [
        ("course=CS101&size=1".to_string(), "course", &courses, None, 10, vec!["CS101"]),
        (format!("university={}&size=1", encode(&university)), "university", &universities, None, 10, vec![university.as_str()]),
        // Outside the facet-value search, a pinned value was never in the other count.
        ("course=CS101&course_q=math&facet_size=2&size=1".to_string(), "course", &courses, Some("math"), 2, vec!["CS101"]),
        (format!("course={math}&course_q=math&facet_size=2&size=1"), "course", &courses, Some("math"), 2, vec![math.as_str()]),
    ] {
        let (want_listed, want_other) = listed_and_left_out(all, search, size, &selected);
        let mut answers = Vec::new();
        for engine in ["index", "sql"] {
            let v = api(&app, &format!("/api/search?{query}&engine={engine}")).await;
            let f = &v["facets"][facet];
            let listed: Vec<String> = f["buckets"].as_array().unwrap().iter().map(|b| b["key"].as_str().unwrap().to_string()).collect();
            assert_eq!(listed, want_listed, "{query} engine={engine}: the values listed");
            assert_eq!(f["sum_other_doc_count"].as_i64().unwrap(), want_other, "{query} engine={engine}: {facet} left out");
            answers.push(f.clone());
        }
        assert_eq!(answers[0], answers[1], "{query}: both engines give the same facet");
    }
    // Nothing counted twice, nothing lost: listed + left out = every enrollment.
    let v = api(&app, "/api/search?course=CS101&size=1").await;
    let listed: i64 = buckets(&v, "course").iter().map(|b| b["doc_count"].as_i64().unwrap()).sum();
    assert_eq!(listed + v["facets"]["course"]["sum_other_doc_count"].as_i64().unwrap(), enrollments);
}

/// The `<section>` of one facet on the search page.
fn facet_section<'a>(page: &'a str, param: &str) -> &'a str {
    let start = page.find(&format!(r#"id="facet-{param}""#)).unwrap_or_else(|| panic!("no {param} facet on the page:\n{page}"));
    let rest = &page[start..];
    &rest[..rest.find("</section>").unwrap()]
}

/// 22693 → "22,693", as the page writes numbers.
fn with_commas(n: i64) -> String {
    let s = n.to_string();
    s.chars().enumerate().fold(String::new(), |mut out, (i, c)| {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
        out
    })
}

/// Issue 20, defect 5: the page said "+ 22,981 students in values not listed" with 5,000
/// students in the database: for courses (many per student) the number counts
/// enrollments, not students. Each facet says what its number counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_what_the_count_of_values_not_listed_counts() {
    let env = Env::new().await;
    let app = seeded_with(&env, 5000, 31).await;
    let students: i64 = env.scalar_i64("SELECT count(*) FROM students").await;
    let courses = per_value(&env, COURSE_COUNTS).await;
    // Universities of the students taking CS101 (the university facet counts under the
    // course selection).
    let universities = per_value(
        &env,
        "SELECT u.name, count(*) FROM students s JOIN universities u ON u.id = s.university_id
          WHERE EXISTS (SELECT 1 FROM student_courses x JOIN courses c ON c.id = x.course_id WHERE x.student_id = s.id AND c.name = 'CS101')
          GROUP BY u.name ORDER BY count(*) DESC, u.name COLLATE \"C\"",
    )
    .await;
    let (_, enrollments_left_out) = listed_and_left_out(&courses, None, 10, &["CS101"]);
    let (_, students_left_out) = listed_and_left_out(&universities, None, 10, &[]);
    assert!(enrollments_left_out > students, "{enrollments_left_out} enrollments left out, {students} students");
    assert!(students_left_out > 0);

    for engine in ["index", "sql"] {
        let html = page(&app, &format!("/?course=CS101&size=1&engine={engine}")).await;
        assert!(!html.contains("students in values not listed"), "engine={engine}:\n{html}");
        let course = facet_section(&html, "course");
        let want = format!(
            r#"<p class="other">+ {} more enrollments in courses not listed; find one above</p>"#,
            with_commas(enrollments_left_out)
        );
        assert!(course.contains(&want), "engine={engine}: want {want}\n{course}");
        let university = facet_section(&html, "university");
        let want = format!(
            r#"<p class="other">+ {} more students at universities not listed; find one above</p>"#,
            with_commas(students_left_out)
        );
        assert!(university.contains(&want), "engine={engine}: want {want}\n{university}");
        // Four years, all listed: nothing is left out, and nothing says so.
        assert!(!facet_section(&html, "year").contains(r#"class="other""#), "engine={engine}");
    }
    // A year left out counts students (each has one year).
    let page = get(&app, "/?facet_size=3&size=1").await;
    let years: Vec<i64> =
        sqlx::query_scalar("SELECT count(*) FROM students GROUP BY year_in_school ORDER BY count(*) DESC, year_in_school::text")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let year = facet_section(&page.body, "year");
    let want = format!(r#"<p class="other">+ {} more students in years not listed; find one above</p>"#, with_commas(years[3]));
    assert!(year.contains(&want), "{year}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_values_stay_visible_at_zero_and_the_histogram_has_every_bucket() {
    let env = Env::new().await;
    let app = directory(&env).await;
    // Under year=SR (only Cy Oz, who has no university) KPI has no student, yet it stays
    // listed and selected, so it can be deselected.
    let v = api(&app, "/api/search?year=SR&university=KPI").await;
    assert_eq!(v["total"]["value"], json!(0));
    assert_eq!(v["facets"]["university"]["buckets"], json!([{"key": "KPI", "doc_count": 0, "selected": true}]));
    // Year counts ignore the year selection: KPI has one FR and one SO student (and the
    // selected SR stays listed, at 0).
    assert_eq!(counts(&v, "year"), BTreeMap::from([("FR".to_string(), 1), ("SO".to_string(), 1), ("SR".to_string(), 0)]));

    // Ages 19, 20, 20, 21, 22, 30: buckets of 2 from 18 to 30, empty ones included.
    let h = api(&app, "/api/search").await;
    let ages: Vec<(i64, i64, i64)> = bars(&h, "age")
        .iter()
        .map(|b| (b["from"].as_i64().unwrap(), b["to"].as_i64().unwrap(), b["doc_count"].as_i64().unwrap()))
        .collect();
    assert_eq!(ages, vec![(18, 20, 1), (20, 22, 3), (22, 24, 1), (24, 26, 0), (26, 28, 0), (28, 30, 0), (30, 32, 1)]);
    assert_eq!(h["histograms"]["age"]["interval"], json!(2));
    // A bar is a range filter: hits narrow, the histogram still shows every age (it
    // ignores its own selection) and marks the chosen bar.
    let bar = api(&app, "/api/search?age_gte=20&age_lt=22").await;
    assert_eq!(bar["total"]["value"], json!(3));
    assert_eq!(bars(&bar, "age").len(), 7);
    let selected: Vec<i64> = bars(&bar, "age").iter().filter(|b| b["selected"] == true).map(|b| b["from"].as_i64().unwrap()).collect();
    assert_eq!(selected, vec![20]);
    // Other facets respect the age selection.
    assert_eq!(counts(&bar, "university"), BTreeMap::from([("KPI".to_string(), 1), ("MIT".to_string(), 2)]));
}

/// Follows `next` from the first page to the last; returns every hit's id and sort key.
async fn walk(app: &Router, base: &str, key: &str) -> Vec<(Value, i64)> {
    every_hit(app, base).await.iter().map(|h| (h[key].clone(), h["id"].as_i64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_each_other_without_repeating_or_skipping_anyone() {
    let env = Env::new().await;
    let app = seeded(&env, 1200).await;
    let mut expected: Vec<i64> = sqlx::query_scalar("SELECT id FROM students").fetch_all(&env.pool).await.unwrap();
    expected.sort();
    for (sort, key) in [("last_name", "last_name"), ("-age", "age"), ("relevance", "score")] {
        let index = walk(&app, &format!("/api/search?sort={sort}&size=97"), key).await;
        let mut seen: Vec<i64> = index.iter().map(|(_, id)| *id).collect();
        seen.sort();
        assert_eq!(seen, expected, "sort={sort}: every student exactly once");
        if sort != "relevance" {
            // The SQL engine walks the same order, page by page.
            let sql = walk(&app, &format!("/api/search?sort={sort}&size=97&engine=sql"), key).await;
            assert_eq!(
                sql.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
                index.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
                "sort={sort}"
            );
        }
    }
    // Page numbers reach the first 10,000 results; past them, a 400 says what to use.
    assert_eq!(get(&app, "/api/search?size=100&page=100").await.status, 200);
    let deep = error_message(&app, "/api/search?size=100&page=101", 400).await;
    assert!(deep.contains("follow the `next` cursor"), "{deep}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_engine_gives_the_same_counts_as_the_index() {
    let env = Env::new().await;
    let app = seeded(&env, 2000).await;
    for q in [
        "facet_size=100",
        "course=CS101&facet_size=100&distinct=university",
        "university=MIT&university=KPI&year=SO&distinct=course&facet_size=100",
        "course=MATH101&course=PHYS101&age_gte=18&age_lt=24&distinct=year",
        "year=SR&sort=age&course_q=phy",
        "university_q=university&facet_size=3&sort=-last_name",
    ] {
        let (index, sql) = both_engines(&app, q).await;
        assert_eq!(index["total"], sql["total"], "{q}");
        for facet in ["course", "university", "year"] {
            let strip =
                |v: &Value| -> Vec<Value> { buckets(v, facet).iter().map(|b| json!([b["key"], b["doc_count"], b["selected"]])).collect() };
            assert_eq!(strip(&index), strip(&sql), "{q}: {facet}");
            assert_eq!(index["facets"][facet]["sum_other_doc_count"], sql["facets"][facet]["sum_other_doc_count"], "{q}: {facet}");
        }
        let hist = |v: &Value| -> Vec<Value> { bars(v, "age").iter().map(|b| json!([b["from"], b["doc_count"], b["selected"]])).collect() };
        assert_eq!(hist(&index), hist(&sql), "{q}: age");
        if q.contains("sort=") {
            assert_eq!(ids(&index), ids(&sql), "{q}: hits");
        }
        // Distinct counts: the index's are approximate, within the error the response states.
        if q.contains("distinct=") {
            let err = index["distinct"]["max_error"].as_f64().unwrap();
            assert_eq!(index["distinct"]["approximate"], json!(true));
            let mut compared = 0;
            for facet in ["course", "university", "year"] {
                for (a, b) in buckets(&index, facet).iter().zip(buckets(&sql, facet)) {
                    let (a, b) = (a["distinct"].as_f64().unwrap(), b["distinct"].as_f64().unwrap());
                    assert!((a - b).abs() <= (err * b).max(1.0), "{q}: {facet} distinct {a} vs exact {b}");
                    compared += 1;
                }
            }
            for (a, b) in bars(&index, "age").iter().zip(bars(&sql, "age")) {
                let (a, b) = (a["distinct"].as_f64().unwrap(), b["distinct"].as_f64().unwrap());
                assert!((a - b).abs() <= (err * b).max(1.0), "{q}: age distinct {a} vs exact {b}");
            }
            assert!(compared > 10);
        }
    }
    // The page says which engine answered and how long it took.
    let page = get(&app, "/?engine=sql").await;
    assert!(page.body.contains("answered by PostgreSQL (SQL over the model&#39;s documents) in"), "{}", page.body);
    assert!(get(&app, "/").await.body.contains("answered by the search index in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggestions_are_one_per_student_even_for_the_same_name() {
    let env = Env::new().await;
    let app = directory(&env).await;
    let v = api(&app, "/api/suggest?q=an").await;
    let got: Vec<(i64, String, Option<String>)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_i64().unwrap(), s["name"].as_str().unwrap().to_string(), s["detail"].as_str().map(str::to_string)))
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            (1, "Ann Lee".into(), Some("MIT".into())),
            (2, "Ann Park".into(), Some("KPI".into())),
            (5, "Anna Smith".into(), Some("KPI".into()))
        ],
        "two students named Ann are two entries, each with the university that tells them apart"
    );
    assert!(v.as_array().unwrap().iter().all(|s| s["href"] == format!("/students/{}", s["id"])), "{v}");
    // Last names and full names complete too.
    assert_eq!(api(&app, "/api/suggest?q=ann+l").await.as_array().unwrap().len(), 1);
    assert_eq!(api(&app, "/api/suggest?q=lee").await.as_array().unwrap().len(), 2);
    assert_eq!(api(&app, "/api/suggest?q=an&size=1").await.as_array().unwrap().len(), 1);
    assert_eq!(api(&app, "/api/suggest?q=zzz").await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_400_that_says_what_was_wrong() {
    let env = Env::new().await;
    let app = directory(&env).await;
    let long = "a".repeat(201);
    for (uri, says) in [
        ("/api/search?colour=red", "unknown parameter `colour`"),
        ("/api/search?year=XX", "`year` must be FR, SO, JR or SR"),
        ("/api/search?size=1000", "more than the 100 hits a page may hold"),
        ("/api/search?age_gte=old", "`age_gte` must be a whole number"),
        ("/api/search?age_gte=30&age_lt=20", "must be less than"),
        ("/api/search?sort=shoe_size", "`sort` must be one of"),
        ("/api/search?after=garbage", "not a page cursor"),
        ("/api/search?page=2&after=[1.0,5]", "either `page` or `after`"),
        ("/api/search?distinct=age", "`distinct` must be"),
        ("/api/search?engine=solr", "`engine` must be index or sql"),
        (&format!("/api/search?q={long}"), "longer than 200 characters"),
        ("/api/search?q=a+b+c+d+e+f+g+h+i", "more than 8 words"),
        ("/api/suggest", "`q` is required"),
        ("/api/suggest?q=an&size=500", "`size` must be"),
        ("/api/suggest?q=an&x=1", "unknown parameter `x`"),
        ("/api/students/abc", "not a student id"),
        ("/api/students/0", "not a student id"),
    ] {
        let message = error_message(&app, uri, 400).await;
        assert!(message.contains(says), "{uri}: {message}");
    }
    // The page says it too, as a page.
    assert!(page_with(&app, "/?size=1000", 400).await.contains("more than the 100 hits a page may hold"));
    assert_eq!(get(&app, "/students/abc").await.status, 400);
}

/// Issue 20, defect 6: `/?q=%C3%28` answered 200 and searched for "\u{FFFD}(". A parameter
/// (name or value) whose percent-decoded bytes are not UTF-8 is a 400 on every route,
/// naming it and saying what to do: JSON for /api/*, an HTML page for pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_that_are_not_utf8_get_a_400_that_says_so() {
    let env = Env::new().await;
    let app = directory(&env).await;
    let value = "is not valid UTF-8";
    let name = "a parameter name";
    let how = "percent-encode text as the bytes of its UTF-8 encoding";
    for (uri, says) in [
        ("/api/search?q=%C3%28", ["`q`", value, "%C3%28", how]),
        ("/api/search?course=CS101&university=%FF", ["`university`", value, "%FF", how]),
        ("/api/search?%C3%28=1", [name, value, "%C3%28", how]),
        ("/api/suggest?q=an%E9", ["`q`", value, "an%E9", how]),
        ("/api/suggest?%FF=an", [name, value, "%FF", how]),
        ("/api/students/1?x=%C3%28", ["`x`", value, "%C3%28", how]),
        ("/api/students/%C3%28", ["`id`", value, "%C3%28", "as in /students/42"]),
    ] {
        let message = error_message(&app, uri, 400).await;
        for s in says {
            assert!(message.contains(s), "{uri}: {message:?} should say {s:?}");
        }
    }
    for (uri, says) in [
        ("/?q=%C3%28", ["`q`", value, "%C3%28", how]),
        ("/?course=CS101&%C3%28=1", [name, value, "%C3%28", how]),
        ("/?q=ann&sort=%C3", ["`sort`", value, "%C3", how]),
        ("/students/1?q=%C3%28", ["`q`", value, "%C3%28", how]),
        ("/assets/app.css?v=%FF", ["`v`", value, "%FF", how]),
        ("/no/such/page?x=%FF", ["`x`", value, "%FF", how]),
        ("/students/%C3%28", ["`id`", value, "%C3%28", "as in /students/42"]),
    ] {
        let body = page_with(&app, uri, 400).await;
        assert!(body.contains("<p class=\"code\">HTTP 400</p>"), "{uri}: an error page:\n{body}");
        for s in says {
            assert!(body.contains(s), "{uri}: the page should say {s:?}:\n{body}");
        }
        assert!(!body.contains('\u{FFFD}'), "{uri}: nothing is shown as a replacement character");
    }
    // What the page shows of the address is escaped.
    let a = get(&app, "/?q=%22%3E%3Cscript%3Ealert(1)%3C/script%3E%C3%28").await;
    assert_eq!(a.status, 400);
    assert!(!a.body.contains("<script>alert"), "{}", a.body);
    // UTF-8, `+` for a space, and a stray `%` are still fine.
    assert_eq!(ids(&api(&app, "/api/search?q=ann+lee").await), vec![1]);
    assert_eq!(get(&app, "/?q=%C3%A9l%C3%A8ve").await.status, 200);
    assert_eq!(get(&app, "/api/search?q=100%25").await.status, 200);
    assert_eq!(get(&app, "/api/search?q=100%").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_without_a_university_is_suggested_without_a_detail_and_their_page_says_none() {
    let env = Env::new().await;
    let app = directory(&env).await;
    // Cy Oz has no university: the suggestion carries no empty detail, and says where to go.
    assert_eq!(api(&app, "/api/suggest?q=cy").await, json!([{"id": 4, "name": "Cy Oz", "href": "/students/4"}]));
    let v = api(&app, "/api/students/4").await;
    assert_eq!((v["id"].clone(), v["title"].clone(), v["document"]["university"].clone()), (json!(4), json!("Cy Oz"), Value::Null));
    // The id as a person may type it: the same student.
    assert_eq!(api(&app, "/api/students/004").await, v);
    assert!(page(&app, "/students/+4").await.contains("Cy Oz"));
    // The page names each shown field by its declared label, and an absent value as none.
    let html = page(&app, "/students/4").await;
    assert!(html.contains(r#"<dt>University</dt>"#) && html.contains(r#"<dd data-field="University">none</dd>"#), "{html}");
    assert!(html.contains(r#"<dd data-field="Courses">none</dd>"#), "{html}");
    let hit = api(&app, "/api/search?q=oz").await;
    assert_eq!(
        (hit["hits"][0]["fields"]["university.name"].clone(), hit["hits"][0]["fields"]["course_names"].clone()),
        (Value::Null, json!([]))
    );
    let html = page(&app, "/?q=oz").await;
    assert!(html.contains("University: none · Courses: none"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_student_page_reads_the_database_and_says_when_the_index_lags() {
    let env = Env::new().await;
    let app = directory(&env).await;
    let page = get(&app, "/students/1").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Ann Lee") && page.body.contains("MIT") && page.body.contains("MATH201"));
    assert!(page.body.contains(r#"data-state="in_sync""#), "{}", page.body);
    let v = api(&app, "/api/students/1").await;
    let d = &v["document"];
    assert_eq!(
        (v["id"].clone(), v["title"].clone(), d["first_name"].clone(), d["course_names"].clone(), d["university"].clone()),
        (json!(1), json!("Ann Lee"), json!("Ann"), json!(["CS101", "MATH201"]), json!({"id": 1, "name": "MIT"}))
    );
    assert_eq!(v["index"]["state"], "in_sync");

    // A change not synced yet: the page shows the database's row and says the index differs.
    env.sql("UPDATE students SET last_name = 'Leigh' WHERE id = 1").await;
    let page = get(&app, "/students/1").await;
    assert!(page.body.contains("Ann Leigh"));
    assert!(page.body.contains(r#"data-state="differs""#) && page.body.contains("waiting to be indexed"), "{}", page.body);
    let v = api(&app, "/api/students/1").await;
    assert_eq!(v["index"]["differences"], json!([{"field": "last_name", "database": "Leigh", "index": "Lee"}]));
    assert!(v["pending_change_seconds"].as_f64().is_some());
    env.engine().drain().await.unwrap();
    assert_eq!(api(&app, "/api/students/1").await["index"]["state"], "in_sync");

    // A new student not indexed yet.
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (7, 'Dee', 'New', 40, 'SO')").await;
    let page = get(&app, "/students/7").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"data-state="missing""#));

    // Deleted from the database but still in the index: 404, and the page says so.
    env.sql("DELETE FROM students WHERE id = 2").await;
    let page = get(&app, "/students/2").await;
    assert_eq!(page.status, 404);
    assert!(page.body.contains("search index still holds a copy of student 2"), "{}", page.body);
    let gone = get(&app, "/api/students/2").await;
    assert_eq!(gone.status, 404);
    assert!(gone.body.contains("still holds a copy"));
    // Nobody at all.
    let page = get(&app, "/students/999").await;
    assert_eq!(page.status, 404);
    assert!(page.body.contains("There is no student with id 999") && !page.body.contains("still holds"));
    assert_eq!(get(&app, "/no/such/page").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_from_the_index_or_database_is_escaped() {
    let env = Env::new().await;
    let app = directory(&env).await;
    env.sql("UPDATE universities SET name = '<img src=x onerror=alert(2)>' WHERE id = 2").await;
    env.drain_and_refresh().await;
    for uri in ["/", "/?q=evil", "/?q=%3Cscript%3E", "/students/6", "/students/2", "/?course=%3Cscript%3Ealert(3)%3C/script%3E"] {
        let html = page(&app, uri).await;
        assert!(!html.contains("<script>alert"), "{uri} renders markup from data:\n{html}");
        assert!(!html.contains("<img src=x"), "{uri} renders markup from data");
    }
    let page = get(&app, "/?q=evil").await;
    // askama escapes with numeric character references (&#60; is <).
    assert!(page.body.contains("&#60;script&#62;alert(1)&#60;/script&#62;"), "the name is shown, as text");
    assert!(get(&app, "/students/2").await.body.contains("&#60;img src=x onerror=alert(2)&#62;"));
    // The only script a page loads is the application's own file.
    assert_eq!(page.body.matches("<script").count(), 1);
    assert!(page.body.contains(r#"<script src="/assets/app.js" defer></script>"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_security_headers() {
    let env = Env::new().await;
    let app = directory(&env).await;
    for uri in ["/", "/api/search", "/api/suggest?q=an", "/students/1", "/assets/app.js", "/assets/app.css", "/nope", "/api/search?size=0"]
    {
        let a = get(&app, uri).await;
        let csp = a.headers.get("content-security-policy").unwrap_or_else(|| panic!("{uri}: no CSP")).to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{uri}: {csp}");
        assert_eq!(a.headers["x-content-type-options"], "nosniff", "{uri}");
        assert_eq!(a.headers["x-frame-options"], "DENY", "{uri}");
    }
    assert!(get(&app, "/assets/app.js").await.headers["content-type"].to_str().unwrap().starts_with("text/javascript"));
    // No inline style or script anywhere a CSP would have to allow.
    let page = get(&app, "/?course=CS101").await.body;
    assert!(!page.contains("style=") && !page.contains("onclick") && !page.contains("<style"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_server_down_gives_a_503_that_says_so_without_credentials() {
    let env = Env::new().await;
    let _ = directory(&env).await;
    let (app, port) = without_search_server(&env);
    let page = get(&app, "/?q=ann").await;
    assert_eq!(page.status, 503);
    assert!(page.body.contains("The search server cannot be reached") && page.body.contains("Student pages still work"), "{}", page.body);
    let api_answer = get(&app, "/api/search").await;
    assert_eq!(api_answer.status, 503);
    assert!(api_answer.json()["error"]["message"].as_str().unwrap().contains("search server cannot be reached"));
    assert_eq!(get(&app, "/api/suggest?q=an").await.status, 503);
    // The student page still works from the database, and says the index could not be asked.
    let student = get(&app, "/students/1").await;
    assert_eq!(student.status, 200);
    assert!(student.body.contains("Ann Lee") && student.body.contains(r#"data-state="unavailable""#), "{}", student.body);
    assert_not_shown(&[&page, &api_answer, &student], &["hunter2", "elastic:", &port.to_string()]);
    // engine=sql does not need the search server.
    assert_eq!(get(&app, "/api/search?engine=sql").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_gives_a_503_student_page_without_credentials() {
    let env = Env::new().await;
    let _ = directory(&env).await;
    let (app, port) = without_database(&env);
    let page = get(&app, "/students/1").await;
    assert_eq!(page.status, 503);
    assert!(page.body.contains("The database is not answering"), "{}", page.body);
    let sql = get(&app, "/api/search?engine=sql").await;
    assert_eq!(sql.status, 503);
    // Searching the index still works; the footer says the freshness is unknown.
    let search = get(&app, "/?q=ann").await;
    assert_eq!(search.status, 200);
    assert!(search.body.contains("Index freshness unknown"));
    assert_not_shown(&[&page, &sql, &search], &["s3cret", &port.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_results_offer_to_remove_each_filter_or_clear_them_all() {
    let env = Env::new().await;
    let app = directory(&env).await;
    let html = page(&app, "/?q=ann&course=MATH201&university=KPI&year=SO").await;
    assert!(html.contains("No students match"), "{html}");
    for (label, href) in [
        ("Remove Courses: MATH201", "/?q=ann&#38;university=KPI&#38;year=SO"),
        ("Remove University: KPI", "/?q=ann&#38;course=MATH201&#38;year=SO"),
        ("Remove Year in school: SO", "/?q=ann&#38;course=MATH201&#38;university=KPI"),
    ] {
        assert!(html.contains(&format!(r#"<a class="remove-filter" href="{href}">{label}</a>"#)), "{label}: {html}");
    }
    assert!(html.contains(r#"<a id="clear-all" href="/?q=ann">Clear all filters</a>"#));
    // Following one of them finds students again.
    let removed = get(&app, "/?q=ann&course=MATH201&university=KPI").await;
    assert!(removed.body.contains("Anna") || removed.body.contains("Ann"));
    assert!(!removed.body.contains("No students match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_without_script_and_its_url_is_its_state() {
    let env = Env::new().await;
    let app = directory(&env).await;
    let page = get(&app, "/?q=ann").await.body;
    // Facet values are links carrying the whole state: following one selects it.
    assert!(page.contains(r#"<a href="/?q=ann&#38;course=CS101" class="value""#), "{page}");
    let selected = get(&app, "/?q=ann&course=CS101").await.body;
    assert!(selected.contains(r#"<a href="/?q=ann" class="value selected""#), "the selected value's link deselects it");
    assert!(selected.contains(r#"data-id="1""#) && selected.contains(r#"data-id="2""#) && !selected.contains(r#"data-id="5""#));
    // Histogram bars are links with a range; the search box is a GET form that keeps the filters.
    assert!(selected.contains(r#"href="/?q=ann&#38;course=CS101&#38;age_gte=20&#38;age_lt=22""#));
    assert!(selected.contains(r#"<form class="search" method="get" action="/" role="search">"#));
    assert!(selected.contains(r#"<input type="hidden" name="course" value="CS101">"#));
    // The combobox markup the script enhances.
    assert!(selected.contains(r#"role="combobox" aria-autocomplete="list" aria-expanded="false" aria-controls="suggestions""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_footer_shows_freshness_from_the_same_source_as_admin_status() {
    let env = Env::new().await;
    let app = directory(&env).await;
    assert!(get(&app, "/").await.body.contains("0 outstanding marks"));
    env.sql("UPDATE students SET age = 23 WHERE id IN (1, 2)").await;
    let status = tidemark::admin::status(&env.services(), Err("no queue in this test".into())).await.unwrap();
    assert_eq!(status.outstanding_marks, 2);
    let page = get(&app, "/").await.body;
    assert!(page.contains("2 outstanding marks"), "{page}");
    let lag = page.split("lag ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse::<f64>().ok()).unwrap();
    // Shown to a tenth of a second, read after the status.
    assert!(lag + 0.05 >= status.lag_seconds && status.lag_seconds > 0.0, "lag {lag} vs status {}", status.lag_seconds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_go_through_the_alias_so_a_reindex_breaks_no_page() {
    let env = Env::new().await;
    let app = directory(&env).await;
    let before = api(&app, "/api/search?sort=age").await;
    let old = env.search.alias_targets(&env.alias).await.unwrap();
    tidemark::reindex::start(&env.services(), 2, "test").await.unwrap();
    // While the new index is built, pages keep answering from the live one.
    assert_eq!(ids(&api(&app, "/api/search?sort=age").await), ids(&before));
    env.drain_and_refresh().await;
    assert_ne!(env.search.alias_targets(&env.alias).await.unwrap(), old, "the alias moved");
    assert_eq!(ids(&api(&app, "/api/search?sort=age").await), ids(&before));
    assert_eq!(api(&app, "/api/suggest?q=ann").await.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidemark_serve_answers_on_a_real_port_and_stops_on_sigterm() {
    let env = Env::new().await;
    let _ = directory(&env).await;
    let port = free_port();
    let mut proc = env.spawn(&["serve", "--addr", &format!("127.0.0.1:{port}")], |_| {});
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..300 {
        if http.get(format!("{base}/")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "tidemark serve did not answer; its log:\n{}", proc.output());
    let page = http.get(format!("{base}/?q=ann")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("</mark> Park"), "Ann Park is found, her first name marked");
    let css = http.get(format!("{base}/assets/app.css")).send().await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let v: Value = http.get(format!("{base}/api/search?q=lee")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["total"]["value"], json!(2));
    let status = proc.terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", proc.output());
    assert!(proc.output().contains("search application stopped"));
}

// ------------------------------------------------------------------ asking the engine once
// (issue 19: single flight, the answer cache, the alias, the counts' age)

/// The router with the application state kept, so a test can read its cache's usage.
fn app_of(services: Services) -> (web::App, Router) {
    let app = web::App::new(services);
    (app.clone(), web::router_for(app))
}

/// The counts a reader sees: total, every facet's buckets and what is left out, the
/// histogram.
fn counts_of(v: &Value) -> Value {
    let facets: Vec<Value> = ["course", "university", "year"]
        .iter()
        .map(|f| json!([v["facets"][f]["buckets"], v["facets"][f]["sum_other_doc_count"]]))
        .collect();
    json!({"total": v["total"], "facets": facets, "age": v["histograms"]["age"]["buckets"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_searches_make_one_engine_request() {
    let env = Env::new().await;
    let _ = directory(&env).await;
    // Every search the engine receives is held 300 ms: requests sent at once overlap.
    let (proxy, app) = with_slow_searches(&env).await;
    let searches = || proxy.stats().slowed;

    // What one search costs the engine alone.
    let before = searches();
    let alone = api(&app, "/api/search?course=CS101").await;
    let one = searches() - before;
    assert!(one >= 1, "a search reaches the engine");

    // Twenty identical searches at once, of a request not asked before, cost the same.
    let before = searches();
    let answers = futures::future::join_all((0..20).map(|_| api(&app, "/api/search?course=MATH201"))).await;
    assert_eq!(searches() - before, one, "20 identical searches at once cost the engine what one costs");
    for a in &answers {
        assert_eq!(ids(a), ids(&answers[0]));
        assert_eq!(counts_of(a), counts_of(&answers[0]));
    }
    assert_eq!(sorted_ids(&answers[0]), vec![1, 3, 5], "the students taking MATH201");
    assert_eq!(counts(&answers[0], "course"), BTreeMap::from([("CS101".into(), 3), ("MATH201".into(), 3)]));

    // Twenty identical suggestions at once: one engine request.
    let before = searches();
    let suggestions = futures::future::join_all((0..20).map(|_| api(&app, "/api/suggest?q=bo"))).await;
    assert_eq!(searches() - before, 1, "20 identical suggestions at once make one engine request");
    assert!(suggestions.iter().all(|s| s == &suggestions[0] && s.as_array().unwrap().len() == 1), "{suggestions:?}");

    // Two orders of the same search at once: their counts are the same request (asked
    // once), their hits are not (asked twice).
    let before = searches();
    let differ = futures::future::join_all(["/api/search?sort=age", "/api/search?sort=-age"].map(|u| api(&app, u))).await;
    assert_eq!(searches() - before, 3, "one counts request shared, two hits requests");
    assert_ne!(ids(&differ[0]), ids(&differ[1]));
    assert_eq!(counts_of(&differ[0]), counts_of(&differ[1]));
    assert_eq!(alone["total"]["value"], json!(3));
}

/// A student's document by hand: (id, first, last, age, year, university, courses).
type Student<'a> = (i64, &'a str, &'a str, i32, &'a str, &'a str, &'a [&'a str]);

/// An index with these students' documents only, created by hand with tidemark's mapping
/// and a refresh interval of a minute.
async fn hand_made_index(env: &Env, name: &str, students: &[Student<'_>]) {
    let mut body = tidemark::document::build_body(&Default::default(), &tidemark::model::Model::students());
    body["settings"] = json!({"index": {"number_of_replicas": 0, "refresh_interval": "60s"}});
    env.es_json(reqwest::Method::PUT, &format!("/{name}"), Some(body)).await;
    for s in students {
        add_document(env, name, *s).await;
    }
    env.es_json(reqwest::Method::POST, &format!("/{name}/_refresh"), None).await;
}

async fn add_document(env: &Env, index: &str, s: Student<'_>) {
    let (id, first, last, age, year, university, courses) = s;
    // The students model's document (seeds/students/model.toml), fields in declared order.
    let mut courses: Vec<String> = courses.iter().map(|c| c.to_string()).collect();
    courses.sort();
    courses.dedup();
    let doc = json!({
        "first_name": first, "last_name": last, "age": age, "year_in_school": year,
        "university": {"id": 1, "name": university},
        "course_names": courses,
        "name_complete": {"input": [first, last, format!("{first} {last}")]},
        "id": id,
    });
    env.es_json(reqwest::Method::PUT, &format!("/{index}/_doc/{id}"), Some(doc)).await;
}

async fn point_alias(env: &Env, to: &str) {
    let from = env.search.alias_targets(&env.alias).await.unwrap();
    env.search.move_alias(&env.alias, &from, &[to.to_string()]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_move_is_never_answered_from_the_old_indexs_cache() {
    // Answers may be kept for a minute here (the indices refresh every minute), so only
    // the alias can tell a reused answer is from the wrong index.
    let env = Env::with_config(|c| answers_kept_for(c, "60s")).await;
    let (a, b) = (format!("{}-hand-a", env.alias), format!("{}-hand-b", env.alias));
    hand_made_index(&env, &a, &[(1, "Ann", "Lee", 20, "FR", "MIT", &["CS101"]), (2, "Bob", "Ray", 21, "SO", "MIT", &["CS101"])]).await;
    hand_made_index(&env, &b, &[(3, "Cy", "Oz", 30, "SR", "KPI", &["MATH201"])]).await;
    point_alias(&env, &a).await;
    let (_, app) = app_of(env.services());

    let first = api(&app, "/api/search").await;
    assert_eq!(first["total"]["value"], json!(2));
    let again = api(&app, "/api/search").await;
    assert_eq!(again["counts"]["reused"], json!(true), "within the bound the counts are reused: {again}");
    assert_eq!(counts_of(&again), counts_of(&first));
    assert_eq!(api(&app, "/api/suggest?q=an").await.as_array().unwrap().len(), 1);

    // A reindex's swap: the very next search answers from the new index.
    point_alias(&env, &b).await;
    let moved = api(&app, "/api/search").await;
    assert_eq!(moved["total"]["value"], json!(1), "{moved}");
    assert_eq!(counts(&moved, "university"), BTreeMap::from([("KPI".into(), 1)]));
    assert_eq!(ids(&moved), vec![3]);
    assert_eq!(moved["counts"]["reused"], json!(false));
    assert_eq!(api(&app, "/api/suggest?q=an").await.as_array().unwrap().len(), 0, "no Ann in the new index");

    // Meanwhile the old index changes (as the index a rollback returns to may have), and
    // the alias goes back to it: its answers from before are not reused either.
    add_document(&env, &a, (4, "Dee", "New", 40, "JR", "MGU", &["CS101"])).await;
    env.es_json(reqwest::Method::POST, &format!("/{a}/_refresh"), None).await;
    point_alias(&env, &a).await;
    let back = api(&app, "/api/search").await;
    assert_eq!(back["total"]["value"], json!(3), "{back}");
    assert_eq!(counts(&back, "university"), BTreeMap::from([("MGU".into(), 1), ("MIT".into(), 2)]));
    assert_eq!(sorted_ids(&back), vec![1, 2, 4], "the hits too are the index's as it is now");
    assert_eq!(back["counts"]["reused"], json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_cache_stays_within_its_size_in_bytes() {
    let budget = 48 * 1024;
    let env = Env::with_config(|c| {
        c.serve.cache_bytes = budget as u64;
        answers_kept_for(c, "60s");
    })
    .await;
    let _ = directory(&env).await;
    let (state, app) = app_of(env.services());
    // Sixty different counts requests (each facet-value search is another request).
    for i in 0..60 {
        let v = api(&app, &format!("/api/search?course_q=C{i}")).await;
        assert_eq!(v["counts"]["reused"], json!(false));
        let usage = state.cache_usage();
        assert!(usage.bytes <= budget, "after {i} requests the cache holds {usage:?}");
    }
    let usage = state.cache_usage();
    assert!(usage.entries > 3 && usage.entries < 60, "some kept, the oldest evicted: {usage:?}");
    // The latest is reused; the first was evicted and is asked again.
    assert_eq!(api(&app, "/api/search?course_q=C59").await["counts"]["reused"], json!(true));
    assert_eq!(api(&app, "/api/search?course_q=C0").await["counts"]["reused"], json!(false));
    assert!(state.cache_usage().bytes <= budget);
}

/// The answer to `/api/search?<query>` as the engine gives it, from the same counts request
/// (and, with `hits`, hits request) tidemark sends, straight to the engine (whose shard
/// request cache is invalidated at each refresh, so this is the current state).
async fn engine_answer(env: &Env, query: &str, hits: bool) -> Value {
    let req = request(query);
    let search = format!("/{}/_search", env.alias);
    let counts = env.es_json(reqwest::Method::POST, &search, Some(web::query::counts_body(&req))).await;
    let hits = if hits { env.es_json(reqwest::Method::POST, &search, Some(web::query::hits_body(&req))).await } else { json!({}) };
    let raw = web::query::read(&req, &counts, &hits);
    serde_json::to_value(web::SearchResponse::assemble(&req, raw, web::params::Engine::Index, 0.0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_continuous_writes_counts_are_never_older_than_the_bound_the_page_states() {
    let env = Env::new().await;
    let app = seeded(&env, 2_000).await;
    let refresh = env.config.index.refresh_interval.0;
    let query = "year=FR&university=MIT";
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let t0 = std::time::Instant::now();

    // Writes change ages, years and universities all the time; a syncer ships them; the
    // engine refreshes on its own schedule (nothing here forces a refresh).
    let writer = async {
        let mut k = 0i64;
        while !stopped() {
            env.sql(&format!(
                "UPDATE students SET year_in_school = (ARRAY['FR','SO','JR','SR'])[1 + ({k} % 4)], age = 18 + ({k} % 7), \
                 university_id = CASE WHEN {k} % 3 = 0 THEN 1 ELSE university_id END WHERE id = 1 + ({k} * 7919) % 2000"
            ))
            .await;
            k += 1;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        k
    };
    let syncer = async {
        let engine = env.engine();
        while !stopped() {
            engine.drain().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // The engine's own counts, polled without pause: (sent, received, counts), seconds since t0.
    let poller = async {
        let mut seen: Vec<(f64, f64, Value)> = Vec::new();
        while !stopped() {
            let sent = t0.elapsed().as_secs_f64();
            let c = counts_of(&engine_answer(&env, query, false).await);
            seen.push((sent, t0.elapsed().as_secs_f64(), c));
        }
        seen
    };
    // A reader: the API and the page, again and again.
    let reader = async {
        let mut answers: Vec<(f64, f64, Value)> = Vec::new();
        let mut pages = Vec::new();
        for i in 0..80 {
            let sent = t0.elapsed().as_secs_f64();
            let v = api(&app, &format!("/api/search?{query}")).await;
            answers.push((sent, t0.elapsed().as_secs_f64(), v));
            if i % 20 == 0 {
                pages.push(get(&app, &format!("/?{query}")).await.body);
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (answers, pages)
    };
    let (writes, (), seen, (answers, pages)) = tokio::join!(writer, syncer, poller, reader);

    let states: std::collections::BTreeSet<String> = seen.iter().map(|(_, _, c)| c.to_string()).collect();
    assert!(states.len() >= 3, "the counts changed under {writes} writes ({} states seen)", states.len());
    let gap = seen.windows(2).map(|w| w[1].0 - w[0].0).fold(0.0, f64::max);
    let mut reused = 0;
    for (sent, received, v) in &answers {
        let (age, bound) = (v["counts"]["age_ms"].as_f64().unwrap() / 1e3, v["counts"]["max_age_ms"].as_f64().unwrap() / 1e3);
        assert!(bound > 0.0 && bound <= refresh.as_secs_f64(), "the stated bound is the refresh interval at most: {}", v["counts"]);
        assert!(age <= bound, "counts {age} s old, past the stated {bound} s");
        assert!(v["hits_age_ms"].as_f64().unwrap() / 1e3 <= bound, "hits older than the stated {bound} s: {}", v["hits_age_ms"]);
        reused += usize::from(v["counts"]["reused"] == json!(true));
        // The engine answered these very counts at some moment within the bound before
        // the request was sent (up to the poller's resolution).
        let mine = counts_of(v);
        let matched = seen.iter().any(|(s, r, c)| *c == mine && *r >= sent - bound - gap && *s <= received + gap);
        assert!(matched, "an answer sent at {sent:.3} s has counts the engine never showed within {bound} s before it: {mine}");
    }
    assert!(reused > 0, "some counts were reused (else this test shows nothing)");
    for page in &pages {
        assert!(page.contains("s ago (kept for at most 1.0 s"), "the page states the ages and the bound: {page}");
    }
}

/// A request of the students model as the application parses it.
fn request(q: &str) -> web::Request {
    web::Request::parse(&tidemark::model::Model::students(), Some(q)).unwrap_or_else(|e| panic!("{q}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_through_reuse_and_single_flight_are_exactly_what_the_engine_answers() {
    let env = Env::new().await;
    let app = seeded(&env, 3_000).await;
    let page1 = api(&app, "/api/search?sort=last_name&course=CS101").await;
    let after = encode(page1["next"].as_str().unwrap());
    let page1_rel = api(&app, "/api/search").await;
    let after_rel = encode(page1_rel["next"].as_str().unwrap());
    let requests = [
        String::new(),
        "course=CS101".into(),
        "university=MIT&year=FR".into(),
        "q=anna&course=MATH101".into(),
        "course=CS101&course=PHYS102&age_gte=18&age_lt=22".into(),
        "university=KPI&university=MGU&sort=last_name".into(),
        "year=SR&course=CHEM102&distinct=university".into(),
        "distinct=year&university=MIT".into(),
        "distinct=course".into(),
        "q=maria+lopez&sort=-age".into(),
        "course_q=cs&university_q=m&facet_size=5&course=CS101".into(),
        "page=3&size=7".into(),
        "age_gte=20".into(),
        "course=CS101&university=MIT&year=FR&age_gte=18&age_lt=26&distinct=course".into(),
        "university=Nowhere&course=CS101".into(),
        format!("sort=last_name&course=CS101&after={after}"),
        format!("after={after_rel}"),
    ];
    for q in &requests {
        let via = api(&app, &format!("/api/search?{q}")).await;
        let direct = engine_answer(&env, q, true).await;
        assert_eq!(counts_of(&via), counts_of(&direct), "{q}: counts");
        assert_eq!(via["hits"], direct["hits"], "{q}: hits");
        assert_eq!(via["next"], direct["next"], "{q}: next page");
        assert_eq!(via["distinct"], direct["distinct"], "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_still_asked_for_is_renewed_before_it_expires() {
    // Answers are kept up to 2 s here (the index refreshes every 2 s).
    let env = Env::with_config(|c| answers_kept_for(c, "2s")).await;
    let app = directory(&env).await;
    let first = api(&app, "/api/search?year=FR").await;
    assert_eq!(first["counts"]["reused"], json!(false));
    assert_eq!(first["counts"]["max_age_ms"], json!(2000.0));
    // Past half its life, it is still answered from the cache, and asked again meanwhile.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let middle = api(&app, "/api/search?year=FR").await;
    assert_eq!(middle["counts"]["reused"], json!(true));
    // Past the first answer's bound: a renewed answer, younger than the bound, not a miss.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let last = api(&app, "/api/search?year=FR").await;
    assert_eq!(last["counts"]["reused"], json!(true), "{}", last["counts"]);
    assert!(last["counts"]["age_ms"].as_f64().unwrap() < 2000.0, "{}", last["counts"]);
    assert!(last["hits_age_ms"].as_f64().unwrap() < 2000.0, "{}", last["hits_age_ms"]);
    assert_eq!(counts_of(&last), counts_of(&first));
}

/// Issue 19, under load: a renewal is handed an engine slot ahead of the misses waiting for
/// one. Were slots handed out in arrival order, P's renewal would wait behind every miss
/// queued before it, P would expire first, and its readers would wait behind them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_popular_answer_is_renewed_ahead_of_misses_queued_for_the_engine() {
    // Two searches at once at the engine, the default 1 s bound.
    let env = Env::with_config(|c| c.serve.engine_concurrency = 2).await;
    let _ = directory(&env).await;
    let proxy = env.proxy().await;
    let app = web::router(env.services_via(&proxy));
    let popular = "/api/search?year=FR";
    let ms = |v: &Value| v.as_f64().unwrap();

    // P, asked of an engine with nothing else to do.
    let first = api(&app, popular).await;
    let answered = std::time::Instant::now();
    assert_eq!(first["counts"]["reused"], json!(false));
    let bound = Duration::from_secs_f64(ms(&first["counts"]["max_age_ms"]) / 1e3);
    assert_eq!(bound, Duration::from_secs(1), "the default bound");

    // Then the engine slows down (every search held 250 ms) and sixteen searches nobody
    // asked before arrive at once: 32 engine requests, two at a time, that keep misses
    // waiting in serve for seconds, far past the bound.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(support::fault_proxy::Faults {
        slow: 1.0,
        delay: Duration::from_millis(250),
        only_path: Some("_search".into()),
        ..Default::default()
    });
    let burst_done = std::sync::atomic::AtomicBool::new(false);
    let burst = async {
        let app = &app;
        let answers = futures::future::join_all((0..16).map(|i| async move {
            let v = api(app, &format!("/api/search?q=nobody{i}")).await;
            (std::time::Instant::now(), v)
        }))
        .await;
        burst_done.store(true, std::sync::atomic::Ordering::SeqCst);
        answers
    };
    // A reader of P, once P is past half its bound (so the first reuse starts its
    // renewal, after the misses above queued) and until the misses are all answered:
    // (asked, answered, answer).
    let reader = async {
        tokio::time::sleep((answered + bound / 2 + Duration::from_millis(50)).saturating_duration_since(std::time::Instant::now())).await;
        let mut seen = Vec::new();
        while !burst_done.load(std::sync::atomic::Ordering::SeqCst) {
            let asked = std::time::Instant::now();
            let v = api(&app, popular).await;
            seen.push((asked, std::time::Instant::now(), v));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    };
    let (burst, seen) = tokio::join!(burst, reader);

    // The misses did wait far past the bound (else this test shows nothing).
    let mut done: Vec<std::time::Instant> = burst.iter().map(|(at, _)| *at).collect();
    done.sort();
    let expired = answered + bound;
    assert!(done[done.len() - 1] > expired + bound, "the misses were all answered within the bound: nothing queued");
    assert!(burst.iter().all(|(_, v)| v["total"]["value"] == json!(0)), "nobody is called nobody");
    // The reader's first request was a reuse past half the bound: it started the renewal.
    let (_, _, middle) = &seen[0];
    assert_eq!(middle["counts"]["reused"], json!(true), "P is still reused at first: {}", middle["counts"]);
    assert!(ms(&middle["counts"]["age_ms"]) * 2.0 >= ms(&middle["counts"]["max_age_ms"]), "past half its bound: {}", middle["counts"]);

    // Every answer of P is within the bound it states, and the same counts.
    for (_, _, v) in &seen {
        assert!(ms(&v["counts"]["age_ms"]) <= ms(&v["counts"]["max_age_ms"]), "{}", v["counts"]);
        assert!(ms(&v["hits_age_ms"]) <= ms(&v["counts"]["max_age_ms"]), "{}", v["hits_age_ms"]);
        assert_eq!(counts_of(v), counts_of(&first));
    }
    // Asked after the first answer had expired, while most of the misses asked before it
    // still waited for the engine, P was answered from a renewed answer.
    let half = done[done.len() / 2];
    let renewed = seen.iter().find(|(asked, got, v)| *asked >= expired && *got < half && v["counts"]["reused"] == json!(true));
    let after: Vec<String> = seen
        .iter()
        .filter(|(asked, _, _)| *asked >= expired)
        .map(|(asked, got, v)| {
            format!(
                "asked {:.2} s after the first answer, answered {:.2} s later, {}",
                (*asked - answered).as_secs_f64(),
                (*got - *asked).as_secs_f64(),
                v["counts"]
            )
        })
        .collect();
    assert!(
        renewed.is_some(),
        "no renewed answer of P before half the misses (asked before it) were answered ({:.2} s after the first answer): {after:#?}",
        (half - answered).as_secs_f64()
    );
}

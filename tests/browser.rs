//! The search application in a real browser (headless Chromium through chromedriver,
//! tests/support/browser.rs) against real PostgreSQL and OpenSearch: what a person does —
//! type, pick with the keyboard, click facets and bars, remove a filter — and what they
//! see. Screenshots go to `target/screenshots/` (not committed).

#[path = "support/browser.rs"]
mod browser;
mod support;

use browser::{screenshot_dir, Browser, Key, Server};
use support::{web::four_experiments, Env};

/// Seeded students plus two named Xyla (a first name the seed lists do not have).
async fn students(env: &Env) {
    tidemark_seeds::seed(&env.pool, &tidemark_seeds::SeedOptions { students: 3000, seed: 3 }).await.unwrap();
    env.sql(
        "INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES
           (900001, 'Xyla', 'Abbott', 20, 'FR', 1), (900002, 'Xyla', 'Zimmer', 23, 'JR', 2);
         INSERT INTO student_courses SELECT 900001, id FROM courses WHERE name = 'CS101';",
    )
    .await;
    env.drain_and_refresh().await;
}

/// The number a summary like "2,951 students" starts with.
fn leading_number(text: &str) -> u64 {
    text.split_whitespace().next().unwrap_or_default().replace(',', "").parse().unwrap_or_else(|_| panic!("no number in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_two_letters_and_picking_by_keyboard_opens_the_student_page_from_the_database() {
    let env = Env::new().await;
    students(&env).await;
    // The database moves on after indexing: the suggestion shows the index's name, the
    // page the database's.
    env.sql("UPDATE students SET last_name = 'Zimmermann' WHERE id = 900002").await;
    let server = Server::start(env.services()).await;
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{}/", server.url)).await;
    let input = b.find("#q").await;
    assert_eq!(b.attr(&input, "aria-expanded").await.as_deref(), Some("false"));
    b.type_keys(&input, "Xy").await;
    let options = b.wait_for("#suggestions [role=option]").await;
    assert_eq!(options.len(), 2, "two students named Xyla are two suggestions");
    let mut names = vec![b.text(&options[0]).await, b.text(&options[1]).await];
    names.sort();
    assert!(names[0].starts_with("Xyla Abbott") && names[1].starts_with("Xyla Zimmer"), "{names:?}");
    assert_eq!(b.attr(&input, "aria-expanded").await.as_deref(), Some("true"));
    b.screenshot(&screenshot_dir().join("autocomplete.png")).await;

    // ArrowDown twice: the second suggestion is active, focus stays in the box.
    b.type_keys(&input, &Key::Down).await;
    b.type_keys(&input, &Key::Down).await;
    assert_eq!(b.attr(&input, "aria-activedescendant").await.as_deref(), Some("suggestion-1"));
    assert_eq!(b.attr(&options[1], "aria-selected").await.as_deref(), Some("true"));
    assert_eq!(b.attr(&options[0], "aria-selected").await.as_deref(), Some("false"));
    assert_eq!(b.active_id().await.as_deref(), Some("q"));
    let chosen = b.text(&options[1]).await;
    let id = if chosen.contains("Zimmer") { 900002 } else { 900001 };
    b.type_keys(&input, &Key::Enter).await;
    b.wait_for_url("the student's page", |u| u.ends_with(&format!("/students/{id}"))).await;
    let name = b.text(&b.wait_for("#document-title").await[0]).await;
    let state = b.attr(&b.find("#index-state").await, "data-state").await.unwrap();
    if id == 900002 {
        assert_eq!(name, "Xyla Zimmermann", "the page reads the database");
        assert_eq!(state, "differs", "and says the index is behind");
    } else {
        assert_eq!(name, "Xyla Abbott");
        assert_eq!(state, "in_sync");
    }
    b.screenshot(&screenshot_dir().join("student.png")).await;
    b.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicking_a_course_and_a_histogram_bar_changes_hits_counts_and_url_and_a_filter_can_be_removed() {
    let env = Env::new().await;
    students(&env).await;
    let server = Server::start(env.services()).await;
    let b = Browser::start(1280, 1500).await;
    b.goto(&format!("{}/", server.url)).await;
    let summary = b.text(&b.wait_for("#summary").await[0]).await;
    assert_eq!(leading_number(&summary), 3002, "{summary}");
    b.screenshot(&screenshot_dir().join("main.png")).await;
    let years_before = b.texts("#facet-year a.value .count").await;

    // A course facet value: the hits become its students, the URL carries it, the other
    // facets count within it, and the value shows as selected.
    let course = b.find("#facet-course a.value").await;
    let value = b.attr(&course, "data-value").await.unwrap();
    let count = leading_number(&b.text(&b.find("#facet-course a.value .count").await).await);
    b.click(&course).await;
    let url = b.wait_for_url("a course filter", |u| u.contains("course=")).await;
    assert!(url.contains(&format!("course={value}")), "{url}");
    assert_eq!(leading_number(&b.text(&b.find("#summary").await).await), count);
    let selected = b.find("#facet-course a.value.selected").await;
    assert_eq!(b.attr(&selected, "data-value").await.as_deref(), Some(value.as_str()));
    assert_ne!(b.texts("#facet-year a.value .count").await, years_before, "the year counts now count within {value}");

    // A histogram bar: a range filter on top.
    let bar = b.find(r#"#facet-age a[data-from="20"]"#).await; // ages 20-21
    let title = b.attr(&bar, "title").await.unwrap();
    let in_bar: u64 = title.split(": ").nth(1).map(leading_number).unwrap();
    b.click(&bar).await;
    let url = b.wait_for_url("an age range", |u| u.contains("age_gte=20&age_lt=22")).await;
    assert!(url.contains(&format!("course={value}")), "the course stays selected: {url}");
    assert_eq!(leading_number(&b.text(&b.find("#summary").await).await), in_bar, "{title}");
    assert!(in_bar < count);
    let chips = b.find_all("#active-filters a.chip").await;
    assert_eq!(chips.len(), 2);
    b.screenshot(&screenshot_dir().join("main-filtered.png")).await;

    // No results: a way out per filter. Xyla Abbott takes CS101 only, Xyla Zimmer nothing.
    b.goto(&format!("{}/?q=xyla&course=MATH101&year=JR", server.url)).await;
    b.wait_for("#no-results").await;
    b.screenshot(&screenshot_dir().join("no-results.png")).await;
    let removes = b.find_all("#no-results a.remove-filter").await;
    assert_eq!(removes.len(), 2);
    let label = b.text(&removes[0]).await;
    assert_eq!(label, "Remove Courses: MATH101");
    b.click(&removes[0]).await;
    let url = b.wait_for_url("without the course", |u| !u.contains("course=")).await;
    assert!(url.contains("year=JR") && url.contains("q=xyla"), "{url}");
    let hits = b.wait_for("#hits li").await;
    assert_eq!(hits.len(), 1);
    assert_eq!(b.attr(&hits[0], "data-id").await.as_deref(), Some("900002"));
    b.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refinebio_picking_an_organism_changes_the_unique_sample_counts_and_an_experiment_opens_from_the_database() {
    // Another model (issue 18): refine.bio's experiments, the page driven by its [search] view.
    let env = Env::refinebio().await;
    four_experiments(&env).await;
    env.drain_and_refresh().await;
    let server = Server::start(env.services()).await;
    let b = Browser::start(1280, 1200).await;
    b.goto(&format!("{}/?distinct=samples", server.url)).await;
    assert_eq!(leading_number(&b.text(&b.wait_for("#summary").await[0]).await), 4);
    let platforms_before = b.texts("#facet-platform a.value .distinct").await;
    assert_eq!(platforms_before, ["~8 unique samples", "~5 unique samples"]);
    b.screenshot(&screenshot_dir().join("refinebio.png")).await;

    // Pick an organism: the experiments with a mouse sample, the platforms' unique samples
    // counted among them.
    b.click(&b.find(r#"#facet-organism a.value[data-value="Mus musculus"]"#).await).await;
    let url = b.wait_for_url("an organism filter", |u| u.contains("organism=Mus+musculus")).await;
    assert!(url.contains("distinct=samples"), "{url}");
    assert_eq!(leading_number(&b.text(&b.find("#summary").await).await), 2);
    assert_eq!(b.texts("#facet-platform a.value .distinct").await, ["~5 unique samples", "~3 unique samples"]);
    let selected = b.find("#facet-organism a.value.selected").await;
    assert_eq!(b.attr(&selected, "data-value").await.as_deref(), Some("Mus musculus"));
    b.screenshot(&screenshot_dir().join("refinebio-mouse.png")).await;

    // Open an experiment: its page is read from the database.
    let first = b.find("#hits li h2 a").await;
    b.click(&first).await;
    b.wait_for_url("the experiment's page", |u| u.ends_with("/experiments/1")).await;
    assert_eq!(b.text(&b.wait_for("#document-title").await[0]).await, "GSE1: Human liver expression");
    assert_eq!(b.attr(&b.find("#index-state").await, "data-state").await.as_deref(), Some("in_sync"));

    // Autocomplete by the model's completion field: pick by keyboard, open the experiment.
    let input = b.find("#q").await;
    b.type_keys(&input, "zebra").await;
    let options = b.wait_for("#suggestions [role=option]").await;
    assert_eq!(options.len(), 1);
    assert_eq!(b.text(&options[0]).await, "GSE3: Zebrafish development");
    assert_eq!(b.text(&b.find("#suggest-status").await).await, "1 experiment found; use the arrow keys to choose");
    b.type_keys(&input, &Key::Down).await;
    b.type_keys(&input, &Key::Enter).await;
    b.wait_for_url("the suggested experiment", |u| u.ends_with("/experiments/3")).await;
    assert_eq!(b.text(&b.wait_for("#document-title").await[0]).await, "GSE3: Zebrafish development");
    b.quit().await;
    server.stop().await;
}

//! Requests the search server refuses as a whole, and builds that fail: a refusal is
//! classified by what it means — too big (413: split and retry), transient (408, timeouts,
//! write blocks: retry with backoff, marks stay), credentials (401, or 403 with a security
//! exception: said so, marks stay) — and only a single document refused for good is
//! dead-lettered. A failing build is retried on a capped, jittered schedule and leaves at
//! most one failed index behind.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{eventually, fault_proxy::Faults, Env};
use tidemark::catalog::BuildState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_that_refuses_bodies_over_64_kb_everything_lands_and_nothing_is_dead_lettered() {
    let (env, proxy) = Env::behind_proxy(|_| {}).await;
    proxy.set(Faults { max_body: Some(64 * 1024), ..Faults::default() });
    env.seed(3_000).await;
    // The first build (no index yet) and then a sync of changes, both through the proxy.
    let report = env.drain().await;
    assert_eq!(report.dead, 0, "a request refused as too large is split, never dead-lettered");
    assert!(proxy.stats().too_large > 0, "the proxy did refuse large requests: {:?}", proxy.stats());
    env.sql("UPDATE students SET age = age % 90 + 1 WHERE id % 3 = 0").await;
    let report = env.drain().await;
    assert_eq!((report.dead, report.stalled), (0, false));
    assert_eq!(env.dead_letters().await, 0);
    let builds = env.scalar_i64("SELECT count(*) FROM tidemark.reindexes").await;
    assert_eq!(builds, 1, "one build, not one per failed attempt");
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_document_larger_than_the_limit_is_dead_lettered_alone_with_the_reason() {
    let (env, proxy) = Env::behind_proxy(|_| {}).await;
    env.create_index().await;
    // Student 7 takes 200 courses with long names: a document of ~10 kB.
    env.sql(
        "INSERT INTO courses (id, name) SELECT g, 'Course with a long descriptive name number ' || g FROM generate_series(1, 200) g;
         INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N' || g, 'L', 20, 'FR' FROM generate_series(1, 40) g;
         INSERT INTO student_courses SELECT 7, g FROM generate_series(1, 200) g;",
    )
    .await;
    proxy.set(Faults { max_body: Some(8 * 1024), ..Faults::default() });
    let report = env.drain().await;
    assert_eq!(report.dead, 1);
    let (id, status, error): (i64, i32, String) =
        sqlx::query_as("SELECT key::bigint, status, error FROM tidemark.dead_letters").fetch_one(&env.pool).await.unwrap();
    assert_eq!((id, status), (7, 413));
    assert!(error.contains("too large"), "{error}");
    env.refresh().await;
    assert_eq!(env.count(json!({"match_all": {}})).await, 39);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_blocked_build_index_loses_nothing_and_dead_letters_nothing() {
    let env = Env::seeded_with(2_000, |c| c.sync.max_attempts = 2).await;
    let build = env.start_reindex(500).await;
    env.es_json(reqwest::Method::PUT, &format!("/{}/_settings", build.target_index), Some(json!({"index.blocks.write": true}))).await;
    // Writes keep coming while the new index refuses them: the live index takes them, the
    // build's chunks and dual writes fail transiently.
    env.sql("UPDATE students SET last_name = 'Blocked' WHERE id <= 100").await;
    let syncer = env.engine();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let _ = syncer.step().await;
    }
    assert_eq!(env.dead_letters().await, 0, "a write block is transient: nothing is dead-lettered");
    let state = env.build(build.id).await.state;
    assert_eq!(state, BuildState::Building, "the build waits for the block to go");
    let marked = env.scalar_i64("SELECT count(DISTINCT key) FROM tidemark.outstanding WHERE key::bigint <= 100").await;
    assert_eq!(marked, 100, "the marks of changes the blocked index did not take stay");
    env.es_json(reqwest::Method::PUT, &format!("/{}/_settings", build.target_index), Some(json!({"index.blocks.write": false}))).await;
    env.drain().await;
    assert_eq!(env.build(build.id).await.state, BuildState::Done);
    assert_eq!(env.dead_letters().await, 0);
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_request_write_block_is_transient_and_not_called_a_credentials_problem() {
    let (env, proxy) = Env::behind_proxy(|_| {}).await;
    env.create_index().await;
    env.add_students(30).await;
    for status in [403, 429] {
        proxy.set(Faults { write_block: 1.0, write_block_status: status, ..Faults::on("_bulk") });
        let step = env.engine().step().await;
        let text = match &step {
            Ok(r) => format!("{r:?}"),
            Err(e) => e.to_string(),
        };
        assert!(!text.contains("credentials"), "a write block ({status}) is not a credentials problem: {text}");
        assert!(proxy.stats().write_blocked > 0);
        assert_eq!(env.dead_letters().await, 0);
        assert_eq!(env.outstanding().await, 30, "marks stay");
    }
    // A real credentials failure is still said to be one.
    proxy.set(Faults { require_authorization: Some("Basic nobody".into()), ..Faults::default() });
    let err = env.engine().step().await.unwrap_err().to_string();
    assert!(err.contains("credentials"), "{err}");
    assert_eq!(env.outstanding().await, 30, "marks stay");
    proxy.clear();
    env.drain().await;
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_timed_out_is_retried_not_dead_lettered() {
    let (env, proxy) = Env::behind_proxy(|c| c.sync.request_timeout = "3s".parse().unwrap()).await;
    env.create_index().await;
    env.add_students(30).await;
    // The first _bulk waits longer than the client does; the retry goes through.
    proxy.set(Faults { slow: 1.0, delay: Duration::from_millis(4000), ..Faults::on("_bulk") });
    let syncer = env.engine();
    let step = tokio::spawn(async move { syncer.step().await.map(|r| r.batch.map(|b| b.acked)) });
    tokio::time::sleep(Duration::from_millis(3200)).await;
    proxy.clear();
    let acked = step.await.unwrap().unwrap().unwrap();
    assert_eq!((acked.dead, acked.cleared), (0, 30), "{acked:?}");
    assert_eq!(env.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_is_retried_on_a_backoff_and_leaves_at_most_one_failed_index() {
    let env = Env::new().await;
    // A completion field refuses U+001F: this student's document can never be indexed, so
    // every build of this database fails its verification (a count short by one). The
    // students were there before tidemark (no marks): the first run rebuilds by itself.
    env.sql(
        "INSERT INTO students (id, first_name, last_name, age, year_in_school)
         SELECT g, CASE WHEN g = 5 THEN E'An\\x1Fn' ELSE 'N' || g END, 'L', 20, 'FR' FROM generate_series(1, 50) g;
         TRUNCATE tidemark.marks, tidemark.changes",
    )
    .await;
    let syncer = env.engine();
    // Without a backoff a failing build restarts as soon as it fails (every 1-2 s here).
    let until = Instant::now() + Duration::from_secs(20);
    let mut most_failed_indices = 0;
    while Instant::now() < until {
        let _ = syncer.step().await;
        let failed: Vec<String> =
            sqlx::query_scalar("SELECT target_index FROM tidemark.reindexes WHERE state = 'failed'").fetch_all(&env.pool).await.unwrap();
        let mut existing = 0;
        for index in &failed {
            if env.search.index_exists(index).await.unwrap() {
                existing += 1;
            }
        }
        most_failed_indices = most_failed_indices.max(existing);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let builds = env.scalar_i64("SELECT count(*) FROM tidemark.reindexes").await;
    assert!(builds >= 2, "the failed build was retried");
    assert!(builds <= 6, "a failing build is retried on a backoff, not in a tight loop: {builds} builds in 20 s");
    assert!(most_failed_indices <= 1, "at most one failed index is kept at a time (saw {most_failed_indices})");
    // (A rebuild may be under way at this moment: look once it has failed in turn. It only
    // moves on with steps, so the waiting goes on stepping.)
    let last = eventually("the last build has ended", Duration::from_secs(60), || async {
        let _ = syncer.step().await;
        env.status().await.reindex.filter(|b| !b.is_active())
    })
    .await;
    assert!(last.message.unwrap_or_default().contains("refused"), "the status says why the build failed");
}

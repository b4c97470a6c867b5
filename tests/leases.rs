//! Leases and late writes: a batch renews its lease while it ships, stops once its lease is
//! lost, and sends nothing after its deadline; and a write that reaches the engine late can
//! never bring a deleted student back, because tidemark's indices remember a delete longer
//! than any of its writes can take to arrive (`index.gc_deletes`, docs/design.md).

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde_json::json;
use support::{
    fault_proxy::{BulkRecord, FaultProxy, Faults},
    small_directory, Env,
};
use tidemark::config::Secret;

/// Pairs of batches (a batch: the `_bulk` requests carrying one version) that shipped a
/// student in common while both were shipping, with one such student.
fn overlapping_batches(log: &[BulkRecord]) -> Vec<(u64, u64, String)> {
    // Per version: when its first request started, when its last one ended, and its ids.
    let mut batches: BTreeMap<u64, (Instant, Instant, BTreeSet<String>)> = BTreeMap::new();
    for r in log {
        for a in &r.actions {
            if let (Some(id), Some(v)) = (&a.id, a.version) {
                let b = batches.entry(v).or_insert_with(|| (r.start, r.end, BTreeSet::new()));
                b.0 = b.0.min(r.start);
                b.1 = b.1.max(r.end);
                b.2.insert(id.clone());
            }
        }
    }
    let batches: Vec<_> = batches.into_iter().collect();
    let mut found = Vec::new();
    for (i, (va, a)) in batches.iter().enumerate() {
        for (vb, b) in &batches[i + 1..] {
            if a.0 < b.1 && b.0 < a.1 {
                if let Some(id) = a.2.intersection(&b.2).next() {
                    found.push((*va, *vb, id.clone()));
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_stalled_longer_than_its_lease_is_never_shipped_by_a_second_step_meanwhile() {
    let (env, proxy) = Env::behind_proxy(|c| {
        c.sync.lease = "4s".parse().unwrap();
        c.sync.request_timeout = "3s".parse().unwrap();
        c.sync.batch_timeout = "1s".parse().unwrap();
        // Many small requests, one at a time: 60 students are 6 requests of 2.5 s each,
        // 15 s of shipping for a batch leased for 4 s.
        c.sync.bulk_max_docs = 10;
        c.sync.bulk_concurrency = 1;
    })
    .await;
    env.create_index().await;
    small_directory(&env).await;
    env.add_students(60).await;
    proxy.clear_log();
    proxy.set(Faults { slow_answer: 1.0, delay_answer: Duration::from_millis(2500), ..Faults::on("_bulk") });
    // Two steps of one process (one Services: the same process identity), started 5 s
    // apart: by then the first one's lease would have run out had it not been renewed.
    let services = env.services();
    let first = tidemark::sync::Syncer::new(services.clone());
    let second = tidemark::sync::Syncer::new(services);
    let a = tokio::spawn(async move { first.step().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b = tokio::spawn(async move { second.step().await.map(|_| ()) });
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    let log = proxy.bulk_log();
    proxy.clear();
    let overlaps = overlapping_batches(&log);
    assert!(overlaps.is_empty(), "two batches shipped the same students at once: {:?}", &overlaps[..overlaps.len().min(5)]);
    env.drain().await;
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_lease_was_lost_ships_nothing_and_the_owner_ships_it_once() {
    let (env, proxy) = Env::behind_proxy(|c| {
        c.sync.lease = "2s".parse().unwrap();
        c.sync.request_timeout = "1s".parse().unwrap();
        c.sync.batch_timeout = "1s".parse().unwrap();
    })
    .await;
    env.create_index().await;
    env.add_students(20).await;
    let services = env.services();
    let paused = tidemark::sync::Syncer::new(services.clone());
    let marks = paused.claim(100).await.unwrap();
    let prepared = paused.prepare(marks).await.unwrap();
    let stale_version = prepared.version;
    // The process stalls (a long GC pause, a frozen VM) past its lease; a sibling step
    // takes the marks over and ships them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let sibling = tidemark::sync::Syncer::new(services);
    assert_eq!(sibling.claim(100).await.unwrap().len(), 20, "the lease ran out: the marks are claimable");
    proxy.clear_log();
    let report = paused.deliver(prepared).await.unwrap();
    assert_eq!(report.acked.cleared, 0);
    let shipped_stale = proxy.bulk_log().iter().flat_map(|r| r.actions.clone()).filter(|a| a.version == Some(stale_version as u64)).count();
    assert_eq!(shipped_stale, 0, "a batch whose lease is lost sends nothing");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM tidemark.marks WHERE lease_owner IS NOT NULL AND lease_until > now()").await,
        20,
        "the stalled step did not give back the sibling's leases"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_checks_its_lease_before_sending_and_renews_it_there_only_when_it_runs_short() {
    let (env, proxy) = Env::behind_proxy(|c| c.sync.lease = "60s".parse().unwrap()).await;
    env.create_index().await;
    env.add_students(20).await;
    let engine = std::sync::Arc::new(env.engine());
    let lease_left = "SELECT min(extract(epoch FROM lease_until - clock_timestamp()))::float8 FROM tidemark.marks";
    // Each `_bulk` answer is held 1.5 s, so the lease can be read while the batch ships.
    proxy.set(Faults { slow_answer: 1.0, delay_answer: Duration::from_millis(1500), ..Faults::on("_bulk") });
    for stalled in [false, true] {
        env.sql("UPDATE students SET age = age % 90 + 1").await;
        let prepared = engine.prepare(engine.claim(100).await.unwrap()).await.unwrap();
        assert_eq!(prepared.marks.len(), 20);
        if stalled {
            // The step stalled between its claim and its sending: 5 s of its 60 s lease left.
            env.sql("UPDATE tidemark.marks SET lease_until = clock_timestamp() + interval '5 seconds'").await;
        }
        // A second between the read and the sending: a lease renewed at the sending would
        // then have more left than before it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before: f64 = sqlx::query_scalar(lease_left).fetch_one(&env.pool).await.unwrap();
        let shipping = tokio::spawn({
            let engine = engine.clone();
            async move { engine.deliver(prepared).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        let during: f64 = sqlx::query_scalar(lease_left).fetch_one(&env.pool).await.unwrap();
        if stalled {
            assert!(during > 55.0, "a lease running short is renewed before sending: {before:.1} s left, then {during:.1} s");
        } else {
            // A lease claimed a moment ago is only read (no row locked and rewritten).
            assert!(during < before && during > 55.0, "a fresh lease is left as the claim set it: {before:.1} s, then {during:.1} s");
        }
        let report = shipping.await.unwrap();
        assert_eq!((report.acked.cleared, report.acked.later), (20, 0), "{report:?}");
    }
    proxy.clear();
    env.assert_converged().await;
}

/// A student is updated and a batch ships it through `proxy`, whose first `_bulk` is held
/// for 3 s and then forwarded although the batch gave up on it; meanwhile the student is
/// deleted and the delete is indexed directly. Returns whether the student is back in the
/// index once the late write has landed.
async fn late_write_after_a_delete(env: &Env, proxy: &FaultProxy) -> bool {
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (1, 'Ann', 'Lee', 20, 'FR'), (2, 'Bo', 'Ray', 21, 'SO')").await;
    env.drain().await;
    env.sql("UPDATE students SET age = 30 WHERE id = 1").await;
    let late = env.engine_with(|c| {
        c.elasticsearch_url = Some(Secret::new(proxy.url()));
        c.sync.max_attempts = 1;
        c.sync.request_timeout = "1s".parse().unwrap();
        c.sync.batch_timeout = "1s".parse().unwrap();
    });
    proxy.set(Faults { slow: 1.0, delay: Duration::from_secs(3), ..Faults::on("_bulk") });
    let started = Instant::now();
    let report = late.step().await.unwrap().batch.expect("the update's batch");
    assert_eq!(report.acked.later, 1, "the held request timed out on the client");
    env.sql("DELETE FROM students WHERE id = 1").await;
    env.drain().await;
    assert_eq!(env.doc(1).await, None, "the delete is indexed");
    // Let the held request land (3 s after it was sent), with refreshes meanwhile: a
    // refresh is when the engine forgets tombstones older than gc_deletes.
    while started.elapsed() < Duration::from_millis(4500) {
        env.refresh().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    proxy.clear();
    assert!(proxy.stats().slowed >= 1);
    env.refresh().await;
    env.drain().await;
    env.doc(1).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hazard_an_engine_that_forgets_deletes_early_lets_a_late_write_bring_a_student_back() {
    let env = Env::new().await;
    let proxy = env.proxy().await;
    env.create_index().await;
    // An operator shortens the tombstone lifetime behind tidemark's back.
    env.es_json(reqwest::Method::PUT, &format!("/{}/_settings", env.alias), Some(json!({"index": {"gc_deletes": "1s"}}))).await;
    assert!(late_write_after_a_delete(&env, &proxy).await, "with gc_deletes 1s the late write resurrects the deleted student");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidemarks_indices_remember_deletes_longer_than_a_write_can_arrive_late() {
    let env = Env::new().await;
    let proxy = env.proxy().await;
    // An index template that would give every new index of this alias a 1 s tombstone
    // lifetime: tidemark sets its own on the indices it creates.
    let template = format!("{}-short-gc", env.alias);
    env.es_json(
        reqwest::Method::PUT,
        &format!("/_index_template/{template}"),
        Some(json!({"index_patterns": [format!("{}_*", env.alias)], "template": {"settings": {"index": {"gc_deletes": "1s"}}}})),
    )
    .await;
    env.create_index().await;
    let settings = env.es_json(reqwest::Method::GET, &format!("/{}/_settings?flat_settings=true", env.alias), None).await;
    let gc = settings.as_object().unwrap().values().next().unwrap()["settings"]["index.gc_deletes"].clone();
    assert_eq!(gc, json!("600000ms"), "tidemark's own gc_deletes (index.gc_deletes, 10 minutes by default)");
    let back = late_write_after_a_delete(&env, &proxy).await;
    assert!(!back, "the late write is refused (409): the deleted student stays deleted");
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_lifetime_shorter_than_a_batch_can_take_is_refused_by_the_configuration() {
    let mut c = tidemark::config::Config::default();
    c.index.gc_deletes = "30s".parse().unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("index.gc_deletes") && err.contains("brings a deleted student back"), "{err}");
}

/// A queue table is often vacuumed while (nearly) empty, and its statistics then say it
/// holds no rows while a fan-out fills it with tens of thousands of marks. A renewal, an
/// acknowledgement or a release written as a join of the marks with their own locking sub-select was then planned
/// as a nested loop that scanned the batch's keys again for every mark: minutes of CPU in
/// both workers during a big fan-out (BENCHMARKS.md §8), while the leases ran out. Each
/// statement must lock its rows once, whatever the statistics say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_acknowledging_and_releasing_a_big_batch_stay_quick_when_statistics_say_the_marks_are_empty() {
    use tidemark::pipeline::{
        acknowledge, claim,
        lease::{self, Held},
    };
    let env = Env::new().await;
    let owner = "worker-a#1";
    env.sql(&format!(
        "ALTER TABLE tidemark.marks SET (autovacuum_enabled = false);
         INSERT INTO tidemark.marks (key, seq, marked_at, lease_owner, lease_until)
              SELECT g::text, g, now(), '{owner}', now() FROM generate_series(1, 40000) g;
         -- What ANALYZE or VACUUM records for a table that was empty when they ran.
         UPDATE pg_class SET reltuples = 0, relpages = 1 WHERE oid = 'tidemark.marks'::regclass;"
    ))
    .await;
    let held: Vec<String> = (1..=20_000).map(|i| i.to_string()).collect();
    let services = env.services();
    // Each statement takes a fraction of a second when planned well; the nested loop took
    // minutes. The bound only tells a hang from an answer.
    let bound = Duration::from_secs(30);
    let lost = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let renewal = tokio::time::timeout(bound, lease::renew(&services, owner, Held::Marks(held.clone()), lost.clone()))
        .await
        .unwrap_or_else(|_| panic!("renewing 20,000 leases took longer than {bound:?}"));
    drop(renewal);
    assert!(!lost.is_cancelled(), "the owner still holds every mark it renewed");
    let renewed: i64 = sqlx::query_scalar("SELECT count(*) FROM tidemark.marks WHERE lease_until > now() + interval '30 seconds'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(renewed, 20_000, "the renewal extended exactly the held marks, by sync.lease (1 minute)");

    // Half of them acknowledged (written, under the numbers they were claimed with), the
    // other half given back.
    let (written, unwritten) = held.split_at(10_000);
    let marks: Vec<tidemark::pipeline::Mark> =
        written.iter().map(|k| tidemark::pipeline::Mark { key: k.clone(), seq: k.parse().unwrap() }).collect();
    let verdicts = written.iter().map(|k| (k.clone(), acknowledge::Verdict::Done)).collect();
    let acked = tokio::time::timeout(bound, acknowledge::acknowledge(&env.pool, owner, &marks, &verdicts))
        .await
        .unwrap_or_else(|_| panic!("acknowledging 10,000 marks took longer than {bound:?}"))
        .unwrap();
    assert_eq!(acked.cleared, 10_000);
    let released = tokio::time::timeout(bound, claim::release(&env.pool, owner, unwritten))
        .await
        .unwrap_or_else(|_| panic!("releasing 10,000 leases took longer than {bound:?}"))
        .unwrap();
    assert_eq!(released, 10_000);
    let all = tokio::time::timeout(bound, claim::release_all(&env.pool, "worker-a"))
        .await
        .unwrap_or_else(|_| panic!("releasing a process's 20,000 other leases took longer than {bound:?}"))
        .unwrap();
    assert_eq!(all, 20_000, "the other half, released as the worker stops");
    let (left, leased): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(lease_owner) FROM tidemark.marks").fetch_one(&env.pool).await.unwrap();
    assert_eq!((left, leased), (30_000, 0), "the acknowledged marks are gone, every other one is free to claim");
    eprintln!("renew, acknowledge, release and release_all of 40,000 marks: {:?}", started.elapsed());
}

//! Capture costs the writer no lock that other writers wait for (issue 16): no capturing
//! transaction notifies, and a change is still picked up at once — by the processes' watch
//! of the mark sequence, not by the scheduler's tick — even when its transaction commits
//! long after it marked. And an installation with the old capture upgrades in place.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use support::{eventually, small_directory, Env};

/// Every capture function, statically: none notifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_capture_function_notifies() {
    let env = Env::new().await;
    let notifying: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT p.oid::regprocedure::text
           FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
          WHERE NOT t.tgisinternal AND p.prosrc ILIKE '%notify%'
         UNION
         SELECT p.oid::regprocedure::text FROM pg_proc p
          WHERE p.pronamespace = 'tidemark'::regnamespace AND p.prosrc ILIKE '%notify%'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(notifying.is_empty(), "capture functions that notify: {notifying:?}");
    let triggers: i64 = env.scalar_i64("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'tidemark_%'").await;
    assert!(triggers >= 10, "the capture is installed: {triggers} triggers");
}

/// Dynamically: a session listening on the channel the capture used to notify receives
/// nothing while every kind of capturing write commits (and does receive a real NOTIFY, so
/// the check can fail). With the static check above, no capture function notifies on any
/// channel, so no writer takes the notification queue's lock at commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capturing_writes_send_no_notification() {
    let env = Env::with_directory().await;
    let mut listener = sqlx::postgres::PgListener::connect(&env.database_url).await.unwrap();
    listener.listen("tidemark_sync").await.unwrap();
    env.sql(
        "INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES (1, 'Ann', 'Lee', 20, 'FR', 1);
         INSERT INTO student_courses VALUES (1, 1);
         UPDATE students SET age = 21 WHERE id = 1;
         UPDATE universities SET name = 'MIT2' WHERE id = 1;
         UPDATE courses SET name = 'CS102' WHERE id = 1;
         INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N', 'L', 20, 'FR' FROM generate_series(2, 1500) g;
         UPDATE students SET age = 22;
         DELETE FROM student_courses;
         DELETE FROM students WHERE id > 1000;",
    )
    .await;
    for q in ["UPDATE students SET age = 23 WHERE id = 2", "DELETE FROM students WHERE id = 3", "TRUNCATE student_courses"] {
        env.sql(q).await;
    }
    assert!(env.outstanding().await > 0, "the writes were captured");
    let got = tokio::time::timeout(Duration::from_millis(1500), listener.recv()).await;
    assert!(got.is_err(), "a capturing write notified: {got:?}");
    // The probe works: a real NOTIFY arrives.
    env.sql("NOTIFY tidemark_sync").await;
    let got = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(matches!(got, Ok(Ok(_))), "a real NOTIFY is received: {got:?}");
}

/// With the scheduler ticking every 10 minutes, a worker picks a change up within a second:
/// the watch of the sequence wakes it. A transaction that marks and commits seconds later is
/// picked up at its commit, not at the next tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_picked_up_at_once_without_a_notification_or_a_tick() {
    let env = Env::with_directory().await;
    env.create_index().await;
    let debug = |c: &mut std::process::Command| {
        c.env("RUST_LOG", "info,tidemark::process::wakeup=debug");
    };
    let mut worker = env.spawn(&["worker"], debug);
    let mut scheduler = env.spawn(&["scheduler", "--interval", "10m"], debug);
    // Both processes are up and idle (the start's own nudge is spent).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 1..=3 {
        let start = Instant::now();
        env.sql(&format!("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES ({i}, 'Ann', 'Lee', 20, 'FR')"))
            .await;
        eventually("the insert is indexed", Duration::from_secs(8), || async {
            env.scalar_i64(&format!("SELECT count(DISTINCT key) FROM tidemark.outstanding WHERE key = '{i}'")).await == 0
        })
        .await;
        eprintln!("insert {i}: acknowledged {:?} after its commit", start.elapsed());
    }
    // A transaction that marks, then works on for 3 s before it commits.
    let mut long = sqlx::PgConnection::connect(&env.database_url).await.unwrap();
    sqlx::raw_sql("BEGIN; UPDATE students SET last_name = 'Late' WHERE id = 2").execute(&mut long).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    sqlx::raw_sql("COMMIT").execute(&mut long).await.unwrap();
    let committed = Instant::now();
    eventually("the late commit is indexed", Duration::from_secs(8), || async { env.outstanding().await == 0 }).await;
    let took = committed.elapsed();
    eprintln!("late commit acknowledged {took:?} after it committed");
    env.refresh().await;
    assert_eq!(env.doc(2).await.unwrap()["last_name"], json!("Late"));
    assert!(worker.terminate().success(), "{}", worker.output());
    assert!(scheduler.terminate().success(), "{}", scheduler.output());
}

/// `tidemark migrate` on a database with the capture of before issue 16 (which notified)
/// and marks outstanding moves to the new capture without losing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_with_the_old_capture_and_outstanding_marks_upgrades_without_losing_one() {
    let env = Env::before_migration(9).await;
    small_directory(&env).await;
    env.add_students_at(3000, "1 + g % 2").await;
    env.sql("INSERT INTO student_courses SELECT g, 1 FROM generate_series(1, 3000, 3) g").await;
    env.sql("UPDATE universities SET name = 'MIT (old capture)' WHERE id = 1").await;
    env.sql("UPDATE students SET age = 30 WHERE id <= 10").await;
    let outstanding =
        env.scalar_i64("SELECT (SELECT count(*) FROM tidemark.dirty_students) + (SELECT count(*) FROM tidemark.dirty_parents)").await;
    assert!(outstanding > 0, "marks wait from the old capture");
    let old: Vec<String> = sqlx::query_scalar(
        "SELECT proname::text FROM pg_proc WHERE pronamespace = 'tidemark'::regnamespace AND prosrc ILIKE '%pg_notify%'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(!old.is_empty(), "the old capture notifies");
    env.run(&["migrate"]).expect_ok();
    // Writes after the upgrade, through the new capture.
    env.sql("UPDATE students SET last_name = 'After' WHERE id IN (5, 2500); DELETE FROM students WHERE id = 2999").await;
    env.drain().await;
    env.assert_converged().await;
    assert_eq!(env.doc(1).await.unwrap()["university"]["name"], json!("KPI"));
    assert_eq!(env.doc(2).await.unwrap()["university"]["name"], json!("MIT (old capture)"));
}

/// PL/pgSQL keeps the plan a capture function made on a connection's first run: planned for
/// a one-row statement, a join of old and new rows must not become a nested loop that a
/// 20,000-row UPDATE on the same connection then runs in quadratic time (it took minutes),
/// nor a plan made for a large statement be compiled again at every later one-row UPDATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_update_after_small_ones_on_one_connection_is_not_quadratic() {
    use sqlx::Connection;
    let env = Env::with_directory().await;
    env.add_students(20_000).await;
    let mut app = sqlx::PgConnection::connect(&env.database_url).await.unwrap();
    for id in 1..=20 {
        sqlx::query("UPDATE students SET age = age % 90 + 2 WHERE id = $1").bind(id).execute(&mut app).await.unwrap();
    }
    // A bound far above the second it takes, far below what a nested loop takes.
    sqlx::raw_sql("SET statement_timeout = '20s'").execute(&mut app).await.unwrap();
    let r = sqlx::query("UPDATE students SET age = age % 90 + 1").execute(&mut app).await;
    assert!(r.is_ok(), "a 20,000-row UPDATE after one-row ones on the same connection: {r:?}");
    assert_eq!(env.outstanding().await, 20_000);
    // And a one-row UPDATE after the large one is not compiled by JIT each time.
    let jit: Vec<String> = sqlx::query_scalar("SELECT p.proconfig::text FROM pg_proc p WHERE p.proname = 'capture_students_update'")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(jit.iter().all(|c| c.contains("jit=off")), "the capture runs without JIT: {jit:?}");
}

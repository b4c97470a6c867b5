//! The core: every kind of write reaches the index as exactly the document docs/design.md shows,
//! against real PostgreSQL and OpenSearch.

mod support;

use std::{collections::HashSet, time::Duration};

use serde_json::json;
use support::{small_directory, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_write_reaches_the_index_exactly() {
    let env = Env::with_directory().await;
    // Insert, with enrollments.
    env.sql(
        "INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id)
         VALUES (1, 'Ann', 'Lee', 20, 'FR', 1), (2, 'Bob', 'Ray', 22, 'SO', 2), (3, 'Cy', 'Oz', 30, 'SR', NULL);
         INSERT INTO student_courses VALUES (1, 2), (1, 1), (2, 1);",
    )
    .await;
    env.drain_and_refresh().await;
    assert_eq!(
        env.doc(1).await.unwrap(),
        json!({"first_name": "Ann", "last_name": "Lee", "age": 20, "year_in_school": "FR",
               "university": {"id": 1, "name": "MIT"}, "course_names": ["CS101", "MATH201"],
               "name_complete": {"input": ["Ann", "Lee", "Ann Lee"]}, "id": 1})
    );
    assert_eq!(env.doc(3).await.unwrap()["university"], json!(null));
    assert_eq!(env.doc(3).await.unwrap()["course_names"], json!([]));
    env.assert_converged().await;

    // Update.
    env.sql("UPDATE students SET first_name = 'Anna', age = 21 WHERE id = 1").await;
    env.drain_and_refresh().await;
    let d = env.doc(1).await.unwrap();
    assert_eq!((d["first_name"].clone(), d["age"].clone()), (json!("Anna"), json!(21)));
    assert_eq!(d["name_complete"]["input"], json!(["Anna", "Lee", "Anna Lee"]));

    // Enrollment added and removed.
    env.sql("INSERT INTO student_courses VALUES (3, 2); DELETE FROM student_courses WHERE student_id = 1 AND course_id = 1").await;
    env.drain_and_refresh().await;
    assert_eq!(env.doc(3).await.unwrap()["course_names"], json!(["MATH201"]));
    assert_eq!(env.doc(1).await.unwrap()["course_names"], json!(["MATH201"]));

    // University renamed: one row for the writer, every student of it re-indexed.
    env.sql("UPDATE universities SET name = 'Massachusetts Institute of Technology' WHERE id = 1").await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.parents").await, 1);
    assert_eq!(env.outstanding().await, 0, "a rename marks only the university");
    let r = env.drain().await;
    assert_eq!(r.fanned_out, 1);
    env.refresh().await;
    assert_eq!(env.doc(1).await.unwrap()["university"]["name"], json!("Massachusetts Institute of Technology"));

    // Course renamed.
    env.sql("UPDATE courses SET name = 'ALG201' WHERE id = 2").await;
    env.drain_and_refresh().await;
    assert_eq!(env.doc(1).await.unwrap()["course_names"], json!(["ALG201"]));
    assert_eq!(env.doc(3).await.unwrap()["course_names"], json!(["ALG201"]));

    // University deleted: its students' university becomes null.
    env.sql("DELETE FROM universities WHERE id = 2").await;
    env.drain_and_refresh().await;
    assert_eq!(env.doc(2).await.unwrap()["university"], json!(null));

    // Course deleted: it leaves its students' course lists.
    env.sql("DELETE FROM courses WHERE id = 1").await;
    env.drain_and_refresh().await;
    assert_eq!(env.doc(2).await.unwrap()["course_names"], json!([]));

    // Student deleted: the document goes.
    env.sql("DELETE FROM students WHERE id = 3").await;
    env.drain_and_refresh().await;
    assert_eq!(env.doc(3).await, None);

    env.assert_converged().await;
    assert_eq!(env.outstanding().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noop_update_marks_nothing_and_many_writes_coalesce() {
    let env = Env::with_directory().await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (1, 'Ann', 'Lee', 20, 'FR')").await;
    env.drain().await;
    env.sql("UPDATE students SET age = age, first_name = first_name").await;
    assert_eq!(env.outstanding().await, 0);
    env.sql("UPDATE universities SET name = name").await;
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT kind, key FROM tidemark.parents").fetch_all(&env.pool).await.unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    for age in 21..71 {
        env.sql(&format!("UPDATE students SET age = {age} WHERE id = 1")).await;
    }
    // 50 writes are 50 rows of the writers' log, one student outstanding; moved into the
    // marks they coalesce into one.
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.changes").await, 50);
    assert_eq!(env.outstanding().await, 1);
    env.absorb().await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.marks").await, 1, "50 writes, one mark");
    let r = env.drain().await;
    assert_eq!(r.indexed, 1, "50 writes, one index op");
    env.refresh().await;
    assert_eq!(env.doc(1).await.unwrap()["age"], json!(70));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_row_updates_mark_what_changed_including_a_changed_id() {
    // What the capture logs for one-row updates, and how the log becomes marks: a later
    // write renumbers the mark, a changed id marks both sides.
    let env = Env::with_directory().await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (1, 'Ann', 'Lee', 20, 'FR'), (2, 'Bo', 'Kim', 21, 'SO')").await;
    env.drain().await;
    env.sql("UPDATE students SET last_name = 'Fast' WHERE id = 1").await;
    assert_eq!(env.absorb().await, 1, "one log row");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.marks WHERE key = '1'").await, 1);
    let seq_before: i64 = env.scalar_i64("SELECT seq FROM tidemark.marks WHERE key = '1'").await;
    // Twice in one transaction: two log rows, one mark, renumbered.
    env.sql("BEGIN; UPDATE students SET age = 30 WHERE id = 1; UPDATE students SET age = 31 WHERE id = 1; COMMIT;").await;
    assert_eq!(env.absorb().await, 2);
    let seq_after: i64 = env.scalar_i64("SELECT seq FROM tidemark.marks WHERE key = '1'").await;
    assert!(seq_after > seq_before, "a later write renumbers the mark");
    // A changed id: the old document must go and the new one come.
    env.sql("UPDATE students SET id = 2002 WHERE id = 2").await;
    env.absorb().await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM tidemark.marks WHERE key IN ('2', '2002')").await,
        2,
        "both sides of an id change are marked"
    );
    env.drain_and_refresh().await;
    assert!(env.doc(2).await.is_none());
    assert_eq!(env.doc(2002).await.unwrap()["last_name"], json!("Kim"));
    let one = env.doc(1).await.unwrap();
    assert_eq!((one["last_name"].clone(), one["age"].clone()), (json!("Fast"), json!(31)));
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_update_of_100k_rows_is_fully_reflected() {
    let env = Env::seeded_with(100_000, |c| c.sync.batch_size = 5000).await;
    assert_eq!(env.count(json!({"match_all": {}})).await, 100_000);

    // One statement, 100k rows: one trigger run drawing one number, one narrow log row per
    // student (no unique index, nothing locked), moved into marks by the workers in chunks.
    env.sql("UPDATE students SET age = 99").await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.marks").await, 0);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.parents").await, 0);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.changes").await, 100_000);
    assert_eq!(env.scalar_i64("SELECT count(DISTINCT seq) FROM tidemark.changes").await, 1, "one number for the statement");
    let r = env.drain().await;
    assert_eq!(r.indexed, 100_000);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.changes").await, 0);
    assert_eq!(env.count(json!({"term": {"age": 99}})).await, 100_000);
    // Spot-check whole documents against the independent oracle.
    let expected = env.expected_docs().await;
    for id in [1_i64, 777, 50_000, 99_999, 100_000] {
        assert_eq!(env.doc(id).await.as_ref(), expected.get(&id), "student {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_students_expands_in_chunks_and_its_expansion_survives_a_crash() {
    // A set row (what `mark_students` writes for many students at once: a rollback marks
    // every student so) is expanded into marks by the workers, a chunk at a time, resuming
    // at its cursor after a crash.
    let env = Env::with_config(|c| c.sync.fanout_chunk = 1000).await;
    small_directory(&env).await;
    env.add_students_at(2500, "1").await;
    env.drain().await;
    env.assert_converged().await;
    env.sql("ALTER TABLE students DISABLE TRIGGER USER; UPDATE students SET age = 22; ALTER TABLE students ENABLE TRIGGER USER").await;
    env.sql("SELECT tidemark.mark_keys(ARRAY(SELECT id::text FROM students WHERE id > 100 ORDER BY id))").await;
    assert_eq!(env.scalar_i64("SELECT cardinality(ids)::int8 FROM tidemark.parents WHERE kind = 'keys'").await, 2400);
    let status = env.status().await;
    assert_eq!((status.pending_statement_students, status.pending_fanouts), (2400, 0));

    // A worker expands one chunk, then dies: its lease runs out, another resumes at the cursor.
    assert_eq!(env.expand_a_chunk_and_die(1000).await, tidemark::pipeline::fanout::Step::Marked(1000));
    assert_eq!(env.scalar_i64("SELECT position::int8 FROM tidemark.parents").await, 1000);
    let status = env.status().await;
    assert_eq!(status.pending_statement_students, 1400);
    // Meanwhile a small write lands on a student of the set.
    env.sql("UPDATE students SET last_name = 'Later' WHERE id = 2000").await;
    env.sql("UPDATE tidemark.parents SET lease_until = now() - interval '1 second'").await;
    let r = env.drain().await;
    assert_eq!(r.fanned_out, 1400, "the expansion resumed after the 1,000 already marked");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.parents").await, 0);
    // The 100 students outside the set were not marked, so they still show age 20.
    assert_eq!(env.count(json!({"term": {"age": 22}})).await, 2400);
    assert_eq!(env.count(json!({"term": {"age": 20}})).await, 100);
    env.sql("SELECT tidemark.mark_keys(ARRAY(SELECT id::text FROM students WHERE id <= 100))").await;
    env.drain().await;
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_statements_and_multi_statement_transactions_index_each_student_once() {
    let env = Env::with_directory().await;
    env.create_index().await;
    // A large INSERT, UPDATE and DELETE: one trigger run each, one number each.
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'M' || g, 'K', 30, 'SO' FROM generate_series(1, 3000) g").await;
    env.sql("UPDATE students SET age = 31 WHERE id > 1000").await;
    env.sql("DELETE FROM students WHERE id > 2500").await;
    assert_eq!(env.scalar_i64("SELECT count(DISTINCT seq) FROM tidemark.changes").await, 3);
    assert_eq!(env.scalar_i64("SELECT count(DISTINCT key) FROM tidemark.changes").await, 3000);
    let r = env.drain().await;
    assert_eq!((r.indexed, r.deleted), (2500, 500), "each student once, however many of its changes were logged");
    env.assert_converged().await;
    // Students, then their enrollments, in one transaction: each student indexed once.
    env.sql(
        "BEGIN;
         INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'E' || g, 'J', 40, 'JR' FROM generate_series(10001, 11500) g;
         INSERT INTO student_courses SELECT g, 1 FROM generate_series(10001, 11500) g;
         COMMIT;",
    )
    .await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.changes").await, 3000);
    let r = env.drain().await;
    assert_eq!(r.indexed, 1500, "each student once");
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_never_hold_the_same_mark_and_together_converge() {
    let env = Env::new().await;
    env.create_index().await;
    env.seed(3_000).await;
    // Mark the seed's students directly (not through the writers' log, which the claims
    // would move into marks first), so the claims below have exactly these marks to take.
    env.sql("DELETE FROM tidemark.changes; SELECT tidemark.mark_now(ARRAY(SELECT id::text FROM students))").await;
    let a = env.engine();
    let b = env.engine();
    // Concurrent claims never overlap while their leases run.
    let (ca, cb) = tokio::join!(a.claim(1000), b.claim(1000));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(ca.len() + cb.len(), 2000);
    let sa: HashSet<String> = ca.iter().map(|m| m.key.clone()).collect();
    assert!(cb.iter().all(|m| !sa.contains(&m.key)), "two workers claimed the same mark");
    // A third claim while those leases are held sees only the rest.
    let rest = env.engine().claim(5000).await.unwrap();
    assert_eq!(rest.len(), 1000);
    assert!(rest.iter().all(|m| !sa.contains(&m.key)));
    for (e, marks) in [(&a, ca), (&b, cb)] {
        let p = e.prepare(marks).await.unwrap();
        e.deliver(p).await.unwrap();
    }
    // The third claim's owner vanished (crash): its leases must run out before anyone
    // else takes them; with a short lease they come back.
    sqlx::query("UPDATE tidemark.marks SET lease_until = now() - interval '1 second'").execute(&env.pool).await.unwrap();

    // Both drain concurrently while a writer keeps changing rows.
    let writer = async {
        for i in 0..20 {
            env.sql(&format!("UPDATE students SET age = 1 + (id + {i}) % 100 WHERE id % 50 = {i}")).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let (ra, rb, ()) = tokio::join!(a.drain(), b.drain(), writer);
    ra.unwrap();
    rb.unwrap();
    a.drain().await.unwrap();
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_while_its_batch_is_in_flight_is_indexed_afterwards() {
    let env = Env::new().await;
    env.create_index().await;
    small_directory(&env).await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES (1, 'Ann', 'Lee', 20, 'FR', 1)")
        .await;
    let engine = env.engine();
    let marks = engine.claim(10).await.unwrap();
    assert_eq!(marks.len(), 1);
    let prepared = engine.prepare(marks).await.unwrap();
    // Held between load and acknowledge: a change commits now.
    env.sql("UPDATE students SET age = 33 WHERE id = 1").await;
    let report = engine.deliver(prepared).await.unwrap();
    // The change is in the writers' log: the batch's mark is cleared, the change is not.
    assert_eq!(report.acked.cleared, 1);
    assert_eq!(env.outstanding().await, 1, "the change made in flight stays");
    env.refresh().await;
    assert_eq!(env.doc(1).await.unwrap()["age"], json!(20), "the batch wrote what it read");
    engine.drain().await.unwrap();
    env.refresh().await;
    assert_eq!(env.doc(1).await.unwrap()["age"], json!(33));
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_write_never_overwrites_a_newer_one() {
    // Two processings of one student: the one that drew its version later wins, whatever
    // order their bulk requests arrive in (409 → superseded, not an error).
    let env = Env::new().await;
    env.create_index().await;
    small_directory(&env).await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (1, 'Ann', 'Lee', 20, 'FR')").await;
    let old = env.engine();
    let marks = old.claim(10).await.unwrap();
    let stale = old.prepare(marks).await.unwrap();
    env.sql("UPDATE students SET age = 44 WHERE id = 1").await;
    // Lease of the first claim blocks a second claim; simulate its expiry.
    env.sql("UPDATE tidemark.marks SET lease_until = now() - interval '1 second'").await;
    let new = env.engine();
    let fresh = new.prepare(new.claim(10).await.unwrap()).await.unwrap();
    assert!(fresh.version > stale.version);
    new.deliver(fresh).await.unwrap();
    // The older processing's request arrives late (a request the server ran after its
    // client gave up, say): the engine keeps the newer write, and says 409.
    let encoded = tidemark::pipeline::encode::encode(&stale.docs, &stale.targets.indices, stale.version);
    let limits = tidemark::pipeline::ship::ShipLimits::from_config(&env.config.sync);
    let window = tidemark::pipeline::ship::Window::of(Duration::from_secs(30));
    let shipped = tidemark::pipeline::ship::ship(&env.search, &encoded, limits, &window).await.unwrap();
    assert_eq!(shipped.outcomes, vec![Some(tidemark::pipeline::classify::ItemOutcome::Superseded)], "a 409 is superseded, not a failure");
    // Through the pipeline the older batch does not even send: its lease was lost.
    let late = old.deliver(stale).await.unwrap();
    assert_eq!((late.acked.cleared, late.requests), (0, 0), "{late:?}");
    env.refresh().await;
    assert_eq!(env.doc(1).await.unwrap()["age"], json!(44));
}

/// A writer's transaction that marks students in an order the fan-out cannot follow (one
/// statement marks a high id, a later one a low id the fan-out already marked) deadlocks
/// with the fan-out; PostgreSQL aborts one of them. The fan-out's chunk is then simply
/// done again — it must not fail the step, let alone lose the rename.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_that_deadlocks_with_a_writer_is_done_again_not_failed() {
    let env = Env::seeded(400).await;
    let (lo, hi) = {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM students WHERE university_id = 1 ORDER BY id").fetch_all(&env.pool).await.unwrap();
        assert!(ids.len() >= 2, "university 1 has students");
        (ids[0], ids[ids.len() - 1])
    };
    // The writer marks the university's last student and holds its transaction open.
    let mut writer = env.pool.begin().await.unwrap();
    sqlx::query("UPDATE students SET age = 1 + age % 99 WHERE id = $1").bind(hi).execute(&mut *writer).await.unwrap();
    env.sql("UPDATE universities SET name = 'Deadlock University' WHERE id = 1").await;
    // The fan-out marks the university's students in id order, and waits at `hi`.
    let engine = env.engine();
    let step = tokio::spawn(async move { engine.step().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The writer now needs `lo`, which the waiting fan-out holds: a deadlock.
    sqlx::query("UPDATE students SET age = 1 + age % 99 WHERE id = $1").bind(lo).execute(&mut *writer).await.unwrap();
    writer.commit().await.unwrap();
    let report = step.await.unwrap();
    assert!(report.is_ok(), "the step failed: {report:?}");
    env.drain().await;
    let renamed = env.count(json!({"term": {"university.name": "Deadlock University"}})).await;
    let students = env.scalar_i64("SELECT count(*) FROM students WHERE university_id = 1").await as u64;
    assert_eq!(renamed, students);
    env.assert_converged().await;
}

/// Rule 17 (docs/protocol.md): a change moved from the writers' log into a mark that a batch
/// has claimed renumbers it, whether its number is higher or lower than the claimed one; the
/// batch's acknowledgement then leaves the mark and the change is indexed afterwards. Lower:
/// a transaction that drew its number before the claimed change, and committed after the
/// batch had read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_moved_into_a_claimed_mark_is_indexed_afterwards_even_with_a_lower_number() {
    use sqlx::Connection;
    let env = Env::new().await;
    env.create_index().await;
    small_directory(&env).await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES (1, 'Ann', 'Lee', 20, 'FR', 1)")
        .await;
    env.drain().await;
    // An enrollment drawn first, committed last.
    let mut late = sqlx::PgConnection::connect(&env.database_url).await.unwrap();
    sqlx::raw_sql("BEGIN; INSERT INTO student_courses VALUES (1, 1)").execute(&mut late).await.unwrap();
    env.sql("UPDATE students SET age = 33 WHERE id = 1").await;
    let engine = env.engine();
    let marks = engine.claim(10).await.unwrap();
    assert_eq!(marks.len(), 1);
    let claimed = marks[0].seq;
    let prepared = engine.prepare(marks).await.unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut late).await.unwrap();
    assert_eq!(env.absorb().await, 1, "another worker moves the late change into the claimed mark");
    let now: i64 = env.scalar_i64("SELECT seq FROM tidemark.marks WHERE key = '1'").await;
    assert!(now < claimed, "the late change carries the lower number ({now} < {claimed})");
    let report = engine.deliver(prepared).await.unwrap();
    assert_eq!(report.acked.changed_in_flight, 1, "the renumbered mark stays");
    env.refresh().await;
    assert_eq!(env.doc(1).await.unwrap()["course_names"], json!([]), "the batch wrote what it read");
    engine.drain().await.unwrap();
    env.refresh().await;
    assert_eq!(env.doc(1).await.unwrap()["course_names"], json!(["CS101"]));
    env.assert_converged().await;
}

/// Keys travel as text, but a fan-out pages through a university's students in the order
/// of their ids, not of their text (`"10" < "9"`): with chunks of 7 over ids of one, two and
/// three digits, every student of a renamed university is reached exactly once, and
/// `admin verify --full` pages through the table without counting a row twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_and_a_full_verify_page_in_key_order_across_digit_lengths() {
    let env = Env::with_config(|c| c.sync.fanout_chunk = 7).await;
    small_directory(&env).await;
    env.add_students_at(250, "1 + (g % 2)").await;
    env.drain().await;
    env.sql("UPDATE universities SET name = 'Renamed' WHERE id = 1").await;
    env.drain().await;
    assert_eq!(env.count(json!({"term": {"university.name": "Renamed"}})).await, 125);
    env.assert_converged().await;
    let out = env.run(&["admin", "verify", "--full", "--json"]);
    assert!(out.ok(), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["checked"], json!(250), "{report}");
}

/// Many small parent changes (here 150 universities' marks, as many moved samples make for
/// refinebio) are expanded a hundred to a step, not one: a step that marks few documents
/// goes on to the next parent, so they drain in a few steps rather than 150.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_expands_many_small_parents_not_one() {
    let env = Env::with_directory().await;
    env.add_students_at(10, "1").await;
    env.drain().await;
    env.sql("SELECT tidemark.mark_parents('university', ARRAY(SELECT g::text FROM generate_series(1, 150) g))").await;
    let engine = env.engine();
    let first = engine.step().await.unwrap();
    assert_eq!(first.expanded, tidemark::sync::MAX_PARENTS_PER_STEP, "{first:?}");
    let second = engine.step().await.unwrap();
    assert_eq!(second.expanded, 50, "{second:?}");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.parents").await, 0);
    env.drain().await;
    env.assert_converged().await;
}

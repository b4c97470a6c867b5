//! Zero-downtime full reindex, against real PostgreSQL, Redis and OpenSearch.

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;
use support::{eventually, foreign::ForeignIndex, Env};
use tidemark::{catalog::BuildState, reindex};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reindex_under_concurrent_writes_equals_the_database_and_searches_never_see_less() {
    // The first run builds generation 1 from the database.
    let env = Env::seeded_with(50_000, |c| {
        c.sync.batch_size = 2000;
        c.reindex.chunk_size = 2500;
    })
    .await;
    assert_eq!(env.alias_targets().await, vec![env.generation(1)]);
    let students = env.scalar_i64("SELECT count(*) FROM students").await as u64;
    assert_eq!(env.count(json!({"match_all": {}})).await, students);

    let build = env.start_reindex(2500).await;
    assert_eq!(build.target_index, env.generation(2));

    // A reader polls the alias the whole time.
    let done = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let reader = {
        let (done, polls, url, alias) = (done.clone(), polls.clone(), env.es_url.clone(), env.alias.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !done.load(Ordering::Relaxed) {
                let r = http.get(format!("{url}/{alias}/_count")).send().await.unwrap();
                assert_eq!(r.status(), 200, "the alias vanished during the reindex");
                let n = r.json::<serde_json::Value>().await.unwrap()["count"].as_u64().unwrap();
                assert!(n >= students, "a search saw {n} documents, the database holds {students}");
                polls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    // Writers change a few thousand students while two workers rebuild.
    let writer = async {
        for i in 0..40 {
            env.sql(&format!(
                "UPDATE students SET age = 1 + (age + {i}) % 100 WHERE id % 997 = {i};
                 UPDATE students SET last_name = 'W{i}' WHERE id BETWEEN {a} AND {b};
                 INSERT INTO student_courses SELECT id, 1 FROM students WHERE id % 1009 = {i} ON CONFLICT DO NOTHING;",
                a = 1 + i * 50,
                b = 40 + i * 50
            ))
            .await;
            if i == 20 {
                env.sql("UPDATE universities SET name = 'Renamed During Reindex' WHERE id = 2").await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let (a, b) = (env.engine(), env.engine());
    let (ra, rb, ()) = tokio::join!(a.drain(), b.drain(), writer);
    ra.unwrap();
    rb.unwrap();
    env.drain().await;
    done.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    assert!(polls.load(Ordering::Relaxed) > 20, "the reader polled throughout");

    let build = env.build(build.id).await;
    assert_eq!(build.state, BuildState::Done, "{:?}", build.message);
    assert_eq!(env.alias_targets().await, vec![env.generation(2)]);
    assert!(env.search.index_exists(&env.generation(1)).await.unwrap(), "the previous index is kept for rollback");
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_reindex_and_a_redis_flush_then_resume_complete_the_build() {
    let env = Env::seeded(20_000).await;
    env.run(&["admin", "reindex", "--chunk-size", "500"]).expect_ok();
    let build = tidemark::catalog::active(&env.pool, &env.alias).await.unwrap().expect("a build runs");
    assert_eq!(build.chunks_total, 40);

    let mut worker = env.spawn(&["worker", "--concurrency", "2"], |_| {});
    eventually("some chunks are done", Duration::from_secs(60), || async { env.build(build.id).await.chunks_done >= 6 }).await;
    worker.kill();
    let before = env.build(build.id).await;
    assert!(before.chunks_done < before.chunks_total, "killed mid-build");
    // The queue is lost too.
    env.flush_redis().await;

    let out = env.run(&["admin", "reindex", "--resume"]);
    assert!(out.ok() && out.stdout.contains("resumed"), "{out:?}");
    let after = env.build(build.id).await;
    assert!(after.chunks_done >= before.chunks_done, "progress survived: no restart from zero");
    let mut worker = env.spawn(&["worker", "--concurrency", "2"], |_| {});
    // A second request is refused while one runs.
    let out = env.run(&["admin", "reindex", "--wait"]);
    assert!(!out.ok() && out.stderr.contains("already running"), "{out:?}");
    eventually("the build is promoted", Duration::from_secs(120), || async { env.build(build.id).await.state == BuildState::Done }).await;
    worker.terminate();
    assert_eq!(env.alias_targets().await, vec![env.generation(2)]);
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_wait_shows_progress_and_a_summary_and_rollback_restores_the_previous_index() {
    let env = Env::seeded(3_000).await;
    let mut worker = env.spawn(&["worker"], |_| {});
    let out = env.run(&["admin", "reindex", "--wait", "--chunk-size", "300"]);
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(out.ok(), "{stderr}");
    assert!(stderr.contains("/3000 documents") && stderr.contains("docs/s") && stderr.contains("ETA"), "{stderr}");
    assert!(stdout.contains("done") && stdout.contains(&env.generation(2)) && stdout.contains("kept for"), "{stdout}");
    let status = env.run(&["admin", "status"]);
    assert!(status.stdout.contains("done"), "{status:?}");

    // A change after the swap, then roll back: the previous index serves again and
    // catches up with what changed while it was not live.
    env.sql("UPDATE students SET last_name = 'AfterSwap' WHERE id = 7").await;
    eventually("the change is searchable", Duration::from_secs(20), || async {
        env.doc(7).await.is_some_and(|d| d["last_name"] == json!("AfterSwap"))
    })
    .await;
    env.run(&["admin", "rollback"]).expect_ok();
    assert_eq!(env.alias_targets().await, vec![env.generation(1)]);
    eventually("the restored index caught up", Duration::from_secs(60), || env.synced()).await;
    env.refresh().await;
    assert_eq!(env.doc(7).await.unwrap()["last_name"], json!("AfterSwap"));
    worker.terminate();
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_abandons_a_build_and_deletes_its_index() {
    let env = Env::seeded(1_000).await;
    let build = env.start_reindex(100).await;
    assert!(env.search.index_exists(&build.target_index).await.unwrap());
    env.run(&["admin", "reindex", "--cancel"]).expect_ok();
    assert!(!env.search.index_exists(&build.target_index).await.unwrap());
    assert_eq!(env.alias_targets().await, vec![env.generation(1)]);
    let out = env.run(&["admin", "reindex", "--cancel"]);
    assert!(!out.ok() && out.stderr.contains("no reindex"), "{out:?}");
    // Syncing goes on against the live index.
    env.sql("UPDATE students SET age = 42 WHERE id = 1").await;
    env.drain().await;
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_fails_verification_leaves_the_alias_and_says_why() {
    let env = Env::with_directory().await;
    env.add_students(20).await;
    env.drain().await;
    // A row edited to a value no index accepts (completion inputs refuse U+001F).
    env.sql("UPDATE students SET first_name = E'Bad\\x1Fname' WHERE id = 3").await;
    env.drain().await;
    let build = env.start_reindex(5).await;
    env.drain().await;
    let build = env.build(build.id).await;
    assert_eq!(build.state, BuildState::Failed);
    let why = build.message.unwrap();
    assert!(why.contains("holds 19 documents, the database 20") && why.contains("admin failed"), "{why}");
    assert_eq!(env.alias_targets().await, vec![env.generation(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_missing_edited_and_extra_documents_and_repair_fixes_them() {
    let env = Env::seeded(500).await;
    let index = env.generation(1);
    // Behind tidemark's back: one deleted, one edited, one extra.
    env.es_json(reqwest::Method::DELETE, &format!("/{index}/_doc/10"), None).await;
    let mut edited = env.doc(20).await.unwrap();
    edited["age"] = json!(99);
    edited["last_name"] = json!("Tampered");
    env.es_json(reqwest::Method::PUT, &format!("/{index}/_doc/20"), Some(edited)).await;
    let mut extra = env.doc(30).await.unwrap();
    extra["first_name"] = json!("Ghost");
    env.es_json(reqwest::Method::PUT, &format!("/{index}/_doc/999999"), Some(extra)).await;
    env.refresh().await;

    let out = env.run(&["admin", "verify", "--full", "--json"]);
    assert_eq!(out.code, Some(3), "differences make verify exit 3: {out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["missing"], json!(["10"]));
    assert_eq!(report["differing"], json!(["20"]));
    assert_eq!(report["extra"], json!(["999999"]));
    // A sample as large as the table finds them too.
    let out = env.run(&["admin", "verify", "--sample", "1000", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (report["missing"].clone(), report["differing"].clone(), report["extra"].clone()),
        (json!(["10"]), json!(["20"]), json!(["999999"]))
    );

    let out = env.run(&["admin", "verify", "--full", "--repair"]);
    // Differences were found (and re-marked, not yet fixed): that is not a clean exit.
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stdout.contains("re-marked 3 students;"), "{out:?}");
    env.drain().await;
    let out = env.run(&["admin", "verify", "--full"]);
    assert!(out.ok(), "{}", out.stdout);
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_index_behind_tidemarks_back_leads_to_a_self_healing_rebuild() {
    let env = Env::seeded(2_000).await;
    let mut worker = env.spawn(&["worker"], |_| {});
    let mut scheduler = env.spawn(&["scheduler", "--interval", "1s"], |_| {});
    env.es_json(reqwest::Method::DELETE, &format!("/{}", env.generation(1)), None).await;
    eventually("the alias is back", Duration::from_secs(90), || async { env.alias_targets().await == vec![env.generation(2)] }).await;
    assert!(worker.output().contains("does not exist"), "the worker says why it rebuilds:\n{}", worker.output());
    worker.terminate();
    scheduler.terminate();
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_100k_student_university_renamed_while_a_reindex_runs() {
    let env = Env::with_config(|c| {
        c.sync.batch_size = 5000;
        c.reindex.chunk_size = 10_000;
    })
    .await;
    env.seed(100_000).await;
    env.sql("UPDATE students SET university_id = 1").await;
    env.drain().await;
    assert_eq!(env.count(json!({"term": {"university.id": 1}})).await, 100_000);

    let build = env.start_reindex(10_000).await;
    let renamer = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let marks_before = env.outstanding().await;
        env.sql("UPDATE universities SET name = 'Renamed Mid-Reindex' WHERE id = 1").await;
        // O(1) for the writer: one parent mark, no student marks.
        assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.parents").await, 1);
        assert!(env.outstanding().await <= marks_before);
    };
    let (a, b) = (env.engine(), env.engine());
    let (ra, rb, ()) = tokio::join!(a.drain(), b.drain(), renamer);
    ra.unwrap();
    rb.unwrap();
    env.drain().await;
    assert_eq!(env.build(build.id).await.state, BuildState::Done);
    assert_eq!(env.alias_targets().await, vec![env.generation(2)]);
    assert_eq!(env.count(json!({"term": {"university.name": "Renamed Mid-Reindex"}})).await, 100_000);
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_rebuilds_the_index_from_what_is_left() {
    let env = Env::seeded(1_000).await;
    assert_eq!(env.count(json!({"match_all": {}})).await, 1_000);
    // TRUNCATE fires no row triggers: it requests a rebuild instead.
    env.sql("TRUNCATE student_courses; TRUNCATE students CASCADE;").await;
    env.sql("INSERT INTO students (first_name, last_name, age, year_in_school) VALUES ('After', 'Truncate', 20, 'FR')").await;
    env.drain().await;
    assert_eq!(env.alias_targets().await, vec![env.generation(2)]);
    assert_eq!(env.count(json!({"match_all": {}})).await, 1);
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_leases_exactly_what_it_returns() {
    // Regression: a `FROM (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` claim can be re-scanned
    // per row and lease everything, stalling every other worker until the leases run out.
    let env = Env::new().await;
    env.create_index().await;
    env.seed(1_000).await;
    // Mark the seed's students directly, so the claims below have exactly these marks to take.
    env.sql("DELETE FROM tidemark.changes; SELECT tidemark.mark_now(ARRAY(SELECT id::text FROM students))").await;
    let build = env.start_reindex(100).await;
    let engine = env.engine();
    let chunk = reindex::claim_chunk(&env.pool, build.id, engine.owner(), Duration::from_secs(60)).await.unwrap().unwrap();
    // The first chunk: open below (a student inserted with a smaller id is covered), up to the
    // 101st id (100 students).
    let hundred_first = env.scalar_i64("SELECT id FROM students ORDER BY id OFFSET 100 LIMIT 1").await;
    assert_eq!((chunk.lo, chunk.hi), (None, Some(hundred_first.to_string())));
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.reindex_chunks WHERE lease_owner IS NOT NULL").await, 1);
    let marks = engine.claim(7).await.unwrap();
    assert_eq!(marks.len(), 7);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.marks WHERE lease_owner IS NOT NULL").await, 7);
    env.sql("UPDATE universities SET name = name || '!' WHERE id IN (1, 2, 3)").await;
    assert!(tidemark::pipeline::fanout::claim_parent(&env.pool, engine.owner(), Duration::from_secs(60)).await.unwrap().is_some());
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.parents WHERE lease_owner IS NOT NULL").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_leaves_the_restored_index_equal_to_the_database_deletes_and_inserts_included() {
    let env = Env::seeded(1_000).await;
    env.start_reindex(300).await;
    env.drain().await;
    assert_eq!(env.alias_targets().await, vec![env.generation(2)]);
    // While the new index is live: five students deleted, two inserted, one changed.
    env.sql(
        "DELETE FROM student_courses WHERE student_id IN (11, 22, 33, 44, 55);
         DELETE FROM students WHERE id IN (11, 22, 33, 44, 55);
         INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (5001, 'New', 'One', 20, 'FR'), (5002, 'New', 'Two', 21, 'SO');
         UPDATE students SET last_name = 'Changed' WHERE id = 66;",
    )
    .await;
    env.drain().await;
    env.assert_converged().await;
    let (from, to) = reindex::rollback(&env.services()).await.unwrap();
    assert_eq!((from, to.clone()), (env.generation(2), env.generation(1)));
    env.drain().await;
    assert_eq!(env.alias_targets().await, vec![to]);
    // The restored index had never heard of the deletes: they are gone from it too.
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_tidemark_did_not_create_is_never_numbered_pruned_or_touched_and_rollback_keeps_working() {
    let env = Env::new().await;
    // A yearly archive under a name like tidemark's generations, there before tidemark.
    let archive = ForeignIndex::create(&env).await;
    env.seed(500).await;
    env.drain().await;
    assert_eq!(env.alias_targets().await, vec![env.generation(1)], "the first index is generation 1");
    for round in 0..2 {
        env.start_reindex(200).await;
        env.drain().await;
        let (_, to) = reindex::rollback(&env.services()).await.unwrap_or_else(|e| panic!("rollback {round}: {e}"));
        env.drain().await;
        assert_eq!(env.alias_targets().await, vec![to]);
        env.assert_converged().await;
    }
    // reindex → rollback → reindex → rollback: the rollback target was kept each time, and
    // the archive is untouched, without an alias of tidemark's.
    let ours = [env.alias.as_str(), &tidemark::catalog::build_alias(&env.alias)];
    assert_eq!(archive.problems(&env, &ours).await, Vec::<String>::new(), "the archive is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn students_inserted_while_a_reindex_starts_all_reach_the_promoted_index() {
    let env = Env::seeded(2_000).await;
    for round in 0..4 {
        let stop = Arc::new(AtomicBool::new(false));
        // Inserts at full speed, each its own transaction, ids above any chunk's plan.
        let inserter = {
            let (url, stop) = (env.database_url.clone(), stop.clone());
            tokio::spawn(async move {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                let mut id = 100_000 * (round + 1);
                while !stop.load(Ordering::Relaxed) {
                    sqlx::query(
                        "INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES ($1, 'In', 'Flight', 20, 'FR')",
                    )
                    .bind(id)
                    .execute(&pool)
                    .await
                    .unwrap();
                    id += 1;
                }
            })
        };
        // Steps run all the while, so some batches claim inserts while the build starts.
        let stepper = {
            let (syncer, stop) = (env.engine(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = syncer.step().await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        env.start_reindex(700).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        stop.store(true, Ordering::Relaxed);
        inserter.await.unwrap();
        stepper.await.unwrap();
        env.drain().await;
        let last = tidemark::catalog::latest(&env.pool, &env.alias).await.unwrap().unwrap();
        assert_eq!(last.state, BuildState::Done, "round {round}: {:?}", last.message);
        env.assert_converged().await;
    }
}

/// Writes every chunk of a running build, without finishing it.
async fn write_all_chunks(env: &Env, build: &tidemark::catalog::Build) {
    let services = env.services();
    while let Some(chunk) = reindex::claim_chunk(&env.pool, build.id, "test", Duration::from_secs(60)).await.unwrap() {
        assert!(reindex::process_chunk(&services, "test", build, &chunk).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_document_is_not_excused_by_unrelated_outstanding_changes_and_verification_ends() {
    let (env, proxy) = Env::behind_proxy(|c| c.reindex.verify_timeout = "15s".parse().unwrap()).await;
    env.seed(500).await;
    env.drain().await;
    let build = env.start_reindex(100).await;
    write_all_chunks(&env, &build).await;
    // One document goes missing from the new index; unrelated changes are outstanding.
    env.es_json(reqwest::Method::DELETE, &format!("/{}/_doc/42?refresh=true", build.target_index), None).await;
    env.sql("UPDATE students SET age = 1 + age % 99 WHERE id BETWEEN 100 AND 120").await;
    let services = env.services();
    let first = reindex::finish(&services, build.id).await.unwrap();
    assert!(matches!(&first, reindex::Finish::Waiting(why) if why.contains("explain")), "{first:?}");
    // Every step of every worker asks; verification runs once per attempt, not each time.
    let mgets_before = proxy.stats().forwarded;
    for _ in 0..30 {
        let again = reindex::finish(&services, build.id).await.unwrap();
        assert!(matches!(again, reindex::Finish::Waiting(_)), "{again:?}");
    }
    assert!(proxy.stats().forwarded - mgets_before <= 4, "verification ran again and again: {:?}", proxy.stats());
    // The wait is bounded: the build fails, saying why, and the alias never moved.
    let why = eventually("verification ends", Duration::from_secs(60), || async {
        match reindex::finish(&services, build.id).await.unwrap() {
            reindex::Finish::Failed(why) => Ok(why),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(why.contains("holds 499 documents") && why.contains("verify_timeout"), "{why}");
    assert_eq!(env.alias_targets().await, vec![env.generation(1)]);
    // Live sync went on meanwhile and goes on: a build that fails never holds it up.
    env.drain().await;
    env.sql("UPDATE students SET last_name = 'StillLive' WHERE id = 7").await;
    env.drain().await;
    assert_eq!(env.doc(7).await.unwrap()["last_name"], json!("StillLive"));
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_wait_with_no_worker_says_so_and_what_to_do() {
    let env = Env::seeded(300).await;
    let config = env.file("idle.toml", "[reindex]\nidle_wait = \"3s\"\n");
    let started = std::time::Instant::now();
    let out = env.run(&["--config", config.to_str().unwrap(), "admin", "reindex", "--wait"]);
    let err = &out.stderr;
    assert!(!out.ok(), "{err}");
    assert!(err.contains("no worker is alive") && err.contains("tidemark worker"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "it did not wait forever");
    // With a worker, --resume --wait follows the build to the end, with an honest rate.
    let mut worker = env.spawn(&["worker"], |_| {});
    env.run(&["admin", "reindex", "--resume", "--wait"]).expect_ok();
    worker.terminate();
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_replica_on_one_node_the_index_is_yellow_and_sync_and_reindex_work_without_waiting_for_green() {
    let env = Env::seeded_with(300, |c| {
        c.index.number_of_replicas = 1;
        c.index.refresh_interval = "500ms".parse().unwrap();
    })
    .await;
    env.start_reindex(100).await;
    env.drain().await;
    let index = env.generation(2);
    assert_eq!(env.alias_targets().await, vec![index.clone()]);
    let health = env.es_json(reqwest::Method::GET, &format!("/_cluster/health/{index}"), None).await;
    assert_eq!(health["status"], json!("yellow"), "one node cannot hold the replica: {health}");
    // The build-time settings (no refresh, no replicas) were restored before the swap.
    let settings = env.es_json(reqwest::Method::GET, &format!("/{index}/_settings?flat_settings=true"), None).await;
    let s = &settings[&index]["settings"];
    assert_eq!((s["index.number_of_replicas"].clone(), s["index.refresh_interval"].clone()), (json!("1"), json!("500ms")), "{s}");
    // A change is searchable after the refresh interval, without anyone refreshing.
    env.sql("UPDATE students SET last_name = 'Yellow' WHERE id = 9").await;
    env.drain().await;
    let (path, yellow) = (format!("/{}/_count", env.alias), json!({"query": {"term": {"last_name.raw": "Yellow"}}}));
    eventually("searchable after the refresh interval", Duration::from_secs(10), || async {
        env.es_json(reqwest::Method::POST, &path, Some(yellow.clone())).await["count"] == json!(1)
    })
    .await;
    env.assert_converged().await;
}

/// Issue 20, item 7: `<alias>_building` exists while a build runs, and for one batch's life
/// after it ends (a batch that chose its targets while the build ran may still write through
/// it: `sync.batch_timeout + sync.request_timeout`), then it is gone — after an automatic
/// first build, a promoted one, a cancelled one and a failed one alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_alias_exists_only_while_a_build_runs_and_one_batch_life_after() {
    let env = Env::with_config(|c| {
        c.sync.batch_timeout = "1s".parse().unwrap();
        // Long enough for a loaded machine to create an index; the batch life is 1 s + 5 s.
        c.sync.request_timeout = "5s".parse().unwrap();
    })
    .await;
    let building = tidemark::catalog::build_alias(&env.alias);
    let batch_life = Duration::from_millis(6500);
    env.seed(500).await;
    // The automatic first build.
    env.drain().await;
    tokio::time::sleep(batch_life).await;
    env.drain().await;
    assert_eq!(env.search.alias_targets(&building).await.unwrap(), Vec::<String>::new(), "gone after the first build");
    // A build: the alias points at it while it runs.
    let build = env.start_reindex(200).await;
    assert_eq!(env.search.alias_targets(&building).await.unwrap(), vec![build.target_index.clone()]);
    env.drain().await;
    assert_eq!(env.build(build.id).await.state, BuildState::Done);
    tokio::time::sleep(batch_life).await;
    env.drain().await;
    assert_eq!(env.search.alias_targets(&building).await.unwrap(), Vec::<String>::new(), "gone after a promotion");
    // A cancelled build, with a worker running: its heartbeat removes the alias.
    let worker = env.start_worker(env.services(), 1);
    let build = env.start_reindex(200).await;
    reindex::cancel(&env.services()).await.unwrap();
    assert!(!env.search.index_exists(&build.target_index).await.unwrap());
    eventually("the worker removes the build alias of the cancelled build", Duration::from_secs(20), || async {
        env.search.alias_targets(&building).await.unwrap().is_empty()
    })
    .await;
    worker.stop().await;
    // A failed build (a document the index refuses makes the count differ).
    env.sql("UPDATE students SET first_name = E'Bad\\x1Fname' WHERE id = 3").await;
    env.drain().await;
    let build = env.start_reindex(200).await;
    env.drain().await;
    assert_eq!(env.build(build.id).await.state, BuildState::Failed);
    tokio::time::sleep(batch_life).await;
    env.drain().await;
    assert_eq!(env.search.alias_targets(&building).await.unwrap(), Vec::<String>::new(), "gone after a failed build");
}

//! Faults and operations: 429s and 503s from a fault-injecting proxy in front of the search server,
//! documents the index refuses, services that are down or unreachable when a worker or a
//! command starts, real worker and scheduler processes, and what `admin status` reports.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{
    eventually,
    fault_proxy::{FaultProxy, Faults},
    free_port, small_directory, Env, RedisServer, SlowLink,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_level_429s_and_whole_request_503s_are_retried_and_end_indexed() {
    let (env, proxy) = Env::behind_proxy(|c| c.sync.batch_size = 300).await;
    env.create_index().await;
    env.seed(2_000).await;
    proxy.set(Faults { bulk_item_429: 0.3, fail_next: 3, ..Faults::on("_bulk") });
    let report = env.drain().await;
    let stats = proxy.stats();
    assert!(stats.items_429 > 100, "the proxy injected item-level 429s: {stats:?}");
    assert_eq!(stats.unavailable, 3, "the proxy answered three whole requests with 503: {stats:?}");
    assert_eq!(report.dead, 0, "transient failures are never dead-lettered");
    assert_eq!(env.outstanding().await, 0);
    proxy.clear();
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_document_is_dead_lettered_the_rest_indexed_and_retry_failed_brings_it_in() {
    let env = Env::with_directory().await;
    // The operator's index forgot `university.name` in its strict mapping: documents of
    // students with a university are refused, the others are fine.
    let mut body = json!({"mappings": tidemark::model::mapping::mappings(&env.config.model())});
    body["mappings"]["properties"]["university"] = json!({"dynamic": "strict", "properties": {"id": {"type": "long"}}});
    let index = env.generation(1);
    env.es_json(reqwest::Method::PUT, &format!("/{index}"), Some(body)).await;
    env.es_json(reqwest::Method::POST, "/_aliases", Some(json!({"actions": [{"add": {"index": index, "alias": env.alias}}]}))).await;
    env.sql(
        "INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES
           (1, 'Ann', 'Lee', 20, 'FR', NULL), (2, 'Bob', 'Ray', 21, 'SO', NULL), (3, 'Cy', 'Oz', 22, 'JR', 1),
           (4, 'Di', 'Yu', 23, 'SR', NULL), (5, 'Ed', 'Wu', 24, 'FR', NULL)",
    )
    .await;
    assert_eq!(env.drain().await.dead, 1);
    env.refresh().await;
    for id in [1, 2, 4, 5] {
        assert!(env.doc(id).await.is_some(), "student {id} is indexed despite its batch-mate's failure");
    }
    assert_eq!(env.doc(3).await, None);
    assert_eq!(env.outstanding().await, 0, "a dead letter does not block");

    // The operator sees it, with the server's reason.
    let out = env.run(&["admin", "failed"]).expect_ok();
    assert!(
        out.stdout.contains("     3") && out.stdout.contains("strict_dynamic_mapping_exception") && out.stdout.contains("400"),
        "{out:?}"
    );
    let rows: Value = serde_json::from_str(&env.run(&["admin", "failed", "--json"]).stdout).unwrap();
    assert_eq!(rows[0]["key"], json!("3"));
    assert!(rows[0]["error"].as_str().unwrap().contains("name"), "{rows}");

    // Fix the cause (add the missing field), retry, and it comes in.
    let field = json!({"properties": {"university": {"properties": {"name": {"type": "keyword"}}}}});
    env.es_json(reqwest::Method::PUT, &format!("/{index}/_mapping"), Some(field)).await;
    let out = env.run(&["admin", "retry-failed"]);
    assert!(out.stdout.contains("re-marked 1 student from the dead letters"), "{out:?}");
    env.drain_and_refresh().await;
    assert_eq!(env.doc(3).await.unwrap()["university"], json!({"id": 1, "name": "MIT"}));
    assert_eq!(env.dead_letters().await, 0);
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_mapping_rejects_is_dead_lettered_and_fixing_the_row_brings_it_in() {
    // A completion field refuses the reserved character U+001F: a row edited directly to
    // such a value is refused for good, with the server's reason.
    let env = Env::with_directory().await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (1, E'An\\x1Fn', 'Lee', 20, 'FR'), (2, 'Bo', 'Ray', 20, 'FR')").await;
    assert_eq!(env.drain().await.dead, 1);
    let reason: String = sqlx::query_scalar("SELECT error FROM tidemark.dead_letters WHERE key = '1'").fetch_one(&env.pool).await.unwrap();
    assert!(reason.contains("reserved character"), "{reason}");
    env.sql("UPDATE students SET first_name = 'Ann' WHERE id = 1").await;
    env.drain().await;
    assert_eq!(env.dead_letters().await, 0);
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_scheduler_processes_sync_changes_within_seconds_and_stop_cleanly() {
    let env = Env::with_directory().await;
    let mut worker = env.spawn(&["worker", "--concurrency", "2"], |_| {});
    // A tick a minute: anything indexed sooner came through the processes' watch of the database.
    let mut scheduler = env.spawn(&["scheduler", "--interval", "60s"], |_| {});
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES (1, 'Ann', 'Lee', 20, 'FR', 1)")
        .await;
    eventually("the new student is searchable", Duration::from_secs(20), || async { env.doc(1).await.is_some() }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let start = Instant::now();
    env.sql("UPDATE universities SET name = 'MIT2' WHERE id = 1").await;
    eventually("the rename is searchable", Duration::from_secs(20), || async {
        env.doc(1).await.is_some_and(|d| d["university"]["name"] == json!("MIT2"))
    })
    .await;
    eprintln!("rename searchable after {:?}", start.elapsed());
    // Each change is one job; finished jobs leave nothing behind in Redis once vacuumed.
    for i in 0..5 {
        env.sql(&format!("UPDATE students SET age = {} WHERE id = 1", 30 + i)).await;
        eventually("the update is searchable", Duration::from_secs(20), || async {
            env.doc(1).await.is_some_and(|d| d["age"] == json!(30 + i))
        })
        .await;
    }
    // A job may still be finishing (or one just nudged be waiting): once they are done,
    // vacuuming leaves at most the one waiting job's bookkeeping.
    let queue = env.queue().await;
    eventually("finished jobs' bookkeeping is vacuumed", Duration::from_secs(15), || async {
        queue.vacuum().await.unwrap();
        let leftovers = env.redis_keys("sync:meta:*").await;
        if leftovers.len() <= 1 {
            Ok::<(), String>(())
        } else {
            Err(format!("left: {leftovers:?}"))
        }
    })
    .await;
    assert!(worker.terminate().success(), "worker exits 0 on SIGTERM:\n{}", worker.output());
    assert!(scheduler.terminate().success(), "scheduler exits 0 on SIGTERM:\n{}", scheduler.output());
    assert!(worker.output().contains("leases given back"), "{}", worker.output());
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.marks WHERE lease_owner IS NOT NULL").await, 0);
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_the_search_server_is_down_says_so_and_catches_up() {
    let port = free_port();
    let down_url = format!("http://127.0.0.1:{port}");
    let env = Env::with_directory().await;
    env.add_students(50).await;
    let mut worker = env.spawn(&["worker"], |c| {
        c.env("ELASTICSEARCH_URL", &down_url);
    });
    let mut scheduler = env.spawn(&["scheduler", "--interval", "1s"], |_| {});
    eventually("the worker says the search server is unreachable", Duration::from_secs(20), || async {
        worker.output().contains(&format!("search server at {down_url}/ is unreachable"))
    })
    .await;
    assert_eq!(env.outstanding().await, 50, "nothing is lost while it is down");
    // The server comes back on the same address.
    let _proxy = FaultProxy::start_on(&format!("127.0.0.1:{port}"), &env.es_url).await;
    eventually("everything is indexed once the server is back", Duration::from_secs(90), || env.synced()).await;
    env.assert_converged().await;
    worker.terminate();
    scheduler.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listed_in_elasticsearch_url_that_is_down_is_passed_over() {
    // ELASTICSEARCH_URL lists a cluster's nodes; the first one is down (tests/cluster.rs
    // kills a node of a real cluster). Requests go on to the next node, and stay there.
    let down = format!("http://127.0.0.1:{}", free_port());
    let es = support::service_url("ELASTICSEARCH_URL");
    let env = Env::with_config(|c| c.elasticsearch_url = Some(tidemark::config::Secret::new(format!("{down}, {es}")))).await;
    assert_eq!(env.search.redacted_url(), format!("{down}/,{}", tidemark::config::redact_url(&es)));
    small_directory(&env).await;
    env.create_index().await;
    env.add_students(30).await;
    let report = env.drain().await;
    assert_eq!((report.indexed, report.dead), (30, 0));
    env.assert_converged().await;
    // Every node down: the error names them all.
    let all_down = format!("{down},http://127.0.0.1:{}", free_port());
    let services = env.services_with(|c| c.elasticsearch_url = Some(tidemark::config::Secret::new(all_down)));
    let err = services.search.ping().await.unwrap_err().to_string();
    assert!(err.contains(&format!("search server at {down}/,http://127.0.0.1:")) && err.contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_search_server_fails_admin_commands_clearly_and_loses_nothing() {
    let env = Env::with_directory().await;
    env.sql("INSERT INTO students (first_name, last_name, age, year_in_school) VALUES ('A', 'B', 20, 'FR')").await;
    let down = format!("http://127.0.0.1:{}", free_port());
    let out = env.run_with(&["sync"], &[("ELASTICSEARCH_URL", &down)]);
    assert!(!out.ok() && out.stderr.contains(&format!("search server at {down}/ is unreachable")), "{out:?}");
    assert!(out.stderr.contains("Connection refused"), "{out:?}");
    assert_eq!(env.outstanding().await, 1, "the mark stays");
    let out = env.run_with(&["admin", "status"], &[("ELASTICSEARCH_URL", &down)]);
    assert!(out.ok() && out.stdout.contains("problem: search server at") && out.stdout.contains("outstanding marks    1"), "{out:?}");
    env.drain().await;
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_redis_is_down_says_so_and_catches_up() {
    let port = free_port();
    let redis_url = format!("redis://127.0.0.1:{port}");
    let env = Env::with_directory().await;
    env.add_students(50).await;
    let mut worker = env.spawn(&["worker"], |c| {
        c.env("REDIS_URL", &redis_url);
    });
    eventually("the worker says Redis is unreachable", Duration::from_secs(20), || async {
        worker.output().contains(&format!("Redis at {redis_url} is unreachable"))
    })
    .await;
    assert_eq!(env.outstanding().await, 50);
    let _redis = RedisServer::start_on(port);
    eventually("everything is indexed once Redis is back", Duration::from_secs(90), || env.synced()).await;
    env.assert_converged().await;
    worker.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_lag_and_counts_truthfully() {
    let env = Env::with_directory().await;
    let s = env.status_json().await;
    assert_eq!((s["outstanding_marks"].clone(), s["lag_seconds"].clone(), s["indices"].clone()), (json!(0), json!(0.0), json!([])));

    env.add_students_at(7, "1").await;
    env.drain().await;
    env.sql(
        "INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (8, 'A', 'B', 20, 'FR'), (9, 'C', 'D', 20, 'FR')",
    )
    .await;
    env.sql("UPDATE universities SET name = 'MIT2' WHERE id = 1").await;
    env.sql("INSERT INTO tidemark.dead_letters (key, status, error) VALUES ('5', 400, 'x')").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let s = env.status_json().await;
    assert_eq!(s["outstanding_marks"], json!(2));
    assert_eq!(s["pending_fanouts"], json!(1));
    assert_eq!(s["dead_letters"], json!(1));
    assert_eq!(s["documents"], json!(7));
    assert_eq!(s["indices"], json!([env.generation(1)]));
    assert_eq!(s["queue_depth"], json!(0));
    let lag = s["lag_seconds"].as_f64().unwrap();
    assert!((1.0..30.0).contains(&lag), "lag is the age of the oldest unindexed change: {lag}");

    let text = env.run(&["admin", "status"]).stdout;
    assert!(text.contains("outstanding marks    2") && text.contains("pending fan-outs     1"), "{text}");

    env.drain().await;
    let s = env.status_json().await;
    assert_eq!((s["outstanding_marks"].clone(), s["pending_fanouts"].clone(), s["lag_seconds"].clone()), (json!(0), json!(0), json!(0.0)));
    env.refresh().await;
    assert_eq!(env.status_json().await["documents"], json!(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_writer_commits_and_nudges_once_without_piling_up_jobs() {
    let env = Env::with_directory().await;
    let queue = env.queue().await;
    assert_eq!(queue.depth().await.unwrap(), 0);
    for i in 1..=5 {
        let mut tx = env.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES ($1, 'A', 'B', 20, 'FR')")
            .bind(i as i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        tidemark::writer::commit_and_nudge(tx, &queue).await.unwrap();
    }
    assert_eq!(queue.depth().await.unwrap(), 1, "five nudges while no worker runs: one waiting job, not five");
    // A worker picks the job up and syncs.
    let mut worker = env.spawn(&["worker"], |_| {});
    eventually("the writes are indexed", Duration::from_secs(60), || env.synced()).await;
    assert_eq!(queue.depth().await.unwrap(), 0);
    worker.terminate();
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_a_slow_batch_ships_new_changes_wait_and_go_in_one_request() {
    // A search server that has fallen behind gets one larger `_bulk` request, not one per
    // change: a worker keeps one partial batch in flight, and the next claim takes all that
    // piled up meanwhile.
    let (env, proxy) = Env::behind_proxy(|_| {}).await;
    small_directory(&env).await;
    env.create_index().await;
    env.add_students(21).await;
    env.drain().await;
    let engine = std::sync::Arc::new(env.engine());

    proxy.set(Faults { slow: 1.0, delay: Duration::from_millis(1500), ..Faults::on("_bulk") });
    env.sql("UPDATE students SET age = 30 WHERE id = 1").await;
    let step = || {
        let e = engine.clone();
        tokio::spawn(async move { e.step().await.unwrap() })
    };
    let first = step();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second job of the same worker starts while the first batch is still shipping.
    let second = step();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in 2..=21 {
        env.sql(&format!("UPDATE students SET age = 30 WHERE id = {id}")).await;
    }
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.batch.unwrap().claimed, 1);
    let second = second.batch.expect("the second job waited for the first batch, then took what piled up");
    assert_eq!((second.claimed, second.requests), (20, 1), "twenty changes, one request");
    assert_eq!(proxy.stats().slowed, 2, "two _bulk requests in all");
    proxy.clear();
    env.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_behind_a_slow_redis_keeps_picking_up_changes_after_idling() {
    // Redis answering slower than the worker's 50 ms queue heartbeat: apalis-core 1.0.0 then
    // sees its heartbeat timer fire while a job fetch is in flight, and after an empty fetch
    // nothing wakes the worker again — it idles forever while jobs wait (seen as a stall at
    // 500 writes/s, where a fetch occasionally outlasts the timer). No scheduler runs here:
    // only the worker's own polling can pick the nudged jobs up.
    let env = Env::with_directory().await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (1, 'Ada', 'Start', 20, 'FR')").await;
    env.drain().await;
    let link = SlowLink::start(&env.redis_url, Duration::from_millis(80)).await;
    let redis = link.url_for(&env.redis_url);
    let mut worker = env.spawn(&["worker"], |c| {
        c.env("REDIS_URL", &redis);
    });
    for round in 1..=3 {
        // Long enough for the worker to be back to waiting for jobs, with empty fetches.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let name = format!("Round{round}");
        env.sql(&format!("UPDATE students SET last_name = '{name}' WHERE id = 1")).await;
        eventually(&format!("change {round} is searchable"), Duration::from_secs(20), || async {
            env.doc(1).await.is_some_and(|d| d["last_name"] == json!(name))
        })
        .await;
    }
    worker.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_taken_by_a_worker_that_died_before_starting_it_does_not_silence_later_nudges() {
    let env = Env::new().await;
    let queue = env.queue().await;
    assert!(queue.nudge("first").await.unwrap(), "the first nudge enqueues");
    assert!(!queue.nudge("second").await.unwrap(), "one job waits: a second nudge adds none");
    // A worker takes the job off the queue and dies before it starts it.
    let ns = &env.namespace;
    let mut conn = env.redis().await;
    let _: () = redis::pipe().del(format!("{ns}:sync:active")).del(format!("{ns}:sync:scheduled")).query_async(&mut conn).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0);
    assert!(queue.nudge("third").await.unwrap(), "the next nudge enqueues at once, not when a flag expires");
    assert_eq!(queue.depth().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_in_one_process_are_two_identities_and_status_counts_them() {
    // Containers run every worker as pid 1: two workers of one pid must still be two.
    let env = Env::with_directory().await;
    let workers = [env.start_worker(env.services(), 2), env.start_worker(env.services(), 2)];
    env.add_students(3000).await;
    eventually("both workers sync", Duration::from_secs(60), || env.synced()).await;
    eventually("both heartbeats are recorded", Duration::from_secs(15), || async {
        env.scalar_i64("SELECT count(*) FROM tidemark.workers WHERE seen_at > now() - interval '15 seconds'").await == 2
    })
    .await;
    let status = env.status_json().await;
    assert_eq!(status["live_workers"], json!(2), "{status}");
    let ids: Vec<&str> = status["workers"].as_array().unwrap().iter().map(|w| w["identity"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    let pid = std::process::id().to_string();
    assert!(ids.iter().all(|i| i.contains(&pid)), "host, pid and a random part: {ids:?}");
    let text = env.run(&["admin", "status"]).stdout;
    assert!(text.contains("live workers         2"), "{text}");
    for w in workers {
        w.stop().await;
    }
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.workers").await, 0, "a stopped worker says so");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.marks WHERE lease_owner IS NOT NULL").await, 0);
}

/// A worker that finds the sequence behind the index stops shipping (every write would be
/// refused as older than what the index holds, and its mark cleared as superseded) but does
/// not exit: it says why (log, metric, status), keeps the marks, and resumes by itself once
/// the operator has repaired the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_from_an_older_backup_is_refused_until_the_sequence_is_repaired() {
    let env = Env::with_directory().await;
    // The index will hold versions above 1,000; the restored sequence is far behind them, so
    // the writes made while refusing do not carry it past the index by themselves.
    env.sql("SELECT setval('tidemark.seq', 1000)").await;
    env.add_students(20).await;
    env.drain().await;
    // The backup was taken before most of those numbers were drawn.
    env.sql("SELECT setval('tidemark.seq', 1)").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut worker = env.spawn(&["worker", "--admin-addr", &addr], |_| {});
    eventually("the worker says it refuses to sync", Duration::from_secs(30), || async {
        worker.output().contains("restored from a backup") && worker.output().contains("admin repair-sequence")
    })
    .await;
    // A write made meanwhile is not shipped (it would be refused as superseded and lost).
    env.sql("UPDATE students SET last_name = 'During' WHERE id = 3").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(worker.is_running(), "the worker keeps running:\n{}", worker.output());
    let marked = env.scalar_i64("SELECT count(DISTINCT key) FROM tidemark.outstanding WHERE key = '3'").await;
    assert_eq!(marked, 1, "its mark stays");
    let metrics = || async { reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap() };
    let m = metrics().await;
    assert!(m.lines().any(|l| l == "tidemark_sync_refused 1"), "the refusal is a metric:\n{m}");
    // (The write drew number 2; the refusing worker drew none.)
    let text = env.run(&["admin", "status"]).stdout;
    assert!(text.contains("problem: ") && text.contains("tidemark.seq is at 2"), "{text}");
    let out = env.run(&["admin", "repair-sequence"]).expect_ok();
    assert!(out.stdout.contains("admin reindex"), "it says what comes next: {out:?}");
    // The same worker resumes on its own, and the change made while it refused arrives.
    eventually("the change made while refusing is indexed", Duration::from_secs(30), || async {
        env.doc(3).await.is_some_and(|d| d["last_name"] == json!("During"))
    })
    .await;
    assert!(worker.output().contains("sync resumes"), "it says it resumed:\n{}", worker.output());
    let m = metrics().await;
    assert!(m.lines().any(|l| l == "tidemark_sync_refused 0"), "{m}");
    assert!(worker.terminate().success(), "{}", worker.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_that_stops_with_marks_left_exits_nonzero() {
    let env = Env::new().await;
    let proxy = env.proxy().await;
    env.create_index().await;
    env.add_students(20).await;
    proxy.set(Faults { unavailable: 1.0, ..Faults::on("_bulk") });
    let out = env.run_with(&["sync"], &[("ELASTICSEARCH_URL", &proxy.url())]);
    assert_eq!(out.code, Some(3), "stopped with marks left is not success: {out:?}");
    assert!(out.stdout.contains("marks remain"), "{out:?}");
    proxy.clear();
    env.run(&["sync"]).expect_ok();
}

/// Issue 20, item 1: the periodic sequence check must not mistake writes made *while its
/// search waited* in a busy engine for a database restored from a backup. The proxy holds
/// the check's search; meanwhile another worker writes newer versions and the index is
/// refreshed; the check must still find nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_while_the_sequence_checks_search_waits_are_not_a_restored_backup() {
    let env = Env::with_directory().await;
    let proxy = env.proxy().await;
    env.add_students(50).await;
    env.drain_and_refresh().await;
    // The checking worker reaches the engine through the proxy, which holds every search
    // (the check's "highest version" query) for 3 s, as a busy engine's queue does.
    let held = Duration::from_secs(3);
    let checker = env.services_via(&proxy);
    proxy.set(Faults { slow: 1.0, delay: held, ..Faults::on("_search") });
    let started = Instant::now();
    let check = tokio::spawn(async move { tidemark::sync::sequence_behind(&checker).await });
    // Another worker writes newer versions meanwhile, and they become visible to searches.
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.sql("UPDATE students SET age = age + 1").await;
    env.sql("UPDATE students SET age = age + 1 WHERE id <= 10").await;
    env.drain_and_refresh().await;
    assert!(started.elapsed() < held, "the other worker's writes landed while the check's search was held ({:?})", started.elapsed());
    let found = check.await.unwrap().expect("the check answers");
    assert!(proxy.stats().slowed >= 1, "the check's search was held: {:?}", proxy.stats());
    assert_eq!(found, None, "newer writes made during the check are not a restored backup");
    proxy.clear();
}

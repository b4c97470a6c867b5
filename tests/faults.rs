//! Faults and operations: 429s and 503s from a fault-injecting proxy in front of the search server,
//! documents the index refuses, services that are down when a worker starts, real worker
//! and scheduler processes, and what `admin status` reports.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    fault_proxy::{FaultProxy, Faults},
    free_port, small_directory, Env,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_level_429s_and_whole_request_503s_are_retried_and_end_indexed() {
    let proxy = FaultProxy::start(&support::service_url("ELASTICSEARCH_URL")).await;
    let env = Env::with_config(|c| {
        c.elasticsearch_url = Some(tidemark::config::Secret::new(proxy.url()));
        c.sync.batch_size = 300;
    })
    .await;
    env.create_index().await;
    tidemark_seeds::seed(&env.pool, &tidemark_seeds::SeedOptions { students: 2_000, seed: 11 }).await.unwrap();
    proxy.set(Faults { bulk_item_429: 0.3, fail_next: 3, only_path: Some("_bulk".into()), ..Faults::default() });
    let report = env.engine().drain().await.unwrap();
    let stats = proxy.stats();
    assert!(stats.items_429 > 100, "the proxy injected item-level 429s: {stats:?}");
    assert_eq!(stats.unavailable, 3, "the proxy answered three whole requests with 503: {stats:?}");
    assert_eq!(report.dead, 0, "transient failures are never dead-lettered");
    assert_eq!(env.scalar_i64("SELECT count(DISTINCT student_id) FROM tidemark.outstanding").await, 0);
    proxy.clear();
    env.assert_converged().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_document_is_dead_lettered_the_rest_indexed_and_retry_failed_brings_it_in() {
    let env = Env::new().await;
    small_directory(&env).await;
    // The operator's index forgot `university.name` in its strict mapping: documents of
    // students with a university are refused, the others are fine.
    let mut body = tidemark::document::index_body();
    body["mappings"]["properties"]["university"] = json!({"dynamic": "strict", "properties": {"id": {"type": "long"}}});
    let index = format!("{}_1", env.alias);
    env.es_json(reqwest::Method::PUT, &format!("/{index}"), Some(body)).await;
    env.es_json(reqwest::Method::POST, "/_aliases", Some(json!({"actions": [{"add": {"index": index, "alias": env.alias}}]}))).await;
    env.sql(
        "INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES
           (1, 'Ann', 'Lee', 20, 'FR', NULL), (2, 'Bob', 'Ray', 21, 'SO', NULL), (3, 'Cy', 'Oz', 22, 'JR', 1),
           (4, 'Di', 'Yu', 23, 'SR', NULL), (5, 'Ed', 'Wu', 24, 'FR', NULL)",
    )
    .await;
    let report = env.engine().drain().await.unwrap();
    assert_eq!(report.dead, 1);
    env.refresh().await;
    for id in [1, 2, 4, 5] {
        assert!(env.doc(id).await.is_some(), "student {id} is indexed despite its batch-mate's failure");
    }
    assert_eq!(env.doc(3).await, None);
    assert_eq!(env.scalar_i64("SELECT count(DISTINCT student_id) FROM tidemark.outstanding").await, 0, "a dead letter does not block");

    // The operator sees it, with the server's reason.
    let out = env.command().args(["admin", "failed"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("     3") && text.contains("strict_dynamic_mapping_exception") && text.contains("400"), "{text}");
    let json_out = env.command().args(["admin", "failed", "--json"]).output().unwrap();
    let rows: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(rows[0]["student_id"], json!(3));
    assert!(rows[0]["error"].as_str().unwrap().contains("name"), "{rows}");

    // Fix the cause (add the missing field), retry, and it comes in.
    env.es_json(
        reqwest::Method::PUT,
        &format!("/{index}/_mapping"),
        Some(json!({"properties": {"university": {"properties": {"name": {"type": "keyword"}}}}})),
    )
    .await;
    let out = env.command().args(["admin", "retry-failed"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-marked 1"), "{out:?}");
    env.engine().drain().await.unwrap();
    env.refresh().await;
    assert_eq!(env.doc(3).await.unwrap()["university"], json!({"id": 1, "name": "MIT"}));
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.dead_letters").await, 0);
    env.assert_converged().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_mapping_rejects_is_dead_lettered_and_fixing_the_row_brings_it_in() {
    // A completion field refuses the reserved character U+001F: a row edited directly to
    // such a value is refused for good, with the server's reason.
    let env = Env::new().await;
    small_directory(&env).await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (1, E'An\\x1Fn', 'Lee', 20, 'FR'), (2, 'Bo', 'Ray', 20, 'FR')").await;
    let r = env.engine().drain().await.unwrap();
    assert_eq!(r.dead, 1);
    let reason: String =
        sqlx::query_scalar("SELECT error FROM tidemark.dead_letters WHERE student_id = 1").fetch_one(&env.pool).await.unwrap();
    assert!(reason.contains("reserved character"), "{reason}");
    env.sql("UPDATE students SET first_name = 'Ann' WHERE id = 1").await;
    env.engine().drain().await.unwrap();
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.dead_letters").await, 0);
    env.assert_converged().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_scheduler_processes_sync_changes_within_seconds_and_stop_cleanly() {
    let env = Env::new().await;
    small_directory(&env).await;
    let mut worker = env.spawn(&["worker", "--concurrency", "2"], |_| {});
    // A tick a minute: anything indexed sooner came through the processes' watch of the database.
    let mut scheduler = env.spawn(&["scheduler", "--interval", "60s"], |_| {});
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES (1, 'Ann', 'Lee', 20, 'FR', 1)")
        .await;
    env.eventually("the new student is searchable", Duration::from_secs(20), || async { env.doc(1).await.is_some() }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let start = std::time::Instant::now();
    env.sql("UPDATE universities SET name = 'MIT2' WHERE id = 1").await;
    env.eventually("the rename is searchable", Duration::from_secs(20), || async {
        env.doc(1).await.is_some_and(|d| d["university"]["name"] == json!("MIT2"))
    })
    .await;
    eprintln!("rename searchable after {:?}", start.elapsed());
    // Each change is one job; finished jobs leave nothing behind in Redis once vacuumed.
    for i in 0..5 {
        env.sql(&format!("UPDATE students SET age = {} WHERE id = 1", 30 + i)).await;
        env.eventually("the update is searchable", Duration::from_secs(20), || async {
            env.doc(1).await.is_some_and(|d| d["age"] == json!(30 + i))
        })
        .await;
    }
    let queue = tidemark::workers::Queue::connect(&env.redis_url, &env.namespace, str::to_string).await.unwrap();
    queue.vacuum().await.unwrap();
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let leftovers: Vec<String> = redis::cmd("KEYS").arg(format!("{}:sync:meta:*", env.namespace)).query_async(&mut conn).await.unwrap();
    assert!(leftovers.len() <= 1, "finished jobs' bookkeeping is vacuumed: {leftovers:?}");
    assert!(worker.terminate().success(), "worker exits 0 on SIGTERM:\n{}", worker.output());
    assert!(scheduler.terminate().success(), "scheduler exits 0 on SIGTERM:\n{}", scheduler.output());
    assert!(worker.output().contains("leases given back"), "{}", worker.output());
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.dirty_students WHERE lease_owner IS NOT NULL").await, 0);
    env.assert_converged().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_the_search_server_is_down_says_so_and_catches_up() {
    let port = free_port();
    let down_url = format!("http://127.0.0.1:{port}");
    let env = Env::new().await;
    small_directory(&env).await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N' || g, 'L', 20, 'FR' FROM generate_series(1, 50) g").await;
    let mut worker = env.spawn(&["worker"], |c| {
        c.env("ELASTICSEARCH_URL", &down_url);
    });
    let mut scheduler = env.spawn(&["scheduler", "--interval", "1s"], |_| {});
    env.eventually("the worker says the search server is unreachable", Duration::from_secs(20), || async {
        worker.output().contains(&format!("search server at {down_url}/ is unreachable"))
    })
    .await;
    assert_eq!(env.scalar_i64("SELECT count(DISTINCT student_id) FROM tidemark.outstanding").await, 50, "nothing is lost while it is down");
    // The server comes back on the same address.
    let _proxy = FaultProxy::start_on(&format!("127.0.0.1:{port}"), &env.es_url).await;
    env.wait_synced("everything is indexed once the server is back", Duration::from_secs(90)).await;
    env.assert_converged().await;
    worker.terminate();
    scheduler.terminate();
    env.cleanup().await;
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
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N' || g, 'L', 20, 'FR' FROM generate_series(1, 30) g").await;
    let report = env.engine().drain().await.unwrap();
    assert_eq!((report.indexed, report.dead), (30, 0));
    env.assert_converged().await;
    // Every node down: the error names them all.
    let config = tidemark::config::Config {
        elasticsearch_url: Some(tidemark::config::Secret::new(format!("{down},http://127.0.0.1:{}", free_port()))),
        ..(*env.config).clone()
    };
    let err = tidemark::search::Search::new(&config).unwrap().ping().await.unwrap_err().to_string();
    assert!(err.contains(&format!("search server at {down}/,http://127.0.0.1:")) && err.contains("unreachable"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_redis_is_down_says_so_and_catches_up() {
    let port = free_port();
    let redis_url = format!("redis://127.0.0.1:{port}");
    let env = Env::new().await;
    small_directory(&env).await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N' || g, 'L', 20, 'FR' FROM generate_series(1, 50) g").await;
    let mut worker = env.spawn(&["worker"], |c| {
        c.env("REDIS_URL", &redis_url);
    });
    env.eventually("the worker says Redis is unreachable", Duration::from_secs(20), || async {
        worker.output().contains(&format!("Redis at {redis_url} is unreachable"))
    })
    .await;
    assert_eq!(env.scalar_i64("SELECT count(DISTINCT student_id) FROM tidemark.outstanding").await, 50);
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    env.wait_synced("everything is indexed once Redis is back", Duration::from_secs(90)).await;
    env.assert_converged().await;
    worker.terminate();
    let _ = redis.kill();
    let _ = redis.wait();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_lag_and_counts_truthfully() {
    let env = Env::new().await;
    small_directory(&env).await;
    let status = || async {
        let out = env.command().args(["admin", "status", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let s = status().await;
    assert_eq!((s["outstanding_marks"].clone(), s["lag_seconds"].clone(), s["indices"].clone()), (json!(0), json!(0.0), json!([])));

    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) SELECT g, 'N' || g, 'L', 20, 'FR', 1 FROM generate_series(1, 7) g").await;
    env.engine().drain().await.unwrap();
    env.sql(
        "INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (8, 'A', 'B', 20, 'FR'), (9, 'C', 'D', 20, 'FR')",
    )
    .await;
    env.sql("UPDATE universities SET name = 'MIT2' WHERE id = 1").await;
    env.sql("INSERT INTO tidemark.dead_letters (student_id, status, error) VALUES (5, 400, 'x')").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let s = status().await;
    assert_eq!(s["outstanding_marks"], json!(2));
    assert_eq!(s["pending_fanouts"], json!(1));
    assert_eq!(s["dead_letters"], json!(1));
    assert_eq!(s["documents"], json!(7));
    assert_eq!(s["indices"], json!([format!("{}_1", env.alias)]));
    assert_eq!(s["queue_depth"], json!(0));
    let lag = s["lag_seconds"].as_f64().unwrap();
    assert!((1.0..30.0).contains(&lag), "lag is the age of the oldest unindexed change: {lag}");

    let table = env.command().args(["admin", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("outstanding marks    2") && text.contains("pending fan-outs     1"), "{text}");

    env.engine().drain().await.unwrap();
    let s = status().await;
    assert_eq!((s["outstanding_marks"].clone(), s["pending_fanouts"].clone(), s["lag_seconds"].clone()), (json!(0), json!(0), json!(0.0)));
    env.refresh().await;
    assert_eq!(status().await["documents"], json!(9));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_service_urls_never_reach_logs_errors_or_status() {
    let env = Env::new().await;
    let secret = "s3cr3t-Pa55";
    let with_password = |url: &str, user: &str| url.replacen("://", &format!("://{user}:{secret}@"), 1);
    let out = env
        .command()
        .args(["admin", "status"])
        .env("DATABASE_URL", with_password(&env.database_url, "postgres"))
        .env("ELASTICSEARCH_URL", with_password(&env.es_url, "elastic"))
        .env("REDIS_URL", with_password(&env.redis_url, "default"))
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(!all.contains(secret), "a password leaked:\n{all}");
    // Unreachable services: the error names the service, not the password.
    let port = free_port();
    let out = env
        .command()
        .args(["admin", "status"])
        .env("DATABASE_URL", format!("postgres://app:{secret}@127.0.0.1:{port}/x"))
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(all.contains(&format!("cannot connect to PostgreSQL at postgres://app:***@127.0.0.1:{port}/x")), "{all}");
    assert!(!all.contains(secret), "a password leaked:\n{all}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_cli_misuse_get_clear_errors() {
    let env = Env::new().await;
    let dir = std::env::temp_dir().join(format!("tidemark-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "index_alias = \"x\"\n[sync]\nbatch_sise = 10\n").unwrap();
    let out = env.command().args(["--config", file.to_str().unwrap(), "admin", "status"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("batch_sise") && err.contains("unknown field"), "{err}");

    let out = env.command().args(["admin", "status"]).env("REDIS_URL", "http://127.0.0.1:6379").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("REDIS_URL") && err.contains("redis://"), "{err}");

    let out = env.command().args(["scheduler", "--interval", "fast"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--interval") && err.contains("250ms, 5s"), "{err}");

    let out = env.command().args(["worker", "--concurrency", "0"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--concurrency"));
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_writer_commits_and_nudges_once_without_piling_up_jobs() {
    let env = Env::new().await;
    small_directory(&env).await;
    let queue = tidemark::workers::Queue::connect(&env.redis_url, &env.namespace, str::to_string).await.unwrap();
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
    env.wait_synced("the writes are indexed", Duration::from_secs(60)).await;
    assert_eq!(queue.depth().await.unwrap(), 0);
    worker.terminate();
    env.assert_converged().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_a_slow_batch_ships_new_changes_wait_and_go_in_one_request() {
    // A search server that has fallen behind gets one larger `_bulk` request, not one per
    // change: a worker keeps one partial batch in flight, and the next claim takes all that
    // piled up meanwhile.
    let proxy = FaultProxy::start(&support::service_url("ELASTICSEARCH_URL")).await;
    let env = Env::with_config(|c| c.elasticsearch_url = Some(tidemark::config::Secret::new(proxy.url()))).await;
    small_directory(&env).await;
    env.create_index().await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N' || g, 'L', 20, 'FR' FROM generate_series(1, 21) g").await;
    env.engine().drain().await.unwrap();
    let engine = std::sync::Arc::new(env.engine());

    proxy.set(Faults { slow: 1.0, delay: Duration::from_millis(1500), only_path: Some("_bulk".into()), ..Faults::default() });
    env.sql("UPDATE students SET age = 30 WHERE id = 1").await;
    let first = tokio::spawn({
        let e = engine.clone();
        async move { e.step().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second job of the same worker starts while the first batch is still shipping.
    let second = tokio::spawn({
        let e = engine.clone();
        async move { e.step().await.unwrap() }
    });
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
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_behind_a_slow_redis_keeps_picking_up_changes_after_idling() {
    // Redis answering slower than the worker's 50 ms queue heartbeat: apalis-core 1.0.0 then
    // sees its heartbeat timer fire while a job fetch is in flight, and after an empty fetch
    // nothing wakes the worker again — it idles forever while jobs wait (seen as a stall at
    // 500 writes/s, where a fetch occasionally outlasts the timer). No scheduler runs here:
    // only the worker's own polling can pick the nudged jobs up.
    let env = Env::new().await;
    small_directory(&env).await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (1, 'Ada', 'Start', 20, 'FR')").await;
    env.engine().drain().await.unwrap();
    let link = support::SlowLink::start(&env.redis_url, Duration::from_millis(80)).await;
    let redis = link.url_for(&env.redis_url);
    let mut worker = env.spawn(&["worker"], |c| {
        c.env("REDIS_URL", &redis);
    });
    for round in 1..=3 {
        // Long enough for the worker to be back to waiting for jobs, with empty fetches.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let name = format!("Round{round}");
        env.sql(&format!("UPDATE students SET last_name = '{name}' WHERE id = 1")).await;
        env.eventually(&format!("change {round} is searchable"), Duration::from_secs(20), || async {
            env.doc(1).await.is_some_and(|d| d["last_name"] == json!(name))
        })
        .await;
    }
    worker.terminate();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_taken_by_a_worker_that_died_before_starting_it_does_not_silence_later_nudges() {
    let env = Env::new().await;
    let queue = tidemark::workers::Queue::connect(&env.redis_url, &env.namespace, str::to_string).await.unwrap();
    assert!(queue.nudge("first").await.unwrap(), "the first nudge enqueues");
    assert!(!queue.nudge("second").await.unwrap(), "one job waits: a second nudge adds none");
    // A worker takes the job off the queue and dies before it starts it.
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ns = &env.namespace;
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(format!("{ns}:sync:active"))
        .cmd("DEL")
        .arg(format!("{ns}:sync:scheduled"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0);
    assert!(queue.nudge("third").await.unwrap(), "the next nudge enqueues at once, not when a flag expires");
    assert_eq!(queue.depth().await.unwrap(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_in_one_process_are_two_identities_and_status_counts_them() {
    // Containers run every worker as pid 1: two workers of one pid must still be two.
    let env = Env::new().await;
    small_directory(&env).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (services, stop) = (env.services(), stop.clone());
            tokio::spawn(async move { tidemark::process::worker::run(services, 2, stop.cancelled_owned()).await })
        })
        .collect();
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N' || g, 'L', 20, 'FR' FROM generate_series(1, 3000) g").await;
    env.wait_synced("both workers sync", Duration::from_secs(60)).await;
    env.eventually("both heartbeats are recorded", Duration::from_secs(15), || async {
        env.scalar_i64("SELECT count(*) FROM tidemark.workers WHERE seen_at > now() - interval '15 seconds'").await == 2
    })
    .await;
    let out = env.command().args(["admin", "status", "--json"]).output().unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["live_workers"], json!(2), "{status}");
    let ids: Vec<&str> = status["workers"].as_array().unwrap().iter().map(|w| w["identity"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    let pid = std::process::id().to_string();
    assert!(ids.iter().all(|i| i.contains(&pid)), "host, pid and a random part: {ids:?}");
    let text = String::from_utf8_lossy(&env.command().args(["admin", "status"]).output().unwrap().stdout).into_owned();
    assert!(text.contains("live workers         2"), "{text}");
    stop.cancel();
    for w in workers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.workers").await, 0, "a stopped worker says so");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.dirty_students WHERE lease_owner IS NOT NULL").await, 0);
    env.cleanup().await;
}

/// A worker that finds the sequence behind the index stops shipping (every write would be
/// refused as older than what the index holds, and its mark cleared as superseded) but does
/// not exit: it says why (log, metric, status), keeps the marks, and resumes by itself once
/// the operator has repaired the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_from_an_older_backup_is_refused_until_the_sequence_is_repaired() {
    let env = Env::new().await;
    small_directory(&env).await;
    // The index will hold versions above 1,000; the restored sequence is far behind them, so
    // the writes made while refusing do not carry it past the index by themselves.
    env.sql("SELECT setval('tidemark.seq', 1000)").await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N' || g, 'L', 20, 'FR' FROM generate_series(1, 20) g").await;
    env.engine().drain().await.unwrap();
    // The backup was taken before most of those numbers were drawn.
    env.sql("SELECT setval('tidemark.seq', 1)").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut worker = env.spawn(&["worker", "--admin-addr", &addr], |_| {});
    env.eventually("the worker says it refuses to sync", Duration::from_secs(30), || async {
        worker.output().contains("restored from a backup") && worker.output().contains("admin repair-sequence")
    })
    .await;
    // A write made meanwhile is not shipped (it would be refused as superseded and lost).
    env.sql("UPDATE students SET last_name = 'During' WHERE id = 3").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker keeps running:\n{}", worker.output());
    assert_eq!(
        env.scalar_i64("SELECT count(DISTINCT student_id) FROM tidemark.outstanding WHERE student_id = 3").await,
        1,
        "its mark stays"
    );
    let metrics = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "tidemark_sync_refused 1"), "the refusal is a metric:\n{metrics}");
    let out = env.command().args(["admin", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // (The write drew number 2; the refusing worker drew none.)
    assert!(text.contains("problem: ") && text.contains("tidemark.seq is at 2"), "{text}");
    let out = env.command().args(["admin", "repair-sequence"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("admin reindex"), "it says what comes next: {out:?}");
    // The same worker resumes on its own, and the change made while it refused arrives.
    env.eventually("the change made while refusing is indexed", Duration::from_secs(30), || async {
        env.doc(3).await.is_some_and(|d| d["last_name"] == json!("During"))
    })
    .await;
    assert!(worker.output().contains("sync resumes"), "it says it resumed:\n{}", worker.output());
    let metrics = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "tidemark_sync_refused 0"), "{metrics}");
    assert!(worker.terminate().success(), "{}", worker.output());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_that_stops_with_marks_left_exits_nonzero() {
    let proxy = FaultProxy::start(&support::service_url("ELASTICSEARCH_URL")).await;
    let env = Env::new().await;
    env.create_index().await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N' || g, 'L', 20, 'FR' FROM generate_series(1, 20) g").await;
    proxy.set(Faults { unavailable: 1.0, only_path: Some("_bulk".into()), ..Faults::default() });
    let out = env.command().env("ELASTICSEARCH_URL", proxy.url()).args(["sync"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "stopped with marks left is not success: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("marks remain"), "{out:?}");
    proxy.clear();
    let out = env.command().args(["sync"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    env.cleanup().await;
}

/// Issue 20, item 1: the periodic sequence check must not mistake writes made *while its
/// search waited* in a busy engine for a database restored from a backup. The proxy holds
/// the check's search; meanwhile another worker writes newer versions and the index is
/// refreshed; the check must still find nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_while_the_sequence_checks_search_waits_are_not_a_restored_backup() {
    let proxy = FaultProxy::start(&support::service_url("ELASTICSEARCH_URL")).await;
    let env = Env::new().await;
    small_directory(&env).await;
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) SELECT g, 'N' || g, 'L', 20, 'FR' FROM generate_series(1, 50) g").await;
    env.engine().drain().await.unwrap();
    env.refresh().await;
    // The checking worker reaches the engine through the proxy, which holds every search
    // (the check's "highest version" query) for 3 s, as a busy engine's queue does.
    let held = Duration::from_secs(3);
    let checker = env.engine_with(|c| c.elasticsearch_url = Some(tidemark::config::Secret::new(proxy.url())));
    proxy.set(Faults { slow: 1.0, delay: held, only_path: Some("_search".into()), ..Faults::default() });
    let started = std::time::Instant::now();
    let check = tokio::spawn(async move { tidemark::sync::sequence_behind(&checker.services).await });
    // Another worker writes newer versions meanwhile, and they become visible to searches.
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.sql("UPDATE students SET age = age + 1").await;
    env.sql("UPDATE students SET age = age + 1 WHERE id <= 10").await;
    env.engine().drain().await.unwrap();
    env.refresh().await;
    assert!(started.elapsed() < held, "the other worker's writes landed while the check's search was held ({:?})", started.elapsed());
    let found = check.await.unwrap().expect("the check answers");
    assert!(proxy.stats().slowed >= 1, "the check's search was held: {:?}", proxy.stats());
    assert_eq!(found, None, "newer writes made during the check are not a restored backup");
    proxy.clear();
    env.cleanup().await;
}

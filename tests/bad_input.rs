//! Bad input gets a clear error that says what was wrong and what to do, exits non-zero,
//! loses nothing, and never prints a secret: config files and values, service URLs, wrong
//! credentials, command lines. (Services that are down or unreachable: tests/faults.rs.)

mod support;

use support::{fault_proxy::Faults, free_port, Env};

const SECRET: &str = "Hunter2-s3cr3t";

/// `url` with `user:SECRET@` put in.
fn with_secret(url: &str, user: &str) -> String {
    url.replacen("://", &format!("://{user}:{SECRET}@"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_values_are_refused_with_the_field_and_the_fix() {
    let env = Env::new().await;
    let cases: [(&str, &[&str]); 10] = [
        ("[sync]\nlease = \"1s\"\n", &["sync.lease"]),
        ("[sync]\nmax_attempts = 0\n", &["sync.max_attempts"]),
        ("[scheduler]\ninterval = \"500ms\"\n", &["scheduler.interval"]),
        ("[sync]\nbulk_max_bytes = 10\n", &["sync.bulk_max_bytes"]),
        ("[sync]\nbackoff_base = \"ten\"\n", &["not a duration"]),
        ("[worker]\nconcurrency = -1\n", &["concurrency"]),
        ("[reindex]\nchunk_size = 0\n", &["reindex.chunk_size"]),
        ("[sync]\nbatch_size = 10\ncolour = \"blue\"\n", &["unknown field `colour`"]),
        ("index_alias = \"x\"\n[sync]\nbatch_sise = 10\n", &["batch_sise", "unknown field"]),
        ("[sync\n", &["not valid"]),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = env.file(&format!("c{i}.toml"), text);
        let out = env.run(&["--config", path.to_str().unwrap(), "admin", "status"]);
        assert!(
            !out.ok() && expected.iter().all(|e| out.stderr.contains(e)),
            "config {text:?}: expected an error mentioning {expected:?}, got: {out:?}"
        );
    }
    let out = env.run_with(&["admin", "status"], &[("TIDEMARK_INDEX_ALIAS", "Bad Alias")]);
    assert!(!out.ok() && out.stderr.contains("index_alias") && out.stderr.contains("lowercase letters"), "{out:?}");
    let out = env.run(&["--config", "/nonexistent/tidemark.toml", "admin", "status"]);
    assert!(!out.ok() && out.stderr.contains("cannot read config file /nonexistent/tidemark.toml"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_urls_are_refused_without_echoing_them() {
    let env = Env::new().await;
    let cases: [(&str, String, &[&str]); 6] = [
        ("DATABASE_URL", format!("postgres//app:{SECRET}@db/x"), &["DATABASE_URL is not a valid URL"]),
        ("DATABASE_URL", format!("mysql://app:{SECRET}@db/x"), &["not one of postgres, postgresql"]),
        ("ELASTICSEARCH_URL", "localhost:9200".to_string(), &["ELASTICSEARCH_URL"]),
        ("ELASTICSEARCH_URL", format!("http://:{SECRET}@/"), &["ELASTICSEARCH_URL"]),
        ("REDIS_URL", format!("redis//:{SECRET}@r"), &["REDIS_URL is not a valid URL"]),
        ("REDIS_URL", "http://127.0.0.1:6379".to_string(), &["REDIS_URL", "redis://"]),
    ];
    for (var, value, expected) in cases {
        let out = env.run_with(&["admin", "status"], &[(var, &value)]);
        assert!(!out.ok() && expected.iter().all(|e| out.stderr.contains(e)), "{var}={value}: {out:?}");
        assert!(!out.all().contains(SECRET), "the secret leaked: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_for_each_service_are_clear_errors_that_never_print_the_secret() {
    let env = Env::new().await;
    // PostgreSQL: a role that does not exist.
    let bad_db = env.database_url.replacen("postgres://postgres@", &format!("postgres://nobody:{SECRET}@"), 1);
    let out = env.run_with(&["worker"], &[("DATABASE_URL", &bad_db)]);
    assert!(
        !out.ok() && out.stderr.contains("cannot connect to PostgreSQL at postgres://nobody:***@") && out.stderr.contains("nobody"),
        "{out:?}"
    );
    assert!(!out.all().contains(SECRET));

    // Redis: a password the server does not accept.
    let out = env.run_with(&["scheduler"], &[("REDIS_URL", &with_secret(&env.redis_url, "")), ("RUST_LOG", "trace")]);
    assert!(!out.ok() && out.stderr.contains("refused the credentials") && out.stderr.contains("REDIS_URL"), "{out:?}");
    assert!(!out.all().contains(SECRET), "the secret leaked:\n{}", out.stderr);

    // The search server: a secured one (played by the proxy) answers 401 to wrong credentials.
    let proxy = env.proxy().await;
    proxy.set(Faults { require_authorization: Some("ApiKey right-key".into()), ..Faults::default() });
    let out = env.run_with(&["worker"], &[("ELASTICSEARCH_URL", &proxy.url()), ("ELASTICSEARCH_API_KEY", SECRET), ("RUST_LOG", "trace")]);
    assert!(!out.ok() && out.stderr.contains("refused the credentials (HTTP 401)"), "{out:?}");
    assert!(!out.all().contains(SECRET), "the API key leaked:\n{}", out.stderr);
    let out = env.run_with(&["admin", "reindex"], &[("ELASTICSEARCH_URL", &with_secret(&proxy.url(), "elastic")), ("RUST_LOG", "trace")]);
    assert!(!out.ok() && out.stderr.contains("refused the credentials") && out.stderr.contains("elastic:***@"), "{out:?}");
    assert!(!out.all().contains(SECRET), "the password leaked:\n{}", out.stderr);
    // The right key works.
    env.run_with(&["admin", "status"], &[("ELASTICSEARCH_URL", &proxy.url()), ("ELASTICSEARCH_API_KEY", "right-key")]).expect_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_is_named_in_the_error_without_its_password() {
    let env = Env::new().await;
    let port = free_port();
    let url = format!("postgres://app:{SECRET}@127.0.0.1:{port}/x");
    let out = env.run_with(&["admin", "status"], &[("DATABASE_URL", &url), ("RUST_LOG", "trace")]);
    assert!(!out.ok());
    assert!(out.all().contains(&format!("cannot connect to PostgreSQL at postgres://app:***@127.0.0.1:{port}/x")), "{out:?}");
    assert!(!out.all().contains(SECRET), "a password leaked:\n{}", out.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_trace_logs_of_a_working_sync_or_status() {
    let env = Env::with_directory().await;
    // Passwords in all three URLs of a working `admin status` (the services take them or
    // need none).
    let (db, es, redis) =
        (with_secret(&env.database_url, "postgres"), with_secret(&env.es_url, "elastic"), with_secret(&env.redis_url, "default"));
    let out = env
        .run_with(&["admin", "status"], &[("DATABASE_URL", &db), ("ELASTICSEARCH_URL", &es), ("REDIS_URL", &redis), ("RUST_LOG", "trace")])
        .expect_ok();
    assert!(!out.all().contains(SECRET), "a password leaked:\n{}", out.all());

    // The index exists first, so the sync below writes the one student to the live index
    // only (while a first build runs, a batch writes to the build too: two writes).
    env.create_index().await;
    env.sql("INSERT INTO students (first_name, last_name, age, year_in_school) VALUES ('A', 'B', 20, 'FR')").await;
    let proxy = env.proxy().await;
    let basic = base64(&format!("elastic:{SECRET}"));
    proxy.set(Faults { require_authorization: Some(format!("Basic {basic}")), bulk_item_429: 0.5, ..Faults::on("_bulk") });
    let es = with_secret(&proxy.url(), "elastic");
    let db = env.database_url.replacen("postgres://postgres@", &format!("postgres://postgres:{SECRET}@"), 1);
    let secured = [("ELASTICSEARCH_URL", es.as_str()), ("DATABASE_URL", db.as_str()), ("RUST_LOG", "trace")];
    let out = env.run_with(&["sync"], &secured).expect_ok();
    assert!(out.stdout.contains("1 indexed"), "{out:?}");
    for leaked in [SECRET, &basic] {
        assert!(!out.all().contains(leaked), "a secret leaked into the trace log");
    }
    let out = env.run_with(&["admin", "status", "--json"], &secured);
    assert!(out.ok() && !out.all().contains(SECRET), "{out:?}");
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | (u32::from(c) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { T[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_misuse_gets_usage_errors() {
    let env = Env::new().await;
    let cases: [(&[&str], &[&str]); 7] = [
        (&["frobnicate"], &["unrecognized subcommand"]),
        (&["seed"], &["--students"]),
        (&["seed", "--students", "ten"], &["invalid value 'ten'"]),
        (&["worker", "--concurrency", "0"], &["--concurrency"]),
        (&["scheduler", "--interval", "fast"], &["--interval", "250ms, 5s"]),
        (&["admin", "reindex", "--cancel", "--resume"], &["cannot be used with"]),
        (&["admin", "verify", "--sample", "5", "--full"], &["cannot be used with"]),
    ];
    for (args, expected) in cases {
        let out = env.run(args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(expected.iter().all(|e| out.stderr.contains(e)), "{args:?}: expected {expected:?} in {}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_against_a_database_never_migrated_says_what_to_do() {
    let env = Env::new().await;
    // A database of this test's (dropped with it), without tidemark's schema.
    let bare = format!("{}_bare", env.db_name);
    env.sql(&format!("CREATE DATABASE {bare}")).await;
    let url = env.database_url.replace(&env.db_name, &bare);
    let out = env.run_with(&["worker"], &[("DATABASE_URL", &url)]);
    assert!(!out.ok() && out.stderr.contains("run `tidemark migrate` first"), "{out:?}");
}

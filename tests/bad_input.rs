//! Bad input gets a clear error that says what was wrong and what to do, exits non-zero,
//! loses nothing, and never prints a secret.

mod support;

use std::time::Duration;

use support::{
    fault_proxy::{FaultProxy, Faults},
    free_port, Env,
};

const SECRET: &str = "Hunter2-s3cr3t";

fn run(env: &Env, args: &[&str], vars: &[(&str, String)]) -> (bool, String, String) {
    let mut c = env.command();
    c.args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tidemark-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_values_are_refused_with_the_field_and_the_fix() {
    let env = Env::new().await;
    let cases = [
        ("[sync]\nlease = \"1s\"\n", "sync.lease"),
        ("[sync]\nmax_attempts = 0\n", "sync.max_attempts"),
        ("[scheduler]\ninterval = \"500ms\"\n", "scheduler.interval"),
        ("[sync]\nbulk_max_bytes = 10\n", "sync.bulk_max_bytes"),
        ("[sync]\nbackoff_base = \"ten\"\n", "not a duration"),
        ("[worker]\nconcurrency = -1\n", "concurrency"),
        ("[reindex]\nchunk_size = 0\n", "reindex.chunk_size"),
        ("[sync]\nbatch_size = 10\ncolour = \"blue\"\n", "unknown field `colour`"),
        ("[sync\n", "not valid"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = config_file(&format!("c{i}.toml"), text);
        let (ok, _, err) = run(&env, &["--config", path.to_str().unwrap(), "admin", "status"], &[]);
        assert!(!ok && err.contains(expected), "config {text:?}: expected an error mentioning {expected:?}, got: {err}");
    }
    let (ok, _, err) = run(&env, &["admin", "status"], &[("TIDEMARK_INDEX_ALIAS", "Bad Alias".into())]);
    assert!(!ok && err.contains("index_alias") && err.contains("lowercase letters"), "{err}");
    let (ok, _, err) = run(&env, &["--config", "/nonexistent/tidemark.toml", "admin", "status"], &[]);
    assert!(!ok && err.contains("cannot read config file /nonexistent/tidemark.toml"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_urls_are_refused_without_echoing_them() {
    let env = Env::new().await;
    let cases = [
        ("DATABASE_URL", format!("postgres//app:{SECRET}@db/x"), "DATABASE_URL is not a valid URL"),
        ("DATABASE_URL", format!("mysql://app:{SECRET}@db/x"), "not one of postgres, postgresql"),
        ("ELASTICSEARCH_URL", "localhost:9200".to_string(), "ELASTICSEARCH_URL"),
        ("ELASTICSEARCH_URL", format!("http://:{SECRET}@/"), "ELASTICSEARCH_URL"),
        ("REDIS_URL", format!("redis//:{SECRET}@r"), "REDIS_URL is not a valid URL"),
    ];
    for (var, value, expected) in cases {
        let (ok, out, err) = run(&env, &["admin", "status"], &[(var, value.clone())]);
        assert!(!ok && err.contains(expected), "{var}={value}: {err}");
        assert!(!err.contains(SECRET) && !out.contains(SECRET), "the secret leaked: {err}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_for_each_service_are_clear_errors_that_never_print_the_secret() {
    let env = Env::new().await;
    // PostgreSQL: a role that does not exist.
    let bad_db = env.database_url.replacen("postgres://postgres@", &format!("postgres://nobody:{SECRET}@"), 1);
    let (ok, out, err) = run(&env, &["worker"], &[("DATABASE_URL", bad_db)]);
    assert!(!ok && err.contains("cannot connect to PostgreSQL at postgres://nobody:***@") && err.contains("nobody"), "{err}");
    assert!(!format!("{out}{err}").contains(SECRET));

    // Redis: a password the server does not accept.
    let bad_redis = env.redis_url.replacen("redis://", &format!("redis://:{SECRET}@"), 1);
    let (ok, out, err) = run(&env, &["scheduler"], &[("REDIS_URL", bad_redis), ("RUST_LOG", "trace".into())]);
    assert!(!ok && err.contains("refused the credentials") && err.contains("REDIS_URL"), "{err}");
    assert!(!format!("{out}{err}").contains(SECRET), "the secret leaked:\n{err}");

    // The search server: a secured one (played by the proxy) answers 401 to wrong credentials.
    let proxy = FaultProxy::start(&env.es_url).await;
    proxy.set(Faults { require_authorization: Some("ApiKey right-key".into()), ..Faults::default() });
    let (ok, out, err) = run(
        &env,
        &["worker"],
        &[("ELASTICSEARCH_URL", proxy.url()), ("ELASTICSEARCH_API_KEY", SECRET.into()), ("RUST_LOG", "trace".into())],
    );
    assert!(!ok && err.contains("refused the credentials (HTTP 401)"), "{err}");
    assert!(!format!("{out}{err}").contains(SECRET), "the API key leaked:\n{err}");
    let with_password = proxy.url().replacen("http://", &format!("http://elastic:{SECRET}@"), 1);
    let (ok, out, err) = run(&env, &["admin", "reindex"], &[("ELASTICSEARCH_URL", with_password), ("RUST_LOG", "trace".into())]);
    assert!(!ok && err.contains("refused the credentials") && err.contains("elastic:***@"), "{err}");
    assert!(!format!("{out}{err}").contains(SECRET), "the password leaked:\n{err}");
    // The right key works.
    let (ok, _, err) =
        run(&env, &["admin", "status"], &[("ELASTICSEARCH_URL", proxy.url()), ("ELASTICSEARCH_API_KEY", "right-key".into())]);
    assert!(ok, "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_trace_logs_of_a_working_sync() {
    let env = Env::new().await;
    support::small_directory(&env).await;
    // The index exists first, so the sync below writes the one student to the live index
    // only (while a first build runs, a batch writes to the build too: two writes).
    env.create_index().await;
    env.sql("INSERT INTO students (first_name, last_name, age, year_in_school) VALUES ('A', 'B', 20, 'FR')").await;
    let proxy = FaultProxy::start(&env.es_url).await;
    let basic = format!("elastic:{SECRET}");
    proxy.set(Faults {
        require_authorization: Some(format!("Basic {}", base64(&basic))),
        bulk_item_429: 0.5,
        only_path: Some("_bulk".into()),
        ..Faults::default()
    });
    let es = proxy.url().replacen("http://", &format!("http://elastic:{SECRET}@"), 1);
    let db = env.database_url.replacen("postgres://postgres@", &format!("postgres://postgres:{SECRET}@"), 1);
    let (ok, out, err) =
        run(&env, &["sync"], &[("ELASTICSEARCH_URL", es.clone()), ("DATABASE_URL", db.clone()), ("RUST_LOG", "trace".into())]);
    assert!(ok, "{err}");
    assert!(out.contains("1 indexed"), "{out}");
    for leaked in [SECRET.to_string(), base64(&basic)] {
        assert!(!out.contains(&leaked) && !err.contains(&leaked), "a secret leaked into the trace log");
    }
    let (ok, out, err) =
        run(&env, &["admin", "status", "--json"], &[("ELASTICSEARCH_URL", es), ("DATABASE_URL", db), ("RUST_LOG", "trace".into())]);
    assert!(ok && !out.contains(SECRET) && !err.contains(SECRET), "{out}{err}");
    env.cleanup().await;
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | (u32::from(c) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_misuse_gets_usage_errors() {
    let env = Env::new().await;
    let cases: [(&[&str], &str); 6] = [
        (&["frobnicate"], "unrecognized subcommand"),
        (&["seed"], "--students"),
        (&["seed", "--students", "ten"], "invalid value 'ten'"),
        (&["worker", "--concurrency", "0"], "--concurrency"),
        (&["admin", "reindex", "--cancel", "--resume"], "cannot be used with"),
        (&["admin", "verify", "--sample", "5", "--full"], "cannot be used with"),
    ];
    for (args, expected) in cases {
        let out = env.command().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err}");
    }
    // A command against a database that was never migrated says what to do.
    let bare = format!("tidemark_test_{}_bare_{:06x}", support::run_id(), rand::random::<u32>() & 0xffffff);
    let admin = sqlx::PgPool::connect(&support::service_url("DATABASE_URL")).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {bare}")).execute(&admin).await.unwrap();
    let url = env.database_url.replace(&env.db_name, &bare);
    let (ok, _, err) = run(&env, &["worker"], &[("DATABASE_URL", url)]);
    assert!(!ok && err.contains("run `tidemark migrate` first"), "{err}");
    sqlx::query(&format!("DROP DATABASE {bare}")).execute(&admin).await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_search_server_fails_admin_commands_clearly_and_loses_nothing() {
    let env = Env::new().await;
    support::small_directory(&env).await;
    env.sql("INSERT INTO students (first_name, last_name, age, year_in_school) VALUES ('A', 'B', 20, 'FR')").await;
    let down = format!("http://127.0.0.1:{}", free_port());
    let (ok, out, err) = run(&env, &["sync"], &[("ELASTICSEARCH_URL", down.clone())]);
    assert!(!ok && err.contains(&format!("search server at {down}/ is unreachable")) && err.contains("Connection refused"), "{out}{err}");
    assert_eq!(env.scalar_i64("SELECT count(DISTINCT student_id) FROM tidemark.outstanding").await, 1, "the mark stays");
    let (ok, out, _) = run(&env, &["admin", "status"], &[("ELASTICSEARCH_URL", down)]);
    assert!(ok && out.contains("problem: search server at") && out.contains("outstanding marks    1"), "{out}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    env.engine().drain().await.unwrap();
    env.assert_converged().await;
    env.cleanup().await;
}

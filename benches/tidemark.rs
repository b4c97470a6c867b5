//! The benchmarks of BENCHMARKS.md: the docs/design.md performance targets, each measured
//! against a baseline in the same run, on real services (PostgreSQL, Redis, an OpenSearch node) and
//! real tidemark processes.
//!
//! Run it with `deploy/local/bench.sh [--quick]`, which starts the services, builds, runs
//! this harness and writes BENCHMARKS.md. Directly:
//!
//! ```text
//! cargo bench --bench tidemark -- [--quick] [--only fanout,reindex,overhead,freshness,facets,serve,writes,refinebio] [--out DIR]
//! ```
//!
//! with DATABASE_URL, REDIS_URL and ELASTICSEARCH_URL set. Results go to DIR
//! (default `target/bench`): `results.md`, `results.json`, and process logs in `logs/`.

mod support;

use std::path::PathBuf;

use anyhow::Result;
use support::{env::Services, report::Report, Plan};

const ALL: [&str; 8] = ["fanout", "reindex", "overhead", "freshness", "facets", "serve", "writes", "refinebio"];

struct Args {
    quick: bool,
    /// Debugging aid: serve the discarding endpoint and wait.
    serve_discard: bool,
    only: Vec<String>,
    out: PathBuf,
}

fn args() -> Result<Args> {
    let mut a = Args {
        quick: false,
        serve_discard: false,
        only: ALL.iter().map(|s| s.to_string()).collect(),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--serve-discard" => a.serve_discard = true,
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            "--only" => {
                let list = it.next().ok_or_else(|| anyhow::anyhow!("--only needs a list, e.g. --only fanout,facets"))?;
                a.only = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                if let Some(bad) = a.only.iter().find(|s| !ALL.contains(&s.as_str())) {
                    anyhow::bail!("unknown benchmark {bad:?}; choose among {}", ALL.join(", "));
                }
            }
            "--out" => a.out = PathBuf::from(it.next().ok_or_else(|| anyhow::anyhow!("--out needs a directory"))?),
            "-h" | "--help" => {
                println!("cargo bench --bench tidemark -- [--quick] [--only {}] [--out DIR] [--serve-discard]", ALL.join(","));
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

fn main() -> std::process::ExitCode {
    support::clock();
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // tidemark's own logs (warnings by default; RUST_LOG to change) go to a file.
    let _ = std::fs::create_dir_all(args.out.join("logs"));
    if let Ok(file) = std::fs::File::create(args.out.join("logs/harness.log")) {
        tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .init();
    }
    if args.serve_discard {
        let d = support::discard::Discard::start(&[("students".into(), "students_1".into())]);
        println!("discarding endpoint at {} (alias students → students_1); Ctrl-C to stop", d.url);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the chosen benchmarks in order; a failing benchmark is reported and the others
/// still run. Returns whether every benchmark ran (targets missed are not failures).
async fn run(args: Args) -> Result<bool> {
    let services = Services::from_env()?;
    let plan = Plan::new(args.quick, args.out.clone());
    std::fs::create_dir_all(plan.out_dir.join("logs"))?;
    let wants = |b: &str| args.only.iter().any(|o| o == b);
    let mut report = Report::default();
    let mut ok = true;
    progress!("{} run: {}", if plan.quick { "quick" } else { "full" }, args.only.join(", "));

    // Databases and indices a later benchmark can reuse (the facets, then the search application).
    let mut kept = support::reindex::Kept { discard_db: None, search: None };
    let facet_sizes: Vec<u64> = if wants("facets") { plan.facets_index.clone() } else { Vec::new() };
    if wants("fanout") {
        match support::fanout::run(&plan, &services, &mut kept, &facet_sizes).await {
            Ok(o) => report.add("1. Fan-out: a university renamed", "fanout", o),
            Err(e) => {
                ok = false;
                progress!("fan-out failed: {e:#}");
                report.failed("1. Fan-out", "fanout", &e);
            }
        }
        report.write(&plan.out_dir)?;
    }

    if wants("reindex") {
        let (r, k) = support::reindex::run(&plan, &services).await;
        kept.discard_db = k.discard_db;
        // An index kept by the fan-out comes first; the reindex's only when there is none.
        match (&kept.search, k.search) {
            (None, e) => kept.search = e,
            (Some(_), Some(e)) => e.cleanup().await,
            (Some(_), None) => {}
        }
        match r {
            Ok(o) => report.add("2. Full reindex", "reindex", o),
            Err(e) => {
                ok = false;
                progress!("reindex failed: {e:#}");
                report.failed("2. Full reindex", "reindex", &e);
            }
        }
        // Keep only what the facets can reuse (an index, or a database of the right size to index).
        let db_size = kept.discard_db.as_ref().map_or(0, |e| e.students);
        if !wants("facets") || !plan.facets_index.contains(&db_size) || kept.search.as_ref().is_some_and(|e| e.students == db_size) {
            if let Some(env) = kept.discard_db.take() {
                env.cleanup().await;
            }
        }
        if !wants("facets") || !plan.facets_index.contains(&kept.search.as_ref().map_or(0, |e| e.students)) {
            if let Some(env) = kept.search.take() {
                env.cleanup().await;
            }
        }
        report.write(&plan.out_dir)?;
    }

    if wants("overhead") {
        match support::overhead::run(&plan, &services).await {
            Ok(o) => report.add("3. Write overhead of the capture triggers", "overhead", o),
            Err(e) => {
                ok = false;
                progress!("write overhead failed: {e:#}");
                report.failed("3. Write overhead", "overhead", &e);
            }
        }
        report.write(&plan.out_dir)?;
    }

    if wants("freshness") {
        match support::freshness::run(&plan, &services).await {
            Ok(o) => report.add("4. Freshness under load", "freshness", o),
            Err(e) => {
                ok = false;
                progress!("freshness failed: {e:#}");
                report.failed("4. Freshness", "freshness", &e);
            }
        }
        report.write(&plan.out_dir)?;
    }

    // The search application's largest size reuses the facets' index of that size.
    let serve_largest = plan.serve_sizes.iter().copied().max().filter(|_| wants("serve"));
    if wants("facets") {
        match support::facets::run(&plan, &services, &mut kept, serve_largest).await {
            Ok(o) => report.add("5. Facets: index vs SQL", "facets", o),
            Err(e) => {
                ok = false;
                progress!("facets failed: {e:#}");
                report.failed("5. Facets", "facets", &e);
            }
        }
    }
    if let Some(env) = kept.discard_db.take() {
        env.cleanup().await;
    }
    let reuse = match kept.search.take() {
        Some(env) if Some(env.students) == serve_largest => Some(env),
        Some(env) => {
            env.cleanup().await;
            None
        }
        None => None,
    };

    if wants("serve") {
        match support::serve::run(&plan, &services, reuse).await {
            Ok(o) => report.add("6. Search application: latency under load, overhead, index vs SQL facets", "serve", o),
            Err(e) => {
                ok = false;
                progress!("serve failed: {e:#}");
                report.failed("6. Search application", "serve", &e);
            }
        }
    }
    report.write(&plan.out_dir)?;

    if wants("writes") {
        match support::writes::run(&plan, &services).await {
            Ok(o) => report.add("7. Write throughput under concurrency", "writes", o),
            Err(e) => {
                ok = false;
                progress!("write throughput failed: {e:#}");
                report.failed("7. Write throughput", "writes", &e);
            }
        }
        report.write(&plan.out_dir)?;
    }
    if wants("refinebio") {
        match support::refinebio::run(&plan, &services).await {
            Ok(o) => report.add("8. The refinebio model: an organism renamed, and the full reindex", "refinebio", o),
            Err(e) => {
                ok = false;
                progress!("refinebio failed: {e:#}");
                report.failed("8. refinebio", "refinebio", &e);
            }
        }
        report.write(&plan.out_dir)?;
    }
    println!("{}", report.markdown());
    progress!("results in {}", plan.out_dir.join("results.md").display());
    Ok(ok)
}

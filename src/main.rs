//! The `tidemark` binary: parse arguments, build the configuration, run one subcommand.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tidemark::{
    admin,
    config::{redact_url, Config, HumanDuration},
    db,
    engine::Engine,
    reindex,
    search::Search,
    seed, verify,
    workers::{self, Queue},
};
use tokio::sync::watch;

/// Keeps an Elasticsearch/OpenSearch index of students in step with PostgreSQL.
///
/// Services are given by DATABASE_URL, REDIS_URL and ELASTICSEARCH_URL (basic auth may sit
/// in the URL; or ELASTICSEARCH_API_KEY), ELASTICSEARCH_CA_CERT for a custom CA, and
/// optionally TIDEMARK_INDEX_ALIAS and TIDEMARK_QUEUE_NAMESPACE. Every other option lives
/// in the --config TOML file (see README.md). Logs go to stderr; RUST_LOG sets the level.
#[derive(Parser, Debug)]
#[command(name = "tidemark", version, about, long_about = None)]
struct Cli {
    /// TOML configuration file; unknown keys are refused. Environment variables win over it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or update the schema: domain tables, capture triggers, tidemark's own tables.
    Migrate,
    /// Fill empty domain tables with deterministic demo data.
    Seed {
        /// How many students.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=5_000_000))]
        students: u64,
        /// Random seed: the same seed gives the same rows.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run sync jobs from the queue until SIGTERM/SIGINT.
    Worker {
        /// Sync jobs run at once by this process [default: worker.concurrency, 2].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        concurrency: Option<u32>,
    },
    /// Enqueue a sync every interval (safe to run more than one), until SIGTERM/SIGINT.
    Scheduler {
        /// Whole seconds, e.g. 5s [default: scheduler.interval, 5s].
        #[arg(long)]
        interval: Option<HumanDuration>,
    },
    /// Sync in this process, without Redis, until nothing is left; then exit.
    Sync,
    /// Operate a running deployment.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Outstanding marks, freshness lag, fan-outs, dead letters, index, queue depth.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Documents the index refused, with the server's reason.
    Failed {
        #[arg(long)]
        json: bool,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Re-mark dead-lettered students so the next sync tries them again.
    RetryFailed {
        /// Only these students (repeatable); all by default.
        #[arg(long = "student", value_name = "ID")]
        students: Vec<i64>,
    },
    /// Rebuild the whole index into a new generation while the live one keeps serving;
    /// the alias moves once the new index is verified.
    Reindex {
        /// Show progress until the build is promoted or fails.
        #[arg(long)]
        wait: bool,
        /// Student ids per chunk job [default: reindex.chunk_size, 10000].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000), conflicts_with_all = ["cancel", "resume"])]
        chunk_size: Option<u32>,
        /// Abandon the running build and delete its index.
        #[arg(long, conflicts_with_all = ["resume", "wait"])]
        cancel: bool,
        /// Give back the chunks of vanished workers and wake the workers (after a crash
        /// or a Redis flush; the scheduler's ticks do the same, more slowly).
        #[arg(long)]
        resume: bool,
    },
    /// Point the alias back at the index the last reindex replaced.
    Rollback,
    /// Compare the index with the database: missing, extra and differing documents.
    Verify {
        /// Compare this many random students (and as many random documents).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000), conflicts_with = "full")]
        sample: u32,
        /// Compare everything.
        #[arg(long)]
        full: bool,
        /// Re-mark every student found missing, extra or differing.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_redis=warn".into()),
        )
        .init();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    config.validate()?;
    let config = Arc::new(config);
    match cli.command {
        Command::Migrate => {
            let pool = db::connect(&config, 2).await?;
            db::migrate(&pool).await?;
            tracing::info!("migrations applied");
        }
        Command::Seed { students, seed: s } => {
            let pool = db::connect(&config, 2).await?;
            let report = seed::seed(&pool, &seed::SeedOptions { students, seed: s }).await?;
            println!(
                "seeded {} students, {} universities, {} courses, {} enrollments in {:.1}s",
                report.students,
                report.universities,
                report.courses,
                report.enrollments,
                report.elapsed.as_secs_f64()
            );
        }
        Command::Sync => {
            let engine = engine(&config, None).await?;
            let r = engine.drain().await?;
            println!(
                "synced: {} indexed, {} deleted, {} dead-lettered, {} fanned out, in {} batches{}",
                r.indexed,
                r.deleted,
                r.dead,
                r.fanned_out,
                r.batches,
                if r.stalled { " (stopped: batches keep failing; marks remain)" } else { "" }
            );
        }
        Command::Worker { concurrency } => {
            let concurrency = concurrency.unwrap_or(config.worker.concurrency) as usize;
            run_worker(config, concurrency).await?;
        }
        Command::Scheduler { interval } => {
            let mut config = (*config).clone();
            if let Some(i) = interval {
                config.scheduler.interval = i;
                config.validate()?;
            }
            run_scheduler(Arc::new(config)).await?;
        }
        Command::Admin { command } => admin(config, command).await?,
    }
    Ok(())
}

async fn engine(config: &Arc<Config>, queue: Option<Queue>) -> Result<Engine> {
    let pool = db::connect(config, config.worker.concurrency + 4).await?;
    check_schema(&pool).await?;
    let search = Search::new(config)?;
    Ok(Engine::new(pool, search, config.clone(), queue))
}

async fn check_schema(pool: &sqlx::PgPool) -> Result<()> {
    let ok: bool = sqlx::query_scalar("SELECT to_regclass('tidemark.dirty_students') IS NOT NULL").fetch_one(pool).await?;
    if !ok {
        bail!("the database has no tidemark schema yet; run `tidemark migrate` first");
    }
    Ok(())
}

/// Connects to Redis, retrying with capped backoff until it answers or shutdown comes.
async fn connect_queue(config: &Config, shutdown: &mut watch::Receiver<bool>) -> Result<Option<Queue>> {
    let url = config.redis_url()?;
    let redacted = redact_url(url.expose());
    let mut wait = Duration::from_millis(500);
    loop {
        match Queue::connect(url.expose(), &redacted, &config.queue_namespace).await {
            Ok(q) => return Ok(Some(q)),
            // Waiting cannot mend wrong credentials.
            Err(e @ workers::QueueError::Unauthorized { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = wait.as_secs_f64(), "waiting for Redis");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stop requested; finishing running jobs");
        let _ = tx.send(true);
    });
    rx
}

fn stopped(mut rx: watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// Turns database notifications (one per writing transaction) into nudges, so a change is
/// picked up within milliseconds rather than at the next tick.
fn spawn_listener(pool: sqlx::PgPool, queue: Queue) {
    tokio::spawn(async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for change notifications; retrying in 2s");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen("tidemark_sync").await {
                tracing::warn!(error = %e, "LISTEN failed; retrying in 2s");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            loop {
                match listener.recv().await {
                    Ok(_) => {
                        // Coalesce a burst: whatever else already arrived rides on this nudge.
                        // (next_buffered does not wait; try_recv would.)
                        while listener.next_buffered().is_some() {}
                        if let Err(e) = queue.nudge("notify").await {
                            tracing::debug!(error = %e, "nudge after notification failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "change-notification connection lost; reconnecting");
                        break;
                    }
                }
            }
        }
    });
}

async fn run_worker(config: Arc<Config>, concurrency: usize) -> Result<()> {
    let mut shutdown = shutdown_signal();
    let pool = db::connect(&config, concurrency as u32 + 4).await?;
    check_schema(&pool).await?;
    let search = Search::new(&config)?;
    match search.ping().await {
        Ok(()) => tracing::info!(url = search.redacted_url(), "search server reachable"),
        Err(e @ tidemark::search::SearchError::Unauthorized { .. }) => return Err(e.into()),
        Err(e) => tracing::warn!(error = %e, "search server not reachable yet; sync jobs will keep failing and retrying until it is"),
    }
    let name = format!("tidemark-worker-{}", std::process::id());
    let mut listening = false;
    // One lease owner for the life of the process, so the leases of steps cut short by a
    // lost queue can be given back when the queue loop restarts.
    let owner = Engine::new(pool.clone(), search.clone(), config.clone(), None).owner;
    while !*shutdown.borrow() {
        let Some(queue) = connect_queue(&config, &mut shutdown).await? else { break };
        tracing::info!(concurrency, queue = %config.queue_namespace, "worker started");
        if !listening {
            spawn_listener(pool.clone(), queue.clone());
            listening = true;
        }
        let mut engine = Engine::new(pool.clone(), search.clone(), config.clone(), Some(queue.clone()));
        engine.owner = owner.clone();
        let engine = Arc::new(engine);
        // Whatever was left before this (re)start is looked for at once.
        let _ = queue.nudge("worker-start").await;
        let run = workers::run_worker(queue, engine, &name, concurrency, stopped(shutdown.clone()));
        // After a stop request, running jobs get `shutdown_timeout` to finish; then the
        // process gives their marks back and exits anyway.
        let grace = {
            let stop = stopped(shutdown.clone());
            let timeout = config.worker.shutdown_timeout.0;
            async move {
                stop.await;
                tokio::time::sleep(timeout).await;
            }
        };
        let result = tokio::select! {
            r = run => r,
            () = grace => {
                tracing::warn!(timeout = %config.worker.shutdown_timeout, "running jobs did not finish in time; giving their marks back");
                Ok(())
            }
        };
        match result {
            Ok(()) if *shutdown.borrow() => break,
            Ok(()) => tracing::warn!("queue worker ended; restarting"),
            Err(e) => tracing::warn!(error = %e, "queue worker failed (Redis lost?); reconnecting"),
        }
        // Steps that were running are gone with the queue worker: give their marks back
        // now rather than when their leases run out.
        match tidemark::pipeline::claim::release_all(&pool, &owner).await {
            Ok(n) if n > 0 => tracing::info!(released = n, "leases of interrupted steps given back"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not give back leases; they run out by themselves"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
    let released = tidemark::pipeline::claim::release_all(&pool, &owner).await?;
    tracing::info!(released, "worker stopped; leases given back");
    Ok(())
}

async fn run_scheduler(config: Arc<Config>) -> Result<()> {
    let mut shutdown = shutdown_signal();
    let pool = db::connect(&config, 2).await?;
    check_schema(&pool).await?;
    let mut listening = false;
    while !*shutdown.borrow() {
        let Some(queue) = connect_queue(&config, &mut shutdown).await? else { break };
        if !listening {
            spawn_listener(pool.clone(), queue.clone());
            listening = true;
        }
        tracing::info!(interval = %config.scheduler.interval, "scheduler started");
        match workers::run_scheduler(queue, config.scheduler.interval.0, stopped(shutdown.clone())).await {
            Ok(()) if *shutdown.borrow() => break,
            Ok(()) => tracing::warn!("scheduler ended; restarting"),
            Err(e) => tracing::warn!(error = %e, "scheduler failed (Redis lost?); reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
    Ok(())
}

/// One quick attempt at Redis (admin commands must not hang on it).
async fn connect_queue_once(config: &Config) -> Option<Queue> {
    let url = config.redis_url().ok()?;
    match tokio::time::timeout(Duration::from_secs(5), Queue::connect(url.expose(), &redact_url(url.expose()), &config.queue_namespace)).await {
        Ok(Ok(q)) => Some(q),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Redis unreachable");
            None
        }
        Err(_) => None,
    }
}

/// Shows a build's progress until it is promoted or fails; the error says why it failed.
async fn wait_for_build(pool: &sqlx::PgPool, id: i64) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let start = std::time::Instant::now();
    let mut last_line = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let b = reindex::get(pool, id).await?;
        let elapsed = start.elapsed().as_secs_f64().max(0.001);
        let rate = b.docs_done as f64 / elapsed;
        let left = (b.docs_total - b.docs_done).max(0) as f64;
        let eta = if rate > 0.0 { format!("{:.0}s", left / rate) } else { "?".into() };
        let pct = if b.docs_total > 0 { 100.0 * b.docs_done as f64 / b.docs_total as f64 } else { 100.0 };
        let filled = (pct / 5.0) as usize;
        let line = format!(
            "[{}{}] {}/{} documents  {:.0} docs/s  ETA {}  ({})",
            "#".repeat(filled.min(20)),
            ".".repeat(20 - filled.min(20)),
            b.docs_done,
            b.docs_total,
            rate,
            eta,
            b.state
        );
        if tty {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else if last_line.elapsed() >= Duration::from_secs(5) || !b.is_active() {
            eprintln!("{line}");
            last_line = std::time::Instant::now();
        }
        if !b.is_active() {
            if tty {
                eprintln!();
            }
            return match b.state.as_str() {
                "done" => {
                    println!(
                        "reindex #{} done: {} holds {} documents, verified and live behind {} after {:.1}s{}",
                        b.id,
                        b.target_index,
                        b.docs_done,
                        b.alias,
                        elapsed,
                        b.previous_index.map(|p| format!("; {p} kept for `tidemark admin rollback`")).unwrap_or_default()
                    );
                    Ok(())
                }
                state => bail!("reindex #{} {state}: {}; the alias did not move", b.id, b.message.unwrap_or_default()),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn admin(config: Arc<Config>, command: AdminCommand) -> Result<()> {
    let pool = db::connect(&config, 2).await?;
    check_schema(&pool).await?;
    match command {
        AdminCommand::Status { json } => {
            let search = Search::new(&config)?;
            let queue = match config.redis_url() {
                Ok(url) => match tokio::time::timeout(
                    Duration::from_secs(5),
                    Queue::connect(url.expose(), &redact_url(url.expose()), &config.queue_namespace),
                )
                .await
                {
                    Ok(Ok(q)) => Some(q),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "queue depth unknown");
                        None
                    }
                    Err(_) => None,
                },
                Err(_) => None,
            };
            let status = admin::status(&pool, &search, queue.as_ref(), &config.index_alias).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
        }
        AdminCommand::Failed { json, limit } => {
            let rows = admin::failed(&pool, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no dead letters");
            } else {
                println!("{:>10}  {:>6}  {:>8}  {:<20}  reason", "student", "status", "attempts", "last failed");
                for r in rows {
                    println!(
                        "{:>10}  {:>6}  {:>8}  {:<20}  {}",
                        r.student_id,
                        r.status.map_or("-".into(), |s| s.to_string()),
                        r.attempts,
                        r.last_failed_at.format("%Y-%m-%d %H:%M:%S"),
                        r.error
                    );
                }
            }
        }
        AdminCommand::Reindex { wait, chunk_size, cancel, resume } => {
            let search = Search::new(&config)?;
            let alias = &config.index_alias;
            let queue = connect_queue_once(&config).await;
            let build = if cancel {
                let b = reindex::cancel(&pool, &search, alias).await?;
                println!("reindex #{} cancelled; {} deleted; the alias never moved", b.id, b.target_index);
                return Ok(());
            } else if resume {
                let (b, released) = reindex::resume(&pool, alias).await?;
                println!("reindex #{} resumed: {released} abandoned chunks given back", b.id);
                b
            } else {
                let size = chunk_size.unwrap_or(config.reindex.chunk_size);
                let b = reindex::start(&pool, &search, alias, size, "requested with `tidemark admin reindex`").await?;
                println!(
                    "reindex #{} started: building {} ({} students in {} chunks){}",
                    b.id,
                    b.target_index,
                    b.docs_total,
                    b.chunks_total,
                    b.previous_index.as_ref().map(|p| format!("; {p} keeps serving meanwhile")).unwrap_or_default()
                );
                b
            };
            match &queue {
                Some(q) => {
                    let _ = q.nudge("reindex").await;
                }
                None => eprintln!("warning: Redis is unreachable, so no worker was woken; the build starts when workers see the scheduler's next tick"),
            }
            if wait {
                wait_for_build(&pool, build.id).await?;
            }
        }
        AdminCommand::Rollback => {
            let search = Search::new(&config)?;
            let (from, to) = reindex::rollback(&pool, &search, &config.index_alias).await?;
            if let Some(q) = connect_queue_once(&config).await {
                let _ = q.nudge("rollback").await;
            }
            println!("alias {} points at {to} again (was {from}); every student is marked so {to} catches up", config.index_alias);
        }
        AdminCommand::Verify { sample, full, repair, json } => {
            let search = Search::new(&config)?;
            let engine = Engine::new(pool.clone(), search, config.clone(), None);
            let mode = if full { verify::Mode::Full } else { verify::Mode::Sample(sample) };
            let report = verify::verify(&engine, mode).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            if repair && !report.is_clean() {
                let n = verify::repair(&engine, &report).await?;
                if let Some(q) = connect_queue_once(&config).await {
                    let _ = q.nudge("repair").await;
                }
                println!("repair: re-marked {n} students; the next sync rewrites them");
            } else if !report.is_clean() {
                eprintln!("run again with --repair to re-mark them");
                std::process::exit(3);
            }
        }
        AdminCommand::RetryFailed { students } => {
            let only = (!students.is_empty()).then_some(students.as_slice());
            let n = admin::retry_failed(&pool, only).await.context("re-marking dead letters")?;
            println!("re-marked {n} dead-lettered students; the next sync retries them");
        }
    }
    Ok(())
}

//! The `tidemark` binary: parse arguments, build the configuration, run one subcommand.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tidemark::{
    admin,
    catalog::{Build, BuildState},
    config::{Config, HumanDuration},
    db,
    process::{
        self,
        admin::{self as admin_endpoint, Admin},
        connect_queue_once,
    },
    reindex,
    services::Services,
    sync::{self, Syncer},
    verify,
};
use tidemark_seeds as seeds;

/// Keeps an Elasticsearch/OpenSearch index in step with PostgreSQL, documents as a model
/// file declares them (the student directory by default).
///
/// Services are given by DATABASE_URL, REDIS_URL and ELASTICSEARCH_URL (basic auth may sit
/// in the URL; or ELASTICSEARCH_API_KEY), ELASTICSEARCH_CA_CERT for a custom CA, and
/// optionally TIDEMARK_INDEX_ALIAS and TIDEMARK_QUEUE_NAMESPACE. Every other option lives
/// in the --config TOML file (see README.md). Logs go to stderr; RUST_LOG sets the level.
#[derive(Parser, Debug)]
#[command(name = "tidemark", version, about, long_about = None)]
struct Cli {
    /// TOML configuration file; unknown keys are refused. Environment variables win over it.
    #[arg(long, global = true, env = "TIDEMARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The model: a model file, or a shipped model (students, refinebio) [default: the
    /// config's `model`, students].
    #[arg(long, global = true, env = "TIDEMARK_MODEL", value_name = "FILE|NAME")]
    model: Option<String>,
    /// Where worker, scheduler and serve answer /metrics, /healthz and /readyz (off when
    /// not given), e.g. 127.0.0.1:9187.
    #[arg(long, global = true, env = "TIDEMARK_ADMIN_ADDR", value_name = "HOST:PORT")]
    admin_addr: Option<std::net::SocketAddr>,
    /// Log lines as text for people, or one JSON object a line for log pipelines.
    #[arg(long, global = true, env = "TIDEMARK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or update tidemark's own tables and install the model's capture triggers (the
    /// model's tables must exist).
    Migrate,
    /// Check and show the model.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Create a shipped model's tables where missing and fill them with deterministic demo
    /// data (the students model: --students N; refinebio: --experiments N).
    Seed {
        /// How many students (students model).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=5_000_000), required_unless_present = "experiments")]
        students: Option<u64>,
        /// How many experiments (refinebio model).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000), conflicts_with = "students")]
        experiments: Option<u64>,
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
        /// Whole seconds, e.g. 5s or 1m [default: scheduler.interval, 5s].
        #[arg(long)]
        interval: Option<HumanDuration>,
    },
    /// Sync in this process, without Redis, until nothing is left; then exit.
    Sync,
    /// Serve the search application (faceted page, JSON API, autocomplete, a page per document)
    /// until SIGTERM/SIGINT. Read-only.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
    },
    /// Operate a running deployment.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Check the model against the database: tables, columns, key types, and the indexes a
    /// fan-out needs (with the CREATE INDEX to run when one is missing).
    Check,
    /// Print the SQL `migrate` installs for the model (the capture triggers), for review.
    Sql,
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
    /// Re-mark dead-lettered documents so the next sync tries them again.
    RetryFailed {
        /// Only these documents, by key (repeatable); all by default.
        #[arg(long = "key", alias = "student", value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Rebuild the whole index into a new generation while the live one keeps serving;
    /// the alias moves once the new index is verified.
    Reindex {
        /// Show progress until the build is promoted or fails.
        #[arg(long)]
        wait: bool,
        /// Documents per chunk job [default: reindex.chunk_size, 10000].
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
    /// After restoring the database from a backup older than the index: move the version
    /// sequence past every version the index holds (then run `admin reindex`).
    RepairSequence,
    /// Compare the index with the database: missing, extra and differing documents.
    Verify {
        /// Compare this many random rows (and as many random documents).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000), conflicts_with = "full")]
        sample: u32,
        /// Compare everything.
        #[arg(long)]
        full: bool,
        /// Re-mark every document found missing, extra or differing.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_redis=warn".into());
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match cli.log_format {
        // One object a line; span fields (batch_id, index, owner, …) under "span"/"spans".
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => logs.init(),
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code of `admin verify` when it found differences (repaired or not), and of `sync`
/// when it stopped with marks left: scripts can tell "ran, found trouble" (3) from "could
/// not run" (1) and from a usage error (2).
const FOUND_TROUBLE: u8 = 3;

async fn run(cli: Cli) -> Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(model) = &cli.model {
        config.set_model(model.clone());
    }
    config.validate()?;
    let config = Arc::new(config);
    match cli.command {
        Command::Migrate => {
            let pool = db::connect(&config, 2).await?;
            let model = config.model();
            db::migrate(&pool, &model).await?;
            tracing::info!(model = %model.name, "tidemark's tables are up to date and the model's capture is installed");
        }
        Command::Model { command } => return model_command(&config, command).await,
        Command::Seed { students: None, experiments: Some(experiments), seed } => {
            let pool = db::connect(&config, 2).await?;
            let r = seeds::refinebio::seed(&pool, &seeds::refinebio::Options { experiments, seed }).await?;
            println!(
                "seeded {} experiments, {} samples, {} organisms, {} platforms, {} experiment-sample pairs in {:.1}s",
                r.experiments,
                r.samples,
                r.organisms,
                r.platforms,
                r.pairs,
                r.elapsed.as_secs_f64()
            );
        }
        Command::Seed { students, seed, .. } => {
            let students = students.context("--students N or --experiments N")?;
            let pool = db::connect(&config, 2).await?;
            let r = seeds::seed(&pool, &seeds::SeedOptions { students, seed }).await?;
            println!(
                "seeded {} students, {} universities, {} courses, {} enrollments in {:.1}s",
                r.students,
                r.universities,
                r.courses,
                r.enrollments,
                r.elapsed.as_secs_f64()
            );
        }
        Command::Sync => {
            let services = Services::connect(config.clone(), config.worker.concurrency + 4).await?;
            sync::check_sequence(&services).await?;
            let r = Syncer::new(services).drain().await?;
            println!(
                "synced: {} indexed, {} deleted, {} dead-lettered, {} fanned out, in {} batches{}",
                r.indexed,
                r.deleted,
                r.dead,
                r.fanned_out,
                r.batches,
                if r.stalled { " (stopped: batches keep failing; marks remain)" } else { "" }
            );
            if r.stalled {
                return Ok(ExitCode::from(FOUND_TROUBLE));
            }
        }
        Command::Worker { concurrency } => {
            let concurrency = concurrency.unwrap_or(config.worker.concurrency);
            let services = Services::connect(config, concurrency + 5).await?;
            let stop = process::on_signal();
            let admin = start_admin_endpoint(cli.admin_addr, &services, true, &stop);
            let result = process::worker::run(services, concurrency as usize, stop.clone().cancelled_owned()).await;
            stop.cancel();
            finish(result, admin).await?;
        }
        Command::Scheduler { interval } => {
            let mut config = (*config).clone();
            if let Some(i) = interval {
                config.scheduler.interval = i;
                config.validate()?;
            }
            let services = Services::connect(Arc::new(config), 3).await?;
            let interval = services.config.scheduler.interval.0;
            let stop = process::on_signal();
            let admin = start_admin_endpoint(cli.admin_addr, &services, true, &stop);
            let result = process::scheduler::run(services, interval, stop.clone().cancelled_owned()).await;
            stop.cancel();
            finish(result, admin).await?;
        }
        Command::Serve { addr } => {
            // Each search with engine=sql runs five statements at once; 16 connections
            // serve a few of those side by side, and every other page needs one.
            let services = Services::connect(config, 16).await?;
            let stop = process::on_signal();
            let admin = start_admin_endpoint(cli.admin_addr, &services, false, &stop);
            let result = process::serve::run(services, addr, stop.clone().cancelled_owned()).await;
            stop.cancel();
            admin_and(result.map_err(anyhow::Error::from), admin).await?;
        }
        Command::Admin { command } => return admin(config, command).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// `tidemark model check` / `model sql`.
async fn model_command(config: &Config, command: ModelCommand) -> Result<ExitCode> {
    let model = config.model();
    match command {
        ModelCommand::Sql => {
            // What `migrate` would install on this database (which foreign keys exist decides
            // whether inserting a related row marks anything).
            let pool = db::connect(config, 1).await?;
            let mut conn = pool.acquire().await?;
            let protected = tidemark::model::check::protected_places(&mut conn, &model).await?;
            print!("{}", tidemark::model::capture::capture_sql(&model, &protected));
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Check => {
            let pool = db::connect(config, 1).await?;
            let mut conn = pool.acquire().await?;
            let report = tidemark::model::check::check(&mut conn, &model).await?;
            println!("model {} ({}): {} tables", model.name, config.model, tidemark::model::sql::places(&model).len() + 1);
            print!("{}", report.render());
            Ok(if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(FOUND_TROUBLE) })
        }
    }
}

async fn admin(config: Arc<Config>, command: AdminCommand) -> Result<ExitCode> {
    let services = Services::connect(config.clone(), 2).await?;
    let alias = &config.index_alias;
    let nudge = |reason| nudge(&config, reason);
    match command {
        AdminCommand::Status { json } => {
            let queue = connect_queue_once(&config).await.map_err(|e| e.to_string());
            let status = admin::status(&services, queue.as_ref().map_err(Clone::clone)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
        }
        AdminCommand::Failed { json, limit } => {
            let rows = admin::failed(&services.pool, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", admin::render_failed(&rows));
            }
        }
        AdminCommand::Reindex { wait, chunk_size, cancel, resume } => {
            let build = if cancel {
                let b = reindex::cancel(&services).await?;
                println!("reindex #{} cancelled; {} deleted; the alias never moved", b.id, b.target_index);
                return Ok(ExitCode::SUCCESS);
            } else if resume {
                let (b, released) = reindex::resume(&services).await?;
                println!("reindex #{} resumed: {released} abandoned chunks given back", b.id);
                b
            } else {
                let size = chunk_size.unwrap_or(config.reindex.chunk_size);
                let b = reindex::start(&services, size, "requested with `tidemark admin reindex`").await?;
                println!(
                    "reindex #{} started: building {} ({} in {}){}",
                    b.id,
                    b.target_index,
                    services.model.count(b.docs_total.max(0) as u64),
                    tidemark::model::plural(b.chunks_total.max(0) as u64, "chunk", "chunks"),
                    b.previous_index.as_ref().map(|p| format!("; {p} keeps serving meanwhile")).unwrap_or_default()
                );
                b
            };
            nudge("reindex").await;
            if wait {
                wait_for_build(&services, build).await?;
            }
        }
        AdminCommand::Rollback => {
            let (from, to) = reindex::rollback(&services).await?;
            nudge("rollback").await;
            println!(
                "alias {alias} points at {to} again (was {from}); every one of the {} is marked so {to} catches up",
                services.model.plural()
            );
        }
        AdminCommand::Verify { sample, full, repair, json } => {
            let mode = if full { verify::Mode::Full } else { verify::Mode::Sample(sample) };
            let report = verify::verify(&services, mode).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            if report.is_clean() {
                return Ok(ExitCode::SUCCESS);
            }
            if repair {
                let n = verify::repair(&services, &report).await?;
                nudge("repair").await;
                println!("repair: re-marked {}; the next sync rewrites them", services.model.count(n));
            } else {
                eprintln!("run again with --repair to re-mark them");
            }
            return Ok(ExitCode::from(FOUND_TROUBLE));
        }
        AdminCommand::RepairSequence => {
            let next = sync::repair_sequence(&services).await?;
            println!(
                "tidemark.seq is at {next} now, past every version the index holds. The index may hold changes the restored \
                 database lost: rebuild it from the database with `tidemark admin reindex`"
            );
        }
        AdminCommand::RetryFailed { keys } => {
            let only = (!keys.is_empty()).then_some(keys.as_slice());
            let n = admin::retry_failed(&services.pool, only).await.context("re-marking dead letters")?;
            nudge("retry-failed").await;
            println!("re-marked {} from the dead letters; the next sync retries them", services.model.count(n));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The process's result, after its admin endpoint (if any) has stopped too; an admin
/// endpoint that could not start is the process's error.
async fn finish(
    result: Result<(), process::ProcessError>,
    admin: Option<tokio::task::JoinHandle<Result<(), process::ProcessError>>>,
) -> Result<()> {
    admin_and(result.map_err(anyhow::Error::from), admin).await
}

/// Starts the admin endpoint (`/metrics`, `/healthz`, `/readyz`) of a long-running process
/// on `addr`, if one was given, until `stop`.
fn start_admin_endpoint(
    addr: Option<std::net::SocketAddr>,
    services: &Services,
    uses_redis: bool,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<Result<(), process::ProcessError>>> {
    addr.map(|addr| tokio::spawn(admin_endpoint::serve(addr, Admin::new(services.clone(), uses_redis), stop.clone().cancelled_owned())))
}

async fn admin_and(result: Result<()>, admin: Option<tokio::task::JoinHandle<Result<(), process::ProcessError>>>) -> Result<()> {
    let admin = match admin {
        Some(task) => task.await.context("the admin endpoint's task")?,
        None => Ok(()),
    };
    result?;
    Ok(admin?)
}

/// Wakes the workers after a command that gave them work. Redis being down loses nothing
/// (the scheduler's next tick finds the work), so it is only said.
async fn nudge(config: &Config, reason: &str) {
    match connect_queue_once(config).await {
        Ok(q) => {
            let _ = q.nudge(reason).await;
        }
        Err(e) => eprintln!("warning: {e}; no worker was woken: the workers start when they see the scheduler's next tick"),
    }
}

/// Shows a build's progress (documents, rate, ETA) until it is promoted or fails; the error
/// says why it failed. On a terminal a bar; otherwise a line every 5 s. The rate counts only
/// what was written while watching, so it is right after `--resume` too.
async fn wait_for_build(services: &Services, build: Build) -> Result<()> {
    let bar = ProgressBar::with_draw_target(Some(build.docs_total.max(0) as u64), ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template("[{bar:20}] {pos}/{len} documents  {msg}").expect("a valid template").progress_chars("#>."));
    bar.set_position(build.docs_done.max(0) as u64);
    bar.reset_eta();
    let mut last_line: Option<std::time::Instant> = None;
    let last = reindex::watch(services, build.id, Duration::from_millis(500), |b| {
        bar.set_length(b.docs_total.max(0) as u64);
        bar.set_position(b.docs_done.max(0) as u64);
        let eta = if bar.per_sec() > 0.0 { format!("{}", HumanDuration(Duration::from_secs(bar.eta().as_secs()))) } else { "?".into() };
        bar.set_message(format!("{:.0} docs/s  ETA {eta}  ({})", bar.per_sec(), b.state));
        if bar.is_hidden() && (last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) || !b.is_active()) {
            eprintln!("{}/{} documents  {:.0} docs/s  ETA {eta}  ({})", b.docs_done, b.docs_total, bar.per_sec(), b.state);
            last_line = Some(std::time::Instant::now());
        }
    })
    .await?;
    bar.finish();
    let elapsed = bar.elapsed().as_secs_f64();
    match last.state {
        BuildState::Done => {
            println!(
                "reindex #{} done: {} holds {} documents, verified and live behind {} after {elapsed:.1}s{}",
                last.id,
                last.target_index,
                last.docs_done,
                last.alias,
                last.previous_index.map(|p| format!("; {p} kept for `tidemark admin rollback`")).unwrap_or_default()
            );
            Ok(())
        }
        state => bail!("reindex #{} {state}: {}; the alias did not move", last.id, last.message.unwrap_or_default()),
    }
}

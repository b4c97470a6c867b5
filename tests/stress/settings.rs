//! The knobs (see the crate's documentation), what the worker processes are configured
//! with, the fault plan, and the waves of chaos and of the body limit.

use std::{str::FromStr, time::Duration};

use crate::{model::Model, support::fault_proxy::Faults};

pub struct Settings {
    pub model: Model,
    pub seed: u64,
    pub chaos: Duration,
    /// Documents seeded: students, or experiments for refinebio.
    pub rows: u64,
    pub writers: usize,
    pub workers: usize,
    pub converge: Duration,
    pub fault_path: Option<String>,
    pub keep_logs: bool,
}

fn knob<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        _ => default,
    }
}

impl Settings {
    pub fn from_env(model: Model) -> Settings {
        let (rows, default_rows) = model.rows_knob();
        let random_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000;
        Settings {
            model,
            seed: knob("STRESS_SEED", random_seed),
            chaos: Duration::from_secs(knob("STRESS_SECONDS", model.default_seconds()).max(5)),
            rows: knob(rows, default_rows).max(100),
            writers: knob("STRESS_WRITERS", 4usize).max(1),
            workers: knob("STRESS_WORKERS", 3usize).max(1),
            converge: Duration::from_secs(knob("STRESS_CONVERGE_SECONDS", 300u64)),
            fault_path: std::env::var("STRESS_FAULT_PATH").ok().filter(|s| !s.is_empty()),
            keep_logs: std::env::var("STRESS_KEEP_LOGS").is_ok_and(|v| !v.is_empty() && v != "0"),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "model {}, seed {} (STRESS_SEED), {}s of chaos (STRESS_SECONDS), {} {} ({}), {} writers, {} workers",
            self.model.name(),
            self.seed,
            self.chaos.as_secs(),
            self.rows,
            self.model.table(),
            self.model.rows_knob().0,
            self.writers,
            self.workers
        )
    }
}

/// What the worker processes read with `--config`: a short lease, so a killed worker's
/// marks and chunks come back within seconds, yet one that covers a batch's sending as
/// `Config::validate` demands (batch_timeout + request_timeout = 20 s). Small batches keep
/// one `_bulk` (dual-written during the rebuild: 2 × 200 ops) short; the request timeout is
/// generous because a search server on a shared 2-core machine can take seconds per
/// `_bulk` when every worker writes at once, and a timed-out `_bulk` is still executed by
/// the server, so a short timeout only multiplies its load.
pub const WORKER_CONFIG: &str = r#"
[sync]
batch_size = 200
bulk_max_docs = 500
lease = "20s"
backoff_base = "50ms"
backoff_cap = "1s"
max_attempts = 5
request_timeout = "15s"
batch_timeout = "5s"

[index]
number_of_replicas = 0

[reindex]
chunk_size = 500
"#;

pub const LOG_FILTER: &str = "info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_redis=warn";

/// Moderate fault rates: plenty of faults, and still progress. With `body_limited`, the
/// proxy also refuses bodies over [`BODY_LIMIT`] with 413, as a reverse proxy would.
pub fn chaos_faults(only_path: Option<String>, body_limited: bool) -> Faults {
    Faults {
        bulk_item_429: 0.1,
        unavailable: 0.05,
        reset: 0.02,
        slow: 0.05,
        delay: Duration::from_millis(200),
        max_body: body_limited.then_some(BODY_LIMIT),
        only_path,
        ..Faults::default()
    }
}

/// The body limit of the 413 windows: nginx's `client_max_body_size` set to 64k. A sync
/// batch (200 students, twice that while a build runs) and a reindex chunk (500 students)
/// are larger; a single document is far smaller, so nothing may end as a dead letter.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The 413 windows: 7 s in every 14, shifted by `phase` (0..14, from the seed), so they fall
/// on busy and calm waves, on builds, promotions and rollbacks alike.
pub fn body_limited(since_start: Duration, phase: u64) -> bool {
    (since_start.as_secs() + phase) % 14 < 7
}

/// The chaos comes in waves: in every 20 s, 10 s of everything at full speed, then 10 s
/// in which writers send a trickle of single-student changes, no process is killed and
/// Redis stays up, while the search faults and terminated connections go on. At the start
/// of a calm the operator gives back the chunks of killed workers (`admin reindex
/// --resume`), so a build can complete, be verified and be promoted under faults and with
/// writes still landing, not only after everything stops.
pub fn is_calm(since_start: Duration) -> bool {
    since_start.as_secs() % 20 >= 10
}

//! Support for the benchmark harness (`benches/tidemark.rs`): an isolated environment per
//! benchmark on the real services, a discarding `_bulk` endpoint, process and CPU
//! accounting, statistics, and the report.
//!
//! One file per benchmark (`fanout`, `reindex`, `overhead`, `freshness`, `facets`, `serve`, `writes`, `refinebio`); each
//! returns an [`report::Outcome`] (summary rows, a detail section, raw numbers).
#![allow(dead_code)]

pub mod cpu;
pub mod discard;
pub mod env;
pub mod report;
pub mod stats;

pub mod facets;
pub mod fanout;
pub mod freshness;
pub mod overhead;
pub mod refinebio;
pub mod reindex;
pub mod serve;
pub mod writes;

use std::path::PathBuf;

/// Sizes and durations of one run: `--quick` or full.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Fan-out cases: (students seeded, index every student or only the renamed
    /// university's, per-document baseline sample or None for all of them).
    pub fanout: Vec<FanoutCase>,
    pub reindex_discard_students: u64,
    /// Each discarding-endpoint run is repeated this many times (the machine is shared:
    /// the best run is the least disturbed one).
    pub reindex_repeats: usize,
    pub reindex_baseline_sample: usize,
    /// Students for the end-to-end reindex into the search server (its index is reused by
    /// the facets when the sizes match).
    pub reindex_e2e_students: u64,
    pub reindex_raw_sample: usize,
    pub reindex_e2e_baseline_sample: usize,
    pub overhead_students: u64,
    pub overhead_single_rounds: usize,
    pub overhead_single_per_round: usize,
    pub overhead_bulk_rounds: usize,
    pub fresh_students: u64,
    pub fresh_rate: u32,
    pub fresh_secs: u64,
    /// Sizes for the facet benchmark: each indexed into the search server, and its SQL side.
    pub facets_index: Vec<u64>,
    pub facets_runs: usize,
    /// The search application: student counts for index vs SQL facets through `/api/search`
    /// (latency under load is measured at the largest), concurrent connections, seconds of
    /// load per side, and runs per request for the SQL comparison.
    pub serve_sizes: Vec<u64>,
    pub serve_connections: usize,
    pub serve_load_secs: f64,
    pub serve_sql_runs: usize,
    /// Latency under load (the query mixes): sizes, connection counts, and the writes per
    /// second running meanwhile (so the index really refreshes).
    pub serve_load_sizes: Vec<u64>,
    pub serve_load_connections: Vec<usize>,
    pub serve_write_rate: u32,
    /// Write throughput under concurrency (pgbench): students seeded, client counts, seconds
    /// per run, rounds (each side once per round, interleaved), and how long to wait for
    /// the workers to drain after a run with capture.
    pub writes_students: u64,
    pub writes_clients: Vec<usize>,
    pub writes_secs: u64,
    pub writes_rounds: usize,
    pub writes_drain_secs: f64,
    /// The wake-up's idle cost: seconds per measurement, and rounds (each round measures the
    /// default 50 ms interval and a 60 s one).
    pub writes_idle_secs: u64,
    pub writes_idle_rounds: usize,
    /// The refinebio model: experiments seeded, rounds (reindex: each model once per round;
    /// fan-out: renames per organism), per-document baseline sample.
    pub refinebio_experiments: u64,
    pub refinebio_repeats: usize,
    pub refinebio_baseline_sample: usize,
    pub out_dir: PathBuf,
}

#[derive(Clone, Debug)]
pub struct FanoutCase {
    pub students: u64,
    /// Index only the renamed university's students (a shorter run), not every student.
    pub index_only_renamed: bool,
    /// Per-document baseline on this many students, extrapolated; None: all of them.
    pub baseline_sample: Option<usize>,
    /// Also measure tidemark's own part of this fan-out against the discarding endpoint.
    pub discard_too: bool,
    /// Renames measured one after the other (the median is judged).
    pub repeats: usize,
}

impl Plan {
    pub fn new(quick: bool, out_dir: PathBuf) -> Plan {
        if quick {
            Plan {
                quick,
                fanout: vec![FanoutCase {
                    students: 16_000,
                    index_only_renamed: false,
                    baseline_sample: None,
                    discard_too: true,
                    repeats: 3,
                }],
                reindex_discard_students: 100_000,
                reindex_repeats: 2,
                reindex_baseline_sample: 5_000,
                reindex_e2e_students: 10_000,
                reindex_raw_sample: 10_000,
                reindex_e2e_baseline_sample: 2_000,
                overhead_students: 200_000,
                overhead_single_rounds: 8,
                overhead_single_per_round: 250,
                overhead_bulk_rounds: 1,
                fresh_students: 10_000,
                fresh_rate: 200,
                fresh_secs: 20,
                facets_index: vec![10_000],
                facets_runs: 15,
                serve_sizes: vec![10_000],
                serve_connections: 32,
                serve_load_secs: 4.0,
                serve_sql_runs: 5,
                serve_load_sizes: vec![10_000],
                serve_load_connections: vec![1, 32],
                serve_write_rate: 100,
                writes_students: 100_000,
                writes_clients: vec![1, 32],
                writes_secs: 2,
                writes_rounds: 2,
                writes_drain_secs: 10.0,
                writes_idle_secs: 10,
                writes_idle_rounds: 1,
                refinebio_experiments: 5_000,
                refinebio_repeats: 2,
                refinebio_baseline_sample: 500,
                out_dir,
            }
        } else {
            Plan {
                quick,
                fanout: vec![
                    FanoutCase { students: 16_000, index_only_renamed: false, baseline_sample: None, discard_too: true, repeats: 5 },
                    FanoutCase {
                        students: 1_000_000,
                        index_only_renamed: false,
                        baseline_sample: Some(10_000),
                        discard_too: true,
                        repeats: 1,
                    },
                ],
                reindex_discard_students: 1_000_000,
                reindex_repeats: 2,
                reindex_baseline_sample: 20_000,
                reindex_e2e_students: 200_000,
                reindex_raw_sample: 20_000,
                reindex_e2e_baseline_sample: 5_000,
                overhead_students: 200_000,
                overhead_single_rounds: 24,
                overhead_single_per_round: 500,
                overhead_bulk_rounds: 3,
                fresh_students: 20_000,
                fresh_rate: 500,
                fresh_secs: 60,
                facets_index: vec![10_000, 1_000_000],
                facets_runs: 30,
                serve_sizes: vec![10_000, 1_000_000],
                serve_connections: 32,
                serve_load_secs: 12.0,
                serve_sql_runs: 15,
                serve_load_sizes: vec![100_000, 1_000_000],
                serve_load_connections: vec![1, 8, 32],
                serve_write_rate: 100,
                writes_students: 100_000,
                writes_clients: vec![1, 8, 32, 64],
                writes_secs: 3,
                writes_rounds: 3,
                writes_drain_secs: 15.0,
                writes_idle_secs: 60,
                writes_idle_rounds: 2,
                refinebio_experiments: 100_000,
                refinebio_repeats: 3,
                refinebio_baseline_sample: 2_000,
                out_dir,
            }
        }
    }
}

/// Runs a future with a deadline, turning a timeout into an error that names what hung.
pub async fn within<T>(
    what: &str,
    limit: std::time::Duration,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("{what}: timed out after {limit:?}"),
    }
}

/// Prints a progress line on stderr (the results go to files).
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {{
        eprintln!("[bench {:>7.1}s] {}", $crate::support::clock(), format!($($arg)*));
    }};
}

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

pub fn clock() -> f64 {
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

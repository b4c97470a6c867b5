//! tidemark keeps a search index in step with PostgreSQL: one document per row of a root
//! table, declared in a model file ([`model`]; the student directory is the default).
//!
//! # Layout
//!
//! Lower layers never import higher ones; there is no import cycle.
//!
//! | layer | modules |
//! | --- | --- |
//! | edges | [`config`] (defaults, TOML, environment; secrets redacted) · [`db`] (pool, migrations) · [`search`] (the search-server client and the index operations it owns: alias moves, mget, scans) · [`model`] (the declared document: the SQL, capture and mapping it becomes) · [`document`] (a document and its index body) · [`retry`] (the one backoff policy) · [`telemetry`] (metrics names, buckets and recording) |
//! | shared | [`services`] (`Services`: pool, search client, config, process identity — built once, passed to everything) · [`catalog`] (the builds of an alias, as PostgreSQL records them) |
//! | stages | [`pipeline`]: fanout → claim → targets → load → encode → ship → classify → acknowledge, a module per stage; `pipeline::batch` strings one batch together |
//! | checks | [`verify`]: the one comparison of index and database (reindex promotion and `admin verify`) |
//! | reindex | [`reindex`]: start, chunk, promote, rollback, prune, watch |
//! | steps | [`sync`]: `Syncer` — a step (fan-out, a reindex chunk, a batch) and a drain |
//! | search side | [`web`]: the search application of the loaded model, driven by its `[search]` view (request, engine bodies, `engine=sql`, response, pages; answer reuse, single flight, escaping) |
//! | processes | [`process`]: `worker`, `scheduler`, the change `wakeup` and `serve` (the search application), each `run(…, shutdown)` |
//! | operators | [`admin`]: status, dead letters, retries · [`writer`]: `commit_and_nudge` for Rust writers |
//!
//! Outside this crate: `migrations/` (SQL: tidemark's own tables; the capture is generated
//! from the model), `workers/` (crate `tidemark-workers`: the jobs and the apalis glue, the only
//! code that touches apalis), `seeds/` (the shipped models, and crate `tidemark-seeds`: their demo and benchmark data),
//! and `src/main.rs` (the `tidemark` binary: arguments in, a library call, output out).
//!
//! Each module boundary has its own error type (`thiserror`); only the binary uses
//! `anyhow`.

pub mod admin;
pub mod catalog;
pub mod config;
pub mod db;
pub mod document;
pub mod model;
pub mod pipeline;
pub mod process;
pub mod reindex;
pub mod retry;
pub mod search;
pub mod services;
pub mod sync;
pub mod telemetry;
pub mod verify;
pub mod web;
pub mod writer;

pub use tidemark_workers as workers;

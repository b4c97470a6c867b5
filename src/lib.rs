//! tidemark keeps a search index of students in step with PostgreSQL.
//!
//! # Layout
//!
//! Lower layers never import higher ones; there is no import cycle.
//!
//! | layer | modules |
//! | --- | --- |
//! | edges | [`config`] (defaults, TOML, environment; secrets redacted) · [`db`] (pool, migrations) · [`search`] (the search-server client and the index operations it owns: alias moves, mget, scans) · [`document`] (the document and its mapping) · [`retry`] (the one backoff policy) · [`telemetry`] (metrics names, buckets and recording) |
//! | shared | [`services`] (`Services`: pool, search client, config, process identity — built once, passed to everything) · [`catalog`] (the builds of an alias, as PostgreSQL records them) |
//! | stages | [`pipeline`]: fanout → claim → targets → load → encode → ship → classify → acknowledge, a module per stage; `pipeline::batch` strings one batch together |
//! | checks | [`verify`]: the one comparison of index and database (reindex promotion and `admin verify`) |
//! | reindex | [`reindex`]: start, chunk, promote, rollback, prune, watch |
//! | steps | [`sync`]: `Syncer` — a step (fan-out, a reindex chunk, a batch) and a drain |
//! | search side | [`web`]: the search application — one query builder, one response type, the SQL facet engine, the pages and the JSON API |
//! | processes | [`process`]: `worker`, `scheduler`, the change `wakeup` and `serve` (the search application), each `run(…, shutdown)` |
//! | operators | [`admin`]: status, dead letters, retries · [`writer`]: `commit_and_nudge` for Rust writers |
//!
//! Outside this crate: `migrations/` (SQL: domain tables, capture triggers, tidemark's
//! tables), `workers/` (crate `tidemark-workers`: the jobs and the apalis glue, the only
//! code that touches apalis), `seeds/` (crate `tidemark-seeds`: demo and benchmark data),
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

//! tidemark keeps a search index of students in step with PostgreSQL.
//!
//! Layout, in the order data flows:
//!
//! - [`config`]: options from defaults, a TOML file and the environment; secrets redacted.
//! - `migrations/` (SQL): the domain tables and the capture triggers that mark dirty rows.
//! - [`pipeline`]: claim → fanout → load → encode → ship → classify → acknowledge, one
//!   module per stage.
//! - [`engine`]: strings the stages into a sync step, and drains.
//! - [`index`]: which physical indices a batch writes to; [`reindex`]: zero-downtime full
//!   reindex (chunks, dual writes, verification, atomic alias swap, rollback).
//! - [`search`]: the search-server client; [`document`]: the document and its mapping.
//! - [`admin`]: status, dead letters, retries; [`verify`]: index vs database;
//!   [`seed`]: demo and benchmark data.
//! - [`writer`]: `commit_and_nudge`, for Rust applications that write.
//! - `workers/` (crate `tidemark-workers`): the jobs and the apalis glue.

pub mod admin;
pub mod config;
pub mod db;
pub mod document;
pub mod engine;
pub mod index;
pub mod pipeline;
pub mod reindex;
pub mod search;
pub mod seed;
pub mod verify;
pub mod writer;

pub use tidemark_workers as workers;

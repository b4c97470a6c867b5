//! PostgreSQL: the pool, the migrations, and the check that they ran.

use std::time::Duration;

use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::config::{redact_url, Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL at {url}: {reason}; check DATABASE_URL and that the server is up")]
    Connect { url: String, reason: String },
    #[error("migrations failed: {0}")]
    Migrate(String),
    #[error("the database has no tidemark schema yet; run `tidemark migrate` first")]
    NotMigrated,
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// PostgreSQL aborted the transaction to end a deadlock (40P01), a serialization failure
/// (40001) or a wait past `lock_timeout` (55P03): nothing of it happened, and running it
/// again is right.
pub fn is_conflict(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "40P01" || c == "40001" || c == "55P03")
}

/// Opens a pool of up to `max` connections and checks it works. sqlx's messages do not
/// quote the URL; the URL in ours is redacted.
pub async fn connect(config: &Config, max: u32) -> Result<PgPool, DbError> {
    let url = config.database_url()?;
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url.expose())
        .await
        .map_err(|e| DbError::Connect { url: redact_url(url.expose()), reason: e.to_string() })
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies every pending migration (domain schema, capture, queue tables).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(|e| DbError::Migrate(e.to_string()))
}

/// Refuses a database `tidemark migrate` never ran on, with the fix in the message.
pub async fn check_schema(pool: &PgPool) -> Result<(), DbError> {
    let ok: bool = sqlx::query_scalar("SELECT to_regclass('tidemark.dirty_students') IS NOT NULL").fetch_one(pool).await?;
    if ok {
        Ok(())
    } else {
        Err(DbError::NotMigrated)
    }
}

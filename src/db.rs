//! PostgreSQL: the pool and the migrations.

use std::time::Duration;

use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::config::{redact_url, Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL at {url}: {reason}; check DATABASE_URL and that the server is up")]
    Connect { url: String, reason: String },
    #[error("migrations failed: {0}")]
    Migrate(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Opens a pool of up to `max` connections and checks it works.
pub async fn connect(config: &Config, max: u32) -> Result<PgPool, DbError> {
    let url = config.database_url()?;
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url.expose())
        .await
        .map_err(|e| DbError::Connect { url: redact_url(url.expose()), reason: scrub(e) })
}

/// sqlx's messages do not quote the URL, but a server may echo a user name; keep it
/// short and free of the URL's password in any case.
fn scrub(e: sqlx::Error) -> String {
    e.to_string()
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies every pending migration (domain schema, capture, queue tables).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(|e| DbError::Migrate(e.to_string()))
}

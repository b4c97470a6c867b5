//! PostgreSQL: the pool, the migrations, and the check that they ran.

use std::time::Duration;

use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::{
    config::{redact_url, Config, ConfigError},
    model::Model,
};

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

/// tidemark's own schema, in order: (version, SQL). Each runs once, recorded in
/// `tidemark.core_migrations`.
const CORE: &[(i64, &str)] = &[(20261206000001, include_str!("../migrations/20261206000001_core.sql"))];

/// Brings tidemark's own schema up to date and installs the capture of `model` — in one
/// transaction, under an advisory lock (two `migrate`s at once take turns), so that writers
/// are captured by the old capture or the new one and never by neither. Returns the SQL of
/// the capture it installed.
pub async fn migrate(pool: &PgPool, model: &Model) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tidemark.migrate'))").execute(&mut *tx).await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS tidemark;
         CREATE TABLE IF NOT EXISTS tidemark.core_migrations (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    for (version, sql) in CORE {
        let applied: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tidemark.core_migrations WHERE version = $1)")
            .bind(version)
            .fetch_one(&mut *tx)
            .await?;
        if !applied {
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(|e| DbError::Migrate(format!("tidemark's schema ({version}): {e}")))?;
            sqlx::query("INSERT INTO tidemark.core_migrations (version) VALUES ($1)").bind(version).execute(&mut *tx).await?;
        }
    }
    install_capture(&mut tx, model).await?;
    tx.commit().await?;
    Ok(())
}

/// Replaces whatever capture is installed by `model`'s, and records which model it is.
async fn install_capture(tx: &mut sqlx::PgConnection, model: &Model) -> Result<(), DbError> {
    let check = crate::model::check::tables_exist(&mut *tx, model).await?;
    if let Some(problem) = check {
        return Err(DbError::Migrate(problem));
    }
    let protected = crate::model::check::protected_places(&mut *tx, model).await?;
    let sql = crate::model::capture::capture_sql(model, &protected);
    sqlx::raw_sql(&sql).execute(&mut *tx).await.map_err(|e| DbError::Migrate(format!("the capture of model {}: {e}", model.name)))?;
    sqlx::query(
        "INSERT INTO tidemark.model (only_one, name, fingerprint) VALUES (true, $1, $2)
         ON CONFLICT (only_one) DO UPDATE SET name = EXCLUDED.name, fingerprint = EXCLUDED.fingerprint, installed_at = now()",
    )
    .bind(&model.name)
    .bind(&model.fingerprint)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Refuses a database `tidemark migrate` never ran on, with the fix in the message.
pub async fn check_schema(pool: &PgPool) -> Result<(), DbError> {
    let ok: bool = sqlx::query_scalar("SELECT to_regclass('tidemark.model') IS NOT NULL").fetch_one(pool).await?;
    if ok {
        Ok(())
    } else {
        Err(DbError::NotMigrated)
    }
}

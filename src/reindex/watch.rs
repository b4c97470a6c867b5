//! Watching a build until it ends (`admin reindex --wait`).

use std::time::Duration;

use sqlx::PgPool;

use crate::catalog::{self, Build};

/// Reads the build every `every` and hands each reading to `on`, until the build is no
/// longer active; returns the last reading.
pub async fn watch(pool: &PgPool, id: i64, every: Duration, mut on: impl FnMut(&Build)) -> Result<Build, sqlx::Error> {
    loop {
        let build = catalog::get(pool, id).await?;
        on(&build);
        if !build.is_active() {
            return Ok(build);
        }
        tokio::time::sleep(every).await;
    }
}

//! Watching a build until it ends (`admin reindex --wait`).

use std::time::{Duration, Instant};

use super::ReindexError;
use crate::{
    catalog::{self, Build},
    services::Services,
};

/// Reads the build every `every` and hands each reading to `on`, until the build is no
/// longer active; returns the last reading. A build that makes no progress for
/// `reindex.idle_wait` while no worker is alive is an error that says what to do: waiting
/// longer would be waiting forever.
pub async fn watch(services: &Services, id: i64, every: Duration, mut on: impl FnMut(&Build)) -> Result<Build, ReindexError> {
    let idle_wait = services.config.reindex.idle_wait;
    let mut last_change = (Instant::now(), None);
    loop {
        let build = catalog::get(&services.pool, id).await?;
        on(&build);
        if !build.is_active() {
            return Ok(build);
        }
        let progress = Some((build.state, build.chunks_done, build.docs_done));
        if progress != last_change.1 {
            last_change = (Instant::now(), progress);
        } else if last_change.0.elapsed() >= idle_wait.0 && catalog::live_workers(&services.pool).await? == 0 {
            return Err(ReindexError::NoWorker { id, idle_wait: idle_wait.to_string() });
        }
        tokio::time::sleep(every).await;
    }
}

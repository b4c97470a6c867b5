//! Chunks: the key space of a build, shared by every worker. A chunk is done once the new
//! index holds every document of its range as read at the chunk's version.

use std::time::Duration;

use sqlx::PgExecutor;

use super::ReindexError;
use crate::{
    catalog::{build_alias, Build},
    pipeline::{
        acknowledge::{dead_letter, verdicts, Verdict},
        claim::draw_version,
        encode::encode,
        lease::{self, Held},
        load::load_range,
        ship::{ship, ShipLimits, Window},
    },
    services::Services,
    telemetry,
};

/// A chunk claimed by a worker: its number, and the root rows with `lo <= key < hi` (no
/// lower bound for the first chunk, no upper bound for the last).
#[derive(Debug)]
pub struct Chunk {
    pub n: i32,
    pub lo: Option<String>,
    pub hi: Option<String>,
}

pub async fn claim_chunk(db: impl PgExecutor<'_>, reindex_id: i64, owner: &str, lease: Duration) -> Result<Option<Chunk>, sqlx::Error> {
    let row: Option<(i32, Option<String>, Option<String>)> = sqlx::query_as(
        // One chunk, picked once (see pipeline/claim.rs on why not a FROM sub-select).
        "UPDATE tidemark.reindex_chunks
            SET lease_owner = $2, lease_until = clock_timestamp() + $3 * interval '1 millisecond'
          WHERE reindex_id = $1
            AND n = (SELECT n FROM tidemark.reindex_chunks
                      WHERE reindex_id = $1 AND NOT done AND (lease_until IS NULL OR lease_until < clock_timestamp())
                      ORDER BY n LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING n, lo, hi",
    )
    .bind(reindex_id)
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(n, lo, hi)| Chunk { n, lo, hi }))
}

/// Writes one chunk into the new index. Returns the number of documents written, or
/// `None` when transient failures outlasted the retries (the chunk goes back).
pub async fn process_chunk(services: &Services, owner: &str, build: &Build, chunk: &Chunk) -> Result<Option<usize>, ReindexError> {
    let pool = &services.pool;
    let window = Window::of(services.config.sync.batch_timeout.0);
    let renewal = lease::renew(services, owner, Held::Chunk { build: build.id, n: chunk.n }, window.lease_lost.clone()).await;
    let result = async {
        // The version is drawn before the read, as every reader does.
        let version = draw_version(pool).await?;
        let docs = load_range(pool, &services.model, chunk.lo.as_deref(), chunk.hi.as_deref()).await?;
        let targets = [build_alias(&build.alias)];
        let encoded = encode(&docs, &targets, version);
        let shipped = ship(&services.search, &encoded, ShipLimits::from_config(&services.config.sync), &window).await?;
        let verdicts = verdicts(encoded.ops.iter().zip(shipped.outcomes).map(|(op, o)| (op.key.clone(), o)));
        if verdicts.values().any(|v| *v == Verdict::Later) {
            return Ok::<_, ReindexError>(None);
        }
        // A document the new mapping refuses is dead-lettered (visible in `admin failed`);
        // verification will then refuse the swap and say so.
        let dead: Vec<(String, i32, String)> = verdicts
            .iter()
            .filter_map(|(id, v)| match v {
                Verdict::Dead { status, reason } => Some((id.clone(), i32::from(*status), reason.clone())),
                _ => None,
            })
            .collect();
        if !dead.is_empty() {
            dead_letter(pool, &dead).await?;
            telemetry::dead_lettered(dead.len() as u64);
        }
        telemetry::reindexed(docs.len() as u64);
        Ok(Some(docs.len()))
    }
    .await;
    drop(renewal);
    let done = matches!(result, Ok(Some(_)));
    let docs = match &result {
        Ok(Some(n)) => *n as i32,
        _ => 0,
    };
    // Done, or given back at once for another try.
    sqlx::query(
        "UPDATE tidemark.reindex_chunks
            SET done = $4, docs = CASE WHEN $4 THEN $5 ELSE docs END, lease_owner = NULL, lease_until = NULL
          WHERE reindex_id = $1 AND n = $2 AND lease_owner = $3",
    )
    .bind(build.id)
    .bind(chunk.n)
    .bind(owner)
    .bind(done)
    .bind(docs)
    .execute(pool)
    .await?;
    result
}

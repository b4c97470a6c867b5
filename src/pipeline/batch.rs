//! One batch through the stages: claim → targets → load → encode → ship → classify →
//! acknowledge. Split in three calls ([`claim`], [`prepare`], [`deliver`]) so a test can
//! hold a batch between its read and its acknowledgement.

use std::time::{Duration, Instant};

use super::{
    acknowledge::{acknowledge, verdicts, Acked, Verdict},
    claim,
    encode::encode,
    lease::{self, Held},
    load::load,
    ship::{ship, ShipLimits, Window},
    targets::{self, Targets},
    Mark, Op, PipelineError,
};
use crate::{services::Services, telemetry};

/// A batch read and ready to ship: the claim, the version drawn before the read, and the
/// ops read (a document, or a delete for a student that is gone).
#[derive(Debug)]
pub struct Prepared {
    pub marks: Vec<Mark>,
    pub targets: Targets,
    pub version: i64,
    pub docs: Vec<(String, Op)>,
    /// How long the read took.
    pub load: Duration,
    /// How long the batch may send (from its claim: `sync.batch_timeout`).
    pub window: Window,
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub claimed: usize,
    pub indexed: usize,
    pub deleted: usize,
    pub acked: Acked,
    pub requests: u32,
    pub retried_ops: u64,
    /// Where the batch's time went: reading the documents, shipping them (all attempts,
    /// backoff included), acknowledging.
    pub load: Duration,
    pub ship: Duration,
    pub ack: Duration,
}

/// Claims up to `limit` marks for `owner` (possibly none).
pub async fn claim(services: &Services, owner: &str, limit: usize) -> Result<Vec<Mark>, PipelineError> {
    let started = Instant::now();
    // The writers' log first, so the claim sees every committed change (at least a batch's
    // worth, and a fan-out chunk's: a statement logs one row per document it changed).
    let absorb = (limit as i64).max(i64::from(services.config.sync.fanout_chunk));
    claim::absorb(&services.pool, absorb).await?;
    let marks = claim::claim_marks(&services.pool, owner, services.lease(), limit as i64).await?;
    if !marks.is_empty() {
        telemetry::stage("claim", started.elapsed());
    }
    Ok(marks)
}

/// Decides the targets, draws the version, then reads the documents (in that order:
/// protocol invariants 3 and 7). On failure the claim is given back.
pub async fn prepare(services: &Services, owner: &str, marks: Vec<Mark>) -> Result<Prepared, PipelineError> {
    let ids: Vec<String> = marks.iter().map(|m| m.key.clone()).collect();
    let started = Instant::now();
    let window = Window::of(services.config.sync.batch_timeout.0);
    let result = async {
        let targets = targets::decide(services).await?.ok_or_else(|| PipelineError::NoIndex(services.config.index_alias.clone()))?;
        let version = claim::draw_version(&services.pool).await?;
        let docs = load(&services.pool, &services.model, &ids).await?;
        Ok::<_, PipelineError>((targets, version, docs))
    }
    .await;
    match result {
        Ok((targets, version, docs)) => {
            telemetry::stage("load", started.elapsed());
            Ok(Prepared { marks, targets, version, docs, load: started.elapsed(), window })
        }
        Err(e) => {
            give_back(services, owner, &ids).await;
            Err(e)
        }
    }
}

/// Encodes, ships with retries, and acknowledges under the sequence guard.
pub async fn deliver(services: &Services, owner: &str, p: Prepared) -> Result<BatchReport, PipelineError> {
    let ids: Vec<String> = p.marks.iter().map(|m| m.key.clone()).collect();
    let started = Instant::now();
    let encoded = encode(&p.docs, &p.targets.indices, p.version);
    let renewal = lease::renew(services, owner, Held::Marks(ids.clone()), p.window.lease_lost.clone()).await;
    let shipped = match ship(&services.search, &encoded, ShipLimits::from_config(&services.config.sync), &p.window).await {
        Ok(s) => s,
        Err(e) => {
            give_back(services, owner, &ids).await;
            return Err(e.into());
        }
    };
    let verdicts = verdicts(encoded.ops.iter().zip(shipped.outcomes).map(|(op, o)| (op.key.clone(), o)));
    // One line per batch, not per document: the dead-letter table holds each one's reason.
    let dead: Vec<(&str, u16, &str)> = verdicts
        .iter()
        .filter_map(|(id, v)| match v {
            Verdict::Dead { status, reason } => Some((id.as_str(), *status, reason.as_str())),
            _ => None,
        })
        .collect();
    if let Some((_, status, reason)) = dead.first() {
        let keys: Vec<&str> = dead.iter().take(10).map(|d| d.0).collect();
        tracing::warn!(count = dead.len(), ?keys, status, first_reason = %reason, "the index refused documents; they are in the dead-letter table (tidemark admin failed)");
    }
    drop(renewal);
    let shipped_at = Instant::now();
    telemetry::stage("ship", shipped_at - started);
    let acked = acknowledge(&services.pool, owner, &p.marks, &verdicts).await?;
    telemetry::stage("acknowledge", shipped_at.elapsed());
    telemetry::freshness(&acked.waited);
    telemetry::dead_lettered(acked.dead);
    if acked.later > 0 {
        tracing::warn!(
            documents = acked.later,
            "some documents still failed after retries; their marks stay and a later sync retries them"
        );
    }
    let deleted = p.docs.iter().filter(|(_, op)| *op == Op::Delete).count();
    Ok(BatchReport {
        claimed: p.marks.len(),
        indexed: p.docs.len() - deleted,
        deleted,
        acked,
        requests: shipped.requests,
        retried_ops: shipped.retried_ops,
        load: p.load,
        ship: shipped_at - started,
        ack: shipped_at.elapsed(),
    })
}

/// Gives back what `owner` still leases of `ids`, so another step can take them at once.
pub async fn give_back(services: &Services, owner: &str, ids: &[String]) {
    if let Err(e) = claim::release(&services.pool, owner, ids).await {
        tracing::warn!(error = %e, "could not give back a claim; its lease runs out by itself");
    }
}

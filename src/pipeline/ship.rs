//! Ship: send the encoded ops, and retry only the transiently failed ones, with backoff,
//! until they succeed or the attempts run out. Permanent failures are not retried.

use elasticsearch::http::Method;
use futures::StreamExt;

use super::{
    classify::{classify, BulkOutcome, ItemOutcome},
    encode::{body, split, Encoded},
};
use crate::{
    config::SyncConfig,
    retry::Backoff,
    search::{Search, SearchError},
};

#[derive(Clone, Copy, Debug)]
pub struct ShipLimits {
    pub max_docs: usize,
    pub max_bytes: usize,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// `_bulk` requests of one batch in flight at once.
    pub concurrency: usize,
}

impl ShipLimits {
    pub fn from_config(s: &SyncConfig) -> ShipLimits {
        ShipLimits {
            max_docs: s.bulk_max_docs as usize,
            max_bytes: s.bulk_max_bytes as usize,
            max_attempts: s.max_attempts,
            backoff: Backoff { base: s.backoff_base.0, cap: s.backoff_cap.0 },
            concurrency: s.bulk_concurrency as usize,
        }
    }
}

#[derive(Debug, Default)]
pub struct Shipped {
    /// One final outcome per op of the [`Encoded`] batch.
    pub outcomes: Vec<Option<ItemOutcome>>,
    pub requests: u32,
    pub retried_ops: u64,
}

/// Sends every op, retrying transient failures. Returns `Err` only for failures that no
/// retry can mend (refused credentials); everything else ends as per-op outcomes, with
/// ops still failing transiently after the last attempt left as `Transient`.
pub async fn ship(search: &Search, encoded: &Encoded, limits: ShipLimits) -> Result<Shipped, SearchError> {
    let mut shipped = Shipped { outcomes: vec![None; encoded.ops.len()], ..Default::default() };
    let mut pending: Vec<usize> = (0..encoded.ops.len()).collect();
    let mut delays = limits.backoff.delays();
    let mut attempt = 1;
    loop {
        let requests = split(&encoded.ops, &pending, limits.max_docs, limits.max_bytes);
        shipped.requests += requests.len() as u32;
        // Up to `concurrency` requests in flight: a server indexes several bulks at once
        // much faster than one after another; the bound keeps one batch from flooding it.
        let mut answers = futures::stream::iter(requests.into_iter().map(|request| async move {
            let outcome = match search.request(Method::Post, "/_bulk?require_alias=true", Some(body(encoded, &request)), true).await {
                Ok(reply) => Ok(classify(reply.status, &reply.body, request.len())),
                Err(e) if e.is_transient() => Ok(BulkOutcome::RetryAll(e.to_string())),
                Err(e) => Err(e),
            };
            (request, outcome)
        }))
        .buffer_unordered(limits.concurrency.max(1));
        while let Some((request, outcome)) = answers.next().await {
            match outcome? {
                BulkOutcome::Items(items) => {
                    for (&i, item) in request.iter().zip(items) {
                        shipped.outcomes[i] = Some(item);
                    }
                }
                BulkOutcome::RetryAll(reason) => {
                    tracing::warn!(ops = request.len(), attempt, %reason, "bulk request failed; will retry");
                    for &i in &request {
                        shipped.outcomes[i] = Some(ItemOutcome::Transient(reason.clone()));
                    }
                }
                BulkOutcome::Refused { status, reason } => {
                    // The request as a whole was refused; every op in it carries the reason.
                    for &i in &request {
                        shipped.outcomes[i] = Some(ItemOutcome::Permanent { status, reason: reason.clone() });
                    }
                }
            }
        }
        pending.retain(|&i| matches!(shipped.outcomes[i], Some(ItemOutcome::Transient(_))));
        if pending.is_empty() || attempt >= limits.max_attempts {
            return Ok(shipped);
        }
        let wait = delays.next().expect("backoff delays never end");
        tracing::info!(ops = pending.len(), attempt, wait_ms = wait.as_millis() as u64, "retrying transiently failed ops");
        shipped.retried_ops += pending.len() as u64;
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

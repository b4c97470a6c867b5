//! Ship: send the encoded ops, and retry only the transiently failed ones, with backoff,
//! until they succeed, the attempts run out or the batch's window closes. Permanent
//! failures are not retried.

use elasticsearch::http::Method;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    classify::{classify, BulkOutcome, ItemOutcome},
    encode::{body, split, Encoded},
};
use crate::{
    config::SyncConfig,
    retry::Backoff,
    search::{Search, SearchError},
    telemetry,
};

/// Counts one request's items: sent when it leaves, and by outcome when its answer is read;
/// a request abandoned without an answer (its batch's lease was lost) counts as transient,
/// so the outcomes always add up to the items sent.
struct Counted<'a> {
    encoded: &'a Encoded,
    request: &'a [usize],
    answered: bool,
}

impl<'a> Counted<'a> {
    fn sent(encoded: &'a Encoded, request: &'a [usize]) -> Self {
        telemetry::items_sent(request.len());
        Counted { encoded, request, answered: false }
    }

    fn answered(&mut self, outcome: &BulkOutcome) {
        self.answered = true;
        match outcome {
            BulkOutcome::Items(items) => {
                for (&i, item) in self.request.iter().zip(items) {
                    telemetry::item_outcome(outcome_label(item, self.encoded.ops[i].delete));
                }
            }
            // Split and sent again: this sending failed transiently.
            BulkOutcome::Refused { .. } if self.request.len() > 1 => self.each("transient"),
            BulkOutcome::Refused { .. } => self.each("permanent"),
            BulkOutcome::RetryAll(_) => self.each("transient"),
        }
    }

    fn each(&self, label: &'static str) {
        for _ in self.request {
            telemetry::item_outcome(label);
        }
    }
}

/// The `outcome` label of an item (docs/metrics.md).
fn outcome_label(outcome: &ItemOutcome, delete: bool) -> &'static str {
    match outcome {
        ItemOutcome::Written if delete => "deleted",
        ItemOutcome::Written => "written",
        ItemOutcome::Superseded => "superseded",
        ItemOutcome::Transient(_) => "transient",
        ItemOutcome::Permanent { .. } => "permanent",
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.each("transient");
        }
    }
}

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

/// How long a batch may send: no request starts after `deadline`, and nothing more is sent
/// once `lease_lost` fires (another worker may own the marks now: DESIGN.md, protocol).
#[derive(Clone, Debug)]
pub struct Window {
    pub deadline: Instant,
    pub lease_lost: CancellationToken,
}

impl Window {
    /// A window closing `length` from now.
    pub fn of(length: std::time::Duration) -> Window {
        Window { deadline: Instant::now() + length, lease_lost: CancellationToken::new() }
    }

    /// Why nothing more may be sent, if so.
    fn closed(&self) -> Option<&'static str> {
        if self.lease_lost.is_cancelled() {
            Some("the batch's lease was lost; another worker may own these marks now")
        } else if Instant::now() >= self.deadline {
            Some("the batch's deadline passed (sync.batch_timeout); the marks stay for a later batch")
        } else {
            None
        }
    }
}

/// Sends every op, retrying transient failures, inside `window`. Returns `Err` only for
/// failures that no retry can mend (refused credentials); everything else ends as per-op
/// outcomes, with ops still failing transiently (or not sent when the window closed) left
/// as `Transient`.
///
/// A request refused as a whole for what it carries (413 too large, 400 unparsable) is
/// split in halves that are sent at once, down to single documents: only a document that
/// is refused alone is refused for good. A 413 also lowers the request size for every later
/// request ([`Search::learn_request_limit`]).
pub async fn ship(search: &Search, encoded: &Encoded, limits: ShipLimits, window: &Window) -> Result<Shipped, SearchError> {
    let mut shipped = Shipped { outcomes: vec![None; encoded.ops.len()], ..Default::default() };
    let mut pending: Vec<usize> = (0..encoded.ops.len()).collect();
    let mut delays = limits.backoff.delays();
    let mut attempt = 1;
    loop {
        let mut requests = split(&encoded.ops, &pending, limits.max_docs, limits.max_bytes.min(search.request_limit()));
        while !requests.is_empty() {
            if let Some(why) = window.closed() {
                for i in requests.into_iter().flatten() {
                    shipped.outcomes[i] = Some(ItemOutcome::Transient(why.into()));
                }
                return Ok(shipped);
            }
            shipped.requests += requests.len() as u32;
            let mut halves = Vec::new();
            // Up to `concurrency` requests in flight: a server indexes several bulks at once
            // much faster than one after another; the bound keeps one batch from flooding it.
            let mut answers = futures::stream::iter(requests.into_iter().map(|request| async move {
                let body = body(encoded, &request);
                let size = body.len();
                let mut counted = Counted::sent(encoded, &request);
                let started = std::time::Instant::now();
                let reply = search.request(Method::Post, "/_bulk?require_alias=true", Some(body), true).await;
                telemetry::bulk_request(telemetry::status_class(reply.as_ref().ok().map(|r| r.status)), started.elapsed());
                let outcome = match reply {
                    Ok(reply) => Ok(classify(reply.status, &reply.body, request.len())),
                    Err(e) if e.is_transient() => Ok(BulkOutcome::RetryAll(e.to_string())),
                    Err(e) => Err(e),
                };
                if let Ok(o) = &outcome {
                    counted.answered(o);
                }
                drop(counted);
                (request, size, outcome)
            }))
            .buffer_unordered(limits.concurrency.max(1));
            loop {
                let next = tokio::select! {
                    next = answers.next() => next,
                    () = window.lease_lost.cancelled() => None,
                };
                let Some((request, size, outcome)) = next else { break };
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
                    BulkOutcome::Refused { status, reason } if request.len() > 1 => {
                        if status == 413 {
                            search.learn_request_limit(size);
                        }
                        tracing::info!(ops = request.len(), status, %reason, "bulk request refused as a whole; sending its halves");
                        let (a, b) = request.split_at(request.len() / 2);
                        halves.extend([a.to_vec(), b.to_vec()]);
                    }
                    BulkOutcome::Refused { status, reason } => {
                        shipped.outcomes[request[0]] = Some(ItemOutcome::Permanent { status, reason });
                    }
                }
            }
            requests = halves;
        }
        pending.retain(|&i| {
            !matches!(shipped.outcomes[i], Some(ItemOutcome::Written | ItemOutcome::Superseded | ItemOutcome::Permanent { .. }))
        });
        if pending.is_empty() || attempt >= limits.max_attempts {
            for &i in &pending {
                shipped.outcomes[i].get_or_insert_with(|| ItemOutcome::Transient("no answer".into()));
            }
            return Ok(shipped);
        }
        let wait = delays.next().expect("backoff delays never end");
        if Instant::now() + wait >= window.deadline {
            for &i in &pending {
                shipped.outcomes[i] = Some(ItemOutcome::Transient("the batch's deadline comes before the next retry".into()));
            }
            return Ok(shipped);
        }
        tracing::info!(ops = pending.len(), attempt, wait_ms = wait.as_millis() as u64, "retrying transiently failed ops");
        shipped.retried_ops += pending.len() as u64;
        telemetry::retried("ship", pending.len() as u64);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = window.lease_lost.cancelled() => {}
        }
        attempt += 1;
    }
}

//! Ship: send a batch's encoded ops as `_bulk` requests, and retry only what failed
//! transiently. A plan and a driver, as vector's Elasticsearch sink is built:
//!
//! - [`Shipment`] is the pure part. It knows which ops are still to send, groups them into
//!   requests within the limits ([`split`]), reads each answer into per-op verdicts (a
//!   request refused as a whole for its size or content comes back as its two halves, to
//!   send at once), and says what comes next: requests to send, a wait before the next
//!   attempt, or done — after `max_attempts`, or when the next attempt would start after the
//!   batch's deadline. It has no clock and no I/O: it is told the time.
//! - [`ship`] is the driver: it sends what the shipment says, up to `concurrency` requests
//!   at once, through a [`Bulk`] endpoint (the search server, or a scripted one in the unit
//!   tests), feeds the answers back, counts them in the metrics, and stops at once when the
//!   batch's lease is lost.

use std::{future::Future, time::Duration};

use elasticsearch::http::Method;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    classify::{classify, BulkOutcome, ItemOutcome},
    encode::{body, split, Encoded},
    Action,
};
use crate::{
    config::SyncConfig,
    retry::Backoff,
    search::{Reply, Search, SearchError},
    telemetry,
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

/// How long a batch may send: no request starts after `deadline`, and nothing more is sent
/// once `lease_lost` fires (another worker may own the marks now: docs/protocol.md, rule 8).
#[derive(Clone, Debug)]
pub struct Window {
    pub deadline: Instant,
    pub lease_lost: CancellationToken,
}

impl Window {
    /// A window closing `length` from now.
    pub fn of(length: Duration) -> Window {
        Window { deadline: Instant::now() + length, lease_lost: CancellationToken::new() }
    }
}

const LEASE_LOST: &str = "the batch's lease was lost; another worker may own these marks now";
const DEADLINE: &str = "the batch's deadline passed (sync.batch_timeout); the marks stay for a later batch";
const DEADLINE_BEFORE_RETRY: &str = "the batch's deadline comes before the next retry";

/// Where a `_bulk` request goes: the search server, or a script in tests.
pub trait Bulk: Sync {
    /// Sends one `_bulk` body (NDJSON). A status is an answer, not an error.
    fn send(&self, body: Vec<u8>) -> impl Future<Output = Result<Reply, SearchError>> + Send;
    /// The largest request to send now, in bytes (lowered after a 413).
    fn request_limit(&self) -> usize;
    /// A request of `refused` bytes was answered 413.
    fn learn_request_limit(&self, refused: usize);
}

impl Bulk for Search {
    fn send(&self, body: Vec<u8>) -> impl Future<Output = Result<Reply, SearchError>> + Send {
        self.request(Method::Post, "/_bulk?require_alias=true", Some(body), true)
    }

    fn request_limit(&self) -> usize {
        Search::request_limit(self)
    }

    fn learn_request_limit(&self, refused: usize) {
        Search::learn_request_limit(self, refused)
    }
}

/// What to do next, as [`Shipment::next`] says.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send these requests (each a list of op indices) now.
    Send(Vec<Vec<usize>>),
    /// Wait this long, then ask again (a retry's backoff).
    Wait(Duration),
    /// Every op has its final outcome.
    Done,
}

/// The pure state of one batch's shipping.
pub struct Shipment<'a> {
    encoded: &'a Encoded,
    limits: ShipLimits,
    outcomes: Vec<Option<ItemOutcome>>,
    /// Requests ready to go now: a round's plan, or halves of a request refused as a whole.
    ready: Vec<Vec<usize>>,
    /// A retry waits for its backoff; the next call plans it.
    retry_due: bool,
    attempt: u32,
    delays: Box<dyn Iterator<Item = Duration> + Send + 'a>,
    requests: u32,
    retried_ops: u64,
}

impl<'a> Shipment<'a> {
    /// Every op of `encoded` to send, the first round planned within `request_limit` bytes;
    /// `delays` are the waits before retries 1, 2, … (a [`Backoff`]'s, or fixed ones in tests).
    pub fn new(encoded: &'a Encoded, limits: ShipLimits, request_limit: usize, delays: impl Iterator<Item = Duration> + Send + 'a) -> Self {
        let all: Vec<usize> = (0..encoded.ops.len()).collect();
        let ready = split(&encoded.ops, &all, limits.max_docs, limits.max_bytes.min(request_limit));
        Shipment {
            encoded,
            limits,
            outcomes: vec![None; encoded.ops.len()],
            ready,
            retry_due: false,
            attempt: 1,
            delays: Box::new(delays),
            requests: 0,
            retried_ops: 0,
        }
    }

    /// What comes next at `now`, for a batch that may send until `deadline`.
    pub fn next(&mut self, now: Instant, deadline: Instant, request_limit: usize) -> Next {
        if self.retry_due {
            self.retry_due = false;
            let pending = self.pending();
            self.retried_ops += pending.len() as u64;
            self.ready = split(&self.encoded.ops, &pending, self.limits.max_docs, self.limits.max_bytes.min(request_limit));
        }
        if !self.ready.is_empty() {
            if now >= deadline {
                self.give_up(DEADLINE);
                return Next::Done;
            }
            let requests = std::mem::take(&mut self.ready);
            self.requests += requests.len() as u32;
            return Next::Send(requests);
        }
        // The round is over: retry what failed transiently, if attempts and time allow.
        let pending = self.pending();
        if pending.is_empty() || self.attempt >= self.limits.max_attempts {
            // Out of attempts: each op keeps the reason of its last failure.
            for i in pending {
                self.outcomes[i].get_or_insert_with(|| ItemOutcome::Transient("no answer".into()));
            }
            return Next::Done;
        }
        let wait = self.delays.next().unwrap_or(Duration::ZERO);
        if now + wait >= deadline {
            self.give_up(DEADLINE_BEFORE_RETRY);
            return Next::Done;
        }
        self.attempt += 1;
        self.retry_due = true;
        Next::Wait(wait)
    }

    /// Reads the answer to one request (its ops' indices) into per-op verdicts; halves of a
    /// request refused as a whole are ready to send at once.
    pub fn answered(&mut self, request: Vec<usize>, outcome: BulkOutcome) {
        match outcome {
            BulkOutcome::Items(items) => {
                for (i, item) in request.into_iter().zip(items) {
                    self.outcomes[i] = Some(item);
                }
            }
            BulkOutcome::RetryAll(reason) => {
                tracing::warn!(ops = request.len(), attempt = self.attempt, %reason, "bulk request failed; will retry");
                for i in request {
                    self.outcomes[i] = Some(ItemOutcome::Transient(reason.clone()));
                }
            }
            // Refused as a whole for what it carries (413, 400): send its halves at once,
            // down to single documents; only a document refused alone is refused for good.
            BulkOutcome::Refused { status, reason } if request.len() > 1 => {
                tracing::info!(ops = request.len(), status, %reason, "bulk request refused as a whole; sending its halves");
                let (a, b) = request.split_at(request.len() / 2);
                self.ready.extend([a.to_vec(), b.to_vec()]);
            }
            BulkOutcome::Refused { status, reason } => self.outcomes[request[0]] = Some(ItemOutcome::Permanent { status, reason }),
        }
    }

    /// Sends nothing more: what has no final outcome keeps its mark, transient for `why`.
    pub fn give_up(&mut self, why: &str) {
        self.ready.clear();
        for i in self.pending() {
            self.outcomes[i] = Some(ItemOutcome::Transient(why.into()));
        }
        self.retry_due = false;
    }

    /// Ops that have no final outcome yet: never answered, or failed transiently.
    fn pending(&self) -> Vec<usize> {
        (0..self.outcomes.len()).filter(|&i| matches!(self.outcomes[i], None | Some(ItemOutcome::Transient(_)))).collect()
    }

    pub fn finish(self) -> Shipped {
        Shipped { outcomes: self.outcomes, requests: self.requests, retried_ops: self.retried_ops }
    }
}

/// Sends every op, retrying transient failures, inside `window`. Returns `Err` only for
/// failures that no retry can mend (refused credentials); everything else ends as per-op
/// outcomes, with ops still failing transiently (or not sent when the window closed) left
/// as `Transient`. A 413 also lowers the request size for every later request of the
/// process ([`Bulk::learn_request_limit`]).
pub async fn ship(bulk: &impl Bulk, encoded: &Encoded, limits: ShipLimits, window: &Window) -> Result<Shipped, SearchError> {
    let mut shipment = Shipment::new(encoded, limits, bulk.request_limit(), limits.backoff.delays());
    loop {
        if window.lease_lost.is_cancelled() {
            shipment.give_up(LEASE_LOST);
            return Ok(shipment.finish());
        }
        match shipment.next(Instant::now(), window.deadline, bulk.request_limit()) {
            Next::Done => return Ok(shipment.finish()),
            Next::Wait(wait) => {
                let pending = shipment.pending().len();
                tracing::info!(ops = pending, wait_ms = wait.as_millis() as u64, "retrying transiently failed ops");
                telemetry::retried("ship", pending as u64);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = window.lease_lost.cancelled() => {
                        shipment.give_up(LEASE_LOST);
                        return Ok(shipment.finish());
                    }
                }
            }
            Next::Send(requests) => {
                // Up to `concurrency` requests in flight: a server indexes several bulks at
                // once much faster than one after another; the bound keeps one batch from
                // flooding it.
                let mut answers = futures::stream::iter(requests.into_iter().map(|request| send(bulk, encoded, request)))
                    .buffer_unordered(limits.concurrency.max(1));
                loop {
                    let next = tokio::select! {
                        biased;
                        () = window.lease_lost.cancelled() => {
                            drop(answers);
                            shipment.give_up(LEASE_LOST);
                            return Ok(shipment.finish());
                        }
                        next = answers.next() => next,
                    };
                    let Some((request, size, outcome)) = next else { break };
                    let outcome = outcome?;
                    if matches!(outcome, BulkOutcome::Refused { status: 413, .. }) && request.len() > 1 {
                        bulk.learn_request_limit(size);
                    }
                    shipment.answered(request, outcome);
                }
            }
        }
    }
}

/// Sends one request and reads its answer; counts it (and its items) in the metrics.
async fn send(bulk: &impl Bulk, encoded: &Encoded, request: Vec<usize>) -> (Vec<usize>, usize, Result<BulkOutcome, SearchError>) {
    let body = body(encoded, &request);
    let size = body.len();
    let mut counted = Counted::sent(encoded, &request);
    let started = std::time::Instant::now();
    let reply = bulk.send(body).await;
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
}

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
                    telemetry::item_outcome(outcome_label(item, self.encoded.ops[i].action));
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

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.each("transient");
        }
    }
}

/// The `outcome` label of an item (docs/metrics.md).
fn outcome_label(outcome: &ItemOutcome, action: Action) -> &'static str {
    match outcome {
        ItemOutcome::Written if action == Action::Delete => "deleted",
        ItemOutcome::Written => "written",
        ItemOutcome::Superseded => "superseded",
        ItemOutcome::Transient(_) => "transient",
        ItemOutcome::Permanent { .. } => "permanent",
    }
}

#[cfg(test)]
mod tests {
    //! The shipment and its driver against a scripted `_bulk` endpoint, on tokio's paused
    //! clock: no server, no real waiting.

    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    };

    use super::*;
    use crate::{pipeline::encode::encode, pipeline::Op};

    fn batch(n: i64) -> Encoded {
        let docs: Vec<(String, Op)> = (1..=n)
            .map(|id| {
                (
                    id.to_string(),
                    Op::Index(crate::document::Document::from_value(&serde_json::json!({"first_name": format!("N{id}"), "id": id}))),
                )
            })
            .collect();
        encode(&docs, &["students".into()], 7)
    }

    fn limits(max_attempts: u32) -> ShipLimits {
        ShipLimits {
            max_docs: 100,
            max_bytes: 1 << 20,
            max_attempts,
            backoff: Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(1) },
            concurrency: 2,
        }
    }

    /// Answers each request with what `script` says for (its call number, its ids); records
    /// the ids of every request.
    struct Script<F> {
        script: F,
        calls: Mutex<Vec<Vec<i64>>>,
        limit: AtomicUsize,
    }

    impl<F: Fn(usize, &[i64]) -> (u16, String) + Sync> Script<F> {
        fn new(script: F) -> Self {
            Script { script, calls: Mutex::new(Vec::new()), limit: AtomicUsize::new(usize::MAX) }
        }

        fn calls(&self) -> Vec<Vec<i64>> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn ids_of(body: &[u8]) -> Vec<i64> {
        String::from_utf8_lossy(body)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("index").or(v.get("delete")).and_then(|a| a["_id"].as_str()?.parse().ok()))
            .collect()
    }

    impl<F: Fn(usize, &[i64]) -> (u16, String) + Sync> Bulk for Script<F> {
        fn send(&self, body: Vec<u8>) -> impl Future<Output = Result<Reply, SearchError>> + Send {
            let ids = ids_of(&body);
            let call = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(ids.clone());
                calls.len() - 1
            };
            let (status, body) = (self.script)(call, &ids);
            async move { Ok(Reply { status, body: body.into() }) }
        }

        fn request_limit(&self) -> usize {
            self.limit.load(Ordering::Relaxed)
        }

        fn learn_request_limit(&self, refused: usize) {
            self.limit.fetch_min(refused / 2, Ordering::Relaxed);
        }
    }

    /// A `_bulk` answer with one item per id: 201, or `status` for the ids `failing` names.
    fn answer(ids: &[i64], failing: impl Fn(i64) -> Option<u16>) -> (u16, String) {
        let items: Vec<String> = ids
            .iter()
            .map(|id| match failing(*id) {
                None => format!(r#"{{"index":{{"_id":"{id}","status":201,"result":"created"}}}}"#),
                Some(s) => format!(
                    r#"{{"index":{{"_id":"{id}","status":{s},"error":{{"type":"es_rejected_execution_exception","reason":"busy"}}}}}}"#
                ),
            })
            .collect();
        (200, format!(r#"{{"errors":true,"items":[{}]}}"#, items.join(",")))
    }

    fn written(shipped: &Shipped) -> usize {
        shipped.outcomes.iter().filter(|o| **o == Some(ItemOutcome::Written)).count()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_refused_as_too_large_is_sent_again_in_halves_and_the_limit_is_learned() {
        let encoded = batch(8);
        let script =
            Script::new(
                |_, ids: &[i64]| {
                    if ids.len() > 2 {
                        (413, "<html>413 Request Entity Too Large</html>".into())
                    } else {
                        answer(ids, |_| None)
                    }
                },
            );
        let shipped = ship(&script, &encoded, limits(3), &Window::of(Duration::from_secs(30))).await.unwrap();
        assert_eq!(written(&shipped), 8);
        let calls = script.calls();
        assert_eq!(calls[0].len(), 8, "first the whole batch");
        assert_eq!(calls.iter().filter(|c| c.len() == 2).count(), 4, "then halves down to what is taken: {calls:?}");
        assert!(script.request_limit() < encoded.buf.len(), "the 413 lowered the request size");
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_items_that_failed_are_sent_again() {
        let encoded = batch(5);
        let script = Script::new(|call, ids: &[i64]| answer(ids, |id| (call == 0 && id % 2 == 0).then_some(429)));
        let shipped = ship(&script, &encoded, limits(3), &Window::of(Duration::from_secs(30))).await.unwrap();
        assert_eq!(written(&shipped), 5);
        assert_eq!(script.calls(), vec![vec![1, 2, 3, 4, 5], vec![2, 4]]);
        assert_eq!(shipped.retried_ops, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_given_up_after_max_attempts_and_keeps_its_mark() {
        let encoded = batch(3);
        let script =
            Script::new(|_, _: &[i64]| (503, r#"{"error":{"type":"unavailable_shards_exception","reason":"down"},"status":503}"#.into()));
        let shipped = ship(&script, &encoded, limits(4), &Window::of(Duration::from_secs(300))).await.unwrap();
        assert_eq!(script.calls().len(), 4, "max_attempts requests, no more");
        assert!(
            shipped.outcomes.iter().all(|o| matches!(o, Some(ItemOutcome::Transient(r)) if r.contains("503"))),
            "{:?}",
            shipped.outcomes
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_starts_after_the_batch_deadline() {
        let encoded = batch(3);
        let script = Script::new(|_, ids: &[i64]| answer(ids, |_| Some(429)));
        let started = Instant::now();
        let window = Window::of(Duration::from_millis(250));
        let shipped = ship(&script, &encoded, limits(100), &window).await.unwrap();
        assert!(Instant::now() < window.deadline + Duration::from_millis(1), "it stopped by the deadline ({:?})", started.elapsed());
        assert!(script.calls().len() < 100, "the deadline, not the attempts, ended it");
        assert!(shipped.outcomes.iter().all(|o| matches!(o, Some(ItemOutcome::Transient(_)))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_document_refused_alone_is_refused_for_good_and_the_rest_written() {
        let encoded = batch(4);
        let script = Script::new(|_, ids: &[i64]| {
            if ids.contains(&3) {
                (400, r#"{"error":{"type":"document_parsing_exception","reason":"bad"},"status":400}"#.into())
            } else {
                answer(ids, |_| None)
            }
        });
        let shipped = ship(&script, &encoded, limits(3), &Window::of(Duration::from_secs(30))).await.unwrap();
        assert_eq!(written(&shipped), 3);
        assert!(
            matches!(&shipped.outcomes[2], Some(ItemOutcome::Permanent { status: 400, reason }) if reason.contains("document_parsing_exception"))
        );
    }

    #[test]
    fn the_plan_is_pure_and_gives_up_what_the_deadline_leaves() {
        let encoded = batch(3);
        let now = Instant::now();
        let mut s = Shipment::new(&encoded, limits(5), usize::MAX, std::iter::repeat(Duration::from_millis(10)));
        let Next::Send(requests) = s.next(now, now + Duration::from_secs(1), usize::MAX) else { panic!() };
        assert_eq!(requests, vec![vec![0, 1, 2]]);
        s.answered(
            vec![0, 1, 2],
            BulkOutcome::Items(vec![ItemOutcome::Written, ItemOutcome::Transient("429".into()), ItemOutcome::Written]),
        );
        assert_eq!(s.next(now, now + Duration::from_secs(1), usize::MAX), Next::Wait(Duration::from_millis(10)));
        assert_eq!(s.next(now, now + Duration::from_secs(1), usize::MAX), Next::Send(vec![vec![1]]));
        s.answered(vec![1], BulkOutcome::RetryAll("503".into()));
        // The next wait would end after the deadline: done, the op left transient.
        assert_eq!(s.next(now, now + Duration::from_millis(5), usize::MAX), Next::Done);
        let shipped = s.finish();
        assert!(matches!(&shipped.outcomes[1], Some(ItemOutcome::Transient(r)) if r.contains("deadline")));
        assert_eq!(shipped.requests, 2);
    }
}

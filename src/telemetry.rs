//! Metrics (docs/metrics.md is the catalogue; a test checks the two agree) and logs.
//!
//! Metrics go through the `metrics` facade into one Prometheus registry per process,
//! rendered by the admin endpoint's `/metrics` (`process::admin`). Names follow Prometheus
//! conventions — `tidemark_*`, base units, `_total` counters, fixed histogram buckets — and
//! labels come from small fixed sets, never from student ids or error texts.
//!
//! The gauges read from PostgreSQL (`DbGauges`) are computed by one elected scheduler per
//! interval, not by every process on every scrape.

use std::{sync::OnceLock, time::Duration};

use metrics::{counter, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const DOCUMENTS: &str = "tidemark_documents_total";
pub const BULK_ITEMS: &str = "tidemark_bulk_items_total";
pub const BULK_REQUESTS: &str = "tidemark_bulk_requests_total";
pub const BULK_DURATION: &str = "tidemark_bulk_request_duration_seconds";
pub const RETRIES: &str = "tidemark_retries_total";
pub const DEAD_LETTERED: &str = "tidemark_dead_lettered_total";
pub const STAGE_DURATION: &str = "tidemark_batch_stage_duration_seconds";
pub const FRESHNESS: &str = "tidemark_freshness_seconds";
pub const BATCHES: &str = "tidemark_batches_total";
pub const FANOUT_STUDENTS: &str = "tidemark_fanout_students_total";
pub const REINDEX_DOCUMENTS: &str = "tidemark_reindex_documents_total";
pub const HTTP_REQUESTS: &str = "tidemark_http_requests_total";
pub const HTTP_DURATION: &str = "tidemark_http_request_duration_seconds";
pub const BUILD_INFO: &str = "tidemark_build_info";
pub const SYNC_REFUSED: &str = "tidemark_sync_refused";
// The gauges read from PostgreSQL (`DbGauges`).
pub const MARKS_OUTSTANDING: &str = "tidemark_marks_outstanding";
pub const MARKS_IN_FLIGHT: &str = "tidemark_marks_in_flight";
pub const OLDEST_MARK_AGE: &str = "tidemark_oldest_mark_age_seconds";
pub const FANOUTS_PENDING: &str = "tidemark_fanouts_pending";
pub const DEAD_LETTERS: &str = "tidemark_dead_letters";
pub const QUEUE_DEPTH: &str = "tidemark_queue_depth";
pub const WORKERS_LIVE: &str = "tidemark_workers_live";
pub const REINDEX_ACTIVE: &str = "tidemark_reindex_active";
pub const REINDEX_PROGRESS: &str = "tidemark_reindex_progress_ratio";
pub const SEARCH_CACHE: &str = "tidemark_search_cache_lookups_total";
pub const SEARCH_CACHE_BYTES: &str = "tidemark_search_cache_bytes";
pub const SEARCH_CACHE_ENTRIES: &str = "tidemark_search_cache_entries";
pub const SEARCH_ENGINE_REQUESTS: &str = "tidemark_search_engine_requests_total";
pub const SEARCH_RENEWALS: &str = "tidemark_search_renewals_total";

/// The fixed label values of the counters (docs/metrics.md): a worker exports every one of
/// them from its start, at 0, so a query on a counter sees 0 rather than "no data".
pub const OUTCOMES: [&str; 5] = ["written", "superseded", "deleted", "transient", "permanent"];
pub const STATUS_CLASSES: [&str; 5] = ["2xx", "4xx", "429", "5xx", "error"];
pub const RETRY_STAGES: [&str; 2] = ["ship", "step"];
pub const BATCH_RESULTS: [&str; 2] = ["ok", "error"];
pub const CACHE_KINDS: [&str; 3] = ["counts", "hits", "suggest"];
pub const ENGINE_REQUEST_KINDS: [&str; 4] = ["alias", "counts", "hits", "suggest"];

const DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const FRESHNESS_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

/// Installs this process's metrics registry (once; later calls return the same handle) and
/// describes every metric, so `/metrics` lists each with its help text from the start.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(FRESHNESS.into()), FRESHNESS_BUCKETS)
                .and_then(|b| b.set_buckets(DURATION_BUCKETS))
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (a test process with several
            // workers): then ours only renders what this handle saw.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(DOCUMENTS, Unit::Count, "_bulk items by outcome (409 = superseded, not an error)");
    describe_counter!(BULK_ITEMS, Unit::Count, "items sent in _bulk requests (= the sum of the outcomes)");
    describe_counter!(BULK_REQUESTS, Unit::Count, "_bulk requests by answer (error = no answer)");
    describe_histogram!(BULK_DURATION, Unit::Seconds, "one _bulk request, send to answer");
    describe_counter!(RETRIES, Unit::Count, "items re-sent after a transient failure (ship); failed sync steps retried (step)");
    describe_counter!(DEAD_LETTERED, Unit::Count, "documents moved to the dead-letter table");
    describe_histogram!(STAGE_DURATION, Unit::Seconds, "where a batch's time goes");
    describe_histogram!(FRESHNESS, Unit::Seconds, "per acknowledged document: database commit (mark) to acknowledged by the index");
    describe_counter!(BATCHES, Unit::Count, "sync batches");
    describe_counter!(FANOUT_STUDENTS, Unit::Count, "students marked by expanding a university, course or set of students");
    describe_counter!(REINDEX_DOCUMENTS, Unit::Count, "documents written by full-reindex chunks");
    describe_counter!(HTTP_REQUESTS, Unit::Count, "serve's requests by route template and status class");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "serve's request latency");
    describe_gauge!(BUILD_INFO, "always 1; version is the binary's version");
    describe_counter!(SEARCH_CACHE, Unit::Count, "serve's answer-cache look-ups by kind (counts, hits, suggest) and result (hit, miss)");
    describe_gauge!(SEARCH_CACHE_BYTES, Unit::Bytes, "bytes the answer cache holds (within [serve] cache_bytes)");
    describe_gauge!(SEARCH_CACHE_ENTRIES, Unit::Count, "answers the answer cache holds");
    describe_counter!(
        SEARCH_ENGINE_REQUESTS,
        Unit::Count,
        "serve's requests to the engine by kind (alias, counts, hits, suggest): sent, or joined (single flight)"
    );
    describe_counter!(
        SEARCH_RENEWALS,
        Unit::Count,
        "serve's reused answers asked of the engine again before they expire, by kind (counts, hits, suggest)"
    );
    describe_gauge!(SYNC_REFUSED, "1 while this worker refuses to sync because tidemark.seq is behind the index (see admin status)");
    for (name, help) in DbGauges::HELP {
        describe_gauge!(*name, *help);
    }
}

/// Exports every counter a worker keeps, with each of its fixed label values, at 0 (adding
/// nothing to what this process already counted), and the refusal gauge at 0.
pub fn worker_started() {
    for outcome in OUTCOMES {
        counter!(DOCUMENTS, "outcome" => outcome).increment(0);
    }
    for class in STATUS_CLASSES {
        counter!(BULK_REQUESTS, "status_class" => class).increment(0);
    }
    for stage in RETRY_STAGES {
        counter!(RETRIES, "stage" => stage).increment(0);
    }
    for result in BATCH_RESULTS {
        counter!(BATCHES, "result" => result).increment(0);
    }
    for name in [BULK_ITEMS, DEAD_LETTERED, FANOUT_STUDENTS, REINDEX_DOCUMENTS] {
        counter!(name).increment(0);
    }
    sync_refused(false);
}

/// Exports every counter `serve` keeps, with each of its fixed label values, at 0, and the
/// cache's gauges at 0 (an empty cache).
pub fn serve_started() {
    for kind in CACHE_KINDS {
        for result in ["hit", "miss"] {
            counter!(SEARCH_CACHE, "kind" => kind, "result" => result).increment(0);
        }
    }
    for kind in ENGINE_REQUEST_KINDS {
        for outcome in ["sent", "joined"] {
            counter!(SEARCH_ENGINE_REQUESTS, "kind" => kind, "outcome" => outcome).increment(0);
        }
    }
    for kind in CACHE_KINDS {
        counter!(SEARCH_RENEWALS, "kind" => kind).increment(0);
    }
    search_cache_usage(0, 0);
}

/// Whether this worker refuses to sync (the sequence is behind the index).
pub fn sync_refused(refused: bool) {
    gauge!(SYNC_REFUSED).set(if refused { 1.0 } else { 0.0 });
}

/// One `_bulk` request's answer: its status class, duration and the items' outcomes.
pub fn bulk_request(status_class: &'static str, took: Duration) {
    counter!(BULK_REQUESTS, "status_class" => status_class).increment(1);
    histogram!(BULK_DURATION).record(took.as_secs_f64());
}

/// The status class of an HTTP status (`error` for no answer).
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        None => "error",
        Some(429) => "429",
        Some(200..=299) => "2xx",
        Some(400..=499) => "4xx",
        Some(500..) => "5xx",
        Some(_) => "error",
    }
}

/// An answer-cache look-up of `kind` (`counts`, `hits`, `suggest`).
pub fn search_cache(kind: &'static str, hit: bool) {
    counter!(SEARCH_CACHE, "kind" => kind, "result" => if hit { "hit" } else { "miss" }).increment(1);
}

pub fn search_cache_usage(entries: usize, bytes: usize) {
    gauge!(SEARCH_CACHE_ENTRIES).set(entries as f64);
    gauge!(SEARCH_CACHE_BYTES).set(bytes as f64);
}

/// A request of `kind` that serve needed from the engine: sent, or joined to an identical
/// one under way.
pub fn engine_request(kind: &'static str, joined: bool) {
    counter!(SEARCH_ENGINE_REQUESTS, "kind" => kind, "outcome" => if joined { "joined" } else { "sent" }).increment(1);
}

/// A reused answer of `kind` sent to the engine again before it expires (renewed ahead).
pub fn search_renewal(kind: &'static str) {
    counter!(SEARCH_RENEWALS, "kind" => kind).increment(1);
}

/// One request `serve` answered: its route template (e.g. `/students/{id}`), never the path
/// itself, so the label stays a small fixed set.
pub fn http_request(route: &str, status: u16, took: Duration) {
    let class = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    counter!(HTTP_REQUESTS, "route" => route.to_string(), "status_class" => class).increment(1);
    histogram!(HTTP_DURATION, "route" => route.to_string()).record(took.as_secs_f64());
}

pub fn items_sent(n: usize) {
    counter!(BULK_ITEMS).increment(n as u64);
}

pub fn item_outcome(label: &'static str) {
    counter!(DOCUMENTS, "outcome" => label).increment(1);
}

pub fn retried(stage: &'static str, n: u64) {
    counter!(RETRIES, "stage" => stage).increment(n);
}

pub fn dead_lettered(n: u64) {
    counter!(DEAD_LETTERED).increment(n);
}

pub fn stage(stage: &'static str, took: Duration) {
    histogram!(STAGE_DURATION, "stage" => stage).record(took.as_secs_f64());
}

pub fn freshness(seconds: &[f64]) {
    let h = histogram!(FRESHNESS);
    for s in seconds {
        h.record(s.max(0.0));
    }
}

pub fn batch(ok: bool) {
    counter!(BATCHES, "result" => BATCH_RESULTS[usize::from(!ok)]).increment(1);
}

pub fn fanned_out(students: u64) {
    counter!(FANOUT_STUDENTS).increment(students);
}

pub fn reindexed(documents: u64) {
    counter!(REINDEX_DOCUMENTS).increment(documents);
}

/// The gauges read from PostgreSQL (and the queue depth from Redis), computed together.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DbGauges {
    pub marks_outstanding: i64,
    pub marks_in_flight: i64,
    pub oldest_mark_age_seconds: f64,
    pub fanouts_pending: i64,
    pub dead_letters: i64,
    pub queue_depth: Option<u64>,
    pub workers_live: i64,
    pub reindex_active: bool,
    pub reindex_progress_ratio: f64,
}

impl DbGauges {
    const HELP: &'static [(&'static str, &'static str)] = &[
        (MARKS_OUTSTANDING, "students whose change is not yet in the index"),
        (MARKS_IN_FLIGHT, "of those, leased by a worker right now"),
        (OLDEST_MARK_AGE, "age of the oldest change not yet indexed: the freshness lag"),
        (FANOUTS_PENDING, "renamed universities/courses not yet expanded"),
        (DEAD_LETTERS, "documents currently in the dead-letter table"),
        (QUEUE_DEPTH, "sync jobs waiting in Redis"),
        (WORKERS_LIVE, "worker processes with a recent heartbeat"),
        (REINDEX_ACTIVE, "1 while a full reindex builds or verifies"),
        (REINDEX_PROGRESS, "documents written / total of the running build"),
    ];

    /// Publishes them on this process's registry.
    pub fn publish(&self) {
        gauge!(MARKS_OUTSTANDING).set(self.marks_outstanding as f64);
        gauge!(MARKS_IN_FLIGHT).set(self.marks_in_flight as f64);
        gauge!(OLDEST_MARK_AGE).set(self.oldest_mark_age_seconds);
        gauge!(FANOUTS_PENDING).set(self.fanouts_pending as f64);
        gauge!(DEAD_LETTERS).set(self.dead_letters as f64);
        if let Some(d) = self.queue_depth {
            gauge!(QUEUE_DEPTH).set(d as f64);
        }
        gauge!(WORKERS_LIVE).set(self.workers_live as f64);
        gauge!(REINDEX_ACTIVE).set(if self.reindex_active { 1.0 } else { 0.0 });
        gauge!(REINDEX_PROGRESS).set(self.reindex_progress_ratio);
    }
}

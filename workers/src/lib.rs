//! tidemark's jobs and the processes that run them: the only crate that touches apalis,
//! so a change of apalis's API touches this file alone.
//!
//! Redis carries *when* and *who* (nudges and ticks); PostgreSQL carries *what* (the dirty
//! marks). A job therefore carries no data: it says "look for work". Losing every job loses
//! nothing: the next scheduler tick finds every mark.
//!
//! Jobs do not pile up: a nudge enqueues a job only if no job is waiting in the queue
//! (read from the queue itself, so nothing can go stale). A job that finds more work
//! than one batch nudges again before it starts working, so idle workers join in at once.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::*;
use apalis_core::backend::{BackendConfig, Vacuum, WireFormatBackend};
use apalis_core::worker::context::WorkerContext;
use apalis_cron::{CronScheduler, Schedule, Tick};
use apalis_redis::{ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize};

/// "Look for work." Why it was enqueued is kept for the logs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncJob {
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("Redis at {url} is unreachable ({reason}); check REDIS_URL and that Redis is up")]
    Unreachable { url: String, reason: String },
    #[error("Redis at {url} refused the credentials ({reason}); check the user and password in REDIS_URL")]
    Unauthorized { url: String, reason: String },
    #[error("Redis command failed: {0}")]
    Command(String),
    #[error("worker stopped with an error: {0}")]
    Worker(String),
}

/// The sync queue in one Redis namespace.
#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    storage: RedisStorage<SyncJob>,
    /// Where apalis keeps waiting jobs: due ones in a list, future (and freshly pushed)
    /// ones in a sorted set. Together they are the queue depth.
    waiting_list: String,
    scheduled_set: String,
    url: String,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("url", &self.url).field("waiting_list", &self.waiting_list).finish()
    }
}

impl Queue {
    /// Connects once. Every message says what `redact` makes of the URL and of the client's
    /// errors (the caller's one redactor strips the password).
    pub async fn connect(url: &str, namespace: &str, redact: impl Fn(&str) -> String) -> Result<Queue, QueueError> {
        let redacted_url = redact(url);
        let unreachable = |e: &redis::RedisError| {
            let (url, reason) = (redacted_url.clone(), redact(&e.to_string()));
            if e.kind() == redis::ErrorKind::AuthenticationFailed || reason.contains("AUTH") || reason.contains("WRONGPASS") {
                QueueError::Unauthorized { url, reason }
            } else {
                QueueError::Unreachable { url, reason }
            }
        };
        let client = apalis_redis::Client::open(url).map_err(|e| unreachable(&e))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, cfg).await.map_err(|e| unreachable(&e))?;
        // Name the queue explicitly: apalis's default is the Rust type path, which moves
        // when the type moves.
        let config = apalis_redis::Config::default()
            .queue(format!("{namespace}:sync"))
            // Results must be persisted for apalis to mark a job done and drop it from the
            // worker's in-flight set; vacuum() then deletes the bookkeeping.
            .persist_results(true)
            // An idle apalis-redis worker looks for new jobs when its heartbeat fires, so
            // the heartbeat is what bounds nudge → start for an idle fleet (a busy worker
            // fetches again as soon as a job ends). 50 ms makes that ~25 ms on average
            // (200 ms made a renamed university wait ~100 ms before its fan-out began,
            // BENCHMARKS.md "Fan-out"), for a few cheap Redis scripts per tick. A worker
            // is declared dead (its jobs re-enqueued) after 2,400 missed beats, 2 minutes:
            // heartbeats pause while every job slot is busy, and a long step must not make
            // a healthy worker look dead.
            .heartbeat_interval(Duration::from_millis(50))
            .missed_heartbeats(2400);
        let waiting_list = config.active_jobs_list();
        let scheduled_set = config.scheduled_jobs_set();
        let storage = RedisStorage::new(conn.clone()).with_config(config);
        let mut q = Queue { conn, storage, waiting_list, scheduled_set, url: redacted_url.clone() };
        q.ping().await?;
        Ok(q)
    }

    async fn ping(&mut self) -> Result<(), QueueError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn)
            .await
            .map(|_| ())
            .map_err(|e| QueueError::Unreachable { url: self.url.clone(), reason: e.to_string() })
    }

    /// Enqueues a sync unless one is already waiting to be picked up. Returns whether it
    /// enqueued. "Waiting" is read from the queue itself, so a job that a worker took and
    /// never started (it died) does not silence later nudges; two nudges at the same instant
    /// may both enqueue, which costs one idle job at most.
    pub async fn nudge(&self, reason: &str) -> Result<bool, QueueError> {
        if self.depth().await? > 0 {
            return Ok(false);
        }
        let mut storage = self.storage.clone();
        storage.push(SyncJob { reason: reason.to_string() }).await.map_err(|e| QueueError::Command(e.to_string()))?;
        Ok(true)
    }

    /// Jobs waiting to be picked up.
    pub async fn depth(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let (due, scheduled): (u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(&self.waiting_list)
            .cmd("ZCARD")
            .arg(&self.scheduled_set)
            .query_async(&mut conn)
            .await
            .map_err(|e| QueueError::Command(e.to_string()))?;
        Ok(due + scheduled)
    }

    /// Deletes finished jobs' bookkeeping, which apalis otherwise keeps forever. Run by the
    /// scheduler on every tick.
    pub async fn vacuum(&self) -> Result<usize, QueueError> {
        let mut storage = self.storage.clone();
        let n = storage.vacuum().await.map_err(|e| QueueError::Command(e.to_string()))?;
        let mut conn = self.conn.clone();
        let done = storage.get_config().done_jobs_set();
        redis::cmd("DEL").arg(done).query_async::<()>(&mut conn).await.map_err(|e| QueueError::Command(e.to_string()))?;
        Ok(n)
    }
}

/// What a worker does with each job: the core's worker process runs a step and decides what
/// to enqueue next. This crate knows nothing of what a job does.
///
/// A named type (not a generic closure parameter): apalis needs its handler's arguments to be
/// `Send` for every lifetime, which a boxed trait object in a type alias does not satisfy.
#[derive(Clone)]
pub struct Handler(Arc<dyn Fn(SyncJob) -> JobFuture + Send + Sync>);

/// What a [`Handler`] returns for one job.
pub type JobFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Handler {
    pub fn new(f: impl Fn(SyncJob) -> JobFuture + Send + Sync + 'static) -> Handler {
        Handler(Arc::new(f))
    }

    fn call(&self, job: SyncJob) -> JobFuture {
        (self.0)(job)
    }
}

/// Runs the job with the worker's handler. Never fails the job: what a failed step means for
/// the queue (a delayed nudge) is the handler's decision, and apalis's own retries would only
/// pile up duplicate jobs.
async fn handle_sync(job: SyncJob, handler: Data<Handler>) -> Result<(), BoxDynError> {
    handler.call(job).await;
    Ok(())
}

/// A backend that never sleeps longer than `every` while waiting for jobs.
///
/// apalis-core 1.0.0's `Persisted` backend (which apalis-redis uses) can go to sleep for
/// good: its heartbeat timer is only looked at while no job fetch is in flight, so when
/// the timer fires *during* a fetch and that fetch comes back empty, `poll_next` returns
/// `Pending` with nothing left to wake the worker. The worker then neither fetches nor
/// heartbeats again while jobs wait in Redis. How often that happens is the fetch time
/// over the heartbeat interval per fetch: with a 50 ms heartbeat and hundreds of fetches a
/// second under load, a worker stalled within a minute (BENCHMARKS.md, "Freshness"), and
/// behind a Redis slower than the heartbeat, at once
/// (`tests/faults.rs::a_worker_behind_a_slow_redis_keeps_picking_up_changes_after_idling`).
/// This wrapper arms its own timer whenever the backend has nothing, so the worker is
/// polled again within `every`: the backend then sees its heartbeat due and fetches.
struct Awake<B> {
    inner: B,
    every: Duration,
    nap: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Awake<B> {
    fn new(inner: B, every: Duration) -> Self {
        Awake { inner, every, nap: None }
    }

    /// Makes sure a wake-up is armed at most `every` from now.
    fn arm(&mut self, cx: &mut Context<'_>) {
        let every = self.every;
        let nap = self.nap.get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        if nap.as_mut().poll(cx).is_ready() {
            nap.as_mut().reset(tokio::time::Instant::now() + every);
            let _ = nap.as_mut().poll(cx);
        }
    }
}

impl<B: Backend> Backend for Awake<B> {
    type Task = B::Task;
    type Error = B::Error;

    fn poll_ready(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx, worker)
    }

    fn poll_next(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        let next = self.inner.poll_next(cx, worker);
        if next.is_pending() {
            self.arm(cx);
        }
        next
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_close(cx, worker)
    }
}

impl<B: BackendConfig> BackendConfig for Awake<B> {
    type Args = B::Args;
    type Id = B::Id;
    type Kind = B::Kind;
    type Config = B::Config;
    type Layer = B::Layer;

    fn config(&self) -> &Self::Config {
        self.inner.config()
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> Self::Layer {
        self.inner.middleware(worker)
    }
}

impl<B: WireFormatBackend> WireFormatBackend for Awake<B> {
    type Codec = B::Codec;
    type Compact = B::Compact;

    fn codec(&self) -> &Self::Codec {
        self.inner.codec()
    }
}

/// Runs sync jobs, `concurrency` at a time, each by `handler`, until `shutdown` completes;
/// then stops taking jobs and lets the running ones finish.
pub async fn run_worker(
    queue: Queue,
    name: &str,
    concurrency: usize,
    handler: Handler,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), QueueError> {
    let every = queue.storage.get_config().heartbeat_interval;
    let worker = WorkerBuilder::new(name)
        .backend(Awake::new(queue.storage.clone(), every))
        .concurrency(concurrency)
        .data(handler)
        .build(handle_sync);
    worker
        .run_until(async move {
            shutdown.await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| QueueError::Worker(e.to_string()))
}

/// Ticks every `interval` (whole seconds), each tick a nudge.
#[derive(Clone, Debug)]
struct Every {
    interval: u64,
    next: u64,
}

impl<Tz> Schedule<Tz> for Every {
    fn next_tick(&mut self, _tz: &Tz) -> Option<Tick<Tz>> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        // Never a tick in the past (a slow tick must not make the next one fire late and
        // then in a burst).
        self.next = (self.next + self.interval).max(now + 1);
        Some(Tick::new(self.next))
    }
}

async fn handle_tick(_tick: Tick, queue: Data<Queue>) -> Result<(), BoxDynError> {
    match queue.nudge("tick").await {
        Ok(enqueued) => tracing::debug!(enqueued, "scheduler tick"),
        Err(e) => tracing::warn!(error = %e, "scheduler tick could not enqueue a sync; next tick tries again"),
    }
    if let Err(e) = queue.vacuum().await {
        tracing::debug!(error = %e, "queue vacuum failed");
    }
    Ok(())
}

/// Enqueues a sync every `interval` until `shutdown` completes.
pub async fn run_scheduler(
    queue: Queue,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), QueueError> {
    let schedule = Every { interval: interval.as_secs().max(1), next: 0 };
    let worker = WorkerBuilder::new("tidemark-scheduler").backend(CronScheduler::new(schedule)).data(queue).build(handle_tick);
    worker
        .run_until(async move {
            shutdown.await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| QueueError::Worker(e.to_string()))
}

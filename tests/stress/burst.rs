//! Insert bursts: documents (students, experiments) born while a build takes its count and
//! cuts its chunks.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use sqlx::{Connection, PgConnection};

use crate::{
    model::Model,
    ops::{age, first, last, year},
    writers::{cause, connect_writer},
};

/// How long a burst runs at most.
pub const BURST_MAX: Duration = Duration::from_secs(6);
const BURST_CONNECTIONS: u64 = 2;

/// Single-row inserts at full speed, each its own transaction, on connections of their own
/// (`application_name` `tidemark_stress_burst`: never terminated by the chaos), from just
/// before a reindex request until half a second after its answer. Their ids come from the
/// sequence, so they lie above the maximum id when the build counts and cuts its chunks.
pub struct InsertBurst {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<BurstTally>>,
    pub started: Instant,
    /// When it started, on the timeline's clock.
    pub at: Duration,
    max_before: i64,
    pub stop_at: Option<Instant>,
}

#[derive(Default)]
struct BurstTally {
    ids: Vec<i64>,
    refused: BTreeMap<String, u64>,
}

pub struct BurstReport {
    pub at: Duration,
    pub seconds: f64,
    pub build: Option<i64>,
    pub max_before: i64,
    pub ids: Vec<i64>,
    pub refused: BTreeMap<String, u64>,
}

impl BurstReport {
    pub fn at_or_below_max(&self) -> usize {
        self.ids.iter().filter(|&&id| id <= self.max_before).count()
    }

    pub fn describe(&self) -> String {
        format!(
            "insert burst at {:.1}s around the reindex request{}: {} single-row inserts on {BURST_CONNECTIONS} connections in {:.1}s ({:.0}/s), ids {}..={} (max id {} when it began; {} not above it){}",
            self.at.as_secs_f64(),
            self.build.map(|b| format!(" (build #{b})")).unwrap_or_default(),
            self.ids.len(),
            self.seconds,
            self.ids.len() as f64 / self.seconds.max(0.001),
            self.ids.first().copied().unwrap_or(0),
            self.ids.last().copied().unwrap_or(0),
            self.max_before,
            self.at_or_below_max(),
            if self.refused.is_empty() { String::new() } else { format!("; refused: {:?}", self.refused) }
        )
    }
}

impl InsertBurst {
    /// `at` is now on the timeline's clock.
    pub async fn start(model: Model, pool: &sqlx::PgPool, url: &str, seed: u64, at: Duration) -> InsertBurst {
        let max_before: i64 =
            sqlx::query_scalar(&format!("SELECT coalesce(max(id), 0) FROM {}", model.table())).fetch_one(pool).await.unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let until = Instant::now() + BURST_MAX;
        let tasks = (0..BURST_CONNECTIONS)
            .map(|i| tokio::spawn(burst_inserts(model, url.to_string(), seed.wrapping_add(i), stop.clone(), until)))
            .collect();
        InsertBurst { stop, tasks, started: Instant::now(), at, max_before, stop_at: None }
    }

    pub async fn finish(self, build: Option<i64>) -> BurstReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut ids = Vec::new();
        let mut refused = BTreeMap::new();
        for t in self.tasks {
            match tokio::time::timeout(Duration::from_secs(30), t).await {
                Ok(Ok(tally)) => {
                    ids.extend(tally.ids);
                    for (k, v) in tally.refused {
                        *refused.entry(k).or_default() += v;
                    }
                }
                Ok(Err(e)) => *refused.entry(format!("burst task: {e}")).or_default() += 1,
                Err(_) => *refused.entry("burst task did not stop within 30s".into()).or_default() += 1,
            }
        }
        ids.sort_unstable();
        BurstReport { at: self.at, seconds: self.started.elapsed().as_secs_f64(), build, max_before: self.max_before, ids, refused }
    }
}

async fn burst_inserts(model: Model, url: String, seed: u64, stop: Arc<AtomicBool>, until: Instant) -> BurstTally {
    let mut tally = BurstTally::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn = match connect_writer(&url).await {
        Ok(c) => c,
        Err(e) => {
            tally.refused.insert(format!("connect: {}", cause(&e).0), 1);
            return tally;
        }
    };
    while !stop.load(Ordering::Relaxed) && Instant::now() < until && tally.ids.len() < model.burst_max_rows() {
        match model.insert_one(&mut conn, &mut rng).await {
            Ok(id) => tally.ids.push(id),
            Err(e) => {
                let (what, _, reconnect) = cause(&e);
                *tally.refused.entry(what).or_default() += 1;
                if reconnect {
                    break;
                }
            }
        }
    }
    let _ = conn.close().await;
    tally
}

/// One student, one transaction (autocommit). Boxed as `Send` for `tokio::spawn` (see
/// [`crate::writers::Ops::run`]).
pub fn insert_student<'a>(c: &'a mut PgConnection, rng: &mut StdRng) -> futures::future::BoxFuture<'a, Result<i64, sqlx::Error>> {
    let (f, l, a, y, u) = (first(rng), last(rng), age(rng), year(rng), rng.gen_range(0..150i64));
    Box::pin(async move {
        sqlx::query_scalar(
            "INSERT INTO students (first_name, last_name, age, year_in_school, university_id)
             VALUES ($1, $2, $3, $4, (SELECT id FROM universities WHERE id >= $5 ORDER BY id LIMIT 1)) RETURNING id",
        )
        .bind(f)
        .bind(l)
        .bind(a)
        .bind(y)
        .bind(u)
        .fetch_one(&mut *c)
        .await
    })
}

//! The writers: random operations ([`crate::ops`] on students, [`crate::refinebio`] on
//! refinebio's tables) on connections of their own, at full speed or, in the calm windows,
//! a trickle; and what they did.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use rand::{rngs::StdRng, Rng, SeedableRng};
use sqlx::{postgres::PgArguments, query::Query, Connection, PgConnection, Postgres};

use crate::{
    fleet::Fleet,
    model::Model,
    settings::{is_calm, Settings},
    support::Env,
    with_app_name,
};

/// A model's writer operations.
pub trait Ops: Copy + PartialEq + Send + 'static {
    /// What a writer does when the moment does not allow the operation it picked (a calm
    /// window, a bulk statement too soon after the last): a single-row update.
    const SMALL: Self;
    /// Every operation, with its weight in the choice and its name in the summary.
    const OPS: &'static [(Self, u32, &'static str)];

    /// Weighted choice of the next operation.
    fn pick(rng: &mut StdRng) -> Self {
        let total: u32 = Self::OPS.iter().map(|(_, w, _)| w).sum();
        let mut x = rng.gen_range(0..total);
        for (op, w, _) in Self::OPS {
            if x < *w {
                return *op;
            }
            x -= w;
        }
        unreachable!()
    }

    /// Operations of the calm windows: a trickle of single-row changes.
    fn is_calm(self) -> bool;
    /// Operations over hundreds or thousands of rows: at most one every few seconds.
    fn is_bulk(self) -> bool;

    fn name(self) -> &'static str {
        Self::OPS.iter().find(|(op, _, _)| *op == self).expect("every operation is in OPS").2
    }

    /// Keeps the related tables within bounds: an insert past the upper bound becomes a
    /// delete, a delete under the lower bound an insert.
    fn rebalance(c: &mut PgConnection, op: Self) -> BoxFuture<'_, Result<Self, sqlx::Error>>;
    /// Runs the operation (writer `w`, its `n`th; keep about `target` documents); the rows
    /// it touched. Boxed as `Send` where every lifetime is concrete: left to infer it
    /// through `tokio::spawn`, rustc cannot prove sqlx's executor bounds for all lifetimes.
    fn run<'a>(
        c: &'a mut PgConnection,
        rng: &'a mut StdRng,
        op: Self,
        w: usize,
        n: u64,
        target: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
}

/// The running writers: the chaos's clock starts with them.
pub struct Writers {
    pub start: Instant,
    pub deadline: Instant,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<WriterStats>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// `s.writers` writers, each with a seed of its own, until `s.chaos` has passed.
    pub fn start(env: &Env, s: &Settings) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let url = with_app_name(&env.database_url, "tidemark_stress_writer");
        let start = Instant::now();
        let deadline = start + s.chaos;
        let tasks = (0..s.writers)
            .map(|w| {
                let (url, stop, stats) = (url.clone(), stop.clone(), stats.clone());
                let seed = s.seed.wrapping_mul(1_000_003).wrapping_add(w as u64);
                let plan = Writer { w, seed, url, target: s.rows as i64, stop, start, deadline, stats };
                match s.model {
                    Model::Students => tokio::spawn(writer::<crate::ops::Op>(plan)),
                    Model::Refinebio => tokio::spawn(writer::<crate::refinebio::Op>(plan)),
                }
            })
            .collect();
        Writers { start, deadline, stop, stats, tasks }
    }

    /// Writes stop (bounded); returns what they did.
    pub async fn stop(self, fleet: &mut Fleet<'_>) -> WriterStats {
        self.stop.store(true, Ordering::SeqCst);
        let stopping = Instant::now();
        for w in self.tasks {
            if tokio::time::timeout(Duration::from_secs(60), w).await.is_err() {
                fleet.event("a writer did not stop within 60s");
            }
        }
        fleet.event(&format!("writers stopped ({:.1}s after the deadline)", stopping.elapsed().as_secs_f64()));
        let stats = self.stats.lock().unwrap().clone();
        stats
    }
}

#[derive(Clone, Default)]
pub struct WriterStats {
    ok: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    /// Why operations were refused: SQLSTATE and constraint, or the connection error.
    causes: BTreeMap<String, u64>,
    /// Causes a correct writer should never see (a bug in this test's SQL).
    unexpected: BTreeMap<String, u64>,
    rows: u64,
    reconnects: u64,
}

impl WriterStats {
    pub fn unexpected(&self) -> u64 {
        self.unexpected.values().sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::from("operations by kind (committed or rolled back as intended / refused):\n");
        let kinds: BTreeSet<&str> = self.ok.keys().chain(self.refused.keys()).copied().collect();
        for k in kinds {
            let _ = writeln!(out, "  {k:<42} {:>7} / {}", self.ok.get(k).unwrap_or(&0), self.refused.get(k).unwrap_or(&0));
        }
        let ok: u64 = self.ok.values().sum();
        let refused: u64 = self.refused.values().sum();
        let _ = writeln!(out, "  {:<42} {ok:>7} / {refused}   ({} rows written, {} reconnects)", "total", self.rows, self.reconnects);
        if !self.causes.is_empty() {
            let _ = writeln!(out, "refused because: {:?}", self.causes);
        }
        if !self.unexpected.is_empty() {
            let _ = writeln!(out, "UNEXPECTED writer errors: {:?}", self.unexpected);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The SQL helpers of every model's operations

pub type Statement<'q> = Query<'q, Postgres, PgArguments>;

/// Runs a statement on a connection or in a transaction; the number of rows it touched.
pub async fn exec(c: &mut PgConnection, q: Statement<'_>) -> Result<u64, sqlx::Error> {
    Ok(q.execute(c).await?.rows_affected())
}

/// An existing row of a table keyed by `id` (students, experiments, samples), spread over
/// its ids; none when the table is empty.
pub async fn some(c: &mut PgConnection, rng: &mut StdRng, table: &str) -> Result<Option<i64>, sqlx::Error> {
    let max: Option<i64> = sqlx::query_scalar(&format!("SELECT max(id) FROM {table}")).fetch_one(&mut *c).await?;
    let Some(max) = max else { return Ok(None) };
    let at = rng.gen_range(1..=max.max(1));
    sqlx::query_scalar(&format!("SELECT id FROM {table} WHERE id >= $1 ORDER BY id LIMIT 1")).bind(at).fetch_optional(&mut *c).await
}

/// A random row of a small table (universities, courses, organisms, platforms).
pub async fn some_row(c: &mut PgConnection, table: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY random() LIMIT 1")).fetch_optional(&mut *c).await
}

pub async fn count(c: &mut PgConnection, table: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&mut *c).await
}

// ---------------------------------------------------------------------------------------
// The writer tasks

/// Why a statement failed, and whether the connection must be replaced.
pub fn cause(e: &sqlx::Error) -> (String, bool, bool) {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.to_string()).unwrap_or_default();
            let what = match d.constraint() {
                Some(c) => format!("{code} {c}"),
                None => format!("{code} {}", d.message().chars().take(60).collect::<String>()),
            };
            // Unique names, foreign keys raced by deletes, deadlocks between bulk writers,
            // lock and statement timeouts, a terminated connection.
            let expected = matches!(code.as_str(), "23505" | "23503" | "40P01" | "40001" | "55P03" | "57014")
                || code.starts_with("57P")
                || code.starts_with("08");
            let reconnect = code.starts_with("57P") || code.starts_with("08");
            (what, expected, reconnect)
        }
        other => (format!("connection: {}", other.to_string().chars().take(80).collect::<String>()), true, true),
    }
}

pub fn connect_writer(url: &str) -> futures::future::BoxFuture<'_, Result<PgConnection, sqlx::Error>> {
    Box::pin(async move {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?.options([("statement_timeout", "20s"), ("lock_timeout", "10s")]);
        PgConnection::connect_with(&options).await
    })
}

/// One writer task: its number and seed, the database, how many documents to keep around,
/// and when to stop.
struct Writer {
    w: usize,
    seed: u64,
    url: String,
    target: i64,
    stop: Arc<AtomicBool>,
    start: Instant,
    deadline: Instant,
    stats: Arc<Mutex<WriterStats>>,
}

async fn writer<O: Ops>(plan: Writer) {
    let Writer { w, seed, url, target, stop, start, deadline, stats } = plan;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn: Option<PgConnection> = None;
    let mut last_bulk = Instant::now() - Duration::from_secs(60);
    let mut n: u64 = 0;
    // Bounded twice: by the deadline and by a (generous) number of operations.
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 5_000_000 {
        n += 1;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect_writer(&url).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    let (what, _, _) = cause(&e);
                    *stats.lock().unwrap().causes.entry(format!("connect: {what}")).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let calm = is_calm(start.elapsed());
        let mut op = O::pick(&mut rng);
        if calm && !op.is_calm() {
            op = O::SMALL;
        }
        if op.is_bulk() {
            if last_bulk.elapsed() < Duration::from_secs(5) {
                op = O::SMALL;
            } else {
                last_bulk = Instant::now();
            }
        }
        let result = match O::rebalance(c, op).await {
            Ok(o) => {
                op = o;
                O::run(c, &mut rng, op, w, n, target).await
            }
            Err(e) => Err(e),
        };
        {
            let mut st = stats.lock().unwrap();
            match result {
                Ok(rows) => {
                    *st.ok.entry(op.name()).or_default() += 1;
                    st.rows += rows;
                }
                Err(e) => {
                    *st.refused.entry(op.name()).or_default() += 1;
                    let (what, expected, reconnect) = cause(&e);
                    if expected {
                        *st.causes.entry(what).or_default() += 1;
                    } else {
                        *st.unexpected.entry(format!("{}: {what}: {e}", op.name())).or_default() += 1;
                    }
                    if reconnect {
                        conn = None;
                        st.reconnects += 1;
                    }
                }
            }
        }
        let pause = if calm { rng.gen_range(100..300) } else { rng.gen_range(5..40) };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

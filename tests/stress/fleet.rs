//! The worker and scheduler processes, their private Redis, and the chaos done to them.

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

use crate::{
    plain,
    settings::{BODY_LIMIT, LOG_FILTER},
    support::{Env, Proc, RedisServer},
    with_app_name, Files,
};

#[derive(Default)]
pub struct ChaosCounts {
    pub worker_kills: u64,
    pub kill_all: u64,
    pub scheduler_kills: u64,
    pub restarts: u64,
    pub exited_by_themselves: u64,
    pub pg_terminations: u64,
    pub pg_backends_terminated: u64,
    pub pg_writers_terminated: u64,
    pub redis_flushes: u64,
    pub redis_restarts: u64,
    pub resumes: u64,
    pub body_limit_windows: u64,
    pub reindex_requests: u64,
    pub insert_bursts: u64,
    pub burst_inserts: u64,
    pub rollbacks: u64,
    pub deleted_before_rollback: u64,
}

impl ChaosCounts {
    pub fn render(&self) -> String {
        format!(
            "chaos: {} worker SIGKILLs ({} of them all workers at once), {} scheduler SIGKILLs, {} process restarts, {} processes exited by themselves;\n       {} pg_terminate_backend rounds ({} connections, {} of them writers'), {} Redis FLUSHALLs, {} Redis SIGKILL+restarts, {} `admin reindex --resume`;\n       {} windows of a {} KiB body limit (413), {} `admin reindex` requests with {} insert bursts ({} single-row inserts), {} `admin rollback` ({} documents' rows deleted from the newer index just before)\n",
            self.worker_kills,
            self.kill_all,
            self.scheduler_kills,
            self.restarts,
            self.exited_by_themselves,
            self.pg_terminations,
            self.pg_backends_terminated,
            self.pg_writers_terminated,
            self.redis_flushes,
            self.redis_restarts,
            self.resumes,
            self.body_limit_windows,
            BODY_LIMIT / 1024,
            self.reindex_requests,
            self.insert_bursts,
            self.burst_inserts,
            self.rollbacks,
            self.deleted_before_rollback
        )
    }
}

/// A worker's or the scheduler's place: what it runs, its process (when it runs) and the
/// logs of its earlier generations.
struct Slot {
    name: String,
    db_url: String,
    args: &'static [&'static str],
    proc: Option<Proc>,
    generation: u32,
    restart_at: Option<Instant>,
    /// Logs of earlier generations (killed or exited), by file name.
    logs: Vec<(String, String)>,
}

impl Slot {
    fn log_name(&self) -> String {
        format!("{}-{}.log", self.name, self.generation)
    }

    /// Keeps the log of the running generation and forgets the process.
    fn retire(&mut self, dir: &std::path::Path) {
        if let Some(p) = self.proc.take() {
            let text = p.output();
            let _ = std::fs::write(dir.join(self.log_name()), &text);
            self.logs.push((self.log_name(), text));
        }
    }
}

pub struct Fleet<'a> {
    pub env: &'a Env,
    /// The copy of the `tidemark` binary every process of this run executes.
    binary: PathBuf,
    log_dir: PathBuf,
    config_path: String,
    proxy_url: String,
    redis: RedisServer,
    /// When a killed Redis is to be started again.
    redis_back_at: Option<Instant>,
    /// The workers, then the scheduler (the last).
    slots: Vec<Slot>,
    pub started: Instant,
    pub events: Vec<String>,
    pub counts: ChaosCounts,
}

impl<'a> Fleet<'a> {
    /// `workers` worker slots and the scheduler's, none started; the processes reach the
    /// search server through `proxy_url` and use `redis`; their database connections carry
    /// an `application_name`.
    pub fn new(env: &'a Env, files: &Files, proxy_url: String, redis: RedisServer, workers: usize) -> Fleet<'a> {
        let slot = |name: String, app: &str, args| Slot {
            name,
            db_url: with_app_name(&env.database_url, app),
            args,
            proc: None,
            generation: 0,
            restart_at: None,
            logs: Vec::new(),
        };
        let mut slots: Vec<Slot> =
            (0..workers).map(|i| slot(format!("worker{i}"), "tidemark_worker", &["worker", "--concurrency", "2"])).collect();
        slots.push(slot("scheduler".into(), "tidemark_scheduler", &["scheduler", "--interval", "1s"]));
        Fleet {
            env,
            binary: files.binary.clone(),
            log_dir: files.log_dir.clone(),
            config_path: files.config_path.display().to_string(),
            proxy_url,
            redis,
            redis_back_at: None,
            slots,
            started: Instant::now(),
            events: Vec::new(),
            counts: ChaosCounts::default(),
        }
    }

    pub fn event(&mut self, what: &str) {
        let line = format!("{:>7.2}s {what}", self.started.elapsed().as_secs_f64());
        eprintln!("[stress] {line}");
        self.events.push(line);
    }

    /// The binary with this test's services and model in its environment (as
    /// [`Env::command`]).
    pub fn command(&self) -> Command {
        let mut c = self.env.command_of(&self.binary);
        c.env("REDIS_URL", self.redis.url()).env("TIDEMARK_MODEL", &self.env.config.model);
        c
    }

    fn scheduler(&self) -> usize {
        self.slots.len() - 1
    }

    /// Starts the next generation of slot `i`, behind the fault proxy.
    fn spawn(&mut self, i: usize) {
        let mut c = self.command();
        let slot = &self.slots[i];
        c.args(["--config", &self.config_path])
            .args(slot.args)
            .env("DATABASE_URL", &slot.db_url)
            .env("ELASTICSEARCH_URL", &self.proxy_url)
            .env("RUST_LOG", LOG_FILTER);
        let slot = &mut self.slots[i];
        slot.generation += 1;
        slot.proc = Some(Proc::spawn(c));
        slot.restart_at = None;
    }

    pub fn start_all(&mut self) {
        let scheduler = self.scheduler();
        self.spawn(scheduler);
        for i in 0..scheduler {
            self.spawn(i);
        }
        self.event(&format!("started the scheduler (--interval 1s) and {scheduler} workers (--concurrency 2) behind the fault proxy"));
    }

    /// Restarts what is due, and notices processes that exited by themselves.
    pub fn tend(&mut self, rng: &mut StdRng) {
        let now = Instant::now();
        if self.redis_back_at.is_some_and(|t| now >= t) {
            self.redis.respawn();
            self.redis_back_at = None;
            self.event("redis-server started again (empty)");
        }
        for i in 0..self.slots.len() {
            if let Some(status) = self.slots[i].proc.as_mut().and_then(|p| p.child.try_wait().ok().flatten()) {
                self.counts.exited_by_themselves += 1;
                let name = self.slots[i].log_name();
                self.slots[i].retire(&self.log_dir);
                // A worker comes back a little later, the scheduler at once.
                let later = if i == self.scheduler() { Duration::ZERO } else { Duration::from_millis(rng.gen_range(200..1000)) };
                self.slots[i].restart_at = Some(now + later);
                self.event(&format!("{name} exited by itself ({status}); restarting it"));
            }
            if self.slots[i].proc.is_none() && self.slots[i].restart_at.is_some_and(|t| now >= t) {
                self.spawn(i);
                self.counts.restarts += 1;
                let name = self.slots[i].log_name();
                self.event(&format!("started {name}"));
            }
        }
    }

    /// SIGKILL to slot `i`'s process, restarted `back_in` later.
    fn kill(&mut self, i: usize, back_in: Duration) {
        let slot = &mut self.slots[i];
        let Some(p) = slot.proc.as_mut() else { return };
        p.kill();
        let name = slot.log_name();
        slot.retire(&self.log_dir);
        slot.restart_at = Some(Instant::now() + back_in);
        if i == self.scheduler() {
            self.counts.scheduler_kills += 1;
        } else {
            self.counts.worker_kills += 1;
        }
        self.event(&format!("SIGKILL {name}; restart in {} ms", back_in.as_millis()));
    }

    fn kill_random_worker(&mut self, rng: &mut StdRng) {
        let alive: Vec<usize> = (0..self.scheduler()).filter(|i| self.slots[*i].proc.is_some()).collect();
        if let Some(&i) = alive.choose(rng) {
            self.kill(i, Duration::from_millis(rng.gen_range(100..2000)));
        }
    }

    fn kill_all_workers(&mut self, rng: &mut StdRng) {
        self.counts.kill_all += 1;
        self.event("SIGKILL every worker at once");
        let back_in = Duration::from_millis(rng.gen_range(500..3000));
        for i in 0..self.scheduler() {
            self.kill(i, back_in);
        }
    }

    fn kill_scheduler(&mut self, rng: &mut StdRng) {
        let i = self.scheduler();
        if self.slots[i].proc.is_some() {
            self.kill(i, Duration::from_millis(rng.gen_range(200..3000)));
        }
    }

    /// One chaos action, by `roll` in 0..100.
    pub async fn act(&mut self, roll: u32, rng: &mut StdRng) {
        match roll {
            0..=39 => self.kill_random_worker(rng),
            40..=44 => self.kill_all_workers(rng),
            45..=64 => {
                // Now and then the writers' connections too, mid-transaction as it comes.
                let writers_too = rng.gen_bool(0.3);
                let (n, w): (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE application_name = 'tidemark_stress_writer')
                       FROM (SELECT pg_terminate_backend(pid), application_name FROM pg_stat_activity
                              WHERE datname = current_database()
                                AND (application_name IN ('tidemark_worker', 'tidemark_scheduler')
                                     OR ($1 AND application_name = 'tidemark_stress_writer'))) t",
                )
                .bind(writers_too)
                .fetch_one(&self.env.pool)
                .await
                .unwrap();
                self.counts.pg_terminations += 1;
                self.counts.pg_backends_terminated += n as u64;
                self.counts.pg_writers_terminated += w as u64;
                self.event(&format!("pg_terminate_backend: {n} connections ({w} of them writers')"));
            }
            65..=79 if self.redis_back_at.is_none() => match self.redis.flushall().await {
                Ok(()) => {
                    self.counts.redis_flushes += 1;
                    self.event("redis FLUSHALL");
                }
                Err(e) => self.event(&format!("redis FLUSHALL failed: {e}")),
            },
            80..=89 if self.redis_back_at.is_none() => {
                self.redis.kill();
                self.counts.redis_restarts += 1;
                let down = Duration::from_millis(rng.gen_range(300..3000));
                self.event(&format!("redis-server SIGKILLed; back in {} ms", down.as_millis()));
                self.redis_back_at = Some(Instant::now() + down);
            }
            90.. => self.kill_scheduler(rng),
            _ => {}
        }
    }

    /// What an operator does after crashes: give the chunks of vanished workers back at
    /// once, rather than when their leases run out.
    pub async fn resume_build(&mut self) {
        if self.redis_back_at.is_some() || tidemark::catalog::active(&self.env.pool, &self.env.alias).await.unwrap().is_none() {
            return;
        }
        let mut c = self.command();
        c.args(["admin", "reindex", "--resume"]).env("RUST_LOG", "warn");
        let out = tokio::task::spawn_blocking(move || c.output()).await.unwrap().expect("tidemark admin reindex --resume");
        self.counts.resumes += 1;
        let said = plain(String::from_utf8_lossy(if out.status.success() { &out.stdout } else { &out.stderr }).trim());
        self.event(&format!("calm: tidemark admin reindex --resume: {said}"));
    }

    /// After the chaos: Redis up, and every process that waits for its restart started.
    pub async fn heal(&mut self) {
        let now = Instant::now();
        if self.redis_back_at.is_some() || !self.redis.is_running() {
            self.redis_back_at = Some(now);
        }
        for s in self.slots.iter_mut().filter(|s| s.proc.is_none()) {
            s.restart_at = Some(now);
        }
        self.tend(&mut StdRng::seed_from_u64(0));
        self.redis.wait_ready().await;
    }

    /// SIGTERM to every process, bounded (45 s in all); says which did not stop cleanly.
    pub fn stop_all(&mut self) -> String {
        let mut out = String::new();
        for p in self.slots.iter().filter_map(|s| s.proc.as_ref()) {
            p.signal_term();
        }
        let start = Instant::now();
        for s in self.slots.iter_mut().filter(|s| s.proc.is_some()) {
            let name = s.log_name();
            match s.proc.as_mut().unwrap().wait_for_exit(Duration::from_secs(45).saturating_sub(start.elapsed())) {
                Some(st) if st.success() => {}
                Some(st) => {
                    let _ = writeln!(out, "note: {name} exited with {st} on SIGTERM");
                }
                None => {
                    let _ = writeln!(out, "note: {name} did not stop within 45s of SIGTERM (killed)");
                }
            }
            s.retire(&self.log_dir);
        }
        out
    }

    pub fn all_logs(&self) -> Vec<(String, String)> {
        self.slots.iter().flat_map(|s| s.logs.iter().cloned()).collect()
    }

    pub fn last_logs(&self) -> Vec<(String, String)> {
        self.slots.iter().filter_map(|s| s.logs.last().cloned()).collect()
    }
}

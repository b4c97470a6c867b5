//! CPU and memory accounting from /proc: who spent the CPU during a measurement (tidemark,
//! PostgreSQL backends, the search server, the discarding endpoint).

use std::{collections::HashMap, sync::OnceLock, time::Duration};

use sqlx::PgPool;

fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a /proc stat file (`/proc/<pid>/stat`, `/proc/self/task/<tid>/stat`).
pub fn stat_cpu(path: &str) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / clk_tck()))
}

pub fn pid_cpu(pid: u32) -> Option<Duration> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

pub fn self_cpu() -> Duration {
    stat_cpu("/proc/self/stat").unwrap_or_default()
}

/// Resident memory of a process, MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The search server's process, when bench.sh could tell it (the OpenSearch node it started,
/// or services.sh's node with BENCH_SHARED_SEARCH=1).
pub fn search_server_pid() -> Option<u32> {
    std::env::var("TIDEMARK_SEARCH_PID").ok()?.trim().parse().ok().filter(|p| pid_cpu(*p).is_some())
}

/// CPU of the PostgreSQL backends serving one database, between two snapshots.
pub struct PgCpu {
    start: HashMap<u32, Duration>,
    db: String,
}

async fn backends(pool: &PgPool, db: &str) -> HashMap<u32, Duration> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1").bind(db).fetch_all(pool).await.unwrap_or_default();
    pids.into_iter().filter_map(|p| Some((p as u32, pid_cpu(p as u32)?))).collect()
}

impl PgCpu {
    pub async fn start(pool: &PgPool, db: &str) -> PgCpu {
        PgCpu { start: backends(pool, db).await, db: db.to_string() }
    }

    /// CPU spent since `start` by backends alive now (backends that exited meanwhile are
    /// not counted; pools keep theirs open).
    pub async fn spent(&self, pool: &PgPool) -> Duration {
        backends(pool, &self.db)
            .await
            .into_iter()
            .map(|(pid, now)| now.saturating_sub(self.start.get(&pid).copied().unwrap_or_default()))
            .sum()
    }
}

/// Snapshot of a set of processes' CPU (worker processes, the search server).
pub struct ProcCpu {
    start: Vec<(u32, Duration)>,
}

impl ProcCpu {
    pub fn start(pids: &[u32]) -> ProcCpu {
        ProcCpu { start: pids.iter().filter_map(|p| Some((*p, pid_cpu(*p)?))).collect() }
    }

    pub fn spent(&self) -> Duration {
        self.start.iter().map(|(p, s)| pid_cpu(*p).unwrap_or(*s).saturating_sub(*s)).sum()
    }
}

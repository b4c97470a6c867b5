//! The chaos loop (kills, restarts, terminated connections, Redis flushes and restarts,
//! search faults in waves, the 413 windows, the operator's reindexes and rollbacks), and the
//! bounded drain after it.

use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::{
    fleet::Fleet,
    operator::Operator,
    say,
    settings::{body_limited, chaos_faults, is_calm, Settings, BODY_LIMIT},
    support::{fault_proxy::FaultProxy, fault_proxy::FaultStats},
    with_app_name,
};

/// What the chaos does, and when: its random choices, the operator, the watch on builds and
/// the 413 windows, on a clock that starts with the writers.
pub struct Chaos {
    rng: StdRng,
    pub operator: Operator,
    watch: BuildWatch,
    body_limit: BodyLimitWindow,
    body_limit_phase: u64,
    fault_path: Option<String>,
    start: Instant,
}

/// How the drain after the chaos ended.
pub struct Drained {
    pub converged: bool,
    pub took: Duration,
}

impl Chaos {
    pub fn new(s: &Settings, start: Instant, database_url: &str) -> Chaos {
        // The first reindex early enough that the build usually completes, is verified and
        // promoted while the chaos goes on; then a rollback and another reindex (see
        // [`Operator`]); a soak rebuilds again every two minutes.
        let operator = Operator::new(s.model, s.seed, start + s.chaos / 6, with_app_name(database_url, "tidemark_stress_burst"));
        Chaos {
            rng: StdRng::seed_from_u64(s.seed ^ 0x5eed_c4a0),
            operator,
            watch: BuildWatch::default(),
            body_limit: BodyLimitWindow::default(),
            body_limit_phase: s.seed % 14,
            fault_path: s.fault_path.clone(),
            start,
        }
    }

    /// Until `deadline`: processes killed and restarted, connections terminated, Redis
    /// flushed and restarted (see [`Fleet::act`]), in waves ([`is_calm`]); the operator's
    /// reindexes, rollbacks and the insert bursts around them; the 413 windows.
    pub async fn run(&mut self, fleet: &mut Fleet<'_>, proxy: &FaultProxy, deadline: Instant) {
        let mut next_action = self.start + Duration::from_millis(self.rng.gen_range(1500..4000));
        let mut was_calm = false;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            fleet.tend(&mut self.rng);
            self.watch.look(fleet).await;
            self.operator.step(fleet).await;
            let limited = body_limited(self.start.elapsed(), self.body_limit_phase);
            if limited != self.body_limit.on {
                proxy.set(chaos_faults(self.fault_path.clone(), limited));
                self.body_limit.switch(limited, proxy.stats().too_large, fleet);
            }
            let calm = is_calm(self.start.elapsed());
            if calm && !was_calm {
                fleet.resume_build().await;
            }
            was_calm = calm;
            if Instant::now() >= next_action {
                next_action = Instant::now() + Duration::from_millis(self.rng.gen_range(1500..4000));
                // In the calm windows only terminated connections (and the search faults,
                // which never stop) go on.
                let roll = if calm {
                    self.rng.gen_range(45..65)
                } else {
                    must_hit_redis(self.start.elapsed(), fleet).unwrap_or_else(|| self.rng.gen_range(0..100))
                };
                fleet.act(roll, &mut self.rng).await;
            }
        }
    }

    /// Faults stop; everything that is down comes back; the operator winds down. Returns
    /// what the proxy injected.
    pub async fn stop(&mut self, fleet: &mut Fleet<'_>, proxy: &FaultProxy) -> FaultStats {
        proxy.clear();
        if self.body_limit.on {
            self.body_limit.switch(false, proxy.stats().too_large, fleet);
        }
        fleet.heal().await;
        let faults = proxy.stats();
        fleet.event(&format!("faults cleared: {faults:?}"));
        // A chaos too short for the operator's cycle (a promotion, a rollback, another
        // reindex) has it completed in the drain; nothing new starts once it is.
        self.operator.winding_down = true;
        faults
    }

    /// Bounded wait until nothing is outstanding, no build runs and the operator's cycle is
    /// complete; then what the operator still runs is settled.
    pub async fn drain(&mut self, fleet: &mut Fleet<'_>, bound: Duration) -> Drained {
        let env = fleet.env;
        let start = Instant::now();
        let mut last_report = Instant::now();
        let converged = loop {
            fleet.tend(&mut self.rng);
            self.watch.look(fleet).await;
            self.operator.step(fleet).await;
            let (marks, parents, active): (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM tidemark.outstanding), (SELECT count(*) FROM tidemark.parents),
                        (SELECT count(*) FROM tidemark.reindexes WHERE state IN ('building', 'verifying'))",
            )
            .fetch_one(&env.pool)
            .await
            .unwrap();
            if marks == 0 && parents == 0 && active == 0 && self.operator.is_done() {
                break true;
            }
            if start.elapsed() > bound {
                fleet.event(&format!(
                    "NOT converged after {bound:?}: {marks} marks, {parents} parent marks, {active} active builds; the operator {}",
                    self.operator.describe()
                ));
                break false;
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                let build = tidemark::catalog::active(&env.pool, &env.alias).await.unwrap();
                say(&format!(
                    "draining: {marks} marks, {parents} parent marks{}",
                    build.map(|b| format!(", build #{} {} {}/{} chunks", b.id, b.state, b.chunks_done, b.chunks_total)).unwrap_or_default()
                ));
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let took = start.elapsed();
        self.operator.settle(fleet).await;
        self.watch.checked = None;
        self.watch.look(fleet).await;
        fleet.event(&format!("drain ended after {:.1}s (converged: {converged})", took.as_secs_f64()));
        Drained { converged, took }
    }
}

/// Every run flushes Redis and kills it at least once, whatever its dice say: in the second
/// wave of chaos, a FLUSHALL (a roll of 70, see [`Fleet::act`]) if none happened yet, then
/// a SIGKILL of redis-server (85).
fn must_hit_redis(since_start: Duration, fleet: &Fleet<'_>) -> Option<u32> {
    if since_start < Duration::from_secs(20) {
        None
    } else if fleet.counts.redis_flushes == 0 {
        Some(70)
    } else if fleet.counts.redis_restarts == 0 {
        Some(85)
    } else {
        None
    }
}

/// Notes in the timeline when a build appears, gets chunks done, and changes state.
#[derive(Default)]
pub struct BuildWatch {
    last: Option<(i64, tidemark::catalog::BuildState, i64)>,
    checked: Option<Instant>,
}

impl BuildWatch {
    async fn look(&mut self, fleet: &mut Fleet<'_>) {
        let env = fleet.env;
        if self.checked.is_some_and(|t| t.elapsed() < Duration::from_millis(500)) {
            return;
        }
        self.checked = Some(Instant::now());
        let Ok(Some(b)) = tidemark::catalog::latest(&env.pool, &env.alias).await else { return };
        let now = (b.id, b.state, b.chunks_done);
        if self.last.as_ref() != Some(&now) {
            fleet.event(&format!(
                "build #{} {}: {} ({}/{} chunks){}",
                b.id,
                b.target_index,
                b.state,
                b.chunks_done,
                b.chunks_total,
                b.message.map(|m| format!(" — {m}")).unwrap_or_default()
            ));
            self.last = Some(now);
        }
    }
}

/// Whether the proxy refuses large bodies now, and what it refused since the window began.
#[derive(Default)]
struct BodyLimitWindow {
    on: bool,
    refused_before: u64,
}

impl BodyLimitWindow {
    /// `refused` is the proxy's count of 413s so far.
    fn switch(&mut self, on: bool, refused: u64, fleet: &mut Fleet<'_>) {
        if on {
            fleet.counts.body_limit_windows += 1;
            fleet.event(&format!("proxy: bodies over {} KiB answered 413 from now on (a reverse proxy's limit)", BODY_LIMIT / 1024));
        } else {
            fleet.event(&format!("proxy: body limit lifted ({} requests refused with 413 in that window)", refused - self.refused_before));
        }
        self.on = on;
        self.refused_before = refused;
    }
}

//! What is checked at the end, and the summary: every document against the database
//! (field by field), dead letters (none, above all for a 413), builds, rollbacks and the
//! operator's cycle, stray indices, the foreign index, the writers' errors, the processes'
//! panics.

use std::{fmt::Write as _, time::Duration};

use crate::{
    chaos::Drained,
    fleet::Fleet,
    model::Model,
    operator::Operator,
    say,
    settings::{Settings, BODY_LIMIT},
    support::{fault_proxy::FaultStats, foreign::ForeignIndex, Comparison, Env},
    writers::WriterStats,
    Files,
};

/// A build as `tidemark.reindexes` records it: id, state, target index, message, reason,
/// previous index.
type BuildRow = (i64, String, String, Option<String>, String, Option<String>);

/// What the index, the database and the search server hold once the drain has ended.
pub struct Findings {
    /// The checker (only when the drain converged).
    check: Option<Comparison>,
    /// Document key, status, error, attempts.
    dead_letters: Vec<(i64, Option<i32>, String, i32)>,
    dead_413: usize,
    builds: Vec<BuildRow>,
    alias: String,
    alias_now: Vec<String>,
    build_alias: String,
    /// Every physical index of this alias's family, with its size: a stray one (say, an
    /// index auto-created under the build alias's name) blocks the next reindex.
    indices: Vec<(String, String)>,
    foreign_name: String,
    foreign_alias: String,
    foreign_problems: Vec<String>,
}

impl Findings {
    pub async fn collect(model: Model, env: &Env, foreign: &ForeignIndex, converged: bool) -> Findings {
        // The checker: every document, field by field, against documents built by the test
        // from the tables (independent of tidemark's loader and document code).
        let check = if converged { Some(Comparison::of(model.expected_docs(env).await, env.indexed_docs().await)) } else { None };
        let dead_letters: Vec<(i64, Option<i32>, String, i32)> =
            sqlx::query_as("SELECT key::bigint, status, error, attempts FROM tidemark.dead_letters ORDER BY key::bigint")
                .fetch_all(&env.pool)
                .await
                .unwrap();
        let builds: Vec<BuildRow> =
            sqlx::query_as("SELECT id, state, target_index, message, reason, previous_index FROM tidemark.reindexes ORDER BY id")
                .fetch_all(&env.pool)
                .await
                .unwrap();
        let indices = env
            .es_json(reqwest::Method::GET, &format!("/_cat/indices/{}*?format=json&h=index,docs.count", env.alias), None)
            .await
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| (i["index"].as_str().unwrap_or("").to_string(), i["docs.count"].as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let build_alias = tidemark::catalog::build_alias(&env.alias);
        let foreign_problems = foreign.problems(env, &[env.alias.as_str(), build_alias.as_str()]).await;
        let dead_413 = dead_letters.iter().filter(|(_, status, error, _)| *status == Some(413) || error.contains("413")).count();
        Findings {
            check,
            dead_letters,
            dead_413,
            builds,
            alias: env.alias.clone(),
            alias_now: env.alias_targets().await,
            build_alias,
            indices,
            foreign_name: foreign.name.clone(),
            foreign_alias: foreign.alias.clone(),
            foreign_problems,
        }
    }
}

/// Everything a run did and found, for the summary and the verdict.
pub struct Summary<'a> {
    pub s: &'a Settings,
    pub t0: std::time::Instant,
    pub writes: WriterStats,
    pub faults: FaultStats,
    pub fleet: &'a Fleet<'a>,
    pub operator: &'a Operator,
    pub drained: Drained,
    pub findings: Findings,
    /// What `Fleet::stop_all` said.
    pub stopped: String,
    pub files: &'a Files,
}

impl Summary<'_> {
    /// Log lines (of every process, every generation) that contain every one of `needles`.
    fn seen_all(&self, needles: &[&str]) -> usize {
        let logs = self.fleet.all_logs();
        logs.iter().flat_map(|(_, text)| text.lines()).filter(|l| needles.iter().all(|n| l.contains(n))).count()
    }

    fn seen(&self, needle: &str) -> usize {
        self.seen_all(&[needle])
    }

    /// The logs in which a process panicked.
    fn panics(&self) -> Vec<String> {
        self.fleet.all_logs().into_iter().filter(|(_, text)| text.contains("panicked")).map(|(name, _)| name).collect()
    }

    pub fn render(&self) -> String {
        let Findings {
            check,
            dead_letters,
            dead_413,
            builds,
            alias,
            alias_now,
            indices,
            foreign_name,
            foreign_alias,
            foreign_problems,
            ..
        } = &self.findings;
        let (s, faults, converged, panics) = (self.s, &self.faults, self.drained.converged, self.panics());
        let mut out = String::new();
        let _ = writeln!(out, "\n==== tidemark stress summary (seed {}) ====", s.seed);
        let _ = writeln!(
            out,
            "chaos {:.1}s with {} writers and {} worker processes (--concurrency 2) + 1 scheduler; whole test {:.1}s",
            s.chaos.as_secs_f64(),
            s.writers,
            s.workers,
            self.t0.elapsed().as_secs_f64()
        );
        out.push_str(&self.writes.render());
        out.push_str(&self.fleet.counts.render());
        let _ = writeln!(
            out,
            "what the processes logged: {} batches synced, {} fan-outs done, {} sync steps failed (retried), {} requests timed out, {} queue-loop restarts ({} after apalis declared the worker dead: \"worker not registered\"), {} failed builds, {} bulk requests sent again in halves after a refusal ({} processes taught a smaller size by a 413)",
            self.seen("batch synced"),
            self.seen("fan-out done"),
            self.seen("sync step failed"),
            self.seen("operation timed out"),
            self.seen("queue worker failed"),
            self.seen_all(&["queue worker failed", "worker not registered"]),
            self.seen("reindex failed"),
            self.seen("sending its halves"),
            self.seen("refused a request as too large")
        );
        let _ = writeln!(
            out,
            "search faults injected: {} item-level 429s, {} 503s, {} connection resets, {} slowed by 200ms, {} bodies over {} KiB refused with 413 in {} windows ({} requests forwarded){}",
            faults.items_429,
            faults.unavailable,
            faults.resets,
            faults.slowed,
            faults.too_large,
            BODY_LIMIT / 1024,
            self.fleet.counts.body_limit_windows,
            faults.forwarded,
            s.fault_path.as_ref().map(|p| format!(", only on paths containing {p:?}")).unwrap_or_else(|| ", on every path".into())
        );
        out.push_str(&self.operator.render(check.as_ref()));
        for (id, state, target, message, reason, previous) in builds {
            let _ = writeln!(
                out,
                "  build #{id} {target}: {state} — {} (reason: {reason}){}",
                message.as_deref().unwrap_or(""),
                previous.as_ref().map(|p| format!("; previous {p}")).unwrap_or_default()
            );
        }
        let _ = writeln!(out, "alias {} → {:?}; indices (name, documents): {:?}", alias, alias_now, indices);
        if foreign_problems.is_empty() {
            let _ = writeln!(
                out,
                "foreign index {}: untouched (the same one document at _version 1, the same uuid, its own alias {} and no alias of tidemark's)",
                foreign_name, foreign_alias
            );
        } else {
            let _ = writeln!(out, "foreign index {}: TOUCHED: {}", foreign_name, foreign_problems.join("; "));
        }
        let _ = writeln!(
            out,
            "converged: {converged}, {:.1}s after writes and faults stopped (bound {}s)",
            self.drained.took.as_secs_f64(),
            s.converge.as_secs()
        );
        if let Some(c) = &check {
            out.push_str(&c.render());
        }
        let _ = writeln!(out, "dead letters: {} ({dead_413} of them for a 413)", dead_letters.len());
        for d in dead_letters.iter().take(5) {
            let _ = writeln!(out, "  {d:?}");
        }
        out.push_str(&self.stopped);
        if !panics.is_empty() {
            let _ = writeln!(out, "panics in process logs: {panics:?}");
        }
        let _ = writeln!(out, "process logs: {}", self.files.log_dir.display());
        out
    }

    /// What went wrong; empty when the run passed.
    pub fn failures(&self) -> Vec<String> {
        let Findings { check, dead_letters, dead_413, builds, alias_now, build_alias, indices, foreign_name, foreign_problems, .. } =
            &self.findings;
        let (s, faults, converged, panics) = (self.s, &self.faults, self.drained.converged, self.panics());
        let mut failures = Vec::new();
        if !converged {
            failures.push(format!("the workers did not drain within {}s", s.converge.as_secs()));
        }
        match &check {
            Some(c) if !c.is_clean() => failures.push(format!(
                "the index differs from the database: {} missing, {} extra, {} differing",
                c.missing.len(),
                c.extra.len(),
                c.differing.len()
            )),
            _ => {}
        }
        if *dead_413 > 0 {
            failures.push(format!(
                "{dead_413} documents dead-lettered for a 413: a request too large must be split, never a document given up"
            ));
        }
        if !dead_letters.is_empty() {
            failures.push(format!("{} dead letters although no permanent fault was injected", dead_letters.len()));
        }
        if s.chaos >= Duration::from_secs(30) && faults.too_large == 0 {
            failures.push(format!(
                "no request was refused with 413 in {} windows of a {} KiB body limit",
                self.fleet.counts.body_limit_windows,
                BODY_LIMIT / 1024
            ));
        }
        if !foreign_problems.is_empty() {
            failures.push(format!("the foreign index {} was touched: {}", foreign_name, foreign_problems.join("; ")));
        }
        failures.extend(self.operator.failures(converged, check.as_ref()));
        for (id, state, _, message, _, _) in builds {
            if state == "failed" {
                failures.push(format!("reindex #{id} failed: {}", message.as_deref().unwrap_or("")));
            }
        }
        if self.operator.reindexes.iter().all(|r| r.id.is_none()) {
            failures.push("the mid-run reindex was not started".into());
        }
        for r in self.operator.reindexes.iter().filter(|r| r.id.is_none()) {
            let why = r.outcome.as_deref().unwrap_or("no answer");
            // Refused because a build already runs is a fair answer; anything else is not.
            if !why.contains("already running") {
                failures.push(format!("`admin reindex` at {:.1}s was refused: {why}", r.at.as_secs_f64()));
            }
        }
        if indices.iter().any(|(name, _)| name == build_alias) {
            failures.push(format!(
                "a concrete index named {build_alias} exists (a write addressed to the build alias after the alias was gone created it); every later reindex fails on it"
            ));
        }
        if converged {
            match builds.last() {
                Some((_, state, target, _, _, _)) if state == "done" && *alias_now != vec![target.clone()] => {
                    failures.push(format!("the last build ({target}, {state}) is not what the alias serves ({alias_now:?})"));
                }
                Some((_, state, target, _, _, Some(previous))) if state == "rolled_back" && *alias_now != vec![previous.clone()] => {
                    failures.push(format!("the last build ({target}) was rolled back to {previous}, yet the alias serves {alias_now:?}"));
                }
                _ => {}
            }
        }
        if self.writes.unexpected() > 0 {
            failures
                .push(format!("{} writer operations failed for reasons a writer should never see (see above)", self.writes.unexpected()));
        }
        if !panics.is_empty() {
            failures.push(format!("processes panicked: {panics:?}"));
        }
        failures
    }

    /// Shows, when the run failed, the end of each process's last log and the chaos
    /// timeline; keeps the timeline and the summary in the run's directory.
    pub fn show_and_keep(&self, report: &str, ok: bool) {
        let (fleet, log_dir) = (self.fleet, &self.files.log_dir);
        if !ok {
            // The end of each process's last log says what it was doing.
            for (name, text) in fleet.last_logs() {
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("---- tail of {name} ----");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
            eprintln!("---- chaos timeline ----\n{}", fleet.events.join("\n"));
        } else {
            say(&format!("chaos timeline: {} events (kept in {})", fleet.events.len(), log_dir.join("chaos.log").display()));
        }
        let _ = std::fs::write(log_dir.join("chaos.log"), fleet.events.join("\n"));
        let _ = std::fs::write(log_dir.join("summary.txt"), report);
    }
}

//! The results: a summary table (one row per figure: measured, baseline, ratio, target,
//! met), a detail section per benchmark, and the raw numbers as JSON.
//!
//! The harness writes `results.md` and `results.json` into its output directory;
//! `deploy/local/bench.sh` puts the machine, versions and command above them in
//! BENCHMARKS.md.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Benchmark number and short name, e.g. `1. Fan-out`.
    pub bench: String,
    pub what: String,
    pub figure: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    /// None: no target applies (or it could not be judged).
    pub met: Option<bool>,
}

impl Row {
    pub fn new(bench: &str, what: impl Into<String>) -> Row {
        Row {
            bench: bench.into(),
            what: what.into(),
            figure: String::new(),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "—".into(),
            met: None,
        }
    }
    pub fn figure(mut self, f: impl Into<String>) -> Row {
        self.figure = f.into();
        self
    }
    pub fn baseline(mut self, b: impl Into<String>) -> Row {
        self.baseline = b.into();
        self
    }
    pub fn ratio(mut self, r: impl Into<String>) -> Row {
        self.ratio = r.into();
        self
    }
    pub fn target(mut self, t: impl Into<String>, met: Option<bool>) -> Row {
        self.target = t.into();
        self.met = met;
        self
    }
}

/// What one benchmark produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    /// Markdown: how it was measured and the details (distributions, splits, CPU).
    pub section: String,
    pub raw: Value,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub sections: Vec<(String, String)>,
    pub raw: serde_json::Map<String, Value>,
}

impl Report {
    pub fn add(&mut self, title: &str, key: &str, o: Outcome) {
        self.rows.extend(o.rows);
        self.sections.push((title.to_string(), o.section));
        self.raw.insert(key.to_string(), o.raw);
    }

    pub fn failed(&mut self, title: &str, key: &str, error: &anyhow::Error) {
        let text = format!("{error:#}");
        self.rows.push(Row::new(title, "benchmark failed").figure(format!("error: {}", first_line(&text))).target("—", Some(false)));
        self.sections.push((title.to_string(), format!("**The benchmark failed:**\n\n```text\n{text}\n```\n")));
        self.raw.insert(key.to_string(), serde_json::json!({"error": text}));
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## Summary\n");
        let _ = writeln!(s, "| benchmark | what | measured | baseline (same run) | ratio | target (docs/design.md) | met |");
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "✅ yes",
                Some(false) => "❌ **no**",
                None => "—",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.bench,
                cell(&r.what),
                cell(&r.figure),
                cell(&r.baseline),
                cell(&r.ratio),
                cell(&r.target),
                met
            );
        }
        for (title, body) in &self.sections {
            let _ = writeln!(s, "\n## {title}\n\n{}", body.trim_end());
        }
        s
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        let json = serde_json::json!({"rows": self.rows, "raw": self.raw});
        std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&json).unwrap())
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(160).collect()
}

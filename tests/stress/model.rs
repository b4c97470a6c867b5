//! What the harness needs to know of the model under stress: its environment and seed, its
//! root table (what the operator deletes from and the insert bursts insert into), its
//! writers' operations, and the checker's expected documents. Everything else (the fleet,
//! the chaos, the fault proxy, the operator's reindexes and rollbacks, the drain and the
//! report) is the same for every model.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use rand::rngs::StdRng;
use serde_json::Value;
use sqlx::PgConnection;

use crate::{burst, refinebio, support::Env};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// The students directory (students, universities, courses, enrollments).
    Students,
    /// refine.bio's experiments, samples, organisms and platforms (seeds/refinebio).
    Refinebio,
}

impl Model {
    /// The model's name, as `TIDEMARK_MODEL` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Model::Students => "students",
            Model::Refinebio => "refinebio",
        }
    }

    /// The documents' table.
    pub fn table(self) -> &'static str {
        match self {
            Model::Students => "students",
            Model::Refinebio => "experiments",
        }
    }

    /// The knob that sets how many documents are seeded, and its default.
    pub fn rows_knob(self) -> (&'static str, u64) {
        match self {
            Model::Students => ("STRESS_STUDENTS", 6_000),
            Model::Refinebio => ("STRESS_EXPERIMENTS", 500),
        }
    }

    /// The default chaos duration (`STRESS_SECONDS` overrides it).
    pub fn default_seconds(self) -> u64 {
        match self {
            Model::Students => 60,
            Model::Refinebio => 45,
        }
    }

    /// An environment with the model's tables and tidemark's capture installed.
    pub async fn env(self) -> Env {
        match self {
            Model::Students => Env::new().await,
            Model::Refinebio => Env::refinebio().await,
        }
    }

    /// Seeds `rows` documents' worth of data; says what it made.
    pub async fn seed(self, env: &Env, rows: u64, seed: u64) -> String {
        match self {
            Model::Students => {
                let seeded = tidemark_seeds::seed(&env.pool, &tidemark_seeds::SeedOptions { students: rows, seed }).await.expect("seed");
                format!(
                    "{} students, {} universities, {} courses, {} enrollments",
                    seeded.students, seeded.universities, seeded.courses, seeded.enrollments
                )
            }
            Model::Refinebio => {
                let seeded = tidemark_seeds::refinebio::seed(&env.pool, &tidemark_seeds::refinebio::Options { experiments: rows, seed })
                    .await
                    .expect("seed refinebio");
                format!(
                    "{} experiments, {} samples, {} organisms, {} platforms, {} experiment-sample pairs",
                    seeded.experiments, seeded.samples, seeded.organisms, seeded.platforms, seeded.pairs
                )
            }
        }
    }

    /// The document of every root row, built independently of tidemark's document code.
    pub async fn expected_docs(self, env: &Env) -> BTreeMap<i64, Value> {
        match self {
            Model::Students => env.expected_docs().await,
            Model::Refinebio => env.expected_experiments().await,
        }
    }

    /// One root row inserted in a transaction of its own (an insert burst's); its id.
    pub fn insert_one<'a>(self, c: &'a mut PgConnection, rng: &mut StdRng) -> BoxFuture<'a, Result<i64, sqlx::Error>> {
        match self {
            Model::Students => burst::insert_student(c, rng),
            Model::Refinebio => refinebio::insert_experiment(c, rng),
        }
    }

    /// The chunk size of the operator's `admin reindex`: a few chunks of the seeded rows, so
    /// killed workers leave chunks behind.
    pub fn chunk_size(self) -> u32 {
        match self {
            Model::Students => 500,
            Model::Refinebio => 100,
        }
    }

    /// Inserts per burst connection at most: a burst must not swamp a small seed.
    pub fn burst_max_rows(self) -> usize {
        match self {
            Model::Students => 2_000,
            Model::Refinebio => 150,
        }
    }
}

//! refine.bio's experiments and samples: `tidemark seed --model refinebio --experiments N`.
//!
//! A pure function of `(N, seed)`: the same arguments give the same rows, ids included.
//! Organisms are skewed (human and mouse hold most samples, as on refine.bio), every
//! experiment has 2 to 24 samples of one or two organisms on one or two platforms, and about
//! one experiment in ten reuses samples of an earlier one (a sample in several experiments:
//! what makes "unique samples" differ from the sum of samples).

use std::time::{Duration, Instant};

use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

use super::SeedError;

/// refinebio's tables (`CREATE TABLE IF NOT EXISTS`).
pub const SCHEMA: &str = include_str!("../refinebio/schema.sql");

/// Organisms with their share of samples.
const ORGANISMS: &[(&str, u32)] = &[
    ("HOMO_SAPIENS", 45),
    ("MUS_MUSCULUS", 30),
    ("RATTUS_NORVEGICUS", 6),
    ("DANIO_RERIO", 5),
    ("DROSOPHILA_MELANOGASTER", 4),
    ("ARABIDOPSIS_THALIANA", 3),
    ("SACCHAROMYCES_CEREVISIAE", 3),
    ("CAENORHABDITIS_ELEGANS", 2),
    ("GALLUS_GALLUS", 1),
    ("BOS_TAURUS", 1),
];

/// Platforms, by technology.
const RNA_SEQ: &[&str] =
    &["Illumina HiSeq 2000", "Illumina HiSeq 2500", "Illumina NovaSeq 6000", "Illumina NextSeq 500", "Ion Torrent Proton"];
const MICROARRAY: &[&str] =
    &["Affymetrix HG-U133 Plus 2.0", "Affymetrix Mouse 430 2.0", "Illumina HumanHT-12 V4", "Agilent 4x44K", "Affymetrix HuGene 1.0 ST"];

const TOPICS: &[&str] = &[
    "breast cancer",
    "T cell activation",
    "liver regeneration",
    "hypoxia response",
    "circadian rhythm",
    "embryonic development",
    "insulin resistance",
    "neuronal differentiation",
    "heat shock",
    "drought stress",
    "aging",
    "inflammation",
    "stem cell renewal",
    "viral infection",
    "muscle atrophy",
    "kidney injury",
    "lung fibrosis",
    "obesity",
    "sleep deprivation",
    "memory formation",
];
const ASSAYS: &[&str] = &["Transcriptome profiling of", "Gene expression in", "RNA-seq of", "Time course of", "Single-cell atlas of"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub experiments: u64,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub experiments: u64,
    pub samples: u64,
    pub organisms: u64,
    pub platforms: u64,
    pub pairs: u64,
    pub elapsed: Duration,
}

/// Creates refinebio's tables where missing and fills them, in one transaction; refuses
/// tables that already hold experiments.
pub async fn seed(pool: &PgPool, opts: &Options) -> Result<Report, SeedError> {
    let started = Instant::now();
    sqlx::raw_sql(SCHEMA).execute(pool).await.map_err(|e| SeedError::Database { step: "creating refinebio's tables", source: e })?;
    let mut tx = pool.begin().await.map_err(|e| SeedError::Database { step: "opening a transaction", source: e })?;
    let db = |step: &'static str| move |e: sqlx::Error| SeedError::Database { step, source: e };
    let existing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM experiments").fetch_one(&mut *tx).await.map_err(db("counting experiments"))?;
    if existing > 0 {
        return Err(SeedError::NotEmptyRefinebio { rows: existing as u64 });
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let names: Vec<&str> = ORGANISMS.iter().map(|o| o.0).collect();
    sqlx::query("INSERT INTO organisms (id, name) SELECT i, n FROM unnest($1::text[]) WITH ORDINALITY AS t(n, i)")
        .bind(&names)
        .execute(&mut *tx)
        .await
        .map_err(db("inserting organisms"))?;
    let platforms: Vec<&str> = RNA_SEQ.iter().chain(MICROARRAY).copied().collect();
    sqlx::query("INSERT INTO platforms (id, name) SELECT i, n FROM unnest($1::text[]) WITH ORDINALITY AS t(n, i)")
        .bind(&platforms)
        .execute(&mut *tx)
        .await
        .map_err(db("inserting platforms"))?;
    let organism = WeightedIndex::new(ORGANISMS.iter().map(|o| o.1)).expect("weights are positive");
    let (mut e_ids, mut e_codes, mut e_titles, mut e_descs, mut e_techs, mut e_public) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut s_ids, mut s_codes, mut s_orgs, mut s_plats) = (Vec::<i64>::new(), vec![], vec![], vec![]);
    let (mut p_exp, mut p_sample) = (Vec::<i64>::new(), Vec::<i64>::new());
    for e in 1..=opts.experiments as i64 {
        let rna = rng.gen_bool(0.55);
        let (tech, pool_of) = if rna { ("RNA-SEQ", RNA_SEQ) } else { ("MICROARRAY", MICROARRAY) };
        let topic = TOPICS[rng.gen_range(0..TOPICS.len())];
        let assay = ASSAYS[rng.gen_range(0..ASSAYS.len())];
        e_ids.push(e);
        e_codes.push(format!("{}{}", if rna { "SRP" } else { "GSE" }, 100_000 + e));
        e_titles.push(format!("{assay} {topic}"));
        e_descs.push(format!("{assay} {topic} across {} conditions.", rng.gen_range(2..12)));
        e_techs.push(tech.to_string());
        e_public.push(rng.gen_bool(0.9));
        let organisms = [organism.sample(&mut rng) as i64 + 1, organism.sample(&mut rng) as i64 + 1];
        let platform_offset = if rna { 0 } else { RNA_SEQ.len() as i64 };
        let plats =
            [platform_offset + rng.gen_range(0..pool_of.len()) as i64 + 1, platform_offset + rng.gen_range(0..pool_of.len()) as i64 + 1];
        let n = rng.gen_range(2..=24);
        for _ in 0..n {
            // One time in ten, a sample an earlier experiment already has.
            if !s_ids.is_empty() && rng.gen_bool(0.1) {
                let shared = s_ids[rng.gen_range(0..s_ids.len())];
                if !(p_exp.last() == Some(&e) && p_sample.iter().rev().take(24).any(|s| *s == shared)) {
                    p_exp.push(e);
                    p_sample.push(shared);
                }
                continue;
            }
            let id = s_ids.len() as i64 + 1;
            s_ids.push(id);
            s_codes.push(format!("{}{}", if rna { "SRR" } else { "GSM" }, 1_000_000 + id));
            s_orgs.push(organisms[rng.gen_range(0..2)]);
            s_plats.push(plats[rng.gen_range(0..2)]);
            p_exp.push(e);
            p_sample.push(id);
        }
    }
    sqlx::query(
        "INSERT INTO experiments (id, accession_code, title, description, technology, is_public)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[])",
    )
    .bind(&e_ids)
    .bind(&e_codes)
    .bind(&e_titles)
    .bind(&e_descs)
    .bind(&e_techs)
    .bind(&e_public)
    .execute(&mut *tx)
    .await
    .map_err(db("inserting experiments"))?;
    sqlx::query("INSERT INTO samples (id, accession_code, organism_id, platform_id) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])")
        .bind(&s_ids)
        .bind(&s_codes)
        .bind(&s_orgs)
        .bind(&s_plats)
        .execute(&mut *tx)
        .await
        .map_err(db("inserting samples"))?;
    sqlx::query("INSERT INTO experiment_samples SELECT DISTINCT * FROM unnest($1::bigint[], $2::bigint[])")
        .bind(&p_exp)
        .bind(&p_sample)
        .execute(&mut *tx)
        .await
        .map_err(db("inserting experiment samples"))?;
    for (table, n) in
        [("organisms", ORGANISMS.len()), ("platforms", platforms.len()), ("experiments", e_ids.len()), ("samples", s_ids.len())]
    {
        sqlx::query(&format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), {})", n.max(1)))
            .execute(&mut *tx)
            .await
            .map_err(db("moving the id sequences"))?;
    }
    let pairs: i64 = sqlx::query_scalar("SELECT count(*) FROM experiment_samples").fetch_one(&mut *tx).await.map_err(db("counting"))?;
    tx.commit().await.map_err(db("committing"))?;
    Ok(Report {
        experiments: e_ids.len() as u64,
        samples: s_ids.len() as u64,
        organisms: ORGANISMS.len() as u64,
        platforms: platforms.len() as u64,
        pairs: pairs as u64,
        elapsed: started.elapsed(),
    })
}

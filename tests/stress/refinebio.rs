//! The refinebio model under stress: what its writers do — experiments and samples
//! inserted, updated and deleted, organisms and platforms renamed, inserted, merged and
//! deleted, experiment-sample rows added, removed and repointed, samples moved to another
//! organism or platform, an experiment's id changed, statements over hundreds of rows,
//! transactions committed, rolled back and rolled back to a savepoint — the insert bursts'
//! experiments. The checker's documents are [`crate::support::Env::expected_experiments`].

use futures::future::BoxFuture;
use rand::{rngs::StdRng, seq::SliceRandom, Rng};
use sqlx::{Connection, PgConnection};

use crate::writers::{count, exec, some, some_row, Ops};

/// An insert burst's experiment: one statement (its own transaction) that also links it to
/// up to three existing samples.
pub fn insert_experiment<'a>(c: &'a mut PgConnection, rng: &mut StdRng) -> BoxFuture<'a, Result<i64, sqlx::Error>> {
    let (accession, title, tech) = (format!("BURST{:016x}", rng.gen::<u64>()), title(rng), technology(rng));
    let (from, k) = (rng.gen_range(0..8_000i64), rng.gen_range(0..=3i64));
    Box::pin(async move {
        sqlx::query_scalar(
            "WITH e AS (INSERT INTO experiments (accession_code, title, technology) VALUES ($1, $2, $3) RETURNING id),
                  l AS (INSERT INTO experiment_samples (experiment_id, sample_id)
                        SELECT e.id, s.id FROM e, (SELECT id FROM samples WHERE id >= $4 ORDER BY id LIMIT $5) s)
             SELECT id FROM e",
        )
        .bind(accession)
        .bind(title)
        .bind(tech)
        .bind(from)
        .bind(k)
        .fetch_one(&mut *c)
        .await
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    UpdateExperiment,
    InsertExperiment,
    DeleteExperiment,
    InsertSample,
    DeleteSample,
    Link,
    Unlink,
    RepointLink,
    MoveSampleOrganism,
    MoveSamplePlatform,
    RenameOrganism,
    RenamePlatform,
    InsertOrganism,
    InsertPlatform,
    DeleteOrganism,
    DeletePlatform,
    MultiStatementTx,
    RolledBackTx,
    SavepointRollback,
    BulkUpdate,
    BulkLink,
    BulkUnlink,
    BulkInsert,
    BulkDelete,
    BulkMoveSamples,
    MergeOrganisms,
    RenameEveryPlatform,
    MoveExperimentId,
    NoopBulkUpdate,
}

/// Every operation, with its weight in the choice and its name in the summary. A sample
/// whose organism or platform changes is a parent mark (of each place whose columns
/// changed), and tidemark expands one parent mark per worker step (a few dozen a second
/// here): sample changes are kept to a couple of thousand parent marks a run, so the drain
/// stays within a minute or two.
const OPS: &[(Op, u32, &str)] = &[
    (Op::UpdateExperiment, 200, "update experiment"),
    (Op::InsertExperiment, 60, "insert experiment (+ samples linked, new and old)"),
    (Op::DeleteExperiment, 40, "delete experiment"),
    (Op::InsertSample, 30, "insert sample (+ linked to experiments)"),
    (Op::DeleteSample, 25, "delete sample"),
    (Op::Link, 100, "add an experiment-sample row"),
    (Op::Unlink, 70, "remove an experiment-sample row"),
    (Op::RepointLink, 30, "repoint an experiment-sample row"),
    (Op::MoveSampleOrganism, 35, "move a sample to another organism"),
    (Op::MoveSamplePlatform, 25, "move a sample to another platform"),
    (Op::RenameOrganism, 12, "rename organism"),
    (Op::RenamePlatform, 12, "rename platform"),
    (Op::InsertOrganism, 6, "insert organism (+ samples moved in)"),
    (Op::InsertPlatform, 6, "insert platform (+ samples moved in)"),
    (Op::DeleteOrganism, 4, "delete organism (one of the least used)"),
    (Op::DeletePlatform, 4, "delete platform (one of the least used)"),
    (Op::MultiStatementTx, 50, "multi-statement transaction"),
    (Op::RolledBackTx, 40, "transaction rolled back"),
    (Op::SavepointRollback, 20, "rollback to savepoint, then commit"),
    (Op::BulkUpdate, 10, "bulk update experiments"),
    (Op::BulkLink, 5, "bulk link a sample to experiments"),
    (Op::BulkUnlink, 5, "bulk unlink"),
    (Op::BulkInsert, 4, "bulk insert experiments (+ samples)"),
    (Op::BulkDelete, 4, "bulk delete experiments"),
    (Op::BulkMoveSamples, 5, "bulk move samples to an organism"),
    (Op::MergeOrganisms, 4, "merge a small organism into another (all its samples)"),
    (Op::RenameEveryPlatform, 3, "rename every platform"),
    (Op::MoveExperimentId, 10, "change an experiment's id"),
    (Op::NoopBulkUpdate, 4, "no-op bulk update"),
];

const TITLES: &[&str] = &[
    "Gene expression in liver regeneration",
    "RNA-seq of T cell activation",
    "Ünïcode títle: Ωmega",
    "time course of heat shock",
    "Single-cell atlas of aging",
    "ß-cell insulin resistance",
    "Zebrafish embryonic development",
    "_underscore study",
    "a lower-case title",
];
const DESCRIPTIONS: &[&str] = &["", "Two conditions.", "Ω ünïcode description", "Hypoxia across 12 conditions.", "Sleep deprivation, mice"];
const ORGANISMS: &[&str] = &["Homo sapiens", "Mus musculus", "ÉCOLI", "danio rerio", "Ärabidopsis", "_yeast", "ß-organism", "Zea mays"];
const PLATFORMS: &[&str] = &["Illumina", "Affymetrix", "ION torrent", "ägilent", "Nanopore", "_array", "PacBio Sequel"];
/// Names several writers may pick at once: unique-name violations are part of the game.
const SHARED_NAMES: &[&str] = &["Shared Name A", "Shared Name B", "shared name a", "Ünïversal Shared"];

fn title(rng: &mut StdRng) -> &'static str {
    TITLES.choose(rng).unwrap()
}
fn description(rng: &mut StdRng) -> &'static str {
    DESCRIPTIONS.choose(rng).unwrap()
}
fn technology(rng: &mut StdRng) -> &'static str {
    ["RNA-SEQ", "MICROARRAY"].choose(rng).unwrap()
}
fn name_of(rng: &mut StdRng, words: &[&str], w: usize, n: u64) -> String {
    if rng.gen_bool(0.15) {
        return SHARED_NAMES.choose(rng).unwrap().to_string();
    }
    format!("{} {w}-{n}", words.choose(rng).unwrap())
}

/// One random update of one experiment's own columns.
async fn update_experiment(c: &mut PgConnection, rng: &mut StdRng, id: i64, w: usize, n: u64) -> Result<u64, sqlx::Error> {
    use sqlx::query as q;
    let statement = match rng.gen_range(0..7) {
        0 => q("UPDATE experiments SET title = $2 WHERE id = $1").bind(id).bind(title(rng)),
        1 => q("UPDATE experiments SET description = $2 WHERE id = $1").bind(id).bind(description(rng)),
        2 => q("UPDATE experiments SET technology = CASE technology WHEN 'RNA-SEQ' THEN 'MICROARRAY' ELSE 'RNA-SEQ' END WHERE id = $1")
            .bind(id),
        3 => q("UPDATE experiments SET is_public = NOT is_public WHERE id = $1").bind(id),
        // The accession code is in the document and in its completion inputs.
        4 => q("UPDATE experiments SET accession_code = $2 WHERE id = $1").bind(id).bind(format!("W{w}-{n}")),
        5 => q("UPDATE experiments SET title = $2, description = $3, technology = $4, is_public = $5 WHERE id = $1")
            .bind(id)
            .bind(title(rng))
            .bind(description(rng))
            .bind(technology(rng))
            .bind(rng.gen_bool(0.8)),
        // Sets what is already there: marks nothing.
        _ => q("UPDATE experiments SET title = title WHERE id = $1").bind(id),
    };
    exec(c, statement).await
}

/// A random row of a small table (organisms, platforms), or, one time in ten, none.
async fn some_row_or_none(c: &mut PgConnection, rng: &mut StdRng, table: &str) -> Result<Option<i64>, sqlx::Error> {
    if rng.gen_bool(0.1) {
        Ok(None)
    } else {
        some_row(c, table).await
    }
}

impl Ops for Op {
    const SMALL: Op = Op::UpdateExperiment;
    const OPS: &'static [(Op, u32, &'static str)] = OPS;

    /// Single-row changes that leave the number of experiments alone.
    fn is_calm(self) -> bool {
        use Op::*;
        matches!(self, UpdateExperiment | Link | Unlink | MoveSampleOrganism | MoveSamplePlatform | SavepointRollback | RolledBackTx)
    }

    fn is_bulk(self) -> bool {
        use Op::*;
        matches!(
            self,
            BulkUpdate
                | BulkLink
                | BulkUnlink
                | BulkInsert
                | BulkDelete
                | BulkMoveSamples
                | MergeOrganisms
                | RenameEveryPlatform
                | NoopBulkUpdate
        )
    }

    fn rebalance(c: &mut PgConnection, op: Op) -> BoxFuture<'_, Result<Op, sqlx::Error>> {
        Box::pin(async move {
            Ok(match op {
                Op::InsertOrganism if count(c, "organisms").await? > 40 => Op::DeleteOrganism,
                Op::DeleteOrganism | Op::MergeOrganisms if count(c, "organisms").await? < 5 => Op::InsertOrganism,
                Op::InsertPlatform if count(c, "platforms").await? > 40 => Op::DeletePlatform,
                Op::DeletePlatform if count(c, "platforms").await? < 5 => Op::InsertPlatform,
                other => other,
            })
        })
    }

    fn run<'a>(
        c: &'a mut PgConnection,
        rng: &'a mut StdRng,
        op: Op,
        w: usize,
        n: u64,
        target: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(run_op(c, rng, op, w, n, target))
    }
}

async fn run_op(c: &mut PgConnection, rng: &mut StdRng, op: Op, w: usize, n: u64, target: i64) -> Result<u64, sqlx::Error> {
    use sqlx::query as q;
    match op {
        Op::UpdateExperiment => {
            let Some(id) = some(c, rng, "experiments").await? else { return Ok(0) };
            update_experiment(c, rng, id, w, n).await
        }
        Op::InsertExperiment => {
            let (organism, platform) = (some_row(c, "organisms").await?, some_row_or_none(c, rng, "platforms").await?);
            let from = some(c, rng, "samples").await?.unwrap_or(0);
            let mut tx = c.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO experiments (accession_code, title, description, technology, is_public) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(format!("E{w}-{n}"))
            .bind(title(rng))
            .bind(description(rng))
            .bind(technology(rng))
            .bind(rng.gen_bool(0.9))
            .fetch_one(&mut *tx)
            .await?;
            // Existing samples (shared with other experiments) and new ones.
            let old =
                "INSERT INTO experiment_samples (experiment_id, sample_id) SELECT $1, id FROM samples WHERE id >= $2 ORDER BY id LIMIT $3";
            let mut rows = 1 + exec(&mut tx, q(old).bind(id).bind(from).bind(rng.gen_range(0..4i64))).await?;
            let new = "WITH s AS (INSERT INTO samples (accession_code, organism_id, platform_id)
                                  SELECT $2 || g, $3, $4 FROM generate_series(1, $5) g RETURNING id)
                       INSERT INTO experiment_samples (experiment_id, sample_id) SELECT $1, id FROM s";
            rows += exec(&mut tx, q(new).bind(id).bind(format!("S{w}-{n}-")).bind(organism).bind(platform).bind(rng.gen_range(0..3i64)))
                .await?;
            tx.commit().await?;
            Ok(rows)
        }
        Op::DeleteExperiment => {
            let Some(id) = some(c, rng, "experiments").await? else { return Ok(0) };
            // ON DELETE CASCADE removes its experiment-sample rows.
            exec(c, q("DELETE FROM experiments WHERE id = $1").bind(id)).await
        }
        Op::InsertSample => {
            let (organism, platform) = (some_row_or_none(c, rng, "organisms").await?, some_row_or_none(c, rng, "platforms").await?);
            let from = some(c, rng, "experiments").await?.unwrap_or(0);
            let mut tx = c.begin().await?;
            let id: i64 =
                sqlx::query_scalar("INSERT INTO samples (accession_code, organism_id, platform_id) VALUES ($1, $2, $3) RETURNING id")
                    .bind(format!("S{w}-{n}"))
                    .bind(organism)
                    .bind(platform)
                    .fetch_one(&mut *tx)
                    .await?;
            let link = "INSERT INTO experiment_samples (experiment_id, sample_id) SELECT id, $1 FROM experiments WHERE id >= $2 ORDER BY id LIMIT $3";
            let rows = exec(&mut tx, q(link).bind(id).bind(from).bind(rng.gen_range(0..4i64))).await?;
            tx.commit().await?;
            Ok(1 + rows)
        }
        Op::DeleteSample => {
            let Some(id) = some(c, rng, "samples").await? else { return Ok(0) };
            // ON DELETE CASCADE removes its experiment-sample rows: its experiments change.
            exec(c, q("DELETE FROM samples WHERE id = $1").bind(id)).await
        }
        Op::Link => {
            let (Some(e), Some(s)) = (some(c, rng, "experiments").await?, some(c, rng, "samples").await?) else { return Ok(0) };
            exec(c, q("INSERT INTO experiment_samples (experiment_id, sample_id) VALUES ($1, $2) ON CONFLICT DO NOTHING").bind(e).bind(s))
                .await
        }
        Op::Unlink => {
            let Some(e) = some(c, rng, "experiments").await? else { return Ok(0) };
            let unlink = "DELETE FROM experiment_samples WHERE (experiment_id, sample_id) IN
                            (SELECT experiment_id, sample_id FROM experiment_samples WHERE experiment_id >= $1
                              ORDER BY experiment_id, sample_id LIMIT 1)";
            exec(c, q(unlink).bind(e)).await
        }
        Op::RepointLink => {
            // A join row given another experiment or another sample (a key collision is a
            // unique violation, which is fine).
            let (Some(e), Some(other)) = (some(c, rng, "experiments").await?, some(c, rng, "experiments").await?) else { return Ok(0) };
            let Some(s) = some(c, rng, "samples").await? else { return Ok(0) };
            let statement = if rng.gen_bool(0.5) {
                q("UPDATE experiment_samples SET experiment_id = $2 WHERE (experiment_id, sample_id) IN
                     (SELECT experiment_id, sample_id FROM experiment_samples WHERE experiment_id >= $1 ORDER BY experiment_id, sample_id LIMIT 1)")
                .bind(e)
                .bind(other)
            } else {
                q("UPDATE experiment_samples SET sample_id = $2 WHERE (experiment_id, sample_id) IN
                     (SELECT experiment_id, sample_id FROM experiment_samples WHERE experiment_id >= $1 ORDER BY experiment_id, sample_id LIMIT 1)")
                .bind(e)
                .bind(s)
            };
            exec(c, statement).await
        }
        Op::MoveSampleOrganism => {
            let Some(s) = some(c, rng, "samples").await? else { return Ok(0) };
            let organism = some_row_or_none(c, rng, "organisms").await?;
            exec(c, q("UPDATE samples SET organism_id = $2 WHERE id = $1").bind(s).bind(organism)).await
        }
        Op::MoveSamplePlatform => {
            let Some(s) = some(c, rng, "samples").await? else { return Ok(0) };
            let platform = some_row_or_none(c, rng, "platforms").await?;
            exec(c, q("UPDATE samples SET platform_id = $2 WHERE id = $1").bind(s).bind(platform)).await
        }
        Op::RenameOrganism => {
            let Some(o) = some_row(c, "organisms").await? else { return Ok(0) };
            exec(c, q("UPDATE organisms SET name = $2 WHERE id = $1").bind(o).bind(name_of(rng, ORGANISMS, w, n))).await
        }
        Op::RenamePlatform => {
            let Some(p) = some_row(c, "platforms").await? else { return Ok(0) };
            exec(c, q("UPDATE platforms SET name = $2 WHERE id = $1").bind(p).bind(name_of(rng, PLATFORMS, w, n))).await
        }
        Op::InsertOrganism | Op::InsertPlatform => {
            let (table, column, words) =
                if op == Op::InsertOrganism { ("organisms", "organism_id", ORGANISMS) } else { ("platforms", "platform_id", PLATFORMS) };
            let from = some(c, rng, "samples").await?.unwrap_or(0);
            let mut tx = c.begin().await?;
            let id: i64 = sqlx::query_scalar(&format!("INSERT INTO {table} (name) VALUES ($1) RETURNING id"))
                .bind(name_of(rng, words, w, n))
                .fetch_one(&mut *tx)
                .await?;
            // A few samples move in: every changed sample is a fan-out of its own (tidemark
            // fans them out at a few dozen a second on a busy 2-core machine).
            let moved =
                format!("UPDATE samples SET {column} = $1 WHERE id IN (SELECT id FROM samples WHERE id >= $2 ORDER BY id LIMIT $3)");
            let rows = exec(&mut tx, q(&moved).bind(id).bind(from).bind(rng.gen_range(3..25i64))).await?;
            tx.commit().await?;
            Ok(1 + rows)
        }
        Op::DeleteOrganism | Op::DeletePlatform => {
            // One of the three with the fewest samples (mostly some), chosen at random: ON
            // DELETE SET NULL rewrites its samples' rows, each a fan-out of its own, so
            // deleting the organism of half the samples would make the drain minutes long.
            let (table, column) = if op == Op::DeleteOrganism { ("organisms", "organism_id") } else { ("platforms", "platform_id") };
            let delete = format!(
                "DELETE FROM {table} WHERE id = (SELECT id FROM (SELECT t.id FROM {table} t LEFT JOIN samples s ON s.{column} = t.id
                                                                GROUP BY t.id ORDER BY count(s.id) LIMIT 3) x ORDER BY random() LIMIT 1)"
            );
            exec(c, q(&delete)).await
        }
        Op::MultiStatementTx => {
            let (a, b) = (some(c, rng, "experiments").await?, some(c, rng, "experiments").await?);
            let s = some(c, rng, "samples").await?;
            let (organism, platform) = (some_row(c, "organisms").await?, some_row(c, "platforms").await?);
            let mut tx = c.begin().await?;
            let mut rows = 0;
            for id in [a, b].into_iter().flatten() {
                rows += update_experiment(&mut tx, rng, id, w, n).await?;
            }
            if let (Some(e), Some(s)) = (a, s) {
                let link = "INSERT INTO experiment_samples (experiment_id, sample_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";
                rows += exec(&mut tx, q(link).bind(e).bind(s)).await?;
                rows += exec(&mut tx, q("UPDATE samples SET organism_id = $2 WHERE id = $1").bind(s).bind(organism)).await?;
            }
            if let Some(p) = platform {
                if rng.gen_bool(0.1) {
                    rows += exec(&mut tx, q("UPDATE platforms SET name = $2 WHERE id = $1").bind(p).bind(name_of(rng, PLATFORMS, w, n)))
                        .await?;
                }
            }
            if let Some(e) = b {
                rows += exec(&mut tx, q("DELETE FROM experiment_samples WHERE experiment_id = $1 AND sample_id % 3 = 0").bind(e)).await?;
            }
            tx.commit().await?;
            Ok(rows)
        }
        Op::RolledBackTx => {
            // Everything here is undone: nothing of it may ever reach the index.
            let e = some(c, rng, "experiments").await?;
            let s = some(c, rng, "samples").await?;
            let (organism, platform) = (some_row(c, "organisms").await?, some_row(c, "platforms").await?);
            let mut tx = c.begin().await?;
            if let Some(id) = e {
                exec(&mut tx, q("UPDATE experiments SET title = 'ROLLED BACK', is_public = false WHERE id = $1").bind(id)).await?;
                exec(&mut tx, q("DELETE FROM experiment_samples WHERE experiment_id = $1").bind(id)).await?;
                if rng.gen_bool(0.3) {
                    exec(&mut tx, q("DELETE FROM experiments WHERE id = $1").bind(id)).await?;
                }
            }
            let ghost = "WITH e AS (INSERT INTO experiments (accession_code, title, technology) VALUES ($1, 'ROLLED BACK ghost', 'RNA-SEQ') RETURNING id)
                         INSERT INTO experiment_samples (experiment_id, sample_id) SELECT e.id, s.id FROM e, (SELECT id FROM samples LIMIT 2) s";
            exec(&mut tx, q(ghost).bind(format!("GHOST{w}-{n}"))).await?;
            if let Some(o) = organism {
                exec(&mut tx, q("UPDATE organisms SET name = 'ROLLED BACK ' || id WHERE id = $1").bind(o)).await?;
            }
            if let Some(p) = platform {
                if rng.gen_bool(0.3) {
                    exec(&mut tx, q("DELETE FROM platforms WHERE id = $1").bind(p)).await?;
                } else {
                    exec(&mut tx, q("UPDATE platforms SET name = 'ROLLED BACK ' || id WHERE id = $1").bind(p)).await?;
                }
            }
            if let Some(s) = s {
                exec(&mut tx, q("DELETE FROM samples WHERE id = $1").bind(s)).await?;
            }
            if rng.gen_bool(0.2) {
                exec(&mut tx, q("UPDATE experiments SET description = 'ROLLED BACK' WHERE id % 13 = $1").bind(rng.gen_range(0..13i64)))
                    .await?;
            }
            tx.rollback().await?;
            Ok(0)
        }
        Op::SavepointRollback => {
            let (a, b) = (some(c, rng, "experiments").await?, some(c, rng, "experiments").await?);
            let (s, organism) = (some(c, rng, "samples").await?, some_row(c, "organisms").await?);
            let mut tx = c.begin().await?;
            let mut rows = 0;
            if let Some(id) = a {
                rows += update_experiment(&mut tx, rng, id, w, n).await?;
            }
            exec(&mut tx, q("SAVEPOINT sp")).await?;
            if let Some(id) = b {
                exec(&mut tx, q("UPDATE experiments SET title = 'UNDONE BY SAVEPOINT' WHERE id = $1").bind(id)).await?;
                exec(&mut tx, q("DELETE FROM experiment_samples WHERE experiment_id = $1").bind(id)).await?;
            }
            if let Some(o) = organism {
                exec(&mut tx, q("UPDATE organisms SET name = 'UNDONE ' || id WHERE id = $1").bind(o)).await?;
            }
            if let Some(s) = s {
                exec(&mut tx, q("UPDATE samples SET organism_id = NULL, platform_id = NULL WHERE id = $1").bind(s)).await?;
            }
            exec(&mut tx, q("ROLLBACK TO SAVEPOINT sp")).await?;
            if let Some(id) = b {
                rows += exec(&mut tx, q("UPDATE experiments SET is_public = NOT is_public WHERE id = $1").bind(id)).await?;
            }
            tx.commit().await?;
            Ok(rows)
        }
        Op::BulkUpdate => {
            let statement = match rng.gen_range(0..4) {
                0 => q("UPDATE experiments SET is_public = NOT is_public WHERE id % $1 = $2")
                    .bind(rng.gen_range(2..5i64))
                    .bind(rng.gen_range(0..2i64)),
                1 => {
                    let max: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM experiments").fetch_one(&mut *c).await?;
                    let lo = rng.gen_range(0..max.max(1));
                    q("UPDATE experiments SET description = $1 WHERE id BETWEEN $2 AND $3")
                        .bind(format!("{} ({w})", description(rng)))
                        .bind(lo)
                        .bind(lo + rng.gen_range(100..400))
                }
                2 => q("UPDATE experiments SET technology = CASE technology WHEN 'RNA-SEQ' THEN 'MICROARRAY' ELSE 'RNA-SEQ' END WHERE id % 3 <> $1")
                    .bind(rng.gen_range(0..3i64)),
                _ => q("UPDATE experiments SET title = $1 WHERE id % $2 = 0").bind(title(rng)).bind(rng.gen_range(2..4i64)),
            };
            exec(c, statement).await
        }
        Op::BulkLink => {
            let Some(s) = some(c, rng, "samples").await? else { return Ok(0) };
            let link = "INSERT INTO experiment_samples (experiment_id, sample_id) SELECT id, $1 FROM experiments WHERE id % $2 = $3 ON CONFLICT DO NOTHING";
            exec(c, q(link).bind(s).bind(rng.gen_range(5..12i64)).bind(rng.gen_range(0..5i64))).await
        }
        Op::BulkUnlink => {
            let Some(s) = some(c, rng, "samples").await? else { return Ok(0) };
            exec(c, q("DELETE FROM experiment_samples WHERE sample_id = $1 OR sample_id % 41 = $2").bind(s).bind(rng.gen_range(0..41i64)))
                .await
        }
        Op::BulkInsert | Op::BulkDelete => {
            // Keep the number of experiments near where it started.
            if count(c, "experiments").await? < target {
                let max_sample: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 1) FROM samples").fetch_one(&mut *c).await?;
                let insert = "WITH e AS (INSERT INTO experiments (accession_code, title, description, technology, is_public)
                                         SELECT $1 || g, $2, 'bulk ' || g, CASE WHEN g % 2 = 0 THEN 'RNA-SEQ' ELSE 'MICROARRAY' END, g % 7 <> 0
                                           FROM generate_series(1, $3) g RETURNING id)
                              INSERT INTO experiment_samples (experiment_id, sample_id)
                              SELECT e.id, s.id FROM e CROSS JOIN LATERAL
                                (SELECT id FROM samples WHERE id >= (e.id * 7919) % $4 ORDER BY id LIMIT 2) s";
                exec(c, q(insert).bind(format!("EB{w}-{n}-")).bind(title(rng)).bind(rng.gen_range(30..150i64)).bind(max_sample.max(1)))
                    .await
            } else {
                let delete = "DELETE FROM experiments WHERE id IN (SELECT id FROM experiments WHERE id % 17 = $1 ORDER BY id LIMIT $2)";
                exec(c, q(delete).bind(rng.gen_range(0..17i64)).bind(rng.gen_range(20..80i64))).await
            }
        }
        Op::BulkMoveSamples => {
            let organism = some_row_or_none(c, rng, "organisms").await?;
            exec(
                c,
                q("UPDATE samples SET organism_id = $1 WHERE id % $2 = $3")
                    .bind(organism)
                    .bind(rng.gen_range(80..160i64))
                    .bind(rng.gen_range(0..80i64)),
            )
            .await
        }
        Op::MergeOrganisms => {
            // Every sample of one of the five least used organisms into another organism.
            let Some(a) = some_row(c, "organisms").await? else { return Ok(0) };
            let merge = "UPDATE samples SET organism_id = $1 WHERE organism_id =
                           (SELECT id FROM (SELECT o.id FROM organisms o LEFT JOIN samples s ON s.organism_id = o.id
                                             GROUP BY o.id ORDER BY count(s.id) LIMIT 5) x ORDER BY random() LIMIT 1)";
            exec(c, q(merge).bind(a)).await
        }
        Op::RenameEveryPlatform => {
            // One statement renaming every platform (two names may collide: refused, fine).
            exec(c, q("UPDATE platforms SET name = regexp_replace(name, ' v[0-9]+$', '') || ' v' || $1").bind(rng.gen_range(0..50i32)))
                .await
        }
        Op::MoveExperimentId => {
            // The old document must go and the new one come, with the same samples: the join
            // table's foreign key has no ON UPDATE, so its rows go and come back.
            let Some(e) = some(c, rng, "experiments").await? else { return Ok(0) };
            let mut tx = c.begin().await?;
            let samples: Vec<i64> = sqlx::query_scalar("DELETE FROM experiment_samples WHERE experiment_id = $1 RETURNING sample_id")
                .bind(e)
                .fetch_all(&mut *tx)
                .await?;
            let moved: Option<i64> = sqlx::query_scalar(
                "UPDATE experiments SET id = nextval(pg_get_serial_sequence('experiments', 'id')) WHERE id = $1 RETURNING id",
            )
            .bind(e)
            .fetch_optional(&mut *tx)
            .await?;
            let mut rows = samples.len() as u64;
            if let Some(id) = moved {
                let relink = "INSERT INTO experiment_samples (experiment_id, sample_id) SELECT $1, unnest($2::bigint[])";
                rows += 1 + exec(&mut tx, q(relink).bind(id).bind(&samples)).await?;
            }
            tx.commit().await?;
            Ok(rows)
        }
        Op::NoopBulkUpdate => {
            let r = rng.gen_range(0..5i64);
            let mut rows = exec(c, q("UPDATE experiments SET title = title, is_public = is_public WHERE id % 5 = $1").bind(r)).await?;
            rows += exec(c, q("UPDATE samples SET organism_id = organism_id WHERE id % 5 = $1").bind(r)).await?;
            // A column no document reads: marks nothing either.
            rows += exec(
                c,
                q("UPDATE samples SET accession_code = 'N' || id || '-' || $2 WHERE id % 50 = $1").bind(r).bind(format!("{w}-{n}")),
            )
            .await?;
            Ok(rows)
        }
    }
}

//! Zero-downtime full reindex (DESIGN.md, protocol invariant 7).
//!
//! A build creates `<alias>_<next generation>` with build-time settings (no refresh, no
//! replicas) while the live index keeps serving, and splits the student id space into
//! chunks stored in PostgreSQL. Every worker takes chunks (`SKIP LOCKED` + lease, like
//! marks); a crashed worker's chunk comes back when its lease runs out, and a flushed Redis
//! loses nothing because the chunks are here, not in the queue.
//!
//! Writes made during the build are never lost: a sync batch decides its targets *after*
//! its claim, and while a build is active it writes to the live index and the new one.
//! A chunk draws its version before it reads, like any reader, so a change the chunk
//! missed carries a higher version and wins in the new index too.
//!
//! When every chunk is done the build restores the settings, refreshes, and verifies: the
//! new index must hold as many documents as the database has students, and a random
//! sample must equal freshly built documents. Only then does the alias move, in one atomic
//! `_aliases` call; the previous index is kept for `admin rollback`.

use std::time::Duration;

use elasticsearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::{
    document::index_body,
    engine::{Engine, EngineError},
    pipeline::{
        acknowledge::{verdicts, Verdict},
        claim::draw_version,
        encode::encode,
        load::{load, load_range},
    },
    search::{Search, SearchError},
};

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("a reindex of alias {alias} is already running (#{id}, building {index}, started {started}); wait for it, or abandon it with `tidemark admin reindex --cancel`")]
    AlreadyRunning { alias: String, id: i64, index: String, started: String },
    #[error("no reindex of alias {0} is running")]
    NotRunning(String),
    #[error("nothing to roll back to: {0}")]
    NoRollback(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<sqlx::Error> for ReindexError {
    fn from(e: sqlx::Error) -> Self {
        ReindexError::Engine(e.into())
    }
}

impl From<SearchError> for ReindexError {
    fn from(e: SearchError) -> Self {
        ReindexError::Engine(e.into())
    }
}

/// A build as stored, with its progress.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Build {
    pub id: i64,
    pub alias: String,
    pub target_index: String,
    pub previous_index: Option<String>,
    pub state: String,
    pub reason: String,
    pub chunk_size: i32,
    pub docs_total: i64,
    pub message: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub chunks_total: i64,
    pub chunks_done: i64,
    pub docs_done: i64,
}

impl Build {
    pub fn is_active(&self) -> bool {
        self.state == "building" || self.state == "verifying"
    }
}

const SELECT_BUILD: &str = "SELECT r.id, r.alias, r.target_index, r.previous_index, r.state, r.reason, r.chunk_size,
        r.docs_total, r.message, r.started_at, r.finished_at,
        (SELECT count(*) FROM tidemark.reindex_chunks c WHERE c.reindex_id = r.id) AS chunks_total,
        (SELECT count(*) FROM tidemark.reindex_chunks c WHERE c.reindex_id = r.id AND c.done) AS chunks_done,
        (SELECT coalesce(sum(docs), 0)::bigint FROM tidemark.reindex_chunks c WHERE c.reindex_id = r.id AND c.done) AS docs_done
   FROM tidemark.reindexes r";

/// The running build of `alias`, if any.
pub async fn active(pool: &PgPool, alias: &str) -> Result<Option<Build>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_BUILD} WHERE r.alias = $1 AND r.state IN ('building', 'verifying')"))
        .bind(alias)
        .fetch_optional(pool)
        .await
}

/// The most recent build of `alias`, whatever its state.
pub async fn latest(pool: &PgPool, alias: &str) -> Result<Option<Build>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_BUILD} WHERE r.alias = $1 ORDER BY r.id DESC LIMIT 1")).bind(alias).fetch_optional(pool).await
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Build, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_BUILD} WHERE r.id = $1")).bind(id).fetch_one(pool).await
}

/// Serialises index creation and alias moves across every worker and admin.
async fn lock(tx: &mut sqlx::PgConnection, alias: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tidemark.index.' || $1))").bind(alias).execute(tx).await.map(|_| ())
}

/// The write alias of the index being built. Writes go through aliases with
/// `require_alias`, so a write can never auto-create an index that was deleted meanwhile
/// (with a guessed mapping): it fails, and is retried against fresh targets.
pub fn build_alias(alias: &str) -> String {
    format!("{alias}_building")
}

fn generation(alias: &str, index: &str) -> Option<u64> {
    index.strip_prefix(alias)?.strip_prefix('_')?.parse().ok()
}

async fn refuse_if_running(pool: &PgPool, alias: &str) -> Result<(), ReindexError> {
    match active(pool, alias).await? {
        Some(b) => Err(ReindexError::AlreadyRunning {
            alias: alias.into(),
            id: b.id,
            index: b.target_index,
            started: b.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        }),
        None => Ok(()),
    }
}

/// Starts a build: creates the next generation's index and the chunks. Refused while
/// another build of the alias runs.
pub async fn start(pool: &PgPool, search: &Search, alias: &str, chunk_size: u32, reason: &str) -> Result<Build, ReindexError> {
    let mut tx = pool.begin().await?;
    lock(&mut tx, alias).await?;
    refuse_if_running(pool, alias).await?;
    let previous = search.alias_targets(alias).await?.into_iter().next();
    // Never reuse a generation, even one whose index is gone: a late write to a deleted
    // name would otherwise land in the new build.
    let used: Vec<String> = sqlx::query_scalar("SELECT target_index FROM tidemark.reindexes WHERE alias = $1").bind(alias).fetch_all(&mut *tx).await?;
    let next = search.indices(&format!("{alias}_*")).await?.iter().chain(&used).filter_map(|i| generation(alias, i)).max().unwrap_or(0) + 1;
    let target = format!("{alias}_{next}");
    // An index *named* like the build alias can only be an artefact: Elasticsearch
    // auto-creates indices for externally versioned deletes even with require_alias. It
    // holds nothing but tombstones, and it would block the alias: remove it.
    let building = build_alias(alias);
    let concrete: Vec<String> = search.indices(&building).await?;
    if concrete.contains(&building) {
        tracing::warn!(index = %building, "deleting an index auto-created under the build alias's name");
        search.json(Method::Delete, &format!("/{building}"), None).await?;
    }
    let mut body = index_body();
    // Build-time settings: no refresh and no replicas while bulk loading.
    body["settings"] = json!({"index": {"refresh_interval": "-1", "number_of_replicas": 0}});
    let path = format!("/{target}");
    let reply = search.request(Method::Put, &path, Some(serde_json::to_vec(&body).expect("static JSON")), false).await?;
    if !(200..300).contains(&reply.status) {
        return Err(EngineError::from(crate::search::status_error(Method::Put, &path, &reply)).into());
    }
    // Move the build alias here in one step, from wherever it was (it stays on the live
    // index between builds, so a late write through it lands somewhere sensible).
    let mut moves: Vec<Value> = search
        .alias_targets(&building)
        .await?
        .into_iter()
        .map(|i| json!({"remove": {"index": i, "alias": building}}))
        .collect();
    moves.push(json!({"add": {"index": target, "alias": building}}));
    search.json(Method::Post, "/_aliases", Some(&json!({ "actions": moves }))).await?;
    let (min, max, count): (Option<i64>, Option<i64>, i64) =
        sqlx::query_as("SELECT min(id), max(id), count(*) FROM students").fetch_one(&mut *tx).await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tidemark.reindexes (alias, target_index, previous_index, state, reason, chunk_size, docs_total)
         VALUES ($1, $2, $3, 'building', $4, $5, $6) RETURNING id",
    )
    .bind(alias)
    .bind(&target)
    .bind(&previous)
    .bind(reason)
    .bind(chunk_size as i32)
    .bind(count)
    .fetch_one(&mut *tx)
    .await?;
    if let (Some(min), Some(max)) = (min, max) {
        sqlx::query(
            "INSERT INTO tidemark.reindex_chunks (reindex_id, lo, hi)
             SELECT $1, lo, lo + $4 FROM generate_series($2::bigint, $3::bigint, $4::bigint) AS lo",
        )
        .bind(id)
        .bind(min)
        .bind(max)
        .bind(i64::from(chunk_size))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(id, index = %target, previous = ?previous, students = count, reason, "reindex started");
    Ok(get(pool, id).await?)
}

/// Acts on a TRUNCATE recorded by the capture triggers: a running build (which may already
/// hold truncated students) is abandoned, and a new one starts from the database as it is
/// now. Returns the new build, if a request was taken.
pub async fn take_resync_request(pool: &PgPool, search: &Search, alias: &str, chunk_size: u32) -> Result<Option<Build>, ReindexError> {
    // Every step asks; almost always there is nothing: one cheap look before a transaction.
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tidemark.resync_requests)").fetch_one(pool).await?;
    if !any {
        return Ok(None);
    }
    let mut tx = pool.begin().await?;
    let reasons: Vec<String> = sqlx::query_scalar("DELETE FROM tidemark.resync_requests RETURNING reason").fetch_all(&mut *tx).await?;
    if reasons.is_empty() {
        return Ok(None);
    }
    let reason = format!("{} (rows removed without row triggers)", reasons.join(", "));
    if active(pool, alias).await?.is_some() {
        cancel(pool, search, alias).await?;
    }
    let build = start(pool, search, alias, chunk_size, &reason).await?;
    tracing::warn!(index = %build.target_index, %reason, "rebuilding the index");
    tx.commit().await?;
    Ok(Some(build))
}

/// A chunk claimed by a worker.
#[derive(Debug)]
pub struct Chunk {
    pub lo: i64,
    pub hi: i64,
}

pub async fn claim_chunk(pool: &PgPool, reindex_id: i64, owner: &str, lease: Duration) -> Result<Option<Chunk>, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        // One chunk, picked once (see pipeline/claim.rs on why not a FROM sub-select).
        "UPDATE tidemark.reindex_chunks
            SET lease_owner = $2, lease_until = clock_timestamp() + $3 * interval '1 millisecond'
          WHERE reindex_id = $1
            AND lo = (SELECT lo FROM tidemark.reindex_chunks
                       WHERE reindex_id = $1 AND NOT done AND (lease_until IS NULL OR lease_until < clock_timestamp())
                       ORDER BY lo LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING lo, hi",
    )
    .bind(reindex_id)
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(lo, hi)| Chunk { lo, hi }))
}

/// Writes one chunk into the new index. Returns the number of documents written, or
/// `None` when transient failures outlasted the retries (the chunk goes back).
pub async fn process_chunk(engine: &Engine, build: &Build, chunk: &Chunk) -> Result<Option<usize>, EngineError> {
    let pool = &engine.pool;
    let result = async {
        // The version is drawn before the read, as every reader does.
        let version = draw_version(pool).await?;
        let docs = load_range(pool, chunk.lo, chunk.hi).await?;
        let targets = [build_alias(&build.alias)];
        let encoded = encode(&docs, &targets, version);
        let shipped = crate::pipeline::ship::ship(&engine.search, &encoded, engine.ship_limits()).await?;
        let verdicts = verdicts(encoded.ops.iter().zip(shipped.outcomes).map(|(op, o)| (op.student_id, o)));
        if verdicts.values().any(|v| *v == Verdict::Later) {
            return Ok::<_, EngineError>(None);
        }
        // A document the new mapping refuses is dead-lettered (visible in `admin failed`);
        // verification will then refuse the swap and say so.
        let dead: Vec<(i64, i32, String)> = verdicts
            .iter()
            .filter_map(|(id, v)| match v {
                Verdict::Dead { status, reason } => Some((*id, i32::from(*status), reason.clone())),
                _ => None,
            })
            .collect();
        if !dead.is_empty() {
            crate::pipeline::acknowledge::dead_letter(pool, &dead).await?;
        }
        Ok(Some(docs.len()))
    }
    .await;
    let done = matches!(result, Ok(Some(_)));
    let docs = match &result {
        Ok(Some(n)) => *n as i32,
        _ => 0,
    };
    // Done, or given back at once for another try.
    sqlx::query(
        "UPDATE tidemark.reindex_chunks
            SET done = $4, docs = CASE WHEN $4 THEN $5 ELSE docs END, lease_owner = NULL, lease_until = NULL
          WHERE reindex_id = $1 AND lo = $2 AND lease_owner = $3",
    )
    .bind(build.id)
    .bind(chunk.lo)
    .bind(&engine.owner)
    .bind(done)
    .bind(docs)
    .execute(pool)
    .await?;
    result
}

/// What finishing a build did.
#[derive(Debug, PartialEq, Eq)]
pub enum Finish {
    /// Chunks are still pending or in flight.
    NotYet,
    /// Verification must wait for outstanding marks (writes keep coming).
    Waiting(String),
    Promoted,
    Failed(String),
}

/// When every chunk is done: restore settings, refresh, verify, and move the alias.
/// Safe to call from any worker at any time; one at a time does the work.
pub async fn finish(engine: &Engine, build_id: i64) -> Result<Finish, EngineError> {
    let pool = &engine.pool;
    let search = &engine.search;
    let mut tx = pool.begin().await?;
    let build = get(pool, build_id).await?;
    // One finisher at a time; the others have better things to do than wait.
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('tidemark.index.' || $1))")
        .bind(&build.alias)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(Finish::NotYet);
    }
    let build = get(pool, build_id).await?;
    if !build.is_active() || build.chunks_done < build.chunks_total {
        return Ok(Finish::NotYet);
    }
    let index = &build.target_index;
    if !search.index_exists(index).await? {
        let why = format!("the index being built, {index}, disappeared from the search server");
        fail(pool, search, &build, &why).await?;
        return Ok(Finish::Failed(why));
    }
    if build.state == "building" {
        search
            .json(
                Method::Put,
                &format!("/{index}/_settings"),
                Some(&json!({"index": {"refresh_interval": null, "number_of_replicas": null}})),
            )
            .await?;
        sqlx::query("UPDATE tidemark.reindexes SET state = 'verifying' WHERE id = $1").bind(build.id).execute(pool).await?;
    }
    search.refresh(index).await?;
    match verify_build(engine, index, engine.config.reindex.verify_sample).await? {
        Verification::Ok => {}
        Verification::Wait(why) => return Ok(Finish::Waiting(why)),
        Verification::Failed(why) => {
            fail(pool, search, &build, &why).await?;
            return Ok(Finish::Failed(why));
        }
    }
    // One atomic alias move: remove from whatever carries it now, add to the new index.
    let current = search.alias_targets(&build.alias).await?;
    let mut actions: Vec<Value> = current
        .iter()
        .filter(|i| *i != index)
        .map(|i| json!({"remove": {"index": i, "alias": build.alias}}))
        .collect();
    // The build alias stays on the promoted index: a batch that chose its targets before
    // the swap and writes late still writes to a real, live index.
    actions.push(json!({"add": {"index": index, "alias": build.alias}}));
    search.json(Method::Post, "/_aliases", Some(&json!({ "actions": actions }))).await?;
    let previous = current.into_iter().find(|i| i != index).or(build.previous_index.clone());
    sqlx::query("UPDATE tidemark.reindexes SET state = 'done', previous_index = $2, finished_at = now(), message = 'verified and promoted' WHERE id = $1")
        .bind(build.id)
        .bind(&previous)
        .execute(pool)
        .await?;
    tx.commit().await?;
    tracing::info!(id = build.id, index = %index, previous = ?previous, "reindex verified; alias moved");
    prune(pool, search, &build.alias, engine.config.reindex.keep_previous).await?;
    Ok(Finish::Promoted)
}

/// Records the failure; the index stays for inspection, but stops receiving writes.
async fn fail(pool: &PgPool, search: &Search, build: &Build, why: &str) -> Result<(), EngineError> {
    tracing::error!(id = build.id, reason = why, "reindex failed; the alias stays where it is");
    sqlx::query("UPDATE tidemark.reindexes SET state = 'failed', message = $2, finished_at = now() WHERE id = $1")
        .bind(build.id)
        .bind(why)
        .execute(pool)
        .await?;
    park_build_alias(search, build).await;
    Ok(())
}

/// Moves the build alias off an abandoned build onto the live index, so batches that chose
/// their targets while the build ran write somewhere live rather than to a dead build.
async fn park_build_alias(search: &Search, build: &Build) {
    let building = build_alias(&build.alias);
    let mut actions = vec![json!({"remove": {"index": build.target_index, "alias": building}})];
    if let Ok(live) = search.alias_targets(&build.alias).await {
        actions.extend(live.iter().map(|i| json!({"add": {"index": i, "alias": building}})));
    }
    if let Err(e) = search.json(Method::Post, "/_aliases", Some(&json!({ "actions": actions }))).await {
        tracing::debug!(error = %e, "build alias already moved");
    }
}

/// Deletes generations older than the live index and the `keep` previous ones.
async fn prune(pool: &PgPool, search: &Search, alias: &str, keep: u32) -> Result<(), EngineError> {
    let live = search.alias_targets(alias).await?;
    let active = active(pool, alias).await?.map(|b| b.target_index);
    let mut older: Vec<(u64, String)> = search
        .indices(&format!("{alias}_*"))
        .await?
        .into_iter()
        .filter(|i| !live.contains(i) && Some(i) != active.as_ref())
        .filter_map(|i| generation(alias, &i).map(|g| (g, i)))
        .collect();
    older.sort();
    let excess = older.len().saturating_sub(keep as usize);
    for (_, index) in older.into_iter().take(excess) {
        tracing::info!(index = %index, "deleting an old generation");
        search.json(Method::Delete, &format!("/{index}"), None).await?;
    }
    Ok(())
}

enum Verification {
    Ok,
    Wait(String),
    Failed(String),
}

async fn outstanding(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT (SELECT count(*) FROM tidemark.dirty_students) + (SELECT count(*) FROM tidemark.dirty_parents)")
        .fetch_one(pool)
        .await
}

/// Count and sample checks of a built index against the database.
async fn verify_build(engine: &Engine, index: &str, sample: u32) -> Result<Verification, EngineError> {
    let pool = &engine.pool;
    let db: i64 = sqlx::query_scalar("SELECT count(*) FROM students").fetch_one(pool).await?;
    let indexed = engine.search.count(index).await? as i64;
    let pending = outstanding(pool).await?;
    if indexed != db {
        let what = format!("{index} holds {indexed} documents, the database {db} students");
        // Under steady writes the counts may never meet; a difference that outstanding
        // marks can explain is theirs to close (dual writes reach the new index too).
        if pending > 0 && (indexed - db).abs() > pending {
            return Ok(Verification::Wait(format!("{what}; {pending} changes still to sync")));
        }
    }
    if indexed != db && pending == 0 {
        let what = format!("{index} holds {indexed} documents, the database {db} students");
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM tidemark.dead_letters").fetch_one(pool).await?;
        let hint = if dead > 0 { format!(" ({dead} documents were refused: see `tidemark admin failed`)") } else { String::new() };
        return Ok(Verification::Failed(format!("{what}{hint}")));
    }
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM students ORDER BY random() LIMIT $1").bind(i64::from(sample)).fetch_all(pool).await?;
    let differing = compare(engine, index, &ids).await?;
    if differing.is_empty() {
        return Ok(Verification::Ok);
    }
    // A difference on a student that has an outstanding mark is a change still in flight;
    // one whose mark was cleared meanwhile is compared again.
    let marked: Vec<i64> = sqlx::query_scalar("SELECT student_id FROM tidemark.dirty_students WHERE student_id = ANY($1)")
        .bind(&differing)
        .fetch_all(pool)
        .await?;
    let unexplained: Vec<i64> = differing.iter().copied().filter(|id| !marked.contains(id)).collect();
    let differing = if unexplained.is_empty() { unexplained } else { compare(engine, index, &unexplained).await? };
    if differing.is_empty() {
        return Ok(Verification::Ok);
    }
    // A renamed university or course not yet expanded into student marks explains a
    // difference too: wait for the fan-out.
    let fanouts: i64 = sqlx::query_scalar("SELECT count(*) FROM tidemark.dirty_parents").fetch_one(pool).await?;
    if fanouts > 0 {
        return Ok(Verification::Wait(format!("{} sampled documents differ while {fanouts} fan-outs are pending", differing.len())));
    }
    Ok(Verification::Failed(format!(
        "{} of {} sampled documents differ from the database (students {:?})",
        differing.len(),
        ids.len(),
        &differing[..differing.len().min(10)]
    )))
}

/// The students among `ids` whose document in `index` is missing or differs from the one
/// built from the database now.
pub async fn compare(engine: &Engine, index: &str, ids: &[i64]) -> Result<Vec<i64>, EngineError> {
    let mut differing = Vec::new();
    for part in ids.chunks(1000) {
        let fresh = load(&engine.pool, part).await?;
        let got = mget(&engine.search, index, part).await?;
        for (id, doc) in fresh {
            let expected = doc.map(|d| serde_json::to_value(d).expect("a document serialises"));
            if got.get(&id) != expected.as_ref() {
                differing.push(id);
            }
        }
    }
    Ok(differing)
}

/// Documents of `ids` in `index`, by id (absent ones are not in the map).
pub async fn mget(search: &Search, index: &str, ids: &[i64]) -> Result<std::collections::HashMap<i64, Value>, SearchError> {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    let v = search.json(Method::Post, &format!("/{index}/_mget"), Some(&json!({ "ids": ids }))).await?;
    Ok(v["docs"]
        .as_array()
        .map(|docs| {
            docs.iter()
                .filter(|d| d["found"] == json!(true))
                .filter_map(|d| Some((d["_id"].as_str()?.parse().ok()?, d["_source"].clone())))
                .collect()
        })
        .unwrap_or_default())
}

/// Abandons the running build and deletes its index; the alias never moved.
pub async fn cancel(pool: &PgPool, search: &Search, alias: &str) -> Result<Build, ReindexError> {
    let mut tx = pool.begin().await?;
    lock(&mut tx, alias).await?;
    let build = active(pool, alias).await?.ok_or_else(|| ReindexError::NotRunning(alias.into()))?;
    sqlx::query("UPDATE tidemark.reindexes SET state = 'cancelled', message = 'cancelled by admin', finished_at = now() WHERE id = $1")
        .bind(build.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    park_build_alias(search, &build).await;
    let reply = search.request(Method::Delete, &format!("/{}", build.target_index), None, false).await?;
    if !(200..300).contains(&reply.status) && reply.status != 404 {
        return Err(EngineError::from(crate::search::status_error(Method::Delete, &build.target_index, &reply)).into());
    }
    tracing::info!(id = build.id, index = %build.target_index, "reindex cancelled; its index is deleted");
    Ok(get(pool, build.id).await?)
}

/// Gives back every chunk lease of the running build, so the chunks of a vanished
/// worker are taken at once rather than when their leases run out.
pub async fn resume(pool: &PgPool, alias: &str) -> Result<(Build, u64), ReindexError> {
    let build = active(pool, alias).await?.ok_or_else(|| ReindexError::NotRunning(alias.into()))?;
    let r = sqlx::query("UPDATE tidemark.reindex_chunks SET lease_owner = NULL, lease_until = NULL WHERE reindex_id = $1 AND NOT done AND lease_owner IS NOT NULL")
        .bind(build.id)
        .execute(pool)
        .await?;
    Ok((build, r.rows_affected()))
}

/// Points the alias back at the index the last promotion replaced, and marks every
/// student so that index catches up with the changes made while it was not live.
pub async fn rollback(pool: &PgPool, search: &Search, alias: &str) -> Result<(String, String), ReindexError> {
    let mut tx = pool.begin().await?;
    lock(&mut tx, alias).await?;
    refuse_if_running(pool, alias).await?;
    let last: Option<(i64, String, Option<String>)> = sqlx::query_as(
        "SELECT id, target_index, previous_index FROM tidemark.reindexes WHERE alias = $1 AND state = 'done' ORDER BY id DESC LIMIT 1",
    )
    .bind(alias)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, from, Some(to))) = last else {
        return Err(ReindexError::NoRollback(format!("no promoted reindex of {alias} has a previous index")));
    };
    if !search.index_exists(&to).await? {
        return Err(ReindexError::NoRollback(format!("the previous index {to} no longer exists")));
    }
    let current = search.alias_targets(alias).await?;
    let mut actions: Vec<Value> = current.iter().filter(|i| **i != to).map(|i| json!({"remove": {"index": i, "alias": alias}})).collect();
    actions.push(json!({"add": {"index": to, "alias": alias}}));
    search.json(Method::Post, "/_aliases", Some(&json!({ "actions": actions }))).await?;
    sqlx::query("UPDATE tidemark.reindexes SET state = 'rolled_back', message = 'rolled back by admin' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // Changes made while `to` was not live reached only `from`: resync everything into it.
    sqlx::query("SELECT tidemark.mark_students(coalesce((SELECT array_agg(id) FROM students), '{}'))").execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!(from = %from, to = %to, "rolled back; every student is marked so the restored index catches up");
    Ok((from, to))
}

//! Promotion: when every chunk of a build is done, restore the settings, refresh, verify
//! the new index against the database, and only then move the alias — atomically.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::{prune, start::park_build_alias, ReindexError};
use crate::{
    catalog::{self, Build, BuildState},
    document::live_settings,
    retry::Backoff,
    services::Services,
    verify,
};

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
/// Safe to call from any worker at any time; one at a time does the work, and a build that
/// waits to be verified is verified again only every [`VERIFY_EVERY`], until
/// `reindex.verify_timeout` after its chunks were done: then it fails, saying why.
pub async fn finish(services: &Services, build_id: i64) -> Result<Finish, ReindexError> {
    let mut tx = services.pool.begin().await?;
    let result = finish_holding(services, build_id, &mut tx).await;
    // The transaction holds only the finisher's lock; end it here, on every path. A
    // transaction merely dropped is rolled back later, on its way back to the pool, and
    // until then its lock turns the next finisher away ("not yet") for no reason.
    match result {
        Ok(finish) => {
            tx.commit().await?;
            if finish == Finish::Promoted {
                // The promotion is done whatever happens here, and no longer holds the lock;
                // a prune that fails is tried again at the next rollback, promotion or worker start.
                if let Err(e) = prune(services).await {
                    tracing::warn!(error = %e, "could not delete old generations yet");
                }
            }
            Ok(finish)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

async fn finish_holding(services: &Services, build_id: i64, tx: &mut PgConnection) -> Result<Finish, ReindexError> {
    let (pool, search) = (&services.pool, &services.search);
    let build = catalog::get(pool, build_id).await?;
    // One finisher at a time; the others have better things to do than wait.
    if !catalog::try_lock(tx, &build.alias).await? {
        return Ok(Finish::NotYet);
    }
    let build = catalog::get(pool, build_id).await?;
    if !build.is_active() || build.chunks_done < build.chunks_total {
        return Ok(Finish::NotYet);
    }
    let (too_soon, timed_out): (bool, bool) = sqlx::query_as(
        "SELECT coalesce(verify_after > now(), false), coalesce(verify_deadline < now(), false) FROM tidemark.reindexes WHERE id = $1",
    )
    .bind(build.id)
    .fetch_one(pool)
    .await?;
    if too_soon {
        return Ok(Finish::Waiting("verification runs again shortly".into()));
    }
    let index = &build.target_index;
    if !search.index_exists(index).await? {
        let why = format!("the index being built, {index}, disappeared from the search server");
        fail(services, &build, &why).await?;
        return Ok(Finish::Failed(why));
    }
    if build.state == BuildState::Building {
        search.put_settings(index, &live_settings(&services.config.index)).await?;
        sqlx::query(
            "UPDATE tidemark.reindexes SET state = 'verifying', verify_deadline = now() + $2 * interval '1 millisecond' WHERE id = $1",
        )
        .bind(build.id)
        .bind(services.config.reindex.verify_timeout.0.as_millis() as f64)
        .execute(pool)
        .await?;
    }
    search.refresh(index).await?;
    match verify_build(services, index).await? {
        Verification::Ok => {}
        Verification::Wait(why) if timed_out => {
            let why = format!("{why}, still after reindex.verify_timeout ({})", services.config.reindex.verify_timeout);
            fail(services, &build, &why).await?;
            return Ok(Finish::Failed(why));
        }
        Verification::Wait(why) => {
            sqlx::query("UPDATE tidemark.reindexes SET verify_after = now() + $2 * interval '1 millisecond' WHERE id = $1")
                .bind(build.id)
                .bind(VERIFY_EVERY.as_millis() as f64)
                .execute(pool)
                .await?;
            return Ok(Finish::Waiting(why));
        }
        Verification::Failed(why) => {
            fail(services, &build, &why).await?;
            return Ok(Finish::Failed(why));
        }
    }
    // One atomic alias move: off whatever carries it now, onto the new index. The build
    // alias stays on the promoted index: a batch that chose its targets before the swap and
    // writes late still writes to a real, live index.
    let current = search.alias_targets(&build.alias).await?;
    search.point_alias(&build.alias, std::slice::from_ref(index)).await?;
    let previous = current.into_iter().find(|i| i != index).or(build.previous_index.clone());
    sqlx::query(
        "UPDATE tidemark.reindexes SET state = 'done', previous_index = $2, finished_at = now(), message = 'verified and promoted' WHERE id = $1",
    )
    .bind(build.id)
    .bind(&previous)
    .execute(pool)
    .await?;
    tracing::info!(id = build.id, index = %index, previous = ?previous, "reindex verified; alias moved");
    Ok(Finish::Promoted)
}

/// How often a build that waits to be verified is verified again (by whichever worker
/// steps then), rather than by every step of every worker.
pub const VERIFY_EVERY: Duration = Duration::from_secs(2);

/// How long after a failed build an automatic rebuild (no index at all) may start again, by
/// the number of builds that failed in a row: capped and fully jittered, so a cause that
/// persists never makes a tight loop of new indices.
pub const REBUILD_RETRY: Backoff = Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(600) };

/// Records the failure and when an automatic rebuild may try again. The index stays for
/// inspection but stops receiving writes; an earlier failed build's index is deleted, so
/// at most one failed index is ever left behind.
async fn fail(services: &Services, build: &Build, why: &str) -> Result<(), ReindexError> {
    let pool = &services.pool;
    catalog::end(pool, build.id, BuildState::Failed, why).await?;
    let in_a_row: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tidemark.reindexes
          WHERE alias = $1 AND state = 'failed'
            AND id > coalesce((SELECT max(id) FROM tidemark.reindexes WHERE alias = $1 AND state = 'done'), 0)",
    )
    .bind(&build.alias)
    .fetch_one(pool)
    .await?;
    let wait = REBUILD_RETRY.delay(in_a_row.clamp(1, 30) as u32, &mut rand::thread_rng());
    sqlx::query("UPDATE tidemark.reindexes SET retry_after = now() + $2 * interval '1 millisecond' WHERE id = $1")
        .bind(build.id)
        .bind(wait.as_millis() as f64)
        .execute(pool)
        .await?;
    tracing::error!(id = build.id, reason = why, failed_in_a_row = in_a_row, "reindex failed; the alias stays where it is");
    park_build_alias(services, build).await;
    let older: Vec<String> =
        sqlx::query_scalar("SELECT target_index FROM tidemark.reindexes WHERE alias = $1 AND state = 'failed' AND id <> $2")
            .bind(&build.alias)
            .bind(build.id)
            .fetch_all(pool)
            .await?;
    for index in older {
        if services.search.index_exists(&index).await? {
            tracing::info!(index = %index, "deleting the index of an earlier failed build");
            services.search.delete_index(&index).await?;
        }
    }
    Ok(())
}

enum Verification {
    Ok,
    Wait(String),
    Failed(String),
}

/// The documents whose change is not in the index yet: marks, changes not yet moved into
/// marks, and the unexpanded keys of sets (at most `limit`; `None` when there are more).
async fn outstanding_ids(pool: &PgPool, limit: i64) -> Result<Option<Vec<String>>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "(SELECT key FROM tidemark.outstanding LIMIT $1)
         UNION
         (SELECT unnest(ids[position + 1:]) FROM tidemark.parents WHERE kind = 'keys' LIMIT $1)",
    )
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok((ids.len() as i64 <= limit).then_some(ids))
}

/// Count and sample checks of a built index against the database.
///
/// A count that differs is excused only by what the outstanding changes of the documents
/// concerned explain: a marked key in the index but not in the database (a delete in
/// flight) explains one extra document, a marked one in the database but not in the index
/// (an insert in flight) one missing. Unrelated changes excuse nothing.
async fn verify_build(services: &Services, index: &str) -> Result<Verification, ReindexError> {
    let pool = &services.pool;
    let keys = services.model.keys();
    let db: i64 = sqlx::query_scalar(&keys.count).fetch_one(pool).await?;
    let indexed = services.search.count(index).await? as i64;
    let pending_parents: i64 = sqlx::query_scalar("SELECT count(*) FROM tidemark.parents").fetch_one(pool).await?;
    if indexed != db {
        let what = format!("{index} holds {indexed} documents, the database {db} rows of {}", services.model.root.table);
        let Some(concerned) = outstanding_ids(pool, 50_000).await? else {
            return Ok(Verification::Wait(format!("{what}; more than 50,000 changes are still to sync")));
        };
        if concerned.is_empty() && pending_parents == 0 {
            let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM tidemark.dead_letters").fetch_one(pool).await?;
            let hint = if dead > 0 { format!(" ({dead} documents were refused: see `tidemark admin failed`)") } else { String::new() };
            return Ok(Verification::Failed(format!("{what}{hint}")));
        }
        let in_db: std::collections::HashSet<String> =
            sqlx::query_scalar(&keys.existing).bind(&concerned).fetch_all(pool).await?.into_iter().collect();
        let in_index = services.search.existing(index, &concerned).await?;
        let extra = concerned.iter().filter(|id| in_index.contains(*id) && !in_db.contains(*id)).count() as i64;
        let missing = concerned.iter().filter(|id| in_db.contains(*id) && !in_index.contains(*id)).count() as i64;
        if indexed - db != extra - missing {
            return Ok(Verification::Wait(format!(
                "{what}, a difference of {:+} that the {} outstanding changes explain only {:+} of",
                indexed - db,
                concerned.len(),
                extra - missing
            )));
        }
    }
    let sample = i64::from(services.config.reindex.verify_sample);
    let ids: Vec<String> = sqlx::query_scalar(&keys.sample).bind(sample).fetch_all(pool).await?;
    let differing = verify::compare(services, index, &ids).await?.ids();
    if differing.is_empty() {
        return Ok(Verification::Ok);
    }
    // A difference on a student that has an outstanding mark is a change still in flight;
    // one whose mark was cleared meanwhile is compared again — and the marks are read again
    // after every comparison, since a student written often can have changed (and be marked)
    // again by then. Only a difference that no mark read after it explains, again and
    // again, is real.
    let mut differing = differing;
    for round in 0..4 {
        let marked: Vec<String> = sqlx::query_scalar("SELECT DISTINCT key FROM tidemark.outstanding WHERE key = ANY($1)")
            .bind(&differing)
            .fetch_all(pool)
            .await?;
        differing.retain(|id| !marked.contains(id));
        if differing.is_empty() || round == 3 {
            break;
        }
        differing = verify::compare(services, index, &differing).await?.ids();
    }
    if differing.is_empty() {
        return Ok(Verification::Ok);
    }
    // A changed related row not yet expanded into its documents' marks explains a
    // difference too: wait for the fan-out.
    if pending_parents > 0 {
        return Ok(Verification::Wait(format!(
            "{} sampled documents differ while {pending_parents} fan-outs are pending",
            differing.len()
        )));
    }
    Ok(Verification::Failed(format!(
        "{} of {} sampled documents differ from the database (keys {:?})",
        differing.len(),
        ids.len(),
        &differing[..differing.len().min(10)]
    )))
}

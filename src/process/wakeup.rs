//! Wakes the workers when the database changed, at no cost to the writer: one poll per
//! process of what every capturing write already changes, the mark sequence.
//!
//! The capture triggers draw a number from `tidemark.seq` in the writer's own transaction
//! and do nothing else that others wait for (no `NOTIFY`: a transaction that notified takes
//! a lock shared by the whole database at commit and holds it through its commit record's
//! flush, so every capturing writer would commit one after another). Every
//! `sync.wakeup_interval` (50 ms by default) this loop reads the sequence's last value —
//! `pg_sequence_last_value`, which reads the sequence's one page and no table — and when it
//! moved, nudges the queue.
//!
//! A number is drawn before its transaction commits, so a nudge can come too early: the
//! worker it wakes finds the mark not yet committed. So when the sequence moved, the loop
//! also reads which transactions were running right after (read *after* the sequence: every
//! writer that drew a number before that read already had its transaction id, so it is
//! either committed or listed) and nudges again as soon as one of them has ended. A transaction that marks students and commits a minute later is picked
//! up at its commit, as a notification was, and not at the scheduler's next tick.
//!
//! Idle, it costs the database one trivial query per interval per process: 20 a second at
//! 50 ms, about 2.7 ms of database CPU a second (BENCHMARKS.md, section 7; docs/operating.md).
//! Only this database's transactions are watched (a long one elsewhere on the server is
//! none of its business).

use std::{collections::BTreeSet, future::Future, time::Duration};

use sqlx::{postgres::PgConnectOptions, Connection, PgConnection};

use crate::{config::Secret, retry::Backoff, workers::Queue};

/// How many running transactions the loop keeps watching at most (a database with more
/// open transactions than this waits for the scheduler's tick for the rest).
const MAX_WATCHED: usize = 10_000;

/// Polls until `shutdown`, reconnecting on the [`Backoff::RECONNECT`] schedule.
pub async fn run(database_url: Secret, queue: Queue, interval: Duration, shutdown: impl Future<Output = ()> + Send + 'static) {
    let stop = super::stop_token(shutdown);
    let mut waits = Backoff::RECONNECT.delays();
    let mut watch = Watch::default();
    loop {
        let connect = async {
            let options: PgConnectOptions = database_url.expose().parse()?;
            // Named, so an operator sees it in pg_stat_activity for what it is.
            PgConnection::connect_with(&options.application_name("tidemark wakeup")).await
        };
        let mut conn = tokio::select! {
            c = connect => match c {
                Ok(c) => c,
                Err(e) => {
                    let wait = waits.next().expect("backoff delays never end");
                    tracing::warn!(error = %e, retry_in_s = wait.as_secs_f64(), "cannot watch the database for changes; the scheduler's ticks still come");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            },
            () = stop.cancelled() => return,
        };
        waits = Backoff::RECONNECT.delays();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            match watch.poll(&mut conn).await {
                Ok(Some(reason)) => {
                    tracing::debug!(reason, watching = watch.running.len(), "the database changed: nudging");
                    if let Err(e) = queue.nudge(reason).await {
                        tracing::debug!(error = %e, "nudge after a change failed");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection that watches for changes; reconnecting");
                    break;
                }
            }
        }
    }
}

/// What the loop remembers between polls.
#[derive(Debug, Default)]
struct Watch {
    /// The sequence's last value at the previous poll (`None`: not read yet, or never drawn).
    last: Option<Option<i64>>,
    /// Transactions that were running when the sequence last moved: one of them may hold a
    /// mark that is not committed yet.
    running: BTreeSet<i64>,
}

impl Watch {
    /// One poll: why to nudge, if at all.
    async fn poll(&mut self, conn: &mut PgConnection) -> Result<Option<&'static str>, sqlx::Error> {
        let value: Option<i64> = sqlx::query_scalar("SELECT pg_sequence_last_value('tidemark.seq')").fetch_one(&mut *conn).await?;
        let moved = self.last != Some(value);
        self.last = Some(value);
        if !moved && self.running.is_empty() {
            return Ok(None);
        }
        // A statement of its own, so it runs after the read above: every writer that drew a
        // number by then already had its transaction id, and is either committed or listed.
        // (Not `pg_current_snapshot()`: its list of running transactions leaves out those
        // newer than the last one completed — just the writers in question.) Prepared
        // transactions count too: their marks appear at `COMMIT PREPARED`.
        let now_running: Vec<i64> = sqlx::query_scalar(
            "SELECT backend_xid::text::bigint FROM pg_stat_get_activity(NULL)
              WHERE backend_xid IS NOT NULL AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())
             UNION ALL SELECT transaction::text::bigint FROM pg_prepared_xacts WHERE database = current_database()",
        )
        .fetch_all(&mut *conn)
        .await?;
        let now_running: BTreeSet<i64> = now_running.into_iter().collect();
        let before = self.running.len();
        self.running.retain(|x| now_running.contains(x));
        let ended = self.running.len() < before;
        if moved {
            for x in now_running {
                if self.running.len() >= MAX_WATCHED {
                    break;
                }
                self.running.insert(x);
            }
            return Ok(Some("change"));
        }
        Ok(ended.then_some("commit"))
    }
}

-- What the reindex lifecycle and the operators need beyond the first six migrations.

-- A failed build is retried on a capped, jittered schedule: not before this time.
ALTER TABLE tidemark.reindexes ADD COLUMN retry_after timestamptz;
-- Verification of a build runs once per attempt: the next attempt not before
-- verify_after, and the build fails if it cannot be verified by verify_deadline.
ALTER TABLE tidemark.reindexes ADD COLUMN verify_after timestamptz;
ALTER TABLE tidemark.reindexes ADD COLUMN verify_deadline timestamptz;
-- The last chunk is open-ended (hi NULL): a student inserted after the chunk plan was made
-- still falls inside a chunk.
ALTER TABLE tidemark.reindex_chunks ALTER COLUMN hi DROP NOT NULL;

-- Every worker process, while it lives: a heartbeat, and when it last finished a batch.
-- `admin status` counts the live ones; a row whose heartbeat stopped is a dead process.
CREATE TABLE tidemark.workers (
    identity      text PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    seen_at       timestamptz NOT NULL DEFAULT now(),
    last_batch_at timestamptz,
    batches       bigint NOT NULL DEFAULT 0
);

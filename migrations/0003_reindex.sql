-- Full reindex: a build of a new physical index, persisted here so a crashed worker or a
-- flushed Redis resumes it instead of starting over.
CREATE TABLE tidemark.reindexes (
    id             bigserial PRIMARY KEY,
    alias          text NOT NULL,
    -- The index being built, and what the alias pointed to when the build started.
    target_index   text NOT NULL,
    previous_index text,
    state          text NOT NULL CONSTRAINT reindexes_state CHECK (state IN ('building', 'verifying', 'done', 'failed', 'cancelled', 'rolled_back')),
    reason         text NOT NULL,
    chunk_size     integer NOT NULL,
    docs_total     bigint NOT NULL,
    -- The outcome: why a build failed, or what verification found.
    message        text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
-- One build at a time per alias.
CREATE UNIQUE INDEX reindexes_one_active ON tidemark.reindexes (alias) WHERE state IN ('building', 'verifying');

-- The id space split into chunks that every worker shares; a chunk is done once the new
-- index holds every student of its range as read at the chunk's version.
CREATE TABLE tidemark.reindex_chunks (
    reindex_id  bigint NOT NULL REFERENCES tidemark.reindexes (id) ON DELETE CASCADE,
    lo          bigint NOT NULL,
    hi          bigint NOT NULL,
    done        boolean NOT NULL DEFAULT false,
    docs        integer,
    lease_owner text,
    lease_until timestamptz,
    PRIMARY KEY (reindex_id, lo)
);
CREATE INDEX reindex_chunks_pending ON tidemark.reindex_chunks (reindex_id) WHERE NOT done;

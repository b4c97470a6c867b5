-- tidemark's own schema, for any model: the mark sequence, the writers' change log, the
-- marks, the parent marks, dead letters, reindexes, workers. Keys are text (tidemark casts
-- them to the model's key type where it binds them): integer and uuid keys alike.
--
-- On a database that an earlier tidemark (migrations 0001–0009, the student directory only)
-- set up, the same tables are converted in place, their rows kept, and the students capture
-- rewritten against the new names, so no write goes uncaptured until `tidemark migrate`
-- installs the model's own capture (in the transaction that drops this one).
--
-- The application's tables are not created here: they are the user's (the shipped models'
-- schemas are under seeds/<model>/schema.sql).

CREATE SCHEMA IF NOT EXISTS tidemark;
CREATE SEQUENCE IF NOT EXISTS tidemark.seq;

DO $core$
BEGIN
IF to_regclass('tidemark.dirty_students') IS NULL THEN
    ---------------------------------------------------------------- a new installation
    -- What writers append: one row per changed document (its key) per statement.
    CREATE TABLE tidemark.changes (
        key       text NOT NULL,
        seq       bigint NOT NULL,
        marked_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX changes_seq ON tidemark.changes (seq);

    -- A document whose index copy must be (re)written. Re-marking replaces seq; marked_at
    -- keeps the oldest change not yet in the index (the freshness lag).
    CREATE TABLE tidemark.marks (
        key         text PRIMARY KEY,
        seq         bigint NOT NULL,
        marked_at   timestamptz NOT NULL DEFAULT now(),
        lease_owner text,
        lease_until timestamptz
    );
    CREATE INDEX marks_seq ON tidemark.marks (seq);

    -- A changed row below the root (`kind`: its place, the relation names from the root;
    -- `key`: its key), or a set of root keys (`kind` 'keys', `ids`): expanded by workers
    -- into marks, in chunks. `cursor` is the last root key expanded (in the key's order),
    -- `position` the number of a set's ids expanded.
    CREATE TABLE tidemark.parents (
        kind          text NOT NULL,
        key           text NOT NULL,
        seq           bigint NOT NULL,
        cursor        text,
        position      integer NOT NULL DEFAULT 0,
        ids           text[],
        expansion_seq bigint,
        marked_at     timestamptz NOT NULL DEFAULT now(),
        lease_owner   text,
        lease_until   timestamptz,
        PRIMARY KEY (kind, key),
        CONSTRAINT parents_ids CHECK ((kind = 'keys') = (ids IS NOT NULL))
    );
    ALTER TABLE tidemark.parents ALTER COLUMN ids SET STORAGE EXTERNAL;

    CREATE TABLE tidemark.dead_letters (
        key             text PRIMARY KEY,
        status          integer,
        error           text NOT NULL,
        attempts        integer NOT NULL DEFAULT 1,
        first_failed_at timestamptz NOT NULL DEFAULT now(),
        last_failed_at  timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE tidemark.reindexes (
        id                  bigserial PRIMARY KEY,
        alias               text NOT NULL,
        target_index        text NOT NULL,
        previous_index      text,
        state               text NOT NULL CONSTRAINT reindexes_state CHECK (state IN ('building', 'verifying', 'done', 'failed', 'cancelled', 'rolled_back')),
        reason              text NOT NULL,
        chunk_size          integer NOT NULL,
        docs_total          bigint NOT NULL,
        message             text,
        started_at          timestamptz NOT NULL DEFAULT now(),
        finished_at         timestamptz,
        retry_after         timestamptz,
        verify_after        timestamptz,
        verify_deadline     timestamptz,
        build_alias_dropped boolean NOT NULL DEFAULT false,
        -- The model the build's documents and mapping come from.
        model               text
    );
    CREATE UNIQUE INDEX reindexes_one_active ON tidemark.reindexes (alias) WHERE state IN ('building', 'verifying');

    -- A build's chunks: root keys lo <= key < hi (hi NULL: no upper bound; lo NULL: none below).
    CREATE TABLE tidemark.reindex_chunks (
        reindex_id  bigint NOT NULL REFERENCES tidemark.reindexes (id) ON DELETE CASCADE,
        n           integer NOT NULL,
        lo          text,
        hi          text,
        done        boolean NOT NULL DEFAULT false,
        docs        integer,
        lease_owner text,
        lease_until timestamptz,
        PRIMARY KEY (reindex_id, n)
    );
    CREATE INDEX reindex_chunks_pending ON tidemark.reindex_chunks (reindex_id) WHERE NOT done;

    CREATE TABLE tidemark.resync_requests (
        id           bigserial PRIMARY KEY,
        reason       text NOT NULL,
        requested_at timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE tidemark.workers (
        identity      text PRIMARY KEY,
        started_at    timestamptz NOT NULL DEFAULT now(),
        seen_at       timestamptz NOT NULL DEFAULT now(),
        last_batch_at timestamptz,
        batches       bigint NOT NULL DEFAULT 0
    );
ELSE
    ---------------------------------------------------------------- an earlier tidemark
    -- The old capture first: its functions name the old tables.
    DROP TRIGGER IF EXISTS tidemark_capture_insert ON students;
    DROP TRIGGER IF EXISTS tidemark_capture_update ON students;
    DROP TRIGGER IF EXISTS tidemark_capture_delete ON students;
    DROP TRIGGER IF EXISTS tidemark_capture_id_change ON students;
    DROP TRIGGER IF EXISTS tidemark_capture_insert ON student_courses;
    DROP TRIGGER IF EXISTS tidemark_capture_update ON student_courses;
    DROP TRIGGER IF EXISTS tidemark_capture_delete ON student_courses;
    DROP TRIGGER IF EXISTS tidemark_capture_rename ON universities;
    DROP TRIGGER IF EXISTS tidemark_capture_rename ON courses;
    DROP VIEW IF EXISTS tidemark.outstanding;

    ALTER TABLE tidemark.dirty_students RENAME TO marks;
    ALTER TABLE tidemark.marks RENAME COLUMN student_id TO key;
    ALTER TABLE tidemark.marks ALTER COLUMN key TYPE text USING key::text;
    ALTER INDEX tidemark.dirty_students_seq RENAME TO marks_seq;

    IF to_regclass('tidemark.changes') IS NULL THEN
        CREATE TABLE tidemark.changes (key text NOT NULL, seq bigint NOT NULL, marked_at timestamptz NOT NULL DEFAULT now());
        CREATE INDEX changes_seq ON tidemark.changes (seq);
    ELSE
        ALTER TABLE tidemark.changes RENAME COLUMN student_id TO key;
        ALTER TABLE tidemark.changes ALTER COLUMN key TYPE text USING key::text;
    END IF;

    ALTER TABLE tidemark.dirty_parents RENAME TO parents;
    ALTER TABLE tidemark.parents DROP CONSTRAINT IF EXISTS dirty_parents_kind;
    ALTER TABLE tidemark.parents DROP CONSTRAINT IF EXISTS dirty_parents_ids;
    -- Old kinds are places of the students model: university, course (its courses are
    -- `course_names`), and a statement's set of student ids (`keys`).
    UPDATE tidemark.parents SET kind = CASE kind WHEN 'course' THEN 'course_names' WHEN 'students' THEN 'keys' ELSE kind END;
    ALTER TABLE tidemark.parents RENAME COLUMN parent_id TO key;
    ALTER TABLE tidemark.parents ALTER COLUMN key TYPE text USING key::text;
    ALTER TABLE tidemark.parents ADD COLUMN position integer NOT NULL DEFAULT 0;
    -- A set's cursor counted its ids expanded; a parent's was the last student id expanded.
    UPDATE tidemark.parents SET position = cursor WHERE kind = 'keys';
    ALTER TABLE tidemark.parents ALTER COLUMN cursor DROP DEFAULT;
    ALTER TABLE tidemark.parents ALTER COLUMN cursor DROP NOT NULL;
    ALTER TABLE tidemark.parents ALTER COLUMN cursor TYPE text USING CASE WHEN kind = 'keys' OR cursor = 0 THEN NULL ELSE cursor::text END;
    ALTER TABLE tidemark.parents ALTER COLUMN ids TYPE text[] USING ids::text[];
    ALTER TABLE tidemark.parents ADD CONSTRAINT parents_ids CHECK ((kind = 'keys') = (ids IS NOT NULL));

    ALTER TABLE tidemark.dead_letters RENAME COLUMN student_id TO key;
    ALTER TABLE tidemark.dead_letters ALTER COLUMN key TYPE text USING key::text;

    ALTER TABLE tidemark.reindexes ADD COLUMN model text;
    -- Chunks: numbered, bounds as text (a first chunk open below: lo NULL).
    ALTER TABLE tidemark.reindex_chunks DROP CONSTRAINT reindex_chunks_pkey;
    ALTER TABLE tidemark.reindex_chunks ADD COLUMN n integer;
    UPDATE tidemark.reindex_chunks c SET n = r.n
      FROM (SELECT reindex_id, lo, row_number() OVER (PARTITION BY reindex_id ORDER BY lo) AS n FROM tidemark.reindex_chunks) r
     WHERE r.reindex_id = c.reindex_id AND r.lo = c.lo;
    ALTER TABLE tidemark.reindex_chunks ALTER COLUMN n SET NOT NULL;
    ALTER TABLE tidemark.reindex_chunks ADD PRIMARY KEY (reindex_id, n);
    ALTER TABLE tidemark.reindex_chunks ALTER COLUMN lo DROP NOT NULL;
    ALTER TABLE tidemark.reindex_chunks ALTER COLUMN lo TYPE text USING CASE WHEN lo = -9223372036854775808 THEN NULL ELSE lo::text END;
    ALTER TABLE tidemark.reindex_chunks ALTER COLUMN hi TYPE text USING hi::text;

    DROP FUNCTION IF EXISTS tidemark.mark_students(bigint[]);
    DROP FUNCTION IF EXISTS tidemark.mark_students_now(bigint[], bigint);
    DROP FUNCTION IF EXISTS tidemark.mark_parents(text, bigint[]);
    DROP FUNCTION IF EXISTS tidemark.large_statement();
    DROP FUNCTION IF EXISTS tidemark.capture_students_insert();
    DROP FUNCTION IF EXISTS tidemark.capture_students_update();
    DROP FUNCTION IF EXISTS tidemark.capture_students_delete();
    DROP FUNCTION IF EXISTS tidemark.capture_students_id_change();
    DROP FUNCTION IF EXISTS tidemark.capture_enrollments_insert();
    DROP FUNCTION IF EXISTS tidemark.capture_enrollments_update();
    DROP FUNCTION IF EXISTS tidemark.capture_enrollments_delete();
    DROP FUNCTION IF EXISTS tidemark.capture_parent_rename();
END IF;
END $core$;

-- Every document whose change is not in the index yet: a mark, or a change not yet moved
-- into the marks. (A key may appear twice: count it DISTINCT.)
CREATE OR REPLACE VIEW tidemark.outstanding AS
    SELECT key, marked_at FROM tidemark.marks
    UNION ALL
    SELECT key, marked_at FROM tidemark.changes;

-- Marks the given parents `(kind, key)` with one fresh number, in key order (a stable lock
-- order). A new change restarts an expansion: documents already expanded for the old number
-- may have been read before this change.
CREATE OR REPLACE FUNCTION tidemark.mark_parents(parent_kind text, keys text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF cardinality(keys) = 0 THEN
        RETURN;
    END IF;
    v := nextval('tidemark.seq');
    INSERT INTO tidemark.parents AS d (kind, key, seq)
    SELECT DISTINCT parent_kind, k, v FROM unnest(keys) AS t(k) WHERE k IS NOT NULL ORDER BY 2
    ON CONFLICT (kind, key) DO UPDATE SET seq = EXCLUDED.seq, cursor = NULL, position = 0, expansion_seq = NULL;
END $$;

-- Marks the given documents directly, one fresh number for all, in key order; a mark whose
-- number is above `newer_than` is left as it is (an expansion's: it was made after the
-- change being expanded committed). What workers use to expand parents and sets.
CREATE OR REPLACE FUNCTION tidemark.mark_now(keys text[], newer_than bigint DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF cardinality(keys) = 0 THEN
        RETURN;
    END IF;
    v := nextval('tidemark.seq');
    INSERT INTO tidemark.marks AS d (key, seq)
    SELECT DISTINCT k, v FROM unnest(keys) AS t(k) WHERE k IS NOT NULL ORDER BY 1
    ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text
      AND (newer_than IS NULL OR d.seq < newer_than);
END $$;

-- Marks many documents at once (every document, for a rollback): as one set row, expanded
-- by the workers in chunks; a few directly.
CREATE OR REPLACE FUNCTION tidemark.mark_keys(keys text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF cardinality(keys) < 1000 THEN
        PERFORM tidemark.mark_now(keys);
        RETURN;
    END IF;
    v := nextval('tidemark.seq');
    INSERT INTO tidemark.parents (kind, key, seq, ids) VALUES ('keys', v::text, v, keys);
END $$;

-- TRUNCATE fires no row triggers: it asks for a rebuild, and draws a number so that the
-- workers' watch of the sequence sees it.
CREATE OR REPLACE FUNCTION tidemark.capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tidemark.resync_requests (reason) VALUES (format('TRUNCATE of %I', TG_TABLE_NAME));
    PERFORM nextval('tidemark.seq');
    RETURN NULL;
END $$;

-- Which model's capture is installed (written by `tidemark migrate`).
CREATE TABLE IF NOT EXISTS tidemark.model (
    only_one     boolean PRIMARY KEY DEFAULT true CHECK (only_one),
    name         text NOT NULL,
    fingerprint  text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);

-- An earlier tidemark's installation keeps being captured until `migrate` installs the
-- model's capture: the students capture, rewritten against the new tables.
DO $interim$
BEGIN
IF to_regclass('public.students') IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tidemark.model)
   AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname LIKE 'tidemark\_capture%' AND NOT tgisinternal) THEN
    CREATE FUNCTION tidemark.capture_interim_students() RETURNS trigger LANGUAGE plpgsql AS $f$
    DECLARE v bigint := nextval('tidemark.seq');
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO tidemark.changes (key, seq) SELECT o.id::text, v FROM old_rows o;
        ELSE
            INSERT INTO tidemark.changes (key, seq) SELECT n.id::text, v FROM new_rows n;
            IF TG_OP = 'UPDATE' THEN
                INSERT INTO tidemark.changes (key, seq) SELECT o.id::text, v FROM old_rows o;
            END IF;
        END IF;
        RETURN NULL;
    END $f$;
    CREATE TRIGGER tidemark_capture_interim_insert AFTER INSERT ON students REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_interim_students();
    CREATE TRIGGER tidemark_capture_interim_update AFTER UPDATE ON students REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_interim_students();
    CREATE TRIGGER tidemark_capture_interim_delete AFTER DELETE ON students REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_interim_students();
END IF;
END $interim$;

-- Capture for many concurrent writers (issue 16). Measured with pgbench, 32 connections, a
-- one-row UPDATE each (BENCHMARKS.md, "Write throughput under concurrency"):
--
-- 1. No NOTIFY. A transaction that has called NOTIFY / pg_notify takes a lock shared by the
--    whole database at commit (PreCommit_Notify) and holds it through its commit record's
--    flush, so every capturing writer committed one after another (capture cost 60-85 % of
--    the write throughput). Workers and schedulers now notice changes by polling the mark
--    sequence (src/process/wakeup.rs), which costs the writer nothing.
-- 2. An insert-only change log instead of an upsert. The writer's mark was an
--    INSERT ... ON CONFLICT DO UPDATE into tidemark.dirty_students (a unique index checked,
--    a conflicting row locked and rewritten); it cost ~34 % of the throughput on its own. A
--    plain INSERT into tidemark.changes (no unique index, no row anyone else locks) costs
--    ~19 %. Workers move the log into dirty_students (`absorb`, src/pipeline/claim.rs),
--    where marks coalesce and are claimed exactly as before: docs/protocol.md, rule 17,
--    has the argument that every invariant still holds.
-- 3. One query per statement. The capture no longer counts a statement's rows to choose
--    between marks and a set row (a query on the transition table, ~10 us): every changed
--    student is one narrow log row, whatever the statement's size (a 100,000-row UPDATE
--    costs ~1.5x the UPDATE alone, within the 2x target).

-- The change log: what writers append. No unique index; the index on seq lets workers
-- take the oldest first and costs nothing measurable (an insert at its right edge).
CREATE TABLE tidemark.changes (
    student_id bigint NOT NULL,
    seq        bigint NOT NULL,
    marked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_seq ON tidemark.changes (seq);

-- Every student whose change is not in the index yet: a mark, or a change not yet moved
-- into the marks. (A student may appear twice: count it DISTINCT.)
CREATE VIEW tidemark.outstanding AS
    SELECT student_id, marked_at FROM tidemark.dirty_students
    UNION ALL
    SELECT student_id, marked_at FROM tidemark.changes;

CREATE OR REPLACE FUNCTION tidemark.mark_parents(parent_kind text, ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    v := nextval('tidemark.seq');
    INSERT INTO tidemark.dirty_parents AS d (kind, parent_id, seq)
    SELECT DISTINCT parent_kind, id, v FROM unnest(ids) AS t(id) ORDER BY 2
    -- A new change restarts the expansion: students already expanded for the old number
    -- may have been read before this change.
    ON CONFLICT ON CONSTRAINT dirty_parents_pkey DO UPDATE SET seq = EXCLUDED.seq, cursor = 0, expansion_seq = NULL;
END $$;

CREATE OR REPLACE FUNCTION tidemark.mark_students_now(ids bigint[], newer_than bigint DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    v := nextval('tidemark.seq');
    INSERT INTO tidemark.dirty_students AS d (student_id, seq)
    SELECT DISTINCT id, v FROM unnest(ids) AS t(id) WHERE id IS NOT NULL ORDER BY 1
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
    -- A mark this very transaction already made (or re-made) needs no new number: no
    -- reader can have seen it yet.
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text
      AND (newer_than IS NULL OR d.seq < newer_than);
END $$;

CREATE OR REPLACE FUNCTION tidemark.mark_students(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF cardinality(ids) < tidemark.large_statement() THEN
        PERFORM tidemark.mark_students_now(ids);
        RETURN;
    END IF;
    -- One set per transaction: a second large statement (the enrollments of the students
    -- just inserted) joins the first one's row, so each student is expanded once.
    UPDATE tidemark.dirty_parents AS p SET ids = p.ids || mark_students.ids
     WHERE p.kind = 'students' AND p.cursor = 0
       AND p.xmin::text = (txid_current() % 4294967296)::text;
    IF NOT FOUND THEN
        v := nextval('tidemark.seq');
        INSERT INTO tidemark.dirty_parents (kind, parent_id, seq, ids) VALUES ('students', v, v, ids);
    END IF;
END $$;

-- students ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION tidemark.capture_students_insert() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.changes (student_id, seq) SELECT id, v FROM new_rows;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tidemark.capture_students_delete() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.changes (student_id, seq) SELECT id, v FROM old_rows;
    RETURN NULL;
END $$;

-- Only rows whose indexed columns changed (a no-op UPDATE logs nothing), and both sides of
-- an id change (the old document must go, the new one come): one FULL JOIN.
--
-- A FULL JOIN on purpose, whose WHERE keeps it one (it tests a side for NULL): PL/pgSQL keeps
-- the plan it made on a connection's first run, for that run's transition tables, and an
-- inner join planned for one row is a nested loop — a 20,000-row UPDATE on that connection
-- then ran for minutes (tests/capture.rs). A full join can only be a hash or merge join,
-- whatever the size it was planned for. And no JIT: a plan made for a 100,000-row statement
-- is costed high enough to be compiled, and was compiled again at every later one-row UPDATE
-- on the connection (350 ms each). At 32 connections neither costs a one-row UPDATE anything
-- measurable.
CREATE OR REPLACE FUNCTION tidemark.capture_students_update() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.changes (student_id, seq)
    SELECT coalesce(n.id, o.id), v
      FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
     WHERE n.id IS NULL OR o.id IS NULL
        OR (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
           IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id);
    RETURN NULL;
END $$;

-- student_courses (enrollments) -------------------------------------------------------
CREATE OR REPLACE FUNCTION tidemark.capture_enrollments_insert() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.changes (student_id, seq) SELECT DISTINCT student_id, v FROM new_rows;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tidemark.capture_enrollments_update() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.changes (student_id, seq)
    SELECT DISTINCT coalesce(n.student_id, o.student_id), v
      FROM new_rows n FULL JOIN old_rows o ON o.student_id = n.student_id AND o.course_id = n.course_id
     WHERE n.student_id IS NULL OR o.student_id IS NULL;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tidemark.capture_enrollments_delete() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.changes (student_id, seq) SELECT DISTINCT student_id, v FROM old_rows;
    RETURN NULL;
END $$;

-- The capture triggers no longer switch settings for large statements.
DROP FUNCTION tidemark.large_statement_settings();
DROP FUNCTION tidemark.restore_settings(text[]);

-- A TRUNCATE draws a number too, so the workers' watch of the sequence sees it.
CREATE OR REPLACE FUNCTION tidemark.capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tidemark.resync_requests (reason) VALUES (format('TRUNCATE of %I', TG_TABLE_NAME));
    PERFORM nextval('tidemark.seq');
    RETURN NULL;
END $$;

-- Large statements: a statement that changes many students (a bulk UPDATE, an import, a
-- cascade, a rollback's "mark everyone") writes ONE row holding their ids, instead of one
-- mark per student. For the writer that is O(1) rows, as a renamed university is; workers
-- expand the row into marks in chunks, exactly like a university's fan-out, resuming at
-- `cursor` after a crash.
--
-- Measured on a 100,000-row UPDATE (BENCHMARKS.md, "Write overhead"): one mark per row
-- cost the writer 2-3x the UPDATE itself (a heap row and two index entries per student,
-- plus JIT compilation of the trigger's query); one array row costs ~1.1-1.3x.
--
-- Correctness is the fan-out's: the expansion draws the marks' number after the change
-- committed (the row is only visible then), so every reader that claims such a mark draws
-- its version after the change and reads it.

ALTER TABLE tidemark.dirty_parents ADD COLUMN ids bigint[];
-- A number drawn when the row is first claimed for expansion, so after the change it
-- stands for committed. A student whose mark already carries a higher number needs no new
-- one from this expansion: that mark was made after the change committed, so whoever reads
-- it reads the change. That spares a second index op per student when one set holds a
-- student twice (a transaction that writes students, then their enrollments).
ALTER TABLE tidemark.dirty_parents ADD COLUMN expansion_seq bigint;
-- Uncompressed: compressing 8 bytes per id costs the writer more time than it saves space
-- (pglz on 800 kB of ids took longer than writing them), and the row lives minutes at most.
ALTER TABLE tidemark.dirty_parents ALTER COLUMN ids SET STORAGE EXTERNAL;
ALTER TABLE tidemark.dirty_parents DROP CONSTRAINT dirty_parents_kind;
-- kind 'students': parent_id is the set's own number (unique), ids the students, and
-- cursor counts the ids already expanded (for a university or course, cursor is the highest
-- student id expanded).
ALTER TABLE tidemark.dirty_parents ADD CONSTRAINT dirty_parents_kind
    CHECK (kind IN ('university', 'course', 'students'));
ALTER TABLE tidemark.dirty_parents ADD CONSTRAINT dirty_parents_ids
    CHECK ((kind = 'students') = (ids IS NOT NULL));

-- From this many students up, a statement writes one set row instead of marks. Below it,
-- marks are written directly (no expansion step, so a small change is indexed sooner).
CREATE FUNCTION tidemark.large_statement() RETURNS integer
LANGUAGE sql IMMUTABLE AS 'SELECT 1000';

-- Marks the given students directly, one fresh number for all of them, in id order (a
-- stable lock order, so concurrent bulk writers cannot deadlock on the marks), and nudges
-- the workers once. What mark_students did before large statements existed; the fan-out
-- expansion uses it, with `newer_than`: a mark whose number is higher is left as it is.
CREATE FUNCTION tidemark.mark_students_now(ids bigint[], newer_than bigint DEFAULT NULL) RETURNS void
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
    -- reader can have seen it yet. Skipping it saves a row version per student when one
    -- transaction writes a student and then its enrollments.
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text
      AND (newer_than IS NULL OR d.seq < newer_than);
    -- Delivered at commit, once per transaction whatever the number of statements.
    IF FOUND THEN
        PERFORM pg_notify('tidemark_sync', '');
    END IF;
END $$;

-- Marks the given students: directly when they are few, as one set row when they are many.
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
    PERFORM pg_notify('tidemark_sync', '');
END $$;

-- As in 0002, and a new change also forgets the number of the expansion it restarts.
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
    PERFORM pg_notify('tidemark_sync', '');
END $$;

-- A large statement's query is costed far above jit_above_cost (the planner knows a
-- transition table's size but not its keys, and guesses a join of millions of rows), and
-- LLVM compilation then took 100-300 ms for a query that runs in tens; its sorts spill to
-- disk under the default 4 MB of work_mem. These two switch JIT off and raise work_mem to
-- 32 MB (never lower) for the large path's one query, and put them back. (A `SET` clause
-- on the trigger function would do the same for every statement, and cost every
-- single-row write ~10 µs of backend CPU: measured, BENCHMARKS.md "Write overhead".)
CREATE FUNCTION tidemark.large_statement_settings() RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    was text[] := ARRAY[current_setting('jit'), current_setting('work_mem')];
BEGIN
    PERFORM set_config('jit', 'off', true);
    IF pg_size_bytes(was[2]) < 32 * 1024 * 1024 THEN
        PERFORM set_config('work_mem', '32MB', true);
    END IF;
    RETURN was;
END $$;

CREATE FUNCTION tidemark.restore_settings(was text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('jit', was[1], true);
    PERFORM set_config('work_mem', was[2], true);
END $$;

-- The capture triggers: a statement of fewer than large_statement() rows writes its marks
-- straight from the transition tables (as before); a larger one hands its ids to
-- mark_students as one array. The small path is every single-row write's cost, so it stays
-- lean: one count, one INSERT, and the notification as a plain expression (`PERFORM` would
-- run it as a query).

-- students ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION tidemark.capture_students_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    settings text[];
    nudged text;
BEGIN
    IF (SELECT count(*) FROM new_rows) >= tidemark.large_statement() THEN
        settings := tidemark.large_statement_settings();
        PERFORM tidemark.mark_students(ARRAY(SELECT id FROM new_rows));
        PERFORM tidemark.restore_settings(settings);
        RETURN NULL;
    END IF;
    v := nextval('tidemark.seq');
    INSERT INTO tidemark.dirty_students AS d (student_id, seq)
    SELECT id, v FROM new_rows ORDER BY id
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    IF FOUND THEN
        nudged := pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tidemark.capture_students_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    settings text[];
    nudged text;
BEGIN
    -- Only rows whose indexed columns changed (a no-op UPDATE marks nothing), and both
    -- sides of an id change (the old document must go, the new one come): one full join.
    IF (SELECT count(*) FROM new_rows) >= tidemark.large_statement() THEN
        settings := tidemark.large_statement_settings();
        PERFORM tidemark.mark_students(ARRAY(
            SELECT coalesce(n.id, o.id)
              FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
             WHERE n.id IS NULL OR o.id IS NULL
                OR (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
                   IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)));
        PERFORM tidemark.restore_settings(settings);
        RETURN NULL;
    END IF;
    v := nextval('tidemark.seq');
    INSERT INTO tidemark.dirty_students AS d (student_id, seq)
    SELECT coalesce(n.id, o.id), v
      FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
     WHERE n.id IS NULL OR o.id IS NULL
        OR (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
           IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)
     ORDER BY 1
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    IF FOUND THEN
        nudged := pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tidemark.capture_students_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    settings text[];
    nudged text;
BEGIN
    IF (SELECT count(*) FROM old_rows) >= tidemark.large_statement() THEN
        settings := tidemark.large_statement_settings();
        PERFORM tidemark.mark_students(ARRAY(SELECT id FROM old_rows));
        PERFORM tidemark.restore_settings(settings);
        RETURN NULL;
    END IF;
    v := nextval('tidemark.seq');
    INSERT INTO tidemark.dirty_students AS d (student_id, seq)
    SELECT id, v FROM old_rows ORDER BY id
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    IF FOUND THEN
        nudged := pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;

-- student_courses (enrollments): mark_students decides between marks and a set row.
CREATE OR REPLACE FUNCTION tidemark.capture_enrollments_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    settings text[];
BEGIN
    IF (SELECT count(*) FROM new_rows) >= tidemark.large_statement() THEN
        settings := tidemark.large_statement_settings();
    END IF;
    PERFORM tidemark.mark_students(ARRAY(SELECT DISTINCT student_id FROM new_rows));
    IF settings IS NOT NULL THEN
        PERFORM tidemark.restore_settings(settings);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tidemark.capture_enrollments_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    settings text[];
BEGIN
    IF (SELECT count(*) FROM new_rows) >= tidemark.large_statement() THEN
        settings := tidemark.large_statement_settings();
    END IF;
    PERFORM tidemark.mark_students(ARRAY(
        SELECT coalesce(n.student_id, o.student_id)
          FROM new_rows n FULL JOIN old_rows o ON o.student_id = n.student_id AND o.course_id = n.course_id
         WHERE n.student_id IS NULL OR o.student_id IS NULL));
    IF settings IS NOT NULL THEN
        PERFORM tidemark.restore_settings(settings);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tidemark.capture_enrollments_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    settings text[];
BEGIN
    -- A cascade from a deleted student marks it again within the same transaction: that
    -- keeps its number, so it costs nothing. (A large delete leaves two sets, the
    -- cascade's and the students'; expanding the second re-marks what the first marked,
    -- which costs at most a second delete op per student.)
    IF (SELECT count(*) FROM old_rows) >= tidemark.large_statement() THEN
        settings := tidemark.large_statement_settings();
    END IF;
    PERFORM tidemark.mark_students(ARRAY(SELECT DISTINCT student_id FROM old_rows));
    IF settings IS NOT NULL THEN
        PERFORM tidemark.restore_settings(settings);
    END IF;
    RETURN NULL;
END $$;

-- Claims and releases rewrite a mark's lease columns, which no index covers: with room
-- left on each page those updates are HOT (no new index entries), which halved the cost of
-- claiming a batch (1,609 marks: 14 ms → 6 ms). Marks are short-lived; the table stays small.
ALTER TABLE tidemark.dirty_students SET (fillfactor = 50);

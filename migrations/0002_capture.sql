-- Change capture: triggers mark, in the writer's own transaction, every student whose
-- search document a write changes. Everything tidemark owns lives in schema tidemark.
--
-- Triggers are statement-level with transition tables, so a bulk statement costs one
-- INSERT ... SELECT and at most one notification, never a round trip or a NOTIFY per row.
CREATE SCHEMA IF NOT EXISTS tidemark;

-- The one sequence behind every mark number and every index version (DESIGN.md, protocol 2-3).
CREATE SEQUENCE IF NOT EXISTS tidemark.seq;

-- A student whose document must be (re)built. Re-marking replaces seq, so many writes
-- to one student coalesce into one index operation. marked_at is kept on re-mark: it is
-- the time of the oldest change not yet in the index (the freshness lag).
CREATE TABLE tidemark.dirty_students (
    student_id  bigint PRIMARY KEY,
    seq         bigint NOT NULL,
    marked_at   timestamptz NOT NULL DEFAULT now(),
    -- A worker that claimed the mark owns it until lease_until; a crashed worker's
    -- lease simply runs out and another worker claims the mark.
    lease_owner text,
    lease_until timestamptz
);
CREATE INDEX dirty_students_seq ON tidemark.dirty_students (seq);

-- A university or course whose name changed: one row for the writer, expanded later by
-- workers into student marks, in chunks. cursor is the highest student id already
-- expanded for this seq, so a crashed expansion resumes where it stopped.
CREATE TABLE tidemark.dirty_parents (
    kind        text NOT NULL CONSTRAINT dirty_parents_kind CHECK (kind IN ('university', 'course')),
    parent_id   bigint NOT NULL,
    seq         bigint NOT NULL,
    cursor      bigint NOT NULL DEFAULT 0,
    marked_at   timestamptz NOT NULL DEFAULT now(),
    lease_owner text,
    lease_until timestamptz,
    PRIMARY KEY (kind, parent_id)
);

-- Documents the search server refused for good (mapping or parse errors), with its reason.
CREATE TABLE tidemark.dead_letters (
    student_id      bigint PRIMARY KEY,
    status          integer,
    error           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now()
);

-- Marks the given students with one fresh number, in id order (a stable lock order, so
-- concurrent bulk writers cannot deadlock on the marks), and nudges the workers once.
CREATE FUNCTION tidemark.mark_students(ids bigint[]) RETURNS void
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
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    -- Delivered at commit, once per transaction whatever the number of statements.
    IF FOUND THEN
        PERFORM pg_notify('tidemark_sync', '');
    END IF;
END $$;

CREATE FUNCTION tidemark.mark_parents(parent_kind text, ids bigint[]) RETURNS void
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
    ON CONFLICT ON CONSTRAINT dirty_parents_pkey DO UPDATE SET seq = EXCLUDED.seq, cursor = 0;
    PERFORM pg_notify('tidemark_sync', '');
END $$;

-- The row triggers below write their marks directly from the transition tables (no array
-- round trip), with one number per statement, in id order (a stable lock order), and
-- notify only if they marked something. A mark this very transaction already made keeps
-- its number (see mark_students).

-- students ---------------------------------------------------------------------------
CREATE FUNCTION tidemark.capture_students_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.dirty_students AS d (student_id, seq)
    SELECT id, v FROM new_rows ORDER BY id
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    IF FOUND THEN
        PERFORM pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION tidemark.capture_students_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint := nextval('tidemark.seq');
BEGIN
    -- Only rows whose indexed columns changed (a no-op UPDATE marks nothing), and both
    -- sides of an id change (the old document must go, the new one come): one full join.
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
        PERFORM pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION tidemark.capture_students_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint := nextval('tidemark.seq');
BEGIN
    INSERT INTO tidemark.dirty_students AS d (student_id, seq)
    SELECT id, v FROM old_rows ORDER BY id
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    IF FOUND THEN
        PERFORM pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER tidemark_capture_insert AFTER INSERT ON students
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_students_insert();
CREATE TRIGGER tidemark_capture_update AFTER UPDATE ON students
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_students_update();
CREATE TRIGGER tidemark_capture_delete AFTER DELETE ON students
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_students_delete();

-- student_courses (enrollments) -------------------------------------------------------
CREATE FUNCTION tidemark.capture_enrollments_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tidemark.mark_students(ARRAY(SELECT DISTINCT student_id FROM new_rows));
    RETURN NULL;
END $$;

CREATE FUNCTION tidemark.capture_enrollments_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tidemark.mark_students(ARRAY(
        SELECT coalesce(n.student_id, o.student_id)
          FROM new_rows n FULL JOIN old_rows o ON o.student_id = n.student_id AND o.course_id = n.course_id
         WHERE n.student_id IS NULL OR o.student_id IS NULL));
    RETURN NULL;
END $$;

CREATE FUNCTION tidemark.capture_enrollments_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A cascade from a deleted student marks it again within the same transaction: that
    -- keeps its number, so it costs nothing.
    PERFORM tidemark.mark_students(ARRAY(SELECT DISTINCT student_id FROM old_rows));
    RETURN NULL;
END $$;

CREATE TRIGGER tidemark_capture_insert AFTER INSERT ON student_courses
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_enrollments_insert();
CREATE TRIGGER tidemark_capture_update AFTER UPDATE ON student_courses
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_enrollments_update();
CREATE TRIGGER tidemark_capture_delete AFTER DELETE ON student_courses
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_enrollments_delete();

-- universities and courses: a rename marks the one row (O(1) for the writer). A delete
-- needs no mark of its own: ON DELETE SET NULL / CASCADE rewrite the students'
-- rows and enrollments, whose own triggers mark them.
CREATE FUNCTION tidemark.capture_parent_rename() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tidemark.mark_parents(TG_ARGV[0], ARRAY(
        SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE n.name IS DISTINCT FROM o.name));
    RETURN NULL;
END $$;

CREATE TRIGGER tidemark_capture_rename AFTER UPDATE ON universities
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_parent_rename('university');
CREATE TRIGGER tidemark_capture_rename AFTER UPDATE ON courses
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_parent_rename('course');

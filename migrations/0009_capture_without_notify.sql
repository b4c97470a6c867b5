-- Capture without NOTIFY (issue 16): a transaction that has called NOTIFY / pg_notify takes
-- a lock shared by the whole database at commit (PreCommit_Notify) and holds it through its
-- commit record's flush, so every capturing writer committed one after another: with 32
-- connections writing, capture cost 60-80 % of the database's write throughput.
--
-- The capture now only marks (and draws a number from tidemark.seq, as before). Workers and
-- schedulers notice changes by polling the sequence (src/process/wakeup.rs), which costs the
-- writer nothing. Every function below is its previous version minus the notification.

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

CREATE OR REPLACE FUNCTION tidemark.capture_students_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    settings text[];
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
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tidemark.capture_students_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    settings text[];
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
    RETURN NULL;
END $$;

-- As in 0006 (a single-row UPDATE pairs its old and new row without a join), minus the
-- notification.
CREATE OR REPLACE FUNCTION tidemark.capture_students_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    settings text[];
    rows_changed bigint;
    marked bigint;
BEGIN
    rows_changed := (SELECT count(*) FROM new_rows);
    IF rows_changed >= tidemark.large_statement() THEN
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
    IF rows_changed = 1 THEN
        INSERT INTO tidemark.dirty_students AS d (student_id, seq)
        SELECT n.id, v
          FROM new_rows n, old_rows o
         WHERE n.id = o.id
           AND (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
               IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)
        ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
        WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
        GET DIAGNOSTICS marked = ROW_COUNT;
        IF marked > 0 THEN
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO tidemark.dirty_students AS d (student_id, seq)
    SELECT coalesce(n.id, o.id), v
      FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
     WHERE n.id IS NULL OR o.id IS NULL
        OR (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
           IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)
     ORDER BY 1
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    RETURN NULL;
END $$;

-- A TRUNCATE draws a number too, so the workers' watch of the sequence sees it.
CREATE OR REPLACE FUNCTION tidemark.capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tidemark.resync_requests (reason) VALUES (format('TRUNCATE of %I', TG_TABLE_NAME));
    PERFORM nextval('tidemark.seq');
    RETURN NULL;
END $$;

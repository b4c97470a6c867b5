-- A single-row UPDATE of a student — the commonest write by far — takes one query in the
-- capture trigger instead of three (count, full join, upsert).
--
-- Measured (BENCHMARKS.md, "Write overhead"; pgbench, one connection, autocommit, 2 cores):
-- a statement trigger with transition tables costs ~15 µs just by firing, each query on a
-- transition table ~10 µs, the FULL JOIN that pairs old and new rows ~25 µs and the upsert
-- ~15 µs. For one row whose id did not change, pairing needs no join strategy: the single
-- new row and the single old row are the pair. That query runs first; when it marks the
-- student, the trigger is done (~25 µs less per write). Anything else — a no-op update, a
-- changed id, a mark this transaction already made, more than one row — marks nothing
-- there and goes on exactly as in 0005.

CREATE OR REPLACE FUNCTION tidemark.capture_students_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    settings text[];
    nudged text;
    marked bigint;
BEGIN
    v := nextval('tidemark.seq');
    -- The single-row fast path (the count is a one-time filter: with more rows the cross
    -- join is never run).
    INSERT INTO tidemark.dirty_students AS d (student_id, seq)
    SELECT n.id, v
      FROM new_rows n, old_rows o
     WHERE (SELECT count(*) FROM new_rows) = 1
       AND n.id = o.id
       AND (n.first_name, n.last_name, n.age, n.year_in_school, n.university_id)
           IS DISTINCT FROM (o.first_name, o.last_name, o.age, o.year_in_school, o.university_id)
    ON CONFLICT (student_id) DO UPDATE SET seq = EXCLUDED.seq
    WHERE d.xmin::text <> (txid_current() % 4294967296)::text;
    GET DIAGNOSTICS marked = ROW_COUNT;
    IF marked > 0 THEN
        nudged := pg_notify('tidemark_sync', '');
        RETURN NULL;
    END IF;
    -- As in 0005: only rows whose indexed columns changed, and both sides of an id change.
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

-- A single-row UPDATE of a student — the commonest write by far — pairs its old and new
-- row without a join strategy.
--
-- Measured (BENCHMARKS.md, "Write overhead"; pgbench, one connection, autocommit, 2 cores):
-- a statement trigger with transition tables costs ~15 µs just by firing, each query on a
-- transition table ~10 µs, and the FULL JOIN that pairs old and new rows ~20 µs more than
-- taking the one new and the one old row as the pair. So the trigger counts the rows once
-- (as in 0005) and, for one row whose id did not change, marks it with that simpler query.
-- Anything else — a no-op update, a changed id, a mark this transaction already made, more
-- than one row — goes on exactly as in 0005.
--
-- The fast query runs only when the statement changed one row. PL/pgSQL keeps a query's
-- plan for the connection, planned for the transition tables' size at the time: a fast
-- query also run (and planned) for a 100,000-row statement kept a plan sized for 100,000
-- rows, and every later single-row UPDATE on that connection took ~90 ms instead of
-- ~0.3 ms (measured while writing this migration).

CREATE OR REPLACE FUNCTION tidemark.capture_students_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    settings text[];
    nudged text;
    rows_changed bigint;
    marked bigint;
BEGIN
    rows_changed := (SELECT count(*) FROM new_rows);
    IF rows_changed >= tidemark.large_statement() THEN
        -- As in 0005: only rows whose indexed columns changed, and both sides of an id change.
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
            nudged := pg_notify('tidemark_sync', '');
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
    IF FOUND THEN
        nudged := pg_notify('tidemark_sync', '');
    END IF;
    RETURN NULL;
END $$;

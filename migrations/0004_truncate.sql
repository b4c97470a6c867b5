-- TRUNCATE fires no row or transition-table triggers, so it cannot mark the students it
-- removes. It records a request for a full rebuild instead; the next sync step starts a
-- reindex from the database as it now is, and the alias moves once it is verified.
CREATE TABLE tidemark.resync_requests (
    id           bigserial PRIMARY KEY,
    reason       text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION tidemark.capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tidemark.resync_requests (reason) VALUES (format('TRUNCATE of %I', TG_TABLE_NAME));
    PERFORM pg_notify('tidemark_sync', '');
    RETURN NULL;
END $$;

CREATE TRIGGER tidemark_capture_truncate AFTER TRUNCATE ON students FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_truncate();
CREATE TRIGGER tidemark_capture_truncate AFTER TRUNCATE ON student_courses FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_truncate();
CREATE TRIGGER tidemark_capture_truncate AFTER TRUNCATE ON universities FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_truncate();
CREATE TRIGGER tidemark_capture_truncate AFTER TRUNCATE ON courses FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_truncate();

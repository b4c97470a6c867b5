//! Demo and benchmark data for tidemark: `tidemark seed --students N [--seed S]` and the
//! benchmarks fill an empty database with a student directory. Not part of tidemark's
//! library: the product never generates data, it only syncs what is there.
//!
//! The data is a pure function of `(N, S)` and of the lists in `seeds/` (compiled into
//! the binary, so nothing is read at run time): the same arguments give the same rows,
//! ids included. Universities are skewed on purpose so fan-out can be measured: MIT
//! (id 1) holds ~10 % of the students at any N, the others decay Zipf-like, ~2 % have
//! no university. Every student takes 1 to 10 distinct courses.
//!
//! Rows go in with `COPY … FROM STDIN` (text format, encoded straight into a byte
//! buffer), with the foreign keys and secondary indexes recreated after the load (see
//! [`DeferredSchema`]), all in one transaction: a failed seed leaves nothing behind.
//! The tables are created first where they are missing (`students/schema.sql`). When
//! tidemark's capture is installed, its triggers fire as for any writer: each COPY is one
//! statement, logging one row per student.

pub mod refinebio;

use std::time::{Duration, Instant};

use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::{PgConnection, PgCopyIn};
use sqlx::PgPool;

/// The student directory's tables (`CREATE TABLE IF NOT EXISTS`): what the students model
/// reads. [`seed`] creates them when they are missing.
pub const STUDENTS_SCHEMA: &str = include_str!("../students/schema.sql");

/// Creates the student directory's tables where they are missing.
pub async fn students_schema(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(STUDENTS_SCHEMA).execute(pool).await.map(|_| ())
}

const FIRST_NAMES: &str = include_str!("../first_names.txt");
const LAST_NAMES: &str = include_str!("../last_names.txt");
const UNIVERSITIES: &str = include_str!("../universities.txt");
const COURSES: &str = include_str!("../courses.txt");

/// Share of students at MIT, the first university (id 1): the fan-out benchmarks
/// rename it and expect ~1,600 students at N = 16,000 and ~100,000 at N = 1,000,000.
const MIT_SHARE: f64 = 0.10;
/// Share of students with a NULL university (the document's `university: null`).
const NO_UNIVERSITY_SHARE: f64 = 0.02;
/// Zipf exponent for the universities after MIT (rank 2, 3, …). 0.75 keeps every one
/// of them below MIT (with 51 others, rank 2 gets ~8.3 %) and the smallest near 0.7 %.
const ZIPF_EXPONENT: f64 = 0.75;
/// Courses per student: uniform in 1..=MAX_COURSES_PER_STUDENT (mean 5.5).
pub const MAX_COURSES_PER_STUDENT: usize = 10;
/// Guard against a slip of the finger (an extra zero or two): 100 M students is
/// already ~550 M enrollments and tens of GB.
pub const MAX_STUDENTS: u64 = 100_000_000;
/// Students per pair of COPY statements (students, then their enrollments). The
/// capture triggers turn each statement's transition table into one array of ids;
/// batching keeps that array (and the enrollment buffer held in memory) bounded
/// whatever N is. PostgreSQL caps an array at ~134 M elements.
const STUDENTS_PER_BATCH: u64 = 1_000_000;
/// Bytes handed to the connection per `send`: large enough to amortise the call,
/// small enough to keep memory flat.
const COPY_CHUNK_BYTES: usize = 4 << 20;

/// What to seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedOptions {
    /// Number of students to create.
    pub students: u64,
    /// RNG seed: the same `students` and `seed` always give the same rows.
    pub seed: u64,
}

/// What was seeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReport {
    pub universities: u64,
    pub courses: u64,
    pub students: u64,
    pub enrollments: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(
        "table `{table}` is not empty; `tidemark seed` inserts fixed ids and needs empty tables \
         (so the same --students and --seed always give the same rows). Use a fresh database, \
         or empty this one with \
         `TRUNCATE students, universities, courses, student_courses RESTART IDENTITY CASCADE`"
    )]
    NotEmpty { table: &'static str },

    #[error(
        "the database has no tidemark schema (a table is missing); run `tidemark migrate` \
         against it first"
    )]
    NotMigrated(#[source] sqlx::Error),

    #[error(
        "--students {requested} is more than the {max} that `tidemark seed` accepts; \
         ask for fewer students"
    )]
    TooManyStudents { requested: u64, max: u64 },

    #[error(
        "table `experiments` holds {rows} rows; `tidemark seed --experiments` inserts fixed ids and needs          empty tables. Use a fresh database, or empty this one with          `TRUNCATE experiments, samples, organisms, platforms, experiment_samples RESTART IDENTITY CASCADE`"
    )]
    NotEmptyRefinebio { rows: u64 },

    #[error(
        "seeding failed while {step}; nothing was written (the seed runs in one transaction). \
         Check that the database is reachable and migrated, then run the seed again"
    )]
    Database {
        step: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "COPY into `{table}` stored {actual} rows where {expected} were sent; nothing was \
         written. This is a bug in tidemark seed, please report it"
    )]
    RowCount { table: &'static str, expected: u64, actual: u64 },
}

/// Seeds universities, courses, `opts.students` students and their enrollments into
/// empty tables, in one transaction.
pub async fn seed(pool: &PgPool, opts: &SeedOptions) -> Result<SeedReport, SeedError> {
    if opts.students > MAX_STUDENTS {
        return Err(SeedError::TooManyStudents { requested: opts.students, max: MAX_STUDENTS });
    }
    let started = Instant::now();
    let data = SeedData::embedded();
    students_schema(pool).await.map_err(db_error("creating the student directory's tables"))?;

    let mut tx = pool.begin().await.map_err(db_error("opening a transaction"))?;

    // Two seeds started at once: the second waits here, then finds the tables full
    // and refuses, instead of both inserting id 1. ACCESS EXCLUSIVE because the load
    // drops and recreates indexes and foreign keys (see `DeferredSchema`); the tables
    // are empty, so nobody is kept from anything worth reading.
    sqlx::query("LOCK TABLE universities, courses, students, student_courses IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .map_err(db_error("locking the tables"))?;

    for table in ["students", "student_courses", "universities", "courses"] {
        // `table` is one of the literals above, never user input.
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {table})");
        let non_empty: bool = sqlx::query_scalar(&sql).fetch_one(&mut *tx).await.map_err(db_error("checking that the tables are empty"))?;
        if non_empty {
            return Err(SeedError::NotEmpty { table });
        }
    }

    // The enrollments' capture trigger de-duplicates each statement's student ids (a
    // batch's ~5.5 M enrollments); with the default 4 MB that and the transition tables
    // spill to disk. Raised for this transaction only, never lowered.
    sqlx::query(
        "SELECT set_config('work_mem', '128MB', true)
           FROM pg_settings
          WHERE name = 'work_mem' AND setting::bigint < 128 * 1024",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_error("raising work_mem for the capture triggers"))?;

    let deferred = DeferredSchema::drop(&mut tx).await?;

    let universities = copy_names(&mut tx, "universities", &data.universities).await?;
    let courses = copy_names(&mut tx, "courses", &data.courses).await?;

    let mut generator = StudentGenerator::new(&data, opts.seed, opts.students);
    let mut students = 0;
    let mut enrollments = 0;
    let mut enrollment_buf = Vec::new();
    while students < opts.students {
        let batch = (opts.students - students).min(STUDENTS_PER_BATCH);

        // A connection runs one COPY at a time: the students' rows stream out in
        // chunks while their enrollments wait in memory (~10 bytes each, ~55 MB for a
        // full batch) for their own COPY right after.
        enrollment_buf.clear();
        let mut enrollment_rows = 0;
        let mut copy = CopySink::begin(
            &mut tx,
            "students",
            "COPY students (id, first_name, last_name, age, year_in_school, university_id) \
             FROM STDIN",
        )
        .await?;
        for row in generator.by_ref().take(batch as usize) {
            encode_student(&row, copy.buf());
            encode_enrollments(&row, &mut enrollment_buf);
            enrollment_rows += row.courses.len() as u64;
            copy.flush_if_full().await?;
        }
        copy.finish(batch).await?;

        let mut copy = CopySink::begin(&mut tx, "student_courses", "COPY student_courses (student_id, course_id) FROM STDIN").await?;
        copy.send_all(&enrollment_buf).await?;
        copy.finish(enrollment_rows).await?;

        students += batch;
        enrollments += enrollment_rows;
    }

    deferred.restore(&mut tx).await?;

    // Fresh statistics, so the first fan-out queries after the seed are planned for
    // a million rows, not for the empty tables the planner last saw.
    sqlx::query("ANALYZE universities, courses, students, student_courses")
        .execute(&mut *tx)
        .await
        .map_err(db_error("analyzing the seeded tables"))?;

    // Explicit ids leave the serial sequences at 1: move them past the seeded rows so
    // that the application's own inserts do not collide. On an empty table max(id) is
    // NULL and setval (strict) leaves the sequence alone.
    for table in ["universities", "courses", "students"] {
        let sql = format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))");
        sqlx::query(&sql).execute(&mut *tx).await.map_err(db_error("moving the id sequences past the seeded rows"))?;
    }

    tx.commit().await.map_err(db_error("committing"))?;

    let report = SeedReport { universities, courses, students, enrollments, elapsed: started.elapsed() };
    tracing::info!(
        universities = report.universities,
        courses = report.courses,
        students = report.students,
        enrollments = report.enrollments,
        seed = opts.seed,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "seeded the student directory"
    );
    Ok(report)
}

/// Maps a sqlx error to a [`SeedError`], recognising a database that was never migrated.
fn db_error(step: &'static str) -> impl FnOnce(sqlx::Error) -> SeedError {
    move |source| {
        let undefined_table = source.as_database_error().and_then(|e| e.code()).is_some_and(|code| code == "42P01");
        if undefined_table {
            SeedError::NotMigrated(source)
        } else {
            SeedError::Database { step, source }
        }
    }
}

/// The foreign keys and plain (non-unique) indexes of `students` and
/// `student_courses`, dropped for the load and recreated after it, as pg_restore does.
///
/// With them in place every COPY row pays a row-level RI check per foreign key (an SPI
/// query plus a row lock on the referenced row) and scattered index inserts: at 1 M
/// students the load took ~140 s instead of well under a minute. Recreated afterwards,
/// each index is one sorted build and each foreign key one validating join, so bad
/// data is still refused, before commit. The definitions come from the catalog, so
/// whatever the migrations define is what comes back. Primary keys stay: the rows
/// arrive in key order, which keeps their inserts cheap. Needs the table owner's
/// rights, like the migrations; everything is undone by a rollback.
struct DeferredSchema {
    /// (table, quoted constraint name, definition)
    foreign_keys: Vec<(String, String, String)>,
    /// (index name, `CREATE INDEX …` statement)
    indexes: Vec<(String, String)>,
}

impl DeferredSchema {
    async fn drop(conn: &mut PgConnection) -> Result<Self, SeedError> {
        let foreign_keys: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT c.conrelid::regclass::text, quote_ident(c.conname), pg_get_constraintdef(c.oid)
               FROM pg_constraint c
              WHERE c.contype = 'f'
                AND c.conrelid IN ('students'::regclass, 'student_courses'::regclass)
              ORDER BY 1, 2",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error("reading the foreign keys"))?;
        // Unique indexes stay: a foreign key elsewhere may depend on them.
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
               FROM pg_index i
              WHERE i.indrelid IN ('students'::regclass, 'student_courses'::regclass)
                AND NOT i.indisunique
              ORDER BY 1",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error("reading the indexes"))?;

        for (table, name, _) in &foreign_keys {
            sqlx::query(&format!("ALTER TABLE {table} DROP CONSTRAINT {name}"))
                .execute(&mut *conn)
                .await
                .map_err(db_error("dropping a foreign key for the load (the seed needs the table owner's rights)"))?;
        }
        for (name, _) in &indexes {
            sqlx::query(&format!("DROP INDEX {name}"))
                .execute(&mut *conn)
                .await
                .map_err(db_error("dropping an index for the load (the seed needs the table owner's rights)"))?;
        }
        Ok(Self { foreign_keys, indexes })
    }

    async fn restore(self, conn: &mut PgConnection) -> Result<(), SeedError> {
        // The default 64 MB makes the 5.5 M-row enrollment index spill to disk; raise
        // it for this transaction only, and never lower a larger setting.
        sqlx::query(
            "SELECT set_config('maintenance_work_mem', '256MB', true)
               FROM pg_settings
              WHERE name = 'maintenance_work_mem' AND setting::bigint < 256 * 1024",
        )
        .execute(&mut *conn)
        .await
        .map_err(db_error("raising maintenance_work_mem for the index builds"))?;
        for (name, definition) in &self.indexes {
            let started = Instant::now();
            sqlx::query(definition).execute(&mut *conn).await.map_err(db_error("recreating an index after the load"))?;
            tracing::debug!(index = %name, elapsed_ms = started.elapsed().as_millis() as u64, "index rebuilt");
        }
        for (table, name, definition) in &self.foreign_keys {
            let started = Instant::now();
            sqlx::query(&format!("ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"))
                .execute(&mut *conn)
                .await
                .map_err(db_error("recreating (and validating) a foreign key after the load"))?;
            tracing::debug!(constraint = %name, elapsed_ms = started.elapsed().as_millis() as u64, "foreign key validated");
        }
        Ok(())
    }
}

/// Inserts `names` with ids 1, 2, … in file order into `table (id, name)`.
async fn copy_names(conn: &mut PgConnection, table: &'static str, names: &[&str]) -> Result<u64, SeedError> {
    let statement = format!("COPY {table} (id, name) FROM STDIN");
    let mut copy = CopySink::begin(conn, table, &statement).await?;
    for (id, name) in (1u64..).zip(names) {
        let buf = copy.buf();
        push_u64(buf, id);
        buf.push(b'\t');
        push_text(buf, name);
        buf.push(b'\n');
    }
    copy.finish(names.len() as u64).await
}

/// One `COPY … FROM STDIN` in progress, with a reusable send buffer.
struct CopySink<'c> {
    copy: PgCopyIn<&'c mut PgConnection>,
    buf: Vec<u8>,
    table: &'static str,
    started: Instant,
}

impl<'c> CopySink<'c> {
    async fn begin(conn: &'c mut PgConnection, table: &'static str, statement: &str) -> Result<Self, SeedError> {
        let copy = conn.copy_in_raw(statement).await.map_err(db_error("starting a COPY"))?;
        Ok(Self { copy, buf: Vec::with_capacity(COPY_CHUNK_BYTES + 4096), table, started: Instant::now() })
    }

    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    async fn flush_if_full(&mut self) -> Result<(), SeedError> {
        if self.buf.len() >= COPY_CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SeedError> {
        if !self.buf.is_empty() {
            self.copy.send(self.buf.as_slice()).await.map_err(db_error("sending COPY data"))?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Sends an already encoded buffer (whole rows) in chunks.
    async fn send_all(&mut self, data: &[u8]) -> Result<(), SeedError> {
        self.flush().await?;
        // Chunk boundaries need not fall on row boundaries: the server reassembles
        // the stream.
        for chunk in data.chunks(COPY_CHUNK_BYTES) {
            self.copy.send(chunk).await.map_err(db_error("sending COPY data"))?;
        }
        Ok(())
    }

    /// Ends the COPY and checks the server stored exactly `expected` rows. Errors the
    /// server found in the data (a constraint, a trigger) surface here.
    async fn finish(mut self, expected: u64) -> Result<u64, SeedError> {
        self.flush().await?;
        let table = self.table;
        let actual = self.copy.finish().await.map_err(db_error("finishing a COPY"))?;
        tracing::debug!(
            table,
            rows = actual,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "COPY done (including its statement triggers)"
        );
        if actual != expected {
            return Err(SeedError::RowCount { table, expected, actual });
        }
        Ok(actual)
    }
}

// ---------------------------------------------------------------------------------------
// Pure part: the seed lists, the row generator and the COPY text encoding.
// ---------------------------------------------------------------------------------------

/// The seed lists, one entry per non-empty line, in file order (a university's or a
/// course's id is its line number among the non-empty lines).
#[derive(Debug, Clone)]
pub(crate) struct SeedData {
    pub first_names: Vec<&'static str>,
    pub last_names: Vec<&'static str>,
    pub universities: Vec<&'static str>,
    pub courses: Vec<&'static str>,
}

impl SeedData {
    pub(crate) fn embedded() -> Self {
        fn lines(text: &'static str) -> Vec<&'static str> {
            text.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
        }
        Self { first_names: lines(FIRST_NAMES), last_names: lines(LAST_NAMES), universities: lines(UNIVERSITIES), courses: lines(COURSES) }
    }
}

/// A student's distinct course ids (1-based), sorted ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CourseSet {
    len: u8,
    ids: [u16; MAX_COURSES_PER_STUDENT],
}

impl CourseSet {
    pub(crate) fn as_slice(&self) -> &[u16] {
        &self.ids[..usize::from(self.len)]
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }
}

/// One generated student with its enrollments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StudentRow {
    pub id: u64,
    pub first_name: &'static str,
    pub last_name: &'static str,
    pub age: u8,
    pub year_in_school: &'static str,
    pub university_id: Option<u64>,
    pub courses: CourseSet,
}

const YEARS: [&str; 4] = ["FR", "SO", "JR", "SR"];
const MIN_AGE: u8 = 15;
const MAX_AGE: u8 = 70;

/// Relative weight of each age: a peak at 18–22, a tail to 30, a few mature students
/// (31–70, ~3 %) and a few early starters (15–16). About 96 % fall in 17..=30.
fn age_weight(age: u8) -> f64 {
    match age {
        15 | 16 => 0.25,
        17 => 4.0,
        18 => 14.0,
        19 | 20 => 16.0,
        21 => 15.0,
        22 => 11.0,
        23 => 7.0,
        24 => 5.0,
        25 => 3.5,
        26 => 2.5,
        27 => 2.0,
        28 => 1.5,
        29 => 1.2,
        30 => 1.0,
        31..=70 => 0.08,
        _ => 0.0,
    }
}

/// Weights over `[no university, university 1 (MIT), university 2, …]`.
pub(crate) fn university_weights(universities: usize) -> Vec<f64> {
    if universities == 0 {
        return vec![1.0];
    }
    let mut weights = Vec::with_capacity(universities + 1);
    weights.push(NO_UNIVERSITY_SHARE);
    let others: Vec<f64> = (2..=universities).map(|rank| (rank as f64).powf(-ZIPF_EXPONENT)).collect();
    let others_total: f64 = others.iter().sum();
    if others.is_empty() {
        weights.push(1.0 - NO_UNIVERSITY_SHARE);
    } else {
        weights.push(MIT_SHARE);
        let rest = 1.0 - NO_UNIVERSITY_SHARE - MIT_SHARE;
        weights.extend(others.iter().map(|w| rest * w / others_total));
    }
    weights
}

/// Deterministic stream of students with ids `1..=count`.
///
/// Determinism holds for a given build: `StdRng` and rand's samplers are stable within
/// rand 0.8, and the lists are compiled in. Changing a seed list changes the data.
pub(crate) struct StudentGenerator<'d> {
    data: &'d SeedData,
    rng: StdRng,
    university: WeightedIndex<f64>,
    age: WeightedIndex<f64>,
    next_id: u64,
    last_id: u64,
}

impl<'d> StudentGenerator<'d> {
    pub(crate) fn new(data: &'d SeedData, seed: u64, count: u64) -> Self {
        // Neither list is empty and every weight is finite and non-negative, so the
        // constructors cannot fail.
        let university = WeightedIndex::new(university_weights(data.universities.len())).expect("university weights are valid");
        let age = WeightedIndex::new((MIN_AGE..=MAX_AGE).map(age_weight)).expect("age weights are valid");
        assert!(!data.first_names.is_empty() && !data.last_names.is_empty(), "the seed name lists are empty");
        Self { data, rng: StdRng::seed_from_u64(seed), university, age, next_id: 1, last_id: count }
    }

    fn generate(&mut self, id: u64) -> StudentRow {
        let rng = &mut self.rng;
        let first_name = self.data.first_names[rng.gen_range(0..self.data.first_names.len())];
        let last_name = self.data.last_names[rng.gen_range(0..self.data.last_names.len())];
        let age = MIN_AGE + self.age.sample(rng) as u8;
        // Year loosely follows age (18 → FR, 21+ → SR) but not strictly: people start
        // late, repeat years, switch programmes.
        let typical_year = usize::from(age.saturating_sub(18)).min(3);
        let year = if rng.gen_bool(0.7) { typical_year } else { rng.gen_range(0..YEARS.len()) };
        let university_id = match self.university.sample(rng) {
            0 => None,
            index => Some(index as u64),
        };

        // k distinct courses by rejection: k ≤ 10 of dozens of courses, so a retry is
        // rare, and a fixed array avoids an allocation per student.
        let course_count = self.data.courses.len();
        let wanted = MAX_COURSES_PER_STUDENT.min(course_count);
        let mut courses = CourseSet { len: 0, ids: [0; MAX_COURSES_PER_STUDENT] };
        if wanted > 0 {
            let k = rng.gen_range(1..=wanted);
            while courses.len() < k {
                let course = rng.gen_range(1..=course_count) as u16;
                if !courses.as_slice().contains(&course) {
                    courses.ids[courses.len()] = course;
                    courses.len += 1;
                }
            }
            // Ascending (student_id, course_id) keeps the primary-key inserts appending.
            courses.ids[..k].sort_unstable();
        }

        StudentRow { id, first_name, last_name, age, year_in_school: YEARS[year], university_id, courses }
    }
}

impl Iterator for StudentGenerator<'_> {
    type Item = StudentRow;

    fn next(&mut self) -> Option<StudentRow> {
        if self.next_id > self.last_id {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(self.generate(id))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.last_id + 1 - self.next_id).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

/// Appends the student as one COPY text row:
/// `id\tfirst_name\tlast_name\tage\tyear_in_school\tuniversity_id|\N\n`.
pub(crate) fn encode_student(row: &StudentRow, buf: &mut Vec<u8>) {
    push_u64(buf, row.id);
    buf.push(b'\t');
    push_text(buf, row.first_name);
    buf.push(b'\t');
    push_text(buf, row.last_name);
    buf.push(b'\t');
    push_u64(buf, u64::from(row.age));
    buf.push(b'\t');
    buf.extend_from_slice(row.year_in_school.as_bytes());
    buf.push(b'\t');
    match row.university_id {
        Some(id) => push_u64(buf, id),
        None => buf.extend_from_slice(b"\\N"),
    }
    buf.push(b'\n');
}

/// Appends one `student_id\tcourse_id\n` row per course of the student.
pub(crate) fn encode_enrollments(row: &StudentRow, buf: &mut Vec<u8>) {
    for &course in row.courses.as_slice() {
        push_u64(buf, row.id);
        buf.push(b'\t');
        push_u64(buf, u64::from(course));
        buf.push(b'\n');
    }
}

/// Decimal digits without going through `fmt` (this runs ~7 M times for N = 1 M).
fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[start..]);
}

/// Appends `s` escaped for COPY's text format. The seed lists hold only letters, but a
/// backslash, tab or newline in a future entry must not shift the columns.
fn push_text(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        buf.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const TUTORIAL_UNIVERSITIES: [&str; 6] = ["MIT", "MGU", "CalTech", "KPI", "DPI", "PSTU"];

    fn generate(seed: u64, count: u64) -> Vec<StudentRow> {
        let data = SeedData::embedded();
        StudentGenerator::new(&data, seed, count).collect()
    }

    fn assert_unique_and_sized(what: &str, names: &[&str]) {
        let mut seen = HashSet::new();
        for name in names {
            let chars = name.chars().count();
            assert!((1..=50).contains(&chars), "{what}: {name:?} has {chars} chars");
            assert_eq!(name.trim(), *name, "{what}: {name:?} has surrounding spaces");
            assert!(!name.chars().any(char::is_control), "{what}: {name:?} has a control character");
            assert!(seen.insert(*name), "{what}: {name:?} is listed twice");
        }
    }

    #[test]
    fn name_lists_are_valid() {
        let data = SeedData::embedded();
        for (what, names) in [("first names", &data.first_names), ("last names", &data.last_names)] {
            assert!(names.len() >= 200, "{what}: only {} entries", names.len());
            assert_unique_and_sized(what, names);
            for name in names.iter() {
                assert!(
                    name.chars().all(|c| c.is_alphabetic() && u32::from(c) <= 0xFF),
                    "{what}: {name:?} must be ASCII or Latin-1 letters only"
                );
            }
        }
    }

    #[test]
    fn universities_start_with_the_tutorials() {
        let data = SeedData::embedded();
        assert_eq!(data.universities[..6], TUTORIAL_UNIVERSITIES);
        assert!(data.universities.len() >= 40, "{}", data.universities.len());
        assert_unique_and_sized("universities", &data.universities);
    }

    #[test]
    fn courses_start_with_the_tutorials() {
        let data = SeedData::embedded();
        let tutorial: Vec<String> = ["CS", "MATH", "CHEM", "PHYS"]
            .iter()
            .flat_map(|subject| [101, 102, 103, 201, 202, 203, 301, 302, 303].map(|n| format!("{subject}{n}")))
            .collect();
        assert_eq!(data.courses[..36], tutorial);
        assert!(data.courses.len() >= 60, "{}", data.courses.len());
        assert!(data.courses.len() <= usize::from(u16::MAX));
        assert_unique_and_sized("courses", &data.courses);
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        let a = generate(42, 5_000);
        assert_eq!(a, generate(42, 5_000));
        assert_ne!(a, generate(43, 5_000));
        // A larger N extends the same stream: the first rows do not change.
        assert_eq!(a[..], generate(42, 6_000)[..5_000]);
        assert_eq!(a.iter().map(|r| r.id).collect::<Vec<_>>(), (1..=5_000).collect::<Vec<_>>());
    }

    #[test]
    fn zero_students_is_empty() {
        assert!(generate(1, 0).is_empty());
    }

    #[test]
    fn university_weights_sum_to_one_and_decay() {
        for n in [0, 1, 2, 6, 52] {
            let w = university_weights(n);
            assert_eq!(w.len(), n + 1);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "n = {n}: {w:?}");
        }
        let w = university_weights(52);
        assert_eq!(w[1], MIT_SHARE);
        assert!(w[2] < w[1], "MIT must be the largest: {w:?}");
        assert!(w[2..].windows(2).all(|p| p[0] > p[1]), "{w:?}");
    }

    #[test]
    fn university_skew_is_proportional() {
        let data = SeedData::embedded();
        for (n, tolerance) in [(16_000u64, 0.02), (100_000, 0.01)] {
            let rows = generate(7, n);
            let mut counts = vec![0u64; data.universities.len() + 1];
            for row in &rows {
                counts[row.university_id.map_or(0, |id| id as usize)] += 1;
            }
            let share = |count: u64| count as f64 / n as f64;
            let mit = share(counts[1]);
            assert!((mit - 0.10).abs() <= tolerance, "N = {n}: MIT share {mit}");
            let none = share(counts[0]);
            assert!((none - 0.02).abs() <= tolerance / 2.0, "N = {n}: NULL share {none}");
            let largest_other = counts[2..].iter().max().copied().unwrap_or(0);
            assert!(counts[1] > largest_other, "N = {n}: {counts:?}");
            // Zipf-like: the head holds much more than the tail, and every university
            // still has students.
            assert!(counts[2] > 3 * counts[data.universities.len()], "{counts:?}");
            assert!(counts[1..].iter().all(|&c| c > 0), "{counts:?}");
        }
    }

    #[test]
    fn rows_are_valid() {
        let data = SeedData::embedded();
        let rows = generate(11, 100_000);
        let mut in_typical_range = 0;
        let mut enrollments = 0;
        for row in &rows {
            assert!((1..=100).contains(&row.age), "{row:?}");
            if (17..=30).contains(&row.age) {
                in_typical_range += 1;
            }
            assert!(YEARS.contains(&row.year_in_school), "{row:?}");
            assert!(row.first_name.chars().count() <= 50);
            assert!(row.last_name.chars().count() <= 50);
            if let Some(id) = row.university_id {
                assert!((1..=data.universities.len() as u64).contains(&id), "{row:?}");
            }
            let courses = row.courses.as_slice();
            assert!((1..=10).contains(&courses.len()), "{row:?}");
            assert!(courses.windows(2).all(|p| p[0] < p[1]), "sorted, distinct: {row:?}");
            assert!(courses.iter().all(|&c| (1..=data.courses.len()).contains(&usize::from(c))));
            enrollments += courses.len();
        }
        assert!(in_typical_range as f64 >= 0.9 * rows.len() as f64, "{in_typical_range}");
        let mean = enrollments as f64 / rows.len() as f64;
        assert!((mean - 5.5).abs() < 0.05, "mean courses per student {mean}");
        // Every course count from 1 to 10 occurs, and all four years.
        let counts: HashSet<usize> = rows.iter().map(|r| r.courses.len()).collect();
        assert_eq!(counts.len(), 10);
        let years: HashSet<&str> = rows.iter().map(|r| r.year_in_school).collect();
        assert_eq!(years.len(), 4);
    }

    #[test]
    fn encodes_copy_text_rows() {
        let mut courses = CourseSet { len: 2, ids: [0; MAX_COURSES_PER_STUDENT] };
        courses.ids[..2].copy_from_slice(&[3, 40]);
        let mut row = StudentRow {
            id: 1234567890,
            first_name: "Zoë",
            last_name: "Tab\there\\",
            age: 20,
            year_in_school: "FR",
            university_id: Some(1),
            courses,
        };
        let mut buf = Vec::new();
        encode_student(&row, &mut buf);
        assert_eq!(String::from_utf8(buf).unwrap(), "1234567890\tZoë\tTab\\there\\\\\t20\tFR\t1\n");

        row.university_id = None;
        row.id = 0;
        let mut buf = Vec::new();
        encode_student(&row, &mut buf);
        assert!(buf.ends_with(b"\tFR\t\\N\n"), "{:?}", String::from_utf8_lossy(&buf));
        assert!(buf.starts_with(b"0\t"));

        let mut buf = Vec::new();
        encode_enrollments(&row, &mut buf);
        assert_eq!(buf, b"0\t3\n0\t40\n");

        let mut buf = Vec::new();
        push_u64(&mut buf, u64::MAX);
        assert_eq!(buf, u64::MAX.to_string().as_bytes());
    }
}

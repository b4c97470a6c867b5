//! What a writer does: a weighted choice among operations on students, enrollments,
//! universities and courses — single rows, transactions (committed, rolled back, to a
//! savepoint), statements over thousands of rows — and the SQL of each.

use futures::future::BoxFuture;
use rand::{rngs::StdRng, seq::SliceRandom, Rng};
use sqlx::{Connection, PgConnection};

use crate::writers::{count, exec, some, some_row, Ops};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    UpdateStudent,
    InsertStudent,
    DeleteStudent,
    Enroll,
    Unenroll,
    ChangeUniversity,
    RenameUniversity,
    RenameCourse,
    InsertUniversity,
    InsertCourse,
    DeleteUniversity,
    DeleteCourse,
    MultiStatementTx,
    RolledBackTx,
    SavepointRollback,
    BulkUpdate,
    BulkEnroll,
    BulkUnenroll,
    BulkInsert,
    BulkDelete,
    MergeUniversities,
    MoveStudentId,
    NoopBulkUpdate,
}

/// Every operation, with its weight in the choice and its name in the summary ([`Ops::OPS`]).
const OPS: &[(Op, u32, &str)] = &[
    (Op::UpdateStudent, 240, "update student"),
    (Op::InsertStudent, 70, "insert student (+ enrollments)"),
    (Op::DeleteStudent, 50, "delete student"),
    (Op::Enroll, 110, "enroll"),
    (Op::Unenroll, 80, "unenroll"),
    (Op::ChangeUniversity, 60, "change a student's university"),
    (Op::RenameUniversity, 10, "rename university"),
    (Op::RenameCourse, 10, "rename course"),
    (Op::InsertUniversity, 12, "insert university (+ students moved in)"),
    (Op::InsertCourse, 12, "insert course (+ students enrolled)"),
    (Op::DeleteUniversity, 10, "delete university"),
    (Op::DeleteCourse, 10, "delete course"),
    (Op::MultiStatementTx, 50, "multi-statement transaction"),
    (Op::RolledBackTx, 40, "transaction rolled back"),
    (Op::SavepointRollback, 20, "rollback to savepoint, then commit"),
    (Op::BulkUpdate, 12, "bulk update (thousands of rows)"),
    (Op::BulkEnroll, 5, "bulk enroll"),
    (Op::BulkUnenroll, 5, "bulk unenroll"),
    (Op::BulkInsert, 5, "bulk insert students"),
    (Op::BulkDelete, 5, "bulk delete students"),
    (Op::MergeUniversities, 5, "merge universities (move all students)"),
    (Op::MoveStudentId, 10, "change a student's id"),
    (Op::NoopBulkUpdate, 4, "no-op bulk update"),
];

impl Ops for Op {
    const SMALL: Op = Op::UpdateStudent;
    const OPS: &'static [(Op, u32, &'static str)] = OPS;

    /// A trickle of single-student changes that leaves the number of students alone.
    fn is_calm(self) -> bool {
        matches!(self, Op::UpdateStudent | Op::Enroll | Op::Unenroll | Op::ChangeUniversity | Op::SavepointRollback | Op::RolledBackTx)
    }

    fn is_bulk(self) -> bool {
        use Op::*;
        matches!(self, BulkUpdate | BulkEnroll | BulkUnenroll | BulkInsert | BulkDelete | MergeUniversities | NoopBulkUpdate)
    }

    /// Keeps the number of universities and courses within bounds.
    fn rebalance(c: &mut PgConnection, op: Op) -> BoxFuture<'_, Result<Op, sqlx::Error>> {
        Box::pin(async move {
            Ok(match op {
                Op::InsertUniversity if count(c, "universities").await? > 120 => Op::DeleteUniversity,
                Op::DeleteUniversity if count(c, "universities").await? < 10 => Op::InsertUniversity,
                Op::InsertCourse if count(c, "courses").await? > 150 => Op::DeleteCourse,
                Op::DeleteCourse if count(c, "courses").await? < 10 => Op::InsertCourse,
                other => other,
            })
        })
    }

    fn run<'a>(
        c: &'a mut PgConnection,
        rng: &'a mut StdRng,
        op: Op,
        w: usize,
        n: u64,
        target: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(run_op(c, rng, op, w, n, target))
    }
}

const FIRST: &[&str] = &["Ann", "Bob", "Zoë", "José", "Łukasz", "Anne-Marie", "Jean Luc", "ann", "Ängel", "Mia", "Noah", "Chloé"];
const LAST: &[&str] = &["Lee", "O'Brien", "Müller", "García", "van der Berg", "Nguyễn", "lee", "Smith", "Østergaard", "Dupont"];
const YEARS: &[&str] = &["FR", "SO", "JR", "SR"];
/// Names several writers may pick at once: unique-name violations are part of the game.
const SHARED_NAMES: &[&str] = &["Shared Name A", "Shared Name B", "shared name a", "Ünïversität Shared"];
/// Course name prefixes whose byte order differs from a linguistic order.
const COURSE_PREFIX: &[&str] = &["CS", "cs", "Math", "ÉCO", "bio", "Zoo", "_x", "ß-Lab", "a"];

pub fn first(rng: &mut StdRng) -> &'static str {
    FIRST.choose(rng).unwrap()
}
pub fn last(rng: &mut StdRng) -> &'static str {
    LAST.choose(rng).unwrap()
}
pub fn year(rng: &mut StdRng) -> &'static str {
    YEARS.choose(rng).unwrap()
}
pub fn age(rng: &mut StdRng) -> i32 {
    rng.gen_range(1..=100)
}

fn university_name(rng: &mut StdRng, w: usize, n: u64) -> String {
    if rng.gen_bool(0.15) {
        return SHARED_NAMES.choose(rng).unwrap().to_string();
    }
    let word = ["University", "Universität", "École", "Institute", "College", "Sø Akademi"].choose(rng).unwrap();
    format!("{word} {w}-{n}")
}

fn course_name(rng: &mut StdRng, w: usize, n: u64) -> String {
    if rng.gen_bool(0.1) {
        return SHARED_NAMES.choose(rng).unwrap().to_string();
    }
    format!("{}{}{w}", COURSE_PREFIX.choose(rng).unwrap(), n % 1000)
}

/// One random update of one student, on any executor (a transaction or the connection).
async fn update_one(c: &mut PgConnection, rng: &mut StdRng, id: i64) -> Result<u64, sqlx::Error> {
    let q = match rng.gen_range(0..6) {
        0 => sqlx::query("UPDATE students SET first_name = $2 WHERE id = $1").bind(id).bind(first(rng)),
        1 => sqlx::query("UPDATE students SET last_name = $2 WHERE id = $1").bind(id).bind(last(rng)),
        2 => sqlx::query("UPDATE students SET age = $2 WHERE id = $1").bind(id).bind(age(rng)),
        3 => sqlx::query("UPDATE students SET year_in_school = $2 WHERE id = $1").bind(id).bind(year(rng)),
        4 => sqlx::query("UPDATE students SET first_name = $2, last_name = $3, age = $4, year_in_school = $5 WHERE id = $1")
            .bind(id)
            .bind(first(rng))
            .bind(last(rng))
            .bind(age(rng))
            .bind(year(rng)),
        // Sets what is already there: marks nothing.
        _ => sqlx::query("UPDATE students SET age = age WHERE id = $1").bind(id),
    };
    exec(c, q).await
}

/// One operation (see [`Ops::run`]).
async fn run_op(c: &mut PgConnection, rng: &mut StdRng, op: Op, w: usize, n: u64, target: i64) -> Result<u64, sqlx::Error> {
    use sqlx::query as q;
    match op {
        Op::UpdateStudent => {
            let Some(id) = some(c, rng, "students").await? else { return Ok(0) };
            update_one(c, rng, id).await
        }
        Op::InsertStudent => {
            let uni = if rng.gen_bool(0.8) { some_row(c, "universities").await? } else { None };
            let mut tx = c.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO students (first_name, last_name, age, year_in_school, university_id) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(first(rng))
            .bind(last(rng))
            .bind(age(rng))
            .bind(year(rng))
            .bind(uni)
            .fetch_one(&mut *tx)
            .await?;
            let k = rng.gen_range(0..4);
            if k > 0 {
                let enroll = "INSERT INTO student_courses (student_id, course_id)
                              SELECT $1, id FROM (SELECT id FROM courses ORDER BY random() LIMIT $2) c ON CONFLICT DO NOTHING";
                exec(&mut tx, q(enroll).bind(id).bind(k as i64)).await?;
            }
            tx.commit().await?;
            Ok(1 + k)
        }
        Op::DeleteStudent => {
            let Some(id) = some(c, rng, "students").await? else { return Ok(0) };
            exec(c, q("DELETE FROM students WHERE id = $1").bind(id)).await
        }
        Op::Enroll => {
            let (Some(s), Some(course)) = (some(c, rng, "students").await?, some_row(c, "courses").await?) else { return Ok(0) };
            exec(c, q("INSERT INTO student_courses (student_id, course_id) VALUES ($1, $2) ON CONFLICT DO NOTHING").bind(s).bind(course))
                .await
        }
        Op::Unenroll => {
            let Some(s) = some(c, rng, "students").await? else { return Ok(0) };
            let unenroll = "DELETE FROM student_courses WHERE (student_id, course_id) IN
                              (SELECT student_id, course_id FROM student_courses WHERE student_id >= $1 ORDER BY student_id LIMIT 1)";
            exec(c, q(unenroll).bind(s)).await
        }
        Op::ChangeUniversity => {
            let Some(s) = some(c, rng, "students").await? else { return Ok(0) };
            let uni = if rng.gen_bool(0.85) { some_row(c, "universities").await? } else { None };
            exec(c, q("UPDATE students SET university_id = $2 WHERE id = $1").bind(s).bind(uni)).await
        }
        Op::RenameUniversity => {
            let Some(u) = some_row(c, "universities").await? else { return Ok(0) };
            exec(c, q("UPDATE universities SET name = $2 WHERE id = $1").bind(u).bind(university_name(rng, w, n))).await
        }
        Op::RenameCourse => {
            let Some(k) = some_row(c, "courses").await? else { return Ok(0) };
            exec(c, q("UPDATE courses SET name = $2 WHERE id = $1").bind(k).bind(course_name(rng, w, n))).await
        }
        Op::InsertUniversity => {
            let mut tx = c.begin().await?;
            let id: i64 = sqlx::query_scalar("INSERT INTO universities (name) VALUES ($1) RETURNING id")
                .bind(university_name(rng, w, n))
                .fetch_one(&mut *tx)
                .await?;
            let moved =
                exec(&mut tx, q("UPDATE students SET university_id = $1 WHERE id % 97 = $2").bind(id).bind(rng.gen_range(0..97i64)))
                    .await?;
            tx.commit().await?;
            Ok(1 + moved)
        }
        Op::InsertCourse => {
            let mut tx = c.begin().await?;
            let id: i64 = sqlx::query_scalar("INSERT INTO courses (name) VALUES ($1) RETURNING id")
                .bind(course_name(rng, w, n))
                .fetch_one(&mut *tx)
                .await?;
            let enroll = "INSERT INTO student_courses (student_id, course_id) SELECT id, $1 FROM students WHERE id % 89 = $2";
            let enrolled = exec(&mut tx, q(enroll).bind(id).bind(rng.gen_range(0..89i64))).await?;
            tx.commit().await?;
            Ok(1 + enrolled)
        }
        Op::DeleteUniversity => {
            let Some(u) = some_row(c, "universities").await? else { return Ok(0) };
            // ON DELETE SET NULL rewrites its students' rows.
            exec(c, q("DELETE FROM universities WHERE id = $1").bind(u)).await
        }
        Op::DeleteCourse => {
            let Some(k) = some_row(c, "courses").await? else { return Ok(0) };
            // ON DELETE CASCADE removes its enrollments.
            exec(c, q("DELETE FROM courses WHERE id = $1").bind(k)).await
        }
        Op::MultiStatementTx => {
            let a = some(c, rng, "students").await?;
            let b = some(c, rng, "students").await?;
            let course = some_row(c, "courses").await?;
            let uni = some_row(c, "universities").await?;
            let mut tx = c.begin().await?;
            let mut rows = 0;
            for id in [a, b].into_iter().flatten() {
                rows += update_one(&mut tx, rng, id).await?;
            }
            if let (Some(s), Some(k)) = (a, course) {
                let enroll = "INSERT INTO student_courses (student_id, course_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";
                rows += exec(&mut tx, q(enroll).bind(s).bind(k)).await?;
            }
            if let Some(u) = uni {
                if rng.gen_bool(0.1) {
                    rows += exec(&mut tx, q("UPDATE universities SET name = $2 WHERE id = $1").bind(u).bind(university_name(rng, w, n)))
                        .await?;
                }
                if let Some(s) = b {
                    rows += exec(&mut tx, q("UPDATE students SET university_id = $2 WHERE id = $1").bind(s).bind(u)).await?;
                }
            }
            tx.commit().await?;
            Ok(rows)
        }
        Op::RolledBackTx => {
            // Everything here is undone: nothing of it may ever reach the index.
            let a = some(c, rng, "students").await?;
            let uni = some_row(c, "universities").await?;
            let course = some_row(c, "courses").await?;
            let mut tx = c.begin().await?;
            if let Some(id) = a {
                exec(&mut tx, q("UPDATE students SET first_name = 'ROLLED BACK', age = 99 WHERE id = $1").bind(id)).await?;
                if rng.gen_bool(0.3) {
                    exec(&mut tx, q("DELETE FROM students WHERE id = $1").bind(id)).await?;
                }
            }
            let ghost = "INSERT INTO students (first_name, last_name, age, year_in_school) VALUES ('ROLLED BACK', 'Ghost', 50, 'SR')";
            exec(&mut tx, q(ghost)).await?;
            if let Some(u) = uni {
                exec(&mut tx, q("UPDATE universities SET name = 'ROLLED BACK ' || id WHERE id = $1").bind(u)).await?;
            }
            if let Some(k) = course {
                if rng.gen_bool(0.3) {
                    exec(&mut tx, q("DELETE FROM courses WHERE id = $1").bind(k)).await?;
                } else {
                    exec(&mut tx, q("UPDATE courses SET name = 'ROLLED BACK ' || id WHERE id = $1").bind(k)).await?;
                }
            }
            if rng.gen_bool(0.2) {
                exec(&mut tx, q("UPDATE students SET last_name = 'ROLLED BACK' WHERE id % 13 = $1").bind(rng.gen_range(0..13i64))).await?;
            }
            tx.rollback().await?;
            Ok(0)
        }
        Op::SavepointRollback => {
            let a = some(c, rng, "students").await?;
            let b = some(c, rng, "students").await?;
            let course = some_row(c, "courses").await?;
            let mut tx = c.begin().await?;
            let mut rows = 0;
            if let Some(id) = a {
                rows += update_one(&mut tx, rng, id).await?;
            }
            exec(&mut tx, q("SAVEPOINT sp")).await?;
            if let Some(id) = b {
                exec(&mut tx, q("UPDATE students SET last_name = 'UNDONE BY SAVEPOINT' WHERE id = $1").bind(id)).await?;
            }
            if let Some(k) = course {
                exec(&mut tx, q("UPDATE courses SET name = 'UNDONE ' || id WHERE id = $1").bind(k)).await?;
            }
            exec(&mut tx, q("ROLLBACK TO SAVEPOINT sp")).await?;
            if let Some(id) = b {
                rows += exec(&mut tx, q("UPDATE students SET age = $2 WHERE id = $1").bind(id).bind(age(rng))).await?;
            }
            tx.commit().await?;
            Ok(rows)
        }
        Op::BulkUpdate => {
            let statement = match rng.gen_range(0..4) {
                0 => q("UPDATE students SET age = 1 + (age + $1) % 100 WHERE id % $2 = $3")
                    .bind(rng.gen_range(1..50i32))
                    .bind(rng.gen_range(2..5i64))
                    .bind(rng.gen_range(0..2i64)),
                1 => {
                    let max: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM students").fetch_one(&mut *c).await?;
                    let lo = rng.gen_range(0..max.max(1));
                    q("UPDATE students SET last_name = $1 WHERE id BETWEEN $2 AND $3")
                        .bind(format!("{} {w}", last(rng)))
                        .bind(lo)
                        .bind(lo + rng.gen_range(1000..4000))
                }
                2 => q("UPDATE students SET year_in_school = (ARRAY['FR','SO','JR','SR'])[1 + (id + $1) % 4] WHERE id % 3 <> $2")
                    .bind(rng.gen_range(0..4i64))
                    .bind(rng.gen_range(0..3i64)),
                _ => q("UPDATE students SET first_name = $1, age = 1 + (id % 100) WHERE id % $2 = 0")
                    .bind(first(rng))
                    .bind(rng.gen_range(2..4i64)),
            };
            exec(c, statement).await
        }
        Op::BulkEnroll => {
            let Some(k) = some_row(c, "courses").await? else { return Ok(0) };
            let enroll =
                "INSERT INTO student_courses (student_id, course_id) SELECT id, $1 FROM students WHERE id % $2 = $3 ON CONFLICT DO NOTHING";
            exec(c, q(enroll).bind(k).bind(rng.gen_range(3..8i64)).bind(rng.gen_range(0..3i64))).await
        }
        Op::BulkUnenroll => {
            let Some(k) = some_row(c, "courses").await? else { return Ok(0) };
            exec(c, q("DELETE FROM student_courses WHERE course_id = $1 OR student_id % 41 = $2").bind(k).bind(rng.gen_range(0..41i64)))
                .await
        }
        Op::BulkInsert | Op::BulkDelete => {
            // Keep the directory near its starting size.
            if count(c, "students").await? < target {
                let uni = some_row(c, "universities").await?;
                let insert = "INSERT INTO students (first_name, last_name, age, year_in_school, university_id)
                              SELECT 'Bulk' || g, $1, 1 + g % 100, (ARRAY['FR','SO','JR','SR'])[1 + g % 4], CASE WHEN g % 3 = 0 THEN NULL ELSE $2 END
                                FROM generate_series(1, $3) g";
                exec(c, q(insert).bind(format!("{} {w}", last(rng))).bind(uni).bind(rng.gen_range(200..1000i64))).await
            } else {
                let delete = "DELETE FROM students WHERE id IN (SELECT id FROM students WHERE id % 17 = $1 ORDER BY id LIMIT $2)";
                exec(c, q(delete).bind(rng.gen_range(0..17i64)).bind(rng.gen_range(200..800i64))).await
            }
        }
        Op::MergeUniversities => {
            let (Some(a), Some(b)) = (some_row(c, "universities").await?, some_row(c, "universities").await?) else { return Ok(0) };
            exec(c, q("UPDATE students SET university_id = $1 WHERE university_id = $2").bind(a).bind(b)).await
        }
        Op::MoveStudentId => {
            // The old document must go and the new one come. A student with enrollments
            // cannot move (no ON UPDATE CASCADE): the FK refuses, which is fine.
            let Some(s) = some(c, rng, "students").await? else { return Ok(0) };
            let moved = "UPDATE students SET id = nextval(pg_get_serial_sequence('students', 'id'))
                          WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM student_courses WHERE student_id = $1)";
            exec(c, q(moved).bind(s)).await
        }
        Op::NoopBulkUpdate => {
            exec(c, q("UPDATE students SET age = age, university_id = university_id WHERE id % 5 = $1").bind(rng.gen_range(0..5i64))).await
        }
    }
}

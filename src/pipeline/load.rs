//! Load: the current rows of a batch of students, in one query (no N+1), as documents.
//! A sync batch reads a set of ids (a student that no longer exists comes back as `None`
//! and becomes a `delete`); a reindex chunk reads an id range.

use sqlx::PgExecutor;

use super::Op;
use crate::document::{StudentDoc, UniversityRef};

type Row = (i64, String, String, i32, String, Option<i64>, Option<String>, Option<Vec<String>>);

/// The one query; `{students}` and `{enrollments}` are the row filters of the two sides.
fn query(students: &str, enrollments: &str) -> String {
    format!(
        "SELECT s.id, s.first_name, s.last_name, s.age, s.year_in_school::text,
                u.id, u.name, e.names
           FROM students s
           LEFT JOIN universities u ON u.id = s.university_id
           LEFT JOIN (SELECT sc.student_id, array_agg(c.name) AS names
                        FROM student_courses sc JOIN courses c ON c.id = sc.course_id
                       WHERE {enrollments}
                       GROUP BY sc.student_id) e ON e.student_id = s.id
          WHERE {students}"
    )
}

fn build(row: Row) -> (i64, StudentDoc) {
    let (id, first, last, age, year, uid, uname, names) = row;
    let university = match (uid, uname) {
        (Some(id), Some(name)) => Some(UniversityRef { id, name }),
        _ => None,
    };
    (id, StudentDoc::build(id, first, last, age, year, university, names.unwrap_or_default()))
}

/// The op of each of `ids`, in the order of `ids`: its document, or a delete for a student
/// that is gone.
pub async fn load(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<Vec<(i64, Op)>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&query("s.id = ANY($1)", "sc.student_id = ANY($1)")).bind(ids).fetch_all(db).await?;
    let mut found: std::collections::HashMap<i64, StudentDoc> = rows.into_iter().map(build).collect();
    Ok(ids.iter().map(|id| (*id, found.remove(id).map_or(Op::Delete, Op::Index))).collect())
}

/// Documents of every student with `lo <= id < hi` (no upper bound when `hi` is None), in
/// id order.
pub async fn load_range(db: impl PgExecutor<'_>, lo: i64, hi: Option<i64>) -> Result<Vec<(i64, Op)>, sqlx::Error> {
    // Two statements rather than `$2 IS NULL OR id < $2`, which a generic plan would turn
    // into a scan of every id above `lo` for every chunk.
    let rows: Vec<Row> = match hi {
        Some(hi) => {
            let sql = query("s.id >= $1 AND s.id < $2", "sc.student_id >= $1 AND sc.student_id < $2") + " ORDER BY s.id";
            sqlx::query_as(&sql).bind(lo).bind(hi).fetch_all(db).await?
        }
        None => {
            let sql = query("s.id >= $1", "sc.student_id >= $1") + " ORDER BY s.id";
            sqlx::query_as(&sql).bind(lo).fetch_all(db).await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|r| {
            let (id, doc) = build(r);
            (id, Op::Index(doc))
        })
        .collect())
}

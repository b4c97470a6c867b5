//! Load: the current rows of a batch of students, in one query (no N+1), as documents.
//! A student that no longer exists comes back as `None` and becomes a `delete`.

use sqlx::PgPool;

use crate::document::{StudentDoc, UniversityRef};

type Row = (i64, String, String, i32, String, Option<i64>, Option<String>, Option<Vec<String>>);

/// Documents for `ids`, in the order of `ids`; `None` for a student that is gone.
pub async fn load(pool: &PgPool, ids: &[i64]) -> Result<Vec<(i64, Option<StudentDoc>)>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.id, s.first_name, s.last_name, s.age, s.year_in_school::text,
                u.id, u.name, e.names
           FROM students s
           LEFT JOIN universities u ON u.id = s.university_id
           LEFT JOIN (SELECT sc.student_id, array_agg(c.name) AS names
                        FROM student_courses sc JOIN courses c ON c.id = sc.course_id
                       WHERE sc.student_id = ANY($1)
                       GROUP BY sc.student_id) e ON e.student_id = s.id
          WHERE s.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut found: std::collections::HashMap<i64, StudentDoc> = rows
        .into_iter()
        .map(|(id, first, last, age, year, uid, uname, names)| {
            let university = match (uid, uname) {
                (Some(id), Some(name)) => Some(UniversityRef { id, name }),
                _ => None,
            };
            (id, StudentDoc::build(first, last, age, year, university, names.unwrap_or_default()))
        })
        .collect();
    Ok(ids.iter().map(|id| (*id, found.remove(id))).collect())
}

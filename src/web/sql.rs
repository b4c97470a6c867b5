//! `engine=sql`: the same request answered by PostgreSQL with `GROUP BY`, with the same
//! disjunctive semantics as the index (each facet counted under every selection but its
//! own), so the two can be compared value for value and timed side by side.
//!
//! Statements are built from fixed fragments; every value from the request is a bind
//! parameter. Hits, the total, each facet and the histogram are separate statements run
//! concurrently on the pool.
//!
//! Where SQL differs from the index, on purpose and documented: a text query matches whole
//! words of the first or last name, case-insensitively, without typo tolerance, and every
//! hit scores 1 (relevance order is then id order); distinct counts are exact.

use futures::future::try_join_all;
use sqlx::{postgres::PgArguments, Arguments, PgPool, Row};

use super::{
    params::{CursorKey, Facet, SearchRequest, SortKey, AGE_INTERVAL, MAX_RESULT_WINDOW},
    response::{bucket_order, Hit, NameHighlight, Raw, RawBucket, RawFacet, Relation, Segment, Total},
};

/// A statement under construction: SQL text and its bind parameters, numbered as added.
struct Stmt {
    sql: String,
    args: PgArguments,
    n: usize,
}

impl Stmt {
    fn new() -> Stmt {
        Stmt { sql: String::new(), args: PgArguments::default(), n: 0 }
    }

    /// Adds a bind parameter and returns its placeholder (`$n`).
    fn bind<T>(&mut self, v: T) -> String
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
    {
        self.args.add(v).expect("a plain value always encodes");
        self.n += 1;
        format!("${}", self.n)
    }
}

/// `WHERE` conditions on `students s LEFT JOIN universities u`: the text query and every
/// selection but `except`'s (and the age range unless `except_age`).
fn conditions(st: &mut Stmt, req: &SearchRequest, except: Option<Facet>, except_age: bool) -> String {
    let mut c: Vec<String> = vec!["true".into()];
    for w in req.words() {
        let p = st.bind(w.to_lowercase());
        c.push(format!("(lower(s.first_name) = {p} OR lower(s.last_name) = {p})"));
    }
    for facet in Facet::ALL {
        let values = req.selected(facet);
        if Some(facet) == except || values.is_empty() {
            continue;
        }
        let p = st.bind(values.to_vec());
        c.push(match facet {
            Facet::Course => format!(
                "EXISTS (SELECT 1 FROM student_courses fc JOIN courses c2 ON c2.id = fc.course_id WHERE fc.student_id = s.id AND c2.name = ANY({p}))"
            ),
            Facet::University => format!("u.name = ANY({p})"),
            Facet::Year => format!("s.year_in_school::text = ANY({p})"),
        });
    }
    if !except_age {
        if let Some(g) = req.age.gte {
            let p = st.bind(g);
            c.push(format!("s.age >= {p}"));
        }
        if let Some(l) = req.age.lt {
            let p = st.bind(l);
            c.push(format!("s.age < {p}"));
        }
    }
    c.join(" AND ")
}

const FROM: &str = "FROM students s LEFT JOIN universities u ON u.id = s.university_id";

/// `(student, value)` rows of the distinct field.
fn distinct_rows(field: Facet) -> &'static str {
    match field {
        Facet::Course => "SELECT student_id AS sid, course_id::text AS v FROM student_courses",
        Facet::University => "SELECT s.id AS sid, u.name AS v FROM students s JOIN universities u ON u.id = s.university_id",
        Facet::Year => "SELECT id AS sid, year_in_school::text AS v FROM students",
    }
}

/// One facet's counts (every value: there are few) and, with `distinct`, the distinct
/// counts per value.
fn facet_stmt(req: &SearchRequest, facet: Option<Facet>) -> Stmt {
    let mut st = Stmt::new();
    let matching = conditions(&mut st, req, facet, facet.is_none());
    // (student, key) rows of the students matching every other selection.
    let rows = match facet {
        Some(Facet::Course) => format!(
            "SELECT sc.student_id AS sid, c.name AS k FROM student_courses sc JOIN courses c ON c.id = sc.course_id
              WHERE sc.student_id IN (SELECT s.id {FROM} WHERE {matching})"
        ),
        Some(Facet::University) => format!("SELECT s.id AS sid, u.name AS k {FROM} WHERE u.name IS NOT NULL AND {matching}"),
        Some(Facet::Year) => format!("SELECT s.id AS sid, s.year_in_school::text AS k {FROM} WHERE {matching}"),
        None => format!("SELECT s.id AS sid, ((s.age / {AGE_INTERVAL}) * {AGE_INTERVAL})::text AS k {FROM} WHERE {matching}"),
    };
    st.sql = match req.distinct {
        None => format!("WITH r AS ({rows}) SELECT k, count(*)::int8, NULL::int8 FROM r GROUP BY k"),
        Some(d) => format!(
            "WITH r AS ({rows}) SELECT r.k, count(DISTINCT r.sid)::int8, count(DISTINCT d.v)::int8
               FROM r LEFT JOIN ({}) d ON d.sid = r.sid GROUP BY r.k",
            distinct_rows(d)
        ),
    };
    st
}

fn order_by(req: &SearchRequest) -> String {
    let dir = if req.sort.descending { "DESC" } else { "ASC" };
    match req.sort.key {
        SortKey::Relevance => "s.id".into(),
        SortKey::LastName => format!("s.last_name COLLATE \"C\" {dir}, s.id"),
        SortKey::Age => format!("s.age {dir}, s.id"),
    }
}

/// Keyset condition for a cursor: strictly after (key, id) in the sort order.
fn after_condition(st: &mut Stmt, req: &SearchRequest) -> Option<String> {
    let after = req.after.as_ref()?;
    let id = st.bind(after.id);
    let cmp = if req.sort.descending { "<" } else { ">" };
    Some(match (&after.key, req.sort.key) {
        (CursorKey::Text(t), SortKey::LastName) => {
            let k = st.bind(t.clone());
            format!("(s.last_name COLLATE \"C\" {cmp} {k} COLLATE \"C\" OR (s.last_name = {k} AND s.id > {id}))")
        }
        (CursorKey::Number(n), SortKey::Age) => {
            let k = st.bind(*n as i32);
            format!("(s.age {cmp} {k} OR (s.age = {k} AND s.id > {id}))")
        }
        _ => format!("s.id > {id}"),
    })
}

fn hits_stmt(req: &SearchRequest) -> Stmt {
    let mut st = Stmt::new();
    let mut cond = conditions(&mut st, req, None, false);
    if let Some(a) = after_condition(&mut st, req) {
        cond = format!("{cond} AND {a}");
    }
    let limit = st.bind(req.size as i64 + 1);
    let offset = st.bind(if req.after.is_some() { 0 } else { (req.page as i64 - 1) * req.size as i64 });
    st.sql = format!(
        "SELECT s.id, s.first_name, s.last_name, s.age, s.year_in_school::text, u.name,
                array(SELECT c.name FROM student_courses sc JOIN courses c ON c.id = sc.course_id
                       WHERE sc.student_id = s.id ORDER BY c.name COLLATE \"C\")
           {FROM} WHERE {cond} ORDER BY {} LIMIT {limit} OFFSET {offset}",
        order_by(req)
    );
    st
}

/// Counts to 10,001 at most, as the index tracks totals to 10,000.
fn total_stmt(req: &SearchRequest) -> Stmt {
    let mut st = Stmt::new();
    let cond = conditions(&mut st, req, None, false);
    st.sql = format!("SELECT NULL::text, count(*)::int8, NULL::int8 FROM (SELECT 1 {FROM} WHERE {cond} LIMIT {}) t", MAX_RESULT_WINDOW + 1);
    st
}

type Counts = Vec<(Option<String>, i64, Option<i64>)>;

async fn counts(pool: &PgPool, st: Stmt) -> Result<Counts, sqlx::Error> {
    let rows = sqlx::query_with(&st.sql, st.args).fetch_all(pool).await?;
    rows.iter().map(|r| Ok((r.try_get::<Option<String>, _>(0).ok().flatten(), r.try_get(1)?, r.try_get(2)?))).collect()
}

/// Whole-word highlight: a name equal to a query word is marked whole.
fn highlight(name: &str, words: &[String]) -> Vec<Segment> {
    vec![Segment { text: name.to_string(), matched: words.iter().any(|w| *w == name.to_lowercase()) }]
}

fn terms(req: &SearchRequest, facet: Facet, rows: Counts) -> RawFacet {
    let search = req.facet_search(facet).map(str::to_lowercase);
    let mut all: Vec<RawBucket<String>> =
        rows.into_iter().filter_map(|(k, n, d)| Some(RawBucket { key: k?, doc_count: n as u64, distinct: d.map(|d| d as u64) })).collect();
    let selected: Vec<RawBucket<String>> = all.iter().filter(|b| req.selected(facet).contains(&b.key)).cloned().collect();
    // The facet-value search: values containing the text, ignoring case.
    if let Some(s) = &search {
        all.retain(|b| b.key.to_lowercase().contains(s.as_str()));
    }
    all.sort_by(bucket_order);
    let size = req.facet_size as usize;
    // Left out: the values after the top, except the selected ones (listed after the top).
    let sum_other = all.iter().skip(size).filter(|b| !req.selected(facet).contains(&b.key)).map(|b| b.doc_count).sum();
    all.truncate(size);
    RawFacet { top: all, sum_other, selected }
}

pub async fn search(pool: &PgPool, req: &SearchRequest) -> Result<Raw, sqlx::Error> {
    let hits_q = async {
        let st = hits_stmt(req);
        sqlx::query_with(&st.sql, st.args).fetch_all(pool).await
    };
    // Course, university, year, the histogram, then the total: one statement each.
    let stmts = vec![
        facet_stmt(req, Some(Facet::Course)),
        facet_stmt(req, Some(Facet::University)),
        facet_stmt(req, Some(Facet::Year)),
        facet_stmt(req, None),
        total_stmt(req),
    ];
    let (rows, mut facets) = tokio::try_join!(hits_q, try_join_all(stmts.into_iter().map(|st| counts(pool, st))))?;
    let words: Vec<String> = req.words().iter().map(|w| w.to_lowercase()).collect();
    let mut hits = Vec::with_capacity(rows.len());
    for r in rows {
        let (first_name, last_name): (String, String) = (r.try_get(1)?, r.try_get(2)?);
        hits.push(Hit {
            id: r.try_get(0)?,
            age: r.try_get(3)?,
            year_in_school: r.try_get::<String, _>(4)?.trim_end().to_string(),
            university: r.try_get(5)?,
            courses: r.try_get(6)?,
            score: 1.0,
            highlight: (!words.is_empty())
                .then(|| NameHighlight { first_name: highlight(&first_name, &words), last_name: highlight(&last_name, &words) }),
            first_name,
            last_name,
        });
    }
    let total_n = facets.pop().and_then(|t| t.first().map(|r| r.1)).unwrap_or(0).max(0) as u64;
    let total = if total_n > MAX_RESULT_WINDOW {
        Total { value: MAX_RESULT_WINDOW, relation: Relation::Gte }
    } else {
        Total { value: total_n, relation: Relation::Eq }
    };
    let age_rows = facets.pop().unwrap_or_default();
    let age = age_rows
        .into_iter()
        .filter_map(|(k, n, d)| Some(RawBucket { key: k?.parse().ok()?, doc_count: n as u64, distinct: d.map(|d| d as u64) }))
        .collect();
    let mut it = facets.into_iter();
    let mut next = |f: Facet| terms(req, f, it.next().unwrap_or_default());
    let facets = [next(Facet::Course), next(Facet::University), next(Facet::Year)];
    Ok(Raw { total, hits, facets, age })
}

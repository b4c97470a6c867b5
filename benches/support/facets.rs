//! 5. Facets: the tutorial's facet query answered by the index, against the same counts
//!    computed by SQL `GROUP BY`, on the same students. The counts are checked to agree.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{
    env::{BenchEnv, Services},
    reindex::Kept,
    report::{Outcome, Row},
    stats::{self, Dist},
    Plan,
};
use crate::progress;

const BENCH: &str = "5. Facets";

/// terms on course_names (every course: the tutorial asked for all of them), university.name
/// and year_in_school; histogram on age, interval 2. Hits are not fetched.
fn index_query() -> Value {
    json!({
        "size": 0,
        "aggs": {
            "course_names": {"terms": {"field": "course_names", "size": 100}},
            "university": {"terms": {"field": "university.name", "size": 10}},
            "year_in_school": {"terms": {"field": "year_in_school", "size": 10}},
            "age": {"histogram": {"field": "age", "interval": 2}}
        }
    })
}

/// The same four facets, one statement (one round trip), same ordering and sizes.
const SQL: &str = "
(SELECT 'course_names' AS facet, c.name AS key, count(*) AS n
   FROM student_courses sc JOIN courses c ON c.id = sc.course_id
  GROUP BY c.name ORDER BY n DESC, key LIMIT 100)
UNION ALL
(SELECT 'university', u.name, count(*) AS n
   FROM students s JOIN universities u ON u.id = s.university_id
  GROUP BY u.name ORDER BY n DESC, 2 LIMIT 10)
UNION ALL
(SELECT 'year_in_school', s.year_in_school::text, count(*) AS n
   FROM students s GROUP BY 2 ORDER BY n DESC, 2 LIMIT 10)
UNION ALL
(SELECT 'age', ((s.age / 2) * 2)::text, count(*) AS n
   FROM students s GROUP BY 2)";

type Facets = BTreeMap<(String, String), i64>;

fn from_index(v: &Value) -> Facets {
    let mut out = Facets::new();
    for facet in ["course_names", "university", "year_in_school", "age"] {
        for b in v["aggregations"][facet]["buckets"].as_array().cloned().unwrap_or_default() {
            let key = match &b["key"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => format!("{}", n.as_f64().unwrap_or(0.0) as i64),
                other => other.to_string(),
            };
            let n = b["doc_count"].as_i64().unwrap_or(0);
            if n > 0 {
                out.insert((facet.to_string(), key), n);
            }
        }
    }
    out
}

/// The facet query `runs` times after three warm-ups. `cache`: as sent by default (the
/// shard request cache may answer a repeat of this exact `size: 0` query); otherwise with
/// `request_cache=false`, so every run computes the aggregations.
async fn measure_index(env: &BenchEnv, runs: usize, cache: bool) -> Result<(Dist, Facets)> {
    let url = format!("{}/{}/_search{}", env.services.es_url, env.alias, if cache { "" } else { "?request_cache=false" });
    let q = index_query();
    let mut times = Vec::new();
    let mut last = Value::Null;
    for i in 0..runs + 3 {
        let t = Instant::now();
        let resp = env.http.post(&url).json(&q).send().await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        let secs = t.elapsed().as_secs_f64();
        if !status.is_success() {
            bail!("facet query answered {status}: {v}");
        }
        if i >= 3 {
            times.push(secs);
        }
        last = v;
    }
    Ok((stats::dist(&times), from_index(&last)))
}

async fn measure_sql(env: &BenchEnv, runs: usize) -> Result<(Dist, Facets)> {
    let mut conn = env.pool.acquire().await?;
    let mut times = Vec::new();
    let mut rows: Vec<(String, String, i64)> = Vec::new();
    for i in 0..runs + 3 {
        let t = Instant::now();
        rows = sqlx::query_as(SQL).fetch_all(&mut *conn).await?;
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok((stats::dist(&times), rows.into_iter().map(|(f, k, n)| ((f, k), n)).collect()))
}

#[derive(serde::Serialize)]
struct Size {
    students: u64,
    /// Seconds the first index of these students took (None: an index built earlier in the run).
    indexed_in: Option<f64>,
    /// Every run computing the aggregations (`request_cache=false`).
    index: Dist,
    /// As sent by default: repeats may come from the shard request cache.
    index_cached: Dist,
    sql: Dist,
    agree: bool,
}

/// The facets at every size of `plan.facets_index`, on an OpenSearch index of that many
/// students. An index of the right size kept by an earlier benchmark is reused, and so is a
/// database seeded with the right number of students (indexed here); `keep_for` (the
/// search application's largest size) leaves that size's database and index in
/// `kept.search` for it.
pub async fn run(plan: &Plan, services: &Services, kept: &mut Kept, keep_for: Option<u64>) -> Result<Outcome> {
    let mut sizes = Vec::new();
    for &n in &plan.facets_index {
        let mut indexed_in = None;
        let env = match kept.search.take() {
            Some(e) if e.students == n => e,
            other => {
                if let Some(e) = other {
                    kept.search = Some(e);
                }
                let (mut env, seeded) = match kept.discard_db.take() {
                    Some(e) if e.students == n => (e, true),
                    other => {
                        kept.discard_db = other;
                        (BenchEnv::new(services, "facets", plan.out_dir.join("logs")).await?, false)
                    }
                };
                let r = async {
                    if !seeded {
                        env.seed(n).await?;
                    }
                    progress!("facets: indexing {} students into the search server", stats::int(n));
                    env.first_index(2).await
                }
                .await;
                match r {
                    Ok(secs) => indexed_in = Some(secs),
                    Err(e) => {
                        env.cleanup().await;
                        return Err(e);
                    }
                }
                env
            }
        };
        let r = async {
            let in_index = env.count(json!({"match_all": {}})).await?;
            if in_index != n {
                bail!("the index holds {in_index} documents, expected {n}");
            }
            let runs = plan.facets_runs;
            let (di, fi) = measure_index(&env, runs, false).await?;
            let (dc, _) = measure_index(&env, runs, true).await?;
            let (ds, fs) = measure_sql(&env, runs).await?;
            let agree = fi == fs;
            if !agree {
                let diff: Vec<_> = fi.iter().filter(|(k, v)| fs.get(*k) != Some(*v)).take(5).collect();
                progress!("facets: index and SQL counts differ at {n}: {diff:?}");
            }
            progress!(
                "facets: {} students: index p50 {:.1} ms (request cache: {:.1} ms), SQL p50 {:.1} ms",
                stats::int(n),
                di.p50 * 1e3,
                dc.p50 * 1e3,
                ds.p50 * 1e3
            );
            Ok(Size { students: n, indexed_in, index: di, index_cached: dc, sql: ds, agree })
        }
        .await;
        if r.is_ok() && keep_for == Some(n) {
            if let Some(old) = kept.search.replace(env) {
                old.cleanup().await;
            }
        } else {
            env.cleanup().await;
        }
        sizes.push(r?);
    }

    let mut out = Outcome::default();
    for s in &sizes {
        let label = stats::int(s.students);
        let r = s.sql.p50 / s.index.p50;
        out.rows.push(
            Row::new(BENCH, format!("tutorial's facet query, {label} students: index (OpenSearch, aggregations computed each time) vs SQL `GROUP BY` (median)"))
                .figure(format!("{} (request cache on: {})", stats::ms(s.index.p50), stats::ms(s.index_cached.p50)))
                .baseline(format!("{} SQL", stats::ms(s.sql.p50)))
                .ratio(format!("{} (cached: {})", stats::ratio(r), stats::ratio(s.sql.p50 / s.index_cached.p50)))
                .target("index ≥ 10× faster (the tutorial's claim)", Some(r >= 10.0 && s.agree)),
        );
    }
    let mut sec = String::from(
        "Index side: `POST /<alias>/_search` with `size: 0` and the tutorial's aggregations — `terms` on `course_names` \
         (size 100: every course), `university.name` and `year_in_school` (size 10), `histogram` on `age` with interval 2 — \
         timed at the client (HTTP and JSON included), on the OpenSearch node (one primary shard). Twice: with \
         `request_cache=false` (every run computes the aggregations: the figure judged), and as sent by default, where \
         OpenSearch's shard request cache answers repeats of this exact `size: 0` query from memory until the next refresh \
         that changes the index. SQL side: the same four facets (same sizes and order) in one statement of four \
         `GROUP BY`s joined by `UNION ALL`, on one connection, after `VACUUM ANALYZE` (PostgreSQL's own caches warm, as \
         the index's are). Three warm-up runs each, then the runs counted. The bucket counts of both sides are compared.\n\n\
         | students | indexed in | runs | index p50 | index p95 | index p50, request cache | SQL p50 | SQL p95 | SQL ÷ index (p50) | counts agree |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in &sizes {
        sec.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            stats::int(s.students),
            s.indexed_in.map_or("(reused: built earlier in this run)".into(), |t| format!(
                "{} ({})",
                stats::secs(t),
                stats::rate(s.students as f64 / t)
            )),
            s.sql.n,
            stats::ms(s.index.p50),
            stats::ms(s.index.p95),
            stats::ms(s.index_cached.p50),
            stats::ms(s.sql.p50),
            stats::ms(s.sql.p95),
            stats::ratio(s.sql.p50 / s.index.p50),
            if s.agree { "yes" } else { "**no**" }
        ));
    }
    sec.push_str(
        "\n*Indexed in*: the first full index of those students (seeded database → OpenSearch, 2 in-process engines, \
         verification and alias swap included), done by this benchmark (or, where it says so, by an earlier one: §1 at 1,000,000 in a full run).\n",
    );
    out.section = sec;
    out.raw = json!(sizes);
    Ok(out)
}

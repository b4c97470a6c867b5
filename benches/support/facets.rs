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

async fn measure_index(env: &BenchEnv, runs: usize) -> Result<(Dist, Facets)> {
    let url = format!("{}/{}/_search", env.services.es_url, env.alias);
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
    index: Option<Dist>,
    sql: Dist,
    agree: Option<bool>,
}

pub async fn run(plan: &Plan, services: &Services, kept: &mut Kept) -> Result<Outcome> {
    let mut sizes = Vec::new();
    for &n in &plan.facets_index {
        let reuse = kept.osmem.as_ref().is_some_and(|e| e.students == n);
        let mut own = None;
        if !reuse {
            let mut env = BenchEnv::new(services, "facets", plan.out_dir.join("logs")).await?;
            let r = async {
                env.seed(n).await?;
                env.first_index(2).await?;
                Ok::<_, anyhow::Error>(())
            }
            .await;
            if let Err(e) = r {
                env.cleanup().await;
                return Err(e);
            }
            own = Some(env);
        }
        let env = own.as_ref().or(kept.osmem.as_ref()).unwrap();
        let r = async {
            let in_index = env.count(json!({"match_all": {}})).await?;
            if in_index != n {
                bail!("the index holds {in_index} documents, expected {n}");
            }
            // Fewer runs on big indices: osmem takes seconds per aggregation there.
            let runs = if n > 50_000 { (plan.facets_runs / 3).max(5) } else { plan.facets_runs };
            let (di, fi) = measure_index(env, runs).await?;
            let (ds, fs) = measure_sql(env, runs).await?;
            let agree = fi == fs;
            if !agree {
                let diff: Vec<_> = fi.iter().filter(|(k, v)| fs.get(*k) != Some(*v)).take(5).collect();
                progress!("facets: index and SQL counts differ at {n}: {diff:?}");
            }
            progress!("facets: {} students: index p50 {:.1} ms, SQL p50 {:.1} ms", stats::int(n), di.p50 * 1e3, ds.p50 * 1e3);
            Ok(Size { students: n, index: Some(di), sql: ds, agree: Some(agree) })
        }
        .await;
        if let Some(env) = own {
            env.cleanup().await;
        }
        sizes.push(r?);
    }
    for &n in &plan.facets_sql_only {
        let reuse = kept.discard_db.as_ref().is_some_and(|e| e.students == n);
        let mut own = None;
        if !reuse {
            let mut env = BenchEnv::new(services, "facets_sql", plan.out_dir.join("logs")).await?;
            if let Err(e) = env.seed(n).await {
                env.cleanup().await;
                return Err(e);
            }
            own = Some(env);
        }
        let env = own.as_ref().or(kept.discard_db.as_ref()).unwrap();
        let r = measure_sql(env, plan.facets_runs).await;
        if let Some(env) = own {
            env.cleanup().await;
        }
        let (ds, _) = r?;
        progress!("facets: {} students: SQL p50 {:.1} ms", stats::int(n), ds.p50 * 1e3);
        sizes.push(Size { students: n, index: None, sql: ds, agree: None });
    }

    let mut out = Outcome::default();
    for s in &sizes {
        let label = stats::int(s.students);
        match &s.index {
            Some(di) => out.rows.push(
                Row::new(BENCH, format!("tutorial's facet query, {label} students: index (osmem) vs SQL `GROUP BY` (median)"))
                    .figure(stats::ms(di.p50))
                    .baseline(format!("{} SQL", stats::ms(s.sql.p50)))
                    .ratio(stats::ratio(s.sql.p50 / di.p50))
                    .target("none in DESIGN (the tutorial reported 10×)", None),
            ),
            None => out.rows.push(
                Row::new(BENCH, format!("same counts by SQL `GROUP BY`, {label} students (index side: too big for osmem's memory)"))
                    .figure(format!("{} SQL", stats::ms(s.sql.p50)))
                    .target("none in DESIGN", None),
            ),
        }
    }
    let mut sec = String::from(
        "Index side: `POST /<alias>/_search` with `size: 0` and the tutorial's aggregations — `terms` on `course_names` \
         (size 100: every course), `university.name` and `year_in_school` (size 10), `histogram` on `age` with interval 2 — \
         timed at the client (HTTP and JSON included). SQL side: the same four facets (same sizes and order) in one \
         statement of four `GROUP BY`s joined by `UNION ALL`, on one connection, after `VACUUM ANALYZE`. Three warm-up \
         runs each, then the runs counted. The bucket counts of both sides are compared.\n\n\
         | students | runs | index p50 | index p95 | SQL p50 | SQL p95 | SQL ÷ index (p50) | counts agree |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in &sizes {
        let (ip50, ip95, r) = match &s.index {
            Some(d) => (stats::ms(d.p50), stats::ms(d.p95), stats::ratio(s.sql.p50 / d.p50)),
            None => ("— (not indexed)".into(), "—".into(), "—".into()),
        };
        sec.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            stats::int(s.students),
            s.sql.n,
            ip50,
            ip95,
            stats::ms(s.sql.p50),
            stats::ms(s.sql.p95),
            r,
            match s.agree {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        ));
    }
    sec.push_str(
        "\nosmem keeps every document in memory, so the index side stops at the largest index this run built; \
         Elasticsearch would also serve repeats of this exact query from its shard request cache, which osmem does not have.\n",
    );
    out.section = sec;
    out.raw = json!(sizes);
    Ok(out)
}

//! Issue 18's acceptance tests about sync: documents declared by a model file.
//!
//! - the students model writes byte for byte what the pre-model code wrote (the old builder
//!   is re-implemented here from main's `src/document.rs` and `src/pipeline/load.rs`);
//! - the core sync scenario on the shipped refinebio model (two levels through a join table);
//! - a third model defined here only (uuid root key, three levels of belongs_to, a has-many of
//!   scalars), with its fan-out in resumable chunks;
//! - `tidemark model check` against a live database: each error kind says what to do.
//!
//! Every scenario ends each stage with the index compared, document by document and byte by
//! byte (field order included), with documents built here from the tables in Rust, not by
//! tidemark's document query.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    time::Duration,
};

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use support::{web, Env};
use tidemark::{
    config::Config,
    model::Model,
    pipeline::{fanout, load, Op},
};

// ---------------------------------------------------------------------------------------
// Shared helpers

/// What differs between the documents expected and those indexed (empty: nothing), each
/// document compared as serialized JSON (so field order counts too).
fn differences(expected: &BTreeMap<String, Value>, indexed: &BTreeMap<String, Value>) -> String {
    let missing: Vec<&String> = expected.keys().filter(|k| !indexed.contains_key(*k)).collect();
    let extra: Vec<&String> = indexed.keys().filter(|k| !expected.contains_key(*k)).collect();
    let differing: Vec<&String> = expected
        .iter()
        .filter(|(k, e)| indexed.get(*k).is_some_and(|a| serde_json::to_string(a).unwrap() != serde_json::to_string(e).unwrap()))
        .map(|(k, _)| k)
        .collect();
    if missing.is_empty() && extra.is_empty() && differing.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{} expected, {} indexed: {} missing, {} extra, {} differing\n",
        expected.len(),
        indexed.len(),
        missing.len(),
        extra.len(),
        differing.len()
    );
    for k in missing.iter().take(5) {
        out.push_str(&format!("  missing {k}: expected {}\n", expected[*k]));
    }
    for k in extra.iter().take(5) {
        out.push_str(&format!("  extra {k}: indexed {}\n", indexed[*k]));
    }
    for k in differing.iter().take(5) {
        out.push_str(&format!("  {k}\n    expected {}\n    indexed  {}\n", expected[*k], indexed[*k]));
    }
    out
}

/// Syncs everything outstanding, then asserts the index holds exactly `expected`.
async fn converge(env: &Env, expected: BTreeMap<String, Value>, stage: &str) {
    let report = env.drain().await;
    assert!(!report.stalled, "{stage}: the drain stalled: {report:?}");
    assert!(env.synced().await, "{stage}: work is left after the drain");
    assert_eq!(env.dead_letters().await, 0, "{stage}: dead letters");
    let diff = differences(&expected, &env.indexed_sources().await);
    assert!(diff.is_empty(), "{stage}: the index differs from the database:\n{diff}");
}

/// Runs `write`, then [`converge`]s on the documents that `expected` builds from the tables
/// as they are then (a future does nothing until awaited).
async fn converge_after(env: &Env, write: &str, expected: impl Future<Output = BTreeMap<String, Value>>, stage: &str) {
    env.sql(write).await;
    converge(env, expected.await, stage).await;
}

/// A model file of this test (in the test's own directory) and its path as text.
fn model_file(env: &Env, name: &str, text: &str) -> String {
    env.file(name, text).to_string_lossy().into_owned()
}

/// A model file outside any test's directory, for [`Env::with_model`] (which loads it before
/// the test's directory exists); removed when dropped.
struct TempModel(std::path::PathBuf);

impl TempModel {
    fn new(text: &str) -> TempModel {
        let path = std::env::temp_dir().join(format!("tidemark-model-{}.toml", support::unique()));
        std::fs::write(&path, text).unwrap();
        TempModel(path)
    }

    fn spec(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// 1. The students model writes what the pre-model code wrote, byte for byte.

/// main's `StudentDoc` (src/document.rs before issue 18), field for field and in its order:
/// what `serde_json` made of it is what went to the index.
#[derive(Serialize)]
struct OldStudentDoc {
    first_name: String,
    last_name: String,
    age: i32,
    year_in_school: String,
    university: Option<OldUniversityRef>,
    course_names: Vec<String>,
    name_complete: OldCompletion,
    id: i64,
}

#[derive(Serialize)]
struct OldUniversityRef {
    id: i64,
    name: String,
}

#[derive(Serialize)]
struct OldCompletion {
    input: Vec<String>,
}

impl OldStudentDoc {
    /// main's `StudentDoc::build`, as it was.
    #[allow(clippy::too_many_arguments)]
    fn build(
        id: i64,
        first_name: String,
        last_name: String,
        age: i32,
        year_in_school: String,
        university: Option<OldUniversityRef>,
        mut course_names: Vec<String>,
    ) -> OldStudentDoc {
        course_names.sort_unstable();
        course_names.dedup();
        let full = format!("{first_name} {last_name}");
        OldStudentDoc {
            name_complete: OldCompletion { input: vec![first_name.clone(), last_name.clone(), full] },
            first_name,
            last_name,
            age,
            year_in_school: year_in_school.trim_end().to_string(),
            university,
            course_names,
            id,
        }
    }
}

type OldRow = (i64, String, String, i32, String, Option<i64>, Option<String>, Option<Vec<String>>);

/// main's load query (src/pipeline/load.rs before issue 18), for a set of ids.
const OLD_LOAD: &str = "SELECT s.id, s.first_name, s.last_name, s.age, s.year_in_school::text,
                               u.id, u.name, e.names
                          FROM students s
                          LEFT JOIN universities u ON u.id = s.university_id
                          LEFT JOIN (SELECT sc.student_id, array_agg(c.name) AS names
                                       FROM student_courses sc JOIN courses c ON c.id = sc.course_id
                                      WHERE sc.student_id = ANY($1)
                                      GROUP BY sc.student_id) e ON e.student_id = s.id
                         WHERE s.id = ANY($1)";

/// The bytes the pre-model code sent for each of `ids` that exists.
async fn old_documents(pool: &PgPool, ids: &[i64]) -> HashMap<i64, Vec<u8>> {
    let rows: Vec<OldRow> = sqlx::query_as(OLD_LOAD).bind(ids).fetch_all(pool).await.expect("the old load query");
    rows.into_iter()
        .map(|(id, first, last, age, year, uid, uname, names)| {
            let university = match (uid, uname) {
                (Some(id), Some(name)) => Some(OldUniversityRef { id, name }),
                _ => None,
            };
            let doc = OldStudentDoc::build(id, first, last, age, year, university, names.unwrap_or_default());
            (id, serde_json::to_vec(&doc).unwrap())
        })
        .collect()
}

/// Students the seed does not make: no university, no courses, duplicate course names (the
/// courses' unique constraint dropped, as a deployment may not have it), names in several
/// scripts, combining marks, emoji, quotes, backslashes, control characters, leading and
/// trailing spaces, the longest names allowed, ids past 2^53 and the largest bigint, a
/// university deleted under its students. (Not U+001F, U+001E or U+0000 in a name: the
/// engine's completion field refuses them, for the old code's documents as for the model's.)
const EDGE_CASES: &str = r#"
ALTER TABLE courses DROP CONSTRAINT courses_name_key;
INSERT INTO universities (id, name) VALUES
  (9001, 'Київський політехнічний інститут'),
  (9002, 'Éc "quoted" \ back/slash 🦀'),
  (9003, 'Gone University');
INSERT INTO courses (id, name) VALUES
  (9001, 'CS101'), (9002, 'cs101'), (9003, 'Éclair'), (9004, E'E\u0301clair'), (9005, '日本語'),
  (9006, '🦀 Rust'), (9007, 'Zebra'), (9008, 'a b'), (9009, E'tab\there'), (9010, 'Ω'),
  (9011, '👩‍💻 ZWJ'), (9012, 'Same'), (9013, 'Same'), (9014, ' lead'), (9015, 'trail '),
  (9016, E'quote " and \\ backslash'), (9017, E'bell\u0007');
INSERT INTO students (id, first_name, last_name, age, year_in_school, university_id) VALUES
  (900001, 'Ann', 'Lee', 20, 'FR', 9001),
  (900002, 'Bob', 'Ray', 22, 'SO', NULL),
  (900003, 'Zoë', 'Ångström', 30, 'JR', 9002),
  (900004, 'O''Brien', 'Quote "Q" \ Slash', 100, 'SR', 9003),
  (900005, E'line\nbreak', E'ctl\u0001x\u0002', 1, 'FR', 9001),
  (900006, 'Trail  ', ' Lead', 45, 'SO', NULL),
  (900007, repeat('ж', 50), repeat('🦀', 50), 99, 'JR', 9002),
  (900008, 'A', 'B', 2, 'SR', 9002),
  (900009, 'Ιωάννης', 'Παπαδόπουλος', 33, 'SO', 9001),
  (900010, '李', '小龙', 32, 'JR', NULL),
  (9007199254740993, 'Big', 'Id', 50, 'SO', 9001),
  (9223372036854775807, 'Max', 'Id', 60, 'JR', NULL);
INSERT INTO student_courses VALUES
  (900001, 9012), (900001, 9013), (900001, 9001), (900001, 9002),
  (900001, (SELECT id FROM courses WHERE name = 'CS101' AND id < 9000)),
  (900003, 9003), (900003, 9004), (900003, 9005), (900003, 9006), (900003, 9007), (900003, 9008),
  (900003, 9009), (900003, 9010), (900003, 9011), (900003, 9016), (900003, 9017),
  (900004, 9006), (900005, 9009), (900008, 9014), (900008, 9015),
  (9007199254740993, 9001), (9223372036854775807, 9007);
DELETE FROM universities WHERE id = 9003;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn students_documents_are_byte_for_byte_what_the_pre_model_code_wrote() {
    let env = Env::new().await;
    env.seed(300).await;
    env.sql(EDGE_CASES).await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM students ORDER BY id").fetch_all(&env.pool).await.unwrap();
    assert_eq!(ids.len(), 312);
    let old = old_documents(&env.pool, &ids).await;
    assert_eq!(old.len(), ids.len());
    // A key with no row: the old code deleted it too.
    let keys: Vec<String> = ids.iter().map(i64::to_string).chain(["424242".to_string()]).collect();
    let model = Model::students();

    // A sync batch: documents by keys.
    let loaded = load::load(&env.pool, &model, &keys).await.expect("load through the model");
    assert_eq!(loaded.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), keys, "one op per key, in the keys' order");
    for (key, op) in &loaded {
        let id: i64 = key.parse().unwrap();
        match (op, old.get(&id)) {
            (Op::Index(doc), Some(bytes)) => {
                let new = doc.json().as_bytes().to_vec();
                assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(bytes), "student {id}");
                assert_eq!(&new, bytes, "student {id}");
            }
            (Op::Delete, None) => assert_eq!(id, 424242),
            (op, old) => panic!("student {id}: the model's op is {op:?}, the old code's document {old:?}"),
        }
    }
    // A reindex chunk: documents by key range, every student.
    let ranged = load::load_range(&env.pool, &model, None, None).await.expect("load a range");
    assert_eq!(ranged.len(), ids.len());
    for (key, op) in &ranged {
        let Op::Index(doc) = op else { panic!("a range holds documents only") };
        assert_eq!(doc.json().as_bytes(), old[&key.parse::<i64>().unwrap()], "student {key}, by range");
    }
    // In the bulk body: each source line is the old document's bytes.
    let encoded = tidemark::pipeline::encode::encode(&loaded, &["some-index".to_string()], 7);
    let lines: Vec<&[u8]> = encoded.buf.split(|b| *b == b'\n').collect();
    let mut sources = 0;
    for pair in lines.windows(2) {
        let action: Value = match serde_json::from_slice(pair[0]) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if let Some(id) = action["index"]["_id"].as_str() {
            assert_eq!(pair[1], &old[&id.parse::<i64>().unwrap()][..], "the bulk line of student {id}");
            sources += 1;
        }
    }
    assert_eq!(sources, ids.len());

    // Through the sync into the index: the engine stores and returns the sources as sent.
    env.drain_and_refresh().await;
    let http = reqwest::Client::new();
    for id in [900001_i64, 900002, 900003, 900004, 900005, 900006, 900007, 900008, 9007199254740993, 9223372036854775807] {
        let stored = http.get(format!("{}/{}/_source/{id}", env.es_url, env.alias)).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&stored), String::from_utf8_lossy(&old[&id]), "student {id} as the index holds it");
    }
    env.assert_converged().await;
}

// ---------------------------------------------------------------------------------------
// 2. The core sync scenario on the refinebio model.

/// refinebio's document of every experiment (built in tests/support from the tables), by
/// `_id`.
async fn refinebio_expected(env: &Env) -> BTreeMap<String, Value> {
    env.expected_experiments().await.into_iter().map(|(id, doc)| (id.to_string(), doc)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refinebio_every_kind_of_write_reaches_the_index_exactly() {
    // Small fan-out chunks, so an organism's experiments are marked in several.
    let env = Env::with_model("refinebio", tidemark_seeds::refinebio::SCHEMA, |c| c.sync.fanout_chunk = 2).await;
    let expected = || refinebio_expected(&env);
    env.sql(
        "INSERT INTO organisms (id, name) VALUES (1, 'Homo sapiens'), (2, 'Mus musculus'), (3, 'Danio rerio');
         INSERT INTO platforms (id, name) VALUES (1, 'Illumina HiSeq 2500'), (2, 'Affymetrix HG-U133');
         INSERT INTO samples (id, accession_code, organism_id, platform_id)
         SELECT g, 'GSM' || g, (ARRAY[1, 1, 2, 2, 3, NULL, 1, 2, 1, 1])[g], (ARRAY[1, 2, 1, NULL, 2, 1, 1, 2, 2, 1])[g]
           FROM generate_series(1, 10) g;
         INSERT INTO experiments (id, accession_code, title, description, technology, is_public)
         SELECT g, 'GSE' || g, 'Experiment ' || g, 'About ' || g, CASE WHEN g % 2 = 0 THEN 'RNA-SEQ' ELSE 'MICROARRAY' END, g <> 5
           FROM generate_series(1, 6) g;
         INSERT INTO experiment_samples VALUES (1, 1), (1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (3, 6), (4, 7), (4, 8), (4, 9), (4, 10), (5, 1), (5, 7);",
    )
    .await;
    converge(&env, expected().await, "first sync").await;
    let d = env.indexed_sources().await;
    assert_eq!(
        d["1"],
        json!({"accession_code": "GSE1", "title": "Experiment 1", "description": "About 1", "technology": "MICROARRAY",
               "is_public": true, "sample_ids": [1, 2, 3], "organism_names": ["Homo sapiens", "Mus musculus"],
               "platform_names": ["Affymetrix HG-U133", "Illumina HiSeq 2500"],
               "title_complete": {"input": ["Experiment 1", "GSE1"]}, "id": 1})
    );
    assert_eq!(d["6"]["sample_ids"], json!([]), "an experiment without samples");
    assert_eq!(d["3"]["organism_names"], json!(["Danio rerio"]), "a sample without organism adds no name");

    // Updates of the root's own columns; a no-op update marks nothing.
    env.sql("UPDATE experiments SET title = 'Renamed experiment', is_public = false WHERE id = 2").await;
    env.sql("UPDATE experiments SET description = 'Ω ünïcode' WHERE id IN (3, 4)").await;
    converge(&env, expected().await, "root updates").await;
    env.sql("UPDATE experiments SET title = title; UPDATE samples SET accession_code = accession_code || 'x'").await;
    assert_eq!(env.outstanding().await, 0, "neither a no-op nor a column the document does not use marks anything");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.parents").await, 0);

    // Inserts across every table in one transaction.
    env.sql(
        "BEGIN;
         INSERT INTO organisms (id, name) VALUES (4, 'Rattus norvegicus');
         INSERT INTO platforms (id, name) VALUES (3, 'Ion Torrent');
         INSERT INTO samples (id, accession_code, organism_id, platform_id) VALUES (11, 'GSM11', 4, 3), (12, 'GSM12', 1, 3);
         INSERT INTO experiments (id, accession_code, title, technology) VALUES (7, 'GSE7', 'Seventh', 'RNA-SEQ'), (8, 'GSE8', 'Eighth', 'RNA-SEQ');
         INSERT INTO experiment_samples VALUES (7, 11), (7, 1), (7, 12);
         COMMIT;",
    )
    .await;
    converge(&env, expected().await, "inserts").await;

    // An organism renamed: two levels down through the join table, every experiment with a
    // sample of it; the writer writes one parent mark, not the experiments.
    env.sql("UPDATE organisms SET name = 'Homo sapiens sapiens' WHERE id = 1").await;
    assert_eq!(env.outstanding().await, 0, "a rename marks only the organism");
    let parents: Vec<(String, String)> = env.rows("SELECT kind, key FROM tidemark.parents").await;
    assert_eq!(parents, vec![("organism_names.organism".to_string(), "1".to_string())]);
    let with_human = env
        .scalar_i64("SELECT count(DISTINCT es.experiment_id) FROM experiment_samples es JOIN samples s ON s.id = es.sample_id WHERE s.organism_id = 1")
        .await;
    assert_eq!(with_human, 4, "experiments 1, 4, 5 and 7");
    let r = env.drain().await;
    assert_eq!(r.fanned_out, 4);
    converge(&env, expected().await, "organism renamed").await;
    assert_eq!(env.count(json!({"term": {"organism_names": "Homo sapiens sapiens"}})).await, 4);
    assert_eq!(env.count(json!({"term": {"organism_names": "Homo sapiens"}})).await, 0);

    // A platform renamed.
    converge_after(&env, "UPDATE platforms SET name = 'Illumina NovaSeq' WHERE id = 1", expected(), "platform renamed").await;

    // Samples move between organisms (and to none, and back), and between platforms.
    env.sql("UPDATE samples SET organism_id = 3 WHERE id = 2").await;
    env.sql("UPDATE samples SET organism_id = NULL WHERE id = 5").await;
    env.sql("UPDATE samples SET organism_id = 2, platform_id = 3 WHERE id IN (9, 10)").await;
    converge(&env, expected().await, "samples moved").await;
    converge_after(&env, "UPDATE samples SET organism_id = 1 WHERE id = 5", expected(), "a sample moved back to an organism").await;

    // Join rows: added, removed, and repointed.
    env.sql("INSERT INTO experiment_samples VALUES (6, 2), (2, 9)").await;
    env.sql("DELETE FROM experiment_samples WHERE experiment_id = 1 AND sample_id = 3").await;
    env.sql("UPDATE experiment_samples SET experiment_id = 8 WHERE experiment_id = 5 AND sample_id = 7").await;
    env.sql("UPDATE experiment_samples SET sample_id = 12 WHERE experiment_id = 4 AND sample_id = 8").await;
    converge(&env, expected().await, "join rows").await;

    // An experiment's key changes (one without samples: the join table's foreign key has no
    // ON UPDATE): the old document goes, the new one comes.
    env.sql("INSERT INTO experiments (id, accession_code, title, technology) VALUES (9, 'GSE9', 'Ninth', 'MICROARRAY')").await;
    converge(&env, expected().await, "ninth").await;
    converge_after(&env, "UPDATE experiments SET id = 90 WHERE id = 9", expected(), "a key changed").await;

    // Deletes: a sample (its join rows cascade), an organism and a platform (their samples'
    // references are set to NULL), an experiment.
    converge_after(&env, "DELETE FROM samples WHERE id = 4", expected(), "a sample deleted").await;
    converge_after(&env, "DELETE FROM organisms WHERE id = 2", expected(), "an organism deleted").await;
    env.sql("DELETE FROM platforms WHERE id = 2").await;
    env.sql("DELETE FROM experiments WHERE id = 3").await;
    converge(&env, expected().await, "a platform and an experiment deleted").await;
    assert!(!env.indexed_sources().await.contains_key("3"));

    // One statement renaming every organism, one moving every sample.
    env.sql("UPDATE organisms SET name = upper(name)").await;
    env.sql("UPDATE samples SET platform_id = CASE WHEN id % 2 = 0 THEN 1 ELSE 3 END").await;
    converge(&env, expected().await, "bulk statements").await;

    // TRUNCATE: a rebuild from what is left.
    assert_eq!(env.alias_targets().await, vec![env.generation(1)]);
    converge_after(&env, "TRUNCATE experiment_samples", expected(), "join table truncated").await;
    assert_eq!(env.alias_targets().await, vec![env.generation(2)], "a TRUNCATE rebuilds the index");
    assert!(env.indexed_sources().await.values().all(|d| d["sample_ids"] == json!([])));
    converge_after(&env, "INSERT INTO experiment_samples VALUES (1, 1), (2, 1), (7, 11)", expected(), "after the truncate").await;
    env.sql("TRUNCATE organisms, platforms, samples, experiment_samples, experiments").await;
    env.sql("INSERT INTO experiments (id, accession_code, title, technology) VALUES (100, 'GSE100', 'After', 'RNA-SEQ')").await;
    converge(&env, expected().await, "everything truncated").await;
    assert_eq!(env.indexed_sources().await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// 3. A model defined in the tests only: books (uuid keys) → author → city → country, the
//    author's name again as one value, and each book's tags.

const LIBRARY_MODEL: &str = r#"
name = "library"

[document]
table = "books"
key = "id"
key_type = "uuid"
fields = [
  { name = "title", type = "text", keyword = "raw" },
  { name = "year", column = "published_year", type = "integer" },
]

[[document.relations]]
name = "author"
kind = "belongs_to"
table = "authors"
foreign_key = "author_id"
fields = [{ name = "name", type = "keyword" }]

[[document.relations.relations]]
name = "city"
kind = "belongs_to"
table = "cities"
foreign_key = "city_id"
fields = [{ name = "name", type = "keyword" }]

[[document.relations.relations.relations]]
name = "country"
kind = "belongs_to"
table = "countries"
key_type = "uuid"
foreign_key = "country_id"
fields = [{ name = "name", type = "keyword" }, { name = "code", type = "keyword" }]

[[document.relations]]
name = "author_name"
kind = "belongs_to"
table = "authors"
foreign_key = "author_id"
value = "name"
fields = [{ name = "name", type = "keyword" }]

[[document.relations]]
name = "tags"
kind = "has_many"
table = "book_tags"
foreign_key = "book_id"
value = "tag"
fields = [{ name = "tag", type = "keyword" }]

[document.completion]
name = "suggest"
inputs = ["{title}", "{title} ({year})"]
"#;

/// The library's tables; `fk` is written after each column that references another table
/// (an empty `fk` leaves the references unprotected by any constraint).
fn library_schema(with_foreign_keys: bool) -> String {
    let fk = |target: &str, extra: &str| if with_foreign_keys { format!("REFERENCES {target} (id) {extra}") } else { String::new() };
    format!(
        "CREATE TABLE countries (id uuid PRIMARY KEY, name text NOT NULL, code text NOT NULL);
         CREATE TABLE cities (id bigint PRIMARY KEY, name text NOT NULL, country_id uuid {});
         CREATE INDEX cities_country_id ON cities (country_id, id);
         CREATE TABLE authors (id bigserial PRIMARY KEY, name text NOT NULL, city_id bigint {});
         CREATE INDEX authors_city_id ON authors (city_id, id);
         CREATE TABLE books (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), title text NOT NULL, published_year integer, author_id bigint {});
         CREATE INDEX books_author_id ON books (author_id, id);
         CREATE TABLE book_tags (id bigserial PRIMARY KEY, book_id uuid NOT NULL {}, tag text);
         CREATE INDEX book_tags_book_id ON book_tags (book_id);",
        fk("countries", "ON DELETE SET NULL"),
        fk("cities", "ON DELETE SET NULL"),
        fk("authors", "ON DELETE SET NULL"),
        fk("books", "ON DELETE CASCADE ON UPDATE CASCADE"),
    )
}

/// 3 countries, 6 cities (2 a country), 30 authors (5 a city), 600 books (20 an author; every
/// 7th without a year), 1 or 2 tags a book (two rows of the same tag where `g % 5 = g % 3`;
/// every 11th book also has a NULL tag).
const LIBRARY_DATA: &str = "
INSERT INTO countries (id, name, code) SELECT md5('country' || g)::uuid, 'Country ' || g, 'C' || g FROM generate_series(1, 3) g;
INSERT INTO cities (id, name, country_id) SELECT g, 'City ' || g, md5('country' || (1 + (g - 1) / 2))::uuid FROM generate_series(1, 6) g;
INSERT INTO authors (id, name, city_id) SELECT g, 'Author ' || g, 1 + (g - 1) / 5 FROM generate_series(1, 30) g;
SELECT setval(pg_get_serial_sequence('authors', 'id'), 30);
INSERT INTO books (id, title, published_year, author_id)
SELECT md5('book' || g)::uuid, 'Book ' || g, CASE WHEN g % 7 = 0 THEN NULL ELSE 1900 + g % 120 END, 1 + (g - 1) / 20
  FROM generate_series(1, 600) g;
INSERT INTO book_tags (book_id, tag)
SELECT md5('book' || g)::uuid, t FROM generate_series(1, 600) g, unnest(ARRAY['tag' || g % 5, 'tag' || g % 3]) t;
INSERT INTO book_tags (book_id, tag) SELECT md5('book' || g)::uuid, NULL FROM generate_series(11, 600, 11) g;
";

/// The library's document of every book, built here from the tables.
async fn library_expected(env: &Env) -> BTreeMap<String, Value> {
    let countries: HashMap<String, (String, String)> =
        env.rows("SELECT id::text, name, code FROM countries").await.into_iter().map(|(id, name, code)| (id, (name, code))).collect();
    let cities: HashMap<i64, (String, Option<String>)> = env
        .rows("SELECT id, name, country_id::text FROM cities")
        .await
        .into_iter()
        .map(|(id, name, country)| (id, (name, country)))
        .collect();
    let authors: HashMap<i64, (String, Option<i64>)> =
        env.rows("SELECT id, name, city_id FROM authors").await.into_iter().map(|(id, name, city)| (id, (name, city))).collect();
    let mut tags: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (book, tag) in env.rows::<(String, Option<String>)>("SELECT book_id::text, tag FROM book_tags").await {
        tags.entry(book).or_default().extend(tag);
    }
    let books: Vec<(String, String, Option<i32>, Option<i64>)> =
        env.rows("SELECT id::text, title, published_year, author_id FROM books").await;
    books
        .into_iter()
        .map(|(id, title, year, author)| {
            let country = |id: &Option<String>| match id.as_ref().and_then(|id| countries.get(id)) {
                Some((name, code)) => json!({"name": name, "code": code}),
                None => Value::Null,
            };
            let city = |id: Option<i64>| match id.and_then(|id| cities.get(&id)) {
                Some((name, c)) => json!({"name": name, "country": country(c)}),
                None => Value::Null,
            };
            let (author, author_name) = match author.and_then(|id| authors.get(&id)) {
                Some((name, c)) => (json!({"name": name, "city": city(*c)}), json!(name)),
                None => (Value::Null, Value::Null),
            };
            let mut inputs = vec![title.clone()];
            if let Some(y) = year {
                inputs.push(format!("{title} ({y})"));
            }
            let doc = json!({
                "title": title,
                "year": year,
                "author": author,
                "author_name": author_name,
                "tags": tags.remove(&id).unwrap_or_default(),
                "suggest": {"input": inputs},
            });
            (id, doc)
        })
        .collect()
}

/// An environment of `model` (the library's or a variant, written to a file) on the library's
/// tables, with or without their foreign keys.
async fn library_env(model: &str, foreign_keys: bool, tweak: impl FnOnce(&mut Config)) -> (TempModel, Env) {
    let model = TempModel::new(model);
    let env = Env::with_model(&model.spec(), &library_schema(foreign_keys), tweak).await;
    (model, env)
}

/// [`library_env`] with [`LIBRARY_DATA`], all of it indexed.
async fn indexed_library(model: &str) -> (TempModel, Env) {
    let (model, env) = library_env(model, true, |_| {}).await;
    env.sql(LIBRARY_DATA).await;
    let report = env.drain().await;
    assert!(!report.stalled && env.synced().await && env.dead_letters().await == 0, "{report:?}");
    (model, env)
}

/// The uuid of `md5(<what>)`, as the data above makes them.
async fn md5_uuid(env: &Env, what: &str) -> String {
    sqlx::query_scalar("SELECT md5($1)::uuid::text").bind(what).fetch_one(&env.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_of_the_tests_own_uuid_keys_three_levels_and_scalar_tags_stays_in_step() {
    let (model, env) = library_env(LIBRARY_MODEL, true, |c| {
        c.sync.fanout_chunk = 50;
        c.reindex.chunk_size = 100;
    })
    .await;
    let expected = || library_expected(&env);
    // The model suits these tables: `model check` finds nothing to say.
    let check = env.run(&["model", "check", "--model", &model.spec()]);
    assert!(check.ok(), "{check:?}");
    assert!(check.stdout.contains("model library") && check.stdout.contains("ok: every table"), "{check:?}");

    // The first sync builds the index in uuid ranges of 100 books.
    converge_after(&env, LIBRARY_DATA, expected(), "first sync").await;
    let chunks = env.scalar_i64("SELECT count(*) FROM tidemark.reindex_chunks").await;
    assert!(chunks >= 6, "600 books in chunks of 100: {chunks} chunks");
    let docs = env.indexed_sources().await;
    let book7 = md5_uuid(&env, "book7").await;
    assert_eq!(
        docs[&book7],
        json!({"title": "Book 7", "year": null,
               "author": {"name": "Author 1", "city": {"name": "City 1", "country": {"name": "Country 1", "code": "C1"}}},
               "author_name": "Author 1", "tags": ["tag1", "tag2"], "suggest": {"input": ["Book 7"]}})
    );

    // A country renamed: every book of every author of every city in it (200 books), in
    // chunks of 50 that each commit with their cursor. A worker marks one chunk and dies;
    // another resumes at the cursor.
    let country1 = md5_uuid(&env, "country1").await;
    env.sql(&format!("UPDATE countries SET name = 'Renamed Land' WHERE id = '{country1}'")).await;
    assert_eq!(env.outstanding().await, 0);
    let parents: Vec<(String, String)> = env.rows("SELECT kind, key FROM tidemark.parents").await;
    assert_eq!(parents, vec![("author.city.country".to_string(), country1.clone())]);
    assert_eq!(env.expand_a_chunk_and_die(50).await, fanout::Step::Marked(50));
    let fiftieth: String = sqlx::query_scalar(
        "SELECT b.id::text FROM books b JOIN authors a ON a.id = b.author_id JOIN cities c ON c.id = a.city_id
          WHERE c.country_id = $1::uuid ORDER BY b.id OFFSET 49 LIMIT 1",
    )
    .bind(&country1)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let cursor: Option<String> = sqlx::query_scalar("SELECT cursor FROM tidemark.parents").fetch_one(&env.pool).await.unwrap();
    assert_eq!(cursor, Some(fiftieth), "the cursor is the 50th book of the country, in uuid order");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM tidemark.marks").await, 50);
    env.sql("UPDATE tidemark.parents SET lease_until = now() - interval '1 second'").await;
    let r = env.drain().await;
    assert_eq!(r.fanned_out, 150, "the expansion resumed after the 50 already marked");
    converge(&env, expected().await, "country renamed").await;
    assert_eq!(env.count(json!({"term": {"author.city.country.name": "Renamed Land"}})).await, 200);

    // A city and an author renamed.
    env.sql("UPDATE cities SET name = 'Київ' WHERE id = 3; UPDATE authors SET name = 'Renamed Author' WHERE id = 12").await;
    converge(&env, expected().await, "city and author renamed").await;
    assert_eq!(env.count(json!({"term": {"author.city.name": "Київ"}})).await, 100);

    // Moves: an author to another city, a city to another country, a book to another author,
    // a book to no author.
    let country2 = md5_uuid(&env, "country2").await;
    env.sql("UPDATE authors SET city_id = 6 WHERE id = 1").await;
    env.sql(&format!("UPDATE cities SET country_id = '{country2}' WHERE id = 2")).await;
    env.sql(&format!("UPDATE books SET author_id = 30 WHERE id = '{}'", md5_uuid(&env, "book2").await)).await;
    env.sql(&format!("UPDATE books SET author_id = NULL WHERE id = '{}'", md5_uuid(&env, "book3").await)).await;
    converge(&env, expected().await, "moves").await;
    let renamed = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM books b JOIN authors a ON a.id = b.author_id JOIN cities c ON c.id = a.city_id WHERE c.country_id = '{country1}'"
        ))
        .await;
    assert_eq!(renamed, 80, "authors 2 to 5 of city 1 are left in the country");
    assert_eq!(env.count(json!({"term": {"author.city.country.name": "Renamed Land"}})).await, 80);

    // Tags: added (a duplicate among them), removed, changed, moved to another book, set NULL.
    let (b10, b11, b12) = (md5_uuid(&env, "book10").await, md5_uuid(&env, "book11").await, md5_uuid(&env, "book12").await);
    env.sql(&format!(
        "INSERT INTO book_tags (book_id, tag) VALUES ('{b10}', 'new'), ('{b10}', 'new'), ('{b10}', 'Ünïcode');
         DELETE FROM book_tags WHERE book_id = '{b11}';
         UPDATE book_tags SET tag = 'changed' WHERE id = (SELECT min(id) FROM book_tags WHERE book_id = '{b12}');
         UPDATE book_tags SET book_id = '{b11}' WHERE id = (SELECT max(id) FROM book_tags WHERE book_id = '{b12}');
         UPDATE book_tags SET tag = NULL WHERE book_id = '{b10}' AND tag = 'tag0';"
    ))
    .await;
    converge(&env, expected().await, "tags").await;
    assert_eq!(env.indexed_sources().await[&b10]["tags"], json!(["new", "tag1", "Ünïcode"]));

    // Inserts on every level in one transaction; a book without tags or author.
    env.sql(
        "BEGIN;
         INSERT INTO countries (id, name, code) VALUES (md5('country4')::uuid, 'Fourth', 'C4');
         INSERT INTO cities (id, name, country_id) VALUES (7, 'City 7', md5('country4')::uuid);
         INSERT INTO authors (name, city_id) VALUES ('Author 31', 7);
         INSERT INTO books (title, published_year, author_id) SELECT 'New ' || g, 2000 + g, 31 FROM generate_series(1, 30) g;
         INSERT INTO books (title) VALUES ('Orphan');
         INSERT INTO book_tags (book_id, tag) SELECT id, 'fresh' FROM books WHERE author_id = 31;
         COMMIT;",
    )
    .await;
    converge(&env, expected().await, "inserts").await;

    // Years: set, cleared (the completion input that names it goes).
    env.sql(&format!(
        "UPDATE books SET published_year = NULL WHERE id = '{b10}'; UPDATE books SET published_year = 1999 WHERE title = 'Orphan'"
    ))
    .await;
    converge(&env, expected().await, "years").await;

    // A book's key changes: its tags follow (ON UPDATE CASCADE), the old document goes.
    env.sql(&format!("UPDATE books SET id = md5('rekeyed')::uuid WHERE id = '{b12}'")).await;
    converge(&env, expected().await, "a book's key changed").await;
    assert!(!env.indexed_sources().await.contains_key(&b12));

    // Deletes on every level: books (their tags cascade), an author, a city, a country (the
    // rows below them lose the reference).
    env.sql(&format!("DELETE FROM books WHERE id IN ('{b10}', '{b11}')")).await;
    env.sql("DELETE FROM authors WHERE id = 2").await;
    converge(&env, expected().await, "books and an author deleted").await;
    env.sql("DELETE FROM cities WHERE id = 3").await;
    env.sql(&format!("DELETE FROM countries WHERE id = '{}'", md5_uuid(&env, "country3").await)).await;
    converge(&env, expected().await, "a city and a country deleted").await;

    // TRUNCATE of the tags: rebuilt (in uuid ranges) from what is left.
    converge_after(&env, "TRUNCATE book_tags", expected(), "tags truncated").await;
    assert_eq!(env.alias_targets().await, vec![env.generation(2)]);
    assert!(env.indexed_sources().await.values().all(|d| d["tags"] == json!([])));
}

/// The library's model with a search view: its uuid key again as the keyword `id` (the
/// search pages' tie-break and cursor), facets, two sorts and suggestions.
fn library_search_model() -> String {
    let model = LIBRARY_MODEL.replacen("key_type = \"uuid\"\n", "key_type = \"uuid\"\nkey_field = \"id\"\n", 1);
    format!(
        r#"{model}
[search]
noun = "book"
plural = "books"
query = ["title"]
title = "{{title}}"
show = ["year", "author.name", "author.city.country.name", "tags"]

[[search.facets]]
param = "country"
field = "author.city.country.name"
label = "Country"

[[search.facets]]
param = "tag"
field = "tags"
label = "Tags"

[[search.sorts]]
param = "year"
label = "Year"
fields = ["year"]

[[search.sorts]]
param = "author"
label = "Author"
fields = ["author.name"]

[search.suggest]
field = "suggest"
label = "{{title}}"
"#
    )
}

/// The target of the page's link `id` (`next-page`, `previous-page`), unescaped.
fn link(html: &str, id: &str) -> Option<String> {
    let href = html.split(&format!("id=\"{id}\" href=\"")).nth(1)?.split('"').next()?;
    Some(href.replace("&#38;", "&").replace("&amp;", "&"))
}

/// The ids of every hit of `query`, page after page of 100 following `next`, asserting that
/// each page's ids are uuids.
async fn walk(app: &axum::Router, query: &str) -> Vec<String> {
    let hits = web::every_hit(app, &format!("/api/search?size=100&{query}")).await;
    assert!(hits.len() <= 700, "{query}: the cursors go round in circles");
    hits.iter().map(|h| h["id"].as_str().unwrap_or_else(|| panic!("{query}: a hit's id is not a uuid string: {h}")).to_string()).collect()
}

/// A model whose root key is a uuid is served as fully as an integer one: hits with uuid ids
/// in every order, `after` cursors that walk every book exactly once in order (ties broken
/// by the key), `page`, `engine=sql` equal to the index, the page linking to each book's
/// page, and suggestions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uuid_keyed_model_is_searched_paged_and_opened_like_an_integer_one() {
    let (_model, env) = indexed_library(&library_search_model()).await;
    let book7 = md5_uuid(&env, "book7").await;
    assert_eq!(env.indexed_sources().await[&book7]["id"], json!(book7), "the key again, as a keyword");
    let app = tidemark::web::router(env.services());

    // Each order, as PostgreSQL gives it with the key as the last sort key.
    let order = |by: &str, filter: &str| {
        format!(
            "SELECT b.id::text FROM books b LEFT JOIN authors a ON a.id = b.author_id LEFT JOIN cities c ON c.id = a.city_id
               LEFT JOIN countries k ON k.id = c.country_id WHERE {filter} ORDER BY {by}b.id"
        )
    };
    let rows = |q: String| {
        let pool = env.pool.clone();
        async move { sqlx::query_scalar::<_, String>(&q).fetch_all(&pool).await.unwrap() }
    };
    let cases = [
        ("", order("", "true")),
        ("sort=year", order("b.published_year ASC NULLS LAST, ", "true")),
        ("sort=-year", order("b.published_year DESC NULLS LAST, ", "true")),
        ("sort=author", order("a.name COLLATE \"C\" ASC, ", "true")),
        ("sort=-author&country=Country+2", order("a.name COLLATE \"C\" DESC, ", "k.name = 'Country 2'")),
        ("q=7", order("", "b.title = 'Book 7'")),
    ];
    for (query, sql) in cases {
        let want = rows(sql).await;
        assert_eq!(walk(&app, query).await, want, "index, {query}");
        assert_eq!(walk(&app, &format!("{query}&engine=sql")).await, want, "sql, {query}");
    }
    // Relevance with every score tied: every book once.
    let mut all = walk(&app, "q=book").await;
    assert_eq!(all.len(), 600, "q=book");
    all.sort();
    all.dedup();
    assert_eq!(all, rows(order("", "true")).await, "q=book: every book exactly once");

    // Page numbers.
    let by_year = rows(order("b.published_year DESC NULLS LAST, ", "true")).await;
    for engine in ["index", "sql"] {
        let v = web::api(&app, &format!("/api/search?sort=-year&size=100&page=3&engine={engine}")).await;
        let ids: Vec<&str> = v["hits"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
        assert_eq!(ids, by_year[200..300], "{engine}: page 3");
        assert_eq!(v["total"], json!({"value": 600, "relation": "eq"}), "{engine}");
    }

    // A cursor is validated and a malformed one says what is wrong.
    for (uri, says) in [
        ("/api/search?after=garbage", "not a page cursor"),
        ("/api/search?after=[1.0,5]", "uuid"),
        ("/api/search?sort=year&after=[1900,%22nope%22]", "uuid"),
        ("/api/search?sort=year&after=[1900]", "takes 2 values"),
    ] {
        let a = web::get(&app, uri).await;
        assert!(a.status == 400 && a.body.contains(says), "{uri}: {} {}", a.status, a.body);
    }

    // The page lists hits linking to each book's page, and its next page follows on.
    let html = web::page(&app, "/?sort=year").await;
    let by_year = rows(order("b.published_year ASC NULLS LAST, ", "true")).await;
    for id in &by_year[..20] {
        assert!(html.contains(&format!("href=\"/books/{id}\"")), "{id}: {html}");
    }
    let next = link(&html, "next-page").expect("a next page link");
    let second = web::page(&app, &next).await;
    assert!(
        second.contains(&format!("href=\"/books/{}\"", by_year[20])) && !second.contains(&format!("/books/{}\"", by_year[19])),
        "{next}: {second}"
    );
    let detail = web::page(&app, &format!("/books/{book7}")).await;
    assert!(detail.contains("Book 7") && detail.contains("Author 1"), "{detail}");
    let v = web::api(&app, &format!("/api/books/{book7}")).await;
    assert_eq!((v["id"].as_str(), v["title"].as_str()), (Some(book7.as_str()), Some("Book 7")));

    // Suggestions name the book's page (every other title starts with "Book", which is all
    // that the completion field's analyzer keeps of "Book 7").
    env.sql(&format!("UPDATE books SET title = 'Zebra tales' WHERE id = '{book7}'")).await;
    env.drain_and_refresh().await;
    let s = web::api(&app, "/api/suggest?q=zeb").await;
    assert_eq!(s, json!([{"id": book7, "name": "Zebra tales", "href": format!("/books/{book7}")}]));
}

/// The library's model with the same search view but no copy of its key (neither `number`
/// nor `key_field`): nothing breaks ties between books of equal sort values.
fn library_keyless_search_model() -> String {
    let model = library_search_model().replacen("key_field = \"id\"\n", "", 1);
    assert!(!model.contains("key_field"));
    model
}

/// Every hit of `query` as (id, title), page after page of 100 by number (`page=N`) for as
/// long as an answer names the page after it (`next_page`); no answer offers a `next` cursor.
async fn walk_pages(app: &axum::Router, query: &str) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let mut page = 1;
    loop {
        let uri = format!("/api/search?size=100&page={page}&{query}");
        let v = web::api(app, &uri).await;
        assert!(v.get("next").is_none(), "{uri}: a `next` cursor, which cannot tell tied hits apart: {}", v["next"]);
        for h in v["hits"].as_array().unwrap() {
            let id = h["id"].as_str().unwrap_or_else(|| panic!("{uri}: a hit's id is not a uuid string: {h}"));
            seen.push((id.to_string(), h["title"].as_str().unwrap_or_default().to_string()));
        }
        assert!(page <= 7, "{query}: more pages than 600 books fill");
        match v["next_page"].as_u64() {
            Some(n) => {
                assert_eq!(n, page + 1, "{uri}");
                page = n;
            }
            None => return seen,
        }
    }
}

/// A model that repeats its key in no document field (no `number`, no `key_field`) has
/// nothing to break ties between hits of equal sort values, so no cursor can name a place
/// among them: it pages by number only. Served with and without a `[search]` section, on
/// both engines: `page=N` walks every book exactly once (in relevance with every score tied,
/// and in a declared sort), answers name the next page's number instead of a `next` cursor,
/// `after` is a 400 that says what to add to the model file, the page links numbered pages,
/// and `model check` and `serve` say so. Without a `[search]` section a hit is titled by the
/// document's first text field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_key_field_pages_by_number_and_refuses_cursors() {
    let (model, env) = indexed_library(LIBRARY_MODEL).await;
    // Page numbers (`from`) page the index as one search sees it: the drain's last writes
    // become visible now, not between two pages.
    env.refresh().await;
    let books: BTreeMap<String, (String, Option<i32>)> = env
        .rows("SELECT id::text, title, published_year FROM books")
        .await
        .into_iter()
        .map(|(id, title, year)| (id, (title, year)))
        .collect();
    assert_eq!(books.len(), 600);
    let plain = tidemark::web::router(env.services());
    let with_view = TempModel::new(&library_keyless_search_model());
    let spec = with_view.spec();
    let searched = tidemark::web::router(env.services_with(|c| c.set_model(spec)));

    // Every book exactly once, by page number, on both engines; each hit titled as the book
    // is (without a `[search]` section: its first text field, the title).
    for (app, view, query) in [
        (&plain, "no [search]", ""),
        (&plain, "no [search]", "q=book"),
        (&searched, "[search]", ""),
        (&searched, "[search]", "q=book"),
        (&searched, "[search]", "sort=year"),
        (&searched, "[search]", "sort=-author"),
    ] {
        for engine in ["index", "sql"] {
            let what = format!("{view}, {query}, engine={engine}");
            let hits = walk_pages(app, &format!("{query}&engine={engine}")).await;
            assert_eq!(hits.len(), 600, "{what}");
            let ids: BTreeSet<&String> = hits.iter().map(|(id, _)| id).collect();
            assert_eq!(ids.len(), 600, "{what}: some book came twice");
            for (id, title) in &hits {
                let want = &books.get(id).unwrap_or_else(|| panic!("{what}: {id} is no book")).0;
                assert_eq!(title, want, "{what}: the title of {id}");
            }
            if query == "sort=year" {
                let years: Vec<Option<i32>> = hits.iter().map(|(id, _)| books[id].1).collect();
                let key = |y: &Option<i32>| (y.is_none(), *y);
                assert!(years.windows(2).all(|w| key(&w[0]) <= key(&w[1])), "{what}: not by year, books without one last: {years:?}");
            }
        }
    }
    let v = web::api(&plain, "/api/search?size=100&page=6").await;
    assert_eq!((v["hits"].as_array().unwrap().len(), v.get("next_page")), (100, None), "the last page names none after it");
    assert_eq!(v["total"], json!({"value": 600, "relation": "eq"}));

    // A cursor is refused, saying why and what to add to the model file; so is a page past
    // the result window, without pointing to cursors this model does not have.
    let book7 = md5_uuid(&env, "book7").await;
    for (app, uri) in [
        (&plain, format!("/api/search?after=%5B1.0%2C%22{book7}%22%5D")),
        (&plain, format!("/api/search?engine=sql&after=%5B1.0%2C%22{book7}%22%5D")),
        (&searched, format!("/api/search?sort=year&after=%5B1907%2C%22{book7}%22%5D")),
        (&searched, "/api/search?after=garbage".to_string()),
    ] {
        let message = web::error_message(app, &uri, 400).await;
        assert!(message.contains("`after`") && message.contains("page=") && message.contains("key_field = \"id\""), "{uri}: {message}");
    }
    let message = web::error_message(&plain, "/api/search?size=100&page=101", 400).await;
    assert!(message.contains("10000") && message.contains("key_field = \"id\"") && !message.contains("`next`"), "{message}");
    let page = web::get(&searched, &format!("/?after=%5B1.0%2C%22{book7}%22%5D")).await;
    let html = &page.body;
    assert_eq!(page.status, 400, "{html}");
    assert!(html.contains("key_field = &#34;id&#34;") || html.contains("key_field = &quot;id&quot;"), "{html}");

    // The page: books titled and linked, numbered pages (no cursor), each following on.
    let first = walk_pages(&plain, "").await;
    let html = web::page(&plain, "/").await;
    for (id, title) in &first[..20] {
        assert!(html.contains(&format!("<a href=\"/documents/{id}\">{title}</a>")), "{id} {title}: {html}");
    }
    assert!(!html.contains("after="), "{html}");
    let next = link(&html, "next-page").expect("a next page link");
    assert_eq!(next, "/?page=2");
    let second = web::page(&plain, &next).await;
    assert!(
        second.contains(&format!("/documents/{}\"", first[20].0)) && !second.contains(&format!("/documents/{}\"", first[19].0)),
        "{second}"
    );
    assert_eq!(link(&second, "previous-page").as_deref(), Some("/"), "{second}");
    assert_eq!(link(&second, "next-page").as_deref(), Some("/?page=3"), "{second}");
    let last = web::page(&plain, "/?size=100&page=6").await;
    assert!(link(&last, "next-page").is_none(), "{last}");
    let sorted = web::page(&searched, "/?sort=year&engine=sql").await;
    assert_eq!(link(&sorted, "next-page").as_deref(), Some("/?sort=year&engine=sql&page=2"), "{sorted}");

    // The document's own page and JSON are titled the same way.
    let detail = web::page(&plain, &format!("/documents/{book7}")).await;
    assert!(detail.contains("<h1 id=\"document-title\">Book 7</h1>"), "{detail}");
    let v = web::api(&plain, &format!("/api/documents/{book7}")).await;
    assert_eq!(v["title"], json!("Book 7"));

    // `model check` and `serve` say what the model lacks, and what to add.
    let check = env.run(&["model", "check", "--model", &model.spec()]);
    assert!(check.ok(), "{check:?}");
    let notes: Vec<&str> = check.stdout.lines().filter(|l| l.starts_with("note: ")).collect();
    assert!(notes.len() == 1 && notes[0].contains("`next`") && notes[0].contains("key_field = \"id\""), "{check:?}");
    assert!(check.stdout.contains("ok: every table"), "a note about the model file is not a problem of the database: {check:?}");
    let port = support::free_port();
    let mut serve = env.spawn(&["serve", "--addr", &format!("127.0.0.1:{port}")], |c| {
        c.env("TIDEMARK_MODEL", model.spec());
    });
    for _ in 0..300 {
        if serve.output().contains("serving the search application") || !serve.is_running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = serve.output();
    assert!(serve.is_running() && log.contains("serving the search application"), "{log}");
    assert!(log.contains("no `next` cursor") && log.contains("key_field = \"id\""), "{log}");
    assert!(serve.terminate().success(), "{}", serve.output());
}

/// A related row whose references no foreign key constraint protects (the capture then marks
/// its inserts and deletes too): deleting it must reach the documents that named it, and
/// inserting a row that existing references already name must too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn related_rows_without_a_foreign_key_reach_their_documents_when_deleted_or_inserted() {
    let (_model, env) = library_env(LIBRARY_MODEL, false, |_| {}).await;
    let expected = || library_expected(&env);
    env.sql(
        "INSERT INTO countries (id, name, code) VALUES (md5('country1')::uuid, 'One', 'C1');
         INSERT INTO cities (id, name, country_id) VALUES (1, 'City 1', md5('country1')::uuid), (2, 'City 2', md5('country1')::uuid);
         INSERT INTO authors (id, name, city_id) VALUES (1, 'Author 1', 1), (2, 'Author 2', 2), (3, 'Author 3', 99);
         INSERT INTO books (id, title, author_id) SELECT md5('book' || g)::uuid, 'Book ' || g, 1 + g % 3 FROM generate_series(1, 9) g;",
    )
    .await;
    converge(&env, expected().await, "first sync").await;
    // Inserted: city 99, which author 3 already names.
    env.sql("INSERT INTO cities (id, name, country_id) VALUES (99, 'City 99', md5('country1')::uuid)").await;
    converge(&env, expected().await, "a city the authors already named inserted").await;
    // Deleted: the country (every book's), then a city; nothing sets their references NULL.
    converge_after(&env, "DELETE FROM countries", expected(), "a country without a foreign key deleted").await;
    converge_after(&env, "DELETE FROM cities WHERE id = 1", expected(), "a city without a foreign key deleted").await;
}

/// The same through a join table: refinebio's tables without their foreign keys. A sample
/// deleted (its join rows left behind) must leave its experiments' `sample_ids`, and an
/// organism deleted their `organism_names`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refinebio_without_foreign_keys_a_deleted_sample_or_organism_leaves_its_experiments() {
    let mut schema = tidemark_seeds::refinebio::SCHEMA.to_string();
    for fk in [
        "REFERENCES organisms (id) ON DELETE SET NULL",
        "REFERENCES platforms (id) ON DELETE SET NULL",
        "REFERENCES experiments (id) ON DELETE CASCADE",
        "REFERENCES samples (id) ON DELETE CASCADE",
    ] {
        assert!(schema.contains(fk), "refinebio's schema has `{fk}`");
        schema = schema.replace(fk, "");
    }
    let env = Env::with_model("refinebio", &schema, |_| {}).await;
    let expected = || refinebio_expected(&env);
    env.sql(
        "INSERT INTO organisms (id, name) VALUES (1, 'Homo sapiens'), (2, 'Mus musculus');
         INSERT INTO platforms (id, name) VALUES (1, 'Illumina');
         INSERT INTO samples (id, accession_code, organism_id, platform_id) VALUES (1, 'GSM1', 1, 1), (2, 'GSM2', 2, 1), (3, 'GSM3', 1, 1);
         INSERT INTO experiments (id, accession_code, title, technology) VALUES (1, 'GSE1', 'One', 'RNA-SEQ'), (2, 'GSE2', 'Two', 'RNA-SEQ');
         INSERT INTO experiment_samples VALUES (1, 1), (1, 2), (2, 2), (2, 3);",
    )
    .await;
    converge(&env, expected().await, "first sync").await;
    converge_after(&env, "DELETE FROM samples WHERE id = 2", expected(), "a sample without a foreign key deleted").await;
    converge_after(&env, "DELETE FROM organisms WHERE id = 1", expected(), "an organism without a foreign key deleted").await;
}

/// One table in three places of its own model: the root (people), a belongs_to of it (each
/// person's manager) and a has-many of it (the names of each person's reports). A write to
/// one row changes up to three kinds of documents: its own, its reports' and its manager's.
const PEOPLE_MODEL: &str = r#"
name = "people"

[document]
table = "people"
key = "id"
number = "id"

fields = [{ name = "name", type = "keyword" }]

[[document.relations]]
name = "manager"
kind = "belongs_to"
table = "people"
foreign_key = "manager_id"
fields = [{ name = "name", type = "keyword" }]

[[document.relations]]
name = "reports"
kind = "has_many"
table = "people"
foreign_key = "manager_id"
value = "name"
fields = [{ name = "name", type = "keyword" }]
"#;

async fn people_expected(env: &Env) -> BTreeMap<String, Value> {
    let people: Vec<(i64, String, Option<i64>)> = env.rows("SELECT id, name, manager_id FROM people").await;
    let names: HashMap<i64, String> = people.iter().map(|(id, name, _)| (*id, name.clone())).collect();
    let mut reports: HashMap<i64, BTreeSet<String>> = HashMap::new();
    for (_, name, manager) in &people {
        if let Some(m) = manager {
            reports.entry(*m).or_default().insert(name.clone());
        }
    }
    people
        .iter()
        .map(|(id, name, manager)| {
            let manager = match manager.and_then(|m| names.get(&m)) {
                Some(n) => json!({"name": n}),
                None => Value::Null,
            };
            let doc = json!({"name": name, "manager": manager, "reports": reports.remove(id).unwrap_or_default(), "id": id});
            (id.to_string(), doc)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_is_its_own_parent_and_child_stays_in_step() {
    let model = TempModel::new(PEOPLE_MODEL);
    let schema = "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL,
                                      manager_id bigint REFERENCES people (id) ON DELETE SET NULL);
                  CREATE INDEX people_manager_id ON people (manager_id, id);";
    let env = Env::with_model(&model.spec(), schema, |c| c.sync.fanout_chunk = 3).await;
    let expected = || people_expected(&env);
    env.sql(
        "INSERT INTO people (id, name, manager_id) VALUES (1, 'Chief', NULL);
         INSERT INTO people (id, name, manager_id) SELECT g, 'Manager ' || g, 1 FROM generate_series(2, 4) g;
         INSERT INTO people (id, name, manager_id) SELECT g, 'Staff ' || g, 2 + g % 3 FROM generate_series(5, 16) g;",
    )
    .await;
    converge(&env, expected().await, "first sync").await;
    assert_eq!(
        env.indexed_sources().await["2"],
        json!({"name": "Manager 2", "manager": {"name": "Chief"}, "reports": ["Staff 12", "Staff 15", "Staff 6", "Staff 9"], "id": 2})
    );
    // A manager renamed: their own document, their reports' (`manager.name`) and their
    // manager's (`reports`).
    converge_after(&env, "UPDATE people SET name = 'Boss Two' WHERE id = 2", expected(), "a manager renamed").await;
    assert_eq!(env.count(json!({"term": {"manager.name": "Boss Two"}})).await, 4);
    // Moves: a person to another manager, a manager under another manager, to no manager.
    env.sql("UPDATE people SET manager_id = 3 WHERE id = 6").await;
    env.sql("UPDATE people SET manager_id = 2 WHERE id = 4").await;
    env.sql("UPDATE people SET manager_id = NULL WHERE id = 7").await;
    converge(&env, expected().await, "moves").await;
    // Inserts and a key change (a person without reports).
    converge_after(&env, "INSERT INTO people (id, name, manager_id) VALUES (17, 'New', 4), (18, 'Newer', 17)", expected(), "inserts").await;
    converge_after(&env, "UPDATE people SET id = 180 WHERE id = 18", expected(), "a key changed").await;
    // Deletes: a manager (their reports lose them), a leaf.
    converge_after(&env, "DELETE FROM people WHERE id = 2", expected(), "a manager deleted").await;
    converge_after(&env, "DELETE FROM people WHERE id = 180", expected(), "a leaf deleted").await;
    // Everyone renamed in one statement.
    converge_after(&env, "UPDATE people SET name = name || '!'", expected(), "everyone renamed").await;
}

// ---------------------------------------------------------------------------------------
// 4. `tidemark model check` against a live database.

/// Edits of a model file's text: `(from, to)`, each replacing every `from`.
type Edits<'a> = &'a [(&'a str, &'a str)];

/// The shipped students model with each `(from, to)` edit applied to its text, in order
/// (each must match: an edit that changed nothing would check the shipped model instead).
fn students_with(edits: Edits) -> String {
    edits.iter().fold(tidemark::model::STUDENTS.to_string(), |model, (from, to)| {
        assert!(model.contains(from), "the students model has no `{from}`");
        model.replace(from, to)
    })
}

/// `model check`'s answer `out` has errors (exit 3), and says each of `errors`.
fn assert_check_errors(out: &support::Ran, errors: &[&str]) {
    assert_eq!(out.code, Some(3), "errors exit 3: {out:?}");
    for expected in errors {
        assert!(out.stdout.contains(expected), "missing `{expected}` in:\n{}", out.stdout);
    }
}

/// Items on shelves, the model tests' own tables: an item's label and its shelf's name.
const ITEMS_MODEL: &str = r#"
name = "items"
[document]
table = "items"
key = "id"
fields = [{ name = "label", type = "keyword" }]
[[document.relations]]
name = "shelf"
kind = "belongs_to"
table = "shelves"
foreign_key = "shelf_id"
fields = [{ name = "name", type = "keyword" }]
"#;

/// More relations of [`ITEMS_MODEL`]: an item's notes (has_many) and labels (many_to_many).
const ITEM_NOTES_AND_LABELS: &str = r#"
[[document.relations]]
name = "notes"
kind = "has_many"
table = "item_notes"
foreign_key = "item_id"
value = "note"
fields = [{ name = "note", type = "text" }]
[[document.relations]]
name = "labels"
kind = "many_to_many"
table = "labels"
through = "item_labels"
this_key = "item_id"
other_key = "label_id"
value = "name"
fields = [{ name = "name", type = "keyword" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_check_says_what_is_missing_or_wrong_and_what_to_run() {
    let env = Env::new().await;
    let check = |spec: &str| env.run(&["model", "check", "--model", spec]);

    // The shipped model on its tables: all there.
    let ok = check("students");
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(ok.stdout.contains("ok: every table, column, key and index the model needs is there"), "{ok:?}");
    assert!(!ok.stdout.contains("note: "), "the students model repeats its key (`number`): {ok:?}");

    // Another model's tables are missing: the root table, with how to create them.
    assert_check_errors(
        &check("refinebio"),
        &["error: the document: table experiments does not exist; create your tables first", "tidemark seed --model"],
    );

    // The students model edited: columns and tables missing under the root, each named where
    // it is used; key types the model says uuid where the table has bigint (root and related).
    let cases: [(Edits, &[&str]); 4] = [
        (
            &[
                ("name = \"age\"\ntype = \"integer\"", "name = \"age\"\ncolumn = \"age_years\"\ntype = \"integer\""),
                ("foreign_key = \"university_id\"", "foreign_key = \"college_id\""),
                ("through = \"student_courses\"", "through = \"enrollments\""),
            ],
            &[
                "error: the document, field age: table students has no column age_years; fix the model (or the table)",
                "error: relation university's foreign_key: table students has no column college_id; fix the model (or the table)",
                "error: relation course_names: join table enrollments does not exist; create it first",
            ],
        ),
        (
            &[
                ("this_key = \"student_id\"", "this_key = \"pupil_id\""),
                (
                    "[[document.relations.fields]]\nname = \"name\"\ntype = \"keyword\"\n\n# The courses",
                    "[[document.relations.fields]]\nname = \"name\"\ncolumn = \"title\"\ntype = \"keyword\"\n\n# The courses",
                ),
            ],
            &[
                "error: relation university, field name: table universities has no column title; fix the model (or the table)",
                "error: relation course_names's this_key: table student_courses has no column pupil_id; fix the model (or the table)",
            ],
        ),
        (
            &[("table = \"universities\"", "table = \"colleges\""), ("table = \"courses\"", "table = \"lectures\"")],
            &[
                "error: relation university: table colleges does not exist; create it first",
                "error: relation course_names: table lectures does not exist; create it first",
            ],
        ),
        (
            &[
                ("number = \"id\"", "key_type = \"uuid\""),
                ("foreign_key = \"university_id\"", "foreign_key = \"university_id\"\nkey_type = \"uuid\""),
            ],
            &[
                "error: the document: key students.id is bigint but the model says uuid; write key_type = \"bigint\"",
                "error: relation university: key universities.id is bigint but the model says uuid; write key_type = \"bigint\"",
            ],
        ),
    ];
    for (i, (edits, errors)) in cases.into_iter().enumerate() {
        assert_check_errors(&check(&model_file(&env, &format!("broken{i}.toml"), &students_with(edits))), errors);
    }

    // Keys tidemark cannot use: text, composite, not unique.
    env.sql(
        "CREATE TABLE notes (code text PRIMARY KEY, body text NOT NULL);
         CREATE TABLE pairs (a bigint, b bigint, label text, PRIMARY KEY (a, b));
         CREATE TABLE loose (id bigint NOT NULL, label text);",
    )
    .await;
    for (table, key, field, error) in [
        ("notes", "code", "body", "error: the document: key notes.code is text; tidemark needs an integer or uuid key"),
        (
            "pairs",
            "a",
            "label",
            "error: the document: table pairs has a composite primary key (a, b); a document needs a single-column key",
        ),
        ("loose", "id", "label", "error: the document: loose.id is not unique; make it the primary key or give it a unique index"),
    ] {
        let model = format!("name = \"{table}\"\n[document]\ntable = \"{table}\"\nkey = \"{key}\"\nfields = [{{ name = \"{field}\", type = \"keyword\" }}]\n");
        assert_check_errors(&check(&model_file(&env, &format!("{table}.toml"), &model)), &[error]);
    }

    // Indexes missing: warnings (the model works, slowly), each with the statement to run;
    // once they are run, the check is clean.
    env.sql(
        "CREATE TABLE shelves (id bigserial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE items (id bigserial PRIMARY KEY, label text NOT NULL, shelf_id bigint);
         CREATE TABLE item_notes (id bigserial PRIMARY KEY, item_id bigint NOT NULL, note text);
         CREATE TABLE labels (id bigserial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE item_labels (item_id bigint NOT NULL, label_id bigint NOT NULL);",
    )
    .await;
    let items = model_file(&env, "items.toml", &format!("{ITEMS_MODEL}{ITEM_NOTES_AND_LABELS}"));
    let out = check(&items);
    assert_eq!(out.code, Some(0), "warnings alone exit 0: {out:?}");
    // The model repeats its integer key in no field: a note says what that costs the search
    // pages and what to add.
    let notes: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("note: ")).collect();
    assert!(notes.len() == 1 && notes[0].contains("`next`") && notes[0].contains("number = \"id\""), "{}", out.stdout);
    let warnings: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 4, "{}", out.stdout);
    for expected in [
        r#"warning: relation shelf: a changed shelves row finds its items rows by items.shelf_id, which has no index, so every such fan-out scans items. Run: CREATE INDEX ON "items" ("shelf_id", "id");"#,
        r#"warning: relation notes: every document reads its item_notes rows by item_notes.item_id, which has no index, so every batch scans item_notes. Run: CREATE INDEX ON "item_notes" ("item_id");"#,
        r#"warning: relation labels: every document reads its rows by item_labels.item_id, which has no index, so it scans item_labels. Run: CREATE INDEX ON "item_labels" ("item_id", "label_id");"#,
        r#"warning: relation labels: a changed related row finds its documents by item_labels.label_id, which has no index, so it scans item_labels. Run: CREATE INDEX ON "item_labels" ("label_id", "item_id");"#,
    ] {
        assert!(warnings.contains(&expected), "missing `{expected}` in:\n{}", out.stdout);
    }
    for w in &warnings {
        let statement = w.split("Run: ").nth(1).expect("a warning says what to run");
        env.sql(statement).await;
    }
    let out = check(&items);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("ok: every table"), "the statements given silence the warnings:\n{}", out.stdout);

    // A model file that is not valid, or not there: where, and what to write.
    for (spec, says) in [
        (
            model_file(&env, "bad.toml", &students_with(&[("type = \"integer\"", "type = \"int\"")])),
            &["document.fields[2] (age).type: `int` is not a type: use one of keyword, text, integer, long, double, boolean, date"][..],
        ),
        (
            model_file(&env, "unknown.toml", &students_with(&[("number = \"id\"", "number = \"id\"\nkeys = \"id\"")])),
            &["unknown field `keys`", "line "],
        ),
        (env.dir.join("absent.toml").to_string_lossy().into_owned(), &["cannot read it", "shipped model: students, refinebio"]),
    ] {
        let out = check(&spec);
        assert!(!out.ok(), "{out:?}");
        for expected in says {
            assert!(out.stderr.contains(expected), "missing `{expected}` in: {out:?}");
        }
    }

    // `migrate` refuses a model whose tables are missing, with the same words, and leaves the
    // capture it had.
    let err = tidemark::db::migrate(&env.pool, &Model::load("refinebio").unwrap()).await.expect_err("no refinebio tables here");
    assert!(err.to_string().contains("table experiments does not exist"), "{err}");
    env.sql("INSERT INTO students (id, first_name, last_name, age, year_in_school) VALUES (1, 'Ann', 'Lee', 20, 'FR')").await;
    assert_eq!(env.outstanding().await, 1, "the students capture is still installed");
}

/// A reference column whose type is not its key's (`items.shelf_id` text, `shelves.id`
/// bigint): the document query compares them (`shelves.id = items.shelf_id`), which
/// PostgreSQL refuses, so every batch of the model would fail. `model check` must say so
/// before `migrate` installs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_check_refuses_a_reference_column_whose_type_is_not_its_keys() {
    let env = Env::new().await;
    env.sql(
        "CREATE TABLE shelves (id bigserial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE items (id bigserial PRIMARY KEY, label text NOT NULL, shelf_id text);
         CREATE INDEX items_shelf_id ON items (shelf_id, id);",
    )
    .await;
    let items = model_file(&env, "items.toml", ITEMS_MODEL);
    // What the mismatch does: the model's document query cannot run on these tables.
    let model = Model::load(&items).unwrap();
    let load = load::load(&env.pool, &model, &["1".to_string()]).await;
    let err = load.expect_err("text = bigint is refused").to_string();
    assert!(err.contains("operator does not exist"), "{err}");
    // `migrate` refuses it, saying which column and what to run.
    let err = tidemark::db::migrate(&env.pool, &model).await.expect_err("migrate refuses the model").to_string();
    assert!(err.contains("items.shelf_id is text but references shelves.id, a bigint key") && err.contains("ALTER TABLE"), "{err}");
    // And so does `model check`.
    let out = env.run(&["model", "check", "--model", &items]);
    assert_eq!(out.code, Some(3), "the mismatch is an error:\n{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("items.shelf_id is text") && out.stdout.contains("TYPE bigint"), "{out:?}");
}

/// The binary with a model file, given by `--model` or `TIDEMARK_MODEL`: `migrate`, `sync`
/// (a fan-out three levels down included) and `admin status`, which says when the model it
/// is given is not the one whose capture is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_migrates_and_syncs_a_model_file() {
    let (model, env) = library_env(LIBRARY_MODEL, true, |_| {}).await;
    let spec = model.spec();
    let out = env.run(&["--model", &spec, "migrate"]);
    assert!(out.ok(), "migrate again: {out:?}");
    env.sql(LIBRARY_DATA).await;
    let out = env.run(&["--model", &spec, "sync"]);
    assert!(out.ok() && out.stdout.contains("synced: "), "{out:?}");
    let diff = differences(&library_expected(&env).await, &env.indexed_sources().await);
    assert!(diff.is_empty(), "after `tidemark sync`:\n{diff}");
    let country2 = md5_uuid(&env, "country2").await;
    env.sql(&format!("UPDATE countries SET code = 'C2b' WHERE id = '{country2}'")).await;
    let out = env.run_with(&["sync"], &[("TIDEMARK_MODEL", spec.as_str())]);
    assert!(out.ok() && out.stdout.contains("200 fanned out"), "{out:?}");
    let diff = differences(&library_expected(&env).await, &env.indexed_sources().await);
    assert!(diff.is_empty(), "after the country's code changed:\n{diff}");
    assert_eq!(env.count(json!({"term": {"author.city.country.code": "C2b"}})).await, 200);

    let status = |vars: &[(&str, &str)]| {
        let out = env.run_with(&["admin", "status", "--json"], vars);
        assert!(out.ok(), "{out:?}");
        serde_json::from_str::<Value>(&out.stdout).unwrap()
    };
    let ok = status(&[("TIDEMARK_MODEL", spec.as_str())]);
    assert_eq!(ok["problems"], json!([]), "{ok}");
    let other = status(&[]);
    let problems = other["problems"].to_string();
    assert!(
        problems.contains("the capture installed in the database is of model library") && problems.contains("run `tidemark migrate`"),
        "admin status with the default model on the library's database: {problems}"
    );
}

/// uuid keys under concurrency: a country renamed again while its fan-out is half done starts
/// over (its cursor reset), and two workers draining while a writer keeps moving books,
/// authors and cities end with the index equal to the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn library_renamed_again_mid_fan_out_and_drained_by_two_workers_under_writes() {
    let (_model, env) = library_env(LIBRARY_MODEL, true, |c| {
        c.sync.fanout_chunk = 50;
        c.sync.batch_size = 100;
    })
    .await;
    env.sql(LIBRARY_DATA).await;
    converge(&env, library_expected(&env).await, "first sync").await;

    let country1 = md5_uuid(&env, "country1").await;
    env.sql(&format!("UPDATE countries SET name = 'First' WHERE id = '{country1}'")).await;
    let a = env.engine();
    let lease = Duration::from_secs(60);
    let mut parent = fanout::claim_parent(&env.pool, a.owner(), lease).await.unwrap().unwrap();
    let model_a = a.services.model.clone();
    let step = fanout::expand_step(&env.pool, &model_a, a.owner(), lease, &mut parent, 50).await.unwrap();
    assert_eq!(step, fanout::Step::Marked(50));
    env.sql(&format!("UPDATE countries SET name = 'Second' WHERE id = '{country1}'")).await;
    let cursor: Option<String> = sqlx::query_scalar("SELECT cursor FROM tidemark.parents").fetch_one(&env.pool).await.unwrap();
    assert_eq!(cursor, None, "renamed again: the expansion starts over");
    let step = fanout::expand_step(&env.pool, &model_a, a.owner(), lease, &mut parent, 50).await.unwrap();
    assert_eq!(step, fanout::Step::Restarted);
    let r = env.drain().await;
    assert_eq!(r.fanned_out, 200, "all of the country's books again, from the start");
    converge(&env, library_expected(&env).await, "renamed twice").await;
    assert_eq!(env.count(json!({"term": {"author.city.country.name": "Second"}})).await, 200);

    // Two workers and a writer.
    let b = env.engine();
    let country2 = md5_uuid(&env, "country2").await;
    let writer = async {
        for i in 0..15 {
            let q = match i % 5 {
                0 => format!("UPDATE countries SET name = 'Name {i}' WHERE id = '{country2}'"),
                1 => format!("UPDATE authors SET city_id = 1 + (id + {i}) % 6 WHERE id % 7 = {}", i % 7),
                2 => format!("UPDATE cities SET name = 'City {i}' || id WHERE id % 2 = {}", i % 2),
                3 => format!("UPDATE books SET author_id = 1 + (author_id + {i}) % 30 WHERE published_year % 13 = {}", i % 13),
                _ => format!("INSERT INTO book_tags (book_id, tag) SELECT id, 'w{i}' FROM books WHERE published_year % 17 = {}", i % 17),
            };
            env.sql(&q).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    let (ra, rb, ()) = tokio::join!(a.drain(), b.drain(), writer);
    ra.unwrap();
    rb.unwrap();
    converge(&env, library_expected(&env).await, "two workers under writes").await;
}

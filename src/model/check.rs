//! `tidemark model check`: the model against the live database — the tables and columns it
//! names exist, keys have the declared types and are unique — and the indexes the fan-out
//! and the document query need, with the `CREATE INDEX` to run when one is missing (a
//! fan-out without it scans a table per changed row).

use sqlx::PgConnection;

use super::{sql::ident, KeyType, Link, Model, Node};

/// What `model check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// The model cannot be used on this database.
    pub errors: Vec<String>,
    /// It can, but something will be slow.
    pub warnings: Vec<String>,
    /// What the model file itself costs (not a problem of the database): e.g. search pages
    /// without `next` cursors.
    pub notes: Vec<String>,
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        if self.errors.is_empty() && self.warnings.is_empty() {
            out.push_str("ok: every table, column, key and index the model needs is there\n");
        }
        out
    }
}

/// A column's type as PostgreSQL formats it, or None when the table or column is missing.
async fn column_type(db: &mut PgConnection, table: &str, column: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
          WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(ident(table))
    .bind(column)
    .fetch_optional(db)
    .await
}

async fn table_exists(db: &mut PgConnection, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(ident(table)).fetch_one(db).await
}

/// Whether some index of `table` starts with `column`.
async fn indexed(db: &mut PgConnection, table: &str, column: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                          WHERE i.indrelid = to_regclass($1) AND a.attname = $2)",
    )
    .bind(ident(table))
    .bind(column)
    .fetch_one(db)
    .await
}

/// Whether `column` alone is unique in `table` (a primary key or unique index on it only).
async fn unique(db: &mut PgConnection, table: &str, column: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                          WHERE i.indrelid = to_regclass($1) AND a.attname = $2 AND i.indisunique AND i.indnkeyatts = 1)",
    )
    .bind(ident(table))
    .bind(column)
    .fetch_one(db)
    .await
}

/// The primary key's columns of `table`.
async fn primary_key(db: &mut PgConnection, table: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
    )
    .bind(ident(table))
    .fetch_all(db)
    .await
}

fn key_type_of(sql_type: &str) -> Option<KeyType> {
    match sql_type {
        "smallint" | "integer" | "bigint" => Some(KeyType::Integer),
        "uuid" => Some(KeyType::Uuid),
        _ => None,
    }
}

/// Whether a foreign key constraint makes `table.column` reference `target`.
async fn has_foreign_key(db: &mut PgConnection, table: &str, column: &str, target: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                          WHERE c.contype = 'f' AND cardinality(c.conkey) = 1
                            AND c.conrelid = to_regclass($1) AND c.confrelid = to_regclass($3) AND a.attname = $2)",
    )
    .bind(ident(table))
    .bind(column)
    .bind(ident(target))
    .fetch_one(db)
    .await
}

/// The places (relation paths) whose rows are referenced through a foreign key constraint:
/// inserting or deleting such a row cannot change a document by itself (nothing references
/// a new row; a delete is refused, or cascades into rows whose own capture marks their
/// documents), so the capture marks only their updates.
pub async fn protected_places(db: &mut PgConnection, model: &Model) -> Result<std::collections::BTreeSet<String>, sqlx::Error> {
    let mut out = std::collections::BTreeSet::new();
    for place in super::sql::places(model) {
        let r = place.path.last().expect("a place has a path");
        let parent_table = match place.path.len() {
            1 => model.root.table.clone(),
            n => place.path[n - 2].node.table.clone(),
        };
        let referenced = match &r.link {
            Link::BelongsTo { foreign_key } => has_foreign_key(db, &parent_table, foreign_key, &r.node.table).await?,
            Link::ManyToMany { through, other_key, .. } => has_foreign_key(db, through, other_key, &r.node.table).await?,
            Link::HasMany { .. } => false,
        };
        if referenced {
            out.insert(place.kind());
        }
    }
    Ok(out)
}

/// Every table and column the capture and the document query use exist: the first one
/// missing, said so that the fix is clear (what `migrate` checks before installing).
pub async fn tables_exist(db: &mut PgConnection, model: &Model) -> Result<Option<String>, sqlx::Error> {
    let mut report = Report::default();
    node(db, &model.root, "the document", &mut report, false, true).await?;
    Ok(report.errors.into_iter().next().map(|e| format!("model {}: {e}", model.name)))
}

/// The whole check.
pub async fn check(db: &mut PgConnection, model: &Model) -> Result<Report, sqlx::Error> {
    let mut report = Report::default();
    node(db, &model.root, "the document", &mut report, true, true).await?;
    report.notes.extend(model.paging_note());
    Ok(report)
}

async fn column(db: &mut PgConnection, table: &str, column: &str, what: &str, report: &mut Report) -> Result<Option<String>, sqlx::Error> {
    let t = column_type(db, table, column).await?;
    if t.is_none() {
        report.errors.push(format!("{what}: table {table} has no column {column}; fix the model (or the table)"));
    }
    Ok(t)
}

/// A column that references `target.key` (of type `key_type`): it exists and has the key's
/// type (a `text` column naming a `bigint` key makes every document query fail).
#[allow(clippy::too_many_arguments)]
async fn reference(
    db: &mut PgConnection,
    table: &str,
    col: &str,
    target: &str,
    key: &str,
    key_type: KeyType,
    what: &str,
    report: &mut Report,
) -> Result<(), sqlx::Error> {
    if let Some(t) = column(db, table, col, what, report).await? {
        if key_type_of(&t) != Some(key_type) {
            report.errors.push(format!(
                "{what}: {table}.{col} is {t} but references {target}.{key}, a {key_type} key; give it the key's type (ALTER TABLE {} ALTER COLUMN {} TYPE {})",
                ident(table),
                ident(col),
                key_type.sql()
            ));
        }
    }
    Ok(())
}

fn node<'a>(
    db: &'a mut PgConnection,
    n: &'a Node,
    what: &'a str,
    report: &'a mut Report,
    full: bool,
    root: bool,
) -> futures::future::BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        if !table_exists(db, &n.table).await? {
            report.errors.push(format!(
                "{what}: table {} does not exist; create your tables first (a shipped model's: `tidemark seed --model <name>`, or seeds/<model>/schema.sql)",
                n.table
            ));
            return Ok(());
        }
        if let Some(t) = column(db, &n.table, &n.key, &format!("{what}'s key"), report).await? {
            match key_type_of(&t) {
                None => report.errors.push(format!("{what}: key {}.{} is {t}; tidemark needs an integer or uuid key", n.table, n.key)),
                Some(k) if k != n.key_type => report.errors.push(format!(
                    "{what}: key {}.{} is {t} but the model says {}; write key_type = \"{}\"",
                    n.table,
                    n.key,
                    n.key_type,
                    if k == KeyType::Uuid { "uuid" } else { "bigint" }
                )),
                Some(_) => {}
            }
            if full && root {
                let pk = primary_key(db, &n.table).await?;
                if pk.len() > 1 {
                    report.errors.push(format!(
                        "{what}: table {} has a composite primary key ({}); a document needs a single-column key: add one (an identity or uuid column, unique) and name it in `key`",
                        n.table,
                        pk.join(", ")
                    ));
                } else if !unique(db, &n.table, &n.key).await? {
                    report
                        .errors
                        .push(format!("{what}: {}.{} is not unique; make it the primary key or give it a unique index", n.table, n.key));
                }
            }
        }
        for f in &n.fields {
            column(db, &n.table, &f.column, &format!("{what}, field {}", f.name), report).await?;
        }
        for r in &n.relations {
            let here = format!("relation {}", r.name);
            if !table_exists(db, &r.node.table).await? {
                report.errors.push(format!("{here}: table {} does not exist; create it first", r.node.table));
                continue;
            }
            match &r.link {
                Link::BelongsTo { foreign_key } => {
                    let what = format!("{here}'s foreign_key");
                    reference(db, &n.table, foreign_key, &r.node.table, &r.node.key, r.node.key_type, &what, report).await?;
                    if full && !indexed(db, &n.table, foreign_key).await? {
                        report.warnings.push(format!(
                            "{here}: a changed {} row finds its {} rows by {}.{}, which has no index, so every such fan-out scans {}. Run: CREATE INDEX ON {} ({}, {});",
                            r.node.table,
                            n.table,
                            n.table,
                            foreign_key,
                            n.table,
                            ident(&n.table),
                            ident(foreign_key),
                            ident(&n.key)
                        ));
                    }
                }
                Link::HasMany { foreign_key } => {
                    let what = format!("{here}'s foreign_key");
                    reference(db, &r.node.table, foreign_key, &n.table, &n.key, n.key_type, &what, report).await?;
                    if full && !indexed(db, &r.node.table, foreign_key).await? {
                        report.warnings.push(format!(
                            "{here}: every document reads its {} rows by {}.{}, which has no index, so every batch scans {}. Run: CREATE INDEX ON {} ({});",
                            r.node.table,
                            r.node.table,
                            foreign_key,
                            r.node.table,
                            ident(&r.node.table),
                            ident(foreign_key)
                        ));
                    }
                }
                Link::ManyToMany { through, this_key, other_key } => {
                    if !table_exists(db, through).await? {
                        report.errors.push(format!("{here}: join table {through} does not exist; create it first"));
                        continue;
                    }
                    reference(db, through, this_key, &n.table, &n.key, n.key_type, &format!("{here}'s this_key"), report).await?;
                    let what = format!("{here}'s other_key");
                    reference(db, through, other_key, &r.node.table, &r.node.key, r.node.key_type, &what, report).await?;
                    if full {
                        for (col, other, why) in [
                            (this_key, other_key, "every document reads its rows"),
                            (other_key, this_key, "a changed related row finds its documents"),
                        ] {
                            if !indexed(db, through, col).await? {
                                report.warnings.push(format!(
                                    "{here}: {why} by {through}.{col}, which has no index, so it scans {through}. Run: CREATE INDEX ON {} ({}, {});",
                                    ident(through),
                                    ident(col),
                                    ident(other)
                                ));
                            }
                        }
                    }
                }
            }
            node(db, &r.node, &here, report, full, false).await?;
        }
        Ok(())
    })
}

//! The capture triggers of a model: what `tidemark migrate` installs on the model's tables
//! and `tidemark model sql` prints for a DBA to review.
//!
//! Every table of the model gets statement-level triggers (one run per statement, whatever
//! its size) with transition tables, and each writes one of two things in the writer's
//! transaction, taking no lock another writer waits for (docs/protocol.md, rules 17–18):
//!
//! - **a root row's key** appended to `tidemark.changes` — for the root table itself, and for
//!   the tables whose rows name a root key directly (a has-many child of the root, the join
//!   table of a many-to-many of the root);
//! - **a parent mark**, `(kind, key)` in `tidemark.parents`, for every other table: the
//!   place of the changed row in the document (`kind`, the relation names from the root)
//!   and its key. Workers expand it into the documents that contain it, in chunks with a
//!   cursor, whatever the depth.
//!
//! An `UPDATE` marks only rows whose columns the document uses changed. `TRUNCATE` asks for
//! a rebuild.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    sql::{ident, literal, places},
    Link, Model, Node,
};

/// What a table's changes mean for the documents.
enum Effect {
    /// The root table: its keys.
    Root { key: String, used: Vec<String> },
    /// A table at a place: mark `(kind, key)` (on update only, when the place's rows are
    /// referenced through a foreign key constraint).
    Node { kind: String, key: String, used: Vec<String>, updates_only: bool },
    /// The child table of a has-many: mark its parent (`None`: the root, by key) with the
    /// foreign key's old and new values.
    Child { parent: Option<String>, key: String, foreign_key: String, used: Vec<String> },
    /// The join table of a many-to-many: mark its parent (`None`: the root) with `this_key`.
    Through { parent: Option<String>, this_key: String, other_key: String },
}

/// The columns of a node's table that its part of the document reads.
fn used(node: &Node) -> Vec<String> {
    let mut cols = vec![node.key.clone()];
    cols.extend(node.fields.iter().map(|f| f.column.clone()));
    for r in &node.relations {
        if let Link::BelongsTo { foreign_key } = &r.link {
            cols.push(foreign_key.clone());
        }
    }
    cols.sort();
    cols.dedup();
    cols
}

/// Each table of the model with what its changes mean.
fn effects(model: &Model, protected: &BTreeSet<String>) -> BTreeMap<String, Vec<Effect>> {
    let mut out: BTreeMap<String, Vec<Effect>> = BTreeMap::new();
    out.entry(model.root.table.clone()).or_default().push(Effect::Root { key: model.root.key.clone(), used: used(&model.root) });
    for place in places(model) {
        let r = place.path.last().expect("a place has a path");
        // The parent's kind: None for the root.
        let parent = (place.path.len() > 1)
            .then(|| place.path[..place.path.len() - 1].iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join("."));
        match &r.link {
            Link::HasMany { foreign_key } => {
                let mut cols = used(&r.node);
                cols.push(foreign_key.clone());
                cols.sort();
                cols.dedup();
                out.entry(r.node.table.clone()).or_default().push(Effect::Child {
                    parent,
                    key: r.node.key.clone(),
                    foreign_key: foreign_key.clone(),
                    used: cols,
                });
            }
            Link::ManyToMany { through, this_key, other_key } => {
                out.entry(through.clone()).or_default().push(Effect::Through {
                    parent,
                    this_key: this_key.clone(),
                    other_key: other_key.clone(),
                });
                let updates_only = protected.contains(&place.kind());
                out.entry(r.node.table.clone()).or_default().push(Effect::Node {
                    kind: place.kind(),
                    key: r.node.key.clone(),
                    used: used(&r.node),
                    updates_only,
                });
            }
            Link::BelongsTo { .. } => {
                let updates_only = protected.contains(&place.kind());
                out.entry(r.node.table.clone()).or_default().push(Effect::Node {
                    kind: place.kind(),
                    key: r.node.key.clone(),
                    used: used(&r.node),
                    updates_only,
                });
            }
        }
    }
    out
}

/// A function name for a table: `tidemark.capture_<table>_<op>`.
fn function(table: &str, op: &str) -> String {
    format!("tidemark.capture_{}_{op}", table.replace('.', "__"))
}

fn changed(cols: &[String], n: &str, o: &str) -> String {
    let side = |a: &str| cols.iter().map(|c| format!("{a}.{}", ident(c))).collect::<Vec<_>>().join(", ");
    format!("({}) IS DISTINCT FROM ({})", side(n), side(o))
}

/// Appends `(key, v)` rows to the log, or marks parents, from a query of key values.
fn write(parent: &Option<String>, keys_query: &str) -> String {
    match parent {
        None => format!(
            "    INSERT INTO tidemark.changes (key, seq) SELECT DISTINCT k::text, v FROM ({keys_query}) q(k) WHERE k IS NOT NULL;\n"
        ),
        Some(kind) => format!(
            "    PERFORM tidemark.mark_parents({}, ARRAY(SELECT DISTINCT k::text FROM ({keys_query}) q(k) WHERE k IS NOT NULL));\n",
            literal(kind)
        ),
    }
}

/// The body of one effect for one operation (`rows`: the transition table(s) it reads).
fn statement(effect: &Effect, op: &str) -> String {
    match (effect, op) {
        (Effect::Root { key, .. }, "insert") => format!("    INSERT INTO tidemark.changes (key, seq) SELECT n.{}::text, v FROM new_rows n;\n", ident(key)),
        (Effect::Root { key, .. }, "delete") => format!("    INSERT INTO tidemark.changes (key, seq) SELECT o.{}::text, v FROM old_rows o;\n", ident(key)),
        // The hot path (a one-row UPDATE of a document's own row): one query, pairing old and
        // new rows by key; a changed key has no partner, so both of its keys are logged. A FULL
        // JOIN whose WHERE keeps it one (it tests a side for NULL) on purpose: PL/pgSQL keeps
        // the plan of a connection's first run, made for that run's transition tables, and an
        // inner join planned for one row is a nested loop that made a later 20,000-row UPDATE
        // on the connection run for minutes; a full join is a hash or merge join at any size
        // (tests/capture.rs, a_large_update_after_small_ones…).
        (Effect::Root { key, used }, _) => format!(
            "    INSERT INTO tidemark.changes (key, seq)\n    SELECT coalesce(n.{k}, o.{k})::text, v FROM new_rows n FULL JOIN old_rows o ON o.{k} = n.{k}\n     WHERE n.{k} IS NULL OR o.{k} IS NULL OR {};\n",
            changed(used, "n", "o"),
            k = ident(key)
        ),
        (Effect::Node { updates_only: true, .. }, "insert" | "delete") => String::new(),
        (Effect::Node { kind, key, .. }, "insert") => format!("    PERFORM tidemark.mark_parents({}, ARRAY(SELECT n.{}::text FROM new_rows n));\n", literal(kind), ident(key)),
        (Effect::Node { kind, key, .. }, "delete") => format!("    PERFORM tidemark.mark_parents({}, ARRAY(SELECT o.{}::text FROM old_rows o));\n", literal(kind), ident(key)),
        (Effect::Node { kind, key, used, .. }, _) => format!(
            "    PERFORM tidemark.mark_parents({}, ARRAY(\n        SELECT DISTINCT coalesce(n.{k}, o.{k})::text FROM new_rows n FULL JOIN old_rows o ON o.{k} = n.{k}\n         WHERE n.{k} IS NULL OR o.{k} IS NULL OR {}));\n",
            literal(kind),
            changed(used, "n", "o"),
            k = ident(key)
        ),
        (Effect::Child { parent, foreign_key, .. }, "insert") => write(parent, &format!("SELECT n.{} FROM new_rows n", ident(foreign_key))),
        (Effect::Child { parent, foreign_key, .. }, "delete") => write(parent, &format!("SELECT o.{} FROM old_rows o", ident(foreign_key))),
        (Effect::Child { parent, key, foreign_key, used }, _) => write(
            parent,
            &format!(
                "SELECT unnest(ARRAY[n.{fk}, o.{fk}]) FROM new_rows n FULL JOIN old_rows o ON o.{k} = n.{k} WHERE n.{k} IS NULL OR o.{k} IS NULL OR {}",
                changed(used, "n", "o"),
                fk = ident(foreign_key),
                k = ident(key)
            ),
        ),
        (Effect::Through { parent, this_key, .. }, "insert") => write(parent, &format!("SELECT n.{} FROM new_rows n", ident(this_key))),
        (Effect::Through { parent, this_key, .. }, "delete") => write(parent, &format!("SELECT o.{} FROM old_rows o", ident(this_key))),
        (Effect::Through { parent, this_key, other_key }, _) => write(
            parent,
            &format!(
                "SELECT coalesce(n.{t}, o.{t}) FROM new_rows n FULL JOIN old_rows o ON o.{t} = n.{t} AND o.{ot} = n.{ot} WHERE n.{t} IS NULL OR o.{t} IS NULL",
                t = ident(this_key),
                ot = ident(other_key)
            ),
        ),
    }
}

fn draws_number(effects: &[Effect]) -> bool {
    effects.iter().any(|e| matches!(e, Effect::Root { .. } | Effect::Child { parent: None, .. } | Effect::Through { parent: None, .. }))
}

/// Removes whatever capture an earlier `migrate` (of this or another model) installed.
pub const DROP_CAPTURE: &str = r#"DO $drop$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tgname, tgrelid::regclass AS rel FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'tidemark\_capture%' LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
    END LOOP;
    FOR t IN SELECT p.oid::regprocedure AS f FROM pg_proc p
              WHERE p.pronamespace = 'tidemark'::regnamespace AND p.proname LIKE 'capture\_%' AND p.proname <> 'capture_truncate' LOOP
        EXECUTE format('DROP FUNCTION %s', t.f);
    END LOOP;
END $drop$;
"#;

/// The SQL that installs the capture of `model` (after [`DROP_CAPTURE`]); `protected` are
/// the places whose rows a foreign key constraint references ([`super::check::protected_places`]).
pub fn capture_sql(model: &Model, protected: &BTreeSet<String>) -> String {
    let mut out = format!("-- Capture of model {} (fingerprint {}), generated by tidemark.\n", model.name, model.fingerprint);
    out.push_str(DROP_CAPTURE);
    for (table, effects) in effects(model, protected) {
        out.push_str(&format!("\n-- {table}\n"));
        for op in ["insert", "update", "delete"] {
            let name = function(&table, op);
            let body: String = effects.iter().map(|e| statement(e, op)).collect();
            if body.is_empty() {
                // Nothing this operation does can change a document (the rows are referenced
                // through a foreign key: see `protected_places`).
                continue;
            }
            let decl = if draws_number(&effects) { "DECLARE\n    v bigint := nextval('tidemark.seq');\n" } else { "" };
            out.push_str(&format!(
                // No JIT: a plan cached for a 100,000-row statement is costed high enough to be
                // compiled, and was compiled again at every later one-row statement (350 ms each).
                "CREATE FUNCTION {name}() RETURNS trigger\nLANGUAGE plpgsql SET jit = off AS $$\n{decl}BEGIN\n{body}    RETURN NULL;\nEND $$;\n"
            ));
            let refs = match op {
                "insert" => "REFERENCING NEW TABLE AS new_rows",
                "update" => "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
                _ => "REFERENCING OLD TABLE AS old_rows",
            };
            out.push_str(&format!(
                "CREATE TRIGGER tidemark_capture_{op} AFTER {} ON {} {refs} FOR EACH STATEMENT EXECUTE FUNCTION {name}();\n",
                op.to_uppercase(),
                ident(&table)
            ));
        }
        out.push_str(&format!(
            "CREATE TRIGGER tidemark_capture_truncate AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION tidemark.capture_truncate();\n",
            ident(&table)
        ));
    }
    out
}

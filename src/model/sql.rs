//! The SQL a model reads with: the query that builds documents (one statement per batch,
//! whatever the depth: the root's relations joined set-wise, deeper ones subqueries of
//! their row, never a query per row),
//! and the fan-out queries that find the documents a related row is part of.
//!
//! tidemark holds keys as text and casts them to the key's type where it binds them, so a
//! query's key comparisons use the table's own index whatever the type.

use super::{Field, FieldType, Link, Model, Node, Piece, Relation, Template};

/// Double-quotes an identifier (`schema.table` becomes `"schema"."table"`).
pub fn ident(name: &str) -> String {
    name.split('.').map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(".")
}

/// A string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How a document query picks its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rows {
    /// `$1`: the keys (text).
    Keys,
    /// A key range, its bounds bound in order (text): `lo <= key` if `lo`, `key < hi` if `hi`.
    Range { lo: bool, hi: bool },
}

/// One output of a document and the SQL it is read with. The same tree renders two
/// statements: the document as JSON built by the database ([`document_query`]; `engine=sql`
/// searches it in SQL), and plain columns that tidemark writes as JSON itself
/// ([`row_query`], the loader's: building JSON in the database costs about as much again
/// as reading the rows, BENCHMARKS.md §9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// A scalar, read as text: a JSON string (keyword, text), or the number or boolean its
    /// text spells (see [`crate::document`]).
    Scalar { name: String, kind: FieldType, sql: String },
    /// A value that is JSON already (a date; a relation read by a subquery of its row).
    Json { name: String, sql: String },
    /// A belongs-to of the root, joined: an object when `present`, else null.
    Object { name: String, present: String, parts: Vec<Part> },
    /// Scalars: an array of `kind` (none: `[]`), sorted and deduplicated by the database
    /// (`sorted`), or by the loader (text in byte order, which is the `"C"` collation's).
    Array { name: String, kind: FieldType, sql: String, sorted: bool },
    /// The completion's inputs: `{"input": [...]}`. The loader joins them from the root's
    /// columns (`inputs`) where every field they name is read as text; otherwise the
    /// database does (`sql`, a `text[]` column).
    Completion { name: String, sql: String, inputs: Option<Vec<Vec<Input>>> },
    /// The key again (`number`, `key_field`): the row query's first column, read once.
    Key { name: String, kind: FieldType, sql: String },
}

/// A piece of a completion input the loader joins: literal text, or the row query's
/// column of a root field (an input with a null field is left out, as `array_remove` did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Text(String),
    Column(usize),
}

impl Part {
    pub fn name(&self) -> &str {
        match self {
            Part::Scalar { name, .. }
            | Part::Json { name, .. }
            | Part::Object { name, .. }
            | Part::Array { name, .. }
            | Part::Completion { name, .. }
            | Part::Key { name, .. } => name,
        }
    }

    /// How many columns of [`row_query`] it takes.
    pub fn width(&self) -> usize {
        match self {
            Part::Object { parts, .. } => 1 + parts.iter().map(Part::width).sum::<usize>(),
            Part::Completion { inputs: Some(_), .. } | Part::Key { .. } => 0,
            _ => 1,
        }
    }

    /// `'name', json` for [`build_object`].
    fn json_pair(&self) -> String {
        let json = match self {
            Part::Scalar { sql, .. } | Part::Json { sql, .. } | Part::Key { sql, .. } => sql.clone(),
            Part::Object { present, parts, .. } => {
                format!("CASE WHEN {present} THEN {} END", build_object(&parts.iter().map(Part::json_pair).collect::<Vec<_>>()))
            }
            Part::Array { sql, .. } => format!("coalesce(to_json({sql}), '[]'::json)"),
            Part::Completion { sql, .. } => format!("json_build_object('input', to_json({sql}))"),
        };
        format!("{}, {json}", literal(self.name()))
    }

    /// The columns [`row_query`] reads it with, in order, each with its type.
    fn columns(&self, out: &mut Vec<(String, ColumnType)>) {
        match self {
            Part::Scalar { sql, .. } | Part::Json { sql, .. } => out.push((format!("({sql})::text"), ColumnType::Text)),
            Part::Object { present, parts, .. } => {
                out.push((format!("({present})"), ColumnType::Bool));
                parts.iter().for_each(|p| p.columns(out));
            }
            Part::Array { sql, .. } => out.push((format!("({sql})::text[]"), ColumnType::TextArray)),
            Part::Completion { sql, inputs: None, .. } => out.push((sql.clone(), ColumnType::TextArray)),
            Part::Completion { inputs: Some(_), .. } | Part::Key { .. } => {}
        }
    }
}

/// The type a column of [`row_query`] is read as: the query casts every column to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Bool,
    TextArray,
}

/// The columns of [`row_query`]: the key's, then those of `parts`, each with its type.
fn row_columns(key: &str, parts: &[Part]) -> Vec<(String, ColumnType)> {
    let mut columns = vec![(format!("{key}::text"), ColumnType::Text)];
    parts.iter().for_each(|p| p.columns(&mut columns));
    columns
}

/// The types of [`row_query`]'s columns, in order.
pub fn row_types(parts: &[Part]) -> Vec<ColumnType> {
    row_columns("", parts).into_iter().map(|(_, t)| t).collect()
}

/// What both renderings share: the document's parts, and the FROM list and filter they read.
struct Select {
    key: String,
    parts: Vec<Part>,
    from: String,
    filter: String,
}

/// The statement that returns `(key text, document json)` for the rows `rows` picks, in key
/// order. Keys that have no row come back as no row (a delete).
pub fn document_query(model: &Model, rows: Rows) -> String {
    let s = select(model, rows, false);
    let pairs: Vec<String> = s.parts.iter().map(Part::json_pair).collect();
    format!(
        "SELECT {key}::text, {doc} FROM {from} WHERE {filter} ORDER BY {key}",
        key = s.key,
        doc = build_object(&pairs),
        from = s.from,
        filter = s.filter
    )
}

/// The statement that returns the key (text), then the columns of [`document_parts`], for
/// the rows `rows` picks, in key order.
pub fn row_query(model: &Model, rows: Rows) -> String {
    let s = select(model, rows, true);
    let columns: Vec<String> = row_columns(&s.key, &s.parts).into_iter().map(|(sql, _)| sql).collect();
    format!("SELECT {} FROM {} WHERE {} ORDER BY {}", columns.join(", "), s.from, s.filter, s.key)
}

/// The parts of a document in order, as [`row_query`] reads them.
pub fn document_parts(model: &Model) -> Vec<Part> {
    select(model, Rows::Keys, true).parts
}

/// The root's own relations are joined set-wise, as a hand-written query would: a
/// belongs-to is a `LEFT JOIN`, and an array (has-many, many-to-many) is aggregated once
/// for the whole batch in a subquery that picks its rows by the same keys as the root (the
/// filter is repeated on the column that references the root), then joined on that column.
/// A correlated subquery per document instead costs one index probe per document and
/// relation, and aggregating as JSON costs more than as an array turned into JSON: on
/// 10,000 students the set-wise statement took about a third of the time. Deeper levels
/// (a relation of a related row) stay correlated subqueries of their row: they are read for
/// the related rows only.
///
/// `for_rows`: for [`row_query`], whose loader sorts text arrays and joins the completion's
/// inputs itself (the database's share of a document's cost, BENCHMARKS.md §9).
fn select(model: &Model, rows: Rows, for_rows: bool) -> Select {
    let root = &model.root;
    let key = format!("t0.{}", ident(&root.key));
    let cast = root.key_type.sql();
    let filter = |col: &str| match rows {
        Rows::Keys => format!("{col} = ANY($1::{cast}[])"),
        Rows::Range { lo: true, hi: true } => format!("{col} >= $1::{cast} AND {col} < $2::{cast}"),
        Rows::Range { lo: true, hi: false } => format!("{col} >= $1::{cast}"),
        Rows::Range { lo: false, hi: true } => format!("{col} < $1::{cast}"),
        Rows::Range { lo: false, hi: false } => "true".to_string(),
    };
    let mut parts: Vec<Part> = root.fields.iter().map(|f| field_part(f, "t0")).collect();
    let mut from = format!("{} t0", ident(&root.table));
    // Relations that share their link's subquery get their parts from it, by index.
    let mut shared: Vec<Option<Part>> = vec![None; root.relations.len()];
    for (g, members) in shared_links(root).iter().enumerate() {
        let relations: Vec<&Relation> = members.iter().map(|&m| &root.relations[m]).collect();
        let (join, group_parts) = shared_join(&relations, g, &root.key, &filter, for_rows);
        from.push_str(&join);
        for (&m, p) in members.iter().zip(group_parts) {
            shared[m] = Some(p);
        }
    }
    for (i, r) in root.relations.iter().enumerate() {
        let part = match shared[i].take() {
            Some(part) => part,
            None => match root_join(r, i, &root.key, &filter, for_rows) {
                Some((join, part)) => {
                    from.push_str(&join);
                    part
                }
                None => Part::Json { name: r.name.clone(), sql: relation_expr(r, "t0", &root.key, 1) },
            },
        };
        parts.push(part);
    }
    if let Some(c) = &model.completion {
        let inputs: Vec<String> = c.inputs.iter().map(|t| template_sql(t, root, "t0")).collect();
        // For the loader: root field i is column 1 + i; only one read as text (a Scalar) can
        // be joined as the database would (`col::text`).
        let joined: Option<Vec<Vec<Input>>> = for_rows.then(|| c.inputs.iter()).and_then(|templates| {
            templates
                .map(|t| {
                    t.0.iter()
                        .map(|p| match p {
                            Piece::Text(s) => Some(Input::Text(s.clone())),
                            Piece::Field(name) => root
                                .fields
                                .iter()
                                .position(|f| &f.name == name)
                                .filter(|&i| matches!(parts[i], Part::Scalar { .. }))
                                .map(|i| Input::Column(1 + i)),
                        })
                        .collect()
                })
                .collect()
        });
        parts.push(Part::Completion {
            name: c.name.clone(),
            sql: format!("array_remove(ARRAY[{}]::text[], NULL)", inputs.join(", ")),
            inputs: joined,
        });
    }
    if let Some(n) = &model.key_field {
        let kind = match root.key_type {
            super::KeyType::Uuid => FieldType::Keyword,
            _ => FieldType::Long,
        };
        parts.push(Part::Key { name: n.clone(), kind, sql: format!("t0.{}", ident(&root.key)) });
    }
    let filter = filter(&key);
    Select { key, parts, from, filter }
}

/// A field of the row `alias`: a date is JSON already (`to_json`), the rest scalars.
fn field_part(f: &Field, alias: &str) -> Part {
    match f.kind {
        FieldType::Date => Part::Json { name: f.name.clone(), sql: column_sql(f, alias) },
        kind => Part::Scalar { name: f.name.clone(), kind, sql: column_sql(f, alias) },
    }
}

/// The root's arrays of values that share their link (the same related table, reached the
/// same way), in groups of two or more, by relation index: each group is read by one
/// subquery, one pass over the link per batch instead of one a relation (refinebio's sample
/// ids, organism names and platform names all go through `experiment_samples` → `samples`:
/// each pass read every sample). Only values reached through belongs-to hops (one value a
/// related row) share: a has-many hop would repeat the other values' rows.
fn shared_links(root: &Node) -> Vec<Vec<usize>> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, r) in root.relations.iter().enumerate() {
        let Some(path) = &r.value else { continue };
        if !r.link.is_many() || joins_many(&r.node, path) || value_chain(&r.node, "c", path, 2).2 == FieldType::Date {
            continue;
        }
        let (from, col, _) = link(r, "t0", "c", &root.key);
        let signature = format!("{from}|{col}");
        match groups.iter_mut().find(|(s, _)| *s == signature) {
            Some((_, members)) => members.push(i),
            None => groups.push((signature, vec![i])),
        }
    }
    groups.into_iter().map(|(_, m)| m).filter(|m| m.len() > 1).collect()
}

/// The subquery of a group of [`shared_links`] (`g`: its number) and the members' parts.
fn shared_join(members: &[&Relation], g: usize, root_key: &str, filter: &dyn Fn(&str) -> String, for_rows: bool) -> (String, Vec<Part>) {
    let alias = format!("g{g}");
    let child = format!("{alias}c");
    let (from, col, _) = link(members[0], "t0", &child, root_key);
    let (mut joins, mut aggs, mut parts) = (String::new(), Vec::new(), Vec::new());
    for (j, r) in members.iter().enumerate() {
        let path = r.value.as_ref().expect("shared: an array of values");
        // Each member's hops get aliases of their own (t10…, t20…).
        let (hops, value, kind) = chain(&r.node, &child, path, 10 * (j + 1), "LEFT JOIN");
        joins.push_str(&hops);
        let (agg, sorted) = values_agg(&value, kind, for_rows);
        aggs.push(format!("{agg} FILTER (WHERE ({value}) IS NOT NULL) AS v{j}"));
        parts.push(Part::Array { name: r.name.clone(), kind, sql: format!("{alias}.v{j}"), sorted });
    }
    let join = format!(
        " LEFT JOIN (SELECT {col} AS k, {aggs} FROM {from}{joins} WHERE {w} GROUP BY {col}) {alias} ON {alias}.k = t0.{key}",
        aggs = aggs.join(", "),
        w = filter(&col),
        key = ident(root_key)
    );
    (join, parts)
}

/// The aggregate of a root array of values `value` of type `kind`, and whether it sorts
/// and deduplicates them. For the loader (`for_rows`) text is left to tidemark (an ordered
/// aggregate sorts each document's values on its own; byte order is the `"C"` collation's);
/// numbers are sorted by the database, as numbers, and so is everything `engine=sql` reads.
fn values_agg(value: &str, kind: FieldType, for_rows: bool) -> (String, bool) {
    let text = matches!(kind, FieldType::Keyword | FieldType::Text);
    if for_rows && text {
        return (format!("array_agg({value})"), false);
    }
    let collate = if text { " COLLATE \"C\"" } else { "" };
    (format!("array_agg(DISTINCT ({value}){collate} ORDER BY ({value}){collate})"), true)
}

/// A relation of the root joined set-wise (see [`select`]): the join to append to the FROM
/// list and the relation's part over it; None where a correlated subquery stays (a
/// belongs-to read as one value, or an array of dates).
fn root_join(r: &Relation, i: usize, root_key: &str, filter: &dyn Fn(&str) -> String, for_rows: bool) -> Option<(String, Part)> {
    let alias = format!("r{i}");
    let ckey = ident(&r.node.key);
    let name = r.name.clone();
    if !r.link.is_many() {
        if r.value.is_some() {
            return None;
        }
        let (from, related, parent) = link(r, "t0", &alias, root_key);
        let mut parts: Vec<Part> = r.node.fields.iter().map(|f| field_part(f, &alias)).collect();
        for rr in &r.node.relations {
            parts.push(Part::Json { name: rr.name.clone(), sql: relation_expr(rr, &alias, &r.node.key, 2) });
        }
        return Some((
            format!(" LEFT JOIN {from} ON {related} = {parent}"),
            Part::Object { name, present: format!("{related} IS NOT NULL"), parts },
        ));
    }
    // The column of the related side that holds the root's key, and the FROM list that has it.
    let child = format!("{alias}c");
    let (from, col, _) = link(r, "t0", &child, root_key);
    let on = format!("{alias}.k = t0.{}", ident(root_key));
    match &r.value {
        None => {
            let obj = build_object(&node_pairs(&r.node, &child, 2));
            Some((
                format!(
                    " LEFT JOIN (SELECT {col} AS k, json_agg({obj} ORDER BY {child}.{ckey}) AS v FROM {from} WHERE {w} GROUP BY {col}) {alias} ON {on}",
                    w = filter(&col)
                ),
                Part::Json { name, sql: format!("coalesce({alias}.v, '[]'::json)") },
            ))
        }
        Some(path) => {
            let (joins, value, kind) = value_chain(&r.node, &child, path, 2);
            if kind == FieldType::Date {
                // A date is JSON already (`to_json`), which has no equality to deduplicate by.
                return None;
            }
            let (agg, sorted) = values_agg("v", kind, for_rows);
            Some((
                format!(
                    " LEFT JOIN (SELECT k, {agg} AS v FROM (SELECT {col} AS k, {value} AS v FROM {from}{joins} WHERE {w}) x WHERE v IS NOT NULL GROUP BY k) {alias} ON {on}",
                    w = filter(&col)
                ),
                Part::Array { name, kind, sql: format!("{alias}.v"), sorted },
            ))
        }
    }
}

/// `json_build_object` takes at most 100 arguments: longer lists are built in parts and
/// concatenated (as jsonb would reorder keys, the parts stay json and are joined as text).
fn build_object(pairs: &[String]) -> String {
    if pairs.len() <= 50 {
        return format!("json_build_object({})", pairs.join(", "));
    }
    let parts: Vec<String> = pairs.chunks(50).map(|c| format!("json_build_object({})", c.join(", "))).collect();
    // Each part is `{...}`: strip its outer braces (only those: a part may end with a
    // nested object's) and join with a comma.
    let inner: Vec<String> = parts.iter().map(|p| format!("regexp_replace(({p})::text, '^\\{{|\\}}$', '', 'g')")).collect();
    format!("('{{' || concat_ws(',', {}) || '}}')::json", inner.join(", "))
}

/// `'name', expression` for each field and relation of `node` (a row aliased `alias`).
fn node_pairs(node: &Node, alias: &str, depth: usize) -> Vec<String> {
    let mut pairs: Vec<String> = node.fields.iter().map(|f| format!("{}, {}", literal(&f.name), column_sql(f, alias))).collect();
    for r in &node.relations {
        pairs.push(format!("{}, {}", literal(&r.name), relation_expr(r, alias, &node.key, depth)));
    }
    pairs
}

/// A column as its field's JSON value: text is cast to `text` (a `char(n)` comes back
/// unpadded, an enum as its label), numbers and booleans as they are.
fn column_sql(f: &Field, alias: &str) -> String {
    let col = format!("{alias}.{}", ident(&f.column));
    match f.kind {
        FieldType::Keyword | FieldType::Text => format!("{col}::text"),
        FieldType::Date => format!("to_json({col})"),
        _ => col,
    }
}

/// The SQL text of a template over a row's columns (null if any field is null).
fn template_sql(t: &Template, node: &Node, alias: &str) -> String {
    let parts: Vec<String> =
        t.0.iter()
            .map(|p| match p {
                Piece::Text(s) => literal(s),
                Piece::Field(name) => {
                    let f = node.fields.iter().find(|f| &f.name == name).expect("validated: a template names fields of its table");
                    format!("{alias}.{}::text", ident(&f.column))
                }
            })
            .collect();
    if parts.is_empty() {
        "''".into()
    } else {
        format!("({})", parts.join(" || "))
    }
}

/// The join from a parent row (`parent`) to the related rows (`child`) of `r`, as a FROM
/// list with its condition: (from, condition).
fn hop(r: &Relation, parent: &str, child: &str, parent_node_key: &str) -> (String, String) {
    let (from, related, parent) = link(r, parent, child, parent_node_key);
    (from, format!("{related} = {parent}"))
}

/// The FROM list of `r`'s related rows (`child`) and the two columns its join condition
/// equates: (from, the related side's column, the parent's column).
fn link(r: &Relation, parent: &str, child: &str, parent_node_key: &str) -> (String, String, String) {
    let table = ident(&r.node.table);
    let ckey = format!("{child}.{}", ident(&r.node.key));
    match &r.link {
        Link::BelongsTo { foreign_key } => (format!("{table} {child}"), ckey, format!("{parent}.{}", ident(foreign_key))),
        Link::HasMany { foreign_key } => {
            (format!("{table} {child}"), format!("{child}.{}", ident(foreign_key)), format!("{parent}.{}", ident(parent_node_key)))
        }
        Link::ManyToMany { through, this_key, other_key } => {
            let j = format!("{child}j");
            (
                format!("{} {j} JOIN {table} {child} ON {ckey} = {j}.{}", ident(through), ident(other_key)),
                format!("{j}.{}", ident(this_key)),
                format!("{parent}.{}", ident(parent_node_key)),
            )
        }
    }
}

/// The JSON of relation `r` of the row `parent`: an object or null (belongs_to), an array
/// of objects in key order, or an array of scalars sorted and deduplicated (`value`).
fn relation_expr(r: &Relation, parent: &str, parent_key: &str, depth: usize) -> String {
    let child = format!("t{depth}");
    let (from, on) = hop(r, parent, &child, parent_key);
    match &r.value {
        None => {
            let obj = build_object(&node_pairs(&r.node, &child, depth + 1));
            if r.link.is_many() {
                format!(
                    "coalesce((SELECT json_agg({obj} ORDER BY {child}.{key}) FROM {from} WHERE {on}), '[]'::json)",
                    key = ident(&r.node.key)
                )
            } else {
                format!("(SELECT {obj} FROM {from} WHERE {on})")
            }
        }
        Some(path) => {
            let (joins, value, kind) = value_chain(&r.node, &child, path, depth + 1);
            let many = r.link.is_many() || joins_many(&r.node, path);
            if many {
                let collate = if matches!(kind, FieldType::Keyword | FieldType::Text) { " COLLATE \"C\"" } else { "" };
                format!(
                    "coalesce((SELECT json_agg(DISTINCT v{collate} ORDER BY v{collate}) FROM (SELECT {value} AS v FROM {from}{joins} WHERE {on}) x WHERE v IS NOT NULL), '[]'::json)"
                )
            } else {
                format!("(SELECT to_json({value}) FROM {from}{joins} WHERE {on})")
            }
        }
    }
}

/// The joins from `node` (aliased `alias`) along `path` to the value, the value's SQL, and
/// its type.
fn value_chain(node: &Node, alias: &str, path: &[String], depth: usize) -> (String, String, FieldType) {
    chain(node, alias, path, depth, "JOIN")
}

/// [`value_chain`] with its hops joined by `join` (`JOIN`, or `LEFT JOIN` where the row must
/// stay for the other values read beside it).
fn chain(node: &Node, alias: &str, path: &[String], depth: usize, join: &str) -> (String, String, FieldType) {
    let (first, rest) = path.split_first().expect("validated: a value path is not empty");
    if rest.is_empty() {
        let f = node.fields.iter().find(|f| &f.name == first).expect("validated: the value is a field");
        return (String::new(), column_sql(f, alias), f.kind);
    }
    let r = node.relations.iter().find(|r| &r.name == first).expect("validated: the path follows relations");
    let child = format!("t{depth}");
    let (from, on) = hop(r, alias, &child, &node.key);
    let (more, value, kind) = chain(&r.node, &child, rest, depth + 1, join);
    (format!(" {join} {from} ON {on}{more}"), value, kind)
}

fn joins_many(node: &Node, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else { return false };
    match node.relations.iter().find(|r| &r.name == first) {
        Some(r) => r.link.is_many() || joins_many(&r.node, rest),
        None => false,
    }
}

/// Statements on the root table's keys (as text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyQueries {
    /// `count(*)` of documents.
    pub count: String,
    /// Up to `$2` keys after `$1` (NULL: from the first), in key order.
    pub after: String,
    /// `$1` random keys.
    pub sample: String,
    /// Which of the keys `$1` have a row.
    pub existing: String,
}

pub fn key_queries(model: &Model) -> KeyQueries {
    let (table, key, cast) = (ident(&model.root.table), ident(&model.root.key), model.root.key_type.sql());
    KeyQueries {
        count: format!("SELECT count(*) FROM {table}"),
        // Ordered by the key itself (`t.`): an unqualified name in ORDER BY is the output
        // column, here the key as text, whose order is not the key's (`10` < `9`).
        after: format!("SELECT t.{key}::text FROM {table} t WHERE $1::text IS NULL OR t.{key} > $1::{cast} ORDER BY t.{key} LIMIT $2"),
        sample: format!("SELECT {key}::text FROM {table} ORDER BY random() LIMIT $1"),
        existing: format!("SELECT {key}::text FROM {table} WHERE {key} = ANY($1::{cast}[])"),
    }
}

/// A table occurrence in the model: where it hangs (the relation names from the root) and
/// its node.
pub struct Place<'a> {
    pub path: Vec<&'a Relation>,
    pub node: &'a Node,
}

impl Place<'_> {
    /// The path's name, as `tidemark.parents.kind` stores it: relation names joined by `.`.
    pub fn kind(&self) -> String {
        self.path.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(".")
    }
}

/// Every related table occurrence below the root, depth first.
pub fn places(model: &Model) -> Vec<Place<'_>> {
    fn walk<'a>(node: &'a Node, path: &mut Vec<&'a Relation>, out: &mut Vec<Place<'a>>) {
        for r in &node.relations {
            path.push(r);
            out.push(Place { path: path.clone(), node: &r.node });
            walk(&r.node, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(&model.root, &mut Vec::new(), &mut out);
    out
}

/// The place whose kind is `kind`.
pub fn place<'a>(model: &'a Model, kind: &str) -> Option<Place<'a>> {
    places(model).into_iter().find(|p| p.kind() == kind)
}

/// The fan-out query of a place: the keys (text) of the documents that contain the row of
/// that place whose key is `$1` (text), after `$2` (text; NULL: from the start), in key
/// order, at most `$3`.
///
/// The root rows are walked in key order from the cursor and each is tested with `EXISTS`
/// (no `DISTINCT` over every matching row): a page of a parent that most documents name
/// (refinebio's most common organism, 81,501 experiments) took 1.5-2.7 s when every page
/// joined, deduplicated and sorted all the rows still after the cursor, and 0.17 s this way
/// for the first page; a rare parent's page is no slower (BENCHMARKS.md §8).
pub fn fanout_query(model: &Model, place: &Place<'_>) -> String {
    let root = &model.root;
    let rkey = format!("t0.{}", ident(&root.key));
    // The EXISTS sub-select: its FROM list, and its conditions (the first hop's join
    // condition names t0: it is a condition of the sub-select, not a join).
    let mut inner = String::new();
    let mut conds: Vec<String> = Vec::new();
    let mut add = |from: String, on: String| {
        if inner.is_empty() {
            inner = from;
            conds.push(on);
        } else {
            inner.push_str(&format!(" JOIN {from} ON {on}"));
        }
    };
    let mut parent = "t0".to_string();
    let mut parent_key = root.key.clone();
    let (last, path) = place.path.split_last().expect("a place has a path");
    for (i, r) in path.iter().enumerate() {
        let child = format!("t{}", i + 1);
        let (f, on) = hop(r, &parent, &child, &parent_key);
        add(f, on);
        parent = child;
        parent_key = r.node.key.clone();
    }
    // The last step is matched on the column that references the changed row, not on the
    // row itself: a deleted row (no foreign key protects it) or a key's old value is gone
    // from its table, yet the documents that still name it must be found.
    let target = match &last.link {
        Link::BelongsTo { foreign_key } => format!("{parent}.{}", ident(foreign_key)),
        Link::ManyToMany { through, this_key, other_key } => {
            let j = format!("t{}j", path.len() + 1);
            add(format!("{} {j}", ident(through)), format!("{j}.{} = {parent}.{}", ident(this_key), ident(&parent_key)));
            format!("{j}.{}", ident(other_key))
        }
        Link::HasMany { .. } => {
            // A has-many row names its parent itself (its deletion marks the parent): it is
            // found through its own row.
            let child = format!("t{}", path.len() + 1);
            let (f, on) = hop(last, &parent, &child, &parent_key);
            add(f, on);
            format!("{child}.{}", ident(&last.node.key))
        }
    };
    let matched = format!("{target} = $1::{}", place.node.key_type.sql());
    let cond = if inner.is_empty() {
        matched
    } else {
        conds.push(matched);
        format!("EXISTS (SELECT 1 FROM {inner} WHERE {})", conds.join(" AND "))
    };
    let cast = root.key_type.sql();
    format!(
        "SELECT {rkey}::text FROM {table} t0 WHERE {cond} AND ($2::text IS NULL OR {rkey} > $2::{cast}) ORDER BY {rkey} LIMIT $3",
        table = ident(&root.table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("app.students"), "\"app\".\"students\"");
        assert_eq!(literal("O'Brien"), "'O''Brien'");
    }
}

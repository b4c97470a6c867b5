//! The declared model: which table holds the documents, which columns and related rows
//! (to any depth) each document carries, with which index types, and how the search
//! application presents it. Read from a TOML file (`--model`, `TIDEMARK_MODEL`, `model` in
//! the config; the student directory by default) and validated once, with errors that say
//! where and what to write instead.
//!
//! The protocol code (claim, lease, versions, acknowledge, reindex, promotion) knows nothing
//! of it: it moves keys and JSON documents. This module turns the declaration into SQL —
//! the capture triggers ([`capture`]), the query that builds documents and the fan-out
//! queries ([`sql`]) — and into the index mapping ([`mapping`]).

pub mod capture;
pub mod check;
mod file;
pub mod mapping;
pub mod sql;

use std::{collections::BTreeSet, fmt, path::Path};

/// The student directory, the default model.
pub const STUDENTS: &str = include_str!("../../seeds/students/model.toml");
/// refine.bio's experiments and samples.
pub const REFINEBIO: &str = include_str!("../../seeds/refinebio/model.toml");

/// What is wrong with a model, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {origin}: {at}: {message}")]
pub struct ModelError {
    /// The file (or the shipped model's name).
    pub origin: String,
    /// Where in it: `document.relations[2] (course_names).value`.
    pub at: String,
    pub message: String,
}

/// A key's type: every integer type, or `uuid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Integer,
    Uuid,
}

impl KeyType {
    /// The SQL type keys are cast to when tidemark binds them (it holds them as text).
    pub fn sql(self) -> &'static str {
        match self {
            KeyType::Integer => "bigint",
            KeyType::Uuid => "uuid",
        }
    }
}

/// Results a search page reaches by number (`page`): the engines' default
/// `index.max_result_window` (the search pages' `MAX_RESULT_WINDOW`; here so that a model's
/// messages can name it without the model depending on the web module).
pub const RESULT_WINDOW: u64 = 10_000;

/// An index type of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Keyword,
    Text,
    Integer,
    Long,
    Double,
    Boolean,
    Date,
}

impl FieldType {
    fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "keyword" => FieldType::Keyword,
            "text" => FieldType::Text,
            "integer" => FieldType::Integer,
            "long" => FieldType::Long,
            "double" => FieldType::Double,
            "boolean" => FieldType::Boolean,
            "date" => FieldType::Date,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FieldType::Keyword => "keyword",
            FieldType::Text => "text",
            FieldType::Integer => "integer",
            FieldType::Long => "long",
            FieldType::Double => "double",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::Integer | FieldType::Long | FieldType::Double)
    }
}

const TYPES: &str = "keyword, text, integer, long, double, boolean, date";

/// One column of a table, as a document field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub column: String,
    pub kind: FieldType,
    /// For text: the name of its keyword sub-field.
    pub keyword: Option<String>,
}

/// How a related table hangs off its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// A column of the parent holds the related row's key: one object (or null).
    BelongsTo { foreign_key: String },
    /// A column of the related table holds the parent's key: an array.
    HasMany { foreign_key: String },
    /// A join table pairs them: an array.
    ManyToMany { through: String, this_key: String, other_key: String },
}

impl Link {
    pub fn is_many(&self) -> bool {
        !matches!(self, Link::BelongsTo { .. })
    }
}

/// A table as it appears in the document: the root, or a related table under a parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub table: String,
    pub key: String,
    pub key_type: KeyType,
    pub fields: Vec<Field>,
    pub relations: Vec<Relation>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    pub link: Link,
    pub node: Node,
    /// Scalars instead of objects: the path of the field taken from each related row.
    pub value: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub name: String,
    /// Each input: literal text and root fields, in order.
    pub inputs: Vec<Template>,
}

/// Text with `{field}` placeholders, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Field(String),
}

impl Template {
    fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("`{s}` opens a `{{` it does not close"))? + open;
            let name = rest[open + 1..close].trim();
            if name.is_empty() {
                return Err(format!("`{s}` has an empty `{{}}`: write a field's name in it"));
            }
            pieces.push(Piece::Field(name.to_string()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Field(f) => Some(f.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The text for a document: each field by its path (`university.name`), a list's
    /// values joined with ", ", a missing or null value as nothing.
    pub fn render(&self, doc: &serde_json::Value) -> String {
        fn text(v: &serde_json::Value) -> String {
            match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                serde_json::Value::Array(a) => a.iter().map(text).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(", "),
                other => other.to_string(),
            }
        }
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.clone(),
                Piece::Field(f) => text(&value_at(doc, f)),
            })
            .collect()
    }
}

/// The value at a dotted path of a document (`university.name`): through objects, and
/// through arrays of objects (the values of each, nulls left out); Null where there is none.
pub fn value_at(doc: &serde_json::Value, path: &str) -> serde_json::Value {
    use serde_json::Value;
    // Borrowed through objects (no copy of the document), owned once an array is mapped.
    let mut at: std::borrow::Cow<'_, Value> = std::borrow::Cow::Borrowed(doc);
    for part in path.split('.') {
        let pick = |a: &[Value]| Value::Array(a.iter().map(|x| x[part].clone()).filter(|x| !x.is_null()).collect());
        at = match at {
            std::borrow::Cow::Borrowed(Value::Object(o)) => match o.get(part) {
                Some(v) => std::borrow::Cow::Borrowed(v),
                None => std::borrow::Cow::Owned(Value::Null),
            },
            std::borrow::Cow::Borrowed(Value::Array(a)) => std::borrow::Cow::Owned(pick(a)),
            std::borrow::Cow::Owned(Value::Object(mut o)) => std::borrow::Cow::Owned(o.remove(part).unwrap_or(Value::Null)),
            std::borrow::Cow::Owned(Value::Array(a)) => std::borrow::Cow::Owned(pick(&a)),
            _ => std::borrow::Cow::Owned(Value::Null),
        };
    }
    at.into_owned()
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count and its word: "1 student", "1,234 students".
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// "a student", "an experiment": a noun with its indefinite article.
pub fn article(noun: &str) -> String {
    // A vowel letter that sounds as a consonant ("a university", "a user", "a one-off").
    let sounds_consonant = ["uni", "use", "usu", "uti", "eu", "one", "once"].iter().any(|p| noun.starts_with(p));
    if noun.starts_with(['a', 'e', 'i', 'o', 'u']) && !sounds_consonant {
        format!("an {noun}")
    } else {
        format!("a {noun}")
    }
}

/// A model without a `[search]` section: text search over its root's text and keyword
/// fields, nothing else (the page still lists and opens documents), each titled by the
/// first of those fields.
fn empty_view(model: &Model) -> SearchView {
    let query = model
        .root
        .fields
        .iter()
        .filter(|f| matches!(f.kind, FieldType::Text | FieldType::Keyword))
        .map(|f| f.name.clone())
        .collect::<Vec<_>>();
    // Its title: the first of those fields (a hit whose value is empty shows its key, see
    // `web::request::title`); none: the key.
    let title = Template(query.first().map(|f| Piece::Field(f.clone())).into_iter().collect());
    SearchView {
        noun: "document".into(),
        plural: "documents".into(),
        query,
        facets: vec![],
        histograms: vec![],
        sorts: vec![],
        suggest: None,
        distinct: vec![],
        title,
        show: model.root.fields.iter().map(|f| f.name.clone()).collect(),
        labels: Default::default(),
    }
}

/// The search application's view (see [`file::Search`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchView {
    pub noun: String,
    pub plural: String,
    pub query: Vec<String>,
    pub facets: Vec<Facet>,
    pub histograms: Vec<Histogram>,
    pub sorts: Vec<Sort>,
    pub suggest: Option<Suggest>,
    pub distinct: Vec<Distinct>,
    pub title: Template,
    pub show: Vec<String>,
    /// Names of shown fields, by path (see [`SearchView::label_of`]).
    pub labels: std::collections::BTreeMap<String, String>,
}

impl SearchView {
    /// How the page names the field at `path`: its declared label, or the path in words
    /// ("organism_names" → "organism names").
    pub fn label_of(&self, path: &str) -> String {
        self.labels.get(path).cloned().unwrap_or_else(|| path.replace(['_', '.'], " "))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facet {
    pub param: String,
    /// The field aggregated and filtered on (a keyword: for text, its keyword sub-field).
    pub field: String,
    pub label: String,
    /// Several values per document (an array): counts are of document–value pairs.
    pub multi: bool,
    /// What a count counts, after any count but 1 ("enrollments"), and after 1.
    pub counts: String,
    pub counts_one: String,
    /// How the values not listed are named after the count ("in courses").
    pub others: String,
    /// The only values the parameter takes (empty: any).
    pub values: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub param: String,
    pub field: String,
    pub label: String,
    pub interval: u32,
    pub min: i64,
    pub max: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sort {
    pub param: String,
    pub label: String,
    pub fields: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggest {
    pub field: String,
    pub label: Template,
    pub detail: Option<Template>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distinct {
    pub param: String,
    pub field: String,
    /// What is counted, after any count but 1 ("universities"), and after 1 ("university").
    pub label: String,
    pub one: String,
}

/// A validated model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub name: String,
    pub root: Node,
    /// The document field holding the key again, the search pages' last sort key and
    /// cursor: a `long` for an integer key (`number` in the file), a `keyword` for a uuid
    /// key (`key_field`). It is declared, not added by itself: a field added to a model
    /// whose text did not change would meet an index built without it (`dynamic: strict`)
    /// that the model's fingerprint does not flag for a rebuild.
    pub key_field: Option<String>,
    pub completion: Option<Completion>,
    pub search: Option<SearchView>,
    /// A fingerprint of the declaration (an index built from another model is rebuilt).
    pub fingerprint: String,
    /// The document queries, written once.
    queries: Queries,
    key_queries: std::sync::OnceLock<sql::KeyQueries>,
    /// The search view served, made once (see [`Model::view`]).
    view: std::sync::OnceLock<std::sync::Arc<SearchView>>,
}

/// The statements a model reads with, generated once when it is loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Queries {
    /// Every document as JSON built by the database (`engine=sql` searches it).
    documents: String,
    by_keys: String,
    ranges: [String; 4],
    parts: Vec<sql::Part>,
    /// The types of the row query's columns (the key's, then the parts').
    row_types: Vec<sql::ColumnType>,
    fanout: std::collections::BTreeMap<String, String>,
}

/// What a document path names: its type, whether it holds several values, and the field to
/// aggregate or sort on (a text field's keyword sub-field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub kind: FieldType,
    pub multi: bool,
    pub exact: Option<String>,
}

impl Model {
    /// The default model: the student directory.
    pub fn students() -> Model {
        Model::parse(STUDENTS, "students (shipped)").expect("the shipped students model is valid")
    }

    /// A shipped model by name, or a file.
    pub fn load(spec: &str) -> Result<Model, ModelError> {
        match spec {
            "students" => return Ok(Model::students()),
            "refinebio" => return Model::parse(REFINEBIO, "refinebio (shipped)"),
            _ => {}
        }
        let path = Path::new(spec);
        let text = std::fs::read_to_string(path).map_err(|e| ModelError {
            origin: spec.to_string(),
            at: "file".into(),
            message: format!("cannot read it ({e}); give the path of a model file, or a shipped model: students, refinebio"),
        })?;
        Model::parse(&text, spec)
    }

    /// Parses and validates a model file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Model, ModelError> {
        let err = |at: &str, message: String| ModelError { origin: origin.to_string(), at: at.to_string(), message };
        let raw: file::File = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| format!("line {}", text[..s.start].lines().count().max(1))).unwrap_or_else(|| "file".into());
            err(&at, e.message().to_string())
        })?;
        let v = Validator { origin };
        let key_type = v.key_type(raw.document.key_type.as_deref(), "document.key_type")?;
        v.ident(&raw.document.table, "document.table")?;
        v.key(&raw.document.key, "document.key")?;
        let mut root = Node {
            table: raw.document.table.clone(),
            key: raw.document.key.clone(),
            key_type,
            fields: v.fields(&raw.document.fields, "document.fields")?,
            relations: Vec::new(),
        };
        for (i, r) in raw.document.relations.iter().enumerate() {
            root.relations.push(v.relation(r, &format!("document.relations[{i}] ({})", r.name), &root, 1)?);
        }
        let mut names: BTreeSet<String> = root.fields.iter().map(|f| f.name.clone()).collect();
        for r in &root.relations {
            if !names.insert(r.name.clone()) {
                return Err(err("document.relations", format!("two fields are named `{}`: rename one", r.name)));
            }
        }
        let key_field = match (raw.document.number, raw.document.key_field) {
            (Some(n), _) if key_type == KeyType::Uuid => {
                return Err(err(
                    "document.number",
                    format!("`{n}`: only an integer key can be repeated as a number; for a uuid key write key_field = \"{n}\""),
                ));
            }
            (_, Some(n)) if key_type == KeyType::Integer => {
                return Err(err(
                    "document.key_field",
                    format!("`{n}`: an integer key is repeated as a number; write number = \"{n}\" instead"),
                ));
            }
            (number, key_field) => number.or(key_field),
        };
        if let Some(n) = &key_field {
            let at = if key_type == KeyType::Uuid { "document.key_field" } else { "document.number" };
            v.name(n, at)?;
            if !names.insert(n.clone()) {
                return Err(err(at, format!("`{n}` is already a field: choose another name")));
            }
        }
        let completion = match &raw.document.completion {
            Some(c) => {
                v.name(&c.name, "document.completion.name")?;
                if !names.insert(c.name.clone()) {
                    return Err(err("document.completion.name", format!("`{}` is already a field: choose another name", c.name)));
                }
                if c.inputs.is_empty() {
                    return Err(err("document.completion.inputs", "is empty: list at least one input, e.g. \"{name}\"".into()));
                }
                let mut inputs = Vec::new();
                for (i, t) in c.inputs.iter().enumerate() {
                    let at = format!("document.completion.inputs[{i}]");
                    let t = Template::parse(t).map_err(|m| err(&at, m))?;
                    for f in t.fields() {
                        if !root.fields.iter().any(|x| x.name == f) {
                            return Err(err(
                                &at,
                                format!("`{{{f}}}` is not a field of the document's own table; use one of: {}", field_list(&root)),
                            ));
                        }
                    }
                    inputs.push(t);
                }
                Some(Completion { name: c.name.clone(), inputs })
            }
            None => None,
        };
        let mut model = Model {
            name: raw.name.clone(),
            root,
            key_field,
            completion,
            search: None,
            fingerprint: format!("{:016x}", fnv1a(text.as_bytes())),
            queries: Queries::default(),
            key_queries: std::sync::OnceLock::new(),
            view: std::sync::OnceLock::new(),
        };
        if let Some(s) = &raw.search {
            model.search = Some(v.search(s, &model)?);
        }
        model.prepare_queries();
        Ok(model)
    }

    /// The search view `tidemark serve` serves: the declared `[search]`, or for a model
    /// without one, text search over its own text and keyword fields. Made once; every
    /// request shares it.
    pub fn view(&self) -> std::sync::Arc<SearchView> {
        self.view.get_or_init(|| std::sync::Arc::new(self.search.clone().unwrap_or_else(|| empty_view(self)))).clone()
    }

    /// Every document as `(key text, document json)`, built by the database
    /// ([`sql::document_query`]): what `engine=sql` searches.
    pub fn documents_query(&self) -> &str {
        &self.queries.documents
    }

    /// The row query picking `rows` ([`sql::row_query`]): the loader's, whose columns
    /// [`Model::parts`] describes.
    pub fn row_query(&self, rows: sql::Rows) -> &str {
        match rows {
            sql::Rows::Keys => &self.queries.by_keys,
            sql::Rows::Range { lo, hi } => &self.queries.ranges[usize::from(lo) * 2 + usize::from(hi)],
        }
    }

    /// The document's parts, in order: what the columns of [`Model::row_query`] are.
    pub fn parts(&self) -> &[sql::Part] {
        &self.queries.parts
    }

    /// The types of the row query's columns, in order (the key's first).
    pub fn row_types(&self) -> &[sql::ColumnType] {
        &self.queries.row_types
    }

    /// What the model's documents are called in messages: the search view's plural
    /// ("students", "experiments"), or "documents".
    pub fn plural(&self) -> &str {
        self.search.as_ref().map_or("documents", |s| s.plural.as_str())
    }

    /// `n` of the model's documents in words: "1 student", "2 students" (or documents).
    pub fn count(&self, n: u64) -> String {
        plural(n, self.search.as_ref().map_or("document", |s| s.noun.as_str()), self.plural())
    }

    /// What to add under `[document]` so that the document carries its key again (the
    /// search pages' tie-break and cursor): `number = "id"` for an integer key,
    /// `key_field = "id"` for a uuid key, under a name no field of the document has yet.
    /// None when the model declares one.
    pub fn key_field_hint(&self) -> Option<String> {
        if self.key_field.is_some() {
            return None;
        }
        let taken = |n: &str| {
            self.root.fields.iter().any(|f| f.name == n)
                || self.root.relations.iter().any(|r| r.name == n)
                || self.completion.as_ref().is_some_and(|c| c.name == n)
        };
        let name = ["id", "key", "key_id", "doc_key"].into_iter().find(|n| !taken(n)).unwrap_or("tidemark_key");
        Some(match self.root.key_type {
            KeyType::Integer => format!("number = \"{name}\""),
            KeyType::Uuid => format!("key_field = \"{name}\""),
        })
    }

    /// What a model that repeats its key in no document field costs its search pages, and
    /// what to add (`tidemark serve` warns with it at start, `model check` notes it); None
    /// when the model declares the field.
    pub fn paging_note(&self) -> Option<String> {
        let add = self.key_field_hint()?;
        Some(format!(
            "the document repeats its key in no field (`number` for an integer key, `key_field` for a uuid key), so the search \
             pages cannot tell {plural} of equal sort values apart: they offer no `next` cursor, page by number only (`page=N`, \
             within the first {window} results) and refuse `after`; add {add} under [document] and run `tidemark admin \
             reindex` to page at any depth",
            plural = self.plural(),
            window = RESULT_WINDOW,
        ))
    }

    /// Statements on the root table's keys.
    pub fn keys(&self) -> &sql::KeyQueries {
        self.key_queries.get_or_init(|| sql::key_queries(self))
    }

    /// The fan-out query of the place `kind` ([`sql::fanout_query`]), if the model has it.
    pub fn fanout(&self, kind: &str) -> Option<&str> {
        self.queries.fanout.get(kind).map(String::as_str)
    }

    fn prepare_queries(&mut self) {
        let range = |lo, hi| sql::row_query(self, sql::Rows::Range { lo, hi });
        let parts = sql::document_parts(self);
        let queries = Queries {
            documents: sql::document_query(self, sql::Rows::Range { lo: false, hi: false }),
            by_keys: sql::row_query(self, sql::Rows::Keys),
            ranges: [range(false, false), range(false, true), range(true, false), range(true, true)],
            row_types: sql::row_types(&parts),
            parts,
            fanout: sql::places(self).iter().map(|p| (p.kind(), sql::fanout_query(self, p))).collect(),
        };
        self.queries = queries;
    }

    /// What the document path `path` (`university.name`, `course_names`, `first_name.raw`)
    /// holds, or None if the document has no such field.
    pub fn resolve(&self, path: &str) -> Option<Resolved> {
        let parts: Vec<&str> = path.split('.').collect();
        if parts.len() == 1 && (self.key_field.as_deref() == Some(path)) {
            let kind = match self.root.key_type {
                KeyType::Integer => FieldType::Long,
                KeyType::Uuid => FieldType::Keyword,
            };
            return Some(Resolved { kind, multi: false, exact: Some(path.to_string()) });
        }
        resolve_in(&self.root, &parts, false, path)
    }
}

fn resolve_in(node: &Node, parts: &[&str], multi: bool, full: &str) -> Option<Resolved> {
    let (first, rest) = parts.split_first()?;
    if let Some(f) = node.fields.iter().find(|f| f.name == *first) {
        return match rest {
            [] => Some(Resolved {
                kind: f.kind,
                multi,
                exact: match f.kind {
                    FieldType::Text => f.keyword.as_ref().map(|k| format!("{full}.{k}")),
                    _ => Some(full.to_string()),
                },
            }),
            [sub] if f.keyword.as_deref() == Some(*sub) => {
                Some(Resolved { kind: FieldType::Keyword, multi, exact: Some(full.to_string()) })
            }
            _ => None,
        };
    }
    let r = node.relations.iter().find(|r| r.name == *first)?;
    let multi = multi || r.link.is_many();
    match &r.value {
        // Scalars: the relation's name holds the values.
        Some(value) => {
            let kind = value_type(&r.node, value)?;
            let many_inside = value_is_many(&r.node, value);
            rest.is_empty().then(|| Resolved {
                kind,
                multi: multi || many_inside,
                exact: (kind != FieldType::Text).then(|| full.to_string()),
            })
        }
        None => resolve_in(&r.node, rest, multi, full),
    }
}

/// The type of the field a `value` path names inside `node`.
fn value_type(node: &Node, path: &[String]) -> Option<FieldType> {
    let (first, rest) = path.split_first()?;
    if rest.is_empty() {
        return node.fields.iter().find(|f| &f.name == first).map(|f| f.kind);
    }
    let r = node.relations.iter().find(|r| &r.name == first)?;
    value_type(&r.node, rest)
}

fn value_is_many(node: &Node, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else { return false };
    match node.relations.iter().find(|r| &r.name == first) {
        Some(r) => r.link.is_many() || value_is_many(&r.node, rest),
        None => false,
    }
}

fn field_list(node: &Node) -> String {
    node.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// 64-bit FNV-1a: a fingerprint that does not change between builds or platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

struct Validator<'a> {
    origin: &'a str,
}

impl Validator<'_> {
    fn err(&self, at: &str, message: impl Into<String>) -> ModelError {
        ModelError { origin: self.origin.to_string(), at: at.to_string(), message: message.into() }
    }

    /// A word the page writes after a count: not blank.
    fn word(&self, s: &str, at: &str) -> Result<String, ModelError> {
        if s.trim().is_empty() {
            return Err(self.err(at, "is empty: write the word the page puts after a count"));
        }
        Ok(s.to_string())
    }

    /// A table or column name tidemark can write into SQL: letters, digits and `_` (a table
    /// may be schema-qualified, `schema.table`), starting with a letter or `_`.
    fn ident(&self, s: &str, at: &str) -> Result<(), ModelError> {
        let ok = !s.is_empty()
            && s.split('.').count() <= 2
            && s.split('.').all(|p| {
                p.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                    && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
        if ok {
            Ok(())
        } else {
            Err(self.err(at, format!("`{s}` is not a plain lower-case SQL name (letters, digits, `_`; a table may be `schema.table`); rename it or create a view with such a name")))
        }
    }

    fn key(&self, s: &str, at: &str) -> Result<(), ModelError> {
        if s.contains(',') || s.contains(' ') {
            return Err(self.err(at, format!("`{s}`: a composite key is not supported; give the table a single-column key (an identity or uuid column, unique) and name it here")));
        }
        self.ident(s, at)
    }

    /// A document field name: no dots (they separate paths), not empty, not starting with `_`.
    fn name(&self, s: &str, at: &str) -> Result<(), ModelError> {
        if s.is_empty() || s.contains('.') || s.starts_with('_') || s.chars().any(char::is_whitespace) {
            return Err(self.err(at, format!("`{s}` is not a usable field name: no dots, spaces or leading `_`")));
        }
        Ok(())
    }

    fn key_type(&self, s: Option<&str>, at: &str) -> Result<KeyType, ModelError> {
        match s.unwrap_or("bigint") {
            "bigint" | "integer" | "int" | "int4" | "int8" | "smallint" => Ok(KeyType::Integer),
            "uuid" => Ok(KeyType::Uuid),
            other => Err(self.err(at, format!("`{other}` is not a supported key type: write bigint (any integer type) or uuid"))),
        }
    }

    fn fields(&self, fields: &[file::Field], at: &str) -> Result<Vec<Field>, ModelError> {
        let mut out: Vec<Field> = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            let at = format!("{at}[{i}] ({})", f.name);
            self.name(&f.name, &at)?;
            let column = f.column.clone().unwrap_or_else(|| f.name.clone());
            self.ident(&column, &format!("{at}.column"))?;
            let kind = FieldType::parse(&f.kind)
                .ok_or_else(|| self.err(&format!("{at}.type"), format!("`{}` is not a type: use one of {TYPES}", f.kind)))?;
            if f.keyword.is_some() && kind != FieldType::Text {
                return Err(self.err(
                    &format!("{at}.keyword"),
                    format!("only a text field has a keyword sub-field; `{}` is {}: remove `keyword`", f.name, kind.name()),
                ));
            }
            if let Some(k) = &f.keyword {
                self.name(k, &format!("{at}.keyword"))?;
            }
            if out.iter().any(|o| o.name == f.name) {
                return Err(self.err(&at, format!("two fields are named `{}`: rename one", f.name)));
            }
            out.push(Field { name: f.name.clone(), column, kind, keyword: f.keyword.clone() });
        }
        Ok(out)
    }

    fn relation(&self, r: &file::Relation, at: &str, parent: &Node, depth: usize) -> Result<Relation, ModelError> {
        if depth > 8 {
            return Err(self.err(at, "relations nest deeper than 8 levels; flatten the model"));
        }
        self.name(&r.name, at)?;
        self.ident(&r.table, &format!("{at}.table"))?;
        let key = r.key.clone().unwrap_or_else(|| "id".into());
        self.key(&key, &format!("{at}.key"))?;
        let required = |name: &str, v: &Option<String>| -> Result<String, ModelError> {
            let v = v.clone().ok_or_else(|| self.err(at, format!("a {} relation needs `{name}`", r.kind)))?;
            self.ident(&v, &format!("{at}.{name}"))?;
            Ok(v)
        };
        let unused = |name: &str, v: &Option<String>| -> Result<(), ModelError> {
            match v {
                Some(_) => Err(self.err(&format!("{at}.{name}"), format!("a {} relation takes no `{name}`: remove it", r.kind))),
                None => Ok(()),
            }
        };
        let link = match r.kind.as_str() {
            "belongs_to" => {
                unused("through", &r.through)?;
                unused("this_key", &r.this_key)?;
                unused("other_key", &r.other_key)?;
                let fk = required("foreign_key", &r.foreign_key)?;
                Link::BelongsTo { foreign_key: fk }
            }
            "has_many" => {
                unused("through", &r.through)?;
                unused("this_key", &r.this_key)?;
                unused("other_key", &r.other_key)?;
                Link::HasMany { foreign_key: required("foreign_key", &r.foreign_key)? }
            }
            "many_to_many" => {
                unused("foreign_key", &r.foreign_key)?;
                Link::ManyToMany {
                    through: required("through", &r.through)?,
                    this_key: required("this_key", &r.this_key)?,
                    other_key: required("other_key", &r.other_key)?,
                }
            }
            other => {
                return Err(
                    self.err(&format!("{at}.kind"), format!("`{other}` is not a relation kind: use belongs_to, has_many or many_to_many"))
                )
            }
        };
        let _ = parent;
        let mut node = Node {
            table: r.table.clone(),
            key,
            key_type: self.key_type(r.key_type.as_deref(), &format!("{at}.key_type"))?,
            fields: self.fields(&r.fields, &format!("{at}.fields"))?,
            relations: Vec::new(),
        };
        for (i, sub) in r.relations.iter().enumerate() {
            let child = self.relation(sub, &format!("{at}.relations[{i}] ({})", sub.name), &node, depth + 1)?;
            if node.fields.iter().any(|f| f.name == child.name) || node.relations.iter().any(|x| x.name == child.name) {
                return Err(self.err(at, format!("two fields are named `{}`: rename one", child.name)));
            }
            node.relations.push(child);
        }
        let value = match &r.value {
            Some(v) => {
                let path: Vec<String> = v.split('.').map(str::to_string).collect();
                if value_type(&node, &path).is_none() {
                    return Err(self.err(
                        &format!("{at}.value"),
                        format!(
                            "`{v}` names no field of `{}`; declare it under this relation's `fields` (or a nested relation's)",
                            r.table
                        ),
                    ));
                }
                Some(path)
            }
            None => {
                if node.fields.is_empty() && node.relations.is_empty() {
                    return Err(self.err(at, "takes no field: declare `fields`, or take one column's values with `value`"));
                }
                None
            }
        };
        Ok(Relation { name: r.name.clone(), link, node, value })
    }

    fn search(&self, s: &file::Search, model: &Model) -> Result<SearchView, ModelError> {
        let doc_field = |path: &str, at: &str| -> Result<Resolved, ModelError> {
            model.resolve(path).ok_or_else(|| self.err(at, format!("`{path}` is not a field of the document")))
        };
        let mut params = BTreeSet::new();
        let mut param = |p: &str, at: &str| -> Result<(), ModelError> {
            const TAKEN: [&str; 9] = ["q", "page", "size", "sort", "after", "engine", "distinct", "facet_size", "format"];
            let ok = !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok || TAKEN.contains(&p) || p.ends_with("_min") || p.ends_with("_max") || p.ends_with("_q") {
                return Err(self.err(at, format!("`{p}` cannot be a parameter: lower-case letters, digits and `_`, not one of {TAKEN:?} nor ending in _min, _max or _q")));
            }
            if !params.insert(p.to_string()) {
                return Err(self.err(at, format!("the parameter `{p}` is declared twice")));
            }
            Ok(())
        };
        for (i, q) in s.query.iter().enumerate() {
            let at = format!("search.query[{i}]");
            let r = doc_field(q, &at)?;
            if !matches!(r.kind, FieldType::Text | FieldType::Keyword) {
                return Err(self.err(&at, format!("`{q}` is {}: `q` searches text or keyword fields", r.kind.name())));
            }
        }
        let mut facets = Vec::new();
        for (i, f) in s.facets.iter().enumerate() {
            let at = format!("search.facets[{i}] ({})", f.param);
            param(&f.param, &at)?;
            let r = doc_field(&f.field, &format!("{at}.field"))?;
            let exact = r.exact.clone().ok_or_else(|| {
                self.err(
                    &format!("{at}.field"),
                    format!("`{}` is text without a keyword sub-field: add `keyword = \"raw\"` to it", f.field),
                )
            })?;
            let values = match &f.values {
                None => Vec::new(),
                Some(v) if v.is_empty() => {
                    return Err(
                        self.err(&format!("{at}.values"), "is empty: list the values the facet takes, or leave `values` out to take any")
                    )
                }
                Some(v) => {
                    let mut seen = BTreeSet::new();
                    for x in v {
                        if x.trim().is_empty() || x.trim() != x {
                            return Err(
                                self.err(&format!("{at}.values"), format!("{x:?} is not a value: write it without blanks around it"))
                            );
                        }
                        if !seen.insert(x) {
                            return Err(self.err(&format!("{at}.values"), format!("{x:?} is listed twice")));
                        }
                    }
                    v.clone()
                }
            };
            let (counts, counts_one) = match (&f.counts, &f.counts_one) {
                (None, None) => (s.plural.clone(), s.noun.clone()),
                (Some(many), Some(one)) => (self.word(many, &format!("{at}.counts"))?, self.word(one, &format!("{at}.counts_one"))?),
                (Some(many), None) => {
                    return Err(self.err(
                        &at,
                        format!(
                            "declares `counts = \"{many}\"` without its singular, which the page writes after a count of 1 \
                             (\"+ 1 more … not listed\"): add counts_one = \"…\" beside it"
                        ),
                    ))
                }
                (None, Some(one)) => {
                    return Err(self.err(
                        &at,
                        format!(
                            "declares `counts_one = \"{one}\"` without `counts`, its plural: add counts = \"…\" beside it, or \
                             leave counts_one out to count the {} (\"{}\" after a count of 1)",
                            s.plural, s.noun
                        ),
                    ))
                }
            };
            facets.push(Facet {
                param: f.param.clone(),
                field: exact,
                label: f.label.clone(),
                multi: r.multi,
                counts,
                counts_one,
                others: f.others.clone().unwrap_or_else(|| format!("with {}", article(&f.label.to_lowercase()))),
                values,
            });
        }
        let mut histograms = Vec::new();
        for (i, h) in s.histograms.iter().enumerate() {
            let at = format!("search.histograms[{i}] ({})", h.param);
            param(&h.param, &at)?;
            let r = doc_field(&h.field, &format!("{at}.field"))?;
            if !r.kind.is_numeric() {
                return Err(
                    self.err(&format!("{at}.field"), format!("`{}` is {}: a histogram needs a numeric field", h.field, r.kind.name()))
                );
            }
            if h.interval == 0 {
                return Err(self.err(&format!("{at}.interval"), "must be at least 1"));
            }
            histograms.push(Histogram {
                param: h.param.clone(),
                field: h.field.clone(),
                label: h.label.clone(),
                interval: h.interval,
                min: h.min.unwrap_or(i64::from(i32::MIN)),
                max: h.max.unwrap_or(i64::from(i32::MAX)),
            });
        }
        let mut sorts = Vec::new();
        let mut sort_params = BTreeSet::new();
        for (i, so) in s.sorts.iter().enumerate() {
            let at = format!("search.sorts[{i}] ({})", so.param);
            if !sort_params.insert(so.param.clone()) {
                return Err(self.err(&at, format!("the sort `{}` is declared twice", so.param)));
            }
            let mut fields = Vec::new();
            for f in &so.fields {
                let r = doc_field(f, &at)?;
                let exact = r
                    .exact
                    .clone()
                    .ok_or_else(|| self.err(&at, format!("`{f}` is text without a keyword sub-field: sort on a keyword")))?;
                if r.multi {
                    return Err(self.err(&at, format!("`{f}` holds several values per document: sort on a single-valued field")));
                }
                fields.push(exact);
            }
            sorts.push(Sort { param: so.param.clone(), label: so.label.clone(), fields });
        }
        let suggest = match &s.suggest {
            Some(sg) => {
                if model.completion.as_ref().map(|c| c.name.as_str()) != Some(sg.field.as_str()) {
                    return Err(self.err(
                        "search.suggest.field",
                        format!("`{}` is not the document's completion field (`document.completion.name`)", sg.field),
                    ));
                }
                let label = Template::parse(&sg.label).map_err(|m| self.err("search.suggest.label", m))?;
                for f in label.fields() {
                    doc_field(f, "search.suggest.label")?;
                }
                let detail = match &sg.detail {
                    Some(d) => {
                        let t = Template::parse(d).map_err(|m| self.err("search.suggest.detail", m))?;
                        for f in t.fields() {
                            doc_field(f, "search.suggest.detail")?;
                        }
                        Some(t)
                    }
                    None => None,
                };
                Some(Suggest { field: sg.field.clone(), label, detail })
            }
            None => None,
        };
        let mut distinct = Vec::new();
        for (i, d) in s.distinct.iter().enumerate() {
            let at = format!("search.distinct[{i}] ({})", d.param);
            let r = doc_field(&d.field, &format!("{at}.field"))?;
            if r.exact.is_none() {
                return Err(self.err(
                    &format!("{at}.field"),
                    format!("`{}` is text without a keyword sub-field: count a keyword or a number", d.field),
                ));
            }
            let one = match &d.one {
                Some(one) => self.word(one, &format!("{at}.one"))?,
                None => {
                    return Err(self.err(
                        &at,
                        format!(
                            "needs `one`, the singular of its label, which the page writes after a count of 1 (\"~1 …\", and \
                             \"~2 {label}\" after 2): add one = \"…\" beside label = \"{label}\"",
                            label = d.label
                        ),
                    ))
                }
            };
            distinct.push(Distinct {
                param: d.param.clone(),
                field: r.exact.unwrap_or_else(|| d.field.clone()),
                label: d.label.clone(),
                one,
            });
        }
        let title = Template::parse(&s.title).map_err(|m| self.err("search.title", m))?;
        for f in title.fields() {
            doc_field(f, "search.title")?;
        }
        for (i, f) in s.show.iter().enumerate() {
            doc_field(f, &format!("search.show[{i}]"))?;
        }
        for (path, label) in &s.labels {
            doc_field(path, &format!("search.labels.{path:?}"))?;
            if label.trim().is_empty() {
                return Err(self.err(&format!("search.labels.{path:?}"), "is empty: write how the page names the field, or leave it out"));
            }
        }
        Ok(SearchView {
            noun: s.noun.clone(),
            plural: s.plural.clone(),
            query: s.query.clone(),
            facets,
            histograms,
            sorts,
            suggest,
            distinct,
            title,
            show: s.show.clone(),
            labels: s.labels.clone(),
        })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql())
    }
}

#[cfg(test)]
mod tests;

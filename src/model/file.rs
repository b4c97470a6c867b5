//! The model file as written (TOML), before validation. Unknown keys are refused by serde
//! (`deny_unknown_fields`), with the key's line and the keys that are allowed.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The model's name (shown by `admin status`; the index remembers which model built it).
    pub name: String,
    pub document: Root,
    #[serde(default)]
    pub search: Option<Search>,
}

/// The root table: one document per row.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub table: String,
    /// The primary key column (its values become `_id`).
    pub key: String,
    /// `bigint` (any integer type) or `uuid`.
    #[serde(default)]
    pub key_type: Option<String>,
    /// The key again, as a number, under this document field (integer keys only): search
    /// pages page with it (`search_after` needs a numeric tiebreaker).
    #[serde(default)]
    pub number: Option<String>,
    /// The key again, as a keyword, under this document field (uuid keys only): what
    /// `number` is to an integer key.
    #[serde(default)]
    pub key_field: Option<String>,
    #[serde(default)]
    pub fields: Vec<Field>,
    #[serde(default)]
    pub relations: Vec<Relation>,
    #[serde(default)]
    pub completion: Option<Completion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// The document field's name.
    pub name: String,
    /// The column it comes from (default: `name`).
    #[serde(default)]
    pub column: Option<String>,
    /// keyword, text, integer, long, double, boolean, date.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `text`: a `keyword` sub-field of this name (exact values: facets, sorts).
    #[serde(default)]
    pub keyword: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relation {
    /// The document field's name.
    pub name: String,
    /// belongs_to, has_many, many_to_many.
    pub kind: String,
    /// The related table.
    pub table: String,
    /// Its key column (default `id`).
    #[serde(default)]
    pub key: Option<String>,
    /// `key`'s type: `bigint` (default) or `uuid`.
    #[serde(default)]
    pub key_type: Option<String>,
    /// belongs_to: the column of *this* table holding the related row's key. has_many: the
    /// column of the *related* table holding this row's key.
    #[serde(default)]
    pub foreign_key: Option<String>,
    /// many_to_many: the join table, its column holding this row's key, and its column
    /// holding the related row's key.
    #[serde(default)]
    pub through: Option<String>,
    #[serde(default)]
    pub this_key: Option<String>,
    #[serde(default)]
    pub other_key: Option<String>,
    /// Instead of objects, the values of one field (a path through nested relations, e.g.
    /// `organism.name`): an array of scalars, sorted and deduplicated (a single value for
    /// belongs_to).
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub fields: Vec<Field>,
    #[serde(default)]
    pub relations: Vec<Relation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    pub name: String,
    /// Templates of the suggestions' inputs: `{field}` stands for a root field's value.
    pub inputs: Vec<String>,
}

/// The search application's view of the document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// What the page calls one document ("student", "experiment") and many.
    pub noun: String,
    pub plural: String,
    /// The text fields `q` searches.
    #[serde(default)]
    pub query: Vec<String>,
    #[serde(default)]
    pub facets: Vec<Facet>,
    #[serde(default)]
    pub histograms: Vec<Histogram>,
    #[serde(default)]
    pub sorts: Vec<Sort>,
    #[serde(default)]
    pub suggest: Option<Suggest>,
    /// Fields whose distinct values a facet bucket may count (`distinct=<param>`).
    #[serde(default)]
    pub distinct: Vec<Distinct>,
    /// What a hit and the detail page show: a title template and fields.
    pub title: String,
    #[serde(default)]
    pub show: Vec<String>,
    /// How the page names a shown field (`"university.name" = "University"`); default: its
    /// path in words ("university name").
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facet {
    /// The query parameter (`course=CS101`).
    pub param: String,
    /// The document field (keyword, or text with a keyword sub-field).
    pub field: String,
    pub label: String,
    /// What a count of this facet counts when the field holds several values per document
    /// (e.g. "enrollments"); default: the documents' plural.
    #[serde(default)]
    pub counts: Option<String>,
    /// Its singular, written after a count of 1 ("+ 1 more enrollment in courses not
    /// listed"): required with `counts`, refused without it; default: the documents' noun.
    #[serde(default)]
    pub counts_one: Option<String>,
    /// How the page names the values it does not list, after the count: "+ 22,693 more
    /// enrollments *in courses* not listed"; default: "with a" and the label.
    #[serde(default)]
    pub others: Option<String>,
    /// The only values the facet takes (e.g. a status column's): any other value of the
    /// parameter is refused with a 400 that lists these; default: any value.
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Histogram {
    pub param: String,
    pub field: String,
    pub label: String,
    pub interval: u32,
    /// Accepted bounds of a filter on it.
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sort {
    pub param: String,
    pub label: String,
    /// Fields (keyword or numeric) in order.
    pub fields: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suggest {
    /// The completion field.
    pub field: String,
    /// How a suggestion is labelled: a template of document fields.
    pub label: String,
    /// What follows the label, set apart (e.g. `{university.name}`): a template of document
    /// fields; default: nothing.
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distinct {
    pub param: String,
    pub field: String,
    /// What is counted, in the plural ("universities"): after a count other than 1
    /// ("~2 universities"), and as the name of the choice.
    pub label: String,
    /// Its singular, written after a count of 1 ("~1 university"). Required: an `Option`
    /// only so that its absence is refused by validation, which says what to write.
    #[serde(default)]
    pub one: Option<String>,
}

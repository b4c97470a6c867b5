//! A document is JSON built from the database by the model ([`crate::model`]); this module
//! holds what tidemark does with documents whatever the model: writing one from a row of the
//! model's row query, and the index bodies (mapping and settings).

use serde_json::Value;
use sqlx::{postgres::PgRow, Row};

use crate::{
    config::IndexConfig,
    model::{
        sql::{Input, Part},
        FieldType, Model,
    },
};

/// One search document: a JSON object as compact text, its fields in the model's order, as
/// the `_bulk` body carries it. `_id` is the row's key and is not part of the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document(String);

impl Document {
    /// The JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// The document as a value, to compare or show (not on the write path).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.0).expect("a document is JSON: tidemark wrote it")
    }

    pub fn from_value(v: &Value) -> Document {
        Document(v.to_string())
    }

    /// The document of one row of the model's row query ([`Model::row_query`]: the key, then
    /// the columns of [`Model::parts`]). The database reads the values; tidemark writes the
    /// JSON, which costs a fraction of `json_build_object` (BENCHMARKS.md §9).
    pub fn from_row(parts: &[Part], row: &PgRow) -> Result<Document, sqlx::Error> {
        let mut out = Vec::with_capacity(256);
        let mut col = 1;
        write_object(&mut out, parts, row, &mut col)?;
        // Every byte written is JSON syntax or comes from a `&str` (or is escaped from one).
        Ok(Document(String::from_utf8(out).expect("a document is written from UTF-8 text")))
    }
}

fn write_object(out: &mut Vec<u8>, parts: &[Part], row: &PgRow, col: &mut usize) -> Result<(), sqlx::Error> {
    out.push(b'{');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, p.name());
        out.push(b':');
        // This part's first column; an object's own parts advance past theirs.
        let at = *col;
        *col += match p {
            Part::Object { .. } => 1,
            other => other.width(),
        };
        match p {
            Part::Scalar { kind, .. } => match row.try_get::<Option<&str>, _>(at)? {
                Some(text) => write_scalar(out, *kind, text),
                None => out.extend_from_slice(b"null"),
            },
            Part::Json { .. } => match row.try_get::<Option<&str>, _>(at)? {
                Some(json) => compact(json, out),
                None => out.extend_from_slice(b"null"),
            },
            Part::Object { parts, .. } => {
                if row.try_get::<bool, _>(at)? {
                    write_object(out, parts, row, col)?;
                } else {
                    out.extend_from_slice(b"null");
                    *col += parts.iter().map(Part::width).sum::<usize>();
                }
            }
            Part::Array { kind, sorted, .. } => {
                let mut values = row.try_get::<Option<Vec<String>>, _>(at)?.unwrap_or_default();
                if !sorted {
                    values.sort_unstable();
                    values.dedup();
                }
                write_array(out, *kind, &values);
            }
            Part::Completion { inputs, .. } => {
                let inputs = match inputs {
                    None => row.try_get::<Option<Vec<String>>, _>(at)?.unwrap_or_default(),
                    Some(templates) => {
                        let mut joined = Vec::with_capacity(templates.len());
                        for t in templates {
                            if let Some(s) = join(t, row)? {
                                joined.push(s);
                            }
                        }
                        joined
                    }
                };
                out.extend_from_slice(b"{\"input\":");
                write_array(out, FieldType::Keyword, &inputs);
                out.push(b'}');
            }
            Part::Key { kind, .. } => {
                // The key column, read again.
                write_scalar(out, *kind, row.try_get::<&str, _>(0)?);
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// One completion input joined from its row, or None when a field it names is null.
fn join(pieces: &[Input], row: &PgRow) -> Result<Option<String>, sqlx::Error> {
    let mut s = String::new();
    for p in pieces {
        match p {
            Input::Text(t) => s.push_str(t),
            Input::Column(c) => match row.try_get::<Option<&str>, _>(*c)? {
                Some(v) => s.push_str(v),
                None => return Ok(None),
            },
        }
    }
    Ok(Some(s))
}

fn write_array(out: &mut Vec<u8>, kind: FieldType, values: &[String]) {
    out.push(b'[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_scalar(out, kind, v);
    }
    out.push(b']');
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// A value read as text, as JSON: a string for text kinds; for the others the boolean or
/// number the text spells, written as serde_json writes it (as the JSON built by the
/// database was, parsed, before), or a string when it spells neither (`NaN`, or a column
/// whose type is not the declared one: the index coerces or refuses it, one document).
fn write_scalar(out: &mut Vec<u8>, kind: FieldType, text: &str) {
    match kind {
        FieldType::Keyword | FieldType::Text | FieldType::Date => write_string(out, text),
        FieldType::Boolean | FieldType::Integer | FieldType::Long | FieldType::Double => {
            if text == "true" || text == "false" || plain_integer(text) {
                out.extend_from_slice(text.as_bytes());
            } else if let Ok(n) = serde_json::from_str::<serde_json::Number>(text) {
                serde_json::to_writer(out, &n).expect("writing to a Vec cannot fail");
            } else {
                write_string(out, text);
            }
        }
    }
}

/// An integer that serde_json would write back digit for digit: no sign but `-`, no leading
/// zero, no `-0`, at most 18 digits (within i64).
fn plain_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let b = digits.as_bytes();
    (text == "0" || matches!(b.first(), Some(b'1'..=b'9'))) && b.len() <= 18 && b.iter().all(u8::is_ascii_digit)
}

/// JSON as PostgreSQL writes it (`{"a" : 1, "b" : [1, 2]}`), without the whitespace
/// between tokens.
fn compact(json: &str, out: &mut Vec<u8>) {
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b);
        }
    }
}

/// The settings an index lives with: from `[index]`, with times in the engine's units.
pub fn live_settings(index: &IndexConfig) -> serde_json::Value {
    serde_json::json!({
        "index": {
            "number_of_replicas": index.number_of_replicas,
            "refresh_interval": format!("{}ms", index.refresh_interval.0.as_millis()),
        }
    })
}

/// The body that creates an index being built: the model's mapping, and settings for bulk
/// loading (no refresh, no replicas; [`live_settings`] are restored before the alias moves).
/// The delete-tombstone lifetime (`gc_deletes`) is set from the start: it must hold for every
/// write the build receives.
pub fn build_body(index: &IndexConfig, model: &Model) -> serde_json::Value {
    serde_json::json!({
        "mappings": crate::model::mapping::mappings(model),
        "settings": {
            "index": {
                "number_of_shards": index.number_of_shards,
                "number_of_replicas": 0,
                "refresh_interval": "-1",
                "gc_deletes": format!("{}ms", index.gc_deletes.0.as_millis()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_written_as_the_json_the_database_built_read_back() {
        let write = |kind, text| {
            let mut out = Vec::new();
            write_scalar(&mut out, kind, text);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(write(FieldType::Keyword, "Ann \"A\"\n"), r#""Ann \"A\"\n""#);
        assert_eq!(write(FieldType::Keyword, "42"), r#""42""#);
        assert_eq!(write(FieldType::Long, "9007199254740993"), "9007199254740993");
        assert_eq!(write(FieldType::Long, "9223372036854775807"), "9223372036854775807");
        assert_eq!(write(FieldType::Long, "-17"), "-17");
        assert_eq!(write(FieldType::Double, "1.50"), "1.5");
        assert_eq!(write(FieldType::Double, "100000000000000000000"), serde_json::to_string(&1e20_f64).unwrap());
        assert_eq!(write(FieldType::Double, "NaN"), r#""NaN""#);
        assert_eq!(write(FieldType::Boolean, "true"), "true");
        assert_eq!(write(FieldType::Integer, "007"), r#""007""#);
    }

    #[test]
    fn compacting_keeps_strings_whole() {
        let mut out = Vec::new();
        compact(
            r#"[{"a b" : "x , \" y", "n" : [1, 2]}, 
 {"c" : null}]"#,
            &mut out,
        );
        assert_eq!(String::from_utf8(out).unwrap(), r#"[{"a b":"x , \" y","n":[1,2]},{"c":null}]"#);
    }
}

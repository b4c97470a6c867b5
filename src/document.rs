//! A document is JSON built from the database by the model ([`crate::model`]); this module
//! holds what tidemark does with documents whatever the model: writing one from a row of the
//! model's row query, and the index bodies (mapping and settings).

use serde_json::Value;
use sqlx::{
    postgres::{PgRow, PgValueFormat},
    Column as _, Postgres, Row, Type, ValueRef as _,
};

use crate::{
    config::IndexConfig,
    model::{
        sql::{ColumnType, Input, Part},
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

    /// A reader of the model's row query ([`Model::row_query`]: the key, then the columns of
    /// [`Model::parts`]): the database reads the values, tidemark writes the JSON, which
    /// costs a fraction of `json_build_object` (BENCHMARKS.md §9).
    pub fn reader(model: &Model) -> RowReader<'_> {
        RowReader { model, checked: false }
    }
}

/// Writes the documents of the row query's rows, one row at a time, as they arrive (while a
/// row's bytes are still in the CPU's cache). The columns' types are checked on the first
/// row; every row is then read from its bytes (see [`Cells`]).
pub struct RowReader<'m> {
    model: &'m Model,
    checked: bool,
}

impl RowReader<'_> {
    /// The key and the document of one row.
    pub fn read(&mut self, row: &PgRow) -> Result<(String, Document), sqlx::Error> {
        if !self.checked {
            check_columns(self.model.row_types(), row)?;
            self.checked = true;
        }
        let cells = Cells(row);
        let key = cells.text(0)?.ok_or_else(|| decode_error(0, "the key is null"))?;
        let mut out = Vec::with_capacity(256);
        let mut col = 1;
        write_object(&mut out, self.model.parts(), cells, key, &mut col)?;
        // Every byte written is JSON syntax or comes from a `&str` (or is escaped from one).
        Ok((key.to_string(), Document(String::from_utf8(out).expect("a document is written from UTF-8 text"))))
    }
}

/// The row's columns are of the types the row query casts them to ([`ColumnType`]): a
/// mismatch is tidemark's fault, said once per batch.
fn check_columns(types: &[ColumnType], row: &PgRow) -> Result<(), sqlx::Error> {
    let columns = row.columns();
    if columns.len() != types.len() {
        return Err(decode_error(0, &format!("the row query gave {} columns, not {}", columns.len(), types.len())));
    }
    for (i, (c, t)) in columns.iter().zip(types).enumerate() {
        let ty = c.type_info();
        let ok = match t {
            ColumnType::Text => <str as Type<Postgres>>::compatible(ty),
            ColumnType::Bool => <bool as Type<Postgres>>::compatible(ty),
            ColumnType::TextArray => <Vec<String> as Type<Postgres>>::compatible(ty),
        };
        if !ok {
            return Err(decode_error(i, &format!("column {i} of the row query is {ty}, not {t:?}")));
        }
    }
    Ok(())
}

fn decode_error(index: usize, why: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: index.to_string(), source: why.into() }
}

/// A row of the row query, read from its bytes once [`check_columns`] has checked the
/// columns' types: the text of a `text` column, the elements of a `text[]` (PostgreSQL's
/// binary array format), the byte of a `bool`. sqlx's typed `try_get` checks every value's
/// type again and decodes an array into owned strings: a third of the loader's CPU.
#[derive(Clone, Copy)]
struct Cells<'r>(&'r PgRow);

impl<'r> Cells<'r> {
    fn raw(self, i: usize) -> Result<Option<&'r [u8]>, sqlx::Error> {
        let v = self.0.try_get_raw(i)?;
        if v.is_null() {
            return Ok(None);
        }
        if v.format() != PgValueFormat::Binary {
            return Err(decode_error(i, "the row query's values are read in binary format"));
        }
        v.as_bytes().map(Some).map_err(|source| sqlx::Error::ColumnDecode { index: i.to_string(), source })
    }

    fn text(self, i: usize) -> Result<Option<&'r str>, sqlx::Error> {
        match self.raw(i)? {
            Some(b) => std::str::from_utf8(b).map(Some).map_err(|e| decode_error(i, &e.to_string())),
            None => Ok(None),
        }
    }

    fn bool(self, i: usize) -> Result<bool, sqlx::Error> {
        Ok(self.raw(i)?.is_some_and(|b| b.first().is_some_and(|&v| v != 0)))
    }

    /// A `text[]`'s elements, nulls left out (a null array: none).
    fn texts(self, i: usize, into: &mut Vec<&'r str>) -> Result<(), sqlx::Error> {
        match self.raw(i)? {
            Some(b) => text_array(b, into).map_err(|why| decode_error(i, why)),
            None => Ok(()),
        }
    }
}

/// The elements of a `text[]` in PostgreSQL's binary format (`array_send`), nulls left out,
/// every dimension flattened: the number of dimensions, a has-nulls flag and the element
/// type; a size and a lower bound per dimension; then each element, its length (-1: null)
/// and its bytes.
fn text_array<'r>(mut b: &'r [u8], into: &mut Vec<&'r str>) -> Result<(), &'static str> {
    const MALFORMED: &str = "a malformed text[] value";
    let int = |b: &mut &'r [u8]| -> Result<i32, &'static str> {
        let (head, rest) = b.split_first_chunk::<4>().ok_or(MALFORMED)?;
        *b = rest;
        Ok(i32::from_be_bytes(*head))
    };
    let dims = int(&mut b)?;
    let (_nulls, _element) = (int(&mut b)?, int(&mut b)?);
    let mut count: usize = if dims == 0 { 0 } else { 1 };
    for _ in 0..dims {
        let size = usize::try_from(int(&mut b)?).map_err(|_| MALFORMED)?;
        let _lower = int(&mut b)?;
        count = count.checked_mul(size).ok_or(MALFORMED)?;
    }
    into.reserve(count.min(b.len() / 4));
    for _ in 0..count {
        let len = int(&mut b)?;
        if len < 0 {
            continue;
        }
        let (value, rest) = b.split_at_checked(len as usize).ok_or(MALFORMED)?;
        b = rest;
        into.push(std::str::from_utf8(value).map_err(|_| "a text[] element that is not UTF-8")?);
    }
    if !b.is_empty() {
        return Err(MALFORMED);
    }
    Ok(())
}

fn write_object(out: &mut Vec<u8>, parts: &[Part], row: Cells<'_>, key: &str, col: &mut usize) -> Result<(), sqlx::Error> {
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
            Part::Scalar { kind, .. } => match row.text(at)? {
                Some(text) => write_scalar(out, *kind, text),
                None => out.extend_from_slice(b"null"),
            },
            Part::Json { .. } => match row.text(at)? {
                Some(json) => compact(json, out),
                None => out.extend_from_slice(b"null"),
            },
            Part::Object { parts, .. } => {
                if row.bool(at)? {
                    write_object(out, parts, row, key, col)?;
                } else {
                    out.extend_from_slice(b"null");
                    *col += parts.iter().map(Part::width).sum::<usize>();
                }
            }
            Part::Array { kind, sorted, .. } => {
                let mut values = Vec::new();
                row.texts(at, &mut values)?;
                if !sorted {
                    values.sort_unstable();
                    values.dedup();
                }
                write_array(out, *kind, &values);
            }
            Part::Completion { inputs, .. } => {
                out.extend_from_slice(b"{\"input\":");
                match inputs {
                    None => {
                        let mut values = Vec::new();
                        row.texts(at, &mut values)?;
                        write_array(out, FieldType::Keyword, &values);
                    }
                    Some(templates) => {
                        out.push(b'[');
                        let mut first = true;
                        for t in templates {
                            if let Some(s) = join(t, row)? {
                                if !first {
                                    out.push(b',');
                                }
                                first = false;
                                write_string(out, &s);
                            }
                        }
                        out.push(b']');
                    }
                }
                out.push(b'}');
            }
            Part::Key { kind, .. } => write_scalar(out, *kind, key),
        }
    }
    out.push(b'}');
    Ok(())
}

/// One completion input joined from its row, or None when a field it names is null.
fn join(pieces: &[Input], row: Cells<'_>) -> Result<Option<String>, sqlx::Error> {
    let mut s = String::new();
    for p in pieces {
        match p {
            Input::Text(t) => s.push_str(t),
            Input::Column(c) => match row.text(*c)? {
                Some(v) => s.push_str(v),
                None => return Ok(None),
            },
        }
    }
    Ok(Some(s))
}

fn write_array(out: &mut Vec<u8>, kind: FieldType, values: &[&str]) {
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

    /// `array_send`'s bytes of `elements` in `dims` dimensions.
    fn array_bytes(dims: &[i32], elements: &[Option<&str>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((dims.len() as i32).to_be_bytes());
        b.extend((elements.contains(&None) as i32).to_be_bytes());
        b.extend(25i32.to_be_bytes());
        for d in dims {
            b.extend(d.to_be_bytes());
            b.extend(1i32.to_be_bytes());
        }
        for e in elements {
            match e {
                Some(t) => {
                    b.extend((t.len() as i32).to_be_bytes());
                    b.extend(t.as_bytes());
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn text_arrays_are_read_from_their_binary_form() {
        let read = |b: &[u8]| {
            let mut out = Vec::new();
            text_array(b, &mut out).map(|()| out.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(read(&array_bytes(&[], &[])), Ok(vec![]));
        assert_eq!(read(&array_bytes(&[3], &[Some("b"), None, Some("ä \"x\"")])), Ok(vec!["b".to_string(), "ä \"x\"".into()]));
        assert_eq!(read(&array_bytes(&[2, 2], &[Some("a"), Some("b"), Some(""), Some("d")])).unwrap(), ["a", "b", "", "d"]);
        let whole = array_bytes(&[2], &[Some("ab"), Some("cd")]);
        assert_eq!(read(&whole[..whole.len() - 1]), Err("a malformed text[] value"), "cut short");
        assert_eq!(read(&[whole.as_slice(), b"x"].concat()), Err("a malformed text[] value"), "bytes left over");
        let mut not_utf8 = array_bytes(&[1], &[Some("ab")]);
        *not_utf8.last_mut().unwrap() = 0xff;
        assert_eq!(read(&not_utf8), Err("a text[] element that is not UTF-8"));
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

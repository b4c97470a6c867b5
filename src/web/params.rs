//! The parse-and-validate edge every route shares: a query string's pairs (decoded as a
//! form, refusing bytes that are not UTF-8), a path's parameters, and the readers of
//! bounded numbers and text, each refusing with a [`BadRequest`] that says what was wrong
//! and what to do. A search's own parameters are read in [`super::request`].

use std::fmt;

use serde::Serialize;

/// The longest text query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// The most words a text query may have (each must match).
pub const MAX_QUERY_WORDS: usize = 8;
/// Hits per page: default and cap.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;
/// Values shown per facet: default and cap.
pub const DEFAULT_FACET_SIZE: u32 = 10;
pub const MAX_FACET_SIZE: u32 = 100;
/// Values selected in one facet, and the longest value.
pub const MAX_VALUES_PER_FACET: usize = 20;
pub const MAX_VALUE_CHARS: usize = 200;
/// Pages reachable by number (`page`): the first 10,000 results, the engines' default
/// `index.max_result_window`. Deeper pages are reached by the `after` cursor, at any depth.
pub const MAX_RESULT_WINDOW: u64 = crate::model::RESULT_WINDOW;

/// A request refused: the message says what was wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// The longest piece of an address an error message quotes.
const MAX_QUOTED_CHARS: usize = 60;

/// `s` cut to [`MAX_QUOTED_CHARS`] characters, with `…` when cut.
fn quoted(s: &str) -> String {
    if s.chars().count() > MAX_QUOTED_CHARS {
        s.chars().take(MAX_QUOTED_CHARS).chain(['…']).collect()
    } else {
        s.to_string()
    }
}

/// What to do about text that is not UTF-8.
const UTF8_HOW: &str = "percent-encode text as the bytes of its UTF-8 encoding (é is %C3%A9), as browsers and `curl --data-urlencode` do";

/// One name or value of a query string decoded as an HTML form encodes it (`+` is a
/// space, `%XX` a byte; a `%` not followed by two hex digits stays itself): its text, or
/// None when the bytes are not UTF-8.
fn form_decode(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|t| t.into_owned())
}

/// The query string's parameters in order, names and values decoded: the one reading of a
/// query string every route shares. A name or value whose decoded bytes are not UTF-8
/// (`q=%C3%28`) is refused, naming it, rather than read with replacement characters.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, BadRequest> {
    let mut out = Vec::new();
    for piece in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
        let Some(key) = form_decode(raw_key) else {
            return Err(bad(format!(
                "a parameter name is not valid UTF-8: `{}` decodes to bytes that are not UTF-8 text; {UTF8_HOW}",
                quoted(raw_key)
            )));
        };
        let Some(value) = form_decode(raw_value) else {
            return Err(bad(format!(
                "`{}` is not valid UTF-8: `{}` decodes to bytes that are not UTF-8 text; {UTF8_HOW}",
                quoted(&key),
                quoted(raw_value)
            )));
        };
        out.push((key, value));
    }
    Ok(out)
}

/// Checks the parameters a route takes from its path (`{id}` of `/students/{id}`, as
/// `template` names them) the way [`query_pairs`] checks the query string: one whose
/// percent-decoded bytes are not UTF-8 is refused, naming it; `id_how` says what a
/// document id looks like.
pub fn check_path_params(template: &str, path: &str, id_how: impl FnOnce() -> String) -> Result<(), BadRequest> {
    for (part, raw) in template.split('/').zip(path.split('/')) {
        let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else { continue };
        if percent_encoding::percent_decode_str(raw).decode_utf8().is_err() {
            let how = if name == "id" { id_how() } else { UTF8_HOW.to_string() };
            return Err(bad(format!(
                "`{name}` in the path is not valid UTF-8: `{}` decodes to bytes that are not UTF-8 text; {how}",
                quoted(raw)
            )));
        }
    }
    Ok(())
}

/// Who answers: the index (the product) or PostgreSQL by `GROUP BY` (to compare).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    #[default]
    Index,
    Sql,
}

impl Engine {
    pub fn param(self) -> &'static str {
        match self {
            Engine::Index => "index",
            Engine::Sql => "sql",
        }
    }
}

pub(crate) fn number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(key: &str, v: &str, lo: T, hi: T) -> Result<T, BadRequest> {
    match v.trim().parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(bad(format!("`{key}` must be a whole number from {lo} to {hi}, not {v:?}"))),
    }
}

/// `size`: the hits a page holds, 1 to [`MAX_PAGE_SIZE`]; `more` says how to get the hits
/// after a page ("follow `next` for more").
pub(crate) fn page_size(value: &str, more: &str) -> Result<u32, BadRequest> {
    match value.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_PAGE_SIZE as u64).contains(&n) => Ok(n as u32),
        Ok(n) if n > MAX_PAGE_SIZE as u64 => Err(bad(format!(
            "`size` {n} is more than the {MAX_PAGE_SIZE} hits a page may hold; ask for {MAX_PAGE_SIZE} or fewer and {more}"
        ))),
        _ => Err(bad(format!("`size` must be a whole number from 1 to {MAX_PAGE_SIZE}, not {value:?}"))),
    }
}

/// A bounded, printable text value.
pub(crate) fn text(key: &str, v: &str, max: usize) -> Result<String, BadRequest> {
    let t = v.trim();
    if t.chars().count() > max {
        return Err(bad(format!("`{key}` is longer than {max} characters; shorten it")));
    }
    if t.chars().any(char::is_control) {
        return Err(bad(format!("`{key}` contains control characters; remove them")));
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_as_forms_and_refuse_bytes_that_are_not_utf8() {
        let pairs = query_pairs(Some("q=ann+lee&course=CS%20101&x=100%&&empty=&bare&%C3%A9=%C3%A9")).unwrap();
        let want = [("q", "ann lee"), ("course", "CS 101"), ("x", "100%"), ("empty", ""), ("bare", ""), ("é", "é")];
        assert_eq!(pairs, want.map(|(k, v)| (k.to_string(), v.to_string())));
        let e = query_pairs(Some("course=CS101&q=%C3%28")).unwrap_err();
        assert!(e.0.starts_with("`q` is not valid UTF-8: `%C3%28` decodes to bytes that are not UTF-8 text; percent-encode"), "{e}");
        let e = query_pairs(Some("%FF=1")).unwrap_err();
        assert!(e.0.starts_with("a parameter name is not valid UTF-8: `%FF`"), "{e}");
        let how = "a student id is a positive whole number, as in /students/42";
        assert!(check_path_params("/students/{id}", "/students/42", || how.to_string()).is_ok());
        let e = check_path_params("/students/{id}", "/students/%C3%28", || how.to_string()).unwrap_err();
        assert!(e.0.starts_with("`id` in the path is not valid UTF-8: `%C3%28`") && e.0.contains("/students/42"), "{e}");
    }

    #[test]
    fn numbers_sizes_and_text_are_bounded_with_a_reason() {
        assert_eq!(number("age_gte", " 18 ", 0, 200), Ok(18));
        assert!(number("age_gte", "abc", 0, 200).unwrap_err().0.contains("`age_gte` must be a whole number from 0 to 200"));
        assert!(number("age_gte", "201", 0, 200).is_err());
        assert!(page_size("101", "follow `next` for more").unwrap_err().0.contains("more than the 100 hits"));
        assert!(page_size("0", "").unwrap_err().0.contains("`size` must be"));
        assert!(text("q", &"a".repeat(MAX_QUERY_CHARS + 1), MAX_QUERY_CHARS).unwrap_err().0.contains("longer than"));
        assert!(text("q", "a\u{7}b", MAX_QUERY_CHARS).unwrap_err().0.contains("control characters"));
    }
}

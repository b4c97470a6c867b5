//! Encode: documents become `_bulk` NDJSON, every op a full `index` or `delete` with
//! `version_type=external` and the batch's version (protocol invariant 4). All ops live in
//! one buffer; each op knows its byte range, so a retry re-sends exactly the failed ones.

use std::{io::Write, ops::Range};

use super::{Action, Op};

/// Where one op sits in [`Encoded::buf`], and what it is for.
#[derive(Clone, Debug)]
pub struct OpMeta {
    /// The document's key.
    pub key: String,
    /// Index into the targets the batch writes to (the live index, and a building one
    /// during a full reindex).
    pub target: usize,
    /// `index` or `delete`.
    pub action: Action,
    pub bytes: Range<usize>,
}

#[derive(Debug, Default)]
pub struct Encoded {
    pub buf: Vec<u8>,
    pub ops: Vec<OpMeta>,
}

/// Encodes one op per document per target.
pub fn encode(docs: &[(String, Op)], targets: &[String], version: i64) -> Encoded {
    let mut out =
        Encoded { buf: Vec::with_capacity(docs.len() * 400 * targets.len()), ops: Vec::with_capacity(docs.len() * targets.len()) };
    for (target, index) in targets.iter().enumerate() {
        for (id, op) in docs {
            let start = out.buf.len();
            let action = match op {
                Op::Index(_) => "index",
                Op::Delete => "delete",
            };
            // Index names and keys are plain ASCII here (a validated alias; an integer or a
            // uuid), so no JSON escaping is needed in the action line.
            let _ = write!(out.buf, r#"{{"{action}":{{"_index":"{index}","_id":"{id}","version":{version},"version_type":"external"}}}}"#);
            out.buf.push(b'\n');
            if let Op::Index(doc) = op {
                out.buf.extend_from_slice(doc.json().as_bytes());
                out.buf.push(b'\n');
            }
            out.ops.push(OpMeta { key: id.clone(), target, action: op.action(), bytes: start..out.buf.len() });
        }
    }
    out
}

/// Splits the ops named by `pending` (indices into `ops`) into requests of at most
/// `max_docs` ops and `max_bytes` bytes; an op bigger than `max_bytes` goes alone.
pub fn split(ops: &[OpMeta], pending: &[usize], max_docs: usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let mut requests = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for &i in pending {
        let len = ops[i].bytes.len();
        if !current.is_empty() && (current.len() >= max_docs || bytes + len > max_bytes) {
            requests.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += len;
    }
    if !current.is_empty() {
        requests.push(current);
    }
    requests
}

/// The body of one request.
pub fn body(encoded: &Encoded, request: &[usize]) -> Vec<u8> {
    let len = request.iter().map(|&i| encoded.ops[i].bytes.len()).sum();
    let mut body = Vec::with_capacity(len);
    for &i in request {
        body.extend_from_slice(&encoded.buf[encoded.ops[i].bytes.clone()]);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_has_external_versions_and_deletes_have_no_source() {
        let doc = serde_json::json!({"first_name": "Ann", "last_name": "Lee"});
        let e = encode(
            &[("1".into(), Op::Index(crate::document::Document::from_value(&doc))), ("2".into(), Op::Delete)],
            &["students_1".into()],
            42,
        );
        let text = String::from_utf8(e.buf.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], r#"{"index":{"_index":"students_1","_id":"1","version":42,"version_type":"external"}}"#);
        assert!(lines[1].starts_with(r#"{"first_name":"Ann""#));
        assert_eq!(lines[2], r#"{"delete":{"_index":"students_1","_id":"2","version":42,"version_type":"external"}}"#);
        assert_eq!(body(&e, &[1]), format!("{}\n", lines[2]).into_bytes());
    }

    #[test]
    fn split_respects_both_bounds() {
        let ops: Vec<OpMeta> = (0..10).map(|i| OpMeta { key: i.to_string(), target: 0, action: Action::Index, bytes: 0..100 }).collect();
        let all: Vec<usize> = (0..10).collect();
        assert_eq!(split(&ops, &all, 4, 10_000).iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(split(&ops, &all, 100, 250).iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 2, 2, 2]);
        // An op larger than the byte bound still goes, alone.
        assert_eq!(split(&ops, &all[..2], 100, 50).len(), 2);
    }
}

//! Classify: a `_bulk` answer becomes one outcome per op. A 200 is never taken as success
//! without reading every item (the `errors` flag is only a hint).

use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// The index holds this write (created, updated, deleted, or a delete of a document
    /// that was already absent).
    Written,
    /// 409: the index already holds a newer write of this document. Not an error, and not
    /// rewritten (protocol invariant 4).
    Superseded,
    /// Worth retrying: 408, 429, 5xx, a write block, or no answer for this item.
    Transient(String),
    /// Will fail the same way again (400: mapping or parse error; 413: this document alone is
    /// larger than the server or a proxy accepts). Dead-lettered.
    Permanent { status: u16, reason: String },
}

/// The answer to one `_bulk` request.
#[derive(Debug, PartialEq, Eq)]
pub enum BulkOutcome {
    /// One outcome per op sent, in order.
    Items(Vec<ItemOutcome>),
    /// The whole request should be retried later: 408, 429, 5xx, a write block
    /// (`cluster_block_exception`, 403 or 429 by version), a truncated or garbled answer, or
    /// an answer that is about the endpoint rather than the documents (404, 405, …).
    RetryAll(String),
    /// The request as a whole was refused for what it carries: 413 (too large) or 400 (a
    /// document it could not parse). Split it and send the halves; a single document
    /// refused so is refused for good.
    Refused { status: u16, reason: String },
}

/// A `_bulk` answer, as far as tidemark reads it. Typed, so that an answer of another shape
/// is an error ("unreadable") rather than a default value.
#[derive(Deserialize)]
struct Response {
    items: Vec<BulkItem>,
}

/// One item of a `_bulk` answer: `{"<action>": {…}}`.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum BulkItem {
    Index(ItemResult),
    Create(ItemResult),
    Update(ItemResult),
    Delete(ItemResult),
}

impl BulkItem {
    fn into_parts(self) -> (&'static str, ItemResult) {
        match self {
            BulkItem::Index(r) => ("index", r),
            BulkItem::Create(r) => ("create", r),
            BulkItem::Update(r) => ("update", r),
            BulkItem::Delete(r) => ("delete", r),
        }
    }
}

#[derive(Deserialize)]
struct ItemResult {
    status: u16,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    error: Option<EngineError>,
}

/// An error as the engine reports it: a type, a reason, and what caused it.
#[derive(Deserialize)]
struct EngineError {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    caused_by: Option<Box<EngineError>>,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(r) => write!(f, "{}: {r}", self.kind)?,
            None => f.write_str(&self.kind)?,
        }
        if let Some(cause) = &self.caused_by {
            write!(f, " (caused by {cause})")?;
        }
        Ok(())
    }
}

/// The body of an error answer to a whole request: `{"error": {…}}`, or (old servers,
/// proxies) `{"error": "text"}`.
#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorField,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Engine(EngineError),
    Text(String),
}

/// Turns the status and body of a `_bulk` answer to `sent` ops into outcomes.
pub fn classify(status: u16, body: &[u8], sent: usize) -> BulkOutcome {
    match status {
        200..=299 => {}
        400 | 413 if !is_write_block(body) => {
            let reason = match status {
                413 => format!("request too large (HTTP 413 from the search server or a proxy in front of it): {}", error_text(body)),
                _ => error_text(body),
            };
            return BulkOutcome::Refused { status, reason };
        }
        408 | 429 | 500.. => return BulkOutcome::RetryAll(format!("HTTP {status}: {}", error_text(body))),
        _ if is_write_block(body) => return BulkOutcome::RetryAll(format!("HTTP {status}, a write block: {}", error_text(body))),
        _ => {
            return BulkOutcome::RetryAll(format!(
                "HTTP {status} to the _bulk request as a whole (about the endpoint, not the documents; is ELASTICSEARCH_URL right?): {}",
                error_text(body)
            ))
        }
    }
    let parsed: Response = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return BulkOutcome::RetryAll(format!("unreadable _bulk answer: {e}")),
    };
    if parsed.items.len() != sent {
        return BulkOutcome::RetryAll(format!("_bulk answered {} items for {sent} sent", parsed.items.len()));
    }
    BulkOutcome::Items(
        parsed
            .items
            .into_iter()
            .map(|item| {
                let (op, result) = item.into_parts();
                item_outcome(op, result)
            })
            .collect(),
    )
}

fn item_outcome(op: &str, item: ItemResult) -> ItemOutcome {
    let reason = || item.error.as_ref().map(ToString::to_string).unwrap_or_else(|| format!("HTTP {}", item.status));
    match item.status {
        200..=299 => ItemOutcome::Written,
        409 => ItemOutcome::Superseded,
        // A delete of a document the index never had: the index already says "absent".
        404 if op == "delete" && item.error.is_none() => ItemOutcome::Written,
        404 if item.result.as_deref() == Some("not_found") => ItemOutcome::Written,
        // index_not_found: the index vanished under us; the batch is retried after the
        // index is there again.
        404 => ItemOutcome::Transient(reason()),
        408 | 429 | 500..=599 => ItemOutcome::Transient(reason()),
        // A write block (read-only index, flood-stage disk) lifts by itself or by an
        // operator: the document is fine, so it is retried, never dead-lettered.
        _ if item.error.as_ref().is_some_and(|e| e.kind == "cluster_block_exception") => ItemOutcome::Transient(reason()),
        status => ItemOutcome::Permanent { status, reason: reason() },
    }
}

/// Whether an error answer is a `cluster_block_exception` (a write block).
pub fn is_write_block(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorAnswer>(body)
        .is_ok_and(|a| matches!(a.error, ErrorField::Engine(e) if e.kind == "cluster_block_exception"))
}

/// What an error answer says, for logs and dead letters: the engine's error, or the first
/// 300 bytes of whatever else came back (a proxy's HTML page).
fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(ErrorAnswer { error: ErrorField::Engine(e) }) => e.to_string(),
        Ok(ErrorAnswer { error: ErrorField::Text(t) }) => t,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from Elasticsearch 8 / OpenSearch 2 answers.
    const MIXED: &str = r#"{"took":3,"errors":true,"items":[
      {"index":{"_index":"students_1","_id":"1","_version":7,"result":"created","status":201}},
      {"index":{"_index":"students_1","_id":"2","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[2]: version conflict, current version [9] is higher or equal to the one provided [7]"}}},
      {"index":{"_index":"students_1","_id":"3","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
      {"index":{"_index":"students_1","_id":"4","status":400,"error":{"type":"document_parsing_exception","reason":"[1:40] failed to parse field [age] of type [integer]","caused_by":{"type":"number_format_exception","reason":"For input string: \"abc\""}}}},
      {"delete":{"_index":"students_1","_id":"5","_version":7,"result":"not_found","status":404}},
      {"index":{"_index":"students_1","_id":"6","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
      {"index":{"_index":"students_1","_id":"7","status":403,"error":{"type":"cluster_block_exception","reason":"index [students_1] blocked by: [FORBIDDEN/8/index write (api)];"}}}
    ]}"#;

    #[test]
    fn every_item_is_read() {
        let BulkOutcome::Items(items) = classify(200, MIXED.as_bytes(), 7) else { panic!() };
        assert_eq!(items[0], ItemOutcome::Written);
        assert_eq!(items[1], ItemOutcome::Superseded);
        assert!(matches!(&items[2], ItemOutcome::Transient(r) if r.contains("es_rejected_execution_exception")));
        assert!(
            matches!(&items[3], ItemOutcome::Permanent { status: 400, reason } if reason.contains("failed to parse field [age]") && reason.contains("For input string"))
        );
        assert_eq!(items[4], ItemOutcome::Written);
        assert!(matches!(&items[5], ItemOutcome::Transient(_)));
        assert!(matches!(&items[6], ItemOutcome::Transient(r) if r.contains("cluster_block_exception")), "a blocked item is retried");
    }

    #[test]
    fn whole_request_failures() {
        assert!(
            matches!(classify(503, br#"{"error":{"type":"unavailable_shards_exception","reason":"x"},"status":503}"#, 1), BulkOutcome::RetryAll(r) if r.contains("503"))
        );
        assert!(matches!(classify(429, b"Too Many Requests", 1), BulkOutcome::RetryAll(_)));
        assert!(matches!(
            classify(400, br#"{"error":{"type":"illegal_argument_exception","reason":"bad"}}"#, 1),
            BulkOutcome::Refused { status: 400, .. }
        ));
        // A 200 that does not account for every op is not success.
        assert!(matches!(classify(200, br#"{"errors":false,"items":[]}"#, 2), BulkOutcome::RetryAll(_)));
        assert!(matches!(classify(200, b"<html>proxy error</html>", 1), BulkOutcome::RetryAll(_)));
    }
}

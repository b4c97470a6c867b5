//! A document is JSON built from the database by the model ([`crate::model`]); this module
//! holds what tidemark does with documents whatever the model: the index bodies (mapping and
//! settings).

use serde_json::Value;

use crate::{config::IndexConfig, model::Model};

/// One search document: a JSON object, its fields in the model's order. `_id` is the row's
/// key and is not part of the body.
pub type Document = Value;

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

//! The search document of a student, exactly as docs/design.md shows it, and the index mapping
//! that goes with it.

use serde::Serialize;

use crate::config::IndexConfig;

/// One student's search document. `_id` is the student id and is not part of the body.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudentDoc {
    pub first_name: String,
    pub last_name: String,
    pub age: i32,
    pub year_in_school: String,
    /// `null` when the student has no university.
    pub university: Option<UniversityRef>,
    /// Sorted (by bytes, so every reader agrees) and deduplicated.
    pub course_names: Vec<String>,
    pub name_complete: Completion,
    /// The student id again, as a number: `_id` is a string that Elasticsearch 8+ will not
    /// sort on, and paging with `search_after` needs a unique numeric tiebreaker.
    pub id: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UniversityRef {
    pub id: i64,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completion {
    pub input: Vec<String>,
}

impl StudentDoc {
    /// Builds the document from a student's row values; the one place the shape is decided.
    pub fn build(
        id: i64,
        first_name: String,
        last_name: String,
        age: i32,
        year_in_school: String,
        university: Option<UniversityRef>,
        mut course_names: Vec<String>,
    ) -> StudentDoc {
        course_names.sort_unstable();
        course_names.dedup();
        let full = format!("{first_name} {last_name}");
        StudentDoc {
            name_complete: Completion { input: vec![first_name.clone(), last_name.clone(), full] },
            first_name,
            last_name,
            age,
            // char(2) comes back padded only if shorter; trim defensively.
            year_in_school: year_in_school.trim_end().to_string(),
            university,
            course_names,
            id,
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

/// The body that creates an index being built: the mapping, and settings for bulk loading
/// (no refresh, no replicas; [`live_settings`] are restored before the alias moves). The
/// delete-tombstone lifetime (`gc_deletes`) is set from the start: it must hold for every
/// write the build receives.
pub fn build_body(index: &IndexConfig) -> serde_json::Value {
    let mut body = index_body();
    body["settings"] = serde_json::json!({
        "index": {
            "number_of_shards": index.number_of_shards,
            "number_of_replicas": 0,
            "refresh_interval": "-1",
            "gc_deletes": format!("{}ms", index.gc_deletes.0.as_millis()),
        }
    });
    body
}

/// The index body: facets as keywords, a numeric age, names as text with a keyword
/// sub-field, a completion field for autocomplete, and the numeric id (search pages'
/// tiebreaker). `dynamic: strict` so a document
/// that drifts from this shape is refused (and dead-lettered) rather than silently remapped.
pub fn index_body() -> serde_json::Value {
    let name = serde_json::json!({"type": "text", "fields": {"raw": {"type": "keyword"}}});
    serde_json::json!({
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "first_name": name,
                "last_name": name,
                "age": {"type": "integer"},
                "year_in_school": {"type": "keyword"},
                "university": {
                    "properties": {"id": {"type": "long"}, "name": {"type": "keyword"}}
                },
                "course_names": {"type": "keyword"},
                "name_complete": {"type": "completion"},
                "id": {"type": "long"}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_matches_the_design() {
        let doc = StudentDoc::build(
            7,
            "Ann".into(),
            "Lee".into(),
            20,
            "FR".into(),
            Some(UniversityRef { id: 3, name: "MIT".into() }),
            vec!["MATH201".into(), "CS101".into(), "CS101".into()],
        );
        assert_eq!(
            serde_json::to_value(&doc).unwrap(),
            serde_json::json!({
                "first_name": "Ann", "last_name": "Lee", "age": 20, "year_in_school": "FR",
                "university": {"id": 3, "name": "MIT"},
                "course_names": ["CS101", "MATH201"],
                "name_complete": {"input": ["Ann", "Lee", "Ann Lee"]},
                "id": 7
            })
        );
        let none = StudentDoc::build(8, "A".into(), "B".into(), 1, "SR".into(), None, vec![]);
        assert_eq!(serde_json::to_value(&none).unwrap()["university"], serde_json::Value::Null);
    }
}

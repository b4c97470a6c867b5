//! The JSON API: `/api/search`, `/api/suggest`, `/api/students/{id}`, and the extractors
//! that turn a query string into a validated request (or a 400 that says why).

use axum::{
    extract::{FromRequestParts, Path, State},
    http::request::Parts,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::{
    params::{query_pairs, SearchRequest},
    student::{self, IndexCopy},
    App, Failure, DEFAULT_SUGGESTIONS, MAX_SUGGESTIONS, MAX_SUGGEST_CHARS,
};

/// A failure answered as JSON: `{"error": {"status": 400, "message": "..."}}`.
pub struct ApiError(pub Failure);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        (status, Json(json!({"error": {"status": status.as_u16(), "message": self.0.message()}}))).into_response()
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> ApiError {
        ApiError(f)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SearchRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        SearchRequest::parse(parts.uri.query()).map_err(|e| ApiError(e.into()))
    }
}

/// `/api/suggest`'s parameters: `q` (the start of a name) and `size`.
pub struct SuggestParams {
    pub q: String,
    pub size: u32,
}

impl<S: Send + Sync> FromRequestParts<S> for SuggestParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        SuggestParams::parse(parts.uri.query(), ["a first or last name", "a name", "an"]).map_err(ApiError)
    }
}

impl SuggestParams {
    /// `/api/suggest`'s parameters; `[what, short, example]` say what `q` starts ("a first
    /// or last name", in short "a name") and give a prefix to show ("an").
    pub fn parse(query: Option<&str>, [what, short, example]: [&str; 3]) -> Result<SuggestParams, Failure> {
        let bad = |m: String| Failure::BadRequest(m);
        let (mut q, mut size) = (None, DEFAULT_SUGGESTIONS);
        for (k, v) in query_pairs(query).map_err(Failure::from)? {
            match k.as_str() {
                "q" if q.is_none() => q = Some(v.trim().to_string()),
                "size" => {
                    size = match v.parse::<u32>() {
                        Ok(n) if (1..=MAX_SUGGESTIONS).contains(&n) => n,
                        _ => return Err(bad(format!("`size` must be a whole number from 1 to {MAX_SUGGESTIONS}, not {v:?}"))),
                    }
                }
                "q" => return Err(bad("`q` is given more than once; give it once".into())),
                other => return Err(bad(format!("unknown parameter `{other}`; /api/suggest takes q and size"))),
            }
        }
        let q = q.unwrap_or_default();
        if q.is_empty() {
            return Err(bad(format!("`q` is required: the first letters of {what}, e.g. /api/suggest?q={example}")));
        }
        if q.chars().count() > MAX_SUGGEST_CHARS {
            return Err(bad(format!("`q` is longer than {MAX_SUGGEST_CHARS} characters; type the start of {short}")));
        }
        if q.chars().any(char::is_control) {
            return Err(bad("`q` contains control characters; remove them".into()));
        }
        Ok(SuggestParams { q, size })
    }
}

pub async fn search(State(app): State<App>, req: SearchRequest) -> Result<Response, ApiError> {
    Ok(Json(super::search(&app, &req).await?).into_response())
}

pub async fn suggest(State(app): State<App>, p: SuggestParams) -> Result<Response, ApiError> {
    Ok(Json(super::suggest(&app, &p.q, p.size).await?).into_response())
}

pub async fn student(State(app): State<App>, Path(raw): Path<String>) -> Result<Response, ApiError> {
    let id = student::parse_id(&raw)?;
    let view = student::view(&app.services, id).await?;
    let Some(doc) = &view.student else {
        let note = if view.index == IndexCopy::Stale {
            " (the search index still holds a copy: the delete reaches it at the next sync)"
        } else {
            ""
        };
        return Err(Failure::NotFound(format!("no student with id {id} in the database{note}")).into());
    };
    Ok(Json(json!({
        "id": id,
        "first_name": doc["first_name"],
        "last_name": doc["last_name"],
        "age": doc["age"],
        "year_in_school": doc["year_in_school"],
        "university": doc["university"],
        "courses": doc["course_names"],
        "index": view.index,
        "pending_change_seconds": view.pending_change_seconds,
    }))
    .into_response())
}

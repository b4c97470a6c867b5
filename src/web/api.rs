//! The JSON API: `/api/search`, `/api/suggest` and `/api/{plural}/{id}` (the loaded
//! model's documents), every failure answered as `{"error": {"status", "message"}}`.

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::{
    document::{self, IndexCopy},
    params::query_pairs,
    request::{title, Id, Request},
    App, Failure, DEFAULT_SUGGESTIONS, MAX_SUGGESTIONS, MAX_SUGGEST_CHARS,
};
use crate::model::article;

/// A failure answered as JSON: `{"error": {"status": 400, "message": "..."}}`, its message
/// naming the model's documents (`noun`).
pub struct ApiError(pub Failure, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        (status, Json(json!({"error": {"status": status.as_u16(), "message": self.0.message_about(&self.1)}}))).into_response()
    }
}

pub(super) fn api_error(app: &App) -> impl Fn(Failure) -> ApiError + '_ {
    move |f| ApiError(f, app.noun())
}

/// `/api/suggest`'s parameters: `q` (the start of a name) and `size`.
pub struct SuggestParams {
    pub q: String,
    pub size: u32,
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

pub async fn search(State(app): State<App>, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let req = Request::parse(&app.services.model, uri.query()).map_err(|e| api_error(&app)(e.into()))?;
    Ok(Json(super::search(&app, &req).await.map_err(api_error(&app))?).into_response())
}

pub async fn suggest(State(app): State<App>, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let view = app.services.model.view();
    let fields: Vec<String> = view.suggest.iter().flat_map(|s| s.label.fields().map(|f| f.replace(['_', '.'], " "))).collect();
    let what = format!("{}'s {}", article(&view.noun), if fields.is_empty() { "name".into() } else { fields.join(" or ") });
    let short = format!("{}'s {}", article(&view.noun), fields.first().map_or("name", String::as_str));
    let p = SuggestParams::parse(uri.query(), [&what, &short, "ab"]).map_err(api_error(&app))?;
    Ok(Json(super::suggest(&app, &p.q, p.size).await.map_err(api_error(&app))?).into_response())
}

pub async fn document(State(app): State<App>, Path(raw): Path<String>) -> Result<Response, ApiError> {
    let view = app.services.model.view();
    let (key, doc, index, pending) = document::read(&app, &raw).await.map_err(api_error(&app))?;
    let Some(doc) = doc else {
        let note =
            if index == IndexCopy::Stale { " (the search index still holds a copy: the delete reaches it at the next sync)" } else { "" };
        return Err(api_error(&app)(Failure::NotFound(format!("no {} with id {key} in the database{note}", view.noun))));
    };
    Ok(Json(json!({
        "id": Id::parse(app.services.model.root.key_type, &key).map_or_else(|| json!(key), |id| id.json()),
        "title": title(&view, &doc, &key),
        "document": doc,
        "index": index,
        "pending_change_seconds": pending,
    }))
    .into_response())
}

//! `POST /v1/completions`: a raw prompt continued, answered as one object or
//! a stream of chunks.

use axum::extract::State;
use axum::response::Response;

use crate::error::ApiError;
use crate::extract::OpenAiJson;
use crate::request::{check_model, check_prompt_bytes, plan, CompletionRequest};
use crate::respond::{respond, Endpoint};
use crate::state::AppState;

/// The handler.
pub(crate) async fn completions(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, &request.model)?;
    let prompt = request.prompt_text()?.to_owned();
    check_prompt_bytes(&state, prompt.len(), "prompt")?;
    let prompt_ids = state
        .prepare(move |model| {
            model
                .encode_prompt(&prompt)
                .map_err(|error| ApiError::Internal(error.to_string()))
        })
        .await?;
    let plan = plan(&state, &request.params, prompt_ids, Endpoint::Completion)?;
    respond(state, Endpoint::Completion, plan).await
}

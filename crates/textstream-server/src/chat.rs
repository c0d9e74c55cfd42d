//! `POST /v1/chat/completions`: messages, rendered with the model's chat
//! template, answered as one object or a stream of chunks.

use axum::extract::State;
use axum::response::Response;

use crate::error::ApiError;
use crate::extract::OpenAiJson;
use crate::request::{check_model, check_prompt_bytes, plan, ChatRequest};
use crate::respond::{respond, Endpoint};
use crate::state::AppState;

/// The handler.
pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, &request.model)?;
    let messages = request.template_messages()?;
    let bytes = messages.iter().map(|m| m.content.len()).sum();
    check_prompt_bytes(&state, bytes, "messages")?;
    let prompt_ids = state
        .prepare(move |model| {
            let prompt = model
                .chat_prompt(&messages)
                .map_err(|error| ApiError::invalid("messages", error.to_string()))?;
            model
                .encode_prompt(&prompt)
                .map_err(|error| ApiError::Internal(error.to_string()))
        })
        .await?;
    let plan = plan(&state, &request.params, prompt_ids, Endpoint::Chat)?;
    respond(state, Endpoint::Chat, plan).await
}

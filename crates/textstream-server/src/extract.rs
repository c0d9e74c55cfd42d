//! [`OpenAiJson`]: reads a JSON body and rejects with [`ApiError`], so that
//! malformed JSON, wrong types and bodies over the limit all get the OpenAI
//! error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A request body parsed as JSON into `T`.
#[derive(Debug)]
pub(crate) struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        // `Bytes` honours the router's `DefaultBodyLimit`, both for a
        // declared `Content-Length` and for a chunked body that grows past it.
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge {
                        limit: state.config().max_body_bytes,
                    }
                } else {
                    ApiError::InvalidRequest {
                        message: rejection.body_text(),
                        param: None,
                        code: None,
                    }
                }
            })?;
        Ok(OpenAiJson(serde_json::from_slice(&bytes)?))
    }
}

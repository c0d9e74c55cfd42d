//! [`OpenAiJson`]: reads a JSON body and rejects with [`ApiError`], so that
//! malformed JSON, wrong types and bodies over the limit all get the OpenAI
//! error shape, and a body that does not arrive in time gets `408`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A request body parsed as JSON into `T`.
#[derive(Debug)]
pub(crate) struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        // A body of another type is refused before it is read: a cross-site
        // form or `fetch` with `text/plain` needs no CORS preflight, so
        // without this any page a user visits could start generations.
        let declared = request
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .unwrap_or_default();
        if !is_json(&declared) {
            return Err(ApiError::UnsupportedMediaType { got: declared });
        }
        // `Bytes` honours the router's `DefaultBodyLimit`, both for a
        // declared `Content-Length` and for a chunked body that grows past it.
        let limit = state.config().body_timeout;
        let bytes = tokio::time::timeout(limit, Bytes::from_request(request, state))
            .await
            .map_err(|_elapsed| ApiError::BodyTimeout {
                secs: limit.as_secs(),
            })?
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

/// Whether a `Content-Type` is `application/json` (any parameters, any case).
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn only_application_json_is_json() {
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonx",
            "text/plain; application/json",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }
}

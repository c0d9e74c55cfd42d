//! `GET /`: a chat page, embedded in the binary (no build step).

use axum::http::header;
use axum::response::{Html, IntoResponse};

/// The page: multi-turn chat streaming over `fetch`, with a Stop button,
/// Markdown answers, settings and a conversation history in local storage.
const INDEX_HTML: &str = include_str!("chat.html");

/// What the page may load and talk to: its own inline script and style, and
/// this server; no other scripts, images, frames or form targets, and no
/// framing by other sites. The page never parses model text as HTML; this is
/// the second line, should that ever break.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The handler.
pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(INDEX_HTML),
    )
}

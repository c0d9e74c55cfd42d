//! `GET /`: a chat page, embedded in the binary (no build step).

use axum::response::Html;

/// The page: multi-turn chat streaming over `fetch`, with a Stop button.
const INDEX_HTML: &str = include_str!("chat.html");

/// The handler.
pub(crate) async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

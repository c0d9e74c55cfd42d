//! Request handling, in process: a method, path, content type and body sent
//! through the server's router on the tiny random model. Bad requests get
//! 4xx; no input may get a 5xx, panic or hang.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use textstream_engine::model::Model;
use textstream_server::{app, AppState, ServerConfig};
use tower::ServiceExt;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    state: AppState,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("textstream-fuzz-tiny-{}.gguf", std::process::id()));
        textstream_engine::testing::write_tiny_model(&path, 7).expect("write the tiny model");
        let model = Arc::new(Model::load(&path).expect("load the tiny model"));
        let _ = std::fs::remove_file(&path);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let config = ServerConfig {
            api_key: Some("key".to_owned()),
            ..ServerConfig::default()
        };
        let state = runtime
            .block_on(async { AppState::new(model, config) })
            .expect("state");
        Fixture { runtime, state }
    })
}

#[derive(Debug, Arbitrary)]
enum Path {
    Chat,
    Completions,
    Models,
    Health,
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    post: bool,
    path: Path,
    json: bool,
    key: bool,
    /// Extra headers, name and value.
    headers: Vec<(String, String)>,
    /// The body; when it starts with `{`, sent as is, else also tried as
    /// the value of a field of a valid chat request.
    body: String,
    field: String,
}

fuzz_target!(|input: Input| {
    let fixture = fixture();
    let path = match &input.path {
        Path::Chat => "/v1/chat/completions".to_owned(),
        Path::Completions => "/v1/completions".to_owned(),
        Path::Models => "/v1/models".to_owned(),
        Path::Health => "/health".to_owned(),
        Path::Other(path) => format!("/{path}"),
    };
    let body = if input.body.starts_with('{') || !input.post {
        input.body.clone()
    } else {
        // A valid short request with one field set to the fuzzer's JSON
        // (when it parses), to reach the checks behind the parsing.
        let mut request: serde_json::Value = serde_json::json!({
            "model": "default",
            "messages": [{"role": "user", "content": "hi"}],
            "prompt": "hi",
            "max_tokens": 2,
        });
        let value = serde_json::from_str(&input.body)
            .unwrap_or(serde_json::Value::String(input.body.clone()));
        request[input.field.as_str()] = value;
        request.to_string()
    };
    let mut builder = Request::builder()
        .method(if input.post { "POST" } else { "GET" })
        .uri(&path)
        .header("host", "localhost");
    if input.json {
        builder = builder.header("content-type", "application/json");
    }
    if input.key {
        builder = builder.header("authorization", "Bearer key");
    }
    for (name, value) in input.headers.iter().take(4) {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let Ok(request) = builder.body(Body::from(body)) else {
        return; // not a valid HTTP request to begin with
    };
    let router = app(fixture.state.clone());
    fixture.runtime.block_on(async move {
        let response = tokio::time::timeout(Duration::from_secs(20), router.oneshot(request))
            .await
            .expect("answered in time")
            .expect("infallible");
        let status = response.status();
        assert!(!status.is_server_error(), "{status} for {path}");
        // Read the whole body (streams included) within the time too.
        let body = tokio::time::timeout(
            Duration::from_secs(20),
            axum::body::to_bytes(response.into_body(), usize::MAX),
        )
        .await
        .expect("the body in time");
        assert!(body.is_ok());
    });
});

//! Who may call the server and what it accepts, over real HTTP: the API
//! key, JSON-only bodies, the Host check of a loopback bind, CORS, fields
//! the server does not implement, and the OpenAI sampling fields it applies.

mod common;

use common::{tiny_model, TestServer};
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use textstream_server::{HostCheck, ServerConfig};

/// A short greedy chat body with `extra` fields merged in.
fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": "default",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3,
        "temperature": 0,
    });
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    body
}

/// POSTs `body` as JSON with `headers`; the status, the response's headers and its JSON.
async fn post(base: &str, path: &str, body: &Value, headers: HeaderMap) -> (u16, HeaderMap, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .headers(headers)
        .json(body)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.expect("a JSON body"))
}

fn bearer(key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).expect("header"),
    );
    headers
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_key_guards_v1_and_nothing_else() {
    let server = TestServer::start(
        tiny_model(),
        ServerConfig {
            api_key: Some("sk-test-123".to_owned()),
            ..ServerConfig::default()
        },
    )
    .await;
    let base = &server.base;
    for headers in [
        HeaderMap::new(),
        bearer("sk-test-12"),
        bearer("sk-test-1234"),
        bearer(""),
    ] {
        let (status, response_headers, body) = post(
            base,
            "/v1/chat/completions",
            &chat(json!({})),
            headers.clone(),
        )
        .await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert_error(&body, "invalid_api_key");
        assert_eq!(response_headers["www-authenticate"], "Bearer");
    }
    let models = reqwest::get(format!("{base}/v1/models"))
        .await
        .expect("send");
    assert_eq!(models.status(), 401);
    let (status, _, body) = post(
        base,
        "/v1/chat/completions",
        &chat(json!({})),
        bearer("sk-test-123"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 3, "{body}");
    // Health, metrics and the chat page stay open.
    for path in ["/health", "/metrics", "/"] {
        let response = reqwest::get(format!("{base}{path}")).await.expect("send");
        assert_eq!(response.status(), 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_must_be_declared_json() {
    let server = TestServer::tiny().await;
    let body = chat(json!({})).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", server.base))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 415, "{content_type:?}");
        let json: Value = response.json().await.expect("JSON");
        assert_error(&json, "unsupported_media_type");
    }
    // Nothing was generated for them.
    assert_eq!(
        server.metric("textstream_tokens_generated_total").await,
        0.0
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_server_answers_only_loopback_hosts() {
    let server = TestServer::tiny().await;
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let client = reqwest::Client::new();
    for (host, status) in [
        ("evil.example".to_owned(), 403),
        (format!("evil.example:{port}"), 403),
        (format!("localhost.evil.example:{port}"), 403),
        (format!("localhost:{port}"), 200),
        (format!("127.0.0.1:{port}"), 200),
        (format!("[::1]:{port}"), 200),
    ] {
        let response = client
            .get(format!("{}/v1/models", server.base))
            .header("host", &host)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), status, "{host}");
        if status == 403 {
            let json: Value = response.json().await.expect("JSON");
            assert_error(&json, "forbidden_host");
        }
    }
    server.stop().await;

    // Behind a proxy that forwards its public name, the check can be off.
    let server = TestServer::start(
        tiny_model(),
        ServerConfig {
            host_check: HostCheck::Any,
            ..ServerConfig::default()
        },
    )
    .await;
    let response = client
        .get(format!("{}/v1/models", server.base))
        .header("host", "api.example")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_is_off_by_default_and_on_for_the_origins_given() {
    let client = reqwest::Client::new();
    let preflight = |base: &str, origin: &str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{base}/v1/chat/completions"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let server = TestServer::tiny().await;
    let response = preflight(&server.base, "https://app.example")
        .await
        .expect("send");
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let mut origin = HeaderMap::new();
    origin.insert("origin", HeaderValue::from_static("https://app.example"));
    let (status, headers, _) = post(
        &server.base,
        "/v1/chat/completions",
        &chat(json!({})),
        origin,
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.get("access-control-allow-origin").is_none());
    server.stop().await;

    let server = TestServer::start(
        tiny_model(),
        ServerConfig {
            cors_origins: vec!["https://app.example".to_owned()],
            api_key: Some("k".to_owned()),
            ..ServerConfig::default()
        },
    )
    .await;
    // The preflight is answered before the key is asked for (browsers send none).
    let response = preflight(&server.base, "https://app.example")
        .await
        .expect("send");
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = response.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    let response = preflight(&server.base, "https://other.example")
        .await
        .expect("send");
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let mut headers = bearer("k");
    headers.insert("origin", HeaderValue::from_static("https://app.example"));
    let (status, headers, _) = post(
        &server.base,
        "/v1/chat/completions",
        &chat(json!({})),
        headers,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    server.stop().await;

    let bad = textstream_server::AppState::new(
        tiny_model(),
        ServerConfig {
            cors_origins: vec!["bad\norigin".to_owned()],
            ..ServerConfig::default()
        },
    );
    assert!(bad.is_err());
}

/// Posts a chat request with `extra` fields, which must get a 400 naming
/// `param`; the error body.
async fn chat_refused(server: &TestServer, extra: &Value, param: &str) -> Value {
    let (status, _, body) = post(
        &server.base,
        "/v1/chat/completions",
        &chat(extra.clone()),
        HeaderMap::new(),
    )
    .await;
    assert_eq!(status, 400, "{extra}: {body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn unimplemented_fields_are_refused_by_name() {
    let server = TestServer::tiny().await;
    for (extra, param) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"tool_choice": "auto"}), "tool_choice"),
        (json!({"made_up_field": 1}), "made_up_field"),
    ] {
        let body = chat_refused(&server, &extra, param).await;
        assert_error(&body, "unsupported_parameter");
    }
    // Unset values and bookkeeping fields change nothing and pass.
    for extra in [
        json!({"tools": null, "logprobs": false, "tool_choice": null, "response_format": {}}),
        json!({"user": "u-1", "store": true, "metadata": {"a": "b"}}),
    ] {
        let (status, _, body) = post(
            &server.base,
            "/v1/chat/completions",
            &chat(extra.clone()),
            HeaderMap::new(),
        )
        .await;
        assert_eq!(status, 200, "{extra}: {body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logprobs_come_with_each_token_streamed_or_not() {
    let server = TestServer::tiny().await;
    let body = chat(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 8}));
    let (status, _, whole) = post(
        &server.base,
        "/v1/chat/completions",
        &body,
        HeaderMap::new(),
    )
    .await;
    assert_eq!(status, 200, "{whole}");
    let content = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content")
        .clone();
    assert_eq!(content.len(), 8, "{whole}");
    let mut bytes = Vec::new();
    for item in &content {
        let logprob = item["logprob"].as_f64().expect("a number");
        assert!(logprob <= 0.0 && logprob.is_finite(), "{item}");
        // Three alternatives, most likely first; greedy chose the first.
        let top = item["top_logprobs"].as_array().expect("alternatives");
        assert_eq!(top.len(), 3, "{item}");
        let numbers: Vec<f64> = top
            .iter()
            .map(|t| t["logprob"].as_f64().expect("number"))
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] >= w[1]), "{item}");
        assert_eq!(top[0]["token"], item["token"], "{item}");
        assert_eq!(top[0]["bytes"], item["bytes"], "{item}");
        assert_eq!(numbers[0], logprob, "{item}");
        bytes.extend(
            item["bytes"]
                .as_array()
                .expect("bytes")
                .iter()
                .map(|b| b.as_u64().expect("byte") as u8),
        );
    }
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert_eq!(bytes, text.as_bytes(), "the tokens' bytes are the answer's");

    // Streamed: the same tokens and numbers, spread over the chunks.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let sse = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&streamed)
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    let items: Vec<Value> = common::sse_data(&sse)
        .into_iter()
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str::<Value>(data).expect("json"))
        .flat_map(|chunk| {
            chunk["choices"][0]["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(items, content);

    // Completions: tokens, their numbers and where each starts in the text.
    let (status, json) = completion(&server, "once upon", json!({"logprobs": 0})).await;
    assert_eq!(status, 200, "{json}");
    let logprobs = &json["choices"][0]["logprobs"];
    let tokens = logprobs["tokens"].as_array().expect("tokens");
    let offsets = logprobs["text_offset"].as_array().expect("offsets");
    assert_eq!(tokens.len(), 6, "{json}");
    assert_eq!(
        logprobs["token_logprobs"]
            .as_array()
            .expect("numbers")
            .len(),
        6
    );
    assert_eq!(offsets[0], 0);
    assert!(
        offsets.windows(2).all(|w| w[0].as_u64() <= w[1].as_u64()),
        "{json}"
    );
    // With alternatives: one object per token, token text to number,
    // holding the chosen token's own (greedy: the most likely).
    let (status, json) = completion(&server, "once upon", json!({"logprobs": 2})).await;
    assert_eq!(status, 200, "{json}");
    let logprobs = &json["choices"][0]["logprobs"];
    let top = logprobs["top_logprobs"].as_array().expect("alternatives");
    assert_eq!(top.len(), 6, "{json}");
    for (i, alternatives) in top.iter().enumerate() {
        let alternatives = alternatives.as_object().expect("object");
        assert!((1..=2).contains(&alternatives.len()), "{json}");
        let token = logprobs["tokens"][i].as_str().expect("token");
        assert_eq!(alternatives[token], logprobs["token_logprobs"][i], "{json}");
    }
    // Chosen tokens only: no alternatives.
    let (_, zero) = completion(&server, "once upon", json!({"logprobs": 0})).await;
    assert!(
        zero["choices"][0]["logprobs"]["top_logprobs"].is_null(),
        "{zero}"
    );
    // Not asked: null, as before.
    let (_, plain) = completion(&server, "once upon", json!({})).await;
    assert!(plain["choices"][0]["logprobs"].is_null(), "{plain}");
    for (extra, param) in [
        (json!({"logprobs": 21}), "logprobs"),
        (json!({"logprobs": -1}), "logprobs"),
        (json!({"logprobs": "yes"}), "logprobs"),
    ] {
        let (status, body) = completion(&server, "once upon", extra.clone()).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    for (extra, param) in [
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"logprobs": 1}), "logprobs"),
    ] {
        chat_refused(&server, &extra, param).await;
    }
    server.stop().await;
}

/// The text of a greedy completion of `prompt` with `extra` fields.
async fn completion(server: &TestServer, prompt: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"model": "default", "prompt": prompt, "max_tokens": 6, "temperature": 0});
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    let (status, _, json) = post(&server.base, "/v1/completions", &body, HeaderMap::new()).await;
    (status, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_fields_are_applied() {
    let server = TestServer::tiny().await;
    let text = |json: &Value| {
        json["choices"][0]["text"]
            .as_str()
            .expect("text")
            .to_owned()
    };
    let (status, plain) = completion(&server, "once upon", json!({})).await;
    assert_eq!(status, 200, "{plain}");
    // A temperature too small to divide by is greedy, not a 500.
    let (status, tiny) = completion(&server, "once upon", json!({"temperature": 1e-45})).await;
    assert_eq!(status, 200, "{tiny}");
    assert_eq!(text(&tiny), text(&plain));
    // A bias of +100 on one token makes every token that one.
    let model = tiny_model();
    let id = model.encode_prompt("once").expect("encode")[0];
    let (status, biased) = completion(
        &server,
        "once upon",
        json!({"logit_bias": {id.to_string(): 100}}),
    )
    .await;
    assert_eq!(status, 200, "{biased}");
    let one = model.detokenizer().decode(&[id], false).expect("decode");
    assert_eq!(text(&biased), one.repeat(6), "{biased}");
    // Two tokens raised far above the rest: every answer is made of them
    // alone, and a frequency penalty (2 per pick, the sampler's unit tests
    // check the arithmetic) changes which: the field reaches the sampler.
    let ids = model.encode_prompt("once upon").expect("encode");
    let (a, b) = (ids[0], ids[1]);
    assert_ne!(a, b);
    let both = json!({a.to_string(): 100, b.to_string(): 100});
    let pieces = [a, b].map(|id| model.detokenizer().decode(&[id], false).expect("decode"));
    let (_, unpenalized) = completion(&server, "x", json!({"logit_bias": both})).await;
    let (_, penalized) = completion(
        &server,
        "x",
        json!({"logit_bias": both, "frequency_penalty": 2}),
    )
    .await;
    for json in [&unpenalized, &penalized] {
        assert!(made_of(&text(json), &pieces), "{json}");
    }
    assert_ne!(text(&unpenalized), text(&penalized));
    for (extra, param) in [
        (json!({"logit_bias": {"not-a-number": 1}}), "logit_bias"),
        (json!({"logit_bias": {"99999999": 1}}), "logit_bias"),
        (json!({"logit_bias": {id.to_string(): 101}}), "logit_bias"),
        (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
    ] {
        let (status, body) = completion(&server, "once upon", extra.clone()).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    server.stop().await;
}

/// Whether `text` is a concatenation of `pieces`.
fn made_of(text: &str, pieces: &[String]) -> bool {
    text.is_empty()
        || pieces.iter().any(|p| {
            !p.is_empty()
                && text
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| made_of(rest, pieces))
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_streams_still_open_after_its_timeout_and_keeps_quiet_ones_alive() {
    let server = TestServer::start(
        tiny_model(),
        ServerConfig {
            token_delay: Some(std::time::Duration::from_millis(100)),
            shutdown_timeout: std::time::Duration::from_millis(300),
            sse_keep_alive: std::time::Duration::from_millis(20),
            ..ServerConfig::default()
        },
    )
    .await;
    // About 10 s of tokens: far longer than the shutdown timeout.
    let body = chat(json!({"stream": true, "max_tokens": 100}));
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&body)
        .send()
        .await
        .expect("send");
    let mut chunks = response.bytes_stream();
    let mut seen = String::new();
    // The first token, then shut down.
    while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 2 {
        let chunk = chunks.next().await.expect("more").expect("bytes");
        seen += &String::from_utf8_lossy(&chunk);
    }
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop());
    while let Some(chunk) = chunks.next().await {
        seen += &String::from_utf8_lossy(&chunk.expect("bytes"));
    }
    stopping.await.expect("the server stopped");
    let waited = started.elapsed();
    // Ended by the timeout (not by the answer's end), with an error event.
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    assert!(seen.contains("shutting down"), "{seen}");
    assert!(seen.trim_end().ends_with("data: [DONE]"), "{seen}");
    assert!(!seen.contains("finish_reason\":\"length"), "{seen}");
    // Between tokens (100 ms apart) the stream got keep-alive comments.
    assert!(seen.lines().any(|line| line.starts_with(':')), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_too_long_by_their_bytes_are_refused_before_tokenizing() {
    let server = TestServer::tiny().await;
    let model = tiny_model();
    let longest = model.tokenizer().longest_token_bytes();
    // Enough bytes for twice the context even if every token were the longest.
    let text = "a".repeat(2 * longest * model.context_length());
    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"model": "default", "prompt": text}),
            "prompt",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "default", "messages": [{"role": "user", "content": text}]}),
            "messages",
        ),
    ] {
        let (status, _, json) = post(&server.base, path, &body, HeaderMap::new()).await;
        assert_eq!(status, 400, "{json}");
        assert_eq!(json["error"]["code"], "context_length_exceeded", "{json}");
        assert_eq!(json["error"]["param"], param, "{json}");
        // The byte check's own message: it answered before tokenizing.
        let message = json["error"]["message"].as_str().expect("message");
        assert!(message.contains("bytes: at least"), "{message}");
    }
    server.stop().await;
}

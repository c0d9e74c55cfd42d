//! The OpenAI routes against the tiny random model, through async-openai's
//! client (streaming and not) and raw reqwest (every bad-input class).

mod common;

use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use async_openai::types::completions::{CreateCompletionRequest, CreateCompletionRequestArgs};
use common::{tiny_model, TestServer};
use futures::StreamExt;
use serde_json::{json, Value};
use textstream_server::ServerConfig;

/// Tokens asked for in the tiny-model tests: the tiny model never stops on
/// its own, so every answer is exactly this long.
const MAX_TOKENS: u32 = 12;

fn chat_request(stream_usage: bool) -> CreateChatCompletionRequest {
    let messages: Vec<ChatCompletionRequestMessage> = vec![
        ChatCompletionRequestSystemMessage::from("Be brief.").into(),
        ChatCompletionRequestUserMessage::from("Hi there").into(),
    ];
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model("default")
        .messages(messages)
        .max_completion_tokens(MAX_TOKENS)
        .temperature(0.8)
        .seed(1234);
    if stream_usage {
        args.stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            ..Default::default()
        });
    }
    args.build().expect("valid request")
}

fn completion_request() -> CreateCompletionRequest {
    CreateCompletionRequestArgs::default()
        .model("textstream")
        .prompt("Once upon")
        .max_tokens(MAX_TOKENS)
        .temperature(0.0)
        .build()
        .expect("valid request")
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_streamed_text_equals_non_streamed_text() {
    let server = TestServer::tiny().await;
    let client = server.openai();

    let full = client
        .chat()
        .create(chat_request(false))
        .await
        .expect("chat");
    assert_eq!(full.object, "chat.completion");
    let choice = &full.choices[0];
    let text = choice.message.content.clone().unwrap_or_default();
    let usage = full.usage.expect("usage");
    assert_eq!(usage.completion_tokens, MAX_TOKENS);
    assert!(usage.prompt_tokens > 0);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert_eq!(
        serde_json::to_value(choice.finish_reason).expect("json"),
        json!("length")
    );

    let mut stream = client
        .chat()
        .create_stream(chat_request(true))
        .await
        .expect("stream");
    let mut streamed = String::new();
    let mut first_role = None;
    let mut finish = None;
    let mut stream_usage = None;
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        assert_eq!(chunk.object, "chat.completion.chunk");
        if chunks == 0 {
            first_role = chunk.choices[0].delta.role;
        }
        chunks += 1;
        if let Some(usage) = chunk.usage {
            assert!(chunk.choices.is_empty(), "the usage chunk has no choices");
            stream_usage = Some(usage);
        }
        for choice in chunk.choices {
            streamed += choice.delta.content.as_deref().unwrap_or("");
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
    }
    assert!(first_role.is_some(), "the first chunk carries the role");
    assert_eq!(streamed, text);
    assert_eq!(serde_json::to_value(finish).expect("json"), json!("length"));
    assert_eq!(stream_usage.expect("usage chunk"), usage);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn completion_streamed_text_equals_non_streamed_text() {
    let server = TestServer::tiny().await;
    let client = server.openai();
    let full = client
        .completions()
        .create(completion_request())
        .await
        .expect("completion");
    assert_eq!(full.object, "text_completion");
    assert_eq!(full.usage.expect("usage").completion_tokens, MAX_TOKENS);
    let text = full.choices[0].text.clone();
    assert!(!text.is_empty());

    let mut stream = client
        .completions()
        .create_stream(completion_request())
        .await
        .expect("stream");
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk.expect("chunk").choices {
            streamed += &choice.text;
        }
    }
    assert_eq!(streamed, text);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_sse_ends_with_finish_chunk_and_done() {
    let server = TestServer::tiny().await;
    let body = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&json!({
            "model": "default", "stream": true, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        }))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    let data = common::sse_data(&body);
    assert_eq!(data.last(), Some(&"[DONE]"));
    let finish: Value = serde_json::from_str(data[data.len() - 2]).expect("json");
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let first: Value = serde_json::from_str(data[0]).expect("json");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_string_ends_the_text_before_it() {
    let server = TestServer::tiny().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", server.base);
    let ask = |stop: Option<String>| {
        let mut body =
            json!({"model": "default", "prompt": "Once upon", "max_tokens": 20, "temperature": 0});
        if let Some(stop) = stop {
            body["stop"] = json!([stop]);
        }
        client.post(&url).json(&body).send()
    };
    let full: Value = ask(None).await.expect("send").json().await.expect("json");
    let text = full["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_owned();
    // Stop at a piece from the middle of the greedy answer.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut: Value = ask(Some(stop.clone()))
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let expected = &text[..text.find(&stop).expect("stop in text")];
    assert_eq!(cut["choices"][0]["text"], expected);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn models_health_and_metrics() {
    let server = TestServer::start(
        tiny_model(),
        ServerConfig {
            model_name: "tiny".to_owned(),
            ..ServerConfig::default()
        },
    )
    .await;
    let models: Value = reqwest::get(format!("{}/v1/models", server.base))
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"][0]["id"], "tiny");
    let listed = server.openai().models().list().await.expect("list");
    assert_eq!(listed.data[0].id, "tiny");
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .expect("health");
    assert_eq!(health.status(), 200);

    server
        .openai()
        .completions()
        .create(
            CreateCompletionRequestArgs::default()
                .model("tiny")
                .prompt("a")
                .max_tokens(3u32)
                .build()
                .expect("request"),
        )
        .await
        .expect("completion");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("textstream_http_requests_total{code=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("textstream_time_to_first_token_seconds_count 1"),
        "{metrics}"
    );
    // Its 3 tokens took 3 of the scheduler's passes (the prompt's gave the first).
    assert_eq!(server.metric("textstream_scheduler_steps_total").await, 3.0);
    assert!(metrics.contains("textstream_batch_sequences "), "{metrics}");
    assert_eq!(
        server.metric("textstream_tokens_generated_total").await,
        3.0
    );
    assert_eq!(server.metric("textstream_active_streams").await, 0.0);
    assert_eq!(server.metric("textstream_queue_depth").await, 0.0);
    server.stop().await;
}

/// Sends `body` (raw bytes) and returns the status and the JSON error.
async fn post_raw(base: &str, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let json = response.json().await.expect("the error body is JSON");
    (status, json)
}

fn assert_error_shape(body: &Value) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some(), "{body}");
    assert!(error.get("code").is_some(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_get_openai_errors_with_their_status() {
    let server = TestServer::start(
        tiny_model(),
        ServerConfig {
            max_body_bytes: 4096,
            ..ServerConfig::default()
        },
    )
    .await;
    let chat = |extra: Value| {
        let mut body = json!({"model": "default", "messages": [{"role": "user", "content": "Hi"}]});
        for (key, value) in extra.as_object().expect("object") {
            body[key] = value.clone();
        }
        body.to_string()
    };
    let long_prompt = "word ".repeat(200);
    let cases: Vec<(&str, &str, String, u16, Option<&str>)> = vec![
        (
            "malformed JSON",
            "/v1/chat/completions",
            "{\"model\": ".to_owned(),
            400,
            None,
        ),
        (
            "wrong type",
            "/v1/chat/completions",
            chat(json!({"messages": "Hi"})),
            400,
            None,
        ),
        (
            "wrong number type",
            "/v1/chat/completions",
            chat(json!({"max_tokens": "ten"})),
            400,
            None,
        ),
        (
            "empty messages",
            "/v1/chat/completions",
            chat(json!({"messages": []})),
            400,
            Some("messages"),
        ),
        (
            "unknown model",
            "/v1/chat/completions",
            chat(json!({"model": "gpt-9"})),
            400,
            Some("model"),
        ),
        (
            "temperature",
            "/v1/chat/completions",
            chat(json!({"temperature": 2.5})),
            400,
            Some("temperature"),
        ),
        (
            "negative temperature",
            "/v1/chat/completions",
            chat(json!({"temperature": -1})),
            400,
            Some("temperature"),
        ),
        (
            "top_p",
            "/v1/chat/completions",
            chat(json!({"top_p": 0})),
            400,
            Some("top_p"),
        ),
        (
            "n",
            "/v1/chat/completions",
            chat(json!({"n": 2})),
            400,
            Some("n"),
        ),
        (
            "presence_penalty",
            "/v1/chat/completions",
            chat(json!({"presence_penalty": 3})),
            400,
            Some("presence_penalty"),
        ),
        (
            "max_tokens zero",
            "/v1/chat/completions",
            chat(json!({"max_tokens": 0})),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens beyond context",
            "/v1/chat/completions",
            chat(json!({"max_tokens": 100000})),
            400,
            Some("max_tokens"),
        ),
        (
            "max_completion_tokens beyond context",
            "/v1/chat/completions",
            chat(json!({"max_completion_tokens": 100000})),
            400,
            Some("max_completion_tokens"),
        ),
        (
            "too many stops",
            "/v1/chat/completions",
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            Some("stop"),
        ),
        (
            "prompt beyond context",
            "/v1/completions",
            json!({"model": "default", "prompt": long_prompt}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            "missing prompt",
            "/v1/completions",
            json!({"model": "default"}).to_string(),
            400,
            None,
        ),
        (
            "body over the limit",
            "/v1/completions",
            json!({"model": "default", "prompt": "x".repeat(8192)}).to_string(),
            413,
            None,
        ),
    ];
    for (name, path, body, status, param) in cases {
        let (got, json) = post_raw(&server.base, path, body).await;
        assert_eq!(got, status, "{name}: {json}");
        assert_error_shape(&json);
        if let Some(param) = param {
            assert_eq!(json["error"]["param"], param, "{name}: {json}");
        }
    }
    let (status, json) = post_raw(&server.base, "/v1/nothing", "{}").await;
    assert_eq!(status, 404);
    assert_error_shape(&json);
    let wrong_method = reqwest::get(format!("{}/v1/chat/completions", server.base))
        .await
        .expect("send");
    assert_eq!(wrong_method.status(), 405);

    // The errors disturbed nothing: a good request still works.
    let (status, json) = post_raw(
        &server.base,
        "/v1/chat/completions",
        chat(json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(server.metric("textstream_busy_workers").await, 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_page_is_served_at_the_root() {
    let server = TestServer::tiny().await;
    let page = reqwest::get(format!("{}/", server.base))
        .await
        .expect("GET /");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    let html = page.text().await.expect("body");
    assert!(html.contains("/v1/chat/completions") && html.contains("AbortController"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_memory_bounds_requests_and_metrics_show_blocks_and_prefix_hits() {
    let model = tiny_model();
    let budget = model.kv_bytes(64).expect("native");
    let block = model.kv_block_bytes().expect("native");
    let server = TestServer::start(
        model,
        ServerConfig {
            kv_memory: Some(budget),
            ..ServerConfig::default()
        },
    )
    .await;
    let body = |max_tokens: u32| {
        json!({
            "model": "default",
            "messages": [{"role": "user", "content": "Hi there"}],
            "max_tokens": max_tokens,
        })
        .to_string()
    };
    // A worst case beyond the whole budget can never run: 400 at once.
    let (status, json) = post_raw(&server.base, "/v1/chat/completions", body(100)).await;
    assert_eq!(status, 400, "{json}");
    assert_error_shape(&json);
    assert_eq!(json["error"]["code"], "kv_memory_exceeded");
    assert_eq!(json["error"]["param"], "max_tokens");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--kv-memory")),
        "{json}"
    );
    // One that fits runs; the same conversation again starts past its prompt.
    for _ in 0..2 {
        let (status, json) = post_raw(&server.base, "/v1/chat/completions", body(4)).await;
        assert_eq!(status, 200, "{json}");
    }
    assert_eq!(
        server.metric("textstream_kv_blocks_total").await,
        (budget / block) as f64
    );
    assert_eq!(
        server.metric("textstream_kv_block_bytes").await,
        block as f64
    );
    let used = server.metric("textstream_kv_blocks_used").await;
    assert!(used >= 1.0, "the idle session's prompt is kept: {used}");
    assert_eq!(
        server.metric("textstream_kv_blocks_free").await,
        (budget / block) as f64 - used
    );
    assert_eq!(
        server.metric("textstream_prefix_cache_hits_total").await,
        1.0
    );
    assert_eq!(server.metric("textstream_scheduler_running").await, 0.0);
    server.stop().await;
}

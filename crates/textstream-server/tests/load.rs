//! Workers under load: a client that leaves frees its worker within a token,
//! a full queue answers 429 with Retry-After, and shutdown lets a stream in
//! flight finish. Generations are slowed with the test-only `token_delay`
//! so that they last long enough to observe.

mod common;

use std::time::{Duration, Instant};

use common::{tiny_model, TestServer};
use futures::StreamExt;
use serde_json::{json, Value};
use textstream_server::ServerConfig;

/// Each token takes at least this long in these tests.
const TOKEN_DELAY: Duration = Duration::from_millis(50);
/// Tokens asked for: 100 × 50 ms = 5 s if nobody cancels.
const LONG_MAX_TOKENS: u32 = 100;
/// How long a freed worker may take to be seen free: well under the 5 s an
/// uncancelled generation takes, with room for a loaded CI machine.
const FREED_WITHIN: Duration = Duration::from_secs(3);

fn slow(workers: usize, max_queue: usize) -> ServerConfig {
    ServerConfig {
        workers,
        max_queue,
        token_delay: Some(TOKEN_DELAY),
        ..ServerConfig::default()
    }
}

fn long_stream() -> Value {
    json!({
        "model": "default", "prompt": "Once", "stream": true,
        "max_tokens": LONG_MAX_TOKENS, "temperature": 0,
    })
}

async fn open_stream(server: &TestServer, body: &Value) -> reqwest::Response {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base))
        .json(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    response
}

/// Reads until the first text chunk (not just the headers) arrives.
async fn read_first_chunk(response: &mut reqwest::Response) {
    let chunk = response.chunk().await.expect("read").expect("a chunk");
    assert!(std::str::from_utf8(&chunk)
        .expect("utf-8")
        .starts_with("data: "));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_frees_its_worker() {
    let server = TestServer::start(tiny_model(), slow(1, 4)).await;
    let mut response = open_stream(&server, &long_stream()).await;
    read_first_chunk(&mut response).await;
    assert_eq!(server.metric("textstream_busy_workers").await, 1.0);
    drop(response);

    server
        .wait_for_metric("textstream_busy_workers", 0.0, FREED_WITHIN)
        .await;
    server
        .wait_for_metric("textstream_generations_cancelled_total", 1.0, FREED_WITHIN)
        .await;
    server
        .wait_for_metric("textstream_active_streams", 0.0, FREED_WITHIN)
        .await;
    assert!(
        server.metric("textstream_tokens_generated_total").await < f64::from(LONG_MAX_TOKENS),
        "generation stopped early"
    );

    // The one worker serves the next request at once.
    let started = Instant::now();
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base))
        .json(&json!({"model": "default", "prompt": "Hi", "max_tokens": 2}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["usage"]["completion_tokens"], 2);
    assert!(
        started.elapsed() < FREED_WITHIN,
        "took {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = TestServer::start(tiny_model(), slow(1, 1)).await;
    // The first takes the worker, the second waits in the queue ...
    let mut running = open_stream(&server, &long_stream()).await;
    read_first_chunk(&mut running).await;
    let queued = open_stream(&server, &long_stream()).await;
    assert_eq!(server.metric("textstream_queue_depth").await, 1.0);

    // ... and more are refused at once, streaming or not.
    for stream in [true, false] {
        let mut body = long_stream();
        body["stream"] = json!(stream);
        let refused = reqwest::Client::new()
            .post(format!("{}/v1/completions", server.base))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(refused.status(), 429);
        assert_eq!(
            refused.headers()["retry-after"],
            textstream_server::RETRY_AFTER_SECS.to_string()
        );
        let error: Value = refused.json().await.expect("json");
        assert_eq!(error["error"]["type"], "rate_limit_error");
        assert_eq!(error["error"]["code"], "queue_full");
    }
    assert!(server
        .metrics()
        .await
        .contains("textstream_http_requests_total{code=\"429\"} 2"));

    // A queued job whose client left is skipped; the worker is free again.
    drop(queued);
    drop(running);
    server
        .wait_for_metric("textstream_busy_workers", 0.0, FREED_WITHIN)
        .await;
    server
        .wait_for_metric("textstream_queue_depth", 0.0, FREED_WITHIN)
        .await;
    let accepted = open_stream(&server, &long_stream()).await;
    drop(accepted);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let server = TestServer::start(tiny_model(), slow(1, 1)).await;
    let mut body = long_stream();
    body["max_tokens"] = json!(6);
    let response = open_stream(&server, &body).await;
    let reading = tokio::spawn(async move {
        let mut text = String::new();
        let mut bytes = response.bytes_stream();
        while let Some(chunk) = bytes.next().await {
            text += std::str::from_utf8(&chunk.expect("chunk")).expect("utf-8");
        }
        text
    });
    tokio::time::sleep(TOKEN_DELAY).await;
    server.stop().await;
    let text = reading.await.expect("reader");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
}

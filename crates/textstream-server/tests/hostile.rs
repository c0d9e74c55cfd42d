//! Over a thousand malformed and hostile requests, sent while real streams
//! run: every one is answered with a 4xx (or, for bytes that are not HTTP,
//! the connection is closed), none with a 5xx, the server stays up, and the
//! streams running beside them are byte-identical to their runs alone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{sse_data, tiny_model, TestServer};
use futures::StreamExt;
use serde_json::{json, Value};
use textstream_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const KEY: &str = "hostile-test-key";

/// Hostile requests in flight at once.
const AT_ONCE: usize = 32;

/// Rounds over the request kinds; kinds × rounds ≥ 1,000.
const ROUNDS: usize = 24;

/// How long any one hostile request may take to be answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// One request: over HTTP (method, path, headers, body) or as raw bytes.
#[derive(Clone, Debug)]
enum Hostile {
    Http {
        method: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    Raw(Vec<u8>),
}

fn authorized() -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Bearer {KEY}")),
        ("content-type", "application/json".to_owned()),
    ]
}

fn post_json(path: &'static str, body: impl Into<Vec<u8>>) -> Hostile {
    Hostile::Http {
        method: "POST",
        path,
        headers: authorized(),
        body: body.into(),
    }
}

fn chat_with(extra: Value) -> Hostile {
    let mut body = json!({
        "model": "default",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
    });
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    post_json("/v1/chat/completions", body.to_string())
}

/// Every kind of bad request, each of which must get a 4xx.
fn hostile_requests() -> Vec<Hostile> {
    let chat = "/v1/chat/completions";
    let completions = "/v1/completions";
    let mut all = vec![
        // Bodies that are not JSON, or not the right JSON.
        post_json(chat, ""),
        post_json(chat, "{"),
        post_json(chat, "null"),
        post_json(chat, "[]"),
        post_json(chat, "\"messages\""),
        post_json(chat, vec![0xff, 0xfe, 0x00, 0x7b]),
        post_json(
            chat,
            "{\"messages\": [{\"role\": \"user\", \"content\": \"\\ud800\"}]}",
        ),
        post_json(
            chat,
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ),
        post_json(chat, format!("{{\"a\":{}}}", "{\"a\":".repeat(5_000))),
        post_json(completions, "{\"model\": \"default\", \"prompt\": 12}"),
        post_json(completions, "{\"model\": \"default\"}"),
        post_json(completions, "{\"model\": \"default\", \"prompt\": \"\"}"),
        post_json(
            completions,
            "{\"model\": \"default\", \"prompt\": [\"a\", \"b\"]}",
        ),
        post_json(
            completions,
            "{\"model\": \"default\", \"prompt\": \"hi\", \"logprobs\": 50}",
        ),
        // Fields out of range or of the wrong type.
        chat_with(json!({"messages": []})),
        chat_with(json!({"messages": 5})),
        chat_with(json!({"messages": [{"role": "banana", "content": "x"}]})),
        chat_with(json!({"messages": [{"content": "x"}]})),
        chat_with(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}),
        ),
        chat_with(json!({"model": "gpt-4"})),
        chat_with(json!({"model": 7})),
        chat_with(json!({"max_tokens": 0})),
        chat_with(json!({"max_tokens": -1})),
        chat_with(json!({"max_tokens": 1e300})),
        chat_with(json!({"max_tokens": u64::MAX})),
        chat_with(json!({"max_completion_tokens": 100_000_000})),
        chat_with(json!({"temperature": -1})),
        chat_with(json!({"temperature": 1e38})),
        chat_with(json!({"temperature": "hot"})),
        chat_with(json!({"top_p": 0})),
        chat_with(json!({"top_p": 2})),
        chat_with(json!({"top_k": 0})),
        chat_with(json!({"repetition_penalty": 0})),
        chat_with(json!({"repetition_penalty": -3})),
        chat_with(json!({"repetition_penalty": 1e39})),
        chat_with(json!({"frequency_penalty": 3})),
        chat_with(json!({"presence_penalty": -9})),
        chat_with(json!({"logit_bias": {"99999999": 5}})),
        chat_with(json!({"logit_bias": {"x": 5}})),
        chat_with(json!({"logit_bias": {"1": 500}})),
        chat_with(json!({"n": 4})),
        chat_with(json!({"n": -1})),
        chat_with(json!({"seed": "abc"})),
        chat_with(json!({"stop": ["", "x"]})),
        chat_with(json!({"stop": ["a", "b", "c", "d", "e"]})),
        chat_with(json!({"stop": 5})),
        chat_with(json!({"stream": "yes"})),
        chat_with(json!({"stream_options": 3})),
        chat_with(json!({"tools": [{"type": "function"}]})),
        chat_with(json!({"response_format": {"type": "json_object"}})),
        chat_with(json!({"top_logprobs": 50, "logprobs": true})),
        chat_with(json!({"top_logprobs": 5})),
        chat_with(json!({"logprobs": "maybe"})),
        chat_with(json!({"unknown_field": 1})),
        chat_with(json!({"messages": [{"role": "user", "content": "x".repeat(200_000)}]})),
        // Who may call, and how.
        Hostile::Http {
            method: "POST",
            path: chat,
            headers: vec![("content-type", "application/json".to_owned())],
            body: b"{}".to_vec(),
        },
        Hostile::Http {
            method: "POST",
            path: chat,
            headers: vec![
                ("authorization", "Bearer wrong".to_owned()),
                ("content-type", "application/json".to_owned()),
            ],
            body: b"{}".to_vec(),
        },
        Hostile::Http {
            method: "POST",
            path: chat,
            headers: vec![
                ("authorization", format!("Bearer {KEY}")),
                ("content-type", "text/plain".to_owned()),
            ],
            body: b"{}".to_vec(),
        },
        Hostile::Http {
            method: "POST",
            path: chat,
            headers: vec![("authorization", format!("Bearer {KEY}"))],
            body: b"{}".to_vec(),
        },
        Hostile::Http {
            method: "POST",
            path: chat,
            headers: {
                let mut headers = authorized();
                headers.push(("host", "evil.example".to_owned()));
                headers
            },
            body: b"{}".to_vec(),
        },
        post_json(chat, vec![b' '; 2 * 1024 * 1024]),
        Hostile::Http {
            method: "GET",
            path: chat,
            headers: authorized(),
            body: Vec::new(),
        },
        Hostile::Http {
            method: "DELETE",
            path: "/health",
            headers: Vec::new(),
            body: Vec::new(),
        },
        Hostile::Http {
            method: "GET",
            path: "/../../etc/passwd",
            headers: Vec::new(),
            body: Vec::new(),
        },
        Hostile::Http {
            method: "GET",
            path: "/v1/models/%00%ff",
            headers: authorized(),
            body: Vec::new(),
        },
    ];
    // Bytes that are not (valid) HTTP.
    for raw in [
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
        b"HELLO WORLD\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nX: \x00\x01\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ] {
        all.push(Hostile::Raw(raw.to_vec()));
    }
    let mut huge_header = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    huge_header.extend(std::iter::repeat_n(b'a', 512 * 1024));
    huge_header.extend_from_slice(b"\r\n\r\n");
    all.push(Hostile::Raw(huge_header));
    let mut many_headers = b"GET /health HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..500 {
        many_headers.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\n");
    all.push(Hostile::Raw(many_headers));
    all
}

/// The request, cut to 300 characters, for a failure message.
fn describe(request: &Hostile) -> String {
    let text = match request {
        Hostile::Raw(bytes) => format!("raw {:?}", String::from_utf8_lossy(bytes)),
        Hostile::Http {
            method,
            path,
            headers,
            body,
        } => format!(
            "{method} {path} {headers:?} {:?}",
            String::from_utf8_lossy(body)
        ),
    };
    text.chars().take(300).collect()
}

/// What came back: a status code, or `None` when the connection was closed
/// without an answer (what HTTP servers do with bytes that are not HTTP).
async fn send(address: &str, request: &Hostile) -> Option<u16> {
    let bytes = match request {
        Hostile::Raw(bytes) => bytes.clone(),
        Hostile::Http {
            method,
            path,
            headers,
            body,
        } => {
            let mut head = format!("{method} {path} HTTP/1.1\r\n");
            if !headers.iter().any(|(name, _)| *name == "host") {
                head.push_str("Host: localhost\r\n");
            }
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ));
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(body);
            bytes
        }
    };
    let mut stream = TcpStream::connect(address).await.expect("connect");
    // The server may answer and close before taking all of a large body.
    let _ = stream.write_all(&bytes).await;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    Some(status.parse().expect("a status code"))
}

/// A seeded, sampled stream's whole text (its content deltas joined) and
/// finish reason.
async fn stream_text(base: &str, prompt: &str, seed: u64) -> String {
    let body = json!({
        "model": "default",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 48,
        "temperature": 0.9,
        "seed": seed,
        "stream": true,
    });
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let mut raw = String::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        raw.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("utf-8"));
    }
    let mut text = String::new();
    for data in sse_data(&raw) {
        if data == "[DONE]" {
            continue;
        }
        let event: Value = serde_json::from_str(data).expect("JSON event");
        assert!(event.get("error").is_none(), "{event}");
        let choice = &event["choices"][0];
        if let Some(piece) = choice["delta"]["content"].as_str() {
            text.push_str(piece);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            text.push_str(&format!("\n[finish: {reason}]"));
        }
    }
    text
}

const STREAMS: [(&str, u64); 3] = [("Tell me a story", 1), ("Hello", 2), ("Why?", 3)];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_hostile_requests_get_4xx_and_leave_other_streams_untouched() {
    let server = TestServer::start(
        tiny_model(),
        ServerConfig {
            api_key: Some(KEY.to_owned()),
            max_queue: 64,
            ..ServerConfig::default()
        },
    )
    .await;
    let base = server.base.clone();
    let alone: Vec<String> = {
        let mut texts = Vec::new();
        for (prompt, seed) in STREAMS {
            texts.push(stream_text(&base, prompt, seed).await);
        }
        texts
    };

    let kinds = hostile_requests();
    let address: Arc<str> = base.trim_start_matches("http://").into();
    let limit = Arc::new(Semaphore::new(AT_ONCE));
    let mut hostile = Vec::new();
    let mut streams = None;
    for round in 0..ROUNDS {
        for (kind, request) in kinds.iter().enumerate() {
            let permit = Arc::clone(&limit).acquire_owned().await.expect("permit");
            let address = Arc::clone(&address);
            let request = request.clone();
            hostile.push(tokio::spawn(async move {
                let answer = tokio::time::timeout(ANSWER_WITHIN, send(&address, &request)).await;
                drop(permit);
                (round, kind, request, answer)
            }));
        }
        // The streams run while the hostile requests do.
        if round == 0 && streams.is_none() {
            let base = base.clone();
            streams = Some(tokio::spawn(async move {
                let mut texts = Vec::new();
                for (prompt, seed) in STREAMS {
                    texts.push(stream_text(&base, prompt, seed).await);
                }
                texts
            }));
        }
    }
    let sent = kinds.len() * ROUNDS;
    assert!(sent >= 1000, "only {sent} hostile requests");

    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for task in hostile {
        let (round, kind, request, answer) = task.await.expect("task");
        let what = describe(&request);
        let answer = answer.unwrap_or_else(|_| panic!("no answer to kind {kind}: {what}"));
        let label = answer.map_or("closed".to_owned(), |status| status.to_string());
        *tally.entry(label).or_default() += 1;
        match answer {
            Some(status) => assert!(
                (400..500).contains(&status),
                "kind {kind} (round {round}) got {status}: {what}"
            ),
            None => assert!(
                matches!(request, Hostile::Raw(_)),
                "kind {kind} closed without an answer: {what}"
            ),
        }
    }
    eprintln!("{sent} hostile requests answered: {tally:?}");
    let beside = streams.expect("started").await.expect("streams");
    assert_eq!(beside, alone, "a stream changed beside hostile requests");

    // Still up, and nothing was a 5xx by the server's own count.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        !metrics.contains("textstream_http_requests_total{code=\"5"),
        "{metrics}"
    );
    server.stop().await;
}

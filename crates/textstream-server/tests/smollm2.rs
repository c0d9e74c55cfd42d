//! The real model (SmolLM2-135M-Instruct) through async-openai: greedy chat,
//! streamed and not, gives the same non-empty answer.

mod common;

use async_openai::types::chat::{
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use common::{real_model, TestServer};
use futures::StreamExt;
use textstream_server::ServerConfig;

/// Enough tokens for a short answer.
const MAX_TOKENS: u32 = 24;

fn request() -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("default")
        .messages(vec![ChatCompletionRequestUserMessage::from(
            "What is the capital of France?",
        )
        .into()])
        .max_completion_tokens(MAX_TOKENS)
        .temperature(0.0)
        .build()
        .expect("valid request")
}

#[tokio::test(flavor = "multi_thread")]
async fn smollm2_greedy_chat_streams_the_same_answer() {
    let server = TestServer::start(real_model(), ServerConfig::default()).await;
    let client = server.openai();
    let full = client.chat().create(request()).await.expect("chat");
    let text = full.choices[0].message.content.clone().unwrap_or_default();
    // The 135M model's greedy answer is fluent but not always right, so
    // only its presence is checked (it matches `textstream run --chat`).
    assert!(!text.trim().is_empty(), "{text:?}");
    assert!(full.usage.expect("usage").completion_tokens > 0);

    let mut stream = client
        .chat()
        .create_stream(request())
        .await
        .expect("stream");
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk.expect("chunk").choices {
            streamed += choice.delta.content.as_deref().unwrap_or("");
        }
    }
    assert_eq!(streamed, text);
    server.stop().await;
}

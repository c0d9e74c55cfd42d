//! The whole path on the real model: prompt → ids → generate on a worker
//! thread → async streamer → consumer. The streamed text must equal the
//! one-shot decode of the generated ids, and a consumer that leaves must stop
//! the worker within one token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use textstream::{
    AsyncTextIteratorStreamer, Closed, FinishReason, StreamOptions, Streamer, TextIteratorStreamer,
};
use textstream_engine::generate::{spawn_generate, GenerateConfig};
use textstream_engine::model::Model;
use textstream_engine::sampling::SamplingConfig;
use textstream_engine::template::Message;
use textstream_engine::testing::default_model_path;

fn model() -> Arc<Model> {
    Arc::new(Model::load(&default_model_path()).expect("loads the default model"))
}

fn prompt_ids(model: &Model, question: &str) -> Vec<u32> {
    let prompt = model
        .chat_prompt(&[
            Message::new("system", "You are a helpful assistant."),
            Message::new("user", question),
        ])
        .expect("renders the chat template");
    model.encode_prompt(&prompt).unwrap()
}

fn options() -> StreamOptions {
    StreamOptions::default()
        .skip_prompt(true)
        .skip_special_tokens(true)
        .timeout(std::time::Duration::from_secs(60))
}

#[test]
fn streamed_text_equals_the_one_shot_decode() {
    let model = model();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (question, seed) in [
        ("Why is the sky blue?", 0),
        ("Écris un haïku sur la mer.", 7),
        ("用中文介绍一下你自己。", 3),
    ] {
        let ids = prompt_ids(&model, question);
        let config = GenerateConfig {
            max_new_tokens: 48,
            sampling: SamplingConfig {
                temperature: 0.8,
                top_p: Some(0.95),
                seed,
                ..SamplingConfig::default()
            },
            ..GenerateConfig::default()
        };
        let (producer, mut stream) = AsyncTextIteratorStreamer::new(model.detokenizer(), options());
        let worker = spawn_generate(Arc::clone(&model), ids, config, producer);
        let (streamed, chunks) = runtime.block_on(async {
            let mut text = String::new();
            let mut chunks = 0;
            while let Some(chunk) = stream.next().await {
                text += &chunk.unwrap();
                chunks += 1;
            }
            (text, chunks)
        });
        let output = worker.join().unwrap().unwrap();
        let decoded = model
            .tokenizer()
            .tokenizer
            .decode(&output.tokens, true)
            .unwrap();
        assert_eq!(streamed, decoded, "{question}");
        assert!(chunks > 1, "the text arrived in one piece: not streamed");
        assert!(!streamed.contains('\u{FFFD}'));
    }
}

#[test]
fn greedy_answer_through_the_iterator() {
    let model = model();
    let ids = prompt_ids(&model, "What is the capital of France?");
    let (producer, stream) = TextIteratorStreamer::new(model.detokenizer(), options());
    let config = GenerateConfig {
        max_new_tokens: 32,
        ..GenerateConfig::default()
    };
    let worker = spawn_generate(Arc::clone(&model), ids, config, producer);
    let text: String = stream.map(Result::unwrap).collect();
    let output = worker.join().unwrap().unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(output.finish_reason, FinishReason::Stop);
}

#[test]
fn a_consumer_that_leaves_stops_the_worker_within_one_token() {
    /// Counts the tokens put, so the test knows how many came before the drop.
    struct Counting<S> {
        inner: S,
        puts: Arc<AtomicUsize>,
    }
    impl<S: Streamer> Streamer for Counting<S> {
        fn put(&mut self, ids: &[u32]) -> Result<(), Closed> {
            self.inner.put(ids)
        }
        fn put_token(&mut self, id: u32, logprob: Option<f32>) -> Result<(), Closed> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            self.inner.put_token(id, logprob)
        }
        fn finish(&mut self, reason: FinishReason) {
            self.inner.finish(reason)
        }
        fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>) {
            self.inner.fail(error)
        }
    }

    let model = model();
    let ids = prompt_ids(&model, "Write a long story about a dragon.");
    let (producer, mut stream) = AsyncTextIteratorStreamer::new(model.detokenizer(), options());
    let puts = Arc::new(AtomicUsize::new(0));
    let counting = Counting {
        inner: producer,
        puts: Arc::clone(&puts),
    };
    let config = GenerateConfig {
        max_new_tokens: 200,
        ..GenerateConfig::default()
    };
    let worker = spawn_generate(Arc::clone(&model), ids, config, counting);
    futures::executor::block_on(async {
        stream.next().await.unwrap().unwrap();
    });
    drop(stream);
    let before_drop = puts.load(Ordering::SeqCst);
    let output = worker.join().unwrap().unwrap();
    assert!(output.consumer_gone);
    // The put after the drop is refused: at most one more token, never the 200.
    assert!(
        output.tokens.len() <= before_drop + 1,
        "{} tokens generated, {before_drop} before the consumer left",
        output.tokens.len()
    );
}

#[test]
fn stop_strings_end_the_stream_before_the_stop() {
    let model = model();
    let ids = prompt_ids(&model, "What is the capital of France?");
    let (producer, stream) =
        TextIteratorStreamer::new(model.detokenizer(), options().stop(["Paris"]));
    let worker = spawn_generate(Arc::clone(&model), ids, GenerateConfig::default(), producer);
    let mut stream = stream;
    let text: String = stream.by_ref().map(Result::unwrap).collect();
    let output = worker.join().unwrap().unwrap();
    assert!(!text.contains("Paris") && !text.is_empty(), "{text}");
    assert_eq!(
        stream.finish_reason(),
        Some(&FinishReason::StopString("Paris".into()))
    );
    assert!(matches!(output.finish_reason, FinishReason::StopString(_)));
}

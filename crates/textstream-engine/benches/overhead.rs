//! What streaming costs a generation: the default model generates the same
//! greedy tokens with no consumer at all (a streamer that drops everything),
//! and through the async streamer to a consumer on another thread. Also
//! measures the time spent inside `put` directly, as a share of the decode.
//! Run with `cargo bench -p textstream-engine --bench overhead`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use textstream::{AsyncTextIteratorStreamer, Closed, FinishReason, StreamOptions, Streamer};
use textstream_engine::generate::{generate, GenerateConfig};
use textstream_engine::model::Model;
use textstream_engine::model_file;
use textstream_engine::template::Message;

/// Tokens generated per run.
const NEW_TOKENS: usize = 128;
/// Runs of each kind, interleaved so that drift affects both alike.
const ROUNDS: usize = 9;

/// Accepts everything and keeps nothing: generation without streaming.
struct Discard;

impl Streamer for Discard {
    fn put(&mut self, _: &[u32]) -> Result<(), Closed> {
        Ok(())
    }
    fn finish(&mut self, _: FinishReason) {}
    fn fail(&mut self, _: Box<dyn std::error::Error + Send + Sync>) {}
}

/// Wraps a streamer and adds up the time its `put`s take.
struct Timed<S> {
    inner: S,
    spent: Duration,
}

impl<S: Streamer> Streamer for Timed<S> {
    fn put(&mut self, ids: &[u32]) -> Result<(), Closed> {
        let started = Instant::now();
        let result = self.inner.put(ids);
        self.spent += started.elapsed();
        result
    }
    fn put_token(&mut self, id: u32, logprob: Option<f32>) -> Result<(), Closed> {
        let started = Instant::now();
        let result = self.inner.put_token(id, logprob);
        self.spent += started.elapsed();
        result
    }
    fn finish(&mut self, reason: FinishReason) {
        self.inner.finish(reason)
    }
    fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>) {
        self.inner.fail(error)
    }
}

fn main() {
    let path = model_file::resolve(None, &mut |_| {}).expect("the default model");
    let model = Arc::new(Model::load(&path).expect("loads"));
    let prompt = model
        .chat_prompt(&[Message::new("user", "Tell me a long story about the sea.")])
        .unwrap();
    let ids = model.tokenizer().encode(&prompt, false).unwrap();
    // Never stop early: both kinds generate exactly NEW_TOKENS tokens.
    let config = GenerateConfig {
        max_new_tokens: NEW_TOKENS,
        ..GenerateConfig::default()
    };
    let mut session = model.session();

    let (mut plain, mut streamed) = (Vec::new(), Vec::new());
    let (mut put_share, mut per_put) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let output = generate(&mut session, &ids, &config, &mut Discard).unwrap();
        plain.push(output.timings.decode_tokens_per_second().unwrap());

        let (producer, mut stream) = AsyncTextIteratorStreamer::new(
            model.detokenizer(),
            StreamOptions::default()
                .skip_prompt(true)
                .skip_special_tokens(true),
        );
        let consumer = std::thread::spawn(move || {
            futures::executor::block_on(async {
                let mut bytes = 0;
                while let Some(text) = stream.next().await {
                    bytes += text.unwrap().len();
                }
                bytes
            })
        });
        let mut timed = Timed {
            inner: producer,
            spent: Duration::ZERO,
        };
        let output = generate(&mut session, &ids, &config, &mut timed).unwrap();
        let spent = timed.spent;
        drop(timed);
        consumer.join().unwrap();
        streamed.push(output.timings.decode_tokens_per_second().unwrap());
        let total = output.timings.prefill + output.timings.decode;
        put_share.push(spent.as_secs_f64() / total.as_secs_f64() * 100.0);
        per_put.push(spent.as_secs_f64() * 1e6 / (output.timings.generated + 1) as f64);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (plain, streamed) = (median(&mut plain), median(&mut streamed));
    println!("decode without a consumer:      {plain:.1} tok/s (median of {ROUNDS})");
    println!("decode through the async stream: {streamed:.1} tok/s (median of {ROUNDS})");
    println!(
        "throughput difference: {:+.2} %",
        (streamed / plain - 1.0) * 100.0
    );
    println!(
        "time inside put: {:.4} % of generation, {:.2} µs per put (medians)",
        median(&mut put_share),
        median(&mut per_put)
    );
}

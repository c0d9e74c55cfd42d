//! Thread → async hand-off latency: the time from `put` on the generating
//! thread to the text arriving in an async consumer that was waiting for it.
//! Prints p50/p99/max. Run with `cargo bench -p textstream-engine --bench handoff`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use textstream::{AsyncTextIteratorStreamer, Detokenizer, StreamOptions, Streamer};
use textstream_engine::model_file;
use textstream_engine::tokenizer::GgufTokenizer;

/// Hand-offs measured.
const SAMPLES: usize = 20_000;
/// Pause between puts, so the consumer is parked when the token arrives (as
/// it is between real decode steps, which take milliseconds).
const GAP: Duration = Duration::from_micros(50);

fn main() {
    let path = model_file::resolve(None, &mut |_| {}).expect("the default model");
    let mut file = std::fs::File::open(&path).expect("opens the model");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("reads GGUF");
    let tokenizer = GgufTokenizer::from_gguf(&content)
        .expect("builds the tokenizer")
        .tokenizer;
    let id = tokenizer.encode(" sky", false).unwrap().get_ids()[0];

    for runtime in ["tokio current-thread", "futures block_on"] {
        let (mut producer, mut stream) = AsyncTextIteratorStreamer::new(
            Detokenizer::new(tokenizer.clone()),
            StreamOptions::default(),
        );
        let base = Instant::now();
        let sent_at = Arc::new(AtomicU64::new(0));
        let stamp = Arc::clone(&sent_at);
        let worker = std::thread::spawn(move || {
            for _ in 0..SAMPLES {
                let deadline = Instant::now() + GAP;
                while Instant::now() < deadline {
                    std::hint::spin_loop();
                }
                stamp.store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
                producer.put(&[id]).unwrap();
            }
            producer.end();
        });
        let consume = async {
            let mut latencies = Vec::with_capacity(SAMPLES);
            while let Some(text) = stream.next().await {
                let now = base.elapsed().as_nanos() as u64;
                text.unwrap();
                latencies.push(now.saturating_sub(sent_at.load(Ordering::SeqCst)));
            }
            latencies
        };
        let mut latencies = match runtime {
            "futures block_on" => futures::executor::block_on(consume),
            _ => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(consume),
        };
        worker.join().unwrap();
        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
        println!(
            "handoff ({runtime}): {} samples, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            latencies.len(),
            pct(0.50),
            pct(0.99),
            pct(1.0)
        );
    }
}

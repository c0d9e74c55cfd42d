//! Per-token cost of streaming with the SmolLM2 tokenizer: textstream's
//! incremental decoder, the same through the async streamer, and tokenizers'
//! own `DecodeStream` for comparison, at 100 to 100k tokens without newlines.
//!
//! Run with `cargo bench -p textstream-engine --bench streaming`. The model
//! comes from `TEXTSTREAM_MODEL` or the cache (fetched on first use).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use textstream::{
    AsyncTextIteratorStreamer, Detokenizer, IncrementalDecoder, StreamOptions, Streamer,
};
use textstream_engine::model_file;
use textstream_engine::tokenizer::GgufTokenizer;

/// Sequence lengths, in tokens, from the table.
const LENGTHS: [usize; 4] = [100, 1_000, 16_000, 100_000];

/// English prose with its newlines turned into spaces, repeated to length.
fn tokens(tokenizer: &tokenizers::Tokenizer, count: usize) -> Vec<u32> {
    let paragraph = "The sky is blue because molecules in the air scatter blue light from the sun \
        more than they scatter red light. This is called Rayleigh scattering, and it also explains \
        why sunsets look red and orange: near the horizon, light passes through more air. ";
    let ids = tokenizer
        .encode(paragraph, false)
        .expect("encodes")
        .get_ids()
        .to_vec();
    ids.iter().copied().cycle().take(count).collect()
}

fn smollm2() -> tokenizers::Tokenizer {
    let path = model_file::resolve(None, &mut |_| {}).expect("the default model");
    let mut file = std::fs::File::open(&path).expect("opens the model");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("reads GGUF");
    GgufTokenizer::from_gguf(&content)
        .expect("builds the tokenizer")
        .tokenizer
}

fn decoders(c: &mut Criterion) {
    let tokenizer = smollm2();
    let detokenizer = Detokenizer::new(tokenizer.clone());
    let mut group = c.benchmark_group("decoder");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    for count in LENGTHS {
        let ids = tokens(&tokenizer, count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::new("textstream", count), &ids, |b, ids| {
            b.iter_batched_ref(
                || {
                    (
                        IncrementalDecoder::new(detokenizer.clone(), false),
                        String::with_capacity(count * 8),
                    )
                },
                |(decoder, out)| {
                    for &id in ids {
                        decoder.push(id, out).unwrap();
                    }
                    decoder.flush(out).unwrap();
                    black_box(out.len())
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(
            BenchmarkId::new("tokenizers-DecodeStream", count),
            &ids,
            |b, ids| {
                b.iter(|| {
                    let mut stream = tokenizer.decode_stream(false);
                    let mut bytes = 0;
                    for &id in ids {
                        if let Some(text) = stream.step(id).unwrap() {
                            bytes += text.len();
                        }
                    }
                    black_box(bytes)
                })
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("async-streamer");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    for count in LENGTHS {
        let ids = tokens(&tokenizer, count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::new("textstream", count), &ids, |b, ids| {
            b.iter(|| {
                let (mut producer, mut stream) =
                    AsyncTextIteratorStreamer::new(detokenizer.clone(), StreamOptions::default());
                let ids = ids.clone();
                let worker = std::thread::spawn(move || {
                    for id in ids {
                        producer.put(&[id]).unwrap();
                    }
                    producer.end();
                });
                let bytes = futures::executor::block_on(async {
                    let mut bytes = 0;
                    while let Some(text) = stream.next().await {
                        bytes += text.unwrap().len();
                    }
                    bytes
                });
                worker.join().unwrap();
                black_box(bytes)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decoders);
criterion_main!(benches);

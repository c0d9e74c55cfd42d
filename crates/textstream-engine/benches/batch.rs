//! Decode of many sequences at once: `n` sessions of the default model (or
//! `TEXTSTREAM_MODEL`, a catalog name or a path), each past its own prompt,
//! step together through `Session::forward_batch`, one token each per pass;
//! the aggregate tokens per second against one session alone is what
//! batching buys (the weights are read once a pass for every sequence).
//!
//! ```sh
//! cargo bench -p textstream-engine --bench batch
//! ```

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use textstream_engine::model::{Model, Session};
use textstream_engine::model_file;
use textstream_engine::sampling::argmax;

const STREAMS: [usize; 5] = [1, 2, 4, 8, 16];
/// Each session's prompt: different ids, so that the sequences differ.
const PROMPT: usize = 32;
/// Tokens each sequence decodes before it starts over.
const ANSWER: usize = 256;

fn batch(c: &mut Criterion) {
    let name = std::env::var("TEXTSTREAM_MODEL").ok();
    let path = model_file::resolve(name.as_deref(), &mut |_| {}).expect("the model");
    let model = Model::load(&path).expect("loads");
    let mut group = c.benchmark_group("batch");
    group.sample_size(10);
    for n in STREAMS {
        let mut sessions: Vec<Session> = (0..n).map(|_| model.session()).collect();
        let mut next = Vec::new();
        for (i, session) in sessions.iter_mut().enumerate() {
            let prompt: Vec<u32> = (0..PROMPT as u32).map(|k| 100 + k * 7 + i as u32).collect();
            next.push(argmax(&session.forward_last(&prompt, 0).expect("prompt")) as u32);
        }
        let mut pos = PROMPT;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("decode {n} streams"), |b| {
            b.iter(|| {
                // Each sequence decodes up to `ANSWER` tokens, then starts over
                // (its cache is rewritten from the prompt's end).
                if pos >= PROMPT + ANSWER {
                    pos = PROMPT;
                }
                let ids: Vec<[u32; 1]> = next.iter().map(|&id| [id]).collect();
                let mut steps: Vec<(&mut Session, &[u32], usize)> = sessions
                    .iter_mut()
                    .zip(&ids)
                    .map(|(s, id)| (s, &id[..], pos))
                    .collect();
                let logits = Session::forward_batch(&mut steps).expect("step");
                next = logits.iter().map(|l| argmax(l) as u32).collect();
                pos += 1;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, batch);
criterion_main!(benches);

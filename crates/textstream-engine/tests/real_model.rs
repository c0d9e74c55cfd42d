//! Generation with the real default model (`TEXTSTREAM_MODEL`, the cache, or
//! fetched with pip on first use).

use std::path::PathBuf;
use std::time::Instant;

use textstream::FinishReason;
use textstream_engine::generate::{generate, GenerateConfig};
use textstream_engine::model::Model;
use textstream_engine::testing::Recorder;

const PROMPT: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
/// Enough tokens for the one-sentence answer.
const MAX_NEW_TOKENS: usize = 48;

fn model_path() -> Option<PathBuf> {
    Some(textstream_engine::testing::default_model_path())
}

#[test]
fn greedy_answer_is_deterministic_and_streams_the_same_text() {
    let Some(path) = model_path() else { return };
    let started = Instant::now();
    let model = Model::load(&path).expect("load the model");
    let load = started.elapsed();
    eprintln!("load: {load:?} ({:?})", model.load_timings());

    let tokenizer = model.tokenizer();
    let prompt = model.encode_prompt(PROMPT).expect("encode the prompt");
    let config = GenerateConfig {
        max_new_tokens: MAX_NEW_TOKENS,
        ..GenerateConfig::default()
    };

    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut recorder = Recorder::new();
        let output =
            generate(&mut model.session(), &prompt, &config, &mut recorder).expect("generate");
        let t = output.timings;
        eprintln!(
            "{} prompt tokens, prefill {:?} ({:.0} tok/s), {} generated, ttft {:?}, decode {:.1} tok/s, {:?}",
            t.prompt_tokens,
            t.prefill,
            t.prefill_tokens_per_second().unwrap_or_default(),
            t.generated,
            t.ttft,
            t.decode_tokens_per_second().unwrap_or_default(),
            output.finish_reason,
        );
        runs.push((output, recorder.recording()));
    }
    let (first, recording) = &runs[0];
    assert_eq!(
        first.tokens, runs[1].0.tokens,
        "greedy output differs between runs"
    );
    assert_eq!(
        first.finish_reason,
        FinishReason::Stop,
        "the answer ends its turn"
    );
    assert_eq!(recording.prompt.as_deref(), Some(prompt.as_slice()));
    assert_eq!(recording.tokens, first.tokens);

    let whole = tokenizer
        .tokenizer
        .decode(&first.tokens, true)
        .expect("decode");
    let streamed = tokenizer
        .tokenizer
        .decode(&recording.tokens, true)
        .expect("decode streamed ids");
    eprintln!("answer: {whole:?}");
    assert_eq!(streamed, whole);
    assert!(whole.contains("Paris"), "{whole:?}");
}

//! Generation with the tiny random-weight model: determinism, the stop rules
//! and error reporting, in milliseconds.

use std::path::PathBuf;
use std::sync::Arc;

use textstream::{Closed, FinishReason};
use textstream_engine::generate::{generate, spawn_generate, GenerateConfig, GenerateOutput};
use textstream_engine::model::Model;
use textstream_engine::sampling::SamplingConfig;
use textstream_engine::testing::{Recorder, TinyModel, TINY_CONTEXT, TINY_EOS};
use textstream_engine::EngineError;

/// A model file in a fresh temporary directory, removed on drop.
struct TempModel {
    dir: PathBuf,
    path: PathBuf,
}

impl TempModel {
    fn new(name: &str, spec: &TinyModel) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "textstream-tiny-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("tiny.gguf");
        spec.write(&path).expect("write tiny model");
        Self { dir, path }
    }

    fn load(&self) -> Model {
        Model::load(&self.path).expect("load tiny model")
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tiny(name: &str) -> (TempModel, Model) {
    let file = TempModel::new(name, &TinyModel::default());
    let model = file.load();
    (file, model)
}

fn prompt(model: &Model) -> Vec<u32> {
    model
        .tokenizer()
        .encode(
            "<|im_start|>user\nthe cat sat on the mat<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .expect("encode")
}

fn config(max_new_tokens: usize, sampling: SamplingConfig) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens,
        sampling,
        ..GenerateConfig::default()
    }
}

fn run(model: &Model, prompt: &[u32], config: &GenerateConfig) -> (GenerateOutput, Recorder) {
    let mut recorder = Recorder::new();
    let output = generate(&mut model.session(), prompt, config, &mut recorder).expect("generate");
    (output, recorder)
}

#[test]
fn tiny_model_loads_with_its_tokenizer() {
    let (_file, model) = tiny("load");
    let info = model.info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.context_length, TINY_CONTEXT as usize);
    assert_eq!(info.vocab_size, TinyModel::tokens().len());
    assert!(model.stop_ids().contains(&TINY_EOS));
    let ids = prompt(&model);
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    let text = model
        .tokenizer()
        .tokenizer
        .decode(&ids, false)
        .expect("decode");
    assert!(text.contains("the cat sat on the mat"), "{text:?}");
}

#[test]
fn greedy_runs_to_max_new_tokens_and_streams_every_token() {
    let (_file, model) = tiny("length");
    let ids = prompt(&model);
    let config = config(20, SamplingConfig::default());
    let (output, recorder) = run(&model, &ids, &config);
    assert_eq!(output.finish_reason, FinishReason::Length);
    assert!(!output.consumer_gone);
    assert_eq!(output.tokens.len(), 20);
    assert_eq!(output.timings.generated, 20);
    assert_eq!(output.timings.decode_steps, 19);
    assert_eq!(output.timings.prompt_tokens, ids.len());

    let rec = recorder.recording();
    assert_eq!(rec.prompt.as_deref(), Some(ids.as_slice()));
    assert_eq!(rec.tokens, output.tokens);
    assert_eq!(rec.puts, 21);
    assert_eq!(rec.finish, Some(FinishReason::Length));
    assert!(rec.failure.is_none());
    assert!(rec
        .logprobs
        .iter()
        .all(|lp| lp.is_some_and(|lp| lp <= 0.0 && lp.is_finite())));

    // Greedy is deterministic, across sessions of one model and across loads.
    let (again, _) = run(&model, &ids, &config);
    assert_eq!(again.tokens, output.tokens);
    let (_file2, reloaded) = tiny("length-reload");
    assert_eq!(run(&reloaded, &ids, &config).0.tokens, output.tokens);
}

#[test]
fn sampling_is_deterministic_per_seed() {
    let (_file, model) = tiny("seed");
    let ids = prompt(&model);
    let sampled = |seed| {
        let sampling = SamplingConfig {
            temperature: 1.0,
            top_p: Some(0.9),
            seed,
            ..SamplingConfig::default()
        };
        run(&model, &ids, &config(24, sampling)).0.tokens
    };
    let a = sampled(7);
    assert_eq!(a.len(), 24);
    assert_eq!(a, sampled(7));
    assert_ne!(a, sampled(8));
}

#[test]
fn consumer_gone_stops_generation_within_one_token() {
    let (_file, model) = tiny("gone");
    let ids = prompt(&model);
    let mut recorder = Recorder::refusing_after(3, Closed::ConsumerGone);
    let output = generate(
        &mut model.session(),
        &ids,
        &config(50, SamplingConfig::default()),
        &mut recorder,
    )
    .expect("generate");
    let rec = recorder.recording();
    // The prompt, three accepted tokens, and the one refused: nothing after it.
    assert_eq!(rec.puts, 1 + 3 + 1);
    assert_eq!(rec.refused, 1);
    assert_eq!(output.tokens.len(), 4);
    assert!(output.consumer_gone);
    assert_eq!(rec.finish, None, "nobody to finish for");
    assert!(rec.failure.is_none());
    assert_eq!(output.timings.decode_steps, 3);
}

#[test]
fn consumer_gone_at_the_first_token_runs_no_decode_step() {
    let (_file, model) = tiny("gone-first");
    let ids = prompt(&model);
    let mut recorder = Recorder::refusing_after(0, Closed::ConsumerGone);
    let output = generate(
        &mut model.session(),
        &ids,
        &config(50, SamplingConfig::default()),
        &mut recorder,
    )
    .expect("generate");
    assert_eq!(output.tokens.len(), 1);
    assert_eq!(output.timings.decode_steps, 0);
    assert_eq!(recorder.recording().puts, 2);
}

/// A streamer whose consumer left before the prompt arrived.
struct GoneAlready {
    calls: usize,
}

impl textstream::Streamer for GoneAlready {
    fn put(&mut self, _ids: &[u32]) -> Result<(), Closed> {
        self.calls += 1;
        Err(Closed::ConsumerGone)
    }
    fn finish(&mut self, _reason: FinishReason) {
        self.calls += 1;
    }
    fn fail(&mut self, _error: Box<dyn std::error::Error + Send + Sync>) {
        self.calls += 1;
    }
}

#[test]
fn consumer_gone_before_the_prompt_skips_the_model() {
    let (_file, model) = tiny("gone-prompt");
    let ids = prompt(&model);
    let mut streamer = GoneAlready { calls: 0 };
    let output = generate(
        &mut model.session(),
        &ids,
        &config(50, SamplingConfig::default()),
        &mut streamer,
    )
    .expect("generate");
    assert_eq!(streamer.calls, 1, "only the prompt put");
    assert!(output.consumer_gone);
    assert!(output.tokens.is_empty());
    assert_eq!(output.timings.prefill, std::time::Duration::ZERO);
}

#[test]
fn stop_string_in_the_streamer_ends_with_stop_string() {
    let (_file, model) = tiny("stopstring");
    let ids = prompt(&model);
    let mut recorder = Recorder::refusing_after(2, Closed::Stopped);
    let output = generate(
        &mut model.session(),
        &ids,
        &config(50, SamplingConfig::default()),
        &mut recorder,
    )
    .expect("generate");
    assert!(matches!(output.finish_reason, FinishReason::StopString(_)));
    assert!(!output.consumer_gone);
    let rec = recorder.recording();
    assert_eq!(rec.puts, 1 + 3);
    assert_eq!(rec.finish, None, "the streamer ended itself");
}

#[test]
fn stop_token_finishes_with_stop_and_is_not_put() {
    let file = TempModel::new(
        "eos",
        &TinyModel {
            ends_at_once: true,
            ..TinyModel::default()
        },
    );
    let model = file.load();
    let ids = prompt(&model);
    let (output, recorder) = run(&model, &ids, &config(50, SamplingConfig::default()));
    assert_eq!(output.finish_reason, FinishReason::Stop);
    assert!(output.tokens.is_empty());
    let rec = recorder.recording();
    assert!(rec.tokens.is_empty(), "the stop token is not streamed");
    assert_eq!(rec.finish, Some(FinishReason::Stop));

    // Told to ignore stop ids (as the benchmark is), it runs to the length.
    let through = GenerateConfig {
        ignore_stop_ids: true,
        ..config(12, SamplingConfig::default())
    };
    let (output, _) = run(&model, &ids, &through);
    assert_eq!(output.finish_reason, FinishReason::Length);
    assert_eq!(output.tokens, vec![TINY_EOS; 12]);
    assert_eq!(output.timings.decode_steps, 11);
}

#[test]
fn prompt_too_long_is_an_error_reported_to_the_streamer() {
    let (_file, model) = tiny("toolong");
    let ids = vec![100u32; TINY_CONTEXT as usize - 10];
    let mut recorder = Recorder::new();
    let err = generate(
        &mut model.session(),
        &ids,
        &config(11, SamplingConfig::default()),
        &mut recorder,
    )
    .expect_err("too long");
    assert!(
        matches!(
            err,
            EngineError::ContextOverflow {
                prompt_tokens: 118,
                max_new_tokens: 11,
                context_length: 128
            }
        ),
        "{err}"
    );
    let rec = recorder.recording();
    assert_eq!(rec.puts, 0, "nothing is put before validation");
    let failure = rec.failure.expect("the streamer heard of the failure");
    assert!(
        matches!(
            failure.downcast_ref::<EngineError>(),
            Some(EngineError::ContextOverflow { .. })
        ),
        "{failure}"
    );

    // Exactly at the limit is fine.
    let (output, _) = run(&model, &ids, &config(10, SamplingConfig::default()));
    assert_eq!(output.tokens.len(), 10);
}

#[test]
fn invalid_input_is_an_error() {
    let (_file, model) = tiny("invalid");
    let mut session = model.session();
    let cases: Vec<(Vec<u32>, GenerateConfig)> = vec![
        (vec![], GenerateConfig::default()),
        (vec![5], config(0, SamplingConfig::default())),
        (vec![u32::MAX], config(4, SamplingConfig::default())),
        (
            vec![5],
            config(
                4,
                SamplingConfig {
                    top_p: Some(2.0),
                    ..SamplingConfig::default()
                },
            ),
        ),
    ];
    for (ids, config) in cases {
        let mut recorder = Recorder::new();
        let err = generate(&mut session, &ids, &config, &mut recorder).expect_err("invalid");
        assert!(
            matches!(
                err,
                EngineError::EmptyPrompt
                    | EngineError::InvalidConfig { .. }
                    | EngineError::TokenOutOfRange { .. }
            ),
            "{err}"
        );
        assert!(recorder.recording().failure.is_some());
    }
}

#[test]
fn long_context_decode_steps_equal_one_prefill() {
    // Past 256 positions a decode step splits each KV head's keys into
    // chunks on different threads and merges them; a prefill does not.
    let file = TempModel::new(
        "long",
        &TinyModel {
            context_length: 1024,
            ..TinyModel::default()
        },
    );
    let model = file.load();
    let ids: Vec<u32> = prompt(&model).into_iter().cycle().take(700).collect();
    let all_at_once = model.session().forward_last(&ids, 0).expect("prefill");
    let mut session = model.session();
    let mut stepped = session.forward_last(&ids[..200], 0).expect("prefill");
    for (pos, id) in ids.iter().enumerate().skip(200) {
        stepped = session.forward_last(&[*id], pos).expect("step");
    }
    let max_diff = all_at_once
        .iter()
        .zip(&stepped)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-2, "logits differ by {max_diff}");
}

#[test]
fn prefill_equals_step_by_step_decoding() {
    let (_file, model) = tiny("prefill");
    let ids = prompt(&model);
    let mut session = model.session();
    let all_at_once = session.forward_last(&ids, 0).expect("prefill");
    let mut one_by_one = Vec::new();
    for (pos, id) in ids.iter().enumerate() {
        one_by_one = session.forward_last(&[*id], pos).expect("step");
    }
    assert_eq!(all_at_once.len(), one_by_one.len());
    let max_diff = all_at_once
        .iter()
        .zip(&one_by_one)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-2, "logits differ by {max_diff}");
}

#[test]
fn sessions_share_weights_but_not_caches() {
    let (_file, model) = tiny("sessions");
    let ids = prompt(&model);
    let config = config(12, SamplingConfig::default());
    let (expected, _) = run(&model, &ids, &config);
    // Interleave two sessions step by step: each keeps its own KV cache.
    let mut a = model.session();
    let mut b = model.session();
    let other_prompt = &ids[..ids.len() / 2];
    let mut la = a.forward_last(&ids, 0).expect("a");
    let mut lb = b.forward_last(other_prompt, 0).expect("b");
    let mut tokens = Vec::new();
    for step in 0..config.max_new_tokens {
        let next = argmax(&la);
        tokens.push(next);
        let pos_a = ids.len() + step;
        la = a.forward_last(&[next], pos_a).expect("a step");
        let pos_b = other_prompt.len() + step;
        lb = b.forward_last(&[argmax(&lb)], pos_b).expect("b step");
    }
    assert_eq!(tokens, expected.tokens);
}

fn argmax(logits: &[f32]) -> u32 {
    textstream_engine::sampling::argmax(logits) as u32
}

#[test]
fn spawn_generate_runs_on_its_own_thread() {
    let (_file, model) = tiny("spawn");
    let model = Arc::new(model);
    let ids = prompt(&model);
    let recorder = Recorder::new();
    let handle = spawn_generate(
        Arc::clone(&model),
        ids.clone(),
        config(8, SamplingConfig::default()),
        recorder.clone(),
    );
    let output = handle
        .join()
        .expect("thread did not panic")
        .expect("generate");
    let rec = recorder.recording();
    assert_eq!(rec.tokens, output.tokens);
    assert_eq!(rec.finish, Some(FinishReason::Length));
    assert_eq!(
        output.tokens,
        run(&model, &ids, &config(8, SamplingConfig::default()))
            .0
            .tokens
    );
}

/// A streamer whose consumer leaves once the prompt is put: it says so
/// when asked, and counts the asking.
#[derive(Default)]
struct LeavesAfterPrompt {
    puts: usize,
    asked: std::cell::Cell<usize>,
}

impl textstream::Streamer for LeavesAfterPrompt {
    fn put(&mut self, _ids: &[u32]) -> Result<(), Closed> {
        self.puts += 1;
        Ok(())
    }
    fn is_closed(&self) -> bool {
        self.asked.set(self.asked.get() + 1);
        self.puts > 0
    }
    fn finish(&mut self, _reason: FinishReason) {}
    fn fail(&mut self, _error: Box<dyn std::error::Error + Send + Sync>) {}
}

#[test]
fn a_consumer_that_leaves_during_a_long_prompt_stops_it_within_a_chunk() {
    use textstream_engine::models::PROMPT_CHUNK;
    let tiny = TinyModel {
        context_length: 4096,
        ..TinyModel::default()
    };
    let file = TempModel::new("leaves-in-prompt", &tiny);
    let model = file.load();
    let ids: Vec<u32> = (0..(2 * PROMPT_CHUNK + 100) as u32)
        .map(|i| 3 + (i * 37) % 250)
        .collect();
    let mut streamer = LeavesAfterPrompt::default();
    let output = generate(
        &mut model.session(),
        &ids,
        &config(10, SamplingConfig::default()),
        &mut streamer,
    )
    .expect("generate");
    assert!(output.consumer_gone, "{output:?}");
    assert!(output.tokens.is_empty(), "no token computed for nobody");
    assert_eq!(streamer.puts, 1, "the prompt only");
    assert_eq!(
        streamer.asked.get(),
        1,
        "asked before the second chunk, and stopped there"
    );
}

//! The engine's fast llama path against candle's reference, on the real
//! default model: greedy output must be the same token for token.
//!
//! The fast path re-quantizes the file's Q4_1 matrices to Q8_0 at load and
//! runs its own forward pass (stacked matrices, preallocated KV cache); the
//! reference is candle's `quantized_llama` on the file as it is. Both round
//! activations to 8 bits for the matmul, so their logits differ by a little
//! rounding noise; these tests show the noise never changes a greedy pick in
//! the first [`COMPARED_TOKENS`] tokens of [`PROMPTS`].

use textstream_engine::generate::{generate, GenerateConfig};
use textstream_engine::llama::WeightFormat;
use textstream_engine::model::{LoadOptions, Model};
use textstream_engine::template::Message;
use textstream_engine::testing::{default_model_path, Recorder};

/// Tokens compared per prompt.
const COMPARED_TOKENS: usize = 32;

/// Questions of different kinds: facts, code, lists, arithmetic, other languages.
const PROMPTS: [&str; 10] = [
    "Why is the sky blue?",
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "List three fruits that are red.",
    "What is 17 times 3?",
    "Translate 'good morning' into Spanish.",
    "Give me a short poem about the sea.",
    "Explain what a hash map is in one paragraph.",
    "Who wrote Romeo and Juliet?",
    "How do I boil an egg?",
];

/// Greedy continuations of every prompt with `weights`.
fn greedy(weights: WeightFormat) -> Vec<Vec<u32>> {
    let model = Model::load_with(&default_model_path(), LoadOptions::default().weights(weights))
        .expect("load the model");
    let config = GenerateConfig {
        max_new_tokens: COMPARED_TOKENS,
        ..GenerateConfig::default()
    };
    PROMPTS
        .iter()
        .map(|question| {
            let prompt = model
                .chat_prompt(&[Message::new("user", *question)])
                .expect("render the chat template");
            let ids = model.tokenizer().encode(&prompt, false).expect("encode");
            let output = generate(&mut model.session(), &ids, &config, &mut Recorder::new())
                .expect("generate");
            output.tokens
        })
        .collect()
}

fn assert_same(weights: WeightFormat) {
    let reference = greedy(WeightFormat::Reference);
    let fast = greedy(weights);
    for ((question, want), got) in PROMPTS.iter().zip(&reference).zip(&fast) {
        assert_eq!(got, want, "{weights:?} differs from the reference on {question:?}");
    }
}

#[test]
fn default_fast_path_matches_the_reference_greedily() {
    assert_same(WeightFormat::default());
}

#[test]
fn fast_forward_on_the_files_own_types_matches_the_reference() {
    // Same weights, same kernels: only the forward pass differs.
    assert_same("q4_1".parse().expect("a weight format"));
}

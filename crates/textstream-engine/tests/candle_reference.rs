//! The engine's native forward pass against candle's llama, the reference,
//! on the real default model: where greedy output differs, it is at a near
//! tie.
//!
//! The native backend runs its own kernels and forward pass on the file's
//! own Q4_1 and Q8_0 values; the reference is candle's `quantized_llama` on
//! the same file. Both round activations to 8 bits per block of 32 exactly as
//! ggml does, and one matrix product agrees with candle's to 1e-5; but the
//! float operations in between (norms, softmax, sums) run in another order,
//! and a last-bit difference before a rounding to 8 bits moves that value by
//! a whole step. So logits differ by up to a few tenths, and greedy picks
//! differ where the top two candidates are that close: these tests show
//! they differ only there.

use textstream_engine::generate::{generate, GenerateConfig};
use textstream_engine::model::{Backend, LoadOptions, Model};
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

/// Greedy continuations of every prompt with `backend`.
fn greedy(backend: Backend) -> Vec<Vec<u32>> {
    let model = Model::load_with(
        &default_model_path(),
        LoadOptions::default().backend(backend),
    )
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
            let ids = model.encode_prompt(&prompt).expect("encode");
            let output = generate(&mut model.session(), &ids, &config, &mut Recorder::new())
                .expect("generate");
            output.tokens
        })
        .collect()
}

/// Per prompt, how many leading tokens `backend` shares with the reference.
fn agreement(backend: Backend) -> Vec<usize> {
    let reference = greedy(Backend::Candle);
    let other = greedy(backend);
    let agreed: Vec<usize> = reference
        .iter()
        .zip(&other)
        .map(|(want, got)| {
            let same = want.iter().zip(got).take_while(|(a, b)| a == b).count();
            // A shorter answer that ends together with the other counts as whole.
            match want.len() == got.len() && same == want.len() {
                true => COMPARED_TOKENS,
                false => same,
            }
        })
        .collect();
    eprintln!("{backend:?}: tokens agreeing with the reference per prompt: {agreed:?}");
    agreed
}

/// The most the reference's own logit for its greedy token may exceed its
/// logit for the native pick, where the two picks differ: below this the
/// two candidates are a near tie that 8-bit rounding may break either way.
const NEAR_TIE_LOGITS: f32 = 0.5;

#[test]
fn native_differs_from_the_reference_only_at_near_ties() {
    // Teacher-forced along the reference's greedy tokens, so that one flipped
    // near tie does not make every later token incomparable.
    let load = |backend| {
        Model::load_with(
            &default_model_path(),
            LoadOptions::default().backend(backend),
        )
        .expect("load the model")
    };
    let (reference, native) = (load(Backend::Candle), load(Backend::default()));
    let argmax = |logits: &[f32]| {
        (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best })
    };
    let (mut steps, mut flips) = (0, 0);
    for question in PROMPTS {
        let prompt = reference
            .chat_prompt(&[Message::new("user", question)])
            .expect("render the chat template");
        let ids = reference
            .tokenizer()
            .encode(&prompt, false)
            .expect("encode");
        let (mut want_session, mut got_session) = (reference.session(), native.session());
        let (mut input, mut pos) = (ids, 0);
        for _ in 0..COMPARED_TOKENS {
            let want = want_session
                .forward_last(&input, pos)
                .expect("reference step");
            let got = got_session.forward_last(&input, pos).expect("native step");
            let (w, g) = (argmax(&want), argmax(&got));
            steps += 1;
            if w != g {
                flips += 1;
                let margin = want[w] - want[g];
                assert!(
                    margin < NEAR_TIE_LOGITS,
                    "{question:?} at position {pos}: native picks {g}, the reference {w} by \
                     {margin} logits"
                );
            }
            if reference.stop_ids().contains(&(w as u32)) {
                break;
            }
            pos += input.len();
            input = vec![w as u32];
        }
    }
    eprintln!("{flips} near-tie flips in {steps} teacher-forced steps");
    assert!(
        flips * 10 <= steps,
        "{flips} of {steps} greedy picks differ: more than rounding noise"
    );
}

/// Free-running greedy agreement, for the README's figures. Once one near
/// tie flips, the two continuations part, so this counts agreeing prefixes:
/// with a few percent of steps at a near tie, prefixes of about 30 tokens
/// are expected, and a broken kernel or forward pass agrees on almost
/// nothing. The bound is a quarter of the tokens compared.
#[test]
fn native_greedy_output_mostly_agrees_with_the_reference() {
    let agreed = agreement(Backend::Native);
    let total: usize = agreed.iter().sum();
    assert!(
        total * 4 >= COMPARED_TOKENS * PROMPTS.len(),
        "only {total} of {} tokens agree: {agreed:?}",
        COMPARED_TOKENS * PROMPTS.len()
    );
}

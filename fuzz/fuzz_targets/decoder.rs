//! The incremental decoder on SmolLM2's real vocabulary: random ids pushed
//! in random pieces must give exactly `tokenizers`' decode of all of them
//! (the oracle), with special tokens kept or skipped. Needs the default
//! model in the cache (`cargo run --release -- models --fetch`, or any
//! test run), or its path in `TEXTSTREAM_FUZZ_MODEL`.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use textstream::{Detokenizer, IncrementalDecoder};
use textstream_engine::model::read_metadata;
use textstream_engine::tokenizer::GgufTokenizer;
use tokenizers::Tokenizer;

/// The vocabulary size and the detokenizer (built once: cloning it is cheap,
/// building it is not).
fn detokenizer() -> &'static (u32, Detokenizer) {
    static DETOKENIZER: OnceLock<(u32, Detokenizer)> = OnceLock::new();
    DETOKENIZER.get_or_init(|| {
        let path = std::env::var_os("TEXTSTREAM_FUZZ_MODEL")
            .map(Into::into)
            .unwrap_or_else(textstream_engine::testing::default_model_path);
        let content = read_metadata(&path).expect("the default model (see the doc comment)");
        let tokenizer: Tokenizer = GgufTokenizer::from_gguf(&content)
            .expect("its tokenizer")
            .tokenizer;
        let vocab = tokenizer.get_vocab_size(true) as u32;
        (vocab, Detokenizer::from(tokenizer))
    })
}

#[derive(Debug, Arbitrary)]
struct Input {
    skip_special_tokens: bool,
    /// Ids, taken modulo the vocabulary size.
    ids: Vec<u32>,
    /// How many ids each push takes.
    pieces: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let (vocab, detokenizer) = detokenizer();
    let ids: Vec<u32> = input.ids.iter().map(|&id| id % vocab).collect();
    let detokenizer = detokenizer.clone();
    let expected = detokenizer.decode(&ids, input.skip_special_tokens);
    let mut decoder = IncrementalDecoder::new(detokenizer, input.skip_special_tokens);
    let mut text = String::new();
    let mut rest = &ids[..];
    let mut pieces = input.pieces.iter().cycle();
    let mut result = Ok(());
    while !rest.is_empty() && result.is_ok() {
        let take = pieces
            .next()
            .map_or(rest.len(), |&n| (n as usize).max(1))
            .min(rest.len());
        result = decoder.push_all(&rest[..take], &mut text);
        rest = &rest[take..];
    }
    if result.is_ok() {
        result = decoder.flush(&mut text);
    }
    match (expected, result) {
        (Ok(expected), Ok(())) => assert_eq!(text, expected, "ids {ids:?}"),
        (Err(_), Err(_)) => {}
        (expected, result) => panic!("decode {expected:?} but incremental {result:?} for {ids:?}"),
    }
});

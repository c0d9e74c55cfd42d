//! The tokenizer built from GGUF metadata: a vocabulary, merges, token
//! types, special ids and a pre-tokenizer name as a file could hold them,
//! then text encoded and the ids decoded. Anything may be an error; nothing
//! may panic or hang.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use candle_core::quantized::gguf_file::{Content, Value};
use libfuzzer_sys::fuzz_target;
use textstream_engine::tokenizer::GgufTokenizer;

#[derive(Debug, Arbitrary)]
struct Input {
    sentencepiece: bool,
    tokens: Vec<String>,
    merges: Option<Vec<String>>,
    types: Option<Vec<i32>>,
    scores: Option<Vec<f32>>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: Option<bool>,
    pre: Option<String>,
    text: String,
    ids: Vec<u32>,
}

fn strings(values: Vec<String>) -> Value {
    Value::Array(values.into_iter().map(Value::String).collect())
}

fuzz_target!(|input: Input| {
    let mut metadata = HashMap::new();
    let model = if input.sentencepiece { "llama" } else { "gpt2" };
    metadata.insert(
        "tokenizer.ggml.model".to_owned(),
        Value::String(model.to_owned()),
    );
    metadata.insert("tokenizer.ggml.tokens".to_owned(), strings(input.tokens));
    if let Some(merges) = input.merges {
        metadata.insert("tokenizer.ggml.merges".to_owned(), strings(merges));
    }
    if let Some(types) = input.types {
        let types = types.into_iter().map(Value::I32).collect();
        metadata.insert("tokenizer.ggml.token_type".to_owned(), Value::Array(types));
    }
    if let Some(scores) = input.scores {
        let scores = scores.into_iter().map(Value::F32).collect();
        metadata.insert("tokenizer.ggml.scores".to_owned(), Value::Array(scores));
    }
    if let Some(bos) = input.bos {
        metadata.insert("tokenizer.ggml.bos_token_id".to_owned(), Value::U32(bos));
    }
    if let Some(eos) = input.eos {
        metadata.insert("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(eos));
    }
    if let Some(add_bos) = input.add_bos {
        metadata.insert(
            "tokenizer.ggml.add_bos_token".to_owned(),
            Value::Bool(add_bos),
        );
    }
    if let Some(pre) = input.pre {
        metadata.insert("tokenizer.ggml.pre".to_owned(), Value::String(pre));
    }
    let content = Content {
        magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    };
    let Ok(tokenizer) = GgufTokenizer::from_gguf(&content) else {
        return;
    };
    let _ = tokenizer.encode(&input.text, true);
    let _ = tokenizer.tokenizer.decode(&input.ids, false);
    let _ = tokenizer.longest_token_bytes();
    for id in input.ids.iter().take(8) {
        let _ = tokenizer.token_text(*id);
    }
});

//! GGUF files: the bytes are written to a file and loaded as the CLI and
//! server load models (header, metadata caps, tensor checks, tokenizer,
//! weights). Anything may be an error; nothing may panic, hang or take
//! memory out of proportion to the file. Seed: the tiny model
//! (written by `cargo run --bin write-seeds` in `fuzz/`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use textstream_engine::generate::{generate, GenerateConfig};
use textstream_engine::model::{LoadOptions, Model};
use textstream_engine::testing::Recorder;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("textstream-fuzz-{}.gguf", std::process::id()))
    })
}

fuzz_target!(|bytes: &[u8]| {
    std::fs::write(path(), bytes).expect("write the input");
    let options = LoadOptions::default().threads(Some(1));
    if let Ok(model) = Model::load_with(path(), options) {
        // A model that loads must also run: a prompt and two tokens.
        if let Ok(ids) = model.encode_prompt("hi") {
            let config = GenerateConfig {
                max_new_tokens: 2,
                ..GenerateConfig::default()
            };
            let _ = generate(&mut model.session(), &ids, &config, &mut Recorder::new());
        }
    }
});

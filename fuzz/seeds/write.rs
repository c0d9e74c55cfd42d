//! Writes the seed corpus: the tiny random model for the `gguf` target
//! (`cargo run --release --bin write-seeds` from `fuzz/`).
fn main() {
    let dir = std::path::Path::new("corpus/gguf");
    std::fs::create_dir_all(dir).expect("create corpus/gguf");
    textstream_engine::testing::write_tiny_model(&dir.join("tiny.gguf"), 7)
        .expect("write the tiny model");
}

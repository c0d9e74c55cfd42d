//! Loading bad GGUF files: every failure is an `EngineError`, never a panic.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use textstream_engine::model::Model;
use textstream_engine::testing::{write_tiny_model, TinyModel};
use textstream_engine::EngineError;

/// A fresh temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "textstream-load-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(path: &Path) -> EngineError {
    Model::load(path).expect_err("loading should fail")
}

#[test]
fn truncated_files_are_errors_found_before_candle() {
    let dir = TempDir::new("truncated");
    let good = dir.join("good.gguf");
    write_tiny_model(&good, 1).expect("write");
    let bytes = std::fs::read(&good).expect("read");
    Model::load(&good).expect("the intact file loads");
    let len = bytes.len();
    let cuts = [
        0,
        3,
        8,
        23,
        100,
        1_000,
        10_000,
        len / 2,
        len - 4096,
        len - 100,
        len - 1,
    ];
    let bad = dir.join("bad.gguf");
    for cut in cuts {
        std::fs::write(&bad, &bytes[..cut]).expect("write truncated");
        let err = load_err(&bad);
        let message = err.to_string();
        assert!(
            !message.contains("panicked"),
            "cut at {cut}: validation should catch this before candle: {message}"
        );
        assert!(
            matches!(
                err,
                EngineError::InvalidModel { .. } | EngineError::Metadata { .. }
            ),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let dir = TempDir::new("corrupt");
    let good = dir.join("good.gguf");
    write_tiny_model(&good, 2).expect("write");
    let bytes = std::fs::read(&good).expect("read");
    let bad = dir.join("bad.gguf");
    // Overwrite spans across the header, the metadata and the tensor table
    // with patterns that make lengths, counts, types and offsets absurd. Some
    // damage (inside the vocabulary text, say) still loads; none may panic.
    let patterns: [&[u8]; 4] = [
        &[0xFF; 8],
        &[0x00; 8],
        &[0x7F, 0, 0, 0, 0, 0, 0, 0],
        &[0x11; 3],
    ];
    let mut errors = 0;
    for (step, start) in (0..bytes.len().min(12_000)).step_by(97).enumerate() {
        let pattern = patterns[step % patterns.len()];
        let mut damaged = bytes.clone();
        let end = (start + pattern.len()).min(damaged.len());
        damaged[start..end].copy_from_slice(&pattern[..end - start]);
        std::fs::write(&bad, &damaged).expect("write damaged");
        let result = std::panic::catch_unwind(|| Model::load(&bad));
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => errors += 1,
            Err(_) => panic!("Model::load panicked on damage at byte {start}"),
        }
    }
    assert!(errors > 0, "some damage must be detected");
}

#[test]
fn not_a_gguf_file_is_an_error() {
    let dir = TempDir::new("garbage");
    let path = dir.join("garbage.gguf");
    std::fs::write(&path, b"this is not a GGUF file at all, just text").expect("write");
    assert!(matches!(load_err(&path), EngineError::InvalidModel { .. }));
    assert!(matches!(
        load_err(&dir.join("missing.gguf")),
        EngineError::Io { .. }
    ));
}

#[test]
fn impossible_hyperparameters_are_errors() {
    let dir = TempDir::new("hparams");
    let cases: Vec<(&str, Value)> = vec![
        ("llama.attention.head_count", Value::U32(0)),
        ("llama.attention.head_count", Value::U32(3)),
        ("llama.attention.head_count_kv", Value::U32(3)),
        ("llama.block_count", Value::U32(1_000_000)),
        ("llama.block_count", Value::U32(3)),
        ("llama.embedding_length", Value::U32(65)),
        ("llama.rope.dimension_count", Value::U32(1 << 30)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
        ),
        ("llama.attention.head_count", Value::String("four".into())),
        ("general.alignment", Value::U32(0)),
        ("tokenizer.ggml.model", Value::String("t5".into())),
    ];
    for (key, value) in cases {
        let path = dir.join("model.gguf");
        TinyModel {
            metadata_overrides: vec![(key.to_owned(), value.clone())],
            ..TinyModel::default()
        }
        .write(&path)
        .expect("write");
        let result = std::panic::catch_unwind(|| Model::load(&path));
        match result {
            Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("{key} = {value:?} loaded"),
            Err(_) => panic!("{key} = {value:?} panicked"),
        }
    }
}

#[test]
fn missing_metadata_is_an_error() {
    let dir = TempDir::new("nometa");
    let path = dir.join("model.gguf");
    // A file with only the architecture: no hyperparameters, no tensors.
    let mut file = std::fs::File::create(&path).expect("create");
    let arch = Value::String("llama".into());
    candle_core::quantized::gguf_file::write(&mut file, &[("general.architecture", &arch)], &[])
        .expect("write");
    drop(file);
    let err = load_err(&path);
    assert!(matches!(err, EngineError::Metadata { .. }), "{err}");
}

/// Where the data offset of tensor `name` is stored in a GGUF file's tensor
/// table: after its name (a u64 length, then the bytes), its dimension
/// count (u32), its dimensions (u64 each) and its type (u32).
fn offset_field(bytes: &[u8], name: &str) -> usize {
    let mut pattern = (name.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern.as_slice())
        .unwrap_or_else(|| panic!("{name} is in the tensor table"));
    let dims_at = at + pattern.len();
    let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().expect("4 bytes"));
    dims_at + 4 + 8 * n_dims as usize + 4
}

#[test]
fn tensors_that_share_bytes_are_errors() {
    let dir = TempDir::new("overlap");
    let path = dir.join("overlap.gguf");
    write_tiny_model(&path, 3).expect("write");
    let mut bytes = std::fs::read(&path).expect("read");
    // Point one tensor at another's bytes: both extents lie inside the file.
    let source = offset_field(&bytes, "blk.0.attn_q.weight");
    let target = offset_field(&bytes, "blk.0.attn_output.weight");
    let offset: [u8; 8] = bytes[source..source + 8].try_into().expect("8 bytes");
    assert_ne!(&bytes[target..target + 8], &offset);
    bytes[target..target + 8].copy_from_slice(&offset);
    std::fs::write(&path, &bytes).expect("write");
    let err = load_err(&path);
    assert!(matches!(err, EngineError::InvalidModel { .. }), "{err}");
    assert!(err.to_string().contains("overlap"), "{err}");
}

#[test]
fn a_zero_alignment_is_an_error_for_every_reader() {
    let dir = TempDir::new("alignment");
    let path = dir.join("alignment.gguf");
    TinyModel {
        metadata_overrides: vec![("general.alignment".to_owned(), Value::U32(0))],
        ..TinyModel::default()
    }
    .write(&path)
    .expect("write");
    let err = load_err(&path);
    assert!(matches!(err, EngineError::InvalidModel { .. }), "{err}");
    // The metadata-only reader (`tokenize`, `replay`) goes through the same guard.
    let err = textstream_engine::model::read_metadata(&path).expect_err("refused");
    assert!(matches!(err, EngineError::InvalidModel { .. }), "{err}");
}

#[test]
fn a_token_of_megabytes_is_refused_before_the_tokenizer_is_built() {
    let dir = TempDir::new("long-token");
    let path = dir.join("long-token.gguf");
    let mut tokens = TinyModel::tokens();
    let last = tokens.len() - 1;
    tokens[last] = "a".repeat(1 << 20);
    TinyModel {
        metadata_overrides: vec![(
            "tokenizer.ggml.tokens".to_owned(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        )],
        ..TinyModel::default()
    }
    .write(&path)
    .expect("write");
    let err = load_err(&path);
    match &err {
        EngineError::Metadata { key, reason } => {
            assert_eq!(key, "tokenizer.ggml.tokens", "{err}");
            assert!(reason.contains(&format!("element {last}")), "{err}");
        }
        other => panic!("expected a metadata error, got {other}"),
    }
}

#[test]
fn a_block_count_beyond_the_files_tensors_is_an_error() {
    let dir = TempDir::new("blocks");
    let path = dir.join("blocks.gguf");
    TinyModel {
        metadata_overrides: vec![("llama.block_count".to_owned(), Value::U32(1_000_000_000))],
        ..TinyModel::default()
    }
    .write(&path)
    .expect("write");
    let err = load_err(&path);
    assert!(matches!(err, EngineError::InvalidModel { .. }), "{err}");
    assert!(err.to_string().contains("block_count"), "{err}");
}

/// Inputs the `gguf` fuzz target found (`fuzz/`), kept in `tests/data`:
/// each must load to an error, in bounded memory.
#[test]
fn fuzz_findings_load_to_errors() {
    // A 222 KB file whose block_count (mutated) made the tensor check
    // build a table of gigabytes before it found a tensor missing.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-gguf-oom-block-count.gguf");
    let err = load_err(&path);
    assert!(err.to_string().contains("block_count"), "{err}");
}

//! Every architecture's forward pass on tiny random-weight GGUF files that
//! the tests write: each family's wiring loads and runs, a prompt gives the
//! same logits whole, in chunks or token by token, sliding windows see
//! exactly their window, and rings that wrap change nothing.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use textstream_engine::generate::{generate, GenerateConfig};
use textstream_engine::model::Model;
use textstream_engine::models::{self, Transformer};
use textstream_engine::testing::{Recorder, TinyModel};

/// The architectures the engine runs.
const ARCHITECTURES: [&str; 5] = ["llama", "qwen2", "qwen3", "gemma3", "phi3"];

/// Logits of the same positions computed along different paths (whole
/// prompt, chunks, one token at a time; a ring or a full cache) sum in
/// another order; tiny models' logits are about 1 in size, and differences
/// measured were below 1e-5.
const TOLERANCE: f32 = 1e-3;

/// A tiny model file in the temporary directory, removed when dropped.
struct TinyFile(PathBuf);

impl TinyFile {
    fn new(name: &str, model: &TinyModel) -> Self {
        let path = std::env::temp_dir().join(format!(
            "textstream-arch-{name}-{}-{}.gguf",
            std::process::id(),
            model.seed
        ));
        model.write(&path).expect("write the tiny model");
        Self(path)
    }

    /// The model's forward pass alone, with prompt chunks of `chunk` tokens.
    fn transformer(&self, chunk: usize) -> Transformer {
        let file = File::open(&self.0).expect("open");
        let size = file.metadata().expect("size").len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).expect("read the header");
        let (family, hparams) =
            models::check(&content, size).unwrap_or_else(|e| panic!("{}: {e:?}", self.0.display()));
        let context = hparams.trained_context.expect("tiny models give a context");
        Transformer::load(family, hparams, &content, &mut reader, context, 2)
            .expect("load")
            .with_prompt_chunk(chunk)
    }
}

impl Drop for TinyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tiny(architecture: &str) -> TinyModel {
    TinyModel {
        architecture: architecture.to_owned(),
        context_length: 256,
        ..TinyModel::default()
    }
}

/// Ids cycling through the tiny vocabulary's ordinary tokens.
fn ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 3 + (i * 37) % 250).collect()
}

/// Logits after each position of `ids`, fed `step` tokens per forward pass.
fn logits_along(model: &Transformer, ids: &[u32], step: usize) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    for (i, part) in ids.chunks(step).enumerate() {
        out.push(
            model
                .forward_last(&mut cache, part, i * step)
                .expect("forward"),
        );
    }
    out
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= TOLERANCE, "{what}: logits differ by {worst}");
    assert!(a.iter().all(|x| x.is_finite()), "{what}: non-finite logits");
}

/// For every family, head size and weight type: a 40-token prompt's last
/// logits are the same whole, in chunks of 7 and one token at a time.
#[test]
fn every_family_runs_and_prompts_split_anywhere() {
    let variants = [
        (16, 64, GgmlDType::Q8_0),
        (64, 64, GgmlDType::Q4_1),
        (128, 64, GgmlDType::Q8_0),
        (64, 256, GgmlDType::Q4K),
    ];
    for arch in ARCHITECTURES {
        for (head_dim, hidden, weight_type) in variants {
            let what = format!("{arch} head {head_dim} width {hidden} {weight_type:?}");
            let file = TinyFile::new(
                &format!("{arch}-{head_dim}-{weight_type:?}"),
                &TinyModel {
                    head_dim,
                    hidden,
                    weight_type,
                    ..tiny(arch)
                },
            );
            let model = file.transformer(512);
            assert_eq!(model.hparams().architecture, arch);
            assert_eq!(model.hparams().head_dim, head_dim);
            let prompt = ids(40);
            let whole = logits_along(&model, &prompt, 40).pop().expect("logits");
            let chunked = logits_along(&model, &prompt, 7).pop().expect("logits");
            let stepped = logits_along(&model, &prompt, 1).pop().expect("logits");
            assert_close(&whole, &chunked, &format!("{what}: chunks of 7"));
            assert_close(&whole, &stepped, &format!("{what}: one at a time"));
            // A different prompt gives different logits: the model computes.
            let other = logits_along(&model, &ids(41)[1..], 40)
                .pop()
                .expect("logits");
            assert!(whole != other, "{what}: logits ignore the prompt");
        }
    }
}

/// Each family generates through the whole engine (tokenizer, session,
/// sampler), deterministically.
#[test]
fn every_family_generates_through_the_engine() {
    for arch in ARCHITECTURES {
        let file = TinyFile::new(&format!("{arch}-generate"), &tiny(arch));
        let model = Model::load(&file.0).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(model.info().architecture, arch);
        assert_eq!(model.context_length(), 256, "{arch}: the trained context");
        let prompt = model.encode_prompt("the rain in spain").expect("encode");
        let config = GenerateConfig {
            max_new_tokens: 12,
            ..GenerateConfig::default()
        };
        let run = || {
            generate(&mut model.session(), &prompt, &config, &mut Recorder::new())
                .expect("generate")
                .tokens
        };
        let first = run();
        assert_eq!(first.len(), 12, "{arch}");
        assert_eq!(first, run(), "{arch}: greedy output is deterministic");
    }
}

/// A local layer sees exactly its window: with a window longer than the
/// sequence, Gemma 3 computes what it does without one; with a window of 8,
/// the first 8 positions are the same and later ones differ.
#[test]
fn sliding_windows_see_their_window() {
    let prompt = ids(30);
    let full = TinyFile::new("gemma3-nowindow", &tiny("gemma3"));
    let wide = TinyFile::new(
        "gemma3-wide",
        &TinyModel {
            sliding_window: Some(200),
            ..tiny("gemma3")
        },
    );
    let narrow = TinyFile::new(
        "gemma3-narrow",
        &TinyModel {
            sliding_window: Some(8),
            ..tiny("gemma3")
        },
    );
    let full = logits_along(&full.transformer(512), &prompt, 1);
    let wide = logits_along(&wide.transformer(512), &prompt, 1);
    let narrow = logits_along(&narrow.transformer(512), &prompt, 1);
    for (i, (f, w)) in full.iter().zip(&wide).enumerate() {
        assert_close(f, w, &format!("wide window, position {i}"));
    }
    for (i, (f, n)) in full.iter().zip(&narrow).enumerate().take(8) {
        assert_close(f, n, &format!("narrow window, position {i}"));
    }
    let later_differ = full[8..].iter().zip(&narrow[8..]).all(|(f, n)| {
        f.iter()
            .zip(n)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
            > TOLERANCE
    });
    assert!(later_differ, "positions past the window must see less");
}

/// A windowed layer's ring of slots (window + one chunk) wraps many times
/// over a long sequence and gives what a cache of the whole context gives,
/// for prompts in chunks and for decode steps, Gemma 3 (some layers local)
/// and Phi-3 (all layers local) alike.
#[test]
fn rings_that_wrap_change_nothing() {
    for arch in ["gemma3", "phi3"] {
        // F32 weights: the ring sums attention in another order than the
        // whole cache, and with 8-bit activations a last-bit difference can
        // move an activation by a whole rounding step (the portable kernels
        // did at one position of 200 on a Q8_0 model: logits 0.024 apart).
        // Without that rounding the paths agree to about 1e-6, so what this
        // compares is the ring alone.
        let file = TinyFile::new(
            &format!("{arch}-ring"),
            &TinyModel {
                sliding_window: Some(14),
                weight_type: GgmlDType::F32,
                ..tiny(arch)
            },
        );
        // Chunks of 512 give every layer the whole context (256 positions);
        // chunks of 5 give windowed layers a ring of 32 slots.
        let (whole, ring) = (file.transformer(512), file.transformer(5));
        let prompt = ids(200);
        let expected = logits_along(&whole, &prompt, 1);
        for step in [1, 5] {
            let got = logits_along(&ring, &prompt, step);
            for (i, got) in got.iter().enumerate() {
                let position = (i + 1) * step - 1;
                assert_close(
                    &expected[position],
                    got,
                    &format!("{arch} ring, {step} per pass, position {position}"),
                );
            }
        }
    }
}

/// Files of an architecture the engine does not run are refused by name,
/// with the list of those it does.
#[test]
fn other_architectures_are_refused_naming_the_supported_ones() {
    let file = TinyFile::new("falcon", &tiny("falcon"));
    let err = Model::load(&file.0).expect_err("falcon is not supported");
    let message = err.to_string();
    assert!(message.contains("\"falcon\""), "{message}");
    for arch in ARCHITECTURES {
        assert!(message.contains(arch), "{message}");
    }
}

/// A context larger than the trained one is refused; a smaller one is used.
#[test]
fn the_context_can_be_lowered_not_raised() {
    use textstream_engine::model::LoadOptions;
    let file = TinyFile::new("ctx", &tiny("qwen2"));
    let small = Model::load_with(&file.0, LoadOptions::default().context_length(Some(64)))
        .expect("a smaller context");
    assert_eq!(small.context_length(), 64);
    assert!(small.info().kv_cache_bytes > 0);
    let err = Model::load_with(&file.0, LoadOptions::default().context_length(Some(257)))
        .expect_err("more than trained");
    assert!(err.to_string().contains("256"), "{err}");
}

/// A trained context whose KV cache cannot fit in memory is refused at load,
/// with the way out; a lowered one loads.
#[test]
fn a_kv_cache_that_cannot_fit_is_refused_up_front() {
    use textstream_engine::model::LoadOptions;
    let file = TinyFile::new(
        "huge-context",
        &TinyModel {
            // 2^31 positions of 2 KV heads of 16: 1 TiB of keys and values.
            context_length: 1 << 31,
            ..tiny("llama")
        },
    );
    let err = Model::load(&file.0).expect_err("a terabyte of KV cache");
    let message = err.to_string();
    assert!(message.contains("--ctx-size"), "{message}");
    let model = Model::load_with(&file.0, LoadOptions::default().context_length(Some(512)))
        .expect("a context that fits");
    assert_eq!(model.info().trained_context_length, Some(1 << 31));
    assert_eq!(model.context_length(), 512);
}

/// A sequence in `batches_change_no_bits`: its prompt, how it is chunked,
/// and what it has done so far.
struct Sequence {
    prompt: Vec<u32>,
    chunk: usize,
    cache: models::KvCache,
    fed: usize,
    generated: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

/// Greedy continuation of `prompt` alone, the prompt in one pass: the
/// logits after the prompt and after each of `steps` decoded tokens.
fn alone(model: &Transformer, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut logits = vec![model.forward_last(&mut cache, prompt, 0).expect("prompt")];
    for step in 0..steps {
        let next = textstream_engine::sampling::argmax(&logits[step]) as u32;
        let pos = prompt.len() + step;
        logits.push(model.forward_last(&mut cache, &[next], pos).expect("step"));
    }
    logits
}

/// For every family: sequences run together in batches (each prompt in
/// chunks of its own size, beside the other sequences' decode steps and
/// prompt chunks) get bit for bit the logits they get alone with the
/// prompt in one pass. A request's tokens do not depend on what else runs.
#[test]
fn batches_change_no_bits() {
    const STEPS: usize = 6;
    for arch in ARCHITECTURES {
        for weight_type in [GgmlDType::Q4_1, GgmlDType::Q4K] {
            let file = TinyFile::new(
                &format!("batch-{arch}-{weight_type:?}"),
                &TinyModel {
                    head_dim: 64,
                    hidden: 256,
                    weight_type,
                    // Past 256 positions, attention splits the keys into pieces.
                    context_length: 1024,
                    ..tiny(arch)
                },
            );
            let model = file.transformer(512);
            let mut sequences: Vec<Sequence> = [
                (1, 1),
                (5, 2),
                (23, 7),
                (300, 512),
                (270, 1),
                (290, 100),
                (37, 9),
            ]
            .into_iter()
            .map(|(len, chunk)| Sequence {
                prompt: ids(len + 3)[3..].to_vec(),
                chunk,
                cache: model.new_cache(),
                fed: 0,
                generated: Vec::new(),
                logits: Vec::new(),
            })
            .collect();
            // Start them at different rounds, so batches mix every phase.
            for round in 0.. {
                let running: Vec<&mut Sequence> = sequences
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, s)| *i <= round && s.logits.len() <= STEPS)
                    .map(|(_, s)| s)
                    .collect();
                if running.is_empty() {
                    break;
                }
                let mut inputs = Vec::new();
                for s in &running {
                    let ids = if s.fed < s.prompt.len() {
                        s.prompt[s.fed..(s.fed + s.chunk).min(s.prompt.len())].to_vec()
                    } else {
                        vec![*s.generated.last().expect("a token")]
                    };
                    inputs.push(ids);
                }
                let mut running = running;
                let mut steps: Vec<models::Step> = running
                    .iter_mut()
                    .zip(&inputs)
                    .map(|(s, ids)| models::Step {
                        pos: s.fed,
                        cache: &mut s.cache,
                        ids,
                    })
                    .collect();
                let logits = model.forward_batch(&mut steps).expect("batch");
                drop(steps);
                for ((s, ids), logits) in running.iter_mut().zip(&inputs).zip(logits) {
                    s.fed += ids.len();
                    if s.fed >= s.prompt.len() {
                        s.generated
                            .push(textstream_engine::sampling::argmax(&logits) as u32);
                        s.logits.push(logits);
                    }
                }
            }
            for s in &sequences {
                let want = alone(&model, &s.prompt, STEPS);
                assert_eq!(s.logits.len(), want.len());
                for (i, (got, want)) in s.logits.iter().zip(&want).enumerate() {
                    assert!(
                        got.iter()
                            .zip(want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{arch} {weight_type:?}: a {}-token prompt in chunks of {}, step {i}: \
                         batched logits differ from alone",
                        s.prompt.len(),
                        s.chunk
                    );
                }
            }
        }
    }
}

#[test]
fn batch_steps_are_checked() {
    let file = TinyFile::new("batch-errors", &tiny("llama"));
    let model = file.transformer(16);
    let mut cache = model.new_cache();
    let too_long = ids(17);
    let cases: [(&[u32], usize, &str); 4] = [
        (&[], 0, "outside"),
        (&too_long, 0, "at most 16"),
        (&[5], 256, "outside"),
        (&[100_000], 0, "vocabulary"),
    ];
    for (ids, pos, says) in cases {
        let err = model
            .forward_batch(&mut [models::Step {
                cache: &mut cache,
                ids,
                pos,
            }])
            .expect_err("a bad step");
        assert!(err.to_string().contains(says), "{err}");
    }
    assert!(model.forward_batch(&mut []).expect("nothing").is_empty());
}

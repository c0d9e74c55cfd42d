//! `gemma3`: Gemma 3 (text). Embeddings scaled by `sqrt(hidden)`; RMS norms
//! before *and after* attention and the feed-forward network; Q/K norms;
//! a GELU-gated feed-forward network; NeoX rotary embeddings; five local
//! layers (a sliding window, rotary base 10,000) to each global one.
//!
//! The GGUF converter has already added Gemma's `1 +` to every norm weight,
//! so the norms are plain RMS norms here, as in llama.cpp.

use candle_core::quantized::gguf_file::Content;

use super::hparams::{Activation, Hparams, Rope, RopeStyle, SlidingWindow, Wiring};
use super::Family;
use crate::EngineError;

/// Every this many layers, one is global; the others are local
/// (Gemma 3's `sliding_window_pattern`, llama.cpp's `set_swa_pattern(6)`).
const GLOBAL_EVERY: usize = 6;
/// The rotary base of the local layers (`rope_local_base_freq`).
const LOCAL_ROPE_BASE: f32 = 10_000.0;
/// Gemma 3 27B's block count: that size scales queries by
/// `1 / sqrt(hidden / heads)` instead of `1 / sqrt(head_dim)` (its
/// `query_pre_attn_scalar`), as llama.cpp does.
const BLOCKS_27B: usize = 62;

/// The Gemma 3 family.
pub struct Gemma3;

impl Family for Gemma3 {
    fn architecture(&self) -> &'static str {
        "gemma3"
    }

    fn wiring(&self) -> Wiring {
        Wiring {
            rope_style: RopeStyle::Halves,
            qk_norm: true,
            sandwich_norms: true,
            activation: Activation::GeluTanh,
            scale_embedding: true,
            ..Wiring::LLAMA
        }
    }

    fn hparams(&self, content: &Content) -> Result<Hparams, EngineError> {
        let mut hparams = Hparams::read(content, self.wiring())?;
        if let Some(window) = Hparams::sliding_window_key(content, self.architecture())? {
            let local = (0..hparams.blocks)
                .map(|i| (i + 1) % GLOBAL_EVERY != 0)
                .collect();
            hparams.sliding_window = Some(SlidingWindow {
                window,
                local,
                rope: Some(Rope {
                    base: LOCAL_ROPE_BASE,
                    scale: 1.0,
                    ..hparams.rope.clone()
                }),
            });
        }
        if hparams.blocks == BLOCKS_27B {
            hparams.attention_scale = 1.0 / ((hparams.hidden / hparams.heads) as f32).sqrt();
        }
        Ok(hparams)
    }
}

//! `phi3`: Phi-3 and Phi-3.5 mini. Llama's blocks with Q, K and V fused in
//! one `attn_qkv` tensor and gate and up in one `ffn_up` tensor (gate first),
//! NeoX rotary embeddings, and a sliding window on every layer when the file
//! gives one.
//!
//! The long-context variants carry two sets of rotary divisors
//! (`rope_factors_short`/`_long`): this engine uses the short ones and so
//! caps the context at `phi3.rope.scaling.original_context_length`, where
//! they are exact.

use candle_core::quantized::gguf_file::Content;

use super::hparams::{Hparams, RopeStyle, SlidingWindow, Wiring};
use super::Family;
use crate::gguf::Metadata;
use crate::EngineError;

/// The Phi-3 family.
pub struct Phi3;

impl Family for Phi3 {
    fn architecture(&self) -> &'static str {
        "phi3"
    }

    fn wiring(&self) -> Wiring {
        Wiring {
            rope_style: RopeStyle::Halves,
            fused_qkv: true,
            fused_gate_up: true,
            ..Wiring::LLAMA
        }
    }

    fn hparams(&self, content: &Content) -> Result<Hparams, EngineError> {
        let mut hparams = Hparams::read(content, self.wiring())?;
        if let Some(window) = Hparams::sliding_window_key(content, self.architecture())? {
            hparams.sliding_window = Some(SlidingWindow {
                window,
                local: vec![true; hparams.blocks],
                rope: None,
            });
        }
        if content
            .tensor_infos
            .contains_key("rope_factors_long.weight")
        {
            let key = "phi3.rope.scaling.original_context_length";
            if let Some(original) = Metadata(content).optional_usize(key)? {
                hparams.trained_context = Some(
                    hparams
                        .trained_context
                        .map_or(original, |trained| trained.min(original)),
                );
            }
        }
        Ok(hparams)
    }

    fn rope_factors(&self) -> Option<&'static str> {
        Some("rope_factors_short.weight")
    }
}

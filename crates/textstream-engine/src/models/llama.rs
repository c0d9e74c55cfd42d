//! `llama`: Llama 1–3.x, SmolLM, Mistral-style files. RMS norms before
//! attention and the feed-forward network, SwiGLU, rotary embeddings on
//! adjacent pairs; Llama 3.x adds per-frequency divisors (`rope_freqs`).

use candle_core::quantized::gguf_file::Content;

use super::hparams::{Hparams, Wiring};
use super::Family;
use crate::gguf::Metadata;
use crate::EngineError;

/// The llama family.
pub struct Llama;

impl Family for Llama {
    fn architecture(&self) -> &'static str {
        "llama"
    }

    fn wiring(&self) -> Wiring {
        Wiring::LLAMA
    }

    fn hparams(&self, content: &Content) -> Result<Hparams, EngineError> {
        let experts = Metadata(content).optional_usize("llama.expert_count")?;
        if experts.unwrap_or(0) > 1 {
            return Err(EngineError::Metadata {
                key: "llama.expert_count".into(),
                reason: "mixture-of-experts llama models are not supported".into(),
            });
        }
        Hparams::read(content, self.wiring())
    }

    fn rope_factors(&self) -> Option<&'static str> {
        Some("rope_freqs.weight")
    }
}

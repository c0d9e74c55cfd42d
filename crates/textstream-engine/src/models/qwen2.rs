//! `qwen2`: Qwen 2 and 2.5. Llama's blocks with biases on Q, K and V and
//! rotary embeddings on pairs half a head apart (NeoX); the output
//! projection is the embedding when `output.weight` is absent.

use super::hparams::{RopeStyle, Wiring};
use super::Family;

/// The Qwen 2 family.
pub struct Qwen2;

impl Family for Qwen2 {
    fn architecture(&self) -> &'static str {
        "qwen2"
    }

    fn wiring(&self) -> Wiring {
        Wiring {
            rope_style: RopeStyle::Halves,
            qkv_bias: true,
            ..Wiring::LLAMA
        }
    }
}

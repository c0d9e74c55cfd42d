//! `qwen3`: Qwen 3 (dense). Qwen 2's blocks without biases, with an RMS
//! norm over each head of Q and K before the rotary embedding; heads may be
//! wider than `hidden / heads` (`qwen3.attention.key_length`).

use super::hparams::{RopeStyle, Wiring};
use super::Family;

/// The Qwen 3 family.
pub struct Qwen3;

impl Family for Qwen3 {
    fn architecture(&self) -> &'static str {
        "qwen3"
    }

    fn wiring(&self) -> Wiring {
        Wiring {
            rope_style: RopeStyle::Halves,
            qk_norm: true,
            ..Wiring::LLAMA
        }
    }
}

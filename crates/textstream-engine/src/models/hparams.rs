//! Typed hyper-parameters, read once from a GGUF file's `{arch}.*` keys and
//! tensor shapes: everything the shared layers need to know about a model.

use candle_core::quantized::gguf_file::Content;

use crate::gguf::Metadata;
use crate::EngineError;

/// Rotary base when the file does not give `{arch}.rope.freq_base`, as in
/// llama.cpp.
pub const DEFAULT_ROPE_FREQ_BASE: f32 = 10_000.0;

/// Context used when the file does not give `{arch}.context_length`, in tokens.
pub const DEFAULT_CONTEXT_LENGTH: usize = 4096;

/// Most query heads per KV head the attention handles (the models in use
/// have 1 to 8; Qwen2.5-0.5B has 7).
pub const MAX_GROUP: usize = 16;

/// How a head's dimensions are paired for the rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i + 1])`: llama's GGUF layout.
    Adjacent,
    /// Pairs half a head apart, `(x[i], x[i + n/2])`: GPT-NeoX's layout,
    /// used by Qwen, Gemma and Phi-3.
    Halves,
}

/// The feed-forward activation applied to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU with the tanh approximation (GeGLU), as Gemma uses.
    GeluTanh,
}

/// One rotary embedding: which dimensions rotate and at what frequencies.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// How dimensions pair up.
    pub style: RopeStyle,
    /// Dimensions of each head that rotate (the first ones); the rest pass.
    pub dims: usize,
    /// The frequency base `theta`.
    pub base: f32,
    /// Linear position scaling: frequencies are multiplied by this (1 / the
    /// `rope.scaling.factor` of a linearly scaled model).
    pub scale: f32,
    /// Per-pair frequency divisors (Llama 3's `rope_freqs`, Phi-3's
    /// `rope_factors_*`), when the file has them.
    pub factors: Option<Vec<f32>>,
}

/// Sliding-window attention on some layers.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// Positions a query sees, itself included.
    pub window: usize,
    /// Per block, whether it is a windowed ("local") layer.
    pub local: Vec<bool>,
    /// The rotary embedding of the local layers, when it differs from the
    /// global one (Gemma 3's local layers use base 10,000).
    pub rope: Option<Rope>,
}

/// How a family's blocks are wired from the shared layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wiring {
    /// How the rotary embedding pairs dimensions.
    pub rope_style: RopeStyle,
    /// Q, K and V come as one `attn_qkv` tensor (Phi-3) rather than three.
    pub fused_qkv: bool,
    /// Q, K and V have biases (Qwen 2).
    pub qkv_bias: bool,
    /// An RMS norm over each head of Q and K before the rotary embedding
    /// (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the feed-forward network too, before
    /// each residual add (Gemma 3).
    pub sandwich_norms: bool,
    /// Gate and up come as one `ffn_up` tensor, gate first (Phi-3).
    pub fused_gate_up: bool,
    /// The feed-forward activation.
    pub activation: Activation,
    /// Embeddings are multiplied by `sqrt(hidden)` (Gemma).
    pub scale_embedding: bool,
}

impl Wiring {
    /// Llama's wiring, which the other families change in a few places.
    pub const LLAMA: Wiring = Wiring {
        rope_style: RopeStyle::Adjacent,
        fused_qkv: false,
        qkv_bias: false,
        qk_norm: false,
        sandwich_norms: false,
        fused_gate_up: false,
        activation: Activation::Silu,
        scale_embedding: false,
    };
}

/// Everything numeric about a model, read once.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    /// `general.architecture`.
    pub architecture: String,
    /// How the blocks are wired.
    pub wiring: Wiring,
    /// Transformer blocks.
    pub blocks: usize,
    /// Width of the hidden state.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head (keys, queries and values alike).
    pub head_dim: usize,
    /// Width of the feed-forward network's hidden layer.
    pub feed_forward: usize,
    /// Rows of the token embedding.
    pub vocab: usize,
    /// The RMS norms' epsilon.
    pub rms_eps: f32,
    /// `{arch}.context_length`, when the file gives it.
    pub trained_context: Option<usize>,
    /// The rotary embedding (of the global layers, when some are local).
    pub rope: Rope,
    /// Windowed layers, when the model has them.
    pub sliding_window: Option<SlidingWindow>,
    /// Multiplies attention scores: `1 / sqrt(head_dim)` unless the family
    /// says otherwise.
    pub attention_scale: f32,
}

impl Hparams {
    /// Width of all query heads together.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Multiply-adds of attention over a prompt of `tokens` tokens run from
    /// an empty cache: each query head's scores and weighted sum of values
    /// (`2 x head_dim` each) over every position it sees (all before it,
    /// or its window's).
    pub fn prompt_attention_macs(&self, tokens: usize) -> u64 {
        let seen = |window: Option<usize>| -> u64 {
            let (n, w) = (tokens as u64, window.map_or(u64::MAX, |w| w as u64));
            match n <= w {
                true => n * (n + 1) / 2,
                false => w * (w + 1) / 2 + (n - w) * w,
            }
        };
        (0..self.blocks)
            .map(|i| seen(self.window(i)) * (2 * self.heads * self.head_dim) as u64)
            .sum()
    }

    /// The window of block `index`, if it is a local layer.
    pub fn window(&self, index: usize) -> Option<usize> {
        let sliding = self.sliding_window.as_ref()?;
        sliding
            .local
            .get(index)
            .copied()
            .unwrap_or(false)
            .then_some(sliding.window)
    }

    /// Reads the keys every family shares, `{arch}.*`, checking each for
    /// sense, with the wiring `wiring`.
    pub fn read(content: &Content, wiring: Wiring) -> Result<Self, EngineError> {
        let meta = Metadata(content);
        let architecture = meta.required_string("general.architecture")?.to_owned();
        let key = |name: &str| format!("{architecture}.{name}");
        let blocks = meta.positive_usize(&key("block_count"))?;
        let hidden = meta.positive_usize(&key("embedding_length"))?;
        let heads = meta.positive_usize(&key("attention.head_count"))?;
        let kv_heads = match meta.optional_usize(&key("attention.head_count_kv"))? {
            Some(0) => return Err(bad(&key("attention.head_count_kv"), "must be at least 1")),
            Some(n) => n,
            None => heads,
        };
        let head_dim = match meta.optional_usize(&key("attention.key_length"))? {
            Some(n) => n,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(bad(
                    &key("attention.head_count"),
                    format!("{heads} heads do not divide the width {hidden}"),
                ))
            }
        };
        if let Some(value_dim) = meta.optional_usize(&key("attention.value_length"))? {
            if value_dim != head_dim {
                return Err(bad(
                    &key("attention.value_length"),
                    format!("{value_dim} differs from the key length {head_dim}: not supported"),
                ));
            }
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(
                &key("attention.key_length"),
                format!("head size {head_dim} must be even and at least 2"),
            ));
        }
        if heads % kv_heads != 0 {
            return Err(bad(
                &key("attention.head_count_kv"),
                format!("{heads} query heads do not split evenly over {kv_heads} KV heads"),
            ));
        }
        if heads / kv_heads > MAX_GROUP {
            return Err(bad(
                &key("attention.head_count_kv"),
                format!(
                    "{} query heads per KV head; this engine handles at most {MAX_GROUP}",
                    heads / kv_heads
                ),
            ));
        }
        let rms_eps = meta
            .optional_f32(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| bad(&key("attention.layer_norm_rms_epsilon"), "missing"))?;
        if rms_eps <= 0.0 {
            return Err(bad(
                &key("attention.layer_norm_rms_epsilon"),
                format!("{rms_eps} is not > 0"),
            ));
        }
        let rope_dims = meta
            .optional_usize(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        if rope_dims == 0 || rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(bad(
                &key("rope.dimension_count"),
                format!("{rope_dims} rotary dimensions for heads of {head_dim}"),
            ));
        }
        let base = meta
            .optional_f32(&key("rope.freq_base"))?
            .unwrap_or(DEFAULT_ROPE_FREQ_BASE);
        if base <= 1.0 {
            return Err(bad(&key("rope.freq_base"), format!("{base} is not > 1")));
        }
        let scale = match (
            meta.optional_string(&key("rope.scaling.type"))?,
            meta.optional_f32(&key("rope.scaling.factor"))?,
        ) {
            (Some("none"), _) | (None, None) => 1.0,
            (Some("linear") | None, Some(factor)) if factor > 0.0 => 1.0 / factor,
            (kind, factor) => {
                return Err(bad(
                    &key("rope.scaling.type"),
                    format!("rotary scaling {kind:?} with factor {factor:?} is not supported"),
                ))
            }
        };
        let trained_context = match meta.optional_usize(&key("context_length"))? {
            Some(0) => return Err(bad(&key("context_length"), "must be at least 1")),
            other => other,
        };
        let embedding = tensor_dims(content, "token_embd.weight")?;
        let vocab = match embedding.as_slice() {
            [rows, cols] if *cols == hidden && *rows > 0 => *rows,
            dims => {
                return Err(EngineError::Metadata {
                    key: "token_embd.weight".into(),
                    reason: format!("shape {dims:?}, expected [vocab, {hidden}]"),
                })
            }
        };
        // The feed-forward width, from the tensor the wiring names.
        let (ffn_tensor, ffn_rows_per_unit) = match wiring.fused_gate_up {
            true => ("blk.0.ffn_up.weight", 2),
            false => ("blk.0.ffn_gate.weight", 1),
        };
        let feed_forward = match tensor_dims(content, ffn_tensor)?.as_slice() {
            [rows, _] if *rows > 0 && rows % ffn_rows_per_unit == 0 => rows / ffn_rows_per_unit,
            dims => {
                return Err(EngineError::Metadata {
                    key: ffn_tensor.into(),
                    reason: format!("shape {dims:?} is not a feed-forward matrix"),
                })
            }
        };
        Ok(Self {
            architecture,
            wiring,
            blocks,
            hidden,
            heads,
            kv_heads,
            head_dim,
            feed_forward,
            vocab,
            rms_eps,
            trained_context,
            rope: Rope {
                style: wiring.rope_style,
                dims: rope_dims,
                base,
                scale,
                factors: None,
            },
            sliding_window: None,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
        })
    }

    /// The window `{arch}.attention.sliding_window`, if the file gives one.
    pub fn sliding_window_key(
        content: &Content,
        architecture: &str,
    ) -> Result<Option<usize>, EngineError> {
        let name = format!("{architecture}.attention.sliding_window");
        match Metadata(content).optional_usize(&name)? {
            Some(0) => Err(bad(&name, "must be at least 1")),
            other => Ok(other),
        }
    }
}

/// The dimensions of tensor `name`, outermost first (as candle reports them).
pub(crate) fn tensor_dims(content: &Content, name: &str) -> Result<Vec<usize>, EngineError> {
    content
        .tensor_infos
        .get(name)
        .map(|info| info.shape.dims().to_vec())
        .ok_or_else(|| EngineError::Metadata {
            key: name.to_owned(),
            reason: "tensor missing".to_owned(),
        })
}

fn bad(key: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Metadata {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

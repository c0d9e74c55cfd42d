//! Builds the tokenizer a GGUF file describes, so that text encodes to the
//! same ids llama.cpp would give the model.
//!
//! A GGUF file carries its vocabulary in `tokenizer.ggml.*` metadata rather
//! than as a `tokenizer.json`. [`GgufTokenizer::from_gguf`] turns that metadata
//! into a [`tokenizers::Tokenizer`]:
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokens` and
//!   `merges`. The text is split before the merges by the regexes llama.cpp
//!   uses for the file's `tokenizer.ggml.pre` (see [`PRE_TOKENIZERS`]); the
//!   decoder is tokenizers' `ByteLevel`.
//! - `tokenizer.ggml.model = "llama"`: SentencePiece-style BPE with byte
//!   fallback; the merges are rebuilt from the token scores the way
//!   transformers' GGUF converter does, spaces become `▁`, and the decoder is
//!   `Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)]`.
//!
//! Control and user-defined tokens (e.g. `<|im_start|>`) become added tokens,
//! so they are recognised inside text, as llama.cpp does with
//! `parse_special = true`. BOS is never added by the tokenizer itself:
//! [`GgufTokenizer::encode`] adds it when asked and when the model wants it.

use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use crate::gguf::{float_array, int_array, Metadata};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use crate::EngineError;

/// The GGUF metadata keys this module reads (names from the GGUF spec).
mod key {
    /// Which tokenizer algorithm: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub const MODEL: &str = "tokenizer.ggml.model";
    /// Which pre-tokenizer (split regexes) a `"gpt2"` tokenizer uses.
    pub const PRE: &str = "tokenizer.ggml.pre";
    /// Every token's text, indexed by id.
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    /// Every token's type (see [`super::token_type`]), indexed by id.
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    /// Every token's score, indexed by id (SentencePiece vocabularies).
    pub const SCORES: &str = "tokenizer.ggml.scores";
    /// BPE merges as `"left right"`, highest priority first.
    pub const MERGES: &str = "tokenizer.ggml.merges";
    /// Id of the beginning-of-sequence token.
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    /// Id of the end-of-sequence token.
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    /// Id of the end-of-turn token, when it differs from EOS.
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    /// Id of the end-of-message token (Llama 3.1 tool calls).
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    /// Id of the unknown token (SentencePiece vocabularies).
    pub const UNKNOWN_ID: &str = "tokenizer.ggml.unknown_token_id";
    /// Whether the model wants BOS in front of every prompt.
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    /// Whether SentencePiece text gets a leading space (`▁`).
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    /// The Jinja chat template.
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
}

/// llama.cpp's token types, the values of `tokenizer.ggml.token_type`.
mod token_type {
    /// An ordinary piece of text.
    pub const NORMAL: i64 = 1;
    /// The unknown token (`<unk>`).
    pub const UNKNOWN: i64 = 2;
    /// A control token such as `<s>` or `<|im_start|>`.
    pub const CONTROL: i64 = 3;
    /// A token added by the model's authors that stands for literal text.
    pub const USER_DEFINED: i64 = 4;
    /// A reserved, never produced token.
    pub const UNUSED: i64 = 5;
    /// A byte-fallback token such as `<0x0A>`.
    pub const BYTE: i64 = 6;
}

/// The `tokenizer.ggml.model` value of byte-level BPE vocabularies.
const MODEL_GPT2: &str = "gpt2";
/// The `tokenizer.ggml.model` value of SentencePiece vocabularies.
const MODEL_LLAMA: &str = "llama";

/// SentencePiece's visible space, which stands for `' '` in `"llama"` vocabularies.
const SPM_SPACE: &str = "\u{2581}";
/// llama.cpp's default BOS id for `"llama"` vocabularies without `bos_token_id`.
const SPM_DEFAULT_BOS_ID: u32 = 1;
/// llama.cpp's default EOS id for `"llama"` vocabularies without `eos_token_id`.
const SPM_DEFAULT_EOS_ID: u32 = 2;
/// llama.cpp's default unknown-token id for `"llama"` vocabularies.
const SPM_DEFAULT_UNKNOWN_ID: u32 = 0;
/// How many leading spaces the SentencePiece decoder strips: the one the
/// normalizer prepended.
const SPM_PREFIX_SPACES: usize = 1;

/// Token texts that end a turn, from llama.cpp's end-of-generation detection.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "<end_of_utterance>",
];

/// GPT-2's split regex as llama.cpp writes it. llama.cpp leaves out
/// tokenizers' trailing `|\s+`: the text a regex does not match is kept as a
/// piece of its own, which gives the same pieces.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's split regex, with llama.cpp's case-insensitive contractions.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's split regex: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Splits every digit off on its own (SmolLM, StarCoder).
const SINGLE_DIGIT_REGEX: &str = r"\p{N}";
/// GPT-4o's (and Llama 4's) split regex, as llama.cpp adapts it.
const GPT4O_REGEX: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken split regex, as llama.cpp adapts it.
const TEKKEN_REGEX: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes the vocabularies of one family of
/// `tokenizer.ggml.pre` names (llama.cpp's `llama-vocab.cpp`).
#[derive(Debug)]
pub struct PreTokenizerSpec {
    /// The `tokenizer.ggml.pre` values that select this entry.
    pub names: &'static [&'static str],
    /// Regexes applied in order: each splits every piece further, keeping both
    /// the matches and the text between them as pieces.
    pub regexes: &'static [&'static str],
    /// Whether a piece found whole in the vocabulary skips the merges.
    pub ignore_merges: bool,
    /// Whether the model wants BOS when the file does not say.
    pub add_bos: bool,
}

/// llama.cpp's pre-tokenizer table, for the families this crate knows.
///
/// An unknown or missing `tokenizer.ggml.pre` selects the `"default"` entry
/// with a warning, as llama.cpp does: the ids then match llama.cpp's even
/// though they may not match the model's training.
pub const PRE_TOKENIZERS: &[PreTokenizerSpec] = &[
    DEFAULT_PRE_TOKENIZER,
    PreTokenizerSpec {
        names: &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
        ],
        regexes: &[LLAMA3_REGEX],
        ignore_merges: true,
        add_bos: true,
    },
    PreTokenizerSpec {
        names: &["dbrx", "smaug-bpe"],
        regexes: &[LLAMA3_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "megrez",
            "stablelm2",
            "hunyuan",
        ],
        regexes: &[QWEN2_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
        ],
        regexes: &[SINGLE_DIGIT_REGEX, GPT2_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "jina-v1-en",
            "jina-v2-code",
            "roberta-bpe",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
        ],
        regexes: &[GPT2_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &["falcon"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, "[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &["gpt-4o", "llama4"],
        regexes: &[GPT4O_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &["tekken"],
        regexes: &[TEKKEN_REGEX],
        ignore_merges: true,
        add_bos: true,
    },
];

/// The entry [`PRE_TOKENIZERS`] falls back to: llama.cpp's `"default"`.
const DEFAULT_PRE_TOKENIZER: PreTokenizerSpec = PreTokenizerSpec {
    names: &["default"],
    regexes: &[
        r"[\p{P}\$\+<=>\^~\|]+",
        GPT2_REGEX,
        r"\p{N}+",
        "[0-9][0-9][0-9]",
    ],
    ignore_merges: false,
    add_bos: false,
};

/// Finds the table entry for a `tokenizer.ggml.pre` value, falling back to
/// `"default"` with a warning as llama.cpp does.
fn pre_tokenizer_spec(pre: Option<&str>) -> &'static PreTokenizerSpec {
    let find = |name: &str| {
        PRE_TOKENIZERS
            .iter()
            .find(|spec| spec.names.contains(&name))
    };
    if let Some(spec) = pre.and_then(find) {
        return spec;
    }
    tracing::warn!(
        pre = pre.unwrap_or("<missing>"),
        "unknown {} value; splitting text like llama.cpp's \"default\"",
        key::PRE
    );
    &DEFAULT_PRE_TOKENIZER
}

/// A tokenizer built from a GGUF file, with the special-token facts the
/// engine needs around it.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// The tokenizer itself; its decoder is what text streaming inspects.
    pub tokenizer: Tokenizer,
    /// The beginning-of-sequence token, when the vocabulary has one.
    pub bos_id: Option<u32>,
    /// The end-of-sequence token, when the vocabulary has one.
    pub eos_id: Option<u32>,
    /// Whether the model wants BOS in front of every prompt.
    pub add_bos: bool,
    /// The Jinja chat template from `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Every id that ends a turn: EOS, EOT/EOM from the metadata, and the
    /// vocabulary's end-of-turn tokens such as `<|im_end|>`, `<|eot_id|>` or
    /// `<|end|>`. Sorted, without duplicates.
    pub stop_ids: Vec<u32>,
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// # Errors
    ///
    /// [`EngineError::UnsupportedTokenizer`] for a `tokenizer.ggml.model`
    /// other than `"gpt2"` or `"llama"`; [`EngineError::Metadata`] when a
    /// needed entry is missing or has the wrong type;
    /// [`EngineError::Tokenizer`] when tokenizers rejects the vocabulary.
    pub fn from_gguf(content: &Content) -> Result<Self, EngineError> {
        let meta = Metadata(content);
        let model = meta.required_string(key::MODEL)?;
        let tokens = meta.string_array(key::TOKENS)?;
        let types = match meta.get(key::TOKEN_TYPE) {
            Some(value) => int_array(key::TOKEN_TYPE, value, tokens.len())?,
            None => vec![token_type::NORMAL; tokens.len()],
        };
        let (tokenizer, defaults) = match model {
            MODEL_GPT2 => build_byte_level_bpe(&meta, &tokens, &types)?,
            MODEL_LLAMA => build_sentencepiece_bpe(&meta, &tokens, &types)?,
            other => {
                return Err(EngineError::UnsupportedTokenizer {
                    model: other.to_owned(),
                })
            }
        };
        Self::assemble(tokenizer, &meta, defaults)
    }

    /// Loads a `tokenizer.json` instead of building the tokenizer from the
    /// GGUF vocabulary; BOS, EOS, `add_bos` and the chat template still come
    /// from the GGUF metadata when present.
    ///
    /// Without GGUF metadata for them, `bos_id` and `eos_id` are `None` and
    /// `add_bos` follows llama.cpp's default for the file's tokenizer type.
    ///
    /// # Errors
    ///
    /// [`EngineError::Tokenizer`] when the file cannot be read or parsed;
    /// [`EngineError::Metadata`] when a GGUF entry has the wrong type or an id
    /// outside the vocabulary.
    pub fn from_tokenizer_json(path: &Path, content: &Content) -> Result<Self, EngineError> {
        let tokenizer = Tokenizer::from_file(path).map_err(|source| EngineError::Tokenizer {
            context: format!("loading {}", path.display()),
            source,
        })?;
        let meta = Metadata(content);
        let defaults = match meta.optional_string(key::MODEL)? {
            Some(MODEL_LLAMA) => SpecialDefaults::SENTENCEPIECE,
            Some(MODEL_GPT2) => SpecialDefaults {
                add_bos: pre_tokenizer_spec(meta.optional_string(key::PRE)?).add_bos,
                ..SpecialDefaults::NONE
            },
            _ => SpecialDefaults::NONE,
        };
        Self::assemble(tokenizer, &meta, defaults)
    }

    /// Reads the special-token facts around a finished tokenizer.
    fn assemble(
        tokenizer: Tokenizer,
        meta: &Metadata<'_>,
        defaults: SpecialDefaults,
    ) -> Result<Self, EngineError> {
        let vocab_size = tokenizer.get_vocab_size(true);
        let known = |id: &u32| tokenizer.id_to_token(*id).is_some();
        // An id the file gives must exist; a default that does not is dropped.
        let special_id = |name: &str, default: Option<u32>| -> Result<Option<u32>, EngineError> {
            match meta.optional_u32(name)? {
                Some(id) if !known(&id) => Err(EngineError::Metadata {
                    key: name.to_owned(),
                    reason: format!("token id {id} is not in the vocabulary ({vocab_size} tokens)"),
                }),
                Some(id) => Ok(Some(id)),
                None => Ok(default.filter(known)),
            }
        };
        let bos_id = special_id(key::BOS_ID, defaults.bos_id)?;
        let eos_id = special_id(key::EOS_ID, defaults.eos_id)?;
        let eot_id = special_id(key::EOT_ID, None)?;
        let eom_id = special_id(key::EOM_ID, None)?;
        let add_bos = meta
            .optional_bool(key::ADD_BOS)?
            .unwrap_or(defaults.add_bos)
            && bos_id.is_some();
        let chat_template = meta.optional_string(key::CHAT_TEMPLATE)?.map(str::to_owned);

        let mut stop_ids: Vec<u32> = [eos_id, eot_id, eom_id]
            .into_iter()
            .flatten()
            .chain(
                END_OF_TURN_TOKENS
                    .iter()
                    .filter_map(|text| tokenizer.token_to_id(text)),
            )
            .collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();

        Ok(Self {
            tokenizer,
            bos_id,
            eos_id,
            add_bos,
            chat_template,
            stop_ids,
        })
    }

    /// Encodes `text` into ids. Special tokens written in the text, such as
    /// `<|im_start|>`, encode to their single id (llama.cpp's
    /// `parse_special = true`).
    ///
    /// With `add_bos`, BOS is put in front when the model wants it
    /// ([`Self::add_bos`]) and the text does not already start with it (chat
    /// templates often write the BOS token themselves).
    ///
    /// # Errors
    ///
    /// [`EngineError::Tokenizer`] when the tokenizer fails on the text.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, EngineError> {
        // `false`: no post-processor template; BOS is handled here.
        let encoding =
            self.tokenizer
                .encode_fast(text, false)
                .map_err(|source| EngineError::Tokenizer {
                    context: "encoding text".to_owned(),
                    source,
                })?;
        let ids = encoding.get_ids();
        let bos = self
            .bos_id
            .filter(|&bos| add_bos && self.add_bos && ids.first() != Some(&bos));
        Ok(bos.into_iter().chain(ids.iter().copied()).collect())
    }

    /// The text of one token as the tokenizer decodes it alone, special tokens
    /// included: e.g. `"<|im_start|>"` for a control token, `" the"` for
    /// GPT-2's `"Ġthe"`. `None` for an id outside the vocabulary.
    ///
    /// Chat templates take their `bos_token` and `eos_token` strings from here.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)?;
        self.tokenizer.decode(&[id], false).ok()
    }

    /// The longest token as stored in the vocabulary, in bytes: no token
    /// covers more text than that (decoders only shorten a token's string:
    /// `Ġ` and `▁` become one space, `<0x41>` one byte). So a text of `n`
    /// bytes is at least `n / longest_token_bytes()` tokens, which lets a
    /// server refuse a prompt that cannot fit before tokenizing it.
    pub fn longest_token_bytes(&self) -> usize {
        (0..self.tokenizer.get_vocab_size(true))
            .filter_map(|id| u32::try_from(id).ok())
            .filter_map(|id| self.tokenizer.id_to_token(id))
            .map(|token| token.len())
            .max()
            .unwrap_or(1)
            .max(1)
    }
}

/// Special-token facts llama.cpp assumes when the metadata leaves them out.
#[derive(Debug, Clone, Copy)]
struct SpecialDefaults {
    /// BOS id without `bos_token_id`.
    bos_id: Option<u32>,
    /// EOS id without `eos_token_id`.
    eos_id: Option<u32>,
    /// `add_bos` without `add_bos_token`.
    add_bos: bool,
}

impl SpecialDefaults {
    /// No special tokens assumed.
    const NONE: Self = Self {
        bos_id: None,
        eos_id: None,
        add_bos: false,
    };
    /// SentencePiece vocabularies: `<s>` = 1, `</s>` = 2, BOS wanted.
    const SENTENCEPIECE: Self = Self {
        bos_id: Some(SPM_DEFAULT_BOS_ID),
        eos_id: Some(SPM_DEFAULT_EOS_ID),
        add_bos: true,
    };
}

/// Builds a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`).
fn build_byte_level_bpe(
    meta: &Metadata<'_>,
    tokens: &[String],
    types: &[i64],
) -> Result<(Tokenizer, SpecialDefaults), EngineError> {
    let spec = pre_tokenizer_spec(meta.optional_string(key::PRE)?);
    let vocab = vocab_map(tokens);
    let merges = parse_merges(&meta.string_array(key::MERGES)?, &vocab)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|source| EngineError::Tokenizer {
            context: "building the BPE model".to_owned(),
            source,
        })?;

    let mut tokenizer = Tokenizer::new(bpe);
    let mut steps = Vec::with_capacity(spec.regexes.len() + 1);
    for regex in spec.regexes {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|source| EngineError::Tokenizer {
            context: format!("compiling the pre-tokenizer regex {regex:?}"),
            source,
        })?;
        steps.push(PreTokenizerWrapper::from(split));
    }
    // The regexes already split the text; ByteLevel only maps bytes to its
    // printable characters, with no prefix space (llama.cpp adds none).
    let byte_level = ByteLevel::new(false, true, false);
    steps.push(PreTokenizerWrapper::from(byte_level));
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(steps)));
    tokenizer.with_decoder(Some(DecoderWrapper::from(ByteLevel::default())));
    add_special_tokens(&mut tokenizer, tokens, types)?;

    let defaults = SpecialDefaults {
        add_bos: spec.add_bos,
        ..SpecialDefaults::NONE
    };
    Ok((tokenizer, defaults))
}

/// Builds a SentencePiece-style BPE tokenizer with byte fallback
/// (`tokenizer.ggml.model = "llama"`).
fn build_sentencepiece_bpe(
    meta: &Metadata<'_>,
    tokens: &[String],
    types: &[i64],
) -> Result<(Tokenizer, SpecialDefaults), EngineError> {
    let scores = match meta.get(key::SCORES) {
        Some(value) => float_array(key::SCORES, value, tokens.len())?,
        None => {
            return Err(EngineError::Metadata {
                key: key::SCORES.to_owned(),
                reason: "missing; a \"llama\" tokenizer needs token scores".to_owned(),
            })
        }
    };
    let vocab = vocab_map(tokens);
    let merges = merges_from_scores(tokens, &scores, types, &vocab);
    let unknown_id = meta
        .optional_u32(key::UNKNOWN_ID)?
        .unwrap_or(SPM_DEFAULT_UNKNOWN_ID);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unknown) = usize::try_from(unknown_id)
        .ok()
        .and_then(|id| tokens.get(id))
    {
        builder = builder.unk_token(unknown.clone());
    }
    let bpe = builder.build().map_err(|source| EngineError::Tokenizer {
        context: "building the SentencePiece BPE model".to_owned(),
        source,
    })?;

    let add_space_prefix = meta.optional_bool(key::ADD_SPACE_PREFIX)?.unwrap_or(true);
    let spaces = Replace::new(" ", SPM_SPACE).map_err(|source| EngineError::Tokenizer {
        context: "building the space normalizer".to_owned(),
        source,
    })?;
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(NormalizerWrapper::from(Prepend::new(SPM_SPACE.to_owned())));
    }
    normalizers.push(NormalizerWrapper::from(spaces));

    let to_space = Replace::new(SPM_SPACE, " ").map_err(|source| EngineError::Tokenizer {
        context: "building the space decoder".to_owned(),
        source,
    })?;
    let mut decoders = vec![
        DecoderWrapper::from(to_space),
        DecoderWrapper::from(ByteFallback::new()),
        DecoderWrapper::from(Fuse::new()),
    ];
    // Strip only the space the normalizer prepended: without the prefix, a
    // leading space in the decoded text is the user's own.
    if add_space_prefix {
        decoders.push(DecoderWrapper::from(Strip::new(' ', SPM_PREFIX_SPACES, 0)));
    }

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|source| EngineError::Tokenizer {
            context: "setting the normalizer".to_owned(),
            source,
        })?;
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    add_special_tokens(&mut tokenizer, tokens, types)?;
    Ok((tokenizer, SpecialDefaults::SENTENCEPIECE))
}

/// Maps token text to id. A text listed twice keeps its last id, as in
/// llama.cpp's `token_to_id`.
fn vocab_map(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .zip(0u32..)
        .map(|(token, id)| (token.clone(), id))
        .collect()
}

/// Parses `"left right"` merges, split at the first space after the first
/// character as llama.cpp does. Merges naming tokens missing from the
/// vocabulary can never apply; they are dropped with a warning.
fn parse_merges(merges: &[String], vocab: &Vocab) -> Result<Merges, EngineError> {
    let mut parsed = Vec::with_capacity(merges.len());
    let mut dropped = 0usize;
    for (index, merge) in merges.iter().enumerate() {
        let split = merge
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| at)
            .ok_or_else(|| EngineError::Metadata {
                key: key::MERGES.to_owned(),
                reason: format!("merge {index} ({merge:?}) is not two tokens separated by a space"),
            })?;
        let (left, right) = (&merge[..split], &merge[split + ' '.len_utf8()..]);
        let known = |text: &str| vocab.contains_key(text);
        if known(left) && known(right) && known(&format!("{left}{right}")) {
            parsed.push((left.to_owned(), right.to_owned()));
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "BPE merges name tokens missing from the vocabulary"
        );
    }
    Ok(parsed)
}

/// Rebuilds BPE merges from SentencePiece scores, as transformers' GGUF
/// converter does: every split of a token into two known tokens is a merge,
/// ranked by the merged token's score (highest first), then by the longer
/// left and right parts; ties keep vocabulary order. llama.cpp's SentencePiece
/// tokenizer likewise joins the adjacent pair whose result scores highest.
fn merges_from_scores(tokens: &[String], scores: &[f32], types: &[i64], vocab: &Vocab) -> Merges {
    struct Candidate<'a> {
        left: &'a str,
        right: &'a str,
        score: f32,
        left_chars: usize,
        right_chars: usize,
    }
    // Only ordinary text is built by merging; control, byte and unused
    // tokens never come out of the merges.
    let mergeable = |kind: i64| {
        !matches!(
            kind,
            token_type::CONTROL | token_type::BYTE | token_type::UNUSED | token_type::UNKNOWN
        )
    };
    let mut candidates = Vec::new();
    for ((piece, &score), &kind) in tokens.iter().zip(scores).zip(types) {
        if !mergeable(kind) {
            continue;
        }
        let mut local: Vec<(u32, u32, Candidate<'_>)> = Vec::new();
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&left_id), Some(&right_id)) = (vocab.get(left), vocab.get(right)) {
                let candidate = Candidate {
                    left,
                    right,
                    score,
                    left_chars: left.chars().count(),
                    right_chars: right.chars().count(),
                };
                local.push((left_id, right_id, candidate));
            }
        }
        local.sort_by_key(|&(left_id, right_id, _)| (left_id, right_id));
        candidates.extend(local.into_iter().map(|(_, _, candidate)| candidate));
    }
    // A stable sort, descending, like Python's `sorted(..., reverse=True)`.
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    candidates
        .into_iter()
        .map(|c| (c.left.to_owned(), c.right.to_owned()))
        .collect()
}

/// Registers control, unknown and user-defined tokens as added tokens, so
/// that their text inside a prompt encodes to their single id. Control and
/// unknown tokens are marked special (dropped when decoding with
/// `skip_special_tokens`); user-defined ones stand for literal text.
fn add_special_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[String],
    types: &[i64],
) -> Result<(), EngineError> {
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter_map(|(text, &kind)| {
            let special = match kind {
                token_type::CONTROL | token_type::UNKNOWN => true,
                token_type::USER_DEFINED => false,
                _ => return None,
            };
            // llama.cpp matches these against the raw text, before any
            // normalization.
            Some(AddedToken::from(text.clone(), special).normalized(false))
        })
        .collect();
    tokenizer
        .add_tokens(added)
        .map_err(|source| EngineError::Tokenizer {
            context: "adding special tokens".to_owned(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file;
    use candle_core::quantized::gguf_file::Value;
    use std::io::Cursor;

    /// Writes `metadata` as a GGUF file in memory and reads it back.
    fn gguf(metadata: &[(&str, Value)]) -> Content {
        let entries: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let mut file = Cursor::new(Vec::new());
        gguf_file::write(&mut file, &entries, &[]).expect("writing a GGUF file to memory");
        file.set_position(0);
        Content::read(&mut file).expect("reading the GGUF file back")
    }

    fn strings(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::String((*s).to_owned()))
                .collect(),
        )
    }

    /// A tiny SentencePiece vocabulary: `(text, score, type)`.
    const SPM_VOCAB: &[(&str, f32, i32)] = &[
        ("<unk>", 0.0, 2),
        ("<s>", 0.0, 3),
        ("</s>", 0.0, 3),
        ("<0x0A>", 0.0, 6),
        ("<0x21>", 0.0, 6),
        ("\u{2581}", -1.0, 1),
        ("H", -2.0, 1),
        ("e", -2.0, 1),
        ("l", -2.0, 1),
        ("o", -2.0, 1),
        ("w", -2.0, 1),
        ("r", -2.0, 1),
        ("d", -2.0, 1),
        ("ll", -3.0, 1),
        ("He", -4.0, 1),
        ("llo", -5.0, 1),
        ("Hello", -6.0, 1),
        ("\u{2581}Hello", -7.0, 1),
        ("or", -8.0, 1),
        ("wor", -9.0, 1),
        ("ld", -10.0, 1),
        ("world", -11.0, 1),
        ("\u{2581}world", -12.0, 1),
    ];

    fn spm_metadata() -> Vec<(&'static str, Value)> {
        vec![
            (key::MODEL, Value::String(MODEL_LLAMA.to_owned())),
            (
                key::TOKENS,
                Value::Array(
                    SPM_VOCAB
                        .iter()
                        .map(|(t, _, _)| Value::String((*t).to_owned()))
                        .collect(),
                ),
            ),
            (
                key::SCORES,
                Value::Array(SPM_VOCAB.iter().map(|(_, s, _)| Value::F32(*s)).collect()),
            ),
            (
                key::TOKEN_TYPE,
                Value::Array(SPM_VOCAB.iter().map(|(_, _, t)| Value::I32(*t)).collect()),
            ),
            (key::BOS_ID, Value::U32(1)),
            (key::EOS_ID, Value::U32(2)),
        ]
    }

    fn pieces(tokenizer: &GgufTokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                tokenizer
                    .tokenizer
                    .id_to_token(id)
                    .expect("id in vocabulary")
            })
            .collect()
    }

    #[test]
    fn sentencepiece_encodes_words_with_space_prefix() {
        let tokenizer = GgufTokenizer::from_gguf(&gguf(&spm_metadata())).expect("tokenizer");
        let ids = tokenizer.encode("Hello world", false).expect("encode");
        assert_eq!(pieces(&tokenizer, &ids), ["\u{2581}Hello", "\u{2581}world"]);
        let text = tokenizer.tokenizer.decode(&ids, false).expect("decode");
        assert_eq!(text, "Hello world");
    }

    #[test]
    fn sentencepiece_adds_bos_by_default() {
        let tokenizer = GgufTokenizer::from_gguf(&gguf(&spm_metadata())).expect("tokenizer");
        assert!(tokenizer.add_bos);
        let ids = tokenizer.encode("Hello", true).expect("encode");
        assert_eq!(pieces(&tokenizer, &ids), ["<s>", "\u{2581}Hello"]);
        // A prompt that already starts with BOS does not get a second one.
        let ids = tokenizer.encode("<s>Hello", true).expect("encode");
        assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 1);
        assert_eq!(tokenizer.stop_ids, [2]);
        assert_eq!(tokenizer.token_text(1).as_deref(), Some("<s>"));
        assert_eq!(tokenizer.token_text(1_000), None);
    }

    #[test]
    fn sentencepiece_falls_back_to_bytes() {
        let tokenizer = GgufTokenizer::from_gguf(&gguf(&spm_metadata())).expect("tokenizer");
        let ids = tokenizer.encode("Hello\nworld!", false).expect("encode");
        assert_eq!(
            pieces(&tokenizer, &ids),
            ["\u{2581}Hello", "<0x0A>", "world", "<0x21>"]
        );
        let text = tokenizer.tokenizer.decode(&ids, false).expect("decode");
        assert_eq!(text, "Hello\nworld!");
    }

    #[test]
    fn sentencepiece_decoder_is_the_streamable_sequence() {
        let tokenizer = GgufTokenizer::from_gguf(&gguf(&spm_metadata())).expect("tokenizer");
        let decoder = serde_json::to_value(tokenizer.tokenizer.get_decoder()).expect("json");
        let names: Vec<&str> = decoder["decoders"]
            .as_array()
            .expect("a sequence")
            .iter()
            .filter_map(|d| d["type"].as_str())
            .collect();
        assert_eq!(names, ["Replace", "ByteFallback", "Fuse", "Strip"]);
    }

    #[test]
    fn tokenizer_json_keeps_gguf_special_tokens() {
        let built = GgufTokenizer::from_gguf(&gguf(&spm_metadata())).expect("tokenizer");
        let path = std::env::temp_dir().join(format!(
            "textstream-tokenizer-test-{}.json",
            std::process::id()
        ));
        built
            .tokenizer
            .save(&path, false)
            .expect("save tokenizer.json");
        let mut metadata = spm_metadata();
        metadata.retain(|(k, _)| *k != key::EOS_ID);
        metadata.push((key::EOS_ID, Value::U32(0)));
        metadata.push((key::ADD_BOS, Value::Bool(false)));
        metadata.push((key::CHAT_TEMPLATE, Value::String("{{ x }}".to_owned())));
        let loaded = GgufTokenizer::from_tokenizer_json(&path, &gguf(&metadata));
        let removed = std::fs::remove_file(&path);
        let loaded = loaded.expect("tokenizer.json loads");
        removed.expect("remove the temporary file");

        assert_eq!(loaded.bos_id, Some(1));
        assert_eq!(loaded.eos_id, Some(0));
        assert!(!loaded.add_bos);
        assert_eq!(loaded.chat_template.as_deref(), Some("{{ x }}"));
        assert_eq!(
            loaded.encode("Hello world", true).expect("encode"),
            built.encode("Hello world", false).expect("encode")
        );
    }

    #[test]
    fn special_id_outside_vocabulary_is_an_error() {
        let mut metadata = spm_metadata();
        metadata.push((key::EOT_ID, Value::U32(10_000)));
        let err = GgufTokenizer::from_gguf(&gguf(&metadata)).expect_err("id 10000 does not exist");
        assert!(
            matches!(&err, EngineError::Metadata { key, .. } if key == key::EOT_ID),
            "{err}"
        );
    }

    #[test]
    fn unsupported_model_is_an_error() {
        let content = gguf(&[
            (key::MODEL, Value::String("bert".to_owned())),
            (key::TOKENS, strings(&["a"])),
        ]);
        let err = GgufTokenizer::from_gguf(&content).expect_err("bert is not supported");
        assert!(
            matches!(&err, EngineError::UnsupportedTokenizer { model } if model == "bert"),
            "{err}"
        );
    }

    #[test]
    fn missing_merges_is_an_error() {
        let content = gguf(&[
            (key::MODEL, Value::String(MODEL_GPT2.to_owned())),
            (key::PRE, Value::String("gpt-2".to_owned())),
            (key::TOKENS, strings(&["a", "b"])),
        ]);
        let err = GgufTokenizer::from_gguf(&content).expect_err("merges are needed");
        assert!(
            matches!(&err, EngineError::Metadata { key, .. } if key == key::MERGES),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_an_error() {
        let content = gguf(&[
            (key::MODEL, Value::String(MODEL_GPT2.to_owned())),
            (key::TOKENS, Value::Array(vec![Value::U32(1)])),
        ]);
        let err = GgufTokenizer::from_gguf(&content).expect_err("tokens must be strings");
        assert!(err.to_string().contains(key::TOKENS), "{err}");
    }

    #[test]
    fn byte_level_bpe_from_tiny_vocabulary() {
        // "Ġ" is GPT-2's stand-in for the space byte.
        let content = gguf(&[
            (key::MODEL, Value::String(MODEL_GPT2.to_owned())),
            (key::PRE, Value::String("smollm".to_owned())),
            (
                key::TOKENS,
                strings(&["<|im_end|>", "a", "b", "Ġ", "1", "2", "ab", "Ġab"]),
            ),
            (
                key::TOKEN_TYPE,
                Value::Array([3, 1, 1, 1, 1, 1, 1, 1].map(Value::I32).to_vec()),
            ),
            (key::MERGES, strings(&["a b", "Ġ ab"])),
            (key::EOS_ID, Value::U32(0)),
        ]);
        let tokenizer = GgufTokenizer::from_gguf(&content).expect("tokenizer");
        let ids = tokenizer.encode("ab ab12<|im_end|>", true).expect("encode");
        assert_eq!(ids, [6, 7, 4, 5, 0]);
        assert_eq!(
            tokenizer.tokenizer.decode(&ids, false).expect("decode"),
            "ab ab12<|im_end|>"
        );
        assert!(!tokenizer.add_bos);
        assert_eq!(tokenizer.stop_ids, [0]);
    }

    #[test]
    fn unknown_pre_falls_back_to_default() {
        assert!(pre_tokenizer_spec(Some("no-such-model"))
            .names
            .contains(&"default"));
        assert!(pre_tokenizer_spec(None).names.contains(&"default"));
        assert!(pre_tokenizer_spec(Some("llama-bpe")).ignore_merges);
    }

    #[test]
    fn every_table_regex_compiles() {
        for spec in PRE_TOKENIZERS {
            for regex in spec.regexes {
                Split::new(
                    SplitPattern::Regex((*regex).to_owned()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .unwrap_or_else(|e| panic!("{:?}: {regex}: {e}", spec.names));
            }
        }
    }
}

//! Turning ids back into text: the [`TokenDecoder`] trait any tokenizer can
//! implement, and [`Detokenizer`], the shared handle the streamers hold.
//!
//! The streamers need two things from a tokenizer: a way to decode a list of
//! ids (the reference the stream must reproduce exactly), and, when the
//! tokenizer's decoder is a plain concatenation of per-token bytes, the table of
//! those bytes. With the table the incremental decoder does O(1) work per token
//! and never calls the tokenizer's decode pipeline; without it, it falls back to
//! decoding a small window of recent ids.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::error::DecodeError;

/// Decodes token ids into text. Implemented for [`tokenizers::Tokenizer`];
/// implement it to stream from any other tokenizer.
pub trait TokenDecoder: Send + Sync {
    /// Decodes `ids` in one go. The streams reproduce this text exactly.
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DecodeError>;

    /// Describes the decoder as a concatenation of per-token bytes, if it is one.
    ///
    /// By default a decoder is not, and the streams decode a window of recent ids
    /// per step.
    fn layout(&self) -> Layout {
        Layout::Windowed
    }
}

/// How a decoder joins tokens, which decides the incremental decoder's path.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Layout {
    /// Output = `String::from_utf8_lossy(concat(bytes(id)))` (byte-level BPE,
    /// as in GPT-2, Llama 3, Qwen 2, SmolLM2).
    ByteLevel(Arc<TokenTable>),
    /// SentencePiece with byte fallback (as in Llama 2): tokens are their bytes;
    /// each run of `<0xNN>` byte tokens is its UTF-8 text if valid, else one
    /// U+FFFD per byte; and the first `strip_leading_spaces` spaces of the whole
    /// text are removed.
    SentencePiece {
        /// Per-token bytes and kinds.
        table: Arc<TokenTable>,
        /// How many leading spaces the decoder strips (`Strip(' ', n, 0)`).
        strip_leading_spaces: usize,
    },
    /// Not a concatenation: decode a window of recent ids at every step.
    Windowed,
}

/// What a token contributes to the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An ordinary token: its bytes.
    Normal,
    /// A special token: its bytes, or nothing when special tokens are skipped.
    Special,
    /// A SentencePiece byte-fallback token `<0xNN>`; its one byte is in the table.
    Byte,
    /// An id the tokenizer does not know: decodes to nothing.
    Missing,
}

/// Each token's bytes, computed once per tokenizer.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    /// `bytes[offsets[id]..offsets[id + 1]]` are the bytes of `id`.
    offsets: Vec<u32>,
    bytes: Vec<u8>,
    kinds: Vec<TokenKind>,
}

impl TokenTable {
    /// Builds a table from `(bytes, kind)` for ids `0..n`.
    pub fn from_tokens<I, B>(tokens: I) -> TokenTable
    where
        I: IntoIterator<Item = (B, TokenKind)>,
        B: AsRef<[u8]>,
    {
        let mut table = TokenTable {
            offsets: vec![0],
            ..TokenTable::default()
        };
        for (bytes, kind) in tokens {
            table.bytes.extend_from_slice(bytes.as_ref());
            table.offsets.push(table.bytes.len() as u32);
            table.kinds.push(kind);
        }
        table
    }

    /// The bytes and kind of `id`; unknown ids are [`TokenKind::Missing`].
    #[inline]
    pub fn get(&self, id: u32) -> (&[u8], TokenKind) {
        let i = id as usize;
        match self.kinds.get(i) {
            Some(&kind) => {
                let (start, end) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
                (&self.bytes[start..end], kind)
            }
            None => (&[], TokenKind::Missing),
        }
    }

    /// Number of ids in the table.
    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    /// Whether the table has no ids.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

/// A cheap, cloneable handle to a tokenizer, with its [`Layout`] computed once
/// and shared by every stream made from it.
#[derive(Clone)]
pub struct Detokenizer {
    decoder: Arc<dyn TokenDecoder>,
    layout: Arc<OnceLock<Layout>>,
}

impl std::fmt::Debug for Detokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detokenizer").finish_non_exhaustive()
    }
}

impl Detokenizer {
    /// Wraps any [`TokenDecoder`].
    pub fn new(decoder: impl TokenDecoder + 'static) -> Detokenizer {
        Detokenizer {
            decoder: Arc::new(decoder),
            layout: Arc::new(OnceLock::new()),
        }
    }

    /// Wraps a decoder but always uses the windowed path, even when the
    /// decoder is concatenative (for tests and comparisons).
    pub fn windowed(decoder: impl TokenDecoder + 'static) -> Detokenizer {
        let layout = OnceLock::new();
        let _ = layout.set(Layout::Windowed);
        Detokenizer {
            decoder: Arc::new(decoder),
            layout: Arc::new(layout),
        }
    }

    /// Decodes `ids` in one go, with the tokenizer's own pipeline.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DecodeError> {
        self.decoder.decode(ids, skip_special_tokens)
    }

    /// The decoder's layout, computed on first use.
    pub fn layout(&self) -> &Layout {
        self.layout.get_or_init(|| self.decoder.layout())
    }
}

impl From<tokenizers::Tokenizer> for Detokenizer {
    fn from(tokenizer: tokenizers::Tokenizer) -> Detokenizer {
        Detokenizer::new(tokenizer)
    }
}

impl From<Arc<tokenizers::Tokenizer>> for Detokenizer {
    fn from(tokenizer: Arc<tokenizers::Tokenizer>) -> Detokenizer {
        Detokenizer::new(SharedTokenizer(tokenizer))
    }
}

/// A tokenizer shared with other owners (the engine keeps one for encoding).
struct SharedTokenizer(Arc<tokenizers::Tokenizer>);

impl TokenDecoder for SharedTokenizer {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DecodeError> {
        self.0.decode(ids, skip_special_tokens)
    }
    fn layout(&self) -> Layout {
        self.0.layout()
    }
}

impl TokenDecoder for tokenizers::Tokenizer {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DecodeError> {
        std::ops::Deref::deref(self)
            .decode(ids, skip_special_tokens)
            .map_err(|e| DecodeError(e.to_string()))
    }

    fn layout(&self) -> Layout {
        hf_layout(self).unwrap_or(Layout::Windowed)
    }
}

/// Recognises the decoders whose output is a concatenation of per-token bytes.
///
/// The decoder is inspected through its serialized form, which names each
/// component and its parameters and stays stable across tokenizers versions.
fn hf_layout(tokenizer: &tokenizers::Tokenizer) -> Option<Layout> {
    let decoder = serde_json::to_value(tokenizer.get_decoder()?).ok()?;
    match decoder["type"].as_str()? {
        "ByteLevel" => Some(Layout::ByteLevel(Arc::new(table(
            tokenizer,
            byte_level_bytes,
        )))),
        "Sequence" => {
            let parts = decoder["decoders"].as_array()?;
            let names: Vec<&str> = parts.iter().filter_map(|d| d["type"].as_str()).collect();
            let replace_ok = |d: &serde_json::Value| {
                d["pattern"]["String"].as_str() == Some("\u{2581}") && d["content"] == " "
            };
            let strip = match names.as_slice() {
                ["Replace", "ByteFallback", "Fuse"] if replace_ok(&parts[0]) => 0,
                ["Replace", "ByteFallback", "Fuse", "Strip"]
                    if replace_ok(&parts[0])
                        && parts[3]["content"] == " "
                        && parts[3]["stop"] == 0 =>
                {
                    parts[3]["start"].as_u64()? as usize
                }
                _ => return None,
            };
            Some(Layout::SentencePiece {
                table: Arc::new(table(tokenizer, sentencepiece_bytes)),
                strip_leading_spaces: strip,
            })
        }
        _ => None,
    }
}

/// Builds the table of every id's bytes with `token_bytes`, which maps a
/// token's string to its bytes and tells whether it is a byte-fallback token.
fn table(
    tokenizer: &tokenizers::Tokenizer,
    token_bytes: fn(&str) -> (Vec<u8>, bool),
) -> TokenTable {
    let added = tokenizer.get_added_vocabulary();
    let vocab = tokenizer.get_vocab(true);
    let size = vocab.values().max().map_or(0, |&max| max as usize + 1);
    TokenTable::from_tokens((0..size as u32).map(|id| match tokenizer.id_to_token(id) {
        None => (Vec::new(), TokenKind::Missing),
        Some(token) => {
            let (bytes, is_byte) = token_bytes(&token);
            let kind = if added.is_special_token(&token) {
                TokenKind::Special
            } else if is_byte {
                TokenKind::Byte
            } else {
                TokenKind::Normal
            };
            (bytes, kind)
        }
    }))
}

/// GPT-2's byte-to-character map, the one byte-level vocabularies are
/// written in: printable bytes stand for themselves, the others are shifted
/// past 255 in order, so that every byte has a visible character.
///
/// ```
/// use textstream::byte_level_char;
///
/// assert_eq!(byte_level_char(b'a'), 'a');
/// assert_eq!(byte_level_char(b' '), '\u{120}'); // Ġ, as in "Ġthe"
/// assert_eq!(byte_level_char(b'\n'), '\u{10a}'); // Ċ
/// ```
pub fn byte_level_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// [`byte_level_char`] inverted: which byte each character stands for.
fn char_to_byte() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| (0..=255u8).map(|b| (byte_level_char(b), b)).collect())
}

/// A byte-level token's bytes: each character mapped back to its byte, or the
/// token's own UTF-8 when a character has no byte (as tokenizers' decoder does).
fn byte_level_bytes(token: &str) -> (Vec<u8>, bool) {
    let map = char_to_byte();
    let bytes = token
        .chars()
        .map(|c| map.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec());
    (bytes, false)
}

/// A SentencePiece token's bytes: `▁` becomes a space, and `<0xNN>` is one byte.
fn sentencepiece_bytes(token: &str) -> (Vec<u8>, bool) {
    let text = token.replace('\u{2581}', " ");
    if text.len() == 6 && text.starts_with("<0x") && text.ends_with('>') {
        if let Ok(byte) = u8::from_str_radix(&text[3..5], 16) {
            return (vec![byte], true);
        }
    }
    (text.into_bytes(), false)
}

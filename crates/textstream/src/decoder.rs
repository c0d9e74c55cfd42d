//! The incremental decoder: token ids in, final text out, O(1) per token.
//!
//! # Why decoding one id at a time is wrong
//!
//! A token is not a piece of text. In byte-level BPE a token is a few bytes, and
//! a character such as `中` or `👍` may be split over two or three tokens; decoding
//! each alone gives U+FFFD replacement characters. SentencePiece decoders strip
//! the leading space of the whole text, so the first token decodes differently
//! alone than in context. transformers' streamers avoid both by re-decoding the
//! whole sequence at every step, which costs O(n) per token and O(n²) in all.
//!
//! [`IncrementalDecoder`] emits only text that can no longer change, and its
//! concatenation equals [`Detokenizer::decode`] of all ids, whatever the split:
//!
//! - byte-level and SentencePiece decoders are concatenations of per-token
//!   bytes, so it appends the token's precomputed bytes and emits the longest
//!   complete UTF-8 prefix (byte-fallback runs wait until the run closes, since
//!   an invalid run decodes to one U+FFFD per byte);
//! - any other decoder is decoded over a small window of recent ids (the
//!   prefix/read offsets of text-generation-inference), emitting the difference
//!   once it no longer ends in U+FFFD.

use std::sync::Arc;

use crate::detokenizer::{Detokenizer, Layout, TokenKind, TokenTable};
use crate::error::DecodeError;

/// What the byte-level path emits for an invalid UTF-8 sequence.
const REPLACEMENT: char = char::REPLACEMENT_CHARACTER;

/// Decodes a growing sequence of ids into text, one step at a time.
///
/// ```
/// # use textstream::{Detokenizer, IncrementalDecoder, TokenDecoder, DecodeError};
/// // A toy tokenizer whose tokens are single bytes: "中" is three tokens.
/// struct Bytes;
/// impl TokenDecoder for Bytes {
///     fn decode(&self, ids: &[u32], _: bool) -> Result<String, DecodeError> {
///         let bytes: Vec<u8> = ids.iter().map(|&id| id as u8).collect();
///         Ok(String::from_utf8_lossy(&bytes).into_owned())
///     }
/// }
/// let mut decoder = IncrementalDecoder::new(Detokenizer::new(Bytes), false);
/// let mut text = String::new();
/// decoder.push(0xE4, &mut text)?;
/// decoder.push(0xB8, &mut text)?;
/// assert_eq!(text, ""); // not enough bytes yet: nothing, not "�"
/// decoder.push(0xAD, &mut text)?;
/// assert_eq!(text, "中");
/// # Ok::<(), DecodeError>(())
/// ```
#[derive(Debug)]
pub struct IncrementalDecoder {
    skip_special_tokens: bool,
    path: DecodePath,
}

#[derive(Debug)]
enum DecodePath {
    /// Byte-level: bytes not yet emitted because they end in an incomplete
    /// UTF-8 sequence.
    ByteLevel {
        table: Arc<TokenTable>,
        pending: Vec<u8>,
    },
    /// SentencePiece with byte fallback: the open run of byte tokens, and how
    /// many leading spaces of the whole text are still to strip.
    SentencePiece {
        table: Arc<TokenTable>,
        run: Vec<u8>,
        strip_left: usize,
    },
    /// Any other decoder: ids from `prefix` on; `read` is the end of the part
    /// already emitted.
    Windowed {
        detokenizer: Detokenizer,
        ids: Vec<u32>,
        prefix: usize,
        read: usize,
    },
}

impl IncrementalDecoder {
    /// A decoder over `detokenizer`, skipping special tokens if asked.
    pub fn new(detokenizer: Detokenizer, skip_special_tokens: bool) -> IncrementalDecoder {
        let path = match detokenizer.layout() {
            Layout::ByteLevel(table) => DecodePath::ByteLevel {
                table: Arc::clone(table),
                pending: Vec::new(),
            },
            Layout::SentencePiece {
                table,
                strip_leading_spaces,
            } => DecodePath::SentencePiece {
                table: Arc::clone(table),
                run: Vec::new(),
                strip_left: *strip_leading_spaces,
            },
            Layout::Windowed => DecodePath::Windowed {
                detokenizer,
                ids: Vec::new(),
                prefix: 0,
                read: 0,
            },
        };
        IncrementalDecoder {
            skip_special_tokens,
            path,
        }
    }

    /// Whether this decoder uses the per-token byte table (O(1) per token)
    /// rather than windowed decoding.
    pub fn is_concatenative(&self) -> bool {
        !matches!(self.path, DecodePath::Windowed { .. })
    }

    /// Adds one id and appends the text that became final to `out`.
    pub fn push(&mut self, id: u32, out: &mut String) -> Result<(), DecodeError> {
        let skip = self.skip_special_tokens;
        match &mut self.path {
            DecodePath::ByteLevel { table, pending } => {
                let (bytes, kind) = table.get(id);
                if kind == TokenKind::Missing || (skip && kind == TokenKind::Special) {
                    return Ok(());
                }
                if pending.is_empty() {
                    // The common case: a token that is whole UTF-8 on its own.
                    match std::str::from_utf8(bytes) {
                        Ok(text) => out.push_str(text),
                        Err(_) => {
                            pending.extend_from_slice(bytes);
                            drain_utf8(pending, out, false);
                        }
                    }
                } else {
                    pending.extend_from_slice(bytes);
                    drain_utf8(pending, out, false);
                }
            }
            DecodePath::SentencePiece {
                table,
                run,
                strip_left,
            } => {
                let (bytes, kind) = table.get(id);
                match kind {
                    TokenKind::Missing => {}
                    TokenKind::Special if skip => {}
                    TokenKind::Byte => run.extend_from_slice(bytes),
                    TokenKind::Normal | TokenKind::Special => {
                        close_run(run, strip_left, out);
                        let text = std::str::from_utf8(bytes)
                            .map_err(|_| DecodeError(format!("token {id} is not UTF-8")))?;
                        push_stripped(text, strip_left, out);
                    }
                }
            }
            DecodePath::Windowed {
                detokenizer,
                ids,
                prefix,
                read,
            } => {
                ids.push(id);
                let before = detokenizer.decode(&ids[*prefix..*read], skip)?;
                let now = detokenizer.decode(&ids[*prefix..], skip)?;
                if now.len() > before.len() && !now.ends_with(REPLACEMENT) {
                    if let Some(delta) = now.get(before.len()..) {
                        out.push_str(delta);
                        // Keep only the ids the next window needs.
                        ids.drain(..*read);
                        *prefix = 0;
                        *read = ids.len();
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds several ids; see [`push`](Self::push).
    pub fn push_all(&mut self, ids: &[u32], out: &mut String) -> Result<(), DecodeError> {
        ids.iter().try_for_each(|&id| self.push(id, out))
    }

    /// Ends the sequence: appends whatever text was held back (incomplete
    /// UTF-8 becomes U+FFFD, exactly as a one-shot decode would give).
    pub fn flush(&mut self, out: &mut String) -> Result<(), DecodeError> {
        let skip = self.skip_special_tokens;
        match &mut self.path {
            DecodePath::ByteLevel { pending, .. } => drain_utf8(pending, out, true),
            DecodePath::SentencePiece {
                run, strip_left, ..
            } => close_run(run, strip_left, out),
            DecodePath::Windowed {
                detokenizer,
                ids,
                prefix,
                read,
            } => {
                if *read < ids.len() {
                    let before = detokenizer.decode(&ids[*prefix..*read], skip)?;
                    let now = detokenizer.decode(&ids[*prefix..], skip)?;
                    if let Some(delta) = now.get(before.len()..) {
                        out.push_str(delta);
                    }
                }
                ids.clear();
                *prefix = 0;
                *read = 0;
            }
        }
        Ok(())
    }
}

/// Moves the complete UTF-8 prefix of `pending` to `out`, an invalid sequence
/// as one U+FFFD (as `String::from_utf8_lossy` does). An incomplete sequence at
/// the end stays in `pending` unless `at_end`, when it too becomes U+FFFD.
fn drain_utf8(pending: &mut Vec<u8>, out: &mut String, at_end: bool) {
    let mut start = 0;
    while start < pending.len() {
        match std::str::from_utf8(&pending[start..]) {
            Ok(text) => {
                out.push_str(text);
                start = pending.len();
            }
            Err(error) => {
                let valid = start + error.valid_up_to();
                out.push_str(std::str::from_utf8(&pending[start..valid]).unwrap_or_default());
                match error.error_len() {
                    Some(invalid) => {
                        out.push(REPLACEMENT);
                        start = valid + invalid;
                    }
                    None if at_end => {
                        out.push(REPLACEMENT);
                        start = pending.len();
                    }
                    None => {
                        start = valid;
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..start);
}

/// Emits a closed run of byte-fallback tokens: its text if it is valid UTF-8,
/// else one U+FFFD per byte (as tokenizers' `ByteFallback` decoder does).
fn close_run(run: &mut Vec<u8>, strip_left: &mut usize, out: &mut String) {
    if run.is_empty() {
        return;
    }
    match std::str::from_utf8(run) {
        Ok(text) => push_stripped(text, strip_left, out),
        Err(_) => {
            let replaced: String = std::iter::repeat_n(REPLACEMENT, run.len()).collect();
            push_stripped(&replaced, strip_left, out);
        }
    }
    run.clear();
}

/// Appends `text`, first removing up to `strip_left` spaces from the start of
/// the whole output (SentencePiece's `Strip(' ', n, 0)` decoder).
fn push_stripped(mut text: &str, strip_left: &mut usize, out: &mut String) {
    while *strip_left > 0 {
        match text.strip_prefix(' ') {
            Some(rest) => {
                text = rest;
                *strip_left -= 1;
            }
            None if text.is_empty() => return,
            None => *strip_left = 0,
        }
    }
    out.push_str(text);
}

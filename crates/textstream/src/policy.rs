//! When to release final text to the consumer: at once, or at word boundaries.

/// How eagerly a stream releases text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// Release text as soon as it can no longer change (the default). Scripts
    /// without spaces (Thai, Japanese) stream as they are produced.
    #[default]
    Eager,
    /// transformers-compatible: release up to the last whitespace, or
    /// everything when the text ends in whitespace or a CJK ideograph.
    Words,
}

/// Holds text back until a word boundary ([`Policy::Words`]).
#[derive(Debug, Clone, Default)]
pub struct WordBuffer {
    held: String,
}

impl WordBuffer {
    /// Adds `text`; appends to `out` everything up to the last boundary.
    pub fn feed(&mut self, text: &str, out: &mut String) {
        // Everything held is inside one word (no whitespace), so only the new
        // text can hold a boundary: each byte is looked at once.
        let already = self.held.len();
        self.held.push_str(text);
        let Some(last) = text.chars().next_back() else {
            return;
        };
        let release = if last.is_whitespace() || is_cjk(last) {
            self.held.len()
        } else {
            text.char_indices()
                .rev()
                .find(|(_, c)| c.is_whitespace())
                .map_or(0, |(at, c)| already + at + c.len_utf8())
        };
        out.push_str(&self.held[..release]);
        self.held.drain(..release);
    }

    /// Releases everything held (the stream ended).
    pub fn flush(&mut self, out: &mut String) {
        out.push_str(&self.held);
        self.held.clear();
    }
}

/// CJK ideographs, the ranges transformers' `_is_chinese_char` uses.
fn is_cjk(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

//! The text pipeline every streamer shares: ids → incremental decoder → stop
//! strings → release policy → text for the consumer.

use crate::decoder::IncrementalDecoder;
use crate::detokenizer::Detokenizer;
use crate::error::DecodeError;
use crate::options::StreamOptions;
use crate::policy::{Policy, WordBuffer};
use crate::stop::{StopMatch, StopMatcher};
use crate::streamer::FinishReason;

/// Turns the ids a producer puts into the text a consumer should see.
#[derive(Debug)]
pub struct TextPipeline {
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    words: Option<WordBuffer>,
    /// The first `put` is the prompt; true while it is still to come and skipped.
    skip_next_put: bool,
    /// Decoded but not yet through the stop matcher (reused between steps).
    decoded: String,
    /// Through the stop matcher but not yet through the policy.
    unstopped: String,
}

impl TextPipeline {
    /// A pipeline over `detokenizer` with `options`.
    pub fn new(detokenizer: Detokenizer, options: &StreamOptions) -> TextPipeline {
        TextPipeline {
            decoder: IncrementalDecoder::new(detokenizer, options.skip_special_tokens),
            stop: StopMatcher::new(options.stop.iter().cloned()),
            words: (options.policy == Policy::Words).then(WordBuffer::default),
            skip_next_put: options.skip_prompt,
            decoded: String::new(),
            unstopped: String::new(),
        }
    }

    /// Whether the next `put` is the prompt and will be skipped.
    pub fn skips_next_put(&self) -> bool {
        self.skip_next_put
    }

    /// Takes the ids of one `put`, appends the released text to `out`, and
    /// says whether a stop string ended the stream (then everything up to the
    /// stop string has been released).
    pub fn put(
        &mut self,
        ids: &[u32],
        out: &mut String,
    ) -> Result<Option<FinishReason>, DecodeError> {
        if std::mem::take(&mut self.skip_next_put) {
            return Ok(None);
        }
        if self.is_plain() {
            self.decoder.push_all(ids, out)?;
            return Ok(None);
        }
        self.decoded.clear();
        self.decoder.push_all(ids, &mut self.decoded)?;
        if self.decoded.is_empty() {
            return Ok(None);
        }
        self.release(out)
    }

    /// Ends the stream: releases everything held back.
    pub fn finish(&mut self, out: &mut String) -> Result<Option<FinishReason>, DecodeError> {
        if self.is_plain() {
            self.decoder.flush(out)?;
            return Ok(None);
        }
        self.decoded.clear();
        self.decoder.flush(&mut self.decoded)?;
        let stopped = self.release(out)?;
        if stopped.is_none() {
            self.unstopped.clear();
            self.stop.flush(&mut self.unstopped);
            self.apply_policy(out);
        }
        if let Some(words) = &mut self.words {
            words.flush(out);
        }
        Ok(stopped)
    }

    /// No stop strings and the eager policy: decoded text goes straight out.
    fn is_plain(&self) -> bool {
        self.stop.is_empty() && self.words.is_none()
    }

    fn release(&mut self, out: &mut String) -> Result<Option<FinishReason>, DecodeError> {
        self.unstopped.clear();
        let matched = self.stop.feed(&self.decoded, &mut self.unstopped);
        self.apply_policy(out);
        Ok(match matched {
            StopMatch::Continue => None,
            StopMatch::Matched(stop) => {
                if let Some(words) = &mut self.words {
                    words.flush(out);
                }
                Some(FinishReason::StopString(stop))
            }
        })
    }

    fn apply_policy(&mut self, out: &mut String) {
        match &mut self.words {
            Some(words) => words.feed(&self.unstopped, out),
            None => out.push_str(&self.unstopped),
        }
    }
}

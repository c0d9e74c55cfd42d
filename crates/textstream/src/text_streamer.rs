//! [`TextStreamer`]: writes the text to any `io::Write` (stdout by default).

use std::io::{self, Write};

use crate::detokenizer::Detokenizer;
use crate::error::Closed;
use crate::options::StreamOptions;
use crate::pipeline::TextPipeline;
use crate::streamer::{FinishReason, Streamer};

/// A [`Streamer`] that writes text as it becomes final and flushes after each
/// write, like transformers' `TextStreamer`. It runs on the producer's thread.
///
/// A write error (a closed pipe, say) makes the next `put` return
/// [`Closed::ConsumerGone`]; the error is kept in [`error`](Self::error).
///
/// ```
/// # use textstream::{TextStreamer, StreamOptions, Streamer, Detokenizer, TokenDecoder, DecodeError};
/// # struct Chars;
/// # impl TokenDecoder for Chars {
/// #     fn decode(&self, ids: &[u32], _: bool) -> Result<String, DecodeError> {
/// #         Ok(ids.iter().filter_map(|&id| char::from_u32(id)).collect())
/// #     }
/// # }
/// let mut out = Vec::new();
/// let mut streamer = TextStreamer::with_writer(Detokenizer::new(Chars), StreamOptions::default(), &mut out);
/// streamer.put(&"ok".chars().map(u32::from).collect::<Vec<_>>()).unwrap();
/// streamer.end();
/// drop(streamer);
/// assert_eq!(out, b"ok");
/// ```
#[derive(Debug)]
pub struct TextStreamer<W: Write = io::Stdout> {
    pipeline: TextPipeline,
    writer: W,
    text: String,
    error: Option<io::Error>,
    finish_reason: Option<FinishReason>,
}

impl TextStreamer<io::Stdout> {
    /// A streamer that writes to stdout.
    pub fn new(tokenizer: impl Into<Detokenizer>, options: StreamOptions) -> Self {
        TextStreamer::with_writer(tokenizer, options, io::stdout())
    }
}

impl<W: Write> TextStreamer<W> {
    /// A streamer that writes to `writer`.
    pub fn with_writer(
        tokenizer: impl Into<Detokenizer>,
        options: StreamOptions,
        writer: W,
    ) -> Self {
        TextStreamer {
            pipeline: TextPipeline::new(tokenizer.into(), &options),
            writer,
            text: String::new(),
            error: None,
            finish_reason: None,
        }
    }

    /// The write error that closed the stream, if any.
    pub fn error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }

    /// Why the stream ended, once it has.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish_reason.as_ref()
    }

    /// Gives the writer back.
    pub fn into_inner(self) -> W {
        self.writer
    }

    fn write_text(&mut self) -> Result<(), Closed> {
        if self.text.is_empty() {
            return Ok(());
        }
        let written = self
            .writer
            .write_all(self.text.as_bytes())
            .and_then(|()| self.writer.flush());
        written.map_err(|error| {
            self.error = Some(error);
            Closed::ConsumerGone
        })
    }
}

impl<W: Write> Streamer for TextStreamer<W> {
    fn put(&mut self, ids: &[u32]) -> Result<(), Closed> {
        if self.error.is_some() {
            return Err(Closed::ConsumerGone);
        }
        if self.finish_reason.is_some() {
            return Err(Closed::Ended);
        }
        self.text.clear();
        let stopped = self.pipeline.put(ids, &mut self.text).map_err(|error| {
            self.error = Some(io::Error::new(io::ErrorKind::InvalidData, error));
            Closed::ConsumerGone
        })?;
        self.write_text()?;
        if let Some(reason) = stopped {
            self.finish_reason = Some(reason);
            return Err(Closed::Stopped);
        }
        Ok(())
    }

    fn finish(&mut self, reason: FinishReason) {
        if self.finish_reason.is_some() || self.error.is_some() {
            return;
        }
        self.text.clear();
        match self.pipeline.finish(&mut self.text) {
            Ok(stopped) => {
                let _ = self.write_text();
                self.finish_reason = Some(stopped.unwrap_or(reason));
            }
            Err(error) => self.error = Some(io::Error::new(io::ErrorKind::InvalidData, error)),
        }
    }

    fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>) {
        if self.finish_reason.is_none() && self.error.is_none() {
            self.error = Some(io::Error::other(error));
        }
    }
}

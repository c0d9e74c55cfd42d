//! [`TextIteratorStreamer`]: a blocking iterator over the text, for sync code.

use std::time::Duration;

use crate::channel::{channel, Received, Receiver};
use crate::detokenizer::Detokenizer;
use crate::error::StreamError;
use crate::options::StreamOptions;
use crate::producer::StreamProducer;
use crate::streamer::FinishReason;

/// The consumer half of a text stream, read with a blocking `for` loop.
///
/// transformers' `TextIteratorStreamer`, with two defects fixed: a producer
/// that dies (panics, returns early) ends the iteration with
/// [`StreamError::ProducerDropped`] instead of hanging, and a timeout is an
/// error ([`StreamError::Timeout`]) rather than a silent end.
///
/// ```
/// # use textstream::{TextIteratorStreamer, StreamOptions, Streamer, Detokenizer, TokenDecoder, DecodeError};
/// # struct Chars;
/// # impl TokenDecoder for Chars {
/// #     fn decode(&self, ids: &[u32], _: bool) -> Result<String, DecodeError> {
/// #         Ok(ids.iter().filter_map(|&id| char::from_u32(id)).collect())
/// #     }
/// # }
/// # let tokenizer = Detokenizer::new(Chars);
/// let (mut streamer, stream) = TextIteratorStreamer::new(tokenizer, StreamOptions::default());
/// let worker = std::thread::spawn(move || {
///     for id in "Hello!".chars().map(u32::from) {
///         if streamer.put(&[id]).is_err() {
///             break; // nobody is reading any more
///         }
///     }
///     streamer.end();
/// });
/// let text: String = stream.map(|chunk| chunk.unwrap()).collect();
/// assert_eq!(text, "Hello!");
/// worker.join().unwrap();
/// ```
#[derive(Debug)]
pub struct TextIteratorStreamer {
    receiver: Receiver,
    timeout: Option<Duration>,
    finish_reason: Option<FinishReason>,
}

impl TextIteratorStreamer {
    /// Makes a producer/consumer pair over `tokenizer`.
    pub fn new(
        tokenizer: impl Into<Detokenizer>,
        options: StreamOptions,
    ) -> (StreamProducer, TextIteratorStreamer) {
        let (sender, receiver) = channel(options.bound);
        let producer = StreamProducer::new(tokenizer.into(), &options, sender);
        let consumer = TextIteratorStreamer {
            receiver,
            timeout: options.timeout,
            finish_reason: None,
        };
        (producer, consumer)
    }

    /// Why the stream ended, once it has.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish_reason.as_ref()
    }
}

impl Iterator for TextIteratorStreamer {
    type Item = Result<String, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            return match self.receiver.recv(self.timeout) {
                Err(error) => Some(Err(error)),
                Ok(None) => None,
                Ok(Some(Received::Chunk(chunk))) if chunk.text.is_empty() => continue,
                Ok(Some(Received::Chunk(chunk))) => Some(Ok(chunk.text)),
                Ok(Some(Received::End(Ok(reason)))) => {
                    self.finish_reason = Some(reason);
                    None
                }
                Ok(Some(Received::End(Err(error)))) => Some(Err(error)),
            };
        }
    }
}

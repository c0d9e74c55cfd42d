//! Every error the core library reports, in one place.

use std::time::Duration;

/// The answer of [`Streamer::put`](crate::Streamer::put) when nothing more will be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Closed {
    /// The consumer dropped its end of the stream (or its writer failed).
    #[error("the consumer of the stream is gone")]
    ConsumerGone,
    /// A stop string matched; the stream has ended.
    #[error("the stream stopped at a stop string")]
    Stopped,
    /// The stream was already ended with `end`, `finish` or `fail`.
    #[error("the stream has already ended")]
    Ended,
}

/// What a consumer receives instead of text when something went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// No text arrived within the configured timeout. The stream is still open:
    /// asking again waits once more.
    #[error("no text arrived within {0:?}")]
    Timeout(Duration),
    /// The producer was dropped without ending the stream (it panicked or
    /// returned early); no more text will come.
    #[error("the producer stopped without ending the stream")]
    ProducerDropped,
    /// The producer ended the stream with this error.
    #[error("the producer failed: {0}")]
    Producer(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A tokenizer failed to turn ids into text.
#[derive(Debug, thiserror::Error)]
#[error("decoding failed: {0}")]
pub struct DecodeError(pub String);

/// A batch `put` did not match the batch it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The number of rows differs from the number of streams.
    #[error("batch put has {got} rows but the batch has {expected} streams")]
    WrongSize {
        /// Streams in the batch.
        expected: usize,
        /// Rows that were put.
        got: usize,
    },
}

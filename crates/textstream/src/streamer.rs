//! The producer side: the [`Streamer`] interface that a generation loop calls.
//!
//! This is the Rust counterpart of transformers' `BaseStreamer`: `generate` calls
//! [`Streamer::put`] with the prompt ids first and then with each new token, and
//! [`Streamer::end`] once it is done. Unlike `BaseStreamer`, `put` answers: when the
//! consumer has gone away (or a stop string matched) it returns [`Closed`], and the
//! generation loop should stop instead of computing tokens nobody reads.

use crate::error::Closed;

/// Why a stream ended. Servers report it as OpenAI's `finish_reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// The model produced an end-of-sequence (or end-of-turn) token, or the
    /// producer called [`Streamer::end`].
    Stop,
    /// The producer reached its token limit.
    Length,
    /// The text reached one of the stop strings; the text before it was delivered,
    /// the stop string itself was not.
    StopString(String),
}

impl FinishReason {
    /// The OpenAI API's name for this reason: `"stop"` or `"length"`.
    pub fn as_openai(&self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop | FinishReason::StopString(_) => "stop",
        }
    }
}

/// The interface a generation loop drives, one sequence at a time.
///
/// The first `put` carries the prompt (as in transformers), later ones the new
/// tokens. A `put` that returns `Err` means nothing more will be read: stop
/// generating. Dropping a streamer without calling [`end`](Streamer::end) or
/// [`fail`](Streamer::fail) tells the consumer that the producer died.
pub trait Streamer {
    /// Hands newly produced token ids to the stream.
    fn put(&mut self, ids: &[u32]) -> Result<(), Closed>;

    /// Hands one generated token with its log-probability (for token events).
    /// By default the log-probability is dropped.
    fn put_token(&mut self, id: u32, logprob: Option<f32>) -> Result<(), Closed> {
        let _ = logprob;
        self.put(&[id])
    }

    /// Hands one generated token with its log-probability and the most
    /// likely tokens at its step (`top`: ids and log-probabilities, most
    /// likely first; OpenAI's `top_logprobs`). By default the alternatives
    /// are dropped and [`put_token`](Streamer::put_token) is called.
    fn put_scored(&mut self, id: u32, logprob: f32, top: &[(u32, f32)]) -> Result<(), Closed> {
        let _ = top;
        self.put_token(id, Some(logprob))
    }

    /// Whether a `put` would now return [`Closed`] (the consumer left, or the
    /// stream ended), asked without putting anything: a producer in the
    /// middle of long work (reading a long prompt) checks it to stop early.
    /// By default, `false`.
    fn is_closed(&self) -> bool {
        false
    }

    /// Ends the stream normally, with [`FinishReason::Stop`].
    fn end(&mut self) {
        self.finish(FinishReason::Stop);
    }

    /// Ends the stream with the given reason.
    fn finish(&mut self, reason: FinishReason);

    /// Ends the stream with an error that the consumer receives as
    /// [`StreamError::Producer`](crate::StreamError::Producer).
    fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>);
}

impl<S: Streamer + ?Sized> Streamer for &mut S {
    fn put(&mut self, ids: &[u32]) -> Result<(), Closed> {
        (**self).put(ids)
    }
    fn put_token(&mut self, id: u32, logprob: Option<f32>) -> Result<(), Closed> {
        (**self).put_token(id, logprob)
    }
    fn put_scored(&mut self, id: u32, logprob: f32, top: &[(u32, f32)]) -> Result<(), Closed> {
        (**self).put_scored(id, logprob, top)
    }
    fn is_closed(&self) -> bool {
        (**self).is_closed()
    }
    fn finish(&mut self, reason: FinishReason) {
        (**self).finish(reason)
    }
    fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>) {
        (**self).fail(error)
    }
}

impl<S: Streamer + ?Sized> Streamer for Box<S> {
    fn put(&mut self, ids: &[u32]) -> Result<(), Closed> {
        (**self).put(ids)
    }
    fn put_token(&mut self, id: u32, logprob: Option<f32>) -> Result<(), Closed> {
        (**self).put_token(id, logprob)
    }
    fn put_scored(&mut self, id: u32, logprob: f32, top: &[(u32, f32)]) -> Result<(), Closed> {
        (**self).put_scored(id, logprob, top)
    }
    fn is_closed(&self) -> bool {
        (**self).is_closed()
    }
    fn finish(&mut self, reason: FinishReason) {
        (**self).finish(reason)
    }
    fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>) {
        (**self).fail(error)
    }
}

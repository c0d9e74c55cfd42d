//! Token events: the ids, the text they released, their log-probabilities and,
//! last, the finish reason. What a server needs to build OpenAI chunks.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures_timer::Delay;

use crate::async_iter::poll_with_timeout;
use crate::channel::{channel, Received, Receiver};
use crate::detokenizer::Detokenizer;
use crate::error::StreamError;
use crate::options::StreamOptions;
use crate::producer::StreamProducer;
use crate::streamer::FinishReason;

/// One step of a stream, or several coalesced while the consumer was busy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenEvent {
    /// The ids put since the previous event.
    pub ids: Vec<u32>,
    /// The text those ids released (may be empty: an incomplete character, or
    /// text held back by a stop string).
    pub text: String,
    /// Log-probability of each id, where the producer gave one.
    pub logprobs: Vec<Option<f32>>,
    /// The most likely tokens at each id's step (ids and log-probabilities,
    /// most likely first), where the producer gave them
    /// ([`Streamer::put_scored`](crate::Streamer::put_scored)); empty otherwise.
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    /// Set on the last event only.
    pub finish_reason: Option<FinishReason>,
}

/// The consumer half of an event stream: a `futures::Stream`, or a blocking
/// iterator for sync code ([`blocking_iter`](Self::blocking_iter)). The last event carries the finish reason.
#[derive(Debug)]
pub struct TokenEventStream {
    receiver: Receiver,
    timeout: Option<Duration>,
    delay: Option<Delay>,
}

impl TokenEventStream {
    /// Makes a producer/consumer pair over `tokenizer`.
    pub fn new(
        tokenizer: impl Into<Detokenizer>,
        mut options: StreamOptions,
    ) -> (StreamProducer, TokenEventStream) {
        options.events = true;
        let (sender, receiver) = channel(options.bound);
        let producer = StreamProducer::new(tokenizer.into(), &options, sender);
        let consumer = TokenEventStream {
            receiver,
            timeout: options.timeout,
            delay: None,
        };
        (producer, consumer)
    }
}

fn to_event(received: Option<Received>) -> Option<Result<TokenEvent, StreamError>> {
    match received? {
        Received::Chunk(chunk) => Some(Ok(TokenEvent {
            ids: chunk.ids,
            text: chunk.text,
            logprobs: chunk.logprobs,
            top_logprobs: chunk.top_logprobs,
            finish_reason: None,
        })),
        Received::End(Ok(reason)) => Some(Ok(TokenEvent {
            finish_reason: Some(reason),
            ..TokenEvent::default()
        })),
        Received::End(Err(error)) => Some(Err(error)),
    }
}

impl Stream for TokenEventStream {
    type Item = Result<TokenEvent, StreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        poll_with_timeout(&this.receiver, this.timeout, &mut this.delay, cx).map(|received| {
            match received {
                Ok(received) => to_event(received),
                Err(error) => Some(Err(error)),
            }
        })
    }
}

impl TokenEventStream {
    /// Waits for the next event on this thread (for sync consumers).
    pub fn next_blocking(&mut self) -> Option<Result<TokenEvent, StreamError>> {
        match self.receiver.recv(self.timeout) {
            Ok(received) => to_event(received),
            Err(error) => Some(Err(error)),
        }
    }

    /// The events as a blocking iterator (for sync consumers).
    pub fn blocking_iter(&mut self) -> impl Iterator<Item = Result<TokenEvent, StreamError>> + '_ {
        std::iter::from_fn(move || self.next_blocking())
    }
}

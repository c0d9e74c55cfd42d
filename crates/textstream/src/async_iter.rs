//! [`AsyncTextIteratorStreamer`]: the text as a `futures::Stream`, for async code.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Stream};
use futures_timer::Delay;

use crate::channel::{channel, Received, Receiver};
use crate::detokenizer::Detokenizer;
use crate::error::StreamError;
use crate::options::StreamOptions;
use crate::producer::StreamProducer;
use crate::streamer::FinishReason;

/// The consumer half of a text stream, read with `stream.next().await`.
///
/// It needs no particular runtime (the timeout uses `futures-timer`), so it
/// works under tokio, async-std or `futures::executor::block_on`. Generation
/// runs on its own thread (`std::thread::spawn` or tokio's `spawn_blocking`);
/// dropping the stream makes the producer's next `put` fail, so generation
/// stops within one token.
///
/// ```
/// # use textstream::{AsyncTextIteratorStreamer, StreamOptions, Streamer, Detokenizer, TokenDecoder, DecodeError};
/// # struct Chars;
/// # impl TokenDecoder for Chars {
/// #     fn decode(&self, ids: &[u32], _: bool) -> Result<String, DecodeError> {
/// #         Ok(ids.iter().filter_map(|&id| char::from_u32(id)).collect())
/// #     }
/// # }
/// use futures::StreamExt;
/// # let tokenizer = Detokenizer::new(Chars);
/// let (mut streamer, mut stream) = AsyncTextIteratorStreamer::new(tokenizer, StreamOptions::default());
/// std::thread::spawn(move || {
///     for id in "Hi there".chars().map(u32::from) {
///         if streamer.put(&[id]).is_err() {
///             return;
///         }
///     }
///     streamer.end();
/// });
/// futures::executor::block_on(async {
///     let mut text = String::new();
///     while let Some(chunk) = stream.next().await {
///         text += &chunk.unwrap();
///     }
///     assert_eq!(text, "Hi there");
/// });
/// ```
#[derive(Debug)]
pub struct AsyncTextIteratorStreamer {
    receiver: Receiver,
    timeout: Option<Duration>,
    delay: Option<Delay>,
    finish_reason: Option<FinishReason>,
}

impl AsyncTextIteratorStreamer {
    /// Makes a producer/consumer pair over `tokenizer`.
    pub fn new(
        tokenizer: impl Into<Detokenizer>,
        options: StreamOptions,
    ) -> (StreamProducer, AsyncTextIteratorStreamer) {
        let (sender, receiver) = channel(options.bound);
        let producer = StreamProducer::new(tokenizer.into(), &options, sender);
        let consumer = AsyncTextIteratorStreamer {
            receiver,
            timeout: options.timeout,
            delay: None,
            finish_reason: None,
        };
        (producer, consumer)
    }

    /// Why the stream ended, once it has.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish_reason.as_ref()
    }
}

/// Polls `receiver`, turning a wait longer than `timeout` into an error.
pub(crate) fn poll_with_timeout(
    receiver: &Receiver,
    timeout: Option<Duration>,
    delay: &mut Option<Delay>,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Received>, StreamError>> {
    if let Poll::Ready(received) = receiver.poll_recv(cx) {
        *delay = None;
        return Poll::Ready(Ok(received));
    }
    let Some(timeout) = timeout else {
        return Poll::Pending;
    };
    let timer = delay.get_or_insert_with(|| Delay::new(timeout));
    match timer.poll_unpin(cx) {
        Poll::Ready(()) => {
            *delay = None;
            Poll::Ready(Err(StreamError::Timeout(timeout)))
        }
        Poll::Pending => Poll::Pending,
    }
}

impl Stream for AsyncTextIteratorStreamer {
    type Item = Result<String, StreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let received =
                match poll_with_timeout(&this.receiver, this.timeout, &mut this.delay, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(error))),
                    Poll::Ready(Ok(received)) => received,
                };
            return Poll::Ready(match received {
                None => None,
                Some(Received::Chunk(chunk)) if chunk.text.is_empty() => continue,
                Some(Received::Chunk(chunk)) => Some(Ok(chunk.text)),
                Some(Received::End(Ok(reason))) => {
                    this.finish_reason = Some(reason);
                    None
                }
                Some(Received::End(Err(error))) => Some(Err(error)),
            });
        }
    }
}

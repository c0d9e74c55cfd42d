//! textstream: stream text out of a language model that generates on its own
//! thread, into a sync loop, an async task or a server.
//!
//! A generation loop drives a [`Streamer`]: [`put`](Streamer::put) with the
//! prompt ids, then each new token, then [`end`](Streamer::end). The streamer
//! turns ids into text with an [`IncrementalDecoder`] (exact, UTF-8 safe, O(1)
//! per token), holds back text that might start a stop string, and hands the
//! rest to a consumer:
//!
//! - [`TextStreamer`] writes to stdout or any `io::Write`;
//! - [`TextIteratorStreamer`] is a blocking iterator with a timeout;
//! - [`AsyncTextIteratorStreamer`] is a runtime-agnostic `futures::Stream`;
//! - [`TokenEventStream`] yields [`TokenEvent`]s (ids, text, log-probabilities,
//!   finish reason) for servers;
//! - [`BatchStreamer`] fans a batch out to one stream per sequence.
//!
//! The consumer types are made in pairs with a [`StreamProducer`], the
//! `Streamer` that goes to the generating thread. Either side may leave: a
//! dropped consumer makes the next `put` fail with [`Closed::ConsumerGone`] so
//! generation stops, and a producer dropped without `end` (a panic) ends the
//! consumer's stream with [`StreamError::ProducerDropped`] instead of a hang.
//!
//! Tokenizers plug in through [`TokenDecoder`] (implemented for
//! `tokenizers::Tokenizer`), shared as a [`Detokenizer`].
//!
//! ```
//! use futures::StreamExt;
//! use textstream::{AsyncTextIteratorStreamer, StreamOptions, Streamer};
//! # use textstream::{Detokenizer, TokenDecoder, DecodeError};
//! # struct Chars;
//! # impl TokenDecoder for Chars {
//! #     fn decode(&self, ids: &[u32], _: bool) -> Result<String, DecodeError> {
//! #         Ok(ids.iter().filter_map(|&id| char::from_u32(id)).collect())
//! #     }
//! # }
//! # let tokenizer = Detokenizer::new(Chars);
//! # let prompt: Vec<u32> = "Q: ".chars().map(u32::from).collect();
//! let options = StreamOptions::default().skip_prompt(true);
//! let (mut streamer, mut stream) = AsyncTextIteratorStreamer::new(tokenizer, options);
//! // generate() on a worker thread: the prompt first, then each new token.
//! let worker = std::thread::spawn(move || {
//!     streamer.put(&prompt)?;
//!     for id in "A: blue".chars().map(u32::from) {
//!         streamer.put(&[id])?;
//!     }
//!     streamer.end();
//!     Ok::<(), textstream::Closed>(())
//! });
//! futures::executor::block_on(async {
//!     let mut answer = String::new();
//!     while let Some(text) = stream.next().await {
//!         answer += &text?;
//!     }
//!     assert_eq!(answer, "A: blue");
//!     Ok::<(), textstream::StreamError>(())
//! })?;
//! worker.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod async_iter;
mod batch;
mod channel;
mod decoder;
mod detokenizer;
mod error;
mod events;
mod iter;
mod options;
mod pipeline;
mod policy;
mod producer;
mod stop;
mod streamer;
mod text_streamer;

pub use async_iter::AsyncTextIteratorStreamer;
pub use batch::{batch, BatchStreamer};
pub use decoder::IncrementalDecoder;
pub use detokenizer::{byte_level_char, Detokenizer, Layout, TokenDecoder, TokenKind, TokenTable};
pub use error::{BatchError, Closed, DecodeError, StreamError};
pub use events::{TokenEvent, TokenEventStream};
pub use iter::TextIteratorStreamer;
pub use options::StreamOptions;
pub use pipeline::TextPipeline;
pub use policy::{Policy, WordBuffer};
pub use producer::StreamProducer;
pub use stop::{StopMatch, StopMatcher};
pub use streamer::{FinishReason, Streamer};
pub use text_streamer::TextStreamer;

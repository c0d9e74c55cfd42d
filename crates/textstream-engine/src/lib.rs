//! textstream-engine: runs a GGUF language model on a worker thread and reports
//! every token through a [`textstream::Streamer`].
//!
//! The path reads top-down: [`model_file`] finds (or fetches) the GGUF file,
//! [`tokenizer`] builds the tokenizer from the GGUF metadata, [`template`] renders
//! chat messages into a prompt, [`model`] loads the weights with candle, and
//! [`generate`] runs prefill, decode steps and [`sampling`], putting each token
//! into the streamer.

mod error;
pub mod generate;
pub mod model;
pub mod model_file;
pub mod sampling;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;

pub use error::EngineError;

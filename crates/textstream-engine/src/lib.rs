//! textstream-engine: runs a GGUF language model on a worker thread and reports
//! every token through a [`textstream::Streamer`].
//!
//! The path reads top-down: [`model_file`] finds (or fetches) the GGUF file,
//! [`tokenizer`] builds the tokenizer from the GGUF metadata, [`template`] renders
//! chat messages into a prompt, [`model`] loads the weights with candle (by
//! default into the engine's own forward pass, [`llama`]; candle's llama is
//! kept as the reference, [`llama::WeightFormat`]), [`bench`] measures it, and
//! [`generate`] runs prefill, decode steps and [`sampling`], putting each token
//! into the streamer.

pub mod bench;
mod error;
pub mod generate;
pub mod llama;
pub mod model;
pub mod model_file;
pub mod sampling;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;

pub use error::EngineError;

//! textstream-engine: runs a GGUF language model on a worker thread and reports
//! every token through a [`textstream::Streamer`].
//!
//! The path reads top-down: [`model_file`] finds (or fetches) the GGUF file,
//! [`tokenizer`] builds the tokenizer from the GGUF metadata, [`template`] renders
//! chat messages into a prompt, [`model`] reads the weights with candle's GGUF
//! reader into the engine's own forward pass, [`models`] (one file per model
//! family, whose matrix products are the engine's own kernels; candle's llama is
//! kept as the reference, [`model::Backend`]), [`bench`](mod@bench) measures it, and
//! [`generate`] runs prefill, decode steps and [`sampling`], putting each token
//! into the streamer.
//!
//! ```no_run
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use textstream_engine::{generate, model::Model, model_file, template::Message};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = model_file::resolve(None, &mut |_| {})?; // SmolLM2, fetched once
//! let model = Arc::new(Model::load(&path)?);
//! let prompt = model.chat_prompt(&[Message::new("user", "Why is the sky blue?")])?;
//! let ids = model.encode_prompt(&prompt)?;
//! let (mut stream, worker) =
//!     generate::run_generate(model, ids, generate::GenerateConfig::default(), None);
//! futures::executor::block_on(async {
//!     while let Some(text) = stream.next().await {
//!         print!("{}", text?);
//!     }
//!     Ok::<_, textstream::StreamError>(())
//! })?;
//! let output = worker.join().expect("generation thread")?;
//! println!("\n{} tokens, {:?}", output.tokens.len(), output.finish_reason);
//! # Ok(())
//! # }
//! ```

pub mod bench;
mod error;
pub mod generate;
mod gguf;
mod math;
pub mod model;
pub mod model_file;
pub mod models;
// The kernels are the engine's own business; tests and benchmarks of this
// workspace reach them through the `test-support` feature.
#[cfg(feature = "test-support")]
pub mod quant;
#[cfg(not(feature = "test-support"))]
mod quant;
pub mod sampling;
pub mod scheduler;
mod team;
pub mod template;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tokenizer;

pub use error::EngineError;

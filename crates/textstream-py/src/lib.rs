//! textstream-py: textstream's streamers and engine as the Python module
//! `textstream` — its one job is to bind the core and the engine to Python,
//! adding no decoding or generation logic of its own.
//!
//! The native half, `textstream._native`, is built here with PyO3; the
//! Python half (`python/textstream/`) gives it transformers' names and
//! constructor arguments. Each stream is a pair:
//!
//! - a [`Producer`](producer::Producer), which `generate()` drives with
//!   `put`/`end`/`fail` on its thread, decoding without the GIL;
//! - a consumer: [`TextIterator`](consumer::TextIterator) for `for` loops, or
//!   [`AsyncTextIterator`](consumer::AsyncTextIterator) for `async for`,
//!   whose waker reaches asyncio through one dispatcher thread ([`wake`]).
//!
//! [`Pipeline`](pipeline::Pipeline) serves `TextStreamer` (text printed on
//! the producer's thread), [`Detokenizer`](tokenizer::Detokenizer) is the
//! tokenizer every stream shares, and [`Model`](model::Model) runs a GGUF
//! model from the engine. The example is Python, in the README.

mod consumer;
mod errors;
mod model;
mod options;
mod pipeline;
mod producer;
mod tokenizer;
mod wake;

use pyo3::prelude::*;

use consumer::{AsyncTextIterator, TextIterator};
use producer::Producer;
use tokenizer::Detokenizer;

/// A producer and a blocking iterator over one sequence's text.
#[pyfunction]
#[pyo3(signature = (detokenizer, *, skip_prompt = false, skip_special_tokens = false, stop = None, mode = "eager", timeout = None))]
fn text_stream(
    detokenizer: &Detokenizer,
    skip_prompt: bool,
    skip_special_tokens: bool,
    stop: Option<Vec<String>>,
    mode: &str,
    timeout: Option<f64>,
) -> PyResult<(Producer, TextIterator)> {
    let options = options::stream_options(skip_prompt, skip_special_tokens, stop, mode)?;
    let timeout = options::timeout(timeout)?;
    let (producer, iterator) = TextIterator::pair(detokenizer.inner.clone(), options, timeout);
    Ok((Producer::one(producer), iterator))
}

/// A producer and the native half of an async iterator over one sequence.
#[pyfunction]
#[pyo3(signature = (detokenizer, *, skip_prompt = false, skip_special_tokens = false, stop = None, mode = "eager", timeout = None))]
fn async_text_stream(
    detokenizer: &Detokenizer,
    skip_prompt: bool,
    skip_special_tokens: bool,
    stop: Option<Vec<String>>,
    mode: &str,
    timeout: Option<f64>,
) -> PyResult<(Producer, AsyncTextIterator)> {
    let options = options::stream_options(skip_prompt, skip_special_tokens, stop, mode)?;
    let timeout = options::timeout(timeout)?;
    let (producer, iterator) = AsyncTextIterator::pair(detokenizer.inner.clone(), options, timeout);
    Ok((Producer::one(producer), iterator))
}

/// A batch producer and one blocking iterator per row.
#[pyfunction]
#[pyo3(signature = (detokenizer, batch_size, *, skip_prompt = false, skip_special_tokens = false, stop = None, mode = "eager", timeout = None))]
#[allow(clippy::too_many_arguments)]
fn batch_text_stream(
    detokenizer: &Detokenizer,
    batch_size: usize,
    skip_prompt: bool,
    skip_special_tokens: bool,
    stop: Option<Vec<String>>,
    mode: &str,
    timeout: Option<f64>,
) -> PyResult<(Producer, Vec<TextIterator>)> {
    let options = options::stream_options(skip_prompt, skip_special_tokens, stop, mode)?;
    let timeout = options::timeout(timeout)?;
    let (producers, iterators) = (0..batch_size)
        .map(|_| TextIterator::pair(detokenizer.inner.clone(), options.clone(), timeout))
        .unzip();
    Ok((Producer::batch(producers), iterators))
}

/// A batch producer and the native halves of one async iterator per row.
#[pyfunction]
#[pyo3(signature = (detokenizer, batch_size, *, skip_prompt = false, skip_special_tokens = false, stop = None, mode = "eager", timeout = None))]
#[allow(clippy::too_many_arguments)]
fn async_batch_text_stream(
    detokenizer: &Detokenizer,
    batch_size: usize,
    skip_prompt: bool,
    skip_special_tokens: bool,
    stop: Option<Vec<String>>,
    mode: &str,
    timeout: Option<f64>,
) -> PyResult<(Producer, Vec<AsyncTextIterator>)> {
    let options = options::stream_options(skip_prompt, skip_special_tokens, stop, mode)?;
    let timeout = options::timeout(timeout)?;
    let (producers, iterators) = (0..batch_size)
        .map(|_| AsyncTextIterator::pair(detokenizer.inner.clone(), options.clone(), timeout))
        .unzip();
    Ok((Producer::batch(producers), iterators))
}

/// The native module `textstream._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    wake::start_dispatcher()?;
    let py = m.py();
    m.add("ConsumerGone", py.get_type::<errors::ConsumerGone>())?;
    m.add("GenerationError", py.get_type::<errors::GenerationError>())?;
    m.add_class::<Detokenizer>()?;
    m.add_class::<Producer>()?;
    m.add_class::<TextIterator>()?;
    m.add_class::<AsyncTextIterator>()?;
    m.add_class::<pipeline::Pipeline>()?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(text_stream, m)?)?;
    m.add_function(wrap_pyfunction!(async_text_stream, m)?)?;
    m.add_function(wrap_pyfunction!(batch_text_stream, m)?)?;
    m.add_function(wrap_pyfunction!(async_batch_text_stream, m)?)?;
    Ok(())
}

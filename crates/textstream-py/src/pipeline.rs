//! [`Pipeline`]: the core's text pipeline without a channel, for
//! `TextStreamer`, which prints on the producer's own thread.

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use textstream::{FinishReason, TextPipeline};

use crate::options;
use crate::tokenizer::Detokenizer;

struct State {
    pipeline: TextPipeline,
    /// Set once the text reached a stop string or `finish` ran.
    finished: Option<FinishReason>,
}

/// Ids in, final text out: decoding, stop strings and the release policy,
/// as every stream applies them.
#[pyclass(frozen, module = "textstream._native")]
pub struct Pipeline {
    state: Mutex<State>,
}

impl Pipeline {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Pipeline {
    /// A pipeline over `detokenizer` with the streams' options.
    #[new]
    #[pyo3(signature = (detokenizer, *, skip_prompt = false, skip_special_tokens = false, stop = None, mode = "eager"))]
    fn new(
        detokenizer: &Detokenizer,
        skip_prompt: bool,
        skip_special_tokens: bool,
        stop: Option<Vec<String>>,
        mode: &str,
    ) -> PyResult<Pipeline> {
        let options = options::stream_options(skip_prompt, skip_special_tokens, stop, mode)?;
        Ok(Pipeline {
            state: Mutex::new(State {
                pipeline: TextPipeline::new(detokenizer.inner.clone(), &options),
                finished: None,
            }),
        })
    }

    /// Takes the ids of one `put` and returns the text now final (without
    /// the GIL while decoding). Once a stop string matched, or after
    /// `finish`, returns `""` and ignores the ids.
    fn put(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<String> {
        py.detach(|| {
            let mut state = self.lock();
            let mut text = String::new();
            if state.finished.is_some() {
                return Ok(text);
            }
            let stopped = state
                .pipeline
                .put(&ids, &mut text)
                .map_err(|error| PyValueError::new_err(error.to_string()))?;
            state.finished = stopped;
            Ok(text)
        })
    }

    /// Ends the text: returns what was held back (`""` if already finished).
    fn finish(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| {
            let mut state = self.lock();
            let mut text = String::new();
            if state.finished.is_some() {
                return Ok(text);
            }
            let stopped = state
                .pipeline
                .finish(&mut text)
                .map_err(|error| PyValueError::new_err(error.to_string()))?;
            state.finished = Some(stopped.unwrap_or(FinishReason::Stop));
            Ok(text)
        })
    }

    /// Whether the text reached a stop string or `finish` ran.
    #[getter]
    fn finished(&self) -> bool {
        self.lock().finished.is_some()
    }

    /// `"stop"` or `"stop_string"` once finished, else `None`.
    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        self.lock()
            .finished
            .as_ref()
            .map(|r| options::finish_reason(r).0)
    }

    /// The stop string the text reached, if one did.
    #[getter]
    fn stop_string(&self) -> Option<String> {
        self.lock()
            .finished
            .as_ref()
            .and_then(|r| options::finish_reason(r).1)
    }
}

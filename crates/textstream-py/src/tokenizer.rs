//! [`Detokenizer`]: a tokenizer for the streams, built from its JSON.

use std::str::FromStr;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use textstream::Layout;

/// A tokenizer the streams decode with, built once and shared by every stream
/// made from it.
///
/// Made from a `tokenizers.Tokenizer`'s JSON (`tokenizer.to_str()`); the
/// Python constructors of the streamers do this for you and cache the result.
#[pyclass(frozen, module = "textstream._native")]
pub struct Detokenizer {
    pub(crate) inner: textstream::Detokenizer,
}

impl Detokenizer {
    pub(crate) fn wrap(inner: textstream::Detokenizer) -> Detokenizer {
        // The per-token byte table is built here, not on the first `put`.
        let _ = inner.layout();
        Detokenizer { inner }
    }
}

#[pymethods]
impl Detokenizer {
    /// Builds the tokenizer from its JSON (as `tokenizers.Tokenizer.to_str()`
    /// writes it). Raises `ValueError` when the JSON is not a tokenizer.
    #[new]
    fn new(py: Python<'_>, json: &str) -> PyResult<Detokenizer> {
        py.detach(|| {
            let tokenizer = tokenizers::Tokenizer::from_str(json)
                .map_err(|error| PyValueError::new_err(format!("not a tokenizer: {error}")))?;
            Ok(Detokenizer::wrap(tokenizer.into()))
        })
    }

    /// Decodes `ids` in one go, with the tokenizer's own pipeline: the text
    /// every stream over this tokenizer reproduces.
    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        py.detach(|| self.inner.decode(&ids, skip_special_tokens))
            .map_err(|error| PyValueError::new_err(error.to_string()))
    }

    /// How the streams decode: `"byte_level"` or `"sentencepiece"` (O(1) per
    /// token from a table of each token's bytes) or `"windowed"` (a small
    /// window of recent ids decoded per token).
    #[getter]
    fn layout(&self) -> &'static str {
        match self.inner.layout() {
            Layout::ByteLevel(_) => "byte_level",
            Layout::SentencePiece { .. } => "sentencepiece",
            _ => "windowed",
        }
    }
}

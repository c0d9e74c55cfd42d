//! A bounded load test on loopback, run by hand, not in CI: K concurrent
//! streaming clients against a server in this process, its scheduler
//! running up to the server's default batch of requests at once.
//!
//! Every client asks `/v1/completions` for a streamed answer with a seed of
//! its own; afterwards its non-streamed twin (same prompt, same seed) asks
//! again, and the two texts must be equal: nothing lost, reordered or
//! duplicated under load. The report gives peak RSS (`VmHWM`, of this whole
//! process: server *and* clients, so an upper bound on the server's), tokens
//! per second, time to first token (p50, p99; it includes the wait for a
//! slot, which dominates with K ≫ the batch) and wall time.
//!
//! ```sh
//! # 1,000 streams against the tiny random model (the default)
//! cargo bench -p textstream-server --bench load
//! # 50 streams of 32 tokens against SmolLM2 (fetched on first use)
//! cargo bench -p textstream-server --bench load -- --model smollm2 --clients 50
//! ```
//!
//! Options (or environment variables): `--clients K` (`LOAD_CLIENTS`,
//! default 1000), `--model tiny|smollm2` (`LOAD_MODEL`, default tiny),
//! `--max-tokens N` (`LOAD_MAX_TOKENS`, default 32), `--workers W`
//! (`LOAD_WORKERS`: requests generated at once, default the server's). Each stream holds two sockets (client and
//! server end), so `ulimit -n` must exceed 2K; the bench checks and says so.
//! It exits with status 1 when any stream is lost or differs from its twin.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use textstream_engine::model::Model;
use textstream_server::{serve, AppState, ServerConfig};

/// Concurrent clients by default: the target is 1,000 streams on 2 cores.
const DEFAULT_CLIENTS: usize = 1000;
/// Tokens per answer by default; fits the tiny model's 128-token context.
const DEFAULT_MAX_TOKENS: u32 = 32;
/// Runtime threads: one per core of the target machine.
const RUNTIME_THREADS: usize = 2;
/// Sampling temperature: above zero, so the seed matters and a stream that
/// got another request's tokens would show.
const TEMPERATURE: f64 = 0.8;
/// Seeds are `SEED_BASE + client index`.
const SEED_BASE: u64 = 1000;
/// Prompts, cycled over the clients, so the answers differ in prompt too.
const PROMPTS: [&str; 4] = [
    "Once upon a time",
    "The quick brown fox",
    "In a hole in the ground",
    "It was a bright cold day",
];
/// File descriptors besides the sockets: the runtime, the model, stdio.
const SPARE_FDS: u64 = 256;
/// Seed of the tiny model's random weights (as in the tests).
const TINY_SEED: u64 = 7;

/// What the bench was asked to do.
#[derive(Debug)]
struct Options {
    clients: usize,
    model: String,
    max_tokens: u32,
    workers: usize,
}

impl Options {
    /// From `--name value` arguments, then `LOAD_*` variables, then defaults.
    /// Unknown arguments (cargo bench passes `--bench`) are ignored.
    fn parse() -> Result<Self, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let get = |flag: &str, var: &str| -> Option<String> {
            args.iter()
                .position(|arg| arg == flag)
                .and_then(|i| args.get(i + 1).cloned())
                .or_else(|| std::env::var(var).ok())
        };
        let number = |flag: &str, var: &str, default: usize| -> Result<usize, String> {
            get(flag, var).map_or(Ok(default), |text| {
                text.parse()
                    .map_err(|_| format!("{flag} {text}: not a number"))
            })
        };
        let max_tokens = number(
            "--max-tokens",
            "LOAD_MAX_TOKENS",
            DEFAULT_MAX_TOKENS as usize,
        )?;
        Ok(Self {
            clients: number("--clients", "LOAD_CLIENTS", DEFAULT_CLIENTS)?,
            model: get("--model", "LOAD_MODEL").unwrap_or_else(|| "tiny".to_owned()),
            max_tokens: u32::try_from(max_tokens).map_err(|_| "--max-tokens too large")?,
            workers: number(
                "--workers",
                "LOAD_WORKERS",
                textstream_server::DEFAULT_WORKERS,
            )?,
        })
    }

    fn load_model(&self) -> Result<Arc<Model>, String> {
        let path = match self.model.as_str() {
            "tiny" => {
                let path = std::env::temp_dir()
                    .join(format!("textstream-load-tiny-{}.gguf", std::process::id()));
                textstream_engine::testing::write_tiny_model(&path, TINY_SEED)
                    .map_err(|error| error.to_string())?;
                path
            }
            "smollm2" => textstream_engine::testing::default_model_path(),
            other => return Err(format!("--model {other}: expected tiny or smollm2")),
        };
        let model = Model::load(&path).map_err(|error| error.to_string());
        if self.model == "tiny" {
            let _ = std::fs::remove_file(&path);
        }
        model.map(Arc::new)
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct Outcome {
    text: String,
    /// From the request to the first chunk with text.
    ttft: Option<Duration>,
    /// From the request to the end of the stream.
    total: Duration,
    completion_tokens: u64,
    /// Why the stream is not whole: an HTTP error, an error event, no
    /// finish reason or no `[DONE]`.
    problem: Option<String>,
}

/// One streamed request, read chunk by chunk as server-sent events.
async fn stream_one(
    client: &reqwest::Client,
    url: &str,
    body: Value,
    in_flight: &AtomicUsize,
    peak: &AtomicUsize,
) -> Outcome {
    let mut outcome = Outcome::default();
    let started = Instant::now();
    let response = match client.post(url).json(&body).send().await {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => {
            outcome.problem = Some(format!("HTTP {}", response.status()));
            return outcome;
        }
        Err(error) => {
            outcome.problem = Some(format!("send: {error}"));
            return outcome;
        }
    };
    let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    peak.fetch_max(now, Ordering::Relaxed);
    let mut bytes = response.bytes_stream();
    let mut buffer = Vec::new();
    let (mut finished, mut done) = (false, false);
    'read: while let Some(chunk) = bytes.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                outcome.problem = Some(format!("read: {error}"));
                break;
            }
        };
        buffer.extend_from_slice(&chunk);
        // Events end with a blank line; a chunk may hold several or a part.
        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let Some(data) = std::str::from_utf8(&event)
                .ok()
                .and_then(|event| event.trim_end().strip_prefix("data: "))
            else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                break 'read;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                outcome.problem = Some(format!("not JSON: {data}"));
                break 'read;
            };
            if chunk.get("error").is_some() {
                outcome.problem = Some(format!("error event: {data}"));
                break 'read;
            }
            if let Some(tokens) = chunk["usage"]["completion_tokens"].as_u64() {
                outcome.completion_tokens = tokens;
            }
            let choice = &chunk["choices"][0];
            if let Some(text) = choice["text"].as_str().filter(|text| !text.is_empty()) {
                outcome.ttft.get_or_insert_with(|| started.elapsed());
                outcome.text += text;
            }
            finished |= choice["finish_reason"].is_string();
        }
    }
    in_flight.fetch_sub(1, Ordering::Relaxed);
    outcome.total = started.elapsed();
    if outcome.problem.is_none() && !(finished && done) {
        outcome.problem = Some(format!("cut short (finish: {finished}, [DONE]: {done})"));
    }
    outcome
}

/// The non-streamed twin: the whole text in one JSON answer.
async fn twin(client: &reqwest::Client, url: &str, body: Value) -> Result<String, String> {
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|error| format!("send: {error}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let answer: Value = response
        .json()
        .await
        .map_err(|error| format!("read: {error}"))?;
    answer["choices"][0]["text"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no text in {answer}"))
}

/// A field of `/proc/self/status` in kB (`VmHWM`: peak resident set).
fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix(" kB")?
            .parse()
            .ok()
    })
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The `q` quantile (0..=1) of sorted `values`, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn request(options: &Options, index: usize, stream: bool) -> Value {
    let mut body = json!({
        "model": "default",
        "prompt": PROMPTS[index % PROMPTS.len()],
        "max_tokens": options.max_tokens,
        "temperature": TEMPERATURE,
        "seed": SEED_BASE + index as u64,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

async fn run(options: Options) -> Result<bool, String> {
    let needed = 2 * options.clients as u64 + SPARE_FDS;
    if let Some(limit) = open_files_limit().filter(|&limit| limit < needed) {
        return Err(format!(
            "{} clients need about {needed} open files; the limit is {limit}: run `ulimit -n {needed}` first",
            options.clients
        ));
    }
    let model = options.load_model()?;
    let config = ServerConfig {
        workers: options.workers,
        // Every client waits in the queue rather than getting 429.
        max_queue: options.clients,
        ..ServerConfig::default()
    };
    let state = AppState::new(model, config).map_err(|error| error.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| error.to_string())?;
    let url = format!(
        "http://{}/v1/completions",
        listener.local_addr().map_err(|error| error.to_string())?
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    let rss_idle_kb = status_kb("VmRSS").unwrap_or(0);

    // HTTP/1.1 carries one stream per connection: reqwest opens as many as
    // there are requests in flight (it sets no upper bound).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients)
        .build()
        .map_err(|error| error.to_string())?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    println!(
        "load: {} concurrent streams, model {}, {} tokens each, {} workers",
        options.clients, options.model, options.max_tokens, options.workers
    );

    let started = Instant::now();
    let streams: Vec<_> = (0..options.clients)
        .map(|index| {
            let (client, url) = (client.clone(), url.clone());
            let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
            let body = request(&options, index, true);
            tokio::spawn(async move { stream_one(&client, &url, body, &in_flight, &peak).await })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(options.clients);
    for stream in streams {
        outcomes.push(stream.await.map_err(|error| error.to_string())?);
    }
    let wall = started.elapsed();
    let rss_peak_kb = status_kb("VmHWM").unwrap_or(0);

    // The twins, also all at once.
    let twins_started = Instant::now();
    let twins: Vec<_> = (0..options.clients)
        .map(|index| {
            let (client, url) = (client.clone(), url.clone());
            let body = request(&options, index, false);
            tokio::spawn(async move { twin(&client, &url, body).await })
        })
        .collect();
    let (mut lost, mut mismatched) = (0, 0);
    for (index, (outcome, twin)) in outcomes.iter().zip(twins).enumerate() {
        let twin = twin.await.map_err(|error| error.to_string())?;
        if let Some(problem) = &outcome.problem {
            lost += 1;
            eprintln!("client {index}: lost: {problem}");
        } else {
            match twin {
                Ok(text) if text == outcome.text => {}
                Ok(text) => {
                    mismatched += 1;
                    eprintln!(
                        "client {index}: streamed {:?} but its twin got {text:?}",
                        outcome.text
                    );
                }
                Err(problem) => {
                    lost += 1;
                    eprintln!("client {index}: twin lost: {problem}");
                }
            }
        }
    }
    let twins_wall = twins_started.elapsed();
    // Idle pooled connections would hold the graceful shutdown open.
    drop(client);
    let _ = stop.send(());
    server
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;

    let tokens: u64 = outcomes
        .iter()
        .map(|outcome| outcome.completion_tokens)
        .sum();
    let mut ttfts: Vec<Duration> = outcomes.iter().filter_map(|outcome| outcome.ttft).collect();
    ttfts.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    let mut totals: Vec<Duration> = outcomes.iter().map(|outcome| outcome.total).collect();
    totals.sort();
    println!(
        "streams: {} ok, {lost} lost, {mismatched} differ from their non-streamed twin; peak {} open at once",
        options.clients - lost - mismatched,
        peak.load(Ordering::Relaxed)
    );
    println!(
        "wall {:.2} s; {tokens} tokens, {:.0} tokens/s (the non-streamed twins: {:.2} s)",
        wall.as_secs_f64(),
        tokens as f64 / wall.as_secs_f64(),
        twins_wall.as_secs_f64()
    );
    println!(
        "time to first token: p50 {:.1} ms, p99 {:.1} ms (from sending, queueing included)",
        ms(quantile(&ttfts, 0.5)),
        ms(quantile(&ttfts, 0.99))
    );
    println!(
        "whole stream: p50 {:.1} ms, p99 {:.1} ms (from sending, queueing included)",
        ms(quantile(&totals, 0.5)),
        ms(quantile(&totals, 0.99))
    );
    println!(
        "RSS: peak {:.1} MB (VmHWM, server and clients in one process), {:.1} MB after loading the model",
        rss_peak_kb as f64 / 1024.0,
        rss_idle_kb as f64 / 1024.0
    );
    Ok(lost == 0 && mismatched == 0)
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("load: {error}");
            return ExitCode::from(2);
        }
    };
    // Two runtime threads: the target machine has 2 cores, which the
    // scheduler's matrix products share with the runtime.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("load: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("load: {error}");
            ExitCode::from(2)
        }
    }
}

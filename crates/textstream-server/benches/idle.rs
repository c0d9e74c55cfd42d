//! Idle keep-alive connections against the rest, run by hand, not in CI:
//! requests per second of `GET /health` and of one-token completions, first
//! with no other connection open, then with N idle keep-alive connections
//! (each has made one request and stays open, silent). Afterwards every
//! idle connection must still answer a request of its own: they were kept,
//! not dropped to make room.
//!
//! ```sh
//! cargo bench -p textstream-server --bench idle
//! cargo bench -p textstream-server --bench idle -- --idle 1000 --seconds 5 --clients 8
//! ```
//!
//! The server runs in this process on the tiny random model, with its
//! default limits (a connection may stay idle for `--header-timeout`, 30 s,
//! longer than a run). It exits with status 1 when an idle connection was
//! dropped or a request failed.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use textstream_engine::model::Model;
use textstream_server::{serve, AppState, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runtime threads: one per core of the target machine.
const RUNTIME_THREADS: usize = 2;
/// Seed of the tiny model's random weights (as in the tests).
const TINY_SEED: u64 = 7;

#[derive(Debug)]
struct Options {
    idle: usize,
    seconds: u64,
    clients: usize,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let number = |flag: &str, default: usize| -> Result<usize, String> {
            match args.iter().position(|arg| arg == flag) {
                None => Ok(default),
                Some(i) => {
                    let text = args.get(i + 1).ok_or(format!("{flag} needs a value"))?;
                    text.parse()
                        .map_err(|_| format!("{flag} {text}: not a number"))
                }
            }
        };
        Ok(Self {
            idle: number("--idle", 1000)?,
            seconds: number("--seconds", 5)? as u64,
            clients: number("--clients", 8)?.max(1),
        })
    }
}

/// Sends `GET /health` on `stream` and reads the whole answer.
async fn health_on(stream: &mut TcpStream) -> Result<(), String> {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .map_err(|error| error.to_string())?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let read = stream
            .read(&mut buffer)
            .await
            .map_err(|error| error.to_string())?;
        if read == 0 {
            return Err("closed by the server".to_owned());
        }
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer);
        let Some(head_end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..head_end]
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .ok_or("no content-length")?;
        if answer.len() >= head_end + 4 + length {
            return match text.starts_with("HTTP/1.1 200") {
                true => Ok(()),
                false => Err(format!("answered {}", text.lines().next().unwrap_or(""))),
            };
        }
    }
}

/// Requests per second that `clients` keep-alive clients get for `seconds`,
/// each sending `request` again as soon as its answer is read; failures
/// are counted apart.
async fn rate(
    clients: usize,
    seconds: u64,
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> (f64, u64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let request = Arc::new(request);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, request) = (client.clone(), Arc::clone(&request));
            let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
            tokio::spawn(async move {
                while Instant::now() < until {
                    let ok = match request(&client).send().await {
                        Ok(response) => {
                            let ok = response.status() == 200;
                            ok && response.bytes().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    let counter = if ok { &done } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    )
}

async fn run(options: Options) -> Result<bool, String> {
    let _ = rlimit::increase_nofile_limit(2 * options.idle as u64 + 1024);
    let path =
        std::env::temp_dir().join(format!("textstream-idle-tiny-{}.gguf", std::process::id()));
    textstream_engine::testing::write_tiny_model(&path, TINY_SEED)
        .map_err(|error| error.to_string())?;
    let model = Model::load(&path).map_err(|error| error.to_string());
    let _ = std::fs::remove_file(&path);
    let state = AppState::new(Arc::new(model?), ServerConfig::default())
        .map_err(|error| error.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| error.to_string())?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    let base = format!("http://{address}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));

    let health = {
        let url = format!("{base}/health");
        move |client: &reqwest::Client| client.get(&url)
    };
    let completion = {
        let url = format!("{base}/v1/completions");
        move |client: &reqwest::Client| {
            client.post(&url).json(&json!({
                "model": "default", "prompt": "Once", "max_tokens": 1, "seed": 1,
            }))
        }
    };
    println!(
        "idle: {} clients, {} s per figure, tiny model, {} runtime threads",
        options.clients, options.seconds, RUNTIME_THREADS
    );
    let mut ok = true;
    let mut rows = Vec::new();
    let mut idle_streams = Vec::new();
    for idle in [0, options.idle] {
        while idle_streams.len() < idle {
            let mut stream = TcpStream::connect(address)
                .await
                .map_err(|error| format!("idle connection {}: {error}", idle_streams.len()))?;
            health_on(&mut stream).await?;
            idle_streams.push(stream);
        }
        let (health_rate, health_failed) =
            rate(options.clients, options.seconds, health.clone()).await;
        let (completion_rate, completion_failed) =
            rate(options.clients, options.seconds, completion.clone()).await;
        ok &= health_failed == 0 && completion_failed == 0;
        rows.push((
            idle,
            health_rate,
            health_failed,
            completion_rate,
            completion_failed,
        ));
    }
    // Every idle connection is still served.
    let mut dropped = 0;
    for stream in &mut idle_streams {
        if health_on(stream).await.is_err() {
            dropped += 1;
        }
    }
    ok &= dropped == 0;
    drop(idle_streams);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(40), server).await;

    println!(
        "| idle keep-alive connections | GET /health req/s | 1-token completions req/s | failed |"
    );
    println!("|---:|---:|---:|---:|");
    for (idle, health_rate, health_failed, completion_rate, completion_failed) in rows {
        println!(
            "| {idle} | {health_rate:.0} | {completion_rate:.0} | {} |",
            health_failed + completion_failed
        );
    }
    println!(
        "idle connections still answered afterwards: {} of {}",
        options.idle - dropped,
        options.idle
    );
    Ok(ok)
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("idle: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("idle: {message}");
            ExitCode::FAILURE
        }
    }
}

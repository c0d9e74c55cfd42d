//! Shared test helpers: a tiny model written once per test binary, and a
//! server started in-process on 127.0.0.1:0 with an injected shutdown.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::Client;
use textstream_engine::model::Model;
use textstream_server::{serve, AppState, ServerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Seed of the tiny model's random weights.
pub const TINY_SEED: u64 = 7;

/// The tiny random-weight model, written to a temp file once per process.
pub fn tiny_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    Arc::clone(MODEL.get_or_init(|| {
        let path: PathBuf = std::env::temp_dir().join(format!(
            "textstream-server-tiny-{}-{TINY_SEED}.gguf",
            std::process::id()
        ));
        textstream_engine::testing::write_tiny_model(&path, TINY_SEED).expect("write tiny model");
        let model = Model::load(&path).expect("load tiny model");
        let _ = std::fs::remove_file(&path);
        Arc::new(model)
    }))
}

/// SmolLM2 (the default model), loaded once per process.
pub fn real_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    Arc::clone(MODEL.get_or_init(|| {
        let path = textstream_engine::testing::default_model_path();
        Arc::new(Model::load(&path).expect("load the default model"))
    }))
}

/// A server running in this process.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The state, for its counters.
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts `model` with `config` on an ephemeral port.
    pub async fn start(model: Arc<Model>, config: ServerConfig) -> Self {
        let state = AppState::new(model, config).expect("start workers");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Self {
            base,
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A handle on a server the caller started and stops (by dropping the
    /// runtime); [`TestServer::stop`] then does nothing.
    pub fn running(base: String, state: AppState) -> Self {
        Self {
            base,
            state,
            shutdown: None,
            task: None,
        }
    }

    /// The tiny model with default settings.
    pub async fn tiny() -> Self {
        Self::start(tiny_model(), ServerConfig::default()).await
    }

    /// An async-openai client pointed at this server.
    pub fn openai(&self) -> Client<OpenAIConfig> {
        Client::with_config(
            OpenAIConfig::new()
                .with_api_base(format!("{}/v1", self.base))
                .with_api_key("unused"),
        )
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of an unlabelled metric.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Waits until `metric` equals `value`, failing after `within`.
    pub async fn wait_for_metric(&self, name: &str, value: f64, within: Duration) {
        let start = Instant::now();
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(
                start.elapsed() < within,
                "{name} is {now}, not {value}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Triggers the shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("serve");
        }
    }
}

/// The `data:` payloads of an SSE body, in order (`[DONE]` included).
pub fn sse_data(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect()
}

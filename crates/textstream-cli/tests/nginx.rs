//! Two `textstream serve` replicas behind nginx, run with the project's own
//! `deploy/nginx.conf` (only its ports replaced): streams reach the client
//! token by token through the proxy; when one replica is stopped mid-run its
//! streams end with an error event, the others finish, and every new
//! request is served by the replica left. Skipped (with a message) when
//! nginx is not installed, unless `TEXTSTREAM_REQUIRE_NGINX=1` (CI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use textstream_engine::testing::write_tiny_model;

/// Each generated token waits this long in the replicas, so that streams
/// last long enough to be cut.
const TOKEN_DELAY_MS: u64 = 40;

/// Tokens each stream asks for: 100 × 40 ms = 4 s at least.
const STREAM_TOKENS: u64 = 100;

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx_binary() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")]);
    for dir in candidates {
        let path = dir.join("nginx");
        if path.is_file() {
            return Some(path);
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

async fn wait_for_health(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = reqwest::get(format!("{base}/health")).await {
            if response.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{base} never answered /health");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_replica(model: &Path, port: u16) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_textstream"))
        .env_remove("TEXTSTREAM_MODEL")
        .env_remove("TEXTSTREAM_API_KEY")
        .args(["serve", "--port", &port.to_string(), "--allow-any-host"])
        .args(["--shutdown-timeout", "1"])
        .args(["--token-delay-ms", &TOKEN_DELAY_MS.to_string()])
        .args(["--model", &model.display().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("start a replica");
    Running(child)
}

/// `deploy/nginx.conf` with the replicas' and nginx's own ports replaced.
fn nginx_config(replicas: [u16; 2], listen: u16) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx.conf");
    let config = std::fs::read_to_string(&path).expect("read deploy/nginx.conf");
    for needle in ["127.0.0.1:8081", "127.0.0.1:8082", "listen 8080;"] {
        assert!(config.contains(needle), "deploy/nginx.conf lacks {needle}");
    }
    config
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", replicas[0]))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{}", replicas[1]))
        .replace("listen 8080;", &format!("listen 127.0.0.1:{listen};"))
}

/// How a stream went: when its first token came, and how it ended.
#[derive(Debug)]
struct StreamEnd {
    first_token: Duration,
    took: Duration,
    /// `Some(reason)` when it finished, `None` when it ended with an error event.
    finish: Option<String>,
    done: bool,
}

async fn run_stream(base: String, seed: u64) -> StreamEnd {
    let start = Instant::now();
    let body = json!({
        "model": "default",
        "prompt": "Once",
        "max_tokens": STREAM_TOKENS,
        "temperature": 1.0,
        "seed": seed,
        "stream": true,
    });
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let mut chunks = response.bytes_stream();
    let mut pending = String::new();
    let mut first_token = None;
    let mut finish = None;
    let mut error = false;
    let mut done = false;
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else { break };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|line| line.strip_prefix("data: ")) else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let event: Value = serde_json::from_str(data).expect("JSON event");
            if event.get("error").is_some() {
                error = true;
                continue;
            }
            let choice = &event["choices"][0];
            if choice["text"].as_str().is_some_and(|text| !text.is_empty()) {
                first_token.get_or_insert(start.elapsed());
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(reason.to_owned());
            }
        }
    }
    assert!(
        finish.is_some() != error,
        "a stream must end either finished or with an error event"
    );
    StreamEnd {
        first_token: first_token.expect("a token"),
        took: start.elapsed(),
        finish,
        done,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_nginx_survive_one_stopping() {
    let Some(nginx) = nginx_binary() else {
        assert!(
            std::env::var_os("TEXTSTREAM_REQUIRE_NGINX").is_none(),
            "TEXTSTREAM_REQUIRE_NGINX is set but nginx is not installed"
        );
        eprintln!("skipped: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("textstream-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let model = dir.join("tiny.gguf");
    write_tiny_model(&model, 7).expect("write the tiny model");

    let ports = [free_port(), free_port()];
    let mut replicas = [
        start_replica(&model, ports[0]),
        start_replica(&model, ports[1]),
    ];
    for port in ports {
        wait_for_health(&format!("http://127.0.0.1:{port}")).await;
    }
    let listen = free_port();
    let config = dir.join("nginx.conf");
    std::fs::write(&config, nginx_config(ports, listen)).expect("write nginx.conf");
    let proxy = Running(
        Command::new(&nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&config)
            .args(["-g", "daemon off;"])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx"),
    );
    let base = format!("http://127.0.0.1:{listen}");
    wait_for_health(&base).await;

    // Four long streams: least_conn puts two on each replica.
    let streams: Vec<_> = (0..4)
        .map(|seed| {
            let base = base.clone();
            tokio::spawn(async move { run_stream(base, seed).await })
        })
        .collect();
    // Stop the first replica while they run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = Command::new("kill")
        .args(["-TERM", &replicas[0].0.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());

    // While it stops and after, new requests are all served (by the other).
    let client = reqwest::Client::new();
    for i in 0..20 {
        let response = client
            .post(format!("{base}/v1/completions"))
            .json(&json!({"model": "default", "prompt": "Hi", "max_tokens": 2, "seed": i}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "request {i} after the stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut ends = Vec::new();
    for stream in streams {
        let end = tokio::time::timeout(Duration::from_secs(60), stream)
            .await
            .expect("every stream ends")
            .expect("stream task");
        ends.push(end);
    }
    eprintln!("{ends:#?}");
    let cut = ends.iter().filter(|end| end.finish.is_none()).count();
    let finished = ends.iter().filter(|end| end.finish.is_some()).count();
    assert!(cut >= 1, "no stream was on the stopped replica: {ends:?}");
    assert!(finished >= 1, "no stream finished on the other: {ends:?}");
    for end in &ends {
        assert!(end.done, "every stream ends with [DONE]: {end:?}");
        // Unbuffered: the first token came long before the stream ended.
        assert!(
            end.first_token * 3 < end.took,
            "the first token waited for the stream: {end:?}"
        );
    }
    let exit = replicas[0].0.wait().expect("wait");
    assert_eq!(exit.code(), Some(0), "the stopped replica exits cleanly");
    drop(proxy);
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
}

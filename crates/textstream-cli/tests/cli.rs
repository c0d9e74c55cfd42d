//! The `textstream` binary, run as a user runs it: real processes, real model
//! files (the default SmolLM2 and a tiny random one written by the test).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use textstream_engine::testing::{default_model_path, write_tiny_model};

fn textstream() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_textstream"));
    command.env_remove("TEXTSTREAM_MODEL");
    command
}

fn with_stdin(mut command: Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts textstream");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn tiny_model(name: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("textstream-cli-{}-{name}.gguf", std::process::id()));
    write_tiny_model(&path, 7).expect("writes the tiny model");
    path
}

fn model_arg(path: &Path) -> [String; 2] {
    ["--model".into(), path.display().to_string()]
}

#[test]
fn tokenize_matches_the_llama_cpp_reference() {
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../textstream-engine/tests/data/reference/smollm2-tokenizer.jsonl"
    ))
    .expect("the reference file");
    let model = default_model_path();
    for line in reference.lines().take(5) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let output = textstream()
            .arg("tokenize")
            .arg(case["text"].as_str().unwrap())
            .args(model_arg(&model))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let ids: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        assert_eq!(ids, case["ids"], "{line}");
    }
}

#[test]
fn replay_shows_the_chunks_and_reports_bad_lines() {
    let model = default_model_path();
    // "中" is split over byte tokens by SmolLM2's tokenizer: the chunks never
    // show a half character.
    let ids = {
        let output = textstream()
            .args(["tokenize", "Hi 中文 👩‍👩‍👧"])
            .args(model_arg(&model))
            .output()
            .unwrap();
        stdout(&output).trim().to_string()
    };
    let input = format!("{{\"ids\":{ids}}}\nnot json\n{{\"ids\":[1, \"x\"]}}\n");
    let mut command = textstream();
    command.arg("replay").args(model_arg(&model));
    let output = with_stdin(command, &input);
    assert_eq!(
        output.status.code(),
        Some(1),
        "bad lines make the exit status 1"
    );
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let chunks: Vec<&str> = lines[0]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(chunks.concat(), "Hi 中文 👩‍👩‍👧");
    assert!(
        chunks.len() > 2 && chunks.iter().all(|c| !c.contains('\u{FFFD}')),
        "{chunks:?}"
    );
    assert!(lines[1]["error"].as_str().unwrap().contains("line 2"));
    assert!(lines[2]["error"].as_str().unwrap().contains("line 3"));
}

#[test]
fn replay_words_mode_waits_for_word_ends() {
    let model = default_model_path();
    let ids = stdout(
        &textstream()
            .args(["tokenize", "streaming text arrives"])
            .args(model_arg(&model))
            .output()
            .unwrap(),
    );
    let mut command = textstream();
    command
        .args(["replay", "--mode", "words"])
        .args(model_arg(&model));
    let output = with_stdin(command, &format!("{{\"ids\":{}}}\n", ids.trim()));
    assert!(output.status.success());
    let line: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(
        line["chunks"],
        serde_json::json!(["streaming ", "text ", "arrives"])
    );
}

#[test]
fn run_on_the_real_model_streams_the_answer() {
    let model = default_model_path();
    let output = textstream()
        .args([
            "run",
            "--chat",
            "--system",
            "You are a helpful assistant.",
            "--timings",
            "-n",
            "24",
        ])
        .arg("What is the capital of France?")
        .args(model_arg(&model))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).contains("Paris"), "{}", stdout(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TTFT") && stderr.contains("tok/s"),
        "{stderr}"
    );
}

#[test]
fn run_is_deterministic_for_a_seed() {
    let tiny = tiny_model("seed");
    let run_with = |seed: &str, threads: &str| {
        let output = textstream()
            .args([
                "run",
                "hello there",
                "-n",
                "12",
                "--temperature",
                "0.9",
                "--seed",
                seed,
                "--threads",
                threads,
            ])
            .args(model_arg(&tiny))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout(&output)
    };
    let run = |seed: &str| run_with(seed, "2");
    assert_eq!(run("1"), run("1"));
    // Each output is computed whole by one thread: the split does not matter.
    assert_eq!(run_with("1", "1"), run("1"));
    let _ = std::fs::remove_file(tiny);
}

#[test]
fn bad_input_gives_a_clear_error_and_exit_status() {
    let missing = textstream()
        .args(["run", "hi", "--model", "/nonexistent/model.gguf"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/model.gguf"));

    let garbage = std::env::temp_dir().join(format!(
        "textstream-cli-{}-garbage.gguf",
        std::process::id()
    ));
    std::fs::write(&garbage, b"this is not a GGUF file at all").unwrap();
    let corrupt = textstream()
        .args(["run", "hi"])
        .args(model_arg(&garbage))
        .output()
        .unwrap();
    assert_eq!(corrupt.status.code(), Some(1));
    let message = String::from_utf8_lossy(&corrupt.stderr);
    assert!(
        message.starts_with("error:") && !message.contains("panicked"),
        "{message}"
    );
    let _ = std::fs::remove_file(garbage);

    let no_threads = textstream()
        .args(["run", "hi", "--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(no_threads.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_threads.stderr).contains("--threads"));

    let tiny = tiny_model("bad-sampling");
    let bad_top_p = textstream()
        .args(["run", "hi", "--top-p", "1.5"])
        .args(model_arg(&tiny))
        .output()
        .unwrap();
    assert_eq!(bad_top_p.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad_top_p.stderr).contains("top_p"),
        "{}",
        String::from_utf8_lossy(&bad_top_p.stderr)
    );
    let _ = std::fs::remove_file(tiny);
}

#[test]
fn a_tokenizer_json_overrides_the_gguf_tokenizer() {
    let model = default_model_path();
    let mut file = std::fs::File::open(&model).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let tokenizer = textstream_engine::tokenizer::GgufTokenizer::from_gguf(&content).unwrap();
    let json = std::env::temp_dir().join(format!(
        "textstream-cli-{}-tokenizer.json",
        std::process::id()
    ));
    tokenizer.tokenizer.save(&json, false).unwrap();
    let with_json = textstream()
        .args(["tokenize", "Hello, world!", "--tokenizer"])
        .arg(&json)
        .args(model_arg(&model))
        .output()
        .unwrap();
    assert!(
        with_json.status.success(),
        "{}",
        String::from_utf8_lossy(&with_json.stderr)
    );
    assert_eq!(stdout(&with_json).trim(), "[19556,28,905,17]");

    std::fs::write(&json, b"{ not a tokenizer").unwrap();
    let broken = textstream()
        .args(["tokenize", "Hello", "--tokenizer"])
        .arg(&json)
        .args(model_arg(&model))
        .output()
        .unwrap();
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stderr).contains("tokenizer"));
    let _ = std::fs::remove_file(json);
}

/// Sends `GET path` and returns the status line, or `None` if nobody answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.lines().next().map(str::to_string)
}

#[test]
fn serve_answers_and_exits_cleanly_on_sigterm() {
    let tiny = tiny_model("serve");
    let (mut server, port) = start_server(&tiny, &[]);
    let status = http_get(port, "/health").expect("an answer");
    assert!(status.contains("200"), "{status}");
    send_signal(&server, "-TERM");
    let exit = server.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "serve did not exit 0 on SIGTERM");
    let _ = std::fs::remove_file(tiny);
}

/// Starts `textstream serve` on the tiny model on a free port; waits until
/// `/health` answers.
fn start_server(tiny: &Path, extra: &[&str]) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = textstream()
        .args(["serve", "--port", &port.to_string(), "--workers", "1"])
        .args(extra)
        .args(model_arg(tiny))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while http_get(port, "/health").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (server, port)
}

fn send_signal(child: &std::process::Child, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits up to `limit` for `child` to exit.
fn wait_for_exit(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

#[test]
fn a_second_signal_exits_at_once_while_a_request_holds_the_shutdown() {
    let tiny = tiny_model("second-signal");
    let (mut server, port) = start_server(&tiny, &["--shutdown-timeout", "60"]);
    // A request whose body never finishes is in flight: the first SIGTERM
    // waits for it (up to the body timeout and the shutdown timeout).
    let mut held = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        held,
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    send_signal(&server, "-TERM");
    let waited = wait_for_exit(&mut server, std::time::Duration::from_secs(2));
    assert!(waited.is_none(), "exited at the first signal: {waited:?}");
    send_signal(&server, "-INT");
    let exit = wait_for_exit(&mut server, std::time::Duration::from_secs(10));
    let Some(exit) = exit else {
        let _ = server.kill();
        panic!("the second signal did not end the server");
    };
    assert_eq!(exit.code(), Some(130));
    drop(held);
    let _ = std::fs::remove_file(tiny);
}

/// `textstream models` lists every catalog model with its architecture and
/// whether it is cached, in the cache `TEXTSTREAM_CACHE_DIR` names.
#[test]
fn models_lists_the_catalog_and_what_is_cached() {
    let cache = std::env::temp_dir().join(format!("textstream-cli-{}-cache", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    let list = |cache: &Path| {
        let output = textstream()
            .arg("models")
            .env("TEXTSTREAM_CACHE_DIR", cache)
            .output()
            .unwrap();
        assert!(output.status.success());
        stdout(&output)
    };
    let row = |text: &str, name: &str| {
        text.lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .to_owned()
    };
    let empty = list(&cache);
    for (name, arch) in [
        ("smollm2-135m", "llama"),
        ("qwen2.5-coder-0.5b", "qwen2"),
        ("gemma3-270m", "gemma3"),
    ] {
        let line = row(&empty, name);
        assert!(line.contains(arch) && line.contains(" no "), "{line}");
    }
    // A file of the right size in the cache counts as cached.
    let default = default_model_path();
    std::fs::copy(&default, cache.join(default.file_name().unwrap())).unwrap();
    let line = row(&list(&cache), "smollm2-135m");
    assert!(line.contains(" yes "), "{line}");
    let _ = std::fs::remove_dir_all(cache);
}

/// `--model` takes catalog names; a name that is not one lists those that are.
#[test]
fn model_names_select_catalog_models() {
    let output = textstream()
        .args(["tokenize", "Hello, world!", "--model", "qwen2.5-coder-0.5b"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout(&output).trim(), "[9707,11,1879,0]");
    let unknown = textstream()
        .args(["run", "hi", "--model", "qwen9-giant"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        message.contains("qwen9-giant") && message.contains("gemma3-270m"),
        "{message}"
    );
}

/// `--ctx-size` lowers the context; above the trained one it is an error.
#[test]
fn ctx_size_lowers_the_context_only() {
    let tiny = tiny_model("ctx");
    let run = |ctx: &str, max_tokens: &str| {
        textstream()
            .args(["run", "the rain", "-n", max_tokens, "--ctx-size", ctx])
            .args(model_arg(&tiny))
            .output()
            .unwrap()
    };
    assert!(run("64", "8").status.success());
    // 64 positions cannot hold a prompt and 60 new tokens.
    let overflow = run("64", "60");
    assert_eq!(overflow.status.code(), Some(1));
    let too_large = run("100000", "8");
    assert_eq!(too_large.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&too_large.stderr).contains("context"),
        "{}",
        String::from_utf8_lossy(&too_large.stderr)
    );
    let _ = std::fs::remove_file(tiny);
}

#[test]
fn bench_reports_speed_and_the_bounds_it_is_held_to() {
    use textstream_engine::testing::{
        TINY_BLOCKS, TINY_FEED_FORWARD, TINY_HEADS, TINY_HIDDEN, TINY_KV_HEADS,
    };
    let tiny = tiny_model("bench");
    let bench = |new_tokens: &str, extra: &[&str]| {
        textstream()
            .arg("bench")
            .args(model_arg(&tiny))
            .args(["--prompt-lengths", "8,16", "--new-tokens", new_tokens])
            .args(extra)
            .output()
            .expect("runs textstream bench")
    };

    let output = bench("4", &["--json"]);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_str(stdout(&output).trim()).expect("JSON");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    let head_dim = TINY_HIDDEN / TINY_HEADS;
    let kv = TINY_KV_HEADS * head_dim;
    let products = TINY_BLOCKS
        * TINY_HIDDEN
        * ((TINY_HIDDEN + 2 * kv) + TINY_HIDDEN + 2 * TINY_FEED_FORWARD + TINY_FEED_FORWARD);
    assert_eq!(report["prompt_macs_per_token"], products);
    for (run, tokens) in runs.iter().zip([8u64, 16]) {
        assert_eq!(run["prompt_tokens"], tokens);
        assert_eq!(run["new_tokens"], 4);
        let prefill = run["prefill_tok_s"].as_f64().expect("prefill speed");
        assert!(prefill > 0.0 && run["decode_tok_s"].as_f64().unwrap() > 0.0);
        // On a SIMD tier the compute probe ran: the bound is above what
        // prefill reached (the portable tier has no peak to probe).
        match report["kernel"].as_str() {
            Some("portable") => assert!(run["prefill_bound_tok_s"].is_null()),
            _ => {
                let bound = run["prefill_bound_tok_s"].as_f64().expect("a bound");
                assert!(prefill < bound, "{prefill} tok/s under a bound of {bound}");
            }
        }
    }
    if report["kernel"] != "portable" {
        let int8 = report["int8_peak_g_s"].as_f64().expect("int8 peak");
        let f32 = report["f32_fma_peak_g_s"].as_f64().expect("f32 peak");
        assert!(int8.is_finite() && int8 > 0.0 && f32.is_finite() && f32 > 0.0);
    }

    let output = bench("4", &[]);
    assert!(output.status.success(), "{output:?}");
    let table = stdout(&output);
    assert!(
        table.contains("prefill ratio") && table.contains("memory read"),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("16 ")), "{table}");

    // Bad input: a clear error, not a panic.
    let output = bench("0", &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("new_tokens") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(tiny);
}

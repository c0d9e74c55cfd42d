//! The chat page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver) against a server started in this process.
//!
//! One test walks the page the way a person would: type, send, watch the
//! answer grow while it streams, read the tokens/s line, answer again with the
//! first exchange still in the conversation, then stop a long answer and see
//! the server cancel the generation and free its worker. Others check the API
//! key field, the settings (system prompt, temperature), the conversation
//! history in local storage, and the Markdown rendering of answers (against a
//! stub that streams a fixed answer: headings, lists, links, code, raw HTML)
//! with its copy buttons.
//!
//! It needs `chromium` and `chromium-driver` (Debian's packages; CI installs
//! them in `.ci/run`). Without them it fails, saying so: a browser test that
//! silently skips would let the page break unnoticed.

mod common;

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use common::{tiny_model, TestServer};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use textstream_server::{app, AppState, ServerConfig};
use tokio::sync::{mpsc, Semaphore};

/// What to install when the browser or its driver is missing.
const INSTALL_HINT: &str = "install chromium and chromium-driver \
    (`apt-get install -y chromium chromium-driver`; CI installs them in .ci/run)";

/// Flags for a quiet, disposable headless Chromium in a container: no
/// sandbox (CI runs as root), no GPU, no /dev/shm (small in containers), and
/// nothing that phones home or syncs a profile.
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
];

/// Each token takes at least this long, so that a DOM poll sees an answer
/// part-way: 24 tokens last about a second.
const TOKEN_DELAY: Duration = Duration::from_millis(40);
/// Answer length of the first two turns, in tokens. The tiny model's context
/// is 128 tokens and the second prompt holds the whole first exchange.
const SHORT_ANSWER_TOKENS: u32 = 24;
/// How often the test reads the page while it waits.
const POLL: Duration = Duration::from_millis(25);
/// Longest wait for anything: chromedriver, a page, a whole answer.
const PATIENCE: Duration = Duration::from_secs(30);
/// Different text lengths an answer must show while streaming, to prove it
/// grew in place rather than appearing at once.
const GROWTH_STEPS: usize = 3;
/// How long a stopped answer must stay the same length: many tokens' worth.
const STOPPED_FOR: Duration = Duration::from_millis(500);

/// A chromedriver child process on a free port, with a fresh Chromium profile
/// directory. Dropping it kills chromedriver, any Chromium left behind (a
/// failed test never closes its session) and the profile.
struct Chromedriver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it answers `/status`.
    async fn start() -> Self {
        let driver = find_on_path("chromedriver")
            .unwrap_or_else(|| panic!("chromedriver is not on PATH: {INSTALL_HINT}"));
        // Bind to learn a free port, then hand it over: chromedriver binds it
        // a moment later; nothing else here races for ports.
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let profile =
            std::env::temp_dir().join(format!("textstream-browser-{}-{port}", std::process::id()));
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", driver.display()));
        let driver = Self {
            child,
            port,
            profile,
        };
        let status = format!("{}/status", driver.url());
        let started = Instant::now();
        while !reqwest::get(&status)
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            assert!(
                started.elapsed() < PATIENCE,
                "chromedriver did not answer on port {port}"
            );
            tokio::time::sleep(POLL).await;
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A headless Chromium session with a profile of its own.
    async fn browser(&self) -> Client {
        let chromium = find_on_path("chromium")
            .unwrap_or_else(|| panic!("chromium is not on PATH: {INSTALL_HINT}"));
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|&flag| flag.to_owned()).collect();
        args.push(format!("--user-data-dir={}", self.profile.display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({"binary": chromium, "args": args}),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url())
            .await
            .expect("a Chromium session from chromedriver")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium outlives a killed chromedriver; its command line names our
        // unique profile directory, which finds exactly our processes.
        for pid in pids_mentioning(&self.profile) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The first executable called `name` on `PATH`.
/// Environment variable that makes a missing browser a failure instead of
/// a skip; `.ci/run` sets it (after installing Chromium).
const REQUIRE_BROWSER_ENV: &str = "TEXTSTREAM_REQUIRE_BROWSER";

/// Whether chromium and chromedriver are on PATH. Without them the test
/// says it is skipped and why, unless [`REQUIRE_BROWSER_ENV`] is set, when
/// their absence fails it.
fn browser_available() -> bool {
    let missing: Vec<&str> = ["chromium", "chromedriver"]
        .into_iter()
        .filter(|name| find_on_path(name).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os(REQUIRE_BROWSER_ENV).is_some() {
        panic!("{} not on PATH: {INSTALL_HINT}", missing.join(" and "));
    }
    eprintln!(
        "SKIPPED the chat page's browser test: {} not on PATH ({INSTALL_HINT}; \
         {REQUIRE_BROWSER_ENV}=1 makes this a failure)",
        missing.join(" and ")
    );
    false
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Ids of the processes whose command line contains `needle`.
fn pids_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.to_owned();
            pid.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
        .collect()
}

/// Request bodies of `POST /v1/chat/completions`, as the server received them.
type Recorded = Arc<Mutex<Vec<Value>>>;

/// The server's app with a layer in front that records chat request bodies,
/// so the test can see what the page sent.
async fn start_recording(config: ServerConfig) -> (TestServer, Recorded) {
    start_server(config, None).await
}

/// Like [`start_recording`], but chat requests get the stub's answer instead
/// of the model's. Returns the stub's gate: a [`Piece::Wait`] in an answer
/// holds the stream until the test adds a permit.
async fn start_stubbed(script: Script) -> (TestServer, Recorded, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let stub = Stub {
        script,
        gate: Arc::clone(&gate),
    };
    let (server, recorded) = start_server(ServerConfig::default(), Some(stub)).await;
    (server, recorded, gate)
}

/// The app on an ephemeral port, recording chat request bodies; the stub,
/// when there is one, answers them instead of the model.
async fn start_server(config: ServerConfig, stub: Option<Stub>) -> (TestServer, Recorded) {
    let recorded = Recorded::default();
    let state = AppState::new(tiny_model(), config).expect("start workers");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let bodies = Arc::clone(&recorded);
    let router =
        app(state.clone()).layer(middleware::from_fn(move |request: Request, next: Next| {
            let bodies = Arc::clone(&bodies);
            let stub = stub.clone();
            async move { record(bodies, stub, request, next).await }
        }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (TestServer::running(base, state), recorded)
}

async fn record(bodies: Recorded, stub: Option<Stub>, request: Request, next: Next) -> Response {
    if request.uri().path() != "/v1/chat/completions" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("request body");
    let json: Value = serde_json::from_slice(&bytes).expect("the page sends JSON");
    bodies.lock().expect("not poisoned").push(json.clone());
    match stub {
        Some(stub) => stub.respond(&json),
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

/// One piece of a stubbed answer.
#[derive(Clone, Debug)]
enum Piece {
    /// Text, streamed as one `chat.completion.chunk` event.
    Text(String),
    /// Holds the stream until the test adds a permit to the gate.
    Wait,
}

/// The stub's answer to a chat request (its JSON body).
type Script = Arc<dyn Fn(&Value) -> Vec<Piece> + Send + Sync>;

/// Pause between the stub's writes, so that the page reads them one by one.
const STUB_PAUSE: Duration = Duration::from_millis(10);

/// Answers chat requests with a script's pieces, in OpenAI's streaming shape.
#[derive(Clone)]
struct Stub {
    script: Script,
    gate: Arc<Semaphore>,
}

impl Stub {
    fn respond(&self, request: &Value) -> Response {
        let pieces = (self.script)(request);
        let gate = Arc::clone(&self.gate);
        let (tx, rx) = mpsc::channel::<Vec<u8>>(1);
        tokio::spawn(async move {
            let mut tokens = 0;
            for piece in pieces {
                let text = match piece {
                    Piece::Wait => {
                        gate.acquire().await.expect("the gate stays open").forget();
                        continue;
                    }
                    Piece::Text(text) => text,
                };
                tokens += 1;
                // Each event in two writes, split in the middle (of a
                // character, too, where it falls so): the page must put both
                // together.
                let event = sse_event(&stub_chunk(json!({ "content": text }), Value::Null));
                let (first, second) = event.as_bytes().split_at(event.len() / 2);
                for part in [first, second] {
                    if tx.send(part.to_vec()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(STUB_PAUSE).await;
                }
            }
            let mut usage = stub_chunk(json!({}), Value::Null);
            usage["choices"] = json!([]);
            usage["usage"] = json!({
                "prompt_tokens": 1,
                "completion_tokens": tokens,
                "total_tokens": tokens + 1,
            });
            for event in [
                sse_event(&stub_chunk(json!({}), json!("stop"))),
                sse_event(&usage),
                "data: [DONE]\n\n".to_owned(),
            ] {
                if tx.send(event.into_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let bytes = rx.recv().await?;
            Some((Ok::<_, Infallible>(bytes), rx))
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(Body::from_stream(stream))
            .expect("a response")
    }
}

fn stub_chunk(delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "stub",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

fn sse_event(data: &Value) -> String {
    format!("data: {data}\n\n")
}

/// Runs `script` (a function body) in the page and returns its value.
async fn js(browser: &Client, script: &str) -> Value {
    browser
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|error| panic!("{script}: {error}"))
}

/// The text of the last assistant bubble as streamed (its `data-raw`: the
/// page renders it as Markdown), `None` before there is one.
async fn last_answer(browser: &Client) -> Option<String> {
    let value = js(
        browser,
        "const all = document.querySelectorAll('#log .assistant');
         return all.length ? all[all.length - 1].dataset.raw ?? '' : null;",
    )
    .await;
    value.as_str().map(str::to_owned)
}

/// Whether a request is in flight (the page disables Send meanwhile).
async fn busy(browser: &Client) -> bool {
    js(browser, "return document.getElementById('send').disabled;")
        .await
        .as_bool()
        .expect("a boolean")
}

/// Every bubble in the log, as `(role, text)`: a user's text as shown, an
/// answer's as streamed.
async fn bubbles(browser: &Client) -> Vec<(String, String)> {
    let value = js(
        browser,
        "return Array.from(document.querySelectorAll('#log .msg'),
                           (div) => [div.classList[1], div.dataset.raw ?? div.textContent]);",
    )
    .await;
    serde_json::from_value(value).expect("pairs of strings")
}

async fn stats(browser: &Client) -> String {
    let element = browser.find(Locator::Id("stats")).await.expect("#stats");
    element.text().await.expect("stats text")
}

/// Types `text` into the message box, sets the answer limit (empty: the
/// server's default) and sends with the Send button or the Enter key.
async fn ask(browser: &Client, text: &str, max_tokens: Option<u32>, with_enter: bool) {
    let limit = browser
        .find(Locator::Id("max-tokens"))
        .await
        .expect("#max-tokens");
    limit.clear().await.expect("clear the limit");
    if let Some(max_tokens) = max_tokens {
        limit
            .send_keys(&max_tokens.to_string())
            .await
            .expect("type the limit");
    }
    let input = browser.find(Locator::Id("input")).await.expect("#input");
    input.send_keys(text).await.expect("type the message");
    if with_enter {
        input
            .send_keys(&Key::Enter.to_string())
            .await
            .expect("press Enter");
    } else {
        let send = browser.find(Locator::Id("send")).await.expect("#send");
        send.click().await.expect("click Send");
    }
}

/// Polls the answer while it streams; returns its successive distinct
/// lengths (in UTF-16 units, as the page counts) once the page is idle again.
async fn watch_answer(browser: &Client) -> Vec<usize> {
    let started = Instant::now();
    let mut lengths: Vec<usize> = Vec::new();
    loop {
        // Read "busy" first: an answer read after the page went idle is final.
        let still_busy = busy(browser).await;
        let length = last_answer(browser)
            .await
            .map_or(0, |text| text.encode_utf16().count());
        if length > 0 && lengths.last() != Some(&length) {
            lengths.push(length);
        }
        if !still_busy {
            return lengths;
        }
        assert!(started.elapsed() < PATIENCE, "the answer never finished");
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `script` (a function body) until it returns `expected`.
async fn wait_for(browser: &Client, script: &str, expected: &Value) {
    let started = Instant::now();
    loop {
        let value = js(browser, script).await;
        if value == *expected {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "waited for {expected} from `{script}`; it is {value}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Clicks the element that `css` selects.
async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("{css}: {error}"))
        .click()
        .await
        .unwrap_or_else(|error| panic!("click {css}: {error}"));
}

/// Replaces what the field with `id` holds with `text` (typed).
async fn fill(browser: &Client, id: &str, text: &str) {
    let field = browser
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("#{id}: {error}"));
    field.clear().await.expect("clear the field");
    if !text.is_empty() {
        field.send_keys(text).await.expect("type into the field");
    }
}

/// Asserts the answer grew in place: several increasing lengths.
fn assert_grew(lengths: &[usize]) {
    assert!(
        lengths.len() >= GROWTH_STEPS && lengths.windows(2).all(|pair| pair[0] < pair[1]),
        "the answer should grow while streaming; lengths seen: {lengths:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_page_streams_answers_keeps_the_conversation_and_stops() {
    if !browser_available() {
        return;
    }
    let driver = Chromedriver::start().await;
    let config = ServerConfig {
        // One worker: "the worker is free" is then one number.
        workers: 1,
        token_delay: Some(TOKEN_DELAY),
        ..ServerConfig::default()
    };
    let (server, recorded) = start_recording(config).await;
    let browser = driver.browser().await;
    browser
        .goto(&format!("{}/", server.base))
        .await
        .expect("open /");
    assert_eq!(
        browser.title().await.expect("title"),
        "textstream chat",
        "the chat page"
    );

    // Turn one: Send button; the answer grows while it streams, then the
    // stats line gives its rate.
    ask(&browser, "Hello there", Some(SHORT_ANSWER_TOKENS), false).await;
    assert_grew(&watch_answer(&browser).await);
    let line = stats(&browser).await;
    assert!(
        line.contains(&format!("{SHORT_ANSWER_TOKENS} tokens")) && line.contains("tokens/s"),
        "stats after the first answer: {line:?}"
    );
    let first_answer = last_answer(&browser).await.expect("the first answer");

    // Turn two: Enter key; the request carries the whole conversation.
    ask(&browser, "And then?", Some(SHORT_ANSWER_TOKENS), true).await;
    assert_grew(&watch_answer(&browser).await);
    let second_answer = last_answer(&browser).await.expect("the second answer");
    assert_eq!(
        bubbles(&browser).await,
        [
            ("user", "Hello there"),
            ("assistant", first_answer.as_str()),
            ("user", "And then?"),
            ("assistant", second_answer.as_str()),
        ]
        .map(|(role, text)| (role.to_owned(), text.to_owned()))
    );
    let requests = recorded.lock().expect("not poisoned").clone();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(
        requests[1]["messages"],
        json!([
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": first_answer},
            {"role": "user", "content": "And then?"},
        ])
    );
    assert_eq!(requests[1]["stream"], true);
    assert_eq!(requests[1]["max_tokens"], SHORT_ANSWER_TOKENS);
    assert_eq!(
        server.metric("textstream_tokens_generated_total").await,
        f64::from(2 * SHORT_ANSWER_TOKENS)
    );

    // Stop: a fresh conversation (the tiny model's context is full) with no
    // limit, so the answer fills the context slowly; stop it part-way.
    browser
        .goto(&format!("{}/", server.base))
        .await
        .expect("reload /");
    ask(&browser, "Tell me a long story", None, false).await;
    let started = Instant::now();
    while last_answer(&browser)
        .await
        .map_or(0, |text| text.encode_utf16().count())
        < GROWTH_STEPS
    {
        assert!(
            started.elapsed() < PATIENCE,
            "the long answer never started"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(server.metric("textstream_busy_workers").await, 1.0);
    browser
        .find(Locator::Id("stop"))
        .await
        .expect("#stop")
        .click()
        .await
        .expect("click Stop");
    let started = Instant::now();
    while busy(&browser).await {
        assert!(started.elapsed() < PATIENCE, "Stop did not end the request");
        tokio::time::sleep(POLL).await;
    }
    let stopped_at = last_answer(&browser).await.expect("the stopped answer");
    tokio::time::sleep(STOPPED_FOR).await;
    assert_eq!(
        last_answer(&browser).await.as_deref(),
        Some(stopped_at.as_str()),
        "the answer kept growing after Stop"
    );
    assert!(
        stats(&browser).await.contains("stopped"),
        "{:?}",
        stats(&browser).await
    );
    let requests = recorded.lock().expect("not poisoned").clone();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert!(
        requests[2].get("max_tokens").is_none(),
        "an empty limit sends none: {}",
        requests[2]
    );
    // The server saw the client leave: the generation was cancelled part-way
    // and the one worker is free.
    server
        .wait_for_metric("textstream_generations_cancelled_total", 1.0, PATIENCE)
        .await;
    server
        .wait_for_metric("textstream_busy_workers", 0.0, PATIENCE)
        .await;
    server
        .wait_for_metric("textstream_active_streams", 0.0, PATIENCE)
        .await;
    let context = tiny_model().context_length();
    let generated = server.metric("textstream_tokens_generated_total").await;
    assert!(
        generated < f64::from(2 * SHORT_ANSWER_TOKENS) + context as f64 / 2.0,
        "the stopped generation ran on: {generated} tokens in all"
    );

    browser.close().await.expect("close the browser");
    drop(driver);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_page_sends_the_api_key_it_keeps_and_starts_new_conversations() {
    if !browser_available() {
        return;
    }
    let driver = Chromedriver::start().await;
    let config = ServerConfig {
        api_key: Some("page-key-1".to_owned()),
        ..ServerConfig::default()
    };
    let (server, recorded) = start_recording(config).await;
    let browser = driver.browser().await;
    browser
        .goto(&format!("{}/", server.base))
        .await
        .expect("open /");

    // The page names the model it talks to.
    let started = Instant::now();
    loop {
        let name = js(
            &browser,
            "return document.getElementById('model').textContent;",
        )
        .await;
        if name == json!(server.state.config().model_name) {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the model name never showed: {name}"
        );
        tokio::time::sleep(POLL).await;
    }

    // Without the key: the answer bubble says what is wrong.
    ask(&browser, "Hello", Some(4), false).await;
    watch_answer(&browser).await;
    let refused = last_answer(&browser).await.expect("an error bubble");
    assert!(refused.contains("API key"), "{refused:?}");
    assert_eq!(
        server.metric("textstream_tokens_generated_total").await,
        0.0
    );

    // With it (typed into the field; moving on to the message box keeps it).
    let key = browser
        .find(Locator::Id("api-key"))
        .await
        .expect("#api-key");
    key.send_keys("page-key-1").await.expect("type the key");
    ask(&browser, "Hello", Some(4), false).await;
    watch_answer(&browser).await;
    let classes = js(
        &browser,
        "const all = document.querySelectorAll('#log .assistant');
         return all[all.length - 1].className;",
    )
    .await;
    assert!(
        !classes.as_str().expect("class").contains("error"),
        "{classes}"
    );
    assert_eq!(
        server.metric("textstream_tokens_generated_total").await,
        4.0
    );

    // "New" starts a new conversation: an empty log, and the next request
    // carries only its own message.
    let new = browser.find(Locator::Id("new")).await.expect("#new");
    new.click().await.expect("click New");
    assert!(bubbles(&browser).await.is_empty());
    ask(&browser, "Fresh start", Some(4), false).await;
    watch_answer(&browser).await;
    let requests = recorded.lock().expect("not poisoned").clone();
    assert_eq!(
        requests.last().expect("a request")["messages"],
        json!([{"role": "user", "content": "Fresh start"}])
    );

    // The key outlives a reload (the browser's local storage).
    browser
        .goto(&format!("{}/", server.base))
        .await
        .expect("reload /");
    let kept = js(&browser, "return document.getElementById('api-key').value;").await;
    assert_eq!(kept, "page-key-1");
}

/// The stub's Markdown answer before it waits (inside the open code block).
const MARKDOWN_HEAD: [&str; 7] = [
    "# Heading\n\nSome **bo",
    "ld** and *italic* text, `inline <b>code</b>`, naïve ✓.\n\n",
    "- one\n- two\n\n1. first\n2. second\n\n",
    "See [the docs](https://example.com/docs?q=1) or [bad](javascript:alert(1)).\n\n",
    "Raw: <img src=x onerror=\"window.pwned=1\"> <script>window.pwned=2</script>\n\n",
    "```rust\n",
    "fn main() {\n",
];
/// The rest of it, streamed once the test opens the gate.
const MARKDOWN_TAIL: [&str; 2] = ["    println!(\"<hi> & `bye`\");\n}\n", "```\n\nDone."];
/// The code block's text.
const CODE: &str = "fn main() {\n    println!(\"<hi> & `bye`\");\n}";

/// `(Markdown, the HTML the page renders for it)`, for the cases the
/// streamed answer does not cover.
const RENDERED: [(&str, &str); 9] = [
    (
        "- a\n  - nested\n- b\n\n3. three\n4. four",
        "<ul><li><p>a</p><ul><li><p>nested</p></li></ul></li><li><p>b</p></li></ul>\
         <ol start=\"3\"><li><p>three</p></li><li><p>four</p></li></ol>",
    ),
    (
        "line one\nline two\n\n> quoted\n\n---\n### Small ###",
        "<p>line one<br>line two</p><blockquote><p>quoted</p></blockquote><hr><h3>Small</h3>",
    ),
    (
        "| a | b |\n|---|--:|\n| 1 | 2 |",
        "<div class=\"table\"><table><thead><tr><th>a</th><th style=\"text-align: right;\">b</th>\
         </tr></thead><tbody><tr><td>1</td><td style=\"text-align: right;\">2</td></tr></tbody>\
         </table></div>",
    ),
    (
        "2 * 3 * 4, snake_case_name, \\*escaped\\*, ***both***, ~~gone~~, `unclosed",
        "<p>2 * 3 * 4, snake_case_name, *escaped*, <strong><em>both</em></strong>, \
         <del>gone</del>, `unclosed</p>",
    ),
    (
        "[**bold link**](https://example.com/x) and https://example.com/y.",
        "<p><a href=\"https://example.com/x\" rel=\"noopener noreferrer\" target=\"_blank\">\
         <strong>bold link</strong></a> and <a href=\"https://example.com/y\" \
         rel=\"noopener noreferrer\" target=\"_blank\">https://example.com/y</a>.</p>",
    ),
    // Only http(s) links: these stay text, and an image is no <img>.
    (
        "[rel](/etc) [data](data:text/html,<b>x</b>) [vb](vbscript:x) ![i](https://e.com/i.png)",
        "<p>[rel](/etc) [data](data:text/html,&lt;b&gt;x&lt;/b&gt;) [vb](vbscript:x) !<a \
         href=\"https://e.com/i.png\" rel=\"noopener noreferrer\" target=\"_blank\">i</a></p>",
    ),
    (
        "<a href=\"javascript:alert(1)\">x</a> &lt; <!-- c -->",
        "<p>&lt;a href=\"javascript:alert(1)\"&gt;x&lt;/a&gt; &amp;lt; &lt;!-- c --&gt;</p>",
    ),
    // A code block inside a list item, and an unterminated one (streaming).
    (
        "1. Run:\n   ```sh\n   ls <dir>\n   ```",
        "<ol><li><p>Run:</p><div class=\"code\"><div class=\"code-bar\"><span>sh</span>\
         <button class=\"copy\" type=\"button\" title=\"Copy this code\">Copy</button></div>\
         <pre><code class=\"language-sh\">ls &lt;dir&gt;</code></pre></div></li></ol>",
    ),
    (
        "```\nopen <code>",
        "<div class=\"code\"><div class=\"code-bar\"><span>code</span><button class=\"copy\" \
         type=\"button\" title=\"Copy this code\">Copy</button></div><pre><code>open \
         &lt;code&gt;</code></pre></div>",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_page_renders_markdown_answers_safely_and_copies_code() {
    if !browser_available() {
        return;
    }
    let driver = Chromedriver::start().await;
    let script: Script = Arc::new(|_| {
        let text = |piece: &&str| Piece::Text((*piece).to_owned());
        let mut pieces: Vec<Piece> = MARKDOWN_HEAD.iter().map(text).collect();
        pieces.push(Piece::Wait);
        pieces.extend(MARKDOWN_TAIL.iter().map(text));
        pieces
    });
    let (server, recorded, gate) = start_stubbed(script).await;

    // The page builds answers from DOM nodes: nothing in it parses HTML from
    // a string; and its policy allows no other scripts or origins.
    let response = reqwest::get(format!("{}/", server.base))
        .await
        .expect("GET /");
    let policy = response
        .headers()
        .get("content-security-policy")
        .expect("a Content-Security-Policy")
        .to_str()
        .expect("ASCII")
        .to_owned();
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    let page = response.text().await.expect("the page");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "DOMParser",
        "createContextualFragment",
        "srcdoc",
    ] {
        assert!(!page.contains(sink), "the page uses {sink}");
    }

    let browser = driver.browser().await;
    browser
        .goto(&format!("{}/", server.base))
        .await
        .expect("open /");
    ask(&browser, "Show **me** <i>Markdown</i>", Some(64), false).await;

    // While the code block is still open, it shows as code so far.
    wait_for(
        &browser,
        "const code = document.querySelector('#log .assistant pre > code');
         return code && code.textContent;",
        &json!("fn main() {"),
    )
    .await;
    assert!(busy(&browser).await, "the stub holds the stream");
    gate.add_permits(1);
    watch_answer(&browser).await;

    let answer = [MARKDOWN_HEAD.as_slice(), MARKDOWN_TAIL.as_slice()]
        .concat()
        .concat();
    let seen = js(
        &browser,
        "const [user, answer] = document.querySelectorAll('#log .msg');
         const texts = (css) => Array.from(answer.querySelectorAll(css), (node) => node.textContent);
         return {
           user: [user.childElementCount, user.textContent],
           raw: answer.dataset.raw,
           headings: texts('h1, h2, h3, h4, h5, h6'),
           strong: texts('strong'),
           em: texts('em'),
           inlineCode: texts(':not(pre) > code'),
           bullets: texts('ul > li'),
           numbered: texts('ol > li'),
           links: Array.from(answer.querySelectorAll('a'),
                             (a) => [a.getAttribute('href'), a.textContent, a.rel, a.target]),
           code: texts('pre > code'),
           language: answer.querySelector('pre > code').className,
           unsafe: answer.querySelectorAll('img, script, b, i, [onerror]').length,
           pwned: window.pwned ?? null,
           last: answer.lastElementChild.tagName + ' ' + answer.lastElementChild.textContent,
           text: answer.textContent,
         };",
    )
    .await;
    let text = seen["text"].as_str().expect("the answer's text").to_owned();
    assert_eq!(
        seen,
        json!({
            // The user's message stays plain text.
            "user": [0, "Show **me** <i>Markdown</i>"],
            "raw": answer,
            "headings": ["Heading"],
            "strong": ["bold"],
            "em": ["italic"],
            "inlineCode": ["inline <b>code</b>"],
            "bullets": ["one", "two"],
            "numbered": ["first", "second"],
            "links": [["https://example.com/docs?q=1", "the docs", "noopener noreferrer", "_blank"]],
            "code": [CODE],
            "language": "language-rust",
            "unsafe": 0,
            "pwned": null,
            "last": "P Done.",
            "text": text,
        })
    );
    // HTML and a javascript: link show as the characters they are.
    for literal in [
        "<img src=x onerror=\"window.pwned=1\">",
        "<script>window.pwned=2</script>",
        "[bad](javascript:alert(1))",
        "naïve ✓",
    ] {
        assert!(text.contains(literal), "{literal:?} not in {text:?}");
    }
    assert_eq!(recorded.lock().expect("not poisoned").len(), 1);

    // Copy, through the Clipboard API (stubbed: headless permissions vary).
    js(
        &browser,
        "window.copied = [];
         navigator.clipboard.writeText = (text) => { window.copied.push(text); return Promise.resolve(); };",
    )
    .await;
    let copy_button = "#log .assistant .code .copy";
    click(&browser, copy_button).await;
    let copied =
        "return [window.copied, document.querySelector('#log .assistant .copy').textContent];";
    wait_for(&browser, copied, &json!([[CODE], "Copied"])).await;
    wait_for(&browser, copied, &json!([[CODE], "Copy"])).await;
    // Without it: a hidden textarea's selection and execCommand('copy').
    js(
        &browser,
        "Object.defineProperty(navigator, 'clipboard', { value: undefined, configurable: true });
         window.copied = [];
         document.execCommand = (command) => {
           const area = document.activeElement;
           window.copied.push([command, area.tagName,
                               area.value.slice(area.selectionStart, area.selectionEnd)]);
           return true;
         };",
    )
    .await;
    click(&browser, copy_button).await;
    wait_for(
        &browser,
        copied,
        &json!([[["copy", "TEXTAREA", CODE]], "Copied"]),
    )
    .await;
    assert_eq!(
        js(
            &browser,
            "return document.querySelectorAll('textarea').length;"
        )
        .await,
        2,
        "the copy textarea is gone again (the message box and the system prompt stay)"
    );

    // The renderer on its own, for what the answer above does not cover.
    let sources: Vec<&str> = RENDERED.iter().map(|(source, _)| *source).collect();
    let rendered = browser
        .execute(
            "return arguments[0].map((source) => {
               const div = document.createElement('div');
               div.append(window.textstream.renderMarkdown(source));
               return div.innerHTML;
             });",
            vec![json!(sources)],
        )
        .await
        .expect("render");
    for ((source, expected), html) in RENDERED.iter().zip(rendered.as_array().expect("a list")) {
        assert_eq!(html, expected, "rendering {source:?}");
    }

    browser.close().await.expect("close the browser");
    drop(driver);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_page_sends_and_keeps_its_settings() {
    if !browser_available() {
        return;
    }
    let driver = Chromedriver::start().await;
    let (server, recorded) = start_recording(ServerConfig::default()).await;
    let browser = driver.browser().await;
    let open = || async {
        browser
            .goto(&format!("{}/", server.base))
            .await
            .expect("open /");
    };
    open().await;
    let panel = "return [document.getElementById('settings').hidden,
                         document.getElementById('settings-toggle').getAttribute('aria-expanded')];";
    let fields = "const t = document.getElementById('temperature');
                  return [document.getElementById('system-prompt').value, t.value,
                          t.getAttribute('aria-invalid')];";
    let last_request = || recorded.lock().expect("not poisoned").last().cloned();

    // Closed at first; the Settings button opens it. Defaults: no system
    // prompt, temperature 0.7.
    assert_eq!(js(&browser, panel).await, json!([true, "false"]));
    click(&browser, "#settings-toggle").await;
    assert_eq!(js(&browser, panel).await, json!([false, "true"]));
    assert_eq!(js(&browser, fields).await, json!(["", "0.7", "false"]));

    // Both go with the request: the system prompt as the first message.
    fill(&browser, "system-prompt", "You are terse.").await;
    fill(&browser, "temperature", "1.3").await;
    ask(&browser, "Hi", Some(4), false).await;
    watch_answer(&browser).await;
    let request = last_request().expect("a request");
    assert_eq!(
        request["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
        ])
    );
    assert_eq!(request["temperature"], json!(1.3));
    let classes = js(
        &browser,
        "return document.querySelector('#log .assistant').className;",
    )
    .await;
    assert_eq!(classes, "msg assistant", "the server took it");

    // Kept over a reload.
    open().await;
    assert_eq!(
        js(&browser, fields).await,
        json!(["You are terse.", "1.3", "false"])
    );

    // Out of range: marked, and not sent (the server's default applies).
    click(&browser, "#settings-toggle").await;
    fill(&browser, "temperature", "5").await;
    assert_eq!(
        js(&browser, fields).await,
        json!(["You are terse.", "5", "true"])
    );
    ask(&browser, "Again", Some(4), false).await;
    watch_answer(&browser).await;
    let request = last_request().expect("a request");
    assert!(request.get("temperature").is_none(), "{request}");
    assert_eq!(request["messages"][0]["role"], "system");
    // Still marked after a reload, with the panel open to show it.
    open().await;
    assert_eq!(
        js(&browser, fields).await,
        json!(["You are terse.", "5", "true"])
    );
    assert_eq!(js(&browser, panel).await, json!([false, "true"]));

    // Not a number at all: marked, not sent.
    fill(&browser, "temperature", "-").await;
    assert_eq!(
        js(&browser, fields).await,
        json!(["You are terse.", "", "true"])
    );
    ask(&browser, "Once more", Some(4), false).await;
    watch_answer(&browser).await;
    let request = last_request().expect("a request");
    assert!(request.get("temperature").is_none(), "{request}");

    // Both empty: nothing of them is sent, and nothing is marked.
    fill(&browser, "temperature", "").await;
    fill(&browser, "system-prompt", "").await;
    ask(&browser, "Plain", Some(4), false).await;
    watch_answer(&browser).await;
    let request = last_request().expect("a request");
    assert!(request.get("temperature").is_none(), "{request}");
    assert_eq!(request["messages"][0]["role"], "user", "{request}");
    assert_eq!(js(&browser, fields).await, json!(["", "", "false"]));
    open().await;
    assert_eq!(js(&browser, fields).await, json!(["", "", "false"]));
    assert_eq!(recorded.lock().expect("not poisoned").len(), 4);

    browser.close().await.expect("close the browser");
    drop(driver);
}

/// The titles in the conversation list, top to bottom.
async fn titles(browser: &Client) -> Vec<String> {
    let value = js(
        browser,
        "return Array.from(document.querySelectorAll('#conversations .open'), (b) => b.textContent);",
    )
    .await;
    serde_json::from_value(value).expect("strings")
}

/// `(role, text)` pairs, for comparing with [`bubbles`].
fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(role, text)| ((*role).to_owned(), (*text).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_page_keeps_conversations_in_local_storage() {
    if !browser_available() {
        return;
    }
    let driver = Chromedriver::start().await;
    // The stub answers "You said: **<the last message>**".
    let script: Script = Arc::new(|request| {
        let messages = request["messages"].as_array().expect("messages");
        let last = messages.last().expect("a message")["content"]
            .as_str()
            .expect("text");
        ["You said: ", "**", last, "**"]
            .into_iter()
            .map(|piece| Piece::Text(piece.to_owned()))
            .collect()
    });
    let (server, recorded, _gate) = start_stubbed(script).await;
    let browser = driver.browser().await;
    let open = || async {
        browser
            .goto(&format!("{}/", server.base))
            .await
            .expect("open /");
    };
    let converse = |text: &'static str| {
        let browser = &browser;
        async move {
            ask(browser, text, Some(8), false).await;
            watch_answer(browser).await;
        }
    };
    let last_messages = || {
        recorded
            .lock()
            .expect("not poisoned")
            .last()
            .expect("a request")["messages"]
            .clone()
    };
    open().await;

    // Whatever the stored list is, broken or of the wrong shape, the page
    // starts with none, and works: it saves a conversation over it.
    for broken in [
        "{not json",
        "{\"a\": 1}",
        "[1, null, \"x\", {\"id\": 5}, {\"id\": \"x\", \"messages\": \"no\"}]",
    ] {
        browser
            .execute(
                "localStorage.setItem('textstream.conversations', arguments[0]);",
                vec![json!(broken)],
            )
            .await
            .expect("set the stored list");
        open().await;
        assert!(titles(&browser).await.is_empty(), "{broken}");
        converse("Hello").await;
        assert_eq!(titles(&browser).await, ["Hello"], "{broken}");
        assert_eq!(
            bubbles(&browser).await,
            pairs(&[("user", "Hello"), ("assistant", "You said: **Hello**")]),
            "{broken}"
        );
    }
    js(
        &browser,
        "localStorage.removeItem('textstream.conversations');",
    )
    .await;
    open().await;

    // One conversation of two turns, then a new one.
    converse("First question").await;
    assert_eq!(titles(&browser).await, ["First question"]);
    converse("Follow-up").await;
    let first = pairs(&[
        ("user", "First question"),
        ("assistant", "You said: **First question**"),
        ("user", "Follow-up"),
        ("assistant", "You said: **Follow-up**"),
    ]);
    assert_eq!(bubbles(&browser).await, first);
    click(&browser, "#new").await;
    assert!(bubbles(&browser).await.is_empty());
    converse("Second topic").await;
    assert_eq!(
        last_messages(),
        json!([{"role": "user", "content": "Second topic"}])
    );
    assert_eq!(titles(&browser).await, ["Second topic", "First question"]);

    // What is stored: id, title, time, messages.
    let stored = js(
        &browser,
        "return JSON.parse(localStorage.getItem('textstream.conversations'));",
    )
    .await;
    let stored = stored.as_array().expect("a list");
    assert_eq!(stored.len(), 2);
    assert!(stored[0]["id"].is_string() && stored[0]["updated"].is_number());
    assert_eq!(stored[1]["title"], "First question");
    assert_eq!(stored[1]["messages"].as_array().map(Vec::len), Some(4));

    // After a reload: the list, newest first, and an empty log; the older
    // conversation comes back, rendered, and goes on.
    open().await;
    assert!(bubbles(&browser).await.is_empty());
    assert_eq!(titles(&browser).await, ["Second topic", "First question"]);
    click(&browser, "#conversations li:nth-child(2) .open").await;
    assert_eq!(bubbles(&browser).await, first);
    assert_eq!(
        js(
            &browser,
            "return [Array.from(document.querySelectorAll('#log .assistant strong'), (s) => s.textContent),
                     document.querySelector('#conversations li.current .open').textContent];",
        )
        .await,
        json!([["First question", "Follow-up"], "First question"])
    );
    converse("Third").await;
    assert_eq!(
        last_messages(),
        json!([
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "You said: **First question**"},
            {"role": "user", "content": "Follow-up"},
            {"role": "assistant", "content": "You said: **Follow-up**"},
            {"role": "user", "content": "Third"},
        ])
    );
    assert_eq!(titles(&browser).await, ["First question", "Second topic"]);

    // Delete: another conversation, then the one on screen (which clears it).
    click(&browser, "#conversations li:nth-child(2) .delete").await;
    assert_eq!(titles(&browser).await, ["First question"]);
    assert_eq!(bubbles(&browser).await.len(), 6);
    click(&browser, "#conversations li:nth-child(1) .delete").await;
    assert!(titles(&browser).await.is_empty());
    assert!(bubbles(&browser).await.is_empty());
    assert_eq!(
        js(
            &browser,
            "return [document.getElementById('no-conversations').hidden,
                     localStorage.getItem('textstream.conversations')];",
        )
        .await,
        json!([false, "[]"])
    );
    converse("After deleting").await;
    assert_eq!(
        last_messages(),
        json!([{"role": "user", "content": "After deleting"}])
    );

    // At most 50: a new one drops the oldest. A long first message makes a
    // shortened title.
    js(
        &browser,
        "localStorage.setItem('textstream.conversations', JSON.stringify(
           Array.from({ length: 50 }, (_, k) => ({
             id: 'old-' + k, title: 'Old ' + k, updated: k + 1,
             messages: [{ role: 'user', content: 'Old ' + k }],
           }))));",
    )
    .await;
    open().await;
    let listed = titles(&browser).await;
    assert_eq!(
        (listed.len(), listed[0].as_str(), listed[49].as_str()),
        (50, "Old 49", "Old 0")
    );
    let long = "A rather long first message that goes on well past the title's length";
    converse(long).await;
    let listed = titles(&browser).await;
    let title: String = long.chars().take(47).chain(['…']).collect();
    assert_eq!(
        (
            listed.len(),
            listed[0].as_str(),
            listed[1].as_str(),
            listed[49].as_str()
        ),
        (50, title.as_str(), "Old 49", "Old 1")
    );

    browser.close().await.expect("close the browser");
    drop(driver);
}

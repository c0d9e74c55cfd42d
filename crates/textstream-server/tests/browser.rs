//! The chat page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver) against a server started in this process.
//!
//! One test walks the page the way a person would: type, send, watch the
//! answer grow while it streams, read the tokens/s line, answer again with the
//! first exchange still in the conversation, then stop a long answer and see
//! the server cancel the generation and free its worker.
//!
//! It needs `chromium` and `chromium-driver` (Debian's packages; CI installs
//! them in `.ci/run`). Without them it fails, saying so: a browser test that
//! silently skips would let the page break unnoticed.

mod common;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use common::{tiny_model, TestServer};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use textstream_server::{app, AppState, ServerConfig};

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
            async move { record(bodies, request, next).await }
        }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (TestServer::running(base, state), recorded)
}

async fn record(bodies: Recorded, request: Request, next: Next) -> Response {
    if request.uri().path() != "/v1/chat/completions" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("request body");
    let json = serde_json::from_slice(&bytes).expect("the page sends JSON");
    bodies.lock().expect("not poisoned").push(json);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Runs `script` (a function body) in the page and returns its value.
async fn js(browser: &Client, script: &str) -> Value {
    browser
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|error| panic!("{script}: {error}"))
}

/// The text of the last assistant bubble, `None` before there is one.
async fn last_answer(browser: &Client) -> Option<String> {
    let value = js(
        browser,
        "const all = document.querySelectorAll('#log .assistant');
         return all.length ? all[all.length - 1].textContent : null;",
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

/// Every bubble in the log, as `(role, text)`.
async fn bubbles(browser: &Client) -> Vec<(String, String)> {
    let value = js(
        browser,
        "return Array.from(document.querySelectorAll('#log .msg'),
                           (div) => [div.classList[1], div.textContent]);",
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

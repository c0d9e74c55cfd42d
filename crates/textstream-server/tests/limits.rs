//! What a slow or greedy client can hold, over raw TCP: the header timeout
//! (a silent connection, a head sent a byte at a time, an idle keep-alive
//! connection), the body timeout (408) and the cap on open connections.

mod common;

use std::time::{Duration, Instant};

use common::{tiny_model, TestServer};
use textstream_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A timeout short enough for a test, long enough for a loaded machine to
/// send a whole request well inside it.
const SHORT: Duration = Duration::from_millis(600);

/// How long a test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(10);

fn config() -> ServerConfig {
    ServerConfig {
        header_timeout: SHORT,
        body_timeout: SHORT,
        ..ServerConfig::default()
    }
}

async fn connect(server: &TestServer) -> TcpStream {
    let address = server.base.trim_start_matches("http://");
    TcpStream::connect(address).await.expect("connect")
}

/// Reads until the server closes the connection; what it sent and how long
/// the close took. Panics if it stays open for [`PATIENCE`].
async fn read_to_close(stream: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    (
        String::from_utf8_lossy(&bytes).into_owned(),
        start.elapsed(),
    )
}

/// Reads one whole response with a `Content-Length` body.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length");
            if bytes.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .expect("the response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {text:?}");
        bytes.extend_from_slice(&buffer[..n]);
    }
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let server = TestServer::start(tiny_model(), config()).await;
    let mut silent = connect(&server).await;
    let (sent, took) = read_to_close(&mut silent).await;
    assert!(took >= SHORT / 2, "closed after {took:?}");
    assert!(!sent.contains("200"), "{sent:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_head_sent_too_slowly_is_cut_off() {
    let server = TestServer::start(tiny_model(), config()).await;
    let mut slow = connect(&server).await;
    let start = Instant::now();
    // One byte every 100 ms: the head would take 4 s, the limit is 0.6 s.
    let mut closed = false;
    for byte in HEALTH {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut probe)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => panic!("an answer to a head that never finished in time"),
            Err(_) => {}
        }
    }
    assert!(closed, "the server waited out the whole slow head");
    assert!(start.elapsed() < PATIENCE, "{:?}", start.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
    let server = TestServer::start(tiny_model(), config()).await;
    let mut client = connect(&server).await;
    // Requests closer together than the timeout keep the connection, for
    // longer than the timeout in all.
    let start = Instant::now();
    while start.elapsed() < SHORT * 2 {
        client.write_all(HEALTH).await.expect("write");
        let response = read_response(&mut client).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        tokio::time::sleep(SHORT / 4).await;
    }
    // Then it idles and is closed.
    let (sent, took) = read_to_close(&mut client).await;
    assert!(sent.is_empty(), "{sent:?}");
    assert!(took >= SHORT / 2, "closed after {took:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_408() {
    let server = TestServer::start(tiny_model(), config()).await;
    let mut client = connect(&server).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n\
                Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"model\":";
    client.write_all(head.as_bytes()).await.expect("write");
    let start = Instant::now();
    let response = read_response(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    assert!(response.contains("\"request_timeout\""), "{response:?}");
    assert!(start.elapsed() >= SHORT / 2, "{:?}", start.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let server = TestServer::start(
        tiny_model(),
        ServerConfig {
            max_connections: 2,
            header_timeout: PATIENCE * 3,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut first = connect(&server).await;
    let mut second = connect(&server).await;
    first.write_all(HEALTH).await.expect("write");
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));
    second.write_all(HEALTH).await.expect("write");
    assert!(read_response(&mut second).await.starts_with("HTTP/1.1 200"));
    let metrics = {
        second
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        read_response(&mut second).await
    };
    assert!(
        metrics.contains("\ntextstream_open_connections 2\n"),
        "{metrics}"
    );

    // The kernel completes the third connection (backlog), but the server
    // does not take it while two are open.
    let mut third = connect(&server).await;
    third.write_all(HEALTH).await.expect("write");
    let mut probe = [0u8; 64];
    let early = tokio::time::timeout(SHORT, third.read(&mut probe)).await;
    assert!(early.is_err(), "served beyond the cap: {early:?}");

    drop(first);
    let response = read_response(&mut third).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    server.stop().await;
}

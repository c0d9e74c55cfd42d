//! [`serve`]: the accept loop. HTTP/1.1 connections, at most
//! `max_connections` open at once, each closed when it takes longer than
//! `header_timeout` to send a request head (slow clients, idle keep-alive
//! connections); on shutdown, no new connections, streams in flight get
//! `shutdown_timeout`, then they are ended with an error event.
//!
//! axum's own `serve` runs hyper without a timer (no header timeout) and
//! accepts without bound, so a few hundred slow sockets could hold the
//! server; this loop is the same thing with those limits.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::{router, AppState, HostCheck};

/// After the streams were ended on shutdown, how long connections still
/// get to flush them (a client that stopped reading could hold one forever).
const FLUSH_AFTER_CLOSE: Duration = Duration::from_secs(5);

/// After an accept error other than a client's (out of file descriptors),
/// how long to wait before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves [`crate::app`] on `listener` (checking `Host` on a loopback
/// listener unless configured otherwise) until `shutdown` resolves; then
/// stops accepting connections and returns once the responses in flight
/// (streams included) have ended, or once `config.shutdown_timeout` has
/// passed and the streams still open were ended with an error event.
///
/// Connections speak HTTP/1.1 (what browsers, clients and reverse proxies
/// use on plain HTTP). At most `config.max_connections` are open at once;
/// each is closed when it has not sent a whole request head within
/// `config.header_timeout` of its opening or of its previous response.
///
/// # Errors
///
/// When the listener's address cannot be read.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = state.config().clone();
    let check_host = match config.host_check {
        HostCheck::Loopback => true,
        HostCheck::Any => false,
        HostCheck::Auto => listener.local_addr()?.ip().is_loopback(),
    };
    let service = TowerToHyperService::new(router(state.clone(), check_host));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first, then a connection: at the cap, the ones beyond it
        // wait in the kernel's backlog rather than as sockets held here.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // A client that reset before being accepted is nothing;
                    // anything else (EMFILE) would spin without a pause.
                    if !is_client_error(&error) {
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        // Tokens are small writes: send each at once.
        let _ = stream.set_nodelay(true);
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        let metrics = Arc::clone(state.metrics());
        metrics.open_connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // An error here is the client's (it left, or was too slow).
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended");
            }
            metrics.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    // Streams in flight get `shutdown_timeout` to finish; then they are ended.
    let timeout = config.shutdown_timeout;
    let closer = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        closer.close_streams();
    });
    if tokio::time::timeout(timeout + FLUSH_AFTER_CLOSE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown timeout were dropped");
    }
    Ok(())
}

/// Whether an accept error is about one client only (it reset or aborted
/// before the accept), so that accepting again at once is right.
fn is_client_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

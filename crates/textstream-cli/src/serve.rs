//! `textstream serve`: loads the model, starts the OpenAI-compatible server
//! and runs it until SIGINT or SIGTERM, letting streams in flight finish.

use anyhow::Context;
use textstream_engine::model_file::CATALOG;
use textstream_server::{AppState, HostCheck, ServerConfig};

use crate::args::ServeArgs;
use crate::load;

/// Runs the server; returns once it has shut down cleanly.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (model, load_time) = load::model(&args.model)?;
    // A catalog model is served under its catalog name, any other file under its stem.
    let file_name = model.path().file_name().map(|n| n.to_string_lossy());
    let model_name = match CATALOG
        .iter()
        .find(|spec| file_name.as_deref() == Some(spec.file_name))
    {
        Some(spec) => spec.name.to_owned(),
        None => model
            .path()
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| textstream_server::DEFAULT_MODEL_NAME.to_owned()),
    };
    let api_key = match (&args.api_key, &args.api_key_file) {
        (Some(key), _) => Some(key.trim().to_owned()),
        (None, Some(path)) => Some(read_key(path)?),
        (None, None) => None,
    };
    if api_key.as_deref() == Some("") {
        anyhow::bail!("the API key is empty");
    }
    let config = ServerConfig {
        workers: args.workers,
        max_queue: args.max_queue,
        kv_memory: args.kv_memory,
        model_name,
        api_key,
        cors_origins: args.cors_origins.clone(),
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
        header_timeout: std::time::Duration::from_secs(args.header_timeout),
        body_timeout: std::time::Duration::from_secs(args.body_timeout),
        max_connections: args.max_connections,
        token_delay: args.token_delay_ms.map(std::time::Duration::from_millis),
        host_check: match args.allow_any_host {
            true => HostCheck::Any,
            false => HostCheck::Auto,
        },
        ..ServerConfig::default()
    };
    raise_open_file_limit(config.max_connections);
    let public = config.api_key.is_none() && !is_loopback(&args.host);
    let state = AppState::new(model, config).context("starting the server")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let address = (args.host.as_str(), args.port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let local = listener.local_addr().context("reading the bound address")?;
        eprintln!(
            "model {:?} loaded in {load_time:.1?}; serving on http://{local} (Ctrl-C stops)",
            state.config().model_name
        );
        if public {
            eprintln!(
                "warning: listening on {local} without an API key: anyone who can reach this address can use the model (--api-key or TEXTSTREAM_API_KEY sets one)"
            );
        }
        textstream_server::serve(listener, state, shutdown_signal())
            .await
            .context("serving")
    })?;
    eprintln!("server stopped");
    Ok(())
}

/// File descriptors the process needs besides its connections (the model
/// file, the listener, the runtime's own).
const SPARE_FILES: u64 = 64;

/// Raises the soft open-file limit so that `connections` fit (the common
/// default of 1,024 would make accepts fail first); warns when the hard
/// limit is lower.
fn raise_open_file_limit(connections: usize) {
    #[cfg(unix)]
    {
        let wanted = connections as u64 + SPARE_FILES;
        match rlimit::increase_nofile_limit(wanted) {
            Ok(got) if got < wanted => eprintln!(
                "warning: the open-file limit is {got}: fewer than --max-connections {connections} connections can be open"
            ),
            Ok(_) => {}
            Err(error) => eprintln!("warning: cannot raise the open-file limit: {error}"),
        }
    }
    #[cfg(not(unix))]
    let _ = connections;
}

/// The first line of the key file, trimmed.
fn read_key(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API key file {}", path.display()))?;
    let key = text.lines().next().unwrap_or_default().trim().to_owned();
    if key.is_empty() {
        anyhow::bail!("the API key file {} is empty", path.display());
    }
    Ok(key)
}

/// Whether `host` (as given to `--host`) is a loopback address or name.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Resolves on the first SIGINT (Ctrl-C) or, on Unix, SIGTERM; a second
/// one then exits the process at once.
async fn shutdown_signal() {
    signal().await;
    eprintln!("shutting down: streams in flight may finish (--shutdown-timeout); a second signal exits now");
    tokio::spawn(async {
        signal().await;
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
}

/// Resolves on the next SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                eprintln!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

//! Who may call the server: the API key on `/v1/*`, the `Host` check of a
//! loopback bind (against DNS rebinding), and CORS for the origins allowed.
//! (JSON-only bodies, the other browser guard, are in [`crate::extract`].)

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::state::AppState;

/// How long a browser may cache a CORS preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_SECS: u64 = 600;

/// Refuses `/v1/*` requests without the configured key (`401`).
pub(crate) async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = state.config().api_key.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same_secret(given.as_bytes(), key.as_bytes()) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// Compares a given key with the secret in time that does not depend on
/// where they first differ.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && given
            .iter()
            .zip(secret)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

/// Refuses requests whose `Host` is not a loopback name (`403`); used when
/// the server is bound to a loopback address.
pub(crate) async fn loopback_host_only(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    match host {
        Some(host) if !is_loopback_host(&host) => ApiError::ForbiddenHost { host }.into_response(),
        _ => next.run(request).await,
    }
}

/// Whether a `Host` value (`name[:port]`, `[v6][:port]`) names this machine's
/// loopback interface: `localhost` (and `*.localhost`), `127.0.0.0/8`, `::1`.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || is_port(port) => v6,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `s` is `:PORT`'s digits after the colon was split off.
fn is_port(s: &str) -> bool {
    let digits = s.strip_prefix(':').unwrap_or(s);
    !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The CORS layer for `origins` (`"*"` for any), or `None` when empty.
///
/// # Errors
///
/// An origin that is not a valid header value.
pub(crate) fn cors(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|_| format!("the CORS origin {o:?} is not a valid origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .max_age(std::time::Duration::from_secs(PREFLIGHT_MAX_AGE_SECS)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_others() {
        for yes in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(yes), "{yes}");
        }
        for no in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:8080",
            "[::2]:80",
            "[::1]x",
            "localhost:port",
            "0.0.0.0:8080",
        ] {
            assert!(!is_loopback_host(no), "{no}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"sk-abc", b"sk-abc"));
        assert!(!same_secret(b"sk-abd", b"sk-abc"));
        assert!(!same_secret(b"sk-ab", b"sk-abc"));
        assert!(!same_secret(b"", b"sk-abc"));
    }

    #[test]
    fn bad_cors_origins_are_errors() {
        assert!(cors(&[]).unwrap().is_none());
        assert!(cors(&["https://app.example".to_owned()]).unwrap().is_some());
        assert!(cors(&["bad\norigin".to_owned()]).is_err());
    }
}

//! The options every stream takes, from their Python keyword arguments.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use textstream::{FinishReason, Policy, StreamOptions};

/// The keyword arguments shared by every stream constructor, checked.
pub(crate) fn stream_options(
    skip_prompt: bool,
    skip_special_tokens: bool,
    stop: Option<Vec<String>>,
    mode: &str,
) -> PyResult<StreamOptions> {
    let policy = match mode {
        "eager" => Policy::Eager,
        "words" => Policy::Words,
        other => {
            return Err(PyValueError::new_err(format!(
                "mode must be \"eager\" or \"words\", not {other:?}"
            )))
        }
    };
    let stop = stop.unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(PyValueError::new_err("a stop string cannot be empty"));
    }
    Ok(StreamOptions::default()
        .skip_prompt(skip_prompt)
        .skip_special_tokens(skip_special_tokens)
        .policy(policy)
        .stop(stop))
}

/// A timeout in seconds (`None`: wait forever), checked.
pub(crate) fn timeout(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    seconds
        .map(|seconds| {
            Duration::try_from_secs_f64(seconds).map_err(|_| {
                PyValueError::new_err(format!(
                    "timeout must be a finite number of seconds >= 0, not {seconds}"
                ))
            })
        })
        .transpose()
}

/// A finish reason as Python sees it: `"stop"`, `"length"` or
/// `"stop_string"`, and the stop string that matched.
pub(crate) fn finish_reason(reason: &FinishReason) -> (&'static str, Option<String>) {
    match reason {
        FinishReason::Length => ("length", None),
        FinishReason::StopString(stop) => ("stop_string", Some(stop.clone())),
        _ => ("stop", None),
    }
}

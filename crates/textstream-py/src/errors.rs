//! Every exception the module raises, and how the core's errors become them.

use std::fmt;

use pyo3::exceptions::{PyBaseException, PyException, PyRuntimeError, PyTimeoutError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyType;
use textstream::{Closed, StreamError};

pyo3::create_exception!(
    textstream,
    ConsumerGone,
    PyException,
    "Raised by `put` once nothing more will be read: the consumer left (its \
     iterator was closed or garbage-collected), a stop string matched, or the \
     stream has already ended. It ends `generate()` on its thread; \
     `run_in_thread` treats it as a normal end."
);

pyo3::create_exception!(
    textstream,
    GenerationError,
    PyRuntimeError,
    "Raised from a stream's iterator when the producer failed without a Python \
     exception of its own (an engine error), or stopped without ending the \
     stream."
);

/// An exception handed to `fail`, carried through the core's channel to the
/// consumer, who raises this very object.
pub(crate) struct PyFailure {
    /// `str(exception)`, for the core's `Display`.
    message: String,
    exception: Py<PyAny>,
}

impl PyFailure {
    /// Wraps `exception` (an exception instance or class).
    pub(crate) fn new(exception: &Bound<'_, PyAny>) -> PyResult<PyFailure> {
        let is_class = match exception.cast::<PyType>() {
            Ok(class) => class.is_subclass_of::<PyBaseException>()?,
            Err(_) => false,
        };
        let is_exception = is_class || exception.is_instance_of::<PyBaseException>();
        if !is_exception {
            return Err(PyTypeError::new_err(format!(
                "fail() takes an exception, not {}",
                exception.get_type().name()?
            )));
        }
        Ok(PyFailure {
            message: exception.str()?.to_string(),
            exception: exception.clone().unbind(),
        })
    }

    /// Another handle to the same exception (for each row of a batch).
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> PyFailure {
        PyFailure {
            message: self.message.clone(),
            exception: self.exception.clone_ref(py),
        }
    }
}

impl fmt::Debug for PyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PyFailure")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PyFailure {}

/// What the consumer raises for `error`: the producer's own exception when it
/// handed one to `fail`, `TimeoutError` for a timeout, else `GenerationError`.
pub(crate) fn stream_error(py: Python<'_>, error: StreamError) -> PyErr {
    match error {
        StreamError::Timeout(waited) => PyTimeoutError::new_err(format!(
            "no text arrived within {:.3} s",
            waited.as_secs_f64()
        )),
        StreamError::Producer(error) => match error.downcast::<PyFailure>() {
            Ok(failure) => PyErr::from_value(failure.exception.into_bound(py)),
            Err(error) => GenerationError::new_err(error.to_string()),
        },
        other => GenerationError::new_err(other.to_string()),
    }
}

/// `ConsumerGone`, saying why `put` was refused.
pub(crate) fn closed(closed: Closed) -> PyErr {
    ConsumerGone::new_err(closed.to_string())
}

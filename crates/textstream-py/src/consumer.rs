//! The consumer halves: [`TextIterator`] for `for` loops and
//! [`AsyncTextIterator`] for `async for` (wrapped in Python, which awaits).
//!
//! Each owns the core's consumer; dropping it (closing the iterator, or
//! Python collecting it after a `break`) tells the producer, whose next `put`
//! raises `ConsumerGone`.

use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use pyo3::exceptions::{PyStopAsyncIteration, PyTimeoutError};
use pyo3::prelude::*;
use textstream::{FinishReason, StreamError, StreamOptions, StreamProducer};

use crate::errors;
use crate::options;
use crate::wake;

/// How long a blocked `next()` waits, without the GIL, before it looks for
/// Ctrl-C (`KeyboardInterrupt`) and its own timeout: 100 ms, quick enough
/// for a person, rare enough to cost nothing.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is one assignment: poison is harmless.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the stream ended, kept for the `finish_reason` properties.
#[derive(Default)]
struct Finish(Mutex<Option<FinishReason>>);

impl Finish {
    fn set(&self, reason: Option<&FinishReason>) {
        *lock(&self.0) = reason.cloned();
    }

    fn reason(&self) -> Option<&'static str> {
        lock(&self.0).as_ref().map(|r| options::finish_reason(r).0)
    }

    fn stop_string(&self) -> Option<String> {
        lock(&self.0)
            .as_ref()
            .and_then(|r| options::finish_reason(r).1)
    }
}

/// What one wait of a blocking `next()` gave.
enum Step {
    Text(String),
    End,
    /// One signal-check interval passed without text.
    Waited,
    Failed(StreamError),
}

/// An iterator over a stream's text: `for text in iterator`.
///
/// `next()` waits without holding the GIL. It raises the producer's
/// exception when the producer called `fail`, `TimeoutError` when no text
/// came within the timeout (the stream stays open: `next()` may be called
/// again), and `GenerationError` when the producer died without ending the
/// stream. `close()` (or dropping the iterator) tells the producer.
#[pyclass(frozen, module = "textstream._native")]
pub struct TextIterator {
    inner: Mutex<Option<textstream::TextIteratorStreamer>>,
    timeout: Option<Duration>,
    finish: Finish,
}

impl TextIterator {
    /// A producer and this iterator over `detokenizer`; `timeout` is the
    /// consumer's (`None`: forever).
    pub(crate) fn pair(
        detokenizer: textstream::Detokenizer,
        options: StreamOptions,
        timeout: Option<Duration>,
    ) -> (StreamProducer, TextIterator) {
        // The core waits one interval at a time; the deadline is ours.
        let interval = timeout.map_or(SIGNAL_CHECK_INTERVAL, |t| t.min(SIGNAL_CHECK_INTERVAL));
        let (producer, consumer) =
            textstream::TextIteratorStreamer::new(detokenizer, options.timeout(interval));
        let iterator = TextIterator {
            inner: Mutex::new(Some(consumer)),
            timeout,
            finish: Finish::default(),
        };
        (producer, iterator)
    }

    fn wait(&self) -> Step {
        let mut inner = lock(&self.inner);
        let Some(consumer) = inner.as_mut() else {
            return Step::End;
        };
        match consumer.next() {
            Some(Ok(text)) => Step::Text(text),
            Some(Err(StreamError::Timeout(_))) => Step::Waited,
            Some(Err(error)) => Step::Failed(error),
            None => {
                self.finish.set(consumer.finish_reason());
                Step::End
            }
        }
    }
}

#[pymethods]
impl TextIterator {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        loop {
            match py.detach(|| self.wait()) {
                Step::Text(text) => return Ok(Some(text)),
                Step::End => return Ok(None),
                Step::Failed(error) => return Err(errors::stream_error(py, error)),
                Step::Waited => {
                    py.check_signals()?;
                    if let (Some(deadline), Some(timeout)) = (deadline, self.timeout) {
                        if Instant::now() >= deadline {
                            return Err(PyTimeoutError::new_err(format!(
                                "no text arrived within {:.3} s",
                                timeout.as_secs_f64()
                            )));
                        }
                    }
                }
            }
        }
    }

    /// Stops reading: the producer's next `put` raises `ConsumerGone`, and
    /// this iterator ends. Closing twice does nothing.
    fn close(&self, py: Python<'_>) {
        // The lock may be held by a `next()` waiting without the GIL.
        py.detach(|| drop(lock(&self.inner).take()));
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).is_none()
    }

    /// Why the stream ended, once it has: `"stop"`, `"length"` or
    /// `"stop_string"`; `None` before the end (or after a failure).
    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        self.finish.reason()
    }

    /// The stop string the text reached, when that ended the stream.
    #[getter]
    fn stop_string(&self) -> Option<String> {
        self.finish.stop_string()
    }
}

/// The native half of an async iterator; Python's `AsyncTextIterator`
/// awaits it (see `poll`).
#[pyclass(frozen, module = "textstream._native")]
pub struct AsyncTextIterator {
    inner: Mutex<Option<textstream::AsyncTextIteratorStreamer>>,
    finish: Finish,
}

impl AsyncTextIterator {
    /// A producer and this iterator over `detokenizer`.
    pub(crate) fn pair(
        detokenizer: textstream::Detokenizer,
        options: StreamOptions,
        timeout: Option<Duration>,
    ) -> (StreamProducer, AsyncTextIterator) {
        let options = match timeout {
            Some(timeout) => options.timeout(timeout),
            None => options,
        };
        let (producer, consumer) = textstream::AsyncTextIteratorStreamer::new(detokenizer, options);
        let iterator = AsyncTextIterator {
            inner: Mutex::new(Some(consumer)),
            finish: Finish::default(),
        };
        (producer, iterator)
    }
}

#[pymethods]
impl AsyncTextIterator {
    /// Takes the next text if there is some: returns it, raises
    /// `StopAsyncIteration` at the end (or the stream's error), or returns
    /// `None` and calls `wake()` once (from another thread, with the GIL)
    /// when polling again may give something.
    fn poll(&self, py: Python<'_>, wake: Py<PyAny>) -> PyResult<Option<String>> {
        let mut inner = lock(&self.inner);
        let Some(consumer) = inner.as_mut() else {
            return Err(PyStopAsyncIteration::new_err(()));
        };
        let waker = wake::waker(wake);
        let mut cx = Context::from_waker(&waker);
        match Pin::new(&mut *consumer).poll_next(&mut cx) {
            Poll::Pending => Ok(None),
            Poll::Ready(Some(Ok(text))) => Ok(Some(text)),
            Poll::Ready(Some(Err(error))) => Err(errors::stream_error(py, error)),
            Poll::Ready(None) => {
                self.finish.set(consumer.finish_reason());
                Err(PyStopAsyncIteration::new_err(()))
            }
        }
    }

    /// Stops reading: the producer's next `put` raises `ConsumerGone`.
    fn close(&self, py: Python<'_>) {
        let consumer = lock(&self.inner).take();
        py.detach(move || drop(consumer));
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).is_none()
    }

    /// Why the stream ended, once it has (see `TextIterator.finish_reason`).
    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        self.finish.reason()
    }

    /// The stop string the text reached, when that ended the stream.
    #[getter]
    fn stop_string(&self) -> Option<String> {
        self.finish.stop_string()
    }
}

//! [`Producer`]: the half of a stream that `generate()` drives, one
//! sequence or a batch of them.

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use textstream::{BatchStreamer, Closed, StreamProducer, Streamer};

use crate::errors::{self, PyFailure};

/// What a producer feeds (boxed: one stream's state is far larger than a
/// batch's vector of them).
enum Sink {
    One(Box<StreamProducer>),
    Batch(BatchStreamer<StreamProducer>),
}

/// The producer half of a stream (or of a batch of streams): `put` the
/// prompt, then each new token; `end` or `fail` once.
///
/// `put` decodes without holding the GIL and raises `ConsumerGone` once
/// nothing more will be read.
#[pyclass(frozen, module = "textstream._native")]
pub struct Producer {
    sink: Mutex<Sink>,
}

impl Producer {
    pub(crate) fn one(producer: StreamProducer) -> Producer {
        Producer {
            sink: Mutex::new(Sink::One(Box::new(producer))),
        }
    }

    pub(crate) fn batch(producers: Vec<StreamProducer>) -> Producer {
        Producer {
            sink: Mutex::new(Sink::Batch(BatchStreamer::new(producers))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sink> {
        // A panic cannot leave a producer half-updated for Python to see
        // (pyo3 turns it into an exception and the stream reports it).
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Producer {
    /// Puts the ids of one sequence. Raises `ConsumerGone` when nothing more
    /// will be read (the consumer left, a stop string matched, the stream
    /// ended); `TypeError` on a batch producer.
    fn put(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<()> {
        let result = py.detach(|| match &mut *self.lock() {
            Sink::One(producer) => Ok(producer.put(&ids)),
            Sink::Batch(_) => Err(()),
        });
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(closed)) => Err(errors::closed(closed)),
            Err(()) => Err(PyTypeError::new_err("a batch producer takes put_rows")),
        }
    }

    /// Puts one list of ids per row of a batch; rows whose stream has closed
    /// are skipped. Returns how many rows are still open; raises
    /// `ConsumerGone` when none is, `ValueError` when the row count is wrong.
    fn put_rows(&self, py: Python<'_>, rows: Vec<Vec<u32>>) -> PyResult<usize> {
        let result = py.detach(|| match &mut *self.lock() {
            Sink::Batch(batch) => {
                let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
                Ok(batch.put(&rows).map_err(|error| error.to_string()))
            }
            Sink::One(_) => Err(()),
        });
        match result {
            Ok(Ok(0)) => Err(errors::closed(Closed::ConsumerGone)),
            Ok(Ok(open)) => Ok(open),
            Ok(Err(message)) => Err(PyValueError::new_err(message)),
            Err(()) => Err(PyTypeError::new_err("put_rows takes a batch producer")),
        }
    }

    /// Ends the stream (every row of a batch) normally. Does nothing once
    /// the stream has ended.
    fn end(&self, py: Python<'_>) {
        py.detach(|| match &mut *self.lock() {
            Sink::One(producer) => producer.end(),
            Sink::Batch(batch) => batch.end(),
        });
    }

    /// Ends the stream (every open row) with `exception`, which the consumer
    /// gets raised from its iterator. `TypeError` unless it is an exception.
    fn fail(&self, py: Python<'_>, exception: &Bound<'_, PyAny>) -> PyResult<()> {
        let failure = PyFailure::new(exception)?;
        // Held only by a `put` that needs no GIL: waiting here cannot deadlock.
        match &mut *self.lock() {
            Sink::One(producer) => producer.fail(Box::new(failure)),
            Sink::Batch(batch) => {
                for i in 0..batch.len() {
                    if let Some(row) = batch.row(i) {
                        row.fail(Box::new(failure.clone_ref(py)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a `put` would be refused now (every row's, for a batch).
    fn is_closed(&self, py: Python<'_>) -> bool {
        py.detach(|| match &mut *self.lock() {
            Sink::One(producer) => producer.is_closed(),
            Sink::Batch(batch) => {
                (0..batch.len()).all(|i| batch.row(i).is_none_or(|r| r.is_closed()))
            }
        })
    }

    /// For each row, whether it is closed (one entry for a single stream).
    fn closed_rows(&self, py: Python<'_>) -> Vec<bool> {
        py.detach(|| match &mut *self.lock() {
            Sink::One(producer) => vec![producer.is_closed()],
            Sink::Batch(batch) => (0..batch.len())
                .map(|i| batch.row(i).is_none_or(|r| r.is_closed()))
                .collect(),
        })
    }
}

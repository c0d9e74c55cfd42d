//! Waking an asyncio event loop from Rust, without a thread per stream.
//!
//! The core's async stream is a `futures::Stream`: polled with a
//! [`Waker`], it calls that waker when text arrives, from the producer's
//! thread and while holding the stream's lock. Taking the GIL there could
//! deadlock against a Python thread that holds the GIL and waits for that
//! lock, so the waker only hands its Python callback to one dispatcher
//! thread (for the whole process), which takes the GIL and calls it. The
//! callback is `loop.call_soon_threadsafe(resolve, future)`, made on the
//! Python side, which wakes the awaiting task: no polling, no busy wait.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Wake, Waker};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// The dispatcher's queue of callbacks to call with the GIL.
static DISPATCHER: OnceLock<Sender<Py<PyAny>>> = OnceLock::new();

/// Starts the dispatcher thread (once; the module's init calls it).
pub(crate) fn start_dispatcher() -> PyResult<()> {
    if DISPATCHER.get().is_some() {
        return Ok(());
    }
    let (sender, receiver) = mpsc::channel::<Py<PyAny>>();
    std::thread::Builder::new()
        .name("textstream-wake".to_owned())
        .spawn(move || {
            for callback in receiver {
                Python::attach(|py| {
                    // Fails only when the loop has closed meanwhile: nobody
                    // awaits that stream any more.
                    let _ = callback.call0(py);
                    drop(callback);
                });
            }
        })
        .map_err(|error| {
            PyRuntimeError::new_err(format!("cannot start the wake-up thread: {error}"))
        })?;
    // A second initialisation (a sub-interpreter) keeps the first thread.
    let _ = DISPATCHER.set(sender);
    Ok(())
}

/// A waker that runs a Python callback once, through the dispatcher.
struct PyWake {
    callback: Mutex<Option<Py<PyAny>>>,
}

impl Wake for PyWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let callback = self
            .callback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(callback), Some(dispatcher)) = (callback, DISPATCHER.get()) {
            // Fails only if the dispatcher thread is gone (interpreter exit).
            let _ = dispatcher.send(callback);
        }
    }
}

/// A [`Waker`] that calls `callback()` (with the GIL, on the dispatcher
/// thread) the first time it is woken.
pub(crate) fn waker(callback: Py<PyAny>) -> Waker {
    Waker::from(Arc::new(PyWake {
        callback: Mutex::new(Some(callback)),
    }))
}

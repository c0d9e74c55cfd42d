//! The hand-off between the producer thread and one consumer, sync or async.
//!
//! It is not a queue: everything the producer sends while the consumer is busy
//! coalesces into one pending [`Chunk`], so a slow consumer finds one buffer
//! with all the text it missed, never a backlog of tiny messages. The end of
//! the stream (finished, failed, or the producer dropped) is delivered after
//! the last text. Each side learns promptly that the other has gone: the
//! producer through a flag it checks on every send, the consumer because
//! dropping the producer records an end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

use crate::error::StreamError;
use crate::streamer::FinishReason;

/// Text (and, for event streams, ids) the consumer has not taken yet.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub(crate) text: String,
    pub(crate) ids: Vec<u32>,
    pub(crate) logprobs: Vec<Option<f32>>,
    pub(crate) top_logprobs: Vec<Vec<(u32, f32)>>,
}

impl Chunk {
    fn is_empty(&self) -> bool {
        self.text.is_empty() && self.ids.is_empty()
    }

    /// Bytes this chunk holds, for the optional bound.
    fn weight(&self) -> usize {
        self.text.len() + self.ids.len() * std::mem::size_of::<u32>()
    }
}

/// How the stream ended.
#[derive(Debug)]
pub(crate) enum End {
    Finished(FinishReason),
    Failed(Box<dyn std::error::Error + Send + Sync>),
    ProducerDropped,
}

/// One thing the consumer receives.
#[derive(Debug)]
pub(crate) enum Received {
    Chunk(Chunk),
    End(Result<FinishReason, StreamError>),
}

#[derive(Debug, Default)]
struct State {
    pending: Chunk,
    end: Option<End>,
    /// The end was handed to the consumer: nothing more will come.
    done: bool,
    consumer_waiting: bool,
    producer_waiting: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when there is something for a blocked consumer.
    data: Condvar,
    /// Signalled when a bounded producer may go on.
    space: Condvar,
    /// The async consumer's waker.
    waker: AtomicWaker,
    consumer_gone: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written
        // (every update is a single assignment or append), so poison is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_consumer(&self, state: &State) {
        if state.consumer_waiting {
            self.data.notify_one();
        }
        self.waker.wake();
    }
}

/// The producer's end.
#[derive(Debug)]
pub(crate) struct Sender {
    shared: Arc<Shared>,
    bound: Option<usize>,
}

/// The consumer's end.
#[derive(Debug)]
pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

pub(crate) fn channel(bound: Option<usize>) -> (Sender, Receiver) {
    let shared = Arc::new(Shared::default());
    (
        Sender {
            shared: Arc::clone(&shared),
            bound,
        },
        Receiver { shared },
    )
}

impl Sender {
    /// Whether the consumer has dropped its end.
    pub(crate) fn consumer_gone(&self) -> bool {
        self.shared.consumer_gone.load(Ordering::Acquire)
    }

    /// Appends to the pending chunk with `fill`; false if the consumer is gone.
    /// With a bound, waits while the pending chunk is over it.
    pub(crate) fn send(&self, fill: impl FnOnce(&mut Chunk)) -> bool {
        let mut state = self.shared.lock();
        if self.consumer_gone() {
            return false;
        }
        fill(&mut state.pending);
        self.shared.wake_consumer(&state);
        if let Some(bound) = self.bound {
            while state.pending.weight() > bound && !self.consumer_gone() {
                state.producer_waiting = true;
                state = self
                    .shared
                    .space
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            state.producer_waiting = false;
        }
        !self.consumer_gone()
    }

    /// Records how the stream ended; the consumer gets it after the pending text.
    pub(crate) fn end(&self, end: End) {
        let mut state = self.shared.lock();
        if state.end.is_none() {
            state.end = Some(end);
        }
        self.shared.wake_consumer(&state);
    }
}

impl Receiver {
    /// Takes what is there without waiting.
    fn try_take(&self, state: &mut State) -> Option<Option<Received>> {
        if !state.pending.is_empty() {
            let chunk = std::mem::take(&mut state.pending);
            if state.producer_waiting {
                self.shared.space.notify_one();
            }
            return Some(Some(Received::Chunk(chunk)));
        }
        if state.done {
            return Some(None);
        }
        let end = state.end.take()?;
        state.done = true;
        Some(Some(Received::End(match end {
            End::Finished(reason) => Ok(reason),
            End::Failed(error) => Err(StreamError::Producer(error)),
            End::ProducerDropped => Err(StreamError::ProducerDropped),
        })))
    }

    /// Waits for the next chunk or the end, at most `timeout` (forever if
    /// `None`). `None` once the end was delivered.
    pub(crate) fn recv(&self, timeout: Option<Duration>) -> Result<Option<Received>, StreamError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.shared.lock();
        loop {
            if let Some(received) = self.try_take(&mut state) {
                return Ok(received);
            }
            state.consumer_waiting = true;
            state = match deadline {
                None => self
                    .shared
                    .data
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        state.consumer_waiting = false;
                        return Err(StreamError::Timeout(timeout.unwrap_or_default()));
                    }
                    self.shared
                        .data
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            state.consumer_waiting = false;
        }
    }

    /// Polls for the next chunk or the end; `Ready(None)` once the end was delivered.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        let mut state = self.shared.lock();
        if let Some(received) = self.try_take(&mut state) {
            return Poll::Ready(received);
        }
        // Registered under the lock: a producer that sends after we looked
        // takes the lock after us and so sees this waker.
        self.shared.waker.register(cx.waker());
        Poll::Pending
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.consumer_gone.store(true, Ordering::Release);
        let state = self.shared.lock();
        if state.producer_waiting {
            self.shared.space.notify_all();
        }
    }
}

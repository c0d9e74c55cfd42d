//! [`StreamProducer`]: the [`Streamer`] a generation loop drives, feeding one
//! consumer (an iterator, an async stream or an event stream) on another thread.

use crate::channel::{End, Sender};
use crate::detokenizer::Detokenizer;
use crate::error::Closed;
use crate::options::StreamOptions;
use crate::pipeline::TextPipeline;
use crate::streamer::{FinishReason, Streamer};

/// The producer half of a stream: give it to the thread that generates.
///
/// Made together with its consumer, e.g. by
/// [`TextIteratorStreamer::new`](crate::TextIteratorStreamer::new). Dropping it
/// without [`end`](Streamer::end) tells the consumer the producer died
/// ([`StreamError::ProducerDropped`](crate::StreamError::ProducerDropped)).
#[derive(Debug)]
pub struct StreamProducer {
    pipeline: TextPipeline,
    sender: Sender,
    /// Whether ids and log-probabilities travel with the text (event streams).
    events: bool,
    /// Text released by the current step (reused between steps).
    text: String,
    state: ProducerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProducerState {
    Open,
    Stopped,
    Ended,
}

impl StreamProducer {
    pub(crate) fn new(detokenizer: Detokenizer, options: &StreamOptions, sender: Sender) -> Self {
        StreamProducer {
            pipeline: TextPipeline::new(detokenizer, options),
            sender,
            events: options.events,
            text: String::new(),
            state: ProducerState::Open,
        }
    }

    /// Whether the consumer has gone away (checked without sending anything).
    pub fn is_consumer_gone(&self) -> bool {
        self.sender.consumer_gone()
    }

    fn put_inner(
        &mut self,
        ids: &[u32],
        logprob: Option<f32>,
        top: &[(u32, f32)],
    ) -> Result<(), Closed> {
        match self.state {
            ProducerState::Open => {}
            ProducerState::Stopped => return Err(Closed::Stopped),
            ProducerState::Ended => return Err(Closed::Ended),
        }
        let prompt_skipped = self.pipeline.skips_next_put();
        self.text.clear();
        let stopped = match self.pipeline.put(ids, &mut self.text) {
            Ok(stopped) => stopped,
            Err(error) => {
                self.fail(Box::new(error));
                return Err(Closed::Ended);
            }
        };
        let alive = if self.events && !prompt_skipped {
            let text = &self.text;
            self.sender.send(|chunk| {
                chunk.text.push_str(text);
                chunk.ids.extend_from_slice(ids);
                match (logprob, ids) {
                    (Some(logprob), [_]) => chunk.logprobs.push(Some(logprob)),
                    _ => chunk.logprobs.extend(ids.iter().map(|_| None)),
                }
                match ids {
                    [_] => chunk.top_logprobs.push(top.to_vec()),
                    _ => chunk.top_logprobs.extend(ids.iter().map(|_| Vec::new())),
                }
            })
        } else if !self.text.is_empty() {
            let text = &self.text;
            self.sender.send(|chunk| chunk.text.push_str(text))
        } else {
            !self.sender.consumer_gone()
        };
        if !alive {
            self.state = ProducerState::Ended;
            return Err(Closed::ConsumerGone);
        }
        if let Some(reason) = stopped {
            self.sender.end(End::Finished(reason));
            self.state = ProducerState::Stopped;
            return Err(Closed::Stopped);
        }
        Ok(())
    }
}

impl Streamer for StreamProducer {
    fn put(&mut self, ids: &[u32]) -> Result<(), Closed> {
        self.put_inner(ids, None, &[])
    }

    fn put_token(&mut self, id: u32, logprob: Option<f32>) -> Result<(), Closed> {
        self.put_inner(&[id], logprob, &[])
    }

    fn put_scored(&mut self, id: u32, logprob: f32, top: &[(u32, f32)]) -> Result<(), Closed> {
        self.put_inner(&[id], Some(logprob), top)
    }

    fn is_closed(&self) -> bool {
        self.state != ProducerState::Open || self.sender.consumer_gone()
    }

    fn finish(&mut self, reason: FinishReason) {
        if self.state != ProducerState::Open {
            return;
        }
        self.state = ProducerState::Ended;
        self.text.clear();
        match self.pipeline.finish(&mut self.text) {
            Ok(stopped) => {
                if !self.text.is_empty() {
                    let text = &self.text;
                    self.sender.send(|chunk| chunk.text.push_str(text));
                }
                self.sender.end(End::Finished(stopped.unwrap_or(reason)));
            }
            Err(error) => self.sender.end(End::Failed(Box::new(error))),
        }
    }

    fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>) {
        if self.state == ProducerState::Open {
            self.state = ProducerState::Ended;
            self.sender.end(End::Failed(error));
        }
    }
}

impl Drop for StreamProducer {
    fn drop(&mut self) {
        if self.state == ProducerState::Open {
            self.sender.end(End::ProducerDropped);
        }
    }
}

//! Turns a checked [`Plan`] into a response: queues the job, then either
//! streams OpenAI chunks as server-sent events or collects the whole answer.
//!
//! Both paths read the same [`TokenEventStream`]. Dropping it (the client
//! left, so axum dropped the response body or the handler future) makes the
//! worker's next `put` fail and frees the worker within one token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{stream, Stream, StreamExt};
use serde_json::{json, Value};
use textstream::{Detokenizer, FinishReason, Layout, StreamOptions, TokenEvent, TokenEventStream};

use crate::error::ApiError;
use crate::metrics::{ActiveStream, Metrics};
use crate::pool::Job;
use crate::request::Plan;
use crate::state::AppState;

/// Which OpenAI endpoint is answering; decides the JSON shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// What every chunk of one response repeats.
#[derive(Debug, Clone)]
struct Meta {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    accepted: Instant,
    /// Set when the request asked for log-probabilities: each token's text.
    pieces: Option<Detokenizer>,
    /// How many alternatives each token's log-probability comes with.
    top_logprobs: usize,
}

impl Meta {
    fn object(&self, stream: bool) -> &'static str {
        match (self.endpoint, stream) {
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// A streaming chunk whose one choice carries `text` (chat: `delta`),
    /// `logprobs` and `finish`.
    fn chunk(
        &self,
        delta: Value,
        text: &str,
        logprobs: Value,
        finish: Option<&FinishReason>,
    ) -> Value {
        let finish = finish.map(FinishReason::as_openai);
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish,
            }),
            Endpoint::Completion => json!({
                "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [choice],
        })
    }
}

/// Queues `plan` and answers: SSE when `plan.stream`, else one JSON object.
pub(crate) async fn respond(
    state: AppState,
    endpoint: Endpoint,
    plan: Plan,
) -> Result<Response, ApiError> {
    let options = StreamOptions::default()
        .skip_prompt(true)
        .skip_special_tokens(true)
        .stop(plan.stop.clone());
    let (producer, events) = TokenEventStream::new(state.detokenizer(), options);
    let meta = Meta {
        endpoint,
        id: response_id(endpoint),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        model: state.config().model_name.clone(),
        prompt_tokens: plan.prompt_ids.len(),
        accepted: Instant::now(),
        pieces: plan.logprobs.map(|_| state.detokenizer()),
        top_logprobs: plan.logprobs.unwrap_or(0),
    };
    state.pool().submit(Job {
        prompt_ids: plan.prompt_ids,
        config: plan.config,
        producer,
    })?;
    let metrics = Arc::clone(state.metrics());
    if plan.stream {
        let body = sse(meta, events, metrics, state.closing(), plan.include_usage);
        let keep_alive = KeepAlive::new().interval(state.config().sse_keep_alive);
        Ok(Sse::new(body).keep_alive(keep_alive).into_response())
    } else {
        collect(meta, events, metrics, state.closing())
            .await
            .map(IntoResponse::into_response)
    }
}

/// A unique-enough id: endpoint prefix and the time in nanoseconds.
fn response_id(endpoint: Endpoint) -> String {
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completion => "cmpl",
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{prefix}-{nanos:x}")
}

/// Counts tokens and the time to the first one while reading events.
struct Reader {
    events: TokenEventStream,
    metrics: Arc<Metrics>,
    completion_tokens: usize,
    /// Bytes of text streamed so far (completions' `text_offset`).
    text_bytes: usize,
    first_seen: bool,
    /// True once the server's shutdown timeout has run out.
    closing: tokio::sync::watch::Receiver<bool>,
    _active: ActiveStream,
}

impl Reader {
    fn new(
        events: TokenEventStream,
        metrics: Arc<Metrics>,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            closing,
            _active: ActiveStream::new(Arc::clone(&metrics)),
            events,
            metrics,
            completion_tokens: 0,
            text_bytes: 0,
            first_seen: false,
        }
    }

    async fn next(&mut self, meta: &Meta) -> Option<Result<TokenEvent, ApiError>> {
        let closing = &mut self.closing;
        // False only when the server's state is gone: then the branch is off.
        let closed = async move { closing.wait_for(|closing| *closing).await.is_ok() };
        let event = tokio::select! {
            event = self.events.next() => event?,
            // Dropping the events (with the reader) cancels the generation.
            true = closed => return Some(Err(ApiError::Unavailable)),
        };
        Some(match event {
            Ok(event) => {
                if !event.ids.is_empty() && !self.first_seen {
                    self.first_seen = true;
                    self.metrics.observe_ttft(meta.accepted.elapsed());
                }
                self.completion_tokens += event.ids.len();
                Ok(event)
            }
            Err(error) => Err(ApiError::Internal(error.to_string())),
        })
    }
}

/// Reads the whole answer into one OpenAI object.
async fn collect(
    meta: Meta,
    events: TokenEventStream,
    metrics: Arc<Metrics>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> Result<Json<Value>, ApiError> {
    let mut reader = Reader::new(events, metrics, closing);
    let mut text = String::new();
    let mut finish = FinishReason::Stop;
    let mut tokens = TokenLogprobs::default();
    while let Some(event) = reader.next(&meta).await {
        let event = event?;
        tokens.add(&meta, &event, text.len());
        text += &event.text;
        if let Some(reason) = event.finish_reason {
            finish = reason;
            break;
        }
    }
    let choice = match meta.endpoint {
        Endpoint::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": tokens.json(&meta),
            "finish_reason": finish.as_openai(),
        }),
        Endpoint::Completion => json!({
            "index": 0, "text": text, "logprobs": tokens.json(&meta),
            "finish_reason": finish.as_openai(),
        }),
    };
    Ok(Json(json!({
        "id": meta.id, "object": meta.object(false), "created": meta.created,
        "model": meta.model, "choices": [choice],
        "usage": meta.usage(reader.completion_tokens),
    })))
}

/// The chosen tokens' log-probabilities of some events, when asked for.
#[derive(Default)]
struct TokenLogprobs {
    tokens: Vec<ScoredToken>,
}

/// One generated token as the `logprobs` objects show it.
struct ScoredToken {
    text: String,
    bytes: Vec<u8>,
    logprob: f32,
    /// Byte offset of its text in the answer.
    offset: usize,
    /// The most likely tokens at its step: text, bytes, log-probability.
    top: Vec<(String, Vec<u8>, f32)>,
}

impl TokenLogprobs {
    /// Adds `event`'s tokens, whose text starts `offset` bytes into the answer.
    fn add(&mut self, meta: &Meta, event: &TokenEvent, offset: usize) {
        let Some(detokenizer) = &meta.pieces else {
            return;
        };
        let piece = |id: u32| {
            let bytes = token_bytes(detokenizer, id);
            (String::from_utf8_lossy(&bytes).into_owned(), bytes)
        };
        for (i, (&id, logprob)) in event.ids.iter().zip(&event.logprobs).enumerate() {
            let (text, bytes) = piece(id);
            let top = event.top_logprobs.get(i).map_or(&[][..], Vec::as_slice);
            self.tokens.push(ScoredToken {
                text,
                bytes,
                logprob: logprob.unwrap_or(f32::NAN),
                offset,
                top: top
                    .iter()
                    .map(|&(id, logprob)| {
                        let (text, bytes) = piece(id);
                        (text, bytes, logprob)
                    })
                    .collect(),
            });
        }
    }

    fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// OpenAI's `logprobs` object for the endpoint, or `null` when not asked.
    fn json(&self, meta: &Meta) -> Value {
        if meta.pieces.is_none() {
            return Value::Null;
        }
        // A missing log-probability (none here: the sampler gives each) is null.
        let number = |l: f32| if l.is_finite() { json!(l) } else { Value::Null };
        match meta.endpoint {
            Endpoint::Chat => json!({
                "content": self.tokens.iter().map(|t| json!({
                    "token": t.text, "logprob": number(t.logprob), "bytes": t.bytes,
                    "top_logprobs": t.top.iter().map(|(text, bytes, logprob)| json!({
                        "token": text, "logprob": number(*logprob), "bytes": bytes,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
            Endpoint::Completion => json!({
                "tokens": self.tokens.iter().map(|t| &t.text).collect::<Vec<_>>(),
                "token_logprobs": self.tokens.iter().map(|t| number(t.logprob)).collect::<Vec<_>>(),
                // One object per token, token text to log-probability (two
                // ids with the same text keep the more likely).
                "top_logprobs": (meta.top_logprobs > 0).then(|| {
                    self.tokens.iter().map(|t| {
                        let mut top = serde_json::Map::new();
                        for (text, _, logprob) in &t.top {
                            top.entry(text.clone()).or_insert_with(|| number(*logprob));
                        }
                        Value::Object(top)
                    }).collect::<Vec<_>>()
                }),
                "text_offset": self.tokens.iter().map(|t| t.offset).collect::<Vec<_>>(),
            }),
        }
    }
}

/// One token's bytes: from the tokenizer's table where it has one (a token
/// may hold part of a character), else its text decoded alone.
fn token_bytes(detokenizer: &Detokenizer, id: u32) -> Vec<u8> {
    match detokenizer.layout() {
        Layout::ByteLevel(table) | Layout::SentencePiece { table, .. } => table.get(id).0.to_vec(),
        _ => detokenizer
            .decode(&[id], false)
            .map(String::into_bytes)
            .unwrap_or_default(),
    }
}

/// Where the event stream is.
enum Phase {
    /// Chat sends the assistant role first.
    Start,
    /// Token chunks until the finish reason.
    Tokens,
    /// Everything is sent.
    Over,
}

/// The SSE body: role chunk (chat), content chunks, finish chunk, usage
/// chunk (when asked), `[DONE]`.
fn sse(
    meta: Meta,
    events: TokenEventStream,
    metrics: Arc<Metrics>,
    closing: tokio::sync::watch::Receiver<bool>,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let reader = Reader::new(events, metrics, closing);
    stream::unfold((reader, Phase::Start), move |(mut reader, phase)| {
        let meta = meta.clone();
        async move {
            let mut out = Vec::new();
            let next = match phase {
                Phase::Over => return None,
                Phase::Start => {
                    if meta.endpoint == Endpoint::Chat {
                        let delta = json!({"role": "assistant", "content": ""});
                        out.push(meta.chunk(delta, "", Value::Null, None));
                    }
                    Phase::Tokens
                }
                Phase::Tokens => match reader.next(&meta).await {
                    Some(Ok(event)) => {
                        let mut tokens = TokenLogprobs::default();
                        tokens.add(&meta, &event, reader.text_bytes);
                        reader.text_bytes += event.text.len();
                        if !event.text.is_empty() || !tokens.is_empty() {
                            let delta = json!({"content": event.text});
                            out.push(meta.chunk(delta, &event.text, tokens.json(&meta), None));
                        }
                        match &event.finish_reason {
                            None => Phase::Tokens,
                            Some(reason) => {
                                out.push(meta.chunk(json!({}), "", Value::Null, Some(reason)));
                                if include_usage {
                                    out.push(json!({
                                        "id": meta.id, "object": meta.object(true),
                                        "created": meta.created, "model": meta.model,
                                        "choices": [],
                                        "usage": meta.usage(reader.completion_tokens),
                                    }));
                                }
                                Phase::Over
                            }
                        }
                    }
                    Some(Err(error)) => {
                        out.push(error.body());
                        Phase::Over
                    }
                    None => Phase::Over,
                },
            };
            let mut events: Vec<Event> = out
                .iter()
                .map(|chunk| Event::default().data(chunk.to_string()))
                .collect();
            if matches!(next, Phase::Over) {
                events.push(Event::default().data("[DONE]"));
            }
            Some((events, (reader, next)))
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}

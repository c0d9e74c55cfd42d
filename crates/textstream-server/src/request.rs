//! The OpenAI request bodies this server reads, and how their fields become
//! a checked [`Plan`]: prompt ids, [`GenerateConfig`], stop strings and
//! stream settings. Every field used is checked; a field this server does
//! not implement gets a `400` naming it (never a silent `200`), except the
//! few that change nothing here ([`IGNORED_FIELDS`]).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use serde::Deserialize;
use textstream_engine::generate::{GenerateConfig, DEFAULT_MAX_NEW_TOKENS};
use textstream_engine::sampling::{SamplingConfig, MAX_TOP_LOGPROBS};
use textstream_engine::template::Message;

use crate::error::ApiError;
use crate::respond::Endpoint;
use crate::state::AppState;

/// The model name every server also answers to.
pub const DEFAULT_MODEL_ALIAS: &str = "default";

/// Sampling temperature when the request gives none, as OpenAI documents.
pub const DEFAULT_TEMPERATURE: f32 = 1.0;

/// Highest temperature OpenAI accepts.
pub const MAX_TEMPERATURE: f32 = 2.0;

/// OpenAI's range for `frequency_penalty` and `presence_penalty`.
pub const PENALTY_RANGE: std::ops::RangeInclusive<f32> = -2.0..=2.0;

/// OpenAI's range for each `logit_bias` value.
pub const LOGIT_BIAS_RANGE: std::ops::RangeInclusive<f32> = -100.0..=100.0;

/// OpenAI fields accepted and ignored because they change nothing in the
/// answer this server gives (bookkeeping for OpenAI's own platform).
pub const IGNORED_FIELDS: [&str; 5] = [
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
];

/// Most stop strings a request may give, as in OpenAI's API.
pub const MAX_STOP_STRINGS: usize = 4;

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub params: Params,
}

/// One message of a chat request.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content: a string, or an array of parts of which the text
/// parts are used.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One part of an array content.
#[derive(Debug, Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub params: Params,
}

/// A completion prompt: one string (an array of exactly one is accepted).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptionsParam {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The generation fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptionsParam>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Not OpenAI's, but common in compatible servers.
    pub top_k: Option<usize>,
    /// Not OpenAI's, but common in compatible servers.
    pub repetition_penalty: Option<f32>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// Chat: `true` for each token's log-probability. Completions: a number
    /// of alternatives per token (0 for the chosen token's own only).
    pub logprobs: Option<serde_json::Value>,
    /// Chat: how many of the most likely tokens to report at each step
    /// (needs `logprobs: true`).
    pub top_logprobs: Option<u64>,
    /// Token id (as a string, as OpenAI sends it) to a bias in [-100, 100].
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Every other field of the body, refused unless ignored or unset.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// A checked request, ready for a worker.
#[derive(Debug)]
pub(crate) struct Plan {
    pub prompt_ids: Vec<u32>,
    pub config: GenerateConfig,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Whether each token's log-probability goes with the answer, and how
    /// many alternatives with each (`Some(0)`: the chosen token's only).
    pub logprobs: Option<usize>,
}

/// Fails unless `model` is the served name or [`DEFAULT_MODEL_ALIAS`].
pub(crate) fn check_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    let served = &state.config().model_name;
    if model == served || model == DEFAULT_MODEL_ALIAS {
        Ok(())
    } else {
        Err(ApiError::UnknownModel {
            model: model.to_owned(),
            served: served.clone(),
        })
    }
}

impl ChatRequest {
    /// The messages as the chat template takes them.
    pub(crate) fn template_messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                let role = match message.role.as_str() {
                    "" => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].role"),
                            "the role must not be empty",
                        ))
                    }
                    // Newer OpenAI name for the system role; templates know "system".
                    "developer" => "system",
                    role @ ("system" | "user" | "assistant") => role,
                    other => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].role"),
                            format!(
                                "the role {other:?} is not supported: use system, developer, user or assistant"
                            ),
                        ))
                    }
                };
                let content = match &message.content {
                    None => String::new(),
                    Some(Content::Text(text)) => text.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, part) in parts.iter().enumerate() {
                            match (part.kind.as_str(), &part.text) {
                                ("text", Some(piece)) => text.push_str(piece),
                                (kind, _) => {
                                    return Err(ApiError::InvalidRequest {
                                        message: format!(
                                            "content parts of type {kind:?} (with a `text` field) are all this model takes"
                                        ),
                                        param: Some(format!("messages[{i}].content[{j}]")),
                                        code: Some("unsupported_parameter"),
                                    })
                                }
                            }
                        }
                        text
                    }
                };
                Ok(Message::new(role, content))
            })
            .collect()
    }
}

impl CompletionRequest {
    /// The one prompt string.
    pub(crate) fn prompt_text(&self) -> Result<&str, ApiError> {
        match &self.prompt {
            Prompt::One(text) => Ok(text),
            Prompt::Many(texts) if texts.len() == 1 => Ok(&texts[0]),
            Prompt::Many(_) => Err(ApiError::invalid(
                "prompt",
                "only one prompt per request is supported",
            )),
        }
    }
}

/// Refuses a prompt of `bytes` bytes that could not fit the context
/// however it tokenizes (each token covers at most the vocabulary's longest
/// token), before any time is spent tokenizing it.
pub(crate) fn check_prompt_bytes(
    state: &AppState,
    bytes: usize,
    param: &str,
) -> Result<(), ApiError> {
    let at_least = bytes / state.longest_token_bytes();
    let context = state.model().context_length();
    if at_least < context {
        return Ok(());
    }
    Err(ApiError::InvalidRequest {
        message: format!(
            "the prompt is {bytes} bytes: at least {at_least} tokens, and the model's context is {context} tokens"
        ),
        param: Some(param.to_owned()),
        code: Some("context_length_exceeded"),
    })
}

/// Checks `params` against the model and `prompt_ids` for `endpoint`.
pub(crate) fn plan(
    state: &AppState,
    params: &Params,
    prompt_ids: Vec<u32>,
    endpoint: Endpoint,
) -> Result<Plan, ApiError> {
    let prompt_param = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completion => "prompt",
    };
    check_other_fields(&params.other)?;
    let logprobs = wants_logprobs(params, endpoint)?;
    if let Some(n) = params.n {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("n = {n}: only n = 1 is supported"),
            ));
        }
    }
    let temperature = params.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if !(0.0..=MAX_TEMPERATURE).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature {temperature} is not in [0, {MAX_TEMPERATURE}]"),
        ));
    }
    if let Some(p) = params.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p {p} is not in (0, 1]"),
            ));
        }
    }
    if params.top_k == Some(0) {
        return Err(ApiError::invalid("top_k", "top_k must be at least 1"));
    }
    for (name, value) in [
        ("frequency_penalty", params.frequency_penalty),
        ("presence_penalty", params.presence_penalty),
    ] {
        if let Some(value) = value {
            if !PENALTY_RANGE.contains(&value) {
                return Err(ApiError::invalid(
                    name,
                    format!("{name} {value} is not in [-2, 2]"),
                ));
            }
        }
    }
    let stop = match &params.stop {
        None => Vec::new(),
        Some(Stop::One(text)) => vec![text.clone()],
        Some(Stop::Many(texts)) => texts.clone(),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings are allowed"),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }

    let context = state.model().context_length();
    if prompt_ids.is_empty() {
        return Err(ApiError::invalid(prompt_param, "the prompt is empty"));
    }
    if prompt_ids.len() >= context {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "the prompt is {} tokens; the model's context is {context} tokens",
                prompt_ids.len()
            ),
            param: Some(prompt_param.to_owned()),
            code: Some("context_length_exceeded"),
        });
    }
    let room = context - prompt_ids.len();
    let (max_param, asked) = match (params.max_completion_tokens, params.max_tokens) {
        (Some(asked), _) => ("max_completion_tokens", Some(asked)),
        (None, asked) => ("max_tokens", asked),
    };
    let max_new_tokens = match asked {
        None => DEFAULT_MAX_NEW_TOKENS.min(room),
        Some(0) => return Err(ApiError::invalid(max_param, format!("{max_param} must be at least 1"))),
        Some(asked) => match usize::try_from(asked) {
            Ok(asked) if asked <= room => asked,
            _ => {
                return Err(ApiError::InvalidRequest {
                    message: format!(
                        "{max_param} {asked} + the prompt's {} tokens exceed the model's context of {context} tokens",
                        prompt_ids.len()
                    ),
                    param: Some(max_param.to_owned()),
                    code: Some("context_length_exceeded"),
                })
            }
        },
    };
    let logit_bias = logit_bias(state, params.logit_bias.as_ref())?;
    let sampling = SamplingConfig {
        temperature,
        top_k: params.top_k,
        top_p: params.top_p,
        repetition_penalty: params.repetition_penalty.unwrap_or(1.0),
        frequency_penalty: params.frequency_penalty.unwrap_or(0.0),
        presence_penalty: params.presence_penalty.unwrap_or(0.0),
        logit_bias,
        // Without a seed, every request samples differently, as with OpenAI;
        // a negative seed (OpenAI allows any i64) is reinterpreted.
        seed: params.seed.map_or_else(random_seed, |seed| seed as u64),
        top_logprobs: logprobs.unwrap_or(0),
        ..SamplingConfig::default()
    };
    sampling
        .validate()
        .map_err(|error| ApiError::InvalidRequest {
            message: error.to_string(),
            param: None,
            code: None,
        })?;
    Ok(Plan {
        prompt_ids,
        config: GenerateConfig {
            max_new_tokens,
            sampling,
            ..GenerateConfig::default()
        },
        stop,
        stream: params.stream.unwrap_or(false),
        include_usage: params
            .stream_options
            .as_ref()
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
        logprobs,
    })
}

/// Whether the request asks for log-probabilities, and for how many
/// alternatives per token: chat's `logprobs: true` with `top_logprobs` (0 to
/// 20), completions' `logprobs` (0 to 20).
fn wants_logprobs(params: &Params, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
    use serde_json::Value;
    let count = |param: &str, n: &serde_json::Number| match n.as_u64() {
        Some(n) if n <= MAX_TOP_LOGPROBS as u64 => Ok(n as usize),
        _ => Err(ApiError::invalid(
            param,
            format!("{param} must be an integer from 0 to {MAX_TOP_LOGPROBS}, not {n}"),
        )),
    };
    let top = params
        .top_logprobs
        .map(|k| count("top_logprobs", &k.into()))
        .transpose()?;
    match (endpoint, &params.logprobs) {
        (Endpoint::Chat, None | Some(Value::Null | Value::Bool(false))) => match top {
            Some(k) if k > 0 => Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            )),
            _ => Ok(None),
        },
        (Endpoint::Chat, Some(Value::Bool(true))) => Ok(Some(top.unwrap_or(0))),
        (Endpoint::Chat, Some(other)) => Err(ApiError::invalid(
            "logprobs",
            format!("logprobs must be a boolean, not {other}"),
        )),
        (Endpoint::Completion, None | Some(Value::Null)) => Ok(None),
        (Endpoint::Completion, Some(Value::Number(n))) => count("logprobs", n).map(Some),
        (Endpoint::Completion, Some(other)) => Err(ApiError::invalid(
            "logprobs",
            format!("logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, not {other}"),
        )),
    }
}

/// Refuses any field left over from the known ones, unless it is one of
/// [`IGNORED_FIELDS`] or asks for nothing (`null`, `false`, `[]`, `{}`:
/// what some clients send for every field they leave unset).
fn check_other_fields(other: &serde_json::Map<String, serde_json::Value>) -> Result<(), ApiError> {
    use serde_json::Value;
    for (name, value) in other {
        let unset = match value {
            Value::Null | Value::Bool(false) => true,
            Value::Array(items) => items.is_empty(),
            Value::Object(fields) => fields.is_empty(),
            _ => false,
        };
        if !unset && !IGNORED_FIELDS.contains(&name.as_str()) {
            return Err(ApiError::InvalidRequest {
                message: format!("the field {name:?} is not supported by this server"),
                param: Some(name.clone()),
                code: Some("unsupported_parameter"),
            });
        }
    }
    Ok(())
}

/// `logit_bias` as (id, bias) pairs, each id in the model's vocabulary and
/// each bias in [`LOGIT_BIAS_RANGE`].
fn logit_bias(
    state: &AppState,
    bias: Option<&std::collections::BTreeMap<String, f32>>,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let vocab = state.model().info().vocab_size;
    bias.into_iter()
        .flatten()
        .map(|(id, &value)| {
            let token = id
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&t| (t as usize) < vocab);
            let Some(token) = token else {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!(
                        "{id:?} is not a token id of this model (0 to {})",
                        vocab - 1
                    ),
                ));
            };
            if !LOGIT_BIAS_RANGE.contains(&value) {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("token {id}'s bias {value} is not in [-100, 100]"),
                ));
            }
            Ok((token, value))
        })
        .collect()
}

/// A seed that differs between calls: std's hasher keys are random per
/// `RandomState`.
fn random_seed() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

//! The options every streamer takes, with transformers' names.

use std::time::Duration;

use crate::policy::Policy;

/// How a stream decodes and delivers text.
///
/// ```
/// use std::time::Duration;
/// use textstream::{Policy, StreamOptions};
/// let options = StreamOptions::default()
///     .skip_prompt(true)
///     .skip_special_tokens(true)
///     .timeout(Duration::from_secs(10))
///     .stop(["\n\n"])
///     .policy(Policy::Words);
/// assert!(options.skip_prompt);
/// ```
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Skip the ids of the first `put` (the prompt). By default, false, as in
    /// transformers.
    pub skip_prompt: bool,
    /// Decode without special tokens. By default, false.
    pub skip_special_tokens: bool,
    /// When to release text. By default, [`Policy::Eager`].
    pub policy: Policy,
    /// Stop strings: the stream ends before the first one the text reaches.
    /// By default, none.
    pub stop: Vec<String>,
    /// How long a consumer waits for text before it gets
    /// [`StreamError::Timeout`](crate::StreamError::Timeout). By default, forever.
    pub timeout: Option<Duration>,
    /// Bound, in bytes of undelivered text, beyond which `put` blocks until the
    /// consumer catches up. By default, none: pending text coalesces into one
    /// buffer and `put` never blocks.
    pub bound: Option<usize>,
    /// Whether the stream keeps token ids and log-probabilities for token
    /// events. Set by the event streams; text streams leave it off.
    pub(crate) events: bool,
}

impl StreamOptions {
    /// Sets [`skip_prompt`](Self::skip_prompt).
    pub fn skip_prompt(mut self, yes: bool) -> Self {
        self.skip_prompt = yes;
        self
    }

    /// Sets [`skip_special_tokens`](Self::skip_special_tokens).
    pub fn skip_special_tokens(mut self, yes: bool) -> Self {
        self.skip_special_tokens = yes;
        self
    }

    /// Sets [`policy`](Self::policy).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets [`stop`](Self::stop).
    pub fn stop<I, S>(mut self, stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.stop = stops.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets [`bound`](Self::bound).
    pub fn bound(mut self, bytes: usize) -> Self {
        self.bound = Some(bytes);
        self
    }
}

//! Stop strings: end the stream where the text reaches one of them.
//!
//! Text that could be the start of a stop string is held back until the next
//! text decides it, so a stop string split across tokens or chunks is still
//! found and never half-delivered.

/// Finds the first stop string in a stream of text chunks.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: a suffix that is a prefix of some
    /// stop string (at most the longest stop string's length minus one byte).
    held: String,
}

/// What [`StopMatcher::feed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopMatch {
    /// No stop string yet.
    Continue,
    /// The text reached this stop string; the text before it was released.
    Matched(String),
}

impl StopMatcher {
    /// A matcher for these stop strings; empty strings are ignored.
    pub fn new<I, S>(stops: I) -> StopMatcher
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops = stops
            .into_iter()
            .map(Into::into)
            .filter(|s: &String| !s.is_empty())
            .collect();
        StopMatcher {
            stops,
            held: String::new(),
        }
    }

    /// Whether there is any stop string to look for.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Takes the next text, appends to `out` what is decided not to be part of
    /// a stop string, and reports a match. After a match the held text is gone.
    pub fn feed(&mut self, text: &str, out: &mut String) -> StopMatch {
        if self.stops.is_empty() {
            out.push_str(text);
            return StopMatch::Continue;
        }
        self.held.push_str(text);
        // The stop string completed first wins, as if the text had arrived one
        // byte at a time; of two completed at once, the longer. This makes the
        // result independent of how the text was split into chunks.
        let found = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|&(at, stop)| (at + stop.len(), std::cmp::Reverse(stop.len())));
        if let Some((at, stop)) = found {
            out.push_str(&self.held[..at]);
            let stop = stop.clone();
            self.held.clear();
            return StopMatch::Matched(stop);
        }
        let keep = self.partial_suffix_len();
        let release = self.held.len() - keep;
        out.push_str(&self.held[..release]);
        self.held.drain(..release);
        StopMatch::Continue
    }

    /// Releases the held text: the stream ended without reaching a stop string.
    pub fn flush(&mut self, out: &mut String) {
        out.push_str(&self.held);
        self.held.clear();
    }

    /// Length of the longest suffix of the held text that is a proper prefix
    /// of some stop string.
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_str();
        self.stops
            .iter()
            .map(|stop| {
                let longest = held.len().min(stop.len() - 1);
                (1..=longest)
                    .rev()
                    .find(|&n| {
                        held.is_char_boundary(held.len() - n)
                            && stop
                                .as_bytes()
                                .starts_with(&held.as_bytes()[held.len() - n..])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

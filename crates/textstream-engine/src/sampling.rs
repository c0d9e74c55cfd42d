//! Picks the next token from the model's logits: greedy, or seeded sampling
//! with temperature, top-k, top-p and a repetition penalty.
//!
//! The steps run in the order llama.cpp and transformers use: the repetition
//! penalty changes the raw logits, temperature scales them, top-k then top-p
//! cut the candidates, and one is drawn. The [`Sampler`] owns its random
//! generator, seeded from [`SamplingConfig::seed`], so the same seed, logits and
//! history give the same tokens.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::EngineError;

/// The seed used when none is given: any fixed value would do; a fixed one
/// makes runs reproduce by default.
pub const DEFAULT_SEED: u64 = 42;
/// How many recent tokens the repetition penalty looks at by default, in
/// tokens (llama.cpp's default).
pub const DEFAULT_REPEAT_LAST_N: usize = 64;

/// Temperatures below this are greedy: dividing logits by a smaller one
/// overflows f32 (`1e-45` turned every logit infinite), and the choice it
/// would make is the most likely token anyway.
pub const GREEDY_BELOW_TEMPERATURE: f32 = 1e-5;

/// The most alternatives a [`Sampler`] reports per token (OpenAI's limit
/// for `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Divides the logits before sampling; `0.0` (anything below
    /// [`GREEDY_BELOW_TEMPERATURE`]) means greedy (always the most likely
    /// token). Must be finite and `>= 0`. By default, `0.0`.
    pub temperature: f32,
    /// Keeps only the `k` most likely tokens; must be at least 1. By default, `None` (all).
    pub top_k: Option<usize>,
    /// Keeps the most likely tokens whose probabilities add up to `p`; must be
    /// in `(0, 1]`. By default, `None` (all).
    pub top_p: Option<f32>,
    /// Divides positive (multiplies negative) logits of tokens seen in the last
    /// `repeat_last_n` tokens; `1.0` turns it off. Must be finite and `> 0`.
    /// By default, `1.0`.
    pub repetition_penalty: f32,
    /// How many recent tokens (prompt included) the penalty looks at. By
    /// default, [`DEFAULT_REPEAT_LAST_N`].
    pub repeat_last_n: usize,
    /// Subtracted from a token's logit once for each time this sampler has
    /// picked it (OpenAI's `frequency_penalty`; the prompt does not count).
    /// Must be finite. By default, `0.0`.
    pub frequency_penalty: f32,
    /// Subtracted from the logit of every token this sampler has picked at
    /// least once (OpenAI's `presence_penalty`). Must be finite. By default, `0.0`.
    pub presence_penalty: f32,
    /// Added to these tokens' logits before every choice (OpenAI's
    /// `logit_bias`; -100 all but bans a token). Ids past the vocabulary are
    /// ignored here (the caller checks them against its model); values must
    /// be finite. By default, none.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seeds the random generator. By default, [`DEFAULT_SEED`].
    pub seed: u64,
    /// How many of the most likely tokens to report with each choice
    /// ([`Sampled::top`]), at most [`MAX_TOP_LOGPROBS`]. By default, 0.
    pub top_logprobs: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: DEFAULT_SEED,
            top_logprobs: 0,
        }
    }
}

impl SamplingConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), EngineError> {
        let invalid = |field, reason: &str| {
            Err(EngineError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return invalid(
                "temperature",
                &format!("{} is not a finite value >= 0", self.temperature),
            );
        }
        if self.top_k == Some(0) {
            return invalid("top_k", "0 keeps no token; use at least 1, or none");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return invalid("top_p", &format!("{p} is not in (0, 1]"));
            }
        }
        for (field, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !value.is_finite() {
                return invalid(field, &format!("{value} is not finite"));
            }
        }
        if let Some((id, bias)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return invalid(
                "logit_bias",
                &format!("token {id}'s bias {bias} is not finite"),
            );
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return invalid(
                "top_logprobs",
                &format!("{} is more than {MAX_TOP_LOGPROBS}", self.top_logprobs),
            );
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return invalid(
                "repetition_penalty",
                &format!("{} is not a finite value > 0", self.repetition_penalty),
            );
        }
        Ok(())
    }

    /// Whether the choice is always the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_BELOW_TEMPERATURE || self.top_k == Some(1)
    }
}

/// The indices of the `k` largest values, largest first (ties: lower index
/// first). One pass that keeps a sorted list of `k`: a vocabulary-sized sort
/// per token would cost more than the step's sampling.
fn most_likely(logits: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &logit) in logits.iter().enumerate() {
        if best.len() == k && logit <= logits[best[k - 1]] {
            continue;
        }
        let at = best.partition_point(|&j| logits[j] >= logit);
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

/// A chosen token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub id: u32,
    /// Its natural-log probability under `softmax(logits / T)` after the
    /// penalties and bias and before top-k/top-p cut the candidates; greedy
    /// decoding uses `T = 1`, so it is the model's own log-probability.
    pub logprob: f32,
    /// The [`SamplingConfig::top_logprobs`] most likely tokens under the same
    /// distribution, most likely first (ties: lower id first), with their
    /// log-probabilities; empty when none were asked for.
    pub top: Vec<(u32, f32)>,
}

/// Chooses tokens from logits as a [`SamplingConfig`] says.
#[derive(Debug)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
    /// Candidate indices, reused between calls to avoid a vocab-sized allocation per token.
    order: Vec<usize>,
    /// How many times each token was picked (for the frequency and presence
    /// penalties; each token's own, so the map's order does not matter).
    picked: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler for `config`, which is validated first.
    pub fn new(config: SamplingConfig) -> Result<Self, EngineError> {
        config.validate()?;
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self {
            config,
            rng,
            order: Vec::new(),
            picked: std::collections::HashMap::new(),
        })
    }

    /// The configuration this sampler follows.
    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Picks the next token from `logits` (modified in place by the penalty),
    /// given the ids so far (`history`, prompt included) for the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<Sampled, EngineError> {
        if logits.is_empty() {
            return Err(EngineError::Inference {
                message: "the model produced no logits".to_owned(),
            });
        }
        self.apply_repetition_penalty(logits, history);
        self.apply_penalties_and_bias(logits);
        let temperature = if self.config.is_greedy() {
            1.0
        } else {
            self.config.temperature
        };
        // A vocabulary is up to 262,144 logits: these passes run in the
        // tier's vector instructions (at baseline x86-64 `floor` alone is a
        // libm call per logit, and greedy Gemma 3 spent 1.4 ms a token here).
        let (max, sum_exp, any_nan) = crate::quant::vectorized(
            #[inline(always)]
            || {
                if temperature != 1.0 {
                    logits.iter_mut().for_each(|l| *l /= temperature);
                }
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum_exp = crate::math::sum_exp_shifted(logits, max);
                (max, sum_exp, logits.iter().any(|l| l.is_nan()))
            },
        );
        if !max.is_finite() || !sum_exp.is_finite() || any_nan {
            return Err(EngineError::Inference {
                message: "the model produced non-finite logits".to_owned(),
            });
        }
        let log_z = f64::from(max) + sum_exp.ln();
        let logprob = |logit: f32| (f64::from(logit) - log_z) as f32;
        let top = most_likely(logits, self.config.top_logprobs)
            .into_iter()
            .map(|id| (id as u32, logprob(logits[id])))
            .collect();

        let id = if self.config.is_greedy() {
            // The first logit equal to the maximum: `argmax` without its
            // serial dependence on the best so far.
            logits.iter().position(|&l| l == max).unwrap_or(0)
        } else {
            self.draw(logits, max, sum_exp)
        };
        self.count_pick(id as u32);
        Ok(Sampled {
            id: u32::try_from(id).map_err(|_| EngineError::Inference {
                message: format!("token index {id} does not fit in u32"),
            })?,
            logprob: logprob(logits[id]),
            top,
        })
    }

    /// OpenAI's frequency and presence penalties over the tokens picked so
    /// far, then the logit bias.
    fn apply_penalties_and_bias(&self, logits: &mut [f32]) {
        let (frequency, presence) = (self.config.frequency_penalty, self.config.presence_penalty);
        if frequency != 0.0 || presence != 0.0 {
            for (&id, &count) in &self.picked {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit -= count as f32 * frequency + presence;
                }
            }
        }
        for &(id, bias) in &self.config.logit_bias {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit += bias;
            }
        }
    }

    /// Counts a picked token for the frequency and presence penalties.
    fn count_pick(&mut self, id: u32) {
        if self.config.frequency_penalty == 0.0 && self.config.presence_penalty == 0.0 {
            return;
        }
        *self.picked.entry(id).or_insert(0) += 1;
    }

    fn apply_repetition_penalty(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.config.repetition_penalty;
        if penalty == 1.0 || self.config.repeat_last_n == 0 {
            return;
        }
        let start = history.len().saturating_sub(self.config.repeat_last_n);
        let mut seen = std::collections::HashSet::new();
        for &id in &history[start..] {
            if !seen.insert(id) {
                continue;
            }
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit = if *logit >= 0.0 {
                    *logit / penalty
                } else {
                    *logit * penalty
                };
            }
        }
    }

    /// Draws one index from the (temperature-scaled) logits after top-k and
    /// top-p; `sum_exp` is `Σ e^(l - max)` over all of them.
    fn draw(&mut self, logits: &[f32], max: f32, sum_exp: f64) -> usize {
        let u = self.rng.random::<f64>();
        self.pick(logits, max, sum_exp, u)
    }

    /// The candidate that `u` in `[0, 1)` falls on when the candidates,
    /// best first, share `[0, 1)` by their probabilities: what sorting the
    /// whole vocabulary gives, but sorting only as many of the best as the
    /// draw reaches (a few dozen, against 262,144 for Gemma 3's vocabulary).
    fn pick(&mut self, logits: &[f32], max: f32, sum_exp: f64, u: f64) -> usize {
        let weight = |i: usize| f64::from(crate::math::fast_exp(logits[i] - max));
        let by_logit_desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
        self.order.clear();
        self.order.extend(0..logits.len());
        let mut total = sum_exp;
        if let Some(k) = self.config.top_k.filter(|&k| k < logits.len()) {
            self.order.select_nth_unstable_by(k - 1, by_logit_desc);
            self.order.truncate(k);
            total = self.order.iter().map(|&i| weight(i)).sum();
        }
        let candidates = self.order.len();
        // The best `sorted` candidates are in order; `cumulative[n]` is the
        // weight of the first n + 1.
        let mut sorted = 0;
        let mut cumulative: Vec<f64> = Vec::new();
        let sort_more = |order: &mut Vec<usize>, cumulative: &mut Vec<f64>, sorted: &mut usize| {
            let next = (2 * *sorted).max(64).min(candidates);
            if next < candidates {
                order[*sorted..].select_nth_unstable_by(next - *sorted - 1, by_logit_desc);
            }
            order[*sorted..next].sort_unstable_by(by_logit_desc);
            let mut sum = cumulative.last().copied().unwrap_or(0.0);
            for &i in &order[*sorted..next] {
                sum += weight(i);
                cumulative.push(sum);
            }
            *sorted = next;
        };
        // Top-p keeps the fewest best candidates whose weight reaches p.
        let mut keep = candidates;
        let mut kept_total = total;
        if let Some(p) = self.config.top_p {
            let target = f64::from(p) * total;
            loop {
                if let Some(n) = cumulative.iter().position(|&c| c >= target) {
                    keep = n + 1;
                    kept_total = cumulative[n];
                    break;
                }
                if sorted == candidates {
                    // Rounding left the target just past the last sum.
                    kept_total = cumulative.last().copied().unwrap_or(total);
                    break;
                }
                sort_more(&mut self.order, &mut cumulative, &mut sorted);
            }
        }
        let target = u * kept_total;
        loop {
            if let Some(n) = cumulative[..sorted.min(keep)]
                .iter()
                .position(|&c| target < c)
            {
                return self.order[n];
            }
            if sorted >= keep {
                // Rounding can leave the target just past the last weight.
                return self.order[keep - 1];
            }
            sort_more(&mut self.order, &mut cumulative, &mut sorted);
        }
    }
}

/// The index of the largest value; the first one on ties.
/// The index of the largest value (the first, on ties): the greedy pick.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![0.5, 2.0, -1.0, 1.5, 0.0, 1.9]
    }

    fn sampler(config: SamplingConfig) -> Sampler {
        Sampler::new(config).expect("valid config")
    }

    #[test]
    fn greedy_picks_the_argmax_with_its_logprob() {
        let mut s = sampler(SamplingConfig::default());
        let picked = s.sample(&mut logits(), &[]).expect("sample");
        assert_eq!(picked.id, 1);
        let l = logits();
        let z: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((picked.logprob - (2.0f32.exp() / z).ln()).abs() < 1e-5);
    }

    #[test]
    fn frequency_and_presence_penalties_count_picks() {
        // Greedy on fixed logits picks 1 (2.0) until its penalty drops it
        // below 5 (1.9): with frequency 0.06 after two picks (1.88), and
        // then 5's own penalty (1.84) gives 1 back; presence 0.2 takes 0.2
        // once from each picked token (1 at 1.8, 5 at 1.7).
        let picks = |frequency_penalty, presence_penalty| -> Vec<u32> {
            let mut s = sampler(SamplingConfig {
                frequency_penalty,
                presence_penalty,
                ..SamplingConfig::default()
            });
            (0..4)
                .map(|_| s.sample(&mut logits(), &[]).expect("sample").id)
                .collect()
        };
        assert_eq!(picks(0.0, 0.0), [1, 1, 1, 1]);
        assert_eq!(picks(0.06, 0.0), [1, 1, 5, 1]);
        assert_eq!(picks(0.0, 0.2), [1, 5, 1, 1]);
    }

    #[test]
    fn logit_bias_moves_the_choice() {
        let mut s = sampler(SamplingConfig {
            logit_bias: vec![(1, -100.0), (4, 3.0), (99, 5.0)],
            ..SamplingConfig::default()
        });
        assert_eq!(s.sample(&mut logits(), &[]).expect("sample").id, 4);
        let bad = SamplingConfig {
            logit_bias: vec![(1, f32::NAN)],
            ..SamplingConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = SamplingConfig {
            presence_penalty: f32::INFINITY,
            ..SamplingConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn tiny_temperatures_are_greedy_not_an_error() {
        for temperature in [1e-45, 1e-30, 9e-6] {
            let mut s = sampler(SamplingConfig {
                temperature,
                seed: 3,
                ..SamplingConfig::default()
            });
            let picked = s.sample(&mut logits(), &[]).expect("sample");
            assert_eq!(picked.id, 1, "temperature {temperature}");
        }
    }

    #[test]
    fn top_k_one_equals_greedy_at_any_temperature() {
        let mut s = sampler(SamplingConfig {
            temperature: 5.0,
            top_k: Some(1),
            seed: 7,
            ..SamplingConfig::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]).expect("sample").id, 1);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let config = SamplingConfig {
            temperature: 1.5,
            top_p: Some(0.95),
            top_k: Some(5),
            seed: 1234,
            ..SamplingConfig::default()
        };
        let run = |config: &SamplingConfig| -> Vec<u32> {
            let mut s = sampler(config.clone());
            (0..50)
                .map(|_| s.sample(&mut logits(), &[]).expect("sample").id)
                .collect()
        };
        let a = run(&config);
        assert_eq!(a, run(&config));
        assert!(
            a.iter().any(|&id| id != a[0]),
            "sampling should vary: {a:?}"
        );
        let other = run(&SamplingConfig {
            seed: 4321,
            ..config
        });
        assert_ne!(a, other);
    }

    #[test]
    fn top_k_and_top_p_limit_the_candidates() {
        let mut s = sampler(SamplingConfig {
            temperature: 10.0,
            top_k: Some(2),
            ..SamplingConfig::default()
        });
        for _ in 0..100 {
            let id = s.sample(&mut logits(), &[]).expect("sample").id;
            assert!(id == 1 || id == 5, "{id}");
        }
        let mut s = sampler(SamplingConfig {
            temperature: 1.0,
            top_p: Some(0.01),
            ..SamplingConfig::default()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&mut logits(), &[]).expect("sample").id, 1);
        }
    }

    /// The draw as it was first written: sort every candidate, then walk.
    fn pick_by_sorting(config: &SamplingConfig, logits: &[f32], u: f64) -> usize {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        order.truncate(config.top_k.unwrap_or(order.len()));
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| f64::from(crate::math::fast_exp(logits[i] - max)))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut keep = weights.len();
        if let Some(p) = config.top_p {
            let mut cumulative = 0.0;
            for (n, w) in weights.iter().enumerate() {
                cumulative += w;
                if cumulative >= f64::from(p) * total {
                    keep = n + 1;
                    break;
                }
            }
        }
        let mut target = u * weights[..keep].iter().sum::<f64>();
        for (n, w) in weights[..keep].iter().enumerate() {
            if target < *w {
                return order[n];
            }
            target -= w;
        }
        order[keep - 1]
    }

    proptest::proptest! {
        /// Sorting only the best candidates the draw reaches picks what
        /// sorting all of them picks, with and without top-k and top-p.
        #[test]
        fn partial_sort_picks_what_a_full_sort_picks(
            logits in proptest::collection::vec(-30.0f32..30.0, 1..3000),
            top_k in proptest::option::of(1usize..400),
            top_p in proptest::option::of(0.05f32..1.0),
            u in 0.0f64..1.0,
        ) {
            let config = SamplingConfig { temperature: 1.0, top_k, top_p, ..SamplingConfig::default() };
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum_exp = crate::math::sum_exp_shifted(&logits, max);
            let picked = sampler(config.clone()).pick(&logits, max, sum_exp, u);
            let want = pick_by_sorting(&config, &logits, u);
            // Candidates with equal logits may come in either order.
            proptest::prop_assert_eq!(logits[picked], logits[want], "{} vs {}", picked, want);
        }

        /// The reported alternatives are the `k` most likely tokens of a
        /// full sort (ties by lower id), with the chosen token's own
        /// log-probability where they include it; greedy picks the first.
        #[test]
        fn alternatives_are_the_most_likely_tokens(
            logits in proptest::collection::vec(-8.0f32..8.0, 1..500),
            k in 1usize..=MAX_TOP_LOGPROBS,
            temperature in proptest::prop_oneof![proptest::strategy::Just(0.0f32), 0.3f32..2.0],
            seed in 0u64..1000,
        ) {
            // Rounded logits, so that ties happen; `+ 0.0` turns a rounded
            // -0.0 into 0.0, which the sampler (rightly) ties with 0.0 but
            // `total_cmp` below would order after it.
            let logits: Vec<f32> = logits.iter().map(|l| (l * 4.0).round() / 4.0 + 0.0).collect();
            let config = SamplingConfig { temperature, top_logprobs: k, seed, ..SamplingConfig::default() };
            let picked = sampler(config).sample(&mut logits.clone(), &[]).expect("sample");
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            let want: Vec<u32> = order.iter().take(k).map(|&i| i as u32).collect();
            let got: Vec<u32> = picked.top.iter().map(|t| t.0).collect();
            proptest::prop_assert_eq!(&got, &want);
            let t = if temperature == 0.0 { 1.0 } else { temperature };
            let z: f64 = logits.iter().map(|&l| (f64::from(l) / f64::from(t)).exp()).sum();
            for &(id, logprob) in &picked.top {
                let exact = f64::from(logits[id as usize]) / f64::from(t) - z.ln();
                proptest::prop_assert!((f64::from(logprob) - exact).abs() < 1e-3, "{} vs {}", logprob, exact);
                if id == picked.id {
                    proptest::prop_assert_eq!(logprob, picked.logprob);
                }
            }
            if temperature == 0.0 {
                proptest::prop_assert_eq!(picked.top[0].0, picked.id);
            }
        }
    }

    #[test]
    fn alternatives_beyond_the_limit_are_refused() {
        let config = SamplingConfig {
            top_logprobs: MAX_TOP_LOGPROBS + 1,
            ..SamplingConfig::default()
        };
        assert!(Sampler::new(config).is_err());
        let mut s = sampler(SamplingConfig::default());
        assert!(s.sample(&mut logits(), &[]).expect("sample").top.is_empty());
    }

    #[test]
    fn penalty_lowers_repeated_tokens() {
        let s = sampler(SamplingConfig {
            repetition_penalty: 2.0,
            repeat_last_n: 2,
            ..SamplingConfig::default()
        });
        // The window is the last two tokens, [1, 1]: token 1 is penalised
        // once, token 2 (before the window) not at all.
        let mut l = logits();
        s.apply_repetition_penalty(&mut l, &[2, 1, 1]);
        assert_eq!(
            l[1], 1.0,
            "positive logit divided once, not once per repeat"
        );
        assert_eq!(l[2], -1.0, "outside the window");
        let mut l = logits();
        s.apply_repetition_penalty(&mut l, &[2]);
        assert_eq!(l[2], -2.0, "negative logit multiplied");
        // With the penalty, greedy moves off the repeated argmax.
        let mut s = sampler(SamplingConfig {
            repetition_penalty: 2.0,
            ..SamplingConfig::default()
        });
        assert_eq!(s.sample(&mut logits(), &[1]).expect("sample").id, 5);
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad = [
            SamplingConfig {
                temperature: -0.1,
                ..SamplingConfig::default()
            },
            SamplingConfig {
                temperature: f32::NAN,
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_k: Some(0),
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_p: Some(0.0),
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_p: Some(1.5),
                ..SamplingConfig::default()
            },
            SamplingConfig {
                repetition_penalty: 0.0,
                ..SamplingConfig::default()
            },
            SamplingConfig {
                repetition_penalty: f32::INFINITY,
                ..SamplingConfig::default()
            },
        ];
        for config in bad {
            let err = Sampler::new(config.clone()).expect_err("invalid");
            assert!(
                matches!(err, EngineError::InvalidConfig { .. }),
                "{config:?}: {err}"
            );
        }
    }

    #[test]
    fn non_finite_logits_are_an_error() {
        let mut s = sampler(SamplingConfig::default());
        let err = s
            .sample(&mut [0.0, f32::NAN, 1.0], &[])
            .expect_err("nan logits");
        assert!(matches!(err, EngineError::Inference { .. }), "{err}");
    }
}

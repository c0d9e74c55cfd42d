//! What batching buys, measured so that a shared machine's drift cancels:
//! groups of 1, 2, ... sequences of the default model (or
//! `TEXTSTREAM_MODEL`) step by turns in one process, a block of steps each,
//! and each group's aggregate tokens per second is divided by the one
//! sequence's in the same round. Prints each group's median step, tokens
//! per second and median ratio (with its range over the rounds).
//!
//! ```sh
//! cargo run --release -p textstream-engine --example batch_ratio -- [COUNTS] [ROUNDS]
//! ```
//!
//! `COUNTS` defaults to `1,2,4,8,16` (the first is the reference; make it
//! 1), `ROUNDS` to 24 (blocks of 16 steps; the first round warms up and is
//! not counted). Each sequence has its own 32-token prompt and decodes up
//! to 256 tokens, then starts over from its prompt's end, as
//! `benches/batch.rs` does.

use std::process::ExitCode;
use std::time::Instant;

use textstream_engine::model::{Model, Session};
use textstream_engine::model_file;
use textstream_engine::sampling::argmax;

const PROMPT: usize = 32;
const ANSWER: usize = 256;
const STEPS_PER_BLOCK: usize = 16;

/// Sequences stepping together.
struct Group {
    sessions: Vec<Session>,
    next: Vec<u32>,
    pos: usize,
    /// Seconds per step, one entry per counted round.
    steps: Vec<f64>,
}

impl Group {
    fn new(model: &Model, n: usize) -> Result<Self, Box<dyn std::error::Error>> {
        let mut sessions: Vec<Session> = (0..n).map(|_| model.session()).collect();
        let mut next = Vec::new();
        for (i, session) in sessions.iter_mut().enumerate() {
            let prompt: Vec<u32> = (0..PROMPT as u32).map(|k| 100 + k * 7 + i as u32).collect();
            next.push(argmax(&session.forward_last(&prompt, 0)?) as u32);
        }
        Ok(Self {
            sessions,
            next,
            pos: PROMPT,
            steps: Vec::new(),
        })
    }

    /// One block of steps; returns seconds per step.
    fn block(&mut self) -> Result<f64, Box<dyn std::error::Error>> {
        let started = Instant::now();
        for _ in 0..STEPS_PER_BLOCK {
            if self.pos >= PROMPT + ANSWER {
                self.pos = PROMPT;
            }
            let ids: Vec<[u32; 1]> = self.next.iter().map(|&id| [id]).collect();
            let mut steps: Vec<(&mut Session, &[u32], usize)> = self
                .sessions
                .iter_mut()
                .zip(&ids)
                .map(|(s, id)| (s, &id[..], self.pos))
                .collect();
            let logits = Session::forward_batch(&mut steps)?;
            self.next = logits.iter().map(|l| argmax(l) as u32).collect();
            self.pos += 1;
        }
        Ok(started.elapsed().as_secs_f64() / STEPS_PER_BLOCK as f64)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let counts: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,2,4,8,16".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let rounds: usize = args.next().map_or(Ok(24), |r| r.parse())?;
    if counts.is_empty() || counts.contains(&0) || rounds < 2 {
        return Err("COUNTS: sequence counts of at least 1; ROUNDS: at least 2".into());
    }
    let name = std::env::var("TEXTSTREAM_MODEL").ok();
    let model = Model::load(&model_file::resolve(name.as_deref(), &mut |_| {})?)?;
    let mut groups = counts
        .iter()
        .map(|&n| Group::new(&model, n))
        .collect::<Result<Vec<_>, _>>()?;
    for round in 0..rounds {
        for group in &mut groups {
            let step = group.block()?;
            if round > 0 {
                group.steps.push(step);
            }
        }
    }
    let reference = (counts[0], groups[0].steps.clone());
    for (&n, group) in counts.iter().zip(&groups) {
        let ratios: Vec<f64> = group
            .steps
            .iter()
            .zip(&reference.1)
            .map(|(step, one)| n as f64 * one / (reference.0 as f64 * step))
            .collect();
        let step = median(&group.steps);
        println!(
            "{n:>3} sequences: step {:.2} ms, {:.0} tokens/s; against {}: {:.2}x (rounds {:.2}-{:.2}x)",
            step * 1e3,
            n as f64 / step,
            reference.0,
            median(&ratios),
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

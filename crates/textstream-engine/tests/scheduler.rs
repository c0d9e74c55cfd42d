//! The continuous-batching scheduler on a tiny random model: requests run
//! together give what each gives alone through `generate`, token for token
//! (under any KV budget, from cached or copied prefixes); sequences leave as
//! they end; the queue and KV memory are bounded; bad requests fail alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use textstream::{Closed, FinishReason};
use textstream_engine::generate::{generate, GenerateConfig};
use textstream_engine::model::Model;
use textstream_engine::sampling::SamplingConfig;
use textstream_engine::scheduler::{Scheduler, SchedulerConfig, SubmitError};
use textstream_engine::testing::{Recorder, TinyModel};
use textstream_engine::EngineError;

/// The tiny model, written once per test process and shared.
fn model() -> Arc<Model> {
    static MODEL: std::sync::OnceLock<Arc<Model>> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path: PathBuf = std::env::temp_dir()
                .join(format!("textstream-scheduler-{}.gguf", std::process::id()));
            TinyModel::default().write(&path).expect("write");
            let model = Model::load(&path).expect("load");
            let _ = std::fs::remove_file(&path);
            Arc::new(model)
        })
        .clone()
}

/// A scheduler running two sequences at once.
fn two_at_once(model: &Arc<Model>) -> Scheduler {
    let config = SchedulerConfig {
        max_batch: 2,
        ..SchedulerConfig::default()
    };
    Scheduler::new(Arc::clone(model), config).expect("scheduler")
}

/// Exactly `tokens` tokens, stop ids or not.
fn exactly(tokens: usize) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: tokens,
        ignore_stop_ids: true,
        ..GenerateConfig::default()
    }
}

/// Ids cycling through the tiny vocabulary's ordinary tokens.
fn prompt(len: usize, offset: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 3 + (i * 37 + offset) % 250)
        .collect()
}

/// One request of a property case.
#[derive(Debug, Clone)]
struct Case {
    len: usize,
    offset: u32,
    max_new_tokens: usize,
    temperature: f32,
    seed: u64,
}

fn cases() -> impl Strategy<Value = Vec<Case>> {
    proptest::collection::vec(
        (
            1usize..60,
            // Few offsets: prompts often begin with another's (prefix reuse).
            0u32..3,
            1usize..20,
            prop_oneof![Just(0.0f32), 0.5f32..1.5],
            0u64..1000,
        )
            .prop_map(|(len, offset, max_new_tokens, temperature, seed)| Case {
                len,
                offset,
                max_new_tokens,
                temperature,
                seed,
            }),
        1..10,
    )
}

fn config(case: &Case) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: case.max_new_tokens,
        sampling: SamplingConfig {
            temperature: case.temperature,
            seed: case.seed,
            ..SamplingConfig::default()
        },
        ..GenerateConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Random requests (greedy and seeded sampling, prompts chunked by a
    /// small step budget, more requests than slots, prompts that begin with
    /// what an earlier request ran) get exactly what each gets alone.
    ///
    /// Under a KV budget of one to three times the largest request's worst
    /// case (requests wait for memory, idle caches are evicted), or none,
    /// and never holding more than the budget.
    #[test]
    fn batched_requests_get_what_they_get_alone(
        cases in cases(),
        max_batch in 1usize..5,
        step_tokens in 1usize..40,
        budget_times in prop_oneof![Just(None), (1u64..4).prop_map(Some)],
    ) {
        let model = model();
        let largest = cases
            .iter()
            .map(|c| model.kv_bytes(c.len + c.max_new_tokens).expect("native"))
            .max()
            .unwrap_or(0);
        let kv_memory = budget_times.map(|k| k * largest);
        let scheduler = Scheduler::new(
            Arc::clone(&model),
            SchedulerConfig { max_batch, max_waiting: 16, step_tokens, kv_memory },
        ).expect("scheduler");
        let submitted: Vec<_> = cases
            .iter()
            .map(|case| {
                let recorder = Recorder::new();
                let done = scheduler
                    .submit(prompt(case.len, case.offset), config(case), Box::new(recorder.clone()))
                    .expect("submit");
                (recorder, done)
            })
            .collect();
        for (case, (recorder, done)) in cases.iter().zip(submitted) {
            let got = done.recv().expect("a result").expect("generated");
            let mut alone = Recorder::new();
            let want = generate(&mut model.session(), &prompt(case.len, case.offset), &config(case), &mut alone)
                .expect("alone");
            prop_assert_eq!(&got.tokens, &want.tokens, "{:?}", case);
            prop_assert_eq!(&got.finish_reason, &want.finish_reason);
            let (got_stream, want_stream) = (recorder.recording(), alone.recording());
            prop_assert_eq!(got_stream.tokens, want_stream.tokens);
            prop_assert_eq!(got_stream.logprobs, want_stream.logprobs);
            prop_assert_eq!(got_stream.finish, want_stream.finish);
        }
        if let Some(budget) = kv_memory {
            prop_assert!(scheduler.stats().kv_peak_bytes() <= budget);
        }
    }
}

#[test]
fn a_consumer_that_leaves_frees_its_slot_and_the_others_go_on() {
    let model = model();
    let scheduler = two_at_once(&model);
    let long = exactly(30);
    let leaving = Recorder::refusing_after(3, Closed::ConsumerGone);
    let left = scheduler
        .submit(prompt(10, 1), long.clone(), Box::new(leaving.clone()))
        .expect("submit");
    let staying = scheduler
        .submit(prompt(12, 2), long.clone(), Box::new(Recorder::new()))
        .expect("submit");
    // A third waits for a slot: the one the leaving consumer frees.
    let third = scheduler
        .submit(prompt(8, 3), long, Box::new(Recorder::new()))
        .expect("submit");
    let left = left.recv().expect("result").expect("ok");
    assert!(left.consumer_gone);
    assert_eq!(left.tokens.len(), 4, "stopped at the first refused token");
    assert_eq!(leaving.recording().refused, 1, "no token after the refusal");
    assert_eq!(leaving.recording().finish, None, "nobody to finish for");
    for done in [staying, third] {
        let out = done.recv().expect("result").expect("ok");
        assert_eq!(out.finish_reason, FinishReason::Length);
        assert_eq!(out.tokens.len(), 30);
    }
}

#[test]
fn bad_requests_fail_alone() {
    let model = model();
    let scheduler = Scheduler::new(Arc::clone(&model), SchedulerConfig::default()).expect("s");
    let empty = Recorder::new();
    let failed = scheduler
        .submit(
            Vec::new(),
            GenerateConfig::default(),
            Box::new(empty.clone()),
        )
        .expect("submit");
    let short = GenerateConfig {
        max_new_tokens: 16,
        ..GenerateConfig::default()
    };
    let fine = scheduler
        .submit(prompt(5, 0), short, Box::new(Recorder::new()))
        .expect("submit");
    let too_long = scheduler
        .submit(
            prompt(10, 0),
            GenerateConfig {
                max_new_tokens: model.context_length(),
                ..GenerateConfig::default()
            },
            Box::new(Recorder::new()),
        )
        .expect("submit");
    assert!(matches!(
        failed.recv().expect("result"),
        Err(EngineError::EmptyPrompt)
    ));
    assert!(empty.recording().failure.is_some(), "the streamer is told");
    assert!(matches!(
        too_long.recv().expect("result"),
        Err(EngineError::ContextOverflow { .. })
    ));
    assert!(fine.recv().expect("result").is_ok());
}

/// A streamer whose first `put` waits until the test opens it: it holds
/// the scheduler's loop still.
#[derive(Clone, Default)]
struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().expect("lock") = true;
        self.0 .1.notify_all();
    }

    /// Returns once the gate is open.
    fn wait(&self) {
        let (open, wake) = &*self.0;
        let guard = open.lock().expect("lock");
        drop(wake.wait_while(guard, |open| !*open).expect("wait"));
    }
}

impl textstream::Streamer for Gate {
    fn put(&mut self, _: &[u32]) -> Result<(), Closed> {
        self.wait();
        Ok(())
    }
    fn finish(&mut self, _: FinishReason) {}
    fn fail(&mut self, _: Box<dyn std::error::Error + Send + Sync>) {}
}

#[test]
fn the_queue_is_bounded_and_zero_sizes_are_refused() {
    let model = model();
    // One slot and one waiting place; the first request holds the loop.
    let scheduler = Scheduler::new(
        Arc::clone(&model),
        SchedulerConfig {
            max_batch: 1,
            max_waiting: 1,
            step_tokens: 8,
            kv_memory: None,
        },
    )
    .expect("scheduler");
    let short = GenerateConfig {
        max_new_tokens: 4,
        ..GenerateConfig::default()
    };
    let gate = Gate::default();
    let first = scheduler
        .submit(prompt(4, 0), short.clone(), Box::new(gate.clone()))
        .expect("submit");
    // The loop takes the first off the queue, then waits in its `put`.
    let second = loop {
        match scheduler.submit(prompt(4, 1), short.clone(), Box::new(Recorder::new())) {
            Ok(done) => break done,
            Err(SubmitError::QueueFull) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    };
    assert!(matches!(
        scheduler.submit(prompt(4, 2), short.clone(), Box::new(Recorder::new())),
        Err(SubmitError::QueueFull)
    ));
    gate.open();
    assert!(first.recv().expect("result").is_ok());
    assert!(second.recv().expect("result").is_ok());
    for zero in [
        SchedulerConfig {
            max_batch: 0,
            ..SchedulerConfig::default()
        },
        SchedulerConfig {
            step_tokens: 0,
            ..SchedulerConfig::default()
        },
    ] {
        assert!(matches!(
            Scheduler::new(Arc::clone(&model), zero),
            Err(EngineError::InvalidConfig { .. })
        ));
    }
}

#[test]
fn a_follow_up_turn_runs_only_its_new_tokens() {
    let model = model();
    let scheduler = two_at_once(&model);
    let answer = exactly(5);
    let first_turn = prompt(30, 7);
    // Runs one request to its end; the prompt tokens it reused.
    let run = |prompt_ids: &[u32]| {
        let before = scheduler.stats().reused_tokens();
        let output = scheduler
            .submit(
                prompt_ids.to_vec(),
                answer.clone(),
                Box::new(Recorder::new()),
            )
            .expect("submit")
            .recv()
            .expect("result")
            .expect("ok");
        (output, scheduler.stats().reused_tokens() - before)
    };
    let (first, _) = run(&first_turn);
    // The follow-up: the whole conversation so far, then a new message.
    let mut follow_up = first_turn.clone();
    follow_up.extend(&first.tokens);
    follow_up.extend(prompt(6, 1));
    let (second, reused) = run(&follow_up);
    // The cache held the first prompt and all but the last answer token.
    assert_eq!(reused, (first_turn.len() + first.tokens.len() - 1) as u64);
    let alone = generate(
        &mut model.session(),
        &follow_up,
        &answer,
        &mut Recorder::new(),
    )
    .expect("alone");
    assert_eq!(second.tokens, alone.tokens, "reuse changes no token");
    // The same request again, with a slot free for a new session: the cache
    // that holds it is still taken (its answer is all it loses).
    let (third, reused) = run(&follow_up);
    assert_eq!(reused, (follow_up.len() - 1) as u64);
    assert_eq!(third.tokens, alone.tokens);
}

/// A streamer whose consumer is gone once the prompt is put (a client that
/// left while its long prompt was read).
#[derive(Clone, Default)]
struct LeavesAfterPrompt(Arc<std::sync::atomic::AtomicBool>);

impl textstream::Streamer for LeavesAfterPrompt {
    fn put(&mut self, _: &[u32]) -> Result<(), Closed> {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn is_closed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn finish(&mut self, _: FinishReason) {}
    fn fail(&mut self, _: Box<dyn std::error::Error + Send + Sync>) {}
}

#[test]
fn a_consumer_that_leaves_during_its_prompt_frees_the_slot_before_the_prompt_ends() {
    let model = model();
    // Eight prompt tokens a step: a 100-token prompt would take 13 steps.
    let scheduler = Scheduler::new(
        Arc::clone(&model),
        SchedulerConfig {
            max_batch: 1,
            max_waiting: 4,
            step_tokens: 8,
            kv_memory: None,
        },
    )
    .expect("scheduler");
    let left = scheduler
        .submit(
            prompt(100, 5),
            exactly(5),
            Box::new(LeavesAfterPrompt::default()),
        )
        .expect("submit");
    let next = scheduler
        .submit(prompt(6, 1), exactly(3), Box::new(Recorder::new()))
        .expect("submit");
    let left = left.recv().expect("result").expect("ok");
    assert!(left.consumer_gone, "{left:?}");
    assert!(left.tokens.is_empty());
    let next = next.recv().expect("result").expect("ok");
    assert_eq!(next.tokens.len(), 3, "the freed slot serves the next");
    let stats = scheduler.stats();
    assert_eq!(stats.abandoned(), 1);
    // The next request's 6 + 2 tokens, and at most one step of the other's.
    assert!(
        stats.step_tokens() <= 8 + 8,
        "{} tokens run: the abandoned prompt was read on",
        stats.step_tokens()
    );
}

/// Greedy, exactly `tokens` tokens, run alone through `generate`: the ids
/// and their log-probabilities (which any difference in the cache moves).
fn alone(model: &Model, prompt_ids: &[u32], tokens: usize) -> (Vec<u32>, Vec<Option<f32>>) {
    let recorder = Recorder::new();
    generate(
        &mut model.session(),
        prompt_ids,
        &exactly(tokens),
        &mut recorder.clone(),
    )
    .expect("alone");
    let recording = recorder.recording();
    (recording.tokens, recording.logprobs)
}

/// Runs one request on `scheduler` to its end, as [`alone`] reports it.
fn run(scheduler: &Scheduler, prompt_ids: &[u32], tokens: usize) -> (Vec<u32>, Vec<Option<f32>>) {
    let recorder = Recorder::new();
    scheduler
        .submit(
            prompt_ids.to_vec(),
            exactly(tokens),
            Box::new(recorder.clone()),
        )
        .expect("submit")
        .recv()
        .expect("result")
        .expect("ok");
    let recording = recorder.recording();
    (recording.tokens, recording.logprobs)
}

#[test]
fn a_request_that_could_never_fit_is_refused_up_front() {
    let model = model();
    let budget = model.kv_bytes(40).expect("native");
    let scheduler = Scheduler::new(
        Arc::clone(&model),
        SchedulerConfig {
            kv_memory: Some(budget),
            ..SchedulerConfig::default()
        },
    )
    .expect("scheduler");
    assert_eq!(scheduler.kv_budget(), Some(budget));
    // 20 + 30 positions need four blocks per layer; the budget holds three.
    match scheduler.submit(prompt(20, 0), exactly(30), Box::new(Recorder::new())) {
        Err(SubmitError::TooLarge {
            positions,
            needed,
            budget: told,
        }) => {
            assert_eq!(positions, 50);
            assert_eq!(needed, model.kv_bytes(50).expect("native"));
            assert_eq!(told, budget);
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|_| ())),
    }
    let error = scheduler
        .submit(prompt(20, 0), exactly(30), Box::new(Recorder::new()))
        .map(|_| ())
        .expect_err("refused");
    assert!(error.to_string().contains("KV cache"), "{error}");
    // One that fits runs.
    let done = scheduler
        .submit(prompt(20, 0), exactly(20), Box::new(Recorder::new()))
        .expect("submit");
    assert_eq!(done.recv().expect("result").expect("ok").tokens.len(), 20);
    // A budget below one position of every layer is refused.
    assert!(matches!(
        Scheduler::new(
            Arc::clone(&model),
            SchedulerConfig {
                kv_memory: Some(1),
                ..SchedulerConfig::default()
            }
        ),
        Err(EngineError::InvalidConfig {
            field: "kv_memory",
            ..
        })
    ));
}

#[test]
fn requests_wait_for_kv_memory_and_run_one_at_a_time_when_it_holds_one() {
    let model = model();
    // Room for one request's worst case (30 + 20 positions), four slots.
    let budget = model.kv_bytes(50).expect("native");
    let scheduler = Scheduler::new(
        Arc::clone(&model),
        SchedulerConfig {
            max_batch: 4,
            kv_memory: Some(budget),
            ..SchedulerConfig::default()
        },
    )
    .expect("scheduler");
    let prompts: Vec<Vec<u32>> = (0..3).map(|k| prompt(30, 10 + k)).collect();
    let submitted: Vec<_> = prompts
        .iter()
        .map(|p| {
            let recorder = Recorder::new();
            let done = scheduler
                .submit(p.clone(), exactly(20), Box::new(recorder.clone()))
                .expect("submit");
            (recorder, done)
        })
        .collect();
    for (p, (recorder, done)) in prompts.iter().zip(submitted) {
        done.recv().expect("result").expect("ok");
        let recording = recorder.recording();
        assert_eq!((recording.tokens, recording.logprobs), alone(&model, p, 20));
    }
    let stats = scheduler.stats();
    assert!(stats.memory_waits() >= 1, "the later requests waited");
    assert_eq!(
        stats.step_sequences(),
        stats.steps(),
        "never two sequences in one pass"
    );
    assert!(stats.kv_peak_bytes() <= budget);
    assert!(stats.kv_peak_bytes() > 0);
}

#[test]
fn another_conversation_copies_the_shared_system_prompt() {
    let model = model();
    let scheduler = two_at_once(&model);
    let system = prompt(30, 0);
    let conversation =
        |rest: Vec<u32>| -> Vec<u32> { system.iter().copied().chain(rest).collect() };
    let first = conversation(prompt(40, 1));
    assert_eq!(run(&scheduler, &first, 5), alone(&model, &first, 5));
    // Another conversation with the same system prompt: continuing the first
    // one's session would lose more than it gives, so it gets a copy.
    let second = conversation(prompt(8, 2));
    let before = scheduler.stats().reused_tokens();
    assert_eq!(
        run(&scheduler, &second, 5),
        alone(&model, &second, 5),
        "copying changes no token and no log-probability"
    );
    assert_eq!(
        scheduler.stats().reused_tokens() - before,
        system.len() as u64
    );
    assert_eq!(scheduler.stats().prefix_copies(), 1);
    // The first conversation's session was kept: its follow-up still
    // continues it.
    let mut follow_up = first.clone();
    follow_up.extend(&alone(&model, &first, 5).0);
    follow_up.extend(prompt(4, 3));
    let before = scheduler.stats().reused_tokens();
    assert_eq!(run(&scheduler, &follow_up, 5), alone(&model, &follow_up, 5));
    assert_eq!(
        scheduler.stats().reused_tokens() - before,
        (first.len() + 4) as u64
    );
    assert_eq!(scheduler.stats().prefix_hits(), 2);
}

/// A streamer that holds the scheduler's loop in its `hold_at`-th token
/// until the test opens its gate.
#[derive(Clone)]
struct HoldsAt {
    hold_at: usize,
    seen: usize,
    gate: Gate,
    reached: std::sync::mpsc::SyncSender<()>,
}

impl textstream::Streamer for HoldsAt {
    fn put(&mut self, _: &[u32]) -> Result<(), Closed> {
        Ok(())
    }
    fn put_scored(&mut self, _: u32, _: f32, _: &[(u32, f32)]) -> Result<(), Closed> {
        self.seen += 1;
        if self.seen == self.hold_at {
            let _ = self.reached.send(());
            self.gate.wait();
        }
        Ok(())
    }
    fn finish(&mut self, _: FinishReason) {}
    fn fail(&mut self, _: Box<dyn std::error::Error + Send + Sync>) {}
}

#[test]
fn a_request_copies_a_prefix_from_a_running_sequence() {
    let model = model();
    let scheduler = two_at_once(&model);
    let system = prompt(30, 0);
    let first: Vec<u32> = system.iter().copied().chain(prompt(10, 1)).collect();
    let (reached, arrived) = std::sync::mpsc::sync_channel(1);
    let gate = Gate::default();
    let holder = HoldsAt {
        hold_at: 2,
        seen: 0,
        gate: gate.clone(),
        reached,
    };
    let running = scheduler
        .submit(first.clone(), exactly(60), Box::new(holder))
        .expect("submit");
    arrived.recv().expect("the first sequence runs");
    // Submitted while the first is held mid-generation: admitted beside it.
    let second: Vec<u32> = system.iter().copied().chain(prompt(8, 2)).collect();
    let recorder = Recorder::new();
    let done = scheduler
        .submit(second.clone(), exactly(10), Box::new(recorder.clone()))
        .expect("submit");
    gate.open();
    done.recv().expect("result").expect("ok");
    let recording = recorder.recording();
    assert_eq!(
        (recording.tokens, recording.logprobs),
        alone(&model, &second, 10)
    );
    let stats = scheduler.stats();
    assert_eq!(stats.prefix_copies(), 1);
    assert_eq!(stats.reused_tokens(), system.len() as u64);
    let out = running.recv().expect("result").expect("ok");
    assert_eq!(out.tokens, alone(&model, &first, 60).0);
}

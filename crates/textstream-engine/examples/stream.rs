//! The pattern textstream exists for, end to end on the default model:
//! generation runs on its own thread, an async task reads the text with
//! `while let Some(text) = stream.next().await` as it is produced.
//!
//! `cargo run --release -p textstream-engine --example stream -- "Why is the sky blue?"`

use std::io::Write;
use std::sync::Arc;

use futures::StreamExt;
use textstream_engine::generate::{run_generate, GenerateConfig};
use textstream_engine::model::Model;
use textstream_engine::model_file;
use textstream_engine::template::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Why is the sky blue?".into());
    let path = model_file::resolve(None, &mut |_| {})?;
    let model = Arc::new(Model::load(&path)?);
    let prompt = model.chat_prompt(&[
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", question),
    ])?;
    let ids = model.encode_prompt(&prompt)?;

    // The worker thread generates; `stream` is the consumer's end.
    let (mut stream, worker) = run_generate(model, ids, GenerateConfig::default(), None);
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    runtime.block_on(async {
        while let Some(text) = stream.next().await {
            print!("{}", text?);
            std::io::stdout().flush()?;
        }
        println!();
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    let output = worker
        .join()
        .map_err(|_| "the generation thread panicked")??;
    eprintln!(
        "{} tokens, finish reason {:?}",
        output.tokens.len(),
        output.finish_reason
    );
    Ok(())
}

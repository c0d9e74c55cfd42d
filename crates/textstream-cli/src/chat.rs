//! `textstream chat`: a multi-turn conversation in the terminal. Ctrl-C stops
//! the answer being written (the model stops at its next token), not the
//! program; Ctrl-D or `/exit` quits.

use std::io::{BufRead, Write};

use textstream_engine::template::Message;

use crate::args::{ChatArgs, Mode};
use crate::load;
use crate::run::stream_answer;

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let (model, _) = load::model(&args.model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message {
            role: "system".into(),
            content: system.clone(),
        });
    }
    eprintln!("Chatting with the model. Ctrl-C stops an answer; Ctrl-D or /exit quits.");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/exit" {
            break;
        }
        messages.push(Message {
            role: "user".into(),
            content: line.to_string(),
        });
        let prompt = model.chat_prompt(&messages)?;
        let interrupt = async {
            // If the handler cannot be installed, answers simply run to the end.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let answer = runtime.block_on(stream_answer(
            &model,
            &prompt,
            &args.sampling,
            Mode::Eager,
            interrupt,
        ))?;
        if answer.interrupted {
            eprintln!("\n[stopped]");
        }
        messages.push(Message {
            role: "assistant".into(),
            content: answer.text,
        });
    }
    Ok(())
}

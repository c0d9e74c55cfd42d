//! `textstream`: run a local language model and stream its text.
//!
//! The binary is thin: each subcommand is one module that parses nothing
//! itself (clap does, in [`args`]) and calls the library crates. Errors become
//! messages and exit codes here, in one place.

mod args;
mod bench;
mod chat;
mod load;
mod models;
mod replay;
mod run;
mod serve;
mod tokenize;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// Exit code for an error the user can fix (bad input, missing model).
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Models => models::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

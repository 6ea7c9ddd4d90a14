//! The `coordinator` command line: `serve`, `demo`, `tokens`, and API clients for models,
//! devices and campaigns. Every listing takes `--json` for scripts; errors go to stderr with a
//! non-zero exit.
//!
//! - [`args`]: the clap definitions;
//! - `serve`: starting the service until a signal;
//! - [`client`]: the HTTP client of the API (bearer token, uploads, waiting for a campaign);
//! - `progress`: progress bars (or plain lines off a terminal);
//! - `print`: tables;
//! - `fleet`: the API commands (models, devices, campaigns); `tokens`: API tokens.

mod args;
mod client;
pub mod demo;
mod fleet;
pub mod graph;
pub mod learn;
mod print;
mod progress;
pub mod prune;
mod serve;
mod tokens;

use clap::Parser;

use args::{Cli, Command};
pub use client::Client;
pub use print::print_campaign;

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let entry = hone_process::Entry {
        default_filter: "coordinator=info,rumqttd=off,warn",
        worker_threads: None,
    };
    hone_process::run(entry, dispatch(cli.command))
}

async fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Tokens { command } => tokens::run(command).await,
        Command::Campaign { command } => fleet::campaign(command).await,
        Command::Models { command } => fleet::models(command).await,
        Command::Devices { command } => fleet::devices(command).await,
        Command::Baseline { command } => learn::baseline(command).await,
        Command::Prune(args) => prune::run(args).await,
        Command::Eval(args) => learn::eval(args).await,
        Command::ExecBench(args) => learn::run_exec_bench(args).await,
        Command::Train(args) => learn::train(args).await,
        Command::Fold(args) => graph::run(args).await,
    }
}

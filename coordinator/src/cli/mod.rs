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
    if matches!(
        cli.command,
        Command::Baseline { .. } | Command::Train(_) | Command::Prune(_) | Command::ExecBench(_)
    ) {
        learn_threads();
    }
    let entry = hone_process::Entry {
        default_filter: "coordinator=info,rumqttd=off,warn",
        worker_threads: None,
    };
    hone_process::run(entry, dispatch(cli.command))
}

/// candle's thread count for the commands that train (`baseline`, `train`, `prune` with its
/// fine-tune, `exec-bench`), from the machine's cores and the thread variables already set:
/// `None` leaves candle's default (one thread per core).
///
/// candle keeps a spinning barrier pool and a rayon pool of one thread per core beside the
/// main thread. On a two-core host they only contend: measured on a 2-core AMD EPYC
/// (Fashion-MNIST CNN, `coordinator baseline fashion-cnn --max-steps 40`), one thread trained at
/// 287-299 images/s against 281-284 with the default on a quiet machine, using 99 % of a core
/// instead of 124 %, and at 57-60 against 28-45 images/s while other builds ran. With more cores
/// the default stays. A variable the user set always wins.
pub fn learn_thread_count(
    cores: usize,
    rayon: Option<&str>,
    candle: Option<&str>,
) -> Option<usize> {
    if rayon.is_some() || candle.is_some() || cores > 2 {
        return None;
    }
    Some(1)
}

/// Applies [`learn_thread_count`]: candle reads its thread count from the environment once, so
/// the process re-executes itself with `RAYON_NUM_THREADS` set (the safe way to set a
/// variable in a running process). If that fails, the command runs with candle's default.
fn learn_threads() {
    use std::os::unix::process::CommandExt as _;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let var = |k: &str| std::env::var(k).ok();
    let Some(n) = learn_thread_count(
        cores,
        var("RAYON_NUM_THREADS").as_deref(),
        var("CANDLE_NUM_THREADS").as_deref(),
    ) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", n.to_string())
        .exec();
    eprintln!(
        "warning: could not restart with RAYON_NUM_THREADS={n} ({err}); using candle's default"
    );
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

#[cfg(test)]
mod thread_tests {
    use super::learn_thread_count;

    #[test]
    fn two_cores_train_on_one_thread_unless_the_user_chose() {
        assert_eq!(learn_thread_count(2, None, None), Some(1));
        assert_eq!(learn_thread_count(1, None, None), Some(1));
        assert_eq!(learn_thread_count(8, None, None), None, "more cores: candle's default");
        assert_eq!(learn_thread_count(2, Some("2"), None), None, "the user's choice wins");
        assert_eq!(learn_thread_count(2, None, Some("2")), None);
    }
}

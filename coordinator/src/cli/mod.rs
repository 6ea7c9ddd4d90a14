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
mod compare;
pub mod demo;
mod deploy;
pub mod distill;
mod fleet;
pub mod graph;
pub mod learn;
pub mod llm;
mod mlflow;
mod optimize;
mod pipeline;
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
    if let Command::OrtCheck { model } = &cli.command {
        let answer = match crate::models::ort_load(model) {
            Ok(()) => serde_json::json!({"ok": true}),
            Err(e) => serde_json::json!({"error": format!("{e:#}")}),
        };
        println!("{answer}");
        return 0;
    }
    if matches!(
        cli.command,
        Command::Baseline { .. }
            | Command::Train(_)
            | Command::Prune(_)
            | Command::ExecBench(_)
            | Command::Distill(_)
            | Command::DistillScale(_)
    ) {
        // The attribution loss differentiates a gradient: candle keeps gradient graphs only
        // with this variable, read once per thread.
        let second_order = matches!(&cli.command, Command::Distill(a)
            if a.attribution
                && a.attribution_gradient
                    == hone_compress::distill::attribution::AttributionGradient::Exact);
        learn_threads(second_order);
    }
    let entry = hone_process::Entry {
        default_filter: "coordinator=info,rumqttd=off,warn",
        worker_threads: None,
    };
    hone_process::run(entry, dispatch(cli.command))
}

/// How candle should run for the commands that train (`baseline`, `train`, `prune` with its
/// fine-tune, `exec-bench`), from the machine's cores, the threads running elsewhere on it and
/// the variables the user already set: the environment to add, or nothing to change.
///
/// candle keeps a barrier pool that spin-waits and rayon pools of one thread per core. Measured
/// on a 2-core AMD EPYC (`baseline fashion-cnn --max-steps 30` images/s, `baseline
/// minilm-sentiment --limit 300` fine-tune sentences/s), side by side:
///
/// | host | 2 threads, spinning (candle's default) | 2 threads, parking | 1 thread |
/// |---|---|---|---|
/// | quiet | CNN 282, MiniLM 31.8 | CNN 286, MiniLM 34.4 | CNN 240, MiniLM 28.9 |
/// | one core busy elsewhere | CNN 179, MiniLM 19.0 | CNN 223, MiniLM 20.3 | CNN 281, MiniLM 27.7 |
///
/// So the pool parks instead of spinning (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0`: never slower),
/// and uses the cores the load leaves free (`RAYON_NUM_THREADS`, at least one). A variable the
/// user set always wins.
pub fn learn_environment(
    cores: usize,
    load: Option<f64>,
    user_set: impl Fn(&str) -> bool,
) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if !user_set("CANDLE_BARRIER_POOL_SPIN_LIMIT") {
        env.push(("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0".to_string()));
    }
    if !user_set("RAYON_NUM_THREADS") && !user_set("CANDLE_NUM_THREADS") {
        let busy = load.map_or(0, |l| l.max(0.0).round() as usize);
        let free = cores.saturating_sub(busy).clamp(1, cores.max(1));
        if free < cores {
            env.push(("RAYON_NUM_THREADS", free.to_string()));
        }
    }
    env
}

/// Threads running on the host besides this one, right now: the median of five readings of
/// `procs_running` in `/proc/stat` over 40 ms, less this process. (The load average lags by a
/// minute and would count the work that just finished.) `None` where `/proc/stat` is absent.
fn busy_elsewhere() -> Option<f64> {
    let mut samples = Vec::new();
    for i in 0..5 {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let running = stat.lines().find_map(|l| l.strip_prefix("procs_running "))?;
        samples.push(running.trim().parse::<f64>().ok()?);
    }
    samples.sort_by(f64::total_cmp);
    Some((samples[2] - 1.0).max(0.0))
}

/// Applies [`learn_environment`]: candle reads these variables once, so the process re-executes
/// itself with them (the safe way to set a variable for a running process); `HONE_LEARN_ENV`
/// marks the second run. If that fails, the command runs with candle's defaults.
fn learn_threads(second_order: bool) {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os("HONE_LEARN_ENV").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let load = busy_elsewhere();
    let mut env = learn_environment(cores, load, |k| std::env::var_os(k).is_some());
    if second_order && std::env::var_os("CANDLE_GRAD_DO_NOT_DETACH").is_none() {
        env.push(("CANDLE_GRAD_DO_NOT_DETACH", "1".to_string()));
    }
    if env.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("HONE_LEARN_ENV", "1")
        .exec();
    eprintln!("warning: could not restart with {env:?} ({err}); using candle's defaults");
}

async fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Tokens { command } => tokens::run(command).await,
        Command::Campaign { command } => fleet::campaign(command).await,
        Command::Models { command } => fleet::models(command).await,
        Command::Devices { command } => fleet::devices(command).await,
        Command::Pki { command } => tokens::pki(command).await,
        Command::Keys { command } => fleet::keys(command).await,
        Command::Baseline { command } => learn::baseline(command).await,
        Command::Prune(args) => prune::run(args).await,
        Command::Distill(args) => distill::run(*args).await,
        Command::DistillScale(args) => distill::run_scale(args).await,
        Command::Eval(args) => learn::eval(args).await,
        Command::ExecBench(args) => learn::run_exec_bench(args).await,
        Command::Train(args) => learn::train(args).await,
        Command::Fold(args) => graph::run(args).await,
        Command::Optimize(args) => optimize::run(*args).await,
        Command::Results { command } => compare::results(command).await,
        Command::OrtCheck { .. } => unreachable!("handled before the runtime starts"),
        Command::Compare(args) => compare::compare(*args).await,
        Command::Llm { command } => llm::run(command).await,
        Command::Compress(args) => pipeline::compress(*args).await,
        Command::Pipeline { command } => pipeline::pipeline(command).await,
        Command::Report(args) => pipeline::report(args).await,
        Command::Deploy(args) => deploy::deploy(args).await,
        Command::Deployments { command } => deploy::deployments(command).await,
        Command::Alerts { command } => deploy::alerts(command).await,
        Command::Suggestions { command } => deploy::suggestions(command).await,
        Command::Telemetry(args) => deploy::telemetry(args).await,
        Command::Mlflow { command } => mlflow::mlflow(command).await,
        Command::Experiments { command } => mlflow::experiments(command).await,
    }
}

#[cfg(test)]
mod thread_tests {
    use super::learn_environment;

    #[test]
    fn the_pool_parks_and_uses_the_cores_the_load_leaves_unless_the_user_chose() {
        let none = |_: &str| false;
        let env = |cores, load| learn_environment(cores, load, none);
        assert_eq!(env(2, Some(0.1)), [("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0".to_string())]);
        assert_eq!(
            env(2, Some(1.2)),
            [
                ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0".to_string()),
                ("RAYON_NUM_THREADS", "1".to_string())
            ]
        );
        assert_eq!(env(2, Some(7.0))[1], ("RAYON_NUM_THREADS", "1".to_string()), "at least one");
        assert_eq!(env(8, Some(2.6))[1], ("RAYON_NUM_THREADS", "5".to_string()));
        assert_eq!(env(4, None).len(), 1, "no load reading: every core");
        let user = |k: &str| k == "RAYON_NUM_THREADS" || k == "CANDLE_BARRIER_POOL_SPIN_LIMIT";
        assert!(learn_environment(2, Some(1.5), user).is_empty(), "the user's choice wins");
    }
}

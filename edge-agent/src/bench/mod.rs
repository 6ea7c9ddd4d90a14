//! Benchmarks run in a child process.
//!
//! The agent never loads a model itself: it spawns its own executable with the hidden
//! `bench-child` subcommand, which runs [`tract::run_benchmark`] and prints one JSON line
//! ([`ChildOutcome`]) on stdout. A crash, abort or hang of the runtime therefore ends the child,
//! never the agent, and memory readings start from a fresh process. Process start-up is outside
//! the measured window (the child times only load and inference).

pub mod tract;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hone_common::bench::{BenchReport, BenchSpec};
use hone_common::wire::FailureKind;
use serde::{Deserialize, Serialize};

/// What the child prints on stdout: exactly one JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildOutcome {
    /// The benchmark ran.
    Ok(BenchReport),
    /// It failed with a category and reason.
    Failed {
        /// Category.
        kind: FailureKind,
        /// Explanation.
        reason: String,
    },
}

/// Entry point of the `bench-child` subcommand: runs the benchmark and prints the outcome.
pub fn child_main(model: &Path, spec_json: &str) -> i32 {
    let outcome = match serde_json::from_str::<BenchSpec>(spec_json) {
        Err(e) => {
            ChildOutcome::Failed { kind: FailureKind::Internal, reason: format!("bad spec: {e}") }
        }
        Ok(spec) => match tract::run_benchmark(model, &spec) {
            Ok(report) => ChildOutcome::Ok(report),
            Err(f) => ChildOutcome::Failed { kind: f.kind, reason: f.reason },
        },
    };
    let line = serde_json::to_string(&outcome).expect("outcome serialises");
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
    0
}

/// Runs one benchmark of `model` in a child process of `exe`, killing it after `timeout`.
pub async fn run_in_child(
    exe: &Path,
    model: &Path,
    spec: &BenchSpec,
    timeout: Duration,
) -> Result<BenchReport, (FailureKind, String)> {
    let spec_json = serde_json::to_string(spec).expect("spec serialises");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("bench-child")
        .arg("--model")
        .arg(model)
        .arg("--spec")
        .arg(&spec_json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        (FailureKind::Internal, format!("cannot start benchmark process {}: {e}", exe.display()))
    })?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err((FailureKind::Internal, format!("benchmark process: {e}"))),
        Err(_) => {
            return Err((
                FailureKind::Timeout,
                format!(
                    "benchmark exceeded its {:.1} s limit and was killed",
                    timeout.as_secs_f64()
                ),
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if let Some(line) = stdout.lines().rev().find(|l| !l.trim().is_empty())
        && let Ok(outcome) = serde_json::from_str::<ChildOutcome>(line)
    {
        return match outcome {
            ChildOutcome::Ok(report) => Ok(report),
            ChildOutcome::Failed { kind, reason } => Err((kind, reason)),
        };
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String =
        stderr.chars().rev().take(600).collect::<Vec<_>>().into_iter().rev().collect();
    Err((
        FailureKind::Crashed,
        format!("benchmark process {}: {}", describe_exit(&output.status), tail.trim()),
    ))
}

fn describe_exit(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "ended abnormally".to_string(),
    }
}

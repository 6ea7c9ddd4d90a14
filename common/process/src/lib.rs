//! The process entry point both Hone binaries share (`coordinator`, `edge-agent`): `tracing`
//! on stderr with an environment filter (`RUST_LOG`, else the binary's default), ANSI colour
//! only on a terminal, a multi-threaded tokio runtime, and errors printed with their chain as a
//! non-zero exit code. `hone-common` stays free of IO; this crate is where the binaries' shared
//! IO set-up lives.

use std::future::Future;
use std::io::IsTerminal as _;

/// How a binary starts.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The log filter when `RUST_LOG` is not set, e.g. `coordinator=info,warn`.
    pub default_filter: &'static str,
    /// Runtime worker threads (`None`: one per core).
    pub worker_threads: Option<usize>,
}

/// Sets up logging, runs `main` on a new runtime and returns the exit code: `main`'s own, or 1
/// after printing its error chain (`error: ...`) on stderr.
pub fn run<F>(entry: Entry, main: F) -> i32
where
    F: Future<Output = anyhow::Result<i32>>,
{
    init_tracing(entry.default_filter);
    quiet_broken_pipe();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = entry.worker_threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    exit_code(runtime.block_on(main))
}

/// The exit code of a command's result, printing an error's whole chain.
pub fn exit_code(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// A reader that stops early (`coordinator pipeline show ID | head`) ends the command quietly
/// with status 0, as other Unix tools do, instead of a panic and a backtrace from `println!`.
/// (Rust ignores SIGPIPE, so writing to a closed pipe is an error, and `println!` panics on it.)
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_decides_the_exit_code_and_an_error_is_one() {
        let entry = Entry { default_filter: "warn", worker_threads: Some(1) };
        assert_eq!(run(entry, async { Ok(3) }), 3);
        assert_eq!(run(entry, async { anyhow::bail!("no such model") }), 1);
        assert_eq!(exit_code(Ok(0)), 0);
    }
}

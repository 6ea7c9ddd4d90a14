//! The `coordinator` binary: a thin wrapper around [`coordinator::cli::main`].

fn main() {
    std::process::exit(coordinator::cli::main());
}

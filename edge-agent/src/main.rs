//! The `edge-agent` binary: a thin wrapper around [`edge_agent::cli::main`].

fn main() {
    std::process::exit(edge_agent::cli::main());
}

#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this script):
# services up, real assets fetched, the pinned Python tools installed (or found warm), rustfmt,
# cargo deny, clippy -D warnings, build, every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A persistent target folder outside the clone, so fresh clones and CI reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE=0
start=$(date +%s)
step() { echo; echo "==> $* ($(( $(date +%s) - start )) s)"; }

step "services"
scripts/services.sh
step "assets"
scripts/fetch-assets.sh
step "python tools (MLflow, DVC, Airflow: pinned environments, reused when warm)"
scripts/python-tools.sh >/dev/null
step "rustfmt"
cargo fmt --all -- --check
step "cargo deny (licences, bans, sources; advisories when reachable)"
scripts/deny.sh
step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "build"
cargo build --workspace --bins --locked
step "tests"
cargo test --workspace --locked
step "done in $(( $(date +%s) - start )) s"

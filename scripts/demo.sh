#!/usr/bin/env bash
# The main job: fetch the real models, build, and run a benchmark campaign end to end on the
# embedded defaults (embedded MQTT broker, SQLite, three local agents with different device
# profiles). Extra arguments go to `coordinator demo` (e.g. --json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
scripts/fetch-assets.sh minilm-l3-onnx open-nsfw-onnx >&2
cargo build --locked -p coordinator -p edge-agent --bins >&2
exec "$CARGO_TARGET_DIR/debug/coordinator" demo --agent-bin "$CARGO_TARGET_DIR/debug/edge-agent" "$@"

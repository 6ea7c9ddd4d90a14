#!/usr/bin/env bash
# The main job: fetch the real model and data, build, and run the compression loop end to end on
# the embedded defaults (embedded MQTT broker, SQLite, one local agent per device class): Yahoo
# open_nsfw is measured on rpi4 and x86-vm-2core, pruned into a grid of candidates per class,
# validated against the parent on real photos, the predictor's best candidates measured on the
# agents, a winner chosen per class, hone-report.html written, and each winner deployed to its
# class's agent (canary gate on probe traffic), served over HTTP and called. Extra arguments go to
# `coordinator demo` (e.g. --json, --exhaustive, --compare-exhaustive, --campaign).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
scripts/fetch-assets.sh minilm-l3-onnx open-nsfw-onnx photo-china photo-flower >&2
cargo build --locked -p coordinator -p edge-agent --bins >&2
exec "$CARGO_TARGET_DIR/debug/coordinator" demo --agent-bin "$CARGO_TARGET_DIR/debug/edge-agent" "$@"

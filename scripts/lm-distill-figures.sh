#!/usr/bin/env bash
# Measures the generative figures of docs/distill.md: SmolLM2-135M-Instruct (imported from its
# GGUF, dequantised Q4_1) as teacher, a fresh 22 M student (hidden 256, 12 layers, 4 query and
# 2 KV heads, FFN 768, the teacher's tokenizer and tied embedding) on the SOTU corpus, with
# cross-entropy alone and each divergence (mixed half and half with cross-entropy; reverse and
# skew forms with their default 10 % of on-policy steps), on the same tokens and steps.
# A last run, `pruned-rkl`, trains a student cut from the teacher itself (Minitron-style: 20 of
# its 30 blocks, hidden stream 576 -> 192, 3 of 9 query heads with all 3 KV heads, FFN 1536 -> 768,
# chosen by activations) with reverse KL, against the fresh student's `rkl` run.
# Usage: scripts/lm-distill-figures.sh [STEPS] [OUT]   (defaults: 125 steps of 4 x 128 tokens,
# one pass over 64,500 tokens; OUT: $CARGO_TARGET_DIR/lm-figures). Runs already in OUT are kept;
# LM_RUNS="fkl srkl" runs only those (default: ce rkl skl fkl srkl pruned-rkl); LM_ON_POLICY=F
# sets the share of on-policy steps of the reverse and skew runs (default: distill's, 0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-125}
: "${CARGO_TARGET_DIR:=$PWD/target}"
out="${2:-$CARGO_TARGET_DIR/lm-figures}"
mkdir -p "$out"
bin="${HONE_COORDINATOR:-$CARGO_TARGET_DIR/debug/coordinator}"
[[ -x "$bin" ]] || cargo build -q -p coordinator
[[ -f "$out/smollm2/model.onnx" ]] || "$bin" llm import --out "$out/smollm2" --json > "$out/import.json"
tokens=$((steps * 4 * 129))
fresh=(--student-hidden 256 --student-layers 12 --student-heads 4 --student-kv-heads 2
       --student-ffn 768)
common=(--teacher "$out/smollm2" --data sotu --tokens "$tokens"
        --eval-tokens 4128 --train-seq-len 128 --top-k 32 --steps "$steps" --batch-size 4
        --lr 1e-3 --seed 0 --checkpoint-every 20 --prompt "The State of the Union is"
        --sample-tokens 16 --json)
run() {
  local name=$1; shift
  [[ -f "$out/$name.json" ]] && return 0
  echo "== $name" >&2
  local t0=$SECONDS
  # One work folder for every divergence, so the teacher's top-k is computed once.
  "$bin" distill "${common[@]}" --out "$out/$name" --work-dir "$out/work-$name" "$@" \
    > "$out/$name.json.tmp" 2> "$out/$name.log"
  mv "$out/$name.json.tmp" "$out/$name.json"
  echo "   $((SECONDS - t0)) s" >&2
}
# Every run reads the same teacher top-k: copy it from whichever run computed it first.
share_cache() {
  mkdir -p "$out/work-$1"
  [[ -f "$out/work-$1/teacher-topk.bin" ]] && return 0
  local f
  for f in "$out"/work-*/teacher-topk.bin; do
    [[ -f "$f" ]] && { cp "$f" "$out/work-$1/"; return 0; }
  done
  return 0
}
for name in ${LM_RUNS:-ce rkl skl fkl srkl pruned-rkl}; do
  share_cache "$name"
  case $name in
    ce) run ce "${fresh[@]}" --ce-weight 1 ;;
    pruned-rkl)
      run pruned-rkl --loss rkl --ce-weight 0.5 --student-pruned --student-layers 20 \
        --student-hidden 192 --student-heads 3 --student-ffn 768 \
        ${LM_ON_POLICY:+--on-policy "$LM_ON_POLICY"} ;;
    fkl) run fkl "${fresh[@]}" --loss fkl --ce-weight 0.5 ;;
    *) run "$name" "${fresh[@]}" --loss "$name" --ce-weight 0.5 ${LM_ON_POLICY:+--on-policy "$LM_ON_POLICY"} ;;
  esac
done
# One decode step (1 new token after 127 cached) of teacher and student under device profiles.
agent="${HONE_EDGE_AGENT:-$CARGO_TARGET_DIR/debug/edge-agent}"
[[ -x "$agent" ]] || cargo build -q -p edge-agent
for m in smollm2 rkl pruned-rkl; do
  [[ -f "$out/$m/model.onnx" ]] || continue
  for p in rpi4 rpi5; do
    [[ -f "$out/bench-$m-$p.json" ]] || "$agent" bench --model "$out/$m/model.onnx" --symbol batch=1 \
      --symbol seq=1 --symbol past=127 --symbol total=128 --profile "$p" --iterations 50 \
      --max-time-ms 8000 --json > "$out/bench-$m-$p.json"
  done
done
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def find(o, k):
    if isinstance(o, dict):
        if k in o:
            return o[k]
        o = list(o.values())
    if isinstance(o, list):
        for v in o:
            f = find(v, k)
            if f is not None:
                return f
    return None
for m in ["smollm2", "rkl", "pruned-rkl"]:
    for p in ["rpi4", "rpi5"]:
        f = out / f"bench-{m}-{p}.json"
        if f.exists():
            ms = find(json.loads(f.read_text()), "p50_ms")
            print(f"decode step {m:<10} {p}: {ms:.1f} ms, {1000 / ms:.1f} tokens/s")
print(f"{'run':<11}{'params':>11}{'ratio':>7}{'ppl':>10}{'teacher ppl':>12}{'agree %':>9}{'train s':>9}{'tok/s':>7}{'on-pol':>7}")
for name in ["ce", "rkl", "skl", "fkl", "srkl", "pruned-rkl"]:
    p = out / f"{name}.json"
    if not p.exists():
        continue
    r = json.loads(p.read_text())
    print(f"{name:<11}{r['student_params']:>11}{r['size_ratio']:>7.2f}{r['student_perplexity']:>10.1f}"
          f"{r['teacher_perplexity']:>12.2f}{r['agreement']*100:>9.2f}{r['train_s']:>9.0f}{r['train_tokens_per_s']:>7.0f}"
          f"{r.get('on_policy_steps', 0):>7}")
    for s in r["samples"]:
        print(f"    {s['prompt']!r} -> student {s['student']!r}")
PY

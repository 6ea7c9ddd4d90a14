#!/usr/bin/env bash
# Measures the classifier figures of docs/distill.md: MiniLM-L3 sentiment (the `minilm-sentiment`
# baseline) as teacher, a 1-layer half-width student, on the VADER movie-review sentences
# (2,000 training sentences, 300 steps of 32, the whole test part):
#   - cross-entropy alone (no teacher), plain KD, attribution KD (AD-KD), the chain through an
#     automatically sized teacher assistant (TAKD), all at the same total steps;
# Each writes its JSON to $OUT/<name>.json; a summary table is printed at the end.
# Usage: scripts/distill-figures.sh [--quick] [OUT]   (OUT default: $CARGO_TARGET_DIR/distill-figures)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=300
if [[ "${1:-}" == "--quick" ]]; then steps=20; shift; fi
: "${CARGO_TARGET_DIR:=$PWD/target}"
out="${1:-$CARGO_TARGET_DIR/distill-figures}"
mkdir -p "$out"
bin="${HONE_COORDINATOR:-$CARGO_TARGET_DIR/debug/coordinator}"
[[ -x "$bin" ]] || cargo build -q -p coordinator
teacher="$out/teacher/model.onnx"
if [[ ! -f "$teacher" ]]; then
  echo "== teacher: coordinator baseline minilm-sentiment" >&2
  /usr/bin/time -v "$bin" baseline minilm-sentiment --out "$out/teacher" --json \
    > "$out/teacher.json" 2> "$out/teacher.log"
fi
common=(--teacher "$teacher" --data vader --student-layers 1 --student-width 0.5
        --batch-size 32 --lr 3e-4 --checkpoint-every 50 --json)
full=(--steps "$steps" --train-limit 2000)
run() {
  local name=$1; shift
  [[ -f "$out/$name.json" ]] && return 0
  echo "== $name" >&2
  local t0=$SECONDS
  "$bin" distill "${common[@]}" --out "$out/$name.onnx" "$@" > "$out/$name.json.tmp" 2> "$out/$name.log"
  mv "$out/$name.json.tmp" "$out/$name.json"
  echo "   $((SECONDS - t0)) s" >&2
}
run ce-only --ce-weight 1.0 "${full[@]}"
run kd --loss fkl --temperature 2 --ce-weight 0.5 "${full[@]}"
run kd-chain --loss fkl --temperature 2 --ce-weight 0.5 --assistants auto "${full[@]}"
# Attribution costs 16 teacher passes per example (cached) and, with its first-order gradient,
# about three forward passes more per step: it is compared with plain KD at a smaller equal
# budget (a third of the steps, 600 sentences).
small=(--steps "$((steps / 3))" --train-limit 600)
run kd-small --loss fkl --temperature 2 --ce-weight 0.5 "${small[@]}"
run kd-attribution-small --loss fkl --temperature 2 --ce-weight 0.5 --attribution --attribution-steps 16 "${small[@]}"
python3 - "$out" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for name in ["ce-only", "kd", "kd-chain", "kd-small", "kd-attribution-small"]:
    p = out / f"{name}.json"
    if not p.exists():
        continue
    r = json.loads(p.read_text())
    rows.append((name, r))
if rows:
    r0 = rows[0][1]
    print(f"CPU: {r0['cpu']}; teacher {r0['teacher']['params']} params, accuracy {r0['teacher']['accuracy']*100:.2f} %")
    print(f"{'run':<16}{'params':>10}{'layers':>7}{'acc %':>8}{'kept %':>8}{'agree %':>9}{'speedup':>9}{'train s':>9}{'RSS MB':>8}")
    for name, r in rows:
        s = r["student"]
        train = sum(st["summary"]["seconds"] for st in r["stages"])
        print(f"{name:<16}{s['params']:>10}{s['layers'] or 0:>7}{s['accuracy']*100:>8.2f}{r['accuracy_retained']*100:>8.2f}"
              f"{r['agreement']*100:>9.2f}{r['speedup']:>9.2f}{train:>9.0f}{(r['peak_rss_bytes'] or 0)//1000000:>8}")
    json.dump({n: r for n, r in rows}, open(out / "summary.json", "w"), indent=1)
EOF

#!/usr/bin/env bash
# Build the edge agent as static musl binaries for aarch64 and x86_64, run the aarch64 agent
# under qemu-user on a real model, and check its outputs against the x86_64 agent's, so that
# tract's NEON code path is exercised. On demand, not per commit: a cold build takes about half
# an hour per target on 2 cores.
#
#   scripts/cross-build.sh [--skip-build]
#
# Needs (Debian): gcc-aarch64-linux-gnu, qemu-user-static, musl-tools; rustup targets
# aarch64-unknown-linux-musl and x86_64-unknown-linux-musl. It installs what is missing when run
# as root. Writes a JSON summary to $CARGO_TARGET_DIR/cross-build.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
skip_build=0
[[ "${1:-}" == "--skip-build" ]] && skip_build=1

need_pkg=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_pkg+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || need_pkg+=(qemu-user-static)
command -v musl-gcc >/dev/null || need_pkg+=(musl-tools)
if [[ ${#need_pkg[@]} -gt 0 ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkg[@]}"
  else
    echo "error: missing packages: ${need_pkg[*]} (apt-get install them)" >&2; exit 1
  fi
fi
rustup target add aarch64-unknown-linux-musl x86_64-unknown-linux-musl >/dev/null

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
# x86_64 musl links with Rust's own self-contained musl (Debian's musl-gcc wrapper would mix in
# another libc build and the binary crashes at start-up); musl-gcc only compiles C sources.
export CC_x86_64_unknown_linux_musl=musl-gcc
# Static binaries; the Debian cross gcc targets glibc, so link statically and let Rust's
# self-contained musl CRT objects do the rest.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static -C link-self-contained=yes"

declare -A secs
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  if [[ $skip_build -eq 0 ]]; then
    start=$(date +%s)
    nice -n 10 cargo build --locked --profile edge -p edge-agent --target "$target"
    secs[$target]=$(( $(date +%s) - start ))
  else
    secs[$target]=0
  fi
done

x86="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/edge/edge-agent"
arm="$CARGO_TARGET_DIR/aarch64-unknown-linux-musl/edge/edge-agent"
file "$x86" "$arm" || true

scripts/fetch-assets.sh minilm-l3-onnx open-nsfw-onnx >/dev/null
assets="${HONE_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
results=()
for model in "$assets/models/open-nsfw.onnx" "$assets/models/paraphrase-MiniLM-L3-v2.onnx"; do
  name=$(basename "$model" .onnx)
  "$x86" infer --model "$model" --symbol sequence_length=16 > "$work/$name.x86.json"
  t0=$(date +%s.%N)
  qemu-aarch64-static "$arm" infer --model "$model" --symbol sequence_length=16 > "$work/$name.arm.json"
  t1=$(date +%s.%N)
  results+=("$(python3 - "$work/$name.x86.json" "$work/$name.arm.json" "$name" "$t0" "$t1" <<'PY'
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
assert [o["shape"] for o in a] == [o["shape"] for o in b], "output shapes differ"
worst = 0.0
for oa, ob in zip(a, b):
    scale = max(1e-6, max(abs(v) for v in oa["values"]))
    diff = max(abs(x - y) for x, y in zip(oa["values"], ob["values"]))
    worst = max(worst, diff / scale)
print(json.dumps({"model": sys.argv[3], "outputs": len(a), "max_abs_diff_over_scale": worst,
                  "agree": worst <= 1e-4, "qemu_seconds": float(sys.argv[5]) - float(sys.argv[4])}))
PY
)")
done
printf '%s\n' "${results[@]}"
summary=$(python3 - "$x86" "$arm" "${secs[x86_64-unknown-linux-musl]}" "${secs[aarch64-unknown-linux-musl]}" "${results[@]}" <<'PY'
import json, os, sys
x86, arm, sx, sa = sys.argv[1:5]
print(json.dumps({
  "x86_64_musl_bytes": os.path.getsize(x86), "aarch64_musl_bytes": os.path.getsize(arm),
  "x86_64_build_seconds": int(sx), "aarch64_build_seconds": int(sa),
  "agreement": [json.loads(r) for r in sys.argv[5:]],
}, indent=2))
PY
)
echo "$summary" | tee "$CARGO_TARGET_DIR/cross-build.json"
echo "$summary" | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if all(r["agree"] for r in d["agreement"]) else 1)'

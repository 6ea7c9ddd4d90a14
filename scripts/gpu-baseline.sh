#!/usr/bin/env bash
# GPU baseline on a machine with an NVIDIA GPU: the same ONNX models Hone measures on CPUs, timed
# with ONNX Runtime's CUDA provider (onnxruntime-gpu, the project's one pinned version) and with
# PyTorch eager (the model converted by onnx2torch, as the reference in tests/data was), in FP32
# and FP16, at batch 1 and a throughput batch, with GPU power sampled by nvidia-smi. Writes one
# file per model in the format `coordinator results import` reads:
#   scripts/gpu-baseline.sh OUT_DIR MODEL.onnx [MODEL.onnx ...]
#   coordinator results import OUT_DIR/open-nsfw.gpu.json --model open-nsfw
# Needs: nvidia-smi, Python 3.10+ with pip and PyPI access. The virtual environment is cached in
# ${HONE_GPU_VENV:-$HOME/.cache/hone/gpu-venv}. Inputs are synthetic (the agents' rule: floats in
# [0, 1), token ids 1, masks 1); symbolic dims: batch, and 128 for sequence axes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[[ $# -ge 2 ]] || { echo "usage: $0 OUT_DIR MODEL.onnx [MODEL.onnx ...]" >&2; exit 2; }
command -v nvidia-smi >/dev/null || { echo "error: nvidia-smi not found: this script needs an NVIDIA GPU" >&2; exit 1; }
out="$1"; shift
mkdir -p "$out"
venv="${HONE_GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/gpu-venv}"
want="onnxruntime-gpu==1.31.1 onnx==1.17.0 onnx2torch==1.5.15 onnxconverter-common==1.14.0 numpy==2.4.6 torch"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.hone-requirements" 2>/dev/null)" != "$want" ]]; then
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want
  echo "$want" > "$venv/.hone-requirements"
fi
for model in "$@"; do
  name="$(basename "$model" .onnx)"
  "$venv/bin/python" "$here/gpu/baseline.py" "$model" "$out/$name.gpu.json"
  echo "wrote $out/$name.gpu.json" >&2
done

#!/usr/bin/env bash
# A Python virtual environment with ONNX Runtime (PyPI, pinned), for the runtime comparisons of
# `coordinator prune --compare-ort`. Idempotent; prints the environment's python path.
#
#   py=$(scripts/python-env.sh)
set -euo pipefail
env_dir="${HONE_PYENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/pyenv}"
want="onnxruntime==1.31.1 numpy==2.4.6"
stamp="$env_dir/.hone-requirements"
if [[ ! -x "$env_dir/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setting up $env_dir ($want)" >&2
  python3 -m venv "$env_dir" >&2
  # shellcheck disable=SC2086
  "$env_dir/bin/pip" install --quiet --disable-pip-version-check $want >&2
  echo "$want" > "$stamp"
fi
"$env_dir/bin/python" -c 'import onnxruntime, numpy' >&2
echo "$env_dir/bin/python"

#!/usr/bin/env bash
# The Python programs the integration tests drive, each in its own pinned virtual environment
# outside the clone: MLflow (server and official client, with onnx + onnxruntime so the client
# can load the models Hone registers), DVC, and Airflow with its HTTP provider.
#
#   scripts/python-tools.sh [mlflow|dvc|airflow ...]   (default: all three)
#
# Each environment is `${HONE_TOOLS:-$XDG_CACHE_HOME/hone/tools}/NAME`, installed from PyPI with
# `scripts/python-tools/NAME.txt` (the top-level pins) under `NAME.constraints.txt` (every
# resolved version, committed). An environment whose stamp matches both files is reused as it
# is, so a warm run costs nothing; a changed pin rebuilds it. Prints one `NAME=BIN_DIR` line per
# environment on stdout; progress goes to stderr. `--freeze` rewrites the constraints files from
# the installed environments (after changing a top-level pin).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/python-tools"
root="${HONE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/tools}"
freeze=0
names=()
for a in "$@"; do
  case "$a" in
    --freeze) freeze=1 ;;
    mlflow|dvc|airflow) names+=("$a") ;;
    *) echo "error: unknown tool \`$a\`: mlflow, dvc or airflow" >&2; exit 2 ;;
  esac
done
[[ ${#names[@]} -gt 0 ]] || names=(mlflow dvc airflow)
command -v python3 >/dev/null || { echo "error: python3 is needed to install ${names[*]}" >&2; exit 1; }
mkdir -p "$root"

declare -A check=(
  [mlflow]='import mlflow, onnx, onnxruntime'
  [dvc]='import dvc'
  [airflow]='import airflow, airflow.providers.http'
)

for name in "${names[@]}"; do
  env_dir="$root/$name"
  req="$here/$name.txt"
  con="$here/$name.constraints.txt"
  want="$( { cat "$req"; [[ ! -f "$con" ]] || cat "$con"; } | sha256sum | cut -c1-64)"
  stamp="$env_dir/.hone-stamp"
  if [[ ! -x "$env_dir/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    start=$(date +%s)
    echo "installing $name into $env_dir ($(grep -v '^#' "$req" | tr '\n' ' '))" >&2
    rm -rf "$env_dir"
    python3 -m venv "$env_dir" >&2
    args=(-r "$req")
    [[ -f "$con" ]] && args+=(-c "$con")
    if ! "$env_dir/bin/pip" install --quiet --disable-pip-version-check "${args[@]}" >&2; then
      echo "error: installing $name from PyPI failed (see above); nothing was kept" >&2
      rm -rf "$env_dir"
      exit 1
    fi
    echo "$want" > "$stamp"
    echo "installed $name in $(( $(date +%s) - start )) s" >&2
  fi
  "$env_dir/bin/python" -c "${check[$name]}" >&2 || {
    echo "error: $env_dir is broken (${check[$name]} failed); delete it and run again" >&2
    exit 1
  }
  if [[ $freeze -eq 1 ]]; then
    { echo "# every version pip resolved for $name.txt; regenerate with scripts/python-tools.sh --freeze $name"
      "$env_dir/bin/pip" freeze --disable-pip-version-check --exclude-editable | LC_ALL=C sort; } > "$con"
    echo "$(cat "$req" "$con" | sha256sum | cut -c1-64)" > "$stamp"
    echo "froze $(grep -vc '^#' "$con") versions into $con" >&2
  fi
  echo "$name=$env_dir/bin"
done

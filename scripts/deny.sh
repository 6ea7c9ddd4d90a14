#!/usr/bin/env bash
# Dependency hygiene with cargo-deny (deny.toml): licences, bans (OpenSSL, wildcards; duplicate
# versions listed), sources (crates.io only). Fails on a violation. Advisories are checked too
# when the RustSec database can be fetched; when it cannot (no route to github.com), this says
# so and goes on: that part is then not checked.
#
# cargo-deny is installed once, pinned, into $CARGO_HOME/bin (about 3.5 min on 2 cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
version="0.20.2"
bin="${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deny"
if ! "$bin" --version 2>/dev/null | grep -q " $version$"; then
  echo "installing cargo-deny $version" >&2
  # Its own build folder: it must not share (or invalidate) the project's.
  CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/hone/cargo-deny-build" \
    cargo install --locked --quiet "cargo-deny@$version" >&2
fi
# Duplicate versions are warnings: list them in one summary line, not per crate.
"$bin" --log-level error check licenses bans sources
dups=$(grep '^name = ' Cargo.lock | sort | uniq -d | sed 's/name = "\(.*\)"/\1/' | tr '\n' ' ')
echo "cargo-deny: licences, bans and sources pass ($(grep -c '^name = ' Cargo.lock) crates in \
Cargo.lock; in more than one version, allowed and listed: ${dups:-none})"
db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if timeout 60 "$bin" --log-level error check advisories 2>/tmp/hone-deny-advisories.$$; then
  echo "cargo-deny: advisories pass (RustSec database in $db)"
elif grep -qiE "fetch|clone|network|resolve|connect|timed out|could not" /tmp/hone-deny-advisories.$$; then
  echo "cargo-deny: advisories NOT CHECKED: the RustSec advisory database could not be fetched \
from this machine ($(grep -m1 -iE 'fetch|clone|network|resolve|connect|timed out|could not' /tmp/hone-deny-advisories.$$ | cut -c1-160))"
else
  cat /tmp/hone-deny-advisories.$$ >&2
  rm -f /tmp/hone-deny-advisories.$$
  exit 1
fi
rm -f /tmp/hone-deny-advisories.$$

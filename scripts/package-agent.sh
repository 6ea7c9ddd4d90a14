#!/usr/bin/env bash
# Builds the agent's Debian package, hone-agent_VERSION_ARCH.deb: /usr/bin/edge-agent, the
# systemd unit (hone-agent.service: a dedicated system user, state in /var/lib/hone-agent,
# restart on failure, cgroup delegation), /etc/default/hone-agent (a conffile: the broker and
# the coordinator; scripts/install-agent.sh fills it in and enrols the device), and maintainer
# scripts that keep the state on removal and purge it with the package (edge-agent/debian/).
#
#   scripts/package-agent.sh [--arch amd64|arm64] [--binary PATH] [--out DIR]
#
# amd64 packages the agent cargo built (release, else debug; or --binary); arm64 packages the
# static aarch64 agent of scripts/cross-build.sh (or --binary). Needs dpkg-deb.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch=amd64
binary=""
out="${XDG_CACHE_HOME:-$HOME/.cache}/hone/packages"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "error: unknown argument \`$1\` (--arch, --binary, --out)" >&2; exit 2 ;;
  esac
done
case "$arch" in amd64|arm64) ;; *) echo "error: --arch is amd64 or arm64, not \`$arch\`" >&2; exit 2 ;; esac
command -v dpkg-deb >/dev/null || { echo "error: dpkg-deb is needed (apt-get install dpkg)" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
if [[ -z "$binary" ]]; then
  if [[ "$arch" == amd64 ]]; then
    for b in "$target/release/edge-agent" "$target/debug/edge-agent"; do
      [[ -x "$b" ]] && { binary="$b"; break; }
    done
  else
    binary="$target/aarch64-unknown-linux-musl/release/edge-agent"
  fi
fi
[[ -x "$binary" ]] || { echo "error: no agent binary for $arch at \`$binary\` (cargo build -p edge-agent, or scripts/cross-build.sh for arm64)" >&2; exit 1; }
version="$(grep -m1 '^version' "$root/Cargo.toml" | cut -d'"' -f2)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/hone-agent"
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/default" "$pkg/usr/share/doc/hone-agent"
install -m 0755 "$binary" "$pkg/usr/bin/edge-agent"
install -m 0644 "$root/edge-agent/debian/hone-agent.service" "$pkg/lib/systemd/system/hone-agent.service"
install -m 0640 "$root/edge-agent/debian/hone-agent.default" "$pkg/etc/default/hone-agent"
for s in postinst prerm postrm; do install -m 0755 "$root/edge-agent/debian/$s" "$pkg/DEBIAN/$s"; done
echo "/etc/default/hone-agent" > "$pkg/DEBIAN/conffiles"
cat > "$pkg/usr/share/doc/hone-agent/README" <<DOC
Hone edge agent $version. scripts/install-agent.sh installs this package, fills in
/etc/default/hone-agent and enrols the device with a token from \`coordinator devices token\`.
By hand: set HONE_BROKER (mqtts://HOST:8883) and HONE_COORDINATOR (https://HOST:7878) there, run
\`edge-agent enroll --coordinator https://HOST:7878 --ca-sha256 HEX\` as the user hone-agent with
the token in HONE_ENROL_TOKEN, check the device with \`edge-agent doctor\`, then:
systemctl start hone-agent.
Removal keeps /var/lib/hone-agent and the hone-agent user; purge deletes them.
DOC
size_kb=$(du -sk "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CTL
Package: hone-agent
Version: $version
Architecture: $arch
Maintainer: Hone developers <hone@example.invalid>
Section: misc
Priority: optional
Installed-Size: $size_kb
Depends: adduser, libc6 (>= 2.31) | musl
Description: Hone edge agent
 Runs benchmark jobs and serves models for a Hone coordinator: signed job
 documents over MQTT, artifacts over HTTP, measurements under the device's
 profile, results through a durable outbox.
CTL
[[ "$arch" == arm64 ]] && sed -i 's/^Depends: .*/Depends: adduser/' "$pkg/DEBIAN/control"
mkdir -p "$out"
deb="$out/hone-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"

#!/usr/bin/env bash
# Installs the Hone edge agent on a Debian or Ubuntu device and enrols it with its coordinator:
# `dpkg -i` of hone-agent_VERSION_ARCH.deb (scripts/package-agent.sh), the settings in
# /etc/default/hone-agent, `edge-agent enroll` run as the unit's user `hone-agent` (so the
# device key in /var/lib/hone-agent/tls/ is that user's, mode 0600), then
# `systemctl enable --now hone-agent`. Re-running it is safe: an enrolled device is not enrolled
# again (unless --reenrol) and the settings are only rewritten where they change.
#
#   HONE_ENROL_TOKEN=… scripts/install-agent.sh --coordinator https://HOST:7878 --ca-sha256 HEX \
#       [--broker mqtts://HOST:8883] [--deb PATH] [--token-file FILE] [--device-id ID]
#       [--profile NAME] [--no-start] [--reenrol] [--root DIR]
#   scripts/install-agent.sh --uninstall [--purge] [--root DIR]
#
# The token and the CA fingerprint come from `coordinator devices token` on the operator's side.
# The token is read from HONE_ENROL_TOKEN or --token-file, never from the command line, and never
# printed. --root DIR installs into a Debian root (an image, a chroot): every command runs there
# through chroot, and the unit is enabled for the next boot instead of started.
# Needs root.
set -euo pipefail

me="install-agent.sh"
die() { echo "$me: error: $*" >&2; exit 1; }
say() { echo "$me: $*"; }
usage() { sed -n '2,/^# Needs root/s/^# \{0,1\}//p' "$0"; }

deb="" coordinator="" broker="" ca_sha256="" token_file="" device_id="" profile=""
no_start=0 reenrol=0 root="/" uninstall=0 purge=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --deb|--coordinator|--broker|--ca-sha256|--token-file|--device-id|--profile|--root)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --deb) deb="$2" ;;
        --coordinator) coordinator="$2" ;;
        --broker) broker="$2" ;;
        --ca-sha256) ca_sha256="$2" ;;
        --token-file) token_file="$2" ;;
        --device-id) device_id="$2" ;;
        --profile) profile="$2" ;;
        --root) root="$2" ;;
      esac
      shift 2 ;;
    --token) die "--token would show the token to every user of this host: put it in HONE_ENROL_TOKEN or a --token-file" ;;
    --no-start) no_start=1; shift ;;
    --reenrol|--reenroll) reenrol=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument \`$1\` (see --help)" ;;
  esac
done

[[ $(id -u) -eq 0 ]] || die "run it as root (sudo $0 …): it installs a package and a system service"
[[ -d "$root" ]] || die "--root $root is not a folder"
root="$(cd "$root" && pwd)"
r="${root%/}"                       # prefix of paths in the target ("" for /)
# Runs a command in the target system.
in_root() { if [[ -z "$r" ]]; then "$@"; else chroot "$root" "$@"; fi; }
if [[ -n "$r" ]]; then
  [[ -x "$r/usr/bin/dpkg" ]] || die "--root $root holds no Debian system (no /usr/bin/dpkg)"
  [[ -d "$r/proc/self" ]] || say "note: $root/proc is not mounted; mount it if a command there needs it"
fi
[[ -x "$r/usr/bin/dpkg" ]] || die "dpkg is missing: this installer is for Debian and Ubuntu"

state=/var/lib/hone-agent
defaults=/etc/default/hone-agent
identity="$state/tls/identity.json"
# A field of identity.json (serde_json's pretty form: one `"key": value` a line).
identity_field() {
  sed -n "s/^ *\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$r$identity" | head -n1
}
systemd_running() { [[ -z "$r" && -d /run/systemd/system ]]; }

if [[ $uninstall -eq 1 ]]; then
  mode=remove; [[ $purge -eq 1 ]] && mode=purge
  # shellcheck disable=SC2016 # a dpkg-query format, not a shell expression
  if ! in_root dpkg-query -W -f='${Status}' hone-agent 2>/dev/null | grep -q ' installed$\| config-files$'; then
    say "hone-agent is not installed in $root: nothing to do"
    exit 0
  fi
  enrolled_as=""
  [[ -f "$r$identity" ]] && enrolled_as="$(identity_field device_id)"
  if [[ $purge -eq 1 ]]; then
    say "will stop and purge hone-agent in $root: the agent, its settings ($defaults), its state and device key ($state) and the user hone-agent"
  else
    say "will stop and remove hone-agent in $root, keeping its settings, its state and enrolment ($state) and the user"
  fi
  if systemd_running; then
    systemctl disable --now hone-agent.service >/dev/null 2>&1 || true
  fi
  if [[ $purge -eq 1 ]]; then in_root dpkg -P hone-agent; else in_root dpkg -r hone-agent; fi
  say "hone-agent ${mode}d"
  if [[ $purge -eq 1 && -n "$enrolled_as" ]]; then
    say "the device key is deleted: on the coordinator, run \`coordinator devices decommission $enrolled_as\` (or \`revoke\`) so its certificate is no longer accepted"
  fi
  exit 0
fi

# --- checks before any change -------------------------------------------------------------
[[ $purge -eq 0 ]] || die "--purge goes with --uninstall"
[[ -n "$coordinator" ]] || die "--coordinator https://HOST:PORT is needed (the coordinator's API)"
[[ "$coordinator" =~ ^https://[^/[:space:]]+/?$ ]] \
  || die "--coordinator must be the coordinator's https://HOST:PORT address (devices enrol over TLS), not \`$coordinator\`"
coordinator="${coordinator%/}"
if [[ -z "$broker" ]]; then
  hostport="${coordinator#https://}"
  if [[ "$hostport" == \[* ]]; then host="${hostport%%]*}]"; else host="${hostport%%:*}"; fi
  broker="mqtts://$host:8883"
fi
[[ "$broker" =~ ^mqtts://[^/[:space:]]+$ ]] \
  || die "--broker must be the coordinator's MQTT gate, mqtts://HOST:PORT, not \`$broker\`"
for v in "$device_id" "$profile"; do
  [[ "$v" =~ ^[A-Za-z0-9._-]*$ ]] || die "\`$v\`: device ids and profile names are letters, digits, . _ -"
done

if [[ -z "$deb" ]]; then
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  arch="$(in_root dpkg --print-architecture)"
  deb="$(find "$here" -maxdepth 1 -name "hone-agent_*_${arch}.deb" -printf '%f\n' 2>/dev/null | sort -V | tail -n1)"
  [[ -n "$deb" ]] || die "no hone-agent_*_${arch}.deb next to $0: give it with --deb PATH (scripts/package-agent.sh builds it)"
  deb="$here/$deb"
fi
[[ -f "$deb" ]] || die "--deb $deb: no such file"
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed on this host to read $deb"
version="$(dpkg-deb -f "$deb" Version 2>/dev/null)" || die "$deb is not a Debian package"
[[ "$(dpkg-deb -f "$deb" Package)" == hone-agent ]] || die "$deb is not the hone-agent package"

enrolled=0
if [[ -f "$r$identity" ]]; then
  enrolled=1
  was_id="$(identity_field device_id)"
  was_coord="$(identity_field coordinator)"
  if [[ $reenrol -eq 0 ]]; then
    [[ "$was_coord" == "$coordinator" ]] \
      || die "this device is enrolled with $was_coord, not $coordinator: add --reenrol (with a new token) to enrol it with $coordinator"
    [[ -z "$device_id" || "$device_id" == "$was_id" ]] \
      || die "this device is enrolled as $was_id, not $device_id: add --reenrol (with a token for $device_id) to change its id"
  fi
fi
enrol=0
if [[ $enrolled -eq 0 || $reenrol -eq 1 ]]; then
  enrol=1
  token="${HONE_ENROL_TOKEN:-}"
  if [[ -n "$token_file" ]]; then
    [[ -r "$token_file" ]] || die "--token-file $token_file cannot be read"
    token="$(head -n1 "$token_file" | tr -d '[:space:]')"
  fi
  [[ -n "$token" ]] || die "an enrolment token is needed: HONE_ENROL_TOKEN=… or --token-file FILE (the operator runs \`coordinator devices token\`)"
  ca_sha256="${ca_sha256#sha256:}"
  [[ "$ca_sha256" =~ ^[0-9A-Fa-f]{64}$ ]] \
    || die "--ca-sha256 must be the 64 hex digits of the coordinator's CA, as \`coordinator devices token\` prints them"
fi

# --- the plan -----------------------------------------------------------------------------
say "installing the Hone edge agent${r:+ into $root}:"
say "  1. dpkg -i $deb (hone-agent $version)"
say "  2. $defaults: HONE_BROKER=$broker HONE_COORDINATOR=$coordinator${device_id:+ HONE_DEVICE_ID=$device_id}${profile:+ HONE_PROFILE=$profile}"
if [[ $enrol -eq 1 ]]; then
  say "  3. edge-agent enroll as the user hone-agent with $coordinator (CA sha256 $ca_sha256), state in $state"
else
  say "  3. already enrolled as $was_id with $was_coord: enrolment skipped (--reenrol enrols again)"
fi
if [[ $no_start -eq 1 ]]; then
  say "  4. not started (--no-start): systemctl enable --now hone-agent when ready"
elif systemd_running; then
  say "  4. systemctl enable --now hone-agent"
else
  say "  4. systemd is not running${r:+ in $root}: the unit is enabled for the next boot, not started"
fi

# --- 1. the package -----------------------------------------------------------------------
if [[ -n "$r" ]]; then
  tmp="$(mktemp -d "$r/tmp/hone-agent-install.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  cp "$deb" "$tmp/hone-agent.deb"
  target_deb="${tmp#"$r"}/hone-agent.deb"
else
  target_deb="$deb"
fi
# confold: settings edited here or by hand are kept on upgrades, never asked about.
DEBIAN_FRONTEND=noninteractive in_root dpkg --force-confdef --force-confold -i "$target_deb" \
  || die "dpkg -i failed (a missing dependency? apt-get install -f, then run this again)"
in_root getent passwd hone-agent >/dev/null || die "the package did not create the user hone-agent"

# --- 2. the settings ----------------------------------------------------------------------
# Sets KEY=VALUE in place of an uncommented KEY= line, else after its commented example, else
# at the end; comments and other lines are kept.
set_var() { # file key value
  awk -v k="$2" -v v="$3" '
    BEGIN { done = 0 }
    { lines[NR] = $0 }
    $0 ~ "^" k "=" && !done { lines[NR] = k "=" v; done = 1 }
    END {
      if (!done) for (i = 1; i <= NR; i++) if (lines[i] ~ "^# *" k "=") { lines[i] = lines[i] "\n" k "=" v; done = 1; break }
      for (i = 1; i <= NR; i++) print lines[i]
      if (!done) print k "=" v
    }' "$1"
}
conf="$r$defaults"
[[ -f "$conf" ]] || die "$conf is missing after the installation"
new="$(mktemp "$conf.XXXXXX")"
trap 'rm -f "$new"; [[ -z "${tmp:-}" ]] || rm -rf "$tmp"' EXIT
cp "$conf" "$new"
settings=("HONE_BROKER=$broker" "HONE_COORDINATOR=$coordinator")
[[ -n "$device_id" ]] && settings+=("HONE_DEVICE_ID=$device_id")
[[ -n "$profile" ]] && settings+=("HONE_PROFILE=$profile")
for kv in "${settings[@]}"; do
  set_var "$new" "${kv%%=*}" "${kv#*=}" > "$new.next"
  mv "$new.next" "$new"
done
settings_changed=0
if cmp -s "$new" "$conf"; then
  rm -f "$new"
  say "$defaults is up to date"
else
  mv "$new" "$conf"
  settings_changed=1
  say "wrote $defaults"
fi
in_root chown root:hone-agent "$defaults"
in_root chmod 0640 "$defaults"

# --- 3. enrolment -------------------------------------------------------------------------
# As the unit's user, with a clean environment but for the token (not on any command line).
as_agent() {
  if in_root sh -c 'command -v runuser' >/dev/null; then
    in_root runuser -u hone-agent -- "$@"
  elif in_root sh -c 'command -v setpriv' >/dev/null; then
    in_root setpriv --reuid=hone-agent --regid=hone-agent --init-groups -- "$@"
  else
    # shellcheck disable=SC2016 # expanded by the user's shell
    in_root su -s /bin/sh hone-agent -c '"$0" "$@"' -- "$@"
  fi
}
if [[ $enrol -eq 1 ]]; then
  enrol_args=(enroll --coordinator "$coordinator" --ca-sha256 "$ca_sha256" --state-dir "$state")
  if [[ -n "$device_id" ]]; then
    enrol_args+=(--device-id "$device_id")
  elif [[ $enrolled -eq 1 ]]; then
    enrol_args+=(--device-id "$was_id")   # re-enrolment keeps the id unless told otherwise
  fi
  if ! (
    for v in $(compgen -e); do [[ "$v" == HONE_* ]] && unset "$v"; done
    export HONE_ENROL_TOKEN="$token"
    cd /
    as_agent /usr/bin/edge-agent "${enrol_args[@]}"
  ); then
    die "enrolment failed (above): check the coordinator's address and CA fingerprint; a token is valid once and expires (\`coordinator devices token\` makes a new one)"
  fi
  unset token
  key_owner="$(in_root stat -c '%U %a' "$state/tls/device.key")"
  [[ "$key_owner" == "hone-agent 600" ]] || die "$state/tls/device.key is \`$key_owner\`, not hone-agent's with mode 600"
else
  say "already enrolled as $was_id with $was_coord (certificate and key in $state/tls): not enrolling again"
fi

# --- 4. the service -----------------------------------------------------------------------
if [[ $no_start -eq 1 ]]; then
  say "installed; not started (--no-start). Start it with: systemctl enable --now hone-agent"
elif systemd_running; then
  if systemctl is-active --quiet hone-agent.service && [[ $settings_changed -eq 1 || $enrol -eq 1 ]]; then
    systemctl enable hone-agent.service >/dev/null
    systemctl restart hone-agent.service
    say "hone-agent restarted with the new settings"
  else
    systemctl enable --now hone-agent.service
    say "hone-agent is enabled and running: journalctl -u hone-agent -f"
  fi
else
  if in_root sh -c 'command -v systemctl' >/dev/null && in_root systemctl enable hone-agent.service >/dev/null 2>&1; then
    say "systemd is not running${r:+ in $root}: hone-agent is enabled and starts at the next boot"
  else
    say "systemd is not running${r:+ in $root}: start the agent yourself (edge-agent run, as the user hone-agent, with $defaults)"
  fi
fi

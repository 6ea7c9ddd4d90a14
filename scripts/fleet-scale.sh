#!/usr/bin/env bash
# Fleet-scale figures (docs/scale.md): one coordinator (embedded broker) against N simulated
# agents (tests/src/bin/fleet-sim.rs: the agent's own MQTT module, signature checks and
# artifact downloads; the benchmark replaced by a recorded result), the coordinator pinned to
# core 0 and the simulator to core 1, on SQLite and PostgreSQL.
#
#   scripts/fleet-scale.sh [--tls] [--mqtt-url URL] [--db sqlite|postgres] [N ...]
#                                        (default: 1000 10000, both databases, plain)
#
# --tls: the coordinator's default transport (every agent enrols, then mqtts through the MQTT
# gate and HTTPS downloads); --mqtt-url: an external broker instead of the embedded one (use a
# Mosquitto of the run's own: the agents' retained births stay on it).
#
# Prints one line per run and writes the JSON of every run to fleet-scale.json in the current
# folder. Raises the open-file limit as far as the hard limit allows (each agent is one MQTT
# connection on each side).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/target}"
(cd "$root" && cargo build --quiet --workspace --bins --locked)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files: $(ulimit -n); cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
extra=()
dbs=(sqlite postgres)
sizes=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tls) extra+=(--tls); shift ;;
    --mqtt-url) extra+=(--mqtt-url "$2"); shift 2 ;;
    --db) dbs=("$2"); shift 2 ;;
    *) sizes+=("$1"); shift ;;
  esac
done
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1000 10000)
out="fleet-scale.json"
echo "[" > "$out"
first=1
for n in "${sizes[@]}"; do
  if [[ $((2 * n + 200)) -gt $(ulimit -n) ]]; then
    echo "warning: $n agents need about $((n + 100)) open files in each process; the limit is $(ulimit -n)" >&2
  fi
  for db in "${dbs[@]}"; do
    json="$("$CARGO_TARGET_DIR/debug/fleet-sim" --agents "$n" --database "$db" ${extra[@]+"${extra[@]}"} \
      --pin-coordinator 0 --pin-sim 1 --timeout-s 1200 --json)" || { echo "$n agents on $db failed" >&2; continue; }
    [[ $first -eq 1 ]] || echo "," >> "$out"
    first=0
    echo "$json" >> "$out"
    echo "$json" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(f"{r[\"agents\"]:>6} agents {r[\"database\"]:<8} online {r[\"online_s\"]:6.1f} s  campaign {r[\"campaign_s\"]:6.1f} s  delivery p50 {r[\"delivery_p50_ms\"]:7.0f} ms p99 {r[\"delivery_p99_ms\"]:7.0f} ms  RSS peak {r[\"coordinator_rss_peak_mib\"]:6.0f} MiB  CPU {r[\"coordinator_cpu_s_campaign\"]:6.1f} s  db {r[\"database_bytes\"]/1048576:6.1f} MiB")'
  done
done
echo "]" >> "$out"
echo "wrote $out" >&2

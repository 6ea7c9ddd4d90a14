#!/usr/bin/env bash
# Fleet-scale figures (docs/scale.md): one coordinator (embedded broker) against N simulated
# agents (tests/src/bin/fleet-sim.rs: the agent's own MQTT module, signature checks and
# artifact downloads; the benchmark replaced by a recorded result), the coordinator pinned to
# core 0 and the simulator to core 1, on SQLite and PostgreSQL.
#
#   scripts/fleet-scale.sh [--tls] [--mosquitto | --mqtt-url URL] [--db sqlite|postgres] [N ...]
#                                        (default: 1000 10000, both databases, plain)
#
# --tls: the coordinator's default transport (every agent enrols, then mqtts through the MQTT
# gate and HTTPS downloads); --mosquitto: a fresh Mosquitto for each run instead of the
# embedded broker (loopback, anonymous, no persistence, 100,000 queued messages per client,
# unpinned: the broker is not the coordinator's); --mqtt-url: a broker you started (give it
# no persistence, or restart it between runs: the agents' retained births and wills stay on
# it and confuse the next run).
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
own_mosquitto=0
dbs=(sqlite postgres)
sizes=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tls) extra+=(--tls); shift ;;
    --mqtt-url) extra+=(--mqtt-url "$2"); shift 2 ;;
    --mosquitto) own_mosquitto=1; shift ;;
    --db) dbs=("$2"); shift 2 ;;
    *) sizes+=("$1"); shift ;;
  esac
done
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1000 10000)
out="fleet-scale.json"
echo "[" > "$out"
first=1
for n in "${sizes[@]}"; do
  if [[ $((n + 100)) -gt $(ulimit -n) ]]; then
    echo "warning: $n agents need about $((n + 100)) open files in each process; the limit is $(ulimit -n)" >&2
  fi
  for db in "${dbs[@]}"; do
    broker=()
    if [[ $own_mosquitto -eq 1 ]]; then
      mq_dir="$(mktemp -d)"
      mq_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n' \
        "$mq_port" > "$mq_dir/mosquitto.conf"
      [[ $(id -u) -ne 0 ]] || echo "user root" >> "$mq_dir/mosquitto.conf"
      mosquitto -c "$mq_dir/mosquitto.conf" 2> "$mq_dir/mosquitto.log" &
      mq_pid=$!
      for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$mq_port") 2>/dev/null && break; sleep 0.1; done
      broker=(--mqtt-url "mqtt://127.0.0.1:$mq_port")
    fi
    json="$("$CARGO_TARGET_DIR/debug/fleet-sim" --agents "$n" --database "$db" ${extra[@]+"${extra[@]}"} \
      ${broker[@]+"${broker[@]}"} --pin-coordinator 0 --pin-sim 1 --timeout-s 1200 --json)" \
      || json=""
    if [[ $own_mosquitto -eq 1 ]]; then
      kill "$mq_pid" 2>/dev/null || true
      wait "$mq_pid" 2>/dev/null || true
      rm -rf "$mq_dir"
    fi
    [[ -n "$json" ]] || { echo "$n agents on $db failed" >&2; continue; }
    [[ $first -eq 1 ]] || echo "," >> "$out"
    first=0
    echo "$json" >> "$out"
    echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin)
ms = lambda k: "%7.0f ms" % r[k] if r.get(k) is not None else "      - ms"
print("%6d agents %-8s online %6.1f s  campaign %6.1f s  arrival p99 %s  delivery p50 %s p99 %s  RSS peak %6.0f MiB  CPU %6.1f s  db %6.1f MiB" % (
    r["agents"], r["database"], r["online_s"], r["campaign_s"], ms("arrival_p99_ms"),
    ms("delivery_p50_ms"), ms("delivery_p99_ms"), r["coordinator_rss_peak_mib"],
    r["coordinator_cpu_s_campaign"], r["database_bytes"] / 1048576))'
  done
done
echo "]" >> "$out"
echo "wrote $out" >&2

#!/usr/bin/env bash
# Make sure the external services the test suite talks to are up: Mosquitto on 127.0.0.1:1883 and
# PostgreSQL on 127.0.0.1:5432 (trust auth). Starts whichever is down, using the machine's own
# packages; fails with a clear message if one cannot be started. Installs headless Chromium (for
# the report test) when /usr/bin/chromium is absent.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name
  for _ in $(seq 1 50); do port_open "$1" && return 0; sleep 0.2; done
  echo "error: $2 did not start listening on 127.0.0.1:$1" >&2
  return 1
}

if ! port_open 1883; then
  if command -v mosquitto >/dev/null; then
    echo "starting Mosquitto"
    if [[ -f /etc/mosquitto/mosquitto.conf ]]; then mosquitto -d -c /etc/mosquitto/mosquitto.conf; else mosquitto -d; fi
    wait_port 1883 Mosquitto
  else
    echo "error: Mosquitto is not running on 127.0.0.1:1883 and not installed (apt-get install mosquitto)" >&2
    exit 1
  fi
fi

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    wait_port 5432 PostgreSQL
  else
    echo "error: PostgreSQL is not running on 127.0.0.1:5432 and not installed (apt-get install postgresql)" >&2
    exit 1
  fi
fi
# Headless Chromium renders the pipeline's HTML report in the report test (tests/tests/report.rs).
if [[ ! -x /usr/bin/chromium ]]; then
  echo "installing Chromium"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  install_chromium() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
  install_chromium || { $sudo apt-get update -qq >/dev/null && install_chromium; } || {
    echo "error: /usr/bin/chromium is missing and could not be installed (apt-get install chromium)" >&2
    exit 1
  }
fi
command -v psql >/dev/null || { echo "error: psql (PostgreSQL client) is needed by the tests" >&2; exit 1; }
echo "services: Mosquitto 127.0.0.1:1883 and PostgreSQL 127.0.0.1:5432 are up"

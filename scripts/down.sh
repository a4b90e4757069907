#!/usr/bin/env bash
# make down: stops what `make up` started (the hub, then the machine agent,
# whose worker hands its unfinished jobs back, then Redis, which flushes its
# AOF on shutdown).
set -uo pipefail
cd "$(dirname "$0")/.."
state=.kiln

stop() {
  local name=$1 pidfile=$2
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "down: stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

stop hub "$state/hub.pid"
stop "machine agent" "$state/agent.pid"
stop worker "$state/worker.pid" # left by an earlier `make up`
stop redis "$state/redis.pid"

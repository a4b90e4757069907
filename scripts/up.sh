#!/usr/bin/env bash
# make up: a private Redis (data under .kiln/, loopback only), the hub with
# the web monitor, a local machine agent (`kiln machine run`) supervising a
# simulation worker, a small demo batch with live progress and a summary.
# Everything stays running; `make down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state="$root/.kiln"
kiln="$root/build/kiln"
mkdir -p "$state/redis"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Redis: reuse ours if it runs, else start one on the first free port from 6390.
if alive "$state/redis.pid"; then
  port=$(cat "$state/redis.port")
else
  port=${KILN_UP_PORT:-6390}
  while ! port_free "$port"; do port=$((port + 1)); done
  redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes \
    --dir "$state/redis" --appendonly yes --appendfsync everysec --save "" \
    --daemonize yes --pidfile "$state/redis.pid" --logfile "$state/redis.log"
  echo "$port" > "$state/redis.port"
fi
export KILN_REDIS_URL="redis://127.0.0.1:$port"
for _ in $(seq 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
redis-cli -p "$port" ping >/dev/null || { echo "up: redis did not start; see $state/redis.log"; exit 1; }
echo "up: redis on 127.0.0.1:$port (data in .kiln/redis)"

# Machine agent: supervises a simulation worker with 4 slots and publishes
# the machine's status; its machine API on a free loopback port.
cat >"$state/kiln.yaml" <<EOY
redis: {url: "$KILN_REDIS_URL"}
machine: {id: local, type: api}
worker: {connectors: [simulation], concurrency: 4}
EOY
if ! alive "$state/agent.pid"; then
  setsid "$kiln" machine run --config "$state/kiln.yaml" --state-dir "$state/machine" \
    --api 127.0.0.1:0 --log-format text >>"$state/agent.log" 2>&1 < /dev/null &
  echo $! > "$state/agent.pid"
fi
for _ in $(seq 200); do
  "$kiln" workers --json 2>/dev/null | grep -q '"simulation"' && break
  sleep 0.05
done
"$kiln" workers --json 2>/dev/null | grep -q '"simulation"' ||
  { echo "up: the machine agent's worker did not start; see $state/agent.log"; exit 1; }
echo "up: machine agent running (pid $(cat "$state/agent.pid"), log .kiln/agent.log)"

# Hub with the monitor: no tokens, so loopback only; first free port from 8080.
if alive "$state/hub.pid"; then
  hub_port=$(cat "$state/hub.port")
else
  hub_port=${KILN_UP_HUB_PORT:-8080}
  while ! port_free "$hub_port"; do hub_port=$((hub_port + 1)); done
  setsid "$kiln" hub --listen "127.0.0.1:$hub_port" --log-format text \
    >>"$state/hub.log" 2>&1 < /dev/null &
  echo $! > "$state/hub.pid"
  echo "$hub_port" > "$state/hub.port"
fi
hub="http://127.0.0.1:$hub_port"
for _ in $(seq 100); do
  curl -fs "$hub/health" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -fs "$hub/health" >/dev/null || { echo "up: the hub did not start; see $state/hub.log"; exit 1; }
echo "up: hub and monitor on $hub (pid $(cat "$state/hub.pid"), log .kiln/hub.log)"

# A demo batch: different lengths, a high-priority job, one that fails once
# and succeeds on its retry.
ids=()
submit() { ids+=("$("$kiln" submit simulation "$@")"); }
for i in 1 2 3 4 5 6; do
  submit --payload "{\"duration_ms\": $((800 + i * 300)), \"steps\": 8}"
done
submit --priority 10 --payload '{"duration_ms": 1500, "steps": 5}'
submit --max-attempts 3 --payload '{"duration_ms": 600, "steps": 3, "fail": "demo: the first attempt fails", "fail_attempts": 1}'
echo "up: submitted ${#ids[@]} demo jobs: ${ids[*]}"
echo

# Live progress until every demo job has finished.
start=$(date +%s%N)
tty=0; [ -t 1 ] && tty=1
while :; do
  table=$("$kiln" jobs --service simulation --limit 20)
  if [ $tty = 1 ]; then
    printf '\033[H\033[2J%s\n' "$table"
  fi
  busy=0
  for id in "${ids[@]}"; do
    state_of=$("$kiln" job "$id" --json | sed -n 's/.*"state": *"\([a-z]*\)".*/\1/p' | head -1)
    case "$state_of" in completed|failed|dead|cancelled) ;; *) busy=$((busy + 1)) ;; esac
  done
  [ $busy = 0 ] && break
  [ $tty = 0 ] && echo "up: $busy of ${#ids[@]} demo jobs still running"
  sleep 0.5
done
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
[ $tty = 0 ] && echo "$table"
echo
"$kiln" queues
echo
echo "up: all ${#ids[@]} demo jobs finished in ${elapsed} ms."
cat <<EOM

kiln is running.
  Monitor:  $hub/
  A first job through the hub:
    curl -s -X POST $hub/v1/jobs -H 'Content-Type: application/json' \\
      -d '{"service": "simulation", "payload": {"duration_ms": 3000, "steps": 10}}'
  The same with the CLI:
    export KILN_REDIS_URL=$KILN_REDIS_URL
    ./build/kiln submit simulation --payload '{"duration_ms": 3000}' --wait
  ./build/kiln jobs        ./build/kiln queues        ./build/kiln machines
Logs: .kiln/hub.log, .kiln/agent.log, .kiln/redis.log.  Stop everything: make down
EOM

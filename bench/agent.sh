#!/usr/bin/env bash
# kiln's machine agent vs PM2 and supervisord, side by side, each running
# the same services (build/bench_respawn_probe): time to start them all,
# respawn time after kill -9, the agent's memory (PSS) and its idle CPU.
# Prints a table and rewrites the agent section of BENCHMARKS.md (between
# its markers; the rest of the file is kept). bench/run.sh calls this last;
# it also runs on its own after a build. Takes about 3 minutes.
#
# Installs what it compares when missing: PM2 (pinned) into
# bench/.scratch/pm2 with npm, supervisord from Debian's `supervisor`
# package with apt-get (then disables the system service the package
# enables). Every process it starts is stopped on every exit.
#
# Environment (all optional):
#   BUILD                  build folder with kiln and bench_respawn_probe (default ./build)
#   BENCH_OUT              the report to update (default BENCHMARKS.md at the root)
#   BENCH_AGENT_SERVICES   services per supervisor (default 50)
#   BENCH_AGENT_STARTS     timed starts per supervisor, median reported (default 3)
#   BENCH_AGENT_KILLS      kill -9 / respawn samples per supervisor (default 30, at most the services)
#   BENCH_AGENT_IDLE_S     the idle window for CPU (default 60)
#
# Usage: bench/agent.sh [--only SYSTEMS]
#   --only kiln,floor      measure just those (comma list of kiln, pm2,
#                          supervisord, floor) while iterating; prints the
#                          results and leaves BENCHMARKS.md alone.
set -euo pipefail

ONLY=
while [ $# -gt 0 ]; do
    case $1 in
    --only) [ $# -ge 2 ] || { echo "bench agent: --only needs a list, e.g. --only kiln,floor" >&2; exit 2; }
        ONLY=$2; shift 2 ;;
    *) echo "bench agent: unknown argument $1 (usage: bench/agent.sh [--only kiln,pm2,supervisord,floor])" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
OUT=${BENCH_OUT:-$ROOT/BENCHMARKS.md}
SCRATCH=$ROOT/bench/.scratch/pm2
PM2_VERSION=7.0.4
PM2_DIR=$SCRATCH/node_modules/pm2
HARNESS_TIMEOUT=600 # seconds for the whole measured part

. "$ROOT/bench/lib.sh"
log() { printf 'bench agent: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

for tool in redis-server redis-cli node npm; do
    command -v "$tool" >/dev/null || die "$tool not found (redis-server: scripts/deps.sh; node/npm: Node 20)"
done
for bin in kiln bench_respawn_probe bench_respawn_floor; do
    [ -x "$BUILD/$bin" ] || die "no $BUILD/$bin: build first (cmake -S . -B build && cmake --build build)"
done

# ---- supervisord -----------------------------------------------------------

if ! command -v supervisord >/dev/null || ! command -v supervisorctl >/dev/null; then
    [ "$(id -u)" = 0 ] || die "supervisord not found; install Debian's package: sudo apt-get install supervisor"
    log "installing supervisor with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq supervisor >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq supervisor >/dev/null 2>&1 || die "apt-get install supervisor failed"
    fi
    # The package enables (and, under systemd, starts) a system-wide
    # supervisord; this bench runs its own, so turn that one off again.
    if command -v systemctl >/dev/null && systemctl is-enabled supervisor >/dev/null 2>&1; then
        systemctl disable --now supervisor >/dev/null 2>&1 || systemctl disable supervisor >/dev/null 2>&1 || true
    fi
    if [ -s /var/run/supervisord.pid ] && kill -0 "$(cat /var/run/supervisord.pid)" 2>/dev/null; then
        service supervisor stop >/dev/null 2>&1 || true
    fi
fi

# ---- PM2 -------------------------------------------------------------------

# Its own folder under bench/.scratch: run.sh's npm install there would
# prune packages its package.json does not list.
pm2_version() { node -e 'try{console.log(require(process.argv[1]).version)}catch(e){}' "$PM2_DIR/package.json"; }
if [ "$(pm2_version)" != "$PM2_VERSION" ]; then
    log "installing pm2@$PM2_VERSION into bench/.scratch/pm2"
    mkdir -p "$SCRATCH"
    printf '{"name":"kiln-bench-pm2","private":true}\n' >"$SCRATCH/package.json"
    (cd "$SCRATCH" && npm install --no-audit --no-fund --silent --save-exact "pm2@$PM2_VERSION" 2>&1 |
        grep -v 'Unknown user config' >&2 || true)
    [ "$(pm2_version)" = "$PM2_VERSION" ] || die "npm install of pm2@$PM2_VERSION failed"
fi

# ---- cleanup ---------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-agent.XXXXXX")
REDIS_PID=
HARNESS_PID=

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The harness stops what it started; this is for a harness that could not
# (killed, crashed): every supervisor it left, by the pid files they wrote.
cleanup() {
    if [ -n "$HARNESS_PID" ] && kill -0 "$HARNESS_PID" 2>/dev/null; then
        kill "$HARNESS_PID" 2>/dev/null || true
        wait "$HARNESS_PID" 2>/dev/null || true
    fi
    local f
    for f in "$TMP"/kiln-*/state/agent.pid; do
        alive "$f" && kill "$(cat "$f")" 2>/dev/null
    done
    for f in "$TMP"/pm2-*/home/pm2.pid; do
        alive "$f" && PM2_HOME=$(dirname "$f") node "$PM2_DIR/bin/pm2" kill >/dev/null 2>&1
    done
    for f in "$TMP"/supervisord-*/supervisord.pid; do
        alive "$f" && supervisorctl -c "$(dirname "$f")/supervisord.conf" shutdown >/dev/null 2>&1
    done
    bench_redis_stop
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- Redis (the kiln agent publishes its status there) ---------------------

bench_redis_start "$TMP/redis"
REDIS_VERSION=$(redis-cli -h 127.0.0.1 -p "$PORT" info server | tr -d '\r' | sed -n 's/^redis_version://p')

# ---- measure ---------------------------------------------------------------

BENCH_COMMIT=$(bench_commit_label src include CMakeLists.txt bench/respawn_probe.c)

log "$(nproc) cores; ${BENCH_AGENT_SERVICES:-50} services per supervisor; redis $REDIS_VERSION on port $PORT"
timeout "$HARNESS_TIMEOUT" node "$ROOT/bench/agent/harness.mjs" \
    --kiln "$BUILD/kiln" --probe "$BUILD/bench_respawn_probe" --floor "$BUILD/bench_respawn_floor" \
    --pm2 "$PM2_DIR" \
    --supervisord "$(command -v supervisord)" --supervisorctl "$(command -v supervisorctl)" \
    --redis "redis://127.0.0.1:$PORT" --work "$TMP" \
    --services "${BENCH_AGENT_SERVICES:-50}" --starts "${BENCH_AGENT_STARTS:-3}" \
    --kills "${BENCH_AGENT_KILLS:-30}" --idle-s "${BENCH_AGENT_IDLE_S:-60}" \
    ${ONLY:+--only "$ONLY"} >"$TMP/results.json" &
HARNESS_PID=$!
wait "$HARNESS_PID" || die "the measurements failed (see above)"
HARNESS_PID=

# ---- report ----------------------------------------------------------------

if [ -n "$ONLY" ]; then
    # A partial run is for iterating: its figures, not a report.
    node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));
for (const [k,v] of Object.entries(r.respawn)) console.log(`${k} respawn: median ${v.median_ms.toFixed(2)} ms, p90 ${v.p90_ms.toFixed(2)}, min ${v.min_ms.toFixed(2)}, max ${v.max_ms.toFixed(2)} (${v.kills} kills)`);' "$TMP/results.json"
    exit 0
fi

BENCH_NPROC=$(nproc)
BENCH_CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
[ -n "$BENCH_CPU" ] || BENCH_CPU=$(uname -m)
BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
export BENCH_NPROC BENCH_CPU BENCH_DATE BENCH_COMMIT REDIS_VERSION
node "$ROOT/bench/agent/report.mjs" "$TMP/results.json" "$OUT"
log "updated the agent section of $OUT"

#!/usr/bin/env bash
# Where a kiln respawn's time goes, step by step: runs `kiln machine run`
# with BENCH_TRACE_SERVICES copies of bench_respawn_probe (backoff_ms: 0),
# kills them one at a time with kill -9 under `perf record` (scheduler,
# signal and syscall tracepoints on CLOCK_MONOTONIC, the probes' clock),
# and prints each step's time per kill and the medians
# (bench/respawn_timeline.py). Needs perf and root (tracepoints).
#
# Environment (optional): BUILD (default ./build), BENCH_TRACE_SERVICES
# (kills + 1, default 11).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
N=${BENCH_TRACE_SERVICES:-11}
. "$ROOT/bench/lib.sh"
command -v perf >/dev/null || { echo "respawn_trace: perf not found" >&2; exit 1; }

TMP=$(mktemp -d /tmp/kiln-respawn-trace.XXXXXX)
AGENT_PID=
cleanup() {
    [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
    bench_redis_stop
    rm -rf "$TMP"
}
trap cleanup EXIT

bench_redis_start "$TMP/redis"
mkdir -p "$TMP/starts"
{
    printf 'redis: {url: "redis://127.0.0.1:%s"}\nmachine: {id: trace, type: api}\nservices:\n' "$PORT"
    for i in $(seq "$N"); do
        printf '  s%d:\n    command: [%s, --out, %s]\n    backoff_ms: 0\n' \
            "$i" "$BUILD/bench_respawn_probe" "$TMP/starts/s$i"
    done
} >"$TMP/kiln.yaml"
"$BUILD/kiln" machine run --config "$TMP/kiln.yaml" --state-dir "$TMP/state" \
    --api 127.0.0.1:0 >"$TMP/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 200); do
    [ "$(ls "$TMP/starts" | wc -l)" -ge "$N" ] && break
    sleep 0.05
done
sleep 1

# The killer: one service after the other (not s1), 300 ms apart.
cat >"$TMP/killer.sh" <<EOF
#!/bin/bash
for i in \$(seq 2 $N); do
    kill -9 \$(tail -n1 $TMP/starts/s\$i | cut -d' ' -f1)
    sleep 0.3
done
EOF
chmod +x "$TMP/killer.sh"
perf record -q -k mono -a -o "$TMP/perf.data" \
    -e sched:sched_process_exit,sched:sched_process_exec,sched:sched_process_fork \
    -e sched:sched_wakeup,sched:sched_switch,signal:signal_generate \
    -e syscalls:sys_enter_kill,syscalls:sys_exit_wait4,syscalls:sys_enter_sendto \
    -e syscalls:sys_exit_epoll_wait "$TMP/killer.sh"
perf script -i "$TMP/perf.data" -F comm,pid,tid,cpu,time,event,trace >"$TMP/perf.txt" 2>/dev/null
python3 "$ROOT/bench/respawn_timeline.py" "$TMP/perf.txt" "$AGENT_PID" "$TMP/starts"

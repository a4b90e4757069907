#!/usr/bin/env bash
# kiln vs BullMQ, side by side against one private Redis: end-to-end
# throughput, submit-to-start latency, claim cost with many requirement
# classes, and Redis commands per job. Prints a table and rewrites
# BENCHMARKS.md at the repository root. `make bench` builds ./build and runs
# this; every run is bounded by a job count and a timeout.
#
# Environment (all optional):
#   BUILD                  build folder with kiln and bench_* (default ./build)
#   BENCH_JOBS             jobs per throughput run (default 20000)
#   BENCH_LATENCY_JOBS     jobs in the latency run, one per 10 ms (default 2000)
#   BENCH_MONITOR_JOBS     jobs per command-count run under MONITOR (default 3000)
#   BENCH_CLAIMS           timed claims per claim-cost case (default 2000)
#   BENCH_SLOTS            slot counts for throughput (default "1 10 50")
#   BENCH_OUT              the report to write (default BENCHMARKS.md at the root)
#   BENCH_OPENAI=0         skips bench/openai.sh (the openai connector's overhead)
#   BENCH_MONITOR=0        skips bench/monitor_render.sh (the monitor's first render)
#   BENCH_HUB_FANOUT=0     skips bench/hub_fanout.sh (the hub's event fan-out)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SCRATCH=$ROOT/bench/.scratch
BULLMQ_VERSION=6.7.0
IOREDIS_VERSION=6.0.0
JOBS=${BENCH_JOBS:-20000}
LATENCY_JOBS=${BENCH_LATENCY_JOBS:-2000}
MONITOR_JOBS=${BENCH_MONITOR_JOBS:-3000}
CLAIMS=${BENCH_CLAIMS:-2000}
SLOTS=${BENCH_SLOTS:-"1 10 50"}
OUT=${BENCH_OUT:-$ROOT/BENCHMARKS.md}
RUN_TIMEOUT=180 # seconds, per measured program

. "$ROOT/bench/lib.sh"
log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

for tool in redis-server redis-cli node npm; do
    command -v "$tool" >/dev/null || die "$tool not found (redis-server: scripts/deps.sh; node/npm: Node 20)"
done

# The commit measured, taken before the run (others may commit meanwhile).
BENCH_COMMIT=$(bench_commit_label src include CMakeLists.txt)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench.XXXXXX")
RESULTS=$TMP/results.ndjson
: >"$RESULTS"
REDIS_PID=
MONITOR_PID=

cleanup() {
    [ -n "$MONITOR_PID" ] && kill "$MONITOR_PID" 2>/dev/null || true
    bench_redis_stop
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- Redis -----------------------------------------------------------------

bench_redis_start "$TMP/redis"
rcli() { redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }
REDIS_URL=redis://127.0.0.1:$PORT
REDIS_VERSION=$(rcli info server | tr -d '\r' | sed -n 's/^redis_version://p')
log "redis $REDIS_VERSION on $REDIS_URL"

# ---- BullMQ ----------------------------------------------------------------

installed_version() {
    node -e 'try{console.log(require(process.argv[1]).version)}catch(e){}' "$SCRATCH/node_modules/$1/package.json"
}
if [ "$(installed_version bullmq)" != "$BULLMQ_VERSION" ] || [ "$(installed_version ioredis)" != "$IOREDIS_VERSION" ]; then
    log "installing bullmq@$BULLMQ_VERSION ioredis@$IOREDIS_VERSION into bench/.scratch"
    mkdir -p "$SCRATCH"
    printf '{"name":"kiln-bench-scratch","private":true}\n' >"$SCRATCH/package.json"
    (cd "$SCRATCH" && npm install --no-audit --no-fund --silent --save-exact \
        "bullmq@$BULLMQ_VERSION" "ioredis@$IOREDIS_VERSION" 2>&1 | grep -v 'Unknown user config' >&2 || true)
    [ "$(installed_version bullmq)" = "$BULLMQ_VERSION" ] || die "npm install of bullmq@$BULLMQ_VERSION failed"
fi

# ---- measuring -------------------------------------------------------------

fresh() {
    rcli flushall >/dev/null
    rcli config resetstat >/dev/null
}

info_total() { rcli info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p'; }
info_scripts() {
    rcli info commandstats | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro):/ {n += $3} END {print n + 0}'
}

# record SYSTEM BENCH SLOTS JOBS -- COMMAND...: runs COMMAND on a flushed
# Redis, appends its JSON line and the commands Redis executed meanwhile
# (INFO total_commands_processed and script calls) to the results.
record() {
    local system=$1 bench=$2 slots=$3 jobs=$4
    shift 5
    fresh
    local before scripts_before out
    before=$(info_total)
    scripts_before=$(info_scripts)
    if ! out=$(timeout "$RUN_TIMEOUT" "$@"); then
        log "$system $bench (slots $slots) failed"
        return 0
    fi
    # Less the two INFO calls after the first reading.
    local total=$(($(info_total) - before - 2)) scripts=$(($(info_scripts) - scripts_before))
    printf '%s\n' "$out" | grep '^{' >>"$RESULTS" || true
    printf '{"system":"%s","bench":"commands_info","of":"%s","concurrency":%s,"jobs":%s,"total":%s,"scripts":%s}\n' \
        "$system" "$bench" "$slots" "$jobs" "$total" "$scripts" >>"$RESULTS"
    printf '%s\n' "$out" | grep '^{' >&2 || true
}

# monitored SYSTEM SLOTS JOBS -- COMMAND...: runs COMMAND under MONITOR and
# counts the commands clients sent and those run inside scripts.
monitored() {
    local system=$1 slots=$2 jobs=$3
    shift 4
    fresh
    local mon=$TMP/monitor.log
    # redis-cli itself, not the rcli function: $! must be its pid to stop it.
    redis-cli -h 127.0.0.1 -p "$PORT" monitor >"$mon" &
    MONITOR_PID=$!
    for _ in $(seq 100); do
        grep -q '^OK' "$mon" 2>/dev/null && break
        sleep 0.02
    done
    local ok=1
    timeout "$RUN_TIMEOUT" "$@" >/dev/null || ok=0
    sleep 0.2 # let the last lines reach the monitor
    kill "$MONITOR_PID" 2>/dev/null || true
    wait "$MONITOR_PID" 2>/dev/null || true
    MONITOR_PID=
    if [ $ok = 0 ]; then
        log "$system monitored run (slots $slots) failed"
        return 0
    fi
    local sent inside polls
    sent=$(grep -cE '^[0-9.]+ \[[0-9]+ [^l]' "$mon" || true)
    inside=$(grep -cE '^[0-9.]+ \[[0-9]+ lua\]' "$mon" || true)
    # The kiln bench's reads of the queue counts: one SMEMBERS each.
    polls=$(grep -cE '^[0-9.]+ \[[0-9]+ [^l][^]]*\] "SMEMBERS" "kiln:services"' "$mon" || true)
    printf '{"system":"%s","bench":"commands_monitor","concurrency":%s,"jobs":%s,"sent":%s,"inside_scripts":%s,"polls":%s}\n' \
        "$system" "$slots" "$jobs" "$sent" "$inside" "$polls" >>"$RESULTS"
    rm -f "$mon"
}

BULLMQ=(node "$ROOT/bench/bullmq.mjs")
have_kiln() { [ -x "$BUILD/bench_$1" ] && { [ "$1" = claim_cost ] || [ -x "$BUILD/kiln" ]; }; }
have_kiln e2e || log "no $BUILD/kiln or $BUILD/bench_e2e: kiln throughput and latency skipped"
have_kiln claim_cost || log "no $BUILD/bench_claim_cost: claim cost skipped"

log "throughput: $JOBS no-op jobs per run, slots: $SLOTS"
for slots in $SLOTS; do
    record bullmq throughput "$slots" "$JOBS" -- "${BULLMQ[@]}" throughput --scratch "$SCRATCH" \
        --port "$PORT" --concurrency "$slots" --jobs "$JOBS"
    if have_kiln e2e; then
        record kiln throughput "$slots" "$JOBS" -- "$BUILD/bench_e2e" throughput --redis "$REDIS_URL" \
            --kiln "$BUILD/kiln" --concurrency "$slots" --jobs "$JOBS"
    fi
done

# What one read of the queue counts (the kiln bench's end-of-run wait) costs
# Redis, measured on the last run's data, so the report can take the reads
# out of kiln's commands per job.
if have_kiln e2e; then
    before=$(info_total)
    scripts_before=$(info_scripts)
    if timeout "$RUN_TIMEOUT" "$BUILD/bench_e2e" poll-cost --redis "$REDIS_URL" --jobs 200 >/dev/null; then
        printf '{"system":"kiln","bench":"commands_info","of":"poll_cost","concurrency":0,"jobs":200,"total":%s,"scripts":%s}\n' \
            $(($(info_total) - before - 2)) $(($(info_scripts) - scripts_before)) >>"$RESULTS"
    fi
fi

log "latency: $LATENCY_JOBS jobs at 100/s, idle worker"
record bullmq latency 1 "$LATENCY_JOBS" -- "${BULLMQ[@]}" latency --scratch "$SCRATCH" \
    --port "$PORT" --concurrency 1 --jobs "$LATENCY_JOBS" --interval-ms 10
if have_kiln e2e; then
    record kiln latency 1 "$LATENCY_JOBS" -- "$BUILD/bench_e2e" latency --redis "$REDIS_URL" \
        --kiln "$BUILD/kiln" --concurrency 1 --jobs "$LATENCY_JOBS" --interval-ms 10
fi

if have_kiln claim_cost; then
    log "claim cost: $CLAIMS claims per case"
    record kiln claim_cost 1 "$CLAIMS" -- "$BUILD/bench_claim_cost" --redis "$REDIS_URL" --claims "$CLAIMS"
fi

log "commands per job: $MONITOR_JOBS jobs per run under MONITOR"
for slots in $SLOTS; do
    monitored bullmq "$slots" "$MONITOR_JOBS" -- "${BULLMQ[@]}" throughput --scratch "$SCRATCH" \
        --port "$PORT" --concurrency "$slots" --jobs "$MONITOR_JOBS"
    if have_kiln e2e; then
        monitored kiln "$slots" "$MONITOR_JOBS" -- "$BUILD/bench_e2e" throughput --redis "$REDIS_URL" \
            --kiln "$BUILD/kiln" --concurrency "$slots" --jobs "$MONITOR_JOBS"
    fi
done

# ---- report ----------------------------------------------------------------

export BENCH_RESULTS=$RESULTS BENCH_OUT_FILE=$OUT REDIS_VERSION BULLMQ_VERSION IOREDIS_VERSION JOBS \
    LATENCY_JOBS MONITOR_JOBS CLAIMS
BENCH_NPROC=$(nproc)
BENCH_CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
[ -n "$BENCH_CPU" ] || BENCH_CPU=$(uname -m)
BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
export BENCH_NPROC BENCH_CPU BENCH_DATE BENCH_COMMIT

node - <<'EOF'
const fs = require('fs');
const env = process.env;
const rows = fs.readFileSync(env.BENCH_RESULTS, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const find = (q) => rows.find((r) => Object.entries(q).every(([k, v]) => r[k] === v));
const slots = [...new Set(rows.filter((r) => r.bench === 'throughput').map((r) => r.concurrency))].sort((a, b) => a - b);
const int = (n) => (n === undefined || n === null ? 'n/a' : Math.round(n).toLocaleString('en-US'));
const ms = (us) => (us === undefined ? 'n/a' : (us / 1000).toFixed(2) + ' ms');
const fix = (n, d = 1) => (n === undefined || n === null || !isFinite(n) ? 'n/a' : n.toFixed(d));
const ok = (cond) => (cond === undefined ? '' : cond ? ' (met)' : ' (**missed**)');

const out = [];
out.push('# Benchmarks: kiln vs BullMQ', '');
out.push('Generated by `bench/run.sh`; rerun with `make bench` (builds `./build`, starts a private');
out.push('`redis-server` on a free loopback port without persistence, installs BullMQ into');
out.push('`bench/.scratch/`, and rewrites this file). Both systems run against the same Redis in');
out.push('one run, one after the other, with `FLUSHALL` between runs. On a small shared machine the');
out.push('absolute numbers move from run to run (by up to a third on the 2-core machine below); the');
out.push('ratios within one run are the comparison.', '');
out.push(`- Machine: ${env.BENCH_CPU}, ${env.BENCH_NPROC} cores (nproc)`);
out.push(`- Date: ${env.BENCH_DATE}; kiln commit ${env.BENCH_COMMIT}`);
out.push(`- Redis ${env.REDIS_VERSION}; BullMQ ${env.BULLMQ_VERSION} (ioredis ${env.IOREDIS_VERSION}), Node ${process.version}`);
out.push('');

out.push('## End-to-end throughput (no-op jobs: submit → claim → complete)', '');
out.push(`${int(Number(env.JOBS))} jobs per run, submitted in batches of 1,000 while the worker runs; time from`);
out.push('the first submit to the last completion. kiln: `kiln worker` with a `simulation` connector');
out.push('(duration 0); BullMQ: a `Worker` with an empty async processor in its own Node process.', '');
out.push('| slots | kiln jobs/s | BullMQ jobs/s | kiln / BullMQ (target ≥ 2×) |');
out.push('|---:|---:|---:|---:|');
for (const s of slots) {
  const k = find({ system: 'kiln', bench: 'throughput', concurrency: s });
  const b = find({ system: 'bullmq', bench: 'throughput', concurrency: s });
  const ratio = k && b ? k.jobs_per_s / b.jobs_per_s : undefined;
  out.push(`| ${s} | ${int(k?.jobs_per_s)} | ${int(b?.jobs_per_s)} | ${ratio ? fix(ratio, 2) + '×' + ok(ratio >= 2) : 'n/a'} |`);
}
out.push('');

out.push('## Submit-to-start latency (100 jobs/s, idle worker)', '');
const kl = find({ system: 'kiln', bench: 'latency' });
const bl = find({ system: 'bullmq', bench: 'latency' });
out.push(`${int(Number(env.LATENCY_JOBS))} jobs, one every 10 ms on a fixed schedule, to an idle worker with one slot; the first 20`);
out.push('are left out as warm-up. BullMQ: from the start of `queue.add` to the start of the processor,');
out.push(`on the machine's monotonic clock. kiln: ${kl?.method ?? 'n/a (not measured in this run)'}.`, '');
out.push('| | kiln | BullMQ | target |');
out.push('|---|---:|---:|---|');
for (const p of ['p50', 'p99']) {
  const k = kl?.[`${p}_us`], b = bl?.[`${p}_us`];
  out.push(`| ${p} | ${ms(k)} | ${ms(b)} | kiln below BullMQ${k !== undefined && b !== undefined ? ok(k < b) : ''} |`);
}
out.push('');

out.push('## Claim cost with many requirement classes (kiln)', '');
const cc = find({ bench: 'claim_cost' });
out.push(`One claim of the only job the worker can run; ${int(Number(env.CLAIMS))} timed claims per case, each followed by a`);
out.push('release that puts the job back (the release is not timed).', '');
out.push('| queue | µs per claim, median | mean |');
out.push('|---|---:|---:|');
out.push(`| ${cc ? int(cc.mixed_pending) : '10,000'} pending jobs in ${cc ? cc.mixed_classes : 50} requirement classes, one class matches | ${fix(cc?.mixed_us, 1)} | ${fix(cc?.mixed_mean_us, 1)} |`);
out.push(`| only the matching job | ${fix(cc?.single_us, 1)} | ${fix(cc?.single_mean_us, 1)} |`);
out.push(`| ratio of medians (target ≤ 2) | ${cc ? fix(cc.ratio, 2) + ok(cc.ratio <= 2) : 'n/a'} | ${cc ? fix(cc.mixed_mean_us / cc.single_mean_us, 2) : 'n/a'} |`);
out.push('');

out.push('## Redis commands per job', '');
out.push('*Sent*: commands clients sent to Redis per job (counted with `MONITOR` in a separate run of');
out.push(`${int(Number(env.MONITOR_JOBS))} jobs; each sent command is at most one round trip, fewer when pipelined).`);
out.push('*Script calls*: `EVALSHA`/`EVAL`/`FCALL` per job, and *executed*: `total_commands_processed`');
out.push('per job, commands run inside scripts included (both from `INFO` deltas over the timed throughput run).', '');
out.push('| slots | kiln sent | BullMQ sent | kiln script calls | BullMQ script calls | kiln executed | BullMQ executed |');
out.push('|---:|---:|---:|---:|---:|---:|---:|');
// The kiln bench reads the queue counts to see the end of a run; those reads
// are not part of a job's life, so they are taken out: in the MONITOR runs
// each read shows as one SMEMBERS plus one stats script call; in the timed
// runs each costs what the poll-cost calibration measured.
const pc = find({ system: 'kiln', bench: 'commands_info', of: 'poll_cost' });
for (const s of slots) {
  const cell = (system, field) => {
    if (field === 'sent') {
      const m = find({ system, bench: 'commands_monitor', concurrency: s });
      return m ? fix((m.sent - 2 * (m.polls || 0)) / m.jobs, 2) : 'n/a';
    }
    const i = find({ system, bench: 'commands_info', of: 'throughput', concurrency: s });
    const done = find({ system, bench: 'throughput', concurrency: s });
    if (!i || !done) return 'n/a';
    let count = i[field];
    if (system === 'kiln') {
      if (!pc) return 'n/a';
      count -= (done.polls || 0) * (pc[field] / pc.jobs);
    }
    return fix(count / i.jobs, 2);
  };
  out.push(`| ${s} | ${cell('kiln', 'sent')} | ${cell('bullmq', 'sent')} | ${cell('kiln', 'scripts')} | ${cell('bullmq', 'scripts')} | ${cell('kiln', 'total')} | ${cell('bullmq', 'total')} |`);
}
out.push('');
const kt = rows.filter((r) => r.system === 'kiln' && r.bench === 'throughput');
if (kt.length && pc) {
  const polls = kt.reduce((a, r) => a + (r.polls || 0), 0), jobs = kt.reduce((a, r) => a + r.jobs, 0);
  out.push('kiln\'s figures leave out the benchmark\'s own reads of the queue counts (how it sees the end of');
  out.push(`a run; BullMQ's worker reports completions over IPC instead): ${int(polls)} reads over ${int(jobs)} timed jobs, each`);
  out.push(`one \`SMEMBERS\` and one stats script, ${fix(pc.total / pc.jobs, 1)} commands executed in all (measured separately).`, '');
}
out.push('Speed targets are reported here, never asserted in tests.', '');

const text = out.join('\n');
fs.writeFileSync(env.BENCH_OUT_FILE, text);
process.stdout.write(text);
EOF
log "wrote $OUT"
[ "${BENCH_AGENT:-1}" = 0 ] || BUILD=$BUILD BENCH_OUT=$OUT "$ROOT/bench/agent.sh" || log "bench/agent.sh failed (BENCH_AGENT=0 skips it)"
[ "${BENCH_OPENAI:-1}" = 0 ] || BUILD=$BUILD BENCH_OUT=$OUT "$ROOT/bench/openai.sh" || log "bench/openai.sh failed (BENCH_OPENAI=0 skips it)"
[ "${BENCH_MONITOR:-1}" = 0 ] || BUILD=$BUILD BENCH_OUT=$OUT "$ROOT/bench/monitor_render.sh" || log "bench/monitor_render.sh failed (BENCH_MONITOR=0 skips it)"
[ "${BENCH_HUB_FANOUT:-1}" = 0 ] || BUILD=$BUILD BENCH_OUT=$OUT "$ROOT/bench/hub_fanout.sh" || log "bench/hub_fanout.sh failed (BENCH_HUB_FANOUT=0 skips it)"

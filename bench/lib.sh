# Sourced by the bench scripts: a private redis-server for one run (each
# script keeps REDIS_PID for its cleanup), the commit label of a report, and
# rewriting one section of BENCHMARKS.md between its markers.

# bench_redis_start DIR: starts redis-server without persistence on a free
# loopback port, its files and log in DIR; sets PORT and REDIS_PID. Exits
# with the log when it does not answer within 5 s.
bench_redis_start() {
    local dir=$1
    PORT=$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$PORT" --dir "$dir" --save "" --appendonly no \
        --logfile "$dir/redis.log" --daemonize no &
    REDIS_PID=$!
    for _ in $(seq 100); do
        [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.05
    done
    cat "$dir/redis.log" >&2
    printf 'bench: redis-server did not start on port %s\n' "$PORT" >&2
    exit 1
}

# bench_redis_stop: stops the redis-server bench_redis_start started.
bench_redis_stop() {
    if [ -n "${REDIS_PID:-}" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
}

# bench_write_section OUT SECTION_FILE START END: replaces the part of OUT
# between the START and END marker lines (markers included) with
# SECTION_FILE's text, or appends it when OUT has no such part; prints it.
# bench_commit_label PATH...: the short commit of the checkout, with " with
# uncommitted changes" when any of the PATHs (relative to ROOT) differ from it,
# for a report's "kiln commit" line.
bench_commit_label() {
    local label
    label=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$ROOT" status --porcelain -- "$@" 2>/dev/null)" ]; then
        label="$label with uncommitted changes"
    fi
    echo "$label"
}

bench_write_section() {
    python3 - "$@" <<'PYEOF'
import sys
out, section_file, start, end = sys.argv[1:]
section = open(section_file).read().rstrip('\n')
try:
    text = open(out).read()
except FileNotFoundError:
    text = ''
a, b = text.find(start), text.find(end)
if a >= 0 and b > a:
    text = text[:a] + section + text[b + len(end):]
else:
    text = (text.rstrip('\n') + '\n\n' if text else '') + section + '\n'
open(out, 'w').write(text)
print(section)
PYEOF
}

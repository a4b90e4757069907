# Sourced by the bench scripts (run.sh, agent.sh, openai.sh): a private
# redis-server for one run. Each script keeps REDIS_PID for its cleanup.

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

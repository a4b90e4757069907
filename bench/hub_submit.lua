-- wrk script for bench/hub_submit.sh: POST /v1/jobs with a small job, on
-- keep-alive connections. No response() callback: wrk would build a Lua
-- table for every reply, CPU taken from the hub on a 2-core machine; wrk
-- counts error statuses itself and the script checks the jobs in Redis.
wrk.method = "POST"
wrk.body = '{"service":"bench","payload":{"prompt":"a red fox","steps":20}}'
wrk.headers["Content-Type"] = "application/json"
if os.getenv("HUB_TOKEN") then
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("HUB_TOKEN")
end

done = function(summary, latency, requests)
    io.write(string.format("p50_ms %.3f\np99_ms %.3f\n", latency:percentile(50) / 1000,
                           latency:percentile(99) / 1000))
end

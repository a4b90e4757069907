-- wrk script for bench/hub_submit.sh: POST /v1/jobs with a small job, on
-- keep-alive connections; counts replies other than 201.
wrk.method = "POST"
wrk.body = '{"service":"bench","payload":{"prompt":"a red fox","steps":20}}'
wrk.headers["Content-Type"] = "application/json"
if os.getenv("HUB_TOKEN") then
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("HUB_TOKEN")
end

local refused = 0
response = function(status, headers, body)
    if status ~= 201 then
        refused = refused + 1
    end
end

done = function(summary, latency, requests)
    io.write(string.format("p50_ms %.3f\np99_ms %.3f\n", latency:percentile(50) / 1000,
                           latency:percentile(99) / 1000))
end

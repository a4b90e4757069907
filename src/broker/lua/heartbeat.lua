-- heartbeat: renews the leases of a worker's running jobs.
-- ARGV[10] number of jobs n, then per job: id, token.
-- Returns per job 'ok', 'cancelled', 'lost' or 'missing'; a job whose
-- status is not 'ok' must be stopped by the worker.
local now = now_ms()
local n = tonumber(ARGV[OP])
local out = {}
for i = 0, n - 1 do
    local id, token = ARGV[OP + 1 + i * 2], ARGV[OP + 2 + i * 2]
    local problem = lease_problem(id, token)
    if problem then
        out[#out + 1] = problem
    else
        local lease_until = int(now + LEASE_MS)
        redis.call('HSET', jkey(id), 'lease_until', lease_until)
        redis.call('ZADD', K_RUNNING, lease_until, id)
        out[#out + 1] = 'ok'
    end
end
return out

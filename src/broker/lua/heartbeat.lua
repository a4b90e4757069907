-- heartbeat: renews the leases of a worker's running jobs.
-- ARGV[10] number of jobs n, then per job: id, token.
-- Returns per job 'ok', 'cancelled', 'lost' or 'missing'; a job whose
-- status is not 'ok' must be stopped by the worker.
local now = now_ms()
local n = tonumber(ARGV[OP])
local ids = {}
for i = 0, n - 1 do
    ids[#ids + 1] = ARGV[OP + 1 + i * 2]
end
local tokens = redis.call('HMGET', K_LEASES, unpack(ids))
local out, renew = {}, {'ZADD', K_RUNNING}
local lease_until = int(now + LEASE_MS)
for i = 1, n do
    if tokens[i] == ARGV[OP + i * 2] then
        renew[#renew + 1] = lease_until
        renew[#renew + 1] = ids[i]
        out[i] = 'ok'
    else
        out[i] = lease_problem(ids[i])
    end
end
if #renew > 2 then
    redis.call(unpack(renew))
end
return out

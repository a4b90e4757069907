-- heartbeat: renews the leases of a worker's running jobs.
-- ARGV[10] number of jobs n, then per job: id, token.
-- Returns per job 'ok', 'cancelled', 'lost' or 'missing'; a job whose
-- status is not 'ok' must be stopped by the worker.
local now = now_ms()
local n = tonumber(ARGV[OP])
local ids, members = {}, {}
for i = 1, n do
    ids[i] = ARGV[OP + 1 + (i - 1) * 2]
    members[i] = lease_member(ids[i], ARGV[OP + i * 2])
end
local leases = redis.call('ZMSCORE', K_RUNNING, unpack(members))
local out, renew = {}, {'ZADD', K_RUNNING, 'XX'}
local lease_until = int(now + LEASE_MS)
for i = 1, n do
    if leases[i] then
        renew[#renew + 1] = lease_until
        renew[#renew + 1] = members[i]
        out[i] = 'ok'
    else
        out[i] = lease_problem(ids[i])
    end
end
if #renew > 3 then
    redis.call(unpack(renew))
end
return out

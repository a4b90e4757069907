-- progress: records progress of running jobs.
-- ARGV[10] number of updates n, then per update: id, token, percent (0-100),
-- message. Returns per update 'ok', 'cancelled', 'lost' or 'missing'.
local n = tonumber(ARGV[OP])
local ids = {}
for i = 0, n - 1 do
    ids[#ids + 1] = ARGV[OP + 1 + i * 4]
end
local tokens = redis.call('HMGET', K_LEASES, unpack(ids))
local out = {}
for i = 1, n do
    local a = OP + 1 + (i - 1) * 4
    local id, percent, message = ARGV[a], ARGV[a + 2], ARGV[a + 3]
    if tokens[i] == ARGV[a + 1] then
        redis.call('HSET', jkey(id), 'progress', percent, 'progress_msg', message)
        emit(id, 'progress', 'running', {'progress', percent, 'message', message})
        out[i] = 'ok'
    else
        out[i] = lease_problem(id)
    end
end
return out

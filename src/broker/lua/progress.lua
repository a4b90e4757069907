-- progress: records progress of running jobs.
-- ARGV[10] number of updates n, then per update: id, token, percent (0-100),
-- message. Returns per update 'ok', 'cancelled', 'lost' or 'missing'.
local n = tonumber(ARGV[OP])
local members = {}
for i = 1, n do
    local a = OP + 1 + (i - 1) * 4
    members[i] = lease_member(ARGV[a], ARGV[a + 1])
end
local leases = redis.call('ZMSCORE', K_RUNNING, unpack(members))
local out = {}
for i = 1, n do
    local a = OP + 1 + (i - 1) * 4
    local id, percent, message = ARGV[a], ARGV[a + 2], ARGV[a + 3]
    if leases[i] then
        redis.call('HSET', jkey(id), 'progress', percent, 'progress_msg', message)
        emit(id, 'progress', 'running', {'progress', percent, 'message', message})
        out[i] = 'ok'
    else
        out[i] = lease_problem(id)
    end
end
return out

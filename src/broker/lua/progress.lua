-- progress: records progress of running jobs.
-- ARGV[10] number of updates n, then per update: id, token, percent (0-100),
-- message. Returns per update 'ok', 'cancelled', 'lost' or 'missing'.
local n = tonumber(ARGV[OP])
local out = {}
for i = 0, n - 1 do
    local a = OP + 1 + i * 4
    local id, token, percent, message = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
    local problem = lease_problem(id, token)
    if problem then
        out[#out + 1] = problem
    else
        redis.call('HSET', jkey(id), 'progress', percent, 'progress_msg', message)
        emit(id, 'progress', 'running', {'progress', percent, 'message', message})
        out[#out + 1] = 'ok'
    end
end
return out

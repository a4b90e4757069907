-- retry: ARGV[10] job id. A failed, dead or cancelled job goes back to
-- pending with its attempts reset. Returns 'ok', 'missing' or
-- 'state:<state>' when the job is not in a retryable state.
local id = ARGV[OP]
local now = now_ms()
local state = redis.call('HGET', jkey(id), 'state')
if not state then
    return 'missing'
end
if state ~= 'failed' and state ~= 'dead' and state ~= 'cancelled' then
    return 'state:' .. state
end
redis.call('ZREM', P .. state, id)
redis.call('HSET', jkey(id), 'attempts', 0, 'error', '', 'result', '', 'finished', 0, 'progress', 0)
make_pending(id, now, 'retried', nil)
redis.call('PUBLISH', CHANNEL, 'work')
return 'ok'

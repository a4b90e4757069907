-- cancel: ARGV[10] job id. Pending and delayed jobs are cancelled at once;
-- a running job is cancelled and its worker told on the notify channel
-- ('cancel <id>'); its later reports are refused.
-- Returns 'ok', 'missing' or 'state:<state>' for a job already finished.
local id = ARGV[OP]
local now = now_ms()
local f = redis.call('HMGET', jkey(id), 'state', 'class', 'token')
local state = f[1]
if not state then
    return 'missing'
end
if state == 'pending' then
    remove_pending(id, f[2])
elseif state == 'delayed' then
    redis.call('ZREM', K_DELAYED, id)
elseif state == 'running' then
    redis.call('ZREM', K_RUNNING, lease_member(id, f[3]))
    redis.call('PUBLISH', CHANNEL, 'cancel ' .. id)
else
    return 'state:' .. state
end
finish(id, 'cancelled', now, {'error', 'cancelled', 'worker', ''})
emit(id, 'cancelled', 'cancelled', {'previous', state})
trim_touched(now, false)
return 'ok'

-- submit: adds jobs to the queue.
-- ARGV[10]   number of jobs n
-- then per job, 10 values:
--   idempotency key ('' = none), priority, class id, class definition JSON,
--   payload JSON, max attempts, run_at ms (0 = now), delay ms, customer id,
--   timeout ms
-- Returns a flat list: per job its id and 1 when an idempotency key matched
-- an earlier job (then nothing was written for it), else 0.
local n = tonumber(ARGV[OP])
local now = now_ms()
local out = {}
local added = false
for i = 0, n - 1 do
    local a = OP + 1 + i * 10
    local idem = ARGV[a]
    local existing = false
    if idem ~= '' then
        existing = redis.call('GET', P .. 'idem:' .. idem)
    end
    if existing then
        out[#out + 1] = existing
        out[#out + 1] = 1
    else
        local seq = redis.call('INCR', P .. 'seq')
        local id = SERVICE .. '.' .. seq
        local priority = tonumber(ARGV[a + 1])
        -- One scoring rule: higher priority first, then submission order.
        local score = int((1000 - priority) * 1099511627776 + seq)
        local class, classdef = ARGV[a + 2], ARGV[a + 3]
        local run_at = tonumber(ARGV[a + 6])
        local delay = tonumber(ARGV[a + 7])
        if delay > 0 then
            run_at = now + delay
        end
        local state = 'pending'
        if run_at > now then
            state = 'delayed'
        end
        redis.call('HSET', jkey(id), 'id', id, 'service', SERVICE, 'state', state,
                   'priority', priority, 'score', score, 'class', class, 'classdef', classdef,
                   'payload', ARGV[a + 4], 'attempts', 0, 'max_attempts', ARGV[a + 5],
                   'created', int(now), 'run_at', int(math.max(run_at, now)), 'customer', ARGV[a + 8],
                   'timeout_ms', ARGV[a + 9], 'idem', idem, 'progress', 0, 'claims', 0)
        if state == 'pending' then
            push_pending(id, class, score, classdef)
        else
            redis.call('ZADD', K_DELAYED, int(run_at), id)
        end
        if idem ~= '' then
            redis.call('SET', P .. 'idem:' .. idem, id, 'PX', RETAIN_AGE_MS)
        end
        emit(id, 'submitted', state, nil)
        added = true
        out[#out + 1] = id
        out[#out + 1] = 0
    end
end
if added then
    redis.call('PUBLISH', CHANNEL, 'work')
end
return out

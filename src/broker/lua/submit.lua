-- submit: adds jobs to the queue.
-- ARGV[10]   number of jobs n
-- then per job, 11 values:
--   idempotency key ('' = none), priority, class id, class definition JSON,
--   payload JSON, max attempts, run_at ms (0 = now), delay ms, customer id,
--   timeout ms, webhook URL ('' = none)
-- Returns a flat list: per job its id and 1 when an idempotency key matched
-- an earlier job (then nothing was written for it), else 0.
local n = tonumber(ARGV[OP])
local now = now_ms()
local out = {}
local added_pending, added_delayed = false, false
-- Sequence numbers for the whole batch in one step (a duplicate leaves a gap).
local first_seq = redis.call('INCRBY', P .. 'seq', n) - n
-- Each class's new pending jobs, added with one ZADD per class.
local class_adds, class_def = {}, {}
for i = 0, n - 1 do
    local a = OP + 1 + i * 11
    local idem = ARGV[a]
    local existing = false
    if idem ~= '' then
        existing = redis.call('GET', P .. 'idem:' .. idem)
    end
    if existing then
        out[#out + 1] = existing
        out[#out + 1] = 1
    else
        local seq = first_seq + i + 1
        local id = SERVICE .. '.' .. int(seq)
        local priority = tonumber(ARGV[a + 1])
        -- One scoring rule: higher priority first, then submission order.
        local score = (1000 - priority) * 1099511627776 + seq
        local class = ARGV[a + 2]
        local run_at = tonumber(ARGV[a + 6])
        local delay = tonumber(ARGV[a + 7])
        if delay > 0 then
            run_at = now + delay
        end
        local state = 'pending'
        if run_at > now then
            state = 'delayed'
        end
        local fields = {'HSET', jkey(id), 'state', state, 'priority', priority, 'score', int(score),
                        'class', class, 'classdef', ARGV[a + 3], 'payload', ARGV[a + 4],
                        'max_attempts', ARGV[a + 5], 'created', int(now)}
        if state == 'delayed' then
            fields[#fields + 1] = 'run_at'
            fields[#fields + 1] = int(run_at)
        end
        local optional = {'customer', ARGV[a + 8], 'timeout_ms', ARGV[a + 9], 'idem', idem,
                          'webhook_url', ARGV[a + 10]}
        for o = 1, #optional, 2 do
            local v = optional[o + 1]
            if v ~= '' and v ~= '0' then
                fields[#fields + 1] = optional[o]
                fields[#fields + 1] = v
            end
        end
        redis.call(unpack(fields))
        if state == 'pending' then
            added_pending = true
            local adds = class_adds[class]
            if not adds then
                adds = {'ZADD', class_key(class)}
                class_adds[class] = adds
            end
            adds[#adds + 1] = int(score)
            adds[#adds + 1] = id
            class_def[class] = ARGV[a + 3]
        else
            added_delayed = true
            redis.call('ZADD', K_DELAYED, int(run_at), id)
        end
        if idem ~= '' then
            redis.call('SET', P .. 'idem:' .. idem, id, 'PX', RETAIN_AGE_MS)
        end
        emit(id, 'submitted', state, nil)
        out[#out + 1] = id
        out[#out + 1] = 0
    end
end
for class, adds in pairs(class_adds) do
    redis.call(unpack(adds))
    ensure_class(class, class_def[class], now)
end
-- 'work' wakes idle workers to claim; 'due' makes them look up when the
-- earliest delayed job is due.
if added_pending then
    redis.call('PUBLISH', CHANNEL, 'work')
elseif added_delayed then
    redis.call('PUBLISH', CHANNEL, 'due')
end
return out

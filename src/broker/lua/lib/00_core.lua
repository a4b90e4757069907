-- kiln broker library, part 1: keys, time, events, pending classes.
-- Prepended (with the other lib/ files) to every operation script.
--
-- Every script is called with one key and a common ARGV header:
--   KEYS[1]  kiln:{SERVICE}:seq   (routes the call; all keys share {SERVICE})
--   ARGV[1]  key prefix "kiln:{SERVICE}:"
--   ARGV[2]  event stream MAXLEN (approximate)
--   ARGV[3]  retention age of finished jobs, ms
--   ARGV[4]  retention count of finished jobs
--   ARGV[5]  retry backoff base, ms
--   ARGV[6]  retry backoff max, ms
--   ARGV[7]  lease, ms
--   ARGV[8]  a random number in [0,1) for jitter (scripts are deterministic)
--   ARGV[9]  service name
-- Operation arguments start at ARGV[10].
local P = ARGV[1]
local STREAM_MAX = ARGV[2]
local RETAIN_AGE_MS = tonumber(ARGV[3])
local RETAIN_COUNT = tonumber(ARGV[4])
local BACKOFF_BASE_MS = tonumber(ARGV[5])
local BACKOFF_MAX_MS = tonumber(ARGV[6])
local LEASE_MS = tonumber(ARGV[7])
local JITTER = tonumber(ARGV[8])
local SERVICE = ARGV[9]
local OP = 10

local K_CLASSES = P .. 'classes'
local K_DELAYED = P .. 'delayed'
local K_RUNNING = P .. 'running'
-- One retention set per final state, scored by finish time.
local FINAL_STATES = {'completed', 'failed', 'cancelled', 'dead'}
local K_STREAM = P .. 'events'
local CHANNEL = P .. 'notify'
-- Scores must reach Redis as exact integers: Lua's default number
-- formatting keeps only 14 significant digits.
local function int(n)
    return string.format('%d', n)
end

local function jkey(id)
    return P .. 'job:' .. id
end

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Appends a transition to the queue's bounded event stream.
local function emit(id, kind, state, extra)
    local args = {'XADD', K_STREAM, 'MAXLEN', '~', STREAM_MAX, '*',
                  'job', id, 'type', kind, 'state', state}
    if extra then
        for i = 1, #extra do
            args[#args + 1] = extra[i]
        end
    end
    redis.call(unpack(args))
end

local function class_key(class)
    return P .. 'pending:' .. class
end

-- Re-scores a class by its best pending job, or forgets an empty class.
local function refresh_class(class)
    local head = redis.call('ZRANGE', class_key(class), 0, 0, 'WITHSCORES')
    if #head == 0 then
        redis.call('ZREM', K_CLASSES, class)
        redis.call('DEL', P .. 'class:' .. class)
    else
        redis.call('ZADD', K_CLASSES, head[2], class)
    end
end

-- Puts job id into its class's pending set, creating the class if needed.
local function push_pending(id, class, score, classdef)
    redis.call('ZADD', class_key(class), score, id)
    local current = redis.call('ZSCORE', K_CLASSES, class)
    if not current then
        redis.call('SET', P .. 'class:' .. class, classdef)
        redis.call('ZADD', K_CLASSES, score, class)
    elseif tonumber(current) > tonumber(score) then
        redis.call('ZADD', K_CLASSES, score, class)
    end
end

local function remove_pending(id, class)
    if redis.call('ZREM', class_key(class), id) == 1 then
        refresh_class(class)
    end
end

-- Deletes finished jobs past the retention age or count (at most 100 a call,
-- so one call's cost stays bounded; later calls catch up).
local function trim_finished(zkey, now)
    local victims = redis.call('ZRANGEBYSCORE', zkey, '-inf', int(now - RETAIN_AGE_MS), 'LIMIT', 0, 100)
    local excess = redis.call('ZCARD', zkey) - RETAIN_COUNT
    if excess > 0 then
        local oldest = redis.call('ZRANGE', zkey, 0, math.min(excess, 100) - 1)
        for i = 1, #oldest do
            victims[#victims + 1] = oldest[i]
        end
    end
    for i = 1, #victims do
        local id = victims[i]
        local idem = redis.call('HGET', jkey(id), 'idem')
        if idem and idem ~= '' then
            redis.call('DEL', P .. 'idem:' .. idem)
        end
        redis.call('DEL', jkey(id))
        redis.call('ZREM', zkey, id)
    end
end

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
-- Running jobs by lease expiry. A member is '<job id>|<claim token>', so
-- one ZMSCORE both finds a lease and proves the token holds it.
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

local function lease_member(id, token)
    return id .. '|' .. token
end

local function lease_job(member)
    return string.match(member, '^([^|]*)')
end

-- Forgets a class whose pending set is empty.
local function forget_class_if_empty(class)
    if redis.call('EXISTS', class_key(class)) == 0 then
        redis.call('ZREM', K_CLASSES, class)
        redis.call('DEL', P .. 'class:' .. class)
    end
end

-- Registers a class (scored by when it first had pending jobs) and its
-- definition, if it is not known yet.
local function ensure_class(class, classdef, now)
    if redis.call('ZADD', K_CLASSES, 'NX', int(now), class) == 1 then
        redis.call('SET', P .. 'class:' .. class, classdef)
    end
end

-- Puts job id into its class's pending set, registering the class if needed.
local function push_pending(id, class, score, classdef, now)
    redis.call('ZADD', class_key(class), score, id)
    ensure_class(class, classdef, now)
end

local function remove_pending(id, class)
    if redis.call('ZREM', class_key(class), id) == 1 then
        forget_class_if_empty(class)
    end
end

-- Deletes finished jobs past the retention count and, when by_age, past
-- the retention age; at most 1000 a call so one call's cost stays bounded
-- (later calls catch up). Idempotency keys expire on their own TTL.
local function trim_finished(zkey, now, by_age)
    local excess = redis.call('ZCARD', zkey) - RETAIN_COUNT
    if excess > 0 then
        excess = math.min(excess, 1000)
        local victims = redis.call('ZRANGE', zkey, 0, excess - 1)
        for i = 1, #victims do
            victims[i] = jkey(victims[i])
        end
        redis.call('DEL', unpack(victims))
        redis.call('ZREMRANGEBYRANK', zkey, 0, excess - 1)
    end
    if by_age then
        local cutoff = int(now - RETAIN_AGE_MS)
        local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff, 'LIMIT', 0, 1000)
        if #old > 0 then
            -- Exactly the ids whose records are deleted leave the set.
            redis.call('ZREM', zkey, unpack(old))
            for i = 1, #old do
                old[i] = jkey(old[i])
            end
            redis.call('DEL', unpack(old))
        end
    end
end

-- Final-state sets written by this call; trimmed once at its end.
local touched_final = {}

local function trim_touched(now, by_age)
    for zkey, _ in pairs(touched_final) do
        trim_finished(zkey, now, by_age)
    end
end

-- kiln broker library, part 3: the job lifecycle shared by the operations.

-- Moves a job to a final state and records it for retention.
local function finish(id, state, now, fields)
    local args = {'HSET', jkey(id), 'state', state, 'finished', int(now), 'token', ''}
    for i = 1, #fields do
        args[#args + 1] = fields[i]
    end
    redis.call(unpack(args))
    local zkey = P .. state
    redis.call('ZADD', zkey, int(now), id)
    trim_finished(zkey, now)
end

local function make_pending(id, now, kind, extra)
    local f = redis.call('HMGET', jkey(id), 'class', 'score', 'classdef')
    redis.call('HSET', jkey(id), 'state', 'pending', 'token', '', 'worker', '', 'lease_until', 0)
    push_pending(id, f[1], f[2], f[3])
    emit(id, kind, 'pending', extra)
end

-- Due delayed jobs (run_at or retry backoff passed) become pending.
local function promote_delayed(now, limit)
    local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', int(now), 'LIMIT', 0, limit)
    for i = 1, #due do
        redis.call('ZREM', K_DELAYED, due[i])
        make_pending(due[i], now, 'ready', nil)
    end
    return #due
end

-- Jobs whose lease expired go back to pending (the attempt, counted at
-- claim, stays counted) or, out of attempts, to dead.
local function recover_stalled(now, limit)
    local expired = redis.call('ZRANGEBYSCORE', K_RUNNING, '-inf', int(now), 'LIMIT', 0, limit)
    local moved = 0
    for i = 1, #expired do
        local id = expired[i]
        redis.call('ZREM', K_RUNNING, id)
        local f = redis.call('HMGET', jkey(id), 'attempts', 'max_attempts', 'worker')
        local err = 'lease expired: worker ' .. (f[3] or '?') .. ' stopped heartbeating'
        if tonumber(f[1]) >= tonumber(f[2]) then
            finish(id, 'dead', now, {'error', err, 'retryable', '1'})
            emit(id, 'dead', 'dead', {'error', err})
        else
            redis.call('HSET', jkey(id), 'error', err)
            make_pending(id, now, 'stalled', {'error', err})
            moved = moved + 1
        end
    end
    return moved
end

local function next_due()
    local first = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
    if #first == 0 then
        return 0
    end
    return tonumber(first[2])
end

-- Leases job id to worker; returns the claim as a flat list.
local function start_job(id, now, worker)
    local k = jkey(id)
    local claims = redis.call('HINCRBY', k, 'claims', 1)
    local attempt = redis.call('HINCRBY', k, 'attempts', 1)
    local token = worker .. '/' .. claims
    local lease_until = now + LEASE_MS
    redis.call('HSET', k, 'state', 'running', 'worker', worker, 'token', token, 'started', int(now),
               'lease_until', int(lease_until), 'progress', 0, 'progress_msg', '')
    redis.call('ZADD', K_RUNNING, int(lease_until), id)
    emit(id, 'started', 'running', {'worker', worker, 'attempt', attempt})
    local f = redis.call('HMGET', k, 'max_attempts', 'timeout_ms', 'payload')
    return {id, token, attempt, tonumber(f[1]), tonumber(f[2]), f[3]}
end

-- The classes of pending jobs this worker can run, best head first.
-- Matching is evaluated once per (class, capability set) and cached, so a
-- claim costs one lookup per class, whatever the number of pending jobs.
local function matching_classes(caps_json, caps_hash)
    local classes = redis.call('ZRANGE', K_CLASSES, 0, 999)
    if #classes == 0 then
        return classes
    end
    local cache_key = P .. 'match:' .. caps_hash
    local cached = redis.call('HMGET', cache_key, unpack(classes))
    local caps = nil
    local matching = {}
    for i, class in ipairs(classes) do
        local m = cached[i]
        if not m then
            caps = caps or cjson.decode(caps_json)
            local def = redis.call('GET', P .. 'class:' .. class)
            m = '0'
            if def and class_matches(cjson.decode(def), caps) then
                m = '1'
            end
            redis.call('HSET', cache_key, class, m)
            redis.call('PEXPIRE', cache_key, 86400000)
        end
        if m == '1' then
            matching[#matching + 1] = class
        end
    end
    return matching
end

-- Claims up to max runnable jobs, best score first across matching classes.
local function claim_jobs(now, worker, caps_json, caps_hash, max)
    local out = {}
    if max <= 0 then
        return out
    end
    local classes = matching_classes(caps_json, caps_hash)
    local heads = {}
    for i, class in ipairs(classes) do
        local h = redis.call('ZRANGE', class_key(class), 0, 0, 'WITHSCORES')
        heads[i] = h
    end
    for _ = 1, max do
        local best = nil
        for i = 1, #classes do
            local h = heads[i]
            if #h > 0 and (best == nil or tonumber(h[2]) < tonumber(heads[best][2])) then
                best = i
            end
        end
        if best == nil then
            break
        end
        local class = classes[best]
        local id = heads[best][1]
        redis.call('ZREM', class_key(class), id)
        heads[best] = redis.call('ZRANGE', class_key(class), 0, 0, 'WITHSCORES')
        out[#out + 1] = start_job(id, now, worker)
    end
    for i = 1, #classes do
        refresh_class(classes[i])
    end
    return out
end

-- Checks that token holds job id's lease. Returns nil when it does, else
-- the reason: 'cancelled', 'lost' or 'missing'.
local function lease_problem(id, token)
    local f = redis.call('HMGET', jkey(id), 'state', 'token')
    if not f[1] then
        return 'missing'
    end
    if f[1] == 'running' and f[2] == token then
        return nil
    end
    if f[1] == 'cancelled' then
        return 'cancelled'
    end
    return 'lost'
end

local function complete_job(id, token, result, now)
    local problem = lease_problem(id, token)
    if problem then
        return problem
    end
    redis.call('ZREM', K_RUNNING, id)
    finish(id, 'completed', now, {'result', result, 'progress', 100, 'error', ''})
    emit(id, 'completed', 'completed', nil)
    return 'ok'
end

-- A retryable failure with attempts left waits out an exponential backoff
-- with equal jitter; otherwise the job fails (not retryable) or dies.
local function fail_job(id, token, message, retryable, now)
    local problem = lease_problem(id, token)
    if problem then
        return problem
    end
    redis.call('ZREM', K_RUNNING, id)
    local f = redis.call('HMGET', jkey(id), 'attempts', 'max_attempts')
    local attempts, max_attempts = tonumber(f[1]), tonumber(f[2])
    if retryable and attempts < max_attempts then
        local delay = math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ^ (attempts - 1))
        delay = math.floor(delay / 2 + delay / 2 * JITTER)
        redis.call('HSET', jkey(id), 'state', 'delayed', 'token', '', 'error', message,
                   'retryable', '1', 'run_at', int(now + delay))
        redis.call('ZADD', K_DELAYED, int(now + delay), id)
        emit(id, 'retry_scheduled', 'delayed', {'error', message, 'delay_ms', delay})
        return 'ok'
    end
    local state = 'failed'
    if retryable then
        state = 'dead'
    end
    finish(id, state, now, {'error', message, 'retryable', retryable and '1' or '0'})
    emit(id, state, state, {'error', message})
    return 'ok'
end

-- Returns a running job to pending without counting the attempt.
local function release_job(id, token, now)
    local problem = lease_problem(id, token)
    if problem then
        return problem
    end
    redis.call('ZREM', K_RUNNING, id)
    redis.call('HINCRBY', jkey(id), 'attempts', -1)
    make_pending(id, now, 'released', nil)
    return 'ok'
end

-- kiln broker library, part 3: the job lifecycle shared by the operations.
-- A lease is a member '<id>|<token>' of the running set, so a call checks
-- every report's token with one ZMSCORE; running jobs and final states are
-- written with one multi-member call per batch.

-- Moves a job to a final state and records it for retention.
local function finish(id, state, now, fields)
    local args = {'HSET', jkey(id), 'state', state, 'finished', int(now)}
    for i = 1, #fields do
        args[#args + 1] = fields[i]
    end
    redis.call(unpack(args))
    local zkey = P .. state
    redis.call('ZADD', zkey, int(now), id)
    touched_final[zkey] = true
end

local function make_pending(id, now, kind, extra)
    local f = redis.call('HMGET', jkey(id), 'class', 'score', 'classdef')
    if not f[1] then
        return -- the record is gone (trimmed); nothing to put back
    end
    redis.call('HSET', jkey(id), 'state', 'pending', 'worker', '')
    push_pending(id, f[1], f[2], f[3], now)
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
        local id = lease_job(expired[i])
        redis.call('ZREM', K_RUNNING, expired[i])
        local f = redis.call('HMGET', jkey(id), 'attempts', 'max_attempts', 'worker')
        local err = 'lease expired: worker ' .. (f[3] or '?') .. ' stopped heartbeating'
        if not f[2] then
            -- no record left: the lease alone is dropped
        elseif tonumber(f[1] or 0) >= tonumber(f[2]) then
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

-- Leases the jobs ids to worker; returns the claims as flat lists
-- {id, token, attempt, max_attempts, timeout_ms, payload}.
local function start_jobs(ids, now, worker, session)
    local out = {}
    local lease_until = int(now + LEASE_MS)
    local running = {'ZADD', K_RUNNING}
    for _, id in ipairs(ids) do
        local k = jkey(id)
        local f = redis.call('HMGET', k, 'attempts', 'max_attempts', 'timeout_ms', 'payload',
                             'progress', 'claims')
        -- A pending id without a record (trimmed) is skipped.
        if f[2] then
            local attempt = (tonumber(f[1]) or 0) + 1
            local claims = (tonumber(f[6]) or 0) + 1
            -- The session (one per worker process) lets that process tell its
            -- own leases from a predecessor's with the same worker id.
            local token = worker .. '/' .. session .. '/' .. claims
            if f[5] then
                redis.call('HSET', k, 'state', 'running', 'worker', worker, 'started', int(now),
                           'attempts', attempt, 'claims', claims, 'token', token, 'progress', 0,
                           'progress_msg', '')
            else
                redis.call('HSET', k, 'state', 'running', 'worker', worker, 'started', int(now),
                           'attempts', attempt, 'claims', claims, 'token', token)
            end
            emit(id, 'started', 'running', {'worker', worker, 'attempt', attempt})
            running[#running + 1] = lease_until
            running[#running + 1] = lease_member(id, token)
            out[#out + 1] = {id, token, attempt, tonumber(f[2]), tonumber(f[3]) or 0,
                             f[4] or '{}'}
        end
    end
    if #running > 2 then
        redis.call(unpack(running))
    end
    return out
end

-- The classes of pending jobs this worker can run, best head first.
-- Matching is evaluated once per (class, capability set) and cached, so a
-- claim costs one lookup per class, whatever the number of pending jobs.
local function match_page(classes, caps_json, caps_hash, matching, state)
    local cache_key = P .. 'match:' .. caps_hash
    local cached = redis.call('HMGET', cache_key, unpack(classes))
    for i, class in ipairs(classes) do
        local m = cached[i]
        if not m then
            state.caps = state.caps or cjson.decode(caps_json)
            local def = redis.call('GET', P .. 'class:' .. class)
            m = '0'
            if def and class_matches(cjson.decode(def), state.caps) then
                m = '1'
            end
            redis.call('HSET', cache_key, class, m)
            redis.call('PEXPIRE', cache_key, 86400000)
        end
        if m == '1' then
            matching[#matching + 1] = class
        end
    end
end

-- Every class is looked at, a page of 1000 at a time, so no class is ever
-- out of reach; the cost grows with classes, never with jobs.
local function matching_classes(caps_json, caps_hash)
    local matching, state = {}, {}
    local start = 0
    repeat
        local classes = redis.call('ZRANGE', K_CLASSES, start, start + 999)
        if #classes > 0 then
            match_page(classes, caps_json, caps_hash, matching, state)
        end
        start = start + 1000
    until #classes < 1000
    return matching
end

-- Picks up to max runnable job ids, best score first across matching classes.
local function pick_jobs(classes, max)
    local ids = {}
    if #classes == 1 then
        -- The common case: one class, so its own order is the order.
        local popped = redis.call('ZPOPMIN', class_key(classes[1]), max)
        for i = 1, #popped, 2 do
            ids[#ids + 1] = popped[i]
        end
        if #ids < max then
            forget_class_if_empty(classes[1])
        end
        return ids
    end
    local heads = {}
    for i, class in ipairs(classes) do
        heads[i] = redis.call('ZRANGE', class_key(class), 0, 0, 'WITHSCORES')
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
        ids[#ids + 1] = heads[best][1]
        redis.call('ZREM', class_key(class), heads[best][1])
        heads[best] = redis.call('ZRANGE', class_key(class), 0, 0, 'WITHSCORES')
    end
    for i = 1, #classes do
        if #heads[i] == 0 then
            forget_class_if_empty(classes[i])
        end
    end
    return ids
end

local function claim_jobs(now, worker, session, caps_json, caps_hash, max)
    if max <= 0 then
        return {}
    end
    return start_jobs(pick_jobs(matching_classes(caps_json, caps_hash), max), now, worker, session)
end

-- Why a token does not hold job id's lease: 'cancelled', 'lost' or 'missing'.
local function lease_problem(id)
    local state = redis.call('HGET', jkey(id), 'state')
    if not state then
        return 'missing'
    elseif state == 'cancelled' then
        return 'cancelled'
    end
    return 'lost'
end

-- A retryable failure with attempts left waits out an exponential backoff
-- with equal jitter; otherwise the job fails (not retryable) or dies.
-- Returns true when a retry was scheduled.
local function fail_leased(id, message, retryable, now)
    local f = redis.call('HMGET', jkey(id), 'attempts', 'max_attempts')
    local attempts, max_attempts = tonumber(f[1]), tonumber(f[2])
    if retryable and attempts < max_attempts then
        local delay = math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ^ (attempts - 1))
        delay = math.floor(delay / 2 + delay / 2 * JITTER)
        redis.call('HSET', jkey(id), 'state', 'delayed', 'error', message, 'retryable', '1',
                   'run_at', int(now + delay))
        redis.call('ZADD', K_DELAYED, int(now + delay), id)
        emit(id, 'retry_scheduled', 'delayed', {'error', message, 'delay_ms', delay})
        return true
    end
    local state = 'failed'
    if retryable then
        state = 'dead'
    end
    finish(id, state, now, {'error', message, 'retryable', retryable and '1' or '0'})
    emit(id, state, state, {'error', message})
    return false
end

-- Applies a batch of reports {id, token, kind, data, retryable} where kind
-- is 'complete' (data = result JSON), 'fail' (data = message) or 'release'
-- (back to pending, the attempt not counted). A report whose token no
-- longer holds the lease changes nothing. Returns the statuses ('ok',
-- 'cancelled', 'lost', 'missing') and whether a retry was scheduled.
local function apply_reports(reports, now)
    local statuses, retried, released = {}, false, false
    if #reports == 0 then
        return statuses, retried
    end
    local members = {}
    for i = 1, #reports do
        members[i] = lease_member(reports[i][1], reports[i][2])
    end
    local leases = redis.call('ZMSCORE', K_RUNNING, unpack(members))
    local settled, completed = {'ZREM', K_RUNNING}, {'ZADD', P .. 'completed'}
    local used = {}
    for i, r in ipairs(reports) do
        local id, kind = r[1], r[3]
        if not leases[i] or used[members[i]] then
            -- no lease, or a second report for one lease in this batch
            statuses[i] = lease_problem(id)
        else
            used[members[i]] = true
            settled[#settled + 1] = members[i]
            if kind == 'complete' then
                redis.call('HSET', jkey(id), 'state', 'completed', 'finished', int(now), 'result',
                           r[4], 'progress', 100)
                emit(id, 'completed', 'completed', nil)
                completed[#completed + 1] = int(now)
                completed[#completed + 1] = id
            elseif kind == 'fail' then
                retried = fail_leased(id, r[4], r[5] == '1', now) or retried
            else
                redis.call('HINCRBY', jkey(id), 'attempts', -1)
                make_pending(id, now, 'released', nil)
                released = true
            end
            statuses[i] = 'ok'
        end
    end
    if #settled > 2 then
        redis.call(unpack(settled))
    end
    if #completed > 2 then
        redis.call(unpack(completed))
        touched_final[P .. 'completed'] = true
    end
    if released then
        redis.call('PUBLISH', CHANNEL, 'work') -- handed back: another worker may take it
    end
    return statuses, retried
end

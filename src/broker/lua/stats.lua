-- stats: counts of a queue by state and the oldest pending job's wait.
-- Read-only. Returns {pending, running, delayed, completed, failed,
-- cancelled, dead, oldest_pending_created_ms (0 = none), now_ms}.
-- A class's pending set is ordered by (priority, submission); the oldest
-- job of each priority band is that band's head, so the scan costs one
-- lookup per class and priority in use, not per job.
local now = now_ms()
local pending, oldest_seq = 0, nil
local band = 1099511627776
local classes = redis.call('ZRANGE', K_CLASSES, 0, -1)
for _, class in ipairs(classes) do
    local key = class_key(class)
    pending = pending + redis.call('ZCARD', key)
    local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    while #head > 0 do
        local score = tonumber(head[2])
        local seq = score % band
        if not oldest_seq or seq < oldest_seq then
            oldest_seq = seq
        end
        local next_band = int((math.floor(score / band) + 1) * band)
        head = redis.call('ZRANGEBYSCORE', key, next_band, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    end
end
local oldest_created = 0
if oldest_seq then
    oldest_created = tonumber(redis.call('HGET', jkey(SERVICE .. '.' .. int(oldest_seq)), 'created') or 0)
end
local out = {pending, redis.call('ZCARD', K_RUNNING), redis.call('ZCARD', K_DELAYED)}
for _, state in ipairs(FINAL_STATES) do
    out[#out + 1] = redis.call('ZCARD', P .. state)
end
out[#out + 1] = oldest_created
out[#out + 1] = now
return out

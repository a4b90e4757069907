-- ratelimit: takes one slot of a fleet-wide request budget, a sliding
-- window log: the key's sorted set holds one member per request granted in
-- the last window, scored by the Redis server's clock (microseconds), so
-- workers with skewed clocks still share one budget.
--
-- KEYS[1]  kiln:ratelimit:{<budget key>}   (zset)
-- ARGV[1]  limit: requests allowed per window (>= 1)
-- ARGV[2]  window in milliseconds (>= 1)
-- ARGV[3]  a token unique to the caller (client nonce and sequence)
--
-- Returns {1, 0} when a slot was taken, or {0, wait_ms}: the time until the
-- oldest request leaves the window and a slot frees.
local limit = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window_us))
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], string.format('%d', now), string.format('%d', now) .. '-' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait_us = tonumber(oldest[2]) + window_us - now
return {0, math.floor(wait_us / 1000) + 1}

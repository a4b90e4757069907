-- sweep: promotes due delayed jobs and recovers stalled ones. Idempotent;
-- any kiln process may run it. Returns {stalled recovered, delayed promoted}.
local now = now_ms()
local promoted = promote_delayed(now, 1000)
local recovered = recover_stalled(now, 1000)
if promoted + recovered > 0 then
    redis.call('PUBLISH', CHANNEL, 'work')
end
return {recovered, promoted}

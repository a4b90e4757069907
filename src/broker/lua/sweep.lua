-- sweep: promotes due delayed jobs, recovers stalled ones and trims
-- finished jobs past retention. Idempotent; any kiln process may run it.
-- Returns {stalled recovered, delayed promoted}.
local now = now_ms()
local promoted = promote_delayed(now, 1000)
local recovered = recover_stalled(now, 1000)
if promoted + recovered > 0 then
    redis.call('PUBLISH', CHANNEL, 'work')
end
for _, state in ipairs(FINAL_STATES) do
    touched_final[P .. state] = true
end
trim_touched(now, true)
return {recovered, promoted}

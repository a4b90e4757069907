-- step: the worker's one call per turn: reports finished jobs, then claims
-- the next ones, so a busy worker needs one round trip per batch of jobs.
-- ARGV[10] worker id, ARGV[11] capabilities JSON, ARGV[12] capabilities
-- hash, ARGV[13] max jobs to claim, ARGV[14] number of reports r,
-- then per report 5 values: job id, token, kind ('complete', 'fail',
-- 'release'), result JSON or error message, retryable ('1'/'0').
-- Returns {next_due_ms, {report statuses}, claim...} (see claim.lua).
local now = now_ms()
local r = tonumber(ARGV[OP + 4])
local statuses = {}
for i = 0, r - 1 do
    local a = OP + 5 + i * 5
    local id, token, kind, data = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
    local status
    if kind == 'complete' then
        status = complete_job(id, token, data, now)
    elseif kind == 'fail' then
        status = fail_job(id, token, data, ARGV[a + 4] == '1', now)
    else
        status = release_job(id, token, now)
    end
    statuses[#statuses + 1] = status
end
local moved = promote_delayed(now, 100) + recover_stalled(now, 100)
local claims = claim_jobs(now, ARGV[OP], ARGV[OP + 1], ARGV[OP + 2], tonumber(ARGV[OP + 3]))
if moved > #claims then
    redis.call('PUBLISH', CHANNEL, 'work')
end
local out = {next_due(), statuses}
for i = 1, #claims do
    out[#out + 1] = claims[i]
end
return out

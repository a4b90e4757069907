-- claim: promotes due delayed jobs, recovers stalled ones, then leases up
-- to max jobs the worker can run.
-- ARGV[10] worker id, ARGV[11] capabilities JSON (canonical),
-- ARGV[12] capabilities hash, ARGV[13] max jobs.
-- Returns {next_due_ms, claim...} where each claim is
-- {id, token, attempt, max_attempts, timeout_ms, payload}.
local now = now_ms()
local moved = promote_delayed(now, 100) + recover_stalled(now, 100)
local claims = claim_jobs(now, ARGV[OP], ARGV[OP + 1], ARGV[OP + 2], tonumber(ARGV[OP + 3]))
if moved > #claims then
    redis.call('PUBLISH', CHANNEL, 'work')
end
local out = {next_due()}
for i = 1, #claims do
    out[#out + 1] = claims[i]
end
return out

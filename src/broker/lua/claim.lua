-- claim: promotes due delayed jobs, recovers stalled ones, then leases up
-- to max jobs the worker can run.
-- ARGV[10] worker id, ARGV[11] worker session, ARGV[12] capabilities JSON
-- (canonical), ARGV[13] capabilities hash, ARGV[14] max jobs.
-- Returns {next_due_ms, claim...} (see step.lua).
local now = now_ms()
local max = tonumber(ARGV[OP + 4])
maintain(now, 100, max)
local claims = claim_jobs(now, ARGV[OP], ARGV[OP + 1], ARGV[OP + 2], ARGV[OP + 3], max)
trim_touched(now, true)
local out = {next_due()}
for i = 1, #claims do
    out[#out + 1] = claims[i]
end
return out

-- step: the worker's one call per turn: reports finished jobs, then claims
-- the next ones, so a busy worker needs one round trip per batch of jobs.
-- ARGV[10] worker id, ARGV[11] worker session, ARGV[12] capabilities JSON,
-- ARGV[13] capabilities hash, ARGV[14] max jobs to claim, ARGV[15]
-- maintain ('1': also promote due delayed jobs, recover stalled ones and
-- trim by age), ARGV[16] number of reports r, then per report 5 values: job id, token,
-- kind ('complete', 'fail', 'release'), result JSON or error message,
-- retryable ('1'/'0').
-- Returns {next_due_ms, {report statuses}, claim...} where next_due_ms is
-- the earliest delayed job (0: none; -1: not looked up this call) and each
-- claim is {id, token, attempt, max_attempts, timeout_ms, payload}.
local now = now_ms()
local statuses, retried = apply_reports(read_reports(OP + 7, tonumber(ARGV[OP + 6])), now)
local maintaining = ARGV[OP + 5] == '1'
local max = tonumber(ARGV[OP + 4])
if maintaining then
    maintain(now, 100, max)
end
local claims = claim_jobs(now, ARGV[OP], ARGV[OP + 1], ARGV[OP + 2], ARGV[OP + 3], max)
-- Trimming by count runs on about one step in ten (JITTER is uniform), which
-- keeps each queue near its retention count at a tenth of the cost.
if maintaining or JITTER < 0.1 then
    trim_touched(now, maintaining)
end
local due = -1
if maintaining or retried then
    due = next_due()
end
local out = {due, statuses}
for i = 1, #claims do
    out[#out + 1] = claims[i]
end
return out

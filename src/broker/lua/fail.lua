-- fail: ARGV[10] job id, ARGV[11] token, ARGV[12] error message,
-- ARGV[13] retryable ('1'/'0').
-- Returns 'ok', 'cancelled', 'lost' or 'missing' (then nothing is written).
local now = now_ms()
local statuses = apply_reports({{ARGV[OP], ARGV[OP + 1], 'fail', ARGV[OP + 2], ARGV[OP + 3]}},
                               now)
trim_touched(now, false)
return statuses[1]

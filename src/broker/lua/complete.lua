-- complete: ARGV[10] job id, ARGV[11] token, ARGV[12] result JSON.
-- Returns 'ok', 'cancelled', 'lost' or 'missing' (then nothing is written).
local now = now_ms()
local statuses = apply_reports({{ARGV[OP], ARGV[OP + 1], 'complete', ARGV[OP + 2], '0'}}, now)
trim_touched(now, false)
return statuses[1]

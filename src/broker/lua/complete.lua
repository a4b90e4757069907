-- complete: ARGV[10] job id, ARGV[11] token, ARGV[12] result JSON.
-- Returns 'ok', 'cancelled', 'lost' or 'missing' (then nothing is written).
return complete_job(ARGV[OP], ARGV[OP + 1], ARGV[OP + 2], now_ms())

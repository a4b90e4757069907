-- fail: ARGV[10] job id, ARGV[11] token, ARGV[12] error message,
-- ARGV[13] retryable ('1'/'0').
-- Returns 'ok', 'cancelled', 'lost' or 'missing' (then nothing is written).
return fail_job(ARGV[OP], ARGV[OP + 1], ARGV[OP + 2], ARGV[OP + 3] == '1', now_ms())

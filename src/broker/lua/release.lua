-- release: ARGV[10] job id, ARGV[11] token. Back to pending, the attempt
-- not counted (a worker shutting down). Returns 'ok' or the lease problem.
local status = release_job(ARGV[OP], ARGV[OP + 1], now_ms())
if status == 'ok' then
    redis.call('PUBLISH', CHANNEL, 'work')
end
return status

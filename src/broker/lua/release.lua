-- release: ARGV[10] job id, ARGV[11] token. Back to pending, the attempt
-- not counted (a worker shutting down). Returns 'ok' or the lease problem.
local statuses = apply_reports({{ARGV[OP], ARGV[OP + 1], 'release', '', '0'}}, now_ms())
return statuses[1]

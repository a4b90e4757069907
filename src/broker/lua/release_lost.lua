-- release_lost: after a reconnect, hands back the leases this worker
-- process holds in Redis but no longer knows of (a claim whose reply was
-- lost with the connection), without counting the attempt: the job never
-- started. Leases of an earlier process with the same worker id (another
-- session) are left to expire as usual.
-- ARGV[10] worker id, ARGV[11] session, ARGV[12..] job ids the worker holds.
-- Returns the number of leases handed back.
local prefix = '|' .. ARGV[OP] .. '/' .. ARGV[OP + 1] .. '/'
local known = {}
for i = OP + 2, #ARGV do
    known[ARGV[i]] = true
end
local reports = {}
for _, member in ipairs(redis.call('ZRANGE', K_RUNNING, 0, -1)) do
    local bar = string.find(member, '|', 1, true)
    if bar and string.sub(member, bar, bar + #prefix - 1) == prefix then
        local id = string.sub(member, 1, bar - 1)
        if not known[id] then
            reports[#reports + 1] = {id, string.sub(member, bar + 1), 'release', '', '0'}
        end
    end
end
apply_reports(reports, now_ms())
return #reports

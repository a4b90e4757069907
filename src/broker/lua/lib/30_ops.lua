-- kiln broker library, part 4: pieces the operation scripts share.

-- Reads n reports of 5 values each from ARGV starting at first.
local function read_reports(first, n)
    local reports = {}
    for i = 0, n - 1 do
        local a = first + i * 5
        reports[#reports + 1] = {ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]}
    end
    return reports
end

-- Promotes due delayed jobs and recovers stalled ones; wakes idle workers
-- when that made work the caller will not take itself.
local function maintain(now, limit, taken)
    local moved = promote_delayed(now, limit) + recover_stalled(now, limit)
    if moved > taken then
        redis.call('PUBLISH', CHANNEL, 'work')
    end
    return moved
end

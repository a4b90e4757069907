-- kiln broker library, part 2: capability matching (docs/requirements.md).
-- A class definition is {"customer_id": C|null, "requirements": {...}};
-- caps is the worker's capability object.

local function list_has(list, value)
    if type(list) ~= 'table' then
        return false
    end
    for _, v in ipairs(list) do
        if v == value then
            return true
        end
    end
    return false
end

local function path_get(obj, path)
    local cur = obj
    for part in string.gmatch(path, '[^.]+') do
        if type(cur) ~= 'table' then
            return nil
        end
        cur = cur[part]
    end
    return cur
end

-- string: equal (or member of a worker list); number: at least;
-- boolean: equal; array: every element present.
local function value_meets(have, want)
    local tw = type(want)
    if tw == 'number' then
        return type(have) == 'number' and have >= want
    elseif tw == 'string' then
        return have == want or list_has(have, want)
    elseif tw == 'boolean' then
        return have == want
    elseif tw == 'table' then
        for _, v in ipairs(want) do
            if not (have == v or list_has(have, v)) then
                return false
            end
        end
        return true
    end
    return false
end

-- The negative form: excluded when the worker has it (for an array, any).
local function value_excludes(have, want)
    if have == nil or have == cjson.null then
        return false
    end
    if type(want) == 'table' then
        for _, v in ipairs(want) do
            if have == v or list_has(have, v) then
                return true
            end
        end
        return false
    end
    return value_meets(have, want)
end

local function customer_allowed(iso, customer, access)
    if type(access) ~= 'table' then
        access = {}
    end
    local has_customer = type(customer) == 'string'
    if has_customer and list_has(access.denied_customers, customer) then
        return false
    end
    local worker_strict = access.isolation == 'strict'
    local allowed = access.allowed_customers
    local restricted = type(allowed) == 'table' and #allowed > 0
    if (worker_strict or restricted) and not (has_customer and list_has(allowed, customer)) then
        return false
    end
    if iso == 'strict' then
        return worker_strict and has_customer and list_has(allowed, customer)
    end
    return true
end

local function class_matches(def, caps)
    local req = def.requirements
    if type(req) ~= 'table' then
        req = {}
    end
    for _, name in ipairs({'gpu_memory_gb', 'ram_gb', 'cpu_cores'}) do
        if req[name] ~= nil and not value_meets(caps[name], req[name]) then
            return false
        end
    end
    if req.models ~= nil and not value_meets(caps.models, req.models) then
        return false
    end
    if req.machine ~= nil and caps.machine_id ~= req.machine then
        return false
    end
    if req.pool ~= nil and not (caps.pool == req.pool or list_has(caps.pools, req.pool)) then
        return false
    end
    if not customer_allowed(req.customer_isolation, def.customer_id, caps.customer_access) then
        return false
    end
    if type(req.capabilities) == 'table' then
        for path, want in pairs(req.capabilities) do
            if not value_meets(path_get(caps, path), want) then
                return false
            end
        end
    end
    if type(req['not']) == 'table' then
        for path, want in pairs(req['not']) do
            if value_excludes(path_get(caps, path), want) then
                return false
            end
        end
    end
    return true
end

/* The broker's matcher in C, with reasons (kiln/hub_match.h). Each helper
 * mirrors the Lua function of the same name in 10_match.lua. */
#include "kiln/hub_match.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Lua equality of decoded JSON values: numbers by value, strings by
 * content, booleans; tables never equal another decoded table. */
static bool lua_equal(json_t *a, json_t *b)
{
    if (!a || !b)
        return false;
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    if (json_is_string(a) && json_is_string(b))
        return strcmp(json_string_value(a), json_string_value(b)) == 0;
    if (json_is_boolean(a) && json_is_boolean(b))
        return json_is_true(a) == json_is_true(b);
    return json_is_null(a) && json_is_null(b);
}

static bool list_has(json_t *list, json_t *value)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        if (lua_equal(v, value))
            return true;
    }
    return false;
}

/* Dotted path lookup; an array holds no named members. */
static json_t *path_get(json_t *obj, const char *path)
{
    json_t *cur = obj;
    char part[129];
    const char *p = path;
    while (*p) {
        size_t len = strcspn(p, ".");
        if (len > 0) {
            if (!json_is_object(cur) || len >= sizeof part)
                return NULL;
            memcpy(part, p, len);
            part[len] = '\0';
            cur = json_object_get(cur, part);
        }
        p += len + (p[len] == '.');
    }
    return cur;
}

static bool value_meets(json_t *have, json_t *want)
{
    if (json_is_number(want))
        return json_is_number(have) && json_number_value(have) >= json_number_value(want);
    if (json_is_string(want))
        return lua_equal(have, want) || list_has(have, want);
    if (json_is_boolean(want))
        return lua_equal(have, want);
    if (json_is_array(want) || json_is_object(want)) {
        size_t i;
        json_t *v;
        json_array_foreach(want, i, v)
        {
            if (!(lua_equal(have, v) || list_has(have, v)))
                return false;
        }
        return true;
    }
    return false;
}

static bool value_excludes(json_t *have, json_t *want)
{
    if (!have || json_is_null(have))
        return false;
    if (json_is_array(want) || json_is_object(want)) {
        size_t i;
        json_t *v;
        json_array_foreach(want, i, v)
        {
            if (lua_equal(have, v) || list_has(have, v))
                return true;
        }
        return false;
    }
    return value_meets(have, want);
}

/* A short rendering of a value for a reason ("none" when absent). */
static void show(json_t *v, char *out, size_t size)
{
    char *text = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    if (json_is_string(v))
        snprintf(out, size, "%.60s", json_string_value(v));
    else
        snprintf(out, size, "%.60s", text ? text : "none");
    free(text);
}

static bool fail_with(char *reason, size_t size, const char *what, json_t *want, json_t *have)
{
    char w[80], h[80];
    show(want, w, sizeof w);
    show(have, h, sizeof h);
    snprintf(reason, size, "%s: needs %s, has %s", what, w, h);
    return false;
}

static bool customer_allowed(const char *iso, json_t *customer, json_t *access, char *reason,
                             size_t size)
{
    if (!json_is_object(access))
        access = NULL;
    bool has_customer = json_is_string(customer);
    const char *name = has_customer ? json_string_value(customer) : "";
    if (has_customer && list_has(json_object_get(access, "denied_customers"), customer)) {
        snprintf(reason, size, "customer: worker denies customer %.60s", name);
        return false;
    }
    json_t *isolation = json_object_get(access, "isolation");
    bool worker_strict =
        json_is_string(isolation) && strcmp(json_string_value(isolation), "strict") == 0;
    json_t *allowed = json_object_get(access, "allowed_customers");
    bool restricted = json_is_array(allowed) && json_array_size(allowed) > 0;
    bool listed = has_customer && list_has(allowed, customer);
    if ((worker_strict || restricted) && !listed) {
        snprintf(reason, size, "customer: worker serves only its allowed customers, not %.60s",
                 has_customer ? name : "a job without a customer");
        return false;
    }
    if (iso && strcmp(iso, "strict") == 0 && !(worker_strict && listed)) {
        snprintf(reason, size,
                 "customer_isolation: strict needs a strict worker that allows customer %.60s",
                 has_customer ? name : "(none)");
        return false;
    }
    return true;
}

static bool conditions_met(json_t *conds, json_t *caps, bool negative, char *reason, size_t size)
{
    const char *path;
    json_t *want;
    json_object_foreach(conds, path, want)
    {
        json_t *have = path_get(caps, path);
        char what[160];
        snprintf(what, sizeof what, "%s.%.128s", negative ? "not" : "capabilities", path);
        if (!negative && !value_meets(have, want))
            return fail_with(reason, size, what, want, have);
        if (negative && value_excludes(have, want)) {
            char h[80];
            show(have, h, sizeof h);
            snprintf(reason, size, "%s: excluded, has %s", what, h);
            return false;
        }
    }
    return true;
}

static bool models_met(json_t *want, json_t *have, char *reason, size_t size)
{
    size_t i;
    json_t *v;
    json_array_foreach(want, i, v)
    {
        if (!(lua_equal(have, v) || list_has(have, v))) {
            char m[80];
            show(v, m, sizeof m);
            snprintf(reason, size, "models: missing %s", m);
            return false;
        }
    }
    return true;
}

bool kiln_hub_match(json_t *req, const char *customer_id, json_t *caps, char *reason, size_t size)
{
    static const char *const minima[] = {"gpu_memory_gb", "ram_gb", "cpu_cores"};
    json_t *empty = json_object();
    if (!json_is_object(req))
        req = empty;
    if (!json_is_object(caps))
        caps = empty;
    bool ok = true;
    for (int i = 0; ok && i < 3; i++) {
        json_t *want = json_object_get(req, minima[i]);
        if (want && !value_meets(json_object_get(caps, minima[i]), want))
            ok = fail_with(reason, size, minima[i], want, json_object_get(caps, minima[i]));
    }
    json_t *models = json_object_get(req, "models");
    if (ok && models)
        ok = models_met(models, json_object_get(caps, "models"), reason, size);
    json_t *machine = json_object_get(req, "machine");
    if (ok && machine && !lua_equal(json_object_get(caps, "machine_id"), machine)) {
        const char *pinned = json_string_value(machine);
        snprintf(reason, size, "machine: pinned to %.128s", pinned ? pinned : "?");
        ok = false;
    }
    json_t *pool = json_object_get(req, "pool");
    if (ok && pool &&
        !(lua_equal(json_object_get(caps, "pool"), pool) ||
          list_has(json_object_get(caps, "pools"), pool)))
        ok = fail_with(reason, size, "pool", pool, json_object_get(caps, "pool"));
    json_t *customer = customer_id ? json_string(customer_id) : NULL;
    if (ok)
        ok = customer_allowed(json_string_value(json_object_get(req, "customer_isolation")),
                              customer, json_object_get(caps, "customer_access"), reason, size);
    json_decref(customer);
    json_t *conds = json_object_get(req, "capabilities");
    if (ok && json_is_object(conds))
        ok = conditions_met(conds, caps, false, reason, size);
    conds = json_object_get(req, "not");
    if (ok && json_is_object(conds))
        ok = conditions_met(conds, caps, true, reason, size);
    json_decref(empty);
    if (ok && size)
        reason[0] = '\0';
    return ok;
}

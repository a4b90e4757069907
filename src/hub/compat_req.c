/* Old-format requirements -> kiln requirements (kiln/hub_compat.h). */
#include "kiln/hub_compat.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define POS       "positive_requirements"
#define NEG       "negative_requirements"
#define PATH_MAX_ 128

typedef struct mapping {
    json_t *req;  /* the kiln requirements being built */
    size_t items; /* keys and array items seen, bounded */
    kiln_hub_error_t *e;
} mapping_t;

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static int invalid(mapping_t *m, const char *field, const char *expected, const json_t *got)
{
    return kiln_hub_error_set(m->e, 400, "invalid_request", field, "%s: expected %s, got %s", field,
                              expected, type_name(got));
}

static int count_item(mapping_t *m, const char *field)
{
    if (++m->items <= KILN_COMPAT_MAX_ITEMS)
        return 0;
    return kiln_hub_error_set(m->e, 413, "too_large", field,
                              "%s: requirements hold more than %d keys and items in all; send "
                              "fewer",
                              field, KILN_COMPAT_MAX_ITEMS);
}

/* The object kiln requirement `name` ("capabilities" or "not"), created on use. */
static json_t *conditions(mapping_t *m, const char *name)
{
    json_t *obj = json_object_get(m->req, name);
    if (!obj) {
        obj = json_object();
        json_object_set_new(m->req, name, obj);
    }
    return obj;
}

/* A leaf condition: string, number, boolean or an array of strings/numbers. */
static int check_leaf(mapping_t *m, const char *field, json_t *v)
{
    if (json_is_string(v) || json_is_boolean(v))
        return 0;
    if (json_is_number(v))
        return isfinite(json_number_value(v)) ? 0 : invalid(m, field, "a finite number", v);
    if (!json_is_array(v))
        return invalid(m, field,
                       "a string (equal), number (at least), boolean or array (all present)", v);
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item)
    {
        char at[PATH_MAX_ + 64];
        snprintf(at, sizeof at, "%s[%zu]", field, i);
        if (count_item(m, at) != 0)
            return KILN_ETOOBIG;
        if (!json_is_string(item) && !json_is_number(item))
            return invalid(m, at, "a string or number", item);
    }
    return 0;
}

/* Adds key/value under `name` ("capabilities" or "not") at path prefix,
 * flattening nested objects into dotted paths. */
static int add_path(mapping_t *m, const char *name, const char *field, const char *path, json_t *v,
                    int depth)
{
    if (count_item(m, field) != 0)
        return KILN_ETOOBIG;
    if (strlen(path) > PATH_MAX_)
        return kiln_hub_error_set(m->e, 400, "invalid_request", field,
                                  "%s: capability paths are at most %d characters", field,
                                  PATH_MAX_);
    if (!json_is_object(v)) {
        int rc = check_leaf(m, field, v);
        if (rc == 0)
            json_object_set(conditions(m, name), path, v);
        return rc;
    }
    if (depth >= KILN_COMPAT_MAX_DEPTH)
        return kiln_hub_error_set(m->e, 400, "invalid_request", field,
                                  "%s: nested deeper than %d levels; flatten it", field,
                                  KILN_COMPAT_MAX_DEPTH);
    const char *key;
    json_t *child;
    json_object_foreach(v, key, child)
    {
        char sub[PATH_MAX_ + 2], sub_field[PATH_MAX_ + 64];
        snprintf(sub, sizeof sub, "%s.%s", path, key);
        snprintf(sub_field, sizeof sub_field, "%.40s.%s", field, key);
        int rc = add_path(m, name, sub_field, sub, child, depth + 1);
        if (rc)
            return rc;
    }
    return 0;
}

/* hardware: {gpu_memory_gb, cpu_cores, ram_gb}: a number >= 0, or "all"
 * (no limit). Positive: a minimum; negative: excluded when the worker has
 * at least that much. */
static int map_hardware(mapping_t *m, json_t *hw, bool negative)
{
    const char *base = negative ? NEG ".hardware" : POS ".hardware";
    if (!json_is_object(hw))
        return invalid(m, base, "an object of gpu_memory_gb, cpu_cores, ram_gb", hw);
    const char *key;
    json_t *v;
    json_object_foreach(hw, key, v)
    {
        char field[PATH_MAX_ + 64];
        snprintf(field, sizeof field, "%s.%.60s", base, key);
        if (count_item(m, field) != 0)
            return KILN_ETOOBIG;
        if (strcmp(key, "gpu_memory_gb") && strcmp(key, "cpu_cores") && strcmp(key, "ram_gb"))
            return kiln_hub_error_set(m->e, 400, "invalid_request", field,
                                      "%s: unknown hardware key; expected gpu_memory_gb, "
                                      "cpu_cores or ram_gb",
                                      field);
        if (json_is_string(v) && strcmp(json_string_value(v), "all") == 0)
            continue;
        if (!json_is_number(v) || !(json_number_value(v) >= 0) || !isfinite(json_number_value(v)))
            return invalid(m, field, "a number >= 0 or \"all\" (no limit)", v);
        json_object_set(negative ? conditions(m, "not") : m->req, key, v);
    }
    return 0;
}

static int map_models(mapping_t *m, json_t *models, bool negative)
{
    const char *field = negative ? NEG ".models" : POS ".models";
    json_t *list = json_is_string(models) ? json_pack("[O]", models) : json_incref(models);
    int rc = json_is_array(list) && json_array_size(list) > 0
                 ? check_leaf(m, field, list)
                 : invalid(m, field, "a non-empty array of model names", models);
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item)
    {
        if (rc == 0 && (!json_is_string(item) || json_string_length(item) == 0 ||
                        json_string_length(item) > 256))
            rc = invalid(m, field, "model names (strings of 1-256 characters)", item);
    }
    if (rc == 0)
        json_object_set(negative ? conditions(m, "not") : m->req, "models", list);
    json_decref(list);
    return rc;
}

/* customer_isolation: "strict" | "loose" | "none", or
 * {"isolation": ..., "allowed_customers": [...], "denied_customers": [...]}.
 * allowed: the worker must allow each listed customer; denied: a worker
 * that allows any of them is excluded. */
static int map_isolation(mapping_t *m, json_t *v)
{
    const char *field = POS ".customer_isolation";
    json_t *level = json_is_object(v) ? json_object_get(v, "isolation") : v;
    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        json_object_foreach(v, key, child)
        {
            if (strcmp(key, "isolation") && strcmp(key, "allowed_customers") &&
                strcmp(key, "denied_customers"))
                return kiln_hub_error_set(m->e, 400, "invalid_request", field,
                                          "%s.%.60s: unknown key; expected isolation, "
                                          "allowed_customers or denied_customers",
                                          field, key);
        }
    }
    const char *s = json_string_value(level);
    if (level && (!s || (strcmp(s, "strict") && strcmp(s, "loose") && strcmp(s, "none"))))
        return kiln_hub_error_set(m->e, 400, "invalid_request", field,
                                  "%s: expected \"strict\", \"loose\" or \"none\"", field);
    if (!json_is_object(v) && !s)
        return invalid(m, field, "\"strict\", \"loose\", \"none\" or an object", v);
    if (s)
        json_object_set_new(m->req, "customer_isolation", json_string(s));
    static const char *const lists[] = {"allowed_customers", "denied_customers"};
    for (int i = 0; json_is_object(v) && i < 2; i++) {
        json_t *list = json_object_get(v, lists[i]);
        char sub[96];
        snprintf(sub, sizeof sub, "%s.%s", field, lists[i]);
        if (!list)
            continue;
        if (!json_is_array(list))
            return invalid(m, sub, "an array of customer ids", list);
        int rc = add_path(m, i == 0 ? "capabilities" : "not", sub,
                          "customer_access.allowed_customers", list, 0);
        if (rc)
            return rc;
    }
    return 0;
}

static int map_side(mapping_t *m, json_t *side, bool negative)
{
    const char *base = negative ? NEG : POS;
    if (!side || json_is_null(side))
        return 0;
    if (!json_is_object(side))
        return invalid(m, base, "an object", side);
    const char *key;
    json_t *v;
    json_object_foreach(side, key, v)
    {
        char field[PATH_MAX_ + 64];
        snprintf(field, sizeof field, "%s.%.100s", base, key);
        int rc;
        if (!strcmp(key, "hardware"))
            rc = map_hardware(m, v, negative);
        else if (!strcmp(key, "models"))
            rc = map_models(m, v, negative);
        else if (!strcmp(key, "customer_isolation") && !negative)
            rc = map_isolation(m, v);
        else
            rc = add_path(m, negative ? "not" : "capabilities", field, key, v, 0);
        if (rc)
            return rc;
    }
    return 0;
}

int kiln_hub_compat_requirements(json_t *positive, json_t *negative, json_t **out,
                                 kiln_hub_error_t *e)
{
    *out = NULL;
    mapping_t m = {.req = json_object(), .e = e};
    if (!m.req)
        return kiln_hub_error_set(e, 500, "internal", NULL, "out of memory");
    int rc = map_side(&m, positive, false);
    if (!rc)
        rc = map_side(&m, negative, true);
    if (rc) {
        json_decref(m.req);
        return rc;
    }
    *out = m.req;
    return 0;
}

/*
 * The schema table and the validation of one value against one row. A value
 * from the file arrives as JSON (typed by the YAML loader); a value from the
 * environment arrives as text and is parsed here, so both paths share the
 * same checks and the same messages.
 */
#include "core/config_schema.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/redis_url.h"
#include "kiln/err.h"
#include "kiln/windows.h"

extern char **environ;

const char *const kiln_config_machine_type_names[4] = {"auto", "gpu", "api", "hybrid"};

#define MEMBER_SIZE(member) sizeof(((kiln_config_t *)0)->member)
#define FIELD(path, env, legacy, kind, member)                                                     \
    {                                                                                              \
        path, env, legacy, kind, 0, 0, offsetof(kiln_config_t, member), MEMBER_SIZE(member), 0,    \
            NULL                                                                                   \
    }
#define INT_FIELD(path, env, lo, hi, member)                                                       \
    {                                                                                              \
        path, env, NULL, KILN_FIELD_INT, lo, hi, offsetof(kiln_config_t, member),                  \
            MEMBER_SIZE(member), 0, NULL                                                           \
    }
#define INT_FIELD_LEGACY(path, env, legacy, legacy2, lo, hi, member)                               \
    {                                                                                              \
        path, env, legacy, KILN_FIELD_INT, lo, hi, offsetof(kiln_config_t, member),                \
            MEMBER_SIZE(member), 0, legacy2                                                        \
    }
#define NAMES_FIELD(path, env, legacy, member, count)                                              \
    {                                                                                              \
        path, env, legacy, KILN_FIELD_NAMES, 0, 0, offsetof(kiln_config_t, member),                \
            MEMBER_SIZE(member), offsetof(kiln_config_t, count), NULL                              \
    }

const kiln_config_field_t kiln_config_fields[KILN_CONFIG_N_FIELDS] = {
    FIELD("redis.url", "KILN_REDIS_URL", "HUB_REDIS_URL", KILN_FIELD_REDIS_URL, redis_url),
    FIELD("machine.id", "KILN_MACHINE_ID", "MACHINE_ID", KILN_FIELD_ID, machine_id),
    FIELD("log.format", "KILN_LOG_FORMAT", NULL, KILN_FIELD_LOG_FORMAT, log_format),
    FIELD("log.level", "KILN_LOG_LEVEL", NULL, KILN_FIELD_LOG_LEVEL, log_level),
    INT_FIELD("broker.max_payload_bytes", "KILN_BROKER_MAX_PAYLOAD_BYTES", 1024, 67108864,
              broker.max_payload_bytes),
    INT_FIELD("broker.stream_max_len", "KILN_BROKER_STREAM_MAX_LEN", 100, 10000000,
              broker.stream_max_len),
    INT_FIELD("broker.retention_age_s", "KILN_BROKER_RETENTION_AGE_S", 1, 31536000,
              broker.retention_age_s),
    INT_FIELD("broker.retention_count", "KILN_BROKER_RETENTION_COUNT", 0, 10000000,
              broker.retention_count),
    INT_FIELD("broker.default_max_attempts", "KILN_BROKER_DEFAULT_MAX_ATTEMPTS", 1, 100,
              broker.default_max_attempts),
    INT_FIELD("broker.backoff_base_ms", "KILN_BROKER_BACKOFF_BASE_MS", 0, 3600000,
              broker.backoff_base_ms),
    INT_FIELD("broker.backoff_max_ms", "KILN_BROKER_BACKOFF_MAX_MS", 0, 86400000,
              broker.backoff_max_ms),
    INT_FIELD("broker.lease_ms", "KILN_BROKER_LEASE_MS", 100, 3600000, broker.lease_ms),
    FIELD("worker.id", "KILN_WORKER_ID", NULL, KILN_FIELD_ID, worker.id),
    NAMES_FIELD("worker.connectors", "KILN_WORKER_CONNECTORS", "WORKER_CONNECTORS",
                worker.connectors, worker.n_connectors),
    FIELD("worker.capabilities", "KILN_WORKER_CAPABILITIES", NULL, KILN_FIELD_OBJECT,
          worker.capabilities),
    INT_FIELD("worker.concurrency", "KILN_WORKER_CONCURRENCY", 1, 1024, worker.concurrency),
    INT_FIELD("worker.heartbeat_ms", "KILN_WORKER_HEARTBEAT_MS", 0, 3600000, worker.heartbeat_ms),
    INT_FIELD("worker.shutdown_grace_ms", "KILN_WORKER_SHUTDOWN_GRACE_MS", 0, 3600000,
              worker.shutdown_grace_ms),
    INT_FIELD("worker.registry_ttl_ms", "KILN_WORKER_REGISTRY_TTL_MS", 1000, 3600000,
              worker.registry_ttl_ms),
    INT_FIELD("worker.prefetch", "KILN_WORKER_PREFETCH", 0, 1024, worker.prefetch),
    FIELD("machine.type", "KILN_MACHINE_TYPE", "MACHINE_TYPE", KILN_FIELD_MACHINE_TYPE,
          machine.type),
    INT_FIELD_LEGACY("machine.gpu_count", "KILN_MACHINE_GPU_COUNT", "MACHINE_GPU_COUNT", NULL, -1,
                     64, machine.gpu_count),
    FIELD("machine.has_gpu", "KILN_MACHINE_HAS_GPU", "MACHINE_HAS_GPU", KILN_FIELD_BOOL,
          machine.has_gpu),
    INT_FIELD_LEGACY("machine.ram_gb", "KILN_MACHINE_RAM_GB", "MACHINE_RAM_GB", NULL, 0, 65536,
                     machine.ram_gb),
    INT_FIELD_LEGACY("machine.instances_per_gpu", "KILN_MACHINE_INSTANCES_PER_GPU",
                     "INSTANCES_PER_GPU", "PM2_INSTANCES_PER_GPU", 1, 16,
                     machine.instances_per_gpu),
    INT_FIELD("machine.api_workers", "KILN_MACHINE_API_WORKERS", 1, 64, machine.api_workers),
    INT_FIELD_LEGACY("machine.health_port", "KILN_MACHINE_HEALTH_PORT", "MACHINE_HEALTH_PORT", NULL,
                     1024, 65535, machine.health_port),
    INT_FIELD_LEGACY("machine.install_timeout_s", "KILN_MACHINE_INSTALL_TIMEOUT_S",
                     "SERVICE_INSTALL_TIMEOUT", NULL, 1, 86400, machine.install_timeout_s),
    NAMES_FIELD("machine.pools", "KILN_MACHINE_POOLS", "MACHINE_POOLS", machine.pools,
                machine.n_pools),
    FIELD("worker.active_windows", "KILN_WORKER_ACTIVE_WINDOWS", NULL, KILN_FIELD_WINDOWS,
          worker.active_windows),
    FIELD("machine.api_token", "KILN_MACHINE_API_TOKEN", NULL, KILN_FIELD_SECRET,
          machine.api_token),
    INT_FIELD("worker.health_interval_ms", "KILN_WORKER_HEALTH_INTERVAL_MS", 100, 3600000,
              worker.health_interval_ms),
};

/* Indexes of the rows that kiln_config_check_across relates. */
enum {
    F_BACKOFF_BASE = 9,
    F_BACKOFF_MAX = 10,
    F_LEASE = 11,
    F_HEARTBEAT = 16,
    F_GPU_COUNT = 21,
    F_HAS_GPU = 22
};

#define EXPECT_ID  "a name of letters, digits, '.', '_' or '-' (1-128 characters)"
#define EXPECT_URL "a URL redis://[[user]:password@]host[:port][/db]"

const kiln_config_field_t *kiln_config_field_find(const char *path)
{
    for (size_t i = 0; i < KILN_CONFIG_N_FIELDS; i++) {
        if (strcmp(kiln_config_fields[i].path, path) == 0)
            return &kiln_config_fields[i];
    }
    return NULL;
}

void kiln_config_where(const kiln_config_origin_t *o, const char *path, char *buf, size_t size)
{
    int line = o->doc ? kiln_yaml_line(o->doc, path) : 0;
    if (o->flag)
        snprintf(buf, size, "%s", o->flag);
    else if (o->env)
        snprintf(buf, size, "environment %s", o->env);
    else if (line > 0)
        snprintf(buf, size, "%s:%d: %s", o->file, line, path);
    else
        snprintf(buf, size, "%s: %s", o->file, path);
}

void kiln_config_quote(const char *text, char *buf, size_t size)
{
    const size_t shown_max = 80;
    size_t out = 0, shown = 0;
    if (size < 16) {
        snprintf(buf, size, "\"...\"");
        return;
    }
    buf[out++] = '"';
    for (const unsigned char *s = (const unsigned char *)text; *s; s++, shown++) {
        if (shown >= shown_max || out + 8 >= size) {
            out += (size_t)snprintf(buf + out, size - out, "...");
            break;
        }
        if (*s == '"' || *s == '\\')
            out += (size_t)snprintf(buf + out, size - out, "\\%c", *s);
        else if (*s < 0x20 || *s >= 0x7f)
            out += (size_t)snprintf(buf + out, size - out, "\\x%02x", *s);
        else
            buf[out++] = (char)*s;
    }
    snprintf(buf + out, size - out, "\"");
}

void kiln_config_describe(const json_t *value, char *buf, size_t size)
{
    switch (json_typeof(value)) {
    case JSON_STRING:
        kiln_config_quote(json_string_value(value), buf, size);
        break;
    case JSON_INTEGER:
        snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(value));
        break;
    case JSON_REAL:
        snprintf(buf, size, "%g", json_real_value(value));
        break;
    case JSON_OBJECT:
        snprintf(buf, size, "a mapping");
        break;
    case JSON_ARRAY:
        snprintf(buf, size, "a list");
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        snprintf(buf, size, "%s", json_is_true(value) ? "true" : "false");
        break;
    default:
        snprintf(buf, size, "nothing (null)");
        break;
    }
}

bool kiln_config_valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > KILN_CONFIG_NAME_MAX || name[0] == '-' || name[0] == '_')
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

static bool valid_id(const char *id)
{
    size_t n = strlen(id);
    return n > 0 && n <= KILN_CONFIG_ID_MAX &&
           strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

/* Records "<where>: expected <expected>, got <got>"; returns false. */
static bool expected(kiln_config_ctx_t *ctx, const char *where, const char *what, const char *got)
{
    kiln_problems_add(ctx->problems, "%s: expected %s, got %s", where, what, got);
    return false;
}

/* The "got" of a message: the environment text quoted, or the file value. */
static void got_text(const json_t *value, const char *env_text, char *buf, size_t size)
{
    if (env_text)
        kiln_config_quote(env_text, buf, size);
    else
        kiln_config_describe(value, buf, size);
}

static bool parse_long(const char *text, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || text[0] == ' ' || text[0] == '\t')
        return false;
    *out = v;
    return true;
}

static bool set_int(kiln_config_ctx_t *ctx, const kiln_config_field_t *f, const json_t *value,
                    const char *env_text, const char *where)
{
    char what[64], got[128];
    snprintf(what, sizeof what, "an integer %ld-%ld", f->min, f->max);
    got_text(value, env_text, got, sizeof got);
    long v;
    if (env_text) {
        if (!parse_long(env_text, &v))
            return expected(ctx, where, what, got);
    } else if (json_is_integer(value)) {
        json_int_t j = json_integer_value(value);
        v = j < f->min ? f->min - 1 : j > f->max ? f->max + 1 : (long)j;
    } else {
        long unused;
        if (json_is_string(value) && parse_long(json_string_value(value), &unused))
            strncat(got, " (a quoted string; remove the quotes)", sizeof got - strlen(got) - 1);
        return expected(ctx, where, what, got);
    }
    if (v < f->min || v > f->max)
        return expected(ctx, where, what, got);
    char *member = (char *)ctx->cfg + f->offset;
    if (f->size == sizeof(int))
        *(int *)member = (int)v;
    else
        *(long *)member = v;
    return true;
}

/* The broker's parser decides what a Redis URL is, so that a config that
 * passes the check also connects. Writes why not into reason. */
static bool redis_url_valid(const char *url, char *reason, size_t size)
{
    for (const unsigned char *c = (const unsigned char *)url; *c; c++) {
        if (*c <= 0x20 || *c >= 0x7f) {
            snprintf(reason, size, " (spaces and control characters are not allowed)");
            return false;
        }
    }
    kiln_redis_url_t parsed;
    kiln_err_t err = {0};
    if (strncmp(url, "redis://", 8) != 0)
        return false;
    if (kiln_redis_url_parse(url, &parsed, &err) == 0)
        return true;
    const char *why = strncmp(err.msg, "redis url: ", 11) == 0 ? err.msg + 11 : err.msg;
    snprintf(reason, size, " (%.200s)", why);
    return false;
}

#define SECRET_MIN 8
#define SECRET_MAX 256
#define EXPECT_SECRET                                                                              \
    "a token of 8-256 visible ASCII characters (no spaces; it goes in an Authorization header)"

/* A bearer token: long enough not to be guessed at once, and nothing an
 * HTTP header cannot carry. */
static bool secret_valid(const char *text)
{
    size_t len = strlen(text);
    if (len < SECRET_MIN || len > SECRET_MAX)
        return false;
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c <= 0x20 || *c >= 0x7f)
            return false;
    }
    return true;
}

static bool set_text(kiln_config_ctx_t *ctx, const kiln_config_field_t *f, const json_t *value,
                     const char *env_text, const char *where)
{
    const char *text = env_text ? env_text : json_string_value(value);
    char got[384];
    got_text(value, env_text, got, sizeof got);
    void *member = (char *)ctx->cfg + f->offset;
    switch (f->kind) {
    case KILN_FIELD_LOG_FORMAT:
        if (!text || kiln_log_format_parse(text, (kiln_log_format_t *)member) != 0)
            return expected(ctx, where, "json or text", got);
        return true;
    case KILN_FIELD_LOG_LEVEL:
        if (!text || kiln_log_level_parse(text, (kiln_log_level_t *)member) != 0)
            return expected(ctx, where, "debug, info, warn or error", got);
        return true;
    case KILN_FIELD_MACHINE_TYPE:
        for (size_t i = 0; text && i < 4; i++) {
            if (strcmp(text, kiln_config_machine_type_names[i]) == 0) {
                *(kiln_machine_type_t *)member = (kiln_machine_type_t)i;
                return true;
            }
        }
        return expected(ctx, where, "auto, gpu, api or hybrid", got);
    case KILN_FIELD_SECRET:
        /* The problem names the length, never the value. */
        if (!text || !secret_valid(text)) {
            if (text)
                snprintf(got, sizeof got, "a value of %zu characters", strlen(text));
            return expected(ctx, where, EXPECT_SECRET, got);
        }
        break;
    case KILN_FIELD_REDIS_URL: {
        char *shown = text ? kiln_config_redact_url(text) : NULL;
        if (shown)
            kiln_config_quote(shown, got, sizeof got);
        free(shown);
        if (text && strncmp(text, "rediss://", 9) == 0) {
            kiln_problems_add(ctx->problems,
                              "%s: TLS (rediss://) is not supported yet; use redis:// on a trusted "
                              "network or through a TLS tunnel, got %s",
                              where, got);
            return false;
        }
        char reason[256];
        reason[0] = '\0';
        if (!text || !redis_url_valid(text, reason, sizeof reason)) {
            strncat(got, reason, sizeof got - strlen(got) - 1);
            return expected(ctx, where, EXPECT_URL, got);
        }
        break;
    }
    default:
        if (!text || !valid_id(text))
            return expected(ctx, where, EXPECT_ID, got);
        break;
    }
    char *copy = strdup(text);
    if (!copy)
        return false;
    free(*(char **)member);
    *(char **)member = copy;
    return true;
}

typedef struct name_list {
    char **items;
    size_t count;
    const char *noun; /* "connector" or "pool", for messages */
    size_t max;
} name_list_t;

static void name_list_free(name_list_t *l)
{
    for (size_t i = 0; i < l->count; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

static bool name_list_add(kiln_config_ctx_t *ctx, name_list_t *l, const char *name, size_t len,
                          const char *where)
{
    char got[128], what[96];
    char *copy = strndup(name, len);
    if (!copy)
        return false;
    kiln_config_quote(copy, got, sizeof got);
    snprintf(what, sizeof what, "a %s name matching [a-z0-9][a-z0-9_-]{0,63}", l->noun);
    bool ok = kiln_config_valid_name(copy);
    if (!ok)
        expected(ctx, where, what, got);
    for (size_t i = 0; ok && i < l->count; i++) {
        if (strcmp(l->items[i], copy) == 0) {
            kiln_problems_add(ctx->problems, "%s: %s is listed twice; list each %s once", where,
                              got, l->noun);
            ok = false;
        }
    }
    if (ok && l->count == l->max) {
        kiln_problems_add(ctx->problems, "%s: more than %zu %ss; list at most %zu", where, l->max,
                          l->noun, l->max);
        ok = false;
    }
    char **grown = ok ? realloc(l->items, (l->count + 2) * sizeof *grown) : NULL;
    if (!grown) {
        free(copy);
        return false;
    }
    l->items = grown;
    l->items[l->count++] = copy;
    l->items[l->count] = NULL;
    return true;
}

/* "a, b,c": spaces around names are ignored and so are empty entries, so a
 * trailing comma is harmless. */
static bool add_comma_list(kiln_config_ctx_t *ctx, name_list_t *l, const char *text,
                           const char *where)
{
    bool ok = true;
    while (*text) {
        size_t len = strcspn(text, ",");
        const char *name = text;
        size_t n = len;
        while (n > 0 && (*name == ' ' || *name == '\t'))
            name++, n--;
        while (n > 0 && (name[n - 1] == ' ' || name[n - 1] == '\t'))
            n--;
        if (n > 0 && !name_list_add(ctx, l, name, n, where))
            ok = false;
        text += len;
        if (*text == ',')
            text++;
    }
    return ok;
}

/* Active windows: a comma list, or a list of "HH:MM-HH:MM" strings; stored
 * as canonical text. */
static bool set_windows(kiln_config_ctx_t *ctx, const kiln_config_field_t *f, const json_t *value,
                        const char *env_text, const char *where)
{
    char text[KILN_WINDOWS_TEXT_MAX + 2] = "", got[384];
    got_text(value, env_text, got, sizeof got);
    if (env_text || json_is_string(value)) {
        snprintf(text, sizeof text, "%s", env_text ? env_text : json_string_value(value));
    } else if (json_is_array(value)) {
        for (size_t i = 0; i < json_array_size(value); i++) {
            const char *item = json_string_value(json_array_get(value, i));
            if (!item)
                return expected(ctx, where, "a list of windows like \"22:00-06:00\"", got);
            size_t used = strlen(text);
            snprintf(text + used, sizeof text - used, "%s%s", i ? "," : "", item);
        }
    } else {
        return expected(ctx, where, "windows like \"22:00-06:00,12:00-13:00\"", got);
    }
    kiln_windows_t windows;
    kiln_err_t err = {0};
    if (kiln_windows_parse(text, where, &windows, &err) != 0) {
        kiln_problems_add(ctx->problems, "%s", err.msg);
        return false;
    }
    char canonical[KILN_WINDOWS_TEXT_MAX + 1];
    kiln_windows_format(&windows, canonical, sizeof canonical);
    char **member = (char **)((char *)ctx->cfg + f->offset);
    free(*member);
    *member = strdup(canonical);
    return *member != NULL;
}

static bool set_names(kiln_config_ctx_t *ctx, const kiln_config_field_t *f, const json_t *value,
                      const char *env_text, const kiln_config_origin_t *o, const char *where)
{
    bool pools = strcmp(f->path, "machine.pools") == 0;
    name_list_t list = {.noun = pools ? "pool" : "connector",
                        .max = pools ? KILN_CONFIG_MAX_POOLS : KILN_CONFIG_MAX_WORKER_CONNECTORS};
    bool ok = true;
    if (env_text || json_is_string(value)) {
        ok = add_comma_list(ctx, &list, env_text ? env_text : json_string_value(value), where);
    } else if (json_is_array(value)) {
        for (size_t i = 0; i < json_array_size(value); i++) {
            const json_t *item = json_array_get(value, i);
            char path[64], item_where[KILN_CONFIG_WHERE_MAX];
            snprintf(path, sizeof path, "%s[%zu]", f->path, i);
            kiln_config_where(o, path, item_where, sizeof item_where);
            if (!json_is_string(item)) {
                char got[128], what[96];
                kiln_config_describe(item, got, sizeof got);
                snprintf(what, sizeof what, "a %s name matching [a-z0-9][a-z0-9_-]{0,63}",
                         list.noun);
                ok = expected(ctx, item_where, what, got);
            } else if (!name_list_add(ctx, &list, json_string_value(item), json_string_length(item),
                                      item_where)) {
                ok = false;
            }
        }
    } else {
        char got[128], what[64];
        kiln_config_describe(value, got, sizeof got);
        snprintf(what, sizeof what, "a list of %s names", list.noun);
        ok = expected(ctx, where, what, got);
    }
    if (!ok) {
        name_list_free(&list);
        return false;
    }
    char ***items = (char ***)((char *)ctx->cfg + f->offset);
    size_t *count = (size_t *)((char *)ctx->cfg + f->count_offset);
    for (size_t i = 0; i < *count; i++)
        free((*items)[i]);
    free(*items);
    *items = list.items;
    *count = list.count;
    return true;
}

static size_t json_depth(const json_t *v)
{
    size_t deepest = 0, d;
    const char *key;
    json_t *child;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, key, child)
        {
            if ((d = json_depth(child)) > deepest)
                deepest = d;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, child)
        {
            if ((d = json_depth(child)) > deepest)
                deepest = d;
        }
    } else {
        return 0;
    }
    return deepest + 1;
}

/* In the environment the usual spellings of a switch are accepted; in the
 * file only YAML's true and false, so a quoted "false" is not silently true. */
static bool set_bool(kiln_config_ctx_t *ctx, const kiln_config_field_t *f, const json_t *value,
                     const char *env_text, const char *where)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    char got[128];
    got_text(value, env_text, got, sizeof got);
    bool *member = (bool *)((char *)ctx->cfg + f->offset);
    if (!env_text) {
        if (!json_is_boolean(value))
            return expected(ctx, where, "true or false", got);
        *member = json_is_true(value);
        return true;
    }
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(env_text, yes[i]) == 0 || strcasecmp(env_text, no[i]) == 0) {
            *member = strcasecmp(env_text, yes[i]) == 0;
            return true;
        }
    }
    return expected(ctx, where, "true or false (or 1/0, yes/no, on/off)", got);
}

static bool set_object(kiln_config_ctx_t *ctx, const kiln_config_field_t *f, const json_t *value,
                       const char *env_text, const char *where)
{
    char got[160];
    got_text(value, env_text, got, sizeof got);
    json_t *obj;
    if (env_text) {
        json_error_t jerr;
        obj = json_loads(env_text, JSON_REJECT_DUPLICATES, &jerr);
        if (!obj) {
            kiln_problems_add(ctx->problems, "%s: expected a JSON object, got %s (%s, column %d)",
                              where, got, jerr.text, jerr.column);
            return false;
        }
        if (!json_is_object(obj) || json_depth(obj) > KILN_YAML_MAX_DEPTH) {
            json_decref(obj);
            return expected(ctx, where, "a JSON object nested at most 32 deep", got);
        }
    } else {
        if (!json_is_object(value))
            return expected(ctx, where, "a mapping", got);
        obj = json_deep_copy(value);
        if (!obj)
            return false;
    }
    json_t **member = (json_t **)((char *)ctx->cfg + f->offset);
    json_decref(*member);
    *member = obj;
    return true;
}

static bool field_set(kiln_config_ctx_t *ctx, const kiln_config_field_t *f, const json_t *value,
                      const char *env_text, const kiln_config_origin_t *o)
{
    char where[KILN_CONFIG_WHERE_MAX];
    kiln_config_where(o, f->path, where, sizeof where);
    bool ok;
    if (f->kind == KILN_FIELD_INT)
        ok = set_int(ctx, f, value, env_text, where);
    else if (f->kind == KILN_FIELD_NAMES)
        ok = set_names(ctx, f, value, env_text, o, where);
    else if (f->kind == KILN_FIELD_BOOL)
        ok = set_bool(ctx, f, value, env_text, where);
    else if (f->kind == KILN_FIELD_OBJECT)
        ok = set_object(ctx, f, value, env_text, where);
    else if (f->kind == KILN_FIELD_WINDOWS)
        ok = set_windows(ctx, f, value, env_text, where);
    else
        ok = set_text(ctx, f, value, env_text, where);
    size_t index = (size_t)(f - kiln_config_fields);
    if (ok) {
        free(ctx->set_at[index]);
        ctx->set_at[index] = strdup(where);
    }
    return ok;
}

bool kiln_config_field_set_text(kiln_config_ctx_t *ctx, const kiln_config_field_t *f,
                                const char *text, const kiln_config_origin_t *o)
{
    return field_set(ctx, f, NULL, text, o);
}

bool kiln_config_field_set_json(kiln_config_ctx_t *ctx, const kiln_config_field_t *f,
                                const json_t *value, const kiln_config_origin_t *o)
{
    return field_set(ctx, f, value, NULL, o);
}

static const char *env_lookup(char **envp, const char *name)
{
    size_t n = strlen(name);
    for (char **e = envp; *e; e++) {
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    }
    return NULL;
}

/* A variable set to the empty string counts as unset, as container
 * runtimes and compose files often pass every variable through. */
void kiln_config_apply_env(kiln_config_ctx_t *ctx, char **envp)
{
    if (!envp)
        envp = environ;
    for (size_t i = 0; i < KILN_CONFIG_N_FIELDS; i++) {
        const kiln_config_field_t *f = &kiln_config_fields[i];
        const char *name = f->env, *text = env_lookup(envp, f->env);
        if ((!text || !*text) && f->legacy_env) {
            name = f->legacy_env;
            text = env_lookup(envp, name);
        }
        if ((!text || !*text) && f->legacy_env2) {
            name = f->legacy_env2;
            text = env_lookup(envp, name);
        }
        if (!text || !*text)
            continue;
        kiln_config_origin_t o = {.env = name};
        field_set(ctx, f, NULL, text, &o);
    }
}

static long field_long(const kiln_config_ctx_t *ctx, size_t index)
{
    const kiln_config_field_t *f = &kiln_config_fields[index];
    const char *member = (const char *)ctx->cfg + f->offset;
    return f->size == sizeof(int) ? *(const int *)member : *(const long *)member;
}

void kiln_config_check_across(kiln_config_ctx_t *ctx)
{
    long heartbeat = field_long(ctx, F_HEARTBEAT), lease = field_long(ctx, F_LEASE);
    if (heartbeat != 0 && heartbeat >= lease)
        kiln_problems_add(ctx->problems,
                          "%s: expected 0 (a third of the lease) or less than broker.lease_ms "
                          "(%ld), got %ld",
                          ctx->set_at[F_HEARTBEAT] ? ctx->set_at[F_HEARTBEAT]
                                                   : "worker.heartbeat_ms",
                          lease, heartbeat);
    long base = field_long(ctx, F_BACKOFF_BASE), max = field_long(ctx, F_BACKOFF_MAX);
    if (base > max && ctx->set_at[F_BACKOFF_BASE])
        kiln_problems_add(ctx->problems,
                          "%s: expected at most broker.backoff_max_ms (%ld), got %ld",
                          ctx->set_at[F_BACKOFF_BASE], max, base);
    else if (base > max)
        kiln_problems_add(
            ctx->problems, "%s: expected at least broker.backoff_base_ms (%ld), got %ld",
            ctx->set_at[F_BACKOFF_MAX] ? ctx->set_at[F_BACKOFF_MAX] : "broker.backoff_max_ms", base,
            max);
    long gpu_count = field_long(ctx, F_GPU_COUNT);
    if (!ctx->cfg->machine.has_gpu && gpu_count > 0)
        kiln_problems_add(ctx->problems,
                          "%s: expected -1 or 0 when machine.has_gpu is false (%s), got %ld; "
                          "remove one of the two",
                          ctx->set_at[F_GPU_COUNT] ? ctx->set_at[F_GPU_COUNT] : "machine.gpu_count",
                          ctx->set_at[F_HAS_GPU] ? ctx->set_at[F_HAS_GPU] : "machine.has_gpu",
                          gpu_count);
}

char *kiln_config_redact_url(const char *url)
{
    const char *scheme = strstr(url, "://");
    const char *at = scheme ? strrchr(scheme + 3, '@') : NULL;
    if (!at)
        return strdup(url);
    const char *user = scheme + 3;
    const char *colon = memchr(user, ':', (size_t)(at - user));
    size_t keep = colon ? (size_t)(colon - url) + 1 : (size_t)(user - url);
    size_t size = keep + 3 + strlen(at) + 1;
    char *out = malloc(size);
    if (out)
        snprintf(out, size, "%.*s***%s", (int)keep, url, at);
    return out;
}

/*
 * The services: and templates: sections. Unlike the scalar settings in the
 * schema table these are nested (argv lists, environment mappings, a
 * readiness check), so they have their own loader; the messages read like
 * the table's ("kiln.yaml:12: services.web.port: expected ..., got ...").
 * Placeholders such as {port} are kept as written: the plan substitutes
 * them, because only the plan knows the port and the GPU.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config_schema.h"

#define PATH_MAX_LEN (KILN_YAML_MAX_KEY * 2 + 64)
#define SUB_PATH_MAX (PATH_MAX_LEN + KILN_YAML_MAX_KEY + 32)
/* services.NAME.backoff_ms: at most an hour, as broker.backoff_base_ms. */
#define SERVICE_MAX_BACKOFF_MS 3600000
/* services.NAME.ready_timeout_ms: from 100 ms to a day. */
#define SERVICE_MIN_READY_TIMEOUT_MS 100
#define SERVICE_MAX_READY_TIMEOUT_MS 86400000
/* services.NAME.stop_timeout_ms: at most an hour. */
#define SERVICE_MAX_STOP_TIMEOUT_MS 3600000
/* services.NAME.memory_limit_mb: at most 1 TiB. */
#define SERVICE_MAX_MEMORY_LIMIT_MB 1048576

static const char *const restart_names[] = {"always", "on-failure", "never"};

/* Records "<where of path>: expected <what>, got <value>". */
static void problem_expected(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                             const char *path, const char *what, const json_t *value)
{
    char where[KILN_CONFIG_WHERE_MAX], got[160];
    kiln_config_where(o, path, where, sizeof where);
    kiln_config_describe(value, got, sizeof got);
    kiln_problems_add(ctx->problems, "%s: expected %s, got %s", where, what, got);
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

static char **strv_copy(const char *const *items, size_t n)
{
    char **v = calloc(n + 1, sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        if (!(v[i] = strdup(items[i]))) {
            free_strv(v, i);
            return NULL;
        }
    }
    return v;
}

/* A string without NUL bytes of 1..max bytes. */
static bool plain_string(const json_t *v, size_t max)
{
    return json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= max &&
           strlen(json_string_value(v)) == json_string_length(v);
}

/* An argv: a non-empty list of non-empty strings. Returns false (with a
 * problem) when value is not one; else *out owns a NULL-terminated copy. */
static bool load_argv(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                      const json_t *value, char ***out, size_t *n_out)
{
    char what[160], item_path[SUB_PATH_MAX];
    snprintf(what, sizeof what,
             "a command as a list of 1-%d strings (argv; no shell), e.g. [\"python3\", "
             "\"main.py\"]",
             KILN_CONFIG_MAX_ARGS);
    if (!json_is_array(value) || json_array_size(value) == 0 ||
        json_array_size(value) > KILN_CONFIG_MAX_ARGS) {
        problem_expected(ctx, o, path, what, value);
        return false;
    }
    size_t n = json_array_size(value);
    char **argv = calloc(n + 1, sizeof *argv);
    if (!argv)
        return false;
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(value, i);
        if (!plain_string(item, KILN_CONFIG_MAX_ARG_BYTES)) {
            snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
            snprintf(what, sizeof what, "a non-empty string of at most %d bytes",
                     KILN_CONFIG_MAX_ARG_BYTES);
            problem_expected(ctx, o, item_path, what, item);
            free_strv(argv, i);
            return false;
        }
        if (!(argv[i] = strdup(json_string_value(item)))) {
            free_strv(argv, i);
            return false;
        }
    }
    free_strv(*out, *n_out);
    *out = argv;
    *n_out = n;
    return true;
}

static bool valid_env_name(const char *name)
{
    size_t n = strlen(name);
    return n > 0 && n <= 128 && !(name[0] >= '0' && name[0] <= '9') &&
           strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

/* env: {NAME: value}; values are strings, integers or booleans (written as
 * text), so `PORT: 8080` works. */
static bool load_env(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                     const json_t *value, char ***out, size_t *n_out)
{
    char item_path[SUB_PATH_MAX], where[KILN_CONFIG_WHERE_MAX], got[160];
    if (!json_is_object(value) || json_object_size(value) > KILN_CONFIG_MAX_ENV) {
        problem_expected(ctx, o, path, "a mapping of at most 256 NAME: value pairs", value);
        return false;
    }
    char **env = calloc(json_object_size(value) + 1, sizeof *env);
    size_t n = 0;
    bool ok = env != NULL;
    const char *key;
    json_t *item;
    json_object_foreach((json_t *)value, key, item)
    {
        if (!ok)
            break;
        snprintf(item_path, sizeof item_path, "%s.%s", path, key);
        if (!valid_env_name(key)) {
            kiln_config_where(o, item_path, where, sizeof where);
            kiln_config_quote(key, got, sizeof got);
            kiln_problems_add(ctx->problems,
                              "%s: expected a variable name of letters, digits and '_' not "
                              "starting with a digit, got %s",
                              where, got);
            ok = false;
        } else if (json_is_string(item) &&
                   strlen(json_string_value(item)) == json_string_length(item) &&
                   json_string_length(item) <= KILN_CONFIG_MAX_ARG_BYTES) {
            ok = asprintf(&env[n++], "%s=%s", key, json_string_value(item)) >= 0;
        } else if (json_is_integer(item)) {
            ok =
                asprintf(&env[n++], "%s=%" JSON_INTEGER_FORMAT, key, json_integer_value(item)) >= 0;
        } else if (json_is_boolean(item)) {
            ok = asprintf(&env[n++], "%s=%s", key, json_is_true(item) ? "true" : "false") >= 0;
        } else {
            problem_expected(ctx, o, item_path, "a string, an integer or a boolean", item);
            ok = false;
        }
    }
    if (!ok) {
        free_strv(env, n);
        return false;
    }
    free_strv(*out, *n_out);
    *out = env;
    *n_out = n;
    return true;
}

static bool load_cwd(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                     const json_t *value, char **out)
{
    if (!plain_string(value, KILN_CONFIG_MAX_ARG_BYTES)) {
        problem_expected(ctx, o, path, "a directory path", value);
        return false;
    }
    free(*out);
    *out = strdup(json_string_value(value));
    return *out != NULL;
}

static bool load_port(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                      const json_t *value, int *out)
{
    if (!json_is_integer(value) || json_integer_value(value) < 1024 ||
        json_integer_value(value) > 65535) {
        problem_expected(ctx, o, path, "a port 1024-65535", value);
        return false;
    }
    *out = (int)json_integer_value(value);
    return true;
}

/* Reports key as unknown in a mapping whose keys are listed in known. */
static void unknown_in(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                       const char *known)
{
    char where[KILN_CONFIG_WHERE_MAX];
    kiln_config_where(o, path, where, sizeof where);
    kiln_problems_add(ctx->problems, "%s: unknown key; expected one of %s", where, known);
}

/* ---- templates ------------------------------------------------------------- */

static void template_set(kiln_template_config_t *t, int port, const char *const *argv, size_t n,
                         const char *const *env, size_t n_env)
{
    t->port = port;
    t->command = argv ? strv_copy(argv, n) : NULL;
    t->n_command = t->command ? n : 0;
    t->env = strv_copy(env, n_env);
    t->n_env = t->env ? n_env : 0;
}

void kiln_config_templates_defaults(kiln_config_t *cfg)
{
    static const char *const comfyui[] = {"python3",   "main.py", "--listen",
                                          "127.0.0.1", "--port",  "{port}"};
    static const char *const a1111[] = {"python3", "launch.py", "--api", "--port", "{port}"};
    static const char *const ollama[] = {"ollama", "serve"};
    static const char *const ollama_env[] = {"OLLAMA_HOST=127.0.0.1:{port}"};
    template_set(&cfg->templates.setup, 0, NULL, 0, NULL, 0);
    template_set(&cfg->templates.comfyui, 8188, comfyui, 6, NULL, 0);
    template_set(&cfg->templates.a1111, 7860, a1111, 5, NULL, 0);
    template_set(&cfg->templates.ollama, 11434, ollama, 2, ollama_env, 1);
    static const char *const playwright[] = {"node", "server.mjs", "--port", "{port}"};
    template_set(&cfg->templates.playwright, 3100, playwright, 4, NULL, 0);
    /* Where the build installed the service's node_modules (CMake's KILN_PLAYWRIGHT_DIR). */
    cfg->templates.playwright.cwd = strdup(KILN_PLAYWRIGHT_DIR);
}

typedef struct template_row {
    const char *name;
    size_t offset;
    const char *port_key; /* "base_port", "port", or NULL (setup) */
} template_row_t;

static const template_row_t template_rows[] = {
    {"setup", offsetof(kiln_config_t, templates.setup), NULL},
    {"comfyui", offsetof(kiln_config_t, templates.comfyui), "base_port"},
    {"a1111", offsetof(kiln_config_t, templates.a1111), "base_port"},
    {"ollama", offsetof(kiln_config_t, templates.ollama), "port"},
    {"playwright", offsetof(kiln_config_t, templates.playwright), "port"},
};
#define N_TEMPLATES (sizeof template_rows / sizeof template_rows[0])

static void load_template(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                          const template_row_t *row, const json_t *body)
{
    char path[PATH_MAX_LEN], known[96];
    kiln_template_config_t *t = (kiln_template_config_t *)((char *)ctx->cfg + row->offset);
    snprintf(path, sizeof path, "templates.%s", row->name);
    if (!json_is_object(body)) {
        problem_expected(ctx, o, path, "a mapping", body);
        return;
    }
    snprintf(known, sizeof known, "%s%scommand, cwd, env", row->port_key ? row->port_key : "",
             row->port_key ? ", " : "");
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)body, key, value)
    {
        snprintf(path, sizeof path, "templates.%s.%s", row->name, key);
        if (json_is_null(value))
            continue;
        if (row->port_key && strcmp(key, row->port_key) == 0)
            load_port(ctx, o, path, value, &t->port);
        else if (strcmp(key, "command") == 0)
            load_argv(ctx, o, path, value, &t->command, &t->n_command);
        else if (strcmp(key, "cwd") == 0)
            load_cwd(ctx, o, path, value, &t->cwd);
        else if (strcmp(key, "env") == 0)
            load_env(ctx, o, path, value, &t->env, &t->n_env);
        else
            unknown_in(ctx, o, path, known);
    }
}

void kiln_config_load_templates(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                                const json_t *section)
{
    if (json_is_null(section))
        return;
    if (!json_is_object(section)) {
        problem_expected(ctx, o, "templates",
                         "a mapping of setup, comfyui, a1111, ollama, playwright", section);
        return;
    }
    const char *key;
    json_t *body;
    json_object_foreach((json_t *)section, key, body)
    {
        const template_row_t *row = NULL;
        for (size_t i = 0; i < N_TEMPLATES; i++) {
            if (strcmp(key, template_rows[i].name) == 0)
                row = &template_rows[i];
        }
        char path[PATH_MAX_LEN];
        snprintf(path, sizeof path, "templates.%s", key);
        if (!row)
            unknown_in(ctx, o, path, "setup, comfyui, a1111, ollama, playwright");
        else if (!json_is_null(body))
            load_template(ctx, o, row, body);
    }
}

/* ---- services -------------------------------------------------------------- */

static void service_free(kiln_service_config_t *s)
{
    free(s->name);
    free_strv(s->command, s->n_command);
    free_strv(s->env, s->n_env);
    free(s->cwd);
    free_strv(s->depends_on, s->n_depends_on);
    free(s->ready.target);
    free_strv(s->ready.command, s->ready.n_command);
    kiln_config_downloads_free(s);
    memset(s, 0, sizeof *s);
}

static bool load_depends(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                         const json_t *value, kiln_service_config_t *s)
{
    char item_path[SUB_PATH_MAX], where[KILN_CONFIG_WHERE_MAX], got[160];
    if (!json_is_array(value) || json_array_size(value) > KILN_CONFIG_MAX_DEPENDS) {
        problem_expected(ctx, o, path, "a list of at most 64 service names", value);
        return false;
    }
    size_t n = json_array_size(value);
    char **names = calloc(n + 1, sizeof *names);
    if (!names)
        return false;
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(value, i);
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
        kiln_config_where(o, item_path, where, sizeof where);
        const char *name = json_is_string(item) ? json_string_value(item) : NULL;
        bool dup = false;
        for (size_t j = 0; name && j < i; j++)
            dup = dup || strcmp(names[j], name) == 0;
        if (!name || !kiln_config_valid_name(name)) {
            problem_expected(ctx, o, item_path, "a service name matching [a-z0-9][a-z0-9_-]{0,63}",
                             item);
        } else if (dup || strcmp(name, s->name) == 0) {
            kiln_config_quote(name, got, sizeof got);
            kiln_problems_add(ctx->problems, "%s: %s %s; list each other service once", where, got,
                              dup ? "is listed twice" : "is the service itself");
        } else if ((names[i] = strdup(name)) != NULL) {
            continue;
        }
        free_strv(names, i);
        return false;
    }
    free_strv(s->depends_on, s->n_depends_on);
    s->depends_on = names;
    s->n_depends_on = n;
    return true;
}

static bool load_ready(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                       const json_t *value, kiln_ready_config_t *r)
{
    static const char what[] =
        "a mapping with one of http: URL, tcp: \"host:port\" or command: [argv]";
    if (!json_is_object(value) || json_object_size(value) != 1) {
        problem_expected(ctx, o, path, what, value);
        return false;
    }
    const char *key = json_object_iter_key(json_object_iter((json_t *)value));
    const json_t *v = json_object_get(value, key);
    char sub[SUB_PATH_MAX];
    snprintf(sub, sizeof sub, "%s.%s", path, key);
    if (strcmp(key, "command") == 0) {
        r->kind = KILN_READY_COMMAND;
        return load_argv(ctx, o, sub, v, &r->command, &r->n_command);
    }
    const char *text = plain_string(v, KILN_CONFIG_MAX_ARG_BYTES) ? json_string_value(v) : NULL;
    if (strcmp(key, "http") == 0) {
        if (!text || (strncmp(text, "http://", 7) != 0 && strncmp(text, "https://", 8) != 0)) {
            problem_expected(ctx, o, sub, "an http:// or https:// URL", v);
            return false;
        }
        r->kind = KILN_READY_HTTP;
    } else if (strcmp(key, "tcp") == 0) {
        const char *colon = text ? strrchr(text, ':') : NULL;
        if (!colon || colon == text || !colon[1]) {
            problem_expected(ctx, o, sub, "\"host:port\", e.g. \"127.0.0.1:{port}\"", v);
            return false;
        }
        r->kind = KILN_READY_TCP;
    } else {
        problem_expected(ctx, o, path, what, value);
        return false;
    }
    r->target = strdup(text);
    return r->target != NULL;
}

static bool load_restart(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                         const json_t *value, kiln_restart_t *out)
{
    for (size_t i = 0; json_is_string(value) && i < 3; i++) {
        if (strcmp(json_string_value(value), restart_names[i]) == 0) {
            *out = (kiln_restart_t)i;
            return true;
        }
    }
    problem_expected(ctx, o, path, "always, on-failure or never", value);
    return false;
}

/* An integer option within [min, max]; `what` says so in the problem
 * ("milliseconds 0-3600000"). */
static bool load_range(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                       const json_t *value, long min, long max, const char *what, long *out)
{
    if (!json_is_integer(value) || json_integer_value(value) < min ||
        json_integer_value(value) > max) {
        problem_expected(ctx, o, path, what, value);
        return false;
    }
    *out = (long)json_integer_value(value);
    return true;
}

/* One key of a service body; returns false when it recorded a problem. */
static bool load_service_key(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                             kiln_service_config_t *s, const char *key, const json_t *value)
{
    char path[PATH_MAX_LEN];
    snprintf(path, sizeof path, "services.%s.%s", s->name, key);
    if (json_is_null(value))
        return true;
    if (strcmp(key, "command") == 0)
        return load_argv(ctx, o, path, value, &s->command, &s->n_command);
    if (strcmp(key, "env") == 0)
        return load_env(ctx, o, path, value, &s->env, &s->n_env);
    if (strcmp(key, "cwd") == 0)
        return load_cwd(ctx, o, path, value, &s->cwd);
    if (strcmp(key, "depends_on") == 0)
        return load_depends(ctx, o, path, value, s);
    if (strcmp(key, "ready") == 0)
        return load_ready(ctx, o, path, value, &s->ready);
    if (strcmp(key, "restart") == 0)
        return load_restart(ctx, o, path, value, &s->restart);
    /* backoff_ms: the first restart delay; 0 restarts at once (the doubling
     * still applies to repeated failures, and max_failures still stops a
     * crash loop). */
    if (strcmp(key, "backoff_ms") == 0)
        return load_range(ctx, o, path, value, 0, SERVICE_MAX_BACKOFF_MS, "milliseconds 0-3600000",
                          &s->backoff_ms);
    if (strcmp(key, "ready_timeout_ms") == 0)
        return load_range(ctx, o, path, value, SERVICE_MIN_READY_TIMEOUT_MS,
                          SERVICE_MAX_READY_TIMEOUT_MS, "milliseconds 100-86400000",
                          &s->ready_timeout_ms);
    if (strcmp(key, "stop_timeout_ms") == 0)
        return load_range(ctx, o, path, value, 0, SERVICE_MAX_STOP_TIMEOUT_MS,
                          "milliseconds 0-3600000", &s->stop_timeout_ms);
    if (strcmp(key, "memory_limit_mb") == 0)
        return load_range(ctx, o, path, value, 1, SERVICE_MAX_MEMORY_LIMIT_MB,
                          "megabytes 1-1048576", &s->memory_limit_mb);
    if (strcmp(key, "port") == 0)
        return load_port(ctx, o, path, value, &s->port);
    if (strcmp(key, "downloads") == 0)
        return kiln_config_load_downloads(ctx, o, path, value, s);
    if (strcmp(key, "gpu") == 0) {
        if (!json_is_integer(value) || json_integer_value(value) < 0 ||
            json_integer_value(value) > 63) {
            problem_expected(ctx, o, path, "a GPU index 0-63", value);
            return false;
        }
        s->gpu = (int)json_integer_value(value);
        return true;
    }
    unknown_in(ctx, o, path,
               "command, env, cwd, depends_on, ready, restart, backoff_ms, ready_timeout_ms, "
               "stop_timeout_ms, memory_limit_mb, port, gpu, downloads");
    return false;
}

static void load_service(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *name,
                         const json_t *body)
{
    char path[PATH_MAX_LEN], where[KILN_CONFIG_WHERE_MAX], got[160];
    snprintf(path, sizeof path, "services.%s", name);
    kiln_config_where(o, path, where, sizeof where);
    if (!kiln_config_valid_name(name)) {
        kiln_config_quote(name, got, sizeof got);
        kiln_problems_add(ctx->problems,
                          "%s: expected a service name matching [a-z0-9][a-z0-9_-]{0,63}, got %s",
                          where, got);
        return;
    }
    if (!json_is_object(body)) {
        problem_expected(ctx, o, path, "a mapping with a command", body);
        return;
    }
    kiln_service_config_t s = {.restart = KILN_RESTART_ALWAYS,
                               .backoff_ms = -1,
                               .ready_timeout_ms = -1,
                               .stop_timeout_ms = -1,
                               .memory_limit_mb = -1,
                               .gpu = -1};
    bool ok = (s.name = strdup(name)) != NULL;
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)body, key, value)
    {
        if (ok && !load_service_key(ctx, o, &s, key, value))
            ok = false;
    }
    if (ok && !s.command) {
        kiln_problems_add(ctx->problems,
                          "%s: missing command; add command: [program, args...] (argv, no shell)",
                          where);
        ok = false;
    }
    kiln_service_config_t *grown =
        ok ? realloc(ctx->cfg->services, (ctx->cfg->n_services + 1) * sizeof *grown) : NULL;
    if (!grown) {
        service_free(&s);
        return;
    }
    ctx->cfg->services = grown;
    ctx->cfg->services[ctx->cfg->n_services++] = s;
}

void kiln_config_load_services(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                               const json_t *section)
{
    if (json_is_null(section))
        return;
    if (!json_is_object(section) || json_object_size(section) > KILN_CONFIG_MAX_SERVICES) {
        problem_expected(ctx, o, "services", "a mapping of at most 64 service names", section);
        return;
    }
    /* A second file or a reload replaces the section rather than merging. */
    for (size_t i = 0; i < ctx->cfg->n_services; i++)
        service_free(&ctx->cfg->services[i]);
    ctx->cfg->n_services = 0;
    const char *name;
    json_t *body;
    json_object_foreach((json_t *)section, name, body)
    {
        load_service(ctx, o, name, body);
    }
}

/* ---- output and release ---------------------------------------------------- */

static json_t *strv_to_json(char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static json_t *env_to_json(char *const *env, size_t n)
{
    json_t *obj = json_object();
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(env[i], '=');
        char key[160];
        snprintf(key, sizeof key, "%.*s", (int)(eq - env[i]), env[i]);
        json_object_set_new(obj, key, json_string(eq + 1));
    }
    return obj;
}

json_t *kiln_config_services_to_json(const kiln_config_t *cfg)
{
    /* Indexed by kiln_ready_kind_t; kinds the file cannot set have none. */
    static const char *const ready_keys[] = {NULL, "http", "tcp", "command", NULL, NULL};
    json_t *out = json_object();
    for (size_t i = 0; i < cfg->n_services; i++) {
        const kiln_service_config_t *s = &cfg->services[i];
        json_t *body = json_object();
        json_object_set_new(body, "command", strv_to_json(s->command, s->n_command));
        if (s->n_env)
            json_object_set_new(body, "env", env_to_json(s->env, s->n_env));
        if (s->cwd)
            json_object_set_new(body, "cwd", json_string(s->cwd));
        if (s->n_depends_on)
            json_object_set_new(body, "depends_on", strv_to_json(s->depends_on, s->n_depends_on));
        if (s->ready.kind == KILN_READY_COMMAND)
            json_object_set_new(
                body, "ready",
                json_pack("{s:o}", "command", strv_to_json(s->ready.command, s->ready.n_command)));
        else if (s->ready.target && (size_t)s->ready.kind < 6 && ready_keys[s->ready.kind])
            json_object_set_new(body, "ready",
                                json_pack("{s:s}", ready_keys[s->ready.kind], s->ready.target));
        json_object_set_new(body, "restart", json_string(restart_names[s->restart]));
        if (s->backoff_ms >= 0)
            json_object_set_new(body, "backoff_ms", json_integer(s->backoff_ms));
        if (s->ready_timeout_ms >= 0)
            json_object_set_new(body, "ready_timeout_ms", json_integer(s->ready_timeout_ms));
        if (s->stop_timeout_ms >= 0)
            json_object_set_new(body, "stop_timeout_ms", json_integer(s->stop_timeout_ms));
        if (s->memory_limit_mb > 0)
            json_object_set_new(body, "memory_limit_mb", json_integer(s->memory_limit_mb));
        if (s->port)
            json_object_set_new(body, "port", json_integer(s->port));
        if (s->gpu >= 0)
            json_object_set_new(body, "gpu", json_integer(s->gpu));
        if (s->n_downloads)
            json_object_set_new(body, "downloads", kiln_config_downloads_to_json(s));
        json_object_set_new(out, s->name, body);
    }
    return out;
}

json_t *kiln_config_templates_to_json(const kiln_config_t *cfg)
{
    json_t *out = json_object();
    for (size_t i = 0; i < N_TEMPLATES; i++) {
        const template_row_t *row = &template_rows[i];
        const kiln_template_config_t *t =
            (const kiln_template_config_t *)((const char *)cfg + row->offset);
        json_t *body = json_object();
        if (row->port_key)
            json_object_set_new(body, row->port_key, json_integer(t->port));
        if (t->command)
            json_object_set_new(body, "command", strv_to_json(t->command, t->n_command));
        if (t->cwd)
            json_object_set_new(body, "cwd", json_string(t->cwd));
        if (t->n_env)
            json_object_set_new(body, "env", env_to_json(t->env, t->n_env));
        json_object_set_new(out, row->name, body);
    }
    return out;
}

static void template_free(kiln_template_config_t *t)
{
    free_strv(t->command, t->n_command);
    free(t->cwd);
    free_strv(t->env, t->n_env);
    memset(t, 0, sizeof *t);
}

void kiln_config_services_free(kiln_config_t *cfg)
{
    for (size_t i = 0; i < cfg->n_services; i++)
        service_free(&cfg->services[i]);
    free(cfg->services);
    cfg->services = NULL;
    cfg->n_services = 0;
    for (size_t i = 0; i < N_TEMPLATES; i++)
        template_free((kiln_template_config_t *)((char *)cfg + template_rows[i].offset));
}

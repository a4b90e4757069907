/*
 * Configuration loading: defaults, then the file, then the environment, each
 * value checked against the schema in config_schema.c. Problems are
 * collected, never returned one at a time, so a user fixes a bad file in one
 * pass.
 */
#include "kiln/config.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config_schema.h"
#include "core/yaml_tree.h"
#include "kiln/err.h"

#define KILN_PROBLEMS_MAX 200

static const char *const section_names[] = {
    "redis", "machine", "log", "broker", "worker", "connectors", "services", "templates", "hub"};
#define N_SECTIONS (sizeof section_names / sizeof section_names[0])

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* Problems end up on terminals and in logs: bytes that a terminal would
 * interpret (C0 controls, DEL, and C1 controls encoded as UTF-8) become '?'. */
static void make_printable(char *s)
{
    for (unsigned char *c = (unsigned char *)s; *c; c++) {
        if (*c < 0x20 || *c == 0x7f)
            *c = '?';
        else if (*c == 0xc2 && c[1] >= 0x80 && c[1] <= 0x9f)
            c[0] = c[1] = '?';
    }
}

static void push_problem(kiln_problems_t *p, char *msg)
{
    char **grown = realloc(p->items, (p->count + 1) * sizeof *grown);
    if (!grown) {
        free(msg);
        return;
    }
    p->items = grown;
    p->items[p->count++] = msg;
}

/* Past KILN_PROBLEMS_MAX the list holds one more item, "... and N more
 * problems", which each further problem rewrites. */
static void count_more(kiln_problems_t *p, size_t n)
{
    size_t more = 0;
    if (p->count > KILN_PROBLEMS_MAX) {
        if (sscanf(p->items[KILN_PROBLEMS_MAX], "... and %zu more", &more) != 1)
            more = 0;
        free(p->items[KILN_PROBLEMS_MAX]);
        p->count--;
    }
    char *msg = NULL;
    if (asprintf(&msg, "... and %zu more problem%s", more + n, more + n == 1 ? "" : "s") < 0)
        return;
    push_problem(p, msg);
}

void kiln_problems_add(kiln_problems_t *p, const char *fmt, ...)
{
    if (!p)
        return;
    if (p->count >= KILN_PROBLEMS_MAX) {
        count_more(p, 1);
        return;
    }
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    make_printable(msg);
    push_problem(p, msg);
}

void kiln_problems_clear(kiln_problems_t *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->count; i++)
        free(p->items[i]);
    free(p->items);
    p->items = NULL;
    p->count = 0;
}

void kiln_config_init_defaults(kiln_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    char host[256] = {0};
    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "localhost");
    cfg->redis_url = strdup("redis://127.0.0.1:6379");
    cfg->machine_id = strdup(host);
    cfg->log_format = KILN_LOG_JSON;
    cfg->log_level = KILN_LOG_INFO;
    cfg->broker.max_payload_bytes = 1048576;
    cfg->broker.stream_max_len = 100000;
    cfg->broker.retention_age_s = 604800;
    cfg->broker.retention_count = 10000;
    cfg->broker.default_max_attempts = 3;
    cfg->broker.backoff_base_ms = 1000;
    cfg->broker.backoff_max_ms = 300000;
    cfg->broker.lease_ms = 30000;
    cfg->worker.capabilities = json_object();
    cfg->worker.concurrency = 1;
    cfg->worker.heartbeat_ms = 0;
    cfg->worker.shutdown_grace_ms = 30000;
    cfg->worker.registry_ttl_ms = 15000;
    cfg->worker.health_interval_ms = 10000;
    cfg->worker.prefetch = 1;
    cfg->machine.type = KILN_MACHINE_AUTO;
    cfg->machine.gpu_count = -1;
    cfg->machine.has_gpu = true;
    cfg->machine.ram_gb = 0;
    cfg->machine.instances_per_gpu = 1;
    cfg->machine.api_workers = 1;
    cfg->machine.health_port = 9090;
    cfg->machine.install_timeout_s = 300;
    kiln_config_templates_defaults(cfg);
    kiln_config_hub_defaults(cfg);
}

void kiln_config_free(kiln_config_t *cfg)
{
    if (!cfg)
        return;
    free(cfg->source_path);
    free(cfg->redis_url);
    free(cfg->machine_id);
    free(cfg->worker.id);
    for (size_t i = 0; i < cfg->worker.n_connectors; i++)
        free(cfg->worker.connectors[i]);
    free(cfg->worker.connectors);
    json_decref(cfg->worker.capabilities);
    free(cfg->worker.active_windows);
    for (size_t i = 0; i < cfg->n_connectors; i++) {
        free(cfg->connectors[i].name);
        free(cfg->connectors[i].type);
        json_decref(cfg->connectors[i].options);
    }
    free(cfg->connectors);
    for (size_t i = 0; i < cfg->machine.n_pools; i++)
        free(cfg->machine.pools[i]);
    free(cfg->machine.pools);
    free(cfg->machine.api_token);
    kiln_config_services_free(cfg);
    kiln_config_hub_free(cfg);
    memset(cfg, 0, sizeof *cfg);
}

/* Edit distance counting a swap of two neighbours as one edit ("wroker"),
 * capped: long keys are not worth comparing. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return (size_t)-1;
    size_t d[65][65];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

typedef struct suggestion {
    const char *word;
    const char *best;
    size_t distance;
} suggestion_t;

/* Keeps candidate when it is nearer to s->word, or as near and starting with
 * the same letter (people rarely mistype the first one). */
static void consider(suggestion_t *s, const char *candidate)
{
    size_t d = edit_distance(s->word, candidate);
    bool same_start = candidate[0] == s->word[0];
    if (d < s->distance ||
        (d == s->distance && same_start && s->best && s->best[0] != s->word[0])) {
        s->distance = d;
        s->best = candidate;
    }
}

/* The schema key closest to path: the same leaf in another section first
 * ("worker.lease_ms" -> "broker.lease_ms"), else the nearest spelling. */
static const char *suggest_field(const char *path)
{
    const char *leaf = strchr(path, '.');
    suggestion_t s = {.word = path, .best = NULL, .distance = 4};
    for (size_t i = 0; i < KILN_CONFIG_N_FIELDS; i++) {
        const char *candidate = kiln_config_fields[i].path;
        if (leaf && strcmp(strchr(candidate, '.'), leaf) == 0)
            return candidate;
        consider(&s, candidate);
    }
    return s.best;
}

/* For a top-level key: a section of similar spelling, or the setting of
 * that name when the section around it was left out ("concurrency" ->
 * "worker.concurrency"). */
static const char *suggest_section(const char *key)
{
    suggestion_t s = {.word = key, .best = NULL, .distance = 3};
    for (size_t i = 0; i < N_SECTIONS; i++)
        consider(&s, section_names[i]);
    if (s.best)
        return s.best;
    for (size_t i = 0; i < KILN_CONFIG_N_FIELDS; i++) {
        if (strcmp(strchr(kiln_config_fields[i].path, '.') + 1, key) == 0)
            return kiln_config_fields[i].path;
    }
    return NULL;
}

static void unknown_key(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                        const char *section)
{
    char where[KILN_CONFIG_WHERE_MAX];
    kiln_config_where(o, path, where, sizeof where);
    const char *hint = section ? suggest_field(path) : suggest_section(path);
    if (hint) {
        kiln_problems_add(ctx->problems, "%s: unknown key; did you mean %s?", where, hint);
        return;
    }
    char known[512] = "";
    size_t section_len = section ? strlen(section) : 0;
    for (size_t i = 0; section && i < KILN_CONFIG_N_FIELDS; i++) {
        const char *p = kiln_config_fields[i].path;
        if (strncmp(p, section, section_len) == 0 && p[section_len] == '.')
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
                     known[0] ? ", " : "", p + section_len + 1);
    }
    for (size_t i = 0; !section && i < N_SECTIONS; i++)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "",
                 section_names[i]);
    kiln_problems_add(ctx->problems, "%s: unknown key; expected one of %s", where, known);
}

static void load_section(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *section,
                         const json_t *body)
{
    char where[KILN_CONFIG_WHERE_MAX], got[160], path[KILN_YAML_MAX_KEY * 2 + 2];
    if (json_is_null(body))
        return;
    if (!json_is_object(body)) {
        kiln_config_where(o, section, where, sizeof where);
        kiln_config_describe(body, got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: expected a mapping, got %s", where, got);
        return;
    }
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)body, key, value)
    {
        snprintf(path, sizeof path, "%s.%s", section, key);
        const kiln_config_field_t *f = kiln_config_field_find(path);
        if (!f)
            unknown_key(ctx, o, path, section);
        else if (!json_is_null(value))
            kiln_config_field_set_json(ctx, f, value, o);
    }
}

static bool valid_type(const char *type)
{
    size_t n = strlen(type);
    return n > 0 && n <= KILN_CONFIG_NAME_MAX &&
           strspn(type, "abcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

/* Takes ownership of options. */
static void add_connector(kiln_config_t *cfg, const char *name, const char *type, json_t *options)
{
    kiln_connector_config_t *grown =
        realloc(cfg->connectors, (cfg->n_connectors + 1) * sizeof *grown);
    char *name_copy = strdup(name), *type_copy = strdup(type);
    if (!grown || !name_copy || !type_copy || !options) {
        if (grown)
            cfg->connectors = grown;
        free(name_copy);
        free(type_copy);
        json_decref(options);
        return;
    }
    cfg->connectors = grown;
    cfg->connectors[cfg->n_connectors++] =
        (kiln_connector_config_t){.name = name_copy, .type = type_copy, .options = options};
}

static void load_connector(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *name,
                           const json_t *body)
{
    char path[KILN_YAML_MAX_KEY + 32], where[KILN_CONFIG_WHERE_MAX], got[160];
    snprintf(path, sizeof path, "connectors.%s", name);
    kiln_config_where(o, path, where, sizeof where);
    if (!kiln_config_valid_name(name)) {
        kiln_config_quote(name, got, sizeof got);
        kiln_problems_add(ctx->problems,
                          "%s: expected a connector name matching [a-z0-9][a-z0-9_-]{0,63}, got %s",
                          where, got);
        return;
    }
    if (!json_is_object(body)) {
        kiln_config_describe(body, got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: expected a mapping with a type, got %s", where, got);
        return;
    }
    const json_t *type = json_object_get(body, "type");
    if (!type) {
        kiln_problems_add(ctx->problems,
                          "%s: missing type; add type: <connector type> (simulation, exec, openai, "
                          "...)",
                          where);
        return;
    }
    if (!json_is_string(type) || !valid_type(json_string_value(type))) {
        snprintf(path, sizeof path, "connectors.%s.type", name);
        kiln_config_where(o, path, where, sizeof where);
        kiln_config_describe(type, got, sizeof got);
        kiln_problems_add(ctx->problems,
                          "%s: expected a connector type of [a-z0-9_-] (1-64 characters), got %s",
                          where, got);
        return;
    }
    json_t *options = json_deep_copy(body);
    json_object_del(options, "type");
    add_connector(ctx->cfg, name, json_string_value(type), options);
}

static void load_connectors(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                            const json_t *section)
{
    char where[KILN_CONFIG_WHERE_MAX], got[160];
    if (json_is_null(section))
        return;
    if (!json_is_object(section)) {
        kiln_config_where(o, "connectors", where, sizeof where);
        kiln_config_describe(section, got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: expected a mapping of connector names, got %s", where,
                          got);
        return;
    }
    if (json_object_size(section) > KILN_CONFIG_MAX_CONNECTORS) {
        kiln_config_where(o, "connectors", where, sizeof where);
        kiln_problems_add(ctx->problems, "%s: expected at most %d connectors, got %zu", where,
                          KILN_CONFIG_MAX_CONNECTORS, json_object_size(section));
        return;
    }
    const char *name;
    json_t *body;
    json_object_foreach((json_t *)section, name, body)
    {
        load_connector(ctx, o, name, body);
    }
}

static void load_root(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const json_t *root)
{
    if (json_is_null(root))
        return; /* an empty file (or only comments) sets nothing */
    if (!json_is_object(root)) {
        char got[160];
        kiln_config_describe(root, got, sizeof got);
        kiln_problems_add(ctx->problems,
                          "%s:1: expected a mapping of sections (redis, machine, log, broker, "
                          "worker, connectors, services, templates, hub), got %s",
                          o->file, got);
        return;
    }
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)root, key, value)
    {
        bool known = false;
        for (size_t i = 0; i < N_SECTIONS; i++)
            known = known || strcmp(key, section_names[i]) == 0;
        if (!known)
            unknown_key(ctx, o, key, NULL);
        else if (strcmp(key, "connectors") == 0)
            load_connectors(ctx, o, value);
        else if (strcmp(key, "services") == 0)
            kiln_config_load_services(ctx, o, value);
        else if (strcmp(key, "templates") == 0)
            kiln_config_load_templates(ctx, o, value);
        else if (strcmp(key, "hub") == 0)
            kiln_config_load_hub(ctx, o, value);
        else
            load_section(ctx, o, key, value);
    }
}

static void load_file(kiln_config_ctx_t *ctx, const char *file)
{
    kiln_yaml_doc_t doc;
    kiln_err_t err = {0};
    int rc = kiln_yaml_load_file(file, &doc, &err);
    if (rc == KILN_ENOTFOUND) {
        kiln_problems_add(ctx->problems, "%s; check the path of the config file", err.msg);
        return;
    }
    if (rc != 0) {
        kiln_problems_add(ctx->problems, "%s", err.msg);
        return;
    }
    ctx->cfg->source_path = strdup(file);
    kiln_config_origin_t o = {.file = file, .doc = &doc};
    load_root(ctx, &o, doc.root);
    kiln_yaml_doc_free(&doc);
}

/* A name in worker.connectors without a definition is a connector of the
 * type of the same name with no options (WORKER_CONNECTORS=simulation). */
static void add_implicit_connectors(kiln_config_t *cfg)
{
    for (size_t i = 0; i < cfg->worker.n_connectors; i++) {
        const char *name = cfg->worker.connectors[i];
        if (!kiln_config_connector(cfg, name))
            add_connector(cfg, name, name, json_object());
    }
}

extern char **environ;

/* Whether url can be a connector's base_url: http(s)://, printable, no
 * blanks or commas (the list separator). */
static bool valid_base_url(const char *url, size_t len)
{
    size_t scheme = strncmp(url, "http://", 7) == 0 ? 7 : strncmp(url, "https://", 8) == 0 ? 8 : 0;
    if (scheme == 0 || len <= scheme)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c >= 0x7f || c == ',')
            return false;
    }
    return true;
}

/* KILN_CONNECTOR_URLS=NAME=URL[,NAME=URL...] sets base_url of the named
 * connectors. The machine agent uses it to point the worker of GPU instance
 * n at its own ComfyUI (docs/machine.md); it wins over the file. */
static void apply_connector_urls(kiln_config_ctx_t *ctx, char **envp)
{
    const char *var = "KILN_CONNECTOR_URLS=";
    const char *text = NULL;
    for (char **e = envp ? envp : environ; *e; e++) {
        if (strncmp(*e, var, strlen(var)) == 0)
            text = *e + strlen(var);
    }
    while (text && *text) {
        size_t len = strcspn(text, ","), name_len = strcspn(text, "=");
        char name[KILN_CONFIG_NAME_MAX + 1], got[160];
        char *entry = strndup(text, len);
        if (!entry)
            return;
        kiln_config_quote(entry, got, sizeof got);
        bool ok = name_len < len && name_len <= KILN_CONFIG_NAME_MAX;
        if (ok) {
            snprintf(name, sizeof name, "%.*s", (int)name_len, text);
            ok = kiln_config_valid_name(name) &&
                 valid_base_url(text + name_len + 1, len - name_len - 1);
        }
        if (!ok) {
            kiln_problems_add(ctx->problems,
                              "environment KILN_CONNECTOR_URLS: expected NAME=URL entries "
                              "separated by commas (a connector name, an http:// or https:// "
                              "URL), got %s",
                              got);
        } else {
            if (!kiln_config_connector(ctx->cfg, name))
                add_connector(ctx->cfg, name, name, json_object());
            const kiln_connector_config_t *c = kiln_config_connector(ctx->cfg, name);
            if (c)
                json_object_set_new(c->options, "base_url", json_string(entry + name_len + 1));
        }
        free(entry);
        text += len;
        if (*text == ',')
            text++;
    }
}

int kiln_config_load(kiln_config_t *cfg, const char *path, char **envp, kiln_problems_t *problems)
{
    kiln_problems_t found = {0};
    kiln_config_ctx_t ctx = {.cfg = cfg, .problems = &found};
    kiln_config_init_defaults(cfg);
    if (!path && access("kiln.yaml", F_OK) == 0)
        path = "kiln.yaml";
    if (path)
        load_file(&ctx, path);
    kiln_config_apply_env(&ctx, envp);
    kiln_config_hub_apply_env(&ctx, envp);
    kiln_config_check_across(&ctx);
    add_implicit_connectors(cfg);
    apply_connector_urls(&ctx, envp);
    for (size_t i = 0; i < KILN_CONFIG_N_FIELDS; i++)
        free(ctx.set_at[i]);
    int rc = found.count > 0 ? KILN_EINVAL : 0;
    for (size_t i = 0; problems && i < found.count; i++) {
        size_t more;
        if (i == KILN_PROBLEMS_MAX && sscanf(found.items[i], "... and %zu more", &more) == 1)
            count_more(problems, more);
        else
            kiln_problems_add(problems, "%s", found.items[i]);
    }
    kiln_problems_clear(&found);
    return rc;
}

int kiln_config_set_flag(kiln_config_t *cfg, const char *path, const char *flag, const char *text,
                         kiln_problems_t *problems)
{
    if (strncmp(path, "hub.", 4) == 0) {
        kiln_config_ctx_t hub_ctx = {.cfg = cfg, .problems = problems};
        return kiln_config_hub_set_text(&hub_ctx, path, flag, text) ? 0 : KILN_EINVAL;
    }
    const kiln_config_field_t *f = kiln_config_field_find(path);
    if (!f) {
        kiln_problems_add(problems, "%s: no setting %s", flag, path);
        return KILN_EINVAL;
    }
    kiln_config_ctx_t ctx = {.cfg = cfg, .problems = problems};
    kiln_config_origin_t o = {.flag = flag};
    bool ok = kiln_config_field_set_text(&ctx, f, text, &o);
    for (size_t i = 0; i < KILN_CONFIG_N_FIELDS; i++)
        free(ctx.set_at[i]);
    if (ok)
        add_implicit_connectors(cfg);
    return ok ? 0 : KILN_EINVAL;
}

const kiln_connector_config_t *kiln_config_connector(const kiln_config_t *cfg, const char *name)
{
    for (size_t i = 0; cfg && name && i < cfg->n_connectors; i++) {
        if (strcmp(cfg->connectors[i].name, name) == 0)
            return &cfg->connectors[i];
    }
    return NULL;
}

static bool secret_key(const char *key)
{
    static const char *const words[] = {"key",    "token",      "secret",       "password",
                                        "passwd", "credential", "authorization"};
    char lower[KILN_YAML_MAX_KEY + 1];
    size_t n = 0;
    for (; key[n] && n < KILN_YAML_MAX_KEY; n++)
        lower[n] = (char)tolower((unsigned char)key[n]);
    lower[n] = '\0';
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        if (strstr(lower, words[i]))
            return true;
    }
    return false;
}

/* A copy of v with the values of secret-looking keys replaced by "***" (an
 * empty string or null stays, as it hides nothing) and URL passwords
 * masked, at any depth. */
static json_t *redact_value(const json_t *v)
{
    const char *key;
    json_t *child;
    size_t i;
    if (json_is_object(v)) {
        json_t *out = json_object();
        json_object_foreach((json_t *)v, key, child)
        {
            bool empty =
                json_is_null(child) || (json_is_string(child) && !json_string_length(child));
            json_object_set_new(
                out, key, secret_key(key) && !empty ? json_string("***") : redact_value(child));
        }
        return out;
    }
    if (json_is_array(v)) {
        json_t *out = json_array();
        json_array_foreach(v, i, child)
        {
            json_array_append_new(out, redact_value(child));
        }
        return out;
    }
    if (json_is_string(v) && strstr(json_string_value(v), "://") &&
        strchr(json_string_value(v), '@')) {
        char *masked = kiln_config_redact_url(json_string_value(v));
        json_t *out = masked ? json_string(masked) : json_string("***");
        free(masked);
        return out;
    }
    return json_deep_copy(v);
}

static json_t *field_to_json(const kiln_config_t *cfg, const kiln_config_field_t *f)
{
    const char *member = (const char *)cfg + f->offset;
    switch (f->kind) {
    case KILN_FIELD_INT:
        return json_integer(f->size == sizeof(int) ? *(const int *)member : *(const long *)member);
    case KILN_FIELD_LOG_FORMAT:
        return json_string(*(const kiln_log_format_t *)member == KILN_LOG_TEXT ? "text" : "json");
    case KILN_FIELD_LOG_LEVEL:
        return json_string(level_names[*(const kiln_log_level_t *)member & 3]);
    case KILN_FIELD_NAMES: {
        json_t *names = json_array();
        char *const *items = *(char **const *)member;
        size_t count = *(const size_t *)((const char *)cfg + f->count_offset);
        for (size_t i = 0; i < count; i++)
            json_array_append_new(names, json_string(items[i]));
        return names;
    }
    case KILN_FIELD_BOOL:
        return json_boolean(*(const bool *)member);
    case KILN_FIELD_MACHINE_TYPE:
        return json_string(
            kiln_config_machine_type_names[*(const kiln_machine_type_t *)member & 3]);
    case KILN_FIELD_OBJECT: {
        json_t *obj = *(json_t *const *)member;
        return obj ? json_deep_copy(obj) : json_object();
    }
    case KILN_FIELD_SECRET:
        return *(char *const *)member ? json_string("***") : json_null();
    case KILN_FIELD_REDIS_URL: {
        const char *url = *(char *const *)member;
        char *masked = url ? kiln_config_redact_url(url) : NULL;
        json_t *out = masked ? json_string(masked) : json_null();
        free(masked);
        return out;
    }
    default: {
        const char *text = *(char *const *)member;
        return text ? json_string(text) : json_null();
    }
    }
}

json_t *kiln_config_to_json_redacted(const kiln_config_t *cfg)
{
    json_t *root = json_object();
    for (size_t i = 0; i < KILN_CONFIG_N_FIELDS; i++) {
        const kiln_config_field_t *f = &kiln_config_fields[i];
        const char *dot = strchr(f->path, '.');
        char section[32];
        snprintf(section, sizeof section, "%.*s", (int)(dot - f->path), f->path);
        json_t *obj = json_object_get(root, section);
        if (!obj) {
            obj = json_object();
            json_object_set_new(root, section, obj);
        }
        json_object_set_new(obj, dot + 1, field_to_json(cfg, f));
    }
    json_t *connectors = json_object();
    for (size_t i = 0; i < cfg->n_connectors; i++) {
        const kiln_connector_config_t *c = &cfg->connectors[i];
        json_t *body = json_pack("{s:s}", "type", c->type);
        json_t *options = redact_value(c->options);
        json_object_update(body, options);
        json_decref(options);
        json_object_set_new(connectors, c->name, body);
    }
    json_object_set_new(root, "connectors", connectors);
    json_t *services = kiln_config_services_to_json(cfg);
    json_object_set_new(root, "services", redact_value(services));
    json_decref(services);
    json_t *templates = kiln_config_templates_to_json(cfg);
    json_object_set_new(root, "templates", redact_value(templates));
    json_decref(templates);
    json_object_set_new(root, "hub", kiln_config_hub_to_json(cfg));
    return root;
}

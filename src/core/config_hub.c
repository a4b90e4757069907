/*
 * The hub: section of the configuration (docs/config.md, docs/hub.md):
 * listen address, request threads, the request body limit, bearer tokens
 * with roles, and CORS origins. Loaded from the file, then from KILN_HUB_*
 * variables, with every problem naming the key (or variable) and the fix.
 * Token values never appear in a problem.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config_schema.h"

extern char **environ;

#define TOKEN_MIN 16
#define TOKEN_MAX 256

static const char *const role_names[] = {"admin", "submit", "read"};

static bool parse_long(const char *text, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (!*text || *end || errno || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool kiln_config_hub_listen_ok(const char *text)
{
    size_t len = strlen(text);
    if (len == 0 || len > 63)
        return false;
    const char *colon = strrchr(text, ':');
    const char *port = colon ? colon + 1 : text;
    long n;
    if (!parse_long(port, 0, 65535, &n) || strspn(port, "0123456789") != strlen(port))
        return false;
    if (!colon)
        return true;
    size_t host_len = (size_t)(colon - text);
    return host_len > 0 && strspn(text, "0123456789.") >= host_len;
}

static bool origin_ok(const char *text)
{
    size_t len = strlen(text);
    if (strcmp(text, "*") == 0)
        return true;
    size_t scheme = strncmp(text, "http://", 7) == 0    ? 7
                    : strncmp(text, "https://", 8) == 0 ? 8
                                                        : 0;
    if (!scheme || len <= scheme || len > 256 || text[len - 1] == '/')
        return false;
    for (size_t i = scheme; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c <= 0x20 || c >= 0x7f || c == ',' || c == '/')
            return false;
    }
    return true;
}

static bool token_name_ok(const char *name)
{
    size_t n = strlen(name);
    return n > 0 && n <= KILN_CONFIG_NAME_MAX &&
           strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static bool token_value_ok(const char *token)
{
    size_t n = strlen(token);
    if (n < TOKEN_MIN || n > TOKEN_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)token[i];
        if (c <= 0x20 || c >= 0x7f || c == ',')
            return false;
    }
    return true;
}

static int role_parse(const char *text)
{
    for (int i = 0; text && i < 3; i++) {
        if (strcmp(text, role_names[i]) == 0)
            return i;
    }
    return -1;
}

const char *kiln_config_hub_role_name(kiln_hub_role_t role)
{
    return role_names[role % 3];
}

static void clear_tokens(kiln_config_t *cfg)
{
    for (size_t i = 0; i < cfg->hub.n_tokens; i++) {
        free(cfg->hub.tokens[i].name);
        if (cfg->hub.tokens[i].token)
            explicit_bzero(cfg->hub.tokens[i].token, strlen(cfg->hub.tokens[i].token));
        free(cfg->hub.tokens[i].token);
    }
    free(cfg->hub.tokens);
    cfg->hub.tokens = NULL;
    cfg->hub.n_tokens = 0;
}

static void clear_origins(kiln_config_t *cfg)
{
    for (size_t i = 0; i < cfg->hub.n_cors_origins; i++)
        free(cfg->hub.cors_origins[i]);
    free(cfg->hub.cors_origins);
    cfg->hub.cors_origins = NULL;
    cfg->hub.n_cors_origins = 0;
}

/* Adds one token; checks it. where names it in problems. */
static bool add_token(kiln_config_ctx_t *ctx, const char *where, const char *name, const char *role,
                      const char *token)
{
    char got[160];
    if (!name || !token_name_ok(name)) {
        kiln_config_quote(name ? name : "(missing)", got, sizeof got);
        kiln_problems_add(ctx->problems,
                          "%s: name: expected letters, digits, '.', '_' or '-' (1-64), got %s",
                          where, got);
        return false;
    }
    int r = role_parse(role);
    if (r < 0) {
        kiln_config_quote(role ? role : "(missing)", got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: role: expected admin, submit or read, got %s", where,
                          got);
        return false;
    }
    if (!token || !token_value_ok(token)) {
        kiln_problems_add(ctx->problems,
                          "%s: token: expected %d-%d printable characters without blanks or "
                          "commas (generate one with: openssl rand -hex 24); the value is not "
                          "shown",
                          where, TOKEN_MIN, TOKEN_MAX);
        return false;
    }
    for (size_t i = 0; i < ctx->cfg->hub.n_tokens; i++) {
        if (strcmp(ctx->cfg->hub.tokens[i].name, name) == 0) {
            kiln_problems_add(ctx->problems, "%s: name \"%s\" is used twice; names must differ",
                              where, name);
            return false;
        }
    }
    if (ctx->cfg->hub.n_tokens >= KILN_CONFIG_HUB_TOKENS_MAX) {
        kiln_problems_add(ctx->problems, "%s: at most %d tokens", where,
                          KILN_CONFIG_HUB_TOKENS_MAX);
        return false;
    }
    kiln_hub_token_config_t *grown =
        realloc(ctx->cfg->hub.tokens, (ctx->cfg->hub.n_tokens + 1) * sizeof *grown);
    if (!grown)
        return false;
    ctx->cfg->hub.tokens = grown;
    grown[ctx->cfg->hub.n_tokens++] =
        (kiln_hub_token_config_t){strdup(name), strdup(token), (kiln_hub_role_t)r};
    return true;
}

static bool add_origin(kiln_config_ctx_t *ctx, const char *where, const char *origin)
{
    char got[160];
    if (!origin_ok(origin)) {
        kiln_config_quote(origin, got, sizeof got);
        kiln_problems_add(ctx->problems,
                          "%s: expected \"*\" or origins like https://app.example.com "
                          "(scheme://host[:port], no path), got %s",
                          where, got);
        return false;
    }
    char **grown =
        realloc(ctx->cfg->hub.cors_origins, (ctx->cfg->hub.n_cors_origins + 1) * sizeof *grown);
    if (!grown)
        return false;
    ctx->cfg->hub.cors_origins = grown;
    grown[ctx->cfg->hub.n_cors_origins++] = strdup(origin);
    return true;
}

/* Sets one scalar key from text (file, environment or flag). */
static bool set_scalar(kiln_config_ctx_t *ctx, const char *key, const char *text, const char *where)
{
    char got[160];
    kiln_config_quote(text ? text : "(not a string or number)", got, sizeof got);
    long n;
    if (strcmp(key, "listen") == 0) {
        if (!text || !kiln_config_hub_listen_ok(text)) {
            kiln_problems_add(ctx->problems,
                              "%s: expected host:port or port, e.g. 127.0.0.1:8080 or "
                              "0.0.0.0:8080 (IPv4; port 0-65535), got %s",
                              where, got);
            return false;
        }
        free(ctx->cfg->hub.listen);
        ctx->cfg->hub.listen = strdup(text);
    } else if (strcmp(key, "threads") == 0) {
        if (!text || !parse_long(text, 4, 1024, &n)) {
            kiln_problems_add(ctx->problems, "%s: expected an integer 4-1024, got %s", where, got);
            return false;
        }
        ctx->cfg->hub.threads = (int)n;
    } else if (strcmp(key, "rate_limit_per_s") == 0) {
        if (!text || !parse_long(text, 0, 1000000, &n)) {
            kiln_problems_add(ctx->problems,
                              "%s: expected an integer 0-1000000 (requests per second per token; "
                              "0: no limit), got %s",
                              where, got);
            return false;
        }
        ctx->cfg->hub.rate_limit_per_s = (int)n;
    } else {
        if (!text || !parse_long(text, 1024, 67108864, &n)) {
            kiln_problems_add(ctx->problems,
                              "%s: expected an integer 1024-67108864 (bytes), got %s", where, got);
            return false;
        }
        ctx->cfg->hub.max_body_bytes = n;
    }
    return true;
}

static const char *const scalar_keys[] = {"listen", "threads", "max_body_bytes",
                                          "rate_limit_per_s"};
#define N_SCALARS (sizeof scalar_keys / sizeof scalar_keys[0])

static bool is_scalar_key(const char *key)
{
    for (size_t i = 0; i < N_SCALARS; i++) {
        if (strcmp(key, scalar_keys[i]) == 0)
            return true;
    }
    return false;
}

static void load_tokens(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const json_t *list)
{
    char where[KILN_CONFIG_WHERE_MAX], got[160];
    if (!json_is_array(list)) {
        kiln_config_where(o, "hub.tokens", where, sizeof where);
        kiln_config_describe(list, got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: expected a list of {name, role, token}, got %s",
                          where, got);
        return;
    }
    clear_tokens(ctx->cfg);
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item)
    {
        char path[64];
        snprintf(path, sizeof path, "hub.tokens[%zu]", i);
        kiln_config_where(o, "hub.tokens", where, sizeof where);
        snprintf(where + strlen(where), sizeof where - strlen(where), "[%zu]", i);
        if (!json_is_object(item)) {
            kiln_problems_add(ctx->problems, "%s: expected a mapping {name, role, token}", where);
            continue;
        }
        const char *k;
        json_t *v;
        json_object_foreach(item, k, v)
        {
            if (strcmp(k, "name") && strcmp(k, "role") && strcmp(k, "token"))
                kiln_problems_add(ctx->problems,
                                  "%s.%.64s: unknown key; expected name, role, token", where, k);
        }
        add_token(ctx, where, json_string_value(json_object_get(item, "name")),
                  json_string_value(json_object_get(item, "role")),
                  json_string_value(json_object_get(item, "token")));
    }
}

static void load_origins(kiln_config_ctx_t *ctx, const char *where, const json_t *list)
{
    char got[160];
    if (!json_is_array(list)) {
        kiln_config_describe(list, got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: expected a list of origins, got %s", where, got);
        return;
    }
    clear_origins(ctx->cfg);
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item)
    {
        if (!json_is_string(item) || i >= 64) {
            kiln_problems_add(ctx->problems, "%s[%zu]: expected an origin string (at most 64)",
                              where, i);
            continue;
        }
        add_origin(ctx, where, json_string_value(item));
    }
}

void kiln_config_hub_defaults(kiln_config_t *cfg)
{
    cfg->hub.listen = strdup(KILN_CONFIG_HUB_LISTEN_DEFAULT);
    cfg->hub.threads = 64;
    cfg->hub.max_body_bytes = 2 * 1048576;
    cfg->hub.webhooks.max_attempts = 5;
}

void kiln_config_load_hub(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                          const json_t *section)
{
    char where[KILN_CONFIG_WHERE_MAX], got[160];
    if (json_is_null(section))
        return;
    if (!json_is_object(section)) {
        kiln_config_where(o, "hub", where, sizeof where);
        kiln_config_describe(section, got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: expected a mapping, got %s", where, got);
        return;
    }
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)section, key, value)
    {
        char path[96];
        snprintf(path, sizeof path, "hub.%.64s", key);
        kiln_config_where(o, path, where, sizeof where);
        if (strcmp(key, "tokens") == 0)
            load_tokens(ctx, o, value);
        else if (strcmp(key, "cors_origins") == 0)
            load_origins(ctx, where, value);
        else if (strcmp(key, "webhooks") == 0)
            kiln_config_load_hub_webhooks(ctx, o, value);
        else if (is_scalar_key(key)) {
            char num[32];
            const char *text = json_string_value(value);
            if (json_is_integer(value)) {
                snprintf(num, sizeof num, "%lld", (long long)json_integer_value(value));
                text = num;
            }
            set_scalar(ctx, key, text, where);
        } else
            kiln_problems_add(ctx->problems,
                              "%s: unknown key; expected one of listen, threads, max_body_bytes, "
                              "rate_limit_per_s, tokens, cors_origins, webhooks",
                              where);
    }
}

/* KILN_HUB_TOKENS=NAME:ROLE:TOKEN[,NAME:ROLE:TOKEN...] */
static void env_tokens(kiln_config_ctx_t *ctx, const char *text)
{
    clear_tokens(ctx->cfg);
    size_t index = 0;
    while (*text) {
        size_t len = strcspn(text, ",");
        char *entry = strndup(text, len);
        char where[96];
        snprintf(where, sizeof where, "environment KILN_HUB_TOKENS entry %zu", index++);
        char *role = entry ? strchr(entry, ':') : NULL;
        char *token = role ? strchr(role + 1, ':') : NULL;
        if (!token)
            kiln_problems_add(ctx->problems,
                              "%s: expected NAME:ROLE:TOKEN (role admin, submit or "
                              "read); entries are separated by commas",
                              where);
        else {
            *role++ = '\0';
            *token++ = '\0';
            add_token(ctx, where, entry, role, token);
        }
        free(entry);
        text += len;
        if (*text == ',')
            text++;
    }
}

static void env_origins(kiln_config_ctx_t *ctx, const char *text)
{
    clear_origins(ctx->cfg);
    while (*text) {
        size_t len = strcspn(text, ",");
        char *entry = strndup(text, len);
        if (entry && *entry)
            add_origin(ctx, "environment KILN_HUB_CORS_ORIGINS", entry);
        free(entry);
        text += len;
        if (*text == ',')
            text++;
    }
}

void kiln_config_hub_apply_env(kiln_config_ctx_t *ctx, char **envp)
{
    for (char **e = envp ? envp : environ; *e; e++) {
        for (size_t i = 0; i < N_SCALARS; i++) {
            /* KILN_HUB_<KEY>, e.g. KILN_HUB_MAX_BODY_BYTES */
            char var[64];
            size_t n = (size_t)snprintf(var, sizeof var, "KILN_HUB_%s=", scalar_keys[i]);
            for (char *c = var; *c; c++)
                *c = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
            if (strncmp(*e, var, n) == 0) {
                char where[80];
                snprintf(where, sizeof where, "environment %.*s", (int)n - 1, var);
                set_scalar(ctx, scalar_keys[i], *e + n, where);
            }
        }
        if (strncmp(*e, "KILN_HUB_TOKENS=", 16) == 0)
            env_tokens(ctx, *e + 16);
        else if (strncmp(*e, "KILN_HUB_CORS_ORIGINS=", 22) == 0)
            env_origins(ctx, *e + 22);
    }
    kiln_config_hub_webhooks_apply_env(ctx, envp);
}

bool kiln_config_hub_set_text(kiln_config_ctx_t *ctx, const char *path, const char *flag,
                              const char *text)
{
    const char *key = path + 4;
    if (!is_scalar_key(key)) {
        kiln_problems_add(ctx->problems, "%s: no setting %s", flag, path);
        return false;
    }
    return set_scalar(ctx, key, text, flag);
}

json_t *kiln_config_hub_to_json(const kiln_config_t *cfg)
{
    json_t *tokens = json_array(), *origins = json_array();
    for (size_t i = 0; i < cfg->hub.n_tokens; i++)
        json_array_append_new(
            tokens, json_pack("{s:s, s:s, s:s}", "name", cfg->hub.tokens[i].name, "role",
                              kiln_config_hub_role_name(cfg->hub.tokens[i].role), "token", "***"));
    for (size_t i = 0; i < cfg->hub.n_cors_origins; i++)
        json_array_append_new(origins, json_string(cfg->hub.cors_origins[i]));
    return json_pack("{s:s, s:i, s:I, s:i, s:o, s:o, s:o}", "listen",
                     cfg->hub.listen ? cfg->hub.listen : "", "threads", cfg->hub.threads,
                     "max_body_bytes", (json_int_t)cfg->hub.max_body_bytes, "rate_limit_per_s",
                     cfg->hub.rate_limit_per_s, "tokens", tokens, "cors_origins", origins,
                     "webhooks", kiln_config_hub_webhooks_to_json(cfg));
}

void kiln_config_hub_free(kiln_config_t *cfg)
{
    free(cfg->hub.listen);
    cfg->hub.listen = NULL;
    clear_tokens(cfg);
    clear_origins(cfg);
    kiln_config_hub_webhooks_free(cfg);
}

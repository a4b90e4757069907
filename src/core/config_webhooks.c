/*
 * The hub.webhooks: section (docs/config.md, docs/hub.md): the signing
 * secret, the default URL and the attempts per delivery. The secret comes
 * only from the environment (KILN_HUB_WEBHOOKS_SECRET) or a file
 * (hub.webhooks.secret_file, KILN_HUB_WEBHOOKS_SECRET_FILE), never from
 * kiln.yaml itself, and no problem or dump ever shows it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config_schema.h"
#include "core/url_text.h"
#include "kiln/hub_webhook.h"

extern char **environ;

#define SECRET_MIN      16
#define SECRET_MAX      1024
#define SECRET_FILE_MAX 4096

static void set_secret(kiln_config_t *cfg, char *secret)
{
    if (cfg->hub.webhooks.secret) {
        explicit_bzero(cfg->hub.webhooks.secret, strlen(cfg->hub.webhooks.secret));
        free(cfg->hub.webhooks.secret);
    }
    cfg->hub.webhooks.secret = secret;
}

static bool secret_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < SECRET_MIN || n > SECRET_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    }
    return true;
}

static bool take_secret(kiln_config_ctx_t *ctx, const char *where, const char *text)
{
    if (!text || !secret_ok(text)) {
        kiln_problems_add(ctx->problems,
                          "%s: expected a secret of %d-%d printable characters (generate one "
                          "with: openssl rand -hex 32); the value is not shown",
                          where, SECRET_MIN, SECRET_MAX);
        return false;
    }
    set_secret(ctx->cfg, strdup(text));
    return true;
}

/* Reads the secret from path: at most SECRET_FILE_MAX bytes, the trailing
 * newline and blanks dropped. */
static bool read_secret_file(kiln_config_ctx_t *ctx, const char *where, const char *path)
{
    char got[160];
    FILE *f = path && *path ? fopen(path, "rb") : NULL;
    if (!f) {
        kiln_config_quote(path ? path : "(not a string)", got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: cannot read the secret file %s: %s", where, got,
                          path && *path ? strerror(errno) : "expected a file path");
        return false;
    }
    char buf[SECRET_FILE_MAX + 2];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && strchr(" \t\r\n", buf[n - 1]))
        buf[--n] = '\0';
    bool ok = n <= SECRET_FILE_MAX && take_secret(ctx, where, buf);
    if (n > SECRET_FILE_MAX)
        kiln_problems_add(ctx->problems, "%s: the secret file is over %d bytes", where,
                          SECRET_FILE_MAX);
    explicit_bzero(buf, sizeof buf);
    if (ok) {
        free(ctx->cfg->hub.webhooks.secret_file);
        ctx->cfg->hub.webhooks.secret_file = strdup(path);
    }
    return ok;
}

static bool set_default_url(kiln_config_ctx_t *ctx, const char *where, const char *text)
{
    char got[160];
    if (!text || !kiln_url_is_http(text) || strlen(text) > KILN_WEBHOOK_URL_MAX ||
        strpbrk(text, " \t\r\n")) {
        kiln_config_quote(text ? text : "(not a string)", got, sizeof got);
        kiln_problems_add(ctx->problems,
                          "%s: expected an http:// or https:// URL of at most %d bytes, got %s",
                          where, KILN_WEBHOOK_URL_MAX, got);
        return false;
    }
    free(ctx->cfg->hub.webhooks.default_url);
    ctx->cfg->hub.webhooks.default_url = strdup(text);
    return true;
}

static bool set_max_attempts(kiln_config_ctx_t *ctx, const char *where, const char *text)
{
    char got[160], *end = NULL;
    errno = 0;
    long n = text ? strtol(text, &end, 10) : 0;
    if (!text || !*text || *end || errno || n < 1 || n > KILN_WEBHOOK_ATTEMPTS_MAX) {
        kiln_config_quote(text ? text : "(not an integer)", got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: expected an integer 1-%d, got %s", where,
                          KILN_WEBHOOK_ATTEMPTS_MAX, got);
        return false;
    }
    ctx->cfg->hub.webhooks.max_attempts = (int)n;
    return true;
}

void kiln_config_load_hub_webhooks(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                                   const json_t *section)
{
    char where[KILN_CONFIG_WHERE_MAX], got[160];
    if (!json_is_object(section)) {
        kiln_config_where(o, "hub.webhooks", where, sizeof where);
        kiln_config_describe(section, got, sizeof got);
        kiln_problems_add(ctx->problems, "%s: expected a mapping, got %s", where, got);
        return;
    }
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)section, key, value)
    {
        char path[96], num[32];
        snprintf(path, sizeof path, "hub.webhooks.%.64s", key);
        kiln_config_where(o, path, where, sizeof where);
        const char *text = json_string_value(value);
        if (json_is_integer(value)) {
            snprintf(num, sizeof num, "%lld", (long long)json_integer_value(value));
            text = num;
        }
        if (strcmp(key, "default_url") == 0)
            set_default_url(ctx, where, text);
        else if (strcmp(key, "max_attempts") == 0)
            set_max_attempts(ctx, where, text);
        else if (strcmp(key, "secret_file") == 0)
            read_secret_file(ctx, where, json_string_value(value));
        else if (strcmp(key, "secret") == 0)
            kiln_problems_add(ctx->problems,
                              "%s: keep the secret out of kiln.yaml: name a file holding it "
                              "with hub.webhooks.secret_file, or set KILN_HUB_WEBHOOKS_SECRET "
                              "(the value is not shown)",
                              where);
        else
            kiln_problems_add(ctx->problems,
                              "%s: unknown key; expected one of default_url, max_attempts, "
                              "secret_file",
                              where);
    }
}

void kiln_config_hub_webhooks_apply_env(kiln_config_ctx_t *ctx, char **envp)
{
    static const char *const vars[] = {
        "KILN_HUB_WEBHOOKS_SECRET=", "KILN_HUB_WEBHOOKS_SECRET_FILE=",
        "KILN_HUB_WEBHOOKS_DEFAULT_URL=", "KILN_HUB_WEBHOOKS_MAX_ATTEMPTS="};
    for (char **e = envp ? envp : environ; *e; e++) {
        for (size_t i = 0; i < 4; i++) {
            size_t n = strlen(vars[i]);
            if (strncmp(*e, vars[i], n) != 0)
                continue;
            char where[64];
            snprintf(where, sizeof where, "environment %.*s", (int)n - 1, vars[i]);
            const char *text = *e + n;
            switch (i) {
            case 0:
                if (take_secret(ctx, where, text)) { /* no file behind it */
                    free(ctx->cfg->hub.webhooks.secret_file);
                    ctx->cfg->hub.webhooks.secret_file = NULL;
                }
                break;
            case 1:
                read_secret_file(ctx, where, text);
                break;
            case 2:
                set_default_url(ctx, where, text);
                break;
            default:
                set_max_attempts(ctx, where, text);
            }
        }
    }
}

json_t *kiln_config_hub_webhooks_to_json(const kiln_config_t *cfg)
{
    /* Only keys that load back: the secret itself never appears, its file
     * does (a secret from the environment shows as nothing). */
    json_t *out = json_pack("{s:i}", "max_attempts", cfg->hub.webhooks.max_attempts);
    const char *url = cfg->hub.webhooks.default_url;
    if (url) {
        char shown[KILN_WEBHOOK_URL_MAX + 32];
        kiln_url_redact(url, shown, sizeof shown);
        json_object_set_new(out, "default_url", json_string(shown));
    }
    if (cfg->hub.webhooks.secret_file)
        json_object_set_new(out, "secret_file", json_string(cfg->hub.webhooks.secret_file));
    return out;
}

void kiln_config_hub_webhooks_free(kiln_config_t *cfg)
{
    set_secret(cfg, NULL);
    free(cfg->hub.webhooks.secret_file);
    cfg->hub.webhooks.secret_file = NULL;
    free(cfg->hub.webhooks.default_url);
    cfg->hub.webhooks.default_url = NULL;
}

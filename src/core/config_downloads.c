/*
 * services.NAME.downloads: files the agent fetches before the service
 * starts (docs/downloads.md). Each entry is a mapping {url, sha256, path};
 * the plan turns the list into a "NAME-downloads" step the service depends
 * on, so the service's name must leave room for that suffix.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config_schema.h"
#include "core/url_text.h"
#include "kiln/download.h"

#define ENTRY_PATH_MAX     (KILN_YAML_MAX_KEY * 2 + 160)
#define STEP_SUFFIX        "-downloads"
#define DOWNLOADS_NAME_MAX (64 - (int)(sizeof STEP_SUFFIX - 1))

static void expected(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *path,
                     const char *what, const json_t *value)
{
    char where[KILN_CONFIG_WHERE_MAX], got[160];
    kiln_config_where(o, path, where, sizeof where);
    kiln_config_describe(value, got, sizeof got);
    kiln_problems_add(ctx->problems, "%s: expected %s, got %s", where, what, got);
}

/* A string of 1..max bytes without NUL bytes or control characters. */
static const char *clean_string(const json_t *v, size_t max)
{
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > max)
        return NULL;
    const char *s = json_string_value(v);
    for (size_t i = 0; i < json_string_length(v); i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return NULL;
    }
    return s;
}

static bool is_sha256(const char *s)
{
    if (!s || strlen(s) != 64)
        return false;
    for (size_t i = 0; i < 64; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return false;
    }
    return true;
}

/* One {url, sha256, path} mapping at item_path into d; false after a problem. */
static bool load_entry(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o, const char *item_path,
                       const json_t *item, kiln_download_config_t *d)
{
    char sub[ENTRY_PATH_MAX + 16];
    if (!json_is_object(item)) {
        expected(ctx, o, item_path, "a mapping {url, sha256, path}", item);
        return false;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)item, key, v)
    {
        snprintf(sub, sizeof sub, "%s.%s", item_path, key);
        if (strcmp(key, "url") == 0) {
            const char *url = clean_string(v, KILN_DOWNLOAD_URL_MAX);
            if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
                expected(ctx, o, sub, "an http:// or https:// URL", v);
                return false;
            }
            d->url = strdup(url);
        } else if (strcmp(key, "sha256") == 0) {
            const char *hex = clean_string(v, 64);
            if (!is_sha256(hex)) {
                expected(ctx, o, sub, "64 hex digits (sha256sum's output)", v);
                return false;
            }
            d->sha256 = strdup(hex);
            for (char *c = d->sha256; c && *c; c++)
                *c = (char)(*c >= 'A' && *c <= 'F' ? *c - 'A' + 'a' : *c);
        } else if (strcmp(key, "path") == 0) {
            const char *file = clean_string(v, KILN_CONFIG_MAX_ARG_BYTES);
            if (!file || file[strlen(file) - 1] == '/') {
                expected(ctx, o, sub, "a file path (not a directory)", v);
                return false;
            }
            d->path = strdup(file);
        } else {
            char where[KILN_CONFIG_WHERE_MAX];
            kiln_config_where(o, sub, where, sizeof where);
            kiln_problems_add(ctx->problems, "%s: unknown key; use url, sha256 or path", where);
            return false;
        }
    }
    if (!d->url || !d->path) {
        char where[KILN_CONFIG_WHERE_MAX];
        kiln_config_where(o, item_path, where, sizeof where);
        kiln_problems_add(ctx->problems, "%s: missing %s; each download needs url and path", where,
                          d->url ? "path" : "url");
        return false;
    }
    return true;
}

bool kiln_config_load_downloads(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                                const char *path, const json_t *value, kiln_service_config_t *s)
{
    char item_path[ENTRY_PATH_MAX];
    if (!json_is_array(value) || json_array_size(value) > KILN_CONFIG_MAX_DOWNLOADS) {
        expected(ctx, o, path, "a list of at most 64 {url, sha256, path} mappings", value);
        return false;
    }
    if (json_array_size(value) && strlen(s->name) > DOWNLOADS_NAME_MAX) {
        char where[KILN_CONFIG_WHERE_MAX];
        kiln_config_where(o, path, where, sizeof where);
        kiln_problems_add(ctx->problems,
                          "%s: a service with downloads needs a name of at most %d characters "
                          "(its download step is named <name>%s); shorten the name",
                          where, DOWNLOADS_NAME_MAX, STEP_SUFFIX);
        return false;
    }
    kiln_config_downloads_free(s);
    size_t n = json_array_size(value);
    s->downloads = calloc(n ? n : 1, sizeof *s->downloads);
    if (!s->downloads)
        return false;
    bool ok = true; /* every entry is checked, so one load shows every problem */
    for (size_t i = 0; i < n; i++) {
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
        s->n_downloads = i + 1;
        if (!load_entry(ctx, o, item_path, json_array_get(value, i), &s->downloads[i])) {
            ok = false;
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (s->downloads[j].path && strcmp(s->downloads[j].path, s->downloads[i].path) == 0) {
                char where[KILN_CONFIG_WHERE_MAX];
                kiln_config_where(o, item_path, where, sizeof where);
                kiln_problems_add(ctx->problems,
                                  "%s.path: %s is also the path of entry %zu; give each "
                                  "download its own path",
                                  where, s->downloads[i].path, j);
                ok = false;
                break;
            }
        }
    }
    return ok;
}

json_t *kiln_config_downloads_to_json(const kiln_service_config_t *s)
{
    if (!s->n_downloads)
        return NULL;
    json_t *list = json_array();
    for (size_t i = 0; i < s->n_downloads; i++) {
        const kiln_download_config_t *d = &s->downloads[i];
        /* Signed URLs carry their credentials in the query: shown without. */
        char url[KILN_DOWNLOAD_URL_MAX];
        kiln_url_redact(d->url, url, sizeof url);
        json_t *entry = json_pack("{s:s, s:s}", "url", url, "path", d->path);
        if (d->sha256)
            json_object_set_new(entry, "sha256", json_string(d->sha256));
        json_array_append_new(list, entry);
    }
    return list;
}

unsigned long kiln_config_downloads_digest(const kiln_service_config_t *s)
{
    unsigned long digest = 5381;
    for (size_t i = 0; i < s->n_downloads; i++) {
        const char *parts[] = {s->downloads[i].url, s->downloads[i].sha256, s->downloads[i].path};
        for (size_t k = 0; k < 3; k++) {
            for (const char *c = parts[k]; c && *c; c++)
                digest = digest * 33 + (unsigned char)*c;
            digest *= 33; /* a field boundary counts too */
        }
    }
    return digest & 0xffffffffUL;
}

void kiln_config_downloads_free(kiln_service_config_t *s)
{
    for (size_t i = 0; s->downloads && i < s->n_downloads; i++) {
        free(s->downloads[i].url);
        free(s->downloads[i].sha256);
        free(s->downloads[i].path);
    }
    free(s->downloads);
    s->downloads = NULL;
    s->n_downloads = 0;
}

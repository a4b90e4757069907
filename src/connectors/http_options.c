/*
 * The options the HTTP connectors read at init (contract in http.h): the
 * API key from api_key_env or api_key_file, and the server's URL from
 * base_url or url. Kept apart from the transfer code in http.c.
 */
#include "http.h"
#include "ratelimit.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Wipes and frees a secret (contract in http.h). */
void kiln_http_free_secret(char *secret)
{
    if (!secret)
        return;
    explicit_bzero(secret, strlen(secret));
    free(secret);
}

static bool key_is_printable(const char *key)
{
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        if (*p < 0x21 || *p > 0x7e)
            return false;
    return key[0] != '\0';
}

/* Reads the first line of path into a malloc'd, trimmed key. */
static int read_key_file(const kiln_connector_config_t *cfg, const char *path, char **key,
                         kiln_err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.api_key_file: cannot open %s: %s; give a readable file "
                            "holding the API key",
                            cfg->name, path, strerror(errno));
    char text[KILN_HTTP_API_KEY_MAX + 2];
    size_t got = 0;
    while (got < sizeof text - 1) {
        ssize_t n = read(fd, text + got, sizeof text - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    text[got] = '\0';
    text[strcspn(text, "\r\n")] = '\0';
    size_t start = strspn(text, " \t");
    size_t len = strlen(text + start);
    while (len > 0 && (text[start + len - 1] == ' ' || text[start + len - 1] == '\t'))
        len--;
    text[start + len] = '\0';
    int rc = 0;
    if (len == 0)
        rc = kiln_err_set(err, KILN_EINVAL,
                          "connectors.%s.api_key_file: %s holds no key on its first line; write "
                          "the API key there",
                          cfg->name, path);
    else if (len > KILN_HTTP_API_KEY_MAX || !key_is_printable(text + start))
        rc = kiln_err_set(err, KILN_EINVAL,
                          "connectors.%s.api_key_file: the key in %s is not printable ASCII of at "
                          "most %d characters; check the file",
                          cfg->name, path, KILN_HTTP_API_KEY_MAX);
    else if (!(*key = strdup(text + start)))
        rc = kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    explicit_bzero(text, sizeof text);
    return rc;
}

/* Reads an API key from api_key_file or api_key_env (contract in http.h). */
int kiln_http_read_api_key(const kiln_connector_config_t *cfg, const char *default_env,
                           bool required, char **key, kiln_err_t *err)
{
    *key = NULL;
    const char *file = NULL, *env = NULL;
    int rc = kiln_connector_option_string(cfg, "api_key_file", &file, err);
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "api_key_env", &env, err);
    if (rc < 0)
        return rc;
    if (file && env)
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s: api_key_file and api_key_env are both set; keep one",
                            cfg->name);
    if (file && file[0] != '/')
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.api_key_file: expected an absolute path, got \"%s\"",
                            cfg->name, file);
    if (file)
        return read_key_file(cfg, file, key, err);
    const char *var = env ? env : default_env;
    if (!var || !var[0])
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.api_key_env: expected the name of an environment "
                            "variable, got an empty string",
                            cfg->name);
    const char *value = getenv(var);
    if (!value || !value[0]) {
        if (!env && !required)
            return 0;
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.api_key_env: the environment variable %s is not set or "
                            "empty; export the API key in it or give api_key_file",
                            cfg->name, var);
    }
    if (strlen(value) > KILN_HTTP_API_KEY_MAX || !key_is_printable(value))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.api_key_env: the value of %s is not printable ASCII "
                            "of at most %d characters; check it",
                            cfg->name, var, KILN_HTTP_API_KEY_MAX);
    if (!(*key = strdup(value)))
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    return 0;
}

/* Reads base_url or url (contract in http.h). */
int kiln_http_option_base_url(const kiln_connector_config_t *cfg, const char *default_url,
                              kiln_http_client_options_t *opts, kiln_err_t *err)
{
    opts->url_option = "base_url";
    int rc = kiln_connector_option_string(cfg, "base_url", &opts->base_url, err);
    if (rc == 0 && !opts->base_url) {
        opts->url_option = "url";
        rc = kiln_connector_option_string(cfg, "url", &opts->base_url, err);
    }
    if (rc == 0 && !opts->base_url)
        opts->base_url = default_url;
    return rc;
}

/* Reads the transfer options (contract in http.h). */
int kiln_http_option_transfer(const kiln_connector_config_t *cfg,
                              const kiln_http_option_defaults_t *d,
                              kiln_http_client_options_t *opts, kiln_err_t *err)
{
    int64_t timeout_ms = 0, connect_ms = 0, retries = 0, max_bytes = 0;
    int rc = kiln_connector_option_int(cfg, "timeout_ms", 1, d->timeout_max_ms, d->timeout_ms,
                                       &timeout_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "connect_timeout_ms", 1, d->timeout_max_ms,
                                       KILN_HTTP_CONNECT_TIMEOUT_MS, &connect_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "max_retries", 0, KILN_HTTP_RETRIES_MAX, d->max_retries,
                                       &retries, err);
    if (rc == 0)
        rc =
            kiln_connector_option_int(cfg, "max_response_bytes", 1024, KILN_HTTP_MAX_RESPONSE_LIMIT,
                                      d->max_response_bytes, &max_bytes, err);
    if (rc < 0)
        return rc;
    opts->timeout_ms = (long)timeout_ms;
    opts->connect_timeout_ms = (long)connect_ms;
    opts->max_retries = (int)retries;
    opts->max_response_bytes = (size_t)max_bytes;
    return 0;
}

/* Builds an API connector's client from cfg (contract in http.h). */
int kiln_http_client_from_config(const kiln_connector_config_t *cfg,
                                 kiln_http_client_options_t *opts, const char *default_env,
                                 bool key_required, struct kiln_ratelimit **ratelimit,
                                 kiln_http_client_t **out, kiln_err_t *err)
{
    char *key = NULL;
    int rc = kiln_http_read_api_key(cfg, default_env, key_required, &key, err);
    if (rc == 0)
        rc = kiln_ratelimit_from_config(cfg, ratelimit, err);
    if (rc == 0) {
        opts->api_key = key;
        opts->ratelimit = *ratelimit;
        rc = kiln_http_client_new(opts, out, err);
        opts->api_key = NULL;
    }
    kiln_http_free_secret(key);
    return rc;
}

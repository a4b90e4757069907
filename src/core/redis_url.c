#include "core/redis_url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kiln_redis_url_parse(const char *url, kiln_redis_url_t *out, kiln_err_t *err)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    const char *prefix = "redis://";
    if (!url || strncmp(url, prefix, strlen(prefix)) != 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "redis url: expected redis://[:password@]host[:port][/db], got a "
                            "value not starting with redis://");
    const char *rest = url + strlen(prefix);
    const char *at = strrchr(rest, '@');
    if (at) {
        const char *colon = memchr(rest, ':', (size_t)(at - rest));
        const char *pw = colon ? colon + 1 : rest;
        size_t len = (size_t)(at - pw);
        if (len >= sizeof out->password)
            return kiln_err_set(err, KILN_EINVAL, "redis url: password longer than 255 bytes");
        memcpy(out->password, pw, len);
        rest = at + 1;
    }
    size_t host_len = strcspn(rest, ":/");
    if (host_len == 0 || host_len >= sizeof out->host)
        return kiln_err_set(err, KILN_EINVAL,
                            "redis url: missing or overlong host in redis://HOST:PORT");
    memcpy(out->host, rest, host_len);
    rest += host_len;
    if (*rest == ':') {
        char *end;
        long port = strtol(rest + 1, &end, 10);
        if (end == rest + 1 || port < 1 || port > 65535 || (*end && *end != '/'))
            return kiln_err_set(err, KILN_EINVAL, "redis url: port must be an integer 1-65535");
        out->port = (int)port;
        rest = end;
    }
    if (*rest == '/' && rest[1]) {
        char *end;
        long db = strtol(rest + 1, &end, 10);
        if (*end || db < 0 || db > 15)
            return kiln_err_set(err, KILN_EINVAL, "redis url: database must be an integer 0-15");
        out->db = (int)db;
    }
    return 0;
}

static int run_simple(redisContext *c, kiln_err_t *err, const char *what, const char *fmt,
                      const char *arg)
{
    redisReply *reply = redisCommand(c, fmt, arg);
    if (!reply)
        return kiln_err_set(err, KILN_EREDIS, "redis %s failed: %s", what, c->errstr);
    int rc = 0;
    if (reply->type == REDIS_REPLY_ERROR)
        rc = kiln_err_set(err, KILN_EREDIS, "redis %s refused: %s", what, reply->str);
    freeReplyObject(reply);
    return rc;
}

int kiln_redis_url_prepare(redisContext *c, const kiln_redis_url_t *url, kiln_err_t *err)
{
    if (url->password[0] && run_simple(c, err, "AUTH", "AUTH %s", url->password) != 0)
        return KILN_EREDIS;
    if (url->db) {
        char db[8];
        snprintf(db, sizeof db, "%d", url->db);
        if (run_simple(c, err, "SELECT", "SELECT %s", db) != 0)
            return KILN_EREDIS;
    }
    return 0;
}

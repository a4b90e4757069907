/*
 * The fleet-wide rate limit (contract in ratelimit.h).
 *
 * Each acquire runs lua/ratelimit.lua by EVALSHA (EVAL once when Redis
 * forgot it, after a restart or SCRIPT FLUSH). A full budget answers how
 * long until its oldest request leaves the window; the caller sleeps that
 * long in poll(2) on the job's cancel fd and asks again, so a cancelled job
 * stops waiting at once and a deadline that would pass is reported before
 * the wait, not after it.
 */
#include "ratelimit.h"
#include "api_job.h"

#include "kiln/log.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/scripts.h"
#include "core/redis_url.h"

#define RATELIMIT_LOG        "ratelimit"
#define RATELIMIT_WINDOW_MAX 3600000
#define RATELIMIT_MINUTE_MS  60000

extern const kiln_embedded_script_t kiln_connector_scripts[];

struct kiln_ratelimit {
    pthread_mutex_t lock; /* guards redis, seq */
    redisContext *redis;  /* NULL after a failure, until the next acquire reconnects */
    kiln_redis_url_t url;
    char redis_key[KILN_RATELIMIT_KEY_MAX + 32];
    char key[KILN_RATELIMIT_KEY_MAX + 1];
    char name[128];
    char sha[41];
    const char *script;
    int64_t limit, window_ms;
    uint64_t nonce, seq;
};

static bool cancelled(const atomic_int *cancel)
{
    return cancel && atomic_load_explicit(cancel, memory_order_acquire) != 0;
}

static const char *find_script(void)
{
    for (const kiln_embedded_script_t *s = kiln_connector_scripts; s->name; s++)
        if (strcmp(s->name, "ratelimit") == 0)
            return s->source;
    return NULL;
}

static bool valid_key(const char *key)
{
    size_t n = strlen(key);
    return n > 0 && n <= KILN_RATELIMIT_KEY_MAX &&
           strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-") == n;
}

/* Opens the connection and loads the script; called with the lock held. */
static int connect_locked(kiln_ratelimit_t *rl, kiln_err_t *err)
{
    struct timeval tv = {.tv_sec = KILN_RATELIMIT_IO_TIMEOUT_MS / 1000,
                         .tv_usec = (KILN_RATELIMIT_IO_TIMEOUT_MS % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(rl->url.host, rl->url.port, tv);
    if (!c || c->err) {
        int rc =
            kiln_err_set(err, KILN_EREDIS,
                         "connectors.%s.rate_limit_per_minute: Redis at %s:%d: %s; the rate "
                         "limit needs a reachable Redis (redis.url)",
                         rl->name, rl->url.host, rl->url.port, c ? c->errstr : "out of memory");
        redisFree(c);
        return rc;
    }
    redisSetTimeout(c, tv);
    kiln_err_t why = {0};
    if (kiln_redis_url_prepare(c, &rl->url, &why) < 0) {
        redisFree(c);
        return kiln_err_set(err, KILN_EREDIS, "connectors.%s.rate_limit_per_minute: %s", rl->name,
                            why.msg);
    }
    redisReply *r = redisCommand(c, "SCRIPT LOAD %s", rl->script);
    if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
        int rc = kiln_err_set(err, KILN_EREDIS,
                              "connectors.%s.rate_limit_per_minute: Redis at %s:%d refused the "
                              "rate limit script: %s",
                              rl->name, rl->url.host, rl->url.port,
                              r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
        freeReplyObject(r);
        redisFree(c);
        return rc;
    }
    memcpy(rl->sha, r->str, 40);
    rl->sha[40] = '\0';
    freeReplyObject(r);
    rl->redis = c;
    return 0;
}

/* Builds a limiter (contract in ratelimit.h). */
int kiln_ratelimit_new(const kiln_ratelimit_options_t *opts, kiln_ratelimit_t **out,
                       kiln_err_t *err)
{
    *out = NULL;
    const char *name = opts->name ? opts->name : "ratelimit";
    if (!opts->key || !valid_key(opts->key))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.rate_limit_key: expected 1-%d characters of "
                            "A-Z a-z 0-9 _ . : -, got \"%.80s\"",
                            name, KILN_RATELIMIT_KEY_MAX, opts->key ? opts->key : "");
    if (opts->limit < 1 || opts->limit > KILN_RATELIMIT_PER_MINUTE_MAX || opts->window_ms < 1 ||
        opts->window_ms > RATELIMIT_WINDOW_MAX)
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.rate_limit_per_minute: expected an integer 1-%d, got "
                            "%" PRId64,
                            name, KILN_RATELIMIT_PER_MINUTE_MAX, opts->limit);
    if (!opts->redis_url || !opts->redis_url[0])
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.rate_limit_per_minute: a rate limit is shared through "
                            "Redis, but no Redis URL is known here; set redis.url or remove the "
                            "rate limit",
                            name);
    kiln_ratelimit_t *rl = calloc(1, sizeof *rl);
    if (!rl)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", name);
    pthread_mutex_init(&rl->lock, NULL);
    snprintf(rl->name, sizeof rl->name, "%s", name);
    snprintf(rl->key, sizeof rl->key, "%s", opts->key);
    snprintf(rl->redis_key, sizeof rl->redis_key, "kiln:ratelimit:{%s}", opts->key);
    rl->limit = opts->limit;
    rl->window_ms = opts->window_ms;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rl->nonce = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)rl;
    rl->script = find_script();
    kiln_err_t why = {0};
    int rc = kiln_redis_url_parse(opts->redis_url, &rl->url, &why);
    if (rc < 0)
        rc = kiln_err_set(err, KILN_EINVAL, "connectors.%s.rate_limit_per_minute: %s", name,
                          why.msg);
    else if (!rl->script)
        rc =
            kiln_err_set(err, KILN_EINVAL, "connectors.%s: the rate limit script is missing", name);
    else
        rc = connect_locked(rl, err);
    if (rc < 0) {
        kiln_ratelimit_free(rl);
        return rc;
    }
    *out = rl;
    return 0;
}

/* Reads the rate limit options of a connector (contract in ratelimit.h). */
int kiln_ratelimit_from_config(const kiln_connector_config_t *cfg, kiln_ratelimit_t **out,
                               kiln_err_t *err)
{
    *out = NULL;
    int64_t per_minute = 0;
    const char *key = NULL;
    int rc = kiln_connector_option_int(cfg, "rate_limit_per_minute", 1,
                                       KILN_RATELIMIT_PER_MINUTE_MAX, 0, &per_minute, err);
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "rate_limit_key", &key, err);
    if (rc < 0)
        return rc;
    if (per_minute == 0) {
        if (key)
            return kiln_err_set(err, KILN_EINVAL,
                                "connectors.%s.rate_limit_key: set without "
                                "rate_limit_per_minute; set both or neither",
                                cfg->name);
        return 0;
    }
    kiln_ratelimit_options_t opts = {
        .redis_url = cfg->redis_url,
        .key = key ? key : cfg->name,
        .limit = per_minute,
        .window_ms = RATELIMIT_MINUTE_MS,
        .name = cfg->name,
    };
    return kiln_ratelimit_new(&opts, out, err);
}

/* One run of the script: 1 granted, 0 full (*wait_ms set), or a negative code. */
static int try_take(kiln_ratelimit_t *rl, int64_t *wait_ms, kiln_err_t *err)
{
    pthread_mutex_lock(&rl->lock);
    int rc = rl->redis ? 0 : connect_locked(rl, err);
    redisReply *r = NULL;
    if (rc == 0) {
        char limit[24], window[24], token[48];
        snprintf(limit, sizeof limit, "%" PRId64, rl->limit);
        snprintf(window, sizeof window, "%" PRId64, rl->window_ms);
        snprintf(token, sizeof token, "%016" PRIx64 "-%" PRIu64, rl->nonce, ++rl->seq);
        r = redisCommand(rl->redis, "EVALSHA %s 1 %s %s %s %s", rl->sha, rl->redis_key, limit,
                         window, token);
        if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
            freeReplyObject(r);
            r = redisCommand(rl->redis, "EVAL %s 1 %s %s %s %s", rl->script, rl->redis_key, limit,
                             window, token);
        }
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_INTEGER ||
            r->element[1]->type != REDIS_REPLY_INTEGER) {
            rc = kiln_err_set(err, KILN_EREDIS, "connectors.%s: rate limit: Redis at %s:%d: %s",
                              rl->name, rl->url.host, rl->url.port,
                              r && r->type == REDIS_REPLY_ERROR ? r->str
                              : r                               ? "an unexpected reply"
                                                                : rl->redis->errstr);
            redisFree(rl->redis);
            rl->redis = NULL;
        } else {
            rc = r->element[0]->integer == 1;
            *wait_ms = r->element[1]->integer;
        }
    }
    freeReplyObject(r);
    pthread_mutex_unlock(&rl->lock);
    return rc;
}

/* Takes one slot, waiting for it (contract in ratelimit.h). */
int kiln_ratelimit_acquire(kiln_ratelimit_t *rl, const atomic_int *cancel, int cancel_fd,
                           int64_t deadline_ms, kiln_err_t *err)
{
    if (!rl)
        return 0;
    bool logged = false;
    for (;;) {
        if (cancelled(cancel))
            return kiln_err_set(err, KILN_ECANCELLED, "cancelled while waiting for the rate limit");
        int64_t wait_ms = 0;
        int rc = try_take(rl, &wait_ms, err);
        if (rc < 0 || rc == 1)
            return rc < 0 ? rc : 0;
        if (deadline_ms && kiln_api_now_ms() + wait_ms >= deadline_ms)
            return kiln_err_set(err, KILN_ETIMEOUT,
                                "connectors.%s: the rate limit (%" PRId64 " requests per %" PRId64
                                " s, key \"%s\") has no free slot before the job's deadline",
                                rl->name, rl->limit, rl->window_ms / 1000, rl->key);
        if (!logged) {
            kiln_log(KILN_LOG_DEBUG, RATELIMIT_LOG, NULL, NULL,
                     "connectors.%s: rate limit \"%s\" full; waiting %" PRId64 " ms", rl->name,
                     rl->key, wait_ms);
            logged = true;
        }
        if (!kiln_api_sleep(cancel, cancel_fd, wait_ms))
            return kiln_err_set(err, KILN_ECANCELLED, "cancelled while waiting for the rate limit");
    }
}

int64_t kiln_ratelimit_limit(const kiln_ratelimit_t *rl)
{
    return rl->limit;
}

const char *kiln_ratelimit_key(const kiln_ratelimit_t *rl)
{
    return rl->key;
}

/* Closes and frees (contract in ratelimit.h). */
void kiln_ratelimit_free(kiln_ratelimit_t *rl)
{
    if (!rl)
        return;
    redisFree(rl->redis);
    pthread_mutex_destroy(&rl->lock);
    free(rl);
}

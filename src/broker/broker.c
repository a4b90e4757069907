/*
 * The synchronous broker: connection, submit, commands and the worker-side
 * calls, each one script run (src/broker/lua/).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker_internal.h"
#include "core/redis_url.h"

void kiln_broker_options_from_config(kiln_broker_options_t *opts, const kiln_config_t *cfg)
{
    memset(opts, 0, sizeof *opts);
    opts->redis_url = cfg->redis_url;
    opts->max_payload_bytes = cfg->broker.max_payload_bytes;
    opts->stream_max_len = cfg->broker.stream_max_len;
    opts->retention_age_s = cfg->broker.retention_age_s;
    opts->retention_count = cfg->broker.retention_count;
    opts->default_max_attempts = cfg->broker.default_max_attempts;
    opts->backoff_base_ms = cfg->broker.backoff_base_ms;
    opts->backoff_max_ms = cfg->broker.backoff_max_ms;
    opts->lease_ms = cfg->broker.lease_ms;
    opts->connect_timeout_ms = 2000;
}

int kiln_broker_connect(const kiln_broker_options_t *opts, kiln_broker_t **out, kiln_err_t *err)
{
    *out = NULL;
    kiln_redis_url_t url;
    if (kiln_redis_url_parse(opts->redis_url, &url, err) != 0)
        return KILN_EINVAL;
    kiln_broker_t *b = calloc(1, sizeof *b);
    if (!b)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    b->opts = *opts;
    b->redis_url = strdup(opts->redis_url);
    b->opts.redis_url = b->redis_url;
    int timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 2000;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    b->redis = redisConnectWithTimeout(url.host, url.port, tv);
    if (!b->redis || b->redis->err) {
        kiln_err_set(err, KILN_EREDIS,
                     "cannot reach redis at %s:%d: %s; start redis-server or set redis.url "
                     "(KILN_REDIS_URL)",
                     url.host, url.port, b->redis ? b->redis->errstr : "out of memory");
        kiln_broker_free(b);
        return KILN_EREDIS;
    }
    if (kiln_redis_url_prepare(b->redis, &url, err) != 0) {
        kiln_broker_free(b);
        return KILN_EREDIS;
    }
    *out = b;
    return 0;
}

void kiln_broker_free(kiln_broker_t *b)
{
    if (!b)
        return;
    if (b->redis)
        redisFree(b->redis);
    free(b->redis_url);
    free(b);
}

redisReply *kiln_broker_command(kiln_broker_t *b, kiln_argv_t *a, kiln_err_t *err)
{
    redisReply *reply = NULL;
    if (a->failed)
        kiln_err_set(err, KILN_ENOMEM, "out of memory building a redis command");
    else
        reply = redisCommandArgv(b->redis, (int)a->count, (const char **)a->items, a->lens);
    if (!reply && !a->failed)
        kiln_err_set(err, KILN_EREDIS, "redis: %s", b->redis->errstr);
    kiln_argv_free(a);
    return reply;
}

redisReply *kiln_broker_eval(kiln_broker_t *b, kiln_argv_t *a, const kiln_script_t *script,
                             kiln_err_t *err)
{
    if (a->failed) {
        kiln_argv_free(a);
        kiln_err_set(err, KILN_ENOMEM, "out of memory building a redis command");
        return NULL;
    }
    redisReply *reply = redisCommandArgv(b->redis, (int)a->count, (const char **)a->items, a->lens);
    if (kiln_ops_noscript_fallback(a, reply, script)) {
        freeReplyObject(reply);
        reply = redisCommandArgv(b->redis, (int)a->count, (const char **)a->items, a->lens);
    }
    kiln_argv_free(a);
    if (!reply) {
        kiln_err_set(err, KILN_EREDIS, "redis: %s", b->redis->errstr);
        return NULL;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        kiln_err_set(err, KILN_EREDIS, "redis script %s failed: %s", script->name, reply->str);
        freeReplyObject(reply);
        return NULL;
    }
    return reply;
}

/* Starts a call of script on service (for the operations below). */
static const kiln_script_t *begin(kiln_broker_t *b, kiln_argv_t *a, const char *name,
                                  const char *service)
{
    const kiln_script_t *script = kiln_script_get(name);
    kiln_argv_init(a);
    if (script)
        kiln_ops_begin(a, script, &b->opts, service);
    else
        a->failed = true;
    return script;
}

static void remember_service(kiln_broker_t *b, const char *service)
{
    if (strcmp(b->last_service, service) == 0)
        return;
    redisReply *r = redisCommand(b->redis, "SADD kiln:services %s", service);
    if (r && r->type != REDIS_REPLY_ERROR)
        snprintf(b->last_service, sizeof b->last_service, "%s", service);
    if (r)
        freeReplyObject(r);
}

static void add_spec(kiln_argv_t *a, const kiln_job_spec_t *s, int default_attempts)
{
    kiln_argv_add(a, s->idempotency_key ? s->idempotency_key : "", SIZE_MAX);
    kiln_argv_addf(a, "%d", s->priority);
    kiln_argv_add(a, s->class_id, SIZE_MAX);
    kiln_argv_add(a, s->class_json, SIZE_MAX);
    kiln_argv_add(a, s->payload_json, SIZE_MAX);
    kiln_argv_addf(a, "%d", s->max_attempts > 0 ? s->max_attempts : default_attempts);
    kiln_argv_addf(a, "%lld", (long long)s->run_at_ms);
    kiln_argv_addf(a, "%lld", (long long)s->delay_ms);
    kiln_argv_add(a, s->customer_id ? s->customer_id : "", SIZE_MAX);
    kiln_argv_addf(a, "%lld", (long long)s->timeout_ms);
    kiln_argv_add(a, s->webhook_url ? s->webhook_url : "", SIZE_MAX);
}

int kiln_broker_submit_batch(kiln_broker_t *b, const kiln_job_spec_t *specs, size_t n,
                             char (*ids)[KILN_JOB_ID_MAX], kiln_err_t *err)
{
    if (n == 0 || n > KILN_SUBMIT_BATCH_MAX)
        return kiln_err_set(err, KILN_EINVAL, "submit: a batch holds 1-%d jobs, got %zu",
                            KILN_SUBMIT_BATCH_MAX, n);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(specs[i].service, specs[0].service) != 0)
            return kiln_err_set(err, KILN_EINVAL,
                                "submit: a batch is for one service; job %zu is for %s, not %s", i,
                                specs[i].service, specs[0].service);
    }
    kiln_argv_t a;
    const kiln_script_t *script = begin(b, &a, "submit", specs[0].service);
    kiln_argv_addf(&a, "%zu", n);
    int attempts = b->opts.default_max_attempts > 0 ? b->opts.default_max_attempts : 3;
    for (size_t i = 0; i < n; i++)
        add_spec(&a, &specs[i], attempts);
    redisReply *reply = kiln_broker_eval(b, &a, script, err);
    if (!reply)
        return err ? err->code : KILN_EREDIS;
    int rc = 0;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 * n)
        rc = kiln_err_set(err, KILN_EREDIS, "submit: malformed reply from redis");
    for (size_t i = 0; rc == 0 && i < n; i++)
        snprintf(ids[i], KILN_JOB_ID_MAX, "%s", reply->element[2 * i]->str);
    freeReplyObject(reply);
    if (rc == 0)
        remember_service(b, specs[0].service);
    return rc;
}

int kiln_broker_submit(kiln_broker_t *b, const kiln_job_spec_t *spec, char *id, bool *duplicate,
                       kiln_err_t *err)
{
    kiln_argv_t a;
    const kiln_script_t *script = begin(b, &a, "submit", spec->service);
    kiln_argv_add(&a, "1", 1);
    add_spec(&a, spec, b->opts.default_max_attempts > 0 ? b->opts.default_max_attempts : 3);
    redisReply *reply = kiln_broker_eval(b, &a, script, err);
    if (!reply)
        return err ? err->code : KILN_EREDIS;
    int rc = 0;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        rc = kiln_err_set(err, KILN_EREDIS, "submit: malformed reply from redis");
    else {
        snprintf(id, KILN_JOB_ID_MAX, "%s", reply->element[0]->str);
        if (duplicate)
            *duplicate = reply->element[1]->integer == 1;
    }
    freeReplyObject(reply);
    if (rc == 0)
        remember_service(b, spec->service);
    return rc;
}

/* Runs a single-job script whose reply is a status string. */
static int job_status_call(kiln_broker_t *b, const char *script_name, const char *id,
                           const char *const *args, size_t nargs, const char **status_out,
                           char *status_buf, size_t status_size, kiln_err_t *err)
{
    char service[KILN_SERVICE_NAME_MAX + 1];
    if (kiln_ops_job_service(id, service, err) != 0)
        return KILN_EINVAL;
    kiln_argv_t a;
    const kiln_script_t *script = begin(b, &a, script_name, service);
    kiln_argv_add(&a, id, SIZE_MAX);
    for (size_t i = 0; i < nargs; i++)
        kiln_argv_add(&a, args[i], SIZE_MAX);
    redisReply *reply = kiln_broker_eval(b, &a, script, err);
    if (!reply)
        return err ? err->code : KILN_EREDIS;
    int rc = 0;
    if (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_STATUS)
        rc = kiln_err_set(err, KILN_EREDIS, "%s: malformed reply from redis", script_name);
    else
        snprintf(status_buf, status_size, "%s", reply->str);
    freeReplyObject(reply);
    *status_out = rc == 0 ? status_buf : NULL;
    return rc;
}

static int lease_call(kiln_broker_t *b, const char *script, const char *id, const char *const *args,
                      size_t nargs, kiln_err_t *err)
{
    const char *status;
    char buf[64];
    int rc = job_status_call(b, script, id, args, nargs, &status, buf, sizeof buf, err);
    return rc ? rc : kiln_ops_status(status, id, err);
}

int kiln_broker_complete(kiln_broker_t *b, const char *id, const char *token,
                         const char *result_json, kiln_err_t *err)
{
    const char *args[] = {token, result_json ? result_json : "null"};
    return lease_call(b, "complete", id, args, 2, err);
}

int kiln_broker_fail(kiln_broker_t *b, const char *id, const char *token, const char *error,
                     bool retryable, kiln_err_t *err)
{
    const char *args[] = {token, error ? error : "failed", retryable ? "1" : "0"};
    return lease_call(b, "fail", id, args, 3, err);
}

int kiln_broker_release(kiln_broker_t *b, const char *id, const char *token, kiln_err_t *err)
{
    const char *args[] = {token};
    return lease_call(b, "release", id, args, 1, err);
}

/* heartbeat and progress take lists; the synchronous API sends one. */
static int list_call(kiln_broker_t *b, const char *script_name, const char *id,
                     const char *const *args, size_t nargs, kiln_err_t *err)
{
    char service[KILN_SERVICE_NAME_MAX + 1];
    if (kiln_ops_job_service(id, service, err) != 0)
        return KILN_EINVAL;
    kiln_argv_t a;
    const kiln_script_t *script = begin(b, &a, script_name, service);
    kiln_argv_add(&a, "1", 1);
    kiln_argv_add(&a, id, SIZE_MAX);
    for (size_t i = 0; i < nargs; i++)
        kiln_argv_add(&a, args[i], SIZE_MAX);
    redisReply *reply = kiln_broker_eval(b, &a, script, err);
    if (!reply)
        return err ? err->code : KILN_EREDIS;
    const char *status = reply->type == REDIS_REPLY_ARRAY && reply->elements == 1 &&
                                 reply->element[0]->type == REDIS_REPLY_STRING
                             ? reply->element[0]->str
                             : NULL;
    int rc = kiln_ops_status(status, id, err);
    freeReplyObject(reply);
    return rc;
}

int kiln_broker_heartbeat(kiln_broker_t *b, const char *id, const char *token, kiln_err_t *err)
{
    const char *args[] = {token};
    return list_call(b, "heartbeat", id, args, 1, err);
}

int kiln_broker_progress(kiln_broker_t *b, const char *id, const char *token, double percent,
                         const char *message, kiln_err_t *err)
{
    if (!(percent >= 0 && percent <= 100))
        return kiln_err_set(err, KILN_EINVAL, "progress: percent must be 0-100");
    char pct[32];
    snprintf(pct, sizeof pct, "%.1f", percent);
    const char *args[] = {token, pct, message ? message : ""};
    return list_call(b, "progress", id, args, 3, err);
}

/* Runs a command script (cancel, retry) that answers 'ok', 'missing' or
 * 'state:<state>' when the job's state does not allow it; advice ends the
 * message for the latter. */
static int state_command(kiln_broker_t *b, const char *script, const char *id, const char *advice,
                         kiln_err_t *err)
{
    const char *status;
    char buf[64];
    int rc = job_status_call(b, script, id, NULL, 0, &status, buf, sizeof buf, err);
    if (rc)
        return rc;
    if (strcmp(status, "missing") == 0)
        return kiln_err_set(err, KILN_ENOTFOUND, "job %s not found", id);
    if (strncmp(status, "state:", 6) == 0)
        return kiln_err_set(err, KILN_ECONFLICT, "job %s is %s; %s", id, status + 6, advice);
    return 0;
}

int kiln_broker_cancel(kiln_broker_t *b, const char *id, kiln_err_t *err)
{
    return state_command(b, "cancel", id, "a finished job cannot be cancelled", err);
}

int kiln_broker_retry(kiln_broker_t *b, const char *id, kiln_err_t *err)
{
    return state_command(b, "retry", id, "only failed, dead or cancelled jobs can be retried", err);
}

int kiln_broker_sweep(kiln_broker_t *b, const char *service, int *recovered, kiln_err_t *err)
{
    if (!kiln_ops_service_name_ok(service))
        return kiln_err_set(err, KILN_EINVAL, "sweep: \"%.64s\" is not a service name", service);
    kiln_argv_t a;
    const kiln_script_t *script = begin(b, &a, "sweep", service);
    redisReply *reply = kiln_broker_eval(b, &a, script, err);
    if (!reply)
        return err ? err->code : KILN_EREDIS;
    if (recovered && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2)
        *recovered = (int)reply->element[0]->integer;
    freeReplyObject(reply);
    return 0;
}

int kiln_broker_claim(kiln_broker_t *b, const char *service, const kiln_worker_identity_t *who,
                      int max, kiln_claimed_job_t *jobs, int *n, int64_t *next_due_ms,
                      kiln_err_t *err)
{
    *n = 0;
    if (!kiln_ops_service_name_ok(service))
        return kiln_err_set(err, KILN_EINVAL, "claim: \"%.64s\" is not a service name", service);
    kiln_argv_t a;
    const kiln_script_t *script = begin(b, &a, "claim", service);
    kiln_ops_add_claimer(&a, who, max);
    redisReply *reply = kiln_broker_eval(b, &a, script, err);
    if (!reply)
        return err ? err->code : KILN_EREDIS;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
        freeReplyObject(reply);
        return kiln_err_set(err, KILN_EREDIS, "claim: malformed reply from redis");
    }
    if (next_due_ms)
        *next_due_ms = reply->element[0]->integer;
    int got = kiln_ops_parse_claims(reply, 1, jobs, max, err);
    freeReplyObject(reply);
    if (got < 0)
        return got;
    *n = got;
    return 0;
}

int kiln_broker_register_worker(kiln_broker_t *b, const char *worker_id, json_t *info, long ttl_ms,
                                kiln_err_t *err)
{
    char *text = json_dumps(info, JSON_COMPACT);
    if (!text)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    redisAppendCommand(b->redis, "SET kiln:worker:%s %s PX %ld", worker_id, text, ttl_ms);
    redisAppendCommand(b->redis, "ZADD kiln:workers %lld %s", kiln_ops_wall_ms(), worker_id);
    free(text);
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        redisReply *reply = NULL;
        if (redisGetReply(b->redis, (void **)&reply) != REDIS_OK || !reply)
            return kiln_err_set(err, KILN_EREDIS, "redis: %s", b->redis->errstr);
        if (reply->type == REDIS_REPLY_ERROR)
            rc = kiln_err_set(err, KILN_EREDIS, "register worker: %s", reply->str);
        freeReplyObject(reply);
    }
    return rc;
}

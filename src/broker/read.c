/*
 * Reading the broker's state: jobs, lists, queue statistics, workers, and
 * following a job's events. Reads are plain commands (and one read-only
 * script for statistics); nothing here writes job state.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker_internal.h"

static const char *const final_states[] = {"completed", "failed", "cancelled", "dead", NULL};

static bool is_final(const char *state)
{
    for (size_t i = 0; final_states[i]; i++) {
        if (state && strcmp(state, final_states[i]) == 0)
            return true;
    }
    return false;
}

/* A stored JSON text as a value; unparsable text stays a string. */
static json_t *json_field(const char *text)
{
    if (!text || !*text)
        return json_null();
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
    return v ? v : json_string(text);
}

static json_t *int_field(const char *text)
{
    return json_integer(text ? strtoll(text, NULL, 10) : 0);
}

/* Builds the public job object from an HGETALL reply. */
static json_t *job_from_hash(const char *id, const char *service, const redisReply *r,
                             bool with_bodies)
{
    /* Fields a job does not have yet (never claimed, no error) read as
     * their zero values. */
    json_t *job = json_pack("{s:s, s:s, s:i, s:f, s:n, s:n, s:n, s:s, s:i, s:i, s:i, s:i}", "id",
                            id, "service", service, "attempts", 0, "progress", 0.0, "error",
                            "customer_id", "idempotency_key", "worker", "", "started_at", 0,
                            "finished_at", 0, "run_at", 0, "timeout_ms", 0);
    json_t *requirements = NULL;
    for (size_t i = 0; job && i + 1 < r->elements; i += 2) {
        const char *k = r->element[i]->str, *v = r->element[i + 1]->str;
        if (!strcmp(k, "state") || !strcmp(k, "worker"))
            json_object_set_new(job, k, json_string(v));
        else if (!strcmp(k, "error") || !strcmp(k, "customer") || !strcmp(k, "idem"))
            json_object_set_new(job,
                                !strcmp(k, "customer") ? "customer_id"
                                : !strcmp(k, "idem")   ? "idempotency_key"
                                                       : "error",
                                *v ? json_string(v) : json_null());
        else if (!strcmp(k, "priority") || !strcmp(k, "attempts") || !strcmp(k, "max_attempts") ||
                 !strcmp(k, "timeout_ms"))
            json_object_set_new(job, k, int_field(v));
        else if (!strcmp(k, "created") || !strcmp(k, "started") || !strcmp(k, "finished") ||
                 !strcmp(k, "run_at")) {
            char name[32];
            snprintf(name, sizeof name, "%s%s", k, strcmp(k, "run_at") ? "_at" : "");
            json_object_set_new(job, name, int_field(v));
        } else if (!strcmp(k, "progress"))
            json_object_set_new(job, k, json_real(strtod(v, NULL)));
        else if (!strcmp(k, "progress_msg"))
            json_object_set_new(job, "progress_message", json_string(v));
        else if (!strcmp(k, "retryable"))
            json_object_set_new(job, "error_retryable", json_boolean(!strcmp(v, "1")));
        else if (!strcmp(k, "classdef"))
            requirements = json_field(v);
        else if (with_bodies && (!strcmp(k, "payload") || !strcmp(k, "result")))
            json_object_set_new(job, k, json_field(v));
    }
    if (requirements) {
        json_object_set(job, "requirements", json_object_get(requirements, "requirements"));
        json_decref(requirements);
    }
    return job;
}

static int fetch_job(kiln_broker_t *b, const char *id, bool with_bodies, json_t **job,
                     kiln_err_t *err)
{
    char service[KILN_SERVICE_NAME_MAX + 1];
    if (kiln_ops_job_service(id, service, err) != 0)
        return KILN_EINVAL;
    redisReply *r = redisCommand(b->redis, "HGETALL kiln:{%s}:job:%s", service, id);
    if (!r)
        return kiln_err_set(err, KILN_EREDIS, "redis: %s", b->redis->errstr);
    int rc = 0;
    if (r->type != REDIS_REPLY_ARRAY)
        rc = kiln_err_set(err, KILN_EREDIS, "job %s: unexpected reply from redis", id);
    else if (r->elements == 0)
        rc = kiln_err_set(err, KILN_ENOTFOUND,
                          "job %s not found (never submitted, or removed "
                          "after its retention period)",
                          id);
    else if (!(*job = job_from_hash(id, service, r, with_bodies)))
        rc = kiln_err_set(err, KILN_ENOMEM, "out of memory");
    freeReplyObject(r);
    return rc;
}

int kiln_broker_job_field(kiln_broker_t *b, const char *id, const char *field, char **value,
                          kiln_err_t *err)
{
    *value = NULL;
    char service[KILN_SERVICE_NAME_MAX + 1];
    if (kiln_ops_job_service(id, service, err) != 0)
        return KILN_EINVAL;
    redisReply *r = redisCommand(b->redis, "HGET kiln:{%s}:job:%s %s", service, id, field);
    if (!r)
        return kiln_err_set(err, KILN_EREDIS, "redis: %s", b->redis->errstr);
    int rc =
        r->type == REDIS_REPLY_ERROR ? kiln_err_set(err, KILN_EREDIS, "job %s: %s", id, r->str) : 0;
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && !(*value = strdup(r->str)))
        rc = kiln_err_set(err, KILN_ENOMEM, "out of memory");
    freeReplyObject(r);
    return rc;
}

int kiln_broker_get_job(kiln_broker_t *b, const char *id, json_t **job, kiln_err_t *err)
{
    *job = NULL;
    return fetch_job(b, id, true, job, err);
}

int kiln_broker_list_services(kiln_broker_t *b, json_t **services, kiln_err_t *err)
{
    *services = NULL;
    redisReply *r = redisCommand(b->redis, "SMEMBERS kiln:services");
    if (!r)
        return kiln_err_set(err, KILN_EREDIS, "redis: %s", b->redis->errstr);
    json_t *list = json_array();
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        if (kiln_ops_service_name_ok(r->element[i]->str))
            json_array_append_new(list, json_string(r->element[i]->str));
    }
    freeReplyObject(r);
    /* Sorted, so every listing has one stable order. */
    size_t n = json_array_size(list);
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0 && strcmp(json_string_value(json_array_get(list, j - 1)),
                                           json_string_value(json_array_get(list, j))) > 0;
             j--) {
            json_t *tmp = json_incref(json_array_get(list, j));
            json_array_set(list, j, json_array_get(list, j - 1));
            json_array_set_new(list, j - 1, tmp);
        }
    }
    *services = list;
    return 0;
}

/* Appends to ids the members of one sorted set (newest first where asked). */
static int collect_ids(kiln_broker_t *b, const char *key, bool newest_first, size_t limit,
                       json_t *ids, kiln_err_t *err)
{
    redisReply *r = redisCommand(b->redis, newest_first ? "ZREVRANGE %s 0 %ld" : "ZRANGE %s 0 %ld",
                                 key, (long)limit - 1);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        if (r)
            freeReplyObject(r);
        return kiln_err_set(err, KILN_EREDIS, "listing %s: %s", key,
                            r ? "unexpected reply" : b->redis->errstr);
    }
    for (size_t i = 0; i < r->elements; i++) {
        /* Running-set members are "<id>|<token>"; only the id is listed. */
        const char *member = r->element[i]->str;
        json_array_append_new(ids, json_stringn(member, strcspn(member, "|")));
    }
    freeReplyObject(r);
    return 0;
}

/* Pending jobs in the order they will run, class by class. */
static int collect_pending(kiln_broker_t *b, const char *service, size_t limit, json_t *ids,
                           kiln_err_t *err)
{
    char key[160];
    snprintf(key, sizeof key, "kiln:{%s}:classes", service);
    json_t *classes = json_array();
    int rc = collect_ids(b, key, false, 1000, classes, err);
    size_t i;
    json_t *class;
    json_array_foreach(classes, i, class)
    {
        if (rc || json_array_size(ids) >= limit)
            break;
        snprintf(key, sizeof key, "kiln:{%s}:pending:%s", service, json_string_value(class));
        rc = collect_ids(b, key, false, limit - json_array_size(ids), ids, err);
    }
    json_decref(classes);
    return rc;
}

static int list_service_jobs(kiln_broker_t *b, const char *service, const char *state, size_t limit,
                             json_t *out, kiln_err_t *err)
{
    static const char *const states[] = {"pending", "running",   "delayed", "completed",
                                         "failed",  "cancelled", "dead",    NULL};
    json_t *ids = json_array();
    int rc = 0;
    for (size_t s = 0; rc == 0 && states[s]; s++) {
        if (state && strcmp(state, states[s]) != 0)
            continue;
        char key[128];
        snprintf(key, sizeof key, "kiln:{%s}:%s", service, states[s]);
        rc = !strcmp(states[s], "pending")
                 ? collect_pending(b, service, limit, ids, err)
                 : collect_ids(b, key, is_final(states[s]), limit, ids, err);
    }
    if (rc) {
        json_decref(ids);
        return rc;
    }
    size_t i;
    json_t *id;
    json_array_foreach(ids, i, id)
    {
        json_t *job = NULL;
        if (fetch_job(b, json_string_value(id), false, &job, err) == 0)
            json_array_append_new(out, job);
        else if (err && err->code != KILN_ENOTFOUND) {
            json_decref(ids);
            return err->code;
        }
    }
    json_decref(ids);
    return 0;
}

int kiln_broker_list_jobs(kiln_broker_t *b, const kiln_job_filter_t *filter, json_t **jobs,
                          kiln_err_t *err)
{
    *jobs = NULL;
    size_t limit = filter && filter->limit ? filter->limit : 100;
    const char *state = filter ? filter->state : NULL;
    if (state && !is_final(state) && strcmp(state, "pending") && strcmp(state, "running") &&
        strcmp(state, "delayed"))
        return kiln_err_set(err, KILN_EINVAL,
                            "state: \"%.32s\" is not a job state; use pending, running, delayed, "
                            "completed, failed, cancelled or dead",
                            state);
    json_t *services = NULL;
    if (filter && filter->service) {
        if (!kiln_ops_service_name_ok(filter->service))
            return kiln_err_set(err, KILN_EINVAL, "service: \"%.64s\" is not a service name",
                                filter->service);
        services = json_pack("[s]", filter->service);
    } else if (kiln_broker_list_services(b, &services, err) != 0) {
        return err ? err->code : KILN_EREDIS;
    }
    json_t *out = json_array();
    size_t i;
    json_t *svc;
    int rc = 0;
    json_array_foreach(services, i, svc)
    {
        if (json_array_size(out) >= limit)
            break;
        rc = list_service_jobs(b, json_string_value(svc), state, limit - json_array_size(out), out,
                               err);
        if (rc)
            break;
    }
    json_decref(services);
    if (rc) {
        json_decref(out);
        return rc;
    }
    *jobs = out;
    return 0;
}

static int service_stats(kiln_broker_t *b, const char *service, json_t **out, kiln_err_t *err)
{
    const kiln_script_t *script = kiln_script_get("stats");
    kiln_argv_t a;
    kiln_argv_init(&a);
    kiln_ops_begin(&a, script, &b->opts, service);
    redisReply *r = kiln_broker_eval(b, &a, script, err);
    if (!r)
        return err ? err->code : KILN_EREDIS;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 9) {
        freeReplyObject(r);
        return kiln_err_set(err, KILN_EREDIS, "stats: malformed reply from redis");
    }
    long long oldest = r->element[7]->integer, now = r->element[8]->integer;
    *out = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "service", service, "pending",
                     r->element[0]->integer, "running", r->element[1]->integer, "delayed",
                     r->element[2]->integer, "completed", r->element[3]->integer, "failed",
                     r->element[4]->integer, "cancelled", r->element[5]->integer, "dead",
                     r->element[6]->integer, "oldest_pending_ms",
                     oldest > 0 && now > oldest ? now - oldest : 0LL);
    freeReplyObject(r);
    return *out ? 0 : kiln_err_set(err, KILN_ENOMEM, "out of memory");
}

int kiln_broker_queue_stats(kiln_broker_t *b, json_t **stats, kiln_err_t *err)
{
    *stats = NULL;
    json_t *services;
    if (kiln_broker_list_services(b, &services, err) != 0)
        return err ? err->code : KILN_EREDIS;
    json_t *out = json_array();
    size_t i;
    json_t *svc;
    json_array_foreach(services, i, svc)
    {
        json_t *row;
        if (service_stats(b, json_string_value(svc), &row, err) != 0) {
            json_decref(services);
            json_decref(out);
            return err ? err->code : KILN_EREDIS;
        }
        json_array_append_new(out, row);
    }
    json_decref(services);
    *stats = out;
    return 0;
}

int kiln_broker_list_workers(kiln_broker_t *b, json_t **workers, kiln_err_t *err)
{
    *workers = NULL;
    redisReply *ids = redisCommand(b->redis, "ZRANGE kiln:workers 0 -1");
    if (!ids)
        return kiln_err_set(err, KILN_EREDIS, "redis: %s", b->redis->errstr);
    json_t *out = json_array();
    for (size_t i = 0; ids->type == REDIS_REPLY_ARRAY && i < ids->elements; i++) {
        const char *id = ids->element[i]->str;
        redisReply *r = redisCommand(b->redis, "GET kiln:worker:%s", id);
        if (r && r->type == REDIS_REPLY_STRING) {
            json_t *info = json_loads(r->str, 0, NULL);
            if (info)
                json_array_append_new(out, info);
        } else if (r && r->type == REDIS_REPLY_NIL) {
            /* Its TTL ran out: the worker is gone. */
            freeReplyObject(redisCommand(b->redis, "ZREM kiln:workers %s", id));
        }
        if (r)
            freeReplyObject(r);
    }
    freeReplyObject(ids);
    *workers = out;
    return 0;
}

/* Reads events after *last_id on the job's queue stream, blocking up to
 * block_ms; calls on_event for the job's own. Sets *finished on a final
 * state. */
static int read_events(kiln_broker_t *b, const char *service, const char *id, char *last_id,
                       long block_ms, kiln_job_event_cb on_event, void *ctx, bool *finished,
                       kiln_err_t *err)
{
    redisReply *r = redisCommand(b->redis, "XREAD COUNT 500 BLOCK %ld STREAMS kiln:{%s}:events %s",
                                 block_ms, service, last_id);
    if (!r)
        return kiln_err_set(err, KILN_EREDIS, "redis: %s", b->redis->errstr);
    for (size_t s = 0; r->type == REDIS_REPLY_ARRAY && s < r->elements; s++) {
        redisReply *entries = r->element[s]->element[1];
        for (size_t e = 0; e < entries->elements; e++) {
            redisReply *entry = entries->element[e], *fields = entry->element[1];
            snprintf(last_id, 64, "%s", entry->element[0]->str);
            json_t *event = json_pack("{s:s}", "id", entry->element[0]->str);
            for (size_t f = 0; f + 1 < fields->elements; f += 2)
                json_object_set_new(event, fields->element[f]->str,
                                    json_string(fields->element[f + 1]->str));
            if (strcmp(json_string_value(json_object_get(event, "job")) ?: "", id) == 0) {
                if (on_event)
                    on_event(event, ctx);
                if (is_final(json_string_value(json_object_get(event, "state"))))
                    *finished = true;
            }
            json_decref(event);
        }
    }
    freeReplyObject(r);
    return 0;
}

int kiln_broker_wait_job(kiln_broker_t *b, const char *id, long timeout_ms,
                         kiln_job_event_cb on_event, void *ctx, json_t **final_job, kiln_err_t *err)
{
    if (final_job)
        *final_job = NULL;
    char service[KILN_SERVICE_NAME_MAX + 1];
    if (kiln_ops_job_service(id, service, err) != 0)
        return KILN_EINVAL;
    /* Take the stream position first, then the state: no event between the
     * two can be missed. */
    char last_id[64] = "0-0";
    redisReply *r = redisCommand(b->redis, "XREVRANGE kiln:{%s}:events + - COUNT 1", service);
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1)
        snprintf(last_id, sizeof last_id, "%s", r->element[0]->element[0]->str);
    if (r)
        freeReplyObject(r);
    json_t *job = NULL;
    int rc = fetch_job(b, id, true, &job, err);
    bool finished = rc == 0 && is_final(json_string_value(json_object_get(job, "state")));
    long long deadline = timeout_ms > 0 ? kiln_ops_wall_ms() + timeout_ms : 0;
    while (rc == 0 && !finished) {
        long block = 5000;
        if (deadline) {
            long long left = deadline - kiln_ops_wall_ms();
            if (left <= 0) {
                rc = kiln_err_set(err, KILN_ETIMEOUT, "job %s: not finished after %ld ms", id,
                                  timeout_ms);
                break;
            }
            block = left < block ? (long)left : block;
        }
        rc = read_events(b, service, id, last_id, block, on_event, ctx, &finished, err);
        if (rc == 0 && finished) {
            json_decref(job);
            job = NULL;
            rc = fetch_job(b, id, true, &job, err);
        }
    }
    if (rc == 0 && final_job)
        *final_job = job;
    else
        json_decref(job);
    return rc;
}

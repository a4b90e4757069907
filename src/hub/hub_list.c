/*
 * GET /v1/jobs: jobs by service and state, in pages. The order is by
 * service name, then newest job first (by the job's sequence number), and
 * the cursor is the last job id of a page: the next page holds the jobs
 * after it in that order. A job is listed by its id, not by its state's
 * position, so a job that changes state between two pages is still listed
 * exactly once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker_internal.h"
#include "hub/hub_internal.h"

static const char *const states[] = {"pending", "running",   "delayed", "completed",
                                     "failed",  "cancelled", "dead"};
#define N_STATES (sizeof states / sizeof states[0])

typedef struct seq_list {
    long long *items;
    size_t count, cap;
} seq_list_t;

static int push_seq(seq_list_t *l, const char *member)
{
    const char *dot = strchr(member, '.');
    if (!dot)
        return 0;
    if (l->count == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        long long *grown = realloc(l->items, cap * sizeof *grown);
        if (!grown)
            return KILN_ENOMEM;
        l->items = grown;
        l->cap = cap;
    }
    l->items[l->count++] = strtoll(dot + 1, NULL, 10);
    return 0;
}

/* Appends the sequence numbers of the members of sorted set key. */
static int collect(kiln_broker_t *b, const char *key, seq_list_t *l, kiln_err_t *err)
{
    redisReply *r = redisCommand(b->redis, "ZRANGE %s 0 -1", key);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        int rc = kiln_err_set(err, KILN_EREDIS, "redis: listing %s: %s", key,
                              r ? "unexpected reply" : b->redis->errstr);
        if (r)
            freeReplyObject(r);
        return rc;
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < r->elements; i++)
        rc = push_seq(l, r->element[i]->str);
    freeReplyObject(r);
    return rc ? kiln_err_set(err, rc, "out of memory") : 0;
}

static int collect_state(kiln_broker_t *b, const char *service, const char *state, seq_list_t *l,
                         kiln_err_t *err)
{
    char key[256];
    if (strcmp(state, "pending") != 0) {
        snprintf(key, sizeof key, "kiln:{%s}:%s", service, state);
        return collect(b, key, l, err);
    }
    redisReply *r = redisCommand(b->redis, "ZRANGE kiln:{%s}:classes 0 -1", service);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        if (r)
            freeReplyObject(r);
        return kiln_err_set(err, KILN_EREDIS, "redis: listing the classes of %s", service);
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < r->elements; i++) {
        snprintf(key, sizeof key, "kiln:{%s}:pending:%s", service, r->element[i]->str);
        rc = collect(b, key, l, err);
    }
    freeReplyObject(r);
    return rc;
}

static int newest_first(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Adds to out the jobs of one service after cursor_seq (< 0: from the
 * newest), at most want + 1 of them (the extra one says there is more). */
static int list_service(kiln_broker_t *b, const char *service, const char *state,
                        long long cursor_seq, size_t want, json_t *out, kiln_err_t *err)
{
    seq_list_t l = {0};
    int rc = 0;
    for (size_t s = 0; rc == 0 && s < N_STATES; s++) {
        if (!state || strcmp(state, states[s]) == 0)
            rc = collect_state(b, service, states[s], &l, err);
    }
    if (rc == 0 && l.count > 0) /* no items: l.items is NULL, which qsort must not get */
        qsort(l.items, l.count, sizeof *l.items, newest_first);
    for (size_t i = 0; rc == 0 && i < l.count && json_array_size(out) <= want; i++) {
        if ((cursor_seq >= 0 && l.items[i] >= cursor_seq) ||
            (i > 0 && l.items[i] == l.items[i - 1]))
            continue;
        char id[KILN_JOB_ID_MAX];
        snprintf(id, sizeof id, "%s.%lld", service, l.items[i]);
        json_t *job = NULL;
        rc = kiln_broker_get_job(b, id, &job, err);
        if (rc == KILN_ENOTFOUND) {
            rc = 0; /* removed after its retention period meanwhile */
            continue;
        }
        if (rc == 0) {
            json_object_del(job, "payload");
            json_object_del(job, "result");
            json_array_append_new(out, job);
        }
    }
    free(l.items);
    return rc;
}

/* Reads the query; 0 or the status of the reply sent. */
static int parse_query(hub_req_t *req, char *service, char *state, size_t *limit, char *cursor)
{
    char value[KILN_JOB_ID_MAX + 8];
    if (hub_query(req, "service", service, KILN_SERVICE_NAME_MAX + 1) < 0)
        return hub_reply_error(req, 422, "service", "service: at most %d characters",
                               KILN_SERVICE_NAME_MAX);
    int found = hub_query(req, "state", state, 16);
    bool known = found == 0;
    for (size_t s = 0; found > 0 && s < N_STATES; s++)
        known = known || strcmp(state, states[s]) == 0;
    if (!known)
        return hub_reply_error(req, 422, "state",
                               "state: expected pending, running, delayed, completed, failed, "
                               "cancelled or dead");
    *limit = 100;
    found = hub_query(req, "limit", value, sizeof value);
    if (found != 0) {
        char *end;
        long n = found > 0 ? strtol(value, &end, 10) : 0;
        if (found < 0 || *end || n < 1 || n > KILN_HUB_LIST_LIMIT_MAX)
            return hub_reply_error(req, 422, "limit", "limit: expected an integer 1-%d",
                                   KILN_HUB_LIST_LIMIT_MAX);
        *limit = (size_t)n;
    }
    found = hub_query(req, "cursor", cursor, KILN_JOB_ID_MAX);
    if (found < 0 || (found > 0 && !hub_job_id_ok(cursor)))
        return hub_reply_error(req, 422, "cursor",
                               "cursor: expected the next_cursor of an earlier page");
    return 0;
}

int hub_jobs_list(hub_req_t *req)
{
    char service[KILN_SERVICE_NAME_MAX + 1], state[16], cursor[KILN_JOB_ID_MAX];
    size_t limit = 100;
    int rc = parse_query(req, service, state, &limit, cursor);
    if (rc)
        return rc;
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_err_t err = {0};
    json_t *services = NULL;
    if (service[0])
        services = json_pack("[s]", service);
    else if (kiln_broker_list_services(b, &services, &err) != 0)
        return hub_reply_kiln_error(req, &err);
    char cursor_service[KILN_SERVICE_NAME_MAX + 1] = "";
    long long cursor_seq = -1;
    if (cursor[0]) {
        snprintf(cursor_service, sizeof cursor_service, "%.*s", (int)strcspn(cursor, "."), cursor);
        cursor_seq = strtoll(strchr(cursor, '.') + 1, NULL, 10);
    }
    json_t *jobs = json_array();
    size_t i;
    json_t *svc;
    json_array_foreach(services, i, svc)
    {
        const char *name = json_string_value(svc);
        int order = strcmp(name, cursor_service);
        if (cursor[0] && order < 0)
            continue;
        rc = list_service(b, name, state[0] ? state : NULL, order == 0 ? cursor_seq : -1, limit,
                          jobs, &err);
        if (rc || json_array_size(jobs) > limit)
            break;
    }
    json_decref(services);
    if (rc) {
        json_decref(jobs);
        return hub_reply_kiln_error(req, &err);
    }
    json_t *next = json_null();
    if (json_array_size(jobs) > limit) {
        json_array_remove(jobs, limit);
        next = json_incref(json_object_get(json_array_get(jobs, limit - 1), "id"));
    }
    return hub_reply_json(req, 200, json_pack("{s:o, s:o}", "jobs", jobs, "next_cursor", next));
}

/*
 * The job API: submit, read (with a long-poll for the result), cancel,
 * retry, and the queue, worker and health documents.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker_internal.h"
#include "hub/hub_internal.h"
#include "kiln/hub_machines.h"
#include "kiln/hub_webhook.h"

bool hub_state_final(const char *state)
{
    static const char *const final_states[] = {"completed", "failed", "cancelled", "dead"};
    for (size_t i = 0; state && i < 4; i++) {
        if (strcmp(state, final_states[i]) == 0)
            return true;
    }
    return false;
}

/* The owner record: which token submitted a job, so a token with the
 * submit role may cancel and retry its own jobs only. It is the hub's key
 * beside the job (same hash tag), kept as long as finished jobs are. */
static int set_owner(hub_req_t *req, kiln_broker_t *b, const char *id, kiln_err_t *err)
{
    char service[KILN_SERVICE_NAME_MAX + 1];
    snprintf(service, sizeof service, "%.*s", (int)strcspn(id, "."), id);
    redisReply *r = redisCommand(b->redis, "SET kiln:{%s}:owner:%s %s EX %ld", service, id,
                                 req->token->name, req->hub->retention_age_s);
    int rc = r && r->type != REDIS_REPLY_ERROR
                 ? 0
                 : kiln_err_set(err, KILN_EREDIS, "redis: %s", r ? r->str : b->redis->errstr);
    if (r)
        freeReplyObject(r);
    return rc;
}

/* 0 when req's token may change job id (admin, or the submit token that
 * submitted it); else the status of the reply sent. */
static int check_owner(hub_req_t *req, kiln_broker_t *b, const char *id)
{
    if (!req->token || req->token->role == KILN_HUB_ROLE_ADMIN)
        return 0;
    char service[KILN_SERVICE_NAME_MAX + 1];
    snprintf(service, sizeof service, "%.*s", (int)strcspn(id, "."), id);
    redisReply *r = redisCommand(b->redis, "GET kiln:{%s}:owner:%s", service, id);
    if (!r) {
        kiln_err_t err = {KILN_EREDIS, ""};
        snprintf(err.msg, sizeof err.msg, "redis: %s", b->redis->errstr);
        return hub_reply_kiln_error(req, &err);
    }
    bool own = r->type == REDIS_REPLY_STRING && strcmp(r->str, req->token->name) == 0;
    freeReplyObject(r);
    if (own)
        return 0;
    return hub_reply_error(req, 403, NULL,
                           "token \"%s\" (submit role) may cancel or retry only the jobs it "
                           "submitted; job %s is not one of them",
                           req->token->name, id);
}

/* Submits spec (with webhook, may be NULL, stored with the job) and
 * records its owner. */
static int submit_checked(hub_req_t *req, kiln_broker_t *b, json_t *spec, char **webhook, char *id,
                          kiln_err_t *err)
{
    kiln_job_spec_t s;
    int rc = kiln_job_spec_from_json(spec, req->hub->broker_opts.max_payload_bytes, &s, err);
    if (rc)
        return rc;
    s.webhook_url = *webhook; /* the spec owns it now */
    *webhook = NULL;
    /* A job with an idempotency key goes alone: its reply says whether it
     * matched an earlier job, which decides its owner record. */
    bool duplicate = false;
    rc = s.idempotency_key ? kiln_broker_submit(b, &s, id, &duplicate, err)
                           : hub_batcher_submit(req->hub, &s, id, err);
    kiln_job_spec_clear(&s);
    if (rc == 0 && req->token && req->token->role == KILN_HUB_ROLE_SUBMIT && !duplicate)
        rc = set_owner(req, b, id, err);
    if (rc == 0)
        atomic_fetch_add(&req->hub->submitted, 1);
    return rc;
}

/* A library module's error as a kiln_err_t: its code already matches the
 * status (404 ENOTFOUND, 409 ECONFLICT, 400 EINVAL, which is sent as 422
 * with the field its message starts with). */
static int hub_error_to_err(int rc, const kiln_hub_error_t *he, kiln_err_t *err)
{
    return kiln_err_set(err, rc, "%s", he->message);
}

/* Takes the hub-only fields out of spec before the broker sees it: the
 * webhook URL (*webhook, caller frees) and the routing of a pinned job
 * (on_offline), which may wake the machine or drop the pin. */
static int take_hub_fields(hub_req_t *req, kiln_broker_t *b, json_t *spec, char **webhook,
                           kiln_err_t *err)
{
    kiln_hub_error_t he = {0};
    int rc = kiln_webhook_take_from_job(spec, webhook, &he);
    if (rc)
        return hub_error_to_err(rc, &he, err);
    if (*webhook && !req->hub->webhooks)
        return kiln_err_set(err, KILN_EINVAL,
                            "webhook: this hub delivers no webhooks; set hub.webhooks.secret "
                            "(KILN_HUB_WEBHOOKS_SECRET or KILN_HUB_WEBHOOKS_SECRET_FILE) to "
                            "enable them");
    kiln_hub_route_t route;
    rc = kiln_hub_route_job(b, spec, &route, &he);
    if (rc)
        return hub_error_to_err(rc, &he, err);
    return 0;
}

int hub_jobs_submit_spec(hub_req_t *req, kiln_broker_t *b, json_t *spec, char *id, kiln_err_t *err)
{
    char *webhook = NULL;
    int rc = take_hub_fields(req, b, spec, &webhook, err);
    if (rc == 0)
        rc = submit_checked(req, b, spec, &webhook, id, err);
    free(webhook);
    return rc;
}

/* "machine": "desktop" pins the job: it becomes requirements.machine. */
static int apply_machine_pin(hub_req_t *req, json_t *body)
{
    json_t *machine = json_object_get(body, "machine");
    if (!machine)
        return 0;
    if (!json_is_string(machine) || json_string_length(machine) == 0 ||
        json_string_length(machine) > 128)
        return hub_reply_error(req, 422, "machine",
                               "machine: expected a machine id (a string of 1-128 characters)");
    json_t *reqs = json_object_get(body, "requirements");
    if (!reqs) {
        reqs = json_object();
        json_object_set_new(body, "requirements", reqs);
    }
    if (!json_is_object(reqs))
        return 0; /* the spec check names requirements */
    json_t *pinned = json_object_get(reqs, "machine");
    if (pinned && !json_equal(pinned, machine))
        return hub_reply_error(req, 422, "machine",
                               "machine: \"%s\" differs from requirements.machine; give one",
                               json_string_value(machine));
    json_object_set(reqs, "machine", machine);
    json_object_del(body, "machine");
    return 0;
}

int hub_jobs_submit(hub_req_t *req)
{
    json_t *body;
    int rc = hub_read_json(req, &body);
    if (rc)
        return rc;
    rc = apply_machine_pin(req, body);
    if (rc) {
        json_decref(body);
        return rc;
    }
    kiln_broker_t *b = hub_broker(req);
    if (!b) {
        json_decref(body);
        return 503;
    }
    char id[KILN_JOB_ID_MAX];
    kiln_err_t err = {0};
    rc = hub_jobs_submit_spec(req, b, body, id, &err);
    json_decref(body);
    if (rc)
        return hub_reply_kiln_error(req, &err);
    /* A job id is a service name, '.' and digits: nothing to escape. */
    char reply[KILN_JOB_ID_MAX + 16];
    int n = snprintf(reply, sizeof reply, "{\"id\":\"%s\"}", id);
    return hub_reply_text(req, 201, "application/json", reply, (size_t)n);
}

/* A pending (or delayed) job waits for a worker: that is when the
 * explanation means something. */
static bool is_waiting(const char *state)
{
    return state && (!strcmp(state, "pending") || !strcmp(state, "delayed"));
}

/* Adds what the hub knows beside the broker's record: "webhook" (its
 * delivery state, when the job has one) and, while it waits, "waiting"
 * (why no worker runs it). A failed lookup leaves the key out rather than
 * failing the read. Returns job. */
static json_t *with_hub_state(kiln_broker_t *b, json_t *job)
{
    kiln_hub_error_t he = {0};
    json_t *extra = NULL;
    const char *id = json_string_value(json_object_get(job, "id"));
    if (id && kiln_webhook_state(b, id, &extra, &he) == 0 && !json_is_null(extra))
        json_object_set(job, "webhook", extra);
    json_decref(extra);
    extra = NULL;
    if (id && is_waiting(json_string_value(json_object_get(job, "state"))) &&
        kiln_hub_explain_waiting(b, id, &extra, &he) == 0)
        json_object_set(job, "waiting", extra);
    json_decref(extra);
    return job;
}

/* Parses ?wait=SECONDS (0-KILN_HUB_WAIT_MAX_S). -1 after replying 422. */
static long wait_ms_of(hub_req_t *req)
{
    char value[32];
    int found = hub_query(req, "wait", value, sizeof value);
    if (found == 0)
        return 0;
    char *end = NULL;
    double s = found > 0 ? strtod(value, &end) : -1;
    if (found < 0 || end == value || *end || !(s >= 0 && s <= KILN_HUB_WAIT_MAX_S)) {
        hub_reply_error(req, 422, "wait", "wait: expected seconds 0-%d, got \"%.31s\"",
                        KILN_HUB_WAIT_MAX_S, value);
        return -1;
    }
    return (long)(s * 1000);
}

int hub_jobs_get(hub_req_t *req)
{
    long wait_ms = wait_ms_of(req);
    if (wait_ms < 0)
        return 422;
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_err_t err = {0};
    json_t *job = NULL;
    if (kiln_broker_get_job(b, req->param, &job, &err) != 0)
        return hub_reply_kiln_error(req, &err);
    /* Waits on the queue's stream (XREAD BLOCK) in slices of a second, so
     * a stopping hub is never held for the whole wait. */
    int64_t deadline = kiln_ops_wall_ms() + wait_ms;
    while (!hub_state_final(json_string_value(json_object_get(job, "state"))) &&
           !atomic_load(&req->hub->stopping)) {
        int64_t left = deadline - kiln_ops_wall_ms();
        if (left <= 0)
            break;
        json_t *final = NULL;
        int rc = kiln_broker_wait_job(b, req->param, left < 1000 ? left : 1000, NULL, NULL, &final,
                                      &err);
        if (rc == 0) {
            json_decref(job);
            job = final;
        } else if (rc != KILN_ETIMEOUT) {
            json_decref(job);
            return hub_reply_kiln_error(req, &err);
        }
    }
    return hub_reply_json(req, 200, with_hub_state(b, job));
}

int hub_jobs_waiting(hub_req_t *req)
{
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_err_t err = {0};
    json_t *job = NULL;
    if (kiln_broker_get_job(b, req->param, &job, &err) != 0)
        return hub_reply_kiln_error(req, &err);
    const char *state = json_string_value(json_object_get(job, "state"));
    if (!is_waiting(state)) {
        int rc = hub_reply_error(req, 409, NULL,
                                 "job %s is %s, not waiting for a worker; only a pending or "
                                 "delayed job has a waiting explanation",
                                 req->param, state ? state : "in an unknown state");
        json_decref(job);
        return rc;
    }
    json_decref(job);
    kiln_hub_error_t he = {0};
    json_t *out = NULL;
    if (kiln_hub_explain_waiting(b, req->param, &out, &he) != 0) {
        if (he.status == 503)
            hub_broker_reset();
        return hub_reply_json(req, he.status ? he.status : 500, kiln_hub_error_json(&he));
    }
    return hub_reply_json(req, 200, out);
}

typedef int (*job_command_t)(kiln_broker_t *b, const char *id, kiln_err_t *err);

static int job_command(hub_req_t *req, job_command_t command)
{
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_err_t err = {0};
    json_t *job = NULL;
    if (kiln_broker_get_job(b, req->param, &job, &err) != 0)
        return hub_reply_kiln_error(req, &err);
    json_decref(job);
    int rc = check_owner(req, b, req->param);
    if (rc)
        return rc;
    if (command(b, req->param, &err) != 0 || kiln_broker_get_job(b, req->param, &job, &err) != 0)
        return hub_reply_kiln_error(req, &err);
    return hub_reply_json(req, 200, job);
}

int hub_jobs_cancel(hub_req_t *req)
{
    return job_command(req, kiln_broker_cancel);
}

int hub_jobs_retry(hub_req_t *req)
{
    return job_command(req, kiln_broker_retry);
}

/* Replies {key: list} with what read gives. */
static int reply_listing(hub_req_t *req, int (*read)(kiln_broker_t *, json_t **, kiln_err_t *),
                         const char *key)
{
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_err_t err = {0};
    json_t *list;
    if (read(b, &list, &err) != 0)
        return hub_reply_kiln_error(req, &err);
    return hub_reply_json(req, 200, json_pack("{s:o}", key, list));
}

int hub_jobs_queues(hub_req_t *req)
{
    return reply_listing(req, kiln_broker_queue_stats, "queues");
}

int hub_jobs_workers(hub_req_t *req)
{
    return reply_listing(req, kiln_broker_list_workers, "workers");
}

int hub_jobs_health(hub_req_t *req)
{
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    redisReply *r = redisCommand(b->redis, "PING");
    bool up = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    if (!up) {
        hub_broker_reset();
        return hub_reply_json(req, 503, json_pack("{s:s, s:s}", "status", "fail", "redis", "down"));
    }
    return hub_reply_json(req, 200, json_pack("{s:s, s:s}", "status", "pass", "redis", "up"));
}

int hub_jobs_openapi(hub_req_t *req)
{
    return hub_reply_text(req, 200, "application/json", (const char *)kiln_hub_openapi,
                          kiln_hub_openapi_len);
}

/*
 * Compatibility with the earlier system's clients (source documents 000,
 * 002, 003): they switch to kiln by changing only the URL.
 *
 *   POST /api/jobs        {service_required, priority, payload, requirements,
 *                          customer_id, max_retries} -> 201 {success, job_id}
 *   GET  /api/jobs/{id}   {success, job: {...the earlier shape...}}
 *   WS   /ws/client/{id}  in: submit_job; out: job_accepted,
 *                          update_job_progress, complete_job, job_failed
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/ops.h"
#include "hub/hub_internal.h"
#include "kiln/hub_compat.h"

/* The one place where the earlier format's requirements become kiln's
 * (docs/hub-compat.md): {positive_requirements, negative_requirements} are
 * mapped by kiln_hub_compat_requirements; an object without them is taken
 * as kiln's own requirement language. Returns a new reference in *out, or
 * a KILN_E* code with err naming the field. */
static int convert_requirements(json_t *old, json_t **out, kiln_err_t *err)
{
    *out = NULL;
    if (!old || json_is_null(old))
        return 0;
    if (!json_is_object(old))
        return kiln_err_set(err, KILN_EINVAL, "requirements: expected an object");
    json_t *positive = json_object_get(old, "positive_requirements");
    json_t *negative = json_object_get(old, "negative_requirements");
    if (!positive && !negative) {
        *out = json_incref(old);
        return 0;
    }
    if (json_object_size(old) != (size_t)(positive != NULL) + (negative != NULL))
        return kiln_err_set(err, KILN_EINVAL,
                            "requirements: give either positive_requirements / "
                            "negative_requirements or kiln's requirements "
                            "(docs/requirements.md), not both");
    kiln_hub_error_t he = {0};
    int rc = kiln_hub_compat_requirements(positive, negative, out, &he);
    return rc ? kiln_err_set(err, rc, "requirements.%s", he.message) : 0;
}

/* Builds kiln's job spec from an earlier-format job (borrowed). */
static int spec_from_compat(json_t *body, json_t **spec, kiln_err_t *err)
{
    *spec = NULL;
    json_t *service = json_object_get(body, "service_required");
    if (!json_is_string(service))
        return kiln_err_set(err, KILN_EINVAL,
                            "service_required: expected a service name, e.g. "
                            "\"comfyui\"");
    json_t *reqs;
    int rc = convert_requirements(json_object_get(body, "requirements"), &reqs, err);
    if (rc)
        return rc;
    json_t *s = json_pack("{s:O}", "service", service);
    static const char *const copied[][2] = {
        {"priority", "priority"}, {"payload", "payload"}, {"customer_id", "customer_id"}};
    for (size_t i = 0; i < 3; i++) {
        json_t *v = json_object_get(body, copied[i][0]);
        if (v && !json_is_null(v))
            json_object_set(s, copied[i][1], v);
    }
    if (reqs)
        json_object_set_new(s, "requirements", reqs);
    json_t *retries = json_object_get(body, "max_retries");
    if (retries && !json_is_null(retries)) {
        if (!json_is_integer(retries) || json_integer_value(retries) < 0 ||
            json_integer_value(retries) > 99) {
            json_decref(s);
            return kiln_err_set(err, KILN_EINVAL, "max_retries: expected an integer 0-99");
        }
        /* A retry is an attempt after the first. */
        json_object_set_new(s, "max_attempts", json_integer(json_integer_value(retries) + 1));
    }
    *spec = s;
    return 0;
}

/* kiln's errors name kiln's fields; the earlier client sent the earlier
 * names. */
static void rename_field(kiln_err_t *err)
{
    static const char *const names[][2] = {{"service:", "service_required:"},
                                           {"max_attempts:", "max_retries:"}};
    for (size_t i = 0; i < 2; i++) {
        size_t n = strlen(names[i][0]);
        if (strncmp(err->msg, names[i][0], n) == 0) {
            char rest[KILN_ERR_MSG_MAX];
            snprintf(rest, sizeof rest, "%s", err->msg + n);
            snprintf(err->msg, sizeof err->msg, "%s%.900s", names[i][1], rest);
        }
    }
}

static int submit_compat(hub_req_t *req, kiln_broker_t *b, json_t *body, char *id, kiln_err_t *err)
{
    json_t *spec;
    int rc = spec_from_compat(body, &spec, err);
    if (rc == 0) {
        rc = hub_jobs_submit_spec(req, b, spec, id, err);
        json_decref(spec);
    }
    if (rc)
        rename_field(err);
    return rc;
}

int hub_compat_submit(hub_req_t *req)
{
    json_t *body;
    int rc = hub_read_json(req, &body);
    if (rc)
        return rc;
    kiln_broker_t *b = hub_broker(req);
    if (!b) {
        json_decref(body);
        return 503;
    }
    char id[KILN_JOB_ID_MAX];
    kiln_err_t err = {0};
    rc = submit_compat(req, b, body, id, &err);
    json_decref(body);
    if (rc)
        return hub_reply_kiln_error(req, &err);
    return hub_reply_json(req, 201, json_pack("{s:b, s:s}", "success", 1, "job_id", id));
}

static json_t *iso_time(json_t *ms_value)
{
    long long ms = json_integer_value(ms_value);
    if (ms <= 0)
        return json_null();
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char text[64];
    snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03lldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms % 1000);
    return json_string(text);
}

/* The earlier system's status words for kiln's states. */
static const char *compat_status(const char *state)
{
    static const char *const map[][2] = {{"pending", "pending"},     {"delayed", "pending"},
                                         {"running", "in_progress"}, {"completed", "completed"},
                                         {"failed", "failed"},       {"dead", "failed"},
                                         {"cancelled", "cancelled"}};
    for (size_t i = 0; state && i < 7; i++) {
        if (strcmp(state, map[i][0]) == 0)
            return map[i][1];
    }
    return "pending";
}

static json_t *compat_job(json_t *job)
{
    int attempts = (int)json_integer_value(json_object_get(job, "attempts"));
    int max_attempts = (int)json_integer_value(json_object_get(job, "max_attempts"));
    json_t *out = json_pack(
        "{s:O, s:O, s:O, s:O?, s:O?, s:O?, s:s, s:O, s:O?, s:O?, s:O?, s:i, s:i}", "id",
        json_object_get(job, "id"), "service_required", json_object_get(job, "service"), "priority",
        json_object_get(job, "priority"), "payload", json_object_get(job, "payload"),
        "requirements", json_object_get(job, "requirements"), "customer_id",
        json_object_get(job, "customer_id"), "status",
        compat_status(json_string_value(json_object_get(job, "state"))), "progress",
        json_object_get(job, "progress"), "result", json_object_get(job, "result"), "error",
        json_object_get(job, "error"), "worker_id", json_object_get(job, "worker"), "retry_count",
        attempts > 0 ? attempts - 1 : 0, "max_retries", max_attempts > 0 ? max_attempts - 1 : 0);
    json_object_set_new(out, "created_at", iso_time(json_object_get(job, "created_at")));
    json_object_set_new(out, "started_at", iso_time(json_object_get(job, "started_at")));
    json_object_set_new(out, "completed_at", iso_time(json_object_get(job, "finished_at")));
    return out;
}

int hub_compat_get(hub_req_t *req)
{
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_err_t err = {0};
    json_t *job;
    if (kiln_broker_get_job(b, req->param, &job, &err) != 0)
        return hub_reply_kiln_error(req, &err);
    json_t *out = compat_job(job);
    json_decref(job);
    return hub_reply_json(req, 200, json_pack("{s:b, s:o}", "success", 1, "job", out));
}

/* ---- the client WebSocket ----------------------------------------------------------- */

typedef struct compat_client {
    kiln_hub_t *hub;
    struct mg_connection *conn;
    hub_req_t req; /* the upgrade request's identity, for ownership */
    char client_id[129];
    hub_sub_t *sub;
    pthread_t writer;
    bool writer_started;
} compat_client_t;

/* The message for one of the client's job events; NULL for events the
 * earlier protocol has no message for. */
static json_t *message_for(kiln_broker_t *b, json_t *event)
{
    const char *type = json_string_value(json_object_get(event, "type"));
    const char *job = json_string_value(json_object_get(event, "job"));
    if (!type || !job)
        return NULL;
    if (strcmp(type, "progress") == 0 || strcmp(type, "started") == 0)
        return json_pack("{s:s, s:s, s:f, s:s, s:s, s:I}", "type", "update_job_progress", "job_id",
                         job, "progress",
                         strtod(json_string_value(json_object_get(event, "progress")) ?: "0", NULL),
                         "status", "in_progress", "message",
                         json_string_value(json_object_get(event, "message")) ?: "", "timestamp",
                         kiln_ops_wall_ms());
    bool completed = strcmp(type, "completed") == 0;
    if (!completed && strcmp(type, "failed") && strcmp(type, "dead") && strcmp(type, "cancelled"))
        return NULL;
    json_t *full = NULL;
    kiln_err_t err = {0};
    if (b)
        kiln_broker_get_job(b, job, &full, &err);
    json_t *msg;
    if (completed)
        msg = json_pack("{s:s, s:s, s:{s:b, s:O?}, s:I}", "type", "complete_job", "job_id", job,
                        "result", "success", 1, "data", json_object_get(full, "result"),
                        "timestamp", kiln_ops_wall_ms());
    else
        msg = json_pack("{s:s, s:s, s:s, s:O?, s:I}", "type", "job_failed", "job_id", job, "status",
                        type, "error", json_object_get(full, "error"), "timestamp",
                        kiln_ops_wall_ms());
    json_decref(full);
    return msg;
}

static void *compat_writer(void *arg)
{
    compat_client_t *c = arg;
    kiln_broker_t *b = NULL;
    for (;;) {
        json_t *event;
        const char *reason = NULL;
        int got = hub_sub_next(c->sub, 15000, &event, &reason);
        if (got < 0) {
            hub_ws_close(c->conn, atomic_load(&c->hub->stopping) ? 1001 : 1008,
                         reason ? reason : "closed");
            break;
        }
        if (got == 0)
            continue;
        kiln_err_t err = {0};
        if (!b && kiln_broker_connect(&c->hub->broker_opts, &b, &err) != 0)
            b = NULL;
        json_t *msg = message_for(b, event);
        json_decref(event);
        int rc = msg ? hub_ws_send_json(c->conn, msg) : 0;
        json_decref(msg);
        if (rc)
            break;
    }
    kiln_broker_free(b);
    return NULL;
}

static int compat_connect(const struct mg_connection *conn, void *cbdata)
{
    kiln_hub_t *hub = cbdata;
    if (!hub_events_room(hub))
        return 1;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *client_id = ri->local_uri + strlen("/ws/client/");
    size_t len = strlen(client_id);
    if (len == 0 || len > 128 ||
        strspn(client_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV"
                          "WXYZ0123456789._-") != len)
        return 1;
    compat_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return 1;
    c->hub = hub;
    c->conn = (struct mg_connection *)conn;
    c->req = (hub_req_t){.hub = hub, .conn = c->conn, .ri = ri};
    hub_http_identify(&c->req);
    snprintf(c->client_id, sizeof c->client_id, "%s", client_id);
    hub_filter_t filter = {.own_jobs_only = true};
    kiln_err_t err = {0};
    c->sub = hub_sub_new(hub, NULL, &filter, NULL, &err);
    if (!c->sub) {
        free(c);
        return 1;
    }
    mg_set_user_connection_data(conn, c);
    return 0;
}

static void compat_ready(struct mg_connection *conn, void *cbdata)
{
    compat_client_t *c = mg_get_user_connection_data(conn);
    if (c && pthread_create(&c->writer, NULL, compat_writer, c) == 0)
        c->writer_started = true;
}

static void send_error(struct mg_connection *conn, json_t *message_id, const char *text)
{
    json_t *msg = json_pack("{s:s, s:s, s:O?, s:I}", "type", "error", "error", text, "message_id",
                            message_id, "timestamp", kiln_ops_wall_ms());
    hub_ws_send_json(conn, msg);
    json_decref(msg);
}

/* One message from the client: submit_job submits and answers
 * job_accepted; anything else gets an error message. */
static void handle_message(compat_client_t *c, const char *data, size_t len)
{
    json_error_t jerr;
    json_t *msg = len <= (size_t)c->hub->max_body_bytes ? json_loadb(data, len, 0, &jerr) : NULL;
    if (!json_is_object(msg)) {
        send_error(c->conn, NULL,
                   len > (size_t)c->hub->max_body_bytes ? "message over hub.max_body_bytes"
                                                        : "expected a JSON object message");
        json_decref(msg);
        return;
    }
    json_t *message_id = json_object_get(msg, "message_id");
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (!type || strcmp(type, "submit_job") != 0) {
        send_error(c->conn, message_id, "type: expected submit_job");
        json_decref(msg);
        return;
    }
    kiln_err_t err = {0};
    char id[KILN_JOB_ID_MAX];
    bool allowed =
        c->hub->n_tokens == 0 || (c->req.token && c->req.token->role <= KILN_HUB_ROLE_SUBMIT);
    kiln_broker_t *b = allowed ? hub_thread_broker(c->hub, &err) : NULL;
    const char *service = json_string_value(json_object_get(msg, "service_required"));
    char *from = hub_events_position(c->hub, service ? service : "");
    if (!allowed)
        send_error(c->conn, message_id, "this token may not submit jobs (submit or admin role)");
    else if (!b || submit_compat(&c->req, b, msg, id, &err) != 0) {
        if (err.code == KILN_EREDIS)
            hub_broker_reset();
        send_error(c->conn, message_id, err.msg);
    } else {
        json_t *reply = json_pack("{s:s, s:s, s:O?, s:s, s:I}", "type", "job_accepted", "job_id",
                                  id, "message_id", message_id, "status", "pending", "timestamp",
                                  kiln_ops_wall_ms());
        hub_ws_send_json(c->conn, reply);
        json_decref(reply);
        /* After job_accepted, so that progress never comes before it. */
        if (hub_sub_watch_job(c->sub, b, id, from ? from : "0-0", &err) != 0)
            send_error(c->conn, message_id, err.msg);
    }
    free(from);
    json_decref(msg);
}

static int compat_data(struct mg_connection *conn, int flags, char *data, size_t len, void *cbdata)
{
    int opcode = flags & 0xf;
    if (opcode == MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE)
        return 0;
    compat_client_t *c = mg_get_user_connection_data(conn);
    if (c && opcode == MG_WEBSOCKET_OPCODE_TEXT)
        handle_message(c, data, len);
    return 1;
}

static void compat_closed(const struct mg_connection *conn, void *cbdata)
{
    compat_client_t *c = mg_get_user_connection_data(conn);
    if (!c)
        return;
    hub_sub_close(c->sub, "client closed");
    if (c->writer_started)
        pthread_join(c->writer, NULL);
    hub_sub_free(c->sub);
    free(c);
}

void hub_compat_register_ws(kiln_hub_t *hub)
{
    mg_set_websocket_handler(hub->mg, "/ws/client/", compat_connect, compat_ready, compat_data,
                             compat_closed, hub);
}

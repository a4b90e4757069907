/*
 * The machine routes of the hub: GET /v1/machines, GET /v1/machines/{id},
 * POST /v1/machines/{id}/wake and POST /v1/machines/{id}/services/{name}/restart.
 * The registry (src/hub/registry.c) builds the views; a restart travels to
 * the machine's agent as a control request through Redis
 * (include/kiln/machine_control.h), so the hub needs neither the agent's
 * address nor its machine API token.
 */
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker_internal.h"
#include "hub/hub_internal.h"
#include "hub/registry_internal.h"
#include "kiln/hub_machines.h"
#include "kiln/machine_api.h"
#include "kiln/machine_control.h"

/* Sends a registry error as is; a Redis failure also drops the thread's
 * connection, as hub_reply_kiln_error does. */
static int reply_hub_error(hub_req_t *req, const kiln_hub_error_t *e)
{
    if (e->status == 503) {
        atomic_fetch_add(&req->hub->redis_errors, 1);
        hub_broker_reset();
    }
    return hub_reply_json(req, e->status ? e->status : 500, kiln_hub_error_json(e));
}

int hub_fleet_list(hub_req_t *req)
{
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_hub_error_t e = {0};
    json_t *machines = NULL;
    if (kiln_hub_machines_list(b, &machines, &e) != 0)
        return reply_hub_error(req, &e);
    return hub_reply_json(req, 200, json_pack("{s:o}", "machines", machines));
}

int hub_fleet_get(hub_req_t *req)
{
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_hub_error_t e = {0};
    json_t *machine = NULL;
    if (kiln_hub_machines_get(b, req->param, &machine, &e) != 0)
        return reply_hub_error(req, &e);
    return hub_reply_json(req, 200, machine);
}

int hub_fleet_wake(hub_req_t *req)
{
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_hub_error_t e = {0};
    json_t *sent = NULL;
    if (kiln_hub_wake(b, req->param, &sent, &e) != 0)
        return reply_hub_error(req, &e);
    return hub_reply_json(req, 202, sent);
}

/* The {name} of /v1/machines/{id}/services/{name}/restart into name;
 * false when it is not a service name. */
static bool service_of(hub_req_t *req, char *name, size_t size)
{
    const char *services = strstr(req->ri->local_uri, "/services/");
    if (!services)
        return false;
    const char *start = services + strlen("/services/");
    size_t len = strcspn(start, "/");
    if (len == 0 || len >= size)
        return false;
    snprintf(name, size, "%.*s", (int)len, start);
    return kiln_machine_api_valid_service_name(name);
}

/* Queues the control request for machine id; 0 or -1 (e set). */
static int send_request(kiln_broker_t *b, const char *id, const char *request_id,
                        const char *service, kiln_hub_error_t *e)
{
    json_t *msg =
        json_pack("{s:s, s:s, s:s, s:I}", "id", request_id, "action", "restart", "service", service,
                  "deadline", (json_int_t)(kiln_ops_wall_ms() + KILN_MACHINE_CONTROL_WAIT_MS));
    char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (!text)
        return kiln_hub_error_set(e, 500, "internal", NULL, "out of memory"), -1;
    redisReply *r = kiln_hub_command(b, e, "LPUSH " KILN_MACHINE_CONTROL_PREFIX "%s %s", id, text);
    free(text);
    if (!r)
        return -1;
    freeReplyObject(r);
    r = kiln_hub_command(b, e, "EXPIRE " KILN_MACHINE_CONTROL_PREFIX "%s %d", id,
                         KILN_MACHINE_CONTROL_TTL_S);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

/* Waits for the agent's reply in one-second slices (so a stopping hub is
 * not held). 1 with *reply (caller owns), 0 when none came in time, -1 on
 * a Redis error (e set). */
static int wait_reply(hub_req_t *req, kiln_broker_t *b, const char *request_id, json_t **reply,
                      kiln_hub_error_t *e)
{
    *reply = NULL;
    long long deadline = kiln_ops_wall_ms() + KILN_MACHINE_CONTROL_WAIT_MS;
    while (kiln_ops_wall_ms() < deadline && !atomic_load(&req->hub->stopping)) {
        redisReply *r =
            kiln_hub_command(b, e, "BLPOP " KILN_MACHINE_CONTROL_REPLY_PREFIX "%s 1", request_id);
        if (!r)
            return -1;
        bool got = r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                   r->element[1]->type == REDIS_REPLY_STRING;
        if (got)
            *reply = json_loads(r->element[1]->str, 0, NULL);
        freeReplyObject(r);
        if (got)
            return *reply ? 1 : 0;
    }
    return 0;
}

/* The agent's answer as the hub's reply: its status, and its error message
 * (never anything else it may hold). */
static int relay(hub_req_t *req, const char *id, const char *service, json_t *reply)
{
    int status = (int)json_integer_value(json_object_get(reply, "status"));
    json_t *body = json_object_get(reply, "body");
    if (status >= 200 && status < 300)
        return hub_reply_json(req, 200,
                              json_pack("{s:b, s:s, s:s, s:s}", "ok", 1, "machine", id, "service",
                                        service, "action", "restart"));
    const char *msg = json_string_value(json_object_get(json_object_get(body, "error"), "message"));
    if (status == 404)
        return hub_reply_error(req, 404, "service",
                               "machine '%s' has no service '%s'; GET "
                               "/v1/machines/%s lists its services",
                               id, service, id);
    return hub_reply_error(req, status == 409 ? 409 : 502, NULL, "machine '%s': %s", id,
                           msg ? msg : "the agent refused the restart");
}

int hub_fleet_restart(hub_req_t *req)
{
    char service[KILN_HUB_MACHINE_ID_MAX + 1];
    if (!service_of(req, service, sizeof service))
        return hub_reply_error(req, 404, "service",
                               "service: a service name is 1-64 characters of a-z, 0-9, '_' and "
                               "'-', starting with a letter or digit");
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_hub_error_t e = {0};
    char state[16];
    if (kiln_hub_machine_state(b, req->param, state, &e) != 0)
        return reply_hub_error(req, &e);
    if (strcmp(state, "offline") == 0)
        return hub_reply_error(req, 409, "machine",
                               "machine '%s' is offline: its agent cannot restart '%s'; wake it "
                               "first (POST /v1/machines/%s/wake)",
                               req->param, service, req->param);
    unsigned char raw[16];
    char request_id[33];
    if (RAND_bytes(raw, sizeof raw) != 1)
        return hub_reply_error(req, 500, NULL, "no random bytes for a request id");
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(request_id + 2 * i, 3, "%02x", raw[i]);
    json_t *reply = NULL;
    if (send_request(b, req->param, request_id, service, &e) != 0 ||
        wait_reply(req, b, request_id, &reply, &e) < 0)
        return reply_hub_error(req, &e);
    if (!reply)
        return hub_reply_error(req, 504, NULL,
                               "machine '%s' did not answer the restart of '%s' within %d s; is "
                               "its agent (`kiln machine run`) connected to this Redis?",
                               req->param, service, KILN_MACHINE_CONTROL_WAIT_MS / 1000);
    int rc = relay(req, req->param, service, reply);
    json_decref(reply);
    return rc;
}

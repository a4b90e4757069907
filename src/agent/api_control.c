/*
 * Control requests through Redis (include/kiln/machine_control.h): a thread
 * of the machine API takes the hub's requests for this machine from
 * kiln:machine-control:<id> and runs each as the matching machine API call
 * on the loop thread (api_call_run), then pushes the API's reply. So the
 * hub can restart a service on a machine whose API listens on loopback.
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/api_internal.h"
#include "broker/ops.h"
#include "core/redis_url.h"
#include "kiln/log.h"
#include "kiln/machine_control.h"

#define COMPONENT       "machine-api"
#define POLL_S          1    /* BLPOP slice: how soon a stopping API is noticed */
#define RECONNECT_MS    1000 /* between connection attempts */
#define REPLY_TIMEOUT_S 3    /* socket timeout, above the BLPOP slice */

static bool stopping(kiln_machine_api_t *api)
{
    pthread_mutex_lock(&api->mu);
    bool stop = api->stopping;
    pthread_mutex_unlock(&api->mu);
    return stop;
}

static redisContext *connect_redis(const kiln_redis_url_t *url)
{
    struct timeval tv = {REPLY_TIMEOUT_S, 0};
    redisContext *c = redisConnectWithTimeout(url->host, url->port, tv);
    kiln_err_t err = {0};
    if (!c || c->err || kiln_redis_url_prepare(c, url, &err) != 0) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

/* Runs one request (JSON text) and returns the reply to push (caller
 * frees), or NULL when the request is malformed or past its deadline. */
static char *run_request(kiln_machine_api_t *api, const char *text, char *reply_key, size_t size)
{
    json_t *req = json_loads(text, 0, NULL);
    const char *id = json_string_value(json_object_get(req, "id"));
    const char *action = json_string_value(json_object_get(req, "action"));
    const char *service = json_string_value(json_object_get(req, "service"));
    json_int_t deadline = json_integer_value(json_object_get(req, "deadline"));
    bool ok = id && strlen(id) == 32 && strspn(id, "0123456789abcdef") == 32 && action &&
              strcmp(action, "restart") == 0 && service &&
              kiln_machine_api_valid_service_name(service) && deadline > kiln_ops_wall_ms();
    char *out = NULL;
    if (ok) {
        snprintf(reply_key, size, KILN_MACHINE_CONTROL_REPLY_PREFIX "%s", id);
        api_call_t *call = api_call_new(API_CALL_SERVICE_ACTION);
        api_response_t res = {0};
        if (call) {
            snprintf(call->name, sizeof call->name, "%s", service);
            call->action = "restart";
            kiln_log(KILN_LOG_INFO, COMPONENT, NULL, NULL, "control request: restart %s", service);
            api_call_run(api, call, &res);
        }
        json_t *body = res.body ? json_loadb(res.body, res.len, 0, NULL) : NULL;
        json_t *reply = json_pack("{s:i, s:o}", "status", call ? res.status : 503, "body",
                                  body ? body : json_object());
        out = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
        json_decref(reply);
        api_response_clear(&res);
    }
    json_decref(req);
    return out;
}

/* Takes one request (waiting up to POLL_S) and answers it. false when the
 * connection failed. */
static bool serve_one(kiln_machine_api_t *api, redisContext *c)
{
    redisReply *r =
        redisCommand(c, "BLPOP " KILN_MACHINE_CONTROL_PREFIX "%s %d", api->machine_id, POLL_S);
    if (!r)
        return false;
    char reply_key[128];
    char *reply = NULL;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING &&
        r->element[1]->len <= KILN_MACHINE_CONTROL_MAX_BYTES)
        reply = run_request(api, r->element[1]->str, reply_key, sizeof reply_key);
    freeReplyObject(r);
    if (!reply)
        return true;
    redisAppendCommand(c, "LPUSH %s %s", reply_key, reply);
    redisAppendCommand(c, "EXPIRE %s %d", reply_key, KILN_MACHINE_CONTROL_TTL_S);
    free(reply);
    bool ok = true;
    for (int i = 0; i < 2; i++) {
        redisReply *done = NULL;
        ok = ok && redisGetReply(c, (void **)&done) == REDIS_OK;
        if (done)
            freeReplyObject(done);
    }
    return ok;
}

static void *control_main(void *arg)
{
    kiln_machine_api_t *api = arg;
    redisContext *c = NULL;
    while (!stopping(api)) {
        if (!c && !(c = connect_redis(&api->control_url))) {
            pthread_mutex_lock(&api->mu);
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += RECONNECT_MS / 1000;
            if (!api->stopping)
                pthread_cond_timedwait(&api->done_cond, &api->mu, &until);
            pthread_mutex_unlock(&api->mu);
            continue;
        }
        if (!serve_one(api, c)) {
            redisFree(c);
            c = NULL;
        }
    }
    if (c)
        redisFree(c);
    return NULL;
}

int api_control_start(kiln_machine_api_t *api, const char *redis_url, kiln_err_t *err)
{
    if (!redis_url || !*redis_url)
        return 0;
    int rc = kiln_redis_url_parse(redis_url, &api->control_url, err);
    if (rc)
        return rc;
    if (pthread_create(&api->control, NULL, control_main, api) != 0)
        return kiln_err_set(err, KILN_EIO, "machine API: cannot start the control thread");
    api->control_started = true;
    return 0;
}

void api_control_join(kiln_machine_api_t *api)
{
    if (api->control_started)
        pthread_join(api->control, NULL);
    api->control_started = false;
}

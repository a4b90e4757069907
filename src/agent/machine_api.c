/*
 * The machine API's lifecycle and the hand-off between civetweb's request
 * threads and the libuv loop thread (see api_internal.h).
 */
#include "agent/api_internal.h"

#include <errno.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/deadline.h"
#include "core/mg_server.h"
#include "kiln/log.h"

#define COMPONENT "machine-api"

/* Request threads: followers plus this many for everything else. */
#define API_THREADS_BESIDE_FOLLOWERS 8
/* civetweb's bounds on one connection (strings: they are its options). */
#define API_REQUEST_TIMEOUT_MS    "2000"
#define API_KEEP_ALIVE_TIMEOUT_MS "1000"

bool kiln_machine_api_valid_service_name(const char *name)
{
    if (!name)
        return false;
    size_t len = strlen(name);
    if (len == 0 || len > API_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '_' && c != '-')))
            return false;
    }
    return true;
}

api_call_t *api_call_new(api_call_kind_t kind)
{
    api_call_t *call = calloc(1, sizeof *call);
    if (call)
        call->kind = kind;
    return call;
}

static void call_free(api_call_t *call)
{
    api_response_clear(&call->res);
    free(call);
}

/* The absolute time timeout_ms from now on CLOCK_MONOTONIC (done_cond's clock). */
static struct timespec deadline_after(long timeout_ms)
{
    return kiln_deadline_after_ms(CLOCK_MONOTONIC, timeout_ms);
}

/* Appends call to the queue. Called with mu held. */
static void enqueue_locked(kiln_machine_api_t *api, api_call_t *call)
{
    call->state = API_CALL_QUEUED;
    call->next = NULL;
    if (api->queue_tail)
        api->queue_tail->next = call;
    else
        api->queue_head = call;
    api->queue_tail = call;
    api->queued++;
}

/* Takes call out of the queue (it must be queued). Called with mu held. */
static void unlink_locked(kiln_machine_api_t *api, api_call_t *call)
{
    api_call_t **p = &api->queue_head, *prev = NULL;
    while (*p && *p != call) {
        prev = *p;
        p = &(*p)->next;
    }
    if (!*p)
        return;
    *p = call->next;
    if (api->queue_tail == call)
        api->queue_tail = prev;
    api->queued--;
}

void api_call_run(kiln_machine_api_t *api, api_call_t *call, api_response_t *res)
{
    memset(res, 0, sizeof *res);
    pthread_mutex_lock(&api->mu);
    if (api->stopping || api->queued >= KILN_MACHINE_API_QUEUE_MAX) {
        bool stopping = api->stopping;
        pthread_mutex_unlock(&api->mu);
        call_free(call);
        if (stopping)
            api_response_error(res, 503, "the machine agent is shutting down; retry later");
        else
            api_response_error(res, 503,
                               "%d requests are already waiting for the machine agent; retry "
                               "later",
                               KILN_MACHINE_API_QUEUE_MAX);
        return;
    }
    enqueue_locked(api, call);
    uv_async_send(&api->wake);
    struct timespec deadline = deadline_after(api->hook_timeout_ms);
    while (call->state != API_CALL_DONE && !api->stopping) {
        if (pthread_cond_timedwait(&api->done_cond, &api->mu, &deadline) == ETIMEDOUT)
            break;
    }
    if (call->state == API_CALL_DONE) {
        pthread_mutex_unlock(&api->mu);
        *res = call->res;
        memset(&call->res, 0, sizeof call->res);
        call_free(call);
        return;
    }
    bool stopping = api->stopping;
    if (call->state == API_CALL_QUEUED) {
        unlink_locked(api, call);
        pthread_mutex_unlock(&api->mu);
        call_free(call);
    } else {
        /* The loop is inside a hook for it: it frees the call when done. */
        call->abandoned = true;
        pthread_mutex_unlock(&api->mu);
    }
    if (stopping)
        api_response_error(res, 503, "the machine agent is shutting down; retry later");
    else
        api_response_error(res, 503,
                           "the machine agent did not answer within %ld ms (its loop is busy); "
                           "retry later",
                           api->hook_timeout_ms);
}

void api_call_post(kiln_machine_api_t *api, api_call_t *call)
{
    pthread_mutex_lock(&api->mu);
    call->detached = true;
    enqueue_locked(api, call);
    pthread_mutex_unlock(&api->mu);
    uv_async_send(&api->wake);
}

/* Loop thread: runs the queued calls one at a time, taking each off the
 * queue only when its turn comes, so a request that gave up meanwhile has
 * already removed its call and no hook runs for nobody. */
static void on_wake(uv_async_t *handle)
{
    kiln_machine_api_t *api = handle->data;
    for (;;) {
        pthread_mutex_lock(&api->mu);
        api_call_t *call = api->queue_head;
        if (!call) {
            pthread_mutex_unlock(&api->mu);
            return;
        }
        api->queue_head = call->next;
        if (!api->queue_head)
            api->queue_tail = NULL;
        api->queued--;
        call->next = NULL;
        call->state = API_CALL_RUNNING;
        pthread_mutex_unlock(&api->mu);
        api_calls_execute(api, call);
        pthread_mutex_lock(&api->mu);
        bool owned_here = call->abandoned || call->detached;
        call->state = API_CALL_DONE;
        pthread_cond_broadcast(&api->done_cond);
        pthread_mutex_unlock(&api->mu);
        if (owned_here)
            call_free(call);
    }
}

/* civetweb's own messages (bind failures, bad requests) go to our log; a
 * request line or header never holds the token in civetweb's messages. */
static int on_civetweb_log(const struct mg_connection *conn, const char *message)
{
    (void)conn;
    kiln_log(KILN_LOG_WARN, COMPONENT, NULL, NULL, "civetweb: %s", message);
    return 1;
}

/* Checks "host:port" or "port" and copies it into api->listen. */
static int parse_listen(kiln_machine_api_t *api, const char *listen, kiln_err_t *err)
{
    size_t len = strlen(listen);
    if (len == 0 || len >= sizeof api->listen)
        return kiln_err_set(err, KILN_EINVAL,
                            "machine API: listen address \"%.*s\": expected host:port or port "
                            "(1-%zu characters), e.g. 127.0.0.1:9090",
                            64, listen, sizeof api->listen - 1);
    const char *colon = strrchr(listen, ':');
    const char *port = colon ? colon + 1 : listen;
    char *end;
    errno = 0;
    long n = strtol(port, &end, 10);
    if (!*port || *end || errno || n < 0 || n > 65535 || strchr(listen, ','))
        return kiln_err_set(err, KILN_EINVAL,
                            "machine API: listen address \"%s\": the port must be 0-65535 "
                            "(machine.health_port), e.g. 127.0.0.1:9090",
                            listen);
    memcpy(api->listen, listen, len + 1);
    return 0;
}

static int start_civetweb(kiln_machine_api_t *api, kiln_err_t *err)
{
    char threads[16];
    snprintf(threads, sizeof threads, "%d", api->max_followers + API_THREADS_BESIDE_FOLLOWERS);
    /* A client holds one of the few threads from accept until its request
     * is read: its whole header must arrive within request_timeout_ms
     * (slowloris), and an idle keep-alive connection is let go soon. */
    const char *options[] = {"listening_ports",
                             api->listen,
                             "num_threads",
                             threads,
                             "request_timeout_ms",
                             API_REQUEST_TIMEOUT_MS,
                             "enable_keep_alive",
                             "yes",
                             "keep_alive_timeout_ms",
                             API_KEEP_ALIVE_TIMEOUT_MS,
                             NULL};
    struct mg_callbacks callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.begin_request = api_http_handle;
    callbacks.http_error = api_http_error;
    callbacks.log_message = on_civetweb_log;
    char why[256];
    api->mg = kiln_mg_start(&callbacks, api, options, &api->port, why, sizeof why);
    if (!api->mg)
        return kiln_err_set(err, KILN_EIO,
                            "machine API: cannot listen on %s: %s; set machine.health_port "
                            "(MACHINE_HEALTH_PORT) to a free port",
                            api->listen, why);
    return 0;
}

static int copy_options(kiln_machine_api_t *api, const kiln_machine_api_options_t *opts,
                        kiln_err_t *err)
{
    api->loop = opts->loop;
    api->hooks = *opts->hooks;
    api->hooks_ctx = opts->hooks_ctx;
    api->hook_timeout_ms =
        opts->hook_timeout_ms > 0 ? opts->hook_timeout_ms : KILN_MACHINE_API_HOOK_TIMEOUT_MS;
    api->max_followers =
        opts->max_followers > 0 ? opts->max_followers : KILN_MACHINE_API_FOLLOWERS_MAX;
    if (api->max_followers > 256)
        return kiln_err_set(err, KILN_EINVAL, "machine API: max_followers %d: expected 1-256",
                            api->max_followers);
    int rc = parse_listen(api, opts->listen ? opts->listen : KILN_MACHINE_API_LISTEN_DEFAULT, err);
    if (rc)
        return rc;
    if (opts->token && *opts->token) {
        /* Only a digest is kept: comparing digests is constant-time for
         * tokens of any length, and the token never sits in our memory. */
        SHA256((const unsigned char *)opts->token, strlen(opts->token), api->token_digest);
        api->has_token = true;
    }
    api->machine_id = strdup(opts->machine_id ? opts->machine_id : "unknown");
    api->disk_path = strdup(opts->disk_path ? opts->disk_path : "/");
    if (!api->machine_id || !api->disk_path)
        return kiln_err_set(err, KILN_ENOMEM, "machine API: out of memory");
    return 0;
}

static void free_memory(kiln_machine_api_t *api)
{
    pthread_cond_destroy(&api->done_cond);
    pthread_mutex_destroy(&api->mu);
    free(api->machine_id);
    free(api->disk_path);
    free(api);
}

static void on_wake_closed(uv_handle_t *handle)
{
    free_memory(handle->data);
}

int kiln_machine_api_new(const kiln_machine_api_options_t *opts, kiln_machine_api_t **out,
                         kiln_err_t *err)
{
    *out = NULL;
    if (!opts || !opts->loop || !opts->hooks)
        return kiln_err_set(
            err, KILN_EINVAL,
            "machine API: options need a loop and hooks (kiln_machine_api_hooks_t)");
    kiln_machine_api_t *api = calloc(1, sizeof *api);
    if (!api)
        return kiln_err_set(err, KILN_ENOMEM, "machine API: out of memory");
    pthread_mutex_init(&api->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&api->done_cond, &attr);
    pthread_condattr_destroy(&attr);

    int rc = copy_options(api, opts, err);
    if (rc)
        goto error;
    rc = uv_async_init(api->loop, &api->wake, on_wake);
    if (rc) {
        rc = kiln_err_set(err, KILN_EIO, "machine API: uv_async_init: %s", uv_strerror(rc));
        goto error;
    }
    api->wake.data = api;
    mg_init_library(0);
    rc = start_civetweb(api, err);
    if (rc) {
        mg_exit_library();
        uv_close((uv_handle_t *)&api->wake, on_wake_closed);
        return rc;
    }
    rc = api_control_start(api, opts->control_redis_url, err);
    if (rc) {
        kiln_machine_api_free(api);
        return rc;
    }
    kiln_log(KILN_LOG_INFO, COMPONENT, NULL, NULL, "machine API listening on %s (port %d)%s",
             api->listen, api->port,
             api->has_token ? "" : "; control endpoints disabled (no token)");
    *out = api;
    return 0;

error:
    free_memory(api);
    return rc;
}

int kiln_machine_api_port(const kiln_machine_api_t *api)
{
    return api->port;
}

void kiln_machine_api_free(kiln_machine_api_t *api)
{
    if (!api)
        return;
    /* 1. Refuse new work and wake every waiting request thread (they answer
     *    503), and end the follow streams: their unfollow runs here, on the
     *    loop thread, because mg_stop below blocks the loop until every
     *    request thread has returned. */
    pthread_mutex_lock(&api->mu);
    api->stopping = true;
    pthread_cond_broadcast(&api->done_cond);
    pthread_mutex_unlock(&api->mu);
    api_follow_unfollow_all(api);
    api_control_join(api);

    /* 2. Give the streams a moment to write their last chunk: once mg_stop
     *    raises civetweb's stop flag, writes fail and a client would see a
     *    cut-off reply instead of a finished one. */
    pthread_mutex_lock(&api->mu);
    struct timespec deadline = deadline_after(API_STREAM_END_MS);
    while (api->streaming > 0 &&
           pthread_cond_timedwait(&api->done_cond, &api->mu, &deadline) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&api->mu);

    /* 3. Wait for civetweb's threads. */
    kiln_mg_stop(api->mg, api->listen, api->port);
    mg_exit_library();

    /* 4. Nothing else can queue now: drop what is queued and the streams. */
    pthread_mutex_lock(&api->mu);
    api_call_t *left = api->queue_head;
    api->queue_head = api->queue_tail = NULL;
    api->queued = 0;
    pthread_mutex_unlock(&api->mu);
    while (left) {
        api_call_t *next = left->next;
        call_free(left);
        left = next;
    }
    api_follow_free_all(api);
    uv_close((uv_handle_t *)&api->wake, on_wake_closed);
}

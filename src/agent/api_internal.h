/*
 * The machine API's insides, shared by its files:
 *   machine_api.c  lifecycle, the request queue between civetweb's threads
 *                  and the loop thread
 *   api_http.c     civetweb side: routing, validation, auth, writing replies
 *   api_calls.c    loop side: each request kind against the hooks
 *   api_follow.c   /logs?follow=1 streams (both sides)
 *   api_control.c  control requests from the hub through Redis
 *
 * Threads: civetweb threads build an api_call_t, queue it and wait on
 * done_cond; the loop thread runs it and produces a finished response (a
 * body already serialised, so no JSON object crosses threads). A request
 * thread that stops waiting marks its call abandoned and the loop frees it.
 */
#ifndef KILN_AGENT_API_INTERNAL_H
#define KILN_AGENT_API_INTERNAL_H

#include <civetweb.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/redis_url.h"
#include "kiln/machine_api.h"

#define API_NAME_MAX      64           /* service names: [a-z0-9][a-z0-9_-]{0,63} */
#define API_LISTEN_MAX    128          /* a listen address */
#define API_FOLLOW_BUF    (256 * 1024) /* unsent follow output; older lines are dropped */
#define API_DIGEST_SIZE   32           /* SHA-256 */
#define API_STREAM_END_MS 1000         /* shutdown waits this long for streams to end cleanly */

typedef enum {
    API_CALL_HEALTH,
    API_CALL_READY,
    API_CALL_STATUS,
    API_CALL_SERVICES,
    API_CALL_SERVICE,
    API_CALL_SERVICE_HEALTH,
    API_CALL_SERVICE_ACTION,
    API_CALL_RELOAD,
    API_CALL_RESTART_MACHINE,
    API_CALL_REFRESH_STATUS,
    API_CALL_LOGS,
    API_CALL_METRICS,
    API_CALL_API_HEALTH,
    API_CALL_FOLLOW_START,
    API_CALL_FOLLOW_STOP
} api_call_kind_t;

/* A reply ready to write: status, static content type, owned body. */
typedef struct api_response {
    int status;
    const char *content_type;
    char *body;
    size_t len;
    const char *allow;            /* 405: the methods the path takes */
    const char *www_authenticate; /* 401 */
    bool close;                   /* close the connection after (unread body) */
} api_response_t;

typedef enum { API_CALL_QUEUED, API_CALL_RUNNING, API_CALL_DONE } api_call_state_t;

struct api_follow;

typedef struct api_call {
    api_call_kind_t kind;
    char name[API_NAME_MAX + 1]; /* a validated service name, or "" */
    const char *action;          /* "start" | "stop" | "restart" (static) */
    size_t lines;
    struct api_follow *follow;
    api_response_t res;
    /* Guarded by api->mu. */
    api_call_state_t state;
    bool abandoned; /* the request thread gave up; whoever finishes frees */
    bool detached;  /* nobody waits (fire and forget); the loop frees */
    struct api_call *next;
} api_call_t;

/* One /logs?follow=1 stream. Created by the request thread, freed on the
 * loop thread (api_follow_release) once it is unfollowed. */
typedef struct api_follow {
    kiln_machine_api_t *api;
    char name[API_NAME_MAX + 1];
    bool ndjson;
    int wake_fd; /* eventfd: the loop has added output, or the server stops */
    /* Guarded by api->mu. */
    char *pending; /* output not yet written, at most API_FOLLOW_BUF bytes */
    size_t pending_len, pending_cap;
    size_t dropped; /* lines dropped because the client read too slowly */
    struct api_follow *next;
    /* Loop thread only. */
    bool following;
} api_follow_t;

struct kiln_machine_api {
    uv_loop_t *loop;
    uv_async_t wake;
    struct mg_context *mg;
    kiln_machine_api_hooks_t hooks;
    void *hooks_ctx;
    bool has_token;
    unsigned char token_digest[API_DIGEST_SIZE];
    char *machine_id;
    char *disk_path;
    char listen[API_LISTEN_MAX];
    long hook_timeout_ms;
    int max_followers;
    int port;

    pthread_mutex_t mu;
    pthread_cond_t done_cond;
    /* Guarded by mu. */
    api_call_t *queue_head, *queue_tail;
    size_t queued;
    bool stopping;
    api_follow_t *followers;
    size_t n_followers;
    size_t streaming; /* request threads inside a follow reply */

    /* The control thread (api_control.c), when a Redis URL was given. */
    kiln_redis_url_t control_url;
    pthread_t control;
    bool control_started;
};

/* ---- machine_api.c ---------------------------------------------------------- */

/* Queues call (taken: freed here or by the loop) for the loop thread and
 * waits for its reply, at most api->hook_timeout_ms; moves the reply into
 * *res (a 503 on timeout, a full queue or shutdown). Request threads only. */
void api_call_run(kiln_machine_api_t *api, api_call_t *call, api_response_t *res);

/* Queues call (taken) without waiting; the loop runs and frees it. Never
 * refused, even past the queue bound (used for unfollow, which must run). */
void api_call_post(kiln_machine_api_t *api, api_call_t *call);

/* A zeroed call of kind; NULL when out of memory. */
api_call_t *api_call_new(api_call_kind_t kind);

/* ---- api_calls.c (loop thread) ---------------------------------------------- */

/* Runs call against the hooks, filling call->res. */
void api_calls_execute(kiln_machine_api_t *api, api_call_t *call);

/* ---- responses (api_calls.c; any thread) ------------------------------------ */

/* res = status with body (stolen) serialised compactly; content_type NULL
 * means application/json. */
void api_response_json(api_response_t *res, int status, json_t *body, const char *content_type);

/* res = {"error":{"code","message"}} with status; code is derived from it. */
void api_response_error(api_response_t *res, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Releases the body. */
void api_response_clear(api_response_t *res);

/* ---- api_http.c (civetweb threads) ------------------------------------------ */

/* civetweb's begin_request callback: routes and answers every request.
 * Returns the HTTP status written (civetweb then sends nothing more). */
int api_http_handle(struct mg_connection *conn);

/* civetweb's http_error callback: its own errors as the API's JSON error
 * body. Returns 0 (the reply is sent). */
int api_http_error(struct mg_connection *conn, int status, const char *msg);

/* Writes res (headers and body) to conn. Returns 0 or -1 on a write error. */
int api_http_send(struct mg_connection *conn, const api_response_t *res);

/* ---- api_follow.c ----------------------------------------------------------- */

/* Request thread: serves GET /logs?follow=1 for a validated name until the
 * client goes away or the server stops. Returns the HTTP status. */
int api_follow_serve(kiln_machine_api_t *api, struct mg_connection *conn, const char *name,
                     size_t lines, bool ndjson);

/* Loop thread: sends the initial lines and starts following (FOLLOW_START). */
void api_follow_start(kiln_machine_api_t *api, api_call_t *call);

/* Loop thread: unfollows, unlinks and frees follow (FOLLOW_STOP). */
void api_follow_release(kiln_machine_api_t *api, api_follow_t *follow);

/* Loop thread, shutting down: unfollows every stream and wakes its request
 * thread (which then ends its reply). Called with api->mu not held. */
void api_follow_unfollow_all(kiln_machine_api_t *api);

/* Loop thread, after civetweb stopped: frees every stream left. */
void api_follow_free_all(kiln_machine_api_t *api);

/* ---- api_control.c ------------------------------------------------------------ */

/* Starts the thread that answers the hub's control requests for this
 * machine (include/kiln/machine_control.h) from redis_url; NULL or "":
 * none. It stops once api->stopping is set: join it with api_control_join. */
int api_control_start(kiln_machine_api_t *api, const char *redis_url, kiln_err_t *err);
void api_control_join(kiln_machine_api_t *api);

#endif

/*
 * The hub's modules and what they share:
 *   hub.c         lifecycle, civetweb, the per-thread broker connection
 *   hub_http.c    routing (the route table), auth, CORS, bodies, replies
 *   hub_jobs.c    the job API (/v1/jobs...), queues, workers, health
 *   hub_list.c    GET /v1/jobs: filters and cursor pagination
 *   hub_events.c  the event reader and its fan-out to live clients
 *   hub_stream.c  /v1/events (SSE and WebSocket), /v1/jobs/{id}/events
 *   hub_compat.c  the earlier system's /api/jobs and /ws/client/{id}
 *   hub_metrics.c /metrics
 *   hub_fleet.c   /v1/machines...: the registry's views, wake, service restarts
 *   hub_web.c     the monitor UI (web/, embedded at build)
 */
#ifndef KILN_HUB_INTERNAL_H
#define KILN_HUB_INTERNAL_H

#include <civetweb.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kiln/broker.h"
#include "kiln/hub.h"
#include "kiln/hub_webhook.h"

#define HUB_TOKEN_DIGEST 32

typedef struct hub_token {
    char name[65];
    unsigned char digest[HUB_TOKEN_DIGEST]; /* sha256 of the token; the token is not kept */
    kiln_hub_role_t role;
} hub_token_t;

typedef struct hub_events hub_events_t;
typedef struct hub_batcher hub_batcher_t;

struct kiln_hub {
    struct mg_context *mg;
    kiln_broker_options_t broker_opts;
    char *redis_url;
    char listen[80];
    char url[96];
    int port;
    long max_body_bytes;
    int threads;
    hub_token_t *tokens;
    size_t n_tokens;
    int rate_limit_per_s;    /* per token; 0: none */
    pthread_mutex_t rate_mu; /* guards the buckets */
    double *rate_buckets;    /* per token: requests it may still make now */
    int64_t *rate_refill_ms; /* per token: when its bucket was last refilled */
    char **origins;
    size_t n_origins;
    long retention_age_s;
    hub_events_t *events;
    hub_batcher_t *batcher;
    kiln_webhooks_t *webhooks; /* the delivery loop; NULL without hub.webhooks.secret */
    atomic_bool stopping;
    /* Counters for /metrics. */
    atomic_ullong requests[6]; /* by status class: 1xx..5xx, [0] other */
    atomic_ullong submitted;
    atomic_ullong redis_errors;
};

/* ---- one request ------------------------------------------------------------ */

typedef struct hub_req {
    kiln_hub_t *hub;
    struct mg_connection *conn;
    const struct mg_request_info *ri;
    const hub_token_t *token; /* NULL when the hub has no tokens */
    const char *param;        /* {id} of the route, NUL-terminated, or NULL */
    char param_buf[KILN_JOB_ID_MAX + 32];
    bool close; /* close the connection after the reply */
} hub_req_t;

typedef int (*hub_handler_t)(hub_req_t *req);

/* A route: METHOD and a path pattern with at most one {param} segment,
 * the least role it needs, and its handler. */
typedef struct hub_route {
    const char *method;
    const char *pattern;
    kiln_hub_role_t role; /* ADMIN > SUBMIT > READ; READ routes are open to every token */
    hub_handler_t handler;
} hub_route_t;

extern const hub_route_t hub_routes[];
extern const size_t hub_n_routes;

/* civetweb's begin_request: routes, authorises and answers one request. */
int hub_http_handle(struct mg_connection *conn);

/* Checks the request's bearer token when the hub has tokens; sets
 * req->token. 0, or the status of the error reply already sent. */
int hub_http_authorize(hub_req_t *req, kiln_hub_role_t need);

/* Sets req->token from the Authorization header (or ?access_token=);
 * NULL when absent or unknown. */
void hub_http_identify(hub_req_t *req);

/* Replies. Each sends the whole reply (with CORS headers) and returns the
 * status. hub_reply_json takes ownership of body. */
int hub_reply_json(hub_req_t *req, int status, json_t *body);
int hub_reply_text(hub_req_t *req, int status, const char *content_type, const char *body,
                   size_t len);
int hub_reply_error(hub_req_t *req, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A broker call's error as a reply: ENOTFOUND 404, ECONFLICT 409, EINVAL
 * 422 (the field taken from the message), ETOOBIG 413, EREDIS 503 (and the
 * thread's connection is dropped, to reconnect on the next request). */
int hub_reply_kiln_error(hub_req_t *req, const kiln_err_t *err);

/* Writes the CORS headers for the request's Origin, when allowed. */
void hub_http_cors_headers(hub_req_t *req);

/* Reads the request body (Content-Length or chunked) into a NUL-terminated
 * buffer of at most hub->max_body_bytes. 0 with *body owned by the caller;
 * else the status of the error reply already sent (413 checked before
 * reading when Content-Length says so). */
int hub_read_body(hub_req_t *req, char **body, size_t *len);

/* Parses a JSON object body: 0 with *obj owned by the caller, else the
 * status of the reply sent (400 malformed, 413, 422 not an object). */
int hub_read_json(hub_req_t *req, json_t **obj);

/* A query parameter: 1 found (URL-decoded into out), 0 absent, -1 too long. */
int hub_query(hub_req_t *req, const char *key, char *out, size_t size);

/* The calling thread's broker connection, connected on first use. NULL
 * after sending 503 when Redis cannot be reached. */
kiln_broker_t *hub_broker(hub_req_t *req);

/* The same without a reply: NULL with err set. */
kiln_broker_t *hub_thread_broker(kiln_hub_t *hub, kiln_err_t *err);

/* Drops the calling thread's connection (after a Redis error). */
void hub_broker_reset(void);

/* Whether state is final: completed, failed, cancelled or dead. */
bool hub_state_final(const char *state);

/* Whether text is a well-formed job id ("service.seq"). */
bool hub_job_id_ok(const char *text);

/* ---- handlers ----------------------------------------------------------------- */

int hub_jobs_submit(hub_req_t *req);
int hub_jobs_get(hub_req_t *req);
int hub_jobs_waiting(hub_req_t *req);
int hub_jobs_list(hub_req_t *req);
int hub_jobs_cancel(hub_req_t *req);
int hub_jobs_retry(hub_req_t *req);
int hub_jobs_queues(hub_req_t *req);
int hub_jobs_workers(hub_req_t *req);
int hub_jobs_health(hub_req_t *req);
int hub_jobs_openapi(hub_req_t *req);
int hub_metrics_serve(hub_req_t *req);
int hub_stream_job_events(hub_req_t *req);
int hub_stream_events_sse(hub_req_t *req);
int hub_compat_submit(hub_req_t *req);
int hub_compat_get(hub_req_t *req);
int hub_fleet_list(hub_req_t *req); /* hub_fleet.c: /v1/machines... */
int hub_fleet_get(hub_req_t *req);
int hub_fleet_wake(hub_req_t *req);
int hub_fleet_restart(hub_req_t *req);
int hub_web_serve(hub_req_t *req); /* hub_web.c: the monitor UI */
int hub_web_me(hub_req_t *req);

/* Submits a job spec object (borrowed, and changed: the hub-only fields
 * webhook and on_offline are taken out, the pin may be dropped) for req's
 * token: routes a pinned job (kiln_hub_route_job), records the webhook
 * URL, and records the owner for the submit role. 0 with id filled, else
 * a KILN_E* code with err set. */
int hub_jobs_submit_spec(hub_req_t *req, kiln_broker_t *broker, json_t *spec, char *id,
                         kiln_err_t *err);

/* ---- group commit of submits (hub_batch.c) ------------------------------------- */

int hub_batcher_start(kiln_hub_t *hub, kiln_err_t *err);
/* After civetweb has stopped: submits still queued are sent first. */
void hub_batcher_stop(kiln_hub_t *hub);

/* Submits spec (borrowed until it returns) in the next batch of its
 * service and waits for it. 0 with id filled, else a KILN_E* code. */
int hub_batcher_submit(kiln_hub_t *hub, const kiln_job_spec_t *spec, char *id, kiln_err_t *err);

/* ---- live events (hub_events.c) ----------------------------------------------- */

typedef struct hub_sub hub_sub_t;

/* Filters of a subscriber; empty strings match everything. */
typedef struct hub_filter {
    char job[KILN_JOB_ID_MAX];
    char service[KILN_SERVICE_NAME_MAX + 1];
    char machine[129];
    bool own_jobs_only; /* compat socket: only jobs added with hub_sub_watch_job */
} hub_filter_t;

int hub_events_start(kiln_hub_t *hub, kiln_err_t *err);
/* Stops the reader and closes every subscriber (their streams end). */
void hub_events_shutdown(kiln_hub_t *hub);
/* Frees what hub_events_start made; after civetweb has stopped. */
void hub_events_stop(kiln_hub_t *hub);

/* A new subscriber. since (may be NULL or "") is a cursor from an earlier
 * event: the events after it are queued first (read from Redis), then the
 * live ones, with none missed or repeated; broker (the caller's
 * connection; NULL: the thread's own) reads them, and finds where the
 * live events start when this is the first subscriber since the reader
 * went idle. NULL when the cursor is bad, Redis cannot be read (err says
 * why) or the hub is stopping. */
hub_sub_t *hub_sub_new(kiln_hub_t *hub, kiln_broker_t *broker, const hub_filter_t *filter,
                       const char *since, kiln_err_t *err);

/* The reader's position in service's stream (caller frees; "0-0" when it
 * does not follow it yet). */
char *hub_events_position(kiln_hub_t *hub, const char *service);

/* Adds a job to an own_jobs_only subscriber's set, and queues its events
 * after stream id from (taken with hub_events_position before the job was
 * submitted) that the reader passed before now. */
int hub_sub_watch_job(hub_sub_t *sub, kiln_broker_t *broker, const char *job_id, const char *from,
                      kiln_err_t *err);

/* Waits up to timeout_ms for the next event. 1 with *event (caller owns;
 * the event object with "cursor"), 0 on timeout, -1 when the subscriber
 * was dropped (reason names why) or the hub is stopping. */
int hub_sub_next(hub_sub_t *sub, long timeout_ms, json_t **event, const char **reason);

/* Ends the subscription (wakes a waiting hub_sub_next) and frees it once
 * the caller holds no other reference: call it once, from the owner. */
void hub_sub_free(hub_sub_t *sub);

/* Wakes a waiting hub_sub_next, which then returns -1 with reason. */
void hub_sub_close(hub_sub_t *sub, const char *reason);

/* Whether another live client may start: each holds a request thread, and
 * HUB_THREADS_SPARE threads stay for other requests. */
#define HUB_THREADS_SPARE 8
bool hub_events_room(kiln_hub_t *hub);

/* Live subscriber count and dropped count, for /metrics. */
void hub_events_counts(kiln_hub_t *hub, long *clients, unsigned long long *events,
                       unsigned long long *dropped);

/* ---- machines of events (hub_machines.c; one table per annotating thread) ------ */

typedef struct hub_machines hub_machines_t;

hub_machines_t *hub_machines_new(void);
void hub_machines_free(hub_machines_t *m);

/* Adds "machine" to event when its job was started by a worker whose
 * record names a machine; b (may be NULL) looks up workers not seen yet,
 * and the worker of a job whose start m has not seen. */
void hub_machines_annotate(hub_machines_t *m, kiln_broker_t *b, json_t *event);

/* ---- WebSockets (hub_stream.c, hub_compat.c) ------------------------------------ */

void hub_stream_register_ws(kiln_hub_t *hub);
/* Sends a close frame with code and reason (cut to 120 bytes). */
void hub_ws_close(struct mg_connection *conn, unsigned code, const char *reason);
/* Sends msg (borrowed) as one text frame; 0 or -1. */
int hub_ws_send_json(struct mg_connection *conn, json_t *msg);
void hub_compat_register_ws(kiln_hub_t *hub);

/* The embedded OpenAPI document. */
extern const unsigned char kiln_hub_openapi[];
extern const unsigned long kiln_hub_openapi_len;

#endif

/*
 * The machine API: the HTTP server of the machine agent (default
 * 127.0.0.1:9090, machine.health_port), docs/machine-api.md.
 *
 *   GET  /health                   application/health+json, 200 pass / 503 fail
 *   GET  /ready                    200 / 503
 *   GET  /status                   the status document
 *   GET  /services                 {"services": [...]}
 *   GET  /services/{name}          one service
 *   GET  /services/{name}/health   application/health+json, 200 / 503
 *   POST /services/{name}/start|stop|restart    bearer token
 *   POST /restart/machine | /refresh-status | /reload   bearer token
 *   GET  /logs?service=&lines=&follow=1&format=text|ndjson
 *   GET  /metrics                  Prometheus text 0.0.4
 *   GET  /api/health               the earlier render farm's health document
 *
 * The server knows nothing of the supervisor: it calls the hooks below, so
 * the agent wires it to the real thing and tests to fakes. civetweb serves
 * requests on its own threads, but every hook runs on the libuv loop
 * thread: a request is queued, the loop is woken with a uv_async_t, and the
 * request thread waits (at most hook_timeout_ms, then 503) for the answer.
 */
#ifndef KILN_MACHINE_API_H
#define KILN_MACHINE_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "kiln/err.h"

#define KILN_MACHINE_API_LISTEN_DEFAULT  "127.0.0.1:9090"
#define KILN_MACHINE_API_BODY_MAX        (64 * 1024) /* larger request bodies get 413 */
#define KILN_MACHINE_API_LINES_DEFAULT   100
#define KILN_MACHINE_API_LINES_MAX       10000
#define KILN_MACHINE_API_HOOK_TIMEOUT_MS 5000
#define KILN_MACHINE_API_FOLLOWERS_MAX   8   /* concurrent /logs?follow=1 streams */
#define KILN_MACHINE_API_QUEUE_MAX       256 /* requests waiting for the loop */

/* Called by the agent (on the loop thread) with each new output line of a
 * followed service. entry is borrowed: {"time", "stream", "line"}, the
 * shape of the logs hook's entries (and of kiln_svclog_follow_cb, so the
 * agent can hand cb and cb_ctx straight to the service's log). */
typedef void (*kiln_machine_api_line_cb)(void *cb_ctx, json_t *entry);

/*
 * What the server asks the agent. Every hook runs on the loop thread, gets
 * the hooks ctx first, and must not block. JSON results are owned by the
 * caller (the server). A NULL hook answers as documented per hook.
 */
typedef struct kiln_machine_api_hooks {
    /* The status document (an object): machine_id, machine_type, state,
     * services (the supervisor's array), gpus (kiln_gpu_list_to_json) and,
     * when the agent has them, memory/disk/load/cpus; the server adds
     * those four from sysinfo when missing. NULL hook or result: 503. */
    json_t *(*status)(void *ctx);
    /* Whether the machine takes work (every service ready, not stopping).
     * NULL hook: ready. */
    bool (*ready)(void *ctx);
    /* Health details (an object merged into the health+json body, e.g.
     * {"checks": {...}}) and *healthy. NULL hook: pass with no details. */
    json_t *(*health)(void *ctx, bool *healthy);
    /* One service's status object, or NULL for an unknown name (404). */
    json_t *(*service_status)(void *ctx, const char *name);
    /* action is "start", "stop" or "restart". Returns 0, KILN_ENOTFOUND
     * (404), KILN_ECONFLICT (409) or another KILN_E* (500) with err set.
     * NULL hook: 501. The same contract holds for the three below. */
    int (*service_action)(void *ctx, const char *name, const char *action, kiln_err_t *err);
    int (*reload)(void *ctx, kiln_err_t *err);          /* POST /reload */
    int (*restart_machine)(void *ctx, kiln_err_t *err); /* POST /restart/machine */
    int (*refresh_status)(void *ctx, kiln_err_t *err);  /* POST /refresh-status */
    /* The last `lines` (1-10000) lines of a service as an array of
     * {"time","stream","line"}, oldest first; NULL for an unknown name. */
    json_t *(*logs)(void *ctx, const char *name, size_t lines);
    /* Starts calling cb(cb_ctx, entry) for each new line of name. Returns 0
     * or KILN_ENOTFOUND (404); another KILN_E* answers 503. Both follow
     * hooks NULL: follow=1 answers 501. */
    int (*logs_follow)(void *ctx, const char *name, kiln_machine_api_line_cb cb, void *cb_ctx);
    /* Stops the calls for (name, cb, cb_ctx); cb is never called for them
     * afterwards. Must do nothing when name or the pair is unknown (the
     * service may have been removed by a reload meanwhile). */
    void (*logs_unfollow)(void *ctx, const char *name, kiln_machine_api_line_cb cb, void *cb_ctx);
    /* Jobs waiting for and running on this machine, for /api/health.
     * Returns 0, or a KILN_E* (the counts are reported as 0). NULL hook: 0, 0. */
    int (*queue_counts)(void *ctx, long *pending, long *processing);
} kiln_machine_api_hooks_t;

typedef struct kiln_machine_api_options {
    /* "host:port" or "port" (all interfaces); port 0 picks a free port
     * (kiln_machine_api_port tells which). NULL: 127.0.0.1:9090. */
    const char *listen;
    /* The bearer token control endpoints (POST) require; copied. NULL or
     * "": every control endpoint answers 403 until one is set. */
    const char *token;
    const char *machine_id;                /* for /api/health and /health; NULL: "unknown" */
    const char *disk_path;                 /* file system reported as "disk"; NULL: "/" */
    long hook_timeout_ms;                  /* a request waits this long for the loop; 0: 5000 */
    int max_followers;                     /* 0: KILN_MACHINE_API_FOLLOWERS_MAX */
    const kiln_machine_api_hooks_t *hooks; /* copied */
    void *hooks_ctx;
    uv_loop_t *loop; /* borrowed; outlives the server */
    /* Redis to take the hub's control requests from (service restarts,
     * include/kiln/machine_control.h); NULL: none. */
    const char *control_redis_url;
} kiln_machine_api_options_t;

typedef struct kiln_machine_api kiln_machine_api_t;

/* Starts serving. Call on the loop thread (or before the loop runs).
 * Returns 0 with *out set; KILN_EINVAL for a malformed listen address or
 * missing loop/hooks; KILN_EIO when the address cannot be bound (the
 * message names the address and machine.health_port); KILN_ENOMEM. */
int kiln_machine_api_new(const kiln_machine_api_options_t *opts, kiln_machine_api_t **out,
                         kiln_err_t *err);

/* The port actually listened on (useful after port 0). */
int kiln_machine_api_port(const kiln_machine_api_t *api);

/* Stops serving and releases api. Call on the loop thread, never from a
 * hook. Requests in flight get 503, log followers are unfollowed (on this
 * thread, before it returns) and their streams end; the last of the memory
 * is released by a close callback, so run the loop once more afterwards
 * (as for any libuv handle). NULL is ignored. */
void kiln_machine_api_free(kiln_machine_api_t *api);

/* True when name is a valid service name: [a-z0-9][a-z0-9_-]{0,63}. */
bool kiln_machine_api_valid_service_name(const char *name);

#endif

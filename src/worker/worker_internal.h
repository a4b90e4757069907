/* Internal: the worker's state, shared by worker.c (lifecycle, jobs) and
 * worker_redis.c (connections, registry). Loop thread only, unless noted. */
#ifndef KILN_WORKER_INTERNAL_H
#define KILN_WORKER_INTERNAL_H

#include <hiredis/async.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "broker/ops.h"
#include "core/redis_url.h"
#include "kiln/connector.h"
#include "kiln/windows.h"
#include "kiln/worker.h"
#include "worker/slots.h"

typedef struct kiln_service {
    char *name;
    kiln_connector_t *connector;
    char channel[96];    /* kiln:{name}:notify */
    bool maybe_work;     /* a claim may find something: notified, timer, start */
    unsigned notify_gen; /* bumped by every wake-up, so a reply cannot clear a newer one */
    bool maintain;       /* next step also promotes, recovers and trims by age */
    kiln_argv_t reports; /* finished jobs not sent yet: 5 values each (step.lua) */
    int nreports;
    /* Connector health (health.c): no claims until a check has passed, nor
     * while the last one failed. */
    bool healthy;
    bool health_known;                   /* a check has finished */
    bool health_running;                 /* a check is out on libuv's thread pool */
    char health_error[KILN_ERR_MSG_MAX]; /* the last failure ("" when healthy) */
    long long health_checked_at;         /* wall-clock ms of the last check; 0: none yet */
} kiln_service_t;

/* A step call in flight, or waiting to be sent again after a failure. */
typedef struct kiln_step_call {
    kiln_worker_t *w;
    int service;
    kiln_argv_t argv;
    const kiln_script_t *script;
    int max_claim;
    int nreports;
    size_t reports_at;   /* argv index of the first report */
    bool counted;        /* max_claim is included in w->claims_outstanding */
    unsigned notify_gen; /* the service's notify_gen when the call was built */
    struct kiln_step_call *next;
} kiln_step_call_t;

/* A job claimed ahead of a free slot (worker.prefetch). */
typedef struct kiln_prefetched {
    kiln_claimed_job_t job;
    int service;
} kiln_prefetched_t;

#define KILN_STEPS_IN_FLIGHT 2

struct kiln_worker {
    const kiln_config_t *cfg;
    kiln_broker_options_t opts;
    kiln_redis_url_t url;
    kiln_worker_identity_t who;
    kiln_service_t *services;
    int n_services;
    int next_service;       /* round robin for claims */
    kiln_windows_t windows; /* worker.active_windows: claims only inside (none: always) */

    uv_loop_t loop;
    uv_async_t wakeup; /* slots finished or reported progress; stop asked */
    uv_signal_t sigterm, sigint;
    uv_timer_t heartbeat_timer, registry_timer, due_timer, reconnect_timer, grace_timer,
        progress_timer, hard_stop_timer, retry_timer, health_timer;

    redisAsyncContext *cmd; /* scripts and registry */
    redisAsyncContext *sub; /* notify channels */
    bool cmd_ready;
    int reconnect_delay_ms;
    bool reconnect_armed;

    int inflight;            /* step calls awaiting their reply */
    int claims_outstanding;  /* jobs those calls may bring */
    kiln_step_call_t *retry; /* steps whose reply was lost, to send again */
    bool retry_paused;       /* Redis refused a step: wait for retry_timer */
    kiln_prefetched_t *prefetched;
    int n_prefetched;
    double run_ema_ms; /* running average of job run time */

    kiln_slotpool_t pool;
    atomic_int stop_requested; /* any thread */
    bool stopping;             /* claim nothing more */
    bool releasing;            /* grace over: running jobs handed back */
    bool closing;
    bool abandoned; /* slot threads still running at exit: not joined */
    int64_t last_progress_ms;
    int64_t started_ms;
    int ready_fd; /* readiness pipe (kiln_worker_set_ready_fd), or -1 */
    char host[128];
};

/* worker_redis.c */
void kiln_worker_redis_connect(kiln_worker_t *w);
void kiln_worker_redis_close(kiln_worker_t *w, bool force);
/* Loads every script on the command connection (after a connect, or when
 * Redis answered NOSCRIPT). */
void kiln_worker_load_scripts(kiln_worker_t *w);
void kiln_worker_redis_lost(kiln_worker_t *w, const char *why);
void kiln_worker_register(kiln_worker_t *w);
void kiln_worker_deregister(kiln_worker_t *w);
/* Sends argv on the command connection; cb gets (reply or NULL, privdata). */
int kiln_worker_send(kiln_worker_t *w, kiln_argv_t *argv, redisCallbackFn *cb, void *privdata);

/* worker.c, called by worker_redis.c */
void kiln_worker_on_connected(kiln_worker_t *w);
void kiln_worker_on_subscribed(kiln_worker_t *w);
void kiln_worker_on_notify(kiln_worker_t *w, const char *channel, const char *message);
void kiln_worker_pump(kiln_worker_t *w);

int64_t kiln_worker_now_ms(void);

/* health.c: checks every connector's health now and then every
 * worker.health_interval_ms, off the loop thread (libuv's thread pool), so a
 * slow check delays no claim, report or heartbeat. A change of state is
 * logged once, published on the worker's record, and wakes claims when a
 * connector comes back. */
void kiln_worker_health_start(kiln_worker_t *w);

/* The services' health as the worker record shows it:
 * {"<service>": {"status": "pass"|"fail"|"unknown", "error"?, "checked_at"?}}. */
json_t *kiln_worker_health_json(const kiln_worker_t *w);

/* Whether any service may claim now as far as health goes. */
bool kiln_worker_health_any(const kiln_worker_t *w);

/* Whether the worker's active windows allow claiming now (worker.c). */
bool kiln_worker_window_open(const kiln_worker_t *w);

#endif

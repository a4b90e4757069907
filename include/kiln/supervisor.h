/*
 * The machine agent's supervisor: runs services (argv, never a shell), each
 * in its own process group, as an explicit state machine (s6-style):
 *
 *   state \ event  start      ready      exit(ok/fail)         stop        backoff-timer
 *   down           starting   -          -                     -           -
 *   waiting        (deps ready) starting -                     down        -
 *   starting       -          running    backoff|failed|exited stopping    -
 *   running        -          -          backoff|failed|exited stopping    -
 *   backoff        -          -          -                     down        starting
 *   stopping       -          -          down                  -           -
 *   failed         starting   -          -                     down        -
 *
 * "waiting": a service whose depends_on are not all running (ready) yet.
 * One-shot services (install/setup steps) go to "exited" on exit 0 and
 * count as ready for their dependents. All callbacks run on the loop.
 */
#ifndef KILN_SUPERVISOR_H
#define KILN_SUPERVISOR_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "kiln/err.h"
#include "kiln/service_types.h"

typedef enum {
    KILN_SVC_DOWN,
    KILN_SVC_WAITING,
    KILN_SVC_STARTING,
    KILN_SVC_RUNNING,
    KILN_SVC_BACKOFF,
    KILN_SVC_STOPPING,
    KILN_SVC_FAILED,
    KILN_SVC_EXITED
} kiln_svc_state_t;

/* "down", "waiting", ... as in the table above. */
const char *kiln_svc_state_name(kiln_svc_state_t state);

typedef struct kiln_ready_check {
    kiln_ready_kind_t kind;
    char *target;     /* URL or host:port; owned */
    char **argv;      /* COMMAND; owned, NULL-terminated */
    long interval_ms; /* between attempts; default 200 */
    long timeout_ms;  /* one attempt; default 2000 */
    long deadline_ms; /* give up (service failed to start) after; default 120000 */
} kiln_ready_check_t;

/* One service. Every pointer is owned by the spec (kiln_svc_spec_clear). */
typedef struct kiln_svc_spec {
    char *name;              /* [a-z0-9][a-z0-9_-]{0,63} */
    char **argv;             /* NULL-terminated; argv[0] absolute or found on PATH */
    char **env;              /* extra "NAME=value", NULL-terminated, may be NULL */
    char *cwd;               /* may be NULL */
    char **depends_on;       /* names, NULL-terminated, may be NULL */
    bool oneshot;            /* a step that runs to exit 0 once (install, setup) */
    char *done_marker;       /* oneshot: skipped when this file exists; created on success */
    long oneshot_timeout_ms; /* oneshot: killed and failed after; 0 = none */
    kiln_restart_t restart;
    kiln_ready_check_t ready;
    int stop_signal;        /* default SIGTERM */
    long stop_timeout_ms;   /* then SIGKILL of the whole group; default 10000 */
    long memory_limit_mb;   /* restart when the group's RSS passes it; 0 = none */
    long backoff_base_ms;   /* first restart delay; default 100; doubles, with jitter */
    long backoff_max_ms;    /* default 30000 */
    long stable_ms;         /* a run this long resets the backoff; default 10000 */
    int max_failures;       /* this many failures within failure_window_ms: "failed" */
    long failure_window_ms; /* defaults 5 and 60000 */
} kiln_svc_spec_t;

/* Sets the defaults documented above (name and argv still to fill). */
void kiln_svc_spec_init(kiln_svc_spec_t *spec);
void kiln_svc_spec_clear(kiln_svc_spec_t *spec);
/* True when a and b would run the same thing (a reload leaves it alone). */
bool kiln_svc_spec_equal(const kiln_svc_spec_t *a, const kiln_svc_spec_t *b);

/* Events: "state" (fields: from, to, pid, exit_status...), "alert" (a
 * service went failed: fields: failures, window_ms, last_exit), "ready". */
typedef void (*kiln_supervisor_event_cb)(void *ctx, const char *service, const char *event,
                                         json_t *fields);

typedef struct kiln_supervisor_options {
    const char *state_file;    /* pids and process-start times of what runs; NULL = none */
    const char *log_dir;       /* <dir>/<service>.log, rotated; NULL = no files */
    size_t log_ring_lines;     /* in-memory lines per service for the API; default 1000 */
    size_t log_file_max_bytes; /* rotate past this; default 10 MiB */
    int log_file_keep;         /* rotated files kept; default 5 */
    kiln_supervisor_event_cb on_event;
    void *event_ctx;
    long stats_interval_ms; /* RSS/CPU sweep and memory_limit_mb check; default 2000 */
} kiln_supervisor_options_t;

typedef struct kiln_supervisor kiln_supervisor_t;

/* Creates a supervisor on loop (borrowed). Makes this process a child
 * subreaper, so no grandchild outlives its service. Reads the state file:
 * processes a previous agent left running are stopped (their whole group,
 * SIGTERM then SIGKILL) before anything starts, so none runs twice. */
int kiln_supervisor_new(uv_loop_t *loop, const kiln_supervisor_options_t *opts,
                        kiln_supervisor_t **out, kiln_err_t *err);

/* Reconciles the running set with specs (copied): services not in specs
 * are stopped and removed, new ones added and started, changed ones
 * (kiln_svc_spec_equal false) restarted; unchanged ones keep running with
 * their pids. Independent services start in parallel; a service waits for
 * its depends_on to be ready. Refuses (KILN_EINVAL, nothing changed) a
 * dependency on an unknown service or a cycle. */
int kiln_supervisor_apply(kiln_supervisor_t *sv, const kiln_svc_spec_t *specs, size_t n,
                          kiln_err_t *err);

/* Operator commands. KILN_ENOTFOUND for an unknown name. */
int kiln_supervisor_start(kiln_supervisor_t *sv, const char *name, kiln_err_t *err);
int kiln_supervisor_stop(kiln_supervisor_t *sv, const char *name, kiln_err_t *err);
int kiln_supervisor_restart(kiln_supervisor_t *sv, const char *name, kiln_err_t *err);

/* Stops everything in reverse dependency order; done(ctx) is called once
 * every service is down (from the loop, never from inside this call, so
 * done may free the supervisor). */
void kiln_supervisor_shutdown(kiln_supervisor_t *sv, void (*done)(void *ctx), void *ctx);

/* Status of every service (array) or one (object; NULL when unknown):
 * name, state, pid, pgid, uptime_ms, restarts, failures, ready, last_exit
 * (code or signal), rss_mb, cpu_pct (since the last call), oneshot,
 * last_error (why it failed to start or was stopped; null when none) and,
 * in backoff, backoff_ms. Caller owns the result. */
json_t *kiln_supervisor_status(kiln_supervisor_t *sv);
json_t *kiln_supervisor_service_status(kiln_supervisor_t *sv, const char *name);

/* The last lines (at most `lines`) of a service's output as a JSON array
 * of {"time","stream","line"}; NULL for an unknown service. */
json_t *kiln_supervisor_logs(kiln_supervisor_t *sv, const char *name, size_t lines);

/* Calls cb(ctx, entry) for every new output line of service name (entry
 * as in kiln_supervisor_logs, borrowed) until unfollowed. KILN_ENOTFOUND
 * for an unknown name. Unfollow does nothing for an unknown name or pair. */
int kiln_supervisor_logs_follow(kiln_supervisor_t *sv, const char *name,
                                void (*cb)(void *ctx, json_t *entry), void *ctx);
void kiln_supervisor_logs_unfollow(kiln_supervisor_t *sv, const char *name,
                                   void (*cb)(void *ctx, json_t *entry), void *ctx);

/* Frees the supervisor; services must have been shut down (a run still
 * alive is SIGKILLed, group and all). Handles close asynchronously: run the
 * loop once more (uv_run) before uv_loop_close. */
void kiln_supervisor_free(kiln_supervisor_t *sv);

#endif

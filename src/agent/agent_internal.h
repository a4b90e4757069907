/* Internal: the agent's state, shared by agent.c and agent_run.c. */
#ifndef KILN_AGENT_INTERNAL_H
#define KILN_AGENT_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

#include "kiln/agent.h"
#include "kiln/broker.h"
#include "kiln/gpu.h"
#include "kiln/machine_api.h"
#include "kiln/plan.h"
#include "kiln/publisher.h"
#include "kiln/supervisor.h"

struct kiln_agent {
    kiln_config_t cfg; /* owned */
    char *config_path;
    char *state_dir;
    char *kiln_path;
    long status_interval_ms;
    int gpu_override;

    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t status_timer, publish_soon_timer;
    uv_timer_t publish_release; /* wakes the held publisher (agent.c) */
    uv_async_t stop_async;

    kiln_supervisor_t *sv;
    kiln_machine_api_t *api;
    char *api_listen; /* NULL: 127.0.0.1:<machine.health_port> */
    kiln_publisher_t *pub;
    kiln_broker_t *queue_broker; /* for /api/health's queue counts; NULL until used */
    kiln_gpu_list_t gpus;
    kiln_plan_t plan;
    json_t *service_states; /* service name -> last state the supervisor reported */
    json_t *downloads;      /* service name -> its download step's last progress or error */
    int lock_fd;            /* flock on <state_dir>/agent.lock: one agent per folder */

    const char *state; /* "starting", "ready", "stopping" */
    long long started_ms;
    atomic_int stop_requested;
    bool stopping;
};

/* Builds the plan for the current config and reconciles the supervisor
 * with it (start and reload). */
int kiln_agent_apply_plan(kiln_agent_t *a, kiln_err_t *err);

/* Publishes the full status now; the status timer's callback. */
void kiln_agent_publish_status(kiln_agent_t *a);
void kiln_agent_on_status_timer(uv_timer_t *t);

/* Publishes the status soon: a change shows at once, yet changes within
 * 100 ms of each other make one publish. */
void kiln_agent_publish_soon(kiln_agent_t *a);

/* The supervisor's event callback: lifecycle events, worker phases,
 * readiness, a status publish. */
void kiln_agent_on_supervisor_event(void *ctx, const char *service, const char *event,
                                    json_t *fields);

/* Loads the configuration again and reconciles (SIGHUP, POST /reload).
 * On a bad config nothing changes and the problems are logged. */
int kiln_agent_reload(kiln_agent_t *a, kiln_err_t *err);

/* Starts the machine API on machine.health_port (agent_api.c). */
int kiln_agent_api_start(kiln_agent_t *a, kiln_err_t *err);

/* Queues a lifecycle event; fields (may be NULL) is stolen. */
void kiln_agent_event(kiln_agent_t *a, const char *type, json_t *fields);

/* The plan's services as supervisor specs, borrowing the plan's strings
 * (plan must outlive them; free with kiln_agent_specs_free). */
int kiln_agent_specs_from_plan(const kiln_agent_t *a, const kiln_plan_t *plan,
                               kiln_svc_spec_t **specs, size_t *n, kiln_err_t *err);
void kiln_agent_specs_free(kiln_svc_spec_t *specs, size_t n);

/* Creates dir and its missing parents (mode 0750); 0, or KILN_EIO with
 * "cannot create the <what> <dir>: <reason>" in err. */
int kiln_agent_make_dirs(const char *dir, const char *what, kiln_err_t *err);

/* agent_downloads.c. Follows the output of the plan's download steps, so
 * their progress and failures become worker_phase events of the service
 * they fetch for. Call after each apply. */
void kiln_agent_downloads_follow(kiln_agent_t *a);

/* The service whose download step is `service`, or NULL. */
const char *kiln_agent_downloads_owner(const kiln_agent_t *a, const char *service);

/* The state last reported for `service`'s download step; NULL when it has
 * none. */
const char *kiln_agent_downloads_step_state(const kiln_agent_t *a, const char *service);

/* queue_counts.c. Pending and running jobs summed over the stats rows of
 * services[0..n) (the rest are left out). 0 or the broker's error. */
int kiln_agent_queue_counts_from(kiln_broker_t *broker, char *const *services, size_t n_services,
                                 long *pending, long *processing, kiln_err_t *err);

/* The same for this machine's worker.connectors, on the agent's own Redis
 * connection (opened on first use, dropped after an error). Loop thread. */
int kiln_agent_queue_counts(kiln_agent_t *a, long *pending, long *processing);

#endif

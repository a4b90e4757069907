/*
 * The machine agent (`kiln machine run`): config → GPUs → service plan →
 * supervisor, status and lifecycle events to Redis, the machine API.
 * SIGHUP (or kiln_agent_reload) reconciles with a freshly loaded config;
 * SIGTERM/SIGINT shut down gracefully: readiness fails first, services stop
 * in reverse dependency order (kiln workers hand unfinished jobs back), a
 * final offline event is written.
 */
#ifndef KILN_AGENT_H
#define KILN_AGENT_H

#include <jansson.h>

#include "kiln/config.h"
#include "kiln/err.h"

typedef struct kiln_agent_options {
    const char *config_path; /* reloaded on SIGHUP; NULL: defaults + environment */
    const char *state_dir;   /* state file, pid file, logs/; default ".kiln/machine" */
    const char *kiln_path;   /* the program workers run as; NULL: /proc/self/exe */
    long status_interval_ms; /* full status to Redis every; default 15000 */
    int gpu_override;        /* >= 0: pretend this many GPUs (tests, dry runs); -1: config */
    const char *api_listen;  /* machine API address; NULL: 127.0.0.1:<machine.health_port> */
} kiln_agent_options_t;

typedef struct kiln_agent kiln_agent_t;

/* Builds the agent from cfg (copied: the agent owns its config from now on;
 * pass a loaded config and do not free it) and opts (borrowed strings). */
int kiln_agent_new(kiln_config_t *cfg, const kiln_agent_options_t *opts, kiln_agent_t **out,
                   kiln_err_t *err);

/* Runs until SIGTERM/SIGINT (or kiln_agent_stop). 0 after a clean stop. */
int kiln_agent_run(kiln_agent_t *agent, kiln_err_t *err);

/* Asks a running agent to stop (thread- and signal-safe). */
void kiln_agent_stop(kiln_agent_t *agent);

/* The agent's status as published (caller owns): machine_id, machine_type,
 * state (starting|ready|stopping), services, gpus (usage read again through
 * NVML on each call), started_at, updated_at. Loop thread only. */
json_t *kiln_agent_status(kiln_agent_t *agent);

void kiln_agent_free(kiln_agent_t *agent);

#endif

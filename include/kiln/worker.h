/*
 * Worker runtime: claims jobs its connectors can run, runs them in
 * concurrency slots, heartbeats their leases, reports progress and results.
 * One libuv loop thread talks to Redis; each slot is a thread that runs a
 * connector.
 */
#ifndef KILN_WORKER_H
#define KILN_WORKER_H

#include "kiln/config.h"
#include "kiln/err.h"

typedef struct kiln_worker kiln_worker_t;

/* Builds a worker from cfg (borrowed for the worker's lifetime): its
 * connectors (cfg->worker.connectors), capabilities and limits. */
int kiln_worker_new(const kiln_config_t *cfg, kiln_worker_t **out, kiln_err_t *err);

/* Runs until stopped: by kiln_worker_stop, SIGTERM or SIGINT (the worker
 * installs handlers). On stop it claims nothing more, lets running jobs
 * finish within worker.shutdown_grace_ms, then releases the rest to pending
 * without counting an attempt. Returns 0 after a clean stop. */
int kiln_worker_run(kiln_worker_t *w, kiln_err_t *err);

/* Gives the worker a readiness fd (s6's notification-fd: the supervisor's
 * pipe, KILN_READY_FD in `kiln worker`'s environment): once a connector's
 * health check first passes, the worker writes "ready\n" to it and closes
 * it. Call before kiln_worker_run; the worker owns fd from then on. */
void kiln_worker_set_ready_fd(kiln_worker_t *w, int fd);

/* Asks a running worker to stop (thread- and signal-safe). */
void kiln_worker_stop(kiln_worker_t *w);

void kiln_worker_free(kiln_worker_t *w);

#endif

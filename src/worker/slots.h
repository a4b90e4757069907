/*
 * Internal: the worker's concurrency slots. Each slot is a thread that runs
 * one job at a time through a connector. The loop thread hands a slot a
 * job; the slot reports progress and its outcome back through a list and a
 * uv_async_t, so the loop never blocks on a connector.
 */
#ifndef KILN_WORKER_SLOTS_H
#define KILN_WORKER_SLOTS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

#include "kiln/broker.h"
#include "kiln/connector.h"

typedef enum { KILN_SLOT_IDLE, KILN_SLOT_RUNNING, KILN_SLOT_DONE } kiln_slot_state_t;

typedef struct kiln_slot {
    int index;
    struct kiln_slotpool *pool;
    pthread_t thread;
    pthread_mutex_t mu; /* guards has_job, quit and the progress fields */
    pthread_cond_t cv;
    bool has_job;
    bool quit;

    /* The job: written by the loop thread before the hand-over, read by the
     * slot thread while it runs. */
    kiln_claimed_job_t job;
    int service; /* index into the worker's services */
    const char *service_name;
    kiln_connector_t *connector;
    atomic_int cancel;
    int cancel_fd; /* eventfd, readable once cancel is set */
    kiln_job_outcome_t outcome;
    double run_ms; /* how long the connector ran */

    /* Latest progress, coalesced (guarded by mu). */
    bool progress_dirty;
    double percent;
    char message[256];

    /* Loop thread only. */
    kiln_slot_state_t state;
    bool released; /* handed back at shutdown: its outcome is dropped */
    struct kiln_slot *next_done;
} kiln_slot_t;

typedef struct kiln_slotpool {
    kiln_slot_t *slots;
    int count;
    pthread_mutex_t done_mu;
    kiln_slot_t *done; /* finished slots not yet collected by the loop */
    bool progress_pending;
    uv_async_t *wakeup;
} kiln_slotpool_t;

/* Starts count slot threads. wakeup (borrowed) is signalled whenever a slot
 * finishes or reports progress. */
int kiln_slotpool_init(kiln_slotpool_t *pool, int count, uv_async_t *wakeup, kiln_err_t *err);

/* Hands slot (idle; its job, service, service_name and connector already
 * set by the caller) to its thread. */
void kiln_slotpool_run(kiln_slot_t *slot);

/* Takes the finished slots (a list linked by next_done; their state becomes
 * KILN_SLOT_DONE). */
kiln_slot_t *kiln_slotpool_take_done(kiln_slotpool_t *pool);

/* Tells the slot's connector to stop its job (thread-safe). */
void kiln_slot_cancel(kiln_slot_t *slot);

/* Copies the slot's pending progress into percent/message and clears it;
 * false when there is none. */
bool kiln_slot_take_progress(kiln_slot_t *slot, double *percent, char *message, size_t size);

/* Number of slots in KILN_SLOT_IDLE. */
int kiln_slotpool_idle(const kiln_slotpool_t *pool);

/* Stops and joins every slot thread (jobs must have been cancelled first). */
void kiln_slotpool_close(kiln_slotpool_t *pool);

#endif

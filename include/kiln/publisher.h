/*
 * The machine's status and lifecycle events in Redis, published from a
 * thread of its own so the agent's loop never waits on Redis:
 *
 *   kiln:machine:<id>     the latest full status (JSON) with a TTL: it
 *                         expires when the agent stops heartbeating
 *   kiln:machines         sorted set: machine id -> last publish (ms)
 *   kiln:machine-events   bounded stream of lifecycle events
 *                         (machine, type, time, fields JSON)
 *
 * Status is "latest wins": only the newest is written. Events are queued
 * in order and kept across Redis outages (the publisher reconnects with
 * backoff); past the queue bound the oldest are dropped and counted.
 */
#ifndef KILN_PUBLISHER_H
#define KILN_PUBLISHER_H

#include <jansson.h>
#include <stdbool.h>

#include "kiln/err.h"

#define KILN_PUBLISHER_QUEUE_MAX   10000
#define KILN_MACHINE_EVENTS_STREAM "kiln:machine-events"

typedef struct kiln_publisher kiln_publisher_t;

/* Starts the publisher thread for machine_id. status_ttl_ms is the TTL of
 * the status record (a few times the publish interval). */
int kiln_publisher_new(const char *redis_url, const char *machine_id, long status_ttl_ms,
                       long stream_max_len, kiln_publisher_t **out, kiln_err_t *err);

/* Replaces the status to publish (status is borrowed; copied). */
void kiln_publisher_status(kiln_publisher_t *p, json_t *status);

/* Queues a lifecycle event of type ("startup", "service_state",
 * "worker_phase", "alert", "shutdown", "offline", ...) with fields
 * (borrowed; may be NULL). */
void kiln_publisher_event(kiln_publisher_t *p, const char *type, json_t *fields);

/* While held, events and statuses are queued but not written (and the
 * publisher thread is not woken), except by kiln_publisher_flush;
 * releasing (hold false) wakes the thread when anything is queued. The
 * agent holds it for a few milliseconds after a service's events, so
 * neither the thread nor Redis competes for a CPU with a respawn. */
void kiln_publisher_hold(kiln_publisher_t *p, bool hold);

/* Waits up to timeout_ms until everything queued has been written.
 * Returns 0, or KILN_ETIMEOUT with what is left. */
int kiln_publisher_flush(kiln_publisher_t *p, long timeout_ms, kiln_err_t *err);

/* Removes the status record (an orderly stop), stops the thread and frees.
 * Unwritten events are dropped (flush first). */
void kiln_publisher_free(kiln_publisher_t *p, bool remove_status);

/* Events dropped because the queue was full. */
unsigned long kiln_publisher_dropped(kiln_publisher_t *p);

#endif

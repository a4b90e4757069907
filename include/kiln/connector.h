/*
 * Connectors: one C module per kind of work. The worker owns one connector
 * instance per configured service and calls run() from its slot threads,
 * so run() must be safe to call concurrently on one instance.
 */
#ifndef KILN_CONNECTOR_H
#define KILN_CONNECTOR_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kiln/config.h"
#include "kiln/err.h"

/* What a connector is given for one job. Everything is borrowed for the
 * duration of run(). */
typedef struct kiln_job_context {
    const char *job_id;
    const char *service;
    const char *payload_json; /* the job's payload, serialized JSON */
    int attempt;              /* 1 on the first run */
    int64_t timeout_ms;       /* 0 = none; the connector enforces it */

    /* Reports progress (percent 0-100, message may be NULL). Cheap to call
     * often: the worker coalesces updates. */
    void (*progress)(void *progress_ctx, double percent, const char *message);
    void *progress_ctx;

    /* Set to non-zero when the job must stop (cancelled, lease lost, worker
     * forced down). cancel_fd becomes readable at the same moment, so a
     * connector blocked in poll(2) can include it instead of polling the flag. */
    const atomic_int *cancel;
    int cancel_fd;
} kiln_job_context_t;

typedef enum {
    KILN_OUTCOME_COMPLETED, /* result_json holds the result */
    KILN_OUTCOME_FAILED,    /* error holds the message; retryable says if a retry may help */
    KILN_OUTCOME_CANCELLED  /* stopped because cancel was set */
} kiln_outcome_status_t;

typedef struct kiln_job_outcome {
    kiln_outcome_status_t status;
    char *result_json; /* owned (malloc); serialized JSON; NULL means null */
    char *error;       /* owned (malloc) */
    bool retryable;
} kiln_job_outcome_t;

void kiln_job_outcome_clear(kiln_job_outcome_t *out);

/* Records a failure in out (message formatted) and returns 0. */
int kiln_job_outcome_fail(kiln_job_outcome_t *out, bool retryable, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef struct kiln_connector_ops {
    const char *type;
    /* Validates cfg->options and builds the instance state. On a bad option
     * returns KILN_EINVAL naming "connectors.<name>.<option>" and the fix. */
    int (*init)(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err);
    /* Runs one job to an outcome. Returns 0 when out is filled (whatever
     * the outcome), negative only on an internal error (then out is unset). */
    int (*run)(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out);
    /* 0 when the connector can take work; otherwise an error in err. */
    int (*health)(void *state, kiln_err_t *err);
    void (*free)(void *state);
} kiln_connector_ops_t;

typedef struct kiln_connector kiln_connector_t;

/* The ops of a built-in connector type, or NULL when unknown. */
const kiln_connector_ops_t *kiln_connector_find_type(const char *type);

/* Creates the instance cfg describes. *out owned by the caller. */
int kiln_connector_new(const kiln_connector_config_t *cfg, kiln_connector_t **out,
                       kiln_err_t *err);
int kiln_connector_run(kiln_connector_t *c, const kiln_job_context_t *job, kiln_job_outcome_t *out);
int kiln_connector_health(kiln_connector_t *c, kiln_err_t *err);
const char *kiln_connector_name(const kiln_connector_t *c);
void kiln_connector_free(kiln_connector_t *c);

/* Built-in types (src/connectors/). */
extern const kiln_connector_ops_t kiln_connector_simulation;
extern const kiln_connector_ops_t kiln_connector_exec;

#endif

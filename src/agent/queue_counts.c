/*
 * The queue figures of /api/health (source document 000): how many jobs
 * wait for, and how many run on, the services this machine's workers serve
 * (worker.connectors). Read from Redis through the broker's read calls on
 * a connection of the agent's own, opened on first use with a short
 * timeout and dropped after an error (the next call reconnects).
 */
#include <string.h>

#include "agent/agent_internal.h"
#include "kiln/log.h"

/* Connecting must not hold the agent's loop for long. */
#define QUEUE_CONNECT_TIMEOUT_MS 500

/* See agent_internal.h. */
int kiln_agent_queue_counts_from(kiln_broker_t *broker, char *const *services, size_t n_services,
                                 long *pending, long *processing, kiln_err_t *err)
{
    *pending = *processing = 0;
    json_t *stats;
    int rc = kiln_broker_queue_stats(broker, &stats, err);
    if (rc)
        return rc;
    size_t i;
    json_t *row;
    json_array_foreach(stats, i, row)
    {
        const char *service = json_string_value(json_object_get(row, "service"));
        for (size_t k = 0; service && k < n_services; k++) {
            if (strcmp(service, services[k]) != 0)
                continue;
            *pending += (long)json_integer_value(json_object_get(row, "pending"));
            *processing += (long)json_integer_value(json_object_get(row, "running"));
        }
    }
    json_decref(stats);
    return 0;
}

/* See agent_internal.h. */
int kiln_agent_queue_counts(kiln_agent_t *a, long *pending, long *processing)
{
    *pending = *processing = 0;
    if (a->cfg.worker.n_connectors == 0)
        return 0;
    kiln_err_t err = {0};
    if (!a->queue_broker) {
        kiln_broker_options_t opts;
        kiln_broker_options_from_config(&opts, &a->cfg);
        opts.connect_timeout_ms = QUEUE_CONNECT_TIMEOUT_MS;
        if (kiln_broker_connect(&opts, &a->queue_broker, &err) != 0) {
            KILN_LOG_DEBUG_("agent", "queue counts: %s", err.msg);
            return err.code;
        }
    }
    int rc = kiln_agent_queue_counts_from(a->queue_broker, a->cfg.worker.connectors,
                                          a->cfg.worker.n_connectors, pending, processing, &err);
    if (rc) {
        KILN_LOG_DEBUG_("agent", "queue counts: %s", err.msg);
        kiln_broker_free(a->queue_broker);
        a->queue_broker = NULL;
    }
    return rc;
}

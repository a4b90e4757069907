/* Internal: helpers the hub library modules share. */
#ifndef KILN_HUB_REGISTRY_INTERNAL_H
#define KILN_HUB_REGISTRY_INTERNAL_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "kiln/hub_machines.h"

/* A machine id: letters, digits, '.', '_', '-', 1-128 characters. */
bool kiln_hub_machine_id_ok(const char *id);

/* Runs a formatted command on the broker's connection; NULL (e: 503) on a
 * connection or Redis error. Caller frees the reply. */
redisReply *kiln_hub_command(kiln_broker_t *b, kiln_hub_error_t *e, const char *fmt, ...);

/* Every known machine (only_id: just that one, if known) as listed
 * (unsorted) in *machines, and the registry records {id: record} in
 * *records; caller owns both. */
int kiln_hub_machines_snapshot(kiln_broker_t *b, const char *only_id, json_t **machines,
                               json_t **records, kiln_hub_error_t *e);

/* Only the state of machine id (online, busy, offline) into state, without
 * building its full view or refreshing the registry: what routing needs on
 * every pinned submit. 404 when unknown. */
int kiln_hub_machine_state(kiln_broker_t *b, const char *id, char state[16], kiln_hub_error_t *e);

/* The key of job_id's webhook state (kiln:{service}:webhook:<id>) into
 * key; 404 when job_id is not a job id. */
int kiln_webhook_key(const char *job_id, char *key, size_t size, kiln_hub_error_t *e);

/* The webhook URL job_id was submitted with (*url malloc'd; NULL when it
 * has none). KILN_EREDIS when Redis cannot be read. */
int kiln_webhook_job_url(kiln_broker_t *b, const char *job_id, char **url, kiln_hub_error_t *e);

#endif

/* Internal: the synchronous broker connection shared by broker.c and read.c. */
#ifndef KILN_BROKER_INTERNAL_H
#define KILN_BROKER_INTERNAL_H

#include <hiredis/hiredis.h>

#include "broker/ops.h"
#include "kiln/broker.h"

struct kiln_broker {
    redisContext *redis;
    kiln_broker_options_t opts;
    char *redis_url;
    char last_service[KILN_SERVICE_NAME_MAX + 1]; /* last one added to kiln:services */
};

/* Runs the call in a (EVALSHA, falling back to EVAL on NOSCRIPT). Returns
 * the reply (caller frees) or NULL with err set (connection or script
 * error). Frees a either way. */
redisReply *kiln_broker_eval(kiln_broker_t *b, kiln_argv_t *a, const kiln_script_t *script,
                             kiln_err_t *err);

/* Runs a plain command given as argv; same ownership as kiln_broker_eval. */
redisReply *kiln_broker_command(kiln_broker_t *b, kiln_argv_t *a, kiln_err_t *err);

/* One field of job id's record into *value (malloc'd; NULL when the job or
 * the field is absent or empty). KILN_EINVAL for a malformed id,
 * KILN_EREDIS when Redis cannot be read. */
int kiln_broker_job_field(kiln_broker_t *b, const char *id, const char *field, char **value,
                          kiln_err_t *err);

#endif

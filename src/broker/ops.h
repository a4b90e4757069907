/*
 * Internal: building the EVALSHA calls of the broker's scripts and reading
 * their replies. Shared by the synchronous broker (broker.c) and the
 * worker's asynchronous connection, so both speak exactly the same protocol.
 */
#ifndef KILN_BROKER_OPS_H
#define KILN_BROKER_OPS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "kiln/broker.h"

/* A growable argument vector for redisCommandArgv; every item is an owned
 * copy. Bounded by KILN_ARGV_MAX_ITEMS. */
typedef struct kiln_argv {
    size_t count;
    size_t cap;
    char **items;
    size_t *lens;
    bool failed; /* an append ran out of memory or room; the call must not be sent */
} kiln_argv_t;

#define KILN_ARGV_MAX_ITEMS 65536

void kiln_argv_init(kiln_argv_t *a);
/* Appends len bytes of s (len SIZE_MAX: strlen). Failure sets a->failed. */
void kiln_argv_add(kiln_argv_t *a, const char *s, size_t len);
void kiln_argv_addf(kiln_argv_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void kiln_argv_free(kiln_argv_t *a);

typedef struct kiln_script {
    const char *name;
    const char *source;
    size_t length;
    char sha[41];
} kiln_script_t;

/* The embedded script called name ("submit", "claim", ...); NULL if none.
 * Thread-safe. */
const kiln_script_t *kiln_script_get(const char *name);

/* Starts an EVALSHA of script on service's queue: the command, the routing
 * key and the common ARGV header (lua/lib/00_core.lua). The caller appends
 * the operation's arguments. */
void kiln_ops_begin(kiln_argv_t *a, const kiln_script_t *script, const kiln_broker_options_t *opts,
                    const char *service);

/* When reply is a NOSCRIPT error, rewrites a (built by kiln_ops_begin) into
 * the equivalent EVAL with the script's source and returns true. */
bool kiln_ops_noscript_fallback(kiln_argv_t *a, const redisReply *reply,
                                const kiln_script_t *script);

/* Appends the worker identity and claim size (claim.lua / step.lua). */
void kiln_ops_add_claimer(kiln_argv_t *a, const kiln_worker_identity_t *who, int max);

/* Reads the claims in reply->element[first..] into jobs (room for max).
 * Returns the count, or a negative KILN_E* on a malformed reply. */
int kiln_ops_parse_claims(const redisReply *reply, size_t first, kiln_claimed_job_t *jobs, int max,
                          kiln_err_t *err);

/* Maps a script status ('ok', 'lost', 'cancelled', 'missing') to 0 or a
 * KILN_E* code with a message naming job id. */
int kiln_ops_status(const char *status, const char *id, kiln_err_t *err);

/* Splits a job id "<service>.<seq>" into service (KILN_SERVICE_NAME_MAX+1
 * bytes). Returns KILN_EINVAL naming the id when malformed. */
int kiln_ops_job_service(const char *id, char *service, kiln_err_t *err);

/* Validates a service (queue) name: [a-z0-9][a-z0-9_-]{0,63}. */
bool kiln_ops_service_name_ok(const char *name);

/* Milliseconds since the epoch (CLOCK_REALTIME). */
long long kiln_ops_wall_ms(void);

/* Milliseconds on CLOCK_MONOTONIC, for intervals. */
long long kiln_ops_monotonic_ms(void);

#endif

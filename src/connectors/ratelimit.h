/*
 * A fleet-wide request budget for the API connectors (openai, replicate,
 * runpod): at most `limit` requests per window for every worker that uses
 * the same budget key, counted in Redis by one atomic Lua script
 * (lua/ratelimit.lua, a sliding window log on the server's clock) under
 * kiln:ratelimit:{<key>}.
 *
 * A limiter is built once per connector instance and may be used by its
 * slot threads at once: its one Redis connection is behind a lock that is
 * never held while waiting for a slot.
 */
#ifndef KILN_CONNECTORS_RATELIMIT_H
#define KILN_CONNECTORS_RATELIMIT_H

#include <stdatomic.h>
#include <stdint.h>

#include "kiln/connector.h"
#include "kiln/err.h"

#define KILN_RATELIMIT_PER_MINUTE_MAX 1000000
#define KILN_RATELIMIT_KEY_MAX        128
#define KILN_RATELIMIT_IO_TIMEOUT_MS  2000 /* connect and each command */

typedef struct kiln_ratelimit kiln_ratelimit_t;

typedef struct kiln_ratelimit_options {
    const char *redis_url; /* redis://...; required */
    const char *key;       /* the budget's name (copied); [A-Za-z0-9_.:-], 1-128 characters */
    int64_t limit;         /* requests per window, 1..KILN_RATELIMIT_PER_MINUTE_MAX */
    int64_t window_ms;     /* 60000 for a per-minute budget; 1..3600000 */
    const char *name;      /* for messages: "connectors.<name>" */
} kiln_ratelimit_options_t;

/* Connects to Redis and loads the script. Returns 0, KILN_EINVAL (a bad
 * option, named), KILN_EREDIS (Redis unreachable or refusing: the message
 * says which URL, password hidden, and what to fix) or KILN_ENOMEM. *out is
 * owned by the caller: kiln_ratelimit_free. */
int kiln_ratelimit_new(const kiln_ratelimit_options_t *opts, kiln_ratelimit_t **out,
                       kiln_err_t *err);

/* Reads options.rate_limit_per_minute and options.rate_limit_key (default:
 * the connector's name) of cfg and builds a limiter on cfg->redis_url; *out
 * is NULL when no rate limit is set. A rate limit without a Redis URL, or
 * with a Redis that does not answer, is an error naming
 * connectors.<name>.rate_limit_per_minute. */
int kiln_ratelimit_from_config(const kiln_connector_config_t *cfg, kiln_ratelimit_t **out,
                               kiln_err_t *err);

/* Takes one slot of the budget, waiting (in poll(2) on cancel_fd, the flag
 * checked too) until one is free. Returns 0 with the slot taken;
 * KILN_ECANCELLED once cancel is set; KILN_ETIMEOUT when deadline_ms
 * (CLOCK_MONOTONIC ms; 0: none) would pass before a slot frees; KILN_EREDIS
 * when Redis fails (the next call reconnects). rl NULL: 0 at once. */
int kiln_ratelimit_acquire(kiln_ratelimit_t *rl, const atomic_int *cancel, int cancel_fd,
                           int64_t deadline_ms, kiln_err_t *err);

/* The limit per window and the budget key, for logs. */
int64_t kiln_ratelimit_limit(const kiln_ratelimit_t *rl);
const char *kiln_ratelimit_key(const kiln_ratelimit_t *rl);

/* Closes the connection and frees. NULL is a no-op. */
void kiln_ratelimit_free(kiln_ratelimit_t *rl);

#endif

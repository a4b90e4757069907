/*
 * Webhooks: when a job completes, fails or dies, its webhook URL (the job's
 * own, or the hub's default) receives a POST of the job JSON, signed
 *   X-Kiln-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>
 * and retried with exponential backoff up to a bounded number of attempts.
 *
 * The delivery loop reads the terminal events of every queue's event stream
 * (kiln:{s}:events) through the consumer group "kiln-webhooks": several hubs
 * share the work and never deliver one event twice, and an event read but
 * not acknowledged (a hub that stopped or died) is taken up again by the
 * next loop, so a restart misses none.
 *
 * A job's own URL is stored with it at submit (kiln_job_spec_t.webhook_url,
 * the job hash's webhook_url field), in the same step as the job itself.
 * Delivery state lives beside the job, under the job's hash tag, from the
 * first attempt on (before it, a job with a URL reads as pending):
 *   kiln:{s}:webhook:<id>  hash: url, state (pending | delivered | failed),
 *                          attempts, last_status, last_error, updated_at
 */
#ifndef KILN_HUB_WEBHOOK_H
#define KILN_HUB_WEBHOOK_H

#include <jansson.h>
#include <stddef.h>

#include "kiln/broker.h"
#include "kiln/hub_error.h"

#define KILN_WEBHOOK_GROUP         "kiln-webhooks"
#define KILN_WEBHOOK_URL_MAX       2048
#define KILN_WEBHOOK_SIGNATURE_MAX 128
#define KILN_WEBHOOK_ATTEMPTS_MAX  20
#define KILN_WEBHOOK_STATE_TTL_S   (7 * 86400)

/* Computes the X-Kiln-Signature value for body (len bytes) sent at unix
 * time t into out (KILN_WEBHOOK_SIGNATURE_MAX bytes). */
void kiln_webhook_sign(const char *secret, long long t, const char *body, size_t len,
                       char out[KILN_WEBHOOK_SIGNATURE_MAX]);

/* Takes the hub-only field "webhook" out of a job spec object (so the
 * broker never sees it): *url receives a malloc'd copy (NULL when absent).
 * 400 naming "webhook" unless it is an http(s) URL of at most 2048 bytes. */
int kiln_webhook_take_from_job(json_t *job, char **url, kiln_hub_error_t *e);

/* job_id's delivery state: {"url" (credentials and query hidden), "state",
 * "attempts", "last_status", "last_error", "updated_at"}; {"url", "state":
 * "pending", "attempts": 0} before the first attempt; JSON null when the job
 * has no URL of its own and no attempt was made. Caller owns *out. */
int kiln_webhook_state(kiln_broker_t *b, const char *job_id, json_t **out, kiln_hub_error_t *e);

typedef struct kiln_webhook_options {
    const char *redis_url;   /* borrowed for the call */
    const char *default_url; /* NULL: only jobs with their own URL */
    const char *secret;      /* the HMAC key; required; copied, never logged */
    const char *consumer;    /* this hub's name in the group; NULL: host-pid */
    int max_attempts;        /* 1-20; 0: 5 */
    long backoff_base_ms;    /* first retry after this, doubling; 0: 1000 */
    long backoff_max_ms;     /* 0: 60000 */
    long timeout_ms;         /* one POST; 0: 10000 */
    long reclaim_idle_ms;    /* take over events another consumer left this long (keep it above
                                a delivery's whole retry time); 0: 300000 */
} kiln_webhook_options_t;

typedef struct kiln_webhooks kiln_webhooks_t;

/* Starts the delivery loop on a thread of its own. On success *out owns
 * it: kiln_webhooks_stop. KILN_EINVAL names the bad option. */
int kiln_webhooks_start(const kiln_webhook_options_t *opts, kiln_webhooks_t **out, kiln_err_t *err);

/* Stops the loop (a delivery in its backoff wait stops at once and is
 * left unacknowledged, to be resumed by the next loop), joins and frees. */
void kiln_webhooks_stop(kiln_webhooks_t *w);

#endif

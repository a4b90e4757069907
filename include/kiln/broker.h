/*
 * Broker: the job model and every job state change. All writes happen in
 * Lua scripts run atomically in Redis (src/broker/lua/); this module builds
 * their arguments and reads their replies. Nothing else writes job state.
 *
 * Job ids are "<service>.<sequence>", e.g. "simulation.42": the service is
 * the queue, and every key of a queue shares the hash tag {<service>}.
 *
 * A kiln_broker_t is one synchronous Redis connection; it is not
 * thread-safe (use one per thread). The worker runtime uses the same
 * scripts through an asynchronous connection (src/worker/).
 */
#ifndef KILN_BROKER_H
#define KILN_BROKER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln/config.h"
#include "kiln/err.h"

#define KILN_SERVICE_NAME_MAX       64
#define KILN_JOB_ID_MAX             96
#define KILN_PRIORITY_MIN           (-1000)
#define KILN_PRIORITY_MAX           1000
#define KILN_IDEMPOTENCY_KEY_MAX    200
#define KILN_REQUIREMENTS_MAX_BYTES 16384
#define KILN_SUBMIT_BATCH_MAX       1000

/* Limits and policies shared by every broker call; from kiln_config_t.broker. */
typedef struct kiln_broker_options {
    const char *redis_url;    /* borrowed; redis://[:password@]host[:port][/db] */
    long max_payload_bytes;   /* a job's payload JSON, serialized */
    long stream_max_len;      /* approximate bound of each queue's event stream */
    long retention_age_s;     /* finished jobs older than this are deleted */
    long retention_count;     /* at most this many finished jobs per queue */
    int default_max_attempts; /* when a job does not say */
    long backoff_base_ms;     /* retry delay = min(max, base * 2^(attempt-1)), jittered */
    long backoff_max_ms;
    long lease_ms;          /* a claim's lease; heartbeats renew it */
    int connect_timeout_ms; /* default 2000 */
} kiln_broker_options_t;

/* Copies the broker section (and redis_url, borrowed) of cfg into opts. */
void kiln_broker_options_from_config(kiln_broker_options_t *opts, const kiln_config_t *cfg);

typedef struct kiln_broker kiln_broker_t;

/* Connects to Redis and loads the scripts. On success *out owns the
 * connection (free with kiln_broker_free). */
int kiln_broker_connect(const kiln_broker_options_t *opts, kiln_broker_t **out, kiln_err_t *err);
void kiln_broker_free(kiln_broker_t *broker);

/* ---- Job specs (what a client submits) ------------------------------------
 *
 * JSON object; unknown fields are refused:
 *   service          string, required: [a-z0-9][a-z0-9_-]{0,63}
 *   payload          any JSON value (default {}); serialized <= max_payload_bytes
 *   priority         integer -1000..1000 (default 0); higher runs first
 *   requirements     object (docs/requirements.md); serialized <= 16 KiB
 *   customer_id      string <= 128
 *   max_attempts     integer 1..100 (default: broker default)
 *   run_at           integer, ms since the epoch: not before then
 *   delay_ms         integer 0..31536000000: not before now + delay
 *   idempotency_key  string 1..200: a second submit with the same key returns
 *                    the first job's id and writes nothing
 *   timeout_ms       integer 1..86400000: the connector stops the job after it
 */
typedef struct kiln_job_spec {
    char service[KILN_SERVICE_NAME_MAX + 1];
    char *payload_json; /* owned; serialized compact JSON */
    int priority;
    char *class_json;  /* owned; canonical JSON of requirements + customer */
    char class_id[17]; /* hex prefix of sha1(class_json) */
    char *customer_id; /* owned or NULL */
    int max_attempts;  /* 0 = broker default */
    int64_t run_at_ms; /* 0 = now */
    int64_t delay_ms;
    char *idempotency_key; /* owned or NULL */
    int64_t timeout_ms;    /* 0 = none */
    /* owned or NULL; not read from the spec's JSON: the hub sets it (its
     * "webhook" field), and submit stores it with the job, in the same
     * step, so the delivery loop can never see the job end without it. */
    char *webhook_url;
} kiln_job_spec_t;

/* Validates obj (borrowed) and fills spec. On error returns KILN_EINVAL or
 * KILN_ETOOBIG with a message naming the field and the fix; spec then holds
 * nothing to free. max_payload_bytes <= 0 means the default (1 MiB). */
int kiln_job_spec_from_json(json_t *obj, long max_payload_bytes, kiln_job_spec_t *spec,
                            kiln_err_t *err);

/* Same, from JSON text of len bytes (refused past max_payload_bytes + 64 KiB
 * before parsing). */
int kiln_job_spec_parse(const char *text, size_t len, long max_payload_bytes, kiln_job_spec_t *spec,
                        kiln_err_t *err);

void kiln_job_spec_clear(kiln_job_spec_t *spec);

/* Submits one job. id receives its id (KILN_JOB_ID_MAX bytes); *duplicate
 * (may be NULL) is set when an idempotency key matched an earlier job. */
int kiln_broker_submit(kiln_broker_t *broker, const kiln_job_spec_t *spec, char *id,
                       bool *duplicate, kiln_err_t *err);

/* Submits n jobs of one service in one round trip (n <= KILN_SUBMIT_BATCH_MAX).
 * ids must have room for n ids of KILN_JOB_ID_MAX bytes each (ids[i]). */
int kiln_broker_submit_batch(kiln_broker_t *broker, const kiln_job_spec_t *specs, size_t n,
                             char (*ids)[KILN_JOB_ID_MAX], kiln_err_t *err);

/* ---- Reading -------------------------------------------------------------- */

/* The job as a JSON object (caller owns):
 *   id service state priority attempts max_attempts payload requirements
 *   customer_id progress progress_message result error error_retryable
 *   worker created_at run_at started_at finished_at (ms since epoch, 0 = never)
 *   timeout_ms idempotency_key
 * error is the last error of any attempt, so a job that completed after a
 * retry still shows why the earlier attempt failed.
 * state is one of pending running completed failed cancelled delayed dead.
 * Returns KILN_ENOTFOUND for an unknown (or expired) id. */
int kiln_broker_get_job(kiln_broker_t *broker, const char *id, json_t **job, kiln_err_t *err);

typedef struct kiln_job_filter {
    const char *service; /* NULL: every known service */
    const char *state;   /* NULL: every state */
    size_t limit;        /* 0: 100 */
} kiln_job_filter_t;

/* Jobs matching filter as a JSON array of job objects (payload and result
 * left out): pending jobs in the order they will run, the others newest
 * first within each state. Caller owns *jobs. */
int kiln_broker_list_jobs(kiln_broker_t *broker, const kiln_job_filter_t *filter, json_t **jobs,
                          kiln_err_t *err);

/* Per service: {"service","pending","running","delayed","dead","completed",
 * "failed","cancelled","oldest_pending_ms"} (oldest wait in ms, 0 when none),
 * as a JSON array sorted by service. Caller owns *stats. */
int kiln_broker_queue_stats(kiln_broker_t *broker, json_t **stats, kiln_err_t *err);

/* Live workers (registered with an unexpired TTL) as a JSON array of the
 * objects they registered: {"id","machine_id","services","capabilities",
 * "concurrency","busy","pid","host","started_at","seen_at"}. */
int kiln_broker_list_workers(kiln_broker_t *broker, json_t **workers, kiln_err_t *err);

/* Services known to the broker (every service ever submitted to or served). */
int kiln_broker_list_services(kiln_broker_t *broker, json_t **services, kiln_err_t *err);

/* Calls on_event for each event of job id's queue stream after the job's
 * current state, until the job reaches a final state (completed, failed,
 * cancelled, dead) or timeout_ms passes (KILN_ETIMEOUT; <= 0 waits forever).
 * Events are JSON objects {"id" (stream id),"job","type","state",...} whose
 * values are all strings, as stored in the stream (e.g. "progress":"58");
 * types: submitted started progress completed retry_scheduled failed dead
 * cancelled released stalled ready retried. on_event may be NULL. *final_job (may be NULL) receives
 * the job at the end (caller owns). Blocks on XREAD; does not poll. */
typedef void (*kiln_job_event_cb)(json_t *event, void *ctx);
int kiln_broker_wait_job(kiln_broker_t *broker, const char *id, long timeout_ms,
                         kiln_job_event_cb on_event, void *ctx, json_t **final_job,
                         kiln_err_t *err);

/* ---- Commands ------------------------------------------------------------- */

/* Cancels a pending, delayed or running job. A running job's worker is told
 * (pub/sub at once, and its next heartbeat) and stops. KILN_ECONFLICT when the
 * job is already finished; KILN_ENOTFOUND when unknown. */
int kiln_broker_cancel(kiln_broker_t *broker, const char *id, kiln_err_t *err);

/* Puts a failed, dead or cancelled job back to pending with its attempts
 * reset. KILN_ECONFLICT for any other state. */
int kiln_broker_retry(kiln_broker_t *broker, const char *id, kiln_err_t *err);

/* Moves jobs whose lease expired back to pending (attempt counted) or to
 * dead (out of attempts), and due delayed jobs to pending, in service.
 * Idempotent; any kiln process may run it. *recovered (may be NULL) counts
 * the stalled jobs moved. */
int kiln_broker_sweep(kiln_broker_t *broker, const char *service, int *recovered, kiln_err_t *err);

/* ---- Worker side ---------------------------------------------------------- */

/* Who claims: its id, and its capabilities (canonical JSON + hash, computed
 * by kiln_worker_identity_init). */
typedef struct kiln_worker_identity {
    char id[128];
    char session[17]; /* random per identity: claims of this process, not a predecessor's */
    char *caps_json;  /* owned; canonical */
    char caps_hash[17];
} kiln_worker_identity_t;

/* caps: borrowed JSON object (NULL = {}); machine_id may be NULL. The
 * identity's capabilities include "machine_id" when given. */
int kiln_worker_identity_init(kiln_worker_identity_t *who, const char *worker_id,
                              const char *machine_id, json_t *caps, kiln_err_t *err);
void kiln_worker_identity_clear(kiln_worker_identity_t *who);

typedef struct kiln_claimed_job {
    char id[KILN_JOB_ID_MAX];
    char token[192]; /* proves the claim; every later call carries it */
    int attempt;     /* 1 on the first run */
    int max_attempts;
    int64_t timeout_ms; /* 0 = none */
    char *payload_json; /* owned */
} kiln_claimed_job_t;

void kiln_claimed_job_clear(kiln_claimed_job_t *job);

/* Claims up to max jobs of service that who can run (best priority first,
 * FIFO within a priority). jobs must have room for max; *n receives the
 * count (0 when nothing is runnable). *next_due_ms (may be NULL) receives
 * the time of the earliest delayed job (0 when none) so a caller can wake. */
int kiln_broker_claim(kiln_broker_t *broker, const char *service, const kiln_worker_identity_t *who,
                      int max, kiln_claimed_job_t *jobs, int *n, int64_t *next_due_ms,
                      kiln_err_t *err);

/* Each returns KILN_ELOST when token no longer holds the job's lease
 * (expired, cancelled, or claimed by another worker); nothing is written. */
int kiln_broker_heartbeat(kiln_broker_t *broker, const char *id, const char *token,
                          kiln_err_t *err);
int kiln_broker_progress(kiln_broker_t *broker, const char *id, const char *token, double percent,
                         const char *message, kiln_err_t *err);
int kiln_broker_complete(kiln_broker_t *broker, const char *id, const char *token,
                         const char *result_json, kiln_err_t *err);
/* A retryable failure with attempts left goes to delayed (backoff with
 * jitter); otherwise to failed (not retryable) or dead (out of attempts). */
int kiln_broker_fail(kiln_broker_t *broker, const char *id, const char *token, const char *error,
                     bool retryable, kiln_err_t *err);
/* Returns the job to pending without counting the attempt (shutdown). */
int kiln_broker_release(kiln_broker_t *broker, const char *id, const char *token, kiln_err_t *err);

/* Registers (or refreshes) a live worker record with a TTL. info is a JSON
 * object (borrowed) stored as given. */
int kiln_broker_register_worker(kiln_broker_t *broker, const char *worker_id, json_t *info,
                                long ttl_ms, kiln_err_t *err);

#endif

/*
 * The simulation connector: pretends to work for duration_ms in `steps`
 * steps, reporting progress after each, and completes, fails (on request or
 * at random with failure_rate) or stops when cancelled. It drives end-to-end
 * tests and benchmarks, so a zero-length job costs no system calls at all.
 */
#include "kiln/connector.h"

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define SIM_MAX_DURATION_MS 86400000
#define SIM_MAX_STEPS       10000
#define SIM_MAX_ATTEMPTS    1000000
#define NS_PER_MS           1000000LL
#define NS_PER_S            1000000000LL

typedef struct simulation {
    int64_t duration_ms;
    int64_t steps;
    double failure_rate;
    /* splitmix64 state: each draw is one atomic add, so concurrent run()
     * calls share the sequence without a lock. */
    _Atomic uint64_t rng;
} simulation_t;

/* One job's parameters: the instance defaults, overridden by the payload.
 * Strings and result are borrowed from the parsed payload. */
typedef struct sim_job {
    int64_t duration_ms;
    int64_t steps;
    bool fail;
    const char *fail_message;
    bool retryable;
    int64_t fail_attempts; /* fail only while attempt <= this; 0 = always */
    json_t *result;
    bool has_result;
    int64_t started_us; /* wall clock at the start, reported when asked (report_start) */
} sim_job_t;

typedef enum { SIM_DONE, SIM_CANCELLED, SIM_TIMED_OUT } sim_wait_t;

static const char *const known_options[] = {"duration_ms", "steps", "failure_rate", "seed", NULL};

static int simulation_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    int64_t seed_option = 0;
    simulation_t *sim = calloc(1, sizeof *sim);
    if (!sim)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    int rc = kiln_connector_option_int(cfg, "duration_ms", 0, SIM_MAX_DURATION_MS, 1000,
                                       &sim->duration_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "steps", 1, SIM_MAX_STEPS, 10, &sim->steps, err);
    if (rc == 0)
        rc = kiln_connector_option_number(cfg, "failure_rate", 0.0, 1.0, 0.0, &sim->failure_rate,
                                          err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "seed", INT64_MIN, INT64_MAX, 0, &seed_option, err);
    if (rc != 0) {
        free(sim);
        return rc;
    }
    uint64_t seed = (uint64_t)seed_option;
    json_t *seed_value = cfg->options ? json_object_get(cfg->options, "seed") : NULL;
    if (!json_is_integer(seed_value) &&
        getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
    }
    atomic_init(&sim->rng, seed);
    kiln_connector_warn_unknown_options(cfg, known_options);
    *state = sim;
    return 0;
}

static void simulation_free(void *state)
{
    free(state);
}

static int simulation_health(void *state, kiln_err_t *err)
{
    return 0;
}

/* A uniform double in [0, 1) from the shared splitmix64 sequence. */
static double next_uniform(simulation_t *sim)
{
    const uint64_t gamma = 0x9E3779B97F4A7C15ULL;
    uint64_t z = atomic_fetch_add_explicit(&sim->rng, gamma, memory_order_relaxed) + gamma;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static bool is_cancelled(const kiln_job_context_t *job)
{
    return job->cancel && atomic_load_explicit(job->cancel, memory_order_acquire);
}

/* Blocks until deadline_ns or cancellation, whichever comes first, sleeping
 * in ppoll(2) on cancel_fd. Returns false when cancelled. */
static bool wait_until(const kiln_job_context_t *job, int64_t deadline_ns)
{
    struct pollfd cancel = {.fd = job->cancel_fd, .events = POLLIN};
    for (;;) {
        if (is_cancelled(job))
            return false;
        int64_t left = deadline_ns - now_ns();
        if (left <= 0)
            return true;
        struct timespec timeout = {.tv_sec = left / NS_PER_S, .tv_nsec = left % NS_PER_S};
        int n = ppoll(&cancel, 1, &timeout, NULL);
        if (n > 0 && (cancel.revents & POLLNVAL))
            cancel.fd = -1; /* not a descriptor: rely on the flag alone */
        else if (n > 0)
            return false;
    }
}

/* Sleeps through the steps, reporting progress after each. */
static sim_wait_t run_steps(const kiln_job_context_t *job, const sim_job_t *sj)
{
    if (sj->duration_ms == 0)
        return is_cancelled(job) ? SIM_CANCELLED : SIM_DONE;
    int64_t start = now_ns();
    int64_t timeout_at = job->timeout_ms > 0 ? start + job->timeout_ms * NS_PER_MS : INT64_MAX;
    for (int64_t i = 1; i <= sj->steps; i++) {
        /* Step ends are fixed from the start, so lateness never accumulates
         * (the product stays below 2^63 for the largest duration and steps). */
        int64_t step_end = start + sj->duration_ms * NS_PER_MS * i / sj->steps;
        int64_t until = step_end < timeout_at ? step_end : timeout_at;
        if (!wait_until(job, until))
            return SIM_CANCELLED;
        if (until < step_end)
            return SIM_TIMED_OUT;
        if (job->progress) {
            char message[48];
            snprintf(message, sizeof message, "step %" PRId64 "/%" PRId64, i, sj->steps);
            job->progress(job->progress_ctx, 100.0 * (double)i / (double)sj->steps, message);
        }
    }
    return SIM_DONE;
}

/* Reads an optional integer field into *dst. Returns 0, or fails out. */
static int payload_int(json_t *payload, const char *field, int64_t min, int64_t max, int64_t *dst,
                       kiln_job_outcome_t *out, bool *bad)
{
    json_t *v = json_object_get(payload, field);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char expected[64];
        snprintf(expected, sizeof expected, "an integer %" PRId64 "-%" PRId64, min, max);
        *bad = true;
        return kiln_job_outcome_bad_field(out, field, expected, v);
    }
    *dst = json_integer_value(v);
    return 0;
}

/* Applies the payload's overrides to sj. Sets *bad (with out failed) when a
 * field has the wrong type. Unknown fields are ignored. */
static int apply_payload(json_t *payload, sim_job_t *sj, kiln_job_outcome_t *out, bool *bad)
{
    int rc =
        payload_int(payload, "duration_ms", 0, SIM_MAX_DURATION_MS, &sj->duration_ms, out, bad);
    if (rc == 0 && !*bad)
        rc = payload_int(payload, "steps", 1, SIM_MAX_STEPS, &sj->steps, out, bad);
    if (rc == 0 && !*bad)
        rc = payload_int(payload, "fail_attempts", 0, SIM_MAX_ATTEMPTS, &sj->fail_attempts, out,
                         bad);
    if (rc < 0 || *bad)
        return rc;

    json_t *fail = json_object_get(payload, "fail");
    if (json_is_string(fail)) {
        sj->fail = true;
        sj->fail_message = json_string_value(fail);
    } else if (json_is_boolean(fail)) {
        sj->fail = json_is_true(fail);
    } else if (fail && !json_is_null(fail)) {
        *bad = true;
        return kiln_job_outcome_bad_field(out, "fail", "true, false or a message string", fail);
    }
    json_t *retryable = json_object_get(payload, "retryable");
    if (json_is_boolean(retryable)) {
        sj->retryable = json_is_true(retryable);
    } else if (retryable && !json_is_null(retryable)) {
        *bad = true;
        return kiln_job_outcome_bad_field(out, "retryable", "true or false", retryable);
    }
    sj->result = json_object_get(payload, "result");
    sj->has_result = sj->result != NULL;
    json_t *report_start = json_object_get(payload, "report_start");
    if (report_start && !json_is_boolean(report_start)) {
        *bad = true;
        return kiln_job_outcome_bad_field(out, "report_start", "true or false", report_start);
    }
    if (!json_is_true(report_start))
        sj->started_us = 0;
    return 0;
}

/* Payloads that cannot override anything are common (benchmarks send
 * "{}"), so they skip the JSON parser. */
static bool payload_is_trivial(const char *text)
{
    return !text || !text[0] || strcmp(text, "{}") == 0 || strcmp(text, "null") == 0;
}

static int complete(const sim_job_t *sj, kiln_job_outcome_t *out)
{
    out->status = KILN_OUTCOME_COMPLETED;
    if (sj->has_result) {
        out->result_json = json_is_null(sj->result)
                               ? NULL
                               : json_dumps(sj->result, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!out->result_json && !json_is_null(sj->result))
            return KILN_ENOMEM;
        return 0;
    }
    if (sj->started_us &&
        asprintf(&out->result_json,
                 "{\"simulated\":true,\"steps\":%" PRId64 ",\"started_us\":%" PRId64 "}", sj->steps,
                 sj->started_us) < 0) {
        out->result_json = NULL;
        return KILN_ENOMEM;
    }
    if (!sj->started_us &&
        asprintf(&out->result_json, "{\"simulated\":true,\"steps\":%" PRId64 "}", sj->steps) < 0) {
        out->result_json = NULL;
        return KILN_ENOMEM;
    }
    return 0;
}

static int finish(simulation_t *sim, const kiln_job_context_t *job, const sim_job_t *sj,
                  kiln_job_outcome_t *out)
{
    switch (run_steps(job, sj)) {
    case SIM_CANCELLED:
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    case SIM_TIMED_OUT:
        return kiln_job_outcome_fail(out, true, "timed out after %" PRId64 " ms", job->timeout_ms);
    case SIM_DONE:
        break;
    }
    if (sj->fail && (sj->fail_attempts == 0 || job->attempt <= sj->fail_attempts))
        return kiln_job_outcome_fail(out, sj->retryable, "%s",
                                     sj->fail_message ? sj->fail_message : "simulated failure");
    if (sim->failure_rate > 0 && next_uniform(sim) < sim->failure_rate)
        return kiln_job_outcome_fail(out, true, "simulated random failure (failure_rate %g)",
                                     sim->failure_rate);
    return complete(sj, out);
}

static int simulation_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    simulation_t *sim = state;
    sim_job_t sj = {.duration_ms = sim->duration_ms, .steps = sim->steps, .retryable = true};
    json_t *payload = NULL;
    if (!payload_is_trivial(job->payload_json)) {
        /* Taken first, so report_start measures when the connector began. */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        sj.started_us = (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
        json_error_t jerr;
        payload = json_loads(job->payload_json, JSON_DECODE_ANY, &jerr);
        if (!payload)
            return kiln_job_outcome_fail(out, false, "payload: not valid JSON (line %d: %s)",
                                         jerr.line, jerr.text);
        bool bad = false;
        if (json_is_object(payload)) {
            int rc = apply_payload(payload, &sj, out, &bad);
            if (rc < 0 || bad) {
                json_decref(payload);
                return rc;
            }
        }
    }
    int rc = finish(sim, job, &sj, out);
    json_decref(payload);
    return rc;
}

const kiln_connector_ops_t kiln_connector_simulation = {
    .type = "simulation",
    .init = simulation_init,
    .run = simulation_run,
    .health = simulation_health,
    .free = simulation_free,
};

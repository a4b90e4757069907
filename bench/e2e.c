/*
 * kiln side of the end-to-end benchmarks that bench/run.sh compares with
 * BullMQ (bench/bullmq.mjs):
 *
 *   bench_e2e throughput --redis URL --kiln PATH --concurrency N --jobs J
 *       J no-op jobs submitted in batches of 1000 while a real `kiln worker`
 *       with N slots runs them; time from the first submit to the last
 *       completion.
 *   bench_e2e latency --redis URL --kiln PATH --concurrency N --jobs J --interval-ms 10
 *       one job every interval to an idle worker; p50/p99 of the time from
 *       the start of the submit call to the start of the job.
 *   bench_e2e poll-cost --redis URL --jobs READS
 *       reads the queue counts READS times (what the end-of-run wait costs).
 *
 * Each prints one JSON line on stdout. The worker is the real program
 * (`kiln worker`, a child process) with a `simulation` connector of
 * duration 0; this program talks to Redis only through include/kiln/broker.h.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/broker.h"
#include "kiln/config.h"
#include "support/bench_worker.h"

#define BENCH_SERVICE   "noop"
#define BENCH_CONNECTOR "{ type: simulation, duration_ms: 0, steps: 1 }"

typedef struct bench_opts {
    const char *mode;
    const char *redis_url;
    const char *kiln_bin;
    int concurrency;
    long jobs;
    long interval_ms;
    long warmup;
} bench_opts_t;

static void usage(void)
{
    fprintf(stderr, "usage: bench_e2e throughput|latency --redis URL --kiln PATH "
                    "[--concurrency N] [--jobs J] [--interval-ms MS] [--warmup W]\n"
                    "       bench_e2e poll-cost --redis URL --jobs READS\n");
}

static int parse_args(int argc, char **argv, bench_opts_t *o)
{
    *o = (bench_opts_t){.concurrency = 1, .jobs = 1000, .interval_ms = 10, .warmup = 20};
    if (argc < 2)
        return -1;
    o->mode = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *key = argv[i], *val = argv[i + 1];
        if (strcmp(key, "--redis") == 0)
            o->redis_url = val;
        else if (strcmp(key, "--kiln") == 0)
            o->kiln_bin = val;
        else if (strcmp(key, "--concurrency") == 0)
            o->concurrency = atoi(val);
        else if (strcmp(key, "--jobs") == 0)
            o->jobs = atol(val);
        else if (strcmp(key, "--interval-ms") == 0)
            o->interval_ms = atol(val);
        else if (strcmp(key, "--warmup") == 0)
            o->warmup = atol(val);
        else
            return -1;
    }
    bool needs_worker = strcmp(o->mode, "poll-cost") != 0;
    if (!o->redis_url || (needs_worker && !o->kiln_bin) || o->concurrency < 1 || o->jobs < 1 ||
        o->interval_ms < 1 || o->warmup < 0 ||
        (strcmp(o->mode, "latency") == 0 && o->warmup >= o->jobs))
        return -1;
    return 0;
}

/* ---- throughput ------------------------------------------------------------ */

static int run_throughput(const bench_opts_t *o, kiln_broker_t *broker)
{
    bench_jobs_run_t run;
    if (bench_run_jobs(broker, BENCH_SERVICE, "{\"service\":\"" BENCH_SERVICE "\",\"payload\":{}}",
                       o->jobs, &run) != 0)
        return -1;
    printf("{\"system\":\"kiln\",\"bench\":\"throughput\",\"concurrency\":%d,\"jobs\":%ld,"
           "\"seconds\":%.4f,\"jobs_per_s\":%.0f,\"submit_seconds\":%.4f,\"polls\":%ld,"
           "\"completed_retained\":%ld}\n",
           o->concurrency, o->jobs, run.seconds, (double)o->jobs / run.seconds, run.submit_seconds,
           run.polls, run.completed);
    return 0;
}

/* ---- latency --------------------------------------------------------------- */

/*
 * The start of a job, in µs on CLOCK_REALTIME: the connector's own
 * "started_us" in the result when it reports one (precise), else the
 * job's started_at (ms, Redis server clock; *coarse set). -1 when neither.
 */
static int64_t job_start_us(json_t *job, bool *coarse)
{
    json_t *result = json_object_get(job, "result");
    json_t *started_us = json_object_get(result, "started_us");
    if (json_is_integer(started_us))
        return (int64_t)json_integer_value(started_us);
    if (json_is_real(started_us))
        return (int64_t)json_real_value(started_us);
    json_t *started_at = json_object_get(job, "started_at");
    if (json_is_integer(started_at) && json_integer_value(started_at) > 0) {
        *coarse = true;
        /* started_at truncates to the ms; the middle of that ms is the
         * unbiased estimate, as submits are dithered across the ms. */
        return (int64_t)json_integer_value(started_at) * 1000 + 500;
    }
    return -1;
}

static int run_latency(const bench_opts_t *o, kiln_broker_t *broker)
{
    kiln_err_t err = {0};
    int rc = -1;
    int64_t *submit_us = calloc((size_t)o->jobs, sizeof *submit_us);
    int64_t *lat = calloc((size_t)o->jobs, sizeof *lat);
    char(*ids)[KILN_JOB_ID_MAX] = calloc((size_t)o->jobs, sizeof *ids);
    kiln_job_spec_t spec;
    /* report_start asks the simulation connector for "started_us" in its
     * result (ignored by a connector that does not know it). */
    const char *text = "{\"service\":\"" BENCH_SERVICE "\",\"payload\":{\"report_start\":true}}";
    if (kiln_job_spec_parse(text, strlen(text), 0, &spec, &err) != 0) {
        fprintf(stderr, "bench: job spec: %s\n", err.msg);
        goto out_nospec;
    }
    if (!submit_us || !lat || !ids)
        goto out;

    /* A fixed schedule (job i at start + i * interval, plus a random offset
     * within the ms so a ms-resolution start time errs evenly both ways), so
     * a slow submit does not push later jobs back and hide its own delay. */
    srand((unsigned)bench_now_us(CLOCK_MONOTONIC));
    int64_t start = bench_now_us(CLOCK_MONOTONIC) + 1000;
    for (long i = 0; i < o->jobs; i++) {
        int64_t due = start + i * o->interval_ms * 1000 + rand() % 1000;
        int64_t wait = due - bench_now_us(CLOCK_MONOTONIC);
        if (wait > 0)
            bench_sleep_us(wait);
        submit_us[i] = bench_now_us(CLOCK_REALTIME);
        if (kiln_broker_submit(broker, &spec, ids[i], NULL, &err) != 0) {
            fprintf(stderr, "bench: submit: %s\n", err.msg);
            goto out;
        }
    }
    int64_t t_done = 0;
    long polls = 0, completed = 0;
    if (bench_wait_drained(broker, BENCH_SERVICE, &t_done, &polls, &completed) != 0)
        goto out;

    bool coarse = false;
    long n = 0;
    for (long i = o->warmup; i < o->jobs; i++) {
        json_t *job = NULL;
        if (kiln_broker_get_job(broker, ids[i], &job, &err) != 0) {
            fprintf(stderr, "bench: job %s: %s\n", ids[i], err.msg);
            goto out;
        }
        int64_t started = job_start_us(job, &coarse);
        json_decref(job);
        if (started < 0) {
            fprintf(stderr, "bench: job %s has no start time\n", ids[i]);
            goto out;
        }
        lat[n++] = started - submit_us[i];
    }
    bench_sort_i64(lat, n);
    printf("{\"system\":\"kiln\",\"bench\":\"latency\",\"concurrency\":%d,\"jobs\":%ld,"
           "\"measured\":%ld,\"interval_ms\":%ld,\"p50_us\":%lld,\"p99_us\":%lld,\"max_us\":%lld,"
           "\"method\":\"%s\"}\n",
           o->concurrency, o->jobs, n, o->interval_ms, (long long)bench_percentile(lat, n, 50),
           (long long)bench_percentile(lat, n, 99), (long long)lat[n - 1],
           coarse ? "from the start of kiln_broker_submit to the job's started_at, which the "
                    "claim script sets (Redis server clock, ms resolution: each sample is within "
                    "±0.5 ms, submits dithered across the ms; the connector starts a little "
                    "later, after the claim's reply reaches the worker)"
                  : "from the start of kiln_broker_submit to the connector's start "
                    "(started_us in the job's result), on the machine's realtime clock");
    rc = 0;
out:
    kiln_job_spec_clear(&spec);
out_nospec:
    free(submit_us);
    free(lat);
    free(ids);
    return rc;
}

/* Reads the queue counts as often as the end-of-run wait does, so run.sh
 * can measure what one read costs Redis and take the reads out of the
 * commands counted per job. */
static int run_poll_cost(const bench_opts_t *o, kiln_broker_t *broker)
{
    kiln_err_t err = {0};
    long open, completed;
    for (long i = 0; i < o->jobs; i++) {
        if (bench_queue_open_jobs(broker, BENCH_SERVICE, &open, &completed, false, &err) != 0) {
            fprintf(stderr, "bench: queue stats: %s\n", err.msg);
            return -1;
        }
    }
    printf("{\"system\":\"kiln\",\"bench\":\"poll_cost\",\"polls\":%ld}\n", o->jobs);
    return 0;
}

int main(int argc, char **argv)
{
    bench_opts_t o;
    if (parse_args(argc, argv, &o) != 0 ||
        (strcmp(o.mode, "throughput") != 0 && strcmp(o.mode, "latency") != 0 &&
         strcmp(o.mode, "poll-cost") != 0)) {
        usage();
        return 2;
    }
    bench_worker_signals();

    kiln_config_t cfg;
    kiln_config_init_defaults(&cfg);
    kiln_broker_options_t bopts;
    kiln_broker_options_from_config(&bopts, &cfg);
    bopts.redis_url = o.redis_url;
    kiln_broker_t *broker = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_connect(&bopts, &broker, &err) != 0) {
        fprintf(stderr, "bench: %s\n", err.msg);
        kiln_config_free(&cfg);
        return 1;
    }

    if (strcmp(o.mode, "poll-cost") == 0) {
        int prc = run_poll_cost(&o, broker);
        kiln_broker_free(broker);
        kiln_config_free(&cfg);
        return prc == 0 ? 0 : 1;
    }
    bench_worker_t worker = {0};
    int rc = bench_worker_start(&worker, o.kiln_bin, o.redis_url, o.concurrency, BENCH_SERVICE,
                                BENCH_CONNECTOR);
    if (rc == 0)
        rc = bench_worker_wait_ready(broker, &worker);
    if (rc == 0)
        rc = strcmp(o.mode, "throughput") == 0 ? run_throughput(&o, broker)
                                               : run_latency(&o, broker);
    bench_worker_stop(&worker, rc != 0);
    kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc == 0 ? 0 : 1;
}

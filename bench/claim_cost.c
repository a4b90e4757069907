/*
 * Claim cost with many requirement classes (bench/run.sh):
 *
 *   bench_claim_cost --redis URL [--claims K] [--pending 10000] [--classes 50]
 *
 * Fills one queue with PENDING pending jobs in CLASSES requirement classes
 * (class c requires {"capabilities":{"tier":"tNN"}}), of which only class 42
 * matches the worker and holds one job, submitted last; a second queue holds
 * only that one job. Then times K claims on each queue, each followed by an
 * untimed release that puts the job back, interleaving the two queues in
 * rounds so drift of the machine hits both alike. Prints one JSON line with
 * µs per claim (median and mean) and the ratio mixed / single. Uses only
 * include/kiln/broker.h.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln/broker.h"
#include "kiln/config.h"

#define MIXED_SERVICE  "claim-mixed"
#define SINGLE_SERVICE "claim-single"
#define MATCHING_CLASS 42
#define ROUNDS         10
#define WARMUP_CLAIMS  50

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int spec_for_class(const char *service, int cls, kiln_job_spec_t *spec, kiln_err_t *err)
{
    char text[256];
    snprintf(text, sizeof text,
             "{\"service\":\"%s\",\"payload\":{},\"requirements\":{\"capabilities\":{\"tier\":\"t%"
             "02d\"}}}",
             service, cls);
    return kiln_job_spec_parse(text, strlen(text), 0, spec, err);
}

/* Submits count jobs of class cls to service, in batches. */
static int submit_class(kiln_broker_t *broker, const char *service, int cls, long count,
                        kiln_job_spec_t *specs, char (*ids)[KILN_JOB_ID_MAX], kiln_err_t *err)
{
    kiln_job_spec_t spec;
    int rc = spec_for_class(service, cls, &spec, err);
    if (rc != 0)
        return rc;
    for (int i = 0; i < KILN_SUBMIT_BATCH_MAX; i++)
        specs[i] = spec; /* shallow: submit_batch only reads; spec owns the strings */
    for (long sent = 0; sent < count && rc == 0;) {
        size_t n =
            (size_t)(count - sent < KILN_SUBMIT_BATCH_MAX ? count - sent : KILN_SUBMIT_BATCH_MAX);
        rc = kiln_broker_submit_batch(broker, specs, n, ids, err);
        sent += (long)n;
    }
    kiln_job_spec_clear(&spec);
    return rc;
}

/* One claim on service, timed; the claimed job is released (untimed).
 * *ns receives the claim's duration. */
static int claim_once(kiln_broker_t *broker, const char *service, const kiln_worker_identity_t *who,
                      int64_t *ns, kiln_err_t *err)
{
    kiln_claimed_job_t job;
    memset(&job, 0, sizeof job);
    int n = 0;
    int64_t t0 = now_ns();
    int rc = kiln_broker_claim(broker, service, who, 1, &job, &n, NULL, err);
    *ns = now_ns() - t0;
    if (rc != 0)
        return rc;
    if (n != 1) {
        fprintf(stderr, "bench: a claim on %s found %d jobs, expected the one matching job\n",
                service, n);
        return -1;
    }
    rc = kiln_broker_release(broker, job.id, job.token, err);
    kiln_claimed_job_clear(&job);
    return rc;
}

static long pending_of(kiln_broker_t *broker, const char *service)
{
    json_t *stats = NULL;
    kiln_err_t err = {0};
    long pending = -1;
    if (kiln_broker_queue_stats(broker, &stats, &err) != 0)
        return -1;
    size_t i;
    json_t *q;
    json_array_foreach(stats, i, q)
    {
        const char *svc = json_string_value(json_object_get(q, "service"));
        if (svc && strcmp(svc, service) == 0)
            pending = (long)json_integer_value(json_object_get(q, "pending"));
    }
    json_decref(stats);
    return pending;
}

int main(int argc, char **argv)
{
    const char *redis_url = NULL;
    long claims = 2000, pending = 10000;
    int classes = 50;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--redis") == 0)
            redis_url = argv[i + 1];
        else if (strcmp(argv[i], "--claims") == 0)
            claims = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--pending") == 0)
            pending = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--classes") == 0)
            classes = atoi(argv[i + 1]);
        else
            redis_url = NULL, i = argc;
    }
    if (!redis_url || claims < ROUNDS || pending < classes || classes <= MATCHING_CLASS) {
        fprintf(stderr,
                "usage: bench_claim_cost --redis URL [--claims K>=%d] [--pending N] "
                "[--classes C>%d]\n",
                ROUNDS, MATCHING_CLASS);
        return 2;
    }

    kiln_config_t cfg;
    kiln_config_init_defaults(&cfg);
    kiln_broker_options_t bopts;
    kiln_broker_options_from_config(&bopts, &cfg);
    bopts.redis_url = redis_url;
    kiln_broker_t *broker = NULL;
    kiln_err_t err = {0};
    kiln_worker_identity_t who;
    memset(&who, 0, sizeof who);
    kiln_job_spec_t *specs = calloc(KILN_SUBMIT_BATCH_MAX, sizeof *specs);
    char(*ids)[KILN_JOB_ID_MAX] = calloc(KILN_SUBMIT_BATCH_MAX, sizeof *ids);
    int64_t *mixed = calloc((size_t)claims, sizeof *mixed);
    int64_t *single = calloc((size_t)claims, sizeof *single);
    int rc = -1;
    if (!specs || !ids || !mixed || !single)
        goto out;
    if (kiln_broker_connect(&bopts, &broker, &err) != 0)
        goto fail;

    json_t *caps = json_pack("{s:s}", "tier", "t42");
    rc = kiln_worker_identity_init(&who, "bench-claim-cost", NULL, caps, &err);
    json_decref(caps);
    if (rc != 0)
        goto fail;

    /* The non-matching classes share pending - 1 jobs; the matching job last. */
    long others = pending - 1;
    for (int c = 0, done = 0; c < classes; c++) {
        if (c == MATCHING_CLASS)
            continue;
        int left = classes - 1 - done;
        long count = others / left;
        others -= count;
        done++;
        if ((rc = submit_class(broker, MIXED_SERVICE, c, count, specs, ids, &err)) != 0)
            goto fail;
    }
    if ((rc = submit_class(broker, MIXED_SERVICE, MATCHING_CLASS, 1, specs, ids, &err)) != 0 ||
        (rc = submit_class(broker, SINGLE_SERVICE, MATCHING_CLASS, 1, specs, ids, &err)) != 0)
        goto fail;

    int64_t ns;
    for (int i = 0; i < WARMUP_CLAIMS; i++) {
        if ((rc = claim_once(broker, MIXED_SERVICE, &who, &ns, &err)) != 0 ||
            (rc = claim_once(broker, SINGLE_SERVICE, &who, &ns, &err)) != 0)
            goto fail;
    }
    long per_round = claims / ROUNDS, done_mixed = 0, done_single = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (long i = 0; i < per_round; i++)
            if ((rc = claim_once(broker, MIXED_SERVICE, &who, &mixed[done_mixed++], &err)) != 0)
                goto fail;
        for (long i = 0; i < per_round; i++)
            if ((rc = claim_once(broker, SINGLE_SERVICE, &who, &single[done_single++], &err)) != 0)
                goto fail;
    }
    long still = pending_of(broker, MIXED_SERVICE);
    if (still != pending) {
        fprintf(stderr, "bench: %s holds %ld pending jobs after the claims, expected %ld\n",
                MIXED_SERVICE, still, pending);
        rc = -1;
        goto out;
    }

    double sum_m = 0, sum_s = 0;
    for (long i = 0; i < done_mixed; i++)
        sum_m += (double)mixed[i];
    for (long i = 0; i < done_single; i++)
        sum_s += (double)single[i];
    qsort(mixed, (size_t)done_mixed, sizeof *mixed, cmp_i64);
    qsort(single, (size_t)done_single, sizeof *single, cmp_i64);
    double med_m = (double)mixed[done_mixed / 2] / 1000.0;
    double med_s = (double)single[done_single / 2] / 1000.0;
    printf("{\"system\":\"kiln\",\"bench\":\"claim_cost\",\"claims\":%ld,\"mixed_pending\":%ld,"
           "\"mixed_classes\":%d,\"mixed_us\":%.1f,\"single_us\":%.1f,\"mixed_mean_us\":%.1f,"
           "\"single_mean_us\":%.1f,\"ratio\":%.3f}\n",
           done_mixed, pending, classes, med_m, med_s, sum_m / (double)done_mixed / 1000.0,
           sum_s / (double)done_single / 1000.0, med_m / med_s);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench: claim cost: %s\n", err.msg[0] ? err.msg : "failed");
    rc = -1;
out:
    kiln_worker_identity_clear(&who);
    if (broker)
        kiln_broker_free(broker);
    kiln_config_free(&cfg);
    free(specs);
    free(ids);
    free(mixed);
    free(single);
    return rc == 0 ? 0 : 1;
}

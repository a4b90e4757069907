/*
 * The cost of the fleet-wide rate limit (src/connectors/ratelimit.c):
 *
 *   bench_ratelimit --redis URL [--acquires 20000] [--threads 4]
 *
 * THREADS limiters (each with its own connection, as separate workers
 * have) take ACQUIRES slots in all from one budget large enough never to
 * wait, so the time is the script's round trip alone. Prints one JSON line
 * with µs per acquire (median, p99) and acquires per second.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "connectors/ratelimit.h"

#define THREADS_MAX 64

typedef struct worker {
    const char *url;
    int count;
    int64_t *lat_ns;
    int failed;
} worker_t;

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

static void *run(void *ctx)
{
    worker_t *w = ctx;
    kiln_ratelimit_options_t opts = {.redis_url = w->url,
                                     .key = "bench",
                                     .limit = KILN_RATELIMIT_PER_MINUTE_MAX,
                                     .window_ms = 1000,
                                     .name = "bench"};
    kiln_ratelimit_t *rl = NULL;
    kiln_err_t err = {0};
    if (kiln_ratelimit_new(&opts, &rl, &err) != 0) {
        fprintf(stderr, "bench_ratelimit: %s\n", err.msg);
        w->failed = 1;
        return NULL;
    }
    for (int i = 0; i < w->count; i++) {
        int64_t start = now_ns();
        if (kiln_ratelimit_acquire(rl, NULL, -1, 0, &err) != 0) {
            fprintf(stderr, "bench_ratelimit: %s\n", err.msg);
            w->failed = 1;
            break;
        }
        w->lat_ns[i] = now_ns() - start;
    }
    kiln_ratelimit_free(rl);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *url = NULL;
    int acquires = 20000, threads = 4;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--redis") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--acquires") == 0)
            acquires = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
    }
    if (!url || acquires < 1 || threads < 1 || threads > THREADS_MAX) {
        fprintf(stderr, "usage: bench_ratelimit --redis URL [--acquires N] [--threads 1-%d]\n",
                THREADS_MAX);
        return 64;
    }
    int per = acquires / threads;
    int64_t *lat = calloc((size_t)per * (size_t)threads, sizeof *lat);
    worker_t workers[THREADS_MAX];
    pthread_t tids[THREADS_MAX];
    int64_t start = now_ns();
    for (int t = 0; t < threads; t++) {
        workers[t] = (worker_t){.url = url, .count = per, .lat_ns = lat + (size_t)t * per};
        pthread_create(&tids[t], NULL, run, &workers[t]);
    }
    int failed = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        failed |= workers[t].failed;
    }
    double wall_s = (double)(now_ns() - start) / 1e9;
    if (failed)
        return 1;
    size_t n = (size_t)per * (size_t)threads;
    qsort(lat, n, sizeof *lat, cmp_i64);
    printf("{\"bench\":\"ratelimit\",\"threads\":%d,\"acquires\":%zu,\"median_us\":%.1f,"
           "\"p99_us\":%.1f,\"per_s\":%.0f}\n",
           threads, n, (double)lat[n / 2] / 1e3, (double)lat[n * 99 / 100] / 1e3,
           (double)n / wall_s);
    free(lat);
    return 0;
}

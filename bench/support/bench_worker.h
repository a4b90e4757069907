/*
 * What the end-to-end benchmarks share: a real `kiln worker` as a child
 * process with a config of the bench's choosing, waiting for it to
 * register, submitting jobs in batches and waiting for the queue to drain,
 * and percentiles of latency samples.
 */
#ifndef KILN_BENCH_WORKER_H
#define KILN_BENCH_WORKER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "kiln/broker.h"

#define BENCH_TIMEOUT_MS 150000 /* a run's whole time at most */

typedef struct bench_worker {
    pid_t pid;
    const char *service; /* the queue it serves; borrowed */
    char dir[256];
    char config_path[320];
    char log_path[320];
} bench_worker_t;

int64_t bench_now_us(clockid_t clock);
void bench_sleep_us(int64_t us);

/* The p-th percentile (0-100) of n sorted samples (nearest rank). */
int64_t bench_percentile(const int64_t *sorted, long n, double p);
/* Sorts n samples in place, ascending. */
void bench_sort_i64(int64_t *samples, long n);

/* Ignores SIGPIPE, and makes SIGTERM and SIGINT kill a started worker before
 * this process ends, so a bench stopped by its timeout leaves nothing. */
void bench_worker_signals(void);

/* Writes a config with one connector, `service: <connector_yaml>` (a YAML
 * flow mapping such as "{ type: simulation, duration_ms: 0 }"), into a fresh
 * folder and starts `kiln_bin worker` with concurrency slots against
 * redis_url, its output in a log there. The worker inherits this process's
 * environment. Returns 0 or -1 (message on stderr). */
int bench_worker_start(bench_worker_t *w, const char *kiln_bin, const char *redis_url,
                       int concurrency, const char *service, const char *connector_yaml);

/* Stops the worker with SIGTERM (SIGKILL after 10 s) and removes its folder;
 * with keep_log the log is printed on stderr first. */
void bench_worker_stop(bench_worker_t *w, bool keep_log);

/* Waits (30 s at most) until a live worker serving w->service is registered. */
int bench_worker_wait_ready(kiln_broker_t *broker, bench_worker_t *w);

/* Reads service's counts: *open = pending + running + delayed. With
 * describe, also prints them (to tell a stalled run's cause). */
int bench_queue_open_jobs(kiln_broker_t *broker, const char *service, long *open, long *completed,
                          bool describe, kiln_err_t *err);

/* Polls until no job of service is open; *done_us receives the monotonic
 * time at which that was first seen, *polls the number of reads. Fails
 * after BENCH_TIMEOUT_MS, or when no job finished for 20 s. */
int bench_wait_drained(kiln_broker_t *broker, const char *service, int64_t *done_us, long *polls,
                       long *completed);

/* What bench_run_jobs measured. */
typedef struct bench_jobs_run {
    double seconds;        /* first submit to the last completion */
    double submit_seconds; /* first to last submit */
    long polls, completed;
} bench_jobs_run_t;

/* Submits jobs copies of the job spec spec_json in batches of
 * KILN_SUBMIT_BATCH_MAX while the worker runs them, and waits until the
 * queue has drained. Returns 0 or -1 (message on stderr). */
int bench_run_jobs(kiln_broker_t *broker, const char *service, const char *spec_json, long jobs,
                   bench_jobs_run_t *run);

#endif

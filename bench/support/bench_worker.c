/*
 * A real `kiln worker` for the end-to-end benchmarks (bench_worker.h).
 */
#include "bench_worker.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define BENCH_STALL_MS   20000 /* no job finished for this long: the run failed */
#define BENCH_STALL_TEXT "20 s"
/* How often the queue counts are read to see the end: rarely while many
 * jobs are open, so the reads add little to Redis' load and the commands
 * counted per job, then every ms near the end, so the end is seen on time. */
#define BENCH_POLL_SLOW_US    20000
#define BENCH_POLL_FAST_US    1000
#define BENCH_POLL_FAST_BELOW 2000 /* open jobs */

/* The worker's pid for the signal handler: a bench killed by its timeout
 * must not leave `kiln worker` running. */
static volatile sig_atomic_t worker_pid;

static void on_signal(int sig)
{
    if (worker_pid > 0)
        kill((pid_t)worker_pid, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

void bench_worker_signals(void)
{
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
}

int64_t bench_now_us(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void bench_sleep_us(int64_t us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void bench_sort_i64(int64_t *samples, long n)
{
    qsort(samples, (size_t)n, sizeof *samples, cmp_i64);
}

int64_t bench_percentile(const int64_t *sorted, long n, double p)
{
    long idx = (long)((p / 100.0) * (double)n + 0.999999) - 1;
    if (idx < 0)
        idx = 0;
    if (idx >= n)
        idx = n - 1;
    return sorted[idx];
}

/* ---- the worker process ---------------------------------------------------- */

static void dump_log(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    if (!f)
        return;
    fprintf(stderr, "---- %s ----\n", path);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

static int write_config(bench_worker_t *w, int concurrency, const char *connector_yaml)
{
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(w->dir, sizeof w->dir, "%s/kiln-bench-worker.XXXXXX", tmp);
    if (!mkdtemp(w->dir)) {
        perror("bench: mkdtemp");
        return -1;
    }
    snprintf(w->config_path, sizeof w->config_path, "%s/kiln.yaml", w->dir);
    snprintf(w->log_path, sizeof w->log_path, "%s/worker.log", w->dir);
    FILE *f = fopen(w->config_path, "w");
    if (!f) {
        perror("bench: worker config");
        return -1;
    }
    fprintf(f,
            "connectors:\n"
            "  %s: %s\n"
            "worker: { connectors: [%s], concurrency: %d }\n",
            w->service, connector_yaml, w->service, concurrency);
    return fclose(f) == 0 ? 0 : -1;
}

int bench_worker_start(bench_worker_t *w, const char *kiln_bin, const char *redis_url,
                       int concurrency, const char *service, const char *connector_yaml)
{
    w->service = service;
    if (write_config(w, concurrency, connector_yaml) != 0)
        return -1;
    char slots[16];
    snprintf(slots, sizeof slots, "%d", concurrency);
    char *argv[] = {
        (char *)kiln_bin, "worker", "--config",    w->config_path, "--redis", (char *)redis_url,
        "--concurrency",  slots,    "--log-level", "warn",         NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, w->log_path, O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    int rc = posix_spawn(&w->pid, kiln_bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "bench: cannot start %s: %s\n", kiln_bin, strerror(rc));
        w->pid = 0;
        return -1;
    }
    worker_pid = w->pid;
    return 0;
}

void bench_worker_stop(bench_worker_t *w, bool keep_log)
{
    if (w->pid > 0) {
        kill(w->pid, SIGTERM);
        int status;
        for (int i = 0; i < 1000; i++) {
            if (waitpid(w->pid, &status, WNOHANG) == w->pid) {
                w->pid = 0;
                break;
            }
            bench_sleep_us(10000);
        }
        if (w->pid > 0) {
            kill(w->pid, SIGKILL);
            waitpid(w->pid, &status, 0);
            w->pid = 0;
        }
    }
    worker_pid = 0;
    if (!w->dir[0])
        return;
    if (keep_log)
        dump_log(w->log_path);
    unlink(w->config_path);
    unlink(w->log_path);
    rmdir(w->dir);
}

static bool serves(json_t *workers, const char *service)
{
    size_t i, j;
    json_t *rec, *svc;
    json_array_foreach(workers, i, rec)
    {
        json_array_foreach(json_object_get(rec, "services"), j, svc)
        {
            if (json_is_string(svc) && strcmp(json_string_value(svc), service) == 0)
                return true;
        }
    }
    return false;
}

int bench_worker_wait_ready(kiln_broker_t *broker, bench_worker_t *w)
{
    int64_t deadline = bench_now_us(CLOCK_MONOTONIC) + 30 * 1000000LL;
    kiln_err_t err = {0};
    while (bench_now_us(CLOCK_MONOTONIC) < deadline) {
        int status;
        if (waitpid(w->pid, &status, WNOHANG) == w->pid) {
            w->pid = 0;
            fprintf(stderr, "bench: kiln worker exited before it was ready\n");
            return -1;
        }
        json_t *workers = NULL;
        if (kiln_broker_list_workers(broker, &workers, &err) == 0) {
            bool found = serves(workers, w->service);
            json_decref(workers);
            if (found)
                return 0;
        }
        bench_sleep_us(5000);
    }
    fprintf(stderr, "bench: kiln worker not registered within 30 s%s%s\n", err.msg[0] ? ": " : "",
            err.msg);
    return -1;
}

/* ---- the queue -------------------------------------------------------------- */

int bench_queue_open_jobs(kiln_broker_t *broker, const char *service, long *open, long *completed,
                          bool describe, kiln_err_t *err)
{
    json_t *stats = NULL;
    int rc = kiln_broker_queue_stats(broker, &stats, err);
    if (rc != 0)
        return rc;
    *open = 0;
    *completed = 0;
    size_t i;
    json_t *q;
    json_array_foreach(stats, i, q)
    {
        const char *svc = json_string_value(json_object_get(q, "service"));
        if (!svc || strcmp(svc, service) != 0)
            continue;
        *open = (long)(json_integer_value(json_object_get(q, "pending")) +
                       json_integer_value(json_object_get(q, "running")) +
                       json_integer_value(json_object_get(q, "delayed")));
        *completed = (long)json_integer_value(json_object_get(q, "completed"));
        if (describe) {
            char *text = json_dumps(q, JSON_COMPACT);
            fprintf(stderr, "bench: queue counts: %s\n", text ? text : "?");
            free(text);
        }
    }
    json_decref(stats);
    return 0;
}

int bench_wait_drained(kiln_broker_t *broker, const char *service, int64_t *done_us, long *polls,
                       long *completed)
{
    int64_t deadline = bench_now_us(CLOCK_MONOTONIC) + BENCH_TIMEOUT_MS * 1000LL;
    int64_t last_change = bench_now_us(CLOCK_MONOTONIC);
    long last_open = -1;
    kiln_err_t err = {0};
    for (;;) {
        long open;
        (*polls)++;
        int64_t t = bench_now_us(CLOCK_MONOTONIC);
        bool stalled = t - last_change > BENCH_STALL_MS * 1000LL;
        if (bench_queue_open_jobs(broker, service, &open, completed, t > deadline || stalled,
                                  &err) != 0) {
            fprintf(stderr, "bench: queue stats: %s\n", err.msg);
            return -1;
        }
        if (open == 0) {
            *done_us = bench_now_us(CLOCK_MONOTONIC);
            return 0;
        }
        if (t > deadline || stalled) {
            fprintf(stderr, "bench: %ld jobs still open: %s\n", open,
                    stalled ? "no progress for " BENCH_STALL_TEXT : "out of time");
            return -1;
        }
        if (open != last_open) {
            last_open = open;
            last_change = t;
        }
        bench_sleep_us(open > BENCH_POLL_FAST_BELOW ? BENCH_POLL_SLOW_US : BENCH_POLL_FAST_US);
    }
}

int bench_run_jobs(kiln_broker_t *broker, const char *service, const char *spec_json, long jobs,
                   bench_jobs_run_t *run)
{
    kiln_err_t err = {0};
    kiln_job_spec_t spec;
    if (kiln_job_spec_parse(spec_json, strlen(spec_json), 0, &spec, &err) != 0) {
        fprintf(stderr, "bench: job spec: %s\n", err.msg);
        return -1;
    }
    /* Shallow copies: submit_batch only reads the specs; spec owns the strings. */
    kiln_job_spec_t *specs = calloc(KILN_SUBMIT_BATCH_MAX, sizeof *specs);
    char(*ids)[KILN_JOB_ID_MAX] = calloc(KILN_SUBMIT_BATCH_MAX, sizeof *ids);
    int rc = -1;
    if (!specs || !ids)
        goto out;
    for (int i = 0; i < KILN_SUBMIT_BATCH_MAX; i++)
        specs[i] = spec;
    *run = (bench_jobs_run_t){0};
    int64_t t0 = bench_now_us(CLOCK_MONOTONIC);
    for (long sent = 0; sent < jobs;) {
        size_t n =
            (size_t)(jobs - sent < KILN_SUBMIT_BATCH_MAX ? jobs - sent : KILN_SUBMIT_BATCH_MAX);
        if (kiln_broker_submit_batch(broker, specs, n, ids, &err) != 0) {
            fprintf(stderr, "bench: submit: %s\n", err.msg);
            goto out;
        }
        sent += (long)n;
    }
    int64_t t_submitted = bench_now_us(CLOCK_MONOTONIC), t_done = 0;
    if (bench_wait_drained(broker, service, &t_done, &run->polls, &run->completed) != 0)
        goto out;
    run->seconds = (double)(t_done - t0) / 1e6;
    run->submit_seconds = (double)(t_submitted - t0) / 1e6;
    rc = 0;
out:
    free(specs);
    free(ids);
    kiln_job_spec_clear(&spec);
    return rc;
}

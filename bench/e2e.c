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
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kiln/broker.h"
#include "kiln/config.h"

extern char **environ;

#define BENCH_SERVICE    "noop"
#define BENCH_TIMEOUT_MS 150000
#define BENCH_STALL_MS   20000 /* no job finished for this long: the run failed */
#define BENCH_STALL_TEXT "20 s"
/* How often the queue counts are read to see the end: rarely while many
 * jobs are open, so the reads add little to Redis' load and the commands
 * counted per job, then every ms near the end, so the end is seen on time. */
#define BENCH_POLL_SLOW_US    20000
#define BENCH_POLL_FAST_US    1000
#define BENCH_POLL_FAST_BELOW 2000 /* open jobs */

typedef struct bench_opts {
    const char *mode;
    const char *redis_url;
    const char *kiln_bin;
    int concurrency;
    long jobs;
    long interval_ms;
    long warmup;
} bench_opts_t;

typedef struct bench_worker {
    pid_t pid;
    char dir[256];
    char config_path[320];
    char log_path[320];
} bench_worker_t;

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

static int64_t now_us(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_us(int64_t us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

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

/* Writes the worker's config into a fresh folder and starts `kiln worker`
 * with its output in a log there. */
static int worker_start(const bench_opts_t *o, bench_worker_t *w)
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
            "  " BENCH_SERVICE ": { type: simulation, duration_ms: 0, steps: 1 }\n"
            "worker: { connectors: [" BENCH_SERVICE "], concurrency: %d }\n",
            o->concurrency);
    fclose(f);

    char slots[16];
    snprintf(slots, sizeof slots, "%d", o->concurrency);
    char *argv[] = {(char *)o->kiln_bin,
                    "worker",
                    "--config",
                    w->config_path,
                    "--redis",
                    (char *)o->redis_url,
                    "--concurrency",
                    slots,
                    "--log-level",
                    "warn",
                    NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, w->log_path, O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    int rc = posix_spawn(&w->pid, o->kiln_bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "bench: cannot start %s: %s\n", o->kiln_bin, strerror(rc));
        w->pid = 0;
        return -1;
    }
    worker_pid = w->pid;
    return 0;
}

/* Stops the worker with SIGTERM (SIGKILL after 10 s) and removes its folder
 * unless keep_log (then the log is printed). */
static void worker_stop(bench_worker_t *w, bool keep_log)
{
    if (w->pid > 0) {
        kill(w->pid, SIGTERM);
        int status;
        for (int i = 0; i < 1000; i++) {
            if (waitpid(w->pid, &status, WNOHANG) == w->pid) {
                w->pid = 0;
                break;
            }
            sleep_us(10000);
        }
        if (w->pid > 0) {
            kill(w->pid, SIGKILL);
            waitpid(w->pid, &status, 0);
            w->pid = 0;
        }
    }
    worker_pid = 0;
    if (keep_log)
        dump_log(w->log_path);
    unlink(w->config_path);
    unlink(w->log_path);
    rmdir(w->dir);
}

/* Waits until a live worker serving BENCH_SERVICE is registered. */
static int worker_wait_ready(kiln_broker_t *broker, bench_worker_t *w)
{
    int64_t deadline = now_us(CLOCK_MONOTONIC) + 30 * 1000000LL;
    kiln_err_t err = {0};
    while (now_us(CLOCK_MONOTONIC) < deadline) {
        int status;
        if (waitpid(w->pid, &status, WNOHANG) == w->pid) {
            w->pid = 0;
            fprintf(stderr, "bench: kiln worker exited before it was ready\n");
            return -1;
        }
        json_t *workers = NULL;
        if (kiln_broker_list_workers(broker, &workers, &err) == 0) {
            size_t i;
            json_t *rec;
            bool found = false;
            json_array_foreach(workers, i, rec)
            {
                size_t j;
                json_t *svc;
                json_array_foreach(json_object_get(rec, "services"), j, svc)
                {
                    if (json_is_string(svc) && strcmp(json_string_value(svc), BENCH_SERVICE) == 0)
                        found = true;
                }
            }
            json_decref(workers);
            if (found)
                return 0;
        }
        sleep_us(5000);
    }
    fprintf(stderr, "bench: kiln worker not registered within 30 s%s%s\n", err.msg[0] ? ": " : "",
            err.msg);
    return -1;
}

/* ---- waiting for the queue to drain --------------------------------------- */

/* Reads BENCH_SERVICE's counts: *open = pending + running + delayed. With
 * describe, also prints them (to tell a stalled run's cause). */
static int queue_open_jobs(kiln_broker_t *broker, long *open, long *completed, bool describe,
                           kiln_err_t *err)
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
        if (!svc || strcmp(svc, BENCH_SERVICE) != 0)
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

/* Polls until no job of the queue is open; *done_us receives the monotonic
 * time at which that was first seen, *polls the number of reads. */
static int wait_drained(kiln_broker_t *broker, int64_t *done_us, long *polls, long *completed)
{
    int64_t deadline = now_us(CLOCK_MONOTONIC) + BENCH_TIMEOUT_MS * 1000LL;
    int64_t last_change = now_us(CLOCK_MONOTONIC);
    long last_open = -1;
    kiln_err_t err = {0};
    for (;;) {
        long open;
        (*polls)++;
        int64_t t = now_us(CLOCK_MONOTONIC);
        bool stalled = t - last_change > BENCH_STALL_MS * 1000LL;
        if (queue_open_jobs(broker, &open, completed, t > deadline || stalled, &err) != 0) {
            fprintf(stderr, "bench: queue stats: %s\n", err.msg);
            return -1;
        }
        if (open == 0) {
            *done_us = now_us(CLOCK_MONOTONIC);
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
        sleep_us(open > BENCH_POLL_FAST_BELOW ? BENCH_POLL_SLOW_US : BENCH_POLL_FAST_US);
    }
}

/* ---- throughput ------------------------------------------------------------ */

static int run_throughput(const bench_opts_t *o, kiln_broker_t *broker)
{
    kiln_err_t err = {0};
    kiln_job_spec_t spec;
    const char *text = "{\"service\":\"" BENCH_SERVICE "\",\"payload\":{}}";
    if (kiln_job_spec_parse(text, strlen(text), 0, &spec, &err) != 0) {
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

    int64_t t0 = now_us(CLOCK_MONOTONIC);
    for (long sent = 0; sent < o->jobs;) {
        size_t n = (size_t)(o->jobs - sent < KILN_SUBMIT_BATCH_MAX ? o->jobs - sent
                                                                   : KILN_SUBMIT_BATCH_MAX);
        if (kiln_broker_submit_batch(broker, specs, n, ids, &err) != 0) {
            fprintf(stderr, "bench: submit: %s\n", err.msg);
            goto out;
        }
        sent += (long)n;
    }
    int64_t t_submitted = now_us(CLOCK_MONOTONIC), t_done = 0;
    long polls = 0, completed = 0;
    if (wait_drained(broker, &t_done, &polls, &completed) != 0)
        goto out;
    double seconds = (double)(t_done - t0) / 1e6;
    printf("{\"system\":\"kiln\",\"bench\":\"throughput\",\"concurrency\":%d,\"jobs\":%ld,"
           "\"seconds\":%.4f,\"jobs_per_s\":%.0f,\"submit_seconds\":%.4f,\"polls\":%ld,"
           "\"completed_retained\":%ld}\n",
           o->concurrency, o->jobs, seconds, (double)o->jobs / seconds,
           (double)(t_submitted - t0) / 1e6, polls, completed);
    rc = 0;
out:
    free(specs);
    free(ids);
    kiln_job_spec_clear(&spec);
    return rc;
}

/* ---- latency --------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t percentile(const int64_t *sorted, long n, double p)
{
    long idx = (long)((p / 100.0) * (double)n + 0.999999) - 1;
    if (idx < 0)
        idx = 0;
    if (idx >= n)
        idx = n - 1;
    return sorted[idx];
}

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
    srand((unsigned)now_us(CLOCK_MONOTONIC));
    int64_t start = now_us(CLOCK_MONOTONIC) + 1000;
    for (long i = 0; i < o->jobs; i++) {
        int64_t due = start + i * o->interval_ms * 1000 + rand() % 1000;
        int64_t wait = due - now_us(CLOCK_MONOTONIC);
        if (wait > 0)
            sleep_us(wait);
        submit_us[i] = now_us(CLOCK_REALTIME);
        if (kiln_broker_submit(broker, &spec, ids[i], NULL, &err) != 0) {
            fprintf(stderr, "bench: submit: %s\n", err.msg);
            goto out;
        }
    }
    int64_t t_done = 0;
    long polls = 0, completed = 0;
    if (wait_drained(broker, &t_done, &polls, &completed) != 0)
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
    qsort(lat, (size_t)n, sizeof *lat, cmp_i64);
    printf("{\"system\":\"kiln\",\"bench\":\"latency\",\"concurrency\":%d,\"jobs\":%ld,"
           "\"measured\":%ld,\"interval_ms\":%ld,\"p50_us\":%lld,\"p99_us\":%lld,\"max_us\":%lld,"
           "\"method\":\"%s\"}\n",
           o->concurrency, o->jobs, n, o->interval_ms, (long long)percentile(lat, n, 50),
           (long long)percentile(lat, n, 99), (long long)lat[n - 1],
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
        if (queue_open_jobs(broker, &open, &completed, false, &err) != 0) {
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
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

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
    int rc = worker_start(&o, &worker);
    if (rc == 0)
        rc = worker_wait_ready(broker, &worker);
    if (rc == 0)
        rc = strcmp(o.mode, "throughput") == 0 ? run_throughput(&o, broker)
                                               : run_latency(&o, broker);
    worker_stop(&worker, rc != 0);
    kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc == 0 ? 0 : 1;
}

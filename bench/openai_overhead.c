/*
 * kiln's overhead per external call, for the openai connector against a
 * fake OpenAI server that answers a chat completion at once
 * (tests/fakes/fake_openai): what kiln adds above the raw HTTP round trip
 * made with the same libcurl.
 *
 *   bench_openai_overhead [--fake PATH] [--calls N] [--rounds R]
 *                         [--slots "1 64"] [--redis URL --kiln PATH [--jobs J]]
 *                         [--keep-alive]
 *
 * For each slot count S it measures, in R rounds, with S threads each making
 * calls in a loop (N calls per round, the first tenth per thread left out as
 * warm-up):
 *   raw_reused  curl_easy_perform on one handle per thread, kept across calls
 *   raw_fresh   curl_easy_perform on a new handle per call (curl_easy_init,
 *               options, perform, cleanup), as kiln's HTTP layer does
 *   kiln        kiln_connector_run of an openai connector instance shared by
 *               the threads, as a worker's slots share it (JSON payload
 *               parsing, the request body, the HTTP layer, the result)
 * and, with --redis and --kiln, jobs/s end to end: J chat jobs through a real
 * `kiln worker` with S slots. Every request is the same POST of the same
 * body to the same URL with the same headers. --keep-alive makes the fake
 * keep connections open (real OpenAI does), so a reused handle reuses its
 * connection. kiln's overhead is reported as the median over the rounds of
 * (kiln's median - the raw median) in each round, with its min and max, so
 * one busy moment of a shared machine moves the figure little; latencies
 * and CPU time are pooled over the rounds.
 *
 * Prints a markdown table (bench/openai.sh puts it into BENCHMARKS.md).
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kiln/connector.h"
#include "kiln/config.h"
#include "kiln/log.h"
#include "support/bench_worker.h"

extern char **environ;

#define BENCH_KEY_ENV "KILN_BENCH_OPENAI_KEY"
#define BENCH_KEY     "sk-bench-not-a-secret"
#define BENCH_MODEL   "gpt-4o-mini"
#define BENCH_SERVICE "openai-bench"
#define BENCH_PAYLOAD "{\"messages\":[{\"role\":\"user\",\"content\":\"Say hi\"}],\"stream\":false}"
/* What the connector sends for BENCH_PAYLOAD (its model first, then the
 * payload's fields), byte for byte. */
#define BENCH_BODY                                                                                 \
    "{\"model\":\"" BENCH_MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"Say "           \
    "hi\"}],\"stream\":false}"
#define BENCH_MAX_SLOTS    256
#define BENCH_MAX_CALLS    1000000
#define BENCH_MAX_ROUNDS   99
#define BENCH_RESPONSE_MAX (1024 * 1024)

typedef enum { MODE_RAW_REUSED, MODE_RAW_FRESH, MODE_KILN, N_MODES } bench_mode_t;

typedef struct bench_opts {
    const char *fake_bin, *redis_url, *kiln_bin;
    long calls, jobs, rounds;
    int slots[8], n_slots;
    bool keep_alive;
} bench_opts_t;

typedef struct fake_server {
    pid_t pid;
    int port;
    char url[128]; /* http://127.0.0.1:PORT/v1 */
} fake_server_t;

/* One measurement: per-call latencies of S threads, each making calls the
 * three ways in turn (the order rotating), so a busy moment on a shared
 * machine falls on all three alike. */
typedef struct measure {
    int slots;
    long calls_per_thread, warmup_per_thread;
    const char *chat_url;
    kiln_connector_t *connector;
    int64_t *samples[N_MODES];    /* ns; rounds * slots * (calls - warmup) each */
    size_t base;                  /* where this round's samples start */
    atomic_llong cpu_ns[N_MODES]; /* the calling threads' CPU time in the kept calls */
    atomic_long failures;
    char first_error[256];
    pthread_mutex_t lock;
} measure_t;

typedef struct result {
    int64_t median_ns, p99_ns; /* pooled over the rounds */
    double calls_per_s;        /* slots / mean latency */
    double cpu_us;             /* the calling thread's CPU time per call, mean */
} result_t;

/* kiln's median - a raw median, per round: its median over the rounds and
 * its spread. */
typedef struct overhead {
    int64_t median_ns, min_ns, max_ns;
} overhead_t;

/* One cell: a slot count's figures, both raw peers. */
typedef struct cell {
    result_t res[N_MODES];
    overhead_t vs_reused, vs_fresh;
} cell_t;

/* ---- arguments ---------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: bench_openai_overhead [--fake PATH] [--calls N] [--rounds R]\n"
                    "                             [--slots \"1 64\"] [--redis URL --kiln PATH "
                    "[--jobs J]] [--keep-alive]\n");
}

static int parse_slots(const char *text, bench_opts_t *o)
{
    o->n_slots = 0;
    for (char *end; *text && o->n_slots < 8; text = end) {
        long n = strtol(text, &end, 10);
        if (end == text || n < 1 || n > BENCH_MAX_SLOTS)
            return -1;
        o->slots[o->n_slots++] = (int)n;
        end += strspn(end, " ,");
    }
    return o->n_slots > 0 ? 0 : -1;
}

static int parse_args(int argc, char **argv, bench_opts_t *o)
{
    static char fake_default[PATH_MAX];
    char self[PATH_MAX];
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(fake_default, sizeof fake_default, "%s/tests/fakes/fake_openai", dirname(self));
    *o = (bench_opts_t){.fake_bin = fake_default, .calls = 4000, .jobs = 2000, .rounds = 7};
    parse_slots("1 64", o);
    for (int i = 1; i < argc; i++) {
        const char *key = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(key, "--keep-alive") == 0) {
            o->keep_alive = true;
            continue;
        }
        if (!val)
            return -1;
        i++;
        if (strcmp(key, "--fake") == 0)
            o->fake_bin = val;
        else if (strcmp(key, "--redis") == 0)
            o->redis_url = val;
        else if (strcmp(key, "--kiln") == 0)
            o->kiln_bin = val;
        else if (strcmp(key, "--calls") == 0)
            o->calls = atol(val);
        else if (strcmp(key, "--jobs") == 0)
            o->jobs = atol(val);
        else if (strcmp(key, "--rounds") == 0)
            o->rounds = atol(val);
        else if (strcmp(key, "--slots") == 0 && parse_slots(val, o) == 0)
            continue;
        else
            return -1;
    }
    if (o->calls < 10 || o->calls > BENCH_MAX_CALLS || o->jobs < 1 || o->rounds < 1 ||
        o->rounds > BENCH_MAX_ROUNDS || (!o->redis_url != !o->kiln_bin))
        return -1;
    return 0;
}

/* ---- the fake ------------------------------------------------------------------ */

/* Starts the fake on a free port and reads the port it prints. */
static int fake_start(const bench_opts_t *o, fake_server_t *f)
{
    int out[2];
    if (pipe2(out, O_CLOEXEC) < 0)
        return -1;
    char *argv[] = {
        (char *)o->fake_bin, "0", "--key", BENCH_KEY, o->keep_alive ? "--keep-alive" : NULL, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    int rc = posix_spawn(&f->pid, o->fake_bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    if (rc != 0) {
        fprintf(stderr, "bench: cannot start %s: %s\n", o->fake_bin, strerror(rc));
        close(out[0]);
        return -1;
    }
    FILE *in = fdopen(out[0], "r");
    char line[256] = "";
    bool got = in && fgets(line, sizeof line, in) &&
               sscanf(line, "fake_openai: listening on 127.0.0.1:%d", &f->port) == 1;
    if (in)
        fclose(in);
    else
        close(out[0]);
    if (!got) {
        fprintf(stderr, "bench: %s did not say its port (%s)\n", o->fake_bin, line);
        return -1;
    }
    snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d/v1", f->port);
    return 0;
}

static void fake_stop(fake_server_t *f)
{
    if (f->pid <= 0)
        return;
    kill(f->pid, SIGTERM);
    waitpid(f->pid, NULL, 0);
    f->pid = 0;
}

/* ---- raw libcurl ----------------------------------------------------------------- */

typedef struct raw_body {
    char *data;
    size_t len, cap;
} raw_body_t;

static size_t raw_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    raw_body_t *b = userdata;
    size_t n = size * nmemb;
    if (b->len + n > BENCH_RESPONSE_MAX)
        return 0;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown)
            return 0;
        b->data = grown, b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* The headers kiln's HTTP layer sends with a JSON POST. */
static struct curl_slist *raw_headers(void)
{
    struct curl_slist *h = curl_slist_append(NULL, "Accept: application/json, text/event-stream");
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    return curl_slist_append(h, "Authorization: Bearer " BENCH_KEY);
}

static void raw_setup(CURL *curl, const char *url, struct curl_slist *headers, raw_body_t *body)
{
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "kiln");
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, BENCH_BODY);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(BENCH_BODY));
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, raw_write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
}

/* One POST; 0 when a 200 with a JSON body came back, else -1 with why. */
static int raw_call(CURL *curl, raw_body_t *body, char *why, size_t size)
{
    body->len = 0;
    CURLcode cc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (cc == CURLE_OK && status == 200 && body->len > 0 && body->data[0] == '{')
        return 0;
    snprintf(why, size, "raw POST: %s, HTTP %ld", curl_easy_strerror(cc), status);
    return -1;
}

static int64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- the measuring threads ------------------------------------------------------- */

static void no_progress(void *ctx, double percent, const char *message) {}

static int kiln_call(measure_t *m, const kiln_job_context_t *job, char *why, size_t size)
{
    kiln_job_outcome_t out = {0};
    int rc = kiln_connector_run(m->connector, job, &out);
    bool ok = rc == 0 && out.status == KILN_OUTCOME_COMPLETED && out.result_json;
    if (!ok)
        snprintf(why, size, "kiln_connector_run: rc %d: %s", rc, out.error ? out.error : "");
    kiln_job_outcome_clear(&out);
    return ok ? 0 : -1;
}

static void record_failure(measure_t *m, const char *why)
{
    if (atomic_fetch_add(&m->failures, 1) == 0) {
        pthread_mutex_lock(&m->lock);
        snprintf(m->first_error, sizeof m->first_error, "%s", why);
        pthread_mutex_unlock(&m->lock);
    }
}

typedef struct thread_arg {
    measure_t *m;
    int index;
} thread_arg_t;

/* One call the given way; 0, or -1 with why. */
static int call_once(measure_t *m, bench_mode_t mode, CURL *reused, struct curl_slist *headers,
                     raw_body_t *body, const kiln_job_context_t *job, char *why, size_t size)
{
    if (mode == MODE_RAW_REUSED)
        return raw_call(reused, body, why, size);
    if (mode == MODE_KILN)
        return kiln_call(m, job, why, size);
    CURL *fresh = curl_easy_init();
    if (!fresh) {
        snprintf(why, size, "curl_easy_init failed");
        return -1;
    }
    raw_setup(fresh, m->chat_url, headers, body);
    int rc = raw_call(fresh, body, why, size);
    curl_easy_cleanup(fresh);
    return rc;
}

static void *measure_thread(void *arg)
{
    thread_arg_t *ta = arg;
    measure_t *m = ta->m;
    size_t first =
        m->base + (size_t)ta->index * (size_t)(m->calls_per_thread - m->warmup_per_thread);
    struct curl_slist *headers = raw_headers();
    raw_body_t body = {0};
    CURL *reused = curl_easy_init();
    if (reused)
        raw_setup(reused, m->chat_url, headers, &body);
    atomic_int cancel = 0;
    char job_id[32];
    snprintf(job_id, sizeof job_id, "%s.%d", BENCH_SERVICE, ta->index);
    kiln_job_context_t job = {.job_id = job_id,
                              .service = BENCH_SERVICE,
                              .payload_json = BENCH_PAYLOAD,
                              .attempt = 1,
                              .timeout_ms = 60000,
                              .progress = no_progress,
                              .cancel = &cancel,
                              .cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
    char why[256];
    for (long i = 0; reused && i < m->calls_per_thread; i++) {
        for (int k = 0; k < N_MODES; k++) {
            bench_mode_t mode = (bench_mode_t)((i + k) % N_MODES);
            int64_t t0 = clock_ns(CLOCK_MONOTONIC), cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
            int rc = call_once(m, mode, reused, headers, &body, &job, why, sizeof why);
            int64_t took_ns = clock_ns(CLOCK_MONOTONIC) - t0;
            int64_t cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
            if (rc != 0)
                record_failure(m, why);
            if (i < m->warmup_per_thread)
                continue;
            m->samples[mode][first + (size_t)(i - m->warmup_per_thread)] = took_ns;
            atomic_fetch_add(&m->cpu_ns[mode], cpu_ns);
        }
    }
    if (!reused)
        record_failure(m, "curl_easy_init failed");
    if (job.cancel_fd >= 0)
        close(job.cancel_fd);
    if (reused)
        curl_easy_cleanup(reused);
    curl_slist_free_all(headers);
    free(body.data);
    return NULL;
}

static void summarise(measure_t *m, bench_mode_t mode, long n, result_t *res)
{
    int64_t *samples = m->samples[mode];
    double sum = 0;
    for (long i = 0; i < n; i++)
        sum += (double)samples[i];
    bench_sort_i64(samples, n);
    *res = (result_t){.median_ns = bench_percentile(samples, n, 50),
                      .p99_ns = bench_percentile(samples, n, 99),
                      .calls_per_s = sum > 0 ? m->slots * 1e9 * (double)n / sum : 0,
                      .cpu_us = (double)atomic_load(&m->cpu_ns[mode]) / (double)n / 1e3};
}

/* The median, min and max of n per-round differences (sorted here). */
static overhead_t overhead_of(int64_t *diffs, long n)
{
    bench_sort_i64(diffs, n);
    return (overhead_t){
        .median_ns = bench_percentile(diffs, n, 50), .min_ns = diffs[0], .max_ns = diffs[n - 1]};
}

/* One round: slots threads, their kept samples at m->base; then the
 * round's median of each way (sorting its slice). */
static int measure_round(measure_t *m, long n, int64_t medians[N_MODES])
{
    pthread_t threads[BENCH_MAX_SLOTS];
    thread_arg_t args[BENCH_MAX_SLOTS];
    int rc = 0, started = 0;
    for (; started < m->slots; started++) {
        args[started] = (thread_arg_t){.m = m, .index = started};
        if (pthread_create(&threads[started], NULL, measure_thread, &args[started]) != 0) {
            rc = -1;
            break;
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    for (int k = 0; k < N_MODES; k++) {
        bench_sort_i64(m->samples[k] + m->base, n);
        medians[k] = bench_percentile(m->samples[k] + m->base, n, 50);
    }
    return rc;
}

/* Runs rounds measurements with slots threads, calls calls each way in
 * each, into cell: latencies pooled, kiln's overheads per round. */
static int measure(int slots, long calls, long rounds, const fake_server_t *fake,
                   kiln_connector_t *connector, cell_t *cell)
{
    char chat_url[160];
    snprintf(chat_url, sizeof chat_url, "%s/chat/completions", fake->url);
    measure_t m = {.slots = slots,
                   .calls_per_thread = calls / slots > 10 ? calls / slots : 10,
                   .chat_url = chat_url,
                   .connector = connector,
                   .lock = PTHREAD_MUTEX_INITIALIZER};
    m.warmup_per_thread = m.calls_per_thread / 10;
    long n = (m.calls_per_thread - m.warmup_per_thread) * slots;
    int64_t vs_reused[BENCH_MAX_ROUNDS], vs_fresh[BENCH_MAX_ROUNDS];
    int rc = 0;
    for (int k = 0; k < N_MODES; k++)
        if (!(m.samples[k] = calloc((size_t)(n * rounds), sizeof *m.samples[k])))
            rc = -1;
    for (long r = 0; rc == 0 && r < rounds && atomic_load(&m.failures) == 0; r++) {
        int64_t med[N_MODES];
        m.base = (size_t)(r * n);
        rc = measure_round(&m, n, med);
        vs_reused[r] = med[MODE_KILN] - med[MODE_RAW_REUSED];
        vs_fresh[r] = med[MODE_KILN] - med[MODE_RAW_FRESH];
    }
    long failures = atomic_load(&m.failures);
    if (failures) {
        fprintf(stderr, "bench: %d slots: %ld calls failed; the first: %s\n", slots, failures,
                m.first_error);
        rc = -1;
    }
    for (int k = 0; rc == 0 && k < N_MODES; k++)
        summarise(&m, (bench_mode_t)k, n * rounds, &cell->res[k]);
    if (rc == 0) {
        cell->vs_reused = overhead_of(vs_reused, rounds);
        cell->vs_fresh = overhead_of(vs_fresh, rounds);
    }
    for (int k = 0; k < N_MODES; k++)
        free(m.samples[k]);
    return rc;
}

/* ---- the connector and the worker ------------------------------------------------ */

/* The openai connector's options for the fake, as a YAML flow mapping. */
static void connector_yaml(const fake_server_t *fake, char *out, size_t size)
{
    snprintf(out, size,
             "{ type: openai, base_url: \"%s\", model: %s, api_key_env: %s, max_retries: 0 }",
             fake->url, BENCH_MODEL, BENCH_KEY_ENV);
}

static int connector_new(const fake_server_t *fake, kiln_connector_t **out)
{
    kiln_connector_config_t cfg = {.name = BENCH_SERVICE, .type = "openai"};
    cfg.options = json_pack("{s:s, s:s, s:s, s:i}", "base_url", fake->url, "model", BENCH_MODEL,
                            "api_key_env", BENCH_KEY_ENV, "max_retries", 0);
    kiln_err_t err = {0};
    int rc = cfg.options ? kiln_connector_new(&cfg, out, &err) : KILN_ENOMEM;
    json_decref(cfg.options);
    if (rc != 0)
        fprintf(stderr, "bench: openai connector: %s\n", err.msg);
    return rc;
}

/* The service's jobs that ended failed or dead; -1 when unreadable. */
static long failures_of(kiln_broker_t *broker)
{
    json_t *stats = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_queue_stats(broker, &stats, &err) != 0) {
        fprintf(stderr, "bench: queue stats: %s\n", err.msg);
        return -1;
    }
    long n = 0;
    size_t i;
    json_t *q;
    json_array_foreach(stats, i, q)
    {
        const char *svc = json_string_value(json_object_get(q, "service"));
        if (svc && strcmp(svc, BENCH_SERVICE) == 0)
            n = (long)(json_integer_value(json_object_get(q, "failed")) +
                       json_integer_value(json_object_get(q, "dead")));
    }
    json_decref(stats);
    return n;
}

/* Jobs/s of J chat jobs through a real worker with slots slots; every
 * job must complete (a failed one ends as failed or dead). */
static int end_to_end(const bench_opts_t *o, const fake_server_t *fake, kiln_broker_t *broker,
                      int slots, double *jobs_per_s)
{
    char yaml[512];
    connector_yaml(fake, yaml, sizeof yaml);
    long failed_before = failures_of(broker);
    bench_worker_t worker = {0};
    int rc = failed_before < 0 ? -1
                               : bench_worker_start(&worker, o->kiln_bin, o->redis_url, slots,
                                                    BENCH_SERVICE, yaml);
    if (rc == 0)
        rc = bench_worker_wait_ready(broker, &worker);
    bench_jobs_run_t run = {0};
    if (rc == 0)
        rc = bench_run_jobs(broker, BENCH_SERVICE,
                            "{\"service\":\"" BENCH_SERVICE "\",\"payload\":" BENCH_PAYLOAD "}",
                            o->jobs, &run);
    long failed = rc == 0 ? failures_of(broker) - failed_before : 0;
    if (failed != 0) {
        fprintf(stderr, "bench: %ld of %ld jobs did not complete\n", failed, o->jobs);
        rc = -1;
    }
    bench_worker_stop(&worker, rc != 0);
    if (rc == 0)
        *jobs_per_s = (double)o->jobs / run.seconds;
    return rc;
}

static int broker_connect(const bench_opts_t *o, kiln_broker_t **broker)
{
    kiln_config_t cfg;
    kiln_config_init_defaults(&cfg);
    kiln_broker_options_t bopts;
    kiln_broker_options_from_config(&bopts, &cfg);
    bopts.redis_url = o->redis_url;
    kiln_err_t err = {0};
    int rc = kiln_broker_connect(&bopts, broker, &err);
    if (rc != 0)
        fprintf(stderr, "bench: %s\n", err.msg);
    kiln_config_free(&cfg);
    return rc;
}

/* ---- the report ------------------------------------------------------------------- */

static double ms(int64_t ns)
{
    return (double)ns / 1e6;
}

/* "**median** (min to max)" of an overhead, in ms. */
static void print_overhead(const overhead_t *o, bool bold)
{
    const char *mark = bold ? "**" : "";
    printf("| %s%+.3f%s (%+.3f to %+.3f) ", mark, ms(o->median_ns), mark, ms(o->min_ns),
           ms(o->max_ns));
}

/* One markdown table row: pooled per-call figures of the three ways, kiln's
 * overhead over each raw one, and the worker's jobs/s when measured. */
static void print_row(int slots, const cell_t *c, double jobs_per_s)
{
    const result_t *r = c->res;
    printf("| %d ", slots);
    for (int k = 0; k < N_MODES; k++)
        printf("| %.3f / %.3f ", ms(r[k].median_ns), ms(r[k].p99_ns));
    print_overhead(&c->vs_reused, true);
    print_overhead(&c->vs_fresh, false);
    printf("| %.0f / %.0f / %.0f | %.0f ", r[MODE_RAW_REUSED].cpu_us, r[MODE_RAW_FRESH].cpu_us,
           r[MODE_KILN].cpu_us, r[MODE_KILN].calls_per_s);
    if (jobs_per_s > 0)
        printf("| %.0f | %.3f |\n", jobs_per_s, 1e3 * slots / jobs_per_s);
    else
        printf("| n/a | n/a |\n");
}

static int run_all(const bench_opts_t *o, const fake_server_t *fake, kiln_connector_t *connector,
                   kiln_broker_t *broker)
{
    cell_t cells[8];
    double jobs_per_s[8] = {0};
    int rc = 0;
    for (int s = 0; s < o->n_slots && rc == 0; s++) {
        rc = measure(o->slots[s], o->calls, o->rounds, fake, connector, &cells[s]);
        if (rc == 0 && broker)
            rc = end_to_end(o, fake, broker, o->slots[s], &jobs_per_s[s]);
    }
    if (rc != 0)
        return rc;
    printf("POST /v1/chat/completions to fake_openai%s, libcurl %s, %ld rounds of %ld calls per "
           "cell each way, the three ways in turn (a tenth per thread and round left out as "
           "warm-up), %ld jobs per worker run; times in ms. Latencies, CPU and calls/s are pooled "
           "over the rounds; an overhead is the median over the rounds of (kiln's median - the "
           "raw median) in each round, with its min to max.\n\n",
           o->keep_alive ? " --keep-alive" : " (Connection: close)",
           curl_version_info(CURLVERSION_NOW)->version, o->rounds, o->calls, o->jobs);
    printf("| slots | raw, reused handle: median / p99 | raw, fresh handle: median / p99 | "
           "kiln_connector_run: median / p99 | overhead vs reused: median of rounds (min to max) "
           "| overhead vs fresh: median of rounds (min to max) | "
           "CPU µs per call: reused / fresh / kiln | connector calls/s (slots / mean) | "
           "worker jobs/s | worker ms per job per slot |\n"
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int s = 0; s < o->n_slots; s++)
        print_row(o->slots[s], &cells[s], jobs_per_s[s]);
    return 0;
}

int main(int argc, char **argv)
{
    bench_opts_t o;
    if (parse_args(argc, argv, &o) != 0) {
        usage();
        return 2;
    }
    bench_worker_signals();
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_WARN);
    setenv(BENCH_KEY_ENV, BENCH_KEY, 1);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    fake_server_t fake = {0};
    kiln_connector_t *connector = NULL;
    kiln_broker_t *broker = NULL;
    int rc = fake_start(&o, &fake);
    if (rc == 0)
        rc = connector_new(&fake, &connector);
    if (rc == 0 && o.redis_url)
        rc = broker_connect(&o, &broker);
    if (rc == 0)
        rc = run_all(&o, &fake, connector, broker);
    if (broker)
        kiln_broker_free(broker);
    kiln_connector_free(connector);
    fake_stop(&fake);
    return rc == 0 ? 0 : 1;
}

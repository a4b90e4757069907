/*
 * End-to-end tests of the worker: real `kiln worker` processes against a
 * real redis-server, driven through the broker's public API (and the CLI
 * where a user would use it). Each test starts its own workers and stops
 * them at its end; when a test fails, the workers' logs and the redis log
 * are printed. Every wait is for a condition, with a bound well above what
 * the condition needs; no test sleeps for a fixed time.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kiln/broker.h"
#include "kiln_test.h"

#define SERVICE     "simulation"
#define STREAM_KEY  "kiln:{simulation}:events"
#define NOTIFY_KEY  "kiln:{simulation}:notify"
#define MAX_WORKERS 4
#define MAX_ENV     8
#define LOG_MAX     (4 * 1024 * 1024)

static kiln_test_redis_t shared_redis;
static char log_dir[256];
static int test_seq;

typedef struct worker_proc {
    pid_t pid; /* 0 once it has exited and been reaped */
    char id[64];
    char log_path[400];
    int exit_status; /* wait status once reaped */
} worker_proc_t;

typedef struct fixture {
    kiln_test_redis_t *redis; /* shared_redis, or own_redis */
    kiln_test_redis_t own_redis;
    bool has_own_redis;
    kiln_broker_options_t opts;
    kiln_broker_t *broker;
    worker_proc_t workers[MAX_WORKERS];
    int n_workers;
    int seq;
    bool passed; /* set by the test's last line; otherwise teardown dumps logs */
} fixture_t;

/* How a worker is started; zero values mean the worker's defaults. */
typedef struct worker_opts {
    const char *id;
    int concurrency;
    long grace_ms; /* 0: the default (30 s) */
    long lease_ms; /* 0: the default (30 s) */
    const char *capabilities;
    const char *extra_env[4];
} worker_opts_t;

/* ---- Small helpers ------------------------------------------------------- */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *slurp(const char *path)
{
    struct stat st;
    size_t size = stat(path, &st) == 0 ? (size_t)st.st_size : 0;
    if (size > LOG_MAX)
        size = LOG_MAX;
    char *buf = calloc(1, size + 1);
    assert_non_null(buf);
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t n = fread(buf, 1, size, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}

static bool file_contains(const char *path, const char *needle)
{
    char *text = slurp(path);
    bool found = strstr(text, needle) != NULL;
    free(text);
    return found;
}

static const char *jstr(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

static long long jint(const json_t *obj, const char *key)
{
    return (long long)json_integer_value(json_object_get(obj, key));
}

static void dump_json(const char *title, const json_t *value)
{
    char *text = value ? json_dumps(value, JSON_INDENT(1)) : NULL;
    fprintf(stderr, "%s: %s\n", title, text ? text : "(null)");
    free(text);
}

/* ---- Broker and redis ---------------------------------------------------- */

static void broker_connect(fixture_t *f)
{
    memset(&f->opts, 0, sizeof f->opts);
    f->opts.redis_url = f->redis->url;
    f->opts.max_payload_bytes = 1024 * 1024;
    f->opts.stream_max_len = 100000;
    f->opts.retention_age_s = 3600;
    f->opts.retention_count = 100000;
    f->opts.default_max_attempts = 3;
    f->opts.backoff_base_ms = 50;
    f->opts.backoff_max_ms = 200;
    f->opts.lease_ms = 30000;
    kiln_err_t err = {0};
    if (kiln_broker_connect(&f->opts, &f->broker, &err) != 0)
        fail_msg("kiln_broker_connect %s: %s", f->redis->url, err.msg);
}

static void flushall(kiln_test_redis_t *r)
{
    redisContext *c = kiln_test_redis_connect(r);
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    redisFree(c);
}

/* Switches the test to a private redis-server (AOF when aof is true). */
static void use_own_redis(fixture_t *f, bool aof)
{
    kiln_broker_free(f->broker);
    f->broker = NULL;
    kiln_test_redis_start(&f->own_redis, aof);
    f->has_own_redis = true;
    f->redis = &f->own_redis;
    broker_connect(f);
}

static void parse_spec(fixture_t *f, const char *json, kiln_job_spec_t *spec)
{
    kiln_err_t err = {0};
    if (kiln_job_spec_parse(json, strlen(json), f->opts.max_payload_bytes, spec, &err) != 0)
        fail_msg("job spec %s refused: %s", json, err.msg);
}

/* Submits one job (spec JSON) and copies its id into id. */
static void submit(fixture_t *f, const char *json, char *id)
{
    kiln_job_spec_t spec;
    parse_spec(f, json, &spec);
    kiln_err_t err = {0};
    int rc = kiln_broker_submit(f->broker, &spec, id, NULL, &err);
    kiln_job_spec_clear(&spec);
    if (rc != 0)
        fail_msg("submit %s: %s", json, err.msg);
}

/* Submits n copies of one spec in batches of at most KILN_SUBMIT_BATCH_MAX.
 * ids (may be NULL) receives the n ids. */
static void submit_many(fixture_t *f, const char *json, size_t n, char (*ids)[KILN_JOB_ID_MAX])
{
    kiln_job_spec_t *specs = calloc(KILN_SUBMIT_BATCH_MAX, sizeof *specs);
    char(*batch_ids)[KILN_JOB_ID_MAX] = calloc(KILN_SUBMIT_BATCH_MAX, KILN_JOB_ID_MAX);
    assert_non_null(specs);
    assert_non_null(batch_ids);
    for (size_t done = 0; done < n;) {
        size_t count = KILN_SUBMIT_BATCH_MAX;
        if (n - done < count)
            count = n - done;
        for (size_t i = 0; i < count; i++)
            parse_spec(f, json, &specs[i]);
        kiln_err_t err = {0};
        int rc = kiln_broker_submit_batch(f->broker, specs, count, batch_ids, &err);
        for (size_t i = 0; i < count; i++)
            kiln_job_spec_clear(&specs[i]);
        if (rc != 0)
            fail_msg("submit_batch of %zu: %s", count, err.msg);
        for (size_t i = 0; ids && i < count; i++)
            memcpy(ids[done + i], batch_ids[i], KILN_JOB_ID_MAX);
        done += count;
    }
    free(specs);
    free(batch_ids);
}

/* The job as the broker reports it (caller owns); fails when unknown. */
static json_t *get_job(fixture_t *f, const char *id)
{
    json_t *job = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_get_job(f->broker, id, &job, &err) != 0)
        fail_msg("get_job %s: %s", id, err.msg);
    return job;
}

/* This queue's counters from kiln_broker_queue_stats (caller owns). */
static json_t *queue_stats(fixture_t *f)
{
    json_t *all = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_queue_stats(f->broker, &all, &err) != 0)
        fail_msg("queue_stats: %s", err.msg);
    size_t i;
    json_t *s;
    json_array_foreach(all, i, s)
    {
        if (strcmp(jstr(s, "service"), SERVICE) == 0) {
            json_incref(s);
            json_decref(all);
            return s;
        }
    }
    json_decref(all);
    return json_object();
}

/* The queue's event stream, oldest first: an array of objects holding every
 * field of each entry as a string, plus "ms", the entry's stream time. */
static json_t *read_events(fixture_t *f)
{
    redisContext *c = kiln_test_redis_connect(f->redis);
    redisReply *r = redisCommand(c, "XRANGE %s - +", STREAM_KEY);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    json_t *events = json_array();
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *entry = r->element[i];
        redisReply *fields = entry->element[1];
        json_t *ev = json_object();
        json_object_set_new(ev, "ms", json_integer(strtoll(entry->element[0]->str, NULL, 10)));
        for (size_t k = 0; k + 1 < fields->elements; k += 2)
            json_object_set_new(ev, fields->element[k]->str,
                                json_string(fields->element[k + 1]->str));
        json_array_append_new(events, ev);
    }
    freeReplyObject(r);
    redisFree(c);
    return events;
}

/* Events of one job (or every job when id is NULL) of one type (or every
 * type when type is NULL), in stream order. Caller owns. */
static json_t *events_of(const json_t *events, const char *id, const char *type)
{
    json_t *out = json_array();
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        if ((!id || strcmp(jstr(ev, "job"), id) == 0) &&
            (!type || strcmp(jstr(ev, "type"), type) == 0))
            json_array_append(out, ev);
    }
    return out;
}

/* ---- Workers ------------------------------------------------------------- */

/* Starts `kiln worker` for the simulation service; its output goes to a
 * log of its own, printed if the test fails. */
static worker_proc_t *start_worker(fixture_t *f, const worker_opts_t *o)
{
    assert_true(f->n_workers < MAX_WORKERS);
    worker_proc_t *w = &f->workers[f->n_workers++];
    memset(w, 0, sizeof *w);
    snprintf(w->id, sizeof w->id, "%s", o->id ? o->id : "worker");
    snprintf(w->log_path, sizeof w->log_path, "%s/%02d-%s.log", log_dir, f->seq,
             o->id ? o->id : "worker");
    char concurrency[16], grace[24];
    snprintf(concurrency, sizeof concurrency, "%d", o->concurrency > 0 ? o->concurrency : 1);
    snprintf(grace, sizeof grace, "%ld", o->grace_ms);
    char *argv[24] = {KILN_BIN,      "worker",        "--redis",   f->redis->url,  "--connectors",
                      SERVICE,       "--concurrency", concurrency, "--log-format", "text",
                      "--log-level", "debug",         "--id",      w->id};
    int argc = 14;
    if (o->grace_ms > 0) {
        argv[argc++] = "--grace-ms";
        argv[argc++] = grace;
    }
    if (o->capabilities) {
        argv[argc++] = "--capabilities";
        argv[argc++] = (char *)o->capabilities;
    }
    argv[argc] = NULL;
    static char env_store[MAX_ENV][128];
    char *env[MAX_ENV + 1];
    int n_env = 0;
    snprintf(env_store[n_env], sizeof env_store[n_env], "KILN_BROKER_BACKOFF_BASE_MS=50");
    env[n_env] = env_store[n_env], n_env++;
    snprintf(env_store[n_env], sizeof env_store[n_env], "KILN_BROKER_BACKOFF_MAX_MS=200");
    env[n_env] = env_store[n_env], n_env++;
    if (o->lease_ms > 0) {
        snprintf(env_store[n_env], sizeof env_store[n_env], "KILN_BROKER_LEASE_MS=%ld",
                 o->lease_ms);
        env[n_env] = env_store[n_env], n_env++;
    }
    for (int i = 0; i < 4 && o->extra_env[i] && n_env < MAX_ENV; i++) {
        snprintf(env_store[n_env], sizeof env_store[n_env], "%s", o->extra_env[i]);
        env[n_env] = env_store[n_env], n_env++;
    }
    env[n_env] = NULL;
    w->pid = kiln_test_spawn(argv, env, w->log_path);
    return w;
}

/* Waits for w to exit within timeout_ms and returns its wait status; fails
 * when it does not exit. */
static int wait_worker_exit(worker_proc_t *w, long timeout_ms)
{
    int status = kiln_test_wait_exit(w->pid, timeout_ms);
    if (status == -1)
        fail_msg("worker %s (pid %d) did not exit within %ld ms", w->id, (int)w->pid, timeout_ms);
    w->pid = 0;
    w->exit_status = status;
    return status;
}

static void expect_clean_exit(const worker_proc_t *w, int status)
{
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("worker %s: expected exit 0, got %s %d", w->id,
                 WIFEXITED(status) ? "exit" : "signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

/* Stops a worker at the end of a test: SIGTERM (a clean stop, so sanitizer
 * reports are written), a second SIGTERM to hand running jobs back at once,
 * SIGKILL as the last resort. Returns true when the first SIGTERM was
 * enough and the worker exited 0 (or it had already been stopped). */
static bool stop_worker(worker_proc_t *w)
{
    if (w->pid <= 0)
        return true;
    kill(w->pid, SIGTERM);
    int status = kiln_test_wait_exit(w->pid, 5000);
    bool clean = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (status == -1) {
        kill(w->pid, SIGTERM);
        status = kiln_test_wait_exit(w->pid, 3000);
    }
    if (status == -1) {
        kill(w->pid, SIGKILL);
        status = kiln_test_wait_exit(w->pid, 5000);
    }
    w->exit_status = status;
    w->pid = 0;
    if (!clean)
        fprintf(stderr, "worker %s did not stop cleanly on SIGTERM (wait status 0x%x)\n", w->id,
                status);
    return clean;
}

/* ---- Waiting for conditions ---------------------------------------------- */

typedef struct job_cond {
    fixture_t *f;
    const char *id;
    const char *state;  /* the state wanted */
    const char *worker; /* NULL: any */
    bool mid_job;       /* progress above 0 reported as well */
} job_cond_t;

static bool job_cond_holds(void *ctx)
{
    job_cond_t *c = ctx;
    json_t *job = get_job(c->f, c->id);
    bool ok = strcmp(jstr(job, "state"), c->state) == 0 &&
              (!c->worker || strcmp(jstr(job, "worker"), c->worker) == 0) &&
              (!c->mid_job || json_number_value(json_object_get(job, "progress")) > 0);
    json_decref(job);
    return ok;
}

/* Waits until job id is in state (on worker, when not NULL) and returns the
 * job (caller owns); fails, showing the job, after timeout_ms. */
static json_t *wait_job(fixture_t *f, const char *id, const char *state, const char *worker,
                        long timeout_ms)
{
    job_cond_t c = {f, id, state, worker, false};
    if (!kiln_test_wait_until(job_cond_holds, &c, timeout_ms)) {
        json_t *job = get_job(f, id);
        dump_json("job", job);
        json_decref(job);
        fail_msg("job %s did not reach state %s%s%s within %ld ms", id, state,
                 worker ? " on worker " : "", worker ? worker : "", timeout_ms);
    }
    return get_job(f, id);
}

typedef struct stats_cond {
    fixture_t *f;
    long long completed; /* wanted at least this many completed */
    bool all_quiet;      /* and nothing pending, running, delayed or dead */
} stats_cond_t;

static bool stats_cond_holds(void *ctx)
{
    stats_cond_t *c = ctx;
    json_t *s = queue_stats(c->f);
    bool ok = jint(s, "completed") >= c->completed &&
              (!c->all_quiet || (jint(s, "pending") == 0 && jint(s, "running") == 0 &&
                                 jint(s, "delayed") == 0 && jint(s, "dead") == 0));
    json_decref(s);
    return ok;
}

static void wait_completed(fixture_t *f, long long n, bool all_quiet, long timeout_ms)
{
    stats_cond_t c = {f, n, all_quiet};
    if (!kiln_test_wait_until(stats_cond_holds, &c, timeout_ms)) {
        json_t *s = queue_stats(f);
        dump_json("queue stats", s);
        json_decref(s);
        fail_msg("%lld jobs were not completed within %ld ms", n, timeout_ms);
    }
}

typedef struct log_cond {
    const char *path;
    const char *needle;
} log_cond_t;

static bool log_cond_holds(void *ctx)
{
    log_cond_t *c = ctx;
    return file_contains(c->path, c->needle);
}

static void wait_log(const worker_proc_t *w, const char *needle, long timeout_ms)
{
    log_cond_t c = {w->log_path, needle};
    if (!kiln_test_wait_until(log_cond_holds, &c, timeout_ms))
        fail_msg("worker %s's log does not mention \"%s\" after %ld ms", w->id, needle, timeout_ms);
}

/* The registry record of worker id (caller owns), or NULL. */
static json_t *registered_worker(fixture_t *f, const char *id)
{
    json_t *workers = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_list_workers(f->broker, &workers, &err) != 0)
        fail_msg("list_workers: %s", err.msg);
    json_t *found = NULL;
    size_t i;
    json_t *w;
    json_array_foreach(workers, i, w)
    {
        if (strcmp(jstr(w, "id"), id) == 0)
            found = json_incref(w);
    }
    json_decref(workers);
    return found;
}

typedef struct registry_cond {
    fixture_t *f;
    const char *id;
    long long idle_ms; /* registered, and refreshed at least this long after it started */
} registry_cond_t;

static bool registry_cond_holds(void *ctx)
{
    registry_cond_t *c = ctx;
    json_t *w = registered_worker(c->f, c->id);
    bool ok = w && jint(w, "seen_at") - jint(w, "started_at") >= c->idle_ms;
    json_decref(w);
    return ok;
}

static void wait_registered(fixture_t *f, const char *id, long long idle_ms, long timeout_ms)
{
    registry_cond_t c = {f, id, idle_ms};
    if (!kiln_test_wait_until(registry_cond_holds, &c, timeout_ms))
        fail_msg("worker %s did not register (idle %lld ms) within %ld ms", id, idle_ms,
                 timeout_ms);
}

/* ---- Fixtures ------------------------------------------------------------ */

static int start_shared_redis(void **state)
{
    kiln_test_tmpdir(log_dir, sizeof log_dir);
    kiln_test_redis_start(&shared_redis, false);
    return 0;
}

static int stop_shared_redis(void **state)
{
    kiln_test_redis_destroy(&shared_redis);
    char *argv[] = {"/bin/rm", "-rf", log_dir, NULL};
    kiln_test_run(argv, NULL, NULL, 0);
    return 0;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->seq = ++test_seq;
    f->redis = &shared_redis;
    flushall(f->redis);
    broker_connect(f);
    *state = f;
    return 0;
}

static const char *const sanitizer_marks[] = {"AddressSanitizer", "LeakSanitizer",
                                              "runtime error:", NULL};

/* Stops every worker the test left running. When the test failed, prints
 * every worker's log and the redis log. A sanitizer report in any worker's
 * log, or a worker that does not stop cleanly, fails the test even when it
 * passed otherwise. */
static int teardown(void **state)
{
    fixture_t *f = *state;
    bool all_clean = true;
    for (int i = 0; i < f->n_workers; i++)
        all_clean = stop_worker(&f->workers[i]) && all_clean;
    bool sanitizer_report = false;
    for (int i = 0; i < f->n_workers; i++) {
        char *text = slurp(f->workers[i].log_path);
        for (size_t m = 0; sanitizer_marks[m]; m++)
            sanitizer_report = sanitizer_report || strstr(text, sanitizer_marks[m]) != NULL;
        free(text);
    }
    bool passed = f->passed;
    if (!passed || sanitizer_report || !all_clean) {
        for (int i = 0; i < f->n_workers; i++) {
            char title[96];
            snprintf(title, sizeof title, "worker %s log", f->workers[i].id);
            kiln_test_dump_file(title, f->workers[i].log_path);
        }
        kiln_test_dump_file("redis log", f->redis->log_path);
    }
    kiln_broker_free(f->broker);
    if (f->has_own_redis)
        kiln_test_redis_destroy(&f->own_redis);
    free(f);
    if (sanitizer_report)
        fail_msg("a worker's log has a sanitizer report (printed above)");
    /* Every test leaves its workers idle: each must stop at once on SIGTERM. */
    if (passed && !all_clean)
        fail_msg("a worker did not stop cleanly on SIGTERM at the end of the test");
    return 0;
}

/* ---- Tests --------------------------------------------------------------- */

static void a_submitted_job_runs_on_a_worker_and_completes_with_its_result(void **state)
{
    fixture_t *f = *state;
    start_worker(f, &(worker_opts_t){.id = "solo"});
    char id[KILN_JOB_ID_MAX];
    int64_t before = wall_ms();
    submit(f,
           "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":50,\"steps\":5,"
           "\"result\":{\"answer\":42,\"items\":[\"a\",\"b\"]}}}",
           id);
    json_t *job = wait_job(f, id, "completed", NULL, 10000);
    json_t *want = json_loads("{\"answer\":42,\"items\":[\"a\",\"b\"]}", 0, NULL);
    if (!json_equal(json_object_get(job, "result"), want)) {
        dump_json("job", job);
        fail_msg("the result is not the one the payload asked for");
    }
    assert_int_equal(jint(job, "attempts"), 1);
    assert_string_equal(jstr(job, "worker"), "solo");
    assert_true(json_is_null(json_object_get(job, "error")));
    long long created = jint(job, "created_at"), started = jint(job, "started_at"),
              finished = jint(job, "finished_at");
    assert_true(created >= before - 1000);
    assert_true(started >= created);
    /* The simulation takes 50 ms; the clock is Redis's, in ms. */
    assert_true(finished >= started + 45);
    assert_true(finished <= wall_ms() + 1000);
    assert_true(json_number_value(json_object_get(job, "progress")) == 100.0);
    json_decref(want);
    json_decref(job);
    f->passed = true;
}

static void kill_9_of_a_worker_mid_job_and_the_job_completes_on_another_worker(void **state)
{
    fixture_t *f = *state;
    worker_proc_t *a = start_worker(f, &(worker_opts_t){.id = "A", .lease_ms = 1000});
    char id[KILN_JOB_ID_MAX];
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":3000,\"steps\":30}}", id);
    /* Mid job: running on A, with progress reported. */
    job_cond_t mid = {f, id, "running", "A", true};
    if (!kiln_test_wait_until(job_cond_holds, &mid, 10000))
        fail_msg("job %s was not running with progress on A", id);

    kiln_test_kill(a->pid, SIGKILL, 5000);
    a->pid = 0;
    start_worker(f, &(worker_opts_t){.id = "B", .lease_ms = 1000});

    /* A's lease (1 s) runs out; B's sweep returns the job; B runs it (3 s). */
    json_t *job = wait_job(f, id, "completed", "B", 15000);
    assert_int_equal(jint(job, "attempts"), 2);
    json_decref(job);

    json_t *events = read_events(f);
    json_t *started = events_of(events, id, "started");
    json_t *stalled = events_of(events, id, "stalled");
    if (json_array_size(started) != 2 || json_array_size(stalled) != 1) {
        dump_json("events", events);
        fail_msg("expected 2 started events and 1 stalled event of %s", id);
    }
    assert_string_equal(jstr(json_array_get(started, 0), "worker"), "A");
    assert_string_equal(jstr(json_array_get(started, 0), "attempt"), "1");
    assert_string_equal(jstr(json_array_get(started, 1), "worker"), "B");
    assert_string_equal(jstr(json_array_get(started, 1), "attempt"), "2");
    assert_non_null(strstr(jstr(json_array_get(stalled, 0), "error"), "worker A"));
    json_decref(started);
    json_decref(stalled);
    json_decref(events);
    f->passed = true;
}

static void sigterm_returns_unfinished_jobs_to_pending_without_counting_an_attempt(void **state)
{
    fixture_t *f = *state;
    worker_proc_t *w = start_worker(f, &(worker_opts_t){.id = "leaving", .grace_ms = 300});
    char id[KILN_JOB_ID_MAX];
    /* Long enough that the grace period cannot cover it; short enough for
     * the second worker to finish it quickly. */
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":4000,\"steps\":40}}", id);
    json_decref(wait_job(f, id, "running", "leaving", 10000));

    int64_t t0 = kiln_test_now_ms();
    kill(w->pid, SIGTERM);
    int status = wait_worker_exit(w, 5000);
    expect_clean_exit(w, status);
    /* Promptly: the grace period (300 ms) and a little more, not the job. */
    assert_true(kiln_test_now_ms() - t0 < 3000);
    assert_true(file_contains(w->log_path, "handed 1 unfinished jobs back"));

    json_t *job = get_job(f, id);
    assert_string_equal(jstr(job, "state"), "pending");
    assert_int_equal(jint(job, "attempts"), 0);
    json_decref(job);
    json_t *events = read_events(f);
    json_t *released = events_of(events, id, "released");
    json_t *failed = events_of(events, id, "failed");
    assert_int_equal(json_array_size(released), 1);
    assert_int_equal(json_array_size(failed), 0);
    json_decref(released);
    json_decref(failed);
    json_decref(events);

    start_worker(f, &(worker_opts_t){.id = "fresh"});
    job = wait_job(f, id, "completed", "fresh", 15000);
    assert_int_equal(jint(job, "attempts"), 1);
    json_decref(job);
    f->passed = true;
}

static void sigterm_lets_short_jobs_finish_within_the_grace_period(void **state)
{
    fixture_t *f = *state;
    worker_proc_t *w = start_worker(f, &(worker_opts_t){.id = "patient", .grace_ms = 5000});
    char id[KILN_JOB_ID_MAX];
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":500,\"steps\":5}}", id);
    json_decref(wait_job(f, id, "running", "patient", 10000));
    int64_t signalled_at = wall_ms();
    kill(w->pid, SIGTERM);
    int status = wait_worker_exit(w, 10000);
    expect_clean_exit(w, status);
    json_t *job = get_job(f, id);
    assert_string_equal(jstr(job, "state"), "completed");
    assert_int_equal(jint(job, "attempts"), 1);
    /* It was still running when the signal came, and finished after it. */
    assert_true(jint(job, "finished_at") >= signalled_at - 5);
    json_decref(job);
    f->passed = true;
}

static void cancel_of_a_running_job_stops_it_on_the_worker(void **state)
{
    fixture_t *f = *state;
    worker_proc_t *w = start_worker(f, &(worker_opts_t){.id = "one-slot", .concurrency = 1});
    char long_id[KILN_JOB_ID_MAX], short_id[KILN_JOB_ID_MAX];
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":30000,\"steps\":30}}",
           long_id);
    json_decref(wait_job(f, long_id, "running", "one-slot", 10000));

    int64_t t0 = kiln_test_now_ms();
    kiln_err_t err = {0};
    if (kiln_broker_cancel(f->broker, long_id, &err) != 0)
        fail_msg("cancel %s: %s", long_id, err.msg);
    json_t *job = get_job(f, long_id);
    assert_string_equal(jstr(job, "state"), "cancelled");
    json_decref(job);

    /* The only slot is free again: a second job runs long before the first
     * one's 30 s would have passed. */
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":0}}", short_id);
    json_decref(wait_job(f, short_id, "completed", "one-slot", 5000));
    assert_true(kiln_test_now_ms() - t0 < 5000);
    wait_log(w, "cancelled; stopping", 2000);
    job = get_job(f, long_id);
    assert_string_equal(jstr(job, "state"), "cancelled");
    json_decref(job);
    f->passed = true;
}

static void retryable_failures_retry_with_backoff_then_succeed(void **state)
{
    fixture_t *f = *state;
    start_worker(f, &(worker_opts_t){.id = "retrier"});
    char id[KILN_JOB_ID_MAX];
    submit(f,
           "{\"service\":\"simulation\",\"max_attempts\":3,\"payload\":{\"duration_ms\":10,"
           "\"steps\":1,\"fail\":\"flaky gpu\",\"fail_attempts\":2}}",
           id);
    json_t *job = wait_job(f, id, "completed", NULL, 10000);
    assert_int_equal(jint(job, "attempts"), 3);
    json_decref(job);

    json_t *events = read_events(f);
    json_t *started = events_of(events, id, "started");
    json_t *retries = events_of(events, id, "retry_scheduled");
    if (json_array_size(started) != 3 || json_array_size(retries) != 2) {
        dump_json("events", events);
        fail_msg("expected 3 started and 2 retry_scheduled events of %s", id);
    }
    /* Backoff base 50 ms, max 200, equal jitter: attempt n waits between
     * half and all of min(200, 50 * 2^(n-1)); the next start waits for it. */
    for (size_t n = 0; n < 2; n++) {
        json_t *retry = json_array_get(retries, n);
        long long delay = strtoll(jstr(retry, "delay_ms"), NULL, 10);
        long long full = 50LL << n;
        if (delay < full / 2 || delay > full)
            fail_msg("retry %zu: delay %lld ms outside [%lld, %lld]", n + 1, delay, full / 2, full);
        assert_string_equal(jstr(retry, "error"), "flaky gpu");
        long long gap = jint(json_array_get(started, n + 1), "ms") - jint(retry, "ms");
        if (gap < delay - 5)
            fail_msg("attempt %zu started %lld ms after its retry was scheduled, before its "
                     "%lld ms backoff",
                     n + 2, gap, delay);
    }
    json_decref(started);
    json_decref(retries);
    json_decref(events);
    f->passed = true;
}

static void out_of_attempts_the_job_is_dead_with_its_last_error(void **state)
{
    fixture_t *f = *state;
    start_worker(f, &(worker_opts_t){.id = "doomed"});
    char id[KILN_JOB_ID_MAX];
    submit(f,
           "{\"service\":\"simulation\",\"max_attempts\":2,\"payload\":{\"duration_ms\":10,"
           "\"steps\":1,\"fail\":\"out of vram\"}}",
           id);
    json_t *job = wait_job(f, id, "dead", NULL, 10000);
    assert_int_equal(jint(job, "attempts"), 2);
    assert_string_equal(jstr(job, "error"), "out of vram");
    assert_true(json_is_true(json_object_get(job, "error_retryable")));
    assert_true(jint(job, "finished_at") > 0);
    json_decref(job);
    f->passed = true;
}

static void a_non_retryable_failure_fails_at_once_without_a_retry(void **state)
{
    fixture_t *f = *state;
    start_worker(f, &(worker_opts_t){.id = "strict"});
    char id[KILN_JOB_ID_MAX];
    submit(f,
           "{\"service\":\"simulation\",\"max_attempts\":3,\"payload\":{\"duration_ms\":10,"
           "\"steps\":1,\"fail\":\"model missing\",\"retryable\":false}}",
           id);
    json_t *job = wait_job(f, id, "failed", NULL, 10000);
    assert_int_equal(jint(job, "attempts"), 1);
    assert_string_equal(jstr(job, "error"), "model missing");
    assert_true(json_is_false(json_object_get(job, "error_retryable")));
    json_decref(job);
    f->passed = true;
}

static void priority_and_fifo_order_with_a_single_slot_worker(void **state)
{
    fixture_t *f = *state;
    static const int priorities[] = {0, 5, 0, 5, 10};
    char ids[5][KILN_JOB_ID_MAX];
    for (int i = 0; i < 5; i++) {
        char spec[160];
        snprintf(spec, sizeof spec,
                 "{\"service\":\"simulation\",\"priority\":%d,\"payload\":{\"duration_ms\":0}}",
                 priorities[i]);
        submit(f, spec, ids[i]);
    }
    start_worker(f, &(worker_opts_t){.id = "single", .concurrency = 1});
    wait_completed(f, 5, true, 10000);

    /* 10 first, then the 5s in submission order, then the 0s. */
    static const int expected[] = {4, 1, 3, 0, 2};
    json_t *events = read_events(f);
    json_t *started = events_of(events, NULL, "started");
    bool ok = json_array_size(started) == 5;
    for (size_t i = 0; ok && i < 5; i++)
        ok = strcmp(jstr(json_array_get(started, i), "job"), ids[expected[i]]) == 0;
    if (!ok) {
        dump_json("started events", started);
        fail_msg("expected the start order %s %s %s %s %s", ids[4], ids[1], ids[3], ids[0], ids[2]);
    }
    json_decref(started);
    json_decref(events);
    f->passed = true;
}

static void one_runnable_job_behind_ten_thousand_unrunnable_is_claimed_at_once(void **state)
{
    fixture_t *f = *state;
    submit_many(f,
                "{\"service\":\"simulation\",\"priority\":100,\"requirements\":"
                "{\"capabilities\":{\"gpu\":\"a100\"}},\"payload\":{\"duration_ms\":0}}",
                10000, NULL);
    char id[KILN_JOB_ID_MAX];
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":0}}", id);

    start_worker(f, &(worker_opts_t){.id = "no-gpu", .capabilities = "{\"gpu\":\"none\"}"});
    json_t *job = wait_job(f, id, "completed", "no-gpu", 5000);
    assert_int_equal(jint(job, "attempts"), 1);
    json_decref(job);

    json_t *stats = queue_stats(f);
    assert_int_equal(jint(stats, "pending"), 10000);
    assert_int_equal(jint(stats, "running"), 0);
    assert_int_equal(jint(stats, "completed"), 1);
    json_decref(stats);
    f->passed = true;
}

typedef struct subscribers_cond {
    fixture_t *f;
} subscribers_cond_t;

static bool notify_has_subscriber(void *ctx)
{
    subscribers_cond_t *c = ctx;
    redisContext *rc = kiln_test_redis_connect(c->f->redis);
    redisReply *r = redisCommand(rc, "PUBSUB NUMSUB %s", NOTIFY_KEY);
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->integer >= 1;
    if (r)
        freeReplyObject(r);
    redisFree(rc);
    return ok;
}

static void worker_wakes_on_submit_without_polling(void **state)
{
    fixture_t *f = *state;
    /* The default lease (30 s) sets the heartbeat, which doubles as the
     * worker's only polling, to 10 s. The registry is refreshed every
     * 500 ms, which tells us the worker has been idle for a while. */
    start_worker(
        f, &(worker_opts_t){.id = "sleeper", .extra_env = {"KILN_WORKER_REGISTRY_TTL_MS=1500"}});
    subscribers_cond_t sc = {f};
    if (!kiln_test_wait_until(notify_has_subscriber, &sc, 10000))
        fail_msg("the worker did not subscribe to %s", NOTIFY_KEY);
    wait_registered(f, "sleeper", 1000, 10000);

    char id[KILN_JOB_ID_MAX];
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":0}}", id);
    /* Well before the first heartbeat (10 s after start) could find it. */
    json_t *job = wait_job(f, id, "completed", "sleeper", 3000);
    assert_true(jint(job, "started_at") - jint(job, "created_at") < 2000);
    json_decref(job);
    f->passed = true;
}

static void two_workers_never_run_the_same_job_twice(void **state)
{
    fixture_t *f = *state;
    start_worker(f, &(worker_opts_t){.id = "left", .concurrency = 4});
    start_worker(f, &(worker_opts_t){.id = "right", .concurrency = 4});
    subscribers_cond_t sc = {f};
    assert_true(kiln_test_wait_until(notify_has_subscriber, &sc, 10000));
    enum { N = 200 };
    char(*ids)[KILN_JOB_ID_MAX] = calloc(N, KILN_JOB_ID_MAX);
    submit_many(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":0,\"steps\":1}}", N,
                ids);
    wait_completed(f, N, true, 20000);

    json_t *events = read_events(f);
    for (int i = 0; i < N; i++) {
        json_t *started = events_of(events, ids[i], "started");
        json_t *completed = events_of(events, ids[i], "completed");
        if (json_array_size(started) != 1 || json_array_size(completed) != 1) {
            json_t *of_job = events_of(events, ids[i], NULL);
            dump_json("events of the job", of_job);
            json_decref(of_job);
            fail_msg("job %s: %zu started and %zu completed events, expected 1 and 1", ids[i],
                     json_array_size(started), json_array_size(completed));
        }
        json_decref(started);
        json_decref(completed);
    }
    json_t *all_started = events_of(events, NULL, "started");
    assert_int_equal(json_array_size(all_started), N);
    json_decref(all_started);
    json_decref(events);
    free(ids);
    f->passed = true;
}

static void redis_restart_with_aof_under_busy_workers_loses_no_job(void **state)
{
    fixture_t *f = *state;
    use_own_redis(f, true);
    /* A short lease, so a claim whose reply the restart swallowed is
     * recovered quickly. */
    worker_proc_t *busy[2] = {
        start_worker(f, &(worker_opts_t){.id = "busy-1", .concurrency = 4, .lease_ms = 2000}),
        start_worker(f, &(worker_opts_t){.id = "busy-2", .concurrency = 4, .lease_ms = 2000})};
    enum { N = 300 };
    char(*ids)[KILN_JOB_ID_MAX] = calloc(N, KILN_JOB_ID_MAX);
    submit_many(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":20,\"steps\":2}}", N,
                ids);
    wait_completed(f, 20, false, 10000);
    json_t *stats = queue_stats(f);
    long long completed_before = jint(stats, "completed");
    json_decref(stats);
    /* The restart has to happen while work remains, or it tests nothing. */
    assert_true(completed_before < N);

    kiln_broker_free(f->broker);
    f->broker = NULL;
    kiln_test_redis_restart(&f->own_redis);
    broker_connect(f);

    wait_completed(f, N, true, 30000);
    stats = queue_stats(f);
    assert_int_equal(jint(stats, "completed"), N);
    assert_int_equal(jint(stats, "failed"), 0);
    assert_int_equal(jint(stats, "cancelled"), 0);
    json_decref(stats);
    for (int i = 0; i < N; i++) {
        json_t *job = get_job(f, ids[i]);
        if (strcmp(jstr(job, "state"), "completed") != 0) {
            dump_json("job", job);
            fail_msg("job %s is not completed", ids[i]);
        }
        json_decref(job);
    }
    /* Both workers saw the outage and came back by themselves. */
    for (int i = 0; i < 2; i++) {
        wait_log(busy[i], "redis connection lost", 1000);
        char *log = slurp(busy[i]->log_path);
        int connects = 0;
        for (const char *p = log; (p = strstr(p, "connected to redis")); p++)
            connects++;
        free(log);
        if (connects < 2)
            fail_msg("worker %s connected %d times, expected a reconnect", busy[i]->id, connects);
    }
    fprintf(stderr, "  (%lld of %d jobs were completed when redis restarted)\n", completed_before,
            N);
    free(ids);
    f->passed = true;
}

/* Kills worker id's subscriber connection (subscriber true) or its command
 * connection, found by the name every worker connection carries. Returns
 * how many it killed. */
static int kill_worker_connection(fixture_t *f, const char *id, bool subscriber)
{
    redisContext *c = kiln_test_redis_connect(f->redis);
    redisReply *list = redisCommand(c, "CLIENT LIST");
    char name[160];
    snprintf(name, sizeof name, " name=kiln-worker:%s ", id);
    int killed = 0;
    for (char *line = list->str; line && *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        bool is_sub = strstr(line, " sub=0 ") == NULL;
        long long client_id = 0;
        if (strstr(line, name) && is_sub == subscriber &&
            sscanf(line, "id=%lld", &client_id) == 1) {
            freeReplyObject(redisCommand(c, "CLIENT KILL ID %lld", client_id));
            killed++;
        }
        line = end ? end + 1 : NULL;
    }
    freeReplyObject(list);
    redisFree(c);
    return killed;
}

static void losing_only_the_subscriber_connection_does_not_stop_the_worker(void **state)
{
    fixture_t *f = *state;
    start_worker(f, &(worker_opts_t){.id = "half", .concurrency = 1});
    char first[KILN_JOB_ID_MAX], second[KILN_JOB_ID_MAX];
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":0}}", first);
    json_decref(wait_job(f, first, "completed", NULL, 10000));
    assert_int_equal(kill_worker_connection(f, "half", true), 1);
    /* Work goes on through the command connection; the subscriber comes
     * back by itself. Well inside one heartbeat (10 s): not the sweep. */
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":0}}", second);
    json_decref(wait_job(f, second, "completed", NULL, 8000));
    wait_log(&f->workers[0], "resubscribing", 1000);
    f->passed = true;
}

static void script_flush_while_a_job_runs_does_not_lose_its_lease(void **state)
{
    fixture_t *f = *state;
    start_worker(f, &(worker_opts_t){.id = "flushed", .concurrency = 1, .lease_ms = 1500});
    char id[KILN_JOB_ID_MAX];
    submit(f,
           "{\"service\":\"simulation\",\"max_attempts\":1,"
           "\"payload\":{\"duration_ms\":4000,\"steps\":8}}",
           id);
    json_decref(wait_job(f, id, "running", "flushed", 10000));
    redisContext *c = kiln_test_redis_connect(f->redis);
    freeReplyObject(redisCommand(c, "SCRIPT FLUSH"));
    redisFree(c);
    /* Heartbeats every 500 ms must get through, or the 1.5 s lease expires
     * and the job dies (one attempt only). */
    json_t *job = wait_job(f, id, "completed", NULL, 15000);
    assert_int_equal(jint(job, "attempts"), 1);
    json_decref(job);
    f->passed = true;
}

static void sigterm_under_load_fails_no_job(void **state)
{
    fixture_t *f = *state;
    enum { N = 1000 };
    worker_proc_t *w = start_worker(f, &(worker_opts_t){.id = "loaded", .grace_ms = 500});
    char(*ids)[KILN_JOB_ID_MAX] = calloc(N, KILN_JOB_ID_MAX);
    submit_many(f,
                "{\"service\":\"simulation\",\"max_attempts\":1,\"payload\":{\"duration_ms\":2}}",
                N, ids);
    wait_completed(f, 30, false, 10000);
    /* Stop while steps are out: their claims must go back, not die. */
    kill(w->pid, SIGTERM);
    expect_clean_exit(w, wait_worker_exit(w, 8000));
    start_worker(f, &(worker_opts_t){.id = "after", .concurrency = 4});
    wait_completed(f, N, true, 30000);
    json_t *stats = queue_stats(f);
    assert_int_equal(jint(stats, "dead"), 0);
    assert_int_equal(jint(stats, "completed"), N);
    json_decref(stats);
    free(ids);
    f->passed = true;
}

static void killing_the_command_connection_under_load_loses_no_claim(void **state)
{
    fixture_t *f = *state;
    enum { N = 600 };
    start_worker(f, &(worker_opts_t){.id = "cut", .concurrency = 4, .lease_ms = 2000});
    char(*ids)[KILN_JOB_ID_MAX] = calloc(N, KILN_JOB_ID_MAX);
    submit_many(f,
                "{\"service\":\"simulation\",\"max_attempts\":1,\"payload\":{\"duration_ms\":1}}",
                N, ids);
    for (long long target = 60; target <= 300; target += 60) {
        wait_completed(f, target, false, 15000);
        kill_worker_connection(f, "cut", false);
    }
    /* A claim whose reply died with the connection is handed back at the
     * reconnect; without that it would expire and, with one attempt, die. */
    wait_completed(f, N, true, 30000);
    json_t *stats = queue_stats(f);
    assert_int_equal(jint(stats, "dead"), 0);
    json_decref(stats);
    free(ids);
    f->passed = true;
}

/* Redis accepts connections while it is still loading its data, answering
 * -LOADING to every command until it is done. A worker that reconnects in
 * that window has to keep trying and then work as before. (An earlier
 * worker took the refused step for a lost connection but kept the open
 * one, so it never became ready again: it claimed nothing more, sent no
 * heartbeats and did not stop on SIGTERM.) */
static void worker_reconnecting_while_redis_loads_its_data_resumes_work(void **state)
{
    fixture_t *f = *state;
    use_own_redis(f, true);
    /* About a second of loading after the restart. */
    redisContext *c = kiln_test_redis_connect(f->redis);
    redisReply *r = redisCommand(
        c, "EVAL %s 0", "for i = 1, 1000000 do redis.call('SET', 'pad:' .. i, 'x') end return 1");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    redisFree(c);

    worker_proc_t *w = start_worker(f, &(worker_opts_t){.id = "reloader"});
    char id[KILN_JOB_ID_MAX];
    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":0}}", id);
    json_decref(wait_job(f, id, "completed", "reloader", 5000));

    kiln_broker_free(f->broker);
    f->broker = NULL;
    kiln_test_redis_restart(&f->own_redis);
    broker_connect(f);

    submit(f, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":0}}", id);
    json_decref(wait_job(f, id, "completed", "reloader", 10000));
    /* The worker did meet Redis while it was loading, or this tests nothing. */
    assert_true(file_contains(w->log_path, "LOADING"));
    kill(w->pid, SIGTERM);
    expect_clean_exit(w, wait_worker_exit(w, 5000));
    f->passed = true;
}

static bool worker_listed_in(const json_t *workers, const char *id, json_t **found)
{
    size_t i;
    json_t *w;
    json_array_foreach(workers, i, w)
    {
        if (strcmp(jstr(w, "id"), id) == 0) {
            if (found)
                *found = w;
            return true;
        }
    }
    return false;
}

static json_t *cli_workers_json(fixture_t *f)
{
    char *argv[] = {KILN_BIN, "workers", "--json", "--redis", f->redis->url, NULL};
    static char out[65536];
    int code = kiln_test_run(argv, NULL, out, sizeof out);
    if (code != 0)
        fail_msg("kiln workers --json exited %d: %s", code, out);
    json_error_t jerr;
    json_t *workers = json_loads(out, 0, &jerr);
    if (!json_is_array(workers))
        fail_msg("kiln workers --json printed no JSON array (%s): %s", jerr.text, out);
    return workers;
}

static void worker_registers_itself_and_disappears_after_stop(void **state)
{
    fixture_t *f = *state;
    worker_proc_t *w = start_worker(f, &(worker_opts_t){.id = "visible", .concurrency = 3});
    wait_registered(f, "visible", 0, 10000);

    json_t *record = registered_worker(f, "visible");
    json_t *services = json_object_get(record, "services");
    assert_int_equal(json_array_size(services), 1);
    assert_string_equal(json_string_value(json_array_get(services, 0)), SERVICE);
    assert_int_equal(jint(record, "concurrency"), 3);
    assert_int_equal(jint(record, "busy"), 0);
    assert_int_equal(jint(record, "pid"), w->pid);
    json_decref(record);

    json_t *listed = cli_workers_json(f), *entry = NULL;
    assert_true(worker_listed_in(listed, "visible", &entry));
    assert_int_equal(jint(entry, "concurrency"), 3);
    json_decref(listed);

    kill(w->pid, SIGTERM);
    expect_clean_exit(w, wait_worker_exit(w, 5000));
    record = registered_worker(f, "visible");
    if (record) {
        dump_json("still registered", record);
        fail_msg("worker visible is still registered after it stopped");
    }
    listed = cli_workers_json(f);
    assert_false(worker_listed_in(listed, "visible", NULL));
    json_decref(listed);
    f->passed = true;
}

/* Runs `kiln worker` with extra args and env expecting it to refuse to
 * start: exit code 2 and a message naming what is wrong. */
static void expect_worker_refuses(fixture_t *f, const char *name, char *const args[],
                                  char *const env[], const char *problem)
{
    char log_path[400];
    snprintf(log_path, sizeof log_path, "%s/%02d-%s.log", log_dir, f->seq, name);
    char *argv[24] = {KILN_BIN, "worker", "--redis", f->redis->url, "--log-format", "text"};
    int argc = 6;
    for (int i = 0; args[i] && argc < 23; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    pid_t pid = kiln_test_spawn(argv, env, log_path);
    int status = kiln_test_wait_exit(pid, 10000);
    if (status == -1) {
        kiln_test_kill(pid, SIGKILL, 5000);
        kiln_test_dump_file(name, log_path);
        fail_msg("%s: the worker started instead of refusing", name);
    }
    char *out = slurp(log_path);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 2 || !strstr(out, problem)) {
        kiln_test_dump_file(name, log_path);
        free(out);
        fail_msg("%s: expected exit 2 naming \"%s\", got status 0x%x", name, problem, status);
    }
    free(out);
}

static void bad_worker_config_exits_2_and_names_the_problem(void **state)
{
    fixture_t *f = *state;
    expect_worker_refuses(f, "zero-concurrency",
                          (char *[]){"--connectors", SERVICE, "--concurrency", "0", NULL}, NULL,
                          "--concurrency");
    expect_worker_refuses(f, "unknown-connector", (char *[]){"--connectors", "warpdrive", NULL},
                          NULL, "warpdrive");
    /* checked by the same rules as WORKER_CONNECTORS */
    expect_worker_refuses(f, "bad-connector-name", (char *[]){"--connectors", "Bad_Name", NULL},
                          NULL, "--connectors");
    expect_worker_refuses(f, "no-connectors", (char *[]){NULL},
                          (char *[]){"KILN_WORKER_CONNECTORS=", "WORKER_CONNECTORS=", NULL},
                          "connectors");
    expect_worker_refuses(f, "bad-lease", (char *[]){"--connectors", SERVICE, NULL},
                          (char *[]){"KILN_BROKER_LEASE_MS=10s", NULL}, "KILN_BROKER_LEASE_MS");
    expect_worker_refuses(f, "bad-capabilities",
                          (char *[]){"--connectors", SERVICE, "--capabilities", "[1,2]", NULL},
                          NULL, "--capabilities");
    /* None of them got as far as registering. */
    json_t *workers = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_list_workers(f->broker, &workers, &err), 0);
    assert_int_equal(json_array_size(workers), 0);
    json_decref(workers);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            a_submitted_job_runs_on_a_worker_and_completes_with_its_result, setup, teardown),
        cmocka_unit_test_setup_teardown(
            kill_9_of_a_worker_mid_job_and_the_job_completes_on_another_worker, setup, teardown),
        cmocka_unit_test_setup_teardown(
            sigterm_returns_unfinished_jobs_to_pending_without_counting_an_attempt, setup,
            teardown),
        cmocka_unit_test_setup_teardown(sigterm_lets_short_jobs_finish_within_the_grace_period,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cancel_of_a_running_job_stops_it_on_the_worker, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(retryable_failures_retry_with_backoff_then_succeed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(out_of_attempts_the_job_is_dead_with_its_last_error, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(a_non_retryable_failure_fails_at_once_without_a_retry,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(priority_and_fifo_order_with_a_single_slot_worker, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            one_runnable_job_behind_ten_thousand_unrunnable_is_claimed_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(worker_wakes_on_submit_without_polling, setup, teardown),
        cmocka_unit_test_setup_teardown(two_workers_never_run_the_same_job_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(redis_restart_with_aof_under_busy_workers_loses_no_job,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(worker_reconnecting_while_redis_loads_its_data_resumes_work,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            losing_only_the_subscriber_connection_does_not_stop_the_worker, setup, teardown),
        cmocka_unit_test_setup_teardown(script_flush_while_a_job_runs_does_not_lose_its_lease,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(sigterm_under_load_fails_no_job, setup, teardown),
        cmocka_unit_test_setup_teardown(killing_the_command_connection_under_load_loses_no_claim,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(worker_registers_itself_and_disappears_after_stop, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(bad_worker_config_exits_2_and_names_the_problem, setup,
                                        teardown),
    };
    /* KILN_TEST_FILTER=pattern (cmocka's * and ? wildcards) runs a subset. */
    const char *filter = getenv("KILN_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, start_shared_redis, stop_shared_redis);
}

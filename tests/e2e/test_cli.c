/*
 * End-to-end tests of the job subcommands: the real kiln binary against a
 * real redis-server, output read the way a user or a script reads it.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kiln_test.h"

#define RUN_TIMEOUT_MS 60000
#define OUTPUT_MAX     (8 * 1024 * 1024)

static kiln_test_redis_t redis;
static char tmpdir[256];

/* ---- Running the binary ----------------------------------------------------- */

typedef struct run_result {
    int code;  /* exit code; -1 when killed by a signal or timed out */
    char *out; /* stdout, NUL-terminated */
    char *err; /* stderr, NUL-terminated */
} run_result_t;

static char *slurp(const char *path)
{
    struct stat st;
    size_t size = stat(path, &st) == 0 ? (size_t)st.st_size : 0;
    if (size > OUTPUT_MAX)
        size = OUTPUT_MAX;
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

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* Runs kiln with args (NULL-terminated), stdin from stdin_text (may be
 * NULL), stdout and stderr captured through files so no pipe can fill up. */
static void run_argv(run_result_t *r, const char *stdin_text, char *const args[])
{
    char in_path[300], out_path[300], err_path[300];
    snprintf(in_path, sizeof in_path, "%s/stdin", tmpdir);
    snprintf(out_path, sizeof out_path, "%s/stdout", tmpdir);
    snprintf(err_path, sizeof err_path, "%s/stderr", tmpdir);
    write_file(in_path, stdin_text ? stdin_text : "", stdin_text ? strlen(stdin_text) : 0);
    char *argv[64] = {KILN_BIN};
    size_t n = 1;
    for (size_t i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int in = open(in_path, O_RDONLY);
        int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int status = kiln_test_wait_exit(pid, RUN_TIMEOUT_MS);
    if (status == -1) {
        kiln_test_kill(pid, SIGKILL, 5000);
        r->code = -1;
    } else {
        r->code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    r->out = slurp(out_path);
    r->err = slurp(err_path);
}

#define RUN(r, ...)           run_argv((r), NULL, (char *const[]){__VA_ARGS__, NULL})
#define RUN_STDIN(r, in, ...) run_argv((r), (in), (char *const[]){__VA_ARGS__, NULL})

static void run_free(run_result_t *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

/* Fails with both outputs shown when the exit code is not the one expected. */
static void expect_code(const run_result_t *r, int code)
{
    if (r->code != code) {
        fprintf(stderr, "exit code %d, expected %d\n--- stdout ---\n%s\n--- stderr ---\n%s\n",
                r->code, code, r->out, r->err);
        fail();
    }
}

static void expect_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle)) {
        fprintf(stderr, "expected to find \"%s\" in:\n%s\n", needle, haystack);
        fail();
    }
}

static json_t *parse_json(const char *text)
{
    json_error_t jerr;
    json_t *value = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!value)
        fail_msg("not JSON (%s): %s", jerr.text, text);
    return value;
}

static long long dbsize(void)
{
    redisContext *c = kiln_test_redis_connect(&redis);
    redisReply *reply = redisCommand(c, "DBSIZE");
    assert_non_null(reply);
    long long n = reply->integer;
    freeReplyObject(reply);
    redisFree(c);
    return n;
}

/* Submits one job and copies its id into id. */
static void submit(char *id, size_t size, const char *service, const char *payload)
{
    run_result_t r;
    RUN(&r, "submit", (char *)service, "--payload", (char *)payload, "--redis", redis.url);
    expect_code(&r, 0);
    snprintf(id, size, "%.*s", (int)strcspn(r.out, "\n"), r.out);
    run_free(&r);
}

/* The job's state, read back through `kiln job ID --json`. */
static char *job_state(const char *id, char *state, size_t size)
{
    run_result_t r;
    RUN(&r, "job", (char *)id, "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *job = parse_json(r.out);
    snprintf(state, size, "%s", json_string_value(json_object_get(job, "state")));
    json_decref(job);
    run_free(&r);
    return state;
}

/* ---- Fixtures --------------------------------------------------------------- */

static int start_redis(void **state)
{
    kiln_test_tmpdir(tmpdir, sizeof tmpdir);
    kiln_test_redis_start(&redis, false);
    return 0;
}

static int stop_redis(void **state)
{
    kiln_test_redis_destroy(&redis);
    char *argv[] = {"/bin/rm", "-rf", tmpdir, NULL};
    kiln_test_run(argv, NULL, NULL, 0);
    return 0;
}

static int flush_redis(void **state)
{
    redisContext *c = kiln_test_redis_connect(&redis);
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    redisFree(c);
    return 0;
}

/* ---- submit ------------------------------------------------------------------ */

static void submit_prints_an_id_and_the_job_is_pending(void **state)
{
    run_result_t r;
    RUN(&r, "submit", "simulation", "--payload", "{\"steps\":3}", "--priority", "5", "--redis",
        redis.url);
    expect_code(&r, 0);
    assert_true(strncmp(r.out, "simulation.", 11) == 0);
    char id[128];
    snprintf(id, sizeof id, "%.*s", (int)strcspn(r.out, "\n"), r.out);
    run_free(&r);

    RUN(&r, "job", id, "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *job = parse_json(r.out);
    assert_string_equal(json_string_value(json_object_get(job, "state")), "pending");
    assert_string_equal(json_string_value(json_object_get(job, "service")), "simulation");
    assert_int_equal(json_integer_value(json_object_get(job, "priority")), 5);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(job, "payload"), "steps")),
                     3);
    json_decref(job);
    run_free(&r);

    RUN(&r, "job", id, "--redis", redis.url);
    expect_code(&r, 0);
    expect_contains(r.out, "state:");
    expect_contains(r.out, "pending");
    run_free(&r);
}

static void submit_json_prints_the_id_and_duplicate_flag(void **state)
{
    run_result_t r;
    RUN(&r, "submit", "simulation", "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *reply = parse_json(r.out);
    assert_true(json_is_string(json_object_get(reply, "id")));
    assert_true(json_is_false(json_object_get(reply, "duplicate")));
    json_decref(reply);
    run_free(&r);
}

static void submit_with_bad_priority_exits_2_names_the_field_and_writes_nothing(void **state)
{
    long long before = dbsize();
    run_result_t r;
    RUN(&r, "submit", "simulation", "--priority", "5000", "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "priority");
    run_free(&r);

    RUN(&r, "submit", "simulation", "--priority", "high", "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "--priority");
    run_free(&r);
    assert_int_equal(dbsize(), before);
}

static void submit_with_malformed_payload_json_exits_2(void **state)
{
    long long before = dbsize();
    run_result_t r;
    RUN(&r, "submit", "simulation", "--payload", "{\"steps\":", "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "--payload");
    expect_contains(r.err, "invalid JSON");
    run_free(&r);

    /* Invalid UTF-8 inside a JSON string is malformed JSON too. */
    RUN(&r, "submit", "simulation", "--payload", "\"\xff\xfe\"", "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "--payload");
    run_free(&r);

    RUN(&r, "submit", "simulation", "--requires", "[1,", "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "--requires");
    run_free(&r);
    assert_int_equal(dbsize(), before);
}

static void submit_oversized_payload_is_refused(void **state)
{
    long long before = dbsize();
    /* Just over the default 1 MiB limit: the broker's validator refuses it. */
    size_t len = 1100 * 1000;
    char *big = malloc(len + 1);
    assert_non_null(big);
    memset(big, 'a', len);
    big[0] = '"';
    big[len - 1] = '"';
    big[len] = '\0';
    char path[300];
    snprintf(path, sizeof path, "%s/big.json", tmpdir);
    write_file(path, big, len);
    run_result_t r;
    RUN(&r, "submit", "simulation", "--payload-file", path, "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "payload");
    run_free(&r);
    free(big);

    /* Far over it on stdin: refused while reading, before parsing. */
    len = 3 * 1024 * 1024;
    big = malloc(len + 1);
    assert_non_null(big);
    memset(big, ' ', len);
    big[len] = '\0';
    RUN_STDIN(&r, big, "submit", "simulation", "--payload-file", "-", "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "payload");
    run_free(&r);
    free(big);
    assert_int_equal(dbsize(), before);
}

static void submit_accepts_a_large_inline_payload_within_the_limit(void **state)
{
    size_t len = 100 * 1000;
    char *payload = malloc(len + 32);
    assert_non_null(payload);
    strcpy(payload, "{\"blob\":\"");
    size_t used = strlen(payload);
    memset(payload + used, 'x', len);
    strcpy(payload + used + len, "\"}");
    char id[128];
    submit(id, sizeof id, "simulation", payload);
    run_result_t r;
    RUN(&r, "job", id, "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *job = parse_json(r.out);
    const char *blob = json_string_value(json_object_get(json_object_get(job, "payload"), "blob"));
    assert_non_null(blob);
    assert_int_equal(strlen(blob), len);
    json_decref(job);
    run_free(&r);
    free(payload);
}

static void submit_refuses_service_names_with_braces_slashes_or_spaces(void **state)
{
    static char *const bad[] = {"a{b}", "x/y", "two words", "", "UPPER", "\xff\xfe"};
    long long before = dbsize();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run_result_t r;
        RUN(&r, "submit", bad[i], "--redis", redis.url);
        expect_code(&r, 2);
        expect_contains(r.err, "service");
        run_free(&r);
    }
    run_result_t r;
    RUN(&r, "submit", "simulation", "--customer", "\xc3\x28", "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "--customer");
    run_free(&r);
    assert_int_equal(dbsize(), before);
}

static void submit_spec_fields_are_overridden_by_flags(void **state)
{
    char path[300];
    snprintf(path, sizeof path, "%s/spec.json", tmpdir);
    const char *spec = "{\"service\":\"simulation\",\"priority\":3,\"payload\":{\"steps\":2}}";
    write_file(path, spec, strlen(spec));
    char at_path[310];
    snprintf(at_path, sizeof at_path, "@%s", path);
    run_result_t r;
    RUN(&r, "submit", "--spec", at_path, "--priority", "7", "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *reply = parse_json(r.out);
    char id[128];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(reply, "id")));
    json_decref(reply);
    run_free(&r);

    RUN(&r, "job", id, "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *job = parse_json(r.out);
    assert_int_equal(json_integer_value(json_object_get(job, "priority")), 7);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(job, "payload"), "steps")),
                     2);
    json_decref(job);
    run_free(&r);

    RUN(&r, "submit", "--spec", "{\"service\":\"simulation\",\"colour\":\"red\"}", "--redis",
        redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "colour");
    run_free(&r);
}

static void submit_count_batches_jobs(void **state)
{
    run_result_t r;
    RUN(&r, "submit", "simulation", "--count", "2500", "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *reply = parse_json(r.out);
    json_t *ids = json_object_get(reply, "ids");
    assert_int_equal(json_array_size(ids), 2500);
    /* Every id distinct: the copies are separate jobs. */
    json_t *seen = json_object();
    size_t i;
    json_t *id;
    json_array_foreach(ids, i, id)
    {
        assert_null(json_object_get(seen, json_string_value(id)));
        json_object_set_new(seen, json_string_value(id), json_true());
    }
    json_decref(seen);
    json_decref(reply);
    run_free(&r);

    RUN(&r, "queues", "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *stats = parse_json(r.out);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(stats, 0), "pending")),
                     2500);
    json_decref(stats);
    run_free(&r);

    RUN(&r, "submit", "simulation", "--count", "0", "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "--count");
    run_free(&r);
}

static void idempotency_key_returns_the_same_id(void **state)
{
    run_result_t first, second;
    RUN(&first, "submit", "simulation", "--idempotency-key", "order-17", "--json", "--redis",
        redis.url);
    expect_code(&first, 0);
    RUN(&second, "submit", "simulation", "--idempotency-key", "order-17", "--json", "--redis",
        redis.url);
    expect_code(&second, 0);
    json_t *a = parse_json(first.out), *b = parse_json(second.out);
    assert_string_equal(json_string_value(json_object_get(a, "id")),
                        json_string_value(json_object_get(b, "id")));
    assert_true(json_is_false(json_object_get(a, "duplicate")));
    assert_true(json_is_true(json_object_get(b, "duplicate")));
    json_decref(a);
    json_decref(b);
    run_free(&first);
    run_free(&second);

    run_result_t r;
    RUN(&r, "queues", "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *stats = parse_json(r.out);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(stats, 0), "pending")), 1);
    json_decref(stats);
    run_free(&r);
}

/* ---- jobs, cancel, retry ----------------------------------------------------- */

static void jobs_filters_by_status_and_service(void **state)
{
    char keep[128], gone[128], other[128];
    submit(keep, sizeof keep, "simulation", "{}");
    submit(gone, sizeof gone, "simulation", "{}");
    submit(other, sizeof other, "render", "{}");
    run_result_t r;
    RUN(&r, "cancel", gone, "--redis", redis.url);
    expect_code(&r, 0);
    run_free(&r);

    RUN(&r, "jobs", "--service", "simulation", "--status", "pending", "--json", "--redis",
        redis.url);
    expect_code(&r, 0);
    json_t *jobs = parse_json(r.out);
    assert_int_equal(json_array_size(jobs), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(jobs, 0), "id")), keep);
    json_decref(jobs);
    run_free(&r);

    RUN(&r, "jobs", "--status", "cancelled", "--json", "--redis", redis.url);
    expect_code(&r, 0);
    jobs = parse_json(r.out);
    assert_int_equal(json_array_size(jobs), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(jobs, 0), "id")), gone);
    json_decref(jobs);
    run_free(&r);

    RUN(&r, "jobs", "--redis", redis.url);
    expect_code(&r, 0);
    expect_contains(r.out, "ID");
    expect_contains(r.out, "ATTEMPTS");
    expect_contains(r.out, keep);
    expect_contains(r.out, other);
    run_free(&r);

    RUN(&r, "jobs", "--status", "sleeping", "--redis", redis.url);
    expect_code(&r, 2);
    expect_contains(r.err, "pending, delayed, running, completed, failed, cancelled, dead");
    run_free(&r);
}

static void cancel_pending_job(void **state)
{
    char id[128], line[160], st[32];
    submit(id, sizeof id, "simulation", "{}");
    run_result_t r;
    RUN(&r, "cancel", id, "--redis", redis.url);
    expect_code(&r, 0);
    snprintf(line, sizeof line, "cancelled %s\n", id);
    assert_string_equal(r.out, line);
    run_free(&r);
    assert_string_equal(job_state(id, st, sizeof st), "cancelled");

    /* A second cancel finds it finished; one bad id fails the whole command. */
    RUN(&r, "cancel", id, "--redis", redis.url);
    expect_code(&r, 1);
    expect_contains(r.err, id);
    run_free(&r);
}

static void retry_of_a_pending_job_is_refused(void **state)
{
    char id[128], st[32];
    submit(id, sizeof id, "simulation", "{}");
    run_result_t r;
    RUN(&r, "retry", id, "--redis", redis.url);
    expect_code(&r, 1);
    expect_contains(r.err, id);
    run_free(&r);
    assert_string_equal(job_state(id, st, sizeof st), "pending");

    /* Once cancelled it can be retried, back to pending. */
    RUN(&r, "cancel", id, "--redis", redis.url);
    expect_code(&r, 0);
    run_free(&r);
    RUN(&r, "retry", id, "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *results = parse_json(r.out);
    assert_true(json_is_true(json_object_get(json_array_get(results, 0), "ok")));
    json_decref(results);
    run_free(&r);
    assert_string_equal(job_state(id, st, sizeof st), "pending");
}

/* ---- queues, workers, errors ------------------------------------------------- */

static void queues_json_counts_pending(void **state)
{
    char id[128];
    for (int i = 0; i < 3; i++)
        submit(id, sizeof id, "simulation", "{}");
    submit(id, sizeof id, "render", "{}");
    run_result_t r;
    RUN(&r, "queues", "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *stats = parse_json(r.out);
    assert_int_equal(json_array_size(stats), 2);
    size_t i;
    json_t *q;
    json_array_foreach(stats, i, q)
    {
        const char *service = json_string_value(json_object_get(q, "service"));
        long long expected = strcmp(service, "simulation") == 0 ? 3 : 1;
        assert_int_equal(json_integer_value(json_object_get(q, "pending")), expected);
    }
    json_decref(stats);
    run_free(&r);

    RUN(&r, "queues", "--redis", redis.url);
    expect_code(&r, 0);
    expect_contains(r.out, "OLDEST-WAIT");
    expect_contains(r.out, "simulation");
    expect_contains(r.out, "render");
    run_free(&r);
}

static void workers_lists_nothing_without_workers(void **state)
{
    run_result_t r;
    RUN(&r, "workers", "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *workers = parse_json(r.out);
    assert_int_equal(json_array_size(workers), 0);
    json_decref(workers);
    run_free(&r);
    RUN(&r, "workers", "--redis", redis.url);
    expect_code(&r, 0);
    expect_contains(r.out, "MACHINE");
    run_free(&r);
}

static void job_unknown_id_exits_1(void **state)
{
    run_result_t r;
    RUN(&r, "job", "simulation.999999", "--redis", redis.url);
    expect_code(&r, 1);
    expect_contains(r.err, "not found");
    assert_string_equal(r.out, "");
    run_free(&r);
}

static void job_with_injection_like_id_fails_cleanly(void **state)
{
    static char *const ids[] = {"x}{y", "{simulation}.1",        "simulation.1 FLUSHALL",
                                "*",    "simulation.1\r\nDEL x", "\x1b[31mred"};
    long long before = dbsize();
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        run_result_t r;
        RUN(&r, "job", ids[i], "--redis", redis.url);
        if (r.code != 1 && r.code != 2)
            expect_code(&r, 1);
        assert_true(r.err[0] != '\0');
        assert_null(strchr(r.err, '\x1b')); /* nothing steers the terminal */
        run_free(&r);
    }
    assert_int_equal(dbsize(), before);
}

static void redis_unreachable_exits_3(void **state)
{
    /* A port nothing listens on: our own redis, stopped and not restarted. */
    kiln_test_redis_t gone;
    kiln_test_redis_start(&gone, false);
    kiln_test_redis_stop(&gone);
    static const char *const cmds[][3] = {
        {"queues", NULL, NULL},         {"workers", NULL, NULL},
        {"jobs", NULL, NULL},           {"job", "simulation.1", NULL},
        {"submit", "simulation", NULL}, {"cancel", "simulation.1", NULL}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        run_result_t r;
        if (cmds[i][1])
            RUN(&r, (char *)cmds[i][0], (char *)cmds[i][1], "--redis", gone.url);
        else
            RUN(&r, (char *)cmds[i][0], "--redis", gone.url);
        expect_code(&r, 3);
        assert_true(r.err[0] != '\0');
        run_free(&r);
    }
    kiln_test_redis_destroy(&gone);
}

static void job_wait_times_out_with_exit_4(void **state)
{
    char id[128];
    submit(id, sizeof id, "nobody-serves-this", "{}");
    run_result_t r;
    RUN(&r, "job", id, "--wait", "--timeout", "0.3", "--redis", redis.url);
    expect_code(&r, 4);
    expect_contains(r.err, "pending");
    run_free(&r);
}

static void help_on_every_command_exits_0(void **state)
{
    static char *const cmds[] = {"submit", "job", "jobs", "cancel", "retry", "queues", "workers"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char usage[64];
        snprintf(usage, sizeof usage, "usage: kiln %s", cmds[i]);
        run_result_t r;
        RUN(&r, cmds[i], "--help");
        expect_code(&r, 0);
        expect_contains(r.out, usage);
        expect_contains(r.out, "exit codes");
        run_free(&r);
    }
    run_result_t r;
    RUN(&r, "--help");
    expect_code(&r, 0);
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        expect_contains(r.out, cmds[i]);
    run_free(&r);
}

/* ---- With a real worker ------------------------------------------------------ */

typedef struct worker_proc {
    pid_t pid;
    char log[320];
} worker_proc_t;

/* True once `kiln workers` lists a worker; also true (with pid 0) as soon
 * as ours has exited, so a broken worker fails the test at once. */
static bool worker_registered(void *ctx)
{
    worker_proc_t *w = ctx;
    int status;
    if (waitpid(w->pid, &status, WNOHANG) == w->pid) {
        w->pid = 0;
        return true;
    }
    run_result_t r;
    RUN(&r, "workers", "--json", "--redis", redis.url);
    json_t *workers = r.code == 0 ? json_loads(r.out, 0, NULL) : NULL;
    bool listed = json_array_size(workers) > 0;
    json_decref(workers);
    run_free(&r);
    return listed;
}

static void worker_start(worker_proc_t *w)
{
    memset(w, 0, sizeof *w);
    snprintf(w->log, sizeof w->log, "%s/worker.log", tmpdir);
    char *argv[] = {KILN_BIN,     "worker",        "--redis", redis.url, "--connectors",
                    "simulation", "--concurrency", "1",       NULL};
    w->pid = kiln_test_spawn(argv, NULL, w->log);
    bool ready = kiln_test_wait_until(worker_registered, w, 20000);
    if (!ready || w->pid == 0) {
        kiln_test_dump_file("worker log", w->log);
        if (w->pid)
            kiln_test_kill(w->pid, SIGKILL, 5000);
        fail_msg("the worker %s", w->pid ? "never registered" : "exited");
    }
}

static void worker_stop(worker_proc_t *w)
{
    kiln_test_kill(w->pid, SIGTERM, 10000);
}

typedef struct output_wait {
    const char *path;
    const char *needle;
} output_wait_t;

static bool output_has(void *ctx)
{
    output_wait_t *w = ctx;
    char *text = slurp(w->path);
    bool found = strstr(text, w->needle) != NULL;
    free(text);
    return found;
}

static void job_wait_follows_a_job_to_completion(void **state)
{
    /* The follower starts while the job is pending and no worker runs, and
     * the worker starts only once it has printed that, so it must see the
     * job go running and then completed, however slow the machine. */
    char id[128];
    submit(id, sizeof id, "simulation",
           "{\"duration_ms\":300,\"steps\":3,\"result\":{\"frames\":24}}");
    char out_path[300];
    snprintf(out_path, sizeof out_path, "%s/follower.out", tmpdir);
    char *follow[] = {KILN_BIN, "job", id, "--wait", "--timeout", "30", "--redis", redis.url, NULL};
    pid_t follower = kiln_test_spawn(follow, NULL, out_path);
    output_wait_t pending = {out_path, "pending"};
    assert_true(kiln_test_wait_until(output_has, &pending, 10000));
    worker_proc_t w;
    worker_start(&w);
    int status = kiln_test_wait_exit(follower, RUN_TIMEOUT_MS);
    char *out = slurp(out_path);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        kiln_test_dump_file("worker log", w.log);
        fprintf(stderr, "follower output:\n%s\n", out);
        if (status == -1)
            kiln_test_kill(follower, SIGKILL, 5000);
        fail();
    }
    /* One line per event when stdout is not a terminal, then the final line. */
    expect_contains(out, "running");
    expect_contains(out, "completed");
    expect_contains(out, "\"frames\":24");
    assert_null(strchr(out, '\r'));
    free(out);
    run_result_t r;

    /* submit --wait: the same follower, exit 1 when the job fails. */
    RUN(&r, "submit", "simulation", "--payload", "{\"duration_ms\":0,\"fail\":true}",
        "--max-attempts", "1", "--wait", "--wait-timeout", "30", "--redis", redis.url);
    if (r.code != 1)
        kiln_test_dump_file("worker log", w.log);
    expect_code(&r, 1);
    expect_contains(r.out, "error");
    run_free(&r);

    RUN(&r, "workers", "--json", "--redis", redis.url);
    expect_code(&r, 0);
    json_t *workers = parse_json(r.out);
    assert_int_equal(json_array_size(workers), 1);
    json_decref(workers);
    run_free(&r);
    worker_stop(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(submit_prints_an_id_and_the_job_is_pending, flush_redis),
        cmocka_unit_test_setup(submit_json_prints_the_id_and_duplicate_flag, flush_redis),
        cmocka_unit_test_setup(submit_with_bad_priority_exits_2_names_the_field_and_writes_nothing,
                               flush_redis),
        cmocka_unit_test_setup(submit_with_malformed_payload_json_exits_2, flush_redis),
        cmocka_unit_test_setup(submit_oversized_payload_is_refused, flush_redis),
        cmocka_unit_test_setup(submit_accepts_a_large_inline_payload_within_the_limit, flush_redis),
        cmocka_unit_test_setup(submit_refuses_service_names_with_braces_slashes_or_spaces,
                               flush_redis),
        cmocka_unit_test_setup(submit_spec_fields_are_overridden_by_flags, flush_redis),
        cmocka_unit_test_setup(submit_count_batches_jobs, flush_redis),
        cmocka_unit_test_setup(idempotency_key_returns_the_same_id, flush_redis),
        cmocka_unit_test_setup(jobs_filters_by_status_and_service, flush_redis),
        cmocka_unit_test_setup(cancel_pending_job, flush_redis),
        cmocka_unit_test_setup(retry_of_a_pending_job_is_refused, flush_redis),
        cmocka_unit_test_setup(queues_json_counts_pending, flush_redis),
        cmocka_unit_test_setup(workers_lists_nothing_without_workers, flush_redis),
        cmocka_unit_test_setup(job_unknown_id_exits_1, flush_redis),
        cmocka_unit_test_setup(job_with_injection_like_id_fails_cleanly, flush_redis),
        cmocka_unit_test_setup(redis_unreachable_exits_3, flush_redis),
        cmocka_unit_test_setup(job_wait_times_out_with_exit_4, flush_redis),
        cmocka_unit_test(help_on_every_command_exits_0),
        cmocka_unit_test_setup(job_wait_follows_a_job_to_completion, flush_redis),
    };
    return cmocka_run_group_tests(tests, start_redis, stop_redis);
}

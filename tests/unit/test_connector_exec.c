/*
 * The exec connector, run against the helper programs in tests/helpers/
 * (exec_*.c) as real child processes.
 */
#include "kiln/connector.h"
#include "kiln/log.h"
#include "kiln_test.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define HELPER(name) KILN_TEST_HELPERS_DIR "/" name

/* ---- fixtures --------------------------------------------------------------- */

typedef struct progress_log {
    pthread_mutex_t lock;
    atomic_int count;
    double last_percent;
    char last_message[64];
} progress_log_t;

#define PROGRESS_LOG_INIT                                                                          \
    {                                                                                              \
        .lock = PTHREAD_MUTEX_INITIALIZER                                                          \
    }

static void record_progress(void *ctx, double percent, const char *message)
{
    progress_log_t *p = ctx;
    pthread_mutex_lock(&p->lock);
    p->last_percent = percent;
    snprintf(p->last_message, sizeof p->last_message, "%s", message ? message : "");
    pthread_mutex_unlock(&p->lock);
    atomic_fetch_add(&p->count, 1);
}

/* Cancels a job the way the worker does (flag, then the fd) once the job
 * has reported its first progress. */
typedef struct canceller {
    atomic_int flag;
    int fd;
    progress_log_t *progress;
    int64_t fired_at_ms; /* read after canceller_join */
    pthread_t thread;
} canceller_t;

static bool first_progress_seen(void *ctx)
{
    canceller_t *c = ctx;
    return atomic_load(&c->progress->count) >= 1;
}

static void *cancel_main(void *ctx)
{
    canceller_t *c = ctx;
    kiln_test_wait_until(first_progress_seen, c, 30000);
    c->fired_at_ms = kiln_test_now_ms();
    atomic_store(&c->flag, 1);
    uint64_t one = 1;
    ssize_t n = write(c->fd, &one, sizeof one);
    (void)n;
    return NULL;
}

static void canceller_start(canceller_t *c, progress_log_t *p)
{
    atomic_init(&c->flag, 0);
    c->fd = eventfd(0, EFD_CLOEXEC);
    assert_true(c->fd >= 0);
    c->progress = p;
    assert_int_equal(pthread_create(&c->thread, NULL, cancel_main, c), 0);
}

static void canceller_join(canceller_t *c)
{
    pthread_join(c->thread, NULL);
    close(c->fd);
}

/* ["<helpers>/name", args..., NULL] as a JSON array. */
static json_t *command(const char *path, ...)
{
    json_t *argv = json_array();
    json_array_append_new(argv, json_string(path));
    va_list ap;
    va_start(ap, path);
    for (const char *arg; (arg = va_arg(ap, const char *));)
        json_array_append_new(argv, json_string(arg));
    va_end(ap);
    return argv;
}

static int exec_new(json_t *options, kiln_connector_t **c, kiln_err_t *err)
{
    kiln_connector_config_t cfg = {.name = "job", .type = "exec", .options = options};
    int rc = kiln_connector_new(&cfg, c, err);
    json_decref(options);
    return rc;
}

/* Builds an exec connector from options (stolen); fails the test on error. */
static kiln_connector_t *make_exec(json_t *options)
{
    assert_non_null(options);
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    if (exec_new(options, &c, &err) != 0)
        fail_msg("exec init: %s", err.msg);
    return c;
}

static kiln_job_outcome_t run_full(kiln_connector_t *c, const char *payload, progress_log_t *p,
                                   canceller_t *cancel, int64_t timeout_ms)
{
    static atomic_int never = 0;
    kiln_job_context_t job = {
        .job_id = "exec.7",
        .service = "render",
        .payload_json = payload,
        .attempt = 2,
        .timeout_ms = timeout_ms,
        .progress = p ? record_progress : NULL,
        .progress_ctx = p,
        .cancel = cancel ? &cancel->flag : &never,
        .cancel_fd = cancel ? cancel->fd : -1,
    };
    kiln_job_outcome_t out;
    assert_int_equal(kiln_connector_run(c, &job, &out), 0);
    return out;
}

static kiln_job_outcome_t run_job(kiln_connector_t *c, const char *payload)
{
    return run_full(c, payload, NULL, NULL, 0);
}

static void assert_contains(const char *text, const char *needle)
{
    if (!text || !strstr(text, needle))
        fail_msg("\"%s\" does not contain \"%s\"", text ? text : "(null)", needle);
}

static void assert_json_equal(const char *actual, const char *expected)
{
    json_t *a = json_loads(actual, JSON_DECODE_ANY, NULL);
    json_t *e = json_loads(expected, JSON_DECODE_ANY, NULL);
    assert_non_null(e);
    if (!a || !json_equal(a, e))
        fail_msg("JSON %s is not %s", actual ? actual : "(null)", expected);
    json_decref(a);
    json_decref(e);
}

static int count_open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    int n = 0;
    assert_non_null(dir);
    while (readdir(dir))
        n++;
    closedir(dir);
    return n;
}

/* True when pid is gone or only a zombie waiting for its new parent. */
static bool process_is_dead(void *ctx)
{
    char path[64], stat[256] = "";
    snprintf(path, sizeof path, "/proc/%d/stat", *(int *)ctx);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    size_t n = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[n] = '\0';
    const char *close_paren = strrchr(stat, ')');
    return !close_paren || close_paren[2] == 'Z' || close_paren[2] == 'X';
}

/* ---- the protocol ------------------------------------------------------------ */

static void exec_reports_progress_lines_and_result(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_echo"), NULL)));
    progress_log_t p = PROGRESS_LOG_INIT;
    kiln_job_outcome_t out = run_full(c, "{\"prompt\": \"a kiln at dusk\", \"n\": 2}", &p, NULL, 0);
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_json_equal(out.result_json, "{\"prompt\": \"a kiln at dusk\", \"n\": 2}");
    assert_int_equal(atomic_load(&p.count), 3);
    assert_true(p.last_percent == 100.0);
    assert_string_equal(p.last_message, "step 3/3");
    kiln_err_t err = {0};
    assert_int_equal(kiln_connector_health(c, &err), 0);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_child_receives_the_job_as_one_json_line(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_echo"), "job", NULL)));
    kiln_job_outcome_t out = run_job(c, "{\"a\": [1, 2]}");
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_json_equal(out.result_json, "{\"id\": \"exec.7\", \"service\": \"render\", "
                                       "\"attempt\": 2, \"payload\": {\"a\": [1, 2]}}");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_exit_zero_without_result_completes_with_null(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_echo"), "noresult", NULL)));
    kiln_job_outcome_t out = run_job(c, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_null(out.result_json);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_last_line_without_newline_is_read(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_echo"), "nonewline", NULL)));
    kiln_job_outcome_t out = run_job(c, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_string_equal(out.result_json, "42");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_garbage_lines_are_ignored(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_garbage"), NULL)));
    progress_log_t p = PROGRESS_LOG_INIT;
    kiln_job_outcome_t out = run_full(c, "{}", &p, NULL, 0);
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_json_equal(out.result_json, "{\"ok\": true}");
    assert_int_equal(atomic_load(&p.count), 3);
    assert_true(p.last_percent == 75.0);
    assert_string_equal(p.last_message, "padded");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_error_line_fails_with_its_retryable_flag(void **state)
{
    kiln_connector_t *fatal =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_fail"), "fatal", "1", NULL)));
    kiln_job_outcome_t out = run_job(fatal, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_false(out.retryable);
    assert_string_equal(out.error, "model not found: sdxl.safetensors");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(fatal);

    /* No retryable field means retryable, and an error line beats exit 0. */
    kiln_connector_t *plain =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_fail"), "noflag", "0", NULL)));
    out = run_job(plain, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_true(out.retryable);
    assert_string_equal(out.error, "something went wrong");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(plain);
}

static void exec_nonzero_exit_fails_retryable_with_stderr_tail(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_crash"), "code", "3", NULL)));
    kiln_job_outcome_t out = run_job(c, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_true(out.retryable);
    assert_contains(out.error, "exited with code 3; stderr: ");
    assert_contains(out.error, "fatal: out of cheese");
    assert_null(strstr(out.error, "line 1 of 200")); /* only the tail */
    assert_true(strlen(out.error) < 2200);
    const char *at = strstr(out.error, "stderr: ") + strlen("stderr: ");
    assert_true(strncmp(at, "crash log line", 14) == 0); /* cut at a line start */
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_death_by_signal_fails_naming_the_signal(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_crash"), "signal", NULL)));
    kiln_job_outcome_t out = run_job(c, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_true(out.retryable);
    assert_contains(out.error, "killed by signal 6 (SIGABRT); stderr: ");
    assert_contains(out.error, "fatal: out of cheese");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_bad_payload_fails_without_running(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_echo"), NULL)));
    kiln_job_outcome_t out = run_job(c, "{not json");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_false(out.retryable);
    assert_contains(out.error, "payload: not valid JSON");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

/* ---- stopping ----------------------------------------------------------------- */

static void exec_cancel_kills_process_group_promptly(void **state)
{
    /* A long grace: only SIGTERM to the whole group can end this quickly. */
    kiln_connector_t *c = make_exec(json_pack("{s:o, s:i}", "command",
                                              command(HELPER("exec_sleep"), "--grandchild", NULL),
                                              "kill_grace_ms", 30000));
    progress_log_t p = PROGRESS_LOG_INIT;
    canceller_t cancel;
    canceller_start(&cancel, &p);
    kiln_job_outcome_t out = run_full(c, "{}", &p, &cancel, 0);
    int64_t returned_at = kiln_test_now_ms();
    canceller_join(&cancel);
    assert_int_equal(out.status, KILN_OUTCOME_CANCELLED);
    assert_true(returned_at - cancel.fired_at_ms < 15000);
    int grandchild = 0;
    assert_int_equal(sscanf(p.last_message, "grandchild=%d", &grandchild), 1);
    assert_true(grandchild > 0);
    assert_true(kiln_test_wait_until(process_is_dead, &grandchild, 10000));
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_sigterm_ignoring_child_is_sigkilled_after_grace(void **state)
{
    /* The default grace, 2 s. */
    kiln_connector_t *c = make_exec(
        json_pack("{s:o}", "command", command(HELPER("exec_sleep"), "--ignore-term", NULL)));
    progress_log_t p = PROGRESS_LOG_INIT;
    canceller_t cancel;
    canceller_start(&cancel, &p);
    kiln_job_outcome_t out = run_full(c, "{}", &p, &cancel, 0);
    int64_t returned_at = kiln_test_now_ms();
    canceller_join(&cancel);
    assert_int_equal(out.status, KILN_OUTCOME_CANCELLED);
    int64_t stop_ms = returned_at - cancel.fired_at_ms;
    if (stop_ms < 1990 || stop_ms > 15000)
        fail_msg("stopped %lld ms after the cancel; expected the 2000 ms grace, then SIGKILL",
                 (long long)stop_ms);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_timeout_fails_retryable(void **state)
{
    kiln_connector_t *c = make_exec(
        json_pack("{s:o, s:i}", "command", command(HELPER("exec_sleep"), NULL), "timeout_ms", 200));
    int64_t start = kiln_test_now_ms();
    kiln_job_outcome_t out = run_job(c, "{}");
    assert_true(kiln_test_now_ms() - start >= 200);
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_true(out.retryable);
    assert_string_equal(out.error, "timed out after 200 ms");
    kiln_job_outcome_clear(&out);

    /* The job's own timeout applies when it is the shorter one. */
    out = run_full(c, "{}", NULL, NULL, 100);
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_string_equal(out.error, "timed out after 100 ms");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_output_over_limit_fails_and_kills(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o, s:i}", "command", command(HELPER("exec_flood"), "output", NULL),
                            "max_output_bytes", 65536));
    progress_log_t p = PROGRESS_LOG_INIT;
    kiln_job_outcome_t out = run_full(c, "{}", &p, NULL, 0);
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_false(out.retryable);
    assert_contains(out.error, "connectors.job.max_output_bytes (65536 bytes)");
    assert_contains(out.error, "killed");
    assert_true(atomic_load(&p.count) > 0); /* lines before the limit still counted */
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_line_over_limit_fails_and_kills(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o, s:i}", "command", command(HELPER("exec_flood"), "line", NULL),
                            "max_line_bytes", 4096));
    kiln_job_outcome_t out = run_job(c, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_false(out.retryable);
    assert_contains(out.error, "connectors.job.max_line_bytes (4096 bytes)");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_already_cancelled_job_is_not_started(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_sleep"), NULL)));
    canceller_t cancel = {.fd = -1};
    atomic_init(&cancel.flag, 1);
    kiln_job_outcome_t out = run_full(c, "{}", NULL, &cancel, 0);
    assert_int_equal(out.status, KILN_OUTCOME_CANCELLED);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

/* ---- options ------------------------------------------------------------------ */

static void expect_refused(json_t *options, const char *needle)
{
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    assert_int_equal(exec_new(options, &c, &err), KILN_EINVAL);
    assert_null(c);
    assert_contains(err.msg, needle);
}

static void exec_missing_program_is_refused_at_init_naming_the_option(void **state)
{
    expect_refused(json_pack("{s:o}", "command", command("/nonexistent/kiln-prog", NULL)),
                   "connectors.job.command: cannot run \"/nonexistent/kiln-prog\": No such file "
                   "or directory");
    expect_refused(json_pack("{s:o}", "command", command("kiln-no-such-program", NULL)),
                   "connectors.job.command: \"kiln-no-such-program\" was not found as an "
                   "executable in PATH");
    expect_refused(json_pack("{s:o}", "command", command("./exec_echo", NULL)),
                   "connectors.job.command: \"./exec_echo\" is a relative path");
    expect_refused(json_pack("{}"), "connectors.job.command: required");
    expect_refused(json_pack("{s:s}", "command", "ls -l"),
                   "connectors.job.command: expected a non-empty array of strings");
    expect_refused(json_pack("{s:[]}", "command"), "connectors.job.command: expected");
    expect_refused(json_pack("{s:[s,i]}", "command", "/bin/true", 3),
                   "connectors.job.command[1]: expected a string, got 3");

    char dir[256], path[320];
    kiln_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/not-executable", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    expect_refused(json_pack("{s:o}", "command", command(path, NULL)), "Permission denied");
    unlink(path);
    rmdir(dir);
}

static void exec_invalid_options_are_refused_naming_them(void **state)
{
    expect_refused(
        json_pack("{s:o, s:{s:i}}", "command", command("/bin/true", NULL), "env", "COUNT", 1),
        "connectors.job.env.COUNT");
    expect_refused(json_pack("{s:o, s:s}", "command", command("/bin/true", NULL), "env", "A=1"),
                   "connectors.job.env: expected an object");
    expect_refused(
        json_pack("{s:o, s:s}", "command", command("/bin/true", NULL), "cwd", "/nonexistent/dir"),
        "connectors.job.cwd");
    expect_refused(
        json_pack("{s:o, s:i}", "command", command("/bin/true", NULL), "max_output_bytes", 0),
        "connectors.job.max_output_bytes: expected an integer");
    expect_refused(
        json_pack("{s:o, s:s}", "command", command("/bin/true", NULL), "timeout_ms", "5s"),
        "connectors.job.timeout_ms");
}

static void exec_env_and_cwd_reach_the_child(void **state)
{
    /* The env option's PATH is also where command[0] is looked up. */
    kiln_connector_t *env = make_exec(json_pack(
        "{s:o, s:{s:s, s:s}}", "command", command("exec_echo", "env", "KILN_EXEC_TEST", NULL),
        "env", "KILN_EXEC_TEST", "hello world", "PATH", "/nonexistent:" KILN_TEST_HELPERS_DIR));
    kiln_job_outcome_t out = run_job(env, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_string_equal(out.result_json, "\"hello world\"");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(env);

    char dir[256], real[4096], expected[4200];
    kiln_test_tmpdir(dir, sizeof dir);
    assert_non_null(realpath(dir, real));
    kiln_connector_t *cwd = make_exec(
        json_pack("{s:o, s:s}", "command", command(HELPER("exec_echo"), "cwd", NULL), "cwd", dir));
    out = run_job(cwd, "{}");
    snprintf(expected, sizeof expected, "\"%s\"", real);
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_string_equal(out.result_json, expected);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(cwd);
    rmdir(dir);
}

static void exec_program_removed_after_init_fails_non_retryable(void **state)
{
    char dir[256], path[320];
    kiln_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/echo-copy", dir);
    char *cp[] = {"/bin/cp", HELPER("exec_echo"), path, NULL};
    assert_int_equal(kiln_test_run(cp, NULL, NULL, 0), 0);
    kiln_connector_t *c = make_exec(json_pack("{s:o}", "command", command(path, NULL)));
    unlink(path);
    kiln_job_outcome_t out = run_job(c, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_false(out.retryable);
    assert_contains(out.error, "cannot run ");
    assert_contains(out.error, "echo-copy: No such file or directory");
    kiln_err_t err = {0};
    assert_int_not_equal(kiln_connector_health(c, &err), 0);
    assert_contains(err.msg, "connectors.job.command");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
    rmdir(dir);
}

/* ---- resources ----------------------------------------------------------------- */

static void exec_child_inherits_only_stdio(void **state)
{
    int leaky = open("/dev/null", O_RDONLY); /* deliberately without O_CLOEXEC */
    assert_true(leaky >= 0);
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_echo"), "fds", NULL)));
    kiln_job_outcome_t out = run_job(c, "{}");
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_string_equal(out.result_json, "3");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
    close(leaky);
}

typedef struct concurrent {
    kiln_connector_t *c;
    atomic_int completed;
} concurrent_t;

static void *run_jobs(void *ctx)
{
    concurrent_t *s = ctx;
    for (int i = 0; i < 8; i++) {
        char payload[64];
        snprintf(payload, sizeof payload, "{\"job\": %d}", i);
        progress_log_t p = PROGRESS_LOG_INIT;
        kiln_job_outcome_t out = run_full(s->c, payload, &p, NULL, 0);
        if (out.status == KILN_OUTCOME_COMPLETED && out.result_json && atomic_load(&p.count) == 3) {
            json_t *got = json_loads(out.result_json, 0, NULL),
                   *want = json_loads(payload, 0, NULL);
            if (json_equal(got, want))
                atomic_fetch_add(&s->completed, 1);
            json_decref(got);
            json_decref(want);
        }
        kiln_job_outcome_clear(&out);
    }
    return NULL;
}

static void exec_runs_concurrently_without_fd_leaks(void **state)
{
    concurrent_t s = {
        .c = make_exec(json_pack("{s:o}", "command", command(HELPER("exec_echo"), NULL)))};
    run_jobs(&s); /* warm up lazily opened descriptors (logging, allocators) */
    atomic_store(&s.completed, 0);
    int before = count_open_fds();
    pthread_t threads[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, run_jobs, &s), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(threads[i], NULL);
    assert_int_equal(atomic_load(&s.completed), 64);
    assert_int_equal(count_open_fds(), before);
    kiln_connector_free(s.c);
}

static char *big_payload(size_t size)
{
    char *text = malloc(size + 16);
    assert_non_null(text);
    strcpy(text, "{\"blob\": \"");
    size_t at = strlen(text);
    memset(text + at, 'k', size);
    strcpy(text + at + size, "\"}");
    return text;
}

static void exec_large_payload_is_streamed_without_deadlock(void **state)
{
    /* 3 MiB in and out: far more than a pipe holds in either direction. */
    kiln_connector_t *c =
        make_exec(json_pack("{s:o, s:i, s:i}", "command", command(HELPER("exec_echo"), NULL),
                            "max_line_bytes", 8 << 20, "max_output_bytes", 16 << 20));
    char *payload = big_payload(3 << 20);
    kiln_job_outcome_t out = run_job(c, payload);
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_non_null(out.result_json);
    assert_int_equal(strlen(out.result_json), (size_t)(3 << 20) + strlen("{\"blob\":\"\"}"));
    free(payload);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void exec_child_not_reading_stdin_does_not_raise_sigpipe(void **state)
{
    kiln_connector_t *c =
        make_exec(json_pack("{s:o}", "command", command(HELPER("exec_echo"), "noread", NULL)));
    char *payload = big_payload(1 << 20);
    for (int i = 0; i < 3; i++) {
        kiln_job_outcome_t out = run_job(c, payload);
        assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
        assert_string_equal(out.result_json, "\"unread\"");
        kiln_job_outcome_clear(&out);
    }
    free(payload);
    kiln_connector_free(c);
}

int main(void)
{
    /* SIGPIPE keeps its default action: a write to a closed stdin must not
     * kill the process that runs the connector. */
    signal(SIGPIPE, SIG_DFL);
    kiln_log_configure(KILN_LOG_TEXT, KILN_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exec_reports_progress_lines_and_result),
        cmocka_unit_test(exec_child_receives_the_job_as_one_json_line),
        cmocka_unit_test(exec_exit_zero_without_result_completes_with_null),
        cmocka_unit_test(exec_last_line_without_newline_is_read),
        cmocka_unit_test(exec_garbage_lines_are_ignored),
        cmocka_unit_test(exec_error_line_fails_with_its_retryable_flag),
        cmocka_unit_test(exec_nonzero_exit_fails_retryable_with_stderr_tail),
        cmocka_unit_test(exec_death_by_signal_fails_naming_the_signal),
        cmocka_unit_test(exec_bad_payload_fails_without_running),
        cmocka_unit_test(exec_cancel_kills_process_group_promptly),
        cmocka_unit_test(exec_sigterm_ignoring_child_is_sigkilled_after_grace),
        cmocka_unit_test(exec_timeout_fails_retryable),
        cmocka_unit_test(exec_output_over_limit_fails_and_kills),
        cmocka_unit_test(exec_line_over_limit_fails_and_kills),
        cmocka_unit_test(exec_already_cancelled_job_is_not_started),
        cmocka_unit_test(exec_missing_program_is_refused_at_init_naming_the_option),
        cmocka_unit_test(exec_invalid_options_are_refused_naming_them),
        cmocka_unit_test(exec_env_and_cwd_reach_the_child),
        cmocka_unit_test(exec_program_removed_after_init_fails_non_retryable),
        cmocka_unit_test(exec_child_inherits_only_stdio),
        cmocka_unit_test(exec_runs_concurrently_without_fd_leaks),
        cmocka_unit_test(exec_large_payload_is_streamed_without_deadlock),
        cmocka_unit_test(exec_child_not_reading_stdin_does_not_raise_sigpipe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

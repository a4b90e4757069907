/*
 * kiln services | logs | restart, the real binary against a real machine
 * API server (in this process, on a libuv loop thread, with fake hooks).
 */
#include "kiln/log.h"
#include "kiln/machine_api.h"
#include "kiln_test.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOKEN   "cli-test-token"
#define WAIT_MS 10000

typedef struct fixture {
    uv_loop_t loop;
    uv_async_t jobs;
    pthread_t loop_thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    void (*job)(struct fixture *fx, void *arg);
    void *job_arg;
    bool job_done;
    kiln_machine_api_t *api;
    char url[64];
    char port[16];
    char dir[256];
    atomic_int restarts;
    atomic_bool following, unfollowed;
    kiln_machine_api_line_cb follow_cb; /* loop thread only */
    void *follow_ctx;
} fixture_t;

/* ---- fake agent --------------------------------------------------------------- */

static json_t *fake_status(void *ctx)
{
    return json_pack("{s:s, s:[{s:s, s:s, s:i, s:I, s:i, s:f, s:f}, {s:s, s:s, s:i, s:i}]}",
                     "machine_id", "cli-machine", "services", "name", "comfyui-gpu0", "state",
                     "running", "pid", 4242, "uptime_ms", (json_int_t)192000, "restarts", 3,
                     "rss_mb", 2048.0, "cpu_pct", 55.5, "name", "shared-setup", "state", "exited",
                     "pid", 0, "restarts", 0);
}

static int fake_action(void *ctx, const char *name, const char *action, kiln_err_t *err)
{
    fixture_t *fx = ctx;
    if (strcmp(name, "comfyui-gpu0") != 0)
        return KILN_ENOTFOUND;
    if (strcmp(action, "restart") == 0)
        atomic_fetch_add(&fx->restarts, 1);
    return 0;
}

static json_t *fake_logs(void *ctx, const char *name, size_t lines)
{
    if (strcmp(name, "comfyui-gpu0") != 0)
        return NULL;
    json_t *all =
        json_pack("[{s:s, s:s, s:s}, {s:s, s:s, s:s}]", "time", "t1", "stream", "stdout", "line",
                  "loading model", "time", "t2", "stream", "stderr", "line", "model \x1b[31mready");
    while (json_array_size(all) > lines)
        json_array_remove(all, 0);
    return all;
}

static int fake_follow(void *ctx, const char *name, kiln_machine_api_line_cb cb, void *cb_ctx)
{
    fixture_t *fx = ctx;
    if (strcmp(name, "comfyui-gpu0") != 0)
        return KILN_ENOTFOUND;
    fx->follow_cb = cb;
    fx->follow_ctx = cb_ctx;
    atomic_store(&fx->unfollowed, false);
    atomic_store(&fx->following, true);
    return 0;
}

static void fake_unfollow(void *ctx, const char *name, kiln_machine_api_line_cb cb, void *cb_ctx)
{
    fixture_t *fx = ctx;
    if (cb == fx->follow_cb && cb_ctx == fx->follow_ctx) {
        fx->follow_cb = NULL;
        atomic_store(&fx->following, false);
        atomic_store(&fx->unfollowed, true);
    }
}

static const kiln_machine_api_hooks_t hooks = {
    .status = fake_status,
    .service_action = fake_action,
    .logs = fake_logs,
    .logs_follow = fake_follow,
    .logs_unfollow = fake_unfollow,
};

/* ---- the loop thread ------------------------------------------------------------ */

static void on_job(uv_async_t *handle)
{
    fixture_t *fx = handle->data;
    pthread_mutex_lock(&fx->mu);
    void (*job)(fixture_t *, void *) = fx->job;
    fx->job = NULL;
    pthread_mutex_unlock(&fx->mu);
    if (!job)
        return;
    job(fx, fx->job_arg);
    pthread_mutex_lock(&fx->mu);
    fx->job_done = true;
    pthread_cond_broadcast(&fx->cond);
    pthread_mutex_unlock(&fx->mu);
}

static void run_on_loop(fixture_t *fx, void (*job)(fixture_t *, void *), void *arg)
{
    pthread_mutex_lock(&fx->mu);
    fx->job = job;
    fx->job_arg = arg;
    fx->job_done = false;
    uv_async_send(&fx->jobs);
    while (!fx->job_done)
        pthread_cond_wait(&fx->cond, &fx->mu);
    pthread_mutex_unlock(&fx->mu);
}

static void *loop_main(void *arg)
{
    fixture_t *fx = arg;
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void job_start(fixture_t *fx, void *arg)
{
    kiln_machine_api_options_t opts = {.listen = "127.0.0.1:0",
                                       .token = TOKEN,
                                       .hooks = &hooks,
                                       .hooks_ctx = fx,
                                       .loop = &fx->loop};
    kiln_err_t *err = arg;
    if (kiln_machine_api_new(&opts, &fx->api, err) != 0)
        fx->api = NULL;
}

static void job_stop(fixture_t *fx, void *arg)
{
    kiln_machine_api_free(fx->api);
    uv_close((uv_handle_t *)&fx->jobs, NULL);
}

static void job_emit(fixture_t *fx, void *arg)
{
    json_t *entry = json_pack("{s:s, s:s, s:s}", "time", "t3", "stream", "stdout", "line", arg);
    if (fx->follow_cb)
        fx->follow_cb(fx->follow_ctx, entry);
    json_decref(entry);
}

static int setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof *fx);
    pthread_mutex_init(&fx->mu, NULL);
    pthread_cond_init(&fx->cond, NULL);
    uv_loop_init(&fx->loop);
    uv_async_init(&fx->loop, &fx->jobs, on_job);
    fx->jobs.data = fx;
    pthread_create(&fx->loop_thread, NULL, loop_main, fx);
    kiln_err_t err = {0};
    run_on_loop(fx, job_start, &err);
    if (!fx->api)
        fail_msg("kiln_machine_api_new: %s", err.msg);
    snprintf(fx->port, sizeof fx->port, "%d", kiln_machine_api_port(fx->api));
    snprintf(fx->url, sizeof fx->url, "http://127.0.0.1:%s", fx->port);
    kiln_test_tmpdir(fx->dir, sizeof fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *fx = *state;
    run_on_loop(fx, job_stop, NULL);
    pthread_join(fx->loop_thread, NULL);
    uv_loop_close(&fx->loop);
    char cmd_log[320];
    snprintf(cmd_log, sizeof cmd_log, "%s/out.log", fx->dir);
    unlink(cmd_log);
    rmdir(fx->dir);
    free(fx);
    return 0;
}

/* Runs kiln with argv (after "kiln"), stdout into out; returns the exit code. */
static int run_kiln(char *const args[], char *out, size_t size)
{
    char *argv[16] = {KILN_BIN};
    size_t n = 1;
    for (; args[n - 1] && n < 15; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    return kiln_test_run(argv, NULL, out, size);
}

/* ---- tests ---------------------------------------------------------------------- */

static void services_prints_the_agents_table_and_json(void **state)
{
    fixture_t *fx = *state;
    char out[8192];
    char *table[] = {"services", "--api", fx->url, NULL};
    assert_int_equal(run_kiln(table, out, sizeof out), 0);
    if (!strstr(out, "NAME") || !strstr(out, "RESTARTS") || !strstr(out, "comfyui-gpu0") ||
        !strstr(out, "4242") || !strstr(out, "3m12s") || !strstr(out, "2048M") ||
        !strstr(out, "55.5%") || !strstr(out, "shared-setup"))
        fail_msg("unexpected table:\n%s", out);

    /* The port from the configuration (MACHINE_HEALTH_PORT) when --api is absent. */
    setenv("MACHINE_HEALTH_PORT", fx->port, 1);
    char *json[] = {"services", "--json", NULL};
    int rc = run_kiln(json, out, sizeof out);
    unsetenv("MACHINE_HEALTH_PORT");
    assert_int_equal(rc, 0);
    json_t *services = json_loads(out, 0, NULL);
    assert_int_equal(json_array_size(services), 2);
    json_decref(services);
}

static void restart_sends_the_token(void **state)
{
    fixture_t *fx = *state;
    char out[4096];
    char *args[] = {"restart", "comfyui-gpu0", "--api", fx->url, NULL};
    unsetenv("KILN_MACHINE_API_TOKEN");
    assert_int_equal(run_kiln(args, out, sizeof out), 1); /* 401 */
    assert_int_equal(atomic_load(&fx->restarts), 0);
    setenv("KILN_MACHINE_API_TOKEN", TOKEN, 1);
    assert_int_equal(run_kiln(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "restarting comfyui-gpu0"));
    assert_int_equal(atomic_load(&fx->restarts), 1);
    char *unknown[] = {"restart", "nope", "--api", fx->url, NULL};
    assert_int_equal(run_kiln(unknown, out, sizeof out), 1);
    char *bad[] = {"restart", "../etc", "--api", fx->url, NULL};
    assert_int_equal(run_kiln(bad, out, sizeof out), 2);
    unsetenv("KILN_MACHINE_API_TOKEN");
    /* Nobody listening: unavailable. */
    char *nobody[] = {"restart", "comfyui-gpu0", "--api", "http://127.0.0.1:1", NULL};
    assert_int_equal(run_kiln(nobody, out, sizeof out), 3);
}

typedef struct file_wait {
    const char *path;
    const char *text;
} file_wait_t;

static bool file_has(void *ctx)
{
    file_wait_t *w = ctx;
    char buf[8192] = "";
    FILE *f = fopen(w->path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strstr(buf, w->text) != NULL;
}

static bool flag_set(void *ctx)
{
    return atomic_load((atomic_bool *)ctx);
}

static void logs_prints_and_follows(void **state)
{
    fixture_t *fx = *state;
    char out[8192];
    char *last[] = {"logs", "comfyui-gpu0", "-n", "1", "--api", fx->url, NULL};
    assert_int_equal(run_kiln(last, out, sizeof out), 0);
    /* Not a terminal: the bytes as they are. */
    assert_string_equal(out, "model \x1b[31mready\n");
    char *bad[] = {"logs", "comfyui-gpu0", "-n", "0", "--api", fx->url, NULL};
    assert_int_equal(run_kiln(bad, out, sizeof out), 2);
    char *unknown[] = {"logs", "nope", "--api", fx->url, NULL};
    assert_int_equal(run_kiln(unknown, out, sizeof out), 1);

    char log_path[320];
    snprintf(log_path, sizeof log_path, "%s/out.log", fx->dir);
    char *follow[] = {KILN_BIN, "logs", "comfyui-gpu0", "-f", "--api", fx->url, NULL};
    pid_t pid = kiln_test_spawn(follow, NULL, log_path);
    file_wait_t first = {log_path, "loading model\n"};
    if (!kiln_test_wait_until(file_has, &first, WAIT_MS)) {
        kiln_test_dump_file("kiln logs -f", log_path);
        fail_msg("kiln logs -f did not print the last lines");
    }
    assert_true(kiln_test_wait_until(flag_set, &fx->following, WAIT_MS));
    run_on_loop(fx, job_emit, "a brand new line");
    file_wait_t fresh = {log_path, "a brand new line\n"};
    if (!kiln_test_wait_until(file_has, &fresh, WAIT_MS)) {
        kiln_test_dump_file("kiln logs -f", log_path);
        fail_msg("kiln logs -f did not print the new line");
    }
    kiln_test_kill(pid, SIGTERM, 5000);
    assert_true(kiln_test_wait_until(flag_set, &fx->unfollowed, WAIT_MS));
}

int main(void)
{
    kiln_log_configure(KILN_LOG_TEXT, KILN_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(services_prints_the_agents_table_and_json, setup, teardown),
        cmocka_unit_test_setup_teardown(restart_sends_the_token, setup, teardown),
        cmocka_unit_test_setup_teardown(logs_prints_and_follows, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

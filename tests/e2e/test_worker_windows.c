/*
 * Active windows end to end: a real `kiln worker` whose window is closed now
 * claims nothing (while its heartbeat keeps ticking), and one whose window
 * is open now claims and runs the same job. The windows are computed from
 * the current local time, so no test waits for a wall-clock hour.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln/broker.h"
#include "kiln_test.h"

static kiln_test_redis_t redis_server;
static kiln_broker_t *broker;
static char log_path[512];

static int setup(void **state)
{
    kiln_test_redis_start(&redis_server, false);
    broker = kiln_test_broker_connect(&redis_server, 3000);
    char dir[256];
    kiln_test_tmpdir(dir, sizeof dir);
    snprintf(log_path, sizeof log_path, "%s/worker.log", dir);
    return 0;
}

static int teardown(void **state)
{
    kiln_broker_free(broker);
    kiln_test_redis_destroy(&redis_server);
    return 0;
}

/* A window of `length` minutes starting `from_now` minutes from now (local). */
static void window_from_now(int from_now, int length, char *out, size_t size)
{
    time_t now = time(NULL);
    struct tm local;
    localtime_r(&now, &local);
    int start = (local.tm_hour * 60 + local.tm_min + from_now + 1440) % 1440;
    int end = (start + length) % 1440;
    snprintf(out, size, "%02d:%02d-%02d:%02d", start / 60, start % 60, end / 60, end % 60);
}

static pid_t start_worker(const char *id, const char *windows)
{
    static char env_windows[128];
    snprintf(env_windows, sizeof env_windows, "KILN_WORKER_ACTIVE_WINDOWS=%s", windows);
    char *argv[] = {KILN_BIN,      "worker", "--redis",  redis_server.url, "--connectors",
                    "simulation",  "--id",   (char *)id, "--log-format",   "text",
                    "--log-level", "debug",  NULL};
    char *env[] = {env_windows, "KILN_WORKER_HEARTBEAT_MS=100", "KILN_WORKER_REGISTRY_TTL_MS=1000",
                   NULL};
    return kiln_test_spawn(argv, env, log_path);
}

typedef struct seen {
    const char *worker;
    int64_t after_ms; /* the record must have been written after this */
    json_t *record;   /* the latest record (owned) */
} seen_t;

static bool worker_registered_after(void *ctx)
{
    seen_t *s = ctx;
    json_t *workers = NULL;
    if (kiln_broker_list_workers(broker, &workers, NULL) != 0)
        return false;
    size_t i;
    json_t *w;
    json_array_foreach(workers, i, w)
    {
        const char *id = json_string_value(json_object_get(w, "id"));
        if (id && strcmp(id, s->worker) == 0 &&
            json_integer_value(json_object_get(w, "seen_at")) > s->after_ms) {
            json_decref(s->record);
            s->record = json_incref(w);
            json_decref(workers);
            return true;
        }
    }
    json_decref(workers);
    return false;
}

static const char *job_state(const char *id)
{
    static char state[32];
    json_t *job = NULL;
    if (kiln_broker_get_job(broker, id, &job, NULL) != 0)
        return "";
    snprintf(state, sizeof state, "%s", json_string_value(json_object_get(job, "state")));
    json_decref(job);
    return state;
}

static bool job_completed(void *ctx)
{
    return strcmp(job_state(ctx), "completed") == 0;
}

static void stop(pid_t pid)
{
    kiln_test_kill(pid, SIGTERM, 5000);
}

static void worker_claims_only_inside_its_active_window(void **state)
{
    const char *spec = "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":50,\"steps\":2}}";
    kiln_job_spec_t js;
    kiln_err_t err = {0};
    assert_int_equal(kiln_job_spec_parse(spec, strlen(spec), 0, &js, &err), 0);
    char id[KILN_JOB_ID_MAX];
    assert_int_equal(kiln_broker_submit(broker, &js, id, NULL, &err), 0);
    kiln_job_spec_clear(&js);

    /* Closed: the window opens in two hours. */
    char closed[32];
    window_from_now(120, 60, closed, sizeof closed);
    pid_t pid = start_worker("night", closed);
    seen_t seen = {.worker = "night", .after_ms = 0};
    if (!kiln_test_wait_until(worker_registered_after, &seen, 10000)) {
        kiln_test_dump_file("worker log", log_path);
        fail_msg("worker night never registered");
    }
    /* Two more registrations (1 s TTL / 3) span many 100 ms heartbeat ticks,
     * each of which would claim if the window allowed. */
    seen.after_ms = json_integer_value(json_object_get(seen.record, "seen_at")) + 600;
    assert_true(kiln_test_wait_until(worker_registered_after, &seen, 10000));
    assert_string_equal(json_string_value(json_object_get(seen.record, "active_windows")), closed);
    assert_false(json_is_true(json_object_get(seen.record, "claiming")));
    assert_string_equal(job_state(id), "pending");
    json_decref(seen.record);
    stop(pid);

    /* Open: the window started a minute ago and lasts an hour. */
    char open[32];
    window_from_now(-1, 60, open, sizeof open);
    pid = start_worker("day", open);
    if (!kiln_test_wait_until(job_completed, id, 15000)) {
        kiln_test_dump_file("worker log", log_path);
        fail_msg("job %s not completed inside the open window: %s", id, job_state(id));
    }
    stop(pid);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(worker_claims_only_inside_its_active_window, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

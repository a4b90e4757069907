/*
 * End to end: a real `kiln worker` serving a comfyui connector (configured
 * in kiln.yaml, its URL set the way the machine plan sets it, through
 * KILN_CONNECTOR_URLS) against a real redis-server and fake_comfyui
 * (tests/fakes/fake_comfyui.c) as ComfyUI. The tests submit jobs through
 * the broker's API and wait for their final state; the logs are printed
 * when a test fails.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "connectors/http.h"
#include "kiln/broker.h"
#include "kiln_test.h"

#define FAKE(name) KILN_TEST_FAKES_DIR "/" name
#define LOG_MAX    (4 * 1024 * 1024)

typedef struct fixture {
    kiln_test_redis_t redis;
    char dir[256];
    char config[320], log_path[320], fake_log[320], outputs[320];
    kiln_broker_options_t opts;
    kiln_broker_t *broker;
    pid_t worker, fake;
    int fake_port;
    bool passed; /* set by the test's last line; otherwise teardown dumps the logs */
} fixture_t;

static char *slurp(const char *path, size_t max)
{
    char *buf = calloc(1, max + 1);
    assert_non_null(buf);
    FILE *fp = fopen(path, "rb");
    if (fp) {
        size_t n = fread(buf, 1, max, fp);
        buf[n] = '\0';
        fclose(fp);
    }
    return buf;
}

static bool fake_listening(void *ctx)
{
    fixture_t *f = ctx;
    char *log = slurp(f->fake_log, 4096);
    const char *at = strstr(log, "listening on 127.0.0.1:");
    if (at)
        f->fake_port = atoi(at + strlen("listening on 127.0.0.1:"));
    free(log);
    return f->fake_port > 0;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    kiln_test_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->config, sizeof f->config, "%s/kiln.yaml", f->dir);
    snprintf(f->log_path, sizeof f->log_path, "%s/worker.log", f->dir);
    snprintf(f->fake_log, sizeof f->fake_log, "%s/fake_comfyui.log", f->dir);
    snprintf(f->outputs, sizeof f->outputs, "%s/outputs", f->dir);
    assert_int_equal(mkdir(f->outputs, 0755), 0);

    char *fake_argv[] = {FAKE("fake_comfyui"), "0", NULL};
    f->fake = kiln_test_spawn(fake_argv, NULL, f->fake_log);
    if (!kiln_test_wait_until(fake_listening, f, 10000)) {
        kiln_test_dump_file("fake_comfyui log", f->fake_log);
        fail_msg("fake_comfyui did not start");
    }

    /* The file points at a port where nothing listens; the environment, as
     * the machine plan writes it for a GPU's worker, wins. */
    char yaml[600];
    snprintf(yaml, sizeof yaml,
             "connectors:\n"
             "  comfyui:\n"
             "    type: comfyui\n"
             "    base_url: http://127.0.0.1:1\n"
             "    outputs_dir: %s\n"
             "    max_retries: 2\n",
             f->outputs);
    FILE *fp = fopen(f->config, "w");
    assert_non_null(fp);
    fputs(yaml, fp);
    fclose(fp);

    kiln_test_redis_start(&f->redis, false);
    f->opts = (kiln_broker_options_t){
        .redis_url = f->redis.url,
        .max_payload_bytes = 1024 * 1024,
        .stream_max_len = 10000,
        .retention_age_s = 3600,
        .retention_count = 10000,
        .default_max_attempts = 3,
        .backoff_base_ms = 50,
        .backoff_max_ms = 200,
        .lease_ms = 30000,
    };
    kiln_err_t err = {0};
    if (kiln_broker_connect(&f->opts, &f->broker, &err) != 0)
        fail_msg("kiln_broker_connect %s: %s", f->redis.url, err.msg);

    char *argv[] = {KILN_BIN,
                    "worker",
                    "--config",
                    f->config,
                    "--redis",
                    f->redis.url,
                    "--connectors",
                    "comfyui",
                    "--concurrency",
                    "1",
                    "--log-format",
                    "text",
                    "--log-level",
                    "debug",
                    "--id",
                    "gpu0-worker",
                    NULL};
    char urls[96];
    snprintf(urls, sizeof urls, "KILN_CONNECTOR_URLS=comfyui=http://127.0.0.1:%d", f->fake_port);
    char *env[] = {urls, NULL};
    f->worker = kiln_test_spawn(argv, env, f->log_path);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->worker > 0)
        kiln_test_kill(f->worker, SIGTERM, 10000);
    if (f->fake > 0)
        kiln_test_kill(f->fake, SIGTERM, 5000);
    if (!f->passed) {
        kiln_test_dump_file("worker log", f->log_path);
        kiln_test_dump_file("fake_comfyui log", f->fake_log);
    }
    kiln_broker_free(f->broker);
    kiln_test_redis_destroy(&f->redis);
    char *rm[] = {"/bin/rm", "-rf", f->dir, NULL};
    kiln_test_run(rm, NULL, NULL, 0);
    free(f);
    return 0;
}

static void submit(fixture_t *f, const char *json, char *id)
{
    kiln_job_spec_t spec;
    kiln_err_t err = {0};
    if (kiln_job_spec_parse(json, strlen(json), f->opts.max_payload_bytes, &spec, &err) != 0)
        fail_msg("job spec %s refused: %s", json, err.msg);
    int rc = kiln_broker_submit(f->broker, &spec, id, NULL, &err);
    kiln_job_spec_clear(&spec);
    if (rc != 0)
        fail_msg("submit %s: %s", json, err.msg);
}

static json_t *get_job(fixture_t *f, const char *id)
{
    json_t *job = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_get_job(f->broker, id, &job, &err) != 0)
        fail_msg("get_job %s: %s", id, err.msg);
    return job;
}

typedef struct job_cond {
    fixture_t *f;
    const char *id;
} job_cond_t;

static bool job_finished(void *ctx)
{
    job_cond_t *c = ctx;
    json_t *job = get_job(c->f, c->id);
    const char *st = json_string_value(json_object_get(job, "state"));
    bool done = st && (!strcmp(st, "completed") || !strcmp(st, "failed") || !strcmp(st, "dead") ||
                       !strcmp(st, "cancelled"));
    json_decref(job);
    return done;
}

/* Waits for the job's final state, which must be want; returns the job (caller owns). */
static json_t *wait_final(fixture_t *f, const char *id, const char *want)
{
    job_cond_t c = {f, id};
    kiln_test_wait_until(job_finished, &c, 60000);
    json_t *job = get_job(f, id);
    const char *st = json_string_value(json_object_get(job, "state"));
    if (!st || strcmp(st, want) != 0) {
        char *text = json_dumps(job, JSON_INDENT(1));
        fail_msg("job %s is not %s: %s", id, want, text ? text : "(null)");
    }
    return job;
}

/* One counter from the fake's GET /fake/stats, through libkiln's HTTP layer. */
static long fake_stat(const fixture_t *f, const char *name)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", f->fake_port);
    kiln_http_client_options_t opts = {.base_url = url, .name = "stats", .timeout_ms = 5000};
    kiln_http_client_t *client = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_http_client_new(&opts, &client, &err), 0);
    kiln_http_call_t call = {.method = "GET", .path = "/fake/stats", .cancel_fd = -1};
    kiln_http_result_t res;
    if (kiln_http_call(client, &call, &res, &err) != 0)
        fail_msg("GET /fake/stats: %s", err.msg);
    json_t *stats = json_loads(res.body, 0, NULL);
    long value = (long)json_integer_value(json_object_get(stats, name));
    json_decref(stats);
    kiln_http_result_clear(&res);
    kiln_http_client_free(client);
    return value;
}

static bool fake_interrupted(void *ctx)
{
    return fake_stat(ctx, "interrupts") >= 1;
}

#define WORKFLOW(steps, fault)                                                                     \
    "{\"service\":\"comfyui\",\"payload\":{\"workflow\":{"                                         \
    "\"4\":{\"class_type\":\"CheckpointLoaderSimple\",\"inputs\":{\"ckpt_name\":\"m\"}},"          \
    "\"3\":{\"class_type\":\"KSampler\",\"inputs\":{\"steps\":" steps ",\"model\":[\"4\",0]}},"    \
    "\"9\":{\"class_type\":\"SaveImage\",\"inputs\":{\"filename_prefix\":\"e2e\","                 \
    "\"images\":[\"3\",0]}}" fault "},\"inputs\":{\"3.seed\":7}}}"

static void a_workflow_through_a_worker_completes_with_its_saved_image(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX];
    submit(f, WORKFLOW("6", ""), id);
    json_t *job = wait_final(f, id, "completed");
    json_t *result = json_object_get(job, "result");
    assert_string_equal(json_string_value(json_object_get(result, "progress")), "websocket");
    json_t *item = json_array_get(json_object_get(result, "outputs"), 0);
    assert_string_equal(json_string_value(json_object_get(item, "filename")), "e2e_00000_.png");
    const char *path = json_string_value(json_object_get(item, "path"));
    char want[600];
    snprintf(want, sizeof want, "%s/%s/e2e_00000_.png", f->outputs, id);
    assert_string_equal(path, want);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 2048);
    json_decref(job);

    /* A workflow ComfyUI refuses fails at once, without burning attempts. */
    submit(f, WORKFLOW("0", ""), id);
    job = wait_final(f, id, "failed");
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);
    const char *error = json_string_value(json_object_get(job, "error"));
    assert_non_null(strstr(error ? error : "", "node 3 KSampler"));
    json_decref(job);
    f->passed = true;
}

static bool job_running_with_progress(void *ctx)
{
    job_cond_t *c = ctx;
    json_t *job = get_job(c->f, c->id);
    const char *st = json_string_value(json_object_get(job, "state"));
    const char *message = json_string_value(json_object_get(job, "progress_message"));
    bool running = st && !strcmp(st, "running") && message && strstr(message, "step");
    json_decref(job);
    return running;
}

static void cancelling_a_running_job_interrupts_comfyui(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX];
    submit(
        f,
        WORKFLOW("20", ",\"99\":{\"class_type\":\"KilnFakeFault\",\"inputs\":{\"mode\":\"slow\"}}"),
        id);
    job_cond_t c = {f, id};
    if (!kiln_test_wait_until(job_running_with_progress, &c, 30000)) {
        json_t *job = get_job(f, id);
        char *text = json_dumps(job, JSON_COMPACT);
        json_decref(job);
        fail_msg("job %s never reported a step: %s", id, text ? text : "");
    }
    kiln_err_t err = {0};
    if (kiln_broker_cancel(f->broker, id, &err) != 0)
        fail_msg("cancel %s: %s", id, err.msg);
    json_decref(wait_final(f, id, "cancelled"));
    if (!kiln_test_wait_until(fake_interrupted, f, 10000))
        fail_msg("ComfyUI was not interrupted after the cancel");
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(a_workflow_through_a_worker_completes_with_its_saved_image,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(cancelling_a_running_job_interrupts_comfyui, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

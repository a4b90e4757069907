/*
 * End to end: a real `kiln worker` serving an openai connector (configured
 * in kiln.yaml, its key in an environment variable) against a real
 * redis-server and fake_openai (tests/fakes/fake_openai.c) as the API.
 * The test submits jobs through the broker's API and waits for their final
 * state; the logs are printed when a test fails.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kiln/broker.h"
#include "kiln_test.h"

#define FAKE(name)   KILN_TEST_FAKES_DIR "/" name
#define KEY          "sk-kiln-e2e-Hq4rT8wZ2xC6vB1n"
#define LOG_MAX      (4 * 1024 * 1024)

typedef struct fixture {
    kiln_test_redis_t redis;
    char dir[256];
    char config[320], log_path[320], fake_log[320];
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
    snprintf(f->fake_log, sizeof f->fake_log, "%s/fake_openai.log", f->dir);

    char *fake_argv[] = {FAKE("fake_openai"), "0", "--key", KEY, NULL};
    f->fake = kiln_test_spawn(fake_argv, NULL, f->fake_log);
    if (!kiln_test_wait_until(fake_listening, f, 10000)) {
        kiln_test_dump_file("fake_openai log", f->fake_log);
        fail_msg("fake_openai did not start");
    }

    char yaml[600];
    snprintf(yaml, sizeof yaml,
             "connectors:\n"
             "  openai:\n"
             "    type: openai\n"
             "    base_url: http://127.0.0.1:%d\n"
             "    api_key_env: TEST_KEY\n"
             "    model: gpt-e2e\n"
             "    max_retries: 2\n",
             f->fake_port);
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
                    "openai",
                    "--concurrency",
                    "2",
                    "--log-format",
                    "text",
                    "--log-level",
                    "debug",
                    "--id",
                    "openai-1",
                    NULL};
    char *env[] = {"TEST_KEY=" KEY, NULL};
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
        kiln_test_dump_file("fake_openai log", f->fake_log);
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

static void a_chat_job_through_a_worker_completes_with_the_text(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX];
    submit(f,
           "{\"service\":\"openai\",\"payload\":{\"endpoint\":\"chat\",\"messages\":"
           "[{\"role\":\"user\",\"content\":\"fire the kiln\"}]}}",
           id);
    json_t *job = wait_final(f, id, "completed");
    json_t *result = json_object_get(job, "result");
    assert_string_equal(json_string_value(json_object_get(result, "text")),
                        "Hello! You said: fire the kiln");
    assert_string_equal(json_string_value(json_object_get(result, "model")), "gpt-e2e");
    assert_string_equal(json_string_value(json_object_get(result, "finish_reason")), "stop");
    json_decref(job);

    /* A refused request fails at once, without burning its attempts. */
    submit(f,
           "{\"service\":\"openai\",\"payload\":{\"model\":\"400\",\"messages\":"
           "[{\"role\":\"user\",\"content\":\"x\"}]}}",
           id);
    job = wait_final(f, id, "failed");
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);
    json_decref(job);

    char *log = slurp(f->log_path, LOG_MAX);
    if (strstr(log, KEY))
        fail_msg("the API key appears in the worker's log");
    free(log);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(a_chat_job_through_a_worker_completes_with_the_text, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

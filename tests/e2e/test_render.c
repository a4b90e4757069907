/*
 * End to end: a real `kiln worker` serving a render connector (configured
 * in kiln.yaml) against a real redis-server renders a video with the real
 * ffmpeg. The test submits jobs through the broker's API and waits for
 * their final state; the worker's log is printed when a test fails.
 */
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kiln/broker.h"
#include "kiln_test.h"

typedef struct fixture {
    kiln_test_redis_t redis;
    char dir[256];
    char config[320], inputs[320], outputs[320], log_path[320];
    kiln_broker_options_t opts;
    kiln_broker_t *broker;
    pid_t worker;
    bool passed; /* set by the test's last line; otherwise teardown dumps the log */
} fixture_t;

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    kiln_test_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->inputs, sizeof f->inputs, "%s/inputs", f->dir);
    snprintf(f->outputs, sizeof f->outputs, "%s/outputs", f->dir);
    snprintf(f->config, sizeof f->config, "%s/kiln.yaml", f->dir);
    snprintf(f->log_path, sizeof f->log_path, "%s/worker.log", f->dir);
    assert_int_equal(mkdir(f->inputs, 0755), 0);

    char wav[400];
    snprintf(wav, sizeof wav, "%s/tone.wav", f->inputs);
    char *make_audio[] = {"/usr/bin/ffmpeg",
                          "-hide_banner",
                          "-loglevel",
                          "error",
                          "-nostdin",
                          "-y",
                          "-f",
                          "lavfi",
                          "-i",
                          "sine=frequency=440:duration=2",
                          wav,
                          NULL};
    assert_int_equal(kiln_test_run(make_audio, NULL, NULL, 0), 0);

    char yaml[1200];
    snprintf(yaml, sizeof yaml,
             "connectors:\n"
             "  render:\n"
             "    type: render\n"
             "    outputs_dir: %s\n"
             "    inputs_dir: %s\n"
             "    timeout_ms: 60000\n",
             f->outputs, f->inputs);
    write_file(f->config, yaml);

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
                    "render",
                    "--concurrency",
                    "2",
                    "--log-format",
                    "text",
                    "--log-level",
                    "debug",
                    "--id",
                    "render-1",
                    NULL};
    f->worker = kiln_test_spawn(argv, NULL, f->log_path);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->worker > 0)
        kiln_test_kill(f->worker, SIGTERM, 10000);
    if (!f->passed)
        kiln_test_dump_file("worker log", f->log_path);
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

/* Waits for the job's final state and returns the job (caller owns). */
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

static void a_render_job_through_a_worker_completes_with_the_video(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX];
    submit(f,
           "{\"service\":\"render\",\"payload\":{\"input\":\"tone.wav\",\"width\":320,"
           "\"height\":240,\"fps\":25,\"output_name\":\"e2e\"}}",
           id);
    json_t *job = wait_final(f, id, "completed");
    json_t *result = json_object_get(job, "result");
    char expected[400], resolved[PATH_MAX];
    snprintf(expected, sizeof expected, "%s/e2e.mp4", f->outputs);
    assert_non_null(realpath(expected, resolved));
    assert_string_equal(json_string_value(json_object_get(result, "output")), resolved);
    struct stat sb;
    assert_int_equal(stat(resolved, &sb), 0);
    assert_true(sb.st_size > 0);
    assert_int_equal(json_integer_value(json_object_get(result, "bytes")), sb.st_size);
    assert_int_equal(json_integer_value(json_object_get(result, "width")), 320);
    assert_true(json_number_value(json_object_get(job, "progress")) == 100.0);
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);

    char *probe[] = {
        "/usr/bin/ffprobe",    "-v",  "error",   "-select_streams", "v:0", "-show_entries",
        "stream=width,height", "-of", "csv=p=0", resolved,          NULL};
    char got[64] = "";
    assert_int_equal(kiln_test_run(probe, NULL, got, sizeof got), 0);
    assert_string_equal(got, "320,240\n");
    json_decref(job);
    f->passed = true;
}

static void a_job_outside_the_inputs_folder_fails_at_once_without_retries(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX];
    submit(f,
           "{\"service\":\"render\",\"max_attempts\":3,"
           "\"payload\":{\"input\":\"../kiln.yaml\",\"width\":320,\"height\":240}}",
           id);
    json_t *job = wait_final(f, id, "failed");
    const char *error = json_string_value(json_object_get(job, "error"));
    if (!error || !strstr(error, "outside connectors.render.inputs_dir"))
        fail_msg("unexpected error: %s", error ? error : "(null)");
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);
    json_decref(job);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(a_render_job_through_a_worker_completes_with_the_video,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_job_outside_the_inputs_folder_fails_at_once_without_retries, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

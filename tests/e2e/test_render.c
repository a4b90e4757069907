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
#include "kiln_test_worker.h"

/* The fixture and the connector's folders. */
typedef struct fixture {
    kiln_test_worker_t w;
    char inputs[320], outputs[320];
} fixture_t;

static int setup(void **state)
{
    static fixture_t f;
    kiln_test_worker_init(&f.w);
    snprintf(f.inputs, sizeof f.inputs, "%s/inputs", f.w.dir);
    snprintf(f.outputs, sizeof f.outputs, "%s/outputs", f.w.dir);
    assert_int_equal(mkdir(f.inputs, 0755), 0);

    char wav[400];
    snprintf(wav, sizeof wav, "%s/tone.wav", f.inputs);
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
             f.outputs, f.inputs);
    kiln_test_worker_start(&f.w, yaml, "render", NULL);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    kiln_test_worker_stop(&f->w, NULL);
    return 0;
}

static void a_render_job_through_a_worker_completes_with_the_video(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX];
    kiln_test_worker_submit(
        &f->w,
        "{\"service\":\"render\",\"payload\":{\"input\":\"tone.wav\",\"width\":320,"
        "\"height\":240,\"fps\":25,\"output_name\":\"e2e\"}}",
        id);
    json_t *job = kiln_test_worker_wait_final(&f->w, id, "completed");
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
    f->w.passed = true;
}

static void a_job_outside_the_inputs_folder_fails_at_once_without_retries(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX];
    kiln_test_worker_submit(
        &f->w,
        "{\"service\":\"render\",\"max_attempts\":3,"
        "\"payload\":{\"input\":\"../kiln.yaml\",\"width\":320,\"height\":240}}",
        id);
    json_t *job = kiln_test_worker_wait_final(&f->w, id, "failed");
    const char *error = json_string_value(json_object_get(job, "error"));
    if (!error || !strstr(error, "outside connectors.render.inputs_dir"))
        fail_msg("unexpected error: %s", error ? error : "(null)");
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);
    json_decref(job);
    f->w.passed = true;
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

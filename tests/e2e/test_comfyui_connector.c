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

#include "kiln/broker.h"
#include "kiln_test.h"
#include "kiln_test_worker.h"

/* The fixture and where the connector saves outputs. */
typedef struct fixture {
    kiln_test_worker_t w;
    char outputs[320];
} fixture_t;

static int setup(void **state)
{
    static fixture_t f;
    kiln_test_worker_init(&f.w);
    snprintf(f.outputs, sizeof f.outputs, "%s/outputs", f.w.dir);
    assert_int_equal(mkdir(f.outputs, 0755), 0);
    kiln_test_worker_start_fake(&f.w, "fake_comfyui", NULL);

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
             f.outputs);
    char urls[96];
    snprintf(urls, sizeof urls, "KILN_CONNECTOR_URLS=comfyui=%s", f.w.fake.url);
    char *env[] = {urls, NULL};
    kiln_test_worker_start(&f.w, yaml, "comfyui", env);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    kiln_test_worker_stop(&f->w, NULL);
    return 0;
}

static bool fake_interrupted(void *ctx)
{
    return kiln_test_fake_stat(ctx, "interrupts") >= 1;
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
    kiln_test_worker_submit(&f->w, WORKFLOW("6", ""), id);
    json_t *job = kiln_test_worker_wait_final(&f->w, id, "completed");
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
    kiln_test_worker_submit(&f->w, WORKFLOW("0", ""), id);
    job = kiln_test_worker_wait_final(&f->w, id, "failed");
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);
    const char *error = json_string_value(json_object_get(job, "error"));
    assert_non_null(strstr(error ? error : "", "node 3 KSampler"));
    json_decref(job);
    f->w.passed = true;
}

typedef struct job_cond {
    fixture_t *f;
    const char *id;
} job_cond_t;

static bool job_running_with_progress(void *ctx)
{
    job_cond_t *c = ctx;
    json_t *job = kiln_test_worker_job(&c->f->w, c->id);
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
    kiln_test_worker_submit(
        &f->w,
        WORKFLOW("20", ",\"99\":{\"class_type\":\"KilnFakeFault\",\"inputs\":{\"mode\":\"slow\"}}"),
        id);
    job_cond_t c = {f, id};
    if (!kiln_test_wait_until(job_running_with_progress, &c, 30000)) {
        json_t *job = kiln_test_worker_job(&f->w, id);
        char *text = json_dumps(job, JSON_COMPACT);
        json_decref(job);
        fail_msg("job %s never reported a step: %s", id, text ? text : "");
    }
    kiln_err_t err = {0};
    if (kiln_broker_cancel(f->w.broker, id, &err) != 0)
        fail_msg("cancel %s: %s", id, err.msg);
    json_decref(kiln_test_worker_wait_final(&f->w, id, "cancelled"));
    if (!kiln_test_wait_until(fake_interrupted, &f->w.fake, 10000))
        fail_msg("ComfyUI was not interrupted after the cancel");
    f->w.passed = true;
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

/*
 * End to end: a real `kiln worker` serving an a1111 connector (configured
 * in kiln.yaml, with --api-auth credentials in its URL) against a real
 * redis-server and fake_a1111 (tests/fakes/fake_a1111.c) as the web UI.
 * Jobs are submitted and cancelled through the broker's API.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kiln_test_connector.h"
#include "kiln_test_worker.h"

#define USER_PASS "kiln:e2e-Pw5-secret"

static kiln_test_worker_t worker;
static char outputs[320];

static int setup(void **state)
{
    kiln_test_worker_init(&worker);
    snprintf(outputs, sizeof outputs, "%s/outputs", worker.dir);
    assert_int_equal(mkdir(outputs, 0755), 0);
    char *args[] = {"--auth", USER_PASS, NULL};
    kiln_test_worker_start_fake(&worker, "fake_a1111", args);
    char yaml[800];
    snprintf(yaml, sizeof yaml,
             "connectors:\n"
             "  a1111:\n"
             "    type: a1111\n"
             "    url: http://%s@127.0.0.1:%d\n"
             "    outputs_dir: %s\n"
             "    poll_interval_ms: 100\n",
             USER_PASS, worker.fake.port, outputs);
    kiln_test_worker_start(&worker, yaml, "a1111", NULL);
    return 0;
}

static int teardown(void **state)
{
    kiln_test_worker_stop(&worker, NULL);
    return 0;
}

typedef struct progress_cond {
    const char *id;
} progress_cond_t;

static bool running_with_progress(void *ctx)
{
    json_t *job = kiln_test_worker_job(&worker, ((progress_cond_t *)ctx)->id);
    const char *state = json_string_value(json_object_get(job, "state"));
    json_t *progress = json_object_get(job, "progress");
    bool ok = state && strcmp(state, "running") == 0 && json_number_value(progress) > 0;
    json_decref(job);
    return ok;
}

static bool interrupt_seen(void *ctx)
{
    return kiln_test_fake_stat(&worker.fake, "interrupts") >= 1;
}

static void txt2img_job_saves_images_and_a_cancel_interrupts_the_server(void **state)
{
    char id[KILN_JOB_ID_MAX];
    kiln_test_worker_submit(&worker,
                            "{\"service\":\"a1111\",\"payload\":{\"prompt\":\"a kiln\","
                            "\"steps\":10,\"batch_size\":2}}",
                            id);
    json_t *job = kiln_test_worker_wait_final(&worker, id, "completed");
    json_t *images = json_object_get(json_object_get(job, "result"), "images");
    assert_int_equal(json_array_size(images), 2);
    for (size_t i = 0; i < 2; i++) {
        const char *path = json_string_value(json_array_get(images, i));
        struct stat st;
        assert_non_null(path);
        assert_int_equal(strncmp(path, outputs, strlen(outputs)), 0);
        assert_int_equal(stat(path, &st), 0);
        assert_true(st.st_size > 8);
    }
    json_decref(job);

    /* A long run: cancelled once it shows progress in Redis. */
    kiln_test_worker_submit(
        &worker, "{\"service\":\"a1111\",\"payload\":{\"prompt\":\"long\",\"steps\":1000}}", id);
    progress_cond_t cond = {id};
    if (!kiln_test_wait_until(running_with_progress, &cond, 30000))
        fail_msg("job %s never showed progress", id);
    kiln_err_t err = {0};
    if (kiln_broker_cancel(worker.broker, id, &err) != 0)
        fail_msg("cancel %s: %s", id, err.msg);
    json_decref(kiln_test_worker_wait_final(&worker, id, "cancelled"));
    assert_true(kiln_test_wait_until(interrupt_seen, NULL, 10000));

    char *log = kiln_test_slurp(worker.log_path, 4 * 1024 * 1024);
    if (strstr(log, "e2e-Pw5-secret"))
        fail_msg("the URL's password appears in the worker's log");
    free(log);
    assert_int_equal(kiln_test_fake_stat(&worker.fake, "auth_bad"), 0);
    worker.passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(txt2img_job_saves_images_and_a_cancel_interrupts_the_server,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

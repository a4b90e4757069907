/*
 * End to end: a real `kiln worker` serving a runpod connector (kiln.yaml,
 * its key in an environment variable) against a real redis-server and
 * fake_runpod as the API. Jobs go in through the broker; the test waits
 * for their final state in Redis.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln_test.h"
#include "kiln_test_worker.h"

#define KEY     "rpa_KILNE2EKEY0123456789ABCDEFGHIJKLMN"
#define LOG_MAX (4 * 1024 * 1024)

static int setup(void **state)
{
    static kiln_test_worker_t e;
    static const char yaml[] = "connectors:\n"
                               "  runpod:\n"
                               "    type: runpod\n"
                               "    base_url: @FAKE@/v2\n"
                               "    endpoint_id: ep-e2e\n"
                               "    api_key_env: TEST_KEY\n"
                               "    poll_interval_ms: 20\n"
                               "    poll_interval_max_ms: 100\n";
    char *fake_args[] = {"--key", KEY, "--endpoint", "ep-e2e", NULL};
    char *env[] = {"TEST_KEY=" KEY, NULL};
    kiln_test_worker_init(&e);
    kiln_test_worker_start_fake(&e, "fake_runpod", fake_args);
    kiln_test_worker_start(&e, yaml, "runpod", env);
    *state = &e;
    return 0;
}

static int teardown(void **state)
{
    kiln_test_worker_stop(*state, NULL);
    return 0;
}

static void a_job_completes_through_a_worker_and_a_cancel_reaches_runpod(void **state)
{
    kiln_test_worker_t *e = *state;
    char id[KILN_JOB_ID_MAX];
    kiln_test_worker_submit(
        e, "{\"service\":\"runpod\",\"payload\":{\"input\":{\"prompt\":\"a kiln\",\"steps\":3}}}",
        id);
    json_t *job = kiln_test_worker_wait_final(e, id, "completed");
    json_t *result = json_object_get(job, "result");
    assert_string_equal(json_string_value(json_object_get(result, "status")), "COMPLETED");
    json_t *images = json_object_get(json_object_get(result, "output"), "images");
    assert_int_equal(json_array_size(images), 1);
    json_decref(job);

    /* A job RunPod fails is failed at once: a retry would fail the same way. */
    kiln_test_worker_submit(
        e, "{\"service\":\"runpod\",\"payload\":{\"input\":{\"fault\":\"fail\"}}}", id);
    job = kiln_test_worker_wait_final(e, id, "failed");
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);
    assert_non_null(strstr(json_string_value(json_object_get(job, "error")), "CUDA out of memory"));
    json_decref(job);

    /* A cancel through the broker stops the job and cancels it on RunPod. */
    kiln_test_worker_cancel_remote(
        e, "{\"service\":\"runpod\",\"payload\":{\"input\":{\"fault\":\"hang\"}}}", "loading model",
        id);

    char *log = kiln_test_slurp(e->log_path, LOG_MAX);
    if (strstr(log, KEY))
        fail_msg("the API key appears in the worker's log");
    free(log);
    e->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            a_job_completes_through_a_worker_and_a_cancel_reaches_runpod, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * End to end: a real `kiln worker` serving a replicate connector (kiln.yaml,
 * its token in an environment variable, a fleet rate limit) against a real
 * redis-server and fake_replicate as the API. Jobs go in through the
 * broker; the test waits for their final state in Redis.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kiln_test.h"
#include "kiln_test_worker.h"

#define KEY     "r8_kilnE2eToken_Hq4rT8wZ2xC6vB1n"
#define LOG_MAX (4 * 1024 * 1024)

static char outputs[256];

static int setup(void **state)
{
    static kiln_test_worker_t e;
    kiln_test_tmpdir(outputs, sizeof outputs);
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "connectors:\n"
             "  replicate:\n"
             "    type: replicate\n"
             "    base_url: @FAKE@/v1\n"
             "    api_key_env: TEST_TOKEN\n"
             "    model: kiln/sdxl\n"
             "    poll_interval_ms: 20\n"
             "    poll_interval_max_ms: 100\n"
             "    outputs_dir: %s\n"
             "    rate_limit_per_minute: 600\n"
             "    rate_limit_key: replicate-account\n",
             outputs);
    char *fake_args[] = {"--key", KEY, NULL};
    char *env[] = {"TEST_TOKEN=" KEY, NULL};
    kiln_test_worker_init(&e);
    kiln_test_worker_start_fake(&e, "fake_replicate", fake_args);
    kiln_test_worker_start(&e, yaml, "replicate", env);
    *state = &e;
    return 0;
}

static int teardown(void **state)
{
    kiln_test_worker_stop(*state, NULL);
    return 0;
}

static void a_prediction_job_completes_with_its_files_and_a_cancel_reaches_replicate(void **state)
{
    kiln_test_worker_t *e = *state;
    char id[KILN_JOB_ID_MAX];
    kiln_test_worker_submit(
        e,
        "{\"service\":\"replicate\",\"payload\":{\"input\":{\"prompt\":\"a kiln\",\"steps\":3}}}",
        id);
    json_t *job = kiln_test_worker_wait_final(e, id, "completed");
    json_t *result = json_object_get(job, "result");
    assert_string_equal(json_string_value(json_object_get(result, "status")), "succeeded");
    json_t *file = json_array_get(json_object_get(result, "files"), 0);
    const char *path = json_string_value(json_object_get(file, "path"));
    assert_non_null(path);
    assert_true(strncmp(path, outputs, strlen(outputs)) == 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 0);
    json_decref(job);

    /* Every request went through the fleet budget in the worker's Redis. */
    redisContext *rc = kiln_test_redis_connect(&e->redis);
    redisReply *reply = redisCommand(rc, "ZCARD kiln:ratelimit:{replicate-account}");
    assert_int_equal(reply->integer, kiln_test_fake_stat(&e->fake, "requests"));
    freeReplyObject(reply);
    redisFree(rc);

    /* A cancel through the broker stops the job and cancels the prediction. */
    kiln_test_worker_cancel_remote(
        e, "{\"service\":\"replicate\",\"payload\":{\"input\":{\"fault\":\"hang\"}}}", "processing",
        id);

    char *log = kiln_test_slurp(e->log_path, LOG_MAX);
    if (strstr(log, KEY))
        fail_msg("the API token appears in the worker's log");
    free(log);
    e->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            a_prediction_job_completes_with_its_files_and_a_cancel_reaches_replicate, setup,
            teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

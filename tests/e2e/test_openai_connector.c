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
#include "kiln_test_worker.h"

#define KEY     "sk-kiln-e2e-Hq4rT8wZ2xC6vB1n"
#define LOG_MAX (4 * 1024 * 1024)

static int setup(void **state)
{
    static kiln_test_worker_t w;
    kiln_test_worker_init(&w);
    char *fake_args[] = {"--key", KEY, NULL};
    kiln_test_worker_start_fake(&w, "fake_openai", fake_args);
    char *env[] = {"TEST_KEY=" KEY, NULL};
    kiln_test_worker_start(&w,
                           "connectors:\n"
                           "  openai:\n"
                           "    type: openai\n"
                           "    base_url: @FAKE@\n"
                           "    api_key_env: TEST_KEY\n"
                           "    model: gpt-e2e\n"
                           "    max_retries: 2\n",
                           "openai", env);
    *state = &w;
    return 0;
}

static int teardown(void **state)
{
    kiln_test_worker_stop(*state, NULL);
    return 0;
}

static void a_chat_job_through_a_worker_completes_with_the_text(void **state)
{
    kiln_test_worker_t *f = *state;
    char id[KILN_JOB_ID_MAX];
    kiln_test_worker_submit(
        f,
        "{\"service\":\"openai\",\"payload\":{\"endpoint\":\"chat\",\"messages\":"
        "[{\"role\":\"user\",\"content\":\"fire the kiln\"}]}}",
        id);
    json_t *job = kiln_test_worker_wait_final(f, id, "completed");
    json_t *result = json_object_get(job, "result");
    assert_string_equal(json_string_value(json_object_get(result, "text")),
                        "Hello! You said: fire the kiln");
    assert_string_equal(json_string_value(json_object_get(result, "model")), "gpt-e2e");
    assert_string_equal(json_string_value(json_object_get(result, "finish_reason")), "stop");
    json_decref(job);

    /* A refused request fails at once, without burning its attempts. */
    kiln_test_worker_submit(f,
                            "{\"service\":\"openai\",\"payload\":{\"model\":\"400\",\"messages\":"
                            "[{\"role\":\"user\",\"content\":\"x\"}]}}",
                            id);
    job = kiln_test_worker_wait_final(f, id, "failed");
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);
    json_decref(job);

    char *log = kiln_test_slurp(f->log_path, LOG_MAX);
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

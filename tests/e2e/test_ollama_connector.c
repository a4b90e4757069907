/*
 * End to end: a real `kiln worker` serving an ollama connector (configured
 * in kiln.yaml, its URL from KILN_CONNECTOR_URLS) against a real
 * redis-server and fake_ollama (tests/fakes/fake_ollama.c) as the Ollama
 * server. Jobs are submitted through the broker's API and their final state
 * read back from Redis.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln_test_connector.h"
#include "kiln_test_worker.h"

static kiln_test_worker_t worker;

static int setup(void **state)
{
    kiln_test_worker_init(&worker);
    kiln_test_worker_start_fake(&worker, "fake_ollama", NULL);
    /* The file's url leads nowhere: the machine agent's KILN_CONNECTOR_URLS
     * (base_url) points the worker at the server, as on a machine. */
    const char *yaml = "connectors:\n"
                       "  ollama:\n"
                       "    type: ollama\n"
                       "    url: http://127.0.0.1:1\n"
                       "    model: llama3\n"
                       "    max_retries: 2\n";
    static char urls[128];
    snprintf(urls, sizeof urls, "KILN_CONNECTOR_URLS=ollama=%s", worker.fake.url);
    char *env[] = {urls, NULL};
    kiln_test_worker_start(&worker, yaml, "ollama", env);
    return 0;
}

static int teardown(void **state)
{
    kiln_test_worker_stop(&worker, NULL);
    return 0;
}

static const char *jstr(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

static void generate_and_chat_jobs_complete_with_text_and_a_missing_model_is_pulled(void **state)
{
    char id[KILN_JOB_ID_MAX];
    kiln_test_worker_submit(
        &worker, "{\"service\":\"ollama\",\"payload\":{\"prompt\":\"fire the kiln\"}}", id);
    json_t *job = kiln_test_worker_wait_final(&worker, id, "completed");
    json_t *result = json_object_get(job, "result");
    assert_string_equal(jstr(result, "text"), "Hello! You said: fire the kiln");
    assert_string_equal(jstr(result, "model"), "llama3");
    assert_int_equal(json_integer_value(json_object_get(result, "eval_count")), 6);
    json_decref(job);

    kiln_test_worker_submit(&worker,
                            "{\"service\":\"ollama\",\"payload\":{\"model\":\"missing-mistral\","
                            "\"messages\":[{\"role\":\"user\",\"content\":\"pulled?\"}]}}",
                            id);
    job = kiln_test_worker_wait_final(&worker, id, "completed");
    result = json_object_get(job, "result");
    assert_string_equal(jstr(json_object_get(result, "message"), "content"),
                        "Hello! You said: pulled?");
    assert_int_equal(kiln_test_fake_stat(&worker.fake, "pulls"), 1);
    json_decref(job);

    /* A model that cannot be pulled fails at once, without burning attempts. */
    kiln_test_worker_submit(
        &worker,
        "{\"service\":\"ollama\",\"payload\":{\"model\":\"missing-unknown\",\"prompt\":\"x\"}}",
        id);
    job = kiln_test_worker_wait_final(&worker, id, "failed");
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);
    assert_non_null(strstr(jstr(job, "error"), "could not be pulled"));
    json_decref(job);
    worker.passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            generate_and_chat_jobs_complete_with_text_and_a_missing_model_is_pulled, setup,
            teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

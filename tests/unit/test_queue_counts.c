/*
 * /api/health's queue counts against a real redis-server: jobs pending and
 * running on the services this machine's workers serve, and only those.
 */
#include "kiln_test.h"

#include <stdlib.h>
#include <string.h>

#include "agent/agent_internal.h"
#include "kiln/broker.h"

static kiln_test_redis_t redis_server;

static void submit(kiln_broker_t *b, const char *service, int n)
{
    char json[128], id[KILN_JOB_ID_MAX];
    snprintf(json, sizeof json, "{\"service\": \"%s\"}", service);
    for (int i = 0; i < n; i++) {
        kiln_job_spec_t spec;
        kiln_err_t err = {0};
        assert_int_equal(kiln_job_spec_parse(json, strlen(json), 4096, &spec, &err), 0);
        assert_int_equal(kiln_broker_submit(b, &spec, id, NULL, &err), 0);
        kiln_job_spec_clear(&spec);
    }
}

static void counts_only_the_services_this_machine_serves(void **state)
{
    kiln_broker_options_t opts = {.redis_url = redis_server.url,
                                  .max_payload_bytes = 4096,
                                  .stream_max_len = 1000,
                                  .retention_age_s = 3600,
                                  .retention_count = 100,
                                  .default_max_attempts = 3,
                                  .backoff_base_ms = 50,
                                  .backoff_max_ms = 1000,
                                  .lease_ms = 30000};
    kiln_broker_t *b;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_connect(&opts, &b, &err), 0);
    submit(b, "comfyui", 3);
    submit(b, "openai", 2);
    submit(b, "elsewhere", 5); /* a service no worker here serves */
    kiln_worker_identity_t who;
    assert_int_equal(kiln_worker_identity_init(&who, "w1", "m1", NULL, &err), 0);
    kiln_claimed_job_t job;
    int n = 0;
    assert_int_equal(kiln_broker_claim(b, "comfyui", &who, 1, &job, &n, NULL, &err), 0);
    assert_int_equal(n, 1);
    kiln_claimed_job_clear(&job);

    char *served[] = {"comfyui", "openai", "idle"};
    long pending = -1, processing = -1;
    assert_int_equal(kiln_agent_queue_counts_from(b, served, 3, &pending, &processing, &err), 0);
    assert_int_equal(pending, 2 + 2);
    assert_int_equal(processing, 1);
    assert_int_equal(kiln_agent_queue_counts_from(b, served, 0, &pending, &processing, &err), 0);
    assert_int_equal(pending, 0);
    assert_int_equal(processing, 0);
    kiln_worker_identity_clear(&who);
    kiln_broker_free(b);
}

int main(void)
{
    kiln_test_redis_start(&redis_server, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(counts_only_the_services_this_machine_serves),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    kiln_test_redis_destroy(&redis_server);
    return rc;
}

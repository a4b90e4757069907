/*
 * End to end: a real `kiln worker` serving an a1111 connector against
 * fake_a1111 (tests/fakes/fake_a1111.c) on a real redis-server, with the
 * fake stopped (connection refused) and started again on its port. The
 * worker checks its connector's health every worker.health_interval_ms,
 * publishes it on kiln:worker:<id>, claims nothing while it fails and
 * claims again once it passes.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kiln_test_connector.h"
#include "kiln_test_worker.h"

static kiln_test_worker_t worker;

static int setup(void **state)
{
    kiln_test_worker_init(&worker);
    char outputs[320], yaml[800];
    snprintf(outputs, sizeof outputs, "%s/outputs", worker.dir);
    assert_int_equal(mkdir(outputs, 0755), 0);
    kiln_test_worker_start_fake(&worker, "fake_a1111", NULL);
    snprintf(yaml, sizeof yaml,
             "worker:\n"
             "  health_interval_ms: 200\n"
             "connectors:\n"
             "  a1111:\n"
             "    type: a1111\n"
             "    url: %s\n"
             "    outputs_dir: %s\n"
             "    poll_interval_ms: 100\n",
             worker.fake.url, outputs);
    kiln_test_worker_start(&worker, yaml, "a1111", NULL);
    return 0;
}

static int teardown(void **state)
{
    kiln_test_worker_stop(&worker, NULL);
    return 0;
}

/* The worker's record as it published it (NULL before it did). */
static json_t *worker_record(void)
{
    redisContext *rc = kiln_test_redis_connect(&worker.redis);
    redisReply *reply = redisCommand(rc, "GET kiln:worker:a1111-1");
    json_t *doc =
        reply && reply->type == REDIS_REPLY_STRING ? json_loads(reply->str, 0, NULL) : NULL;
    freeReplyObject(reply);
    redisFree(rc);
    return doc;
}

typedef struct health_cond {
    const char *status;      /* wanted health.a1111.status */
    long long checked_after; /* and a check later than this (wall ms) */
    long long checked_at;    /* out: the record's last check */
} health_cond_t;

static bool health_is(void *ctx)
{
    health_cond_t *c = ctx;
    json_t *doc = worker_record();
    json_t *one = json_object_get(json_object_get(doc, "health"), "a1111");
    const char *status = json_string_value(json_object_get(one, "status"));
    c->checked_at = json_integer_value(json_object_get(one, "checked_at"));
    bool ok = status && strcmp(status, c->status) == 0 && c->checked_at > c->checked_after;
    json_decref(doc);
    return ok;
}

/* Waits until the record shows status, checked after checked_after;
 * returns the record. */
static json_t *wait_health(const char *status, long long checked_after)
{
    health_cond_t c = {status, checked_after, 0};
    if (!kiln_test_wait_until(health_is, &c, 20000)) {
        json_t *doc = worker_record();
        char *text = doc ? json_dumps(doc, 0) : NULL;
        fail_msg("worker record never showed a1111 %s: %s", status, text ? text : "(none)");
    }
    return worker_record();
}

static const char *job_state(const char *id)
{
    static char state[32];
    json_t *job = kiln_test_worker_job(&worker, id);
    snprintf(state, sizeof state, "%s", json_string_value(json_object_get(job, "state")));
    json_decref(job);
    return state;
}

static int count_in_log(const char *needle)
{
    char *log = kiln_test_slurp(worker.log_path, 1 << 20);
    int n = 0;
    for (const char *p = log; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    free(log);
    return n;
}

static void
worker_stops_claiming_while_its_connector_is_down_and_resumes_when_it_is_back(void **state)
{
    json_t *doc = wait_health("pass", 0);
    assert_true(json_is_true(json_object_get(doc, "claiming")));
    json_decref(doc);
    char id[KILN_JOB_ID_MAX];
    kiln_test_worker_submit(&worker, "{\"service\":\"a1111\",\"payload\":{\"prompt\":\"up\"}}", id);
    json_decref(kiln_test_worker_wait_final(&worker, id, "completed"));

    /* The service goes away: the record says so, with the reason, and the
     * worker stops claiming. */
    kiln_test_fake_stop(&worker.fake);
    doc = wait_health("fail", 0);
    json_t *one = json_object_get(json_object_get(doc, "health"), "a1111");
    const char *error = json_string_value(json_object_get(one, "error"));
    assert_non_null(error);
    assert_non_null(strstr(error, "connectors.a1111"));
    assert_true(json_is_false(json_object_get(doc, "claiming")));
    long long failed_at = json_integer_value(json_object_get(one, "checked_at"));
    json_decref(doc);

    /* A job submitted now stays pending through two more failed checks. */
    kiln_test_worker_submit(&worker, "{\"service\":\"a1111\",\"payload\":{\"prompt\":\"down\"}}",
                            id);
    doc = wait_health("fail", failed_at);
    long long next = json_integer_value(
        json_object_get(json_object_get(json_object_get(doc, "health"), "a1111"), "checked_at"));
    json_decref(doc);
    json_decref(wait_health("fail", next));
    assert_string_equal(job_state(id), "pending");

    /* The service comes back on its port: the worker claims and runs it. */
    kiln_test_fake_restart(&worker.fake);
    json_decref(kiln_test_worker_wait_final(&worker, id, "completed"));
    doc = wait_health("pass", 0);
    assert_true(json_is_true(json_object_get(doc, "claiming")));
    json_decref(doc);

    /* Each change is logged once, however many checks saw it. */
    assert_int_equal(count_in_log("connector a1111 is unhealthy"), 1);
    assert_int_equal(count_in_log("connector a1111 is healthy again"), 1);
    worker.passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            worker_stops_claiming_while_its_connector_is_down_and_resumes_when_it_is_back, setup,
            teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

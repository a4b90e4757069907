/* The machine status/event publisher against a real redis-server. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/publisher.h"
#include "kiln_test.h"

static kiln_test_redis_t redis_server;

static int setup_server(void **state)
{
    kiln_test_redis_start(&redis_server, true);
    return 0;
}

static int teardown_server(void **state)
{
    kiln_test_redis_destroy(&redis_server);
    return 0;
}

static int flush_db(void **state)
{
    redisContext *c = kiln_test_redis_connect(&redis_server);
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    redisFree(c);
    return 0;
}

static kiln_publisher_t *publisher(void)
{
    kiln_publisher_t *p = NULL;
    kiln_err_t err = {0};
    if (kiln_publisher_new(redis_server.url, "m1", 5000, 1000, &p, &err) != 0)
        fail_msg("publisher: %s", err.msg);
    return p;
}

static void flushed(kiln_publisher_t *p)
{
    kiln_err_t err = {0};
    if (kiln_publisher_flush(p, 10000, &err) != 0)
        fail_msg("%s", err.msg);
}

static redisReply *command(const char *fmt, const char *arg)
{
    redisContext *c = kiln_test_redis_connect(&redis_server);
    redisReply *r = redisCommand(c, fmt, arg);
    redisFree(c);
    return r;
}

static void status_is_written_with_a_ttl_and_listed(void **state)
{
    kiln_publisher_t *p = publisher();
    json_t *status = json_pack("{s:s, s:i}", "state", "ready", "services", 3);
    kiln_publisher_status(p, status);
    json_decref(status);
    flushed(p);
    redisReply *r = command("GET %s", "kiln:machine:m1");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_non_null(strstr(r->str, "\"state\":\"ready\""));
    freeReplyObject(r);
    r = command("PTTL %s", "kiln:machine:m1");
    assert_true(r->integer > 0 && r->integer <= 5000);
    freeReplyObject(r);
    r = command("ZSCORE kiln:machines %s", "m1");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
    kiln_publisher_free(p, true);
    r = command("EXISTS %s", "kiln:machine:m1");
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
}

/* Reads the event stream's types in order into a comma list. */
static void stream_types(char *out, size_t size)
{
    redisReply *r = command("XRANGE %s - +", KILN_MACHINE_EVENTS_STREAM);
    out[0] = '\0';
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *fields = r->element[i]->element[1];
        for (size_t f = 0; f + 1 < fields->elements; f += 2) {
            if (strcmp(fields->element[f]->str, "type") == 0) {
                strncat(out, fields->element[f + 1]->str, size - strlen(out) - 2);
                strncat(out, ",", size - strlen(out) - 1);
            }
        }
    }
    freeReplyObject(r);
}

static void events_are_appended_in_order_with_their_fields(void **state)
{
    kiln_publisher_t *p = publisher();
    const char *types[] = {"startup", "worker_phase", "service_state", "shutdown"};
    for (int i = 0; i < 4; i++) {
        json_t *fields = json_pack("{s:i}", "n", i);
        kiln_publisher_event(p, types[i], fields);
        json_decref(fields);
    }
    flushed(p);
    char got[256];
    stream_types(got, sizeof got);
    assert_string_equal(got, "startup,worker_phase,service_state,shutdown,");
    redisReply *r = command("XRANGE %s - + COUNT 1", KILN_MACHINE_EVENTS_STREAM);
    redisReply *fields = r->element[0]->element[1];
    bool saw = false;
    for (size_t f = 0; f + 1 < fields->elements; f += 2)
        saw = saw || (strcmp(fields->element[f]->str, "fields") == 0 &&
                      strcmp(fields->element[f + 1]->str, "{\"n\":0}") == 0);
    assert_true(saw);
    freeReplyObject(r);
    kiln_publisher_free(p, false);
}

static void events_queued_while_redis_is_down_arrive_after_it_returns(void **state)
{
    kiln_publisher_t *p = publisher();
    kiln_publisher_event(p, "before", NULL);
    flushed(p);
    kiln_test_redis_stop(&redis_server);
    kiln_publisher_event(p, "during1", NULL);
    kiln_publisher_event(p, "during2", NULL);
    kiln_err_t err = {0};
    assert_int_equal(kiln_publisher_flush(p, 300, &err), KILN_ETIMEOUT);
    kiln_test_redis_restart(&redis_server);
    kiln_publisher_event(p, "after", NULL);
    flushed(p);
    char got[256];
    stream_types(got, sizeof got);
    assert_string_equal(got, "before,during1,during2,after,");
    assert_int_equal(kiln_publisher_dropped(p), 0);
    kiln_publisher_free(p, true);
}

static bool stream_has_entries(void *ctx)
{
    (void)ctx;
    redisReply *r = command("XLEN %s", KILN_MACHINE_EVENTS_STREAM);
    bool has = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
    freeReplyObject(r);
    return has;
}

/* The agent holds the publisher while a respawn runs; what is queued then
 * is written once released, not before and not lost. */
static void held_events_are_written_only_once_released(void **state)
{
    kiln_publisher_t *p = publisher();
    flushed(p); /* the thread now waits for work */
    kiln_publisher_hold(p, true);
    kiln_publisher_event(p, "service_state", NULL);
    kiln_publisher_event(p, "worker_phase", NULL);
    json_t *status = json_pack("{s:s}", "state", "ready");
    kiln_publisher_status(p, status);
    json_decref(status);
    /* Absence can only be shown by waiting: 200 ms in which nothing woke it. */
    assert_false(kiln_test_wait_until(stream_has_entries, NULL, 200));
    kiln_publisher_hold(p, false);
    assert_true(kiln_test_wait_until(stream_has_entries, NULL, 5000));
    flushed(p);
    char got[256];
    stream_types(got, sizeof got);
    assert_string_equal(got, "service_state,worker_phase,");
    redisReply *r = command("GET %s", "kiln:machine:m1");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
    kiln_publisher_free(p, true);
}

static void only_the_latest_status_is_written(void **state)
{
    kiln_test_redis_stop(&redis_server);
    kiln_publisher_t *p = publisher();
    for (int i = 0; i < 50; i++) {
        json_t *status = json_pack("{s:i}", "version", i);
        kiln_publisher_status(p, status);
        json_decref(status);
    }
    kiln_test_redis_restart(&redis_server);
    flushed(p);
    redisReply *r = command("GET %s", "kiln:machine:m1");
    assert_string_equal(r->str, "{\"version\":49}");
    freeReplyObject(r);
    kiln_publisher_free(p, true);
}

static void a_bad_url_is_refused(void **state)
{
    kiln_publisher_t *p = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_publisher_new("http://x", "m1", 1000, 100, &p, &err), KILN_EINVAL);
    assert_null(p);
    assert_non_null(strstr(err.msg, "redis://"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(status_is_written_with_a_ttl_and_listed, flush_db),
        cmocka_unit_test_setup(events_are_appended_in_order_with_their_fields, flush_db),
        cmocka_unit_test_setup(events_queued_while_redis_is_down_arrive_after_it_returns, flush_db),
        cmocka_unit_test_setup(held_events_are_written_only_once_released, flush_db),
        cmocka_unit_test_setup(only_the_latest_status_is_written, flush_db),
        cmocka_unit_test(a_bad_url_is_refused),
    };
    return cmocka_run_group_tests(tests, setup_server, teardown_server);
}

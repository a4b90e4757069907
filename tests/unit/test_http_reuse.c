/*
 * The HTTP layer keeps one libcurl handle pair per thread (http_reuse.c),
 * so a slot's calls to one API reuse one connection. Checked against
 * fake_openai, which counts the connections it accepts.
 */
#include "connectors/http.h"
#include "connectors/http_reuse.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHAT_BODY                                                                                  \
    "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"            \
    "\"stream\":false}"
#define THREADS 4
#define CALLS   10

static char tmp_root[256];
static int test_seq;

static void fake_start(kiln_test_fake_t *f, bool keep_alive)
{
    char log_path[320];
    snprintf(log_path, sizeof log_path, "%s/fake-%02d.log", tmp_root, ++test_seq);
    char *args[] = {keep_alive ? "--keep-alive" : NULL, NULL};
    kiln_test_fake_start(f, "fake_openai", args, log_path);
}

static kiln_http_client_t *client_for(const kiln_test_fake_t *f)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", f->port);
    kiln_http_client_options_t opts = {.base_url = url, .name = "reuse", .timeout_ms = 10000};
    kiln_http_client_t *client = NULL;
    kiln_err_t err = {0};
    if (kiln_http_client_new(&opts, &client, &err) != 0)
        fail_msg("kiln_http_client_new: %s", err.msg);
    return client;
}

/* One call; the test fails unless it is a 200 with a body. */
static void call(const kiln_http_client_t *client, const char *method, const char *path,
                 const char *body, kiln_http_result_t *res)
{
    kiln_http_call_t c = {.method = method, .path = path, .body_json = body, .cancel_fd = -1};
    kiln_err_t err = {0};
    if (kiln_http_call(client, &c, res, &err) != 0)
        fail_msg("%s %s: %s", method, path, err.msg);
    assert_int_equal(res->status, 200);
    assert_non_null(res->body);
}

static void chat(const kiln_http_client_t *client)
{
    kiln_http_result_t res;
    call(client, "POST", "/v1/chat/completions", CHAT_BODY, &res);
    assert_non_null(strstr(res.body, "\"chat.completion\""));
    kiln_http_result_clear(&res);
}

static long stat_of(const kiln_http_client_t *client, const char *name)
{
    kiln_http_result_t res;
    call(client, "GET", "/fake/stats", NULL, &res);
    json_t *stats = json_loads(res.body, 0, NULL);
    assert_non_null(stats);
    long value = (long)json_integer_value(json_object_get(stats, name));
    json_decref(stats);
    kiln_http_result_clear(&res);
    return value;
}

static void *chat_thread(void *arg)
{
    for (int i = 0; i < CALLS; i++)
        chat(arg);
    return NULL;
}

static void calls_from_one_thread_share_one_connection(void **state)
{
    kiln_test_fake_t fake;
    fake_start(&fake, true);
    kiln_http_client_t *client = client_for(&fake);
    for (int i = 0; i < CALLS; i++)
        chat(client);
    /* The stats request comes over the same connection too. */
    assert_int_equal(stat_of(client, "requests"), CALLS);
    assert_int_equal(stat_of(client, "connections"), 1);
    kiln_http_client_free(client);
    kiln_test_fake_stop(&fake);
}

static void each_thread_keeps_a_connection_of_its_own(void **state)
{
    kiln_test_fake_t fake;
    fake_start(&fake, true);
    kiln_http_client_t *client = client_for(&fake);
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, chat_thread, client), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    /* This thread's stats call opens one more. */
    assert_int_equal(stat_of(client, "requests"), THREADS * CALLS);
    assert_int_equal(stat_of(client, "connections"), THREADS + 1);
    kiln_http_client_free(client);
    kiln_test_fake_stop(&fake);
}

static void a_server_that_closes_each_connection_still_answers_every_call(void **state)
{
    kiln_test_fake_t fake;
    fake_start(&fake, false);
    kiln_http_client_t *client = client_for(&fake);
    for (int i = 0; i < CALLS; i++)
        chat(client);
    assert_int_equal(stat_of(client, "requests"), CALLS);
    assert_int_equal(stat_of(client, "connections"), CALLS + 2);
    kiln_http_client_free(client);
    kiln_test_fake_stop(&fake);
}

static void a_get_after_a_post_on_the_kept_handle_goes_as_a_bare_get(void **state)
{
    kiln_test_fake_t fake;
    fake_start(&fake, true);
    kiln_http_client_t *client = client_for(&fake);
    /* The handle keeps its constant options between calls, not the last
     * call's method or body: the fake answers 405 to anything but a GET
     * without a body (stat_of fails on that). */
    chat(client);
    assert_int_equal(stat_of(client, "requests"), 1);
    chat(client);
    assert_int_equal(stat_of(client, "requests"), 2);
    assert_int_equal(stat_of(client, "connections"), 1);
    kiln_http_client_free(client);
    kiln_test_fake_stop(&fake);
}

static void a_thread_in_a_call_gets_no_second_pair(void **state)
{
    kiln_http_handles_t *h = kiln_http_handles_take();
    assert_non_null(h);
    assert_non_null(h->easy);
    assert_non_null(h->multi);
    /* A call made from inside a call's callback makes handles of its own. */
    assert_null(kiln_http_handles_take());
    kiln_http_handles_give(h);
    kiln_http_handles_t *again = kiln_http_handles_take();
    assert_ptr_equal(again, h);
    kiln_http_handles_give(again);
}

int main(void)
{
    kiln_test_tmpdir(tmp_root, sizeof tmp_root);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(calls_from_one_thread_share_one_connection),
        cmocka_unit_test(each_thread_keeps_a_connection_of_its_own),
        cmocka_unit_test(a_server_that_closes_each_connection_still_answers_every_call),
        cmocka_unit_test(a_get_after_a_post_on_the_kept_handle_goes_as_a_bare_get),
        cmocka_unit_test(a_thread_in_a_call_gets_no_second_pair),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

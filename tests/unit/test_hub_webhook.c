/* Webhooks (kiln/hub_webhook.h) against a real redis-server and a real HTTP
 * receiver (civetweb, in this test) that checks every signature with its
 * own HMAC and can fail the first attempt. */
#include <civetweb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/hub_webhook.h"
#include "kiln_test.h"

#define SECRET "s3cret-shared"

static kiln_test_redis_t redis_server;
static kiln_broker_t *broker;
static struct mg_context *web;
static int web_port;

typedef struct receiver {
    pthread_mutex_t mu;
    json_t *per_job; /* job id -> requests received */
    int requests, bad_signatures;
} receiver_t;

static receiver_t rx = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The receiver's own check: HMAC-SHA256(secret, t + "." + body) in hex. */
static bool signature_valid(const char *header, const char *body, size_t len)
{
    long long t = 0;
    char v1[80] = "";
    if (!header || sscanf(header, "t=%lld,v1=%64s", &t, v1) != 2 || strlen(v1) != 64)
        return false;
    size_t size = len + 32;
    char *signed_text = malloc(size);
    int n = snprintf(signed_text, size, "%lld.", t);
    memcpy(signed_text + n, body, len);
    unsigned char mac[32];
    unsigned int mac_len = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)signed_text, (size_t)n + len,
         mac, &mac_len);
    free(signed_text);
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + i * 2, 3, "%02x", mac[i]);
    return mac_len == 32 && CRYPTO_memcmp(hex, v1, 64) == 0 && llabs(t - time(NULL)) < 300;
}

static int on_hook(struct mg_connection *conn, void *cbdata)
{
    bool always_fail = cbdata != NULL;
    char body[65536];
    size_t got = 0;
    for (int n;
         got < sizeof body - 1 && (n = mg_read(conn, body + got, sizeof body - 1 - got)) > 0;)
        got += (size_t)n;
    body[got] = '\0';
    bool valid = signature_valid(mg_get_header(conn, "X-Kiln-Signature"), body, got);
    json_t *job = json_loads(body, 0, NULL);
    const char *id = json_string_value(json_object_get(job, "id"));
    pthread_mutex_lock(&rx.mu);
    rx.requests++;
    rx.bad_signatures += !valid;
    json_int_t seen = id ? json_integer_value(json_object_get(rx.per_job, id)) + 1 : 0;
    if (id)
        json_object_set_new(rx.per_job, id, json_integer(seen));
    pthread_mutex_unlock(&rx.mu);
    json_decref(job);
    int status = (always_fail || seen == 1) ? 500 : 200; /* the first attempt fails */
    /* mg_write, not mg_printf: civetweb 1.15's printf reuses its va_list,
     * which crashes under the sanitizers' interceptors. */
    char reply[128];
    int len = snprintf(reply, sizeof reply,
                       "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status);
    mg_write(conn, reply, (size_t)len);
    return status;
}

/* A fresh broker connection: it remembers which services it has already
 * recorded in kiln:services, which FLUSHALL forgets. */
static void connect_broker(void)
{
    kiln_broker_free(broker);
    broker = kiln_test_broker_connect(&redis_server, 30000);
}

static int setup(void **state)
{
    kiln_test_redis_start(&redis_server, false);
    const char *options[] = {"listening_ports", "127.0.0.1:0", "num_threads", "8", NULL};
    mg_init_library(0);
    web = mg_start(NULL, NULL, options);
    assert_non_null(web);
    struct mg_server_port ports[2];
    assert_true(mg_get_server_ports(web, 2, ports) >= 1);
    web_port = ports[0].port;
    mg_set_request_handler(web, "/hook", on_hook, NULL);
    mg_set_request_handler(web, "/always500", on_hook, (void *)1);
    return 0;
}

static int teardown(void **state)
{
    mg_stop(web);
    kiln_broker_free(broker);
    kiln_test_redis_destroy(&redis_server);
    return 0;
}

static int reset(void **state)
{
    kiln_test_redis_flush(&redis_server);
    connect_broker();
    pthread_mutex_lock(&rx.mu);
    json_decref(rx.per_job);
    rx.per_job = json_object();
    rx.requests = rx.bad_signatures = 0;
    pthread_mutex_unlock(&rx.mu);
    return 0;
}

static kiln_webhooks_t *start_loop(const char *consumer, const char *default_url, int attempts)
{
    kiln_webhook_options_t o = {.redis_url = redis_server.url,
                                .secret = SECRET,
                                .consumer = consumer,
                                .default_url = default_url,
                                .max_attempts = attempts,
                                .backoff_base_ms = 20,
                                .backoff_max_ms = 100,
                                .timeout_ms = 5000,
                                .reclaim_idle_ms = 100};
    kiln_webhooks_t *w = NULL;
    kiln_err_t err = {0};
    if (kiln_webhooks_start(&o, &w, &err) != 0)
        fail_msg("%s", err.msg);
    return w;
}

/* Submits a job and runs it to completion (or failure) through the broker. */
static void run_job(char *id, const char *webhook, bool succeed)
{
    const char *text = "{\"service\":\"simulation\",\"max_attempts\":1}";
    kiln_job_spec_t js;
    kiln_err_t err = {0};
    assert_int_equal(kiln_job_spec_parse(text, strlen(text), 0, &js, &err), 0);
    js.webhook_url = webhook ? strdup(webhook) : NULL;
    assert_int_equal(kiln_broker_submit(broker, &js, id, NULL, &err), 0);
    kiln_job_spec_clear(&js);
    if (webhook) { /* before any attempt it reads as pending */
        json_t *st = NULL;
        assert_int_equal(kiln_webhook_state(broker, id, &st, NULL), 0);
        assert_string_equal(json_string_value(json_object_get(st, "state")), "pending");
        json_decref(st);
    }
    kiln_worker_identity_t who;
    assert_int_equal(kiln_worker_identity_init(&who, "w", NULL, NULL, &err), 0);
    kiln_claimed_job_t job[1];
    int n = 0;
    assert_int_equal(kiln_broker_claim(broker, "simulation", &who, 1, job, &n, NULL, &err), 0);
    assert_int_equal(n, 1);
    if (succeed)
        assert_int_equal(kiln_broker_complete(broker, job[0].id, job[0].token, "{\"ok\":1}", &err),
                         0);
    else
        assert_int_equal(kiln_broker_fail(broker, job[0].id, job[0].token, "boom", false, &err), 0);
    kiln_claimed_job_clear(&job[0]);
    kiln_worker_identity_clear(&who);
}

typedef struct want_state {
    const char *id, *state;
} want_state_t;

static bool webhook_state_is(void *ctx)
{
    want_state_t *want = ctx;
    json_t *st = NULL;
    if (kiln_webhook_state(broker, want->id, &st, NULL) != 0)
        return false;
    const char *s = json_string_value(json_object_get(st, "state"));
    bool ok = s && strcmp(s, want->state) == 0;
    json_decref(st);
    return ok;
}

static json_t *state_of(const char *id)
{
    json_t *st = NULL;
    assert_int_equal(kiln_webhook_state(broker, id, &st, NULL), 0);
    return st;
}

static void webhook_is_signed_retried_after_a_failure_and_marked_delivered(void **state)
{
    kiln_webhooks_t *w = start_loop("hub-a", NULL, 5);
    char id[KILN_JOB_ID_MAX], url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hook?token=private", web_port);
    run_job(id, url, true);
    want_state_t want = {id, "delivered"};
    assert_true(kiln_test_wait_until(webhook_state_is, &want, 15000));
    json_t *st = state_of(id);
    assert_int_equal(json_integer_value(json_object_get(st, "attempts")), 2);
    assert_int_equal(json_integer_value(json_object_get(st, "last_status")), 200);
    assert_null(strstr(json_string_value(json_object_get(st, "url")), "private"));
    json_decref(st);
    kiln_webhooks_stop(w);
    assert_int_equal(rx.requests, 2);
    assert_int_equal(rx.bad_signatures, 0);
}

static void failing_receiver_is_given_up_after_max_attempts(void **state)
{
    kiln_webhooks_t *w = start_loop("hub-a", NULL, 3);
    char id[KILN_JOB_ID_MAX], url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/always500", web_port);
    run_job(id, url, false);
    want_state_t want = {id, "failed"};
    assert_true(kiln_test_wait_until(webhook_state_is, &want, 15000));
    json_t *st = state_of(id);
    assert_int_equal(json_integer_value(json_object_get(st, "attempts")), 3);
    assert_int_equal(json_integer_value(json_object_get(st, "last_status")), 500);
    assert_string_equal(json_string_value(json_object_get(st, "last_error")), "HTTP 500");
    json_decref(st);
    kiln_webhooks_stop(w);
    assert_int_equal(rx.requests, 3);
}

static bool all_delivered(void *ctx)
{
    char(*ids)[KILN_JOB_ID_MAX] = ctx;
    for (int i = 0; ids[i][0]; i++) {
        want_state_t want = {ids[i], "delivered"};
        if (!webhook_state_is(&want))
            return false;
    }
    return true;
}

static void two_hubs_deliver_each_event_once_and_a_restart_misses_none(void **state)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", web_port);
    kiln_webhooks_t *a = start_loop("hub-a", url, 5), *b = start_loop("hub-b", url, 5);
    char ids[8][KILN_JOB_ID_MAX] = {{0}};
    for (int i = 0; i < 6; i++)
        run_job(ids[i], NULL, true); /* the default URL */
    assert_true(kiln_test_wait_until(all_delivered, ids, 20000));
    kiln_webhooks_stop(a);
    kiln_webhooks_stop(b);

    /* No hub runs while this job finishes; the next one delivers it. */
    run_job(ids[6], NULL, true);
    kiln_webhooks_t *c = start_loop("hub-c", url, 5);
    assert_true(kiln_test_wait_until(all_delivered, ids, 20000));
    kiln_webhooks_stop(c);
    for (int i = 0; i < 7; i++) /* one failed attempt, one delivery: never more */
        assert_int_equal(json_integer_value(json_object_get(rx.per_job, ids[i])), 2);
    assert_int_equal(rx.bad_signatures, 0);
}

static void job_webhook_field_is_taken_out_and_checked(void **state)
{
    json_t *job = json_pack("{s:s, s:s}", "service", "simulation", "webhook", "https://x.test/h");
    char *url = NULL;
    kiln_hub_error_t e = {0};
    assert_int_equal(kiln_webhook_take_from_job(job, &url, &e), 0);
    assert_string_equal(url, "https://x.test/h");
    assert_null(json_object_get(job, "webhook"));
    free(url);
    json_object_set_new(job, "webhook", json_string("file:///etc/passwd"));
    assert_int_equal(kiln_webhook_take_from_job(job, &url, &e), KILN_EINVAL);
    assert_string_equal(e.field, "webhook");
    json_object_set_new(job, "webhook", json_integer(3));
    assert_int_equal(kiln_webhook_take_from_job(job, &url, &e), KILN_EINVAL);
    char huge[4096] = "https://x.test/";
    memset(huge + 15, 'a', sizeof huge - 16);
    huge[sizeof huge - 1] = '\0';
    json_object_set_new(job, "webhook", json_string(huge));
    assert_int_equal(kiln_webhook_take_from_job(job, &url, &e), KILN_EINVAL);
    assert_non_null(strstr(e.message, "at most 2048 bytes"));
    json_object_set_new(job, "webhook", json_string("https://x.test/a\r\nX-Evil: 1"));
    assert_int_equal(kiln_webhook_take_from_job(job, &url, &e), KILN_EINVAL);
    assert_null(url);
    json_decref(job);

    kiln_webhook_options_t o = {.redis_url = redis_server.url};
    kiln_webhooks_t *w = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_webhooks_start(&o, &w, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "webhooks.secret"));
}

static void signature_matches_an_independent_hmac(void **state)
{
    char sig[KILN_WEBHOOK_SIGNATURE_MAX];
    const char *body = "{\"id\":\"simulation.1\"}";
    kiln_webhook_sign(SECRET, (long long)time(NULL), body, strlen(body), sig);
    assert_true(signature_valid(sig, body, strlen(body)));
    kiln_webhook_sign("other", (long long)time(NULL), body, strlen(body), sig);
    assert_false(signature_valid(sig, body, strlen(body)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(signature_matches_an_independent_hmac, reset),
        cmocka_unit_test_setup(webhook_is_signed_retried_after_a_failure_and_marked_delivered,
                               reset),
        cmocka_unit_test_setup(failing_receiver_is_given_up_after_max_attempts, reset),
        cmocka_unit_test_setup(two_hubs_deliver_each_event_once_and_a_restart_misses_none, reset),
        cmocka_unit_test_setup(job_webhook_field_is_taken_out_and_checked, reset),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

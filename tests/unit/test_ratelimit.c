/*
 * The fleet-wide rate limit (src/connectors/ratelimit.c) against a real
 * redis-server: limiters stand in for workers, each with its own
 * connection, sharing one budget key.
 */
#include "connectors/ratelimit.h"
#include "kiln/log.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define MAX_GRANTS 256

static kiln_test_redis_t redis;

static kiln_ratelimit_t *limiter(const char *key, int64_t limit, int64_t window_ms)
{
    kiln_ratelimit_options_t opts = {
        .redis_url = redis.url, .key = key, .limit = limit, .window_ms = window_ms, .name = "t"};
    kiln_ratelimit_t *rl = NULL;
    kiln_err_t err = {0};
    if (kiln_ratelimit_new(&opts, &rl, &err) != 0)
        fail_msg("kiln_ratelimit_new: %s", err.msg);
    return rl;
}

/* ---- two workers, one budget ---------------------------------------------------- */

typedef struct grants {
    pthread_mutex_t lock;
    int64_t asked[MAX_GRANTS], got[MAX_GRANTS]; /* around each grant */
    int n;
    int64_t until;
    const char *key;
    int64_t limit, window_ms;
} grants_t;

static void *take_until(void *ctx)
{
    grants_t *g = ctx;
    kiln_ratelimit_t *rl = limiter(g->key, g->limit, g->window_ms);
    while (kiln_test_now_ms() < g->until) {
        kiln_err_t err = {0};
        int64_t asked = kiln_test_now_ms();
        int rc = kiln_ratelimit_acquire(rl, NULL, -1, g->until, &err);
        if (rc == KILN_ETIMEOUT)
            break;
        assert_int_equal(rc, 0);
        pthread_mutex_lock(&g->lock);
        if (g->n < MAX_GRANTS) {
            g->asked[g->n] = asked;
            g->got[g->n++] = kiln_test_now_ms();
        }
        pthread_mutex_unlock(&g->lock);
    }
    kiln_ratelimit_free(rl);
    return NULL;
}

static void two_limiters_sharing_a_key_never_exceed_the_limit_per_window(void **state)
{
    grants_t g = {.lock = PTHREAD_MUTEX_INITIALIZER,
                  .until = kiln_test_now_ms() + 1300,
                  .key = "shared",
                  .limit = 5,
                  .window_ms = 400};
    pthread_t a, b;
    pthread_create(&a, NULL, take_until, &g);
    pthread_create(&b, NULL, take_until, &g);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    /* Redis granted each slot between its asked and got stamps. Grants whose
     * whole [asked, got] lies inside one window-long span were certainly
     * granted within one window: more than the limit of them is a breach,
     * however late a thread was scheduled. */
    for (int i = 0; i < g.n; i++) {
        int in_window = 0;
        for (int j = 0; j < g.n; j++)
            in_window += g.asked[j] >= g.asked[i] && g.got[j] < g.asked[i] + g.window_ms;
        if (in_window > g.limit)
            fail_msg("%d grants within %" PRId64 " ms from grant %d; the limit is %" PRId64,
                     in_window, g.window_ms, i, g.limit);
    }
    /* Slots free as the window slides: the budget is used, not just refused. */
    assert_true(g.n >= 3 * g.limit);
    assert_true(g.n <= 4 * g.limit);
}

static void separate_keys_have_separate_budgets(void **state)
{
    kiln_ratelimit_t *a = limiter("budget-a", 1, 60000);
    kiln_ratelimit_t *b = limiter("budget-b", 1, 60000);
    kiln_err_t err = {0};
    assert_int_equal(kiln_ratelimit_acquire(a, NULL, -1, 0, &err), 0);
    assert_int_equal(kiln_ratelimit_acquire(b, NULL, -1, 0, &err), 0);
    /* a is spent: a deadline it cannot meet is reported at once. */
    int64_t start = kiln_test_now_ms();
    assert_int_equal(kiln_ratelimit_acquire(a, NULL, -1, start + 5000, &err), KILN_ETIMEOUT);
    assert_true(kiln_test_now_ms() - start < 2500);
    assert_non_null(strstr(err.msg, "budget-a"));
    kiln_ratelimit_free(a);
    kiln_ratelimit_free(b);
}

static void acquire_waits_until_a_slot_frees(void **state)
{
    kiln_ratelimit_t *rl = limiter("waits", 2, 500);
    kiln_err_t err = {0};
    int64_t start = kiln_test_now_ms();
    assert_int_equal(kiln_ratelimit_acquire(rl, NULL, -1, 0, &err), 0);
    assert_int_equal(kiln_ratelimit_acquire(rl, NULL, -1, 0, &err), 0);
    assert_int_equal(kiln_ratelimit_acquire(rl, NULL, -1, 0, &err), 0);
    /* The third slot frees when the first request leaves the window. */
    assert_true(kiln_test_now_ms() - start >= 450);
    kiln_ratelimit_free(rl);
}

/* ---- cancel ------------------------------------------------------------------------ */

typedef struct waiter {
    kiln_ratelimit_t *rl;
    atomic_int cancel;
    int cancel_fd;
    atomic_int rc;
    atomic_int done;
} waiter_t;

static void *wait_main(void *ctx)
{
    waiter_t *w = ctx;
    kiln_err_t err = {0};
    atomic_store(&w->rc, kiln_ratelimit_acquire(w->rl, &w->cancel, w->cancel_fd, 0, &err));
    atomic_store(&w->done, 1);
    return NULL;
}

static bool waiter_done(void *ctx)
{
    return atomic_load(&((waiter_t *)ctx)->done) != 0;
}

static void acquire_stops_at_once_when_cancelled(void **state)
{
    waiter_t w = {.rl = limiter("cancel", 1, 60000), .cancel_fd = eventfd(0, EFD_CLOEXEC)};
    kiln_err_t err = {0};
    assert_int_equal(kiln_ratelimit_acquire(w.rl, NULL, -1, 0, &err), 0);
    pthread_t t;
    pthread_create(&t, NULL, wait_main, &w);
    /* The budget is spent for a minute: the waiter is still waiting. */
    assert_false(kiln_test_wait_until(waiter_done, &w, 300));
    int64_t start = kiln_test_now_ms();
    atomic_store(&w.cancel, 1);
    uint64_t one = 1;
    assert_int_equal(write(w.cancel_fd, &one, sizeof one), (ssize_t)sizeof one);
    assert_true(kiln_test_wait_until(waiter_done, &w, 2000));
    assert_true(kiln_test_now_ms() - start < 1500); /* not the minute the budget needs */
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&w.rc), KILN_ECANCELLED);
    close(w.cancel_fd);
    kiln_ratelimit_free(w.rl);
}

/* ---- Redis going and coming ----------------------------------------------------------- */

static void the_script_is_reloaded_after_a_flush(void **state)
{
    kiln_ratelimit_t *rl = limiter("flush", 10, 60000);
    redisContext *c = kiln_test_redis_connect(&redis);
    freeReplyObject(redisCommand(c, "SCRIPT FLUSH"));
    kiln_err_t err = {0};
    assert_int_equal(kiln_ratelimit_acquire(rl, NULL, -1, 0, &err), 0);
    redisReply *r = redisCommand(c, "ZCARD kiln:ratelimit:{flush}");
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    redisFree(c);
    kiln_ratelimit_free(rl);
}

static void a_redis_restart_fails_one_acquire_then_reconnects(void **state)
{
    kiln_ratelimit_t *rl = limiter("restart", 10, 60000);
    kiln_err_t err = {0};
    kiln_test_redis_stop(&redis);
    assert_int_equal(kiln_ratelimit_acquire(rl, NULL, -1, 0, &err), KILN_EREDIS);
    assert_non_null(strstr(err.msg, "Redis"));
    kiln_test_redis_restart(&redis);
    assert_int_equal(kiln_ratelimit_acquire(rl, NULL, -1, 0, &err), 0);
    kiln_ratelimit_free(rl);
}

/* ---- options ------------------------------------------------------------------------------ */

static int from_options(const char *json, const char *redis_url, kiln_err_t *err)
{
    json_t *options = json_loads(json, 0, NULL);
    assert_non_null(options);
    kiln_connector_config_t cfg = {
        .name = "api", .type = "openai", .options = options, .redis_url = redis_url};
    kiln_ratelimit_t *rl = NULL;
    int rc = kiln_ratelimit_from_config(&cfg, &rl, err);
    if (rc == 0)
        assert_true(rl == NULL || kiln_ratelimit_limit(rl) > 0);
    kiln_ratelimit_free(rl);
    json_decref(options);
    return rc;
}

static void bad_rate_limit_options_are_refused_naming_the_field(void **state)
{
    kiln_err_t err = {0};
    assert_int_equal(from_options("{}", NULL, &err), 0);
    assert_int_equal(from_options("{\"rate_limit_per_minute\": 60}", redis.url, &err), 0);
    assert_int_equal(from_options("{\"rate_limit_per_minute\": \"abc\"}", redis.url, &err),
                     KILN_EINVAL);
    assert_non_null(strstr(err.msg, "connectors.api.rate_limit_per_minute: expected"));
    assert_int_equal(from_options("{\"rate_limit_per_minute\": 0}", redis.url, &err), KILN_EINVAL);
    assert_int_equal(from_options("{\"rate_limit_per_minute\": 99999999}", redis.url, &err),
                     KILN_EINVAL);
    assert_int_equal(from_options("{\"rate_limit_key\": \"x\"}", redis.url, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "connectors.api.rate_limit_key"));
    assert_int_equal(from_options("{\"rate_limit_per_minute\": 5, \"rate_limit_key\": \"a b}\"}",
                                  redis.url, &err),
                     KILN_EINVAL);
    assert_non_null(strstr(err.msg, "connectors.api.rate_limit_key: expected"));
    char long_key[400];
    memset(long_key, 'k', 300);
    long_key[300] = '\0';
    char json[512];
    snprintf(json, sizeof json, "{\"rate_limit_per_minute\": 5, \"rate_limit_key\": \"%s\"}",
             long_key);
    assert_int_equal(from_options(json, redis.url, &err), KILN_EINVAL);
    /* A rate limit needs Redis: none known, or none answering, is said at init. */
    assert_int_equal(from_options("{\"rate_limit_per_minute\": 5}", NULL, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "redis.url"));
    assert_int_equal(from_options("{\"rate_limit_per_minute\": 5}", "redis://127.0.0.1:1", &err),
                     KILN_EREDIS);
    assert_non_null(strstr(err.msg, "connectors.api.rate_limit_per_minute: Redis at 127.0.0.1:1"));
    assert_int_equal(from_options("{\"rate_limit_per_minute\": 5}", "http://nope", &err),
                     KILN_EINVAL);
}

/* ---- wired into the openai connector ---------------------------------------------- */

static void openai_requests_take_slots_of_the_budget(void **state)
{
    char dir[256];
    kiln_test_tmpdir(dir, sizeof dir);
    kiln_test_fake_t fake;
    char log[320];
    snprintf(log, sizeof log, "%s/fake_openai.log", dir);
    kiln_test_fake_start(&fake, "fake_openai", NULL, log);
    char options[512];
    snprintf(options, sizeof options,
             "{\"base_url\": \"%s\", \"model\": \"gpt-test\", \"rate_limit_per_minute\": 2}",
             fake.url);
    kiln_connector_t *c = kiln_test_connector_parse("openai", "llm", options, redis.url);
    const char *payload = "{\"prompt\": \"hi\", \"stream\": false}";
    kiln_test_job_t r;
    for (int i = 0; i < 2; i++) {
        kiln_test_job_run(c, "llm.1", payload, 0, 0, &r);
        kiln_test_expect_completed(&r);
        kiln_test_job_clear(&r);
    }
    /* The budget (key: the connector's name) is spent for a minute. */
    kiln_test_job_run(c, "llm.2", payload, 1000, 0, &r);
    kiln_test_expect_failed(&r, true, "rate limit");
    kiln_test_job_clear(&r);
    assert_int_equal(kiln_test_fake_stat(&fake, "requests"), 2);
    redisContext *rc = kiln_test_redis_connect(&redis);
    redisReply *reply = redisCommand(rc, "ZCARD kiln:ratelimit:{llm}");
    assert_int_equal(reply->integer, 2);
    freeReplyObject(reply);
    redisFree(rc);
    kiln_connector_free(c);
    kiln_test_fake_stop(&fake);
}

int main(void)
{
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_WARN);
    kiln_test_redis_start(&redis, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(two_limiters_sharing_a_key_never_exceed_the_limit_per_window),
        cmocka_unit_test(separate_keys_have_separate_budgets),
        cmocka_unit_test(acquire_waits_until_a_slot_frees),
        cmocka_unit_test(acquire_stops_at_once_when_cancelled),
        cmocka_unit_test(the_script_is_reloaded_after_a_flush),
        cmocka_unit_test(a_redis_restart_fails_one_acquire_then_reconnects),
        cmocka_unit_test(bad_rate_limit_options_are_refused_naming_the_field),
        cmocka_unit_test(openai_requests_take_slots_of_the_budget),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    kiln_test_redis_destroy(&redis);
    return failed;
}

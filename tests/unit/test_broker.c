/* The broker's job semantics against a real redis-server. */
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/ops.h"
#include "kiln/broker.h"
#include "kiln_test.h"

static kiln_test_redis_t redis_server;

typedef struct fixture {
    kiln_broker_options_t opts;
    kiln_broker_t *broker;
    kiln_worker_identity_t worker;
} fixture_t;

static int setup_server(void **state)
{
    kiln_test_redis_start(&redis_server, false);
    return 0;
}

static int teardown_server(void **state)
{
    kiln_test_redis_destroy(&redis_server);
    return 0;
}

static void default_options(kiln_broker_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->redis_url = redis_server.url;
    o->max_payload_bytes = 4096;
    o->stream_max_len = 10000;
    o->retention_age_s = 3600;
    o->retention_count = 1000;
    o->default_max_attempts = 3;
    o->backoff_base_ms = 50;
    o->backoff_max_ms = 400;
    o->lease_ms = 30000;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    redisContext *c = kiln_test_redis_connect(&redis_server);
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    redisFree(c);
    default_options(&f->opts);
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_connect(&f->opts, &f->broker, &err), 0);
    assert_int_equal(kiln_worker_identity_init(&f->worker, "w1", "m1", NULL, &err), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    kiln_worker_identity_clear(&f->worker);
    kiln_broker_free(f->broker);
    free(f);
    return 0;
}

static void submit_json(fixture_t *f, const char *json, char *id)
{
    kiln_job_spec_t spec;
    kiln_err_t err = {0};
    int rc = kiln_job_spec_parse(json, strlen(json), f->opts.max_payload_bytes, &spec, &err);
    if (rc != 0)
        fail_msg("spec %s refused: %s", json, err.msg);
    assert_int_equal(kiln_broker_submit(f->broker, &spec, id, NULL, &err), 0);
    kiln_job_spec_clear(&spec);
}

static int claim_one(fixture_t *f, kiln_broker_t *b, const kiln_worker_identity_t *who,
                     const char *service, kiln_claimed_job_t *job)
{
    int n = 0;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_claim(b, service, who, 1, job, &n, NULL, &err), 0);
    return n;
}

static const char *job_state(fixture_t *f, const char *id, char *buf)
{
    json_t *job = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_get_job(f->broker, id, &job, &err) != 0)
        return strcpy(buf, "missing");
    strcpy(buf, json_string_value(json_object_get(job, "state")));
    json_decref(job);
    return buf;
}

static long long db_size(void)
{
    redisContext *c = kiln_test_redis_connect(&redis_server);
    redisReply *r = redisCommand(c, "DBSIZE");
    long long n = r->integer;
    freeReplyObject(r);
    redisFree(c);
    return n;
}

static void submitted_job_is_claimed_run_and_completed(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX], s[32];
    submit_json(f, "{\"service\":\"sim\",\"payload\":{\"x\":1}}", id);
    assert_string_equal(job_state(f, id, s), "pending");
    kiln_claimed_job_t job;
    assert_int_equal(claim_one(f, f->broker, &f->worker, "sim", &job), 1);
    assert_string_equal(job.id, id);
    assert_string_equal(job.payload_json, "{\"x\":1}");
    assert_int_equal(job.attempt, 1);
    assert_string_equal(job_state(f, id, s), "running");
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_progress(f->broker, id, job.token, 50, "half", &err), 0);
    assert_int_equal(kiln_broker_complete(f->broker, id, job.token, "{\"ok\":true}", &err), 0);
    json_t *got;
    assert_int_equal(kiln_broker_get_job(f->broker, id, &got, &err), 0);
    assert_string_equal(json_string_value(json_object_get(got, "state")), "completed");
    assert_true(json_is_true(json_object_get(json_object_get(got, "result"), "ok")));
    json_decref(got);
    kiln_claimed_job_clear(&job);
}

static void priority_first_then_fifo_within_a_priority(void **state)
{
    fixture_t *f = *state;
    char a[KILN_JOB_ID_MAX], b[KILN_JOB_ID_MAX], c[KILN_JOB_ID_MAX], d[KILN_JOB_ID_MAX];
    submit_json(f, "{\"service\":\"sim\",\"priority\":0}", a);
    submit_json(f, "{\"service\":\"sim\",\"priority\":5}", b);
    submit_json(f, "{\"service\":\"sim\",\"priority\":0}", c);
    submit_json(f, "{\"service\":\"sim\",\"priority\":5,\"requirements\":{\"ram_gb\":1}}", d);
    json_t *caps = json_pack("{s:i}", "ram_gb", 8);
    kiln_worker_identity_t who;
    kiln_err_t err = {0};
    assert_int_equal(kiln_worker_identity_init(&who, "w2", NULL, caps, &err), 0);
    json_decref(caps);
    const char *expected[] = {b, d, a, c};
    for (int i = 0; i < 4; i++) {
        kiln_claimed_job_t job;
        assert_int_equal(claim_one(f, f->broker, &who, "sim", &job), 1);
        assert_string_equal(job.id, expected[i]);
        kiln_claimed_job_clear(&job);
    }
    kiln_worker_identity_clear(&who);
}

static void claim_skips_jobs_the_worker_cannot_run_behind_ten_thousand(void **state)
{
    fixture_t *f = *state;
    kiln_err_t err = {0};
    static kiln_job_spec_t specs[1000];
    static char ids[1000][KILN_JOB_ID_MAX];
    for (int batch = 0; batch < 10; batch++) {
        for (int i = 0; i < 1000; i++) {
            char json[160];
            snprintf(json, sizeof json,
                     "{\"service\":\"sim\",\"priority\":9,\"requirements\":{\"capabilities\":{"
                     "\"tier\":\"t%02d\"}}}",
                     i % 49);
            assert_int_equal(kiln_job_spec_parse(json, strlen(json), 0, &specs[i], &err), 0);
        }
        assert_int_equal(kiln_broker_submit_batch(f->broker, specs, 1000, ids, &err), 0);
        for (int i = 0; i < 1000; i++)
            kiln_job_spec_clear(&specs[i]);
    }
    char mine[KILN_JOB_ID_MAX];
    submit_json(f, "{\"service\":\"sim\",\"requirements\":{\"capabilities\":{\"tier\":\"t99\"}}}",
                mine);
    json_t *caps = json_pack("{s:s}", "tier", "t99");
    kiln_worker_identity_t who;
    assert_int_equal(kiln_worker_identity_init(&who, "picky", NULL, caps, &err), 0);
    json_decref(caps);
    kiln_claimed_job_t job;
    assert_int_equal(claim_one(f, f->broker, &who, "sim", &job), 1);
    assert_string_equal(job.id, mine);
    kiln_claimed_job_clear(&job);
    assert_int_equal(claim_one(f, f->broker, &who, "sim", &job), 0);
    kiln_worker_identity_clear(&who);
}

typedef struct racer {
    fixture_t *f;
    int got;
    char id[KILN_JOB_ID_MAX];
    pthread_barrier_t *barrier;
} racer_t;

static void *race(void *arg)
{
    racer_t *r = arg;
    kiln_broker_t *b;
    kiln_err_t err = {0};
    kiln_worker_identity_t who;
    char name[32];
    snprintf(name, sizeof name, "racer-%p", arg);
    kiln_broker_connect(&r->f->opts, &b, &err);
    kiln_worker_identity_init(&who, name, NULL, NULL, &err);
    kiln_claimed_job_t job;
    pthread_barrier_wait(r->barrier);
    int n = 0;
    kiln_broker_claim(b, "sim", &who, 1, &job, &n, NULL, &err);
    r->got = n;
    if (n) {
        strcpy(r->id, job.id);
        kiln_claimed_job_clear(&job);
    }
    kiln_worker_identity_clear(&who);
    kiln_broker_free(b);
    return NULL;
}

static void two_workers_race_for_one_job_and_exactly_one_wins(void **state)
{
    fixture_t *f = *state;
    for (int round = 0; round < 20; round++) {
        char id[KILN_JOB_ID_MAX];
        submit_json(f, "{\"service\":\"sim\"}", id);
        pthread_barrier_t barrier;
        pthread_barrier_init(&barrier, NULL, 2);
        racer_t r[2] = {{f, 0, "", &barrier}, {f, 0, "", &barrier}};
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
            pthread_create(&t[i], NULL, race, &r[i]);
        for (int i = 0; i < 2; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&barrier);
        assert_int_equal(r[0].got + r[1].got, 1);
        assert_string_equal(r[0].got ? r[0].id : r[1].id, id);
    }
}

static void expired_lease_returns_job_and_old_claim_is_refused(void **state)
{
    fixture_t *f = *state;
    kiln_broker_free(f->broker);
    f->opts.lease_ms = 100;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_connect(&f->opts, &f->broker, &err), 0);
    char id[KILN_JOB_ID_MAX], s[32];
    submit_json(f, "{\"service\":\"sim\"}", id);
    kiln_claimed_job_t first, second;
    assert_int_equal(claim_one(f, f->broker, &f->worker, "sim", &first), 1);
    /* Another worker's claim sweeps the expired lease and takes the job. */
    kiln_worker_identity_t other;
    kiln_worker_identity_init(&other, "w-other", NULL, NULL, &err);
    int64_t start = kiln_test_now_ms();
    int got = 0;
    while (!got && kiln_test_now_ms() - start < 5000)
        got = claim_one(f, f->broker, &other, "sim", &second);
    assert_int_equal(got, 1);
    assert_string_equal(second.id, id);
    assert_int_equal(second.attempt, 2);
    assert_int_equal(kiln_broker_complete(f->broker, id, first.token, "1", &err), KILN_ELOST);
    assert_int_equal(kiln_broker_fail(f->broker, id, first.token, "x", true, &err), KILN_ELOST);
    assert_int_equal(kiln_broker_progress(f->broker, id, first.token, 5, "", &err), KILN_ELOST);
    assert_int_equal(kiln_broker_heartbeat(f->broker, id, first.token, &err), KILN_ELOST);
    assert_string_equal(job_state(f, id, s), "running");
    assert_int_equal(kiln_broker_complete(f->broker, id, second.token, "2", &err), 0);
    assert_string_equal(job_state(f, id, s), "completed");
    kiln_claimed_job_clear(&first);
    kiln_claimed_job_clear(&second);
    kiln_worker_identity_clear(&other);
}

static void retryable_failures_back_off_then_the_job_is_dead(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX], s[32];
    submit_json(f, "{\"service\":\"sim\",\"max_attempts\":3}", id);
    kiln_err_t err = {0};
    for (int attempt = 1; attempt <= 3; attempt++) {
        kiln_claimed_job_t job;
        int64_t next_due = 0;
        int n = 0;
        int64_t start = kiln_test_now_ms();
        while (n == 0 && kiln_test_now_ms() - start < 5000)
            assert_int_equal(
                kiln_broker_claim(f->broker, "sim", &f->worker, 1, &job, &n, &next_due, &err), 0);
        assert_int_equal(n, 1);
        assert_int_equal(job.attempt, attempt);
        assert_int_equal(kiln_broker_fail(f->broker, id, job.token, "boom", true, &err), 0);
        kiln_claimed_job_clear(&job);
        assert_string_equal(job_state(f, id, s), attempt < 3 ? "delayed" : "dead");
    }
    json_t *job;
    assert_int_equal(kiln_broker_get_job(f->broker, id, &job, &err), 0);
    assert_string_equal(json_string_value(json_object_get(job, "error")), "boom");
    json_decref(job);
    assert_int_equal(kiln_broker_retry(f->broker, id, &err), 0);
    assert_string_equal(job_state(f, id, s), "pending");
}

static void non_retryable_failure_fails_at_once(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX], s[32];
    submit_json(f, "{\"service\":\"sim\",\"max_attempts\":5}", id);
    kiln_claimed_job_t job;
    kiln_err_t err = {0};
    assert_int_equal(claim_one(f, f->broker, &f->worker, "sim", &job), 1);
    assert_int_equal(kiln_broker_fail(f->broker, id, job.token, "bad input", false, &err), 0);
    assert_string_equal(job_state(f, id, s), "failed");
    kiln_claimed_job_clear(&job);
}

static void cancel_pending_and_running_jobs(void **state)
{
    fixture_t *f = *state;
    char a[KILN_JOB_ID_MAX], b[KILN_JOB_ID_MAX], s[32];
    kiln_err_t err = {0};
    submit_json(f, "{\"service\":\"sim\"}", a);
    submit_json(f, "{\"service\":\"sim\"}", b);
    assert_int_equal(kiln_broker_cancel(f->broker, b, &err), 0);
    assert_string_equal(job_state(f, b, s), "cancelled");
    kiln_claimed_job_t job;
    assert_int_equal(claim_one(f, f->broker, &f->worker, "sim", &job), 1);
    assert_string_equal(job.id, a);
    assert_int_equal(kiln_broker_cancel(f->broker, a, &err), 0);
    assert_int_equal(kiln_broker_heartbeat(f->broker, a, job.token, &err), KILN_ELOST);
    assert_int_equal(kiln_broker_complete(f->broker, a, job.token, "1", &err), KILN_ELOST);
    assert_string_equal(job_state(f, a, s), "cancelled");
    assert_int_equal(kiln_broker_cancel(f->broker, a, &err), KILN_ECONFLICT);
    assert_int_equal(kiln_broker_cancel(f->broker, "sim.999999", &err), KILN_ENOTFOUND);
    kiln_claimed_job_clear(&job);
}

static void release_returns_the_job_without_counting_the_attempt(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX], s[32];
    kiln_err_t err = {0};
    submit_json(f, "{\"service\":\"sim\"}", id);
    kiln_claimed_job_t job;
    assert_int_equal(claim_one(f, f->broker, &f->worker, "sim", &job), 1);
    assert_int_equal(kiln_broker_release(f->broker, id, job.token, &err), 0);
    kiln_claimed_job_clear(&job);
    assert_string_equal(job_state(f, id, s), "pending");
    assert_int_equal(claim_one(f, f->broker, &f->worker, "sim", &job), 1);
    assert_int_equal(job.attempt, 1);
    kiln_claimed_job_clear(&job);
}

static void idempotency_key_returns_the_first_id_and_writes_nothing(void **state)
{
    fixture_t *f = *state;
    char a[KILN_JOB_ID_MAX], b[KILN_JOB_ID_MAX];
    submit_json(f, "{\"service\":\"sim\",\"idempotency_key\":\"k1\"}", a);
    long long before = db_size();
    kiln_job_spec_t spec;
    kiln_err_t err = {0};
    const char *json = "{\"service\":\"sim\",\"idempotency_key\":\"k1\"}";
    assert_int_equal(kiln_job_spec_parse(json, strlen(json), 0, &spec, &err), 0);
    bool dup = false;
    assert_int_equal(kiln_broker_submit(f->broker, &spec, b, &dup, &err), 0);
    kiln_job_spec_clear(&spec);
    assert_true(dup);
    assert_string_equal(a, b);
    assert_int_equal(db_size(), before);
}

static void bad_specs_are_refused_naming_the_field_and_nothing_is_written(void **state)
{
    fixture_t *f = *state;
    (void)f;
    static const struct {
        const char *json;
        const char *field;
    } cases[] = {
        {"{\"service\":\"sim\",", "malformed JSON"},
        {"[1,2]", "expected a JSON object"},
        {"{\"payload\":{}}", "service: required"},
        {"{\"service\":\"Bad Name\"}", "service:"},
        {"{\"service\":\"a{b}\"}", "service:"},
        {"{\"service\":\"sim\",\"priority\":\"high\"}", "priority: expected an integer"},
        {"{\"service\":\"sim\",\"priority\":5000}", "priority: expected an integer -1000-1000"},
        {"{\"service\":\"sim\",\"colour\":\"red\"}", "colour: unknown field"},
        {"{\"service\":\"sim\",\"max_attempts\":0}", "max_attempts"},
        {"{\"service\":\"sim\",\"requirements\":{\"gpu\":1}}", "requirements.gpu: unknown"},
        {"{\"service\":\"sim\",\"requirements\":{\"ram_gb\":\"lots\"}}", "requirements.ram_gb"},
        {"{\"service\":\"sim\",\"requirements\":{\"capabilities\":{\"a\":{\"b\":1}}}}",
         "requirements.capabilities.a"},
        {"{\"service\":\"sim\",\"run_at\":1,\"delay_ms\":5}", "run_at and delay_ms"},
        {"{\"service\":\"sim\",\"service\":\"x\"}", "malformed JSON"},
        {"{\"service\":\"sim\",\"payload\":\"\xff\xfe\"}", "malformed JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kiln_job_spec_t spec;
        kiln_err_t err = {0};
        int rc = kiln_job_spec_parse(cases[i].json, strlen(cases[i].json), 0, &spec, &err);
        assert_int_not_equal(rc, 0);
        if (!strstr(err.msg, cases[i].field))
            fail_msg("case %zu: error \"%s\" does not name \"%s\"", i, err.msg, cases[i].field);
    }
    char big[6000];
    snprintf(big, sizeof big, "{\"service\":\"sim\",\"payload\":\"%04990d\"}", 0);
    kiln_job_spec_t spec;
    kiln_err_t err = {0};
    assert_int_equal(kiln_job_spec_parse(big, strlen(big), 4096, &spec, &err), KILN_ETOOBIG);
    assert_non_null(strstr(err.msg, "payload"));
    assert_int_equal(db_size(), 0);
}

static void delayed_job_waits_for_its_time(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX], s[32];
    submit_json(f, "{\"service\":\"sim\",\"delay_ms\":300}", id);
    assert_string_equal(job_state(f, id, s), "delayed");
    kiln_claimed_job_t job;
    int64_t next_due = 0;
    int n = 0;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_claim(f->broker, "sim", &f->worker, 1, &job, &n, &next_due, &err),
                     0);
    assert_int_equal(n, 0);
    assert_true(next_due > 0);
    int64_t start = kiln_test_now_ms();
    while (n == 0 && kiln_test_now_ms() - start < 5000)
        kiln_broker_claim(f->broker, "sim", &f->worker, 1, &job, &n, NULL, &err);
    assert_int_equal(n, 1);
    assert_true(kiln_test_now_ms() - start >= 200);
    kiln_claimed_job_clear(&job);
}

static void queue_stats_count_each_state(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX];
    for (int i = 0; i < 3; i++)
        submit_json(f, "{\"service\":\"sim\"}", id);
    kiln_claimed_job_t job;
    assert_int_equal(claim_one(f, f->broker, &f->worker, "sim", &job), 1);
    kiln_claimed_job_clear(&job);
    json_t *stats;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_queue_stats(f->broker, &stats, &err), 0);
    json_t *row = json_array_get(stats, 0);
    assert_string_equal(json_string_value(json_object_get(row, "service")), "sim");
    assert_int_equal(json_integer_value(json_object_get(row, "pending")), 2);
    assert_int_equal(json_integer_value(json_object_get(row, "running")), 1);
    json_decref(stats);
}

static void a_job_behind_more_than_a_thousand_classes_is_claimed(void **state)
{
    fixture_t *f = *state;
    kiln_err_t err = {0};
    static kiln_job_spec_t specs[1001];
    static char ids[1001][KILN_JOB_ID_MAX];
    for (int b = 0; b < 2; b++) {
        int n = b == 0 ? 1000 : 1;
        for (int i = 0; i < n; i++) {
            char json[128];
            snprintf(json, sizeof json,
                     "{\"service\":\"sim\",\"requirements\":{\"machine\":\"gone-%d\"}}",
                     b * 1000 + i);
            assert_int_equal(kiln_job_spec_parse(json, strlen(json), 0, &specs[i], &err), 0);
        }
        assert_int_equal(kiln_broker_submit_batch(f->broker, specs, (size_t)n, ids, &err), 0);
        for (int i = 0; i < n; i++)
            kiln_job_spec_clear(&specs[i]);
    }
    char mine[KILN_JOB_ID_MAX];
    submit_json(f, "{\"service\":\"sim\"}", mine);
    kiln_claimed_job_t job;
    assert_int_equal(claim_one(f, f->broker, &f->worker, "sim", &job), 1);
    assert_string_equal(job.id, mine);
    kiln_claimed_job_clear(&job);
}

typedef struct sweep_ctx {
    fixture_t *f;
} sweep_ctx_t;

static long long count_reply(const char *command)
{
    redisContext *rc = kiln_test_redis_connect(&redis_server);
    redisReply *r = redisCommand(rc, command);
    long long n = r->type == REDIS_REPLY_ARRAY ? (long long)r->elements : r->integer;
    freeReplyObject(r);
    redisFree(rc);
    return n;
}

static bool a_retention_age_passed(void *ctx)
{
    return kiln_test_now_ms() - *(int64_t *)ctx > 1100;
}

/* Sweeps, then: are the finished jobs gone from the set? */
static bool aged_out(void *ctx)
{
    sweep_ctx_t *c = ctx;
    kiln_err_t err = {0};
    kiln_broker_sweep(c->f->broker, "sim", NULL, &err);
    return count_reply("ZCARD kiln:{sim}:completed") == 0;
}

static void trimming_by_age_deletes_exactly_the_records_it_unlists(void **state)
{
    fixture_t *f = *state;
    kiln_broker_free(f->broker);
    f->opts.retention_age_s = 1;
    f->opts.retention_count = 1000000;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_connect(&f->opts, &f->broker, &err), 0);
    /* More than one trim call's bound (1000), so a trim that unlists more
     * than it deletes would leave records behind. */
    static kiln_job_spec_t specs[550];
    static char ids[550][KILN_JOB_ID_MAX];
    for (int b = 0; b < 2; b++) {
        for (int i = 0; i < 550; i++)
            assert_int_equal(kiln_job_spec_parse("{\"service\":\"sim\"}", 17, 0, &specs[i], &err),
                             0);
        assert_int_equal(kiln_broker_submit_batch(f->broker, specs, 550, ids, &err), 0);
        for (int i = 0; i < 550; i++)
            kiln_job_spec_clear(&specs[i]);
    }
    static kiln_claimed_job_t jobs[100];
    for (int done = 0; done < 1100;) {
        int n = 0;
        assert_int_equal(kiln_broker_claim(f->broker, "sim", &f->worker, 100, jobs, &n, NULL, &err),
                         0);
        assert_true(n > 0);
        for (int i = 0; i < n; i++) {
            assert_int_equal(kiln_broker_complete(f->broker, jobs[i].id, jobs[i].token, "1", &err),
                             0);
            kiln_claimed_job_clear(&jobs[i]);
        }
        done += n;
    }
    assert_int_equal(count_reply("ZCARD kiln:{sim}:completed"), 1100);
    /* Every job past the retention age before the first sweep. */
    int64_t finished = kiln_test_now_ms();
    assert_true(kiln_test_wait_until(a_retention_age_passed, &finished, 5000));
    sweep_ctx_t c = {f};
    assert_true(kiln_test_wait_until(aged_out, &c, 10000));
    /* and no record was left behind without a set pointing at it */
    assert_int_equal(count_reply("KEYS kiln:{sim}:job:*"), 0);
}

static void two_reports_for_one_lease_in_one_call_apply_only_the_first(void **state)
{
    fixture_t *f = *state;
    char id[KILN_JOB_ID_MAX], s[32];
    submit_json(f, "{\"service\":\"sim\",\"max_attempts\":3}", id);
    kiln_claimed_job_t job;
    assert_int_equal(claim_one(f, f->broker, &f->worker, "sim", &job), 1);
    const kiln_script_t *script = kiln_script_get("step");
    kiln_argv_t a;
    kiln_argv_init(&a);
    kiln_ops_begin(&a, script, &f->opts, "sim");
    kiln_ops_add_claimer(&a, &f->worker, 0);
    const char *args[] = {"0", "2", id,        job.token,  "fail", "boom",
                          "1", id,  job.token, "complete", "{}",   "0"};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++)
        kiln_argv_add(&a, args[i], SIZE_MAX);
    redisContext *rc = kiln_test_redis_connect(&redis_server);
    redisReply *r = redisCommandArgv(rc, (int)a.count, (const char **)a.items, a.lens);
    if (r->type == REDIS_REPLY_ERROR && kiln_ops_noscript_fallback(&a, r, script)) {
        freeReplyObject(r);
        r = redisCommandArgv(rc, (int)a.count, (const char **)a.items, a.lens);
    }
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    redisReply *statuses = r->element[1];
    assert_string_equal(statuses->element[0]->str, "ok");
    assert_string_not_equal(statuses->element[1]->str, "ok");
    freeReplyObject(r);
    redisFree(rc);
    kiln_argv_free(&a);
    assert_string_equal(job_state(f, id, s), "delayed");
    kiln_claimed_job_clear(&job);
}

/* The class text is the canonical JSON of {requirements, customer_id} and
 * its id the first 16 hex digits of that text's SHA-1, whichever way the
 * spec gets there (the usual class is a constant, and each thread
 * remembers its last id). */
static void class_text_and_id_are_canonical_in_any_order_of_specs(void **state)
{
    (void)state;
    static const struct {
        const char *spec, *class_text;
    } cases[] = {
        {"{\"service\":\"s\"}", "{\"customer_id\":null,\"requirements\":{}}"},
        {"{\"service\":\"s\",\"requirements\":{\"ram_gb\":1,\"cpu_cores\":2}}",
         "{\"customer_id\":null,\"requirements\":{\"cpu_cores\":2,\"ram_gb\":1}}"},
        {"{\"service\":\"s\",\"requirements\":{}}", "{\"customer_id\":null,\"requirements\":{}}"},
        {"{\"service\":\"s\",\"customer_id\":\"acme\"}",
         "{\"customer_id\":\"acme\",\"requirements\":{}}"},
        {"{\"service\":\"s\",\"requirements\":null}", "{\"customer_id\":null,\"requirements\":{}}"},
        {"{\"service\":\"s\",\"requirements\":{\"cpu_cores\":2,\"ram_gb\":1}}",
         "{\"customer_id\":null,\"requirements\":{\"cpu_cores\":2,\"ram_gb\":1}}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kiln_job_spec_t spec;
        kiln_err_t err = {0};
        assert_int_equal(kiln_job_spec_parse(cases[i].spec, strlen(cases[i].spec), 0, &spec, &err),
                         0);
        assert_string_equal(spec.class_json, cases[i].class_text);
        unsigned char digest[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)cases[i].class_text, strlen(cases[i].class_text), digest);
        char want[17];
        for (int b = 0; b < 8; b++)
            snprintf(want + 2 * b, 3, "%02x", digest[b]);
        assert_string_equal(spec.class_id, want);
        kiln_job_spec_clear(&spec);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(class_text_and_id_are_canonical_in_any_order_of_specs),
        cmocka_unit_test_setup_teardown(submitted_job_is_claimed_run_and_completed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(priority_first_then_fifo_within_a_priority, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(claim_skips_jobs_the_worker_cannot_run_behind_ten_thousand,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(two_workers_race_for_one_job_and_exactly_one_wins, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(expired_lease_returns_job_and_old_claim_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(retryable_failures_back_off_then_the_job_is_dead, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(non_retryable_failure_fails_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel_pending_and_running_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(release_returns_the_job_without_counting_the_attempt, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(idempotency_key_returns_the_first_id_and_writes_nothing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            bad_specs_are_refused_naming_the_field_and_nothing_is_written, setup, teardown),
        cmocka_unit_test_setup_teardown(delayed_job_waits_for_its_time, setup, teardown),
        cmocka_unit_test_setup_teardown(queue_stats_count_each_state, setup, teardown),
        cmocka_unit_test_setup_teardown(a_job_behind_more_than_a_thousand_classes_is_claimed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(trimming_by_age_deletes_exactly_the_records_it_unlists,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(two_reports_for_one_lease_in_one_call_apply_only_the_first,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, setup_server, teardown_server);
}

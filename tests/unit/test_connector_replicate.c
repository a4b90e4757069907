/*
 * The replicate connector against fake_replicate (tests/fakes), a real HTTP
 * server in a child process that follows Replicate's API and injects the
 * fault a prediction's input.fault names. Each test starts its own fake.
 */
#include "kiln/connector.h"
#include "kiln/log.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY       "r8_kilnTestToken_Zq8wX3vB7nM2pL5rT9yU"
#define KEY_ENV   "KILN_TEST_REPLICATE_TOKEN"
#define PNG_BYTES 70

static char tmp_root[256];

static int fake_up(void **state)
{
    static kiln_test_fake_t fake;
    char *args[] = {"--key", KEY, NULL}, log[320];
    snprintf(log, sizeof log, "%s/fake_replicate.log", tmp_root);
    kiln_test_fake_start(&fake, "fake_replicate", args, log);
    *state = &fake;
    return 0;
}

static int fake_down(void **state)
{
    kiln_test_fake_stop(*state);
    return 0;
}

/* A replicate connector on the fake with fast polls, plus extra options
 * (a JSON object's members without braces, may be ""). */
static kiln_connector_t *connector_for(const kiln_test_fake_t *f, const char *extra,
                                       const char *redis_url)
{
    char options[2048];
    snprintf(options, sizeof options,
             "{\"base_url\": \"%s/v1\", \"api_key_env\": \"" KEY_ENV "\", \"max_retries\": 2, "
             "\"poll_interval_ms\": 10, \"poll_interval_max_ms\": 40, \"model\": "
             "\"kiln/sdxl\"%s%s}",
             f->url, extra[0] ? ", " : "", extra);
    return kiln_test_connector_parse("replicate", "replicate", options, redis_url);
}

/* ---- tests ------------------------------------------------------------------- */

static void a_prediction_succeeds_with_progress_from_its_logs(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.1", "{\"input\": {\"prompt\": \"a kiln\", \"steps\": 4}}", 0, 0,
                      &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "status"), "succeeded");
    assert_string_equal(kiln_test_json_str(r.result, "id"), "rp0001");
    assert_true(json_is_array(json_object_get(r.result, "output")));
    /* No outputs_dir: the URLs are the result, nothing is downloaded. */
    assert_true(json_is_null(json_object_get(r.result, "files")));
    assert_int_equal(kiln_test_fake_stat(f, "downloads"), 0);
    /* "starting", then "processing" without a bar, then 25, 50, 75 from the
     * logs' bars, then 100 when it succeeded. */
    int n = atomic_load(&r.progress_count);
    double want[] = {0, 0, 25, 50, 75, 100};
    assert_int_equal(n, 6);
    for (int i = 0; i < n; i++)
        if (r.percents[i] != want[i])
            fail_msg("progress %d: %.1f, expected %.1f", i, r.percents[i], want[i]);
    assert_string_equal(r.messages[0], "starting");
    assert_string_equal(r.messages[1], "processing");
    assert_string_equal(kiln_test_job_last_message(&r), "succeeded");
    /* Created by model (the option's default), polled until done. */
    assert_int_equal(kiln_test_fake_stat(f, "creates"), 1);
    assert_int_equal(kiln_test_fake_stat(f, "polls"), 5);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void version_or_model_choose_the_create_endpoint(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    /* The fake refuses POST /v1/predictions without a version: a success
     * shows the version went there. */
    kiln_test_job_run(c, "replicate.2",
                      "{\"version\": \"5c7d5dc6dd8bf75c\", \"input\": {\"steps\": 1}}", 0, 0, &r);
    kiln_test_expect_completed(&r);
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "replicate.3", "{\"model\": \"bad model\", \"input\": {}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "payload.model: expected \"owner/name\"");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "replicate.4", "{\"input\": [1, 2]}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "payload.input: expected an object");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "replicate.5", "not json", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "payload: expected a JSON object");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
    /* Without a default model or version, the payload must name one. */
    char options[512];
    snprintf(options, sizeof options, "{\"base_url\": \"%s/v1\", \"api_key_env\": \"" KEY_ENV "\"}",
             f->url);
    c = kiln_test_connector_parse("replicate", "bare", options, NULL);
    kiln_test_job_run(c, "replicate.6", "{\"input\": {}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "give \"version\" or \"model\"");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
    assert_int_equal(kiln_test_fake_stat(f, "creates"), 1);
}

static void a_429_is_retried_after_retry_after(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.1", "{\"input\": {\"fault\": \"429-then-ok\", \"steps\": 1}}",
                      0, 0, &r);
    kiln_test_expect_completed(&r);
    if (r.elapsed_ms < 950)
        fail_msg("retried after %lld ms; Retry-After asked for 1 s", (long long)r.elapsed_ms);
    assert_int_equal(kiln_test_fake_stat(f, "creates"), 1);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void a_500_on_create_or_poll_is_retried(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.1", "{\"input\": {\"fault\": \"500-then-ok\", \"steps\": 1}}",
                      0, 0, &r);
    kiln_test_expect_completed(&r);
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "replicate.2",
                      "{\"input\": {\"fault\": \"poll-500-then-ok\", \"steps\": 2}}", 0, 0, &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "status"), "succeeded");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void a_job_past_its_timeout_fails_retryable_and_cancels_the_prediction(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.1", "{\"input\": {\"fault\": \"hang\"}}", 400, 0, &r);
    kiln_test_expect_failed(&r, true, "timed out");
    assert_true(r.elapsed_ms < 3000);
    /* Left running, the prediction would be billed to its end. */
    assert_int_equal(kiln_test_fake_stat(f, "cancels"), 1);
    kiln_test_job_clear(&r);
    /* A create that stalls ends at the job's deadline too. */
    kiln_test_job_run(c, "replicate.2", "{\"input\": {\"fault\": \"slow\"}}", 400, 0, &r);
    kiln_test_expect_failed(&r, true, "timed out");
    assert_true(r.elapsed_ms < 3000);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void a_malformed_response_fails_not_retryable(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.1", "{\"input\": {\"fault\": \"malformed\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "not a JSON object");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "replicate.2", "{\"input\": {\"fault\": \"poll-malformed\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "not a JSON object");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "replicate.3", "{\"input\": {\"fault\": \"no-status\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "the response has no status");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "replicate.4", "{\"input\": {\"fault\": \"bad-id\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "no valid prediction id");
    kiln_test_job_clear(&r);
    /* Nothing was asked with the hostile id: four creates and one poll each
     * of poll-malformed and no-status went out, nothing more. */
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 6);
    kiln_connector_free(c);
}

static void a_refused_connection_fails_retryable(void **state)
{
    kiln_test_fake_t dead = {0};
    snprintf(dead.url, sizeof dead.url, "http://127.0.0.1:1");
    kiln_connector_t *c = connector_for(&dead, "\"max_retries\": 0", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.1", "{\"input\": {}}", 0, 0, &r);
    kiln_test_expect_failed(&r, true, "127.0.0.1:1");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void cancel_mid_job_cancels_the_prediction(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "\"poll_interval_max_ms\": 10000", NULL);
    kiln_test_job_t r;
    /* Cancelled once it reported "processing" at 10%. */
    kiln_test_job_run(c, "replicate.1", "{\"input\": {\"fault\": \"hang\"}}", 0, 2, &r);
    assert_int_equal(r.out.status, KILN_OUTCOME_CANCELLED);
    assert_true(r.elapsed_ms < 5000);
    assert_int_equal(kiln_test_fake_stat(f, "cancels"), 1);
    char id[64];
    kiln_test_fake_stat_text(f, "last_cancelled", id, sizeof id);
    assert_string_equal(id, "rp0001");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void outputs_are_downloaded_into_the_outputs_folder(void **state)
{
    kiln_test_fake_t *f = *state;
    char outputs[300], extra[400];
    snprintf(outputs, sizeof outputs, "%s/outputs-replicate", tmp_root);
    assert_int_equal(mkdir(outputs, 0755), 0);
    snprintf(extra, sizeof extra, "\"outputs_dir\": \"%s\"", outputs);
    kiln_connector_t *c = connector_for(f, extra, NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.7", "{\"input\": {\"steps\": 1, \"outputs\": 2}}", 0, 0, &r);
    kiln_test_expect_completed(&r);
    json_t *files = json_object_get(r.result, "files");
    assert_int_equal(json_array_size(files), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *file = json_array_get(files, i);
        char want[400];
        snprintf(want, sizeof want, "%s/replicate.7/%zu-rp0001-%zu.png", outputs, i, i);
        assert_string_equal(kiln_test_json_str(file, "path"), want);
        assert_non_null(strstr(kiln_test_json_str(file, "url"), "/files/rp0001-"));
        struct stat st;
        assert_int_equal(stat(want, &st), 0);
        assert_int_equal(st.st_size, PNG_BYTES);
        assert_int_equal(json_integer_value(json_object_get(file, "bytes")), PNG_BYTES);
    }
    /* Only the two files: no ".part" left behind. */
    char dir[400];
    snprintf(dir, sizeof dir, "%s/replicate.7", outputs);
    assert_int_equal(kiln_test_dir_entries(dir), 2);
    kiln_test_job_clear(&r);

    /* Text output has no files to fetch. */
    kiln_test_job_run(c, "replicate.8", "{\"input\": {\"steps\": 1, \"fault\": \"text-output\"}}",
                      0, 0, &r);
    kiln_test_expect_completed(&r);
    assert_int_equal(json_array_size(json_object_get(r.result, "files")), 0);
    kiln_test_job_clear(&r);

    /* More output files than kiln fetches for one job is refused up front. */
    kiln_test_job_run(c, "replicate.10", "{\"input\": {\"steps\": 1, \"outputs\": 150}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "150 output files; at most 100");
    kiln_test_job_clear(&r);
    assert_int_equal(kiln_test_fake_stat(f, "downloads"), 2);
    kiln_connector_free(c);

    /* An output over max_output_bytes is refused and not kept. */
    snprintf(extra, sizeof extra, "\"outputs_dir\": \"%s\", \"max_output_bytes\": 1048576",
             outputs);
    c = connector_for(f, extra, NULL);
    kiln_test_job_run(c, "replicate.9", "{\"input\": {\"steps\": 1, \"fault\": \"big-output\"}}", 0,
                      0, &r);
    kiln_test_expect_failed(&r, false, "downloading output 0");
    snprintf(dir, sizeof dir, "%s/replicate.9", outputs);
    assert_int_equal(kiln_test_dir_entries(dir), 0);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void a_failed_prediction_fails_with_its_error(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.1", "{\"input\": {\"fault\": \"fail\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "prediction rp0001 failed: CUDA out of memory");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "replicate.2", "{\"input\": {\"fault\": \"canceled-remote\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "was canceled on Replicate");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void prefer_wait_answers_a_quick_model_without_polling(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "\"wait_seconds\": 5", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.1", "{\"input\": {}}", 0, 0, &r);
    kiln_test_expect_completed(&r);
    assert_int_equal(kiln_test_fake_stat(f, "prefer_wait"), 1);
    assert_int_equal(kiln_test_fake_stat(f, "polls"), 0);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void health_asks_for_the_account(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_err_t err = {0};
    assert_int_equal(kiln_connector_health(c, &err), 0);
    kiln_connector_free(c);
    setenv("KILN_TEST_WRONG_TOKEN", "r8_wrong_token_also_secret", 1);
    c = connector_for(f, "\"api_key_env\": \"KILN_TEST_WRONG_TOKEN\"", NULL);
    assert_int_equal(kiln_connector_health(c, &err), KILN_EIO);
    assert_non_null(strstr(err.msg, "HTTP 401"));
    assert_non_null(strstr(err.msg, "check the API key"));
    assert_null(strstr(err.msg, "r8_wrong_token_also_secret"));
    kiln_connector_free(c);
}

static void expect_no_key(const char *what, const char *text)
{
    if (text && strstr(text, KEY))
        fail_msg("the API token appears in %s: %s", what, text);
}

static void the_token_never_appears_in_logs_errors_or_results(void **state)
{
    kiln_test_fake_t *f = *state;
    char log_path[320];
    snprintf(log_path, sizeof log_path, "%s/stderr-replicate.log", tmp_root);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_DEBUG);
    int saved = kiln_test_capture_begin(log_path);
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t echo, retried;
    /* A service that quotes the header back in its error. */
    kiln_test_job_run(c, "replicate.1", "{\"input\": {\"fault\": \"echo-key\"}}", 0, 0, &echo);
    kiln_test_job_run(c, "replicate.2", "{\"input\": {\"fault\": \"429-then-ok\", \"steps\": 1}}",
                      0, 0, &retried);
    kiln_connector_free(c);
    kiln_test_capture_end(saved);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_INFO);
    kiln_test_expect_failed(&echo, false, "Bearer [redacted]");
    kiln_test_expect_completed(&retried);
    char *logs = kiln_test_slurp(log_path, 1024 * 1024);
    assert_non_null(strstr(logs, "HTTP 429"));
    expect_no_key("the logs", logs);
    expect_no_key("an error", echo.out.error);
    expect_no_key("a result", retried.out.result_json);
    free(logs);
    assert_int_equal(kiln_test_fake_stat(f, "auth_bad"), 0);
    kiln_test_job_clear(&echo);
    kiln_test_job_clear(&retried);
}

static void bad_options_are_refused_naming_them(void **state)
{
    unsetenv("REPLICATE_API_TOKEN");
    const struct {
        const char *options, *needle;
    } bad[] = {
        {"{}", "connectors.rep.api_key_env"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"model\": \"no-slash\"}", "connectors.rep.model"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"model\": \"a/b/../c\"}", "connectors.rep.model"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"version\": \"a b\"}", "connectors.rep.version"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"wait_seconds\": 61}", "connectors.rep.wait_seconds"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"poll_interval_ms\": \"x\"}",
         "connectors.rep.poll_interval_ms"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"poll_interval_ms\": 500, \"poll_interval_max_ms\": "
         "100}",
         "connectors.rep.poll_interval_max_ms"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"outputs_dir\": \"relative\"}",
         "connectors.rep.outputs_dir"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"base_url\": \"ftp://x\"}",
         "connectors.rep.base_url"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"rate_limit_per_minute\": 10}", "redis.url"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[1024];
        int rc = kiln_test_connector_refused("replicate", "rep", bad[i].options, msg, sizeof msg);
        if (rc != KILN_EINVAL || !strstr(msg, bad[i].needle))
            fail_msg("options %s: got %d \"%s\", expected KILN_EINVAL naming %s", bad[i].options,
                     rc, msg, bad[i].needle);
        expect_no_key("an init error", msg);
    }
}

static void every_request_counts_against_the_fleet_rate_limit(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_redis_t redis;
    kiln_test_redis_start(&redis, false);
    /* Three requests a minute: the create and two polls, then the budget
     * is spent and the job ends at its deadline instead of a fourth. */
    kiln_connector_t *c = connector_for(
        f, "\"rate_limit_per_minute\": 3, \"rate_limit_key\": \"replicate-acct\"", redis.url);
    kiln_test_job_t r;
    kiln_test_job_run(c, "replicate.1", "{\"input\": {\"steps\": 8}}", 1500, 0, &r);
    kiln_test_expect_failed(&r, true, "rate limit");
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 3);
    redisContext *rc = kiln_test_redis_connect(&redis);
    redisReply *reply = redisCommand(rc, "ZCARD kiln:ratelimit:{replicate-acct}");
    assert_int_equal(reply->integer, 3);
    freeReplyObject(reply);
    redisFree(rc);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
    kiln_test_redis_destroy(&redis);
}

int main(void)
{
    kiln_test_tmpdir(tmp_root, sizeof tmp_root);
    setenv(KEY_ENV, KEY, 1);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_INFO);
#define T(name) cmocka_unit_test_setup_teardown(name, fake_up, fake_down)
    const struct CMUnitTest tests[] = {
        T(a_prediction_succeeds_with_progress_from_its_logs),
        T(version_or_model_choose_the_create_endpoint),
        T(a_429_is_retried_after_retry_after),
        T(a_500_on_create_or_poll_is_retried),
        T(a_job_past_its_timeout_fails_retryable_and_cancels_the_prediction),
        T(a_malformed_response_fails_not_retryable),
        T(a_refused_connection_fails_retryable),
        T(cancel_mid_job_cancels_the_prediction),
        T(outputs_are_downloaded_into_the_outputs_folder),
        T(a_failed_prediction_fails_with_its_error),
        T(prefer_wait_answers_a_quick_model_without_polling),
        T(health_asks_for_the_account),
        T(the_token_never_appears_in_logs_errors_or_results),
        T(bad_options_are_refused_naming_them),
        T(every_request_counts_against_the_fleet_rate_limit),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}

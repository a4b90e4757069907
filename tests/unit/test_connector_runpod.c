/*
 * The runpod connector against fake_runpod (tests/fakes), a real HTTP server
 * in a child process that follows RunPod's serverless endpoint API and
 * injects the fault a job's input.fault names. Each test starts its own fake.
 */
#include "kiln/connector.h"
#include "kiln/log.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY       "rpa_KILNTESTKEY0123456789ABCDEFGHIJKLMNOPQRSTUV"
#define KEY_ENV   "KILN_TEST_RUNPOD_KEY"
#define JOB_ID    "c80ffee4-f315-4e25-a146-0001"
#define PNG_BYTES 70

static char tmp_root[256];

static int fake_up(void **state)
{
    static kiln_test_fake_t fake;
    char *args[] = {"--key", KEY, "--endpoint", "ep-test", NULL}, log[320];
    snprintf(log, sizeof log, "%s/fake_runpod.log", tmp_root);
    kiln_test_fake_start(&fake, "fake_runpod", args, log);
    *state = &fake;
    return 0;
}

static int fake_down(void **state)
{
    kiln_test_fake_stop(*state);
    return 0;
}

/* A runpod connector on the fake's ep-test with fast polls, plus extra
 * options (members without braces, may be ""). */
static kiln_connector_t *connector_for(const kiln_test_fake_t *f, const char *extra,
                                       const char *redis_url)
{
    char options[2048];
    snprintf(options, sizeof options,
             "{\"base_url\": \"%s/v2\", \"endpoint_id\": \"ep-test\", \"api_key_env\": "
             "\"" KEY_ENV "\", \"max_retries\": 2, \"poll_interval_ms\": 10, "
             "\"poll_interval_max_ms\": 40%s%s}",
             f->url, extra[0] ? ", " : "", extra);
    return kiln_test_connector_parse("runpod", "runpod", options, redis_url);
}

static void expect_percents(const kiln_test_job_t *r, const double *want, int n)
{
    assert_int_equal(atomic_load(&r->progress_count), n);
    for (int i = 0; i < n; i++)
        if (r->percents[i] != want[i])
            fail_msg("progress %d: %.1f, expected %.1f", i, r->percents[i], want[i]);
}

/* ---- tests ------------------------------------------------------------------- */

static void a_job_completes_with_progress_from_its_updates(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "runpod.1", "{\"input\": {\"prompt\": \"a kiln\", \"steps\": 4}}", 0, 0,
                      &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "status"), "COMPLETED");
    assert_string_equal(kiln_test_json_str(r.result, "id"), JOB_ID);
    assert_true(json_is_array(json_object_get(json_object_get(r.result, "output"), "images")));
    assert_int_equal(json_integer_value(json_object_get(r.result, "executionTime")), 2500);
    /* In the queue, then the worker's "denoising NN%" updates, then done. */
    const double want[] = {0, 25, 50, 75, 100};
    expect_percents(&r, want, 5);
    assert_string_equal(r.messages[0], "in queue");
    assert_string_equal(r.messages[1], "denoising 25%");
    assert_string_equal(kiln_test_job_last_message(&r), "completed");
    assert_int_equal(kiln_test_fake_stat(f, "creates"), 1);
    assert_int_equal(kiln_test_fake_stat(f, "polls"), 5);
    kiln_test_job_clear(&r);
    /* Updates sent as objects: {"progress": 25, "message": "denoising"}. */
    kiln_test_job_run(c, "runpod.2", "{\"input\": {\"steps\": 2, \"progress\": \"object\"}}", 0, 0,
                      &r);
    kiln_test_expect_completed(&r);
    const double want_object[] = {0, 50, 100};
    expect_percents(&r, want_object, 3);
    assert_string_equal(r.messages[1], "denoising");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void bad_payloads_fail_naming_the_field(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "runpod.1", "{\"input\": \"text\"}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "payload.input: expected an object");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "runpod.2", "{\"input\": {}, \"policy\": 5}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "payload.policy: expected an object");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "runpod.3", "[", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "payload: expected a JSON object");
    kiln_test_job_clear(&r);
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 0);
    kiln_connector_free(c);
}

static void a_429_and_a_500_are_retried(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "runpod.1", "{\"input\": {\"fault\": \"429-then-ok\", \"steps\": 1}}", 0,
                      0, &r);
    kiln_test_expect_completed(&r);
    if (r.elapsed_ms < 950)
        fail_msg("retried after %lld ms; Retry-After asked for 1 s", (long long)r.elapsed_ms);
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "runpod.2", "{\"input\": {\"fault\": \"500-then-ok\", \"steps\": 1}}", 0,
                      0, &r);
    kiln_test_expect_completed(&r);
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "runpod.3", "{\"input\": {\"fault\": \"poll-500-then-ok\", \"steps\": 1}}",
                      0, 0, &r);
    kiln_test_expect_completed(&r);
    kiln_test_job_clear(&r);
    assert_int_equal(kiln_test_fake_stat(f, "creates"), 3);
    kiln_connector_free(c);
}

static void a_job_past_its_timeout_fails_retryable_and_is_cancelled_there(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    char log_path[320];
    snprintf(log_path, sizeof log_path, "%s/stderr-runpod-timeout.log", tmp_root);
    int saved = kiln_test_capture_begin(log_path);
    kiln_test_job_run(c, "runpod.1", "{\"input\": {\"fault\": \"hang\"}}", 400, 0, &r);
    kiln_test_capture_end(saved);
    kiln_test_expect_failed(&r, true, "timed out");
    /* The remote cancel is logged with its duration, so a late job shows
     * whether the time went before the cancel or into it. */
    char *log = kiln_test_slurp(log_path, 64 * 1024);
    const char *cancel_line = strstr(log, "cancelled the remote job: POST /ep-test/cancel/");
    if (!cancel_line || r.elapsed_ms >= 3000)
        fail_msg("job took %lld ms (bound 3000); log:\n%s", (long long)r.elapsed_ms, log);
    free(log);
    assert_int_equal(kiln_test_fake_stat(f, "cancels"), 1);
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "runpod.2", "{\"input\": {\"fault\": \"slow\"}}", 400, 0, &r);
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
    kiln_test_job_run(c, "runpod.1", "{\"input\": {\"fault\": \"malformed\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "not a JSON object");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "runpod.2", "{\"input\": {\"fault\": \"poll-malformed\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "not a JSON object");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "runpod.3", "{\"input\": {\"fault\": \"no-status\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "the response has no status");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void a_refused_connection_fails_retryable(void **state)
{
    kiln_test_fake_t dead = {0};
    snprintf(dead.url, sizeof dead.url, "http://127.0.0.1:1");
    kiln_connector_t *c = connector_for(&dead, "\"max_retries\": 0", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "runpod.1", "{\"input\": {}}", 0, 0, &r);
    kiln_test_expect_failed(&r, true, "127.0.0.1:1");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void cancel_mid_job_cancels_the_runpod_job(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "\"poll_interval_max_ms\": 10000", NULL);
    kiln_test_job_t r;
    /* Cancelled once the worker reported "loading model". */
    kiln_test_job_run(c, "runpod.1", "{\"input\": {\"fault\": \"hang\"}}", 0, 2, &r);
    assert_int_equal(r.out.status, KILN_OUTCOME_CANCELLED);
    assert_string_equal(r.messages[1], "loading model");
    assert_true(r.elapsed_ms < 5000);
    assert_int_equal(kiln_test_fake_stat(f, "cancels"), 1);
    char id[64];
    kiln_test_fake_stat_text(f, "last_cancelled", id, sizeof id);
    assert_string_equal(id, JOB_ID);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void outputs_are_downloaded_into_the_outputs_folder(void **state)
{
    kiln_test_fake_t *f = *state;
    char outputs[300], extra[400];
    snprintf(outputs, sizeof outputs, "%s/outputs-runpod", tmp_root);
    assert_int_equal(mkdir(outputs, 0755), 0);
    snprintf(extra, sizeof extra, "\"outputs_dir\": \"%s\"", outputs);
    kiln_connector_t *c = connector_for(f, extra, NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "runpod/../7", "{\"input\": {\"steps\": 1, \"outputs\": 3}}", 0, 0, &r);
    kiln_test_expect_completed(&r);
    json_t *files = json_object_get(r.result, "files");
    assert_int_equal(json_array_size(files), 3);
    /* The job id becomes one safe folder name: nothing escapes outputs_dir. */
    char dir[400];
    snprintf(dir, sizeof dir, "%s/runpod_.._7", outputs);
    assert_int_equal(kiln_test_dir_entries(dir), 3);
    for (size_t i = 0; i < 3; i++) {
        const char *path = kiln_test_json_str(json_array_get(files, i), "path");
        assert_true(strncmp(path, dir, strlen(dir)) == 0);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_size, PNG_BYTES);
    }
    assert_int_equal(kiln_test_fake_stat(f, "downloads"), 3);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void failed_cancelled_and_timed_out_jobs_fail_with_the_reason(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "runpod.1", "{\"input\": {\"fault\": \"fail\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "failed: handler raised: CUDA out of memory");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "runpod.2", "{\"input\": {\"fault\": \"canceled-remote\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "was cancelled on RunPod");
    kiln_test_job_clear(&r);
    kiln_test_job_run(c, "runpod.3", "{\"input\": {\"fault\": \"timed-out\"}}", 0, 0, &r);
    kiln_test_expect_failed(&r, false, "timed out");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void health_asks_the_endpoint(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_err_t err = {0};
    assert_int_equal(kiln_connector_health(c, &err), 0);
    kiln_connector_free(c);
    char options[512];
    snprintf(options, sizeof options,
             "{\"base_url\": \"%s/v2\", \"endpoint_id\": \"no-such-ep\", \"api_key_env\": "
             "\"" KEY_ENV "\", \"max_retries\": 0}",
             f->url);
    c = kiln_test_connector_parse("runpod", "runpod", options, NULL);
    assert_int_equal(kiln_connector_health(c, &err), KILN_EIO);
    assert_non_null(strstr(err.msg, "HTTP 404"));
    kiln_connector_free(c);
}

static void expect_no_key(const char *what, const char *text)
{
    if (text && strstr(text, KEY))
        fail_msg("the API key appears in %s: %s", what, text);
}

static void the_api_key_never_appears_in_logs_errors_or_results(void **state)
{
    kiln_test_fake_t *f = *state;
    char log_path[320];
    snprintf(log_path, sizeof log_path, "%s/stderr-runpod.log", tmp_root);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_DEBUG);
    int saved = kiln_test_capture_begin(log_path);
    kiln_connector_t *c = connector_for(f, "", NULL);
    kiln_test_job_t echo, retried, unauthorized;
    kiln_test_job_run(c, "runpod.1", "{\"input\": {\"fault\": \"echo-key\"}}", 0, 0, &echo);
    kiln_test_job_run(c, "runpod.2", "{\"input\": {\"fault\": \"429-then-ok\", \"steps\": 1}}", 0,
                      0, &retried);
    kiln_connector_free(c);
    setenv("KILN_TEST_WRONG_KEY", "rpa_wrong_key_also_secret", 1);
    c = connector_for(f, "\"api_key_env\": \"KILN_TEST_WRONG_KEY\"", NULL);
    kiln_test_job_run(c, "runpod.3", "{\"input\": {}}", 0, 0, &unauthorized);
    kiln_connector_free(c);
    kiln_test_capture_end(saved);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_INFO);
    kiln_test_expect_failed(&echo, false, "Bearer [redacted]");
    kiln_test_expect_completed(&retried);
    kiln_test_expect_failed(&unauthorized, false, "HTTP 401");
    assert_null(strstr(unauthorized.out.error, "rpa_wrong_key_also_secret"));
    char *logs = kiln_test_slurp(log_path, 1024 * 1024);
    assert_non_null(strstr(logs, "HTTP 429"));
    expect_no_key("the logs", logs);
    expect_no_key("an error", echo.out.error);
    expect_no_key("a result", retried.out.result_json);
    free(logs);
    assert_int_equal(kiln_test_fake_stat(f, "auth_bad"), 1);
    kiln_test_job_clear(&echo);
    kiln_test_job_clear(&retried);
    kiln_test_job_clear(&unauthorized);
}

static void bad_options_are_refused_naming_them(void **state)
{
    unsetenv("RUNPOD_API_KEY");
    const struct {
        const char *options, *needle;
    } bad[] = {
        {"{\"endpoint_id\": \"ep\"}", "connectors.rp.api_key_env"},
        {"{\"api_key_env\": \"" KEY_ENV "\"}", "connectors.rp.endpoint_id: expected"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"endpoint_id\": \"../x\"}",
         "connectors.rp.endpoint_id"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"endpoint_id\": 7}", "connectors.rp.endpoint_id"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"endpoint_id\": \"ep\", \"timeout_ms\": 0}",
         "connectors.rp.timeout_ms"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"endpoint_id\": \"ep\", \"outputs_dir\": "
         "\"/no/such/folder\"}",
         "connectors.rp.outputs_dir"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"endpoint_id\": \"ep\", \"max_output_bytes\": 0}",
         "connectors.rp.max_output_bytes"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"endpoint_id\": \"ep\", \"rate_limit_per_minute\": "
         "-3}",
         "connectors.rp.rate_limit_per_minute"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[1024];
        int rc = kiln_test_connector_refused("runpod", "rp", bad[i].options, msg, sizeof msg);
        if (rc != KILN_EINVAL || !strstr(msg, bad[i].needle))
            fail_msg("options %s: got %d \"%s\", expected KILN_EINVAL naming %s", bad[i].options,
                     rc, msg, bad[i].needle);
        expect_no_key("an init error", msg);
    }
}

static void instances_sharing_a_rate_limit_key_share_one_budget(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_redis_t redis;
    kiln_test_redis_start(&redis, false);
    /* Two instances (as two workers would have) on one key of 4 a minute:
     * the first job's 3 requests (run, 2 polls) leave one for the second. */
    const char *extra = "\"rate_limit_per_minute\": 4, \"rate_limit_key\": \"runpod-acct\"";
    kiln_connector_t *a = connector_for(f, extra, redis.url);
    kiln_connector_t *b = connector_for(f, extra, redis.url);
    kiln_test_job_t r;
    kiln_test_job_run(a, "runpod.1", "{\"input\": {\"steps\": 1}}", 0, 0, &r);
    kiln_test_expect_completed(&r);
    kiln_test_job_clear(&r);
    kiln_test_job_run(b, "runpod.2", "{\"input\": {\"steps\": 1}}", 1500, 0, &r);
    kiln_test_expect_failed(&r, true, "rate limit");
    kiln_test_job_clear(&r);
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 4);
    kiln_connector_free(a);
    kiln_connector_free(b);
    kiln_test_redis_destroy(&redis);
}

int main(void)
{
    kiln_test_tmpdir(tmp_root, sizeof tmp_root);
    setenv(KEY_ENV, KEY, 1);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_INFO);
#define T(name) cmocka_unit_test_setup_teardown(name, fake_up, fake_down)
    const struct CMUnitTest tests[] = {
        T(a_job_completes_with_progress_from_its_updates),
        T(bad_payloads_fail_naming_the_field),
        T(a_429_and_a_500_are_retried),
        T(a_job_past_its_timeout_fails_retryable_and_is_cancelled_there),
        T(a_malformed_response_fails_not_retryable),
        T(a_refused_connection_fails_retryable),
        T(cancel_mid_job_cancels_the_runpod_job),
        T(outputs_are_downloaded_into_the_outputs_folder),
        T(failed_cancelled_and_timed_out_jobs_fail_with_the_reason),
        T(health_asks_the_endpoint),
        T(the_api_key_never_appears_in_logs_errors_or_results),
        T(bad_options_are_refused_naming_them),
        T(instances_sharing_a_rate_limit_key_share_one_budget),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}

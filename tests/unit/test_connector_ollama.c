/*
 * The ollama connector against fake_ollama (tests/fakes/fake_ollama.c), a
 * real HTTP server in a child process that streams NDJSON as Ollama does and
 * injects faults chosen by the model name. Each test starts its own fake,
 * so request counts start at zero.
 */
#include "kiln/connector.h"
#include "kiln/log.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAPTURE_MAX (1024 * 1024)

static char tmp_root[256];
static int test_seq;

static int fake_start(void **state)
{
    static kiln_test_fake_t fake;
    char log_path[320];
    snprintf(log_path, sizeof log_path, "%s/fake-%02d.log", tmp_root, ++test_seq);
    kiln_test_fake_start(&fake, "fake_ollama", NULL, log_path);
    *state = &fake;
    return 0;
}

static int fake_stop(void **state)
{
    kiln_test_fake_stop(*state);
    return 0;
}

/* An ollama connector for url with fast retries, overridden and extended
 * by extra (JSON text, may be NULL). */
static kiln_connector_t *connector_for(const char *url, const char *extra)
{
    json_t *options = json_pack("{s:s, s:i}", "url", url, "max_retries", 2);
    return kiln_test_connector_extended("ollama", "ollama", options, extra);
}

static void run_job(kiln_connector_t *c, const char *payload, kiln_test_job_t *j)
{
    kiln_test_job_run(c, "ollama.1", payload, 0, 0, j);
}

/* ---- tests ------------------------------------------------------------------- */

static void generate_streams_token_progress_and_returns_text_and_counts(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, NULL);
    kiln_test_job_t j;
    run_job(c,
            "{\"model\":\"llama3\",\"prompt\":\"fire the kiln\",\"options\":{\"num_predict\":10}}",
            &j);
    kiln_test_expect_completed(&j);
    assert_string_equal(kiln_test_json_str(j.result, "text"), "Hello! You said: fire the kiln");
    assert_string_equal(kiln_test_json_str(j.result, "model"), "llama3");
    assert_string_equal(kiln_test_json_str(j.result, "done_reason"), "stop");
    assert_int_equal(json_integer_value(json_object_get(j.result, "eval_count")), 6);
    assert_int_equal(json_integer_value(json_object_get(j.result, "prompt_eval_count")), 26);
    assert_true(json_integer_value(json_object_get(j.result, "total_duration")) > 0);
    assert_null(json_object_get(j.result, "message"));

    /* One update a token (6 words against num_predict 10: 10% each), then 100. */
    int n = atomic_load(&j.progress_count);
    assert_int_equal(n, 7);
    for (int i = 0; i < 6; i++)
        assert_true(j.percents[i] > 10.0 * (i + 1) - 0.01 && j.percents[i] < 10.0 * (i + 1) + 0.01);
    assert_true(j.percents[6] == 100.0);
    assert_string_equal(j.messages[1], "2 tokens: Hello! You");
    assert_string_equal(j.messages[6], "6 tokens: Hello! You said: fire the kiln");
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 1);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void chat_returns_the_assistant_message(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, "{\"model\": \"llama3:latest\"}");
    kiln_test_job_t j;
    run_job(c,
            "{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
            "{\"role\":\"user\",\"content\":\"hi there\"}]}",
            &j);
    kiln_test_expect_completed(&j);
    assert_string_equal(kiln_test_json_str(j.result, "model"), "llama3:latest");
    json_t *message = json_object_get(j.result, "message");
    assert_string_equal(kiln_test_json_str(message, "role"), "assistant");
    assert_string_equal(kiln_test_json_str(message, "content"), "Hello! You said: hi there");
    assert_string_equal(kiln_test_json_str(j.result, "text"), "Hello! You said: hi there");
    /* Without num_predict, progress stays below 100 until the end. */
    int n = atomic_load(&j.progress_count);
    for (int i = 0; i + 1 < n; i++)
        assert_true(j.percents[i] < 100.0 && j.percents[i] > 0.0);
    assert_true(j.percents[n - 1] == 100.0);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void missing_model_is_pulled_with_progress_then_run(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, NULL);
    kiln_test_job_t j;
    run_job(c, "{\"model\":\"missing-phi3\",\"prompt\":\"after the pull\"}", &j);
    kiln_test_expect_completed(&j);
    assert_string_equal(kiln_test_json_str(j.result, "text"), "Hello! You said: after the pull");
    assert_int_equal(kiln_test_fake_stat(f, "pulls"), 1);
    /* generate (404), pull, generate again. */
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 3);
    assert_true(kiln_test_job_progress_mentions(&j, "pulling missing-phi3: pulling manifest"));
    assert_true(kiln_test_job_progress_mentions(&j, "pulling 6a0746a1ec1a (50%)"));
    assert_true(kiln_test_job_progress_mentions(&j, "pulling missing-phi3: success"));
    /* Progress never goes back: the pull fills the first half. */
    int n = atomic_load(&j.progress_count);
    for (int i = 1; i < n; i++)
        if (j.percents[i] < j.percents[i - 1])
            fail_msg("progress went back from %.1f to %.1f (\"%s\")", j.percents[i - 1],
                     j.percents[i], j.messages[i]);
    assert_true(j.percents[n - 1] == 100.0);
    kiln_test_job_clear(&j);

    /* Now it is there: no second pull. */
    run_job(c, "{\"model\":\"missing-phi3\",\"prompt\":\"again\"}", &j);
    kiln_test_expect_completed(&j);
    assert_int_equal(kiln_test_fake_stat(f, "pulls"), 1);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void missing_model_fails_clearly_without_pull_or_when_unknown(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, "{\"pull_missing\": false}");
    kiln_test_job_t j;
    run_job(c, "{\"model\":\"missing-qwen\",\"prompt\":\"x\"}", &j);
    kiln_test_expect_failed(&j, false, "model \"missing-qwen\" not found");
    assert_non_null(strstr(j.out.error, "pull_missing"));
    assert_int_equal(kiln_test_fake_stat(f, "pulls"), 0);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);

    c = connector_for(f->url, NULL);
    run_job(c, "{\"model\":\"missing-unknown-model\",\"prompt\":\"x\"}", &j);
    kiln_test_expect_failed(&j, false, "file does not exist");
    assert_non_null(strstr(j.out.error, "could not be pulled"));
    assert_int_equal(kiln_test_fake_stat(f, "pulls"), 1);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void retries_429_honouring_retry_after(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, NULL);
    kiln_test_job_t j;
    run_job(c, "{\"model\":\"429-then-ok\",\"prompt\":\"x\"}", &j);
    kiln_test_expect_completed(&j);
    assert_string_equal(kiln_test_json_str(j.result, "text"), "Hello! You said: x");
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 2);
    if (j.elapsed_ms < 950)
        fail_msg("retried after %lld ms; Retry-After asked for 1 s", (long long)j.elapsed_ms);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void retries_500_then_succeeds(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, NULL);
    kiln_test_job_t j;
    run_job(c, "{\"model\":\"500-then-ok\",\"messages\":[{\"role\":\"user\",\"content\":\"y\"}]}",
            &j);
    kiln_test_expect_completed(&j);
    assert_string_equal(kiln_test_json_str(j.result, "text"), "Hello! You said: y");
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 2);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void timeout_fails_retryable(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, "{\"timeout_ms\": 300, \"max_retries\": 0}");
    kiln_test_job_t j;
    run_job(c, "{\"model\":\"slow\",\"prompt\":\"x\"}", &j);
    kiln_test_expect_failed(&j, true, "timed out");
    assert_true(j.elapsed_ms < 5000);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);

    /* The job's own timeout bounds every attempt and wait together. */
    c = connector_for(f->url, NULL);
    kiln_test_job_run(c, "ollama.2", "{\"model\":\"slow\",\"prompt\":\"x\"}", 400, 0, &j);
    kiln_test_expect_failed(&j, true, "timed out after 400 ms");
    assert_true(j.elapsed_ms < 5000);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void malformed_or_failing_streams_fail_the_job(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, NULL);
    kiln_test_job_t j;
    run_job(c, "{\"model\":\"malformed\",\"prompt\":\"x y\"}", &j);
    kiln_test_expect_failed(&j, false, "/api/generate: a streamed line is not a JSON object");
    kiln_test_job_clear(&j);
    run_job(c, "{\"model\":\"error-stream\",\"prompt\":\"x y\"}", &j);
    kiln_test_expect_failed(&j, true, "llama runner process has terminated");
    kiln_test_job_clear(&j);
    /* Neither was retried: a stream that delivered lines is never replayed. */
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 2);
    /* A line past the 1 MiB bound is cut off, not buffered without end. */
    run_job(c, "{\"model\":\"huge-line\",\"prompt\":\"x\"}", &j);
    kiln_test_expect_failed(&j, false, "a streamed line is longer than 1048576 bytes");
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void oversized_text_fails_not_retryable(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, "{\"max_response_bytes\": 1024}");
    /* 600 words: the reply's text passes 1024 bytes. */
    char payload[2048 + 64], prompt[1800 + 1] = "";
    for (int i = 0; i < 600; i++)
        strcat(prompt, "ww ");
    snprintf(payload, sizeof payload, "{\"model\":\"llama3\",\"prompt\":\"%s\"}", prompt);
    kiln_test_job_t j;
    run_job(c, payload, &j);
    kiln_test_expect_failed(&j, false, "max_response_bytes");
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void connection_refused_fails_retryable_without_showing_the_password(void **state)
{
    char url[128];
    snprintf(url, sizeof url, "http://kiln:s3cret-pass@127.0.0.1:%d", kiln_test_free_port());
    char log_path[320];
    snprintf(log_path, sizeof log_path, "%s/stderr-refused.log", tmp_root);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_DEBUG);
    int saved = kiln_test_capture_begin(log_path);
    kiln_connector_t *c = connector_for(url, "{\"max_retries\": 1}");
    kiln_test_job_t j;
    run_job(c, "{\"model\":\"llama3\",\"prompt\":\"x\"}", &j);
    kiln_err_t err = {0};
    int health = kiln_connector_health(c, &err);
    kiln_connector_free(c);
    kiln_test_capture_end(saved);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_INFO);

    kiln_test_expect_failed(&j, true, "127.0.0.1");
    assert_true(j.elapsed_ms < 5000);
    assert_true(health < 0);
    assert_non_null(strstr(err.msg, "/api/tags"));
    char *logs = kiln_test_slurp(log_path, CAPTURE_MAX);
    assert_non_null(strstr(logs, "retrying")); /* the capture saw the retry */
    if (strstr(logs, "s3cret-pass") || strstr(j.out.error, "s3cret-pass") ||
        strstr(err.msg, "s3cret-pass"))
        fail_msg("the URL's password is shown: %s / %s", j.out.error, err.msg);
    free(logs);
    kiln_test_job_clear(&j);
}

static bool fake_saw_disconnect(void *ctx)
{
    return kiln_test_fake_stat(ctx, "disconnects") >= 1;
}

static void cancel_mid_stream_stops_promptly_and_the_server_sees_it(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, NULL);
    kiln_test_job_t j;
    kiln_test_job_run(c, "ollama.7", "{\"model\":\"hang\",\"prompt\":\"a b c d e\"}", 0, 2, &j);
    assert_int_equal(j.out.status, KILN_OUTCOME_CANCELLED);
    int64_t reaction = j.finished_at_ms - j.cancelled_at_ms;
    if (reaction > 500)
        fail_msg("run() returned %lld ms after the cancel", (long long)reaction);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
    /* The fake notices the closed connection at its next write. */
    kiln_test_wait_until(fake_saw_disconnect, f, 5000);
    assert_int_equal(kiln_test_fake_stat(f, "disconnects"), 1);
}

static void health_reads_the_model_list(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, NULL);
    kiln_err_t err = {0};
    assert_int_equal(kiln_connector_health(c, &err), 0);
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 1);
    kiln_connector_free(c);

    /* base_url, which KILN_CONNECTOR_URLS sets, wins over url. */
    char options[200];
    snprintf(options, sizeof options, "{\"base_url\": \"%s\"}", f->url);
    c = connector_for("http://127.0.0.1:1", options);
    assert_int_equal(kiln_connector_health(c, &err), 0);
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 2);
    kiln_connector_free(c);
}

static void bad_payloads_fail_naming_the_field(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f->url, NULL);
    const struct {
        const char *payload, *needle;
    } bad[] = {
        {"[1]", "payload: expected a JSON object"},
        {"{\"model\":\"m\",\"endpoint\":\"embed\",\"prompt\":\"x\"}", "payload.endpoint"},
        {"{\"prompt\":\"x\"}", "payload.model"},
        {"{\"model\":7,\"prompt\":\"x\"}", "payload.model"},
        {"{\"model\":\"m\"}", "payload.prompt"},
        {"{\"model\":\"m\",\"messages\":[]}", "payload.messages"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", "payload.messages[0]"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"options\":[1]}", "payload.options"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"options\":{\"num_predict\":\"many\"}}",
         "payload.options.num_predict"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kiln_test_job_t j;
        run_job(c, bad[i].payload, &j);
        kiln_test_expect_failed(&j, false, bad[i].needle);
        kiln_test_job_clear(&j);
    }
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 0);
    kiln_connector_free(c);
}

static void bad_options_are_refused_naming_them(void **state)
{
    const struct {
        const char *options, *needle;
    } bad[] = {
        {"{\"url\": \"ftp://example.com\"}", "connectors.ollama.url"},
        {"{\"url\": \"http://user:hunter2@bad host\"}", "connectors.ollama.url"},
        {"{\"url\": 42}", "connectors.ollama.url"},
        {"{\"base_url\": \"gopher://h\"}", "connectors.ollama.base_url"},
        {"{\"max_retries\": 99}", "connectors.ollama.max_retries"},
        {"{\"timeout_ms\": \"soon\"}", "connectors.ollama.timeout_ms"},
        {"{\"pull_timeout_ms\": 0}", "connectors.ollama.pull_timeout_ms"},
        {"{\"pull_missing\": \"yes\"}", "connectors.ollama.pull_missing"},
        {"{\"expected_tokens\": 0}", "connectors.ollama.expected_tokens"},
        {"{\"model\": \"\"}", "connectors.ollama.model"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[KILN_ERR_MSG_MAX];
        kiln_test_expect_refused("ollama", "ollama", bad[i].options, bad[i].needle, msg,
                                 sizeof msg);
        if (strstr(msg, "hunter2"))
            fail_msg("options %s: the password is shown: %s", bad[i].options, msg);
    }
    /* No options at all: the local default URL. */
    json_t *options = json_object();
    kiln_connector_t *c = kiln_test_connector_new("ollama", "ollama", options);
    kiln_connector_free(c);
    json_decref(options);
}

int main(void)
{
    kiln_test_tmpdir(tmp_root, sizeof tmp_root);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(generate_streams_token_progress_and_returns_text_and_counts,
                                        fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(chat_returns_the_assistant_message, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(missing_model_is_pulled_with_progress_then_run, fake_start,
                                        fake_stop),
        cmocka_unit_test_setup_teardown(missing_model_fails_clearly_without_pull_or_when_unknown,
                                        fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(retries_429_honouring_retry_after, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(retries_500_then_succeeds, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(timeout_fails_retryable, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(malformed_or_failing_streams_fail_the_job, fake_start,
                                        fake_stop),
        cmocka_unit_test_setup_teardown(oversized_text_fails_not_retryable, fake_start, fake_stop),
        cmocka_unit_test(connection_refused_fails_retryable_without_showing_the_password),
        cmocka_unit_test_setup_teardown(cancel_mid_stream_stops_promptly_and_the_server_sees_it,
                                        fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(health_reads_the_model_list, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(bad_payloads_fail_naming_the_field, fake_start, fake_stop),
        cmocka_unit_test(bad_options_are_refused_naming_them),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

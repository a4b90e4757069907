/*
 * The openai connector and the HTTP layer under it, against fake_openai
 * (tests/fakes/fake_openai.c), a real HTTP server in a child process that
 * follows OpenAI's API shapes and injects faults chosen by the model name.
 * Each test starts its own fake, so request counts start at zero.
 */
#include "connectors/http.h"
#include "kiln/connector.h"
#include "kiln/log.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY         "sk-kiln-test-Zq8wX3vB7nM2pL5rT9yU"
#define KEY_ENV     "KILN_TEST_OPENAI_KEY"
#define CAPTURE_MAX (1024 * 1024)

static char tmp_root[256];
static int test_seq;

/* ---- the fake server --------------------------------------------------------- */

static int fake_start(void **state)
{
    static kiln_test_fake_t fake;
    char log[320], *args[] = {"--key", KEY, NULL};
    snprintf(log, sizeof log, "%s/fake-%02d.log", tmp_root, ++test_seq);
    kiln_test_fake_start(&fake, "fake_openai", args, log);
    *state = &fake;
    return 0;
}

static int fake_stop(void **state)
{
    kiln_test_fake_stop(*state);
    return 0;
}

/* ---- the connector ----------------------------------------------------------- */

/* An openai connector for the fake: base_url, the key's variable, fast
 * retries, overridden and extended by extra (JSON text, may be NULL). */
static kiln_connector_t *connector_for(const kiln_test_fake_t *f, const char *extra)
{
    json_t *options =
        json_pack("{s:s, s:s, s:i}", "base_url", f->url, "api_key_env", KEY_ENV, "max_retries", 2);
    return kiln_test_connector_extended("openai", "openai", options, extra);
}

static void run_job(kiln_connector_t *c, const char *payload, kiln_test_job_t *r)
{
    kiln_test_job_run(c, "openai.1", payload, 0, 0, r);
}

static const char *const chat_payload =
    "{\"model\":\"gpt-test\",\"messages\":[{\"role\":\"user\",\"content\":\"make it so\"}]}";

/* ---- tests ------------------------------------------------------------------- */

static void chat_streams_progress_and_returns_the_text(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    kiln_test_job_t r;
    run_job(c, chat_payload, &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "text"), "Hello! You said: make it so");
    assert_string_equal(kiln_test_json_str(r.result, "finish_reason"), "stop");
    assert_string_equal(kiln_test_json_str(r.result, "model"), "gpt-test");
    json_t *usage = json_object_get(r.result, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 6);

    /* One update per chunk (6 words), then 100 at the end; growing, and
     * below 100 until done. */
    int n = atomic_load(&r.progress_count);
    assert_int_equal(n, 7);
    for (int i = 1; i < n; i++)
        assert_true(r.percents[i] > r.percents[i - 1]);
    assert_true(r.percents[n - 2] <= 99.0);
    assert_true(r.percents[n - 1] == 100.0);
    assert_string_equal(kiln_test_job_last_message(&r), "6 tokens");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void chat_without_stream_returns_the_text(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, "{\"model\": \"gpt-default\"}");
    kiln_test_job_t r;
    /* The model comes from the option; a prompt stands for one user message. */
    run_job(c, "{\"endpoint\":\"chat\",\"prompt\":\"no stream\",\"stream\":false}", &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "text"), "Hello! You said: no stream");
    assert_string_equal(kiln_test_json_str(r.result, "finish_reason"), "stop");
    assert_string_equal(kiln_test_json_str(r.result, "model"), "gpt-default");
    assert_true(json_is_object(json_object_get(r.result, "usage")));
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 1);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void retries_429_honouring_retry_after(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    kiln_test_job_t r;
    run_job(c, "{\"model\":\"429-then-ok\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "text"), "Hello! You said: x");
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 2);
    /* Retry-After: 1 is longer than the first backoff (at most 250 ms). */
    if (r.elapsed_ms < 950)
        fail_msg("retried after %lld ms; Retry-After asked for 1 s", (long long)r.elapsed_ms);
    kiln_test_job_clear(&r);

    /* Retry-After as an HTTP date (whole seconds: 1-2 s from when it was sent). */
    run_job(c,
            "{\"model\":\"429-date-then-ok\",\"stream\":false,"
            "\"messages\":[{\"role\":\"user\",\"content\":\"y\"}]}",
            &r);
    kiln_test_expect_completed(&r);
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 4);
    if (r.elapsed_ms < 900)
        fail_msg("retried after %lld ms; Retry-After gave a date 2 s ahead",
                 (long long)r.elapsed_ms);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void retries_500_then_succeeds(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    kiln_test_job_t r;
    run_job(c,
            "{\"model\":\"500-then-ok\",\"stream\":false,"
            "\"messages\":[{\"role\":\"user\",\"content\":\"again\"}]}",
            &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "text"), "Hello! You said: again");
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 2);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void timeout_fails_retryable(void **state)
{
    kiln_test_fake_t *f = *state;
    const char *slow = "{\"model\":\"slow\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    /* The option's per-request timeout, with no retry left. */
    kiln_connector_t *c = connector_for(f, "{\"timeout_ms\": 300, \"max_retries\": 0}");
    kiln_test_job_t r;
    run_job(c, slow, &r);
    kiln_test_expect_failed(&r, true, "timed out");
    assert_true(r.elapsed_ms < 5000);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);

    /* The job's own timeout bounds every attempt and wait together. */
    c = connector_for(f, NULL);
    kiln_test_job_run(c, "openai.2", slow, 400, 0, &r);
    kiln_test_expect_failed(&r, true, "timed out after 400 ms");
    assert_true(r.elapsed_ms < 5000);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void malformed_response_fails_not_retryable(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    kiln_test_job_t r;
    run_job(c,
            "{\"model\":\"malformed\",\"stream\":false,"
            "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            &r);
    kiln_test_expect_failed(&r, false, "not a JSON object");
    kiln_test_job_clear(&r);
    run_job(c, "{\"model\":\"malformed\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            &r);
    kiln_test_expect_failed(&r, false, "stream event is not a JSON object");
    kiln_test_job_clear(&r);
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 2); /* neither was retried */
    kiln_connector_free(c);
}

static void connection_refused_fails_retryable(void **state)
{
    /* A port that was free a moment ago: nothing listens there. */
    kiln_test_fake_t nowhere = {.port = kiln_test_free_port()};
    snprintf(nowhere.url, sizeof nowhere.url, "http://127.0.0.1:%d", nowhere.port);
    kiln_connector_t *c = connector_for(&nowhere, "{\"max_retries\": 1}");
    kiln_test_job_t r;
    run_job(c, chat_payload, &r);
    kiln_test_expect_failed(&r, true, "127.0.0.1");
    assert_true(r.elapsed_ms < 5000);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void cancel_mid_stream_stops_promptly(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    kiln_test_job_t r;
    kiln_test_job_run(
        c, "openai.7",
        "{\"model\":\"hang-stream\",\"messages\":[{\"role\":\"user\",\"content\":\"a b "
        "c d e f\"}]}",
        0, 2, &r);
    assert_int_equal(r.out.status, KILN_OUTCOME_CANCELLED);
    int64_t reaction = r.finished_at_ms - r.cancelled_at_ms;
    if (reaction > 500)
        fail_msg("run() returned %lld ms after the cancel", (long long)reaction);
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 1);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void images_are_saved_under_outputs(void **state)
{
    kiln_test_fake_t *f = *state;
    char outputs[300], options[400];
    snprintf(outputs, sizeof outputs, "%s/outputs-%02d", tmp_root, test_seq);
    assert_int_equal(mkdir(outputs, 0755), 0);
    snprintf(options, sizeof options, "{\"outputs_dir\": \"%s\"}", outputs);
    kiln_connector_t *c = connector_for(f, options);

    kiln_test_job_t r;
    kiln_test_job_run(c, "openai.42",
                      "{\"endpoint\":\"images\",\"model\":\"gpt-image-1\",\"prompt\":\"a kiln\","
                      "\"parameters\":{\"n\":2}}",
                      0, 0, &r);
    kiln_test_expect_completed(&r);
    json_t *images = json_object_get(r.result, "images");
    assert_int_equal(json_array_size(images), 2);
    for (size_t i = 0; i < 2; i++) {
        char want[400];
        snprintf(want, sizeof want, "%s/openai.42/image-%zu.png", outputs, i);
        json_t *image = json_array_get(images, i);
        assert_string_equal(kiln_test_json_str(image, "path"), want);
        assert_string_equal(kiln_test_json_str(image, "revised_prompt"), "a kiln");
        char *bytes = kiln_test_slurp(want, 4096);
        assert_memory_equal(bytes, "\x89PNG\r\n\x1a\n", 8);
        free(bytes);
    }
    kiln_test_job_clear(&r);

    /* A model that answers with URLs: they are returned as they are. */
    run_job(c, "{\"endpoint\":\"images\",\"model\":\"dall-e-3\",\"prompt\":\"a kiln\"}", &r);
    kiln_test_expect_completed(&r);
    json_t *first = json_array_get(json_object_get(r.result, "images"), 0);
    assert_true(strncmp(kiln_test_json_str(first, "url"), "http://127.0.0.1:", 17) == 0);
    kiln_test_job_clear(&r);
    kiln_connector_free(c);

    /* Base64 images without an outputs_dir fail, naming the option. */
    c = connector_for(f, NULL);
    run_job(c, "{\"endpoint\":\"images\",\"model\":\"gpt-image-1\",\"prompt\":\"a kiln\"}", &r);
    kiln_test_expect_failed(&r, false, "connectors.openai.outputs_dir");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void embeddings_are_returned(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    kiln_test_job_t r;
    run_job(c,
            "{\"endpoint\":\"embeddings\",\"model\":\"text-embedding-3-small\","
            "\"input\":[\"a\",\"b\",\"c\"],\"parameters\":{\"dimensions\":3}}",
            &r);
    kiln_test_expect_completed(&r);
    json_t *vectors = json_object_get(r.result, "embeddings");
    assert_int_equal(json_array_size(vectors), 3);
    /* The fake sends them last first; they come back in input order. */
    for (size_t i = 0; i < 3; i++) {
        json_t *v = json_array_get(vectors, i);
        assert_int_equal(json_array_size(v), 3);
        assert_true(json_number_value(json_array_get(v, 0)) == (double)i);
    }
    json_t *usage = json_object_get(r.result, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "total_tokens")), 9);
    assert_string_equal(kiln_test_json_str(r.result, "model"), "text-embedding-3-small");
    kiln_test_job_clear(&r);
    kiln_connector_free(c);
}

static void bad_request_400_is_not_retried(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    kiln_test_job_t r;
    run_job(c, "{\"model\":\"400\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &r);
    kiln_test_expect_failed(&r, false, "HTTP 400: Invalid value for 'temperature'");
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 1);
    kiln_test_job_clear(&r);

    /* Payloads the connector can tell are wrong never reach the server. */
    static const struct {
        const char *payload, *needle;
    } bad[] = {
        {"[1]", "payload: expected a JSON object"},
        {"{\"endpoint\":\"audio\",\"model\":\"m\"}", "payload.endpoint"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "payload.model"},
        {"{\"model\":\"m\",\"messages\":[]}", "payload.messages"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stream\":\"yes\"}", "payload.stream"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"parameters\":[1]}", "payload.parameters"},
        {"{\"endpoint\":\"embeddings\",\"model\":\"m\"}", "payload.input"},
        {"{\"endpoint\":\"images\",\"model\":\"m\",\"prompt\":7}", "payload.prompt"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run_job(c, bad[i].payload, &r);
        kiln_test_expect_failed(&r, false, bad[i].needle);
        kiln_test_job_clear(&r);
    }
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 1);
    kiln_connector_free(c);
}

static void expect_no_key(const char *what, const char *text)
{
    if (text && strstr(text, KEY))
        fail_msg("the API key appears in %s: %s", what, text);
}

static void api_key_never_appears_in_logs_errors_or_results(void **state)
{
    kiln_test_fake_t *f = *state;
    char log_path[320], key_path[320];
    snprintf(log_path, sizeof log_path, "%s/stderr-%02d.log", tmp_root, test_seq);
    snprintf(key_path, sizeof key_path, "%s/key-%02d", tmp_root, test_seq);
    FILE *kf = fopen(key_path, "w");
    assert_non_null(kf);
    fprintf(kf, "  %s  \n# a comment line is ignored\n", KEY);
    fclose(kf);

    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_DEBUG);
    int saved = kiln_test_capture_begin(log_path);
    char options[400];
    snprintf(options, sizeof options, "{\"api_key_file\": \"%s\", \"api_key_env\": null}",
             key_path);
    kiln_connector_t *from_env = connector_for(f, NULL);
    kiln_connector_t *from_file = connector_for(f, options);
    kiln_test_job_t echo, echo_err, retried, unauthorized;
    /* A server that quotes the header back, in a reply and in an error. */
    run_job(from_file,
            "{\"model\":\"echo-key\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &echo);
    run_job(from_env,
            "{\"model\":\"echo-key-400\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            &echo_err);
    /* A retry, which logs the failure it retries. */
    run_job(from_env,
            "{\"model\":\"429-then-ok\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            &retried);
    kiln_connector_free(from_env);
    kiln_connector_free(from_file);
    /* A wrong key is refused; the message points at the key's options. */
    setenv("KILN_TEST_OPENAI_WRONG_KEY", "sk-wrong-key-but-also-secret", 1);
    kiln_connector_t *wrong = connector_for(f, "{\"api_key_env\": \"KILN_TEST_OPENAI_WRONG_KEY\"}");
    run_job(wrong, chat_payload, &unauthorized);
    kiln_connector_free(wrong);
    kiln_test_capture_end(saved);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_INFO);

    kiln_test_expect_completed(&echo);
    assert_string_equal(kiln_test_json_str(echo.result, "text"),
                        "Your header was Bearer [redacted]");
    kiln_test_expect_failed(&echo_err, false, "Bad request from Bearer [redacted]");
    kiln_test_expect_completed(&retried);
    kiln_test_expect_failed(&unauthorized, false, "HTTP 401");
    if (strstr(unauthorized.out.error, "sk-wrong-key-but-also-secret"))
        fail_msg("the wrong key appears in the error: %s", unauthorized.out.error);

    char *logs = kiln_test_slurp(log_path, CAPTURE_MAX);
    assert_non_null(strstr(logs, "HTTP 429")); /* the capture did see the retry's record */
    expect_no_key("the logs", logs);
    expect_no_key("a result", echo.out.result_json);
    expect_no_key("an error", echo_err.out.error);
    expect_no_key("a result", retried.out.result_json);
    free(logs);
    /* Every request but the deliberate one carried the right header. */
    assert_int_equal(kiln_test_fake_stat(f, "auth_ok"), 4);
    assert_int_equal(kiln_test_fake_stat(f, "auth_bad"), 1);
    kiln_test_job_clear(&echo);
    kiln_test_job_clear(&echo_err);
    kiln_test_job_clear(&retried);
    kiln_test_job_clear(&unauthorized);
}

static void bad_options_are_refused_naming_them(void **state)
{
    char key_path[300], empty_key[300];
    snprintf(key_path, sizeof key_path, "%s/no-such-key", tmp_root);
    snprintf(empty_key, sizeof empty_key, "%s/empty-key", tmp_root);
    FILE *ef = fopen(empty_key, "w");
    assert_non_null(ef);
    fclose(ef);
    unsetenv("OPENAI_API_KEY");
    unsetenv("KILN_TEST_UNSET_VAR");
    char missing_file[400], empty_file[400];
    snprintf(missing_file, sizeof missing_file, "{\"api_key_file\": \"%s\"}", key_path);
    snprintf(empty_file, sizeof empty_file, "{\"api_key_file\": \"%s\"}", empty_key);
    const struct {
        const char *options, *needle;
    } bad[] = {
        {"{\"base_url\": \"ftp://example.com\"}", "connectors.openai.base_url"},
        {"{\"base_url\": \"http://\"}", "connectors.openai.base_url"},
        {"{\"base_url\": 42}", "connectors.openai.base_url"},
        {"{\"base_url\": \"http://h\", \"max_retries\": -1}", "connectors.openai.max_retries"},
        {"{\"base_url\": \"http://h\", \"timeout_ms\": \"soon\"}", "connectors.openai.timeout_ms"},
        {"{\"base_url\": \"http://h\", \"model\": \"\"}", "connectors.openai.model"},
        {"{\"base_url\": \"http://h\", \"outputs_dir\": \"relative\"}",
         "connectors.openai.outputs_dir"},
        {"{\"base_url\": \"http://h\", \"outputs_dir\": \"/no/such/folder\"}",
         "connectors.openai.outputs_dir"},
        {"{\"base_url\": \"http://h\", \"api_key_env\": \"KILN_TEST_UNSET_VAR\"}",
         "connectors.openai.api_key_env"},
        {missing_file, "connectors.openai.api_key_file"},
        {empty_file, "connectors.openai.api_key_file"},
        {"{\"api_key_env\": \"" KEY_ENV "\", \"api_key_file\": \"/k\"}", "keep one"},
        /* OpenAI itself needs a key; none is set. */
        {"{}", "connectors.openai.api_key_env"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[KILN_ERR_MSG_MAX];
        kiln_test_expect_refused("openai", "openai", bad[i].options, bad[i].needle, msg,
                                 sizeof msg);
        expect_no_key("an init error", msg);
    }
    /* A local server needs no key: none set is fine there. */
    json_t *options = json_pack("{s:s}", "base_url", "http://127.0.0.1:1/v1");
    kiln_connector_config_t cfg = {.name = "local", .type = "openai", .options = options};
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_connector_new(&cfg, &c, &err), 0);
    kiln_connector_free(c);
    json_decref(options);
}

/* ---- main -------------------------------------------------------------------- */

int main(void)
{
    kiln_test_tmpdir(tmp_root, sizeof tmp_root);
    setenv(KEY_ENV, KEY, 1);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(chat_streams_progress_and_returns_the_text, fake_start,
                                        fake_stop),
        cmocka_unit_test_setup_teardown(chat_without_stream_returns_the_text, fake_start,
                                        fake_stop),
        cmocka_unit_test_setup_teardown(retries_429_honouring_retry_after, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(retries_500_then_succeeds, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(timeout_fails_retryable, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(malformed_response_fails_not_retryable, fake_start,
                                        fake_stop),
        cmocka_unit_test(connection_refused_fails_retryable),
        cmocka_unit_test_setup_teardown(cancel_mid_stream_stops_promptly, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(images_are_saved_under_outputs, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(embeddings_are_returned, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(bad_request_400_is_not_retried, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(api_key_never_appears_in_logs_errors_or_results, fake_start,
                                        fake_stop),
        cmocka_unit_test(bad_options_are_refused_naming_them),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (failed == 0) { /* on a failure the fakes' logs stay for a look */
        char *rm[] = {"/bin/rm", "-rf", tmp_root, NULL};
        kiln_test_run(rm, NULL, NULL, 0);
    }
    return failed;
}

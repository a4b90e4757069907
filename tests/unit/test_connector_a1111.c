/*
 * The a1111 connector against fake_a1111 (tests/fakes/fake_a1111.c), a
 * real HTTP server in a child process that follows the A1111 web UI's API:
 * a blocking txt2img/img2img, /progress polled while it runs, /interrupt.
 * Faults are chosen by the prompt. Each test starts its own fake, so
 * request counts start at zero.
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

#define USER_PASS   "kiln:Vq7-s3cret-Pw2"
#define CAPTURE_MAX (1024 * 1024)

static char tmp_root[256];
static char outputs[300];
static int test_seq;

static int fake_start(void **state)
{
    static kiln_test_fake_t fake;
    char log_path[320];
    snprintf(log_path, sizeof log_path, "%s/fake-%02d.log", tmp_root, ++test_seq);
    char *args[] = {"--auth", USER_PASS, NULL};
    kiln_test_fake_start(&fake, "fake_a1111", args, log_path);
    *state = &fake;
    return 0;
}

static int fake_stop(void **state)
{
    kiln_test_fake_stop(*state);
    return 0;
}

/* The fake's URL with the credentials it wants, as a user configures it. */
static void url_with_auth(const kiln_test_fake_t *f, const char *user_pass, char *url, size_t size)
{
    snprintf(url, size, "http://%s@127.0.0.1:%d", user_pass, f->port);
}

/* An a1111 connector for url writing to outputs, polling every 50 ms, with
 * fast retries, overridden and extended by extra (JSON text, may be NULL). */
static kiln_connector_t *connector_for(const char *url, const char *extra)
{
    json_t *options = json_pack("{s:s, s:s, s:i, s:i}", "url", url, "outputs_dir", outputs,
                                "poll_interval_ms", 50, "max_retries", 2);
    return kiln_test_connector_extended("a1111", "a1111", options, extra);
}

static kiln_connector_t *connector_for_fake(const kiln_test_fake_t *f, const char *extra)
{
    char url[128];
    url_with_auth(f, USER_PASS, url, sizeof url);
    return connector_for(url, extra);
}

static void run_job(kiln_connector_t *c, const char *id, const char *payload, kiln_test_job_t *j)
{
    kiln_test_job_run(c, id, payload, 0, 0, j);
}

/* Checks that path is a PNG file inside outputs/<job id>/. */
static void expect_png_under_outputs(const char *path, const char *job_id)
{
    char prefix[400];
    snprintf(prefix, sizeof prefix, "%s/%s/", outputs, job_id);
    if (strncmp(path, prefix, strlen(prefix)) != 0)
        fail_msg("%s is not under %s", path, prefix);
    char *bytes = kiln_test_slurp(path, 64);
    if (memcmp(bytes, "\x89PNG\r\n\x1a\n", 8) != 0)
        fail_msg("%s is not a PNG file", path);
    free(bytes);
    struct stat st;
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_equal(stat(tmp, &st), -1); /* renamed into place, nothing left over */
}

/* ---- tests ------------------------------------------------------------------- */

static void txt2img_reports_step_progress_and_saves_the_images(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for_fake(f, NULL);
    kiln_test_job_t j;
    run_job(c, "a1111.1",
            "{\"prompt\":\"a kiln at dusk\",\"steps\":20,\"width\":512,\"height\":512,"
            "\"batch_size\":2}",
            &j);
    kiln_test_expect_completed(&j);
    assert_string_equal(kiln_test_json_str(j.result, "mode"), "txt2img");
    json_t *images = json_object_get(j.result, "images");
    assert_int_equal(json_array_size(images), 2);
    for (size_t i = 0; i < 2; i++)
        expect_png_under_outputs(json_string_value(json_array_get(images, i)), "a1111.1");
    json_t *parameters = json_object_get(j.result, "parameters");
    assert_string_equal(kiln_test_json_str(parameters, "prompt"), "a kiln at dusk");
    assert_true(json_is_true(json_object_get(parameters, "send_images")));
    json_t *info = json_object_get(j.result, "info");
    assert_int_equal(json_integer_value(json_object_get(info, "seed")), 1234);
    assert_string_equal(kiln_test_json_str(info, "sampler_name"), "Euler a");

    /* 2 x 20 steps of 20 ms, polled every 50 ms: several step updates, then done. */
    int n = atomic_load(&j.progress_count);
    if (n < 3)
        fail_msg("only %d progress updates", n);
    assert_true(kiln_test_job_progress_mentions(&j, "/20"));
    assert_true(kiln_test_job_progress_mentions(&j, ", batch "));
    for (int i = 0; i + 1 < n; i++)
        assert_true(j.percents[i] > 0.0 && j.percents[i] <= 99.0);
    assert_true(j.percents[n - 1] == 100.0);
    assert_string_equal(j.messages[n - 1], "done");
    assert_true(kiln_test_fake_stat(f, "progress_polls") >= 2);
    assert_int_equal(kiln_test_fake_stat(f, "polls_without_skip"), 0);
    assert_int_equal(kiln_test_fake_stat(f, "generations"), 1);
    assert_int_equal(kiln_test_fake_stat(f, "auth_bad"), 0);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void img2img_is_chosen_by_init_images(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for_fake(f, NULL);
    kiln_test_job_t j;
    run_job(c, "a1111.2",
            "{\"prompt\":\"glaze it\",\"steps\":3,\"denoising_strength\":0.5,"
            "\"init_images\":[\"iVBORw0KGgo=\"]}",
            &j);
    kiln_test_expect_completed(&j);
    assert_string_equal(kiln_test_json_str(j.result, "mode"), "img2img");
    json_t *images = json_object_get(j.result, "images");
    assert_int_equal(json_array_size(images), 1);
    expect_png_under_outputs(json_string_value(json_array_get(images, 0)), "a1111.2");
    kiln_test_job_clear(&j);

    /* A hostile job id stays one folder inside outputs_dir. */
    run_job(c, "../../escape", "{\"prompt\":\"x\",\"steps\":1}", &j);
    kiln_test_expect_completed(&j);
    const char *path = json_string_value(json_array_get(json_object_get(j.result, "images"), 0));
    expect_png_under_outputs(path, "_._.._escape");
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void retries_429_and_500_then_succeeds(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for_fake(f, NULL);
    kiln_test_job_t j;
    run_job(c, "a1111.3", "{\"prompt\":\"429-then-ok\",\"steps\":2}", &j);
    kiln_test_expect_completed(&j);
    if (j.elapsed_ms < 950)
        fail_msg("retried after %lld ms; Retry-After asked for 1 s", (long long)j.elapsed_ms);
    kiln_test_job_clear(&j);
    run_job(c, "a1111.4", "{\"prompt\":\"500-then-ok\",\"steps\":2}", &j);
    kiln_test_expect_completed(&j);
    kiln_test_job_clear(&j);
    assert_int_equal(kiln_test_fake_stat(f, "generations"), 2);
    kiln_connector_free(c);
}

static void timeout_fails_retryable_and_interrupts_the_server(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for_fake(f, "{\"timeout_ms\": 300, \"max_retries\": 0}");
    kiln_test_job_t j;
    run_job(c, "a1111.5", "{\"prompt\":\"slow\"}", &j);
    kiln_test_expect_failed(&j, true, "timed out");
    assert_true(j.elapsed_ms < 5000);
    assert_int_equal(kiln_test_fake_stat(f, "interrupts"), 1);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);

    /* The job's own timeout. */
    c = connector_for_fake(f, NULL);
    kiln_test_job_run(c, "a1111.6", "{\"prompt\":\"slow\"}", 400, 0, &j);
    kiln_test_expect_failed(&j, true, "timed out after 400 ms");
    assert_int_equal(kiln_test_fake_stat(f, "interrupts"), 2);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void malformed_answers_fail_not_retryable(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for_fake(f, NULL);
    kiln_test_job_t j;
    run_job(c, "a1111.7", "{\"prompt\":\"malformed\"}", &j);
    kiln_test_expect_failed(&j, false, "/sdapi/v1/txt2img: the answer has no images array");
    kiln_test_job_clear(&j);
    run_job(c, "a1111.8", "{\"prompt\":\"bad-base64\",\"steps\":1}", &j);
    kiln_test_expect_failed(&j, false, "images[0] is not base64");
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
    /* An answer over max_response_bytes (16 images of ~90 bytes > 1 KiB). */
    c = connector_for_fake(f, "{\"max_response_bytes\": 1024}");
    run_job(c, "a1111.9", "{\"prompt\":\"many\",\"steps\":1,\"batch_size\":16}", &j);
    kiln_test_expect_failed(&j, false, "larger than 1024 bytes");
    kiln_test_job_clear(&j);
    assert_int_equal(kiln_test_fake_stat(f, "generations"), 2);
    kiln_connector_free(c);
}

static void connection_refused_fails_retryable(void **state)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", kiln_test_free_port());
    kiln_connector_t *c = connector_for(url, "{\"max_retries\": 1}");
    kiln_test_job_t j;
    run_job(c, "a1111.10", "{\"prompt\":\"x\"}", &j);
    kiln_test_expect_failed(&j, true, "127.0.0.1");
    assert_true(j.elapsed_ms < 5000);
    kiln_err_t err = {0};
    assert_true(kiln_connector_health(c, &err) < 0);
    assert_non_null(strstr(err.msg, "/sdapi/v1/options"));
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static bool interrupt_seen(void *ctx)
{
    return kiln_test_fake_stat(ctx, "interrupts") >= 1;
}

static void cancel_mid_job_interrupts_the_server_and_ends_cancelled(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for_fake(f, NULL);
    kiln_test_job_t j;
    kiln_test_job_run(c, "a1111.11", "{\"prompt\":\"a long one\",\"steps\":1000}", 0, 2, &j);
    assert_int_equal(j.out.status, KILN_OUTCOME_CANCELLED);
    int64_t reaction = j.finished_at_ms - j.cancelled_at_ms;
    if (reaction > 1000)
        fail_msg("run() returned %lld ms after the cancel", (long long)reaction);
    assert_true(kiln_test_wait_until(interrupt_seen, f, 5000));
    assert_int_equal(kiln_test_fake_stat(f, "interrupts"), 1);
    kiln_test_job_clear(&j);
    kiln_connector_free(c);
}

static void credentials_in_the_url_never_appear_in_logs_errors_or_results(void **state)
{
    kiln_test_fake_t *f = *state;
    char log_path[320], url[128];
    snprintf(log_path, sizeof log_path, "%s/stderr-%02d.log", tmp_root, test_seq);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_DEBUG);
    int saved = kiln_test_capture_begin(log_path);
    kiln_connector_t *c = connector_for_fake(f, NULL);
    kiln_test_job_t ok, retried, refused;
    run_job(c, "a1111.12", "{\"prompt\":\"fine\",\"steps\":2}", &ok);
    run_job(c, "a1111.13", "{\"prompt\":\"429-then-ok again\",\"steps\":2}", &retried);
    kiln_connector_free(c);
    url_with_auth(f, "kiln:wrong-Pw9", url, sizeof url);
    c = connector_for(url, NULL);
    run_job(c, "a1111.14", "{\"prompt\":\"x\"}", &refused);
    kiln_err_t err = {0};
    int health = kiln_connector_health(c, &err);
    kiln_connector_free(c);
    kiln_test_capture_end(saved);
    kiln_log_configure(KILN_LOG_JSON, KILN_LOG_INFO);

    kiln_test_expect_completed(&ok);
    kiln_test_expect_completed(&retried);
    kiln_test_expect_failed(&refused, false, "HTTP 401");
    assert_true(health < 0);
    char *logs = kiln_test_slurp(log_path, CAPTURE_MAX);
    assert_non_null(strstr(logs, "HTTP 429")); /* the capture saw the retry's record */
    const char *texts[] = {logs, ok.out.result_json, retried.out.result_json, refused.out.error,
                           err.msg};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (strstr(texts[i], "s3cret") || strstr(texts[i], "wrong-Pw9"))
            fail_msg("a password appears in %s", texts[i]);
    free(logs);
    assert_true(kiln_test_fake_stat(f, "auth_bad") >= 2); /* the job and the health check */
    kiln_test_job_clear(&ok);
    kiln_test_job_clear(&retried);
    kiln_test_job_clear(&refused);
}

static void health_reads_the_options(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for_fake(f, NULL);
    kiln_err_t err = {0};
    if (kiln_connector_health(c, &err) != 0)
        fail_msg("health: %s", err.msg);
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 1);
    kiln_connector_free(c);
}

static void bad_payloads_fail_naming_the_field(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for_fake(f, "{\"max_images\": 8}");
    const struct {
        const char *payload, *needle;
    } bad[] = {
        {"\"a string\"", "payload: expected a JSON object"},
        {"{\"mode\":\"upscale\"}", "payload.mode"},
        {"{\"prompt\":42}", "payload.prompt"},
        {"{\"prompt\":\"x\",\"steps\":0}", "payload.steps"},
        {"{\"prompt\":\"x\",\"steps\":1.5}", "payload.steps"},
        {"{\"prompt\":\"x\",\"width\":100000}", "payload.width"},
        {"{\"prompt\":\"x\",\"batch_size\":4,\"n_iter\":4}", "max_images"},
        {"{\"prompt\":\"x\",\"batch_size\":9}", "payload.batch_size"},
        {"{\"mode\":\"txt2img\",\"init_images\":[\"aGk=\"]}", "payload.init_images"},
        {"{\"mode\":\"img2img\",\"prompt\":\"x\"}", "payload.init_images"},
        {"{\"init_images\":[1]}", "payload.init_images"},
        {"{\"init_images\":[\"aGk=\"],\"denoising_strength\":2}", "payload.denoising_strength"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kiln_test_job_t j;
        run_job(c, "a1111.bad", bad[i].payload, &j);
        kiln_test_expect_failed(&j, false, bad[i].needle);
        kiln_test_job_clear(&j);
    }
    assert_int_equal(kiln_test_fake_stat(f, "requests"), 0);
    kiln_connector_free(c);
}

static void bad_options_are_refused_naming_them(void **state)
{
    char not_a_dir[320];
    snprintf(not_a_dir, sizeof not_a_dir, "%s/file", tmp_root);
    FILE *fp = fopen(not_a_dir, "w");
    assert_non_null(fp);
    fclose(fp);
    char file_option[400], under_file[400];
    snprintf(file_option, sizeof file_option, "{\"outputs_dir\": \"%s\"}", not_a_dir);
    snprintf(under_file, sizeof under_file, "{\"outputs_dir\": \"%s/sub\"}", not_a_dir);
    const struct {
        const char *options, *needle;
    } bad[] = {
        {"{\"outputs_dir\": 7}", "connectors.a1111.outputs_dir"},
        {file_option, "connectors.a1111.outputs_dir"},
        {under_file, "connectors.a1111.outputs_dir"},
        {"{\"url\": \"http://kiln:hunter2@bad host\"}", "connectors.a1111.url"},
        {"{\"url\": \"file:///etc/passwd\"}", "connectors.a1111.url"},
        {"{\"poll_interval_ms\": 10}", "connectors.a1111.poll_interval_ms"},
        {"{\"poll_timeout_ms\": \"fast\"}", "connectors.a1111.poll_timeout_ms"},
        {"{\"max_images\": 0}", "connectors.a1111.max_images"},
        {"{\"max_retries\": -1}", "connectors.a1111.max_retries"},
        {"{\"timeout_ms\": 0}", "connectors.a1111.timeout_ms"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *options =
            json_pack("{s:s, s:s}", "url", "http://127.0.0.1:7860", "outputs_dir", outputs);
        json_t *more = json_loads(bad[i].options, 0, NULL);
        assert_non_null(more);
        json_object_update(options, more);
        json_decref(more);
        char *text = json_dumps(options, JSON_COMPACT), msg[KILN_ERR_MSG_MAX];
        assert_non_null(text);
        json_decref(options);
        kiln_test_expect_refused("a1111", "a1111", text, bad[i].needle, msg, sizeof msg);
        free(text);
        if (strstr(msg, "hunter2"))
            fail_msg("options %s: the password is shown: %s", bad[i].options, msg);
    }
    /* A folder that is not there yet is made, parents included. */
    char fresh[400], options_text[500];
    snprintf(fresh, sizeof fresh, "%s/made/by/init", tmp_root);
    snprintf(options_text, sizeof options_text, "{\"outputs_dir\": \"%s\"}", fresh);
    json_t *options = json_loads(options_text, 0, NULL);
    kiln_connector_free(kiln_test_connector_new("a1111", "a1111", options));
    json_decref(options);
    struct stat st;
    assert_int_equal(stat(fresh, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
}

int main(void)
{
    kiln_test_tmpdir(tmp_root, sizeof tmp_root);
    snprintf(outputs, sizeof outputs, "%s/outputs", tmp_root);
    mkdir(outputs, 0755);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(txt2img_reports_step_progress_and_saves_the_images,
                                        fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(img2img_is_chosen_by_init_images, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(retries_429_and_500_then_succeeds, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(timeout_fails_retryable_and_interrupts_the_server,
                                        fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(malformed_answers_fail_not_retryable, fake_start,
                                        fake_stop),
        cmocka_unit_test(connection_refused_fails_retryable),
        cmocka_unit_test_setup_teardown(cancel_mid_job_interrupts_the_server_and_ends_cancelled,
                                        fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(
            credentials_in_the_url_never_appear_in_logs_errors_or_results, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(health_reads_the_options, fake_start, fake_stop),
        cmocka_unit_test_setup_teardown(bad_payloads_fail_naming_the_field, fake_start, fake_stop),
        cmocka_unit_test(bad_options_are_refused_naming_them),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * The playwright connector against the real service: node running
 * services/playwright/server.mjs with Debian's chromium, pointed at pages
 * served on loopback by tests/helpers/pw_pages.c. One service runs for the
 * whole group; tests that read its counters compare before and after.
 * Without node, chromium or playwright-core every test is skipped, saying
 * what is missing (`make test` installs them).
 */
#include "connectors/http.h"
#include "kiln/connector.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"
#include "pw_service.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static kiln_test_pw_t pw;
static char tmp_root[256];
static char outputs[320];
static bool started;

static int group_setup(void **state)
{
    (void)state;
    kiln_test_tmpdir(tmp_root, sizeof tmp_root);
    snprintf(outputs, sizeof outputs, "%s/outputs", tmp_root);
    if (mkdir(outputs, 0755) != 0)
        return -1;
    if (kiln_test_pw_missing())
        return 0;
    kiln_test_pw_start(&pw, tmp_root);
    started = true;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (started)
        kiln_test_pw_stop(&pw);
    char *rm[] = {"/bin/rm", "-rf", tmp_root, NULL};
    kiln_test_run(rm, NULL, NULL, 0);
    return 0;
}

#define NEEDS_BROWSER()                                                                            \
    do {                                                                                           \
        if (!started) {                                                                            \
            print_message("skipped: %s\n", kiln_test_pw_missing());                                \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* A playwright connector for base_url, its options extended by extra (JSON). */
static kiln_connector_t *connector_for(const char *base_url, const char *extra)
{
    json_t *options = json_pack("{s:s, s:s, s:i}", "base_url", base_url, "outputs_dir", outputs,
                                "max_retries", 1);
    return kiln_test_connector_extended("playwright", "browser", options, extra);
}

typedef struct run {
    kiln_job_outcome_t out;
    json_t *result;
    pthread_mutex_t lock;
    int progress_count;
    double last_percent;
    char messages[2048]; /* every progress message, one per line */
    atomic_int cancel;
    int cancel_fd;
    const char *cancel_when; /* cancel once a message holds this */
} run_t;

static void record_progress(void *ctx, double percent, const char *message)
{
    run_t *r = ctx;
    pthread_mutex_lock(&r->lock);
    r->progress_count++;
    r->last_percent = percent;
    size_t used = strlen(r->messages);
    snprintf(r->messages + used, sizeof r->messages - used, "%s\n", message ? message : "");
    bool cancel = r->cancel_when && message && strstr(message, r->cancel_when);
    pthread_mutex_unlock(&r->lock);
    if (cancel && !atomic_exchange(&r->cancel, 1)) {
        uint64_t one = 1;
        ssize_t n = write(r->cancel_fd, &one, sizeof one);
        (void)n;
    }
}

/* Runs one job; in payload (JSON text) each "$PAGES" stands for the pages' URL. */
static void run_job(kiln_connector_t *c, const char *id, const char *payload_text, run_t *r)
{
    char payload[8192] = "";
    for (const char *p = payload_text; *p;) {
        const char *at = strstr(p, "$PAGES");
        size_t len = at ? (size_t)(at - p) : strlen(p);
        size_t used = strlen(payload);
        snprintf(payload + used, sizeof payload - used, "%.*s%s", (int)len, p,
                 at ? pw.pages_url : "");
        p += len + (at ? strlen("$PAGES") : 0);
    }
    pthread_mutex_init(&r->lock, NULL);
    r->cancel_fd = eventfd(0, EFD_CLOEXEC);
    kiln_job_context_t job = {
        .job_id = id,
        .service = "browser",
        .payload_json = payload,
        .attempt = 1,
        .progress = record_progress,
        .progress_ctx = r,
        .cancel = &r->cancel,
        .cancel_fd = r->cancel_fd,
    };
    assert_int_equal(kiln_connector_run(c, &job, &r->out), 0);
    if (r->out.result_json)
        r->result = json_loads(r->out.result_json, 0, NULL);
}

static void run_clear(run_t *r)
{
    json_decref(r->result);
    kiln_job_outcome_clear(&r->out);
    close(r->cancel_fd);
    pthread_mutex_destroy(&r->lock);
}

static void expect_completed(const run_t *r)
{
    if (r->out.status != KILN_OUTCOME_COMPLETED || !r->result)
        fail_msg("expected completed, got status %d: %s", (int)r->out.status,
                 r->out.error ? r->out.error : "(no error)");
}

static void expect_failed(const run_t *r, bool retryable, const char *needle)
{
    if (r->out.status != KILN_OUTCOME_FAILED)
        fail_msg("expected failed, got status %d (result %s)", (int)r->out.status,
                 r->out.result_json ? r->out.result_json : "null");
    if (!strstr(r->out.error, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", r->out.error, needle);
    if (r->out.retryable != retryable)
        fail_msg("error \"%s\": expected retryable=%d", r->out.error, (int)retryable);
}

/* The first n bytes of the file at path into buf; returns the file's size. */
static long read_head(const char *path, unsigned char *buf, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    size_t got = fread(buf, 1, n, f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    assert_int_equal(got, n);
    return size;
}

static const char *result_str(const run_t *r, const char *key)
{
    const char *s = json_string_value(json_object_get(r->result, key));
    if (!s)
        fail_msg("result has no string %s: %s", key, r->out.result_json);
    return s;
}

/* ---- tests ------------------------------------------------------------------- */

static void screenshot_is_a_png_saved_in_outputs(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, NULL);
    run_t r = {0};
    run_job(c, "browser.1",
            "{\"url\": \"$PAGES/form.html\", \"viewport\": {\"width\": 640, "
            "\"height\": 480}}",
            &r);
    expect_completed(&r);
    char want[512];
    snprintf(want, sizeof want, "%s/browser.1.png", outputs);
    assert_string_equal(result_str(&r, "path"), want);
    assert_string_equal(result_str(&r, "mime"), "image/png");
    assert_string_equal(result_str(&r, "title"), "kiln form");
    unsigned char head[24];
    long size = read_head(want, head, sizeof head);
    assert_memory_equal(head, "\x89PNG\r\n\x1a\n", 8);
    /* The IHDR chunk holds the viewport's size. */
    assert_int_equal((head[16] << 24) | (head[17] << 16) | (head[18] << 8) | head[19], 640);
    assert_int_equal((head[20] << 24) | (head[21] << 16) | (head[22] << 8) | head[23], 480);
    assert_int_equal(size, json_integer_value(json_object_get(r.result, "bytes")));
    assert_int_equal(strlen(result_str(&r, "sha256")), 64);
    /* Progress rose to 100 and named the steps; no temporary file is left. */
    assert_true(r.last_percent == 100.0);
    assert_non_null(strstr(r.messages, "taking the screenshot"));
    snprintf(want, sizeof want, "%s/.browser.1.tmp", outputs);
    assert_int_equal(access(want, F_OK), -1);
    run_clear(&r);
    kiln_connector_free(c);
}

static void pdf_starts_with_the_pdf_magic(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, NULL);
    run_t r = {0};
    run_job(c, "browser.2",
            "{\"url\": \"$PAGES/form.html\", \"action\": \"pdf\", \"paper\": \"A4\"}", &r);
    expect_completed(&r);
    assert_string_equal(result_str(&r, "mime"), "application/pdf");
    unsigned char head[5];
    long size = read_head(result_str(&r, "path"), head, sizeof head);
    assert_memory_equal(head, "%PDF-", 5);
    assert_true(size > 500);
    assert_non_null(strstr(result_str(&r, "path"), "/browser.2.pdf"));
    run_clear(&r);
    kiln_connector_free(c);
}

static void fill_and_click_steps_change_the_page_before_the_screenshot(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, NULL);
    run_t before = {0}, after = {0};
    run_job(c, "browser.3", "{\"url\": \"$PAGES/form.html\"}", &before);
    expect_completed(&before);
    /* The wait_for step only passes once the click rewrote the heading. */
    run_job(c, "browser.4",
            "{\"url\": \"$PAGES/form.html\", \"steps\": ["
            "{\"fill\": \"#name\", \"value\": \"Ada\"}, {\"click\": \"#go\"},"
            "{\"wait_for\": \"h1.greeted:has-text('Hello, Ada!')\", \"timeout_ms\": 5000}]}",
            &after);
    expect_completed(&after);
    assert_string_not_equal(result_str(&before, "sha256"), result_str(&after, "sha256"));
    assert_non_null(strstr(after.messages, "step 1/3: fill #name"));
    assert_non_null(strstr(after.messages, "step 2/3: click #go"));
    run_clear(&before);
    run_clear(&after);
    kiln_connector_free(c);
}

static void non_http_url_is_refused_naming_the_field(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, NULL);
    long started_before = kiln_test_pw_health(&pw, "counters.started");
    const char *refused[] = {
        "{\"url\": \"file:///etc/passwd\"}", "{\"url\": \"chrome://version\"}",
        "{\"url\": \"data:text/html,<h1>x</h1>\"}",
        "{\"url\": \"$PAGES/form.html\", \"steps\": [{\"goto\": \"file:///\"}]}"};
    const char *field[] = {"url: expected an http", "url: expected an http",
                           "url: expected an http", "steps[0].goto: expected an http"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        run_t r = {0};
        run_job(c, "browser.5", refused[i], &r);
        expect_failed(&r, false, field[i]);
        assert_non_null(strstr(r.out.error, "HTTP 400"));
        run_clear(&r);
    }
    /* Refused before a page was opened. */
    assert_int_equal(kiln_test_pw_health(&pw, "counters.started"), started_before);
    kiln_connector_free(c);
}

static void http_error_pages_are_reported_with_their_status(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, NULL);
    run_t r = {0};
    run_job(c, "browser.6", "{\"url\": \"$PAGES/missing\"}", &r);
    expect_failed(&r, false, "answered HTTP 404");
    run_clear(&r);
    /* A server error may pass: worth a retry. */
    run_t broken = {0};
    run_job(c, "browser.7", "{\"url\": \"$PAGES/broken\"}", &broken);
    expect_failed(&broken, true, "answered HTTP 500");
    run_clear(&broken);
    kiln_connector_free(c);
}

static void missing_selector_times_out_naming_the_step(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, NULL);
    run_t r = {0};
    run_job(c, "browser.8",
            "{\"url\": \"$PAGES/form.html\", \"steps\": [{\"fill\": \"#name\", \"value\": \"x\"},"
            "{\"click\": \"#absent\", \"timeout_ms\": 300}]}",
            &r);
    expect_failed(&r, false, "selector_timeout: steps[1].click: no element matched \"#absent\"");
    run_clear(&r);
    kiln_connector_free(c);
}

static bool page_closed_after_cancel(void *ctx)
{
    const long *cancelled_before = ctx;
    return kiln_test_pw_health(&pw, "counters.cancelled") == *cancelled_before + 1 &&
           kiln_test_pw_health(&pw, "pages_open") == 0;
}

static void cancel_mid_job_ends_cancelled_and_the_service_closes_the_page(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, NULL);
    long cancelled_before = kiln_test_pw_health(&pw, "counters.cancelled");
    run_t r = {.cancel_when = "step 1/1: wait_for #never"};
    int64_t start = kiln_test_now_ms();
    run_job(c, "browser.9",
            "{\"url\": \"$PAGES/form.html\", \"timeout_ms\": 120000, \"steps\": [{\"wait_for\": "
            "\"#never\"}]}",
            &r);
    assert_int_equal(r.out.status, KILN_OUTCOME_CANCELLED);
    assert_true(kiln_test_now_ms() - start < 30000);
    assert_true(kiln_test_wait_until(page_closed_after_cancel, &cancelled_before, 10000));
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s/.browser.9.tmp", outputs);
    assert_int_equal(access(tmp, F_OK), -1);
    run_clear(&r);
    kiln_connector_free(c);
}

static void artefact_over_max_bytes_fails_naming_the_limit(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, "{\"max_bytes\": 1000}");
    run_t r = {0};
    run_job(c, "browser.10", "{\"url\": \"$PAGES/form.html\"}", &r);
    expect_failed(&r, false, "max_bytes");
    run_clear(&r);
    kiln_connector_free(c);
}

static void hostile_payloads_are_refused_naming_the_field(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, NULL);
    char steps[8192] = "{\"url\": \"$PAGES/form.html\", \"steps\": [";
    for (int i = 0; i < 65; i++)
        strcat(steps, i ? ",{\"wait_ms\": 1}" : "{\"wait_ms\": 1}");
    strcat(steps, "]}");
    const char *payloads[] = {
        "[1, 2]",
        "{\"url\": \"$PAGES/form.html\", \"script\": \"alert(1)\"}",
        "{\"url\": 42}",
        steps,
        "{\"url\": \"$PAGES/form.html\", \"steps\": [{\"click\": \"#go\", \"fill\": \"#name\"}]}",
        "{\"url\": \"$PAGES/form.html\", \"viewport\": {\"width\": 100000, \"height\": 10}}",
        "{\"url\": \"$PAGES/form.html\", \"action\": \"video\"}",
        "{\"url\": \"$PAGES/form.html\", \"steps\": [{\"wait_ms\": 99999999}]}",
    };
    const char *needles[] = {
        "payload: expected a JSON object",         "payload.script: unknown field",
        "payload.url: expected an http",           "steps: expected an array of at most 64 steps",
        "steps[0]: expected exactly one of",       "viewport.width: expected an integer 1-8192",
        "action: expected one of screenshot, pdf", "steps[0].wait_ms: expected an integer 0-60000"};
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        run_t r = {0};
        run_job(c, "browser.11", payloads[i], &r);
        expect_failed(&r, false, needles[i]);
        run_clear(&r);
    }
    kiln_connector_free(c);
}

static void oversized_request_body_is_refused_with_413(void **state)
{
    NEEDS_BROWSER();
    size_t size = 2 * 1024 * 1024;
    char *body = malloc(size + 16);
    assert_non_null(body);
    strcpy(body, "{\"url\": \"");
    memset(body + strlen(body), 'a', size);
    strcpy(body + size, "\"}");
    kiln_http_client_options_t opts = {
        .base_url = pw.service_url, .name = "big", .timeout_ms = 10000};
    kiln_http_client_t *client = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_http_client_new(&opts, &client, &err), 0);
    kiln_http_call_t call = {.method = "POST", .path = "/jobs", .body_json = body, .cancel_fd = -1};
    kiln_http_result_t res = {0};
    assert_true(kiln_http_call(client, &call, &res, &err) < 0);
    assert_int_equal(res.status, 413);
    assert_non_null(strstr(err.msg, "body: expected at most 1048576 bytes"));
    kiln_http_result_clear(&res);
    kiln_http_client_free(client);
    free(body);
}

/* A loopback port nothing listens on: it was free a moment ago. */
static int closed_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    assert_int_equal(bind(s, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&addr, &len), 0);
    close(s);
    return ntohs(addr.sin_port);
}

static void service_down_is_a_retryable_failure_and_unhealthy(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", closed_port());
    kiln_connector_t *c = connector_for(url, "{\"max_retries\": 0}");
    run_t r = {0};
    run_job(c, "browser.12", "{\"url\": \"http://127.0.0.1:9/\"}", &r);
    expect_failed(&r, true, "the playwright service");
    run_clear(&r);
    kiln_err_t err = {0};
    assert_true(kiln_connector_health(c, &err) < 0);
    assert_non_null(strstr(err.msg, "/health"));
    kiln_connector_free(c);
}

typedef struct background_job {
    kiln_connector_t *connector;
    const char *payload;
    run_t run;
    pthread_t thread;
} background_job_t;

static void *background_main(void *ctx)
{
    background_job_t *b = ctx;
    run_job(b->connector, "browser.13", b->payload, &b->run);
    return NULL;
}

static bool one_page_open(void *ctx)
{
    return kiln_test_pw_health(ctx, "pages_open") == 1;
}

static void sigterm_ends_running_jobs_retryably_and_exits_zero(void **state)
{
    NEEDS_BROWSER();
    /* A service of its own, as this one goes away. */
    char dir[256];
    kiln_test_tmpdir(dir, sizeof dir);
    kiln_test_pw_t own;
    kiln_test_pw_start(&own, dir);
    background_job_t b = {.connector = connector_for(own.service_url, "{\"max_retries\": 0}"),
                          .payload = "{\"url\": \"$PAGES/form.html\", \"steps\": "
                                     "[{\"wait_for\": \"#never\"}]}"};
    assert_int_equal(pthread_create(&b.thread, NULL, background_main, &b), 0);
    assert_true(kiln_test_wait_until(one_page_open, &own, 30000));
    kill(own.service_pid, SIGTERM);
    int status = kiln_test_wait_exit(own.service_pid, 15000);
    pthread_join(b.thread, NULL);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        kiln_test_dump_file("playwright service log", own.service_log);
        fail_msg("the service did not exit 0 on SIGTERM (wait status %d)", status);
    }
    own.service_pid = 0;
    expect_failed(&b.run, true, "shutdown: the playwright service is shutting down");
    run_clear(&b.run);
    kiln_connector_free(b.connector);
    kiln_test_pw_stop(&own);
    char *rm[] = {"/bin/rm", "-rf", dir, NULL};
    kiln_test_run(rm, NULL, NULL, 0);
}

/* The pid of the service's first child, its chromium; 0 when none. */
static pid_t chromium_pid(pid_t service)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)service, (int)service);
    FILE *fp = fopen(path, "r");
    int pid = 0;
    if (fp) {
        if (fscanf(fp, "%d", &pid) != 1)
            pid = 0;
        fclose(fp);
    }
    return (pid_t)pid;
}

static void a_browser_crash_fails_the_job_retryably_and_the_next_job_relaunches_it(void **state)
{
    NEEDS_BROWSER();
    char dir[256];
    kiln_test_tmpdir(dir, sizeof dir);
    kiln_test_pw_t own;
    kiln_test_pw_start(&own, dir);
    background_job_t b = {.connector = connector_for(own.service_url, "{\"max_retries\": 0}"),
                          .payload = "{\"url\": \"$PAGES/form.html\", \"steps\": "
                                     "[{\"wait_for\": \"#never\"}]}"};
    assert_int_equal(pthread_create(&b.thread, NULL, background_main, &b), 0);
    assert_true(kiln_test_wait_until(one_page_open, &own, 30000));
    pid_t chromium = chromium_pid(own.service_pid);
    assert_true(chromium > 0);
    assert_int_equal(kill(chromium, SIGKILL), 0);
    pthread_join(b.thread, NULL);
    expect_failed(&b.run, true, "browser: chromium went away during the job");
    run_clear(&b.run);
    run_t again = {0};
    run_job(b.connector, "browser.14", "{\"url\": \"$PAGES/form.html\"}", &again);
    expect_completed(&again);
    run_clear(&again);
    kiln_connector_free(b.connector);
    kiln_test_pw_stop(&own);
    char *rm[] = {"/bin/rm", "-rf", dir, NULL};
    kiln_test_run(rm, NULL, NULL, 0);
}

static void health_is_ok_while_the_browser_runs(void **state)
{
    NEEDS_BROWSER();
    kiln_connector_t *c = connector_for(pw.service_url, NULL);
    kiln_err_t err = {0};
    if (kiln_connector_health(c, &err) != 0)
        fail_msg("health: %s", err.msg);
    kiln_connector_free(c);
}

static void bad_options_are_refused_naming_them(void **state)
{
    (void)state;
    const char *cases[][2] = {
        {"{\"timeout_ms\": \"soon\"}", "connectors.browser.timeout_ms: expected an integer"},
        {"{\"max_bytes\": 0}", "connectors.browser.max_bytes: expected an integer 1-"},
        {"{\"max_retries\": 99}", "connectors.browser.max_retries: expected an integer 0-20"},
        {"{\"base_url\": \"ftp://example.com\"}", "connectors.browser.base_url"},
        {"{\"outputs_dir\": \"/proc/version\"}", "connectors.browser.outputs_dir"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *options = json_loads(cases[i][0], 0, NULL);
        kiln_connector_config_t cfg = {.name = "browser", .type = "playwright", .options = options};
        kiln_connector_t *c = NULL;
        kiln_err_t err = {0};
        assert_int_equal(kiln_connector_new(&cfg, &c, &err), KILN_EINVAL);
        if (!strstr(err.msg, cases[i][1]))
            fail_msg("\"%s\" does not mention \"%s\"", err.msg, cases[i][1]);
        json_decref(options);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(screenshot_is_a_png_saved_in_outputs),
        cmocka_unit_test(pdf_starts_with_the_pdf_magic),
        cmocka_unit_test(fill_and_click_steps_change_the_page_before_the_screenshot),
        cmocka_unit_test(non_http_url_is_refused_naming_the_field),
        cmocka_unit_test(http_error_pages_are_reported_with_their_status),
        cmocka_unit_test(missing_selector_times_out_naming_the_step),
        cmocka_unit_test(cancel_mid_job_ends_cancelled_and_the_service_closes_the_page),
        cmocka_unit_test(artefact_over_max_bytes_fails_naming_the_limit),
        cmocka_unit_test(hostile_payloads_are_refused_naming_the_field),
        cmocka_unit_test(oversized_request_body_is_refused_with_413),
        cmocka_unit_test(service_down_is_a_retryable_failure_and_unhealthy),
        cmocka_unit_test(sigterm_ends_running_jobs_retryably_and_exits_zero),
        cmocka_unit_test(a_browser_crash_fails_the_job_retryably_and_the_next_job_relaunches_it),
        cmocka_unit_test(health_is_ok_while_the_browser_runs),
        cmocka_unit_test(bad_options_are_refused_naming_them),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

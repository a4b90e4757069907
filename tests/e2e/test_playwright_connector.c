/*
 * End to end: a real `kiln worker` serving a playwright connector (in
 * kiln.yaml) against a real redis-server, the real browser-automation
 * service (node + Debian's chromium) and pages served on loopback. The test
 * submits jobs through the broker's API and waits for their final state;
 * the logs are printed when a test fails. The last test lets `kiln machine
 * run` start the service itself, as WORKER_CONNECTORS=playwright does. Without node, chromium or
 * playwright-core the tests are skipped, saying what is missing.
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kiln/broker.h"
#include "kiln_test.h"
#include "pw_service.h"

typedef struct fixture {
    kiln_test_redis_t redis;
    kiln_test_pw_t pw;
    char dir[256];
    char config[320], log_path[320], outputs[320];
    kiln_broker_options_t opts;
    kiln_broker_t *broker;
    pid_t worker; /* or the agent */
    bool passed;  /* set by the test's last line; otherwise teardown dumps the logs */
} fixture_t;

static void write_config(const fixture_t *f)
{
    FILE *fp = fopen(f->config, "w");
    assert_non_null(fp);
    fprintf(fp,
            "connectors:\n"
            "  browser:\n"
            "    type: playwright\n"
            "    base_url: %s\n"
            "    outputs_dir: %s\n"
            "    timeout_ms: 60000\n"
            "    max_retries: 1\n",
            f->pw.service_url, f->outputs);
    fclose(fp);
}

/* The fixture without its processes: folders, redis, a broker. */
static fixture_t *fixture_new(void)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    kiln_test_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->config, sizeof f->config, "%s/kiln.yaml", f->dir);
    snprintf(f->log_path, sizeof f->log_path, "%s/worker.log", f->dir);
    snprintf(f->outputs, sizeof f->outputs, "%s/outputs", f->dir);
    assert_int_equal(mkdir(f->outputs, 0755), 0);
    kiln_test_redis_start(&f->redis, false);
    f->opts = (kiln_broker_options_t){
        .redis_url = f->redis.url,
        .max_payload_bytes = 1024 * 1024,
        .stream_max_len = 10000,
        .retention_age_s = 3600,
        .retention_count = 10000,
        .default_max_attempts = 3,
        .backoff_base_ms = 50,
        .backoff_max_ms = 200,
        .lease_ms = 30000,
    };
    kiln_err_t err = {0};
    if (kiln_broker_connect(&f->opts, &f->broker, &err) != 0)
        fail_msg("kiln_broker_connect %s: %s", f->redis.url, err.msg);
    return f;
}

static int setup(void **state)
{
    *state = NULL;
    if (kiln_test_pw_missing())
        return 0;
    fixture_t *f = fixture_new();
    kiln_test_pw_start(&f->pw, f->dir);
    write_config(f);
    char *argv[] = {KILN_BIN,       "worker",       "--config", f->config,       "--redis",
                    f->redis.url,   "--connectors", "browser",  "--concurrency", "2",
                    "--log-format", "text",         "--id",     "browser-1",     NULL};
    f->worker = kiln_test_spawn(argv, NULL, f->log_path);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (!f)
        return 0;
    if (f->worker > 0)
        kiln_test_kill(f->worker, SIGTERM, 10000);
    kiln_test_pw_stop(&f->pw);
    if (!f->passed) {
        kiln_test_dump_file("worker or agent log", f->log_path);
        if (f->pw.service_log[0])
            kiln_test_dump_file("playwright service log", f->pw.service_log);
    }
    kiln_broker_free(f->broker);
    kiln_test_redis_destroy(&f->redis);
    char *rm[] = {"/bin/rm", "-rf", f->dir, NULL};
    kiln_test_run(rm, NULL, NULL, 0);
    free(f);
    return 0;
}

#define NEEDS_BROWSER(f)                                                                           \
    do {                                                                                           \
        if (!(f)) {                                                                                \
            print_message("skipped: %s\n", kiln_test_pw_missing());                                \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* Submits a job for the browser connector; payload is JSON text in which
 * "$PAGES" stands for the page server's URL. */
static void submit(fixture_t *f, const char *payload, char *id)
{
    char json[4096] = "{\"service\":\"browser\",\"payload\":";
    for (const char *p = payload; *p;) {
        const char *at = strstr(p, "$PAGES");
        size_t len = at ? (size_t)(at - p) : strlen(p), used = strlen(json);
        snprintf(json + used, sizeof json - used, "%.*s%s", (int)len, p, at ? f->pw.pages_url : "");
        p += len + (at ? strlen("$PAGES") : 0);
    }
    strcat(json, "}");
    kiln_job_spec_t spec;
    kiln_err_t err = {0};
    if (kiln_job_spec_parse(json, strlen(json), f->opts.max_payload_bytes, &spec, &err) != 0)
        fail_msg("job spec %s refused: %s", json, err.msg);
    int rc = kiln_broker_submit(f->broker, &spec, id, NULL, &err);
    kiln_job_spec_clear(&spec);
    if (rc != 0)
        fail_msg("submit %s: %s", json, err.msg);
}

static json_t *get_job(fixture_t *f, const char *id)
{
    json_t *job = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_get_job(f->broker, id, &job, &err) != 0)
        fail_msg("get_job %s: %s", id, err.msg);
    return job;
}

typedef struct job_cond {
    fixture_t *f;
    const char *id;
    const char *state;
} job_cond_t;

static bool job_in_state(void *ctx)
{
    job_cond_t *c = ctx;
    json_t *job = get_job(c->f, c->id);
    const char *st = json_string_value(json_object_get(job, "state"));
    bool in = st && strcmp(st, c->state) == 0;
    json_decref(job);
    return in;
}

/* Waits until the job is in state want; returns the job (caller owns). */
static json_t *wait_state(fixture_t *f, const char *id, const char *want)
{
    job_cond_t c = {f, id, want};
    if (!kiln_test_wait_until(job_in_state, &c, 60000)) {
        json_t *job = get_job(f, id);
        char *text = json_dumps(job, JSON_INDENT(1));
        fail_msg("job %s is not %s: %s", id, want, text ? text : "(null)");
    }
    return get_job(f, id);
}

static void expect_file_starts_with(const char *path, const char *magic, size_t len)
{
    char head[16] = "";
    FILE *fp = fopen(path, "rb");
    if (!fp)
        fail_msg("the job's output %s is missing", path);
    size_t n = fread(head, 1, len, fp);
    fclose(fp);
    assert_int_equal(n, len);
    assert_memory_equal(head, magic, len);
}

static void screenshot_and_pdf_jobs_through_a_worker_complete_with_their_files(void **state)
{
    fixture_t *f = *state;
    NEEDS_BROWSER(f);
    char id[KILN_JOB_ID_MAX];
    submit(f,
           "{\"url\":\"$PAGES/form.html\",\"full_page\":true,\"steps\":["
           "{\"fill\":\"#name\",\"value\":\"kiln\"},{\"click\":\"#go\"},"
           "{\"wait_for\":\"text=Hello, kiln!\"}]}",
           id);
    json_t *job = wait_state(f, id, "completed");
    json_t *result = json_object_get(job, "result");
    const char *path = json_string_value(json_object_get(result, "path"));
    assert_non_null(path);
    assert_non_null(strstr(path, f->outputs));
    expect_file_starts_with(path, "\x89PNG\r\n\x1a\n", 8);
    assert_string_equal(json_string_value(json_object_get(result, "title")), "kiln form");
    json_decref(job);

    submit(f, "{\"url\":\"$PAGES/form.html\",\"action\":\"pdf\",\"landscape\":true}", id);
    job = wait_state(f, id, "completed");
    result = json_object_get(job, "result");
    expect_file_starts_with(json_string_value(json_object_get(result, "path")), "%PDF-", 5);
    json_decref(job);

    /* A page that is not there fails at once, without burning attempts. */
    submit(f, "{\"url\":\"$PAGES/missing\"}", id);
    job = wait_state(f, id, "failed");
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 1);
    assert_non_null(strstr(json_string_value(json_object_get(job, "error")), "HTTP 404"));
    json_decref(job);
    f->passed = true;
}

static bool page_closed(void *ctx)
{
    const fixture_t *f = ctx;
    return kiln_test_pw_health(&f->pw, "counters.cancelled") == 1 &&
           kiln_test_pw_health(&f->pw, "pages_open") == 0;
}

static bool page_open(void *ctx)
{
    const fixture_t *f = ctx;
    return kiln_test_pw_health(&f->pw, "pages_open") == 1;
}

static void cancelling_a_running_job_closes_its_page(void **state)
{
    fixture_t *f = *state;
    NEEDS_BROWSER(f);
    char id[KILN_JOB_ID_MAX];
    submit(f, "{\"url\":\"$PAGES/form.html\",\"steps\":[{\"wait_for\":\"#never\"}]}", id);
    json_decref(wait_state(f, id, "running"));
    assert_true(kiln_test_wait_until(page_open, f, 30000));
    kiln_err_t err = {0};
    if (kiln_broker_cancel(f->broker, id, &err) != 0)
        fail_msg("cancel %s: %s", id, err.msg);
    json_decref(wait_state(f, id, "cancelled"));
    assert_true(kiln_test_wait_until(page_closed, f, 20000));
    f->passed = true;
}

/* A loopback port nothing listens on: it was free a moment ago. */
static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    assert_int_equal(bind(s, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&addr, &len), 0);
    close(s);
    return ntohs(addr.sin_port);
}

/* The agent, told only that the machine serves playwright, starts the
 * service (node, its chromium) and a worker pointed at it. */
static int agent_setup(void **state)
{
    *state = NULL;
    if (kiln_test_pw_missing())
        return 0;
    fixture_t *f = fixture_new();
    kiln_test_pw_start_pages(&f->pw, f->dir);
    FILE *fp = fopen(f->config, "w");
    assert_non_null(fp);
    fprintf(fp,
            "redis: {url: \"%s\"}\n"
            "machine: {id: pw-e2e, type: api, health_port: %d}\n"
            "worker: {connectors: [playwright], concurrency: 1, shutdown_grace_ms: 200}\n"
            "templates:\n  playwright: {port: %d}\n"
            "connectors:\n  playwright: {type: playwright, outputs_dir: %s}\n",
            f->redis.url, free_port(), free_port(), f->outputs);
    fclose(fp);
    char state_dir[320];
    snprintf(state_dir, sizeof state_dir, "%s/state", f->dir);
    char *argv[] = {KILN_BIN,  "machine", "run",         "--config",     f->config, "--state-dir",
                    state_dir, "--api",   "127.0.0.1:0", "--log-format", "text",    NULL};
    f->worker = kiln_test_spawn(argv, NULL, f->log_path);
    *state = f;
    return 0;
}

static void the_agent_runs_the_service_for_a_playwright_connector(void **state)
{
    fixture_t *f = *state;
    NEEDS_BROWSER(f);
    char id[KILN_JOB_ID_MAX];
    char json[512];
    snprintf(json, sizeof json,
             "{\"service\":\"playwright\",\"payload\":{\"url\":\"%s/form.html\"}}",
             f->pw.pages_url);
    kiln_job_spec_t spec;
    kiln_err_t err = {0};
    assert_int_equal(
        kiln_job_spec_parse(json, strlen(json), f->opts.max_payload_bytes, &spec, &err), 0);
    assert_int_equal(kiln_broker_submit(f->broker, &spec, id, NULL, &err), 0);
    kiln_job_spec_clear(&spec);
    json_t *job = wait_state(f, id, "completed");
    const char *path = json_string_value(json_object_get(json_object_get(job, "result"), "path"));
    assert_non_null(path);
    expect_file_starts_with(path, "\x89PNG\r\n\x1a\n", 8);
    json_decref(job);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            screenshot_and_pdf_jobs_through_a_worker_complete_with_their_files, setup, teardown),
        cmocka_unit_test_setup_teardown(cancelling_a_running_job_closes_its_page, setup, teardown),
        cmocka_unit_test_setup_teardown(the_agent_runs_the_service_for_a_playwright_connector,
                                        agent_setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

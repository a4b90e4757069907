/*
 * The monitor UI in real headless chromium (tests/browser/monitor.mjs,
 * playwright-core from services/playwright) against a real redis-server,
 * `kiln hub` and `kiln machine run` with a simulation worker, all on
 * loopback. Screenshots go to tests/.artifacts/. Skips, saying why, when
 * node, chromium or playwright-core is missing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "kiln_test.h"
#include "pw_service.h"

#define MACHINE      "monitor-e2e"
#define TOKEN_ADMIN  "admin-token-0123456789abcdef"
#define TOKEN_READ   "read-token-0123456789abcdef"
#define ARTIFACT_DIR KILN_SOURCE_DIR "/tests/.artifacts"

typedef struct fixture {
    kiln_test_redis_t redis;
    char dir[256], config[320], hub_log[320], agent_log[320];
    char url[80];
    pid_t hub, agent;
    bool passed;
} fixture_t;

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = calloc(1, 1 << 20);
    if (f && buf)
        buf[fread(buf, 1, (1 << 20) - 1, f)] = '\0';
    if (f)
        fclose(f);
    return buf;
}

static bool hub_listening(void *ctx)
{
    fixture_t *f = ctx;
    char *text = slurp(f->hub_log);
    const char *at = text ? strstr(text, "kiln hub listening on ") : NULL;
    if (at)
        sscanf(at + strlen("kiln hub listening on "), "%79s", f->url);
    free(text);
    return at != NULL;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    *state = f;
    const char *missing = kiln_test_pw_missing();
    if (missing) {
        fprintf(stderr, "skipped: %s\n", missing);
        return 0;
    }
    kiln_test_redis_start(&f->redis, false);
    kiln_test_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->config, sizeof f->config, "%s/kiln.yaml", f->dir);
    snprintf(f->hub_log, sizeof f->hub_log, "%s/hub.log", f->dir);
    snprintf(f->agent_log, sizeof f->agent_log, "%s/agent.log", f->dir);
    FILE *out = fopen(f->config, "w");
    assert_non_null(out);
    fprintf(out,
            "redis: {url: \"%s\"}\n"
            "machine: {id: " MACHINE ", type: api}\n"
            "worker: {connectors: [simulation], concurrency: 2, shutdown_grace_ms: 200}\n",
            f->redis.url);
    fclose(out);
    char state_dir[300];
    snprintf(state_dir, sizeof state_dir, "%s/state", f->dir);
    char *agent[] = {KILN_BIN,  "machine", "run",         "--config",    f->config, "--state-dir",
                     state_dir, "--api",   "127.0.0.1:0", "--status-ms", "500",     NULL};
    f->agent = kiln_test_spawn(agent, NULL, f->agent_log);
    mkdir(ARTIFACT_DIR, 0755);
    return 0;
}

static void start_hub(fixture_t *f, const char *tokens)
{
    char *argv[] = {KILN_BIN,      "hub",          "--redis", f->redis.url, "--listen",
                    "127.0.0.1:0", "--log-format", "text",    NULL};
    char *env[] = {(char *)tokens, NULL};
    f->hub = kiln_test_spawn(argv, tokens ? env : NULL, f->hub_log);
    assert_true(kiln_test_wait_until(hub_listening, f, 10000));
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->hub > 0)
        kiln_test_kill(f->hub, SIGTERM, 10000);
    if (f->agent > 0)
        kiln_test_kill(f->agent, SIGTERM, 15000);
    if (f->dir[0] && !f->passed) {
        kiln_test_dump_file("hub log", f->hub_log);
        kiln_test_dump_file("agent log", f->agent_log);
    }
    if (f->redis.port)
        kiln_test_redis_destroy(&f->redis);
    if (f->dir[0]) {
        char *rm[] = {"/bin/rm", "-rf", f->dir, NULL};
        kiln_test_run(rm, NULL, NULL, 0);
    }
    free(f);
    return 0;
}

/* Runs tests/browser/monitor.mjs with the given extra arguments (NULL
 * ended); returns its exit status, its JSON line in out. */
static int run_browser(fixture_t *f, const char *screenshot, char *out, size_t size, ...)
{
    char url[120];
    snprintf(url, sizeof url, "%s/", f->url);
    char *argv[16] = {KILN_TEST_NODE, KILN_SOURCE_DIR "/tests/browser/monitor.mjs",
                      "--url",        url,
                      "--machine",    MACHINE,
                      "--screenshot", (char *)screenshot,
                      "--chromium",   KILN_TEST_CHROMIUM};
    int n = 10;
    va_list ap;
    va_start(ap, size);
    for (char *arg; n < 15 && (arg = va_arg(ap, char *));)
        argv[n++] = arg;
    va_end(ap);
    argv[n] = NULL;
    int rc = kiln_test_run(argv, NULL, out, size);
    fprintf(stderr, "monitor.mjs: %s", out);
    return rc;
}

static void
page_shows_the_machine_and_a_job_from_the_form_runs_with_its_progress_bar_moving(void **state)
{
    fixture_t *f = *state;
    if (!f->dir[0])
        skip();
    start_hub(f, NULL);
    char out[4096] = "";
    const char *shot = ARTIFACT_DIR "/monitor.png";
    assert_int_equal(run_browser(f, shot, out, sizeof out, NULL), 0);
    assert_non_null(strstr(out, "\"machine_card\":true"));
    assert_non_null(strstr(out, "\"progress_values\":["));
    assert_non_null(strstr(out, "\"timeline\":"));
    assert_non_null(strstr(out, "\"resumed\":true"));
    assert_non_null(strstr(out, "\"restarted\":\"worker-"));
    struct stat st;
    assert_int_equal(stat(shot, &st), 0);
    assert_true(st.st_size > 1000);
    f->passed = true;
}

static void a_read_token_sees_the_fleet_but_no_submit_form_or_restart_buttons(void **state)
{
    fixture_t *f = *state;
    if (!f->dir[0])
        skip();
    start_hub(f, "KILN_HUB_TOKENS=ops:admin:" TOKEN_ADMIN ",dash:read:" TOKEN_READ);
    char out[4096] = "";
    assert_int_equal(run_browser(f, ARTIFACT_DIR "/monitor-read.png", out, sizeof out, "--token",
                                 TOKEN_READ, "--expect-role", "read", NULL),
                     0);
    assert_non_null(strstr(out, "\"submit_hidden\":true"));
    assert_non_null(strstr(out, "\"restart_buttons\":0"));
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            page_shows_the_machine_and_a_job_from_the_form_runs_with_its_progress_bar_moving, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_read_token_sees_the_fleet_but_no_submit_form_or_restart_buttons, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

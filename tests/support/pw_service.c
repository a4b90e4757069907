/* Test support for the playwright connector (contract in pw_service.h). */
#include "pw_service.h"

#include "connectors/http.h"
#include "kiln_test.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *kiln_test_pw_missing(void)
{
    if (access(KILN_TEST_NODE, X_OK) != 0)
        return KILN_TEST_NODE " is missing; install Debian's nodejs (scripts/deps.sh)";
    if (access(KILN_TEST_CHROMIUM, X_OK) != 0)
        return KILN_TEST_CHROMIUM " is missing; install Debian's chromium (scripts/deps.sh)";
    if (access(KILN_TEST_PW_DIR "/node_modules/playwright-core/package.json", R_OK) != 0)
        return "playwright-core is not installed; run npm ci in services/playwright "
               "(the build does)";
    return NULL;
}

typedef struct port_wait {
    const char *log_path;
    const char *marker; /* the text just before the port number */
    int port;
} port_wait_t;

/* Whether the log holds the marker and a port after it. */
static bool port_printed(void *ctx)
{
    port_wait_t *w = ctx;
    char buf[8192];
    FILE *f = fopen(w->log_path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *at = strstr(buf, w->marker);
    w->port = at ? atoi(at + strlen(w->marker)) : 0;
    return w->port > 0;
}

static bool service_healthy(void *ctx)
{
    return kiln_test_pw_health(ctx, "pages_open") >= 0;
}

static int wait_port(const char *log_path, const char *marker)
{
    port_wait_t w = {.log_path = log_path, .marker = marker};
    return kiln_test_wait_until(port_printed, &w, 20000) ? w.port : 0;
}

void kiln_test_pw_start_pages(kiln_test_pw_t *pw, const char *dir)
{
    memset(pw, 0, sizeof *pw);
    snprintf(pw->pages_log, sizeof pw->pages_log, "%s/pw_pages.log", dir);
    char *pages_argv[] = {KILN_TEST_HELPERS_DIR "/pw_pages", "0", NULL};
    pw->pages_pid = kiln_test_spawn(pages_argv, NULL, pw->pages_log);
    pw->pages_port = wait_port(pw->pages_log, "listening on 127.0.0.1:");
    snprintf(pw->pages_url, sizeof pw->pages_url, "http://127.0.0.1:%d", pw->pages_port);
    if (!pw->pages_port) {
        kiln_test_dump_file("pw_pages log", pw->pages_log);
        kiln_test_pw_stop(pw);
        fail_msg("the page server did not start");
    }
}

void kiln_test_pw_start(kiln_test_pw_t *pw, const char *dir)
{
    kiln_test_pw_start_pages(pw, dir);
    snprintf(pw->service_log, sizeof pw->service_log, "%s/playwright.log", dir);
    char *service_argv[] = {KILN_TEST_NODE,
                            KILN_TEST_PW_DIR "/server.mjs",
                            "--port",
                            "0",
                            "--chromium",
                            KILN_TEST_CHROMIUM,
                            NULL};
    pw->service_pid = kiln_test_spawn(service_argv, NULL, pw->service_log);
    pw->service_port = wait_port(pw->service_log, "\"port\":");
    snprintf(pw->service_url, sizeof pw->service_url, "http://127.0.0.1:%d", pw->service_port);
    if (!pw->service_port || !kiln_test_wait_until(service_healthy, pw, 60000)) {
        kiln_test_dump_file("pw_pages log", pw->pages_log);
        kiln_test_dump_file("playwright service log", pw->service_log);
        kiln_test_pw_stop(pw);
        fail_msg("the page server or the playwright service did not start");
    }
}

void kiln_test_pw_stop(kiln_test_pw_t *pw)
{
    if (pw->service_pid > 0)
        kiln_test_kill(pw->service_pid, SIGTERM, 10000);
    if (pw->pages_pid > 0)
        kiln_test_kill(pw->pages_pid, SIGTERM, 5000);
    pw->service_pid = pw->pages_pid = 0;
}

long kiln_test_pw_health(const kiln_test_pw_t *pw, const char *path)
{
    kiln_http_client_options_t opts = {
        .base_url = pw->service_url, .name = "health", .timeout_ms = 5000};
    kiln_http_client_t *client = NULL;
    kiln_err_t err = {0};
    if (!pw->service_port || kiln_http_client_new(&opts, &client, &err) != 0)
        return -1;
    kiln_http_call_t call = {.method = "GET", .path = "/health", .cancel_fd = -1};
    kiln_http_result_t res = {0};
    long value = -1;
    if (kiln_http_call(client, &call, &res, &err) == 0) {
        json_t *doc = json_loadb(res.body, res.body_len, 0, NULL);
        json_t *at = doc;
        char key[64];
        for (const char *p = path; at && *p;) {
            size_t len = strcspn(p, ".");
            snprintf(key, sizeof key, "%.*s", (int)len, p);
            at = json_object_get(at, key);
            p += len + (p[len] == '.');
        }
        if (json_is_integer(at))
            value = (long)json_integer_value(at);
        json_decref(doc);
    }
    kiln_http_result_clear(&res);
    kiln_http_client_free(client);
    return value;
}

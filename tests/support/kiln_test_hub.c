/* Hub test support (kiln_test_hub.h). */
#include "kiln_test_hub.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdarg.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "kiln_test.h"
#include "kiln_test_connector.h"

#define LOG_MAX (1 << 20)

bool kiln_test_log_count(const char *path, const char *needle, int times)
{
    char *text = kiln_test_slurp(path, LOG_MAX);
    int found = 0;
    for (const char *at = text; at && (at = strstr(at, needle)); at++)
        found++;
    free(text);
    return found >= times;
}

typedef struct log_wait {
    const char *path;
    const char *needle;
    int times;
} log_wait_t;

static bool log_counted(void *ctx)
{
    log_wait_t *w = ctx;
    return kiln_test_log_count(w->path, w->needle, w->times);
}

bool kiln_test_log_wait(const char *path, const char *needle, int times, long timeout_ms)
{
    log_wait_t w = {path, needle, times};
    return kiln_test_wait_until(log_counted, &w, timeout_ms);
}

void kiln_test_hub_start(kiln_test_hub_t *h, const char *redis_url, char *const env_extra[])
{
    char *argv[] = {KILN_BIN,       "hub",  "--redis", (char *)redis_url, "--listen", "127.0.0.1:0",
                    "--log-format", "text", NULL};
    h->pid = kiln_test_spawn(argv, env_extra, h->log_path);
    assert_true(
        kiln_test_log_wait(h->log_path, "kiln hub listening on http://", ++h->starts, 10000));
    char *text = kiln_test_slurp(h->log_path, LOG_MAX);
    const char *at = NULL, *next = text;
    while ((next = strstr(next, "kiln hub listening on "))) /* the last start's line */
        at = next++;
    assert_non_null(at);
    sscanf(at + strlen("kiln hub listening on "), "%63s", h->url);
    free(text);
}

void kiln_test_hub_stop(kiln_test_hub_t *h)
{
    if (h->pid > 0)
        kiln_test_kill(h->pid, SIGTERM, 10000);
    h->pid = 0;
}

pid_t kiln_test_hub_worker(const char *redis_url, const char *log_path, char *const env_extra[])
{
    char *argv[] = {KILN_BIN,     "worker",        "--redis", (char *)redis_url, "--connectors",
                    "simulation", "--concurrency", "4",       "--log-format",    "text",
                    NULL};
    return kiln_test_spawn(argv, env_extra, log_path);
}

size_t kiln_test_http_collect(char *data, size_t size, size_t n, void *ctx)
{
    kiln_test_http_t *r = ctx;
    char *grown = realloc(r->body, r->len + size * n + 1);
    assert_non_null(grown);
    memcpy(grown + r->len, data, size * n);
    r->len += size * n;
    grown[r->len] = '\0';
    r->body = grown;
    return size * n;
}

kiln_test_http_t kiln_test_http(const char *base_url, const char *method, const char *path,
                                const char *body, const char *token, bool chunked)
{
    kiln_test_http_t r = {0};
    char url[512], auth[320];
    snprintf(url, sizeof url, "%s%s", base_url, path);
    CURL *curl = curl_easy_init();
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        headers = curl_slist_append(headers, auth);
    }
    if (chunked)
        headers = curl_slist_append(headers, "Transfer-Encoding: chunked");
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 70000L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, kiln_test_http_collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &r);
    if (body) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, chunked ? -1L : (long)strlen(body));
    }
    CURLcode rc = curl_easy_perform(curl);
    if (rc != CURLE_OK)
        fprintf(stderr, "%s %s: %s\n", method, url, curl_easy_strerror(rc));
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    if (r.body)
        r.json = json_loads(r.body, 0, NULL);
    return r;
}

void kiln_test_http_free(kiln_test_http_t *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

const char *kiln_test_jstr(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key)) ?: "";
}

/*
 * End-to-end test support for `kiln hub`: a real hub process on a free
 * loopback port, real `kiln worker` processes (simulation connector), and
 * HTTP requests with libcurl. Shared by tests/e2e/test_hub*.c.
 */
#ifndef KILN_TEST_HUB_H
#define KILN_TEST_HUB_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct kiln_test_hub {
    pid_t pid;
    char log_path[400];
    char url[64]; /* "http://127.0.0.1:PORT" once started */
    int starts;   /* how many times it was started with this log */
} kiln_test_hub_t;

/* Starts `kiln hub` against redis_url on 127.0.0.1:0, logging (text) to
 * h->log_path, with env_extra ("NAME=value", NULL-terminated, may be NULL);
 * waits up to 10 s for its "listening" line and fills h->url. */
void kiln_test_hub_start(kiln_test_hub_t *h, const char *redis_url, char *const env_extra[]);

/* Stops the hub (SIGTERM, then SIGKILL after 10 s). */
void kiln_test_hub_stop(kiln_test_hub_t *h);

/* Spawns `kiln worker` serving simulation with concurrency 4 against
 * redis_url, logging to log_path, with env_extra (may be NULL). */
pid_t kiln_test_hub_worker(const char *redis_url, const char *log_path, char *const env_extra[]);

/* Whether the file at path holds needle at least times times. */
bool kiln_test_log_count(const char *path, const char *needle, int times);

/* Waits up to timeout_ms until the file at path holds needle at least
 * times times; returns whether it came to. */
bool kiln_test_log_wait(const char *path, const char *needle, int times, long timeout_ms);

typedef struct kiln_test_http {
    long status; /* 0 when the request failed */
    char *body;  /* NUL-terminated */
    size_t len;
    json_t *json; /* the body parsed, or NULL */
} kiln_test_http_t;

/* Sends METHOD base_url+path with body (may be NULL; JSON) and bearer
 * token (may be NULL); chunked sends the body with Transfer-Encoding:
 * chunked. Free the reply with kiln_test_http_free. */
kiln_test_http_t kiln_test_http(const char *base_url, const char *method, const char *path,
                                const char *body, const char *token, bool chunked);

void kiln_test_http_free(kiln_test_http_t *r);

/* A libcurl write (or header) callback appending to the kiln_test_http_t
 * at ctx. */
size_t kiln_test_http_collect(char *data, size_t size, size_t n, void *ctx);

/* The string at key of obj, "" when absent. */
const char *kiln_test_jstr(json_t *obj, const char *key);

#endif

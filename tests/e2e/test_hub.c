/*
 * End-to-end tests of `kiln hub`: a real hub process and real `kiln worker`
 * processes (simulation connector) against a real redis-server, driven over
 * raw HTTP with libcurl and over WebSockets with civetweb's client. Each
 * test starts its own hub (and workers) on a flushed Redis; their logs are
 * printed when a test fails. Every wait is for a condition.
 */
#include <civetweb.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hub/hub_internal.h"
#include "kiln/broker.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"
#include "kiln_test_hub.h"

#define TOKEN_ADMIN  "admin-token-0123456789abcdef"
#define TOKEN_SUBMIT "submit-token-0123456789abcdef"
#define TOKEN_READ   "read-token-0123456789abcdef"
#define TOKENS_ENV                                                                                 \
    "KILN_HUB_TOKENS=ops:admin:" TOKEN_ADMIN ",ci:submit:" TOKEN_SUBMIT ",dash:read:" TOKEN_READ

static kiln_test_redis_t redis;
static char log_dir[256];
static int test_seq;

typedef struct proc {
    pid_t pid;
    char log_path[400];
} proc_t;

typedef struct fixture {
    kiln_test_hub_t hub;
    proc_t workers[2];
    int n_workers;
    char url[64];
    int seq;
    bool passed;
} fixture_t;

static fixture_t *F; /* the running test's fixture, for helpers */

/* ---- processes --------------------------------------------------------------- */

static char *slurp(const char *path)
{
    return kiln_test_slurp(path, 1 << 20);
}

/* Starts `kiln hub` on a free port with env_extra; waits for its URL. */
static void start_hub(fixture_t *f, const char *env1, const char *env2)
{
    snprintf(f->hub.log_path, sizeof f->hub.log_path, "%s/%02d-hub.log", log_dir, f->seq);
    char *env[] = {(char *)env1, (char *)env2, NULL};
    kiln_test_hub_start(&f->hub, redis.url, env1 ? env : NULL);
    snprintf(f->url, sizeof f->url, "%s", f->hub.url);
}

static void stop_hub(fixture_t *f)
{
    kiln_test_hub_stop(&f->hub);
}

static void start_worker_env(fixture_t *f, const char *env1)
{
    proc_t *w = &f->workers[f->n_workers];
    snprintf(w->log_path, sizeof w->log_path, "%s/%02d-worker%d.log", log_dir, f->seq,
             f->n_workers);
    char *env[] = {(char *)env1, NULL};
    w->pid = kiln_test_hub_worker(redis.url, w->log_path, env1 ? env : NULL);
    f->n_workers++;
}

static void start_worker(fixture_t *f)
{
    start_worker_env(f, NULL);
}

static int setup(void **state)
{
    static fixture_t f;
    memset(&f, 0, sizeof f);
    f.seq = ++test_seq;
    redisContext *c = kiln_test_redis_connect(&redis);
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    redisFree(c);
    F = &f;
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    stop_hub(f);
    for (int i = 0; i < f->n_workers; i++)
        kiln_test_kill(f->workers[i].pid, SIGTERM, 10000);
    if (!f->passed) {
        kiln_test_dump_file("hub log", f->hub.log_path);
        for (int i = 0; i < f->n_workers; i++)
            kiln_test_dump_file("worker log", f->workers[i].log_path);
    }
    return 0;
}

/* ---- HTTP ----------------------------------------------------------------------- */

typedef kiln_test_http_t http_reply_t;

/* Sends METHOD path with body (may be NULL) and token (may be NULL);
 * chunked: send the body with Transfer-Encoding: chunked. */
static http_reply_t http_full(const char *method, const char *path, const char *body,
                              const char *token, bool chunked)
{
    return kiln_test_http(F->url, method, path, body, token, chunked);
}

static http_reply_t http(const char *method, const char *path, const char *body, const char *token)
{
    return http_full(method, path, body, token, false);
}

static void reply_free(http_reply_t *r)
{
    kiln_test_http_free(r);
}

static const char *jstr(json_t *obj, const char *key)
{
    return kiln_test_jstr(obj, key);
}
static const char *error_field(http_reply_t *r)
{
    json_t *field = json_object_get(json_object_get(r->json, "error"), "field");
    return json_is_string(field) ? json_string_value(field) : "(null)";
}

/* Submits a simulation job; returns its id in id. */
static void submit(const char *payload, const char *token, char *id)
{
    char body[512];
    snprintf(body, sizeof body, "{\"service\":\"simulation\",\"payload\":%s}", payload);
    http_reply_t r = http("POST", "/v1/jobs", body, token);
    if (r.status != 201)
        fprintf(stderr, "submit: %ld %s\n", r.status, r.body ? r.body : "");
    assert_int_equal(r.status, 201);
    snprintf(id, KILN_JOB_ID_MAX, "%s", jstr(r.json, "id"));
    reply_free(&r);
}

typedef struct state_wait {
    const char *id;
    const char *state;
} state_wait_t;

static bool job_in_state(void *ctx)
{
    state_wait_t *w = ctx;
    char path[160];
    snprintf(path, sizeof path, "/v1/jobs/%s", w->id);
    http_reply_t r = http("GET", path, NULL, TOKEN_ADMIN);
    bool ok = r.status == 200 && strcmp(jstr(r.json, "state"), w->state) == 0;
    reply_free(&r);
    return ok;
}

typedef struct finish_wait {
    const char *id;
    json_int_t after; /* finished_at of an earlier run */
} finish_wait_t;

/* The job is dead again, from a run that finished after w->after. */
static bool dead_again(void *ctx)
{
    finish_wait_t *w = ctx;
    char path[160];
    snprintf(path, sizeof path, "/v1/jobs/%s", w->id);
    http_reply_t r = http("GET", path, NULL, NULL);
    bool ok = r.status == 200 && strcmp(jstr(r.json, "state"), "dead") == 0 &&
              json_integer_value(json_object_get(r.json, "finished_at")) > w->after;
    reply_free(&r);
    return ok;
}

/* ---- SSE ------------------------------------------------------------------------- */

typedef struct sse {
    char *buf;
    size_t len;
    json_t *events; /* the data of each event, in order */
    char last_cursor[4096];
    size_t stop_after;     /* stop once this many events are in (0: never) */
    const char *stop_type; /* stop after an event of this type (NULL: never) */
    bool ended;            /* "event: end" or the stream closed */
} sse_t;

static size_t sse_collect(char *data, size_t size, size_t n, void *ctx)
{
    sse_t *s = ctx;
    s->buf = realloc(s->buf, s->len + size * n + 1);
    memcpy(s->buf + s->len, data, size * n);
    s->len += size * n;
    s->buf[s->len] = '\0';
    char *block;
    while ((block = strstr(s->buf, "\n\n"))) {
        *block = '\0';
        if (strncmp(s->buf, "event: end", 10) == 0)
            s->ended = true;
        const char *id = strstr(s->buf, "id: ");
        const char *dat = strstr(s->buf, "data: ");
        if (id && dat && !s->ended) {
            snprintf(s->last_cursor, sizeof s->last_cursor, "%.*s", (int)strcspn(id + 4, "\n"),
                     id + 4);
            json_array_append_new(s->events, json_loads(dat + 6, 0, NULL));
        }
        size_t used = (size_t)(block - s->buf) + 2;
        memmove(s->buf, s->buf + used, s->len - used + 1);
        s->len -= used;
        json_t *last = json_array_get(s->events, json_array_size(s->events) - 1);
        if ((s->stop_after && json_array_size(s->events) >= s->stop_after) ||
            (s->stop_type && strcmp(jstr(last, "type"), s->stop_type) == 0))
            return 0; /* enough: abort the transfer */
    }
    return size * n;
}

/* Reads an SSE stream at path until it ends, stop_after events, or
 * timeout_ms. */
static void sse_read(sse_t *s, const char *path, const char *last_event_id, long timeout_ms)
{
    char url[8192], header[4200];
    snprintf(url, sizeof url, "%s%s", F->url, path);
    CURL *curl = curl_easy_init();
    struct curl_slist *headers = NULL;
    if (last_event_id) {
        snprintf(header, sizeof header, "Last-Event-ID: %s", last_event_id);
        headers = curl_slist_append(headers, header);
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, sse_collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, s);
    CURLcode rc = curl_easy_perform(curl);
    if (rc == CURLE_OK)
        s->ended = true;
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
}

/* ---- tests ------------------------------------------------------------------------- */

static void submitted_job_runs_and_the_long_poll_returns_its_result(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    start_worker(f);
    char id[KILN_JOB_ID_MAX];
    submit("{\"duration_ms\":300,\"steps\":3}", NULL, id);
    char path[160];
    snprintf(path, sizeof path, "/v1/jobs/%s?wait=20", id);
    int64_t start = kiln_test_now_ms();
    http_reply_t r = http("GET", path, NULL, NULL);
    int64_t took = kiln_test_now_ms() - start;
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "state"), "completed");
    assert_true(json_is_true(json_object_get(json_object_get(r.json, "result"), "simulated")));
    assert_true(took < 15000); /* returned on completion, not at the end of the wait */
    reply_free(&r);

    /* Without wait the job comes back at once, as it is. */
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    r = http("GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "id"), id);
    reply_free(&r);
    r = http("GET", "/v1/queues", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(json_object_get(r.json, "queues"), 0), "completed")),
                     1);
    reply_free(&r);
    f->passed = true;
}

static void concurrent_submits_each_get_their_own_job(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    enum { N = 200 };
    CURLM *multi = curl_multi_init();
    static http_reply_t replies[N];
    CURL *handles[N];
    char url[128];
    snprintf(url, sizeof url, "%s/v1/jobs", f->url);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    for (int i = 0; i < N; i++) {
        memset(&replies[i], 0, sizeof replies[i]);
        handles[i] = curl_easy_init();
        curl_easy_setopt(handles[i], CURLOPT_URL, url);
        curl_easy_setopt(handles[i], CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(handles[i], CURLOPT_POSTFIELDS,
                         i % 2 ? "{\"service\":\"simulation\"}" : "{\"service\":\"other\"}");
        curl_easy_setopt(handles[i], CURLOPT_WRITEFUNCTION, kiln_test_http_collect);
        curl_easy_setopt(handles[i], CURLOPT_WRITEDATA, &replies[i]);
        curl_multi_add_handle(multi, handles[i]);
    }
    int running = 1;
    while (running) {
        curl_multi_perform(multi, &running);
        curl_multi_poll(multi, NULL, 0, 1000, NULL);
    }
    json_t *ids = json_object();
    for (int i = 0; i < N; i++) {
        long status = 0;
        curl_easy_getinfo(handles[i], CURLINFO_RESPONSE_CODE, &status);
        assert_int_equal(status, 201);
        json_t *body = json_loads(replies[i].body, 0, NULL);
        const char *id = jstr(body, "id");
        assert_true(strncmp(id, i % 2 ? "simulation." : "other.", i % 2 ? 11 : 6) == 0);
        assert_null(json_object_get(ids, id));
        json_object_set_new(ids, id, json_true());
        json_decref(body);
        free(replies[i].body);
        curl_multi_remove_handle(multi, handles[i]);
        curl_easy_cleanup(handles[i]);
    }
    curl_multi_cleanup(multi);
    curl_slist_free_all(h);
    assert_int_equal(json_object_size(ids), N);
    json_decref(ids);
    /* An idempotency key returns the first job's id. */
    http_reply_t a =
        http("POST", "/v1/jobs", "{\"service\":\"simulation\",\"idempotency_key\":\"k1\"}", NULL);
    http_reply_t b =
        http("POST", "/v1/jobs", "{\"service\":\"simulation\",\"idempotency_key\":\"k1\"}", NULL);
    assert_int_equal(a.status, 201);
    assert_string_equal(jstr(a.json, "id"), jstr(b.json, "id"));
    reply_free(&a);
    reply_free(&b);
    f->passed = true;
}

static void long_poll_of_an_unfinished_job_returns_it_after_the_wait(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    char id[KILN_JOB_ID_MAX], path[160];
    submit("{}", NULL, id); /* no worker: it stays pending */
    snprintf(path, sizeof path, "/v1/jobs/%s?wait=1.5", id);
    int64_t start = kiln_test_now_ms();
    http_reply_t r = http("GET", path, NULL, NULL);
    int64_t took = kiln_test_now_ms() - start;
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "state"), "pending");
    assert_true(took >= 1400 && took < 10000);
    reply_free(&r);
    f->passed = true;
}

static void list_with_cursor_pagination_covers_every_job_exactly_once(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    char ids[30][KILN_JOB_ID_MAX];
    for (int i = 0; i < 30; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"service\":\"%s\",\"priority\":%d}",
                 i % 3 ? "simulation" : "render-x", i % 5);
        http_reply_t r = http("POST", "/v1/jobs", body, NULL);
        assert_int_equal(r.status, 201);
        snprintf(ids[i], sizeof ids[i], "%s", jstr(r.json, "id"));
        reply_free(&r);
    }
    /* Some jobs change state between pages: still listed once. */
    http_reply_t c = http("DELETE", "/v1/jobs/simulation.3", NULL, NULL);
    assert_int_equal(c.status, 200);
    reply_free(&c);
    json_t *seen = json_object();
    char cursor[KILN_JOB_ID_MAX] = "";
    int pages = 0;
    for (;;) {
        char path[256];
        snprintf(path, sizeof path, "/v1/jobs?limit=7%s%s", cursor[0] ? "&cursor=" : "", cursor);
        http_reply_t r = http("GET", path, NULL, NULL);
        assert_int_equal(r.status, 200);
        size_t i;
        json_t *job;
        json_array_foreach(json_object_get(r.json, "jobs"), i, job)
        {
            assert_null(json_object_get(seen, jstr(job, "id")));
            json_object_set_new(seen, jstr(job, "id"), json_true());
        }
        assert_true(json_array_size(json_object_get(r.json, "jobs")) <= 7);
        pages++;
        if (pages == 2) {
            http_reply_t d = http("DELETE", "/v1/jobs/simulation.20", NULL, NULL);
            assert_int_equal(d.status, 200);
            reply_free(&d);
        }
        json_t *next = json_object_get(r.json, "next_cursor");
        if (!json_is_string(next)) {
            reply_free(&r);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", json_string_value(next));
        reply_free(&r);
        assert_true(pages < 20);
    }
    assert_int_equal(json_object_size(seen), 30);
    for (int i = 0; i < 30; i++)
        assert_non_null(json_object_get(seen, ids[i]));
    assert_int_equal(pages, 5);
    /* Filters: one service, one state. */
    http_reply_t r = http("GET", "/v1/jobs?service=simulation&state=cancelled", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "jobs")), 2);
    reply_free(&r);
    json_decref(seen);
    f->passed = true;
}

static void cancel_works_on_pending_and_running_jobs_and_retry_revives_a_dead_one(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    char pending[KILN_JOB_ID_MAX], running[KILN_JOB_ID_MAX], dead[KILN_JOB_ID_MAX], path[160];
    submit("{}", NULL, pending);
    snprintf(path, sizeof path, "/v1/jobs/%s", pending);
    http_reply_t r = http("DELETE", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "state"), "cancelled");
    reply_free(&r);
    r = http("DELETE", path, NULL, NULL); /* already finished */
    assert_int_equal(r.status, 409);
    reply_free(&r);

    start_worker(f);
    submit("{\"duration_ms\":60000,\"steps\":60}", NULL, running);
    state_wait_t w = {running, "running"};
    assert_true(kiln_test_wait_until(job_in_state, &w, 10000));
    snprintf(path, sizeof path, "/v1/jobs/%s", running);
    r = http("DELETE", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "state"), "cancelled");
    reply_free(&r);

    http_reply_t s = http("POST", "/v1/jobs",
                          "{\"service\":\"simulation\",\"max_attempts\":1,"
                          "\"payload\":{\"duration_ms\":10,\"fail\":\"boom\"}}",
                          NULL);
    assert_int_equal(s.status, 201);
    snprintf(dead, sizeof dead, "%s", jstr(s.json, "id"));
    reply_free(&s);
    w = (state_wait_t){dead, "dead"};
    assert_true(kiln_test_wait_until(job_in_state, &w, 10000));
    snprintf(path, sizeof path, "/v1/jobs/%s", dead);
    r = http("GET", path, NULL, NULL);
    json_int_t first_finish = json_integer_value(json_object_get(r.json, "finished_at"));
    assert_true(first_finish > 0);
    reply_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s/retry", dead);
    r = http("POST", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    /* The reply is read after the retry, and the worker may already have
     * claimed (or even failed) the job again: what is guaranteed is that
     * the attempts were reset, so at most the one new attempt shows. */
    assert_true(json_integer_value(json_object_get(r.json, "attempts")) <= 1);
    reply_free(&r);
    /* It runs once more and fails again, out of its one attempt. */
    finish_wait_t again = {dead, first_finish};
    assert_true(kiln_test_wait_until(dead_again, &again, 10000));
    snprintf(path, sizeof path, "/v1/jobs/%s", dead);
    r = http("GET", path, NULL, NULL);
    assert_int_equal(json_integer_value(json_object_get(r.json, "attempts")), 1);
    reply_free(&r);
    /* A running job cannot be retried. */
    submit("{\"duration_ms\":60000,\"steps\":60}", NULL, running);
    w = (state_wait_t){running, "running"};
    assert_true(kiln_test_wait_until(job_in_state, &w, 10000));
    snprintf(path, sizeof path, "/v1/jobs/%s/retry", running);
    r = http("POST", path, NULL, NULL);
    assert_int_equal(r.status, 409);
    assert_string_equal(jstr(json_object_get(r.json, "error"), "code"), "conflict");
    reply_free(&r);
    f->passed = true;
}

static void tokens_and_roles_decide_what_each_caller_may_do(void **state)
{
    fixture_t *f = *state;
    start_hub(f, TOKENS_ENV, NULL);
    http_reply_t r = http("GET", "/v1/queues", NULL, NULL);
    assert_int_equal(r.status, 401);
    assert_string_equal(jstr(json_object_get(r.json, "error"), "code"), "unauthorized");
    reply_free(&r);
    r = http("GET", "/v1/queues", NULL, "not-a-token-of-this-hub-at-all");
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = http("GET", "/health", NULL, NULL); /* open */
    assert_int_equal(r.status, 200);
    reply_free(&r);
    r = http("GET", "/v1/queues", NULL, TOKEN_READ);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    r = http("POST", "/v1/jobs", "{\"service\":\"simulation\"}", TOKEN_READ);
    assert_int_equal(r.status, 403);
    reply_free(&r);

    char mine[KILN_JOB_ID_MAX], theirs[KILN_JOB_ID_MAX], path[160];
    submit("{}", TOKEN_SUBMIT, mine);
    submit("{}", TOKEN_ADMIN, theirs);
    snprintf(path, sizeof path, "/v1/jobs/%s", theirs);
    r = http("DELETE", path, NULL, TOKEN_SUBMIT); /* not its own job */
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = http("DELETE", path, NULL, TOKEN_READ);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s", mine);
    r = http("DELETE", path, NULL, TOKEN_SUBMIT);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s", theirs);
    r = http("DELETE", path, NULL, TOKEN_ADMIN);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    r = http("GET", path, NULL, TOKEN_READ);
    assert_int_equal(r.status, 200);
    reply_free(&r);

    char *log = slurp(f->hub.log_path);
    assert_non_null(strstr(log, "listening"));
    assert_null(strstr(log, TOKEN_ADMIN));
    assert_null(strstr(log, TOKEN_SUBMIT));
    assert_null(strstr(log, TOKEN_READ));
    assert_null(strstr(log, "0123456789abcdef"));
    free(log);
    f->passed = true;
}

static void a_token_over_its_rate_limit_gets_429_and_others_are_unaffected(void **state)
{
    fixture_t *f = *state;
    start_hub(f, TOKENS_ENV, "KILN_HUB_RATE_LIMIT_PER_S=5");
    int ok = 0, limited = 0;
    for (int i = 0; i < 40; i++) {
        http_reply_t r = http("GET", "/v1/queues", NULL, TOKEN_READ);
        ok += r.status == 200;
        if (r.status == 429) {
            limited++;
            assert_string_equal(jstr(json_object_get(r.json, "error"), "code"), "rate_limited");
        }
        reply_free(&r);
    }
    /* A burst of at most 5 (plus what refills meanwhile) passes; the rest wait. */
    assert_true(ok >= 5 && ok < 40);
    assert_int_equal(ok + limited, 40);
    http_reply_t r = http("GET", "/v1/queues", NULL, TOKEN_ADMIN);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    f->passed = true;
}

static void bad_requests_get_the_right_status_and_name_the_field(void **state)
{
    fixture_t *f = *state;
    start_hub(f, "KILN_HUB_MAX_BODY_BYTES=4096", NULL);
    http_reply_t r = http("POST", "/v1/jobs", "{\"service\": ", NULL);
    assert_int_equal(r.status, 400);
    assert_string_equal(jstr(json_object_get(r.json, "error"), "code"), "bad_request");
    reply_free(&r);
    r = http("POST", "/v1/jobs", "{\"service\":\"simulation\",\"priority\":5000}", NULL);
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "priority");
    reply_free(&r);
    r = http("POST", "/v1/jobs", "{\"service\":\"simulation\",\"colour\":1}", NULL);
    assert_int_equal(r.status, 422);
    assert_non_null(strstr(r.body, "colour"));
    reply_free(&r);
    r = http("POST", "/v1/jobs", "[1,2]", NULL);
    assert_int_equal(r.status, 422);
    reply_free(&r);
    r = http("POST", "/v1/jobs", "{\"service\":\"simulation\",\"machine\":7}", NULL);
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "machine");
    reply_free(&r);

    size_t big = 64 * 1024;
    char *body = malloc(big + 64);
    int n = snprintf(body, big + 64, "{\"service\":\"simulation\",\"payload\":\"");
    memset(body + n, 'x', big);
    strcpy(body + n + big, "\"}");
    r = http("POST", "/v1/jobs", body, NULL);
    assert_int_equal(r.status, 413);
    assert_string_equal(jstr(json_object_get(r.json, "error"), "code"), "payload_too_large");
    reply_free(&r);
    r = http_full("POST", "/v1/jobs", body, NULL, true);
    assert_int_equal(r.status, 413);
    reply_free(&r);
    free(body);

    r = http("GET", "/v1/jobs/simulation.424242", NULL, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = http("GET", "/v1/jobs/..%2f..%2fetc", NULL, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = http("GET", "/v1/nothing-here", NULL, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = http("GET", "/v1/jobs/simulation.1?wait=1000", NULL, NULL);
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "wait");
    reply_free(&r);
    r = http("GET", "/v1/jobs?limit=0", NULL, NULL);
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "limit");
    reply_free(&r);
    r = http("PUT", "/v1/jobs", "{}", NULL);
    assert_int_equal(r.status, 405);
    reply_free(&r);
    /* The hub still serves after all that. */
    r = http("POST", "/v1/jobs", "{\"service\":\"simulation\"}", NULL);
    assert_int_equal(r.status, 201);
    reply_free(&r);
    f->passed = true;
}

static void hostile_event_cursors_and_filters_are_refused_with_the_field(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    static const char *const bad[] = {"/v1/events?since=simulation%3Dnot-an-id",
                                      "/v1/events?since=%3D1-0", "/v1/events?since=Upper%3D1-0",
                                      "/v1/events?since=a%3D1-0,a%3D2-0",
                                      "/v1/events?job=not-a-job-id"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_reply_t r = http("GET", bad[i], NULL, NULL);
        if (r.status != 422)
            fprintf(stderr, "%s: %ld %s\n", bad[i], r.status, r.body ? r.body : "");
        assert_int_equal(r.status, 422);
        reply_free(&r);
    }
    /* A cursor past the limit, as a query and as Last-Event-ID. */
    char *path = malloc(KILN_HUB_CURSOR_MAX + 64);
    int n = snprintf(path, KILN_HUB_CURSOR_MAX + 64, "/v1/events?since=");
    memset(path + n, 'a', KILN_HUB_CURSOR_MAX + 8);
    path[n + KILN_HUB_CURSOR_MAX + 8] = '\0';
    http_reply_t r = http("GET", path, NULL, NULL);
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "since");
    reply_free(&r);
    free(path);
    r = http("GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    f->passed = true;
}

static void without_tokens_the_hub_listens_on_loopback_only(void **state)
{
    fixture_t *f = *state;
    snprintf(f->hub.log_path, sizeof f->hub.log_path, "%s/%02d-hub.log", log_dir, f->seq);
    char *argv[] = {KILN_BIN,    "hub",          "--redis", redis.url, "--listen",
                    "0.0.0.0:0", "--log-format", "text",    NULL};
    f->hub.pid = kiln_test_spawn(argv, NULL, f->hub.log_path);
    assert_true(kiln_test_log_wait(f->hub.log_path, "kiln hub listening on http://", 1, 10000));
    char *log = slurp(f->hub.log_path);
    assert_non_null(strstr(log, "kiln hub listening on http://127.0.0.1:"));
    assert_non_null(strstr(log, "(loopback only) instead of 0.0.0.0:0"));
    assert_non_null(strstr(log, "every request is allowed"));
    free(log);
    f->passed = true;
}

static void the_command_explains_itself_and_fails_clearly(void **state)
{
    fixture_t *f = *state;
    char out[8192];
    char *help[] = {KILN_BIN, "hub", "--help", NULL};
    assert_int_equal(kiln_test_run(help, NULL, out, sizeof out), 0);
    assert_non_null(strstr(out, "usage: kiln hub"));
    char *bad_flag[] = {KILN_BIN, "hub", "--threads", "2", NULL};
    assert_int_equal(kiln_test_run(bad_flag, NULL, out, sizeof out), 2);
    char *no_redis[] = {KILN_BIN,   "hub",         "--redis", "redis://127.0.0.1:1",
                        "--listen", "127.0.0.1:0", NULL};
    assert_int_equal(kiln_test_run(no_redis, NULL, out, sizeof out), 3);
    f->passed = true;
}

static void redis_down_answers_503_and_the_hub_recovers(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    kiln_test_redis_stop(&redis);
    http_reply_t r = http("GET", "/v1/queues", NULL, NULL);
    assert_int_equal(r.status, 503);
    assert_string_equal(jstr(json_object_get(r.json, "error"), "code"), "unavailable");
    reply_free(&r);
    r = http("GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 503);
    reply_free(&r);
    kiln_test_redis_restart(&redis);
    r = http("GET", "/v1/queues", NULL, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    f->passed = true;
}

static void job_events_stream_in_order_and_end_at_completion(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    start_worker(f);
    char id[KILN_JOB_ID_MAX], path[160];
    submit("{\"duration_ms\":300,\"steps\":3}", NULL, id);
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    sse_t s = {.events = json_array()};
    sse_read(&s, path, NULL, 20000);
    assert_true(s.ended);
    /* submitted, started, progress (coalesced: at least one, rising),
     * completed; all of this job. */
    size_t n = json_array_size(s.events);
    if (n < 4) {
        char *dump = json_dumps(s.events, 0);
        fprintf(stderr, "events: %s\n", dump);
        free(dump);
    }
    assert_true(n >= 4);
    assert_string_equal(jstr(json_array_get(s.events, 0), "type"), "submitted");
    assert_string_equal(jstr(json_array_get(s.events, 1), "type"), "started");
    assert_string_equal(jstr(json_array_get(s.events, n - 1), "type"), "completed");
    double last = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(s.events, i);
        assert_string_equal(jstr(e, "job"), id);
        if (i >= 2 && i < n - 1) {
            assert_string_equal(jstr(e, "type"), "progress");
            double p = strtod(jstr(e, "progress"), NULL);
            assert_true(p > last);
            last = p;
        }
    }
    /* A finished job's stream replays its events and ends at once. */
    json_decref(s.events);
    free(s.buf);
    s = (sse_t){.events = json_array()};
    sse_read(&s, path, NULL, 5000);
    assert_true(s.ended);
    assert_int_equal(json_array_size(s.events), n);
    json_decref(s.events);
    free(s.buf);
    f->passed = true;
}

/* Submits n jobs straight through the broker (the hub may be down). */
static void broker_submit(int n, json_t *ids)
{
    kiln_config_t cfg;
    kiln_config_init_defaults(&cfg);
    kiln_broker_options_t opts;
    kiln_broker_options_from_config(&opts, &cfg);
    opts.redis_url = redis.url;
    kiln_broker_t *b;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_connect(&opts, &b, &err), 0);
    for (int i = 0; i < n; i++) {
        kiln_job_spec_t spec;
        assert_int_equal(kiln_job_spec_parse("{\"service\":\"simulation\"}", 24, 0, &spec, &err),
                         0);
        char id[KILN_JOB_ID_MAX];
        assert_int_equal(kiln_broker_submit(b, &spec, id, NULL, &err), 0);
        json_array_append_new(ids, json_string(id));
        kiln_job_spec_clear(&spec);
    }
    kiln_broker_free(b);
    kiln_config_free(&cfg);
}

typedef struct sse_thread {
    pthread_t thread;
    sse_t s;
    char path[8192];
    const char *last_event_id;
} sse_thread_t;

static void *sse_thread_main(void *arg)
{
    sse_thread_t *t = arg;
    sse_read(&t->s, t->path, t->last_event_id, 30000);
    return NULL;
}

static bool one_event_client(void *ctx)
{
    (void)ctx;
    http_reply_t r = http("GET", "/metrics", NULL, NULL);
    bool ok = r.body && strstr(r.body, "\nkiln_hub_event_clients 1\n");
    reply_free(&r);
    return ok;
}

/* Follows /v1/events (from cursor, may be NULL) until n events are in,
 * submitting live_jobs more through the hub once the client is on. */
static void follow(const char *cursor, size_t n, int live_jobs, json_t *ids, json_t *seen,
                   char *last_cursor)
{
    sse_thread_t t = {.s = {.events = json_array(), .stop_after = n}, .last_event_id = cursor};
    snprintf(t.path, sizeof t.path, "/v1/events?service=simulation");
    pthread_create(&t.thread, NULL, sse_thread_main, &t);
    assert_true(kiln_test_wait_until(one_event_client, NULL, 10000));
    for (int i = 0; i < live_jobs; i++) {
        char id[KILN_JOB_ID_MAX];
        submit("{}", NULL, id);
        json_array_append_new(ids, json_string(id));
    }
    pthread_join(t.thread, NULL);
    size_t i;
    json_t *e;
    json_array_foreach(t.s.events, i, e)
    {
        assert_string_equal(jstr(e, "type"), "submitted");
        json_array_append_new(seen, json_string(jstr(e, "job")));
    }
    if (json_array_size(t.s.events) != n) {
        char *dump = json_dumps(t.s.events, 0);
        fprintf(stderr, "events: %s\nids: ", dump);
        free(dump);
        dump = json_dumps(ids, 0);
        fprintf(stderr, "%s\n", dump);
        free(dump);
    }
    assert_int_equal(json_array_size(t.s.events), n);
    snprintf(last_cursor, 4096, "%s", t.s.last_cursor);
    json_decref(t.s.events);
    free(t.s.buf);
}

static void events_resume_after_a_hub_restart_with_nothing_missed_or_repeated(void **state)
{
    fixture_t *f = *state;
    json_t *ids = json_array(), *seen = json_array();
    broker_submit(1, ids); /* the queue exists before the hub starts */
    start_hub(f, NULL, NULL);
    char cursor[4096];
    /* From the start of the stream, then live. */
    follow("simulation=0-0", 3, 2, ids, seen, cursor);
    stop_hub(f);
    broker_submit(4, ids); /* while no hub runs */
    start_hub(f, NULL, NULL);
    follow(cursor, 6, 2, ids, seen, cursor);
    assert_int_equal(json_array_size(seen), 9);
    assert_true(json_equal(ids, seen)); /* every job once, in order */
    json_decref(ids);
    json_decref(seen);
    f->passed = true;
}

static void events_filter_by_machine_follows_jobs_started_there(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    start_worker_env(f, "KILN_MACHINE_ID=desktop");
    sse_thread_t t = {.s = {.events = json_array(), .stop_type = "completed"}};
    snprintf(t.path, sizeof t.path, "/v1/events?machine=desktop");
    pthread_create(&t.thread, NULL, sse_thread_main, &t);
    assert_true(kiln_test_wait_until(one_event_client, NULL, 10000));
    char id[KILN_JOB_ID_MAX];
    submit("{\"duration_ms\":200,\"steps\":2}", NULL, id);
    pthread_join(t.thread, NULL);
    /* started, progress, completed: the submitted event names no machine. */
    size_t n = json_array_size(t.s.events);
    assert_true(n >= 3);
    assert_string_equal(jstr(json_array_get(t.s.events, 0), "type"), "started");
    assert_string_equal(jstr(json_array_get(t.s.events, 1), "type"), "progress");
    assert_string_equal(jstr(json_array_get(t.s.events, n - 1), "type"), "completed");
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(jstr(json_array_get(t.s.events, i), "machine"), "desktop");
        assert_string_equal(jstr(json_array_get(t.s.events, i), "job"), id);
    }
    json_decref(t.s.events);
    free(t.s.buf);
    f->passed = true;
}

/* ---- WebSocket client ---------------------------------------------------------------- */

typedef struct ws_inbox {
    pthread_mutex_t mu;
    json_t *messages;
    bool closed;
    char close_reason[160];
} ws_inbox_t;

static int ws_on_data(struct mg_connection *conn, int flags, char *data, size_t len, void *ctx)
{
    ws_inbox_t *in = ctx;
    int opcode = flags & 0xf;
    pthread_mutex_lock(&in->mu);
    if (opcode == MG_WEBSOCKET_OPCODE_TEXT)
        json_array_append_new(in->messages, json_loadb(data, len, 0, NULL));
    else if (opcode == MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE && len >= 2)
        snprintf(in->close_reason, sizeof in->close_reason, "%.*s", (int)len - 2, data + 2);
    pthread_mutex_unlock(&in->mu);
    return opcode != MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE;
}

static void ws_on_close(const struct mg_connection *conn, void *ctx)
{
    ws_inbox_t *in = ctx;
    pthread_mutex_lock(&in->mu);
    in->closed = true;
    pthread_mutex_unlock(&in->mu);
}

static struct mg_connection *ws_open(const char *path, ws_inbox_t *in)
{
    pthread_mutex_init(&in->mu, NULL);
    in->messages = json_array();
    int port = atoi(strrchr(F->url, ':') + 1);
    char error[256] = "";
    struct mg_connection *conn = mg_connect_websocket_client(
        "127.0.0.1", port, 0, error, sizeof error, path, NULL, ws_on_data, ws_on_close, in);
    if (!conn)
        fprintf(stderr, "websocket %s: %s\n", path, error);
    assert_non_null(conn);
    return conn;
}

typedef struct inbox_wait {
    ws_inbox_t *in;
    const char *type; /* a message with this "type" (or, NULL, count messages) */
    size_t count;
} inbox_wait_t;

static bool inbox_has(void *ctx)
{
    inbox_wait_t *w = ctx;
    pthread_mutex_lock(&w->in->mu);
    size_t n = 0, i;
    json_t *m;
    json_array_foreach(w->in->messages, i, m)
    {
        n += !w->type || strcmp(jstr(m, "type"), w->type) == 0;
    }
    pthread_mutex_unlock(&w->in->mu);
    return n >= w->count;
}

static bool n_event_clients(void *ctx)
{
    char needle[64];
    snprintf(needle, sizeof needle, "\nkiln_hub_event_clients %d\n", *(int *)ctx);
    http_reply_t r = http("GET", "/metrics", NULL, NULL);
    bool ok = r.body && strstr(r.body, needle);
    reply_free(&r);
    return ok;
}

/* A job that ran while nobody listened: its replayed events name its
 * machine, from the start and from a cursor past its start alike. */
static void replayed_events_name_the_machine_of_a_job_run_while_nobody_listened(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    start_worker_env(f, "KILN_MACHINE_ID=desktop");
    char id[KILN_JOB_ID_MAX], path[8192];
    submit("{\"duration_ms\":200,\"steps\":2}", NULL, id);
    snprintf(path, sizeof path, "/v1/jobs/%s?wait=20", id);
    http_reply_t r = http("GET", path, NULL, NULL);
    assert_string_equal(jstr(r.json, "state"), "completed");
    reply_free(&r);

    sse_t all = {.events = json_array(), .stop_type = "completed"};
    sse_read(&all, "/v1/events?machine=desktop&since=simulation%3D0-0", NULL, 10000);
    sse_t to_start = {.events = json_array(), .stop_type = "started"};
    sse_read(&to_start, "/v1/events?since=simulation%3D0-0", NULL, 10000);
    char *cursor = curl_easy_escape(NULL, to_start.last_cursor, 0);
    snprintf(path, sizeof path, "/v1/events?machine=desktop&since=%s", cursor);
    curl_free(cursor);
    sse_t after_start = {.events = json_array(), .stop_type = "completed"};
    sse_read(&after_start, path, NULL, 10000);

    assert_string_equal(jstr(json_array_get(all.events, 0), "type"), "started");
    assert_string_equal(jstr(json_array_get(after_start.events, 0), "type"), "progress");
    sse_t *reads[] = {&all, &after_start};
    for (size_t k = 0; k < 2; k++) {
        size_t n = json_array_size(reads[k]->events);
        assert_true(n >= 2);
        assert_string_equal(jstr(json_array_get(reads[k]->events, n - 1), "type"), "completed");
        for (size_t i = 0; i < n; i++) {
            assert_string_equal(jstr(json_array_get(reads[k]->events, i), "machine"), "desktop");
            assert_string_equal(jstr(json_array_get(reads[k]->events, i), "job"), id);
        }
    }
    sse_t *each[] = {&all, &to_start, &after_start};
    for (size_t k = 0; k < 3; k++) {
        json_decref(each[k]->events);
        free(each[k]->buf);
    }
    f->passed = true;
}

static void live_clients_beyond_the_threads_left_get_503(void **state)
{
    fixture_t *f = *state;
    start_hub(f, "KILN_HUB_THREADS=10", NULL); /* 8 stay for requests: 2 live clients */
    ws_inbox_t a = {0}, b = {0};
    struct mg_connection *ca = ws_open("/v1/events/ws", &a);
    struct mg_connection *cb = ws_open("/v1/events/ws", &b);
    int two = 2;
    assert_true(kiln_test_wait_until(n_event_clients, &two, 10000));
    http_reply_t r = http("GET", "/v1/events", NULL, NULL);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "hub.threads"));
    reply_free(&r);
    mg_close_connection(ca);
    int one = 1;
    assert_true(kiln_test_wait_until(n_event_clients, &one, 10000));
    r = http("GET", "/v1/queues", NULL, NULL); /* other requests were served all along */
    assert_int_equal(r.status, 200);
    reply_free(&r);
    mg_close_connection(cb);
    json_decref(a.messages);
    json_decref(b.messages);
    f->passed = true;
}

static bool one_client_dropped(void *ctx)
{
    (void)ctx;
    http_reply_t r = http("GET", "/metrics", NULL, NULL);
    bool ok = r.body && strstr(r.body, "\nkiln_hub_event_clients_dropped_total 1\n") &&
              strstr(r.body, "\nkiln_hub_event_clients 0\n");
    reply_free(&r);
    return ok;
}

static void a_client_that_stops_reading_is_dropped_not_waited_for(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    /* A raw socket that asks for the stream and never reads it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    addr.sin_port = htons((uint16_t)atoi(strrchr(f->url, ':') + 1));
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    const char *get = "GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(write(fd, get, strlen(get)), (ssize_t)strlen(get));
    assert_true(kiln_test_wait_until(one_event_client, NULL, 10000));
    /* Far more events than socket buffers and the client's queue hold. */
    kiln_config_t cfg;
    kiln_config_init_defaults(&cfg);
    kiln_broker_options_t opts;
    kiln_broker_options_from_config(&opts, &cfg);
    opts.redis_url = redis.url;
    kiln_broker_t *b;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_connect(&opts, &b, &err), 0);
    static kiln_job_spec_t specs[1000];
    static char ids[1000][KILN_JOB_ID_MAX];
    for (int i = 0; i < 1000; i++)
        assert_int_equal(kiln_job_spec_parse("{\"service\":\"flood\"}", 19, 0, &specs[i], &err), 0);
    for (int round = 0; round < 30 && !one_client_dropped(NULL); round++)
        assert_int_equal(kiln_broker_submit_batch(b, specs, 1000, ids, &err), 0);
    for (int i = 0; i < 1000; i++)
        kiln_job_spec_clear(&specs[i]);
    kiln_broker_free(b);
    kiln_config_free(&cfg);
    assert_true(kiln_test_wait_until(one_client_dropped, NULL, 20000));
    /* Others are served meanwhile. */
    http_reply_t r = http("GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    close(fd);
    f->passed = true;
}

static void compat_api_accepts_the_earlier_clients_jobs(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    start_worker(f);
    http_reply_t r = http("POST", "/api/jobs",
                          "{\"service_required\":\"simulation\",\"priority\":5,\"payload\":"
                          "{\"duration_ms\":100,\"steps\":2},\"requirements\":{},"
                          "\"customer_id\":\"acme\",\"max_retries\":2}",
                          NULL);
    assert_int_equal(r.status, 201);
    assert_true(json_is_true(json_object_get(r.json, "success")));
    char id[KILN_JOB_ID_MAX], path[160];
    snprintf(id, sizeof id, "%s", jstr(r.json, "job_id"));
    reply_free(&r);
    state_wait_t w = {id, "completed"};
    assert_true(kiln_test_wait_until(job_in_state, &w, 10000));
    snprintf(path, sizeof path, "/api/jobs/%s", id);
    r = http("GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    json_t *job = json_object_get(r.json, "job");
    assert_string_equal(jstr(job, "status"), "completed");
    assert_string_equal(jstr(job, "service_required"), "simulation");
    assert_string_equal(jstr(job, "customer_id"), "acme");
    assert_int_equal(json_integer_value(json_object_get(job, "max_retries")), 2);
    assert_true(json_is_string(json_object_get(job, "completed_at")));
    reply_free(&r);

    r = http("POST", "/api/jobs",
             "{\"service_required\":\"simulation\",\"requirements\":{\"positive_requirements\":"
             "{\"hardware\":{\"gpu_memory_gb\":\"lots\"}}}}",
             NULL);
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r),
                        "requirements.positive_requirements.hardware.gpu_memory_gb");
    reply_free(&r);
    r = http("POST", "/api/jobs", "{\"priority\":1}", NULL);
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "service_required");
    reply_free(&r);
    f->passed = true;
}

static void compat_websocket_submit_job_gets_accepted_progress_and_complete(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    start_worker(f);
    ws_inbox_t in = {0};
    struct mg_connection *conn = ws_open("/ws/client/client-1", &in);
    const char *msg = "{\"type\":\"submit_job\",\"message_id\":\"m1\",\"service_required\":"
                      "\"simulation\",\"priority\":1,\"payload\":{\"duration_ms\":200,"
                      "\"steps\":2}}";
    mg_websocket_client_write(conn, MG_WEBSOCKET_OPCODE_TEXT, msg, strlen(msg));
    inbox_wait_t w = {&in, "complete_job", 1};
    assert_true(kiln_test_wait_until(inbox_has, &w, 15000));
    pthread_mutex_lock(&in.mu);
    json_t *first = json_array_get(in.messages, 0);
    assert_string_equal(jstr(first, "type"), "job_accepted");
    assert_string_equal(jstr(first, "message_id"), "m1");
    const char *id = jstr(first, "job_id");
    size_t progress = 0, i;
    json_t *m;
    json_array_foreach(in.messages, i, m)
    {
        if (strcmp(jstr(m, "type"), "update_job_progress") == 0) {
            progress++;
            assert_string_equal(jstr(m, "job_id"), id);
        }
    }
    json_t *last = json_array_get(in.messages, json_array_size(in.messages) - 1);
    assert_string_equal(jstr(last, "type"), "complete_job");
    assert_string_equal(jstr(last, "job_id"), id);
    assert_true(json_is_true(json_object_get(json_object_get(last, "result"), "success")));
    assert_true(progress >= 2);
    pthread_mutex_unlock(&in.mu);

    const char *bad = "{\"type\":\"submit_job\",\"message_id\":\"m2\"}";
    mg_websocket_client_write(conn, MG_WEBSOCKET_OPCODE_TEXT, bad, strlen(bad));
    w = (inbox_wait_t){&in, "error", 1};
    assert_true(kiln_test_wait_until(inbox_has, &w, 5000));
    mg_close_connection(conn);
    json_decref(in.messages);
    f->passed = true;
}

/* With nobody subscribed the hub reads no events; the first client after
 * such a time still gets exactly the live events, and a cursor from before
 * it still catches up on everything. */
static void events_after_a_time_with_no_client_are_live_only_or_caught_up_by_cursor(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    json_t *before = json_array(), *live = json_array(), *seen = json_array();
    for (int i = 0; i < 2; i++) { /* nobody listens yet */
        char id[KILN_JOB_ID_MAX];
        submit("{}", NULL, id);
        json_array_append_new(before, json_string(id));
    }
    char cursor[4096];
    follow(NULL, 2, 2, live, seen, cursor);
    assert_true(json_equal(live, seen)); /* not the jobs from before it came */
    json_t *missed = json_array(), *resumed = json_array();
    for (int i = 0; i < 3; i++) { /* nobody listens again */
        char id[KILN_JOB_ID_MAX];
        submit("{}", NULL, id);
        json_array_append_new(missed, json_string(id));
    }
    follow(cursor, 4, 1, missed, resumed, cursor);
    assert_true(json_equal(missed, resumed)); /* the three missed, then the live one */
    json_decref(before);
    json_decref(live);
    json_decref(seen);
    json_decref(missed);
    json_decref(resumed);
    f->passed = true;
}

static void events_websocket_delivers_filtered_events_and_resumes(void **state)
{
    fixture_t *f = *state;
    json_t *ids = json_array();
    broker_submit(2, ids);
    start_hub(f, NULL, NULL);
    ws_inbox_t in = {0};
    struct mg_connection *conn = ws_open("/v1/events/ws?since=simulation%3D0-0", &in);
    inbox_wait_t w = {&in, "submitted", 2};
    assert_true(kiln_test_wait_until(inbox_has, &w, 10000));
    assert_true(kiln_test_wait_until(one_event_client, NULL, 10000));
    char id[KILN_JOB_ID_MAX];
    submit("{}", NULL, id);
    w.count = 3;
    assert_true(kiln_test_wait_until(inbox_has, &w, 10000));
    pthread_mutex_lock(&in.mu);
    for (size_t i = 0; i < 2; i++)
        assert_string_equal(jstr(json_array_get(in.messages, i), "job"),
                            json_string_value(json_array_get(ids, i)));
    assert_string_equal(jstr(json_array_get(in.messages, 2), "job"), id);
    assert_non_null(strstr(jstr(json_array_get(in.messages, 2), "cursor"), "simulation="));
    pthread_mutex_unlock(&in.mu);
    mg_close_connection(conn);
    json_decref(in.messages);
    json_decref(ids);
    f->passed = true;
}

static void metrics_pass_promtool_check(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    char id[KILN_JOB_ID_MAX];
    submit("{}", NULL, id);
    http_reply_t r = http("GET", "/metrics", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "kiln_queue_jobs{service=\"simulation\",state=\"pending\"} 1"));
    char *argv[] = {"/usr/bin/promtool", "check", "metrics", NULL};
    char out[4096];
    int status = kiln_test_run(argv, r.body, out, sizeof out);
    if (status != 0)
        fprintf(stderr, "promtool: %s\n%s\n", out, r.body);
    assert_int_equal(status, 0);
    reply_free(&r);
    f->passed = true;
}

static void openapi_document_lists_every_route(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    http_reply_t r = http("GET", "/openapi.json", NULL, NULL);
    assert_int_equal(r.status, 200);
    json_t *paths = json_object_get(r.json, "paths");
    assert_non_null(paths);
    for (size_t i = 0; i < hub_n_routes; i++) {
        char method[16];
        size_t k = 0;
        for (; hub_routes[i].method[k] && k < sizeof method - 1; k++)
            method[k] = (char)(hub_routes[i].method[k] | 0x20);
        method[k] = '\0';
        json_t *path = json_object_get(paths, hub_routes[i].pattern);
        if (!path || !json_object_get(path, method))
            fprintf(stderr, "openapi.json lacks %s %s\n", method, hub_routes[i].pattern);
        assert_non_null(path);
        assert_non_null(json_object_get(path, method));
    }
    assert_non_null(json_object_get(paths, "/v1/events/ws"));
    assert_non_null(json_object_get(paths, "/ws/client/{clientId}"));
    reply_free(&r);
    f->passed = true;
}

static void cors_preflight_and_headers_follow_the_configured_origins(void **state)
{
    fixture_t *f = *state;
    start_hub(f, "KILN_HUB_CORS_ORIGINS=https://app.example.com", NULL);
    char url[128];
    snprintf(url, sizeof url, "%s/v1/jobs", f->url);
    for (int allowed = 1; allowed >= 0; allowed--) {
        CURL *curl = curl_easy_init();
        struct curl_slist *h = curl_slist_append(NULL, allowed ? "Origin: https://app.example.com"
                                                               : "Origin: https://evil.example");
        h = curl_slist_append(h, "Access-Control-Request-Method: POST");
        http_reply_t r = {0};
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "OPTIONS");
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, kiln_test_http_collect);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, &r);
        assert_int_equal(curl_easy_perform(curl), CURLE_OK);
        long status = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        assert_int_equal(status, 204);
        char *allow = strstr(r.body, "Access-Control-Allow-Origin: https://app.example.com");
        assert_true(allowed ? allow != NULL : allow == NULL);
        free(r.body);
        curl_slist_free_all(h);
        curl_easy_cleanup(curl);
    }
    f->passed = true;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    mg_init_library(MG_FEATURES_WEBSOCKET);
    kiln_test_tmpdir(log_dir, sizeof log_dir);
    kiln_test_redis_start(&redis, false);
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(submitted_job_runs_and_the_long_poll_returns_its_result),
        T(long_poll_of_an_unfinished_job_returns_it_after_the_wait),
        T(concurrent_submits_each_get_their_own_job),
        T(list_with_cursor_pagination_covers_every_job_exactly_once),
        T(cancel_works_on_pending_and_running_jobs_and_retry_revives_a_dead_one),
        T(tokens_and_roles_decide_what_each_caller_may_do),
        T(a_token_over_its_rate_limit_gets_429_and_others_are_unaffected),
        T(bad_requests_get_the_right_status_and_name_the_field),
        T(hostile_event_cursors_and_filters_are_refused_with_the_field),
        T(the_command_explains_itself_and_fails_clearly),
        T(without_tokens_the_hub_listens_on_loopback_only),
        T(redis_down_answers_503_and_the_hub_recovers),
        T(job_events_stream_in_order_and_end_at_completion),
        T(events_resume_after_a_hub_restart_with_nothing_missed_or_repeated),
        T(events_websocket_delivers_filtered_events_and_resumes),
        T(events_after_a_time_with_no_client_are_live_only_or_caught_up_by_cursor),
        T(events_filter_by_machine_follows_jobs_started_there),
        T(replayed_events_name_the_machine_of_a_job_run_while_nobody_listened),
        T(live_clients_beyond_the_threads_left_get_503),
        T(a_client_that_stops_reading_is_dropped_not_waited_for),
        T(compat_api_accepts_the_earlier_clients_jobs),
        T(compat_websocket_submit_job_gets_accepted_progress_and_complete),
        T(metrics_pass_promtool_check),
        T(openapi_document_lists_every_route),
        T(cors_preflight_and_headers_follow_the_configured_origins),
#undef T
    };
    if (getenv("KILN_TEST_FILTER")) /* e.g. KILN_TEST_FILTER='*resume*' */
        cmocka_set_test_filter(getenv("KILN_TEST_FILTER"));
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    kiln_test_redis_destroy(&redis);
    mg_exit_library();
    curl_global_cleanup();
    return failed;
}

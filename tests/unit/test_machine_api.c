/*
 * The machine API over real HTTP (libcurl) against fake hooks. The libuv
 * loop runs in a thread of the test, as in the agent; the hooks check they
 * are called on it. Nothing here sleeps for a fixed time: the test waits
 * for conditions (kiln_test_wait_until) and bounds every HTTP call.
 */
#include "kiln/log.h"
#include "kiln/machine_api.h"
#include "kiln_test.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "agent/metrics.h"
#include "agent/sysinfo.h"

#define TOKEN        "s3cret-token-for-tests"
#define HTTP_TIMEOUT 10000 /* ms; a hang fails the test instead of blocking it */
#define WAIT_MS      10000
#define BODY_MAX     (256 * 1024)
#define SLOW_HOOK_MS 300

/* ---- the loop thread and fake hooks ---------------------------------------- */

typedef struct fixture {
    uv_loop_t loop;
    uv_async_t jobs;
    pthread_t loop_thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    void (*job)(struct fixture *fx, void *arg); /* guarded by mu */
    void *job_arg;
    bool job_done;

    kiln_machine_api_t *api;
    char url[64];
    const char *api_token; /* what the running server was started with */
    long api_timeout_ms;

    /* Fake agent state. */
    atomic_int hook_calls, wrong_thread, logs_calls, action_calls;
    atomic_bool healthy, ready, following, unfollowed, block_status, status_entered;
    char last_action[64];               /* "service:action", guarded by mu */
    kiln_machine_api_line_cb follow_cb; /* loop thread only */
    void *follow_ctx;
    char follow_name[80];
} fixture_t;

static void note_hook(fixture_t *fx)
{
    atomic_fetch_add(&fx->hook_calls, 1);
    if (!pthread_equal(pthread_self(), fx->loop_thread))
        atomic_fetch_add(&fx->wrong_thread, 1);
}

static json_t *fake_status(void *ctx)
{
    fixture_t *fx = ctx;
    note_hook(fx);
    if (atomic_load(&fx->block_status)) {
        /* A loop stuck in a hook: held until the test lets go. */
        pthread_mutex_lock(&fx->mu);
        atomic_store(&fx->status_entered, true);
        while (atomic_load(&fx->block_status))
            pthread_cond_wait(&fx->cond, &fx->mu);
        pthread_mutex_unlock(&fx->mu);
    }
    return json_pack("{s:s, s:s, s:s, s:[{s:s, s:s, s:i, s:I, s:i, s:b, s:f, s:f},"
                     " {s:s, s:s, s:i, s:I, s:i, s:b, s:f, s:f}],"
                     " s:[{s:i, s:s, s:s, s:I, s:I, s:i, s:i}]}",
                     "machine_id", "test-machine", "machine_type", "gpu", "state", "ready",
                     "services", "name", "comfyui-gpu0", "state", "running", "pid", 123,
                     "uptime_ms", (json_int_t)60000, "restarts", 2, "ready", 1, "rss_mb", 512.5,
                     "cpu_pct", 12.5, "name", "worker-gpu0", "state", "backoff", "pid", 0,
                     "uptime_ms", (json_int_t)0, "restarts", 7, "ready", 0, "rss_mb", 0.0,
                     "cpu_pct", 0.0, "gpus", "index", 0, "name", "NVIDIA Test GPU", "uuid",
                     "GPU-\"q\"\\x", "memory_total_mb", (json_int_t)24576, "memory_used_mb",
                     (json_int_t)4200, "utilization_pct", 37, "temperature_c", 61);
}

static bool fake_ready(void *ctx)
{
    fixture_t *fx = ctx;
    note_hook(fx);
    return atomic_load(&fx->ready);
}

static json_t *fake_health(void *ctx, bool *healthy)
{
    fixture_t *fx = ctx;
    note_hook(fx);
    *healthy = atomic_load(&fx->healthy);
    return json_pack("{s:{s:[{s:s}]}}", "checks", "services:ready", "status",
                     *healthy ? "pass" : "fail");
}

static json_t *fake_service_status(void *ctx, const char *name)
{
    json_t *status = fake_status(ctx), *svc, *found = NULL;
    size_t i;
    json_array_foreach(json_object_get(status, "services"), i, svc)
    {
        if (strcmp(json_string_value(json_object_get(svc, "name")), name) == 0)
            found = json_incref(svc);
    }
    json_decref(status);
    return found;
}

static bool known_service(const char *name)
{
    return strcmp(name, "comfyui-gpu0") == 0 || strcmp(name, "worker-gpu0") == 0;
}

static void record_action(fixture_t *fx, const char *service, const char *action)
{
    note_hook(fx);
    atomic_fetch_add(&fx->action_calls, 1);
    pthread_mutex_lock(&fx->mu);
    snprintf(fx->last_action, sizeof fx->last_action, "%s:%s", service, action);
    pthread_mutex_unlock(&fx->mu);
}

static int fake_service_action(void *ctx, const char *name, const char *action, kiln_err_t *err)
{
    record_action(ctx, name, action);
    if (!known_service(name))
        return KILN_ENOTFOUND;
    return 0;
}

static int fake_reload(void *ctx, kiln_err_t *err)
{
    record_action(ctx, "machine", "reload");
    return 0;
}

static int fake_restart_machine(void *ctx, kiln_err_t *err)
{
    record_action(ctx, "machine", "restart");
    return 0;
}

static int fake_refresh(void *ctx, kiln_err_t *err)
{
    record_action(ctx, "machine", "refresh");
    return 0;
}

static json_t *fake_logs(void *ctx, const char *name, size_t lines)
{
    fixture_t *fx = ctx;
    note_hook(fx);
    atomic_fetch_add(&fx->logs_calls, 1);
    if (!known_service(name))
        return NULL;
    json_t *all =
        json_pack("[{s:s, s:s, s:s}, {s:s, s:s, s:s}]", "time", "2026-11-22T06:00:00.000Z",
                  "stream", "stdout", "line", "first line", "time", "2026-11-22T06:00:01.000Z",
                  "stream", "stderr", "line", "second line");
    while (json_array_size(all) > lines)
        json_array_remove(all, 0);
    return all;
}

static int fake_follow(void *ctx, const char *name, kiln_machine_api_line_cb cb, void *cb_ctx)
{
    fixture_t *fx = ctx;
    note_hook(fx);
    if (!known_service(name))
        return KILN_ENOTFOUND;
    fx->follow_cb = cb;
    fx->follow_ctx = cb_ctx;
    snprintf(fx->follow_name, sizeof fx->follow_name, "%s", name);
    atomic_store(&fx->unfollowed, false);
    atomic_store(&fx->following, true);
    return 0;
}

static void fake_unfollow(void *ctx, const char *name, kiln_machine_api_line_cb cb, void *cb_ctx)
{
    fixture_t *fx = ctx;
    note_hook(fx);
    if (cb == fx->follow_cb && cb_ctx == fx->follow_ctx && strcmp(name, fx->follow_name) == 0) {
        fx->follow_cb = NULL;
        fx->follow_ctx = NULL;
        atomic_store(&fx->following, false);
        atomic_store(&fx->unfollowed, true);
    }
}

static int fake_queue_counts(void *ctx, long *pending, long *processing)
{
    note_hook(ctx);
    *pending = 3;
    *processing = 1;
    return 0;
}

static const kiln_machine_api_hooks_t fake_hooks = {
    .status = fake_status,
    .ready = fake_ready,
    .health = fake_health,
    .service_status = fake_service_status,
    .service_action = fake_service_action,
    .reload = fake_reload,
    .restart_machine = fake_restart_machine,
    .refresh_status = fake_refresh,
    .logs = fake_logs,
    .logs_follow = fake_follow,
    .logs_unfollow = fake_unfollow,
    .queue_counts = fake_queue_counts,
};

/* Runs the job queued by run_on_loop (loop thread). */
static void on_job(uv_async_t *handle)
{
    fixture_t *fx = handle->data;
    pthread_mutex_lock(&fx->mu);
    void (*job)(fixture_t *, void *) = fx->job;
    void *arg = fx->job_arg;
    fx->job = NULL;
    pthread_mutex_unlock(&fx->mu);
    if (!job)
        return;
    job(fx, arg);
    pthread_mutex_lock(&fx->mu);
    fx->job_done = true;
    pthread_cond_broadcast(&fx->cond);
    pthread_mutex_unlock(&fx->mu);
}

/* Runs job(fx, arg) on the loop thread and waits for it. */
static void run_on_loop(fixture_t *fx, void (*job)(fixture_t *, void *), void *arg)
{
    pthread_mutex_lock(&fx->mu);
    fx->job = job;
    fx->job_arg = arg;
    fx->job_done = false;
    uv_async_send(&fx->jobs);
    while (!fx->job_done)
        pthread_cond_wait(&fx->cond, &fx->mu);
    pthread_mutex_unlock(&fx->mu);
}

static void *loop_main(void *arg)
{
    fixture_t *fx = arg;
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    return NULL;
}

typedef struct start_args {
    const char *token;
    long hook_timeout_ms;
    int rc;
    kiln_err_t err;
} start_args_t;

static void job_start_api(fixture_t *fx, void *arg)
{
    start_args_t *a = arg;
    kiln_machine_api_options_t opts = {.listen = "127.0.0.1:0",
                                       .token = a->token,
                                       .machine_id = "test-machine",
                                       .hook_timeout_ms = a->hook_timeout_ms,
                                       .hooks = &fake_hooks,
                                       .hooks_ctx = fx,
                                       .loop = &fx->loop};
    a->rc = kiln_machine_api_new(&opts, &fx->api, &a->err);
}

static void job_free_api(fixture_t *fx, void *arg)
{
    kiln_machine_api_free(fx->api);
    fx->api = NULL;
}

static void job_close_loop(fixture_t *fx, void *arg)
{
    uv_close((uv_handle_t *)&fx->jobs, NULL);
}

static void start_api(fixture_t *fx, const char *token, long hook_timeout_ms)
{
    start_args_t a = {.token = token, .hook_timeout_ms = hook_timeout_ms};
    run_on_loop(fx, job_start_api, &a);
    if (a.rc != 0)
        fail_msg("kiln_machine_api_new: %d %s", a.rc, a.err.msg);
    snprintf(fx->url, sizeof fx->url, "http://127.0.0.1:%d", kiln_machine_api_port(fx->api));
    fx->api_token = token;
    fx->api_timeout_ms = hook_timeout_ms;
}

static void stop_api(fixture_t *fx)
{
    if (fx->api)
        run_on_loop(fx, job_free_api, NULL);
}

/* A server with this token and hook timeout: the running one when it has
 * them (stopping civetweb takes up to its 2 s poll quantum, so tests share
 * a server where they can), else a fresh one. */
static void use_api(fixture_t *fx, const char *token, long hook_timeout_ms)
{
    if (fx->api && fx->api_timeout_ms == hook_timeout_ms &&
        (token == fx->api_token || (token && fx->api_token && strcmp(token, fx->api_token) == 0)))
        return;
    stop_api(fx);
    start_api(fx, token, hook_timeout_ms);
}

/* The loop thread, for the whole group. */
static int group_setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof *fx);
    pthread_mutex_init(&fx->mu, NULL);
    pthread_cond_init(&fx->cond, NULL);
    uv_loop_init(&fx->loop);
    uv_async_init(&fx->loop, &fx->jobs, on_job);
    fx->jobs.data = fx;
    pthread_create(&fx->loop_thread, NULL, loop_main, fx);
    *state = fx;
    return 0;
}

static int group_teardown(void **state)
{
    fixture_t *fx = *state;
    stop_api(fx);
    run_on_loop(fx, job_close_loop, NULL);
    pthread_join(fx->loop_thread, NULL);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    pthread_cond_destroy(&fx->cond);
    pthread_mutex_destroy(&fx->mu);
    free(fx);
    return 0;
}

/* A fresh fake agent for each test. */
static int setup(void **state)
{
    fixture_t *fx = *state;
    atomic_store(&fx->hook_calls, 0);
    atomic_store(&fx->wrong_thread, 0);
    atomic_store(&fx->logs_calls, 0);
    atomic_store(&fx->action_calls, 0);
    atomic_store(&fx->healthy, true);
    atomic_store(&fx->ready, true);
    atomic_store(&fx->following, false);
    atomic_store(&fx->unfollowed, false);
    atomic_store(&fx->block_status, false);
    atomic_store(&fx->status_entered, false);
    fx->last_action[0] = '\0';
    return 0;
}

static int teardown(void **state)
{
    fixture_t *fx = *state;
    /* Every hook of the test ran on the loop thread. */
    assert_int_equal(atomic_load(&fx->wrong_thread), 0);
    return 0;
}

/* ---- HTTP client ------------------------------------------------------------ */

typedef struct reply {
    long status;
    char body[BODY_MAX];
    size_t len;
    char content_type[128];
    char www_authenticate[256];
    char allow[64];
    json_t *json; /* parsed body when it is JSON */
} reply_t;

static size_t on_body(char *data, size_t size, size_t n, void *ctx)
{
    reply_t *r = ctx;
    size_t len = size * n;
    if (r->len + len >= sizeof r->body)
        return 0;
    memcpy(r->body + r->len, data, len);
    r->len += len;
    r->body[r->len] = '\0';
    return len;
}

static void header_value(const char *line, size_t len, const char *name, char *out, size_t size)
{
    size_t n = strlen(name);
    if (len <= n + 1 || strncasecmp(line, name, n) != 0 || line[n] != ':')
        return;
    const char *v = line + n + 1;
    while (*v == ' ')
        v++;
    size_t vlen = len - (size_t)(v - line);
    while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n'))
        vlen--;
    snprintf(out, size, "%.*s", (int)vlen, v);
}

static size_t on_header(char *data, size_t size, size_t n, void *ctx)
{
    reply_t *r = ctx;
    size_t len = size * n;
    header_value(data, len, "Content-Type", r->content_type, sizeof r->content_type);
    header_value(data, len, "WWW-Authenticate", r->www_authenticate, sizeof r->www_authenticate);
    header_value(data, len, "Allow", r->allow, sizeof r->allow);
    return len;
}

/* One request; the reply (status, body, a few headers, parsed JSON) lands in
 * r (caller frees r->json with reply_clear). body may be NULL. */
static void http(fixture_t *fx, const char *method, const char *path, const char *token,
                 const char *body, size_t body_len, reply_t *r)
{
    memset(r, 0, sizeof *r);
    CURL *curl = curl_easy_init();
    char url[1024], auth[256];
    snprintf(url, sizeof url, "%s%s", fx->url, path);
    struct curl_slist *headers = NULL;
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        headers = curl_slist_append(headers, auth);
    }
    if (body)
        headers = curl_slist_append(headers, "Expect: 100-continue");
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(curl, CURLOPT_POST, 1L);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, body ? (long)body_len : 0L);
    }
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)HTTP_TIMEOUT);
    CURLcode rc = curl_easy_perform(curl);
    if (rc != CURLE_OK)
        fail_msg("%s %s: %s", method, path, curl_easy_strerror(rc));
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    r->json = json_loadb(r->body, r->len, 0, NULL);
}

static void reply_clear(reply_t *r)
{
    json_decref(r->json);
    r->json = NULL;
}

static const char *error_code_of(const reply_t *r)
{
    return json_string_value(json_object_get(json_object_get(r->json, "error"), "code"));
}

static const char *error_message_of(const reply_t *r)
{
    const char *m =
        json_string_value(json_object_get(json_object_get(r->json, "error"), "message"));
    return m ? m : "";
}

/* GET path expecting status; returns the reply in r. */
static void expect_status(fixture_t *fx, const char *method, const char *path, const char *token,
                          long status, reply_t *r)
{
    http(fx, method, path, token, NULL, 0, r);
    if (r->status != status)
        fail_msg("%s %s: expected %ld, got %ld: %s", method, path, status, r->status, r->body);
}

/* ---- tests ------------------------------------------------------------------ */

static void health_is_health_json_200_and_503_when_unhealthy(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    expect_status(fx, "GET", "/health", NULL, 200, &r);
    assert_string_equal(r.content_type, "application/health+json");
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "pass");
    assert_string_equal(json_string_value(json_object_get(r.json, "serviceId")), "test-machine");
    assert_non_null(json_object_get(json_object_get(r.json, "checks"), "services:ready"));
    reply_clear(&r);

    atomic_store(&fx->healthy, false);
    expect_status(fx, "GET", "/health", NULL, 503, &r);
    assert_string_equal(r.content_type, "application/health+json");
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "fail");
    reply_clear(&r);

    expect_status(fx, "GET", "/ready", NULL, 200, &r);
    reply_clear(&r);
    atomic_store(&fx->ready, false);
    expect_status(fx, "GET", "/ready", NULL, 503, &r);
    assert_true(json_is_false(json_object_get(r.json, "ready")));
    reply_clear(&r);

    /* Per service: running and ready passes, backoff fails. */
    expect_status(fx, "GET", "/services/comfyui-gpu0/health", NULL, 200, &r);
    assert_string_equal(r.content_type, "application/health+json");
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "pass");
    reply_clear(&r);
    expect_status(fx, "GET", "/services/worker-gpu0/health", NULL, 503, &r);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "fail");
    reply_clear(&r);
}

static void status_and_services_come_from_the_hooks(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    expect_status(fx, "GET", "/status", NULL, 200, &r);
    assert_string_equal(r.content_type, "application/json");
    assert_string_equal(json_string_value(json_object_get(r.json, "machine_id")), "test-machine");
    assert_int_equal(json_array_size(json_object_get(r.json, "services")), 2);
    /* What the agent left out, the server measured. */
    json_t *memory = json_object_get(r.json, "memory");
    assert_true(json_integer_value(json_object_get(memory, "total_bytes")) > 0);
    assert_true(
        json_integer_value(json_object_get(json_object_get(r.json, "disk"), "total_bytes")) > 0);
    assert_true(json_integer_value(json_object_get(r.json, "cpus")) >= 1);
    assert_int_equal(json_array_size(json_object_get(r.json, "load")), 3);
    reply_clear(&r);

    expect_status(fx, "GET", "/services", NULL, 200, &r);
    json_t *services = json_object_get(r.json, "services");
    assert_int_equal(json_array_size(services), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(services, 1), "name")),
                        "worker-gpu0");
    reply_clear(&r);

    expect_status(fx, "GET", "/services/comfyui-gpu0", NULL, 200, &r);
    assert_string_equal(json_string_value(json_object_get(r.json, "state")), "running");
    assert_int_equal(json_integer_value(json_object_get(r.json, "pid")), 123);
    reply_clear(&r);

    expect_status(fx, "GET", "/logs?service=comfyui-gpu0&lines=1", NULL, 200, &r);
    json_t *lines = json_object_get(r.json, "lines");
    assert_int_equal(json_array_size(lines), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 0), "line")),
                        "second line");
    reply_clear(&r);
}

static void control_endpoints_need_the_bearer_token(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    const char *path = "/services/comfyui-gpu0/restart";

    expect_status(fx, "POST", path, NULL, 401, &r);
    assert_string_equal(error_code_of(&r), "unauthorized");
    assert_true(strncmp(r.www_authenticate, "Bearer", 6) == 0);
    reply_clear(&r);

    expect_status(fx, "POST", path, "not-the-token", 401, &r);
    assert_non_null(strstr(r.www_authenticate, "invalid_token"));
    assert_null(strstr(r.body, "not-the-token")); /* a token is never echoed */
    reply_clear(&r);
    expect_status(fx, "POST", path, TOKEN "x", 401, &r);
    reply_clear(&r);
    assert_int_equal(atomic_load(&fx->action_calls), 0);

    expect_status(fx, "POST", path, TOKEN, 200, &r);
    pthread_mutex_lock(&fx->mu);
    assert_string_equal(fx->last_action, "comfyui-gpu0:restart");
    pthread_mutex_unlock(&fx->mu);
    reply_clear(&r);
    expect_status(fx, "POST", "/services/worker-gpu0/stop", TOKEN, 200, &r);
    reply_clear(&r);
    expect_status(fx, "POST", "/services/worker-gpu0/start", TOKEN, 200, &r);
    reply_clear(&r);
    expect_status(fx, "POST", "/reload", TOKEN, 200, &r);
    reply_clear(&r);
    expect_status(fx, "POST", "/refresh-status", TOKEN, 200, &r);
    reply_clear(&r);
    expect_status(fx, "POST", "/restart/machine", TOKEN, 200, &r);
    reply_clear(&r);
    assert_int_equal(atomic_load(&fx->action_calls), 6);

    /* No token configured: control is off, whatever the client sends. */
    use_api(fx, NULL, 0);
    expect_status(fx, "POST", path, TOKEN, 403, &r);
    assert_string_equal(error_code_of(&r), "forbidden");
    assert_non_null(strstr(error_message_of(&r), "machine.api_token"));
    reply_clear(&r);
    expect_status(fx, "POST", "/reload", NULL, 403, &r);
    reply_clear(&r);
    assert_int_equal(atomic_load(&fx->action_calls), 6);
}

static void path_traversal_in_logs_service_is_refused(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    static const char *const paths[] = {
        "/logs?service=../../etc/passwd",
        "/logs?service=%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/logs?service=..%2F..%2Fetc%2Fpasswd&follow=1",
        "/logs?service=/etc/passwd",
        "/logs?service=Comfy",
        "/logs?service=-x",
        "/logs?service=a%00b",
        "/services/..%2f..%2fetc%2fpasswd",
        "/services/../../etc/passwd/health",
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        expect_status(fx, "GET", paths[i], NULL, 400, &r);
        assert_string_equal(error_code_of(&r), "bad_request");
        if (!strstr(error_message_of(&r), "a service name is 1-64 characters"))
            fail_msg("%s: the message does not name the rule: %s", paths[i], r.body);
        reply_clear(&r);
    }
    expect_status(fx, "POST", "/services/..%2f..%2fetc/restart", TOKEN, 400, &r);
    reply_clear(&r);
    /* 65 characters: one too many. */
    char path[160];
    snprintf(path, sizeof path, "/logs?service=%065d", 0);
    expect_status(fx, "GET", path, NULL, 400, &r);
    reply_clear(&r);
    /* Bounded lines. */
    expect_status(fx, "GET", "/logs?service=comfyui-gpu0&lines=0", NULL, 400, &r);
    assert_non_null(strstr(error_message_of(&r), "1-10000"));
    reply_clear(&r);
    expect_status(fx, "GET", "/logs?service=comfyui-gpu0&lines=10001", NULL, 400, &r);
    reply_clear(&r);
    expect_status(fx, "GET", "/logs?service=comfyui-gpu0&lines=12abc", NULL, 400, &r);
    reply_clear(&r);
    expect_status(fx, "GET", "/logs?lines=5", NULL, 400, &r);
    reply_clear(&r);
    /* No hook ever saw one of those names. */
    assert_int_equal(atomic_load(&fx->logs_calls), 0);
    assert_int_equal(atomic_load(&fx->action_calls), 0);
    assert_int_equal(atomic_load(&fx->hook_calls), 0);
}

static void unknown_service_is_404(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    expect_status(fx, "GET", "/services/nope", NULL, 404, &r);
    assert_string_equal(error_code_of(&r), "not_found");
    assert_non_null(strstr(error_message_of(&r), "nope"));
    reply_clear(&r);
    expect_status(fx, "GET", "/services/nope/health", NULL, 404, &r);
    reply_clear(&r);
    expect_status(fx, "GET", "/logs?service=nope", NULL, 404, &r);
    reply_clear(&r);
    expect_status(fx, "GET", "/logs?service=nope&follow=1", NULL, 404, &r);
    reply_clear(&r);
    expect_status(fx, "POST", "/services/nope/restart", TOKEN, 404, &r);
    reply_clear(&r);
    expect_status(fx, "GET", "/no-such-endpoint", NULL, 404, &r);
    assert_string_equal(error_code_of(&r), "not_found");
    reply_clear(&r);
}

static void wrong_method_is_405(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    expect_status(fx, "POST", "/status", TOKEN, 405, &r);
    assert_string_equal(error_code_of(&r), "method_not_allowed");
    assert_string_equal(r.allow, "GET, HEAD");
    reply_clear(&r);
    expect_status(fx, "GET", "/reload", NULL, 405, &r);
    assert_string_equal(r.allow, "POST");
    reply_clear(&r);
    expect_status(fx, "GET", "/services/comfyui-gpu0/restart", NULL, 405, &r);
    reply_clear(&r);
    expect_status(fx, "DELETE", "/services/comfyui-gpu0", TOKEN, 405, &r);
    reply_clear(&r);
    expect_status(fx, "PUT", "/metrics", NULL, 405, &r);
    reply_clear(&r);
    assert_int_equal(atomic_load(&fx->action_calls), 0);
}

static void oversized_body_is_413(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    size_t big = KILN_MACHINE_API_BODY_MAX + 1;
    char *body = malloc(big);
    memset(body, 'x', big);
    http(fx, "POST", "/reload", TOKEN, body, big, &r);
    assert_int_equal(r.status, 413);
    assert_string_equal(error_code_of(&r), "payload_too_large");
    reply_clear(&r);
    assert_int_equal(atomic_load(&fx->action_calls), 0);
    /* A small body is read and ignored. */
    http(fx, "POST", "/reload", TOKEN, body, 100, &r);
    assert_int_equal(r.status, 200);
    reply_clear(&r);
    free(body);
    assert_int_equal(atomic_load(&fx->action_calls), 1);
}

/* ---- log streams ------------------------------------------------------------ */

typedef struct stream {
    fixture_t *fx;
    char url[256];
    pthread_t thread;
    pthread_mutex_t mu;
    char body[BODY_MAX];
    size_t len;
    atomic_bool stop, finished;
    CURLcode rc;
    long status;
} stream_t;

static size_t on_stream_data(char *data, size_t size, size_t n, void *ctx)
{
    stream_t *s = ctx;
    size_t len = size * n;
    pthread_mutex_lock(&s->mu);
    if (s->len + len < sizeof s->body) {
        memcpy(s->body + s->len, data, len);
        s->len += len;
        s->body[s->len] = '\0';
    }
    pthread_mutex_unlock(&s->mu);
    return len;
}

/* Aborts the transfer (the client goes away) once the test says so. */
static int on_stream_progress(void *ctx, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    stream_t *s = ctx;
    return atomic_load(&s->stop) ? 1 : 0;
}

static void *stream_main(void *arg)
{
    stream_t *s = arg;
    CURL *curl = curl_easy_init();
    curl_easy_setopt(curl, CURLOPT_URL, s->url);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_stream_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_stream_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, s);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 60000L);
    s->rc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &s->status);
    curl_easy_cleanup(curl);
    atomic_store(&s->finished, true);
    return NULL;
}

static stream_t *stream_open(fixture_t *fx, const char *path)
{
    stream_t *s = calloc(1, sizeof *s);
    s->fx = fx;
    snprintf(s->url, sizeof s->url, "%s%s", fx->url, path);
    pthread_mutex_init(&s->mu, NULL);
    pthread_create(&s->thread, NULL, stream_main, s);
    return s;
}

static void stream_close(stream_t *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

typedef struct wait_text {
    stream_t *s;
    const char *text;
} wait_text_t;

static bool stream_has(void *ctx)
{
    wait_text_t *w = ctx;
    pthread_mutex_lock(&w->s->mu);
    bool found = strstr(w->s->body, w->text) != NULL;
    pthread_mutex_unlock(&w->s->mu);
    return found;
}

static void wait_for_text(stream_t *s, const char *text)
{
    wait_text_t w = {s, text};
    if (!kiln_test_wait_until(stream_has, &w, WAIT_MS))
        fail_msg("the stream never showed \"%s\"; it has: %s", text, s->body);
}

static bool flag_set(void *ctx)
{
    return atomic_load((atomic_bool *)ctx);
}

static void job_emit_line(fixture_t *fx, void *arg)
{
    json_t *entry = json_pack("{s:s, s:s, s:s}", "time", "2026-11-22T06:00:02.000Z", "stream",
                              "stdout", "line", (const char *)arg);
    if (fx->follow_cb)
        fx->follow_cb(fx->follow_ctx, entry);
    json_decref(entry);
}

static void logs_follow_streams_new_lines(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);

    /* Text: the last lines, then each new line, until the client leaves. */
    stream_t *s = stream_open(fx, "/logs?service=comfyui-gpu0&lines=2&follow=1");
    wait_for_text(s, "first line\nsecond line\n");
    assert_true(kiln_test_wait_until(flag_set, &fx->following, WAIT_MS));
    run_on_loop(fx, job_emit_line, "new line one");
    wait_for_text(s, "second line\nnew line one\n");
    run_on_loop(fx, job_emit_line, "new line two");
    wait_for_text(s, "new line one\nnew line two\n");
    stream_close(s);
    if (!kiln_test_wait_until(flag_set, &fx->unfollowed, WAIT_MS))
        fail_msg("the server did not unfollow after its client went away");

    /* NDJSON: one entry per line; the server stopping ends the stream. */
    s = stream_open(fx, "/logs?service=comfyui-gpu0&lines=1&follow=1&format=ndjson");
    assert_true(kiln_test_wait_until(flag_set, &fx->following, WAIT_MS));
    run_on_loop(fx, job_emit_line, "as json");
    wait_for_text(s, "\"line\":\"as json\"");
    stop_api(fx);
    assert_true(atomic_load(&fx->unfollowed));
    assert_true(kiln_test_wait_until(flag_set, &s->finished, WAIT_MS));
    assert_int_equal(s->rc, CURLE_OK);
    assert_int_equal(s->status, 200);
    char *line = strtok(s->body, "\n");
    int n = 0;
    for (; line; line = strtok(NULL, "\n"), n++) {
        json_t *entry = json_loads(line, 0, NULL);
        if (!entry)
            fail_msg("not a JSON line: %s", line);
        assert_non_null(json_string_value(json_object_get(entry, "line")));
        json_decref(entry);
    }
    assert_int_equal(n, 2);
    stream_close(s);
    assert_int_equal(atomic_load(&fx->wrong_thread), 0);
}

/* ---- metrics ---------------------------------------------------------------- */

/* The exposition format's rules, strictly: every sample belongs to the
 * family whose HELP and TYPE came just before it, names and label names
 * are well formed, label values use only the three escapes, values parse,
 * counters end in _total, no family or series repeats. Returns NULL or
 * what is wrong. */
static const char *check_exposition(const char *text, char *why, size_t size)
{
    regex_t sample_re, help_re, type_re;
    regcomp(
        &sample_re,
        "^([a-zA-Z_:][a-zA-Z0-9_:]*)(\\{([a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\\n]|\\\\[\\\\\"n])*\""
        "(,[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\\n]|\\\\[\\\\\"n])*\")*)\\})? ([^ ]+)$",
        REG_EXTENDED);
    regcomp(&help_re, "^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) [^\n]+$", REG_EXTENDED);
    regcomp(&type_re, "^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (gauge|counter|untyped)$", REG_EXTENDED);
    char family[128] = "", type[16] = "", seen_families[8192] = " ", seen_series[16384] = "\n";
    const char *result = NULL;
    size_t len = strlen(text);
    if (len == 0 || text[len - 1] != '\n')
        result = "the text does not end with a newline";
    char *copy = strdup(text), *save = NULL;
    bool help_seen = false;
    for (char *line = strtok_r(copy, "\n", &save); line && !result;
         line = strtok_r(NULL, "\n", &save)) {
        regmatch_t m[10];
        char name[128];
        if (regexec(&help_re, line, 2, m, 0) == 0) {
            snprintf(name, sizeof name, "%.*s", (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
            char key[140];
            snprintf(key, sizeof key, " %s ", name);
            if (strstr(seen_families, key)) {
                snprintf(why, size, "family %s appears twice", name);
                result = why;
            }
            strncat(seen_families, key + 1, sizeof seen_families - strlen(seen_families) - 1);
            snprintf(family, sizeof family, "%s", name);
            help_seen = true;
            type[0] = '\0';
        } else if (regexec(&type_re, line, 3, m, 0) == 0) {
            snprintf(name, sizeof name, "%.*s", (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
            if (!help_seen || strcmp(name, family) != 0) {
                snprintf(why, size, "TYPE %s without its HELP just before", name);
                result = why;
            }
            snprintf(type, sizeof type, "%.*s", (int)(m[2].rm_eo - m[2].rm_so), line + m[2].rm_so);
            if (strcmp(type, "counter") == 0 &&
                (strlen(name) < 6 || strcmp(name + strlen(name) - 6, "_total") != 0)) {
                snprintf(why, size, "counter %s does not end in _total", name);
                result = why;
            }
        } else if (regexec(&sample_re, line, 10, m, 0) == 0) {
            snprintf(name, sizeof name, "%.*s", (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
            const char *value = line + m[8].rm_so;
            char *end;
            strtod(value, &end);
            if (strcmp(name, family) != 0 || !type[0]) {
                snprintf(why, size, "sample %s outside its family (HELP/TYPE)", name);
                result = why;
            } else if (*end && strcmp(value, "NaN") != 0 && strcmp(value, "+Inf") != 0 &&
                       strcmp(value, "-Inf") != 0) {
                snprintf(why, size, "bad value in: %s", line);
                result = why;
            } else {
                char series[512];
                snprintf(series, sizeof series, "\n%.*s\n", (int)(m[8].rm_so - 1), line);
                if (strstr(seen_series, series)) {
                    snprintf(why, size, "series repeated: %s", line);
                    result = why;
                }
                strncat(seen_series, series + 1, sizeof seen_series - strlen(seen_series) - 1);
            }
        } else {
            snprintf(why, size, "not a HELP, TYPE or sample line: %s", line);
            result = why;
        }
    }
    free(copy);
    regfree(&sample_re);
    regfree(&help_re);
    regfree(&type_re);
    return result;
}

/* promtool's path, or NULL when it is not installed. */
static const char *find_promtool(void)
{
    static const char *const candidates[] = {"/usr/bin/promtool", "/usr/local/bin/promtool",
                                             "/bin/promtool"};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
        if (access(candidates[i], X_OK) == 0)
            return candidates[i];
    return NULL;
}

static void metrics_pass_promtool_check_metrics(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    expect_status(fx, "GET", "/metrics", NULL, 200, &r);
    assert_string_equal(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    static const char *const expected[] = {
        "kiln_machine_up 1\n",
        "kiln_service_up{service=\"comfyui-gpu0\"} 1\n",
        "kiln_service_up{service=\"worker-gpu0\"} 0\n",
        "# TYPE kiln_service_restarts_total counter\n",
        "kiln_service_restarts_total{service=\"worker-gpu0\"} 7\n",
        "kiln_service_rss_bytes{service=\"comfyui-gpu0\"} 537395200\n",
        "kiln_service_cpu_ratio{service=\"comfyui-gpu0\"} 0.125\n",
        "kiln_gpu_memory_used_bytes{gpu=\"0\",uuid=\"GPU-\\\"q\\\"\\\\x\"} 4404019200\n",
        "kiln_gpu_utilization_ratio{gpu=\"0\"} 0.37",
        "kiln_gpu_temperature_celsius{gpu=\"0\"} 61\n",
        "# TYPE kiln_memory_total_bytes gauge\n",
        "kiln_disk_free_bytes{path=\"/\"} ",
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        if (!strstr(r.body, expected[i]))
            fail_msg("/metrics lacks \"%s\":\n%s", expected[i], r.body);
    char why[512];
    const char *problem = check_exposition(r.body, why, sizeof why);
    if (problem)
        fail_msg("exposition format: %s\n%s", problem, r.body);

    const char *promtool = find_promtool();
    if (promtool) {
        char *argv[] = {(char *)promtool, "check", "metrics", NULL};
        char out[4096];
        int status = kiln_test_run(argv, r.body, out, sizeof out);
        if (status != 0)
            fail_msg("promtool check metrics failed (%d): %s\n%s", status, out, r.body);
    } else {
        fprintf(stderr, "note: promtool not installed; checked with the test's own strict "
                        "checker only (apt-get install prometheus)\n");
    }
    reply_clear(&r);

    /* Label values with every character the format escapes. */
    json_t *odd = json_pack("{s:[{s:s, s:s, s:i}]}", "services", "name", "we\"ird\\na\nme", "state",
                            "running", "restarts", 1);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(kiln_metrics_render(odd, 0, &text, &len, NULL), 0);
    assert_non_null(strstr(text, "kiln_service_up{service=\"we\\\"ird\\\\na\\nme\"} 1\n"));
    assert_null(check_exposition(text, why, sizeof why));
    free(text);
    /* Bounded: past max_bytes it refuses rather than grows. */
    kiln_err_t err = {0};
    assert_int_equal(kiln_metrics_render(odd, 64, &text, &len, &err), KILN_ETOOBIG);
    assert_null(text);
    assert_non_null(strstr(err.msg, "64 bytes"));
    json_decref(odd);
}

static void api_health_has_the_source_document_fields(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    expect_status(fx, "GET", "/api/health", NULL, 200, &r);
    json_t *doc = r.json;
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "status")), "busy");
    assert_string_equal(json_string_value(json_object_get(doc, "machineId")), "test-machine");
    regex_t iso;
    regcomp(&iso, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?Z$",
            REG_EXTENDED | REG_NOSUB);
    const char *ts = json_string_value(json_object_get(doc, "timestamp"));
    assert_non_null(ts);
    assert_int_equal(regexec(&iso, ts, 0, NULL, 0), 0);
    regfree(&iso);
    json_t *queue = json_object_get(doc, "queue");
    assert_int_equal(json_integer_value(json_object_get(queue, "pending")), 3);
    assert_int_equal(json_integer_value(json_object_get(queue, "processing")), 1);
    json_t *system = json_object_get(doc, "system");
    json_t *gpu = json_object_get(system, "gpu");
    assert_string_equal(json_string_value(json_object_get(gpu, "name")), "NVIDIA Test GPU");
    json_t *vram = json_object_get(gpu, "vram");
    assert_int_equal(json_integer_value(json_object_get(vram, "total")), 24576);
    assert_int_equal(json_integer_value(json_object_get(vram, "used")), 4200);
    assert_int_equal(json_integer_value(json_object_get(vram, "free")), 20376);
    static const char *const sections[] = {"memory", "disk"};
    static const char *const fields[] = {"total", "used", "free"};
    for (size_t i = 0; i < 2; i++) {
        json_t *section = json_object_get(system, sections[i]);
        for (size_t j = 0; j < 3; j++)
            if (!json_is_integer(json_object_get(section, fields[j])))
                fail_msg("system.%s.%s is missing or not an integer: %s", sections[i], fields[j],
                         r.body);
        assert_true(json_integer_value(json_object_get(section, "total")) > 0);
    }
    reply_clear(&r);

    atomic_store(&fx->ready, false);
    expect_status(fx, "GET", "/api/health", NULL, 200, &r);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "offline");
    reply_clear(&r);
}

static void hooks_run_on_the_loop_thread(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, 0);
    static reply_t r;
    static const char *const gets[] = {"/health",
                                       "/ready",
                                       "/status",
                                       "/services",
                                       "/metrics",
                                       "/api/health",
                                       "/services/comfyui-gpu0",
                                       "/services/comfyui-gpu0/health",
                                       "/logs?service=comfyui-gpu0"};
    for (size_t i = 0; i < sizeof gets / sizeof gets[0]; i++) {
        expect_status(fx, "GET", gets[i], NULL, 200, &r);
        reply_clear(&r);
    }
    static const char *const posts[] = {"/services/comfyui-gpu0/restart", "/reload",
                                        "/refresh-status", "/restart/machine"};
    for (size_t i = 0; i < sizeof posts / sizeof posts[0]; i++) {
        expect_status(fx, "POST", posts[i], TOKEN, 200, &r);
        reply_clear(&r);
    }
    assert_true(atomic_load(&fx->hook_calls) >= 13);
    assert_int_equal(atomic_load(&fx->wrong_thread), 0);
}

static bool status_entered(void *ctx)
{
    return atomic_load(&((fixture_t *)ctx)->status_entered);
}

static void release_status(fixture_t *fx)
{
    pthread_mutex_lock(&fx->mu);
    atomic_store(&fx->block_status, false);
    pthread_cond_broadcast(&fx->cond);
    pthread_mutex_unlock(&fx->mu);
}

static void slow_loop_gives_503_not_a_hang(void **state)
{
    fixture_t *fx = *state;
    use_api(fx, TOKEN, SLOW_HOOK_MS);
    static reply_t r;
    atomic_store(&fx->block_status, true);
    /* The loop is stuck inside the status hook for this request... */
    expect_status(fx, "GET", "/status", NULL, 503, &r);
    assert_true(status_entered(fx));
    assert_string_equal(error_code_of(&r), "unavailable");
    assert_non_null(strstr(error_message_of(&r), "did not answer"));
    reply_clear(&r);
    /* ...so one queued behind it gives up too. */
    expect_status(fx, "GET", "/ready", NULL, 503, &r);
    reply_clear(&r);
    release_status(fx);
    /* Once the loop is free again, everything answers. */
    expect_status(fx, "GET", "/ready", NULL, 200, &r);
    reply_clear(&r);
    expect_status(fx, "GET", "/status", NULL, 200, &r);
    reply_clear(&r);
}

/* Slowloris: clients that open connections and send their headers a line
 * at a time, never finishing them. */
#define SLOW_CLIENTS 24 /* more than the API's 16 threads */

typedef struct slow_clients {
    int fds[SLOW_CLIENTS];
    atomic_bool stop;
} slow_clients_t;

static void *dribble_main(void *arg)
{
    slow_clients_t *c = arg;
    while (!atomic_load(&c->stop)) {
        for (int i = 0; i < SLOW_CLIENTS; i++)
            send(c->fds[i], "X-Slow: 1\r\n", 11, MSG_NOSIGNAL);
        struct timespec pause = {0, 300 * 1000000L};
        nanosleep(&pause, NULL);
    }
    return NULL;
}

static void slow_header_clients_do_not_starve_health(void **state)
{
    fixture_t *fx = *state;
    int port = 0;
    assert_int_equal(sscanf(fx->url, "http://127.0.0.1:%d", &port), 1);
    static slow_clients_t c;
    atomic_store(&c.stop, false);
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        c.fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(c.fds[i], (struct sockaddr *)&addr, sizeof addr), 0);
        const char *start = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        assert_int_equal(send(c.fds[i], start, strlen(start), MSG_NOSIGNAL),
                         (ssize_t)strlen(start));
    }
    pthread_t dribbler;
    assert_int_equal(pthread_create(&dribbler, NULL, dribble_main, &c), 0);
    /* Every thread is now held by a client that never finishes. /health
     * must still answer: civetweb drops a client whose headers take longer
     * than request_timeout_ms (2 s), so it waits for that at most twice
     * here (24 slow clients, 16 threads), not for the slow clients' will. */
    static reply_t r;
    int64_t t0 = kiln_test_now_ms();
    http(fx, "GET", "/health", NULL, NULL, 0, &r);
    int64_t took = kiln_test_now_ms() - t0;
    atomic_store(&c.stop, true);
    pthread_join(dribbler, NULL);
    for (int i = 0; i < SLOW_CLIENTS; i++)
        close(c.fds[i]);
    assert_int_equal(r.status, 200);
    reply_clear(&r);
    assert_true(took < 5000);
}

/* Sends text on a fresh connection to the API and reads until it closes
 * (bounded by HTTP_TIMEOUT); the reply lands in out. */
static void raw_exchange(fixture_t *fx, const char *text, size_t len, char *out, size_t size)
{
    int port = 0;
    assert_int_equal(sscanf(fx->url, "http://127.0.0.1:%d", &port), 1);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    struct timeval tv = {HTTP_TIMEOUT / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(send(fd, text, len, MSG_NOSIGNAL), (ssize_t)len);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < size && (r = recv(fd, out + n, size - 1 - n, 0)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(fd);
}

/* Errors civetweb raises before our handler runs come out as the API's
 * JSON error too, never as its text/plain page. */
static void civetweb_errors_are_json_too(void **state)
{
    fixture_t *fx = *state;
    static char reply[64 * 1024];
    static char huge[40 * 1024];
    const char *garbage = "NOT-HTTP\r\n\r\n";
    int n = snprintf(huge, sizeof huge, "GET /health HTTP/1.1\r\nX-Big: ");
    memset(huge + n, 'a', sizeof huge - (size_t)n - 8);
    memcpy(huge + sizeof huge - 8, "\r\n\r\n", 5);
    const char *cases[] = {garbage, huge};
    size_t lens[] = {strlen(garbage), strlen(huge)};
    for (int i = 0; i < 2; i++) {
        raw_exchange(fx, cases[i], lens[i], reply, sizeof reply);
        int status = 0;
        assert_int_equal(sscanf(reply, "HTTP/1.%*d %d", &status), 1);
        assert_true(status >= 400 && status < 500);
        assert_non_null(strcasestr(reply, "Content-Type: application/json"));
        const char *body = strstr(reply, "\r\n\r\n");
        assert_non_null(body);
        json_t *doc = json_loads(body + 4, 0, NULL);
        assert_non_null(doc);
        assert_non_null(json_string_value(json_object_get(json_object_get(doc, "error"), "code")));
        assert_non_null(
            json_string_value(json_object_get(json_object_get(doc, "error"), "message")));
        json_decref(doc);
    }
}

/* ---- small pieces ----------------------------------------------------------- */

static void service_names_follow_the_rule(void **state)
{
    static const char *const good[] = {
        "a", "comfyui-gpu0", "worker_api0", "0x",
        "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij1234"};
    static const char *const bad[] = {
        "",    "-a",
        "_a",  "A",
        "a/b", "..",
        "a.b", "a b",
        "é",   "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij12345"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(kiln_machine_api_valid_service_name(good[i]));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(kiln_machine_api_valid_service_name(bad[i]));
    assert_false(kiln_machine_api_valid_service_name(NULL));
}

static void sysinfo_reads_meminfo_and_the_disk(void **state)
{
    char dir[256], path[300];
    kiln_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/meminfo", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "MemTotal:       16000000 kB\nMemFree:         1000000 kB\n"
               "MemAvailable:    4000000 kB\nBuffers:          100 kB\n");
    fclose(f);
    kiln_sysinfo_memory_t mem;
    assert_int_equal(kiln_sysinfo_memory(path, &mem, NULL), 0);
    assert_true(mem.total_bytes == 16000000ULL * 1024);
    assert_true(mem.available_bytes == 4000000ULL * 1024);
    assert_true(mem.used_bytes == 12000000ULL * 1024);

    /* An old kernel without MemAvailable. */
    f = fopen(path, "w");
    fprintf(f, "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n");
    fclose(f);
    assert_int_equal(kiln_sysinfo_memory(path, &mem, NULL), 0);
    assert_true(mem.available_bytes == 400ULL * 1024);

    kiln_err_t err = {0};
    f = fopen(path, "w");
    fprintf(f, "nothing here\n");
    fclose(f);
    assert_int_equal(kiln_sysinfo_memory(path, &mem, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "MemTotal"));
    unlink(path);
    assert_int_equal(kiln_sysinfo_memory(path, &mem, &err), KILN_EIO);
    assert_non_null(strstr(err.msg, path));

    kiln_sysinfo_disk_t disk;
    assert_int_equal(kiln_sysinfo_disk(dir, &disk, NULL), 0);
    assert_true(disk.total_bytes > 0 && disk.free_bytes <= disk.total_bytes);
    assert_int_equal(kiln_sysinfo_disk("/nonexistent/kiln", &disk, &err), KILN_EIO);
    rmdir(dir);

    double load[3];
    assert_int_equal(kiln_sysinfo_load(load, NULL), 0);
    assert_true(kiln_sysinfo_cpu_count() >= 1);
}

static void listen_address_problems_are_named(void **state)
{
    fixture_t *fx = *state;
    kiln_machine_api_options_t opts = {
        .listen = "127.0.0.1:99999", .hooks = &fake_hooks, .loop = &fx->loop};
    kiln_machine_api_t *api = NULL;
    kiln_err_t err = {0};
    /* Refused before anything touches the loop. */
    assert_int_equal(kiln_machine_api_new(&opts, &api, &err), KILN_EINVAL);
    assert_null(api);
    assert_non_null(strstr(err.msg, "machine.health_port"));
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    kiln_log_configure(KILN_LOG_TEXT, KILN_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(health_is_health_json_200_and_503_when_unhealthy, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(status_and_services_come_from_the_hooks, setup, teardown),
        cmocka_unit_test_setup_teardown(path_traversal_in_logs_service_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_service_is_404, setup, teardown),
        cmocka_unit_test_setup_teardown(wrong_method_is_405, setup, teardown),
        cmocka_unit_test_setup_teardown(oversized_body_is_413, setup, teardown),
        cmocka_unit_test_setup_teardown(metrics_pass_promtool_check_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(api_health_has_the_source_document_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(hooks_run_on_the_loop_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(control_endpoints_need_the_bearer_token, setup, teardown),
        cmocka_unit_test_setup_teardown(slow_loop_gives_503_not_a_hang, setup, teardown),
        cmocka_unit_test_setup_teardown(slow_header_clients_do_not_starve_health, setup, teardown),
        cmocka_unit_test_setup_teardown(civetweb_errors_are_json_too, setup, teardown),
        cmocka_unit_test_setup_teardown(logs_follow_streams_new_lines, setup, teardown),
        cmocka_unit_test(service_names_follow_the_rule),
        cmocka_unit_test(sysinfo_reads_meminfo_and_the_disk),
        cmocka_unit_test_setup_teardown(listen_address_problems_are_named, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return failed;
}

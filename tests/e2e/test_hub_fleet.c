/*
 * The hub's machine routes and monitor assets end to end: a real
 * redis-server, `kiln machine run` (a simulation worker, a machine API
 * token) and `kiln hub` with tokens, on loopback. Restarts travel as
 * control requests through Redis to the agent (include/kiln/machine_control.h).
 */
#include <curl/curl.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kiln/machine_control.h"
#include "kiln_test.h"

#define MACHINE       "fleet-e2e"
#define TOKEN_ADMIN   "admin-token-0123456789abcdef"
#define TOKEN_READ    "read-token-0123456789abcdef"
#define MACHINE_TOKEN "machine-api-secret-0123456789"

static struct {
    kiln_test_redis_t redis;
    char dir[256], hub_log[320], agent_log[320];
    char url[80];
    pid_t hub, agent;
    bool in_test; /* a test started and has not reached its end */
    bool failed;  /* some test did not reach its end: logs are dumped */
} F;

typedef struct reply {
    long status;
    char body[1 << 18];
    size_t len;
    char headers[4096];
    size_t headers_len;
    json_t *json;
} reply_t;

static size_t on_body(char *data, size_t size, size_t n, void *ctx)
{
    reply_t *r = ctx;
    size_t len = size * n, room = sizeof r->body - 1 - r->len;
    memcpy(r->body + r->len, data, len < room ? len : room);
    r->len += len < room ? len : room;
    r->body[r->len] = '\0';
    return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *ctx)
{
    reply_t *r = ctx;
    size_t len = size * n, room = sizeof r->headers - 1 - r->headers_len;
    memcpy(r->headers + r->headers_len, data, len < room ? len : room);
    r->headers_len += len < room ? len : room;
    r->headers[r->headers_len] = '\0';
    return len;
}

/* One request to the hub; extra is one more header line or NULL. */
static reply_t *http(const char *method, const char *path, const char *token, const char *extra)
{
    reply_t *r = calloc(1, sizeof *r);
    char url[1024], auth[128];
    snprintf(url, sizeof url, "%s%s", F.url, path);
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    if (extra)
        h = curl_slist_append(h, extra);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "POST") == 0)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    r->json = json_loads(r->body, 0, NULL);
    return r;
}

static void reply_free(reply_t *r)
{
    json_decref(r->json);
    free(r);
}

static const char *error_field(reply_t *r)
{
    return json_string_value(json_object_get(json_object_get(r->json, "error"), "field"));
}

static const char *error_message(reply_t *r)
{
    return json_string_value(json_object_get(json_object_get(r->json, "error"), "message"));
}

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
    char *text = slurp(F.hub_log);
    const char *at = text ? strstr(text, "kiln hub listening on ") : NULL;
    if (at)
        sscanf(at + strlen("kiln hub listening on "), "%79s", F.url);
    free(text);
    return at != NULL;
}

/* The agent's worker service, as GET /v1/machines/MACHINE shows it. */
static json_t *worker_service(void)
{
    reply_t *r = http("GET", "/v1/machines/" MACHINE, TOKEN_READ, NULL);
    json_t *found = NULL, *svc;
    size_t i;
    json_array_foreach(json_object_get(r->json, "services"), i, svc)
    {
        if (strcmp(json_string_value(json_object_get(svc, "name")), "worker-api0") == 0)
            found = json_incref(svc);
    }
    reply_free(r);
    return found;
}

static bool worker_running(void *ctx)
{
    json_t *svc = worker_service();
    bool ok = svc && strcmp(json_string_value(json_object_get(svc, "state")), "running") == 0;
    json_decref(svc);
    return ok;
}

/* The agent's worker has registered itself (the registry lists it). */
static bool worker_registered(void *ctx)
{
    reply_t *r = http("GET", "/v1/machines/" MACHINE, TOKEN_READ, NULL);
    bool ok = json_array_size(json_object_get(r->json, "workers")) == 1;
    reply_free(r);
    return ok;
}

static int group_setup(void **state)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    kiln_test_redis_start(&F.redis, false);
    kiln_test_tmpdir(F.dir, sizeof F.dir);
    char config[320], state_dir[300];
    snprintf(config, sizeof config, "%s/kiln.yaml", F.dir);
    snprintf(state_dir, sizeof state_dir, "%s/state", F.dir);
    snprintf(F.hub_log, sizeof F.hub_log, "%s/hub.log", F.dir);
    snprintf(F.agent_log, sizeof F.agent_log, "%s/agent.log", F.dir);
    FILE *out = fopen(config, "w");
    fprintf(out,
            "redis: {url: \"%s\"}\n"
            "machine: {id: " MACHINE ", type: api}\n"
            "worker: {connectors: [simulation], concurrency: 1, shutdown_grace_ms: 200}\n",
            F.redis.url);
    fclose(out);
    char *agent[] = {KILN_BIN,  "machine", "run",         "--config",    config, "--state-dir",
                     state_dir, "--api",   "127.0.0.1:0", "--status-ms", "300",  NULL};
    char *agent_env[] = {"KILN_MACHINE_API_TOKEN=" MACHINE_TOKEN, NULL};
    F.agent = kiln_test_spawn(agent, agent_env, F.agent_log);
    char *hub[] = {KILN_BIN,      "hub",          "--redis", F.redis.url, "--listen",
                   "127.0.0.1:0", "--log-format", "text",    NULL};
    char *hub_env[] = {"KILN_HUB_TOKENS=ops:admin:" TOKEN_ADMIN ",dash:read:" TOKEN_READ, NULL};
    F.hub = kiln_test_spawn(hub, hub_env, F.hub_log);
    if (!kiln_test_wait_until(hub_listening, NULL, 10000) ||
        !kiln_test_wait_until(worker_running, NULL, 15000) ||
        !kiln_test_wait_until(worker_registered, NULL, 15000)) {
        kiln_test_dump_file("hub log", F.hub_log);
        kiln_test_dump_file("agent log", F.agent_log);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    kiln_test_kill(F.hub, SIGTERM, 10000);
    kiln_test_kill(F.agent, SIGTERM, 15000);
    if (F.failed) {
        kiln_test_dump_file("hub log", F.hub_log);
        kiln_test_dump_file("agent log", F.agent_log);
    }
    kiln_test_redis_destroy(&F.redis);
    char *rm[] = {"/bin/rm", "-rf", F.dir, NULL};
    kiln_test_run(rm, NULL, NULL, 0);
    curl_global_cleanup();
    return 0;
}

static int test_begin(void **state)
{
    F.in_test = true; /* cleared by each test that gets to its end */
    return 0;
}

static int test_end(void **state)
{
    F.failed = F.failed || F.in_test;
    return 0;
}

static void machines_list_the_agents_machine_with_its_services_and_never_a_token(void **state)
{
    reply_t *r = http("GET", "/v1/machines", TOKEN_READ, NULL);
    assert_int_equal(r->status, 200);
    json_t *m = json_array_get(json_object_get(r->json, "machines"), 0);
    assert_string_equal(json_string_value(json_object_get(m, "id")), MACHINE);
    assert_string_equal(json_string_value(json_object_get(m, "state")), "online");
    assert_true(json_array_size(json_object_get(m, "workers")) == 1);
    assert_null(strstr(r->body, MACHINE_TOKEN));
    assert_null(strstr(r->body, TOKEN_READ));
    reply_free(r);

    r = http("GET", "/v1/machines/no-such-machine", TOKEN_READ, NULL);
    assert_int_equal(r->status, 404);
    assert_string_equal(error_field(r), "machine");
    reply_free(r);
    r = http("GET", "/v1/machines/..%2f..%2fetc", TOKEN_READ, NULL);
    assert_int_equal(r->status, 404);
    reply_free(r);
    r = http("GET", "/v1/machines", NULL, NULL);
    assert_int_equal(r->status, 401);
    reply_free(r);
    F.in_test = false;
}

static bool restarted(void *ctx)
{
    json_t *svc = worker_service();
    bool ok = svc && json_integer_value(json_object_get(svc, "restarts")) >= 1 &&
              strcmp(json_string_value(json_object_get(svc, "state")), "running") == 0;
    json_decref(svc);
    return ok;
}

static void an_admin_restarts_a_service_through_the_agent_and_bad_names_are_refused(void **state)
{
    reply_t *r =
        http("POST", "/v1/machines/" MACHINE "/services/worker-api0/restart", TOKEN_READ, NULL);
    assert_int_equal(r->status, 403);
    reply_free(r);

    r = http("POST", "/v1/machines/" MACHINE "/services/worker-api0/restart", TOKEN_ADMIN, NULL);
    assert_int_equal(r->status, 200);
    assert_true(json_is_true(json_object_get(r->json, "ok")));
    reply_free(r);
    assert_true(kiln_test_wait_until(restarted, NULL, 15000));

    r = http("POST", "/v1/machines/" MACHINE "/services/no-such-service/restart", TOKEN_ADMIN,
             NULL);
    assert_int_equal(r->status, 404);
    assert_string_equal(error_field(r), "service");
    assert_non_null(strstr(error_message(r), "no-such-service"));
    reply_free(r);

    static const char *const bad[] = {"Upper", "a%20b", "..", "-lead"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, "/v1/machines/" MACHINE "/services/%s/restart", bad[i]);
        r = http("POST", path, TOKEN_ADMIN, NULL);
        assert_int_equal(r->status, 404);
        reply_free(r);
    }
    char path[512];
    snprintf(path, sizeof path, "/v1/machines/" MACHINE "/services/%0200d/restart", 7);
    r = http("POST", path, TOKEN_ADMIN, NULL);
    assert_int_equal(r->status, 404);
    reply_free(r);
    r = http("POST", "/v1/machines/nobody/services/worker-api0/restart", TOKEN_ADMIN, NULL);
    assert_int_equal(r->status, 404);
    assert_string_equal(error_field(r), "machine");
    reply_free(r);
    F.in_test = false;
}

static void redis_command(const char *fmt, ...)
{
    redisContext *c = kiln_test_redis_connect(&F.redis);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    freeReplyObject(r);
    redisFree(c);
}

static void an_offline_machine_cannot_be_restarted_or_woken_without_wake_info(void **state)
{
    redis_command("HSET kiln:machine-registry desk %s", "{\"last_seen\":1,\"workers\":[]}");
    reply_t *r = http("POST", "/v1/machines/desk/services/worker-api0/restart", TOKEN_ADMIN, NULL);
    assert_int_equal(r->status, 409);
    assert_non_null(strstr(error_message(r), "offline"));
    reply_free(r);
    r = http("POST", "/v1/machines/desk/wake", TOKEN_ADMIN, NULL);
    assert_int_equal(r->status, 409);
    assert_non_null(strstr(error_message(r), "kiln wake desk --mac"));
    reply_free(r);
    r = http("POST", "/v1/machines/desk/wake", TOKEN_READ, NULL);
    assert_int_equal(r->status, 403);
    reply_free(r);
    F.in_test = false;
}

static void a_machine_whose_agent_never_answers_gets_504_naming_the_agent(void **state)
{
    /* Online by a live status record, but no agent takes its requests. */
    redis_command("SET kiln:machine:ghost %s PX 60000",
                  "{\"machine_id\":\"ghost\",\"state\":\"ready\"}");
    int64_t start = kiln_test_now_ms();
    reply_t *r = http("POST", "/v1/machines/ghost/services/worker-x/restart", TOKEN_ADMIN, NULL);
    int64_t took = kiln_test_now_ms() - start;
    assert_int_equal(r->status, 504);
    assert_non_null(strstr(error_message(r), "kiln machine run"));
    assert_true(took >= KILN_MACHINE_CONTROL_WAIT_MS - 100);
    reply_free(r);
    F.in_test = false;
}

typedef struct reply_wait {
    const char *key;
} reply_wait_t;

static bool reply_exists(void *ctx)
{
    redisContext *c = kiln_test_redis_connect(&F.redis);
    redisReply *r = redisCommand(c, "EXISTS %s", ((reply_wait_t *)ctx)->key);
    bool exists = r && r->integer == 1;
    freeReplyObject(r);
    redisFree(c);
    return exists;
}

static void
the_agent_skips_expired_malformed_and_oversized_requests_and_answers_the_next(void **state)
{
    const char *q = KILN_MACHINE_CONTROL_PREFIX MACHINE;
    char big[KILN_MACHINE_CONTROL_MAX_BYTES + 100];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    redis_command("RPUSH %s %s", q, "not json");
    redis_command("RPUSH %s %s", q, big);
    redis_command("RPUSH %s %s", q,
                  "{\"id\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"action\":\"restart\","
                  "\"service\":\"worker-api0\",\"deadline\":1}");
    redis_command("RPUSH %s %s", q,
                  "{\"id\":\"cccccccccccccccccccccccccccccccc\",\"action\":\"rm -rf\","
                  "\"service\":\"worker-api0\",\"deadline\":99999999999999}");
    redis_command("RPUSH %s %s", q,
                  "{\"id\":\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\",\"action\":\"restart\","
                  "\"service\":\"no-such\",\"deadline\":99999999999999}");
    reply_wait_t w = {KILN_MACHINE_CONTROL_REPLY_PREFIX "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"};
    assert_true(kiln_test_wait_until(reply_exists, &w, 10000));
    reply_wait_t expired = {KILN_MACHINE_CONTROL_REPLY_PREFIX "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    reply_wait_t unknown = {KILN_MACHINE_CONTROL_REPLY_PREFIX "cccccccccccccccccccccccccccccccc"};
    assert_false(reply_exists(&expired));
    assert_false(reply_exists(&unknown));
    redisContext *c = kiln_test_redis_connect(&F.redis);
    redisReply *r = redisCommand(c, "LPOP %s", w.key);
    json_t *reply = json_loads(r->str, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(reply, "status")), 404);
    json_decref(reply);
    freeReplyObject(r);
    redisFree(c);
    F.in_test = false;
}

static void the_monitor_loads_without_a_token_with_types_etag_and_csp(void **state)
{
    reply_t *r = http("GET", "/", NULL, NULL);
    assert_int_equal(r->status, 200);
    assert_non_null(strstr(r->headers, "Content-Type: text/html; charset=utf-8"));
    assert_non_null(strstr(r->headers, "Cache-Control: no-cache"));
    assert_non_null(strstr(r->headers, "Content-Security-Policy: default-src 'self'"));
    assert_non_null(strstr(r->body, "/ui/app.js"));
    const char *etag = strstr(r->headers, "ETag: ");
    assert_non_null(etag);
    char line[128];
    snprintf(line, sizeof line, "If-None-Match: %.*s", (int)strcspn(etag + 6, "\r\n"), etag + 6);
    reply_free(r);
    r = http("GET", "/", NULL, line);
    assert_int_equal(r->status, 304);
    assert_int_equal(r->len, 0);
    reply_free(r);
    r = http("GET", "/ui/app.js", NULL, NULL);
    assert_int_equal(r->status, 200);
    assert_non_null(strstr(r->headers, "Content-Type: text/javascript"));
    reply_free(r);
    r = http("GET", "/ui/style.css", NULL, NULL);
    assert_non_null(strstr(r->headers, "Content-Type: text/css"));
    reply_free(r);
    r = http("GET", "/ui/..%2f..%2fetc%2fpasswd", NULL, NULL);
    assert_int_equal(r->status, 404);
    reply_free(r);

    r = http("GET", "/v1/me", TOKEN_READ, NULL);
    assert_string_equal(json_string_value(json_object_get(r->json, "role")), "read");
    assert_string_equal(json_string_value(json_object_get(r->json, "name")), "dash");
    reply_free(r);
    r = http("GET", "/v1/me", TOKEN_ADMIN, NULL);
    assert_string_equal(json_string_value(json_object_get(r->json, "role")), "admin");
    reply_free(r);
    r = http("GET", "/v1/me", NULL, NULL);
    assert_int_equal(r->status, 401);
    reply_free(r);
    F.in_test = false;
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, test_begin, test_end)
    const struct CMUnitTest tests[] = {
        T(machines_list_the_agents_machine_with_its_services_and_never_a_token),
        T(an_admin_restarts_a_service_through_the_agent_and_bad_names_are_refused),
        T(an_offline_machine_cannot_be_restarted_or_woken_without_wake_info),
        T(a_machine_whose_agent_never_answers_gets_504_naming_the_agent),
        T(the_agent_skips_expired_malformed_and_oversized_requests_and_answers_the_next),
        T(the_monitor_loads_without_a_token_with_types_etag_and_csp),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

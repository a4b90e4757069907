/*
 * End-to-end tests of what `kiln hub` does around a submit: routing of
 * jobs pinned to a machine (404, 409, on_offline wait / wake / any, the
 * Wake-on-LAN packet caught on a loopback UDP socket), "why is my job
 * waiting", signed webhooks with retries, and the earlier clients'
 * positive / negative requirements. A real hub, real `kiln worker`s and a
 * real redis-server; the machine registry is set through the library the
 * hub uses. Logs are printed when a test fails.
 */
#include <arpa/inet.h>
#include <civetweb.h>
#include <curl/curl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kiln/broker.h"
#include "kiln/hub_machines.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"
#include "kiln_test_hub.h"

#define WEBHOOK_SECRET "whsec-0123456789abcdef0123456789"
#define MAX_WORKERS    3

static kiln_test_redis_t redis;
static char log_dir[256];
static int test_seq;

typedef struct worker_proc {
    pid_t pid;
    char log_path[400];
} worker_proc_t;

typedef struct fixture {
    kiln_test_hub_t hub;
    worker_proc_t workers[MAX_WORKERS];
    int n_workers;
    kiln_broker_t *broker; /* the test's own connection, for the registry */
    int seq;
    bool passed;
} fixture_t;

static fixture_t *F;

static int setup(void **state)
{
    static fixture_t f;
    memset(&f, 0, sizeof f);
    f.seq = ++test_seq;
    snprintf(f.hub.log_path, sizeof f.hub.log_path, "%s/%02d-hub.log", log_dir, f.seq);
    redisContext *c = kiln_test_redis_connect(&redis);
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    redisFree(c);
    kiln_broker_options_t opts = {.redis_url = redis.url};
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_connect(&opts, &f.broker, &err), 0);
    F = &f;
    *state = &f;
    return 0;
}

static void stop_worker(fixture_t *f, int i)
{
    if (f->workers[i].pid > 0)
        kiln_test_kill(f->workers[i].pid, SIGTERM, 10000);
    f->workers[i].pid = 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    kiln_test_hub_stop(&f->hub);
    for (int i = 0; i < f->n_workers; i++)
        stop_worker(f, i);
    if (!f->passed) {
        kiln_test_dump_file("hub log", f->hub.log_path);
        for (int i = 0; i < f->n_workers; i++)
            kiln_test_dump_file("worker log", f->workers[i].log_path);
    }
    kiln_broker_free(f->broker);
    return 0;
}

/* Starts the hub with up to two extra variables (may be NULL). */
static void start_hub(fixture_t *f, const char *env1, const char *env2)
{
    char *env[] = {(char *)env1, (char *)env2, NULL};
    kiln_test_hub_start(&f->hub, redis.url, env1 ? env : NULL);
}

/* Starts a simulation worker with id worker_id on machine machine_id,
 * with capabilities caps_json (may be NULL). Returns its index. */
static int start_worker(fixture_t *f, const char *worker_id, const char *machine_id,
                        const char *caps_json)
{
    assert_true(f->n_workers < MAX_WORKERS);
    worker_proc_t *w = &f->workers[f->n_workers];
    snprintf(w->log_path, sizeof w->log_path, "%s/%02d-%s.log", log_dir, f->seq, worker_id);
    char id_env[160], machine_env[160], caps_env[512];
    snprintf(id_env, sizeof id_env, "KILN_WORKER_ID=%s", worker_id);
    snprintf(machine_env, sizeof machine_env, "KILN_MACHINE_ID=%s", machine_id);
    snprintf(caps_env, sizeof caps_env, "KILN_WORKER_CAPABILITIES=%s",
             caps_json ? caps_json : "{}");
    char *env[] = {id_env, machine_env, caps_env, "KILN_WORKER_REGISTRY_TTL_MS=1000", NULL};
    w->pid = kiln_test_hub_worker(redis.url, w->log_path, env);
    return f->n_workers++;
}

static kiln_test_http_t http(const char *method, const char *path, const char *body)
{
    return kiln_test_http(F->hub.url, method, path, body, NULL, false);
}

static const char *error_message(kiln_test_http_t *r)
{
    return kiln_test_jstr(json_object_get(r->json, "error"), "message");
}

static const char *error_field(kiln_test_http_t *r)
{
    json_t *field = json_object_get(json_object_get(r->json, "error"), "field");
    return json_is_string(field) ? json_string_value(field) : "(null)";
}

/* POSTs body to /v1/jobs expecting 201; id receives the job's id. */
static void submit(const char *body, char *id)
{
    kiln_test_http_t r = http("POST", "/v1/jobs", body);
    if (r.status != 201)
        fprintf(stderr, "submit: %ld %s\n", r.status, r.body ? r.body : "");
    assert_int_equal(r.status, 201);
    snprintf(id, KILN_JOB_ID_MAX, "%s", kiln_test_jstr(r.json, "id"));
    kiln_test_http_free(&r);
}

/* GET /v1/jobs/{id}; the caller frees the reply. */
static kiln_test_http_t get_job(const char *id)
{
    char path[KILN_JOB_ID_MAX + 16];
    snprintf(path, sizeof path, "/v1/jobs/%.*s", KILN_JOB_ID_MAX, id);
    return http("GET", path, NULL);
}

typedef struct state_wait {
    const char *id;
    const char *state;
} state_wait_t;

static bool job_in_state(void *ctx)
{
    state_wait_t *w = ctx;
    kiln_test_http_t r = get_job(w->id);
    bool ok = r.status == 200 && strcmp(kiln_test_jstr(r.json, "state"), w->state) == 0;
    kiln_test_http_free(&r);
    return ok;
}

static void wait_state(const char *id, const char *state)
{
    state_wait_t w = {id, state};
    assert_true(kiln_test_wait_until(job_in_state, &w, 15000));
}

/* Makes machine id known to the registry (offline until something runs
 * there) with its wake address. */
static void set_wake(const char *id, const char *address, int port)
{
    kiln_hub_error_t e = {0};
    assert_int_equal(
        kiln_hub_machine_set_wake(F->broker, id, "aa:bb:cc:dd:ee:ff", address, port, &e), 0);
}

typedef struct machine_wait {
    const char *id;
    const char *state;
} machine_wait_t;

static bool machine_in_state(void *ctx)
{
    machine_wait_t *w = ctx;
    json_t *list = NULL;
    kiln_hub_error_t e = {0};
    if (kiln_hub_machines_list(F->broker, &list, &e) != 0)
        return false;
    bool ok = false;
    size_t i;
    json_t *m;
    json_array_foreach(list, i, m)
    {
        if (!strcmp(kiln_test_jstr(m, "id"), w->id) &&
            !strcmp(kiln_test_jstr(m, "state"), w->state))
            ok = true;
    }
    json_decref(list);
    return ok;
}

static void wait_machine(const char *id, const char *state)
{
    machine_wait_t w = {id, state};
    assert_true(kiln_test_wait_until(machine_in_state, &w, 15000));
}

/* ---- routing ------------------------------------------------------------------------ */

static void pinned_job_gets_404_for_an_unknown_machine_and_409_for_an_offline_one(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    set_wake("desktop", "127.0.0.1", 9);

    kiln_test_http_t r =
        http("POST", "/v1/jobs", "{\"service\":\"simulation\",\"machine\":\"ghost\"}");
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(error_message(&r), "machine 'ghost' is unknown"));
    kiln_test_http_free(&r);

    r = http("POST", "/v1/jobs",
             "{\"service\":\"simulation\",\"requirements\":{\"machine\":\"desktop\"}}");
    assert_int_equal(r.status, 409);
    assert_non_null(strstr(error_message(&r), "machine 'desktop' is offline"));
    kiln_test_http_free(&r);

    r = http("POST", "/v1/jobs",
             "{\"service\":\"simulation\",\"machine\":\"desktop\",\"on_offline\":\"later\"}");
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "on_offline");
    kiln_test_http_free(&r);

    /* The earlier clients' API routes the same way. */
    r = http("POST", "/api/jobs",
             "{\"service_required\":\"simulation\",\"requirements\":{\"machine\":\"desktop\"}}");
    assert_int_equal(r.status, 409);
    assert_non_null(strstr(error_message(&r), "machine 'desktop' is offline"));
    kiln_test_http_free(&r);

    /* Nothing was queued by the refused submits. */
    r = http("GET", "/v1/jobs", NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "jobs")), 0);
    kiln_test_http_free(&r);
    f->passed = true;
}

static void on_offline_wait_queues_the_job_until_its_machine_is_back(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    set_wake("desktop", "127.0.0.1", 9);
    char id[KILN_JOB_ID_MAX];
    submit("{\"service\":\"simulation\",\"machine\":\"desktop\",\"on_offline\":\"wait\","
           "\"payload\":{\"duration_ms\":10}}",
           id);
    kiln_test_http_t r = get_job(id);
    assert_string_equal(kiln_test_jstr(r.json, "state"), "pending");
    assert_null(json_object_get(r.json, "on_offline")); /* hub-only: never stored */
    kiln_test_http_free(&r);

    start_worker(f, "desktop-w", "desktop", NULL);
    wait_state(id, "completed");
    r = get_job(id);
    assert_string_equal(kiln_test_jstr(r.json, "worker"), "desktop-w");
    kiln_test_http_free(&r);
    f->passed = true;
}

static void on_offline_any_drops_the_pin_and_another_machine_runs_it(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    set_wake("desktop", "127.0.0.1", 9);
    start_worker(f, "laptop-w", "laptop", NULL);
    wait_machine("laptop", "online");
    char id[KILN_JOB_ID_MAX];
    submit("{\"service\":\"simulation\",\"machine\":\"desktop\",\"on_offline\":\"any\","
           "\"payload\":{\"duration_ms\":10}}",
           id);
    wait_state(id, "completed");
    kiln_test_http_t r = get_job(id);
    assert_string_equal(kiln_test_jstr(r.json, "worker"), "laptop-w");
    assert_null(json_object_get(json_object_get(r.json, "requirements"), "machine"));
    kiln_test_http_free(&r);
    f->passed = true;
}

static void on_offline_wake_sends_the_magic_packet_and_accepts_the_job(void **state)
{
    fixture_t *f = *state;
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(sock >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(sock, (struct sockaddr *)&addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    assert_int_equal(getsockname(sock, (struct sockaddr *)&addr, &len), 0);
    start_hub(f, NULL, NULL);
    set_wake("desktop", "127.0.0.1", ntohs(addr.sin_port));

    char id[KILN_JOB_ID_MAX];
    submit("{\"service\":\"simulation\",\"machine\":\"desktop\",\"on_offline\":\"wake\"}", id);
    struct pollfd pfd = {.fd = sock, .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 5000), 1);
    unsigned char packet[256];
    ssize_t n = recv(sock, packet, sizeof packet, 0);
    assert_int_equal(n, 102);
    for (int i = 0; i < 6; i++)
        assert_int_equal(packet[i], 0xff);
    static const unsigned char mac[6] = {0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
    for (int i = 0; i < 16; i++)
        assert_memory_equal(packet + 6 + i * 6, mac, 6);
    close(sock);

    /* Accepted and still pinned: it waits for the machine to come up. */
    kiln_test_http_t r = get_job(id);
    assert_string_equal(kiln_test_jstr(r.json, "state"), "pending");
    assert_string_equal(kiln_test_jstr(json_object_get(r.json, "requirements"), "machine"),
                        "desktop");
    kiln_test_http_free(&r);
    f->passed = true;
}

/* ---- why is my job waiting ------------------------------------------------------------ */

static json_t *worker_entry(json_t *explain, const char *id)
{
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(explain, "workers"), i, w)
    {
        if (!strcmp(kiln_test_jstr(w, "id"), id))
            return w;
    }
    return NULL;
}

static void waiting_names_the_requirement_each_worker_fails_and_the_offline_match(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    /* desktop has run a worker that matches; it goes offline. */
    int desktop =
        start_worker(f, "desktop-w", "desktop", "{\"gpu_memory_gb\":24,\"models\":[\"sdxl\"]}");
    wait_machine("desktop", "online");
    stop_worker(f, desktop);
    wait_machine("desktop", "offline");
    start_worker(f, "small-w", "small", "{\"gpu_memory_gb\":12,\"models\":[\"sdxl\"]}");
    start_worker(f, "nomodel-w", "nomodel", "{\"gpu_memory_gb\":48,\"models\":[\"sd15\"]}");
    wait_machine("small", "online");
    wait_machine("nomodel", "online");

    char id[KILN_JOB_ID_MAX], path[160];
    submit("{\"service\":\"simulation\",\"requirements\":{\"gpu_memory_gb\":24,"
           "\"models\":[\"sdxl\"]}}",
           id);
    kiln_test_http_t r = get_job(id);
    assert_string_equal(kiln_test_jstr(r.json, "state"), "pending");
    json_t *waiting = json_object_get(r.json, "waiting");
    assert_non_null(waiting);
    assert_true(json_is_true(json_object_get(waiting, "waiting")));
    json_t *small = worker_entry(waiting, "small-w");
    json_t *nomodel = worker_entry(waiting, "nomodel-w");
    assert_non_null(small);
    assert_non_null(nomodel);
    assert_true(json_is_false(json_object_get(small, "can_run")));
    assert_string_equal(kiln_test_jstr(small, "reason"), "gpu_memory_gb: needs 24, has 12");
    assert_non_null(strstr(kiln_test_jstr(nomodel, "reason"), "models: missing sdxl"));
    json_t *offline = json_object_get(waiting, "offline_matches");
    assert_int_equal(json_array_size(offline), 1);
    assert_string_equal(json_string_value(json_array_get(offline, 0)), "desktop");
    kiln_test_http_free(&r);

    snprintf(path, sizeof path, "/v1/jobs/%s/waiting", id);
    r = http("GET", path, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(kiln_test_jstr(r.json, "job"), id);
    assert_non_null(worker_entry(r.json, "small-w"));
    kiln_test_http_free(&r);

    r = http("GET", "/v1/jobs/simulation.999999/waiting", NULL);
    assert_int_equal(r.status, 404);
    kiln_test_http_free(&r);

    /* A job that is no longer pending has nothing to explain. */
    r = http("DELETE", (snprintf(path, sizeof path, "/v1/jobs/%s", id), path), NULL);
    assert_int_equal(r.status, 200);
    kiln_test_http_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s/waiting", id);
    r = http("GET", path, NULL);
    assert_int_equal(r.status, 409);
    assert_non_null(strstr(error_message(&r), "cancelled"));
    kiln_test_http_free(&r);
    r = get_job(id);
    assert_null(json_object_get(r.json, "waiting"));
    kiln_test_http_free(&r);
    f->passed = true;
}

/* ---- webhooks --------------------------------------------------------------------- */

typedef struct receiver {
    struct mg_context *mg;
    int port;
    pthread_mutex_t mu;
    int attempts;
    int verified; /* deliveries whose signature checked out */
    char job[KILN_JOB_ID_MAX];
} receiver_t;

/* Checks "t=<secs>,v1=<hex>" against HMAC-SHA256(secret, t "." body). */
static bool signature_ok(const char *header, const char *body, size_t len)
{
    long long t = 0;
    char hex[80] = "";
    if (!header || sscanf(header, "t=%lld,v1=%79s", &t, hex) != 2)
        return false;
    if (llabs((long long)time(NULL) - t) > 300)
        return false;
    char prefix[32];
    int n = snprintf(prefix, sizeof prefix, "%lld.", t);
    unsigned char *signed_text = malloc((size_t)n + len);
    memcpy(signed_text, prefix, (size_t)n);
    memcpy(signed_text + n, body, len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    HMAC(EVP_sha256(), WEBHOOK_SECRET, (int)strlen(WEBHOOK_SECRET), signed_text, (size_t)n + len,
         mac, &mac_len);
    free(signed_text);
    char want[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned int i = 0; i < mac_len; i++)
        snprintf(want + 2 * i, 3, "%02x", mac[i]);
    return strlen(hex) == 2 * mac_len && CRYPTO_memcmp(hex, want, 2 * mac_len) == 0;
}

/* The first attempt is answered 500; later ones 200 when signed right. */
static int on_webhook(struct mg_connection *conn, void *cbdata)
{
    receiver_t *rx = cbdata;
    enum { BODY_MAX = 65536 };
    char *body = malloc(BODY_MAX); /* civetweb's thread stacks are small */
    assert_non_null(body);
    int len = mg_read(conn, body, BODY_MAX - 1);
    body[len > 0 ? len : 0] = '\0';
    bool ok = signature_ok(mg_get_header(conn, "X-Kiln-Signature"), body, len > 0 ? len : 0);
    json_t *job = json_loads(body, 0, NULL);
    pthread_mutex_lock(&rx->mu);
    int attempt = ++rx->attempts;
    if (ok && attempt > 1) {
        rx->verified++;
        snprintf(rx->job, sizeof rx->job, "%s", kiln_test_jstr(job, "id"));
    }
    pthread_mutex_unlock(&rx->mu);
    json_decref(job);
    free(body);
    int status = attempt == 1 ? 500 : ok ? 200 : 401;
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
              "Connection: close\r\n\r\n%s",
              status, status == 200 ? "OK" : "Error", status == 200 ? "ok" : "no");
    return status;
}

static void receiver_start(receiver_t *rx)
{
    memset(rx, 0, sizeof *rx);
    pthread_mutex_init(&rx->mu, NULL);
    const char *options[] = {"listening_ports", "127.0.0.1:0", "num_threads", "4", NULL};
    struct mg_callbacks callbacks = {0};
    rx->mg = mg_start(&callbacks, NULL, options);
    assert_non_null(rx->mg);
    mg_set_request_handler(rx->mg, "/hook", on_webhook, rx);
    struct mg_server_port ports[1];
    assert_true(mg_get_server_ports(rx->mg, 1, ports) > 0);
    rx->port = ports[0].port;
}

static bool webhook_delivered(void *ctx)
{
    const char *id = ctx;
    kiln_test_http_t r = get_job(id);
    json_t *hook = json_object_get(r.json, "webhook");
    bool ok = !strcmp(kiln_test_jstr(hook, "state"), "delivered");
    kiln_test_http_free(&r);
    return ok;
}

static void webhook_is_signed_retried_after_a_failure_and_shown_delivered(void **state)
{
    fixture_t *f = *state;
    receiver_t rx;
    receiver_start(&rx);
    start_hub(f, "KILN_HUB_WEBHOOKS_SECRET=" WEBHOOK_SECRET, "KILN_HUB_WEBHOOKS_MAX_ATTEMPTS=4");
    start_worker(f, "w", "m1", NULL);

    kiln_test_http_t r =
        http("POST", "/v1/jobs", "{\"service\":\"simulation\",\"webhook\":\"ftp://example\"}");
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "webhook");
    kiln_test_http_free(&r);
    char *long_url = malloc(3000), *body = malloc(3200);
    memset(long_url, 'a', 2999);
    long_url[2999] = '\0';
    memcpy(long_url, "http://", 7);
    snprintf(body, 3200, "{\"service\":\"simulation\",\"webhook\":\"%s\"}", long_url);
    r = http("POST", "/v1/jobs", body);
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "webhook");
    kiln_test_http_free(&r);
    free(long_url);
    free(body);

    char spec[512], id[KILN_JOB_ID_MAX];
    snprintf(spec, sizeof spec,
             "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":10},"
             "\"webhook\":\"http://127.0.0.1:%d/hook\"}",
             rx.port);
    submit(spec, id);
    wait_state(id, "completed");
    assert_true(kiln_test_wait_until(webhook_delivered, id, 20000));
    r = get_job(id);
    json_t *hook = json_object_get(r.json, "webhook");
    assert_int_equal(json_integer_value(json_object_get(hook, "attempts")), 2);
    assert_int_equal(json_integer_value(json_object_get(hook, "last_status")), 200);
    kiln_test_http_free(&r);
    pthread_mutex_lock(&rx.mu);
    assert_int_equal(rx.attempts, 2);
    assert_int_equal(rx.verified, 1);
    assert_string_equal(rx.job, id);
    pthread_mutex_unlock(&rx.mu);
    mg_stop(rx.mg);

    char *log = kiln_test_slurp(f->hub.log_path, 1 << 20);
    assert_null(strstr(log, WEBHOOK_SECRET));
    free(log);
    f->passed = true;
}

static void webhook_is_refused_when_the_hub_has_no_secret(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    kiln_test_http_t r = http("POST", "/v1/jobs",
                              "{\"service\":\"simulation\",\"webhook\":\"http://127.0.0.1:9/h\"}");
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "webhook");
    assert_non_null(strstr(error_message(&r), "KILN_HUB_WEBHOOKS_SECRET"));
    kiln_test_http_free(&r);
    f->passed = true;
}

/* ---- the earlier clients' requirements ---------------------------------------------- */

static void
compat_job_with_minima_and_negative_requirements_runs_only_where_it_matches(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    /* Three workers: too little GPU memory; enough but a spot machine; the match. */
    start_worker(f, "small-w", "small", "{\"gpu_memory_gb\":8}");
    start_worker(f, "spot-w", "spot", "{\"gpu_memory_gb\":24,\"tags\":[\"spot\"]}");
    start_worker(f, "good-w", "good", "{\"gpu_memory_gb\":24,\"tags\":[\"ondemand\"]}");
    wait_machine("small", "online");
    wait_machine("spot", "online");
    wait_machine("good", "online");
    const char *body =
        "{\"service_required\":\"simulation\",\"payload\":{\"duration_ms\":10},"
        "\"requirements\":{\"positive_requirements\":{\"hardware\":{\"gpu_memory_gb\":16,"
        "\"cpu_cores\":\"all\"}},\"negative_requirements\":{\"tags\":[\"spot\"]}}}";
    char ids[5][KILN_JOB_ID_MAX];
    for (int i = 0; i < 5; i++) {
        kiln_test_http_t r = http("POST", "/api/jobs", body);
        assert_int_equal(r.status, 201);
        snprintf(ids[i], sizeof ids[i], "%s", kiln_test_jstr(r.json, "job_id"));
        kiln_test_http_free(&r);
    }
    for (int i = 0; i < 5; i++) {
        wait_state(ids[i], "completed");
        kiln_test_http_t r = get_job(ids[i]);
        assert_string_equal(kiln_test_jstr(r.json, "worker"), "good-w");
        json_t *reqs = json_object_get(r.json, "requirements");
        assert_int_equal(json_integer_value(json_object_get(reqs, "gpu_memory_gb")), 16);
        kiln_test_http_free(&r);
    }

    kiln_test_http_t r = http("POST", "/api/jobs",
                              "{\"service_required\":\"simulation\",\"requirements\":{"
                              "\"positive_requirements\":{\"hardware\":{\"vram\":8}}}}");
    assert_int_equal(r.status, 422);
    assert_string_equal(error_field(&r), "requirements.positive_requirements.hardware.vram");
    kiln_test_http_free(&r);
    f->passed = true;
}

/* ---- the earlier clients' socket ------------------------------------------------- */

typedef struct inbox {
    pthread_mutex_t mu;
    json_t *messages;
} inbox_t;

static int inbox_on_data(struct mg_connection *conn, int flags, char *data, size_t len, void *ctx)
{
    (void)conn;
    inbox_t *in = ctx;
    if ((flags & 0xf) == MG_WEBSOCKET_OPCODE_TEXT) {
        json_t *msg = json_loadb(data, len, 0, NULL);
        pthread_mutex_lock(&in->mu);
        if (msg)
            json_array_append_new(in->messages, msg);
        pthread_mutex_unlock(&in->mu);
    }
    return 1;
}

typedef struct inbox_wait {
    inbox_t *in;
    const char *type;
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
        n += strcmp(kiln_test_jstr(m, "type"), w->type) == 0;
    }
    pthread_mutex_unlock(&w->in->mu);
    return n >= w->count;
}

/* The message_id'th reply's field (a copy in out). */
static void inbox_field(inbox_t *in, const char *message_id, const char *key, char *out,
                        size_t size)
{
    pthread_mutex_lock(&in->mu);
    size_t i;
    json_t *m;
    out[0] = '\0';
    json_array_foreach(in->messages, i, m)
    {
        if (!strcmp(kiln_test_jstr(m, "message_id"), message_id))
            snprintf(out, size, "%s", kiln_test_jstr(m, key));
    }
    pthread_mutex_unlock(&in->mu);
}

static void compat_socket_submit_job_is_routed_and_its_requirements_mapped(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL, NULL);
    set_wake("desktop", "127.0.0.1", 9);
    start_worker(f, "spot-w", "spot", "{\"gpu_memory_gb\":24,\"tags\":[\"spot\"]}");
    start_worker(f, "good-w", "good", "{\"gpu_memory_gb\":24}");
    wait_machine("spot", "online");
    wait_machine("good", "online");
    inbox_t in = {.messages = json_array()};
    pthread_mutex_init(&in.mu, NULL);
    int port = atoi(strrchr(f->hub.url, ':') + 1);
    char error[256] = "";
    struct mg_connection *conn = mg_connect_websocket_client(
        "127.0.0.1", port, 0, error, sizeof error, "/ws/client/c1", NULL, inbox_on_data, NULL, &in);
    assert_non_null(conn);
    static const char *const msgs[] = {
        "{\"type\":\"submit_job\",\"message_id\":\"pinned\",\"service_required\":"
        "\"simulation\",\"requirements\":{\"machine\":\"desktop\"}}",
        "{\"type\":\"submit_job\",\"message_id\":\"bad\",\"service_required\":\"simulation\","
        "\"requirements\":{\"positive_requirements\":{\"hardware\":{\"gpu_memory_gb\":-1}}}}",
        "{\"type\":\"submit_job\",\"message_id\":\"good\",\"service_required\":"
        "\"simulation\",\"payload\":{\"duration_ms\":10},\"requirements\":{"
        "\"positive_requirements\":{\"hardware\":{\"gpu_memory_gb\":16}},"
        "\"negative_requirements\":{\"tags\":[\"spot\"]}}}"};
    for (size_t i = 0; i < 3; i++)
        mg_websocket_client_write(conn, MG_WEBSOCKET_OPCODE_TEXT, msgs[i], strlen(msgs[i]));
    inbox_wait_t w = {&in, "complete_job", 1};
    assert_true(kiln_test_wait_until(inbox_has, &w, 15000));
    w = (inbox_wait_t){&in, "error", 2};
    assert_true(kiln_test_wait_until(inbox_has, &w, 5000));
    char text[512], id[KILN_JOB_ID_MAX];
    inbox_field(&in, "pinned", "error", text, sizeof text);
    assert_non_null(strstr(text, "machine 'desktop' is offline"));
    inbox_field(&in, "bad", "error", text, sizeof text);
    assert_non_null(strstr(text, "requirements.positive_requirements.hardware.gpu_memory_gb"));
    inbox_field(&in, "good", "job_id", id, sizeof id);
    assert_true(id[0] != '\0');
    mg_close_connection(conn);
    json_decref(in.messages);
    kiln_test_http_t r = get_job(id);
    assert_string_equal(kiln_test_jstr(r.json, "state"), "completed");
    assert_string_equal(kiln_test_jstr(r.json, "worker"), "good-w");
    kiln_test_http_free(&r);
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
        T(pinned_job_gets_404_for_an_unknown_machine_and_409_for_an_offline_one),
        T(on_offline_wait_queues_the_job_until_its_machine_is_back),
        T(on_offline_any_drops_the_pin_and_another_machine_runs_it),
        T(on_offline_wake_sends_the_magic_packet_and_accepts_the_job),
        T(waiting_names_the_requirement_each_worker_fails_and_the_offline_match),
        T(webhook_is_signed_retried_after_a_failure_and_shown_delivered),
        T(webhook_is_refused_when_the_hub_has_no_secret),
        T(compat_job_with_minima_and_negative_requirements_runs_only_where_it_matches),
        T(compat_socket_submit_job_is_routed_and_its_requirements_mapped),
#undef T
    };
    if (getenv("KILN_TEST_FILTER"))
        cmocka_set_test_filter(getenv("KILN_TEST_FILTER"));
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    kiln_test_redis_destroy(&redis);
    mg_exit_library();
    curl_global_cleanup();
    return failed;
}

/* services.NAME.downloads end to end: `kiln machine run` against a real
 * Redis, fetching from a real HTTP server (civetweb in this process, one
 * handler that sends its file slowly, in chunks, so progress shows), with
 * the service started only once its files are there. */
#include <civetweb.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kiln/publisher.h"
#include "kiln_test.h"

#define BODY_SIZE   (96 * 1024)
#define CHUNK_BYTES (8 * 1024)
#define CHUNK_MS    100 /* 12 chunks: about 1.2 s, several 200 ms progress lines */

typedef struct fixture {
    kiln_test_redis_t redis;
    struct mg_context *web;
    int port;
    char dir[256], config[320], state_dir[320], log[320], dest[320], source[320];
    char sha_hex[65];
    unsigned char body[BODY_SIZE];
    pid_t agent;
    bool passed;
} fixture_t;

/* /slow.bin: the body in CHUNK_BYTES pieces, CHUNK_MS apart. */
static int on_slow(struct mg_connection *conn, void *cbdata)
{
    fixture_t *f = cbdata;
    mg_printf(conn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
              BODY_SIZE);
    for (size_t off = 0; off < BODY_SIZE; off += CHUNK_BYTES) {
        if (mg_write(conn, f->body + off, CHUNK_BYTES) <= 0)
            break;
        struct timespec pause = {0, CHUNK_MS * 1000000L};
        nanosleep(&pause, NULL);
    }
    return 200;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    for (size_t i = 0; i < BODY_SIZE; i++)
        f->body[i] = (unsigned char)(i * 7 + i / 251);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(f->body, BODY_SIZE, md, &len, EVP_sha256(), NULL), 1);
    for (unsigned i = 0; i < len; i++)
        snprintf(f->sha_hex + 2 * i, 3, "%02x", md[i]);
    kiln_test_redis_start(&f->redis, false);
    kiln_test_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->config, sizeof f->config, "%s/kiln.yaml", f->dir);
    snprintf(f->state_dir, sizeof f->state_dir, "%s/state", f->dir);
    snprintf(f->log, sizeof f->log, "%s/agent.log", f->dir);
    snprintf(f->dest, sizeof f->dest, "%s/models/checkpoints/model.bin", f->dir);
    snprintf(f->source, sizeof f->source, "%s/source.bin", f->dir);
    FILE *out = fopen(f->source, "wb");
    assert_non_null(out);
    assert_int_equal(fwrite(f->body, 1, BODY_SIZE, out), BODY_SIZE);
    fclose(out);
    const char *opts[] = {"listening_ports", "127.0.0.1:0", "num_threads", "4", NULL};
    f->web = mg_start(NULL, NULL, opts);
    assert_non_null(f->web);
    struct mg_server_port ports[2];
    assert_int_equal(mg_get_server_ports(f->web, 2, ports), 1);
    f->port = ports[0].port;
    mg_set_request_handler(f->web, "/slow.bin", on_slow, f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->agent)
        kiln_test_kill(f->agent, SIGTERM, 15000);
    if (!f->passed) {
        kiln_test_dump_file("agent log", f->log);
        char step_log[400];
        snprintf(step_log, sizeof step_log, "%s/logs/painter-downloads.log", f->state_dir);
        kiln_test_dump_file("download step log", step_log);
    }
    mg_stop(f->web);
    kiln_test_redis_destroy(&f->redis);
    char *argv[] = {"/bin/rm", "-rf", f->dir, NULL};
    kiln_test_run(argv, NULL, NULL, 0);
    free(f);
    return 0;
}

/* A config whose service "painter" downloads `url` (checked against sha,
 * when not NULL) and becomes ready once the file equals the source. */
static void start_agent(fixture_t *f, const char *url, const char *sha)
{
    FILE *out = fopen(f->config, "w");
    assert_non_null(out);
    fprintf(out,
            "redis: {url: \"%s\"}\n"
            "machine: {id: dl-e2e, type: api}\n"
            "services:\n"
            "  painter:\n"
            "    command: [%s/svc_sleeper]\n"
            "    ready: {command: [/usr/bin/cmp, %s, %s]}\n"
            "    downloads:\n"
            "      - url: \"%s\"\n"
            "        path: %s\n",
            f->redis.url, KILN_TEST_HELPERS_DIR, f->dest, f->source, url, f->dest);
    if (sha)
        fprintf(out, "        sha256: %s\n", sha);
    fclose(out);
    char *argv[] = {KILN_BIN,      "machine",      "run",   "--config",    f->config,
                    "--state-dir", f->state_dir,   "--api", "127.0.0.1:0", "--status-ms",
                    "500",         "--log-format", "text",  NULL};
    f->agent = kiln_test_spawn(argv, NULL, f->log);
}

/* Every event of the machine stream as {"type", "fields"}, in order. */
static json_t *events(fixture_t *f)
{
    json_t *list = json_array();
    redisContext *c = kiln_test_redis_connect(&f->redis);
    redisReply *r = redisCommand(c, "XRANGE %s - +", KILN_MACHINE_EVENTS_STREAM);
    for (size_t i = 0; r && i < r->elements; i++) {
        redisReply *kv = r->element[i]->element[1];
        json_t *ev = json_object();
        for (size_t k = 0; k + 1 < kv->elements; k += 2) {
            const char *key = kv->element[k]->str, *val = kv->element[k + 1]->str;
            if (strcmp(key, "fields") == 0)
                json_object_set_new(ev, key, json_loads(val, 0, NULL));
            else if (strcmp(key, "type") == 0)
                json_object_set_new(ev, key, json_string(val));
        }
        json_array_append_new(list, ev);
    }
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return list;
}

/* painter's worker_phase events' fields, in order. */
static json_t *painter_phases(fixture_t *f)
{
    json_t *all = events(f), *out = json_array(), *ev;
    size_t i;
    json_array_foreach(all, i, ev)
    {
        json_t *fields = json_object_get(ev, "fields");
        if (strcmp(json_string_value(json_object_get(ev, "type")), "worker_phase") == 0 &&
            strcmp(json_string_value(json_object_get(fields, "worker")), "painter") == 0)
            json_array_append(out, fields);
    }
    json_decref(all);
    return out;
}

typedef struct state_cond {
    fixture_t *f;
    const char *state;
} state_cond_t;

/* The machine status as published, or NULL. */
static json_t *machine_status(fixture_t *f)
{
    redisContext *rc = kiln_test_redis_connect(&f->redis);
    redisReply *r = redisCommand(rc, "GET kiln:machine:dl-e2e");
    json_t *status = r && r->type == REDIS_REPLY_STRING ? json_loads(r->str, 0, NULL) : NULL;
    if (r)
        freeReplyObject(r);
    redisFree(rc);
    return status;
}

/* painter's state in the published machine status is c->state. */
static bool painter_is(void *ctx)
{
    state_cond_t *c = ctx;
    json_t *status = machine_status(c->f);
    bool match = false;
    size_t i;
    json_t *svc;
    json_array_foreach(json_object_get(status, "services"), i, svc)
    {
        const char *name = json_string_value(json_object_get(svc, "name"));
        const char *st = json_string_value(json_object_get(svc, "state"));
        match = match || (strcmp(name, "painter") == 0 && strcmp(st, c->state) == 0);
    }
    json_decref(status);
    return match;
}

static const char *phase_of(json_t *fields)
{
    return json_string_value(json_object_get(fields, "phase"));
}

static void the_service_starts_after_its_download_and_reports_each_phase_with_progress(void **state)
{
    fixture_t *f = *state;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/slow.bin", f->port);
    start_agent(f, url, f->sha_hex);
    state_cond_t running = {f, "running"};
    if (!kiln_test_wait_until(painter_is, &running, 30000))
        fail_msg("painter never ran");
    json_t *phases = painter_phases(f);
    char *text = json_dumps(phases, JSON_COMPACT);
    print_message("painter's phases: %s\n", text);
    free(text);
    /* announcing, downloading (progress lines), configuring, starting, ready. */
    size_t n = json_array_size(phases), i = 0;
    assert_true(n >= 6);
    assert_string_equal(phase_of(json_array_get(phases, i++)), "announcing");
    assert_string_equal(phase_of(json_array_get(phases, i++)), "downloading"); /* step started */
    json_int_t last_done = -1;
    size_t with_bytes = 0;
    while (i < n && strcmp(phase_of(json_array_get(phases, i)), "downloading") == 0) {
        json_t *p = json_array_get(phases, i++);
        json_int_t done = json_integer_value(json_object_get(p, "bytes_done"));
        assert_int_equal(json_integer_value(json_object_get(p, "bytes_total")), BODY_SIZE);
        assert_true(done > last_done);
        assert_int_equal(json_integer_value(json_object_get(p, "percent")), done * 100 / BODY_SIZE);
        assert_int_equal(json_integer_value(json_object_get(p, "progress")),
                         done * 100 / BODY_SIZE);
        assert_int_equal(json_integer_value(json_object_get(p, "files")), 1);
        assert_string_equal(json_string_value(json_object_get(p, "url")), url);
        json_t *eta = json_object_get(p, "eta_ms");
        assert_true(json_is_null(eta) || (json_is_integer(eta) && json_integer_value(eta) >= 0));
        if (done < BODY_SIZE && json_is_integer(eta))
            assert_true(json_integer_value(eta) <= 60000); /* ~1.2 s in all */
        last_done = done;
        with_bytes++;
    }
    assert_true(with_bytes >= 3); /* at least two partial lines and the final one */
    assert_int_equal(last_done, BODY_SIZE);
    assert_string_equal(phase_of(json_array_get(phases, i++)), "configuring");
    assert_string_equal(phase_of(json_array_get(phases, i++)), "starting");
    assert_string_equal(phase_of(json_array_get(phases, i++)), "ready");
    json_decref(phases);

    /* painter's run began only after its download step had exited. */
    json_t *all = events(f), *ev;
    long step_exited = -1, painter_started = -1;
    json_array_foreach(all, i, ev)
    {
        json_t *fl = json_object_get(ev, "fields");
        const char *svc = json_string_value(json_object_get(fl, "service"));
        const char *to = json_string_value(json_object_get(fl, "to"));
        if (svc && to && !strcmp(svc, "painter-downloads") && !strcmp(to, "exited"))
            step_exited = (long)i;
        if (svc && to && !strcmp(svc, "painter") && !strcmp(to, "starting"))
            painter_started = (long)i;
    }
    json_decref(all);
    assert_true(step_exited >= 0 && painter_started > step_exited);
    /* The machine status keeps the last progress of each service's downloads. */
    json_t *status = machine_status(f);
    json_t *dl = json_object_get(json_object_get(status, "downloads"), "painter");
    assert_int_equal(json_integer_value(json_object_get(dl, "bytes_done")), BODY_SIZE);
    assert_int_equal(json_integer_value(json_object_get(dl, "percent")), 100);
    json_decref(status);
    f->passed = true;
}

/* Waits for painter to fail; returns the error of its failed phase event. */
static char *failed_phase_error(fixture_t *f)
{
    state_cond_t failed = {f, "failed"};
    if (!kiln_test_wait_until(painter_is, &failed, 30000))
        fail_msg("painter never went failed");
    json_t *phases = painter_phases(f), *p;
    size_t i;
    char *error = NULL;
    json_array_foreach(phases, i, p)
    {
        const char *e = json_string_value(json_object_get(p, "error"));
        if (!error && e && strcmp(phase_of(p), "failed") == 0)
            error = strdup(e);
        assert_string_not_equal(phase_of(p), "ready");
    }
    json_decref(phases);
    assert_non_null(error);
    return error;
}

static void a_404_fails_the_service_with_an_event_naming_the_url_without_credentials(void **state)
{
    fixture_t *f = *state;
    char url[160];
    snprintf(url, sizeof url, "http://user:s3cr3tpw@127.0.0.1:%d/missing.bin?token=t0k3n", f->port);
    start_agent(f, url, NULL);
    char *error = failed_phase_error(f);
    print_message("error: %s\n", error);
    char shown[96];
    snprintf(shown, sizeof shown, "127.0.0.1:%d/missing.bin", f->port);
    assert_non_null(strstr(error, shown));
    assert_non_null(strstr(error, "404"));
    assert_non_null(strstr(error, "services.painter.downloads[0]"));
    assert_non_null(strstr(error, "check the URL"));
    assert_null(strstr(error, "s3cr3tpw"));
    assert_null(strstr(error, "t0k3n"));
    free(error);
    json_t *status = machine_status(f);
    json_t *dl = json_object_get(json_object_get(status, "downloads"), "painter");
    assert_non_null(strstr(json_string_value(json_object_get(dl, "error")), "404"));
    char *text = json_dumps(status, JSON_COMPACT);
    assert_null(strstr(text, "s3cr3tpw"));
    assert_null(strstr(text, "t0k3n"));
    free(text);
    json_decref(status);
    assert_int_not_equal(access(f->dest, F_OK), 0);
    f->passed = true;
}

static void a_wrong_checksum_fails_the_service_and_keeps_no_file(void **state)
{
    fixture_t *f = *state;
    char url[128], wrong[65];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/slow.bin", f->port);
    memset(wrong, 'a', 64);
    wrong[64] = '\0';
    start_agent(f, url, wrong);
    char *error = failed_phase_error(f);
    assert_non_null(strstr(error, "sha256 mismatch"));
    assert_non_null(strstr(error, url + strlen("http://")));
    free(error);
    char part[400];
    snprintf(part, sizeof part, "%s.part", f->dest);
    assert_int_not_equal(access(f->dest, F_OK), 0);
    assert_int_not_equal(access(part, F_OK), 0);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            the_service_starts_after_its_download_and_reports_each_phase_with_progress, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_404_fails_the_service_with_an_event_naming_the_url_without_credentials, setup,
            teardown),
        cmocka_unit_test_setup_teardown(a_wrong_checksum_fails_the_service_and_keeps_no_file, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

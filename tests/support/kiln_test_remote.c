/* Test support for connectors against fakes (contract in kiln_test_remote_connector.h). */
#include "kiln_test_remote.h"

#include "kiln_test.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define STATS_MAX 65536

char *kiln_test_remote_slurp(const char *path, size_t max)
{
    char *buf = calloc(1, max + 1);
    assert_non_null(buf);
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t n = fread(buf, 1, max, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}

static bool fake_listening(void *ctx)
{
    kiln_test_remote_fake_t *f = ctx;
    char *log = kiln_test_remote_slurp(f->log_path, 4096);
    const char *at = strstr(log, "listening on 127.0.0.1:");
    if (at)
        f->port = atoi(at + strlen("listening on 127.0.0.1:"));
    free(log);
    return f->port > 0;
}

void kiln_test_remote_fake_start(kiln_test_remote_fake_t *f, const char *name, const char *const args[],
                          const char *dir)
{
    static int seq;
    memset(f, 0, sizeof *f);
    snprintf(f->log_path, sizeof f->log_path, "%s/%s-%02d.log", dir, name, ++seq);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", KILN_TEST_FAKES_DIR, name);
    char *argv[16] = {path, "0"};
    for (int i = 0; args && args[i] && i < 13; i++)
        argv[2 + i] = (char *)args[i];
    f->pid = kiln_test_spawn(argv, NULL, f->log_path);
    if (!kiln_test_wait_until(fake_listening, f, 10000)) {
        kiln_test_dump_file(name, f->log_path);
        kiln_test_kill(f->pid, SIGKILL, 1000);
        fail_msg("%s did not start", name);
    }
    snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", f->port);
}

void kiln_test_remote_fake_stop(kiln_test_remote_fake_t *f)
{
    kiln_test_kill(f->pid, SIGTERM, 5000);
}

typedef struct body {
    char data[STATS_MAX];
    size_t len;
} body_t;

static size_t on_stats_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    body_t *b = userdata;
    size_t n = size * nmemb;
    if (n > sizeof b->data - 1 - b->len)
        return 0;
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static json_t *fake_stats(const kiln_test_remote_fake_t *f)
{
    static body_t body;
    memset(&body, 0, sizeof body);
    char url[128];
    snprintf(url, sizeof url, "%s/fake/stats", f->url);
    CURL *curl = curl_easy_init();
    assert_non_null(curl);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_stats_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    CURLcode cc = curl_easy_perform(curl);
    curl_easy_cleanup(curl);
    if (cc != CURLE_OK)
        fail_msg("GET %s: %s", url, curl_easy_strerror(cc));
    json_t *stats = json_loads(body.data, 0, NULL);
    assert_non_null(stats);
    return stats;
}

long kiln_test_remote_fake_stat(const kiln_test_remote_fake_t *f, const char *name)
{
    json_t *stats = fake_stats(f);
    long value = (long)json_integer_value(json_object_get(stats, name));
    json_decref(stats);
    return value;
}

void kiln_test_remote_fake_stat_text(const kiln_test_remote_fake_t *f, const char *name, char *out, size_t size)
{
    json_t *stats = fake_stats(f);
    const char *s = json_string_value(json_object_get(stats, name));
    snprintf(out, size, "%s", s ? s : "");
    json_decref(stats);
}

static void record_progress(void *ctx, double percent, const char *message)
{
    kiln_test_remote_progress_t *p = ctx;
    pthread_mutex_lock(&p->lock);
    int n = atomic_load(&p->count);
    if (n < KILN_TEST_PERCENTS_MAX) {
        p->percents[n] = percent;
        snprintf(p->messages[n], sizeof p->messages[n], "%s", message ? message : "");
    }
    snprintf(p->last_message, sizeof p->last_message, "%s", message ? message : "");
    pthread_mutex_unlock(&p->lock);
    atomic_fetch_add(&p->count, 1);
}

typedef struct canceller {
    atomic_int flag;
    int fd;
    kiln_test_remote_progress_t *progress;
    int after;
    pthread_t thread;
} canceller_t;

static bool progress_reached(void *ctx)
{
    canceller_t *c = ctx;
    return atomic_load(&c->progress->count) >= c->after;
}

static void *cancel_main(void *ctx)
{
    canceller_t *c = ctx;
    kiln_test_wait_until(progress_reached, c, 30000);
    atomic_store(&c->flag, 1);
    uint64_t one = 1;
    ssize_t n = write(c->fd, &one, sizeof one);
    (void)n;
    return NULL;
}

void kiln_test_remote_run_job(kiln_connector_t *c, const char *id, const char *payload, int64_t timeout_ms,
                       int cancel_after, kiln_test_remote_run_t *r)
{
    static atomic_int never = 0;
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->progress.lock, NULL);
    canceller_t cancel = {.fd = -1, .progress = &r->progress, .after = cancel_after};
    if (cancel_after > 0) {
        cancel.fd = eventfd(0, EFD_CLOEXEC);
        assert_true(cancel.fd >= 0);
        assert_int_equal(pthread_create(&cancel.thread, NULL, cancel_main, &cancel), 0);
    }
    kiln_job_context_t job = {
        .job_id = id,
        .service = kiln_connector_name(c),
        .payload_json = payload,
        .attempt = 1,
        .timeout_ms = timeout_ms,
        .progress = record_progress,
        .progress_ctx = &r->progress,
        .cancel = cancel_after > 0 ? &cancel.flag : &never,
        .cancel_fd = cancel.fd,
    };
    int64_t start = kiln_test_now_ms();
    assert_int_equal(kiln_connector_run(c, &job, &r->out), 0);
    r->elapsed_ms = kiln_test_now_ms() - start;
    if (cancel_after > 0) {
        pthread_join(cancel.thread, NULL);
        close(cancel.fd);
    }
    if (r->out.result_json)
        r->result = json_loads(r->out.result_json, 0, NULL);
}

void kiln_test_remote_run_clear(kiln_test_remote_run_t *r)
{
    json_decref(r->result);
    kiln_job_outcome_clear(&r->out);
    pthread_mutex_destroy(&r->progress.lock);
}

void kiln_test_remote_expect_completed(const kiln_test_remote_run_t *r)
{
    if (r->out.status != KILN_OUTCOME_COMPLETED || !r->result)
        fail_msg("expected completed, got status %d: %s", (int)r->out.status,
                 r->out.error ? r->out.error : "(no error)");
}

void kiln_test_remote_expect_failed(const kiln_test_remote_run_t *r, bool retryable, const char *needle)
{
    if (r->out.status != KILN_OUTCOME_FAILED)
        fail_msg("expected failed, got status %d (result %s)", (int)r->out.status,
                 r->out.result_json ? r->out.result_json : "null");
    assert_non_null(r->out.error);
    if (!strstr(r->out.error, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", r->out.error, needle);
    if (r->out.retryable != retryable)
        fail_msg("error \"%s\": expected retryable=%d", r->out.error, (int)retryable);
}

kiln_connector_t *kiln_test_remote_connector(const char *name, const char *type, const char *options,
                                      const char *redis_url)
{
    json_error_t jerr;
    json_t *opts = json_loads(options, 0, &jerr);
    if (!opts)
        fail_msg("options %s: %s", options, jerr.text);
    kiln_connector_config_t cfg = {
        .name = (char *)name, .type = (char *)type, .options = opts, .redis_url = redis_url};
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    if (kiln_connector_new(&cfg, &c, &err) != 0)
        fail_msg("kiln_connector_new %s: %s", options, err.msg);
    json_decref(opts);
    return c;
}

int kiln_test_remote_connector_refused(const char *name, const char *type, const char *options, char *msg,
                                size_t size)
{
    json_t *opts = json_loads(options, 0, NULL);
    assert_non_null(opts);
    kiln_connector_config_t cfg = {.name = (char *)name, .type = (char *)type, .options = opts};
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    int rc = kiln_connector_new(&cfg, &c, &err);
    json_decref(opts);
    kiln_connector_free(c);
    snprintf(msg, size, "%s", err.msg);
    return rc;
}

int kiln_test_remote_capture_begin(const char *path)
{
    fflush(stderr);
    int saved = dup(2);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    return saved;
}

void kiln_test_remote_capture_end(int saved)
{
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
}

/* ---- end to end ---------------------------------------------------------------- */

void kiln_test_api_e2e_start(kiln_test_api_e2e_t *e, const char *fake_name,
                             const char *const fake_args[], const char *yaml, const char *connector,
                             char *const env[])
{
    memset(e, 0, sizeof *e);
    kiln_test_tmpdir(e->dir, sizeof e->dir);
    snprintf(e->config, sizeof e->config, "%s/kiln.yaml", e->dir);
    snprintf(e->log_path, sizeof e->log_path, "%s/worker.log", e->dir);
    kiln_test_remote_fake_start(&e->fake, fake_name, fake_args, e->dir);
    FILE *fp = fopen(e->config, "w");
    assert_non_null(fp);
    /* Each "@FAKE@" in the text is the fake's URL. */
    for (const char *p = yaml; *p;) {
        const char *at = strstr(p, "@FAKE@");
        size_t n = at ? (size_t)(at - p) : strlen(p);
        fwrite(p, 1, n, fp);
        if (!at)
            break;
        fputs(e->fake.url, fp);
        p = at + strlen("@FAKE@");
    }
    fclose(fp);
    kiln_test_redis_start(&e->redis, false);
    e->opts = (kiln_broker_options_t){
        .redis_url = e->redis.url,
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
    if (kiln_broker_connect(&e->opts, &e->broker, &err) != 0)
        fail_msg("kiln_broker_connect %s: %s", e->redis.url, err.msg);
    char *argv[] = {KILN_BIN,       "worker",       "--config",        e->config,       "--redis",
                    e->redis.url,   "--connectors", (char *)connector, "--concurrency", "2",
                    "--log-format", "text",         "--log-level",     "debug",         NULL};
    e->worker = kiln_test_spawn(argv, env, e->log_path);
}

void kiln_test_api_e2e_stop(kiln_test_api_e2e_t *e)
{
    if (e->worker > 0)
        kiln_test_kill(e->worker, SIGTERM, 10000);
    kiln_test_remote_fake_stop(&e->fake);
    if (!e->passed) {
        kiln_test_dump_file("worker log", e->log_path);
        kiln_test_dump_file("fake log", e->fake.log_path);
    }
    kiln_broker_free(e->broker);
    kiln_test_redis_destroy(&e->redis);
    char *rm[] = {"/bin/rm", "-rf", e->dir, NULL};
    kiln_test_run(rm, NULL, NULL, 0);
}

void kiln_test_api_e2e_submit(kiln_test_api_e2e_t *e, const char *spec_json, char *id)
{
    kiln_job_spec_t spec;
    kiln_err_t err = {0};
    if (kiln_job_spec_parse(spec_json, strlen(spec_json), e->opts.max_payload_bytes, &spec, &err) !=
        0)
        fail_msg("job spec %s refused: %s", spec_json, err.msg);
    int rc = kiln_broker_submit(e->broker, &spec, id, NULL, &err);
    kiln_job_spec_clear(&spec);
    if (rc != 0)
        fail_msg("submit %s: %s", spec_json, err.msg);
}

json_t *kiln_test_api_e2e_job(kiln_test_api_e2e_t *e, const char *id)
{
    json_t *job = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_get_job(e->broker, id, &job, &err) != 0)
        fail_msg("get_job %s: %s", id, err.msg);
    return job;
}

typedef struct job_cond {
    kiln_test_api_e2e_t *e;
    const char *id;
} job_cond_t;

static bool job_finished(void *ctx)
{
    job_cond_t *c = ctx;
    json_t *job = kiln_test_api_e2e_job(c->e, c->id);
    const char *st = json_string_value(json_object_get(job, "state"));
    bool done = st && (!strcmp(st, "completed") || !strcmp(st, "failed") || !strcmp(st, "dead") ||
                       !strcmp(st, "cancelled"));
    json_decref(job);
    return done;
}

json_t *kiln_test_api_e2e_wait(kiln_test_api_e2e_t *e, const char *id, const char *want)
{
    job_cond_t c = {e, id};
    kiln_test_wait_until(job_finished, &c, 60000);
    json_t *job = kiln_test_api_e2e_job(e, id);
    const char *st = json_string_value(json_object_get(job, "state"));
    if (!st || strcmp(st, want) != 0) {
        char *text = json_dumps(job, JSON_INDENT(1));
        fail_msg("job %s is not %s: %s", id, want, text ? text : "(null)");
    }
    return job;
}

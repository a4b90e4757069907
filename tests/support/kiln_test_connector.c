/*
 * Connector test support (contract in kiln_test_connector.h).
 */
#include "kiln_test_connector.h"

#include "connectors/http.h"
#include "kiln_test.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define ARGS_MAX 16

/* Reads the file's first max bytes (contract in kiln_test_connector.h). */
char *kiln_test_slurp(const char *path, size_t max)
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

typedef struct listening_cond {
    kiln_test_fake_t *f;
    size_t from; /* where in the log this start's output begins */
} listening_cond_t;

static bool fake_listening(void *ctx)
{
    listening_cond_t *c = ctx;
    char *log = kiln_test_slurp(c->f->log_path, c->from + 4096);
    size_t len = strlen(log);
    const char *at = strstr(log + (c->from < len ? c->from : len), "listening on 127.0.0.1:");
    if (at)
        c->f->port = atoi(at + strlen("listening on 127.0.0.1:"));
    free(log);
    return at && c->f->port > 0;
}

static size_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

/* Spawns f->program on port_text and waits until it says it listens. */
static void fake_spawn(kiln_test_fake_t *f, const char *port_text, char *const extra_args[])
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", KILN_TEST_FAKES_DIR, f->program);
    char *argv[ARGS_MAX + 3] = {path, (char *)port_text};
    for (int i = 0; extra_args && extra_args[i] && i < ARGS_MAX; i++)
        argv[2 + i] = extra_args[i];
    listening_cond_t c = {f, file_size(f->log_path)};
    f->pid = kiln_test_spawn(argv, NULL, f->log_path);
    if (!kiln_test_wait_until(fake_listening, &c, 10000)) {
        kiln_test_dump_file(f->program, f->log_path);
        kiln_test_kill(f->pid, SIGKILL, 1000);
        fail_msg("%s did not start", f->program);
    }
    snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", f->port);
}

/* Starts a fake and waits for its port (contract in kiln_test_connector.h). */
void kiln_test_fake_start(kiln_test_fake_t *f, const char *program, char *const extra_args[],
                          const char *log_path)
{
    memset(f, 0, sizeof *f);
    snprintf(f->log_path, sizeof f->log_path, "%s", log_path);
    snprintf(f->program, sizeof f->program, "%s", program);
    fake_spawn(f, "0", extra_args);
}

/* Starts it again on its port (contract in kiln_test_connector.h). */
void kiln_test_fake_restart(kiln_test_fake_t *f)
{
    char port[16];
    snprintf(port, sizeof port, "%d", f->port);
    fake_spawn(f, port, NULL);
}

/* Stops a fake (contract in kiln_test_connector.h). */
void kiln_test_fake_stop(kiln_test_fake_t *f)
{
    if (f->pid > 0)
        kiln_test_kill(f->pid, SIGTERM, 5000);
    f->pid = 0;
}

/* GET /fake/stats, fetched with the HTTP layer itself (caller owns). */
static json_t *fake_stats(const kiln_test_fake_t *f)
{
    kiln_http_client_options_t opts = {.base_url = f->url, .name = "stats", .timeout_ms = 5000};
    kiln_http_client_t *client = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_http_client_new(&opts, &client, &err), 0);
    kiln_http_call_t call = {.method = "GET", .path = "/fake/stats", .cancel_fd = -1};
    kiln_http_result_t res;
    if (kiln_http_call(client, &call, &res, &err) != 0)
        fail_msg("GET /fake/stats: %s", err.msg);
    json_t *stats = json_loadb(res.body, res.body_len, 0, NULL);
    if (!json_is_object(stats))
        fail_msg("GET /fake/stats: not a JSON object: %s", res.body);
    kiln_http_result_clear(&res);
    kiln_http_client_free(client);
    return stats;
}

/* One counter of the stats (contract in kiln_test_connector.h). */
long kiln_test_fake_stat(const kiln_test_fake_t *f, const char *name)
{
    json_t *stats = fake_stats(f);
    json_t *value = json_object_get(stats, name);
    if (!json_is_integer(value)) {
        char *text = json_dumps(stats, JSON_COMPACT);
        fail_msg("/fake/stats has no counter %s: %s", name, text ? text : "?");
    }
    long n = (long)json_integer_value(value);
    json_decref(stats);
    return n;
}

/* One string of the stats (contract in kiln_test_connector.h). */
void kiln_test_fake_stat_text(const kiln_test_fake_t *f, const char *name, char *out, size_t size)
{
    json_t *stats = fake_stats(f);
    const char *s = json_string_value(json_object_get(stats, name));
    snprintf(out, size, "%s", s ? s : "");
    json_decref(stats);
}

/* A port nothing listens on (contract in kiln_test_connector.h). */
int kiln_test_free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    assert_int_equal(bind(s, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&addr, &len), 0);
    close(s);
    return ntohs(addr.sin_port);
}

/* A connector from options (contract in kiln_test_connector.h). */
kiln_connector_t *kiln_test_connector_new(const char *type, const char *name, json_t *options)
{
    kiln_connector_config_t cfg = {.name = (char *)name, .type = (char *)type, .options = options};
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    if (kiln_connector_new(&cfg, &c, &err) != 0)
        fail_msg("kiln_connector_new %s: %s", type, err.msg);
    return c;
}

/* A connector from options (stolen) extended by extra (contract in kiln_test_connector.h). */
kiln_connector_t *kiln_test_connector_extended(const char *type, const char *name, json_t *options,
                                               const char *extra)
{
    assert_non_null(options);
    if (extra) {
        json_t *more = json_loads(extra, 0, NULL);
        assert_non_null(more);
        json_object_update(options, more);
        json_decref(more);
    }
    kiln_connector_t *c = kiln_test_connector_new(type, name, options);
    json_decref(options);
    return c;
}

static json_t *parse_options(const char *options)
{
    json_error_t jerr;
    json_t *opts = json_loads(options, 0, &jerr);
    if (!opts)
        fail_msg("options %s: %s", options, jerr.text);
    return opts;
}

/* A connector from options text (contract in kiln_test_connector.h). */
kiln_connector_t *kiln_test_connector_parse(const char *type, const char *name, const char *options,
                                            const char *redis_url)
{
    json_t *opts = parse_options(options);
    kiln_connector_config_t cfg = {
        .name = (char *)name, .type = (char *)type, .options = opts, .redis_url = redis_url};
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    if (kiln_connector_new(&cfg, &c, &err) != 0)
        fail_msg("kiln_connector_new %s %s: %s", type, options, err.msg);
    json_decref(opts);
    return c;
}

/* Options init refuses (contract in kiln_test_connector.h). */
int kiln_test_connector_refused(const char *type, const char *name, const char *options, char *msg,
                                size_t size)
{
    json_t *opts = parse_options(options);
    kiln_connector_config_t cfg = {.name = (char *)name, .type = (char *)type, .options = opts};
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    int rc = kiln_connector_new(&cfg, &c, &err);
    json_decref(opts);
    kiln_connector_free(c);
    snprintf(msg, size, "%s", err.msg);
    return rc;
}

/* Expects options to be refused naming needle (contract in kiln_test_connector.h). */
void kiln_test_expect_refused(const char *type, const char *name, const char *options,
                              const char *needle, char *msg, size_t size)
{
    int rc = kiln_test_connector_refused(type, name, options, msg, size);
    if (rc != KILN_EINVAL)
        fail_msg("options %s: expected KILN_EINVAL, got %d", options, rc);
    if (!strstr(msg, needle))
        fail_msg("options %s: \"%s\" does not mention \"%s\"", options, msg, needle);
}

static void record_progress(void *ctx, double percent, const char *message)
{
    kiln_test_job_t *j = ctx;
    pthread_mutex_lock(&j->lock);
    int n = atomic_load(&j->progress_count);
    if (n < KILN_TEST_PROGRESS_MAX) {
        j->percents[n] = percent;
        snprintf(j->messages[n], KILN_TEST_MESSAGE_MAX, "%s", message ? message : "");
    }
    atomic_store(&j->progress_count, n + 1);
    pthread_mutex_unlock(&j->lock);
}

typedef struct canceller {
    kiln_test_job_t *job;
    kiln_test_cancel_when_fn when;
    void *ctx;
    atomic_int flag;
    int fd;
    pthread_t thread;
} canceller_t;

static bool cancel_due(void *ctx)
{
    canceller_t *c = ctx;
    return c->when(c->job, c->ctx);
}

static void *cancel_main(void *ctx)
{
    canceller_t *c = ctx;
    kiln_test_wait_until(cancel_due, c, 30000);
    c->job->cancelled_at_ms = kiln_test_now_ms();
    atomic_store(&c->flag, 1);
    uint64_t one = 1;
    ssize_t n = write(c->fd, &one, sizeof one);
    (void)n;
    return NULL;
}

/* Runs one job, cancelled when asked (contract in kiln_test_connector.h). */
void kiln_test_job_run_cancelling(kiln_connector_t *c, const char *id, const char *payload,
                                  int64_t timeout_ms, kiln_test_cancel_when_fn when, void *ctx,
                                  kiln_test_job_t *j)
{
    memset(j, 0, sizeof *j);
    pthread_mutex_init(&j->lock, NULL);
    canceller_t cancel = {.job = j, .when = when, .ctx = ctx, .fd = -1};
    atomic_init(&cancel.flag, 0);
    if (when) {
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
        .progress_ctx = j,
        .cancel = &cancel.flag,
        .cancel_fd = cancel.fd,
    };
    int64_t start = kiln_test_now_ms();
    assert_int_equal(kiln_connector_run(c, &job, &j->out), 0);
    j->finished_at_ms = kiln_test_now_ms();
    j->elapsed_ms = j->finished_at_ms - start;
    if (when) {
        pthread_join(cancel.thread, NULL);
        close(cancel.fd);
    }
    if (j->out.result_json)
        j->result = json_loads(j->out.result_json, 0, NULL);
}

static bool progress_count_reached(const kiln_test_job_t *j, void *ctx)
{
    return atomic_load(&j->progress_count) >= *(const int *)ctx;
}

/* Runs one job (contract in kiln_test_connector.h). */
void kiln_test_job_run(kiln_connector_t *c, const char *id, const char *payload, int64_t timeout_ms,
                       int cancel_after, kiln_test_job_t *j)
{
    kiln_test_job_run_cancelling(c, id, payload, timeout_ms,
                                 cancel_after > 0 ? progress_count_reached : NULL, &cancel_after,
                                 j);
}

/* Frees what j holds (contract in kiln_test_connector.h). */
void kiln_test_job_clear(kiln_test_job_t *j)
{
    json_decref(j->result);
    kiln_job_outcome_clear(&j->out);
    pthread_mutex_destroy(&j->lock);
}

/* Whether a progress message mentions needle (contract in kiln_test_connector.h). */
bool kiln_test_job_progress_mentions(const kiln_test_job_t *j, const char *needle)
{
    int n = atomic_load(&j->progress_count);
    for (int i = 0; i < n && i < KILN_TEST_PROGRESS_MAX; i++)
        if (strstr(j->messages[i], needle))
            return true;
    return false;
}

/* The last progress message (contract in kiln_test_connector.h). */
const char *kiln_test_job_last_message(const kiln_test_job_t *j)
{
    int n = atomic_load(&j->progress_count);
    if (n > KILN_TEST_PROGRESS_MAX)
        n = KILN_TEST_PROGRESS_MAX;
    return n > 0 ? j->messages[n - 1] : "";
}

/* Fails unless completed (contract in kiln_test_connector.h). */
void kiln_test_expect_completed(const kiln_test_job_t *j)
{
    if (j->out.status != KILN_OUTCOME_COMPLETED || !j->result)
        fail_msg("expected completed, got status %d: %s", (int)j->out.status,
                 j->out.error ? j->out.error : "(no error)");
}

/* Fails unless failed as described (contract in kiln_test_connector.h). */
void kiln_test_expect_failed(const kiln_test_job_t *j, bool retryable, const char *needle)
{
    if (j->out.status != KILN_OUTCOME_FAILED)
        fail_msg("expected failed, got status %d (result %s)", (int)j->out.status,
                 j->out.result_json ? j->out.result_json : "null");
    assert_non_null(j->out.error);
    if (!strstr(j->out.error, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", j->out.error, needle);
    if (j->out.retryable != retryable)
        fail_msg("error \"%s\": expected retryable=%d", j->out.error, (int)retryable);
}

/* Redirects fd 2 into path (contract in kiln_test_connector.h). */
int kiln_test_capture_begin(const char *path)
{
    fflush(stderr);
    int saved = dup(2);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    return saved;
}

/* Puts fd 2 back (contract in kiln_test_connector.h). */
void kiln_test_capture_end(int saved)
{
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
}

/* The string member key of obj or "" (contract in kiln_test_connector.h). */
const char *kiln_test_json_str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

/* Counts dir's visible entries (contract in kiln_test_connector.h). */
size_t kiln_test_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    size_t n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

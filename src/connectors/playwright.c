/*
 * The playwright connector: a screenshot or a PDF of a web page, after
 * optional scripted steps, made by kiln's browser-automation service
 * (services/playwright/server.mjs, docs/connectors.md#playwright) over the
 * shared HTTP layer in http.c.
 *
 * The service answers POST /jobs with server-sent events: progress, the
 * artefact in base64 chunks, then a result (its size and SHA-256) or an
 * error. Chunks are decoded straight into a temporary file in outputs_dir,
 * bounded by max_bytes, and the file is renamed to <job id>.png or .pdf only
 * once the result's size and hash match, so a reader never sees half a file.
 * Cancelling closes the connection and tells the service (POST /cancel/<id>),
 * which closes the job's page. Everything the instance holds is fixed at
 * init, so run() needs no lock.
 */
#include "api_job.h"
#include "http.h"

#include "kiln/connector.h"
#include "kiln/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PW_LOG               "playwright"
#define PW_DEFAULT_URL       "http://127.0.0.1:3100"
#define PW_TIMEOUT_DEFAULT   60000  /* ms the service may spend on one job */
#define PW_TIMEOUT_MAX       600000 /* the service's own limit */
#define PW_TIMEOUT_GRACE_MS  15000  /* on top, for the browser start and the transfer */
#define PW_CONTROL_TIMEOUT   5000   /* ms for GET /health and POST /cancel */
#define PW_RETRIES_DEFAULT   2
#define PW_MAX_BYTES_DEFAULT (32 * 1024 * 1024)
#define PW_MAX_BYTES_LIMIT   (256 * 1024 * 1024)
#define PW_JOB_ID_MAX        128
#define PW_TEXT_MAX          1024 /* characters kept of a page's title, URL, or an error */

typedef struct playwright {
    char name[128];
    kiln_http_client_t *jobs;    /* POST /jobs: retried, long timeout */
    kiln_http_client_t *control; /* GET /health, POST /cancel: short, never retried */
    char *outputs_dir;           /* absolute */
    int64_t timeout_ms;
    int64_t max_bytes;
} playwright_t;

static const char *const known_options[] = {"base_url",    "timeout_ms",  "connect_timeout_ms",
                                            "max_retries", "outputs_dir", "max_bytes",
                                            NULL};

/* The payload fields passed on to the service; anything else is refused. */
static const char *const payload_fields[] = {"url",        "action",     "full_page", "viewport",
                                             "wait_until", "timeout_ms", "steps",     "landscape",
                                             "paper",      NULL};

/* ---- init ------------------------------------------------------------------ */

static void playwright_free(void *state)
{
    playwright_t *pw = state;
    if (!pw)
        return;
    kiln_http_client_free(pw->jobs);
    kiln_http_client_free(pw->control);
    free(pw->outputs_dir);
    free(pw);
}

/* outputs_dir as an absolute, writable folder, created when missing. */
static int read_outputs_dir(const kiln_connector_config_t *cfg, playwright_t *pw, kiln_err_t *err)
{
    const char *dir = NULL;
    int rc = kiln_connector_option_string(cfg, "outputs_dir", &dir, err);
    if (rc < 0)
        return rc;
    if (!dir)
        dir = "./outputs";
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.outputs_dir: cannot create %s: %s; create the folder "
                            "or give another",
                            cfg->name, dir, strerror(errno));
    struct stat st;
    if (!(pw->outputs_dir = realpath(dir, NULL)) || stat(pw->outputs_dir, &st) != 0 ||
        !S_ISDIR(st.st_mode) || access(pw->outputs_dir, W_OK | X_OK) != 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.outputs_dir: %s is not a writable folder; give one",
                            cfg->name, dir);
    return 0;
}

static int read_options(const kiln_connector_config_t *cfg, playwright_t *pw,
                        kiln_http_client_options_t *hopts, kiln_err_t *err)
{
    int64_t connect_ms = 0, retries = 0;
    const char *base_url = NULL;
    int rc = kiln_connector_option_string(cfg, "base_url", &base_url, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "timeout_ms", 1, PW_TIMEOUT_MAX, PW_TIMEOUT_DEFAULT,
                                       &pw->timeout_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "connect_timeout_ms", 1, PW_TIMEOUT_MAX,
                                       KILN_HTTP_CONNECT_TIMEOUT_MS, &connect_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "max_retries", 0, KILN_HTTP_RETRIES_MAX,
                                       PW_RETRIES_DEFAULT, &retries, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "max_bytes", 1, PW_MAX_BYTES_LIMIT,
                                       PW_MAX_BYTES_DEFAULT, &pw->max_bytes, err);
    hopts->base_url = base_url ? base_url : PW_DEFAULT_URL;
    hopts->connect_timeout_ms = (long)connect_ms;
    hopts->max_retries = (int)retries;
    return rc;
}

static int playwright_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    playwright_t *pw = calloc(1, sizeof *pw);
    if (!pw)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    snprintf(pw->name, sizeof pw->name, "%s", cfg->name);
    kiln_http_client_options_t hopts = {.name = cfg->name};
    int rc = read_options(cfg, pw, &hopts, err);
    if (rc == 0) {
        /* A job's own deadline bounds the transfer; the attempt timeout is a backstop. */
        hopts.timeout_ms = (long)(PW_TIMEOUT_MAX + PW_TIMEOUT_GRACE_MS);
        rc = kiln_http_client_new(&hopts, &pw->jobs, err);
    }
    if (rc == 0) {
        hopts.timeout_ms = PW_CONTROL_TIMEOUT;
        hopts.max_retries = 0;
        rc = kiln_http_client_new(&hopts, &pw->control, err);
    }
    /* Last, so a bad option elsewhere creates no folder. */
    if (rc == 0)
        rc = read_outputs_dir(cfg, pw, err);
    if (rc < 0) {
        playwright_free(pw);
        return rc;
    }
    kiln_connector_warn_unknown_options(cfg, known_options);
    kiln_log(KILN_LOG_INFO, PW_LOG, NULL, NULL, "connectors.%s: service %s, outputs in %s",
             cfg->name, kiln_http_client_url_shown(pw->jobs), pw->outputs_dir);
    *state = pw;
    return 0;
}

/* GET /health: the service answers 200 only while its browser is connected. */
static int playwright_health(void *state, kiln_err_t *err)
{
    const playwright_t *pw = state;
    kiln_http_call_t call = {.method = "GET", .path = "/health", .cancel_fd = -1};
    kiln_http_result_t res = {0};
    int rc = kiln_http_call(pw->control, &call, &res, err);
    kiln_http_result_clear(&res);
    return rc;
}

/* ---- the artefact ---------------------------------------------------------- */

/* Where one job's artefact goes while it arrives, and what arrived. */
typedef struct artefact {
    char temp_path[PATH_MAX];
    int fd;
    int64_t bytes;
    EVP_ENCODE_CTX *b64;
    EVP_MD_CTX *sha;
} artefact_t;

static void artefact_close(artefact_t *a, bool keep)
{
    if (a->fd >= 0)
        close(a->fd);
    a->fd = -1;
    if (!keep && a->temp_path[0])
        unlink(a->temp_path);
    EVP_ENCODE_CTX_free(a->b64);
    EVP_MD_CTX_free(a->sha);
    a->b64 = NULL;
    a->sha = NULL;
}

static int write_all(int fd, const unsigned char *bytes, size_t len)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, bytes + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        done += (size_t)n;
    }
    return 0;
}

/* ---- the event stream ------------------------------------------------------ */

typedef struct stream {
    const playwright_t *pw;
    const kiln_job_context_t *job;
    artefact_t file;
    json_t *result; /* the "result" event, once it came */
    char error[PW_TEXT_MAX + 128];
    bool failed; /* error holds the job's failure */
    bool retryable;
} stream_t;

static int stream_fail(stream_t *s, bool retryable, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int stream_fail(stream_t *s, bool retryable, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
    kiln_connector_sanitize_text(s->error, strlen(s->error));
    s->failed = true;
    s->retryable = retryable;
    return KILN_EIO;
}

/* A chunk event: base64 of the next piece of the artefact. */
static int on_chunk(stream_t *s, const char *data)
{
    artefact_t *a = &s->file;
    size_t len = strlen(data);
    if (len > INT_MAX)
        return stream_fail(s, false, "the service sent a chunk larger than 2 GiB");
    /* EVP_DecodeUpdate also flushes what it kept from the last chunk (< 80 characters). */
    unsigned char *bytes = malloc(len / 4 * 3 + 128);
    if (!bytes)
        return KILN_ENOMEM;
    int n = 0;
    int rc = EVP_DecodeUpdate(a->b64, bytes, &n, (const unsigned char *)data, (int)len);
    if (rc < 0)
        rc = stream_fail(s, false, "the service sent a chunk that is not base64");
    else if (a->bytes + n > s->pw->max_bytes)
        rc = stream_fail(s, false,
                         "the artefact is larger than connectors.%s.max_bytes (%" PRId64
                         " bytes); raise it if that is expected",
                         s->pw->name, s->pw->max_bytes);
    else if ((rc = write_all(a->fd, bytes, (size_t)n)) < 0)
        rc = stream_fail(s, true, "writing %s: %s", a->temp_path, strerror(-rc));
    else {
        EVP_DigestUpdate(a->sha, bytes, (size_t)n);
        a->bytes += n;
        rc = 0;
    }
    free(bytes);
    return rc;
}

/* An error event: {code, message, status?, retryable}. */
static int on_error_event(stream_t *s, const json_t *event)
{
    const char *code = json_string_value(json_object_get(event, "code"));
    const char *message = json_string_value(json_object_get(event, "message"));
    return stream_fail(s, json_is_true(json_object_get(event, "retryable")), "%s: %.*s",
                       code ? code : "error", PW_TEXT_MAX, message ? message : "(no message)");
}

static void report(const kiln_job_context_t *job, double percent, const char *message)
{
    if (!job->progress)
        return;
    percent = percent < 0 ? 0 : percent > 99 ? 99 : percent;
    job->progress(job->progress_ctx, percent, message);
}

static int on_event(void *ctx, const char *data, size_t len)
{
    stream_t *s = ctx;
    json_error_t jerr;
    json_t *event = json_loadb(data, len, 0, &jerr);
    const char *type = json_string_value(json_object_get(event, "type"));
    int rc = 0;
    if (!type) {
        rc = stream_fail(s, false, "the service sent an event that is not {\"type\": ...} (%s)",
                         event ? "another JSON value" : jerr.text);
    } else if (strcmp(type, "progress") == 0) {
        char message[PW_TEXT_MAX];
        const char *text = json_string_value(json_object_get(event, "message"));
        snprintf(message, sizeof message, "%s", text ? text : "");
        kiln_connector_sanitize_text(message, strlen(message));
        report(s->job, json_number_value(json_object_get(event, "percent")), message);
    } else if (strcmp(type, "chunk") == 0) {
        const char *chunk = json_string_value(json_object_get(event, "data"));
        rc = chunk ? on_chunk(s, chunk)
                   : stream_fail(s, false, "the service sent a chunk without data");
    } else if (strcmp(type, "result") == 0 && !s->result) {
        s->result = json_incref(event);
    } else if (strcmp(type, "error") == 0) {
        rc = on_error_event(s, event);
    }
    json_decref(event);
    return rc;
}

/* ---- run ------------------------------------------------------------------- */

/* The job id as a file name: the broker's ids (<service>.<seq>) always are one. */
static bool job_id_is_file_name(const char *id)
{
    size_t len = id ? strlen(id) : 0;
    if (len == 0 || len > PW_JOB_ID_MAX || id[0] == '.')
        return false;
    return strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == len;
}

/* The service's request: the payload's known fields, the job id, the limits.
 * Fills out and returns NULL when the payload is not acceptable. */
static json_t *build_request(const playwright_t *pw, const kiln_job_context_t *job,
                             const json_t *payload, kiln_job_outcome_t *out)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)payload, key, value)
    {
        bool known = false;
        for (size_t i = 0; !known && payload_fields[i]; i++)
            known = strcmp(key, payload_fields[i]) == 0;
        if (!known) {
            kiln_job_outcome_fail(out, false,
                                  "payload.%.64s: unknown field; expected url, action, full_page, "
                                  "viewport, wait_until, timeout_ms, steps, landscape, paper",
                                  key);
            return NULL;
        }
    }
    if (!json_is_string(json_object_get(payload, "url"))) {
        char got[64];
        kiln_connector_describe_value(json_object_get(payload, "url"), got, sizeof got);
        kiln_job_outcome_fail(out, false,
                              "payload.url: expected an http:// or https:// URL, got %s", got);
        return NULL;
    }
    json_t *request = json_deep_copy(payload);
    if (!request)
        return NULL;
    json_object_set_new(request, "id", json_string(job->job_id));
    json_object_set_new(request, "max_bytes", json_integer(pw->max_bytes));
    if (!json_object_get(request, "timeout_ms")) {
        int64_t timeout = pw->timeout_ms;
        if (job->timeout_ms > 0 && job->timeout_ms < timeout)
            timeout = job->timeout_ms;
        json_object_set_new(request, "timeout_ms", json_integer(timeout));
    }
    return request;
}

static int artefact_open(const playwright_t *pw, const kiln_job_context_t *job, artefact_t *a,
                         kiln_job_outcome_t *out)
{
    /* The final name (<job id>.png / .pdf) is one character shorter. */
    if ((size_t)snprintf(a->temp_path, sizeof a->temp_path, "%s/.%s.tmp", pw->outputs_dir,
                         job->job_id) >= sizeof a->temp_path) {
        a->temp_path[0] = '\0';
        return kiln_job_outcome_fail(out, false, "connectors.%s.outputs_dir: the path is too long",
                                     pw->name);
    }
    a->fd = open(a->temp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (a->fd < 0) {
        int e = errno;
        a->temp_path[0] = '\0';
        return kiln_job_outcome_fail(out, true, "cannot create %s/.%s.tmp: %s", pw->outputs_dir,
                                     job->job_id, strerror(e));
    }
    a->b64 = EVP_ENCODE_CTX_new();
    a->sha = EVP_MD_CTX_new();
    if (!a->b64 || !a->sha || EVP_DigestInit_ex(a->sha, EVP_sha256(), NULL) != 1)
        return KILN_ENOMEM;
    EVP_DecodeInit(a->b64);
    return 0;
}

/* Checks the finished artefact against the result event, renames it into
 * place and fills out with {path, action, mime, bytes, sha256, url, title}. */
static int finish(stream_t *s, kiln_job_outcome_t *out)
{
    artefact_t *a = &s->file;
    unsigned char tail[4], digest[EVP_MAX_MD_SIZE];
    int n = 0;
    unsigned int dlen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1] = "", path[PATH_MAX];
    if (EVP_DecodeFinal(a->b64, tail, &n) < 0 || n > 0)
        return kiln_job_outcome_fail(out, false, "the service's artefact ended mid-chunk");
    EVP_DigestFinal_ex(a->sha, digest, &dlen);
    for (unsigned int i = 0; i < dlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    const char *action = json_string_value(json_object_get(s->result, "action"));
    const char *sha = json_string_value(json_object_get(s->result, "sha256"));
    json_int_t bytes = json_integer_value(json_object_get(s->result, "bytes"));
    if (!action || !sha || bytes != a->bytes || strcmp(sha, hex) != 0)
        return kiln_job_outcome_fail(out, true,
                                     "the artefact arrived damaged: %" PRId64 " bytes with "
                                     "SHA-256 %s, the service sent %" PRId64 " bytes with %s",
                                     a->bytes, hex, (int64_t)bytes, sha ? sha : "none");
    bool pdf = strcmp(action, "pdf") == 0;
    snprintf(path, sizeof path, "%s/%s.%s", s->pw->outputs_dir, s->job->job_id,
             pdf ? "pdf" : "png");
    if (fsync(a->fd) != 0 || rename(a->temp_path, path) != 0)
        return kiln_job_outcome_fail(out, true, "saving %s: %s", path, strerror(errno));
    a->temp_path[0] = '\0';
    json_t *result = json_pack(
        "{s:s, s:s, s:s, s:I, s:s, s:O?, s:O?}", "path", path, "action", pdf ? "pdf" : "screenshot",
        "mime", pdf ? "application/pdf" : "image/png", "bytes", (json_int_t)a->bytes, "sha256", hex,
        "url", json_object_get(s->result, "url"), "title", json_object_get(s->result, "title"));
    char *text = result ? json_dumps(result, JSON_COMPACT) : NULL;
    json_decref(result);
    if (!text)
        return KILN_ENOMEM;
    out->status = KILN_OUTCOME_COMPLETED;
    out->result_json = text;
    if (s->job->progress)
        s->job->progress(s->job->progress_ctx, 100.0, "saved");
    return 0;
}

/* Tells the service to close the job's page; the connection is gone
 * already, which it notices too, so this is best effort. */
static void tell_cancel(const playwright_t *pw, const char *job_id)
{
    char path[PW_JOB_ID_MAX + 16];
    snprintf(path, sizeof path, "/cancel/%s", job_id);
    kiln_http_call_t call = {.method = "POST", .path = path, .body_json = "{}", .cancel_fd = -1};
    kiln_http_result_t res = {0};
    kiln_err_t err = {0};
    if (kiln_http_call(pw->control, &call, &res, &err) < 0 && res.status != 404)
        kiln_log(KILN_LOG_WARN, PW_LOG, job_id, NULL, "connectors.%s: %s", pw->name, err.msg);
    kiln_http_result_clear(&res);
}

/* Turns how the call ended into the outcome. */
static int conclude(stream_t *s, int rc, const kiln_http_result_t *res, const kiln_err_t *err,
                    kiln_job_outcome_t *out)
{
    const kiln_job_context_t *job = s->job;
    bool cancelled = rc == KILN_ECANCELLED || (job->cancel && atomic_load(job->cancel));
    if (cancelled) {
        tell_cancel(s->pw, job->job_id);
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    if (rc == KILN_ENOMEM)
        return rc;
    if (s->failed)
        return kiln_job_outcome_fail(out, s->retryable, "%s", s->error);
    if (rc == KILN_ETIMEOUT)
        return kiln_job_outcome_fail(out, true, "the playwright service did not finish in time: %s",
                                     err->msg);
    if (rc < 0)
        return kiln_job_outcome_fail(out, res->retryable, "the playwright service (%s): %s",
                                     kiln_http_client_url_shown(s->pw->jobs), err->msg);
    if (!s->result)
        return kiln_job_outcome_fail(out, true,
                                     "the playwright service ended the stream without a result");
    return finish(s, out);
}

static int playwright_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    const playwright_t *pw = state;
    if (!job_id_is_file_name(job->job_id))
        return kiln_job_outcome_fail(out, false,
                                     "job id: expected 1-%d letters, digits, '.', '_' or '-' not "
                                     "starting with '.', as it names the output file",
                                     PW_JOB_ID_MAX);
    json_error_t jerr;
    json_t *payload = json_loads(job->payload_json ? job->payload_json : "", 0, &jerr);
    if (!json_is_object(payload)) {
        json_decref(payload);
        return kiln_job_outcome_fail(out, false, "payload: expected a JSON object%s%s",
                                     payload ? "" : ": ", payload ? "" : jerr.text);
    }
    json_t *request = build_request(pw, job, payload, out);
    json_decref(payload);
    if (!request)
        return out->error ? 0 : KILN_ENOMEM;
    /* The service stops at timeout_ms; the grace covers the browser's start
     * and the transfer. A job timeout set by the worker is a hard limit. */
    int64_t deadline_ms = json_integer_value(json_object_get(request, "timeout_ms"));
    deadline_ms = (deadline_ms > 0 ? deadline_ms : pw->timeout_ms) + PW_TIMEOUT_GRACE_MS;
    if (job->timeout_ms > 0 && job->timeout_ms < deadline_ms)
        deadline_ms = job->timeout_ms;
    char *body = json_dumps(request, JSON_COMPACT);
    json_decref(request);
    stream_t s = {.pw = pw, .job = job, .file = {.fd = -1}};
    int rc = body ? artefact_open(pw, job, &s.file, out) : KILN_ENOMEM;
    if (rc == 0 && !out->error) {
        report(job, 0, "sending the job to the playwright service");
        kiln_http_call_t call = {
            .method = "POST",
            .path = "/jobs",
            .body_json = body,
            .job_id = job->job_id,
            .cancel = job->cancel,
            .cancel_fd = job->cancel_fd,
            .deadline_ms = kiln_api_now_ms() + deadline_ms,
            .on_event = on_event,
            .event_ctx = &s,
        };
        kiln_http_result_t res = {0};
        kiln_err_t err = {0};
        rc = kiln_http_call(pw->jobs, &call, &res, &err);
        rc = conclude(&s, rc, &res, &err, out);
        kiln_http_result_clear(&res);
    }
    artefact_close(&s.file, false);
    json_decref(s.result);
    free(body);
    return rc;
}

const kiln_connector_ops_t kiln_connector_playwright = {
    .type = "playwright",
    .init = playwright_init,
    .run = playwright_run,
    .health = playwright_health,
    .free = playwright_free,
};

/*
 * Remote jobs of the API connectors (contract in api_job.h).
 *
 * A remote job is polled, not streamed: both Replicate and RunPod answer a
 * status request with the whole job. The wait between polls starts at
 * poll_ms and grows by half while nothing changes, up to poll_max_ms, so a
 * long render costs few requests and a change is still seen soon. Every
 * wait is a poll(2) on the job's cancel fd, so a cancel is acted on at once:
 * the remote job is cancelled too, since it would otherwise run (and be
 * billed) to its end.
 */
#include "api_job.h"
#include "outputs.h"

#include "kiln/download.h"
#include "kiln/log.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define API_LOG         "connector"
#define API_POLL_MAX_MS 1000 /* longest single poll(2) between flag checks */
#define API_URL_DEPTH   3    /* levels of arrays and objects searched for output URLs */

int64_t kiln_api_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool cancelled(const atomic_int *cancel)
{
    return cancel && atomic_load_explicit(cancel, memory_order_acquire) != 0;
}

/* Sleeps in poll(2) on the cancel fd (contract in api_job.h). */
bool kiln_api_sleep(const atomic_int *cancel, int cancel_fd, int64_t ms)
{
    int64_t until = kiln_api_now_ms() + ms;
    struct pollfd pfd = {.fd = cancel_fd, .events = POLLIN};
    for (int64_t left; (left = until - kiln_api_now_ms()) > 0;) {
        if (cancelled(cancel))
            return false;
        int n = poll(&pfd, 1, left > API_POLL_MAX_MS ? API_POLL_MAX_MS : (int)left);
        if (n > 0 && !cancelled(cancel))
            pfd.fd = -1; /* readable without a cancel: rely on the flag */
    }
    return !cancelled(cancel);
}

bool kiln_api_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    return n > 0 && n <= KILN_API_ID_MAX &&
           strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

/* The last "NN%" or "NN.N%" in text (contract in api_job.h). */
bool kiln_api_percent_in_text(const char *text, double *percent)
{
    if (!text)
        return false;
    for (const char *p = strrchr(text, '%'); p;
         p = p > text ? memrchr(text, '%', (size_t)(p - text)) : NULL) {
        const char *start = p;
        while (start > text && ((start[-1] >= '0' && start[-1] <= '9') || start[-1] == '.') &&
               p - start < 6)
            start--;
        if (start == p || *start == '.')
            continue;
        char digits[8];
        snprintf(digits, sizeof digits, "%.*s", (int)(p - start), start);
        char *end;
        double value = strtod(digits, &end);
        if (*end == '\0' && value >= 0 && value <= 100) {
            *percent = value;
            return true;
        }
    }
    return false;
}

/* GETs path as a health check (contract in api_job.h). */
int kiln_api_health_get(const kiln_http_client_t *http, const char *path, kiln_err_t *err)
{
    kiln_http_call_t call = {.method = "GET",
                             .path = path,
                             .cancel_fd = -1,
                             .deadline_ms = kiln_api_now_ms() + KILN_API_CANCEL_TIMEOUT_MS};
    kiln_http_result_t res;
    int rc = kiln_http_call(http, &call, &res, err);
    kiln_http_result_clear(&res);
    return rc;
}

/* Parses a 2xx body as an object (contract in api_job.h). */
json_t *kiln_api_parse_object(const kiln_http_result_t *res, const char *what,
                              kiln_job_outcome_t *out)
{
    json_error_t jerr;
    json_t *doc = json_loadb(res->body, res->body_len, 0, &jerr);
    if (!json_is_object(doc)) {
        json_decref(doc);
        kiln_job_outcome_fail(out, false,
                              "%s: the server's response is not a JSON object (%s at byte %d)",
                              what, doc ? "another JSON value" : jerr.text, jerr.position);
        return NULL;
    }
    return doc;
}

/* Turns a failed call into the outcome (contract in api_job.h). */
int kiln_api_http_failure(const kiln_job_context_t *job, int rc, const kiln_http_result_t *res,
                          const kiln_err_t *err, kiln_job_outcome_t *out)
{
    if (rc == KILN_ECANCELLED) {
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    if (rc == KILN_ENOMEM)
        return rc;
    if (rc == KILN_ETIMEOUT && job->timeout_ms > 0)
        return kiln_job_outcome_fail(out, true, "timed out after %" PRId64 " ms: %s",
                                     job->timeout_ms, err->msg);
    return kiln_job_outcome_fail(out, res->retryable, "%s", err->msg);
}

/* Creates a remote job and checks its id (contract in api_job.h). */
int kiln_api_remote_create(const kiln_http_client_t *http, const kiln_job_context_t *job,
                           const char *path, const char *body, const char *const *headers,
                           int64_t deadline_ms, const char *what, json_t **doc,
                           kiln_job_outcome_t *out)
{
    kiln_http_call_t call = {
        .method = "POST",
        .path = path,
        .body_json = body,
        .job_id = job->job_id,
        .cancel = job->cancel,
        .cancel_fd = job->cancel_fd,
        .deadline_ms = deadline_ms,
        .headers = headers,
    };
    kiln_http_result_t res;
    kiln_err_t err = {0};
    *doc = NULL;
    int rc = kiln_http_call(http, &call, &res, &err);
    if (rc < 0)
        rc = kiln_api_http_failure(job, rc, &res, &err, out);
    else if ((*doc = kiln_api_parse_object(&res, path, out)) &&
             !kiln_api_id_ok(json_string_value(json_object_get(*doc, "id")))) {
        json_decref(*doc);
        *doc = NULL;
        rc = kiln_job_outcome_fail(out, false, "%s: the response has no valid %s id", path, what);
    }
    kiln_http_result_clear(&res);
    return rc;
}

/* Cancels the remote job, best effort (contract in api_job.h). */
void kiln_api_remote_cancel(const kiln_http_client_t *http, const kiln_job_context_t *job,
                            const char *path, const char *const *headers)
{
    kiln_http_call_t call = {
        .method = "POST",
        .path = path,
        .job_id = job->job_id,
        .cancel_fd = -1,
        .deadline_ms = kiln_api_now_ms() + KILN_API_CANCEL_TIMEOUT_MS,
        .headers = headers,
    };
    kiln_http_result_t res;
    kiln_err_t err = {0};
    int64_t started = kiln_api_now_ms();
    int rc = kiln_http_call(http, &call, &res, &err);
    int64_t took = kiln_api_now_ms() - started;
    /* Logged either way, with its duration: the cancel is the one request
     * of a job that may outlast the job's deadline (by up to
     * KILN_API_CANCEL_TIMEOUT_MS), so a late job's log shows where it went. */
    if (rc < 0)
        kiln_log(KILN_LOG_WARN, API_LOG, job->job_id, NULL,
                 "cancelling the remote job failed after %" PRId64 " ms; it may run to its end: %s",
                 took, err.msg);
    else
        kiln_log(KILN_LOG_INFO, API_LOG, job->job_id, NULL,
                 "cancelled the remote job: POST %s answered in %" PRId64 " ms", path, took);
    kiln_http_result_clear(&res);
}

static void report(const kiln_job_context_t *job, double percent, const char *message)
{
    if (job->progress)
        job->progress(job->progress_ctx, percent, message);
}

/* Stops here: cancels the remote job and fills out. */
static int stop_remote(const kiln_api_remote_t *r, bool timed_out, kiln_job_outcome_t *out)
{
    kiln_api_remote_cancel(r->http, r->job, r->cancel_path, r->headers);
    if (!timed_out) {
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    return kiln_job_outcome_fail(out, true,
                                 "timed out after %" PRId64
                                 " ms waiting for the remote job; it was cancelled there",
                                 r->job->timeout_ms);
}

/* Polls until the remote job ends (contract in api_job.h). */
int kiln_api_remote_wait(const kiln_api_remote_t *r, json_t **doc, kiln_api_phase_t *phase,
                         kiln_job_outcome_t *out)
{
    const kiln_job_context_t *job = r->job;
    double last_percent = 0;
    char last_message[KILN_API_MESSAGE_MAX] = "";
    int64_t delay = r->poll_ms;
    for (;;) {
        double percent = -1;
        char message[KILN_API_MESSAGE_MAX] = "";
        *phase = r->read(*doc, &percent, message, sizeof message);
        if (*phase != KILN_API_RUNNING)
            return 0;
        bool changed =
            (percent >= 0 && percent != last_percent) || strcmp(message, last_message) != 0;
        if (percent >= 0)
            last_percent = percent;
        snprintf(last_message, sizeof last_message, "%s", message);
        if (changed) {
            report(job, last_percent, message[0] ? message : NULL);
            delay = r->poll_ms;
        } else {
            delay = delay + delay / 2 > r->poll_max_ms ? r->poll_max_ms : delay + delay / 2;
        }
        if (r->deadline_ms) {
            /* The last wait ends at the deadline; the poll after it fails
             * with KILN_ETIMEOUT and stops the remote job below. */
            int64_t left = r->deadline_ms - kiln_api_now_ms();
            if (left <= 0)
                return stop_remote(r, true, out);
            if (delay > left)
                delay = left;
        }
        if (!kiln_api_sleep(job->cancel, job->cancel_fd, delay))
            return stop_remote(r, false, out);
        kiln_http_call_t call = {
            .method = "GET",
            .path = r->status_path,
            .job_id = job->job_id,
            .cancel = job->cancel,
            .cancel_fd = job->cancel_fd,
            .deadline_ms = r->deadline_ms,
            .headers = r->headers,
        };
        kiln_http_result_t res;
        kiln_err_t err = {0};
        int rc = kiln_http_call(r->http, &call, &res, &err);
        if (rc == KILN_ECANCELLED ||
            (rc == KILN_ETIMEOUT && r->deadline_ms && kiln_api_now_ms() >= r->deadline_ms)) {
            kiln_http_result_clear(&res);
            return stop_remote(r, rc == KILN_ETIMEOUT, out);
        }
        json_t *next = rc < 0 ? NULL : kiln_api_parse_object(&res, r->status_path, out);
        if (rc < 0) {
            rc = kiln_api_http_failure(job, rc, &res, &err, out);
            kiln_api_remote_cancel(r->http, job, r->cancel_path, r->headers);
        }
        kiln_http_result_clear(&res);
        if (rc < 0 || out->error)
            return rc;
        json_decref(*doc);
        *doc = next;
    }
}

/* ---- outputs ------------------------------------------------------------------ */

static bool is_http_url(const json_t *v)
{
    const char *s = json_string_value(v);
    return s && (strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0);
}

/* Collects the URLs in output into urls, looking into arrays and objects
 * down to depth levels (RunPod workers often answer {"images": [...]}). */
static void collect_urls(const json_t *output, json_t *urls, int depth)
{
    if (is_http_url(output)) {
        json_array_append(urls, (json_t *)output);
        return;
    }
    if (depth <= 0)
        return;
    size_t i;
    const char *key;
    json_t *v;
    if (json_is_array(output)) {
        json_array_foreach(output, i, v)
        {
            collect_urls(v, urls, depth - 1);
        }
    } else if (json_is_object(output)) {
        json_object_foreach((json_t *)output, key, v)
        {
            collect_urls(v, urls, depth - 1);
        }
    }
}

/* "<i>-<last path segment>" of url, sanitized, without query or fragment. */
static void file_name_of(const char *url, size_t i, char *out, size_t size)
{
    const char *host = strstr(url, "://");
    const char *path = host ? strchr(host + 3, '/') : NULL;
    char base[96] = "output";
    if (path) {
        size_t end = strcspn(path, "?#");
        const char *slash = path;
        for (size_t k = 0; k < end; k++)
            if (path[k] == '/')
                slash = path + k;
        if ((size_t)(path + end - slash) > 1)
            snprintf(base, sizeof base, "%.*s", (int)(path + end - slash - 1), slash + 1);
    }
    char safe[96];
    kiln_outputs_safe_name(base, "job", safe, sizeof safe);
    snprintf(out, size, "%zu-%s", i, safe);
}

/* Downloads one URL to dir/name; 0, or 0 with out filled, or KILN_ENOMEM. */
static int download_one(const char *url, const char *dir, size_t i, uint64_t max_bytes,
                        const kiln_job_context_t *job, int64_t deadline_ms, json_t *files,
                        kiln_job_outcome_t *out)
{
    char name[128], path[PATH_MAX], shown[256];
    file_name_of(url, i, name, sizeof name);
    snprintf(shown, sizeof shown, "output %zu", i);
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
        return kiln_job_outcome_fail(out, false, "%s: the path under %s is too long", shown, dir);
    int64_t left = deadline_ms ? deadline_ms - kiln_api_now_ms() : 0;
    if (deadline_ms && left <= 0)
        return kiln_job_outcome_fail(out, true, "timed out before downloading %s", shown);
    kiln_download_options_t opts = {
        .url = url,
        .dest = path,
        .timeout_ms = (long)left,
        .max_bytes = max_bytes,
        .cancel = job->cancel,
    };
    kiln_err_t err = {0};
    int rc = kiln_download(&opts, &err);
    if (rc == KILN_ECANCELLED || cancelled(job->cancel)) {
        char part[PATH_MAX + 8];
        snprintf(part, sizeof part, "%s.part", path);
        unlink(part);
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    if (rc < 0)
        return kiln_job_outcome_fail(out, rc != KILN_ETOOBIG && rc != KILN_EINVAL,
                                     "downloading %s: %s", shown, err.msg);
    struct stat st;
    json_int_t bytes = stat(path, &st) == 0 ? (json_int_t)st.st_size : -1;
    json_t *file = json_pack("{s:s, s:s, s:I}", "url", url, "path", path, "bytes", bytes);
    if (!file || json_array_append_new(files, file) < 0)
        return KILN_ENOMEM;
    return 0;
}

/* Downloads the output files (contract in api_job.h). */
int kiln_api_download_outputs(const json_t *output, const char *outputs_dir, uint64_t max_bytes,
                              const kiln_job_context_t *job, int64_t deadline_ms, json_t **files,
                              kiln_job_outcome_t *out)
{
    *files = json_array();
    json_t *urls = json_array();
    if (!*files || !urls) {
        json_decref(urls);
        return KILN_ENOMEM;
    }
    collect_urls(output, urls, API_URL_DEPTH);
    int rc = 0;
    if (json_array_size(urls) > KILN_API_OUTPUT_FILES_MAX) {
        rc = kiln_job_outcome_fail(out, false,
                                   "the job produced %zu output files; at most %d are downloaded",
                                   json_array_size(urls), KILN_API_OUTPUT_FILES_MAX);
    } else if (json_array_size(urls) > 0) {
        char id[128], dir[PATH_MAX];
        kiln_outputs_safe_name(job->job_id, "job", id, sizeof id);
        snprintf(dir, sizeof dir, "%s/%s", outputs_dir, id);
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            rc = kiln_job_outcome_fail(out, true, "cannot create %s: %s", dir, strerror(errno));
        for (size_t i = 0; rc == 0 && !out->error && out->status == KILN_OUTCOME_COMPLETED &&
                           i < json_array_size(urls);
             i++)
            rc = download_one(json_string_value(json_array_get(urls, i)), dir, i, max_bytes, job,
                              deadline_ms, *files, out);
    }
    json_decref(urls);
    if (rc < 0 || out->error || out->status != KILN_OUTCOME_COMPLETED) {
        json_decref(*files);
        *files = NULL;
    }
    return rc;
}

/* ---- options and results ------------------------------------------------------- */

static int read_limits(const kiln_connector_config_t *cfg, kiln_api_options_t *opts,
                       kiln_http_client_options_t *hopts, int64_t *timeout_ms, kiln_err_t *err)
{
    const kiln_http_option_defaults_t transfer = {
        .timeout_ms = *timeout_ms,
        .timeout_max_ms = KILN_API_TIMEOUT_MAX,
        .max_retries = KILN_API_RETRIES_DEFAULT,
        .max_response_bytes = KILN_HTTP_MAX_RESPONSE_DEFAULT,
    };
    int64_t max_output = 0;
    int rc = kiln_http_option_transfer(cfg, &transfer, hopts, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "max_output_bytes", 1, INT64_MAX / 2,
                                       (int64_t)KILN_API_OUTPUT_BYTES_DEFAULT, &max_output, err);
    if (rc < 0)
        return rc;
    *timeout_ms = hopts->timeout_ms;
    opts->max_output_bytes = (uint64_t)max_output;
    return 0;
}

/* Reads the shared options (contract in api_job.h). */
int kiln_api_read_options(const kiln_connector_config_t *cfg, int64_t timeout_ms_default,
                          kiln_api_options_t *opts, kiln_http_client_options_t *hopts,
                          kiln_err_t *err)
{
    memset(opts, 0, sizeof *opts);
    int64_t timeout_ms = timeout_ms_default;
    const char *outputs = NULL;
    int rc = read_limits(cfg, opts, hopts, &timeout_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "poll_interval_ms", 10, 600000,
                                       KILN_API_POLL_MS_DEFAULT, &opts->poll_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "poll_interval_max_ms", opts->poll_ms, 3600000,
                                       KILN_API_POLL_MAX_MS_DEFAULT > opts->poll_ms
                                           ? KILN_API_POLL_MAX_MS_DEFAULT
                                           : opts->poll_ms,
                                       &opts->poll_max_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "outputs_dir", &outputs, err);
    if (rc == 0 && outputs)
        rc = kiln_outputs_check_dir(cfg, outputs, err);
    if (rc == 0 && outputs && !(opts->outputs_dir = strdup(outputs)))
        rc = kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    return rc;
}

void kiln_api_options_clear(kiln_api_options_t *opts)
{
    free(opts->outputs_dir);
    memset(opts, 0, sizeof *opts);
}

/* Completes the outcome with the result (contract in api_job.h). */
int kiln_api_complete(const kiln_http_client_t *http, const kiln_api_options_t *opts,
                      const kiln_job_context_t *job, const json_t *output, json_t *result,
                      int64_t deadline_ms, const char *message, kiln_job_outcome_t *out)
{
    json_t *files = NULL;
    if (!result)
        return KILN_ENOMEM;
    if (opts->outputs_dir) {
        int rc = kiln_api_download_outputs(output, opts->outputs_dir, opts->max_output_bytes, job,
                                           deadline_ms, &files, out);
        if (rc < 0 || !files) {
            json_decref(result);
            return rc;
        }
    }
    json_object_set_new(result, "files", files ? files : json_null());
    char *text = json_dumps(result, JSON_COMPACT);
    json_decref(result);
    if (!text)
        return KILN_ENOMEM;
    kiln_http_redact(http, text);
    out->status = KILN_OUTCOME_COMPLETED;
    out->result_json = text;
    report(job, 100.0, message);
    return 0;
}

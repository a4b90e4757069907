/*
 * The a1111 connector: txt2img and img2img through the AUTOMATIC1111
 * Stable Diffusion web UI's API (docs/connectors.md#a1111), over the shared
 * HTTP layer in http.c.
 *
 * The generation is one blocking POST that answers only when the images
 * are done, so while it runs a second thread polls GET /sdapi/v1/progress
 * every poll_interval_ms and turns the sampler's step into job progress.
 * Both use the job's cancel: the POST returns at once, the poller is stopped
 * through its own eventfd and joined, and POST /sdapi/v1/interrupt tells
 * the server to stop sampling (the same on the job's timeout). The base64
 * images of the answer are decoded and written under outputs_dir/<job id>/
 * (outputs.c). Everything the instance holds is fixed at init, so run()
 * needs no lock.
 */
#include "api_job.h"
#include "http.h"
#include "outputs.h"

#include "kiln/connector.h"
#include "kiln/log.h"

#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define A1111_LOG              "a1111"
#define A1111_DEFAULT_URL      "http://127.0.0.1:7860"
#define A1111_OUTPUTS_DEFAULT  "./outputs" /* as render's: relative to the worker's folder */
#define A1111_TIMEOUT_DEFAULT  600000      /* ms, one generation */
#define A1111_TIMEOUT_MAX      86400000
#define A1111_RETRIES_DEFAULT  2
#define A1111_POLL_DEFAULT_MS  500
#define A1111_POLL_TIMEOUT_MS  5000 /* one progress, interrupt or health request */
#define A1111_MAX_IMAGES       64
#define A1111_MAX_IMAGES_LIMIT 1000
#define A1111_RESPONSE_DEFAULT (256u * 1024 * 1024) /* base64 images are large */
#define A1111_INFO_MAX         (1024 * 1024)        /* bytes of "info" kept */

typedef struct a1111 {
    char name[128];
    kiln_http_client_t *http; /* the generation */
    kiln_http_client_t *poll; /* progress, interrupt, health: short, never retried */
    char *outputs_dir;
    int64_t poll_interval_ms;
    int64_t max_images;
} a1111_t;

static const char *const known_options[] = {"base_url",
                                            "url",
                                            "outputs_dir",
                                            "timeout_ms",
                                            "connect_timeout_ms",
                                            "max_retries",
                                            "poll_interval_ms",
                                            "poll_timeout_ms",
                                            "max_images",
                                            "max_response_bytes",
                                            NULL};

/* ---- init ------------------------------------------------------------------ */

static void a1111_free(void *state)
{
    a1111_t *a = state;
    if (!a)
        return;
    kiln_http_client_free(a->http);
    kiln_http_client_free(a->poll);
    free(a->outputs_dir);
    free(a);
}

static int read_options(const kiln_connector_config_t *cfg, a1111_t *a,
                        kiln_http_client_options_t *hopts, int64_t *poll_timeout_ms,
                        kiln_err_t *err)
{
    static const kiln_http_option_defaults_t transfer = {
        .timeout_ms = A1111_TIMEOUT_DEFAULT,
        .timeout_max_ms = A1111_TIMEOUT_MAX,
        .max_retries = A1111_RETRIES_DEFAULT,
        .max_response_bytes = A1111_RESPONSE_DEFAULT,
    };
    int rc = kiln_http_option_base_url(cfg, A1111_DEFAULT_URL, hopts, err);
    if (rc == 0)
        rc = kiln_outputs_option_dir(cfg, "outputs_dir", A1111_OUTPUTS_DEFAULT, true,
                                     &a->outputs_dir, err);
    if (rc == 0)
        rc = kiln_http_option_transfer(cfg, &transfer, hopts, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "poll_interval_ms", 50, 60000, A1111_POLL_DEFAULT_MS,
                                       &a->poll_interval_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "poll_timeout_ms", 100, 600000, A1111_POLL_TIMEOUT_MS,
                                       poll_timeout_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "max_images", 1, A1111_MAX_IMAGES_LIMIT,
                                       A1111_MAX_IMAGES, &a->max_images, err);
    return rc;
}

static int a1111_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    a1111_t *a = calloc(1, sizeof *a);
    if (!a)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    snprintf(a->name, sizeof a->name, "%s", cfg->name);
    kiln_http_client_options_t hopts = {.name = cfg->name};
    int64_t poll_timeout_ms = 0;
    int rc = read_options(cfg, a, &hopts, &poll_timeout_ms, err);
    if (rc == 0)
        rc = kiln_http_client_new(&hopts, &a->http, err);
    if (rc == 0) {
        hopts.timeout_ms = (long)poll_timeout_ms;
        hopts.max_retries = 0;
        hopts.max_response_bytes = 0;
        rc = kiln_http_client_new(&hopts, &a->poll, err);
    }
    if (rc < 0) {
        a1111_free(a);
        return rc;
    }
    kiln_connector_warn_unknown_options(cfg, known_options);
    kiln_log(KILN_LOG_INFO, A1111_LOG, NULL, NULL, "connectors.%s: %s, images to %s", cfg->name,
             kiln_http_client_url_shown(a->http), a->outputs_dir);
    *state = a;
    return 0;
}

/* GET /sdapi/v1/options: answered by the API in every mode (with the UI or
 * --nowebui), and behind --api-auth when that is on. */
static int a1111_health(void *state, kiln_err_t *err)
{
    const a1111_t *a = state;
    kiln_http_call_t call = {.method = "GET", .path = "/sdapi/v1/options", .cancel_fd = -1};
    kiln_http_result_t res;
    kiln_err_t call_err = {0};
    int rc = kiln_http_call(a->poll, &call, &res, &call_err);
    if (rc < 0) {
        kiln_err_set(err, rc, "connectors.%s: %s", a->name, call_err.msg);
    } else {
        json_t *doc = json_loadb(res.body, res.body_len, 0, NULL);
        if (!json_is_object(doc))
            rc = kiln_err_set(err, KILN_EIO,
                              "connectors.%s: GET /sdapi/v1/options at %s did not answer with "
                              "the settings; is it an A1111 web UI started with --api?",
                              a->name, kiln_http_client_url_shown(a->http));
        json_decref(doc);
    }
    kiln_http_result_clear(&res);
    return rc;
}

/* ---- progress polling ------------------------------------------------------ */

typedef struct poller {
    const a1111_t *a;
    const kiln_job_context_t *job;
    atomic_int stop;
    int stop_fd; /* eventfd, readable once stop is set */
    pthread_t thread;
} poller_t;

/* Turns {"progress": 0-1, "eta_relative", "state": {"sampling_step",
 * "sampling_steps", "job_no", "job_count"}} into a progress update. */
static void report_progress(const poller_t *p, const json_t *doc)
{
    json_t *state = json_object_get(doc, "state");
    double fraction = json_number_value(json_object_get(doc, "progress"));
    double eta = json_number_value(json_object_get(doc, "eta_relative"));
    json_int_t step = json_integer_value(json_object_get(state, "sampling_step"));
    json_int_t steps = json_integer_value(json_object_get(state, "sampling_steps"));
    json_int_t job_no = json_integer_value(json_object_get(state, "job_no"));
    json_int_t job_count = json_integer_value(json_object_get(state, "job_count"));
    if (!(fraction > 0.0) && steps <= 0)
        return; /* nothing started yet */
    char message[128];
    int n = snprintf(message, sizeof message, "step %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                     step, steps);
    if (job_count > 1 && n > 0 && (size_t)n < sizeof message)
        n += snprintf(message + n, sizeof message - (size_t)n,
                      ", batch %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                      job_no + 1 > job_count ? job_count : job_no + 1, job_count);
    if (eta > 0.0 && eta < 1e7 && n > 0 && (size_t)n < sizeof message)
        snprintf(message + n, sizeof message - (size_t)n, ", eta %.1f s", eta);
    double percent = fraction * 100.0;
    p->job->progress(p->job->progress_ctx,
                     percent > 99.0 ? 99.0
                     : percent < 0  ? 0
                                    : percent,
                     message);
}

/* Waits ms, or until stopped; false once stopped. */
static bool poller_wait(poller_t *p, int64_t ms)
{
    struct pollfd stop = {.fd = p->stop_fd, .events = POLLIN};
    for (int64_t until = kiln_api_now_ms() + ms, left; (left = until - kiln_api_now_ms()) > 0;) {
        if (atomic_load(&p->stop))
            return false;
        poll(&stop, 1, (int)left);
    }
    return !atomic_load(&p->stop);
}

static void *poller_main(void *arg)
{
    poller_t *p = arg;
    while (poller_wait(p, p->a->poll_interval_ms)) {
        kiln_http_call_t call = {.method = "GET",
                                 .path = "/sdapi/v1/progress?skip_current_image=true",
                                 .job_id = p->job->job_id,
                                 .cancel = &p->stop,
                                 .cancel_fd = p->stop_fd};
        kiln_http_result_t res;
        kiln_err_t err = {0};
        if (kiln_http_call(p->a->poll, &call, &res, &err) == 0) {
            json_t *doc = json_loadb(res.body, res.body_len, 0, NULL);
            if (json_is_object(doc))
                report_progress(p, doc);
            json_decref(doc);
        } else if (!atomic_load(&p->stop)) {
            /* A missed poll costs one update; the generation goes on. */
            kiln_log(KILN_LOG_DEBUG, A1111_LOG, p->job->job_id, NULL, "progress: %s", err.msg);
        }
        kiln_http_result_clear(&res);
    }
    return NULL;
}

/* Starts the poller; returns 0, or -1 (the job then runs without progress). */
static int poller_start(poller_t *p, const a1111_t *a, const kiln_job_context_t *job)
{
    memset(p, 0, sizeof *p);
    p->a = a;
    p->job = job;
    atomic_init(&p->stop, 0);
    if (!job->progress)
        return -1;
    p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->stop_fd < 0)
        return -1;
    if (pthread_create(&p->thread, NULL, poller_main, p) != 0) {
        close(p->stop_fd);
        return -1;
    }
    return 0;
}

static void poller_stop(poller_t *p)
{
    atomic_store(&p->stop, 1);
    uint64_t one = 1;
    ssize_t n = write(p->stop_fd, &one, sizeof one);
    (void)n; /* the flag alone stops it within one poll */
    pthread_join(p->thread, NULL);
    close(p->stop_fd);
}

/* POST /sdapi/v1/interrupt, so the server stops sampling for a job that
 * was cancelled or timed out. A failure is logged: the job ends anyway. */
static void interrupt_remote(const a1111_t *a, const kiln_job_context_t *job)
{
    kiln_http_call_t call = {.method = "POST",
                             .path = "/sdapi/v1/interrupt",
                             .body_json = "{}",
                             .job_id = job->job_id,
                             .cancel_fd = -1};
    kiln_http_result_t res;
    kiln_err_t err = {0};
    if (kiln_http_call(a->poll, &call, &res, &err) < 0)
        kiln_log(KILN_LOG_WARN, A1111_LOG, job->job_id, NULL,
                 "connectors.%s: could not interrupt the generation: %s", a->name, err.msg);
    kiln_http_result_clear(&res);
}

/* ---- the answer ------------------------------------------------------------ */

/* Decodes and saves images[i] (base64, with or without a "data:...;base64,"
 * prefix). Returns 0 with *path_out set, or 0 with out failed, or a
 * negative code. */
static int save_image(const a1111_t *a, const kiln_job_context_t *job, const char *path, size_t i,
                      const json_t *image, char **path_out, kiln_job_outcome_t *out)
{
    const char *b64 = json_string_value(image);
    if (!b64)
        return kiln_job_outcome_fail(out, false, "%s: images[%zu] is not a base64 string", path, i);
    const char *comma = strncmp(b64, "data:", 5) == 0 ? strstr(b64, ";base64,") : NULL;
    if (comma)
        b64 = comma + strlen(";base64,");
    size_t len = 0;
    unsigned char *bytes = kiln_outputs_decode_base64(b64, strlen(b64), &len);
    if (!bytes)
        return kiln_job_outcome_fail(out, false, "%s: images[%zu] is not base64", path, i);
    char why[PATH_MAX + 64];
    int rc = kiln_outputs_save(a->outputs_dir, job->job_id, "image", i, bytes, len, path_out, why,
                               sizeof why);
    free(bytes);
    if (rc < 0 && rc != KILN_ENOMEM)
        rc = kiln_job_outcome_fail(out, rc == KILN_EIO, "%s: %s", path, why);
    return rc;
}

/* "info" is a JSON document in a string: parsed when it is one, else kept. */
static json_t *info_of(const json_t *info)
{
    const char *text = json_string_value(info);
    if (!text)
        return json_is_object(info) ? json_incref((json_t *)info) : json_null();
    json_t *doc = json_string_length(info) <= A1111_INFO_MAX
                      ? json_loadb(text, json_string_length(info), 0, NULL)
                      : NULL;
    if (json_is_object(doc))
        return doc;
    json_decref(doc);
    return json_string_length(info) <= A1111_INFO_MAX ? json_incref((json_t *)info)
                                                      : json_string("");
}

/* The result from {"images": [base64...], "parameters": {...}, "info": "..."}:
 * {"mode", "images": [paths], "parameters", "info"}. */
static int complete(const a1111_t *a, const kiln_job_context_t *job, const char *mode,
                    const char *path, const kiln_http_result_t *res, kiln_job_outcome_t *out)
{
    json_error_t jerr;
    json_t *doc = json_loadb(res->body, res->body_len, 0, &jerr);
    json_t *images = json_object_get(doc, "images");
    if (!json_is_array(images) || json_array_size(images) == 0 ||
        json_array_size(images) > (size_t)a->max_images) {
        json_decref(doc);
        return kiln_job_outcome_fail(
            out, false, "%s: the answer has no images array of 1-%" PRId64 " images (%s)", path,
            a->max_images, doc ? "wrong shape" : jerr.text);
    }
    json_t *paths = json_array();
    int rc = paths ? 0 : KILN_ENOMEM;
    size_t i;
    json_t *image;
    json_array_foreach(images, i, image)
    {
        char *saved = NULL;
        if (rc < 0 || out->error || (rc = save_image(a, job, path, i, image, &saved, out)) < 0 ||
            out->error)
            break;
        json_array_append_new(paths, json_string(saved));
        free(saved);
    }
    json_t *result = NULL;
    if (rc == 0 && !out->error) {
        json_t *parameters = json_object_get(doc, "parameters");
        result = json_pack("{s:s, s:O, s:O, s:o}", "mode", mode, "images", paths, "parameters",
                           json_is_object(parameters) ? parameters : json_null(), "info",
                           info_of(json_object_get(doc, "info")));
        rc = result ? 0 : KILN_ENOMEM;
    }
    json_decref(paths);
    json_decref(doc);
    if (!result)
        return rc;
    out->result_json = json_dumps(result, JSON_COMPACT);
    json_decref(result);
    if (!out->result_json)
        return KILN_ENOMEM;
    out->status = KILN_OUTCOME_COMPLETED;
    if (job->progress)
        job->progress(job->progress_ctx, 100.0, "done");
    return 0;
}

/* ---- the request ----------------------------------------------------------- */

/* Checks an optional integer field against [min, max]. */
static int check_int(const json_t *payload, const char *field, json_int_t min, json_int_t max,
                     json_int_t *value, kiln_job_outcome_t *out)
{
    json_t *v = json_object_get(payload, field);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char expected[96];
        snprintf(expected, sizeof expected,
                 "an integer %" JSON_INTEGER_FORMAT "-%" JSON_INTEGER_FORMAT, min, max);
        return kiln_job_outcome_bad_field(out, field, expected, v);
    }
    if (value)
        *value = json_integer_value(v);
    return 0;
}

/* Checks the payload's fields kiln relies on; the rest go to A1111, which
 * checks them itself (422 with the field). */
static int check_payload(const a1111_t *a, const json_t *payload, bool img2img,
                         kiln_job_outcome_t *out)
{
    static const char *const strings[] = {"prompt", "negative_prompt", "sampler_name", NULL};
    for (int i = 0; strings[i]; i++) {
        json_t *v = json_object_get(payload, strings[i]);
        if (v && !json_is_string(v))
            return kiln_job_outcome_bad_field(out, strings[i], "a string", v);
    }
    json_int_t batch = 1, iterations = 1;
    int rc = check_int(payload, "steps", 1, 1000, NULL, out);
    if (rc == 0 && !out->error)
        rc = check_int(payload, "width", 64, 8192, NULL, out);
    if (rc == 0 && !out->error)
        rc = check_int(payload, "height", 64, 8192, NULL, out);
    if (rc == 0 && !out->error)
        rc = check_int(payload, "batch_size", 1, a->max_images, &batch, out);
    if (rc == 0 && !out->error)
        rc = check_int(payload, "n_iter", 1, a->max_images, &iterations, out);
    if (rc < 0 || out->error)
        return rc;
    if (batch * iterations > a->max_images)
        return kiln_job_outcome_fail(out, false,
                                     "payload: batch_size x n_iter is %" JSON_INTEGER_FORMAT
                                     " images, over connectors.%s.max_images (%" PRId64 ")",
                                     batch * iterations, a->name, a->max_images);
    json_t *init = json_object_get(payload, "init_images");
    if (!img2img && init)
        return kiln_job_outcome_bad_field(out, "init_images",
                                          "nothing for txt2img (set mode: img2img)", init);
    if (img2img && (!json_is_array(init) || json_array_size(init) == 0))
        return kiln_job_outcome_bad_field(out, "init_images",
                                          "a non-empty array of base64 images for img2img", init);
    size_t i;
    json_t *image;
    json_array_foreach(init, i, image)
    {
        if (!json_is_string(image) || json_string_length(image) == 0)
            return kiln_job_outcome_bad_field(out, "init_images", "base64 strings", image);
    }
    json_t *strength = json_object_get(payload, "denoising_strength");
    if (strength && (!json_is_number(strength) || json_number_value(strength) < 0.0 ||
                     json_number_value(strength) > 1.0))
        return kiln_job_outcome_bad_field(out, "denoising_strength", "a number 0-1", strength);
    return 0;
}

/* Reads payload.mode ("txt2img" or "img2img"; default img2img when
 * init_images is given) and builds the request body. */
static int build_request(const a1111_t *a, json_t *payload, const char **mode, char **body,
                         kiln_job_outcome_t *out)
{
    json_t *mode_value = json_object_get(payload, "mode");
    const char *name = mode_value                                ? json_string_value(mode_value)
                       : json_object_get(payload, "init_images") ? "img2img"
                                                                 : "txt2img";
    if (!name || (strcmp(name, "txt2img") != 0 && strcmp(name, "img2img") != 0))
        return kiln_job_outcome_bad_field(out, "mode", "\"txt2img\" or \"img2img\"", mode_value);
    *mode = strcmp(name, "img2img") == 0 ? "img2img" : "txt2img";
    int rc = check_payload(a, payload, strcmp(*mode, "img2img") == 0, out);
    if (rc < 0 || out->error)
        return rc;
    json_t *request = json_deep_copy(payload);
    if (!request)
        return KILN_ENOMEM;
    json_object_del(request, "mode");
    json_object_set_new(request, "send_images", json_true()); /* the images are the result */
    *body = json_dumps(request, JSON_COMPACT);
    json_decref(request);
    return *body ? 0 : KILN_ENOMEM;
}

/* ---- run ------------------------------------------------------------------- */

/* POSTs the generation while the poller reports progress; interrupts the
 * server when the job is cancelled or runs out of time. */
static int generate(const a1111_t *a, const kiln_job_context_t *job, const char *mode,
                    const char *body, kiln_job_outcome_t *out)
{
    char path[64];
    snprintf(path, sizeof path, "/sdapi/v1/%s", mode);
    kiln_http_call_t call = {
        .method = "POST",
        .path = path,
        .body_json = body,
        .job_id = job->job_id,
        .cancel = job->cancel,
        .cancel_fd = job->cancel_fd,
        .deadline_ms = job->timeout_ms > 0 ? kiln_api_now_ms() + job->timeout_ms : 0,
    };
    poller_t poller;
    bool polling = poller_start(&poller, a, job) == 0;
    kiln_http_result_t res;
    kiln_err_t err = {0};
    int rc = kiln_http_call(a->http, &call, &res, &err);
    if (polling)
        poller_stop(&poller);
    if (rc == KILN_ECANCELLED || rc == KILN_ETIMEOUT)
        interrupt_remote(a, job);
    if (rc == 0)
        rc = complete(a, job, mode, path, &res, out);
    else if (rc == KILN_ECANCELLED)
        out->status = KILN_OUTCOME_CANCELLED, rc = 0;
    else if (rc == KILN_ETIMEOUT && job->timeout_ms > 0)
        rc = kiln_job_outcome_fail(out, true, "timed out after %" PRId64 " ms: %s", job->timeout_ms,
                                   err.msg);
    else if (rc != KILN_ENOMEM)
        rc = kiln_job_outcome_fail(out, res.retryable, "%s", err.msg);
    kiln_http_result_clear(&res);
    return rc;
}

static int a1111_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    const a1111_t *a = state;
    json_error_t jerr;
    json_t *payload = json_loads(job->payload_json ? job->payload_json : "", 0, &jerr);
    if (!json_is_object(payload)) {
        json_decref(payload);
        return kiln_job_outcome_fail(out, false, "payload: expected a JSON object%s%s",
                                     payload ? "" : ": ", payload ? "" : jerr.text);
    }
    const char *mode = NULL;
    char *body = NULL;
    int rc = build_request(a, payload, &mode, &body, out);
    if (rc == 0 && !out->error)
        rc = generate(a, job, mode, body, out);
    free(body);
    json_decref(payload);
    return rc;
}

const kiln_connector_ops_t kiln_connector_a1111 = {
    .type = "a1111",
    .init = a1111_init,
    .run = a1111_run,
    .health = a1111_health,
    .free = a1111_free,
};

/*
 * The replicate connector: runs a model on Replicate's HTTP API
 * (docs/connectors.md#replicate) over the shared HTTP layer.
 *
 * A job creates a prediction (POST /predictions with a version, or POST
 * /models/{owner}/{name}/predictions), optionally holding the request open
 * with "Prefer: wait=N" so quick models answer at once, then polls GET
 * /predictions/{id} until it has succeeded, failed or been canceled.
 * Progress is the last percentage in the prediction's logs (the tqdm bars
 * most models print), else the status as a message. A cancelled kiln job
 * cancels the prediction (POST /predictions/{id}/cancel). Output URLs are
 * downloaded into outputs_dir/<job id>/ when outputs_dir is set.
 */
#include "api_job.h"
#include "http.h"
#include "ratelimit.h"

#include "kiln/connector.h"
#include "kiln/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPLICATE_LOG             "replicate"
#define REPLICATE_DEFAULT_URL     "https://api.replicate.com/v1"
#define REPLICATE_DEFAULT_KEY_ENV "REPLICATE_API_TOKEN"
#define REPLICATE_TIMEOUT_DEFAULT 120000 /* ms, one request (a Prefer: wait one included) */
#define REPLICATE_WAIT_MAX_S      60     /* Replicate holds a request at most this long */
#define REPLICATE_NAME_MAX        256

typedef struct replicate {
    char name[128];
    kiln_http_client_t *http;
    kiln_ratelimit_t *ratelimit;
    char *model;   /* default "owner/name", or NULL */
    char *version; /* default version id, or NULL */
    kiln_api_options_t api;
    int64_t wait_s; /* Prefer: wait=N on create; 0: none */
} replicate_t;

static const char *const known_options[] = {"base_url",
                                            "api_key_env",
                                            "api_key_file",
                                            "model",
                                            "version",
                                            "timeout_ms",
                                            "connect_timeout_ms",
                                            "max_retries",
                                            "outputs_dir",
                                            "max_output_bytes",
                                            "max_response_bytes",
                                            "poll_interval_ms",
                                            "poll_interval_max_ms",
                                            "wait_seconds",
                                            "rate_limit_per_minute",
                                            "rate_limit_key",
                                            NULL};

/* ---- init ------------------------------------------------------------------ */

static void replicate_free(void *state)
{
    replicate_t *rp = state;
    if (!rp)
        return;
    kiln_http_client_free(rp->http);
    kiln_ratelimit_free(rp->ratelimit);
    free(rp->model);
    free(rp->version);
    kiln_api_options_clear(&rp->api);
    free(rp);
}

/* A model name "owner/name" of safe characters, as it goes into a URL path. */
static bool model_ok(const char *model)
{
    size_t n = strlen(model);
    const char *slash = strchr(model, '/');
    return n >= 3 && n <= REPLICATE_NAME_MAX && slash && slash != model && slash[1] &&
           !strchr(slash + 1, '/') &&
           strspn(model, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/") == n;
}

static bool version_ok(const char *version)
{
    size_t n = strlen(version);
    return n > 0 && n <= REPLICATE_NAME_MAX &&
           strspn(version, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/:") ==
               n;
}

static int read_strings(const kiln_connector_config_t *cfg, replicate_t *rp, kiln_err_t *err)
{
    const char *model = NULL, *version = NULL;
    int rc = kiln_connector_option_string(cfg, "model", &model, err);
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "version", &version, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "wait_seconds", 0, REPLICATE_WAIT_MAX_S, 0, &rp->wait_s,
                                       err);
    if (rc < 0)
        return rc;
    if (model && !model_ok(model))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.model: expected \"owner/name\" of letters, digits, "
                            "'_', '.' and '-', got \"%.80s\"",
                            cfg->name, model);
    if (version && !version_ok(version))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.version: expected a version id, got \"%.80s\"",
                            cfg->name, version);
    if ((model && !(rp->model = strdup(model))) || (version && !(rp->version = strdup(version))))
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    return 0;
}

static int replicate_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    replicate_t *rp = calloc(1, sizeof *rp);
    if (!rp)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    snprintf(rp->name, sizeof rp->name, "%s", cfg->name);
    kiln_http_client_options_t hopts = {.name = cfg->name};
    const char *base_url = NULL;
    int rc = kiln_connector_option_string(cfg, "base_url", &base_url, err);
    if (rc == 0)
        rc = read_strings(cfg, rp, err);
    if (rc == 0)
        rc = kiln_api_read_options(cfg, REPLICATE_TIMEOUT_DEFAULT, &rp->api, &hopts, err);
    if (rc == 0) {
        hopts.base_url = base_url ? base_url : REPLICATE_DEFAULT_URL;
        rc = kiln_http_client_from_config(cfg, &hopts, REPLICATE_DEFAULT_KEY_ENV, true,
                                          &rp->ratelimit, &rp->http, err);
    }
    if (rc < 0) {
        replicate_free(rp);
        return rc;
    }
    kiln_connector_warn_unknown_options(cfg, known_options);
    kiln_log(KILN_LOG_INFO, REPLICATE_LOG, NULL, NULL, "connectors.%s: %s%s%s", cfg->name,
             kiln_http_client_url_shown(rp->http), rp->ratelimit ? ", rate limit key " : "",
             rp->ratelimit ? kiln_ratelimit_key(rp->ratelimit) : "");
    *state = rp;
    return 0;
}

/* GET /account: the token is valid and the API answers. */
static int replicate_health(void *state, kiln_err_t *err)
{
    return kiln_api_health_get(((const replicate_t *)state)->http, "/account", err);
}

/* ---- run ------------------------------------------------------------------- */

/* A prediction's phase and progress (a kiln_api_read_fn). */
static kiln_api_phase_t read_prediction(const json_t *doc, double *percent, char *message,
                                        size_t size)
{
    const char *status = json_string_value(json_object_get(doc, "status"));
    if (!status)
        return KILN_API_FAILED; /* not a prediction: replicate_run says so */
    if (strcmp(status, "succeeded") == 0)
        return KILN_API_SUCCEEDED;
    if (strcmp(status, "failed") == 0 || strcmp(status, "aborted") == 0)
        return KILN_API_FAILED;
    if (strcmp(status, "canceled") == 0)
        return KILN_API_CANCELED;
    const char *logs = json_string_value(json_object_get(doc, "logs"));
    /* Only the last line counts: a finished bar of an earlier step is not
     * this step's progress. */
    const char *last = NULL;
    if (logs) {
        size_t len = strlen(logs);
        while (len > 0 && (logs[len - 1] == '\n' || logs[len - 1] == '\r'))
            len--;
        const char *cut = len ? memrchr(logs, '\n', len) : NULL;
        const char *cr = len ? memrchr(logs, '\r', len) : NULL;
        last = cut && cr ? (cut > cr ? cut : cr) + 1 : cut ? cut + 1 : cr ? cr + 1 : logs;
    }
    if (!last || !kiln_api_percent_in_text(last, percent))
        *percent = -1;
    snprintf(message, size, "%.40s", status);
    kiln_connector_sanitize_text(message, strlen(message));
    return KILN_API_RUNNING;
}

/* The create request: path and body from the payload and the defaults. */
static int build_request(const replicate_t *rp, json_t *payload, char *path, size_t size,
                         char **body, kiln_job_outcome_t *out)
{
    json_t *input = json_object_get(payload, "input");
    json_t *model = json_object_get(payload, "model");
    json_t *version = json_object_get(payload, "version");
    char got[64];
    if (!json_is_object(input)) {
        kiln_connector_describe_value(input, got, sizeof got);
        return kiln_job_outcome_fail(out, false, "payload.input: expected an object, got %s", got);
    }
    if (model && !(json_is_string(model) && model_ok(json_string_value(model)))) {
        kiln_connector_describe_value(model, got, sizeof got);
        return kiln_job_outcome_fail(out, false, "payload.model: expected \"owner/name\", got %s",
                                     got);
    }
    if (version && !(json_is_string(version) && version_ok(json_string_value(version)))) {
        kiln_connector_describe_value(version, got, sizeof got);
        return kiln_job_outcome_fail(out, false, "payload.version: expected a version id, got %s",
                                     got);
    }
    const char *v = version ? json_string_value(version) : model ? NULL : rp->version;
    const char *m = model ? json_string_value(model) : rp->model;
    json_t *request = json_pack("{s:O}", "input", input);
    if (!request)
        return KILN_ENOMEM;
    if (v) {
        json_object_set_new(request, "version", json_string(v));
        snprintf(path, size, "/predictions");
    } else if (m) {
        snprintf(path, size, "/models/%s/predictions", m);
    } else {
        json_decref(request);
        return kiln_job_outcome_fail(out, false,
                                     "payload: give \"version\" or \"model\"; connectors.%s sets "
                                     "neither as a default",
                                     rp->name);
    }
    *body = json_dumps(request, JSON_COMPACT);
    json_decref(request);
    return *body ? 0 : KILN_ENOMEM;
}

/* POSTs the prediction; *doc is the prediction, or out is filled. */
static int create(const replicate_t *rp, const kiln_job_context_t *job, json_t *payload,
                  int64_t deadline_ms, json_t **doc, kiln_job_outcome_t *out)
{
    char path[KILN_API_PATH_MAX], *body = NULL, prefer[32];
    int rc = build_request(rp, payload, path, sizeof path, &body, out);
    if (rc < 0 || out->error)
        return rc;
    snprintf(prefer, sizeof prefer, "Prefer: wait=%" PRId64, rp->wait_s);
    const char *headers[] = {prefer, NULL};
    rc = kiln_api_remote_create(rp->http, job, path, body, rp->wait_s > 0 ? headers : NULL,
                                deadline_ms, "prediction", doc, out);
    free(body);
    return rc;
}

/* The result of a prediction that succeeded (doc borrowed). */
static int succeeded(const replicate_t *rp, const kiln_job_context_t *job, const json_t *doc,
                     int64_t deadline_ms, kiln_job_outcome_t *out)
{
    json_t *output = json_object_get(doc, "output");
    json_t *result =
        json_pack("{s:O?, s:s, s:O?, s:O?}", "id", json_object_get(doc, "id"), "status",
                  "succeeded", "output", output, "metrics", json_object_get(doc, "metrics"));
    return kiln_api_complete(rp->http, &rp->api, job, output, result, deadline_ms, "succeeded",
                             out);
}

static int replicate_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    const replicate_t *rp = state;
    json_error_t jerr;
    json_t *payload = json_loads(job->payload_json ? job->payload_json : "", 0, &jerr);
    if (!json_is_object(payload)) {
        json_decref(payload);
        return kiln_job_outcome_fail(out, false, "payload: expected a JSON object%s%s",
                                     payload ? "" : ": ", payload ? "" : jerr.text);
    }
    int64_t deadline_ms = job->timeout_ms > 0 ? kiln_api_now_ms() + job->timeout_ms : 0;
    json_t *doc = NULL;
    int rc = create(rp, job, payload, deadline_ms, &doc, out);
    if (rc == 0 && doc) {
        /* The first document goes with the first poll: keep the id apart. */
        char id[KILN_API_ID_MAX + 1];
        snprintf(id, sizeof id, "%s", json_string_value(json_object_get(doc, "id")));
        char status_path[KILN_API_PATH_MAX], cancel_path[KILN_API_PATH_MAX];
        snprintf(status_path, sizeof status_path, "/predictions/%s", id);
        snprintf(cancel_path, sizeof cancel_path, "/predictions/%s/cancel", id);
        kiln_log(KILN_LOG_INFO, REPLICATE_LOG, job->job_id, NULL, "prediction %s created", id);
        kiln_api_remote_t remote = {
            .http = rp->http,
            .job = job,
            .deadline_ms = deadline_ms,
            .poll_ms = rp->api.poll_ms,
            .poll_max_ms = rp->api.poll_max_ms,
            .status_path = status_path,
            .cancel_path = cancel_path,
            .read = read_prediction,
        };
        kiln_api_phase_t phase = KILN_API_RUNNING;
        rc = kiln_api_remote_wait(&remote, &doc, &phase, out);
        const char *error = json_string_value(json_object_get(doc, "error"));
        if (rc < 0 || out->error || out->status != KILN_OUTCOME_COMPLETED)
            ; /* stopped here: out says why */
        else if (phase == KILN_API_SUCCEEDED)
            rc = succeeded(rp, job, doc, deadline_ms, out);
        else if (phase == KILN_API_CANCELED)
            rc = kiln_job_outcome_fail(out, false, "prediction %s was canceled on Replicate", id);
        else if (!json_is_string(json_object_get(doc, "status")))
            rc = kiln_job_outcome_fail(out, false, "prediction %s: the response has no status", id);
        else
            rc = kiln_job_outcome_fail(out, false, "prediction %s failed: %.500s", id,
                                       error ? error : "(no error message)");
    }
    if (out->error) {
        kiln_connector_sanitize_text(out->error, strlen(out->error));
        kiln_http_redact(rp->http, out->error);
    }
    json_decref(doc);
    json_decref(payload);
    return rc;
}

const kiln_connector_ops_t kiln_connector_replicate = {
    .type = "replicate",
    .init = replicate_init,
    .run = replicate_run,
    .health = replicate_health,
    .free = replicate_free,
};

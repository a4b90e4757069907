/*
 * The runpod connector: runs jobs on a RunPod serverless endpoint
 * (docs/connectors.md#runpod) over the shared HTTP layer.
 *
 * A job is queued with POST /{endpoint_id}/run ({"input": ...}) and polled
 * with GET /{endpoint_id}/status/{id} until COMPLETED, FAILED, CANCELLED or
 * TIMED_OUT. While it runs, a worker's progress updates
 * (runpod.serverless.progress_update) come back in the status's "output":
 * a number is a percentage, text is searched for one ("50%") and otherwise
 * shown as the message, an object may carry "progress"/"percent" and
 * "message". A cancelled kiln job cancels the RunPod job
 * (POST /{endpoint_id}/cancel/{id}); output URLs are downloaded into
 * outputs_dir/<job id>/ when outputs_dir is set.
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

#define RUNPOD_LOG             "runpod"
#define RUNPOD_DEFAULT_URL     "https://api.runpod.ai/v2"
#define RUNPOD_DEFAULT_KEY_ENV "RUNPOD_API_KEY"
#define RUNPOD_TIMEOUT_DEFAULT 60000 /* ms, one request */

typedef struct runpod {
    char name[128];
    char endpoint[KILN_API_ID_MAX + 1];
    kiln_http_client_t *http;
    kiln_ratelimit_t *ratelimit;
    kiln_api_options_t api;
} runpod_t;

static const char *const known_options[] = {"base_url",
                                            "endpoint_id",
                                            "api_key_env",
                                            "api_key_file",
                                            "timeout_ms",
                                            "connect_timeout_ms",
                                            "max_retries",
                                            "outputs_dir",
                                            "max_output_bytes",
                                            "max_response_bytes",
                                            "poll_interval_ms",
                                            "poll_interval_max_ms",
                                            "rate_limit_per_minute",
                                            "rate_limit_key",
                                            NULL};

/* ---- init ------------------------------------------------------------------ */

static void runpod_free(void *state)
{
    runpod_t *rp = state;
    if (!rp)
        return;
    kiln_http_client_free(rp->http);
    kiln_ratelimit_free(rp->ratelimit);
    kiln_api_options_clear(&rp->api);
    free(rp);
}

static int read_endpoint(const kiln_connector_config_t *cfg, runpod_t *rp, kiln_err_t *err)
{
    const char *endpoint = NULL;
    int rc = kiln_connector_option_string(cfg, "endpoint_id", &endpoint, err);
    if (rc < 0)
        return rc;
    if (!endpoint || !kiln_api_id_ok(endpoint))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.endpoint_id: expected the endpoint's id (1-%d letters, "
                            "digits, '_' or '-'), got %s%.80s%s",
                            cfg->name, KILN_API_ID_MAX, endpoint ? "\"" : "nothing",
                            endpoint ? endpoint : "", endpoint ? "\"" : "");
    snprintf(rp->endpoint, sizeof rp->endpoint, "%s", endpoint);
    return 0;
}

static int runpod_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    runpod_t *rp = calloc(1, sizeof *rp);
    if (!rp)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    snprintf(rp->name, sizeof rp->name, "%s", cfg->name);
    kiln_http_client_options_t hopts = {.name = cfg->name};
    const char *base_url = NULL;
    int rc = kiln_connector_option_string(cfg, "base_url", &base_url, err);
    if (rc == 0)
        rc = read_endpoint(cfg, rp, err);
    if (rc == 0)
        rc = kiln_api_read_options(cfg, RUNPOD_TIMEOUT_DEFAULT, &rp->api, &hopts, err);
    if (rc == 0) {
        hopts.base_url = base_url ? base_url : RUNPOD_DEFAULT_URL;
        rc = kiln_http_client_from_config(cfg, &hopts, RUNPOD_DEFAULT_KEY_ENV, true, &rp->ratelimit,
                                          &rp->http, err);
    }
    if (rc < 0) {
        runpod_free(rp);
        return rc;
    }
    kiln_connector_warn_unknown_options(cfg, known_options);
    kiln_log(KILN_LOG_INFO, RUNPOD_LOG, NULL, NULL, "connectors.%s: %s, endpoint %s%s%s", cfg->name,
             kiln_http_client_url_shown(rp->http), rp->endpoint,
             rp->ratelimit ? ", rate limit key " : "",
             rp->ratelimit ? kiln_ratelimit_key(rp->ratelimit) : "");
    *state = rp;
    return 0;
}

/* GET /{endpoint}/health: the key is valid and the endpoint exists. */
static int runpod_health(void *state, kiln_err_t *err)
{
    const runpod_t *rp = state;
    char path[KILN_API_PATH_MAX];
    snprintf(path, sizeof path, "/%s/health", rp->endpoint);
    return kiln_api_health_get(rp->http, path, err);
}

/* ---- run ------------------------------------------------------------------- */

/* A progress update in "output" (or a top-level "progress") into percent
 * and message. */
static void read_update(const json_t *doc, double *percent, char *message, size_t size)
{
    json_t *output = json_object_get(doc, "output");
    json_t *number = json_object_get(doc, "progress");
    const char *text = json_string_value(output);
    if (json_is_object(output)) {
        json_t *p = json_object_get(output, "progress");
        number = json_is_number(p) ? p : json_object_get(output, "percent");
        text = json_string_value(json_object_get(output, "message"));
        if (!text)
            text = json_string_value(json_object_get(output, "status"));
    } else if (json_is_number(output)) {
        number = output;
    }
    if (json_is_number(number) && json_number_value(number) >= 0 &&
        json_number_value(number) <= 100)
        *percent = json_number_value(number);
    else if (text)
        kiln_api_percent_in_text(text, percent);
    if (text) {
        snprintf(message, size, "%.100s", text);
        kiln_connector_sanitize_text(message, strlen(message));
    }
}

/* A RunPod job's phase and progress (a kiln_api_read_fn). */
static kiln_api_phase_t read_status(const json_t *doc, double *percent, char *message, size_t size)
{
    const char *status = json_string_value(json_object_get(doc, "status"));
    if (!status)
        return KILN_API_FAILED; /* not a job status: failed() says so */
    if (strcmp(status, "COMPLETED") == 0)
        return KILN_API_SUCCEEDED;
    if (strcmp(status, "FAILED") == 0 || strcmp(status, "TIMED_OUT") == 0)
        return KILN_API_FAILED;
    if (strcmp(status, "CANCELLED") == 0)
        return KILN_API_CANCELED;
    *percent = -1;
    snprintf(message, size, "%s", strcmp(status, "IN_QUEUE") == 0 ? "in queue" : "in progress");
    if (strcmp(status, "IN_PROGRESS") == 0)
        read_update(doc, percent, message, size);
    return KILN_API_RUNNING;
}

/* POSTs /run; *doc is the queued job, or out is filled. */
static int submit(const runpod_t *rp, const kiln_job_context_t *job, json_t *payload,
                  int64_t deadline_ms, json_t **doc, kiln_job_outcome_t *out)
{
    json_t *input = json_object_get(payload, "input");
    json_t *policy = json_object_get(payload, "policy");
    char got[64];
    if (!json_is_object(input)) {
        kiln_connector_describe_value(input, got, sizeof got);
        return kiln_job_outcome_fail(out, false, "payload.input: expected an object, got %s", got);
    }
    if (policy && !json_is_object(policy)) {
        kiln_connector_describe_value(policy, got, sizeof got);
        return kiln_job_outcome_fail(out, false, "payload.policy: expected an object, got %s", got);
    }
    json_t *request = json_pack("{s:O, s:O?}", "input", input, "policy", policy);
    char *body = request ? json_dumps(request, JSON_COMPACT) : NULL;
    json_decref(request);
    if (!body)
        return KILN_ENOMEM;
    char path[KILN_API_PATH_MAX];
    snprintf(path, sizeof path, "/%s/run", rp->endpoint);
    int rc = kiln_api_remote_create(rp->http, job, path, body, NULL, deadline_ms, "job", doc, out);
    free(body);
    return rc;
}

/* The result of a COMPLETED job (doc borrowed). */
static int completed(const runpod_t *rp, const kiln_job_context_t *job, const json_t *doc,
                     int64_t deadline_ms, kiln_job_outcome_t *out)
{
    json_t *output = json_object_get(doc, "output");
    json_t *result =
        json_pack("{s:O?, s:s, s:O?, s:O?, s:O?}", "id", json_object_get(doc, "id"), "status",
                  "COMPLETED", "output", output, "delayTime", json_object_get(doc, "delayTime"),
                  "executionTime", json_object_get(doc, "executionTime"));
    return kiln_api_complete(rp->http, &rp->api, job, output, result, deadline_ms, "completed",
                             out);
}

/* The message of a FAILED or TIMED_OUT job: its "error", whatever its type. */
static int failed(const json_t *doc, const char *id, kiln_job_outcome_t *out)
{
    const char *status = json_string_value(json_object_get(doc, "status"));
    if (!status)
        return kiln_job_outcome_fail(out, false, "RunPod job %s: the response has no status", id);
    json_t *error = json_object_get(doc, "error");
    char *text = error && !json_is_string(error) ? json_dumps(error, JSON_COMPACT) : NULL;
    const char *why = json_is_string(error) ? json_string_value(error)
                      : text                ? text
                                            : "(no error message)";
    int rc = kiln_job_outcome_fail(
        out, false, "RunPod job %s %s: %.500s", id,
        status && strcmp(status, "TIMED_OUT") == 0 ? "timed out" : "failed", why);
    free(text);
    return rc;
}

static int runpod_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    const runpod_t *rp = state;
    json_error_t jerr;
    json_t *payload = json_loads(job->payload_json ? job->payload_json : "", 0, &jerr);
    if (!json_is_object(payload)) {
        json_decref(payload);
        return kiln_job_outcome_fail(out, false, "payload: expected a JSON object%s%s",
                                     payload ? "" : ": ", payload ? "" : jerr.text);
    }
    int64_t deadline_ms = job->timeout_ms > 0 ? kiln_api_now_ms() + job->timeout_ms : 0;
    json_t *doc = NULL;
    int rc = submit(rp, job, payload, deadline_ms, &doc, out);
    if (rc == 0 && doc) {
        char id[KILN_API_ID_MAX + 1], status_path[KILN_API_PATH_MAX],
            cancel_path[KILN_API_PATH_MAX];
        snprintf(id, sizeof id, "%s", json_string_value(json_object_get(doc, "id")));
        snprintf(status_path, sizeof status_path, "/%s/status/%s", rp->endpoint, id);
        snprintf(cancel_path, sizeof cancel_path, "/%s/cancel/%s", rp->endpoint, id);
        kiln_log(KILN_LOG_INFO, RUNPOD_LOG, job->job_id, NULL, "RunPod job %s queued", id);
        kiln_api_remote_t remote = {
            .http = rp->http,
            .job = job,
            .deadline_ms = deadline_ms,
            .poll_ms = rp->api.poll_ms,
            .poll_max_ms = rp->api.poll_max_ms,
            .status_path = status_path,
            .cancel_path = cancel_path,
            .read = read_status,
        };
        kiln_api_phase_t phase = KILN_API_RUNNING;
        rc = kiln_api_remote_wait(&remote, &doc, &phase, out);
        if (rc < 0 || out->error || out->status != KILN_OUTCOME_COMPLETED)
            ; /* stopped here: out says why */
        else if (phase == KILN_API_SUCCEEDED)
            rc = completed(rp, job, doc, deadline_ms, out);
        else if (phase == KILN_API_CANCELED)
            rc = kiln_job_outcome_fail(out, false, "RunPod job %s was cancelled on RunPod", id);
        else
            rc = failed(doc, id, out);
    }
    if (out->error) {
        kiln_connector_sanitize_text(out->error, strlen(out->error));
        kiln_http_redact(rp->http, out->error);
    }
    json_decref(doc);
    json_decref(payload);
    return rc;
}

const kiln_connector_ops_t kiln_connector_runpod = {
    .type = "runpod",
    .init = runpod_init,
    .run = runpod_run,
    .health = runpod_health,
    .free = runpod_free,
};

/*
 * The openai connector: chat completions (streamed or not), image
 * generations and embeddings against any OpenAI-compatible base URL
 * (docs/connectors.md#openai), over the shared HTTP layer in http.c.
 *
 * A streamed chat reports progress as its chunks arrive; the text is
 * gathered in a buffer bounded by max_response_bytes. Images that come back
 * as base64 are written under outputs_dir/<job id>/, each to a temporary
 * name first and renamed, so a reader never sees half a file. Everything
 * the instance holds is fixed at init, so run() needs no lock.
 */
#include "api_job.h"
#include "http.h"
#include "outputs.h"
#include "ratelimit.h"

#include "kiln/connector.h"
#include "kiln/log.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define OPENAI_LOG             "openai"
#define OPENAI_DEFAULT_URL     "https://api.openai.com"
#define OPENAI_DEFAULT_KEY_ENV "OPENAI_API_KEY"
#define OPENAI_TIMEOUT_DEFAULT 600000 /* ms, one request */
#define OPENAI_TIMEOUT_MAX     86400000
#define OPENAI_RETRIES_DEFAULT 3
#define OPENAI_PROGRESS_HALF   200 /* tokens at which an open-ended stream shows ~50% */
#define OPENAI_MAX_IMAGES      128
#define OPENAI_MODEL_MAX       256

typedef struct openai {
    char name[128];
    kiln_http_client_t *http;
    char *model;       /* the default model, or NULL */
    char *outputs_dir; /* where base64 images go, or NULL */
    size_t max_response_bytes;
    kiln_ratelimit_t *ratelimit; /* NULL: no fleet-wide rate limit */
} openai_t;

static const char *const known_options[] = {
    "base_url",           "api_key_env",           "api_key_file",   "model",
    "timeout_ms",         "connect_timeout_ms",    "max_retries",    "outputs_dir",
    "max_response_bytes", "rate_limit_per_minute", "rate_limit_key", NULL};

/* ---- init ------------------------------------------------------------------ */

static bool url_has_path(const char *url)
{
    const char *host = strstr(url, "://");
    const char *slash = host ? strchr(host + 3, '/') : NULL;
    return slash && slash[strspn(slash, "/")] != '\0';
}

/* base_url as the API root: a URL with no path gets "/v1", as OpenAI's own
 * SDKs do; one with a path (".../openai/v1") is used as given. */
static int api_root(const kiln_connector_config_t *cfg, const char *base_url, char **out,
                    kiln_err_t *err)
{
    size_t len = strlen(base_url);
    while (len > 0 && base_url[len - 1] == '/')
        len--;
    int n = url_has_path(base_url) ? asprintf(out, "%.*s", (int)len, base_url)
                                   : asprintf(out, "%.*s/v1", (int)len, base_url);
    if (n < 0) {
        *out = NULL;
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    }
    return 0;
}

static void openai_free(void *state)
{
    openai_t *oa = state;
    if (!oa)
        return;
    kiln_http_client_free(oa->http);
    kiln_ratelimit_free(oa->ratelimit);
    free(oa->model);
    free(oa->outputs_dir);
    free(oa);
}

static int read_options(const kiln_connector_config_t *cfg, openai_t *oa,
                        kiln_http_client_options_t *hopts, const char **base_url, kiln_err_t *err)
{
    static const kiln_http_option_defaults_t transfer = {
        .timeout_ms = OPENAI_TIMEOUT_DEFAULT,
        .timeout_max_ms = OPENAI_TIMEOUT_MAX,
        .max_retries = OPENAI_RETRIES_DEFAULT,
        .max_response_bytes = KILN_HTTP_MAX_RESPONSE_DEFAULT,
    };
    const char *model = NULL, *outputs = NULL;
    int rc = kiln_connector_option_string(cfg, "base_url", base_url, err);
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "model", &model, err);
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "outputs_dir", &outputs, err);
    if (rc == 0)
        rc = kiln_http_option_transfer(cfg, &transfer, hopts, err);
    if (rc < 0)
        return rc;
    if (model && (!model[0] || strlen(model) > OPENAI_MODEL_MAX))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.model: expected a model name of 1-%d characters",
                            cfg->name, OPENAI_MODEL_MAX);
    if (outputs && (rc = kiln_outputs_check_dir(cfg, outputs, err)) < 0)
        return rc;
    if ((model && !(oa->model = strdup(model))) ||
        (outputs && !(oa->outputs_dir = strdup(outputs))))
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    if (!*base_url)
        *base_url = OPENAI_DEFAULT_URL;
    oa->max_response_bytes = hopts->max_response_bytes;
    return 0;
}

static int openai_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    openai_t *oa = calloc(1, sizeof *oa);
    if (!oa)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    snprintf(oa->name, sizeof oa->name, "%s", cfg->name);
    kiln_http_client_options_t hopts = {.name = cfg->name};
    const char *base_url = NULL;
    char *root = NULL;
    int rc = read_options(cfg, oa, &hopts, &base_url, err);
    /* The key is required only by OpenAI itself; a local server may need none. */
    bool official =
        rc == 0 && strncasecmp(base_url, OPENAI_DEFAULT_URL, strlen(OPENAI_DEFAULT_URL)) == 0;
    if (rc == 0)
        rc = api_root(cfg, base_url, &root, err);
    if (rc == 0) {
        hopts.base_url = root;
        rc = kiln_http_client_from_config(cfg, &hopts, OPENAI_DEFAULT_KEY_ENV, official,
                                          &oa->ratelimit, &oa->http, err);
    }
    free(root);
    if (rc < 0) {
        openai_free(oa);
        return rc;
    }
    kiln_connector_warn_unknown_options(cfg, known_options);
    kiln_log(KILN_LOG_INFO, OPENAI_LOG, NULL, NULL, "connectors.%s: %s, %s", cfg->name,
             kiln_http_client_url_shown(oa->http),
             kiln_http_client_has_key(oa->http) ? "with an API key" : "without an API key");
    *state = oa;
    return 0;
}

static int openai_health(void *state, kiln_err_t *err)
{
    return 0;
}

/* ---- helpers for run() ----------------------------------------------------- */

/* Serializes result (stolen) into out as a completed outcome, with the key
 * redacted should a server have echoed it. */
static int complete(const openai_t *oa, json_t *result, kiln_job_outcome_t *out)
{
    char *text = json_dumps(result, JSON_COMPACT);
    json_decref(result);
    if (!text)
        return KILN_ENOMEM;
    kiln_http_redact(oa->http, text);
    out->status = KILN_OUTCOME_COMPLETED;
    out->result_json = text;
    return 0;
}

/* ---- chat ------------------------------------------------------------------ */

typedef struct chat_stream {
    const openai_t *oa;
    const kiln_job_context_t *job;
    kiln_http_buf_t text; /* max: max_response_bytes */
    char finish_reason[64];
    char model[OPENAI_MODEL_MAX + 1];
    json_t *usage;
    int64_t tokens;
    int64_t max_tokens; /* from parameters; 0 unknown */
    char error[512];
    bool retryable;
} chat_stream_t;

static int text_append(chat_stream_t *cs, const char *s, size_t len)
{
    int rc = kiln_http_buf_append(&cs->text, s, len);
    if (rc == KILN_ETOOBIG)
        snprintf(cs->error, sizeof cs->error,
                 "/chat/completions: the text is longer than max_response_bytes (%zu)",
                 cs->oa->max_response_bytes);
    return rc;
}

static void report_tokens(chat_stream_t *cs, double percent)
{
    if (!cs->job->progress)
        return;
    char message[48];
    snprintf(message, sizeof message, "%" PRId64 " tokens", cs->tokens);
    cs->job->progress(cs->job->progress_ctx, percent, message);
}

/* One chunk of a streamed chat: {"model", "choices":[{"delta":{"content"},
 * "finish_reason"}], "usage"}, or {"error": {...}} when the server fails
 * mid-stream. */
static int on_chat_event(void *ctx, const char *data, size_t len)
{
    chat_stream_t *cs = ctx;
    json_error_t jerr;
    json_t *chunk = json_loadb(data, len, 0, &jerr);
    if (!json_is_object(chunk)) {
        json_decref(chunk);
        snprintf(cs->error, sizeof cs->error,
                 "/chat/completions: a stream event is not a JSON object (%s)",
                 chunk ? "another JSON value" : jerr.text);
        return KILN_EINVAL;
    }
    int rc = 0;
    json_t *error = json_object_get(chunk, "error");
    if (error) {
        json_t *msg = json_is_object(error) ? json_object_get(error, "message") : error;
        snprintf(cs->error, sizeof cs->error,
                 "/chat/completions: the server failed mid-stream: %.300s",
                 json_is_string(msg) ? json_string_value(msg) : "(no message)");
        kiln_connector_sanitize_text(cs->error, strlen(cs->error));
        cs->retryable = true;
        json_decref(chunk);
        return KILN_EIO;
    }
    const char *model = json_string_value(json_object_get(chunk, "model"));
    if (model && !cs->model[0])
        snprintf(cs->model, sizeof cs->model, "%s", model);
    json_t *usage = json_object_get(chunk, "usage");
    if (json_is_object(usage)) {
        json_decref(cs->usage);
        cs->usage = json_incref(usage);
    }
    json_t *choice = json_array_get(json_object_get(chunk, "choices"), 0);
    json_t *delta = json_object_get(choice, "delta");
    const char *content = json_string_value(json_object_get(delta, "content"));
    const char *finish = json_string_value(json_object_get(choice, "finish_reason"));
    if (finish)
        snprintf(cs->finish_reason, sizeof cs->finish_reason, "%s", finish);
    if (content && content[0]) {
        rc = text_append(cs, content, strlen(content));
        cs->tokens++;
        double percent = cs->max_tokens > 0 ? 100.0 * (double)cs->tokens / (double)cs->max_tokens
                                            : 99.0 * (double)cs->tokens /
                                                  (double)(cs->tokens + OPENAI_PROGRESS_HALF);
        report_tokens(cs, percent > 99.0 ? 99.0 : percent);
    }
    json_decref(chunk);
    return rc;
}

/* The chat result: {"text","finish_reason","usage","model"} (stolen values). */
static json_t *chat_result(const char *text, const char *finish_reason, json_t *usage,
                           const char *model)
{
    json_t *result = json_object();
    if (!result)
        return NULL;
    json_object_set_new(result, "text", json_string(text ? text : ""));
    json_object_set_new(result, "finish_reason",
                        finish_reason && finish_reason[0] ? json_string(finish_reason)
                                                          : json_null());
    json_object_set_new(result, "usage", usage ? usage : json_null());
    json_object_set_new(result, "model", json_string(model ? model : ""));
    if (!json_is_string(json_object_get(result, "text"))) {
        /* Only out of memory: the text comes from decoded JSON, so it is valid UTF-8. */
        json_decref(result);
        return NULL;
    }
    return result;
}

/* A non-streamed completion: choices[0].message.content and the rest. */
static int chat_from_body(const openai_t *oa, const kiln_http_result_t *res, const char *req_model,
                          kiln_job_outcome_t *out)
{
    json_t *doc = kiln_api_parse_object(res, "/chat/completions", out);
    if (!doc)
        return 0;
    json_t *choice = json_array_get(json_object_get(doc, "choices"), 0);
    json_t *message = json_object_get(choice, "message");
    if (!json_is_object(message)) {
        json_decref(doc);
        return kiln_job_outcome_fail(out, false,
                                     "/chat/completions: the response has no choices[0].message");
    }
    const char *model = json_string_value(json_object_get(doc, "model"));
    json_t *usage = json_object_get(doc, "usage");
    json_t *result =
        chat_result(json_string_value(json_object_get(message, "content")),
                    json_string_value(json_object_get(choice, "finish_reason")),
                    json_is_object(usage) ? json_incref(usage) : NULL, model ? model : req_model);
    json_t *tool_calls = json_object_get(message, "tool_calls");
    if (result && tool_calls)
        json_object_set(result, "tool_calls", tool_calls);
    json_decref(doc);
    return result ? complete(oa, result, out) : KILN_ENOMEM;
}

static int64_t max_tokens_of(const json_t *request)
{
    json_t *v = json_object_get(request, "max_completion_tokens");
    if (!json_is_integer(v))
        v = json_object_get(request, "max_tokens");
    return json_is_integer(v) && json_integer_value(v) > 0 ? json_integer_value(v) : 0;
}

/* Builds the chat request body into request (payload fields win over parameters). */
static int chat_request(json_t *payload, json_t *request, bool *stream, kiln_job_outcome_t *out)
{
    json_t *messages = json_object_get(payload, "messages");
    json_t *prompt = json_object_get(payload, "prompt");
    json_t *stream_v = json_object_get(payload, "stream");
    if (messages && (!json_is_array(messages) || json_array_size(messages) == 0))
        return kiln_job_outcome_bad_field(out, "messages", "a non-empty array of messages",
                                          messages);
    if (!messages && !json_is_string(prompt))
        return kiln_job_outcome_bad_field(
            out, "messages", "a non-empty array of messages (or a prompt string)", messages);
    if (stream_v && !json_is_boolean(stream_v))
        return kiln_job_outcome_bad_field(out, "stream", "true or false", stream_v);
    *stream = !stream_v || json_is_true(stream_v);
    if (messages) {
        json_object_set(request, "messages", messages);
    } else {
        json_t *m = json_pack("[{s:s, s:O}]", "role", "user", "content", prompt);
        if (!m)
            return KILN_ENOMEM;
        json_object_set_new(request, "messages", m);
    }
    json_object_set_new(request, "stream", json_boolean(*stream));
    if (*stream && !json_object_get(request, "stream_options"))
        json_object_set_new(request, "stream_options", json_pack("{s:b}", "include_usage", 1));
    return 0;
}

static int run_chat(const openai_t *oa, const kiln_job_context_t *job, json_t *payload,
                    json_t *request, const kiln_http_call_t *base, kiln_job_outcome_t *out)
{
    bool stream = true;
    int rc = chat_request(payload, request, &stream, out);
    if (rc < 0 || out->error)
        return rc;
    char *body = json_dumps(request, JSON_COMPACT);
    if (!body)
        return KILN_ENOMEM;
    chat_stream_t cs = {.oa = oa, .job = job, .max_tokens = max_tokens_of(request)};
    kiln_http_buf_init(&cs.text, oa->max_response_bytes);
    kiln_http_call_t call = *base;
    call.path = "/chat/completions";
    call.body_json = body;
    if (stream) {
        call.on_event = on_chat_event;
        call.event_ctx = &cs;
    }
    kiln_http_result_t res;
    kiln_err_t err = {0};
    rc = kiln_http_call(oa->http, &call, &res, &err);
    free(body);
    const char *req_model = json_string_value(json_object_get(request, "model"));
    if (rc == 0 && !res.streamed) {
        rc = chat_from_body(oa, &res, req_model, out);
    } else if (rc == 0 && !res.stream_done && !cs.finish_reason[0]) {
        rc = kiln_job_outcome_fail(out, true,
                                   "/chat/completions: the stream ended before it was done "
                                   "(%" PRId64 " tokens received)",
                                   cs.tokens);
    } else if (rc == 0) {
        json_t *usage = cs.usage;
        cs.usage = NULL;
        json_t *completion = json_object_get(usage, "completion_tokens");
        if (json_is_integer(completion))
            cs.tokens = json_integer_value(completion);
        report_tokens(&cs, 100.0);
        json_t *result = chat_result(cs.text.data ? cs.text.data : "", cs.finish_reason, usage,
                                     cs.model[0] ? cs.model : req_model);
        rc = result ? complete(oa, result, out) : KILN_ENOMEM;
    } else if (cs.error[0] && rc != KILN_ECANCELLED) {
        /* on_chat_event stopped the stream: malformed (not retryable) or a
         * server error (retryable), or the text grew past its limit. */
        rc = rc == KILN_ENOMEM ? rc : kiln_job_outcome_fail(out, cs.retryable, "%s", cs.error);
    } else {
        rc = kiln_api_http_failure(job, rc, &res, &err, out);
    }
    kiln_http_result_clear(&res);
    json_decref(cs.usage);
    kiln_http_buf_free(&cs.text);
    return rc;
}

/* ---- images ---------------------------------------------------------------- */

/* Saves one base64 image as outputs_dir/<job>/image-<i>.<ext>; *path_out malloc'd. */
static int save_image(const openai_t *oa, const kiln_job_context_t *job, size_t i, const char *b64,
                      char **path_out, kiln_job_outcome_t *out)
{
    if (!oa->outputs_dir)
        return kiln_job_outcome_fail(out, false,
                                     "/images/generations: the server sent base64 images but "
                                     "connectors.%s.outputs_dir is not set; set it to a folder",
                                     oa->name);
    size_t len = 0;
    unsigned char *bytes = kiln_outputs_decode_base64(b64, strlen(b64), &len);
    if (!bytes)
        return kiln_job_outcome_fail(out, false,
                                     "/images/generations: data[%zu].b64_json is not "
                                     "base64",
                                     i);
    char why[PATH_MAX + 64];
    int rc = kiln_outputs_save(oa->outputs_dir, job->job_id, "image", i, bytes, len, path_out, why,
                               sizeof why);
    free(bytes);
    if (rc < 0 && rc != KILN_ENOMEM)
        rc = kiln_job_outcome_fail(out, rc == KILN_EIO, "/images/generations: %s", why);
    return rc;
}

/* {"images":[{"url"|"path", "revised_prompt"?}], "model", "usage"?} from the response. */
static int images_from_body(const openai_t *oa, const kiln_job_context_t *job,
                            const kiln_http_result_t *res, const char *req_model,
                            kiln_job_outcome_t *out)
{
    json_t *doc = kiln_api_parse_object(res, "/images/generations", out);
    if (!doc)
        return 0;
    json_t *data = json_object_get(doc, "data");
    if (!json_is_array(data) || json_array_size(data) > OPENAI_MAX_IMAGES) {
        json_decref(doc);
        return kiln_job_outcome_fail(out, false,
                                     "/images/generations: the response has no data array (of "
                                     "at most %d images)",
                                     OPENAI_MAX_IMAGES);
    }
    json_t *images = json_array();
    int rc = images ? 0 : KILN_ENOMEM;
    size_t i;
    json_t *item;
    json_array_foreach(data, i, item)
    {
        if (rc < 0 || out->error)
            break;
        const char *url = json_string_value(json_object_get(item, "url"));
        const char *b64 = json_string_value(json_object_get(item, "b64_json"));
        json_t *image = json_object();
        char *path = NULL;
        if (url)
            json_object_set_new(image, "url", json_string(url));
        else if (b64 && (rc = save_image(oa, job, i, b64, &path, out)) == 0 && path)
            json_object_set_new(image, "path", json_string(path));
        else if (!b64)
            rc = kiln_job_outcome_fail(out, false,
                                       "/images/generations: data[%zu] has neither url nor "
                                       "b64_json",
                                       i);
        json_t *revised = json_object_get(item, "revised_prompt");
        if (json_is_string(revised))
            json_object_set(image, "revised_prompt", revised);
        free(path);
        json_array_append_new(images, image);
    }
    if (rc < 0 || out->error) {
        json_decref(images);
        json_decref(doc);
        return rc;
    }
    json_t *model = json_object_get(doc, "model");
    json_t *result = json_pack("{s:o, s:s}", "images", images, "model",
                               json_is_string(model) ? json_string_value(model)
                               : req_model           ? req_model
                                                     : "");
    json_t *usage = json_object_get(doc, "usage");
    if (result && json_is_object(usage))
        json_object_set(result, "usage", usage);
    json_decref(doc);
    return result ? complete(oa, result, out) : KILN_ENOMEM;
}

/* ---- embeddings ------------------------------------------------------------ */

/* {"embeddings": [[...]] in input order, "usage", "model"} from the response. */
static int embeddings_from_body(const openai_t *oa, const kiln_http_result_t *res,
                                const char *req_model, kiln_job_outcome_t *out)
{
    json_t *doc = kiln_api_parse_object(res, "/embeddings", out);
    if (!doc)
        return 0;
    json_t *data = json_object_get(doc, "data");
    size_t n = json_array_size(data);
    json_t *vectors = json_array();
    if (!vectors) {
        json_decref(doc);
        return KILN_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        json_array_append_new(vectors, json_null());
    size_t i;
    json_t *item;
    json_array_foreach(data, i, item)
    {
        json_t *index = json_object_get(item, "index");
        json_t *vector = json_object_get(item, "embedding");
        size_t at = json_is_integer(index) ? (size_t)json_integer_value(index) : i;
        if (!vector || at >= n || !json_is_null(json_array_get(vectors, at))) {
            json_decref(vectors);
            json_decref(doc);
            return kiln_job_outcome_fail(out, false,
                                         "/embeddings: data[%zu] has no embedding or a bad "
                                         "index",
                                         i);
        }
        json_array_set(vectors, at, vector);
    }
    if (!json_is_array(data) || n == 0) {
        json_decref(vectors);
        json_decref(doc);
        return kiln_job_outcome_fail(out, false, "/embeddings: the response has no data array");
    }
    json_t *model = json_object_get(doc, "model");
    json_t *usage = json_object_get(doc, "usage");
    json_t *result = json_pack("{s:o, s:O, s:s}", "embeddings", vectors, "usage",
                               usage ? usage : json_null(), "model",
                               json_is_string(model) ? json_string_value(model)
                               : req_model           ? req_model
                                                     : "");
    json_decref(doc);
    return result ? complete(oa, result, out) : KILN_ENOMEM;
}

/* ---- run ------------------------------------------------------------------- */

typedef enum { EP_CHAT, EP_IMAGES, EP_EMBEDDINGS } endpoint_t;

/* Runs a non-streamed request for images or embeddings. */
static int run_simple(const openai_t *oa, const kiln_job_context_t *job, endpoint_t ep,
                      json_t *payload, json_t *request, const kiln_http_call_t *base,
                      kiln_job_outcome_t *out)
{
    const char *field = ep == EP_IMAGES ? "prompt" : "input";
    json_t *value = json_object_get(payload, field);
    if (ep == EP_IMAGES && !json_is_string(value))
        return kiln_job_outcome_bad_field(out, field, "a prompt string", value);
    if (ep == EP_EMBEDDINGS && !json_is_string(value) &&
        !(json_is_array(value) && json_array_size(value) > 0))
        return kiln_job_outcome_bad_field(out, field, "a string or a non-empty array", value);
    json_object_set(request, field, value);
    char *body = json_dumps(request, JSON_COMPACT);
    if (!body)
        return KILN_ENOMEM;
    kiln_http_call_t call = *base;
    call.path = ep == EP_IMAGES ? "/images/generations" : "/embeddings";
    call.body_json = body;
    kiln_http_result_t res;
    kiln_err_t err = {0};
    int rc = kiln_http_call(oa->http, &call, &res, &err);
    free(body);
    const char *req_model = json_string_value(json_object_get(request, "model"));
    if (rc < 0)
        rc = kiln_api_http_failure(job, rc, &res, &err, out);
    else if (ep == EP_IMAGES)
        rc = images_from_body(oa, job, &res, req_model, out);
    else
        rc = embeddings_from_body(oa, &res, req_model, out);
    kiln_http_result_clear(&res);
    if (rc == 0 && out->result_json && job->progress)
        job->progress(job->progress_ctx, 100.0, "done");
    return rc;
}

/* Reads endpoint, model and parameters; builds the request's common part. */
static int prepare(const openai_t *oa, json_t *payload, endpoint_t *ep, json_t **request,
                   kiln_job_outcome_t *out)
{
    json_t *endpoint = json_object_get(payload, "endpoint");
    const char *name = endpoint ? json_string_value(endpoint) : "chat";
    if (name && strcmp(name, "chat") == 0)
        *ep = EP_CHAT;
    else if (name && strcmp(name, "images") == 0)
        *ep = EP_IMAGES;
    else if (name && strcmp(name, "embeddings") == 0)
        *ep = EP_EMBEDDINGS;
    else
        return kiln_job_outcome_bad_field(out, "endpoint", "\"chat\", \"images\" or \"embeddings\"",
                                          endpoint);
    json_t *model = json_object_get(payload, "model");
    if (model && (!json_is_string(model) || !json_string_length(model)))
        return kiln_job_outcome_bad_field(out, "model", "a model name", model);
    if (!model && !oa->model)
        return kiln_job_outcome_fail(out, false,
                                     "payload.model: required, as connectors.%s.model sets no "
                                     "default",
                                     oa->name);
    json_t *parameters = json_object_get(payload, "parameters");
    if (parameters && !json_is_null(parameters) && !json_is_object(parameters))
        return kiln_job_outcome_bad_field(out, "parameters", "an object", parameters);
    *request = json_is_object(parameters) ? json_deep_copy(parameters) : json_object();
    if (!*request)
        return KILN_ENOMEM;
    json_object_set_new(*request, "model", model ? json_incref(model) : json_string(oa->model));
    return 0;
}

static int openai_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    const openai_t *oa = state;
    json_error_t jerr;
    json_t *payload = json_loads(job->payload_json ? job->payload_json : "", 0, &jerr);
    if (!json_is_object(payload)) {
        json_decref(payload);
        return kiln_job_outcome_fail(out, false, "payload: expected a JSON object%s%s",
                                     payload ? "" : ": ", payload ? "" : jerr.text);
    }
    endpoint_t ep = EP_CHAT;
    json_t *request = NULL;
    int rc = prepare(oa, payload, &ep, &request, out);
    if (rc == 0 && !out->error) {
        kiln_http_call_t call = {
            .method = "POST",
            .job_id = job->job_id,
            .cancel = job->cancel,
            .cancel_fd = job->cancel_fd,
            .deadline_ms = job->timeout_ms > 0 ? kiln_api_now_ms() + job->timeout_ms : 0,
        };
        rc = ep == EP_CHAT ? run_chat(oa, job, payload, request, &call, out)
                           : run_simple(oa, job, ep, payload, request, &call, out);
    }
    if (out->error)
        kiln_http_redact(oa->http, out->error);
    json_decref(request);
    json_decref(payload);
    return rc;
}

const kiln_connector_ops_t kiln_connector_openai = {
    .type = "openai",
    .init = openai_init,
    .run = openai_run,
    .health = openai_health,
    .free = openai_free,
};

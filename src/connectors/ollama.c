/*
 * The ollama connector: /api/generate and /api/chat against a local Ollama
 * server (docs/connectors.md#ollama), over the shared HTTP layer in http.c.
 *
 * Requests are always streamed: Ollama answers with NDJSON, one JSON object
 * a line, each carrying the next piece of text, and a last line with
 * "done": true and the counts and durations. Each line is one token for
 * progress, measured against options.num_predict or the expected_tokens
 * option. When the model is not on the server (404 "model ... not found")
 * and pull_missing is on, the model is pulled first through /api/pull,
 * whose streamed status lines become the first part of the job's progress.
 * Everything the instance holds is fixed at init, so run() needs no lock.
 */
#include "api_job.h"
#include "http.h"

#include "kiln/connector.h"
#include "kiln/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define OLLAMA_LOG               "ollama"
#define OLLAMA_DEFAULT_URL       "http://127.0.0.1:11434"
#define OLLAMA_TIMEOUT_DEFAULT   600000 /* ms, one request */
#define OLLAMA_PULL_TIMEOUT      3600000
#define OLLAMA_TIMEOUT_MAX       86400000
#define OLLAMA_RETRIES_DEFAULT   3
#define OLLAMA_EXPECTED_TOKENS   256 /* progress scale when num_predict is not set */
#define OLLAMA_MODEL_MAX         256
#define OLLAMA_HEALTH_TIMEOUT_MS 5000
#define OLLAMA_TAIL_SHOWN        80   /* bytes of the latest text in a progress message */
#define OLLAMA_PULL_SHARE        50.0 /* percent of the job a pull takes up */
#define OLLAMA_PULL_LAYERS       32   /* layers of a pull counted in its progress */

typedef struct ollama {
    char name[128];
    kiln_http_client_t *http; /* generate, chat, tags */
    kiln_http_client_t *pull; /* /api/pull, with its own (longer) timeout */
    char *model;              /* the default model, or NULL */
    bool pull_missing;
    int64_t expected_tokens;
    size_t max_response_bytes;
} ollama_t;

static const char *const known_options[] = {
    "base_url",    "url",          "model",           "timeout_ms",      "connect_timeout_ms",
    "max_retries", "pull_missing", "pull_timeout_ms", "expected_tokens", "max_response_bytes",
    NULL};

/* ---- init ------------------------------------------------------------------ */

static void ollama_free(void *state)
{
    ollama_t *ol = state;
    if (!ol)
        return;
    kiln_http_client_free(ol->http);
    kiln_http_client_free(ol->pull);
    free(ol->model);
    free(ol);
}

/* options.pull_missing: true or false (default true). */
static int read_pull_missing(const kiln_connector_config_t *cfg, bool *out, kiln_err_t *err)
{
    json_t *value = json_object_get(cfg->options, "pull_missing");
    *out = true;
    if (!value || json_is_null(value))
        return 0;
    if (!json_is_boolean(value)) {
        char got[64];
        kiln_connector_describe_value(value, got, sizeof got);
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.pull_missing: expected true or false, got %s", cfg->name,
                            got);
    }
    *out = json_is_true(value);
    return 0;
}

static int read_options(const kiln_connector_config_t *cfg, ollama_t *ol,
                        kiln_http_client_options_t *hopts, int64_t *pull_timeout_ms,
                        kiln_err_t *err)
{
    static const kiln_http_option_defaults_t transfer = {
        .timeout_ms = OLLAMA_TIMEOUT_DEFAULT,
        .timeout_max_ms = OLLAMA_TIMEOUT_MAX,
        .max_retries = OLLAMA_RETRIES_DEFAULT,
        .max_response_bytes = KILN_HTTP_MAX_RESPONSE_DEFAULT,
    };
    const char *model = NULL;
    int rc = kiln_http_option_base_url(cfg, OLLAMA_DEFAULT_URL, hopts, err);
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "model", &model, err);
    if (rc == 0)
        rc = kiln_http_option_transfer(cfg, &transfer, hopts, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "pull_timeout_ms", 1, OLLAMA_TIMEOUT_MAX,
                                       OLLAMA_PULL_TIMEOUT, pull_timeout_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "expected_tokens", 1, 10000000, OLLAMA_EXPECTED_TOKENS,
                                       &ol->expected_tokens, err);
    if (rc == 0)
        rc = read_pull_missing(cfg, &ol->pull_missing, err);
    if (rc < 0)
        return rc;
    if (model && (!model[0] || strlen(model) > OLLAMA_MODEL_MAX))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.model: expected a model name of 1-%d characters",
                            cfg->name, OLLAMA_MODEL_MAX);
    if (model && !(ol->model = strdup(model)))
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    ol->max_response_bytes = hopts->max_response_bytes;
    return 0;
}

static int ollama_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    ollama_t *ol = calloc(1, sizeof *ol);
    if (!ol)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    snprintf(ol->name, sizeof ol->name, "%s", cfg->name);
    kiln_http_client_options_t hopts = {.name = cfg->name};
    int64_t pull_timeout_ms = 0;
    int rc = read_options(cfg, ol, &hopts, &pull_timeout_ms, err);
    if (rc == 0)
        rc = kiln_http_client_new(&hopts, &ol->http, err);
    if (rc == 0) {
        hopts.timeout_ms = (long)pull_timeout_ms;
        rc = kiln_http_client_new(&hopts, &ol->pull, err);
    }
    if (rc < 0) {
        ollama_free(ol);
        return rc;
    }
    kiln_connector_warn_unknown_options(cfg, known_options);
    kiln_log(KILN_LOG_INFO, OLLAMA_LOG, NULL, NULL, "connectors.%s: %s%s", cfg->name,
             kiln_http_client_url_shown(ol->http),
             ol->pull_missing ? ", pulling missing models" : "");
    *state = ol;
    return 0;
}

/* GET /api/tags: the server answers with its list of models. */
static int ollama_health(void *state, kiln_err_t *err)
{
    const ollama_t *ol = state;
    kiln_http_call_t call = {.method = "GET",
                             .path = "/api/tags",
                             .cancel_fd = -1,
                             .deadline_ms = kiln_api_now_ms() + OLLAMA_HEALTH_TIMEOUT_MS};
    kiln_http_result_t res;
    kiln_err_t call_err = {0};
    int rc = kiln_http_call(ol->http, &call, &res, &call_err);
    if (rc < 0) {
        kiln_err_set(err, rc, "connectors.%s: %s", ol->name, call_err.msg);
    } else {
        json_t *doc = json_loadb(res.body, res.body_len, 0, NULL);
        if (!json_is_array(json_object_get(doc, "models")))
            rc = kiln_err_set(err, KILN_EIO,
                              "connectors.%s: GET /api/tags at %s did not answer with a list of "
                              "models; is it an Ollama server?",
                              ol->name, kiln_http_client_url_shown(ol->http));
        json_decref(doc);
    }
    kiln_http_result_clear(&res);
    return rc;
}

/* ---- the stream ------------------------------------------------------------ */

/* What one streamed request gathers. Progress runs from base to base+span. */
typedef struct stream {
    const ollama_t *ol;
    const kiln_job_context_t *job;
    const char *path;
    const char *model;
    bool chat;
    kiln_http_buf_t text; /* max: max_response_bytes */
    json_t *final;        /* the "done": true line */
    int64_t tokens, expected;
    double base, span;
    double pulled; /* the share of a pull done so far */
    struct {
        char digest[80];
        int64_t total, completed;
    } layers[OLLAMA_PULL_LAYERS];
    int n_layers;
    char error[512];
    bool retryable;
} stream_t;

static int text_append(stream_t *st, const char *s, size_t len)
{
    int rc = kiln_http_buf_append(&st->text, s, len);
    if (rc == KILN_ETOOBIG)
        snprintf(st->error, sizeof st->error,
                 "%s: the text is longer than max_response_bytes (%zu)", st->path,
                 st->ol->max_response_bytes);
    return rc;
}

/* "N tokens: ...<the end of the text so far>", one line, cut at a UTF-8
 * character boundary. */
static void report_tokens(const stream_t *st, double percent)
{
    if (!st->job->progress)
        return;
    size_t from = st->text.len > OLLAMA_TAIL_SHOWN ? st->text.len - OLLAMA_TAIL_SHOWN : 0;
    while (from < st->text.len && ((unsigned char)st->text.data[from] & 0xc0) == 0x80)
        from++;
    char tail[OLLAMA_TAIL_SHOWN + 1] = "";
    if (st->text.data)
        snprintf(tail, sizeof tail, "%s", st->text.data + from);
    for (char *p = tail; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    const char *shown = tail + strspn(tail, " ");
    char message[160];
    snprintf(message, sizeof message, "%" PRId64 " tokens%s%s%s", st->tokens, shown[0] ? ": " : "",
             from > 0 && shown[0] ? "..." : "", shown);
    st->job->progress(st->job->progress_ctx, percent, message);
}

/* One NDJSON line of /api/generate ({"response", "done", ...}) or /api/chat
 * ({"message": {"role", "content"}, "done", ...}), or {"error"} when the
 * server fails mid-stream. */
static int on_generate_line(void *ctx, const char *line, size_t len)
{
    stream_t *st = ctx;
    json_error_t jerr;
    json_t *chunk = json_loadb(line, len, 0, &jerr);
    if (!json_is_object(chunk)) {
        json_decref(chunk);
        snprintf(st->error, sizeof st->error, "%s: a streamed line is not a JSON object (%s)",
                 st->path, chunk ? "another JSON value" : jerr.text);
        return KILN_EINVAL;
    }
    const char *failure = json_string_value(json_object_get(chunk, "error"));
    if (failure) {
        snprintf(st->error, sizeof st->error, "%s: the server failed mid-stream: %.300s", st->path,
                 failure);
        kiln_connector_sanitize_text(st->error, strlen(st->error));
        st->retryable = true;
        json_decref(chunk);
        return KILN_EIO;
    }
    json_t *piece = st->chat ? json_object_get(json_object_get(chunk, "message"), "content")
                             : json_object_get(chunk, "response");
    int rc = 0;
    if (json_string_length(piece) > 0) {
        rc = text_append(st, json_string_value(piece), json_string_length(piece));
        st->tokens++;
        double done = (double)st->tokens / (double)st->expected;
        report_tokens(st, st->base + st->span * (done < 0.99 ? done : 0.99));
    }
    if (rc == 0 && json_is_true(json_object_get(chunk, "done"))) {
        json_decref(st->final);
        st->final = json_incref(chunk);
    }
    json_decref(chunk);
    return rc;
}

/* ---- pull ------------------------------------------------------------------ */

/* The share of a pull done: the bytes of every layer seen so far against
 * their totals (each layer reports its own), never going back. */
static double pull_fraction(stream_t *st, const char *digest, int64_t total, int64_t completed)
{
    if (!digest || total <= 0 || completed < 0 || completed > total)
        return st->pulled;
    int at = 0;
    while (at < st->n_layers && strcmp(st->layers[at].digest, digest) != 0)
        at++;
    if (at == st->n_layers && at < OLLAMA_PULL_LAYERS) {
        snprintf(st->layers[at].digest, sizeof st->layers[at].digest, "%s", digest);
        st->n_layers++;
    }
    if (at < st->n_layers) {
        st->layers[at].total = total;
        st->layers[at].completed = completed;
    }
    double done = 0, all = 0;
    for (int i = 0; i < st->n_layers; i++) {
        done += (double)st->layers[i].completed;
        all += (double)st->layers[i].total;
    }
    if (all > 0 && done / all > st->pulled)
        st->pulled = done / all;
    return st->pulled;
}

/* One NDJSON line of /api/pull: {"status", "digest"?, "total"?, "completed"?}
 * or {"error"}. */
static int on_pull_line(void *ctx, const char *line, size_t len)
{
    stream_t *st = ctx;
    json_t *chunk = json_loadb(line, len, 0, NULL);
    if (!json_is_object(chunk)) {
        json_decref(chunk);
        snprintf(st->error, sizeof st->error, "/api/pull: a streamed line is not a JSON object");
        return KILN_EINVAL;
    }
    const char *failure = json_string_value(json_object_get(chunk, "error"));
    const char *status = json_string_value(json_object_get(chunk, "status"));
    if (failure) {
        /* "pull model manifest: file does not exist": the name is wrong. */
        snprintf(st->error, sizeof st->error, "/api/pull: %.300s", failure);
        kiln_connector_sanitize_text(st->error, strlen(st->error));
        json_decref(chunk);
        return KILN_EIO;
    }
    json_int_t total = json_integer_value(json_object_get(chunk, "total"));
    json_int_t completed = json_integer_value(json_object_get(chunk, "completed"));
    const char *digest = json_string_value(json_object_get(chunk, "digest"));
    double fraction = pull_fraction(st, digest, total, completed);
    if (status && strcmp(status, "success") == 0) {
        json_decref(st->final);
        st->final = json_incref(chunk);
        fraction = 1.0;
    }
    if (st->job->progress && status) {
        char message[160];
        snprintf(message, sizeof message, "pulling %.60s: %.60s", st->model, status);
        if (total > 0)
            snprintf(message + strlen(message), sizeof message - strlen(message), " (%d%%)",
                     (int)(fraction * 100.0));
        kiln_connector_sanitize_text(message, strlen(message));
        st->job->progress(st->job->progress_ctx, st->span * fraction, message);
    }
    json_decref(chunk);
    return 0;
}

/* Turns a failed kiln_http_call (and what the stream noted) into the outcome. */
static int fail_from_call(const stream_t *st, int rc, const kiln_http_result_t *res,
                          const kiln_err_t *err, kiln_job_outcome_t *out)
{
    if (rc == KILN_ECANCELLED) {
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    if (rc == KILN_ENOMEM)
        return rc;
    if (st->error[0])
        return kiln_job_outcome_fail(out, st->retryable, "%s", st->error);
    if (rc == KILN_ETIMEOUT && st->job->timeout_ms > 0)
        return kiln_job_outcome_fail(out, true, "timed out after %" PRId64 " ms: %s",
                                     st->job->timeout_ms, err->msg);
    return kiln_job_outcome_fail(out, res->retryable, "%s", err->msg);
}

/* Pulls model through /api/pull, its progress filling the first part of the
 * job's. Returns 0 when the pull succeeded (out untouched), else 0 with out
 * filled, or a negative code. */
static int pull_model(const ollama_t *ol, const kiln_job_context_t *job, const char *model,
                      const kiln_http_call_t *base, kiln_job_outcome_t *out)
{
    stream_t st = {
        .ol = ol, .job = job, .path = "/api/pull", .model = model, .span = OLLAMA_PULL_SHARE};
    json_t *request = json_pack("{s:s, s:b}", "model", model, "stream", 1);
    char *body = request ? json_dumps(request, JSON_COMPACT) : NULL;
    json_decref(request);
    if (!body)
        return KILN_ENOMEM;
    kiln_log(KILN_LOG_INFO, OLLAMA_LOG, job->job_id, NULL,
             "connectors.%s: model %s is not on the server; pulling it", ol->name, model);
    kiln_http_call_t call = *base;
    call.path = "/api/pull";
    call.body_json = body;
    call.on_line = on_pull_line;
    call.line_ctx = &st;
    call.lines_always = true;
    kiln_http_result_t res;
    kiln_err_t err = {0};
    int rc = kiln_http_call(ol->pull, &call, &res, &err);
    free(body);
    if (rc == 0 && !st.final)
        rc = kiln_job_outcome_fail(out, true,
                                   "/api/pull: the stream for %s ended before \"success\"", model);
    else if (rc < 0 && st.error[0] && rc != KILN_ECANCELLED)
        rc = kiln_job_outcome_fail(out, false, "model %s could not be pulled: %s", model, st.error);
    else if (rc < 0)
        rc = fail_from_call(&st, rc, &res, &err, out);
    kiln_http_result_clear(&res);
    json_decref(st.final);
    return rc;
}

/* ---- run ------------------------------------------------------------------- */

/* The result from the stream: {"model", "text", "message"? (chat),
 * "done_reason", the counts and durations of the last line}. */
static int complete(stream_t *st, const char *model, kiln_job_outcome_t *out)
{
    static const char *const copied[] = {
        "done_reason", "total_duration",       "load_duration", "prompt_eval_count",
        "eval_count",  "prompt_eval_duration", "eval_duration", NULL};
    const char *text = st->text.data ? st->text.data : "";
    json_t *result = json_pack("{s:s, s:s}", "model", model, "text", text);
    if (result && st->chat)
        json_object_set_new(result, "message",
                            json_pack("{s:s, s:s}", "role", "assistant", "content", text));
    for (int i = 0; result && copied[i]; i++) {
        json_t *value = json_object_get(st->final, copied[i]);
        json_object_set(result, copied[i], value ? value : json_null());
    }
    char *serialized = result ? json_dumps(result, JSON_COMPACT) : NULL;
    json_decref(result);
    if (!serialized)
        return KILN_ENOMEM;
    report_tokens(st, 100.0);
    out->status = KILN_OUTCOME_COMPLETED;
    out->result_json = serialized;
    return 0;
}

/* Whether a failed call was Ollama's 404 for a model it does not have:
 * {"error":"model \"x\" not found, try pulling it first"}. */
static bool model_missing(int rc, const kiln_http_result_t *res, const kiln_err_t *err)
{
    return rc == KILN_EIO && res->status == 404 && strstr(err->msg, "not found");
}

/* Streams one generate or chat request; pulls the model once when it is
 * missing and pull_missing is on. */
static int stream_request(const ollama_t *ol, const kiln_job_context_t *job, bool chat,
                          json_t *request, int64_t expected, const kiln_http_call_t *base,
                          kiln_job_outcome_t *out)
{
    const char *model = json_string_value(json_object_get(request, "model"));
    char *body = json_dumps(request, JSON_COMPACT);
    if (!body)
        return KILN_ENOMEM;
    int rc = 0;
    for (bool pulled = false;;) {
        stream_t st = {.ol = ol,
                       .job = job,
                       .path = chat ? "/api/chat" : "/api/generate",
                       .model = model,
                       .chat = chat,
                       .expected = expected,
                       .base = pulled ? OLLAMA_PULL_SHARE : 0.0,
                       .span = pulled ? 100.0 - OLLAMA_PULL_SHARE : 100.0};
        kiln_http_buf_init(&st.text, ol->max_response_bytes);
        kiln_http_call_t call = *base;
        call.path = st.path;
        call.body_json = body;
        call.on_line = on_generate_line;
        call.line_ctx = &st;
        call.lines_always = true;
        kiln_http_result_t res;
        kiln_err_t err = {0};
        rc = kiln_http_call(ol->http, &call, &res, &err);
        bool pull = !pulled && ol->pull_missing && model_missing(rc, &res, &err);
        if (rc == 0 && !st.final)
            rc = kiln_job_outcome_fail(out, true,
                                       "%s: the stream ended before its \"done\" line "
                                       "(%" PRId64 " tokens received)",
                                       st.path, st.tokens);
        else if (rc == 0)
            rc = complete(&st, model, out);
        else if (!pull && model_missing(rc, &res, &err))
            rc = kiln_job_outcome_fail(out, false,
                                       "%s; pull the model on the server (ollama pull %s) or "
                                       "set connectors.%s.pull_missing: true",
                                       err.msg, model, ol->name);
        else if (!pull)
            rc = fail_from_call(&st, rc, &res, &err, out);
        kiln_http_result_clear(&res);
        json_decref(st.final);
        kiln_http_buf_free(&st.text);
        if (!pull)
            break;
        rc = pull_model(ol, job, model, base, out);
        if (rc < 0 || out->error || out->status == KILN_OUTCOME_CANCELLED)
            break;
        pulled = true;
    }
    free(body);
    return rc;
}

/* Checks chat messages: a non-empty array of objects, each with a role and
 * a content string. */
static int check_messages(const json_t *messages, kiln_job_outcome_t *out)
{
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return kiln_job_outcome_bad_field(out, "messages", "a non-empty array of {role, content}",
                                          messages);
    size_t i;
    json_t *message;
    json_array_foreach(messages, i, message)
    {
        if (!json_is_string(json_object_get(message, "role")) ||
            !json_is_string(json_object_get(message, "content"))) {
            char field[48];
            snprintf(field, sizeof field, "messages[%zu]", i);
            return kiln_job_outcome_bad_field(out, field, "an object with role and content strings",
                                              message);
        }
    }
    return 0;
}

/* Builds the request from the payload: {"endpoint"?: "generate" | "chat",
 * "model"?, "prompt" | "messages", "options"?, and any other field of
 * Ollama's API, passed on}; "stream" is always true. Fills *expected with
 * the token count progress is measured against. */
static int build_request(const ollama_t *ol, json_t *payload, bool *chat, int64_t *expected,
                         json_t **request, kiln_job_outcome_t *out)
{
    json_t *endpoint = json_object_get(payload, "endpoint");
    const char *name = endpoint                               ? json_string_value(endpoint)
                       : json_object_get(payload, "messages") ? "chat"
                                                              : "generate";
    if (!name || (strcmp(name, "chat") != 0 && strcmp(name, "generate") != 0))
        return kiln_job_outcome_bad_field(out, "endpoint", "\"generate\" or \"chat\"", endpoint);
    *chat = strcmp(name, "chat") == 0;
    json_t *model = json_object_get(payload, "model");
    if (model && (!json_is_string(model) || json_string_length(model) == 0 ||
                  json_string_length(model) > OLLAMA_MODEL_MAX))
        return kiln_job_outcome_bad_field(out, "model", "a model name", model);
    if (!model && !ol->model)
        return kiln_job_outcome_fail(out, false,
                                     "payload.model: required, as connectors.%s.model sets no "
                                     "default",
                                     ol->name);
    int rc = 0;
    json_t *prompt = json_object_get(payload, "prompt");
    if (*chat)
        rc = check_messages(json_object_get(payload, "messages"), out);
    else if (!json_is_string(prompt))
        rc = kiln_job_outcome_bad_field(out, "prompt", "a string", prompt);
    json_t *options = json_object_get(payload, "options");
    json_t *num_predict = json_object_get(options, "num_predict");
    if (rc == 0 && options && !json_is_object(options))
        rc = kiln_job_outcome_bad_field(out, "options", "an object of model options", options);
    if (rc == 0 && num_predict && !json_is_integer(num_predict))
        rc = kiln_job_outcome_bad_field(out, "options.num_predict", "an integer", num_predict);
    if (rc < 0 || out->error)
        return rc;
    *expected =
        json_integer_value(num_predict) > 0 ? json_integer_value(num_predict) : ol->expected_tokens;
    if (!(*request = json_deep_copy(payload)))
        return KILN_ENOMEM;
    json_object_del(*request, "endpoint");
    json_object_set_new(*request, "model", model ? json_incref(model) : json_string(ol->model));
    json_object_set_new(*request, "stream", json_true());
    return 0;
}

static int ollama_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    const ollama_t *ol = state;
    json_error_t jerr;
    json_t *payload = json_loads(job->payload_json ? job->payload_json : "", 0, &jerr);
    if (!json_is_object(payload)) {
        json_decref(payload);
        return kiln_job_outcome_fail(out, false, "payload: expected a JSON object%s%s",
                                     payload ? "" : ": ", payload ? "" : jerr.text);
    }
    bool chat = false;
    int64_t expected = ol->expected_tokens;
    json_t *request = NULL;
    int rc = build_request(ol, payload, &chat, &expected, &request, out);
    if (rc == 0 && !out->error) {
        kiln_http_call_t call = {
            .method = "POST",
            .job_id = job->job_id,
            .cancel = job->cancel,
            .cancel_fd = job->cancel_fd,
            .deadline_ms = job->timeout_ms > 0 ? kiln_api_now_ms() + job->timeout_ms : 0,
        };
        rc = stream_request(ol, job, chat, request, expected, &call, out);
    }
    json_decref(request);
    json_decref(payload);
    return rc;
}

const kiln_connector_ops_t kiln_connector_ollama = {
    .type = "ollama",
    .init = ollama_init,
    .run = ollama_run,
    .health = ollama_health,
    .free = ollama_free,
};

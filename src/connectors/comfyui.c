/*
 * The comfyui connector (docs/connectors.md#comfyui): runs a workflow in
 * API format on a stock ComfyUI. It opens the progress socket
 * (/ws?clientId=...) first so no message is missed, queues the prompt with
 * POST /prompt, follows it on the socket (or, when the socket cannot be
 * opened or drops, by polling /history and /queue with backoff), then reads
 * GET /history/<id> and fetches the outputs through GET /view. A cancelled
 * or timed-out job takes its prompt off ComfyUI: deleted from the queue if
 * it had not started, interrupted if it had.
 *
 * The instance is read-only after init, so run() needs no lock.
 */
#include "api_job.h"
#include "comfyui_internal.h"
#include "comfyui_ws.h"
#include "outputs.h"

#include "kiln/log.h"

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define COMFYUI_DEFAULT_URL     "http://127.0.0.1:8188"
#define COMFYUI_TIMEOUT_DEFAULT 3600000 /* ms, one job */
#define COMFYUI_TIMEOUT_MAX     604800000
#define COMFYUI_REQUEST_DEFAULT 60000 /* ms, one request */
#define COMFYUI_RETRIES_DEFAULT 3
#define COMFYUI_OUTPUT_DEFAULT  (256u * 1024 * 1024)
#define COMFYUI_POLL_DEFAULT    5000 /* ms, the longest wait between two polls */
#define COMFYUI_POLL_FIRST_MS   100
#define COMFYUI_QUIET_MS        10000 /* socket silent this long: look at /history */
#define COMFYUI_STOP_MS         5000  /* for taking a prompt off ComfyUI */
#define COMFYUI_NODES_MAX       5000
#define COMFYUI_INPUTS_MAX      1000
#define COMFYUI_VANISHED_POLLS  3 /* polls that find the prompt nowhere before giving up */

static const char *const known_options[] = {
    "base_url",           "url",         "timeout_ms",  "request_timeout_ms",
    "connect_timeout_ms", "max_retries", "outputs_dir", "max_output_bytes",
    "max_response_bytes", "poll_max_ms", NULL};

static bool deadline_passed(const kiln_http_call_t *call)
{
    return call->deadline_ms && kiln_api_now_ms() >= call->deadline_ms;
}

/* ---- init ------------------------------------------------------------------ */

static void comfyui_free(void *state)
{
    comfyui_t *cf = state;
    if (!cf)
        return;
    kiln_http_client_free(cf->api);
    kiln_http_client_free(cf->files);
    free(cf->base_url);
    free(cf->outputs_dir);
    free(cf);
}

/* base_url, or url as its other name; base_url wins, as the machine plan
 * points each GPU's worker at its ComfyUI through base_url
 * (KILN_CONNECTOR_URLS). */
static int read_url(const kiln_connector_config_t *cfg, const char **url, kiln_err_t *err)
{
    const char *alias = NULL;
    int rc = kiln_connector_option_string(cfg, "base_url", url, err);
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "url", &alias, err);
    if (rc == 0 && !*url)
        *url = alias ? alias : COMFYUI_DEFAULT_URL;
    return rc;
}

static int read_options(const kiln_connector_config_t *cfg, comfyui_t *cf,
                        kiln_http_client_options_t *hopts, kiln_err_t *err)
{
    int64_t request_ms = 0, connect_ms = 0, retries = 0, max_bytes = 0, max_output = 0;
    const char *url = NULL, *outputs = NULL;
    int rc = read_url(cfg, &url, err);
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "outputs_dir", &outputs, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "timeout_ms", 1, COMFYUI_TIMEOUT_MAX,
                                       COMFYUI_TIMEOUT_DEFAULT, &cf->timeout_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "request_timeout_ms", 1, COMFYUI_TIMEOUT_MAX,
                                       COMFYUI_REQUEST_DEFAULT, &request_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "connect_timeout_ms", 1, COMFYUI_TIMEOUT_MAX,
                                       KILN_HTTP_CONNECT_TIMEOUT_MS, &connect_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "max_retries", 0, KILN_HTTP_RETRIES_MAX,
                                       COMFYUI_RETRIES_DEFAULT, &retries, err);
    if (rc == 0)
        rc =
            kiln_connector_option_int(cfg, "max_response_bytes", 1024, KILN_HTTP_MAX_RESPONSE_LIMIT,
                                      KILN_HTTP_MAX_RESPONSE_DEFAULT, &max_bytes, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "max_output_bytes", 1024, KILN_HTTP_MAX_RESPONSE_LIMIT,
                                       COMFYUI_OUTPUT_DEFAULT, &max_output, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "poll_max_ms", 100, 600000, COMFYUI_POLL_DEFAULT,
                                       &cf->poll_max_ms, err);
    if (rc == 0 && outputs)
        rc = kiln_outputs_check_dir(cfg, outputs, err);
    if (rc < 0)
        return rc;
    if (!(cf->base_url = strdup(url)) || (outputs && !(cf->outputs_dir = strdup(outputs))))
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    hopts->base_url = url;
    hopts->name = cfg->name;
    hopts->timeout_ms = (long)request_ms;
    hopts->connect_timeout_ms = (long)connect_ms;
    hopts->max_retries = (int)retries;
    hopts->max_response_bytes = (size_t)max_bytes;
    cf->max_output_bytes = (size_t)max_output;
    return 0;
}

static int comfyui_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    comfyui_t *cf = calloc(1, sizeof *cf);
    if (!cf)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    snprintf(cf->name, sizeof cf->name, "%s", cfg->name);
    kiln_http_client_options_t hopts = {0};
    int rc = read_options(cfg, cf, &hopts, err);
    if (rc == 0)
        rc = kiln_http_client_new(&hopts, &cf->api, err);
    if (rc == 0) {
        hopts.max_response_bytes = cf->max_output_bytes;
        rc = kiln_http_client_new(&hopts, &cf->files, err);
    }
    if (rc < 0) {
        comfyui_free(cf);
        return rc;
    }
    kiln_connector_warn_unknown_options(cfg, known_options);
    kiln_log(KILN_LOG_INFO, COMFYUI_LOG, NULL, NULL, "connectors.%s: ComfyUI at %s%s%s", cfg->name,
             kiln_http_client_url_shown(cf->api), cf->outputs_dir ? ", outputs saved under " : "",
             cf->outputs_dir ? cf->outputs_dir : "");
    *state = cf;
    return 0;
}

/* GET /system_stats answers with a JSON object. */
static int comfyui_health(void *state, kiln_err_t *err)
{
    const comfyui_t *cf = state;
    kiln_http_call_t call = {.method = "GET",
                             .path = "/system_stats",
                             .cancel_fd = -1,
                             .deadline_ms = kiln_api_now_ms() + COMFYUI_STOP_MS};
    kiln_http_result_t res;
    int rc = kiln_http_call(cf->api, &call, &res, err);
    if (rc == 0) {
        json_t *doc = json_loadb(res.body, res.body_len, 0, NULL);
        if (!json_is_object(doc))
            rc = kiln_err_set(err, KILN_EIO,
                              "connectors.%s: GET /system_stats: the answer is not a JSON "
                              "object; is %s a ComfyUI?",
                              cf->name, kiln_http_client_url_shown(cf->api));
        json_decref(doc);
    }
    kiln_http_result_clear(&res);
    return rc;
}

/* ---- payload --------------------------------------------------------------- */

static int check_workflow(const json_t *workflow, kiln_job_outcome_t *out)
{
    if (!json_is_object(workflow))
        return kiln_job_outcome_bad_field(
            out, "workflow", "a workflow in API format (an object of nodes)", workflow);
    if (json_is_array(json_object_get(workflow, "nodes")))
        return kiln_job_outcome_fail(out, false,
                                     "payload.workflow: this is ComfyUI's UI format (it has "
                                     "\"nodes\" and \"links\"); export it with \"Save (API "
                                     "Format)\" and send that");
    size_t n = json_object_size(workflow);
    if (n == 0 || n > COMFYUI_NODES_MAX)
        return kiln_job_outcome_fail(out, false, "payload.workflow: expected 1-%d nodes, got %zu",
                                     COMFYUI_NODES_MAX, n);
    const char *id;
    json_t *node;
    json_object_foreach((json_t *)workflow, id, node)
    {
        json_t *type = json_object_get(node, "class_type");
        json_t *inputs = json_object_get(node, "inputs");
        if (!id[0] || strlen(id) > COMFYUI_ID_MAX || !json_is_object(node) ||
            !json_is_string(type) || !json_string_length(type) ||
            (inputs && !json_is_object(inputs)))
            return kiln_job_outcome_fail(out, false,
                                         "payload.workflow[\"%.64s\"]: expected a node "
                                         "{\"class_type\": \"...\", \"inputs\": {...}} under an id "
                                         "of 1-%d characters",
                                         id, COMFYUI_ID_MAX);
    }
    return 0;
}

/* Sets inputs {"<node>.<input>": value} into the workflow (a copy). */
static int apply_inputs(json_t *workflow, const json_t *inputs, kiln_job_outcome_t *out)
{
    if (!inputs || json_is_null(inputs))
        return 0;
    if (!json_is_object(inputs) || json_object_size(inputs) > COMFYUI_INPUTS_MAX)
        return kiln_job_outcome_bad_field(out, "inputs",
                                          "an object of \"<node id>.<input name>\": value (at most "
                                          "1000)",
                                          inputs);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)inputs, key, value)
    {
        const char *dot = strrchr(key, '.');
        char node_id[COMFYUI_ID_MAX + 1];
        json_t *node = NULL;
        if (dot && dot > key && (size_t)(dot - key) <= COMFYUI_ID_MAX && dot[1]) {
            snprintf(node_id, sizeof node_id, "%.*s", (int)(dot - key), key);
            node = json_object_get(workflow, node_id);
        }
        if (!node)
            return kiln_job_outcome_fail(out, false,
                                         "payload.inputs[\"%.80s\"]: expected \"<node id>.<input "
                                         "name>\" naming a node of the workflow",
                                         key);
        json_t *node_inputs = json_object_get(node, "inputs");
        if (!node_inputs) {
            node_inputs = json_object();
            json_object_set_new(node, "inputs", node_inputs);
        }
        if (!node_inputs || json_object_set(node_inputs, dot + 1, value) != 0)
            return KILN_ENOMEM;
    }
    return 0;
}

/* The workflow to queue (a new reference), from the job's payload. */
static int read_payload(const kiln_job_context_t *job, json_t **workflow, kiln_job_outcome_t *out)
{
    *workflow = NULL;
    json_error_t jerr;
    json_t *payload = json_loads(job->payload_json ? job->payload_json : "", 0, &jerr);
    int rc;
    if (!json_is_object(payload))
        rc = kiln_job_outcome_fail(out, false, "payload: expected a JSON object%s%s",
                                   payload ? "" : ": ", payload ? "" : jerr.text);
    else
        rc = check_workflow(json_object_get(payload, "workflow"), out);
    if (rc == 0 && !out->error) {
        *workflow = json_deep_copy(json_object_get(payload, "workflow"));
        rc = *workflow ? apply_inputs(*workflow, json_object_get(payload, "inputs"), out)
                       : KILN_ENOMEM;
        if (rc < 0 || out->error) {
            json_decref(*workflow);
            *workflow = NULL;
        }
    }
    json_decref(payload);
    return rc;
}

/* ---- queueing the prompt --------------------------------------------------- */

/* "kiln-<job id>-<random hex>": ComfyUI sends this client's messages to it. */
static void make_client_id(const kiln_job_context_t *job, char *out, size_t size)
{
    unsigned char bytes[8] = {0};
    if (getrandom(bytes, sizeof bytes, 0) != (ssize_t)sizeof bytes) {
        uint64_t fallback = (uint64_t)kiln_api_now_ms() ^ (uint64_t)(uintptr_t)out;
        memcpy(bytes, &fallback, sizeof bytes);
    }
    char id[64];
    kiln_outputs_safe_name(job->job_id, "job", id, sizeof id);
    snprintf(out, size, "kiln-%s-%02x%02x%02x%02x%02x%02x%02x%02x", id, bytes[0], bytes[1],
             bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]);
}

/* A 400 from POST /prompt: ComfyUI's {"error": {...}, "node_errors": {...}}
 * as one message naming the nodes at fault. */
static int refused(const kiln_http_result_t *res, const kiln_err_t *err, kiln_job_outcome_t *out)
{
    json_t *doc = res->body ? json_loadb(res->body, res->body_len, 0, NULL) : NULL;
    json_t *error = json_object_get(doc, "error");
    const char *message = json_string_value(json_object_get(error, "message"));
    const char *details = json_string_value(json_object_get(error, "details"));
    char text[1024];
    int used = snprintf(text, sizeof text, "POST /prompt: ComfyUI refused the workflow: %.200s",
                        message ? message : err->msg);
    if (details && details[0])
        used += snprintf(text + used, sizeof text - (size_t)used, " (%.200s)", details);
    const char *node;
    json_t *info;
    json_object_foreach(json_object_get(doc, "node_errors"), node, info)
    {
        json_t *first = json_array_get(json_object_get(info, "errors"), 0);
        const char *type = json_string_value(json_object_get(info, "class_type"));
        const char *what = json_string_value(json_object_get(first, "message"));
        const char *why = json_string_value(json_object_get(first, "details"));
        if ((size_t)used < sizeof text)
            used += snprintf(text + used, sizeof text - (size_t)used,
                             "; node %.64s %.64s: %.160s%s%.160s", node, type ? type : "?",
                             what ? what : "invalid", why ? ": " : "", why ? why : "");
    }
    json_decref(doc);
    kiln_connector_sanitize_text(text, strlen(text));
    return kiln_job_outcome_fail(out, false, "%s", text);
}

static bool valid_prompt_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    return n > 0 && n <= COMFYUI_ID_MAX &&
           strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == n;
}

/* POST /prompt; *prompt_id (malloc'd) on success, else the outcome in out,
 * or KILN_ECANCELLED / KILN_ETIMEOUT (the job's deadline) for the caller. */
static int queue_prompt(const comfyui_t *cf, const json_t *workflow, const char *client_id,
                        const kiln_http_call_t *base, char **prompt_id, kiln_job_outcome_t *out)
{
    json_t *request = json_pack("{s:O, s:s}", "prompt", workflow, "client_id", client_id);
    char *body = request ? json_dumps(request, JSON_COMPACT) : NULL;
    json_decref(request);
    if (!body)
        return KILN_ENOMEM;
    kiln_http_call_t call = *base;
    call.method = "POST";
    call.path = "/prompt";
    call.body_json = body;
    kiln_http_result_t res;
    kiln_err_t err = {0};
    int rc = kiln_http_call(cf->api, &call, &res, &err);
    free(body);
    if (rc == KILN_ECANCELLED || (rc == KILN_ETIMEOUT && deadline_passed(base))) {
        /* left to the caller */
    } else if (rc == KILN_EIO && res.status == 400) {
        rc = refused(&res, &err, out);
    } else if (rc < 0) {
        rc = rc == KILN_ENOMEM ? rc : kiln_job_outcome_fail(out, res.retryable, "%s", err.msg);
    } else {
        json_t *doc = json_loadb(res.body, res.body_len, 0, NULL);
        const char *id = json_string_value(json_object_get(doc, "prompt_id"));
        if (!valid_prompt_id(id))
            rc = kiln_job_outcome_fail(out, false,
                                       "POST /prompt: the answer has no usable prompt_id (a JSON "
                                       "object with a string of 1-%d letters, digits, '-', '_' "
                                       "or '.'); is %s a ComfyUI?",
                                       COMFYUI_ID_MAX, kiln_http_client_url_shown(cf->api));
        else if (!(*prompt_id = strdup(id)))
            rc = KILN_ENOMEM;
        json_decref(doc);
    }
    kiln_http_result_clear(&res);
    return rc;
}

/* ---- following the prompt -------------------------------------------------- */

/* One job's run: its calls, its socket and what it has seen. */
typedef struct run {
    const comfyui_t *cf;
    const kiln_job_context_t *job;
    kiln_http_call_t call; /* cancel and the job's deadline */
    kiln_comfyui_ws_t *ws; /* NULL: polling */
    char ws_why[200];      /* why there is no socket */
    comfyui_track_t track;
    int vanished;      /* polls in a row that found the prompt nowhere */
    size_t messages;   /* taken from the socket */
    int cancel_fd;     /* the job's, or -1 once it proved to be readable without a cancel */
    int64_t budget_ms; /* the job's time: its timeout_ms, at most the option's */
} run_t;

/* GET path into *doc (a JSON value). Returns 0, or a negative code with the
 * outcome in out (or KILN_ECANCELLED / KILN_ETIMEOUT left for the caller). */
static int get_json(run_t *r, const kiln_http_call_t *base, const char *path, json_t **doc,
                    kiln_job_outcome_t *out)
{
    kiln_http_call_t call = *base;
    call.method = "GET";
    call.path = path;
    call.body_json = NULL;
    kiln_http_result_t res;
    kiln_err_t err = {0};
    int rc = kiln_http_call(r->cf->api, &call, &res, &err);
    *doc = NULL;
    if (rc == 0 && !(*doc = json_loadb(res.body, res.body_len, 0, NULL))) {
        kiln_job_outcome_fail(out, false, "GET %s: the answer is not JSON", path);
        rc = KILN_EINVAL;
    } else if (rc < 0 && rc != KILN_ECANCELLED && rc != KILN_ENOMEM &&
               !(rc == KILN_ETIMEOUT && deadline_passed(base))) {
        kiln_job_outcome_fail(out, res.retryable, "%s", err.msg);
    }
    kiln_http_result_clear(&res);
    return rc;
}

/* Where prompt_id is in GET /queue's {"queue_running": [...], "queue_pending": [...]}:
 * 'r' running, 'p' pending (*ahead: how many pending before it), 0 neither. */
static char queue_place(const json_t *queue, const char *prompt_id, size_t *ahead)
{
    static const char *const lists[] = {"queue_running", "queue_pending"};
    for (int l = 0; l < 2; l++) {
        json_t *item;
        size_t i;
        json_array_foreach(json_object_get(queue, lists[l]), i, item)
        {
            const char *id = json_string_value(json_array_get(item, 1));
            if (id && strcmp(id, prompt_id) == 0) {
                *ahead = i;
                return l == 0 ? 'r' : 'p';
            }
        }
    }
    return 0;
}

/* While polling and the prompt is not in the history: where is it? Reports
 * its place; fails the job once it has been nowhere for a few polls. */
static int poll_queue(run_t *r, kiln_job_outcome_t *out)
{
    json_t *queue = NULL;
    int rc = get_json(r, &r->call, "/queue", &queue, out);
    if (rc < 0)
        return rc;
    size_t ahead = 0;
    char place = queue_place(queue, r->track.prompt_id, &ahead);
    json_decref(queue);
    char message[300];
    r->vanished = place ? 0 : r->vanished + 1;
    if (place == 'p')
        snprintf(message, sizeof message, "queued on ComfyUI (%zu ahead); polling (%s)", ahead,
                 r->ws_why);
    else
        snprintf(message, sizeof message, "running on ComfyUI; polling /history (%s)", r->ws_why);
    if (place)
        kiln_comfyui_track_report(&r->track, -1, message);
    if (r->vanished < COMFYUI_VANISHED_POLLS)
        return 0;
    kiln_job_outcome_fail(out, true,
                          "prompt %s is neither queued, running nor in ComfyUI's history; "
                          "ComfyUI may have restarted",
                          r->track.prompt_id);
    return KILN_ENOTFOUND;
}

/* GET /history/<id>: 1 with *entry (in *doc) once final, 0 not yet, or a
 * negative code (the outcome in out, or cancel/timeout for the caller). */
static int poll_history(run_t *r, json_t **doc, const json_t **entry, kiln_job_outcome_t *out)
{
    char path[COMFYUI_ID_MAX + 16];
    snprintf(path, sizeof path, "/history/%s", r->track.prompt_id);
    int rc = get_json(r, &r->call, path, doc, out);
    if (rc < 0)
        return rc;
    rc = kiln_comfyui_track_history(&r->track, *doc, entry);
    if (rc == KILN_EINVAL) {
        kiln_job_outcome_fail(out, false, "%s", r->track.error);
        return KILN_EINVAL;
    }
    if (rc == 0 && !r->ws && !r->track.finished)
        rc = poll_queue(r, out);
    return rc;
}

/* Takes what the socket has; drops to polling when it has closed. */
static void drain_socket(run_t *r)
{
    char *msg = NULL;
    int got;
    while (r->ws && (got = kiln_comfyui_ws_next(r->ws, &msg, r->ws_why, sizeof r->ws_why)) != 0) {
        if (got < 0) {
            kiln_comfyui_ws_close(r->ws);
            r->ws = NULL;
            char message[300];
            snprintf(message, sizeof message, "progress socket lost (%s); polling /history",
                     r->ws_why);
            kiln_log(KILN_LOG_WARN, COMFYUI_LOG, r->job->job_id, NULL, "%s", message);
            kiln_comfyui_track_report(&r->track, -1, message);
            return;
        }
        kiln_comfyui_track_message(&r->track, msg);
        r->messages++;
        free(msg);
    }
}

static bool cancelled(const kiln_job_context_t *job)
{
    return job->cancel && atomic_load_explicit(job->cancel, memory_order_acquire);
}

/* Sleeps until wake_at, the socket has news or the job is cancelled. */
static void wait_for_news(run_t *r, int64_t wake_at)
{
    struct pollfd fds[2] = {{.fd = r->cancel_fd, .events = POLLIN},
                            {.fd = r->ws ? kiln_comfyui_ws_fd(r->ws) : -1, .events = POLLIN}};
    int64_t left = wake_at - kiln_api_now_ms();
    if (left > 0 && poll(fds, 2, left > 1000 ? 1000 : (int)left) > 0 && fds[0].revents &&
        !cancelled(r->job))
        r->cancel_fd = -1; /* readable without a cancel: rely on the flag (as http.c does) */
}

/* Follows the prompt until its history entry is final: on the socket,
 * with a look at /history when the socket says done or stays quiet, or by
 * polling /history (and /queue) with backoff once there is no socket.
 * Returns 1 with *entry (in *doc) on success; 0 with the outcome in out;
 * KILN_ECANCELLED or KILN_ETIMEOUT for the caller; or KILN_ENOMEM. */
static int follow(run_t *r, json_t **doc, const json_t **entry, kiln_job_outcome_t *out)
{
    int64_t delay = COMFYUI_POLL_FIRST_MS;
    int64_t next_poll = r->ws ? kiln_api_now_ms() + COMFYUI_QUIET_MS : kiln_api_now_ms();
    bool finished_seen = false;
    for (;;) {
        size_t seen = r->messages;
        bool had_socket = r->ws != NULL;
        drain_socket(r);
        if (r->track.failed)
            return kiln_job_outcome_fail(out, r->track.retryable, "%s", r->track.error);
        if (cancelled(r->job))
            return KILN_ECANCELLED;
        if (deadline_passed(&r->call))
            return KILN_ETIMEOUT;
        if ((r->track.finished && !finished_seen) || (had_socket && !r->ws))
            next_poll = kiln_api_now_ms();
        else if (r->ws && r->messages != seen && !r->track.finished)
            next_poll = kiln_api_now_ms() + COMFYUI_QUIET_MS; /* the socket is alive */
        finished_seen = r->track.finished;
        if (next_poll <= kiln_api_now_ms()) {
            json_decref(*doc);
            *doc = NULL;
            int rc = poll_history(r, doc, entry, out);
            if (r->track.failed)
                return kiln_job_outcome_fail(out, r->track.retryable, "%s", r->track.error);
            if (rc != 0 || out->error)
                return out->error ? 0 : rc;
            next_poll = kiln_api_now_ms() + (r->ws && !finished_seen ? COMFYUI_QUIET_MS : delay);
            delay = delay * 2 > r->cf->poll_max_ms ? r->cf->poll_max_ms : delay * 2;
        }
        wait_for_news(r, r->call.deadline_ms < next_poll ? r->call.deadline_ms : next_poll);
    }
}

/* Takes the prompt off ComfyUI after a cancel or a timeout: deleted from
 * the queue when it is waiting there, interrupted when it runs (and, when
 * the queue cannot be read, both). */
static void stop_prompt(run_t *r)
{
    kiln_http_call_t call = {.job_id = r->job->job_id,
                             .cancel_fd = -1,
                             .deadline_ms = kiln_api_now_ms() + COMFYUI_STOP_MS};
    kiln_job_outcome_t ignored = {0};
    json_t *queue = NULL;
    size_t ahead = 0;
    char place = get_json(r, &call, "/queue", &queue, &ignored) == 0
                     ? queue_place(queue, r->track.prompt_id, &ahead)
                     : '?';
    json_decref(queue);
    kiln_job_outcome_clear(&ignored);
    json_t *body = NULL;
    kiln_http_result_t res;
    kiln_err_t err = {0};
    call.method = "POST";
    if (place == 'p' || place == '?') {
        body = json_pack("{s:[s]}", "delete", r->track.prompt_id);
        call.path = "/queue";
        call.body_json = body ? json_dumps(body, JSON_COMPACT) : NULL;
        if (call.body_json && kiln_http_call(r->cf->api, &call, &res, &err) < 0)
            kiln_log(KILN_LOG_WARN, COMFYUI_LOG, r->job->job_id, NULL, "%s", err.msg);
        kiln_http_result_clear(&res);
        free((char *)call.body_json);
        json_decref(body);
    }
    if (place == 'r' || place == '?') {
        /* The prompt_id limits the interrupt to this prompt on ComfyUI
         * versions that read it; older ones interrupt what runs, which is
         * this prompt. */
        body = json_pack("{s:s}", "prompt_id", r->track.prompt_id);
        call.path = "/interrupt";
        call.body_json = body ? json_dumps(body, JSON_COMPACT) : NULL;
        if (call.body_json && kiln_http_call(r->cf->api, &call, &res, &err) < 0)
            kiln_log(KILN_LOG_WARN, COMFYUI_LOG, r->job->job_id, NULL, "%s", err.msg);
        kiln_http_result_clear(&res);
        free((char *)call.body_json);
        json_decref(body);
    }
    kiln_log(KILN_LOG_INFO, COMFYUI_LOG, r->job->job_id, NULL, "prompt %s %s", r->track.prompt_id,
             place == 'p'   ? "deleted from the queue"
             : place == 'r' ? "interrupted"
             : place == '?' ? "deleted and interrupted (the queue could not be read)"
                            : "had already finished");
}

/* ---- run ------------------------------------------------------------------- */

/* {"prompt_id", "outputs": [...], "progress": "websocket"|"polling"}. */
static int finish(run_t *r, const json_t *entry, kiln_job_outcome_t *out)
{
    json_t *outputs = NULL;
    int rc = kiln_comfyui_outputs_collect(r->cf, r->job, entry, &r->call, &outputs, out);
    if (rc < 0 || !outputs)
        return rc;
    json_t *result = json_pack("{s:s, s:o, s:s}", "prompt_id", r->track.prompt_id, "outputs",
                               outputs, "progress", r->ws ? "websocket" : "polling");
    char *text = result ? json_dumps(result, JSON_COMPACT) : NULL;
    json_decref(result);
    if (!text)
        return KILN_ENOMEM;
    out->status = KILN_OUTCOME_COMPLETED;
    out->result_json = text;
    kiln_comfyui_track_report(&r->track, 100.0, "done");
    return 0;
}

/* Queues the prompt and follows it to its outcome. */
static int run_prompt(run_t *r, const json_t *workflow, const char *client_id,
                      kiln_job_outcome_t *out)
{
    char *prompt_id = NULL;
    int rc = queue_prompt(r->cf, workflow, client_id, &r->call, &prompt_id, out);
    if (rc < 0 || !prompt_id)
        return rc;
    kiln_comfyui_track_init(&r->track, workflow, prompt_id, r->job);
    kiln_log(KILN_LOG_INFO, COMFYUI_LOG, r->job->job_id, NULL, "prompt %s queued%s%s", prompt_id,
             r->ws ? "" : "; polling, as the progress socket failed: ", r->ws ? "" : r->ws_why);
    kiln_comfyui_track_report(&r->track, 0.0, r->ws ? "queued" : "queued; polling /history");
    json_t *doc = NULL;
    const json_t *entry = NULL;
    rc = follow(r, &doc, &entry, out);
    if (rc == 1)
        rc = finish(r, entry, out);
    if (rc == KILN_ECANCELLED || out->status == KILN_OUTCOME_CANCELLED) {
        stop_prompt(r);
        kiln_job_outcome_clear(out);
        out->status = KILN_OUTCOME_CANCELLED;
        rc = 0;
    } else if (rc == KILN_ETIMEOUT) {
        stop_prompt(r);
        rc = kiln_job_outcome_fail(out, true,
                                   "timed out after %" PRId64 " ms; prompt %s was taken off "
                                   "ComfyUI",
                                   r->budget_ms, prompt_id);
    } else if (rc < 0 && out->error) {
        rc = 0; /* the outcome says what went wrong */
    }
    json_decref(doc);
    free(prompt_id);
    return rc;
}

static int comfyui_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    const comfyui_t *cf = state;
    json_t *workflow = NULL;
    int rc = read_payload(job, &workflow, out);
    if (rc < 0 || !workflow)
        return rc;
    run_t r = {.cf = cf, .job = job, .cancel_fd = job->cancel_fd};
    r.budget_ms =
        job->timeout_ms > 0 && job->timeout_ms < cf->timeout_ms ? job->timeout_ms : cf->timeout_ms;
    r.call = (kiln_http_call_t){.job_id = job->job_id,
                                .cancel = job->cancel,
                                .cancel_fd = job->cancel_fd,
                                .deadline_ms = kiln_api_now_ms() + r.budget_ms};
    char client_id[128];
    make_client_id(job, client_id, sizeof client_id);
    /* The socket first, so that no message about the prompt is missed. */
    if (kiln_comfyui_ws_open(cf->base_url, client_id, &r.ws, r.ws_why, sizeof r.ws_why) < 0) {
        kiln_log(KILN_LOG_WARN, COMFYUI_LOG, job->job_id, NULL,
                 "connectors.%s: the progress socket failed (%s); polling /history instead",
                 cf->name, r.ws_why);
        char message[300];
        snprintf(message, sizeof message, "progress socket unavailable (%s); polling /history",
                 r.ws_why);
        if (job->progress)
            job->progress(job->progress_ctx, 0.0, message);
    }
    rc = run_prompt(&r, workflow, client_id, out);
    if (rc == KILN_ECANCELLED) {
        out->status = KILN_OUTCOME_CANCELLED;
        rc = 0;
    } else if (rc == KILN_ETIMEOUT) {
        rc = kiln_job_outcome_fail(out, true,
                                   "timed out after %" PRId64 " ms before ComfyUI "
                                   "took the prompt",
                                   r.budget_ms);
    }
    kiln_comfyui_ws_close(r.ws);
    json_decref(workflow);
    return rc;
}

const kiln_connector_ops_t kiln_connector_comfyui = {
    .type = "comfyui",
    .init = comfyui_init,
    .run = comfyui_run,
    .health = comfyui_health,
    .free = comfyui_free,
};

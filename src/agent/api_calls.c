/*
 * The machine API's loop side: each request kind against the hooks, run on
 * the loop thread, producing a finished reply (body serialised here so no
 * JSON object crosses threads). Also the reply builders every file uses.
 */
#include "agent/api_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "agent/metrics.h"
#include "agent/sysinfo.h"

#define HEALTH_JSON "application/health+json"
#define MIB         1048576.0

/* ---- replies ---------------------------------------------------------------- */

static const char *error_code(int status)
{
    switch (status) {
    case 400:
        return "bad_request";
    case 401:
        return "unauthorized";
    case 403:
        return "forbidden";
    case 404:
        return "not_found";
    case 405:
        return "method_not_allowed";
    case 409:
        return "conflict";
    case 408:
        return "request_timeout";
    case 413:
        return "payload_too_large";
    case 414:
        return "uri_too_long";
    case 431:
        return "headers_too_large";
    case 501:
        return "not_implemented";
    case 503:
        return "unavailable";
    case 505:
        return "http_version_not_supported";
    default:
        return status < 500 ? "bad_request" : "internal";
    }
}

void api_response_clear(api_response_t *res)
{
    free(res->body);
    res->body = NULL;
    res->len = 0;
}

void api_response_json(api_response_t *res, int status, json_t *body, const char *content_type)
{
    api_response_clear(res);
    res->status = status;
    res->content_type = content_type ? content_type : "application/json";
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(body);
    if (!text) {
        res->status = 500;
        res->content_type = "application/json";
        text = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
        if (!text)
            return;
    }
    size_t len = strlen(text);
    char *with_newline = realloc(text, len + 2);
    if (with_newline) {
        text = with_newline;
        text[len++] = '\n';
        text[len] = '\0';
    }
    res->body = text;
    res->len = len;
}

void api_response_error(api_response_t *res, int status, const char *fmt, ...)
{
    char message[KILN_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    api_response_json(
        res, status,
        json_pack("{s:{s:s, s:s}}", "error", "code", error_code(status), "message", message), NULL);
}

/* A hook's KILN_E* result as a reply. */
static void reply_from_code(api_response_t *res, int rc, const kiln_err_t *err, json_t *ok_body)
{
    if (rc == 0) {
        api_response_json(res, 200, ok_body, NULL);
        return;
    }
    json_decref(ok_body);
    const char *msg = err->msg[0] ? err->msg : kiln_strerror(rc);
    int status = rc == KILN_ENOTFOUND   ? 404
                 : rc == KILN_ECONFLICT ? 409
                 : rc == KILN_EINVAL    ? 400
                 : rc == KILN_ETIMEOUT  ? 503
                                        : 500;
    api_response_error(res, status, "%s", msg);
}

static void reply_not_implemented(api_response_t *res, const char *what)
{
    api_response_error(res, 501, "this machine agent does not support %s", what);
}

/* ---- documents -------------------------------------------------------------- */

/* The status document with memory, disk, load and cpus filled in; NULL when
 * the agent has none. Caller owns it. */
static json_t *status_doc(kiln_machine_api_t *api)
{
    json_t *doc = api->hooks.status ? api->hooks.status(api->hooks_ctx) : NULL;
    if (doc && !json_is_object(doc)) {
        json_decref(doc);
        doc = NULL;
    }
    if (doc && kiln_sysinfo_fill_json(doc, api->disk_path) != 0) {
        json_decref(doc);
        doc = NULL;
    }
    return doc;
}

/* One service's status: the service_status hook, else the entry in status. */
static json_t *service_doc(kiln_machine_api_t *api, const char *name)
{
    if (api->hooks.service_status)
        return api->hooks.service_status(api->hooks_ctx, name);
    json_t *doc = api->hooks.status ? api->hooks.status(api->hooks_ctx) : NULL;
    json_t *found = NULL, *svc;
    size_t i;
    json_array_foreach(json_object_get(doc, "services"), i, svc)
    {
        const char *n = json_string_value(json_object_get(svc, "name"));
        if (n && strcmp(n, name) == 0) {
            found = json_incref(svc);
            break;
        }
    }
    json_decref(doc);
    return found;
}

static void reply_unknown_service(api_response_t *res, const char *name)
{
    api_response_error(res, 404,
                       "no service named \"%s\" on this machine; GET /services lists them", name);
}

static void iso_time_now(char *out, size_t size)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, size, "%s.%03uZ", base, (unsigned)(tv.tv_usec / 1000) % 1000u);
}

/* ---- handlers --------------------------------------------------------------- */

static void do_health(kiln_machine_api_t *api, api_response_t *res)
{
    bool healthy = true;
    json_t *details = api->hooks.health ? api->hooks.health(api->hooks_ctx, &healthy) : NULL;
    json_t *body = json_object();
    if (json_is_object(details))
        json_object_update(body, details);
    json_decref(details);
    json_object_set_new(body, "status", json_string(healthy ? "pass" : "fail"));
    json_object_set_new(body, "serviceId", json_string(api->machine_id));
    json_object_set_new(body, "description", json_string("kiln machine agent"));
    api_response_json(res, healthy ? 200 : 503, body, HEALTH_JSON);
}

static void do_ready(kiln_machine_api_t *api, api_response_t *res)
{
    bool ready = api->hooks.ready ? api->hooks.ready(api->hooks_ctx) : true;
    api_response_json(res, ready ? 200 : 503, json_pack("{s:b}", "ready", ready), NULL);
}

static void do_status(kiln_machine_api_t *api, api_response_t *res, bool services_only)
{
    json_t *doc = status_doc(api);
    if (!doc) {
        api_response_error(res, 503, "the machine agent has no status yet; retry later");
        return;
    }
    if (services_only) {
        json_t *services = json_object_get(doc, "services");
        json_t *body =
            json_pack("{s:O}", "services", json_is_array(services) ? services : json_array());
        json_decref(doc);
        doc = body;
    }
    api_response_json(res, 200, doc, NULL);
}

static void do_service(kiln_machine_api_t *api, api_call_t *call)
{
    json_t *svc = service_doc(api, call->name);
    if (!svc) {
        reply_unknown_service(&call->res, call->name);
        return;
    }
    api_response_json(&call->res, 200, svc, NULL);
}

/* A service passes when it runs and is ready, or is a one-shot step that
 * finished well; anything else (starting, backoff, failed, stopped) fails. */
static void do_service_health(kiln_machine_api_t *api, api_call_t *call)
{
    json_t *svc = service_doc(api, call->name);
    if (!svc) {
        reply_unknown_service(&call->res, call->name);
        return;
    }
    const char *state = json_string_value(json_object_get(svc, "state"));
    json_t *ready = json_object_get(svc, "ready");
    bool pass = state && ((strcmp(state, "running") == 0 && !json_is_false(ready)) ||
                          strcmp(state, "exited") == 0);
    json_t *body = json_pack("{s:s, s:s, s:s, s:O}", "status", pass ? "pass" : "fail", "serviceId",
                             call->name, "state", state ? state : "unknown", "service", svc);
    if (body && !pass)
        json_object_set_new(
            body, "output",
            json_sprintf("service %s is %s", call->name, state ? state : "unknown"));
    json_decref(svc);
    api_response_json(&call->res, pass ? 200 : 503, body, HEALTH_JSON);
}

static void do_action(kiln_machine_api_t *api, api_call_t *call)
{
    kiln_err_t err = {0};
    int rc;
    json_t *ok;
    switch (call->kind) {
    case API_CALL_SERVICE_ACTION:
        if (!api->hooks.service_action) {
            reply_not_implemented(&call->res, "service control");
            return;
        }
        rc = api->hooks.service_action(api->hooks_ctx, call->name, call->action, &err);
        if (rc == KILN_ENOTFOUND && !err.msg[0]) {
            reply_unknown_service(&call->res, call->name);
            return;
        }
        ok = json_pack("{s:b, s:s, s:s}", "ok", 1, "service", call->name, "action", call->action);
        break;
    case API_CALL_RELOAD:
        if (!api->hooks.reload) {
            reply_not_implemented(&call->res, "reload");
            return;
        }
        rc = api->hooks.reload(api->hooks_ctx, &err);
        ok = json_pack("{s:b, s:s}", "ok", 1, "action", "reload");
        break;
    case API_CALL_RESTART_MACHINE:
        if (!api->hooks.restart_machine) {
            reply_not_implemented(&call->res, "restarting the machine");
            return;
        }
        rc = api->hooks.restart_machine(api->hooks_ctx, &err);
        ok = json_pack("{s:b, s:s}", "ok", 1, "action", "restart-machine");
        break;
    default:
        if (!api->hooks.refresh_status) {
            reply_not_implemented(&call->res, "refresh-status");
            return;
        }
        rc = api->hooks.refresh_status(api->hooks_ctx, &err);
        ok = json_pack("{s:b, s:s}", "ok", 1, "action", "refresh-status");
        break;
    }
    reply_from_code(&call->res, rc, &err, ok);
}

#define API_LOGS_REPLY_MAX_BYTES (4u * 1024 * 1024)

static void do_logs(kiln_machine_api_t *api, api_call_t *call)
{
    if (!api->hooks.logs) {
        reply_not_implemented(&call->res, "logs");
        return;
    }
    json_t *lines = api->hooks.logs(api->hooks_ctx, call->name, call->lines);
    if (!lines) {
        reply_unknown_service(&call->res, call->name);
        return;
    }
    if (!json_is_array(lines)) {
        json_decref(lines);
        lines = json_array();
    }
    /* Bounded by bytes too, newest kept: a ring of long lines could make
     * a reply of a hundred megabytes. */
    size_t bytes = 0, keep_from = 0;
    for (size_t i = json_array_size(lines); i > 0 && keep_from == 0; i--) {
        const char *line = json_string_value(json_object_get(json_array_get(lines, i - 1), "line"));
        bytes += (line ? strlen(line) : 0) + 64;
        if (bytes > API_LOGS_REPLY_MAX_BYTES)
            keep_from = i;
    }
    if (keep_from > 0) {
        json_t *kept = json_array();
        for (size_t i = keep_from; i < json_array_size(lines); i++)
            json_array_append(kept, json_array_get(lines, i));
        json_decref(lines);
        lines = kept;
    }
    api_response_json(&call->res, 200,
                      json_pack("{s:s, s:o}", "service", call->name, "lines", lines), NULL);
}

static void do_metrics(kiln_machine_api_t *api, api_response_t *res)
{
    json_t *doc = status_doc(api);
    if (!doc) {
        /* Without the agent's status the machine's own figures still count. */
        doc = json_object();
        if (doc)
            kiln_sysinfo_fill_json(doc, api->disk_path);
    }
    char *text = NULL;
    size_t len = 0;
    kiln_err_t err = {0};
    int rc = doc ? kiln_metrics_render(doc, 0, &text, &len, &err) : KILN_ENOMEM;
    json_decref(doc);
    if (rc) {
        api_response_error(res, 500, "%s", err.msg[0] ? err.msg : "out of memory");
        return;
    }
    api_response_clear(res);
    res->status = 200;
    res->content_type = KILN_METRICS_CONTENT_TYPE;
    res->body = text;
    res->len = len;
}

/* {"total","used","free"} in MiB, the unit of the earlier /api/health. */
static json_t *mib_triplet(const json_t *section, const char *free_key)
{
    double total = json_number_value(json_object_get(section, "total_bytes"));
    double used = json_number_value(json_object_get(section, "used_bytes"));
    double free_bytes = json_number_value(json_object_get(section, free_key));
    return json_pack("{s:I, s:I, s:I}", "total", (json_int_t)(total / MIB), "used",
                     (json_int_t)(used / MIB), "free", (json_int_t)(free_bytes / MIB));
}

static json_t *gpu_entry(const json_t *gpu)
{
    json_int_t total = json_integer_value(json_object_get(gpu, "memory_total_mb"));
    json_int_t used = json_integer_value(json_object_get(gpu, "memory_used_mb"));
    const char *name = json_string_value(json_object_get(gpu, "name"));
    return json_pack("{s:s, s:I, s:{s:I, s:I, s:I}}", "name", name ? name : "", "index",
                     json_integer_value(json_object_get(gpu, "index")), "vram", "total", total,
                     "used", used, "free", total > used ? total - used : 0);
}

/* The health document of the earlier render farm (source document 000):
 * status online|busy|offline, machineId, timestamp, queue {pending,
 * processing}, system {gpu, gpus, memory, disk} with sizes in MiB. */
static void do_api_health(kiln_machine_api_t *api, api_response_t *res)
{
    long pending = 0, processing = 0;
    if (api->hooks.queue_counts &&
        api->hooks.queue_counts(api->hooks_ctx, &pending, &processing) != 0)
        pending = processing = 0;
    bool ready = api->hooks.ready ? api->hooks.ready(api->hooks_ctx) : true;
    json_t *doc = status_doc(api);
    if (!doc) {
        doc = json_object();
        if (doc)
            kiln_sysinfo_fill_json(doc, api->disk_path);
    }
    json_t *gpus = json_array(), *gpu;
    size_t i;
    json_array_foreach(json_object_get(doc, "gpus"), i, gpu)
    {
        json_array_append_new(gpus, gpu_entry(gpu));
    }
    json_t *first_gpu = json_array_size(gpus) ? json_incref(json_array_get(gpus, 0)) : json_null();
    char now[40];
    iso_time_now(now, sizeof now);
    const char *status = !ready ? "offline" : processing > 0 ? "busy" : "online";
    json_t *body = json_pack("{s:s, s:s, s:s, s:{s:I, s:I}, s:{s:o, s:o, s:o, s:o}}", "status",
                             status, "machineId", api->machine_id, "timestamp", now, "queue",
                             "pending", (json_int_t)pending, "processing", (json_int_t)processing,
                             "system", "gpu", first_gpu, "gpus", gpus, "memory",
                             mib_triplet(json_object_get(doc, "memory"), "available_bytes"), "disk",
                             mib_triplet(json_object_get(doc, "disk"), "free_bytes"));
    json_decref(doc);
    api_response_json(res, 200, body, NULL);
}

void api_calls_execute(kiln_machine_api_t *api, api_call_t *call)
{
    api_response_t *res = &call->res;
    switch (call->kind) {
    case API_CALL_HEALTH:
        do_health(api, res);
        break;
    case API_CALL_READY:
        do_ready(api, res);
        break;
    case API_CALL_STATUS:
        do_status(api, res, false);
        break;
    case API_CALL_SERVICES:
        do_status(api, res, true);
        break;
    case API_CALL_SERVICE:
        do_service(api, call);
        break;
    case API_CALL_SERVICE_HEALTH:
        do_service_health(api, call);
        break;
    case API_CALL_SERVICE_ACTION:
    case API_CALL_RELOAD:
    case API_CALL_RESTART_MACHINE:
    case API_CALL_REFRESH_STATUS:
        do_action(api, call);
        break;
    case API_CALL_LOGS:
        do_logs(api, call);
        break;
    case API_CALL_METRICS:
        do_metrics(api, res);
        break;
    case API_CALL_API_HEALTH:
        do_api_health(api, res);
        break;
    case API_CALL_FOLLOW_START:
        api_follow_start(api, call);
        break;
    case API_CALL_FOLLOW_STOP:
        api_follow_release(api, call->follow);
        break;
    }
}

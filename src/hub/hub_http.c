/*
 * The hub's HTTP side: the route table, bearer-token auth with roles, CORS,
 * bounded request bodies, and JSON replies with {"error":{code,message,field}}.
 */
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "broker/ops.h"
#include "hub/hub_internal.h"

#define REALM "Bearer realm=\"kiln-hub\""
/* A reply up to this size (status line, headers and body) is one write. */
#define HUB_REPLY_ONE_WRITE_MAX 4096

/* Every HTTP route. A new endpoint is one line here (and its entry in
 * docs/openapi.json, which a test checks). WebSocket routes are registered
 * with civetweb in hub_stream.c and hub_compat.c. */
const hub_route_t hub_routes[] = {
    {"POST", "/v1/jobs", KILN_HUB_ROLE_SUBMIT, hub_jobs_submit},
    {"GET", "/v1/jobs", KILN_HUB_ROLE_READ, hub_jobs_list},
    {"GET", "/v1/jobs/{id}", KILN_HUB_ROLE_READ, hub_jobs_get},
    {"GET", "/v1/jobs/{id}/waiting", KILN_HUB_ROLE_READ, hub_jobs_waiting},
    {"DELETE", "/v1/jobs/{id}", KILN_HUB_ROLE_SUBMIT, hub_jobs_cancel},
    {"POST", "/v1/jobs/{id}/retry", KILN_HUB_ROLE_SUBMIT, hub_jobs_retry},
    {"GET", "/v1/jobs/{id}/events", KILN_HUB_ROLE_READ, hub_stream_job_events},
    {"GET", "/v1/events", KILN_HUB_ROLE_READ, hub_stream_events_sse},
    {"GET", "/v1/queues", KILN_HUB_ROLE_READ, hub_jobs_queues},
    {"GET", "/v1/workers", KILN_HUB_ROLE_READ, hub_jobs_workers},
    {"GET", "/metrics", KILN_HUB_ROLE_READ, hub_metrics_serve},
    {"GET", "/health", KILN_HUB_ROLE_READ, hub_jobs_health},
    {"GET", "/openapi.json", KILN_HUB_ROLE_READ, hub_jobs_openapi},
    {"POST", "/api/jobs", KILN_HUB_ROLE_SUBMIT, hub_compat_submit},
    {"GET", "/api/jobs/{id}", KILN_HUB_ROLE_READ, hub_compat_get},
    {"GET", "/v1/machines", KILN_HUB_ROLE_READ, hub_fleet_list},
    {"GET", "/v1/machines/{id}", KILN_HUB_ROLE_READ, hub_fleet_get},
    {"POST", "/v1/machines/{id}/wake", KILN_HUB_ROLE_ADMIN, hub_fleet_wake},
    {"POST", "/v1/machines/{id}/services/{name}/restart", KILN_HUB_ROLE_ADMIN, hub_fleet_restart},
    {"GET", "/v1/me", KILN_HUB_ROLE_READ, hub_web_me},
    {"GET", "/", KILN_HUB_ROLE_READ, hub_web_serve},
    {"GET", "/ui/{file}", KILN_HUB_ROLE_READ, hub_web_serve},
};
const size_t hub_n_routes = sizeof hub_routes / sizeof hub_routes[0];

/* Routes open without a token even when the hub has tokens. */
static bool open_route(const hub_route_t *route)
{
    return route->handler == hub_jobs_health || route->handler == hub_jobs_openapi ||
           route->handler == hub_web_serve;
}

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
    case 413:
        return "payload_too_large";
    case 422:
        return "invalid_field";
    case 429:
        return "rate_limited";
    case 503:
        return "unavailable";
    default:
        return status >= 500 ? "internal" : "error";
    }
}

static void count_status(kiln_hub_t *hub, int status)
{
    int cls = status / 100;
    atomic_fetch_add(&hub->requests[cls >= 1 && cls <= 5 ? cls : 0], 1);
}

/* The allowed origin to echo for req ("*" or the request's Origin), or
 * NULL when the request has no Origin or it is not in hub.cors_origins. */
static const char *cors_origin(hub_req_t *req)
{
    const char *origin = mg_get_header(req->conn, "Origin");
    if (!origin)
        return NULL;
    for (size_t i = 0; i < req->hub->n_origins; i++) {
        const char *allowed = req->hub->origins[i];
        if (strcmp(allowed, "*") == 0)
            return "*";
        if (strcmp(allowed, origin) == 0)
            return origin;
    }
    return NULL;
}

void hub_http_cors_headers(hub_req_t *req)
{
    const char *origin = cors_origin(req);
    if (!origin)
        return;
    mg_response_header_add(req->conn, "Access-Control-Allow-Origin", origin, -1);
    mg_response_header_add(req->conn, "Vary", "Origin", -1);
    mg_response_header_add(req->conn, "Access-Control-Expose-Headers", "Location", -1);
}

/* Whether the connection stays open after this reply: as civetweb decides
 * it (HTTP/1.1 or "Connection: keep-alive"), unless the handler asked to
 * close. */
static bool keep_alive(hub_req_t *req)
{
    if (req->close)
        return false;
    const char *connection = mg_get_header(req->conn, "Connection");
    if (connection)
        return strcasestr(connection, "keep-alive") != NULL;
    return req->ri->http_version && strcmp(req->ri->http_version, "1.1") == 0;
}

/* Formats the status line and headers of a reply into head (size bytes);
 * returns their length, or 0 when they do not fit. */
static size_t reply_head(hub_req_t *req, int status, const char *content_type, size_t len,
                         char *head, size_t size)
{
    /* Formatted once a second per thread. */
    static _Thread_local char date[64];
    static _Thread_local time_t date_at;
    time_t now = time(NULL);
    if (now != date_at) {
        struct tm tm;
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&now, &tm));
        date_at = now;
    }
    const char *origin = cors_origin(req);
    int n =
        snprintf(head, size,
                 "HTTP/%s %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Cache-Control: no-store\r\n%s%s%s%s%sDate: %s\r\nConnection: %s\r\n\r\n",
                 req->ri->http_version ? req->ri->http_version : "1.1", status,
                 mg_get_response_code_text(req->conn, status), content_type, len,
                 status == 401 ? "WWW-Authenticate: " REALM "\r\n" : "",
                 status == 429 ? "Retry-After: 1\r\n" : "",
                 origin ? "Access-Control-Allow-Origin: " : "", origin ? origin : "",
                 origin ? "\r\nVary: Origin\r\nAccess-Control-Expose-Headers: Location\r\n" : "",
                 date, keep_alive(req) ? "keep-alive" : "close");
    return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

/* Replies are written with as few writes as possible: with TCP_NODELAY
 * each write is a packet, and civetweb's header API writes one per header
 * line (eight for a submit's reply), which cost more CPU than the submit
 * itself. A small reply goes out in one write, a large one in two. */
int hub_reply_text(hub_req_t *req, int status, const char *content_type, const char *body,
                   size_t len)
{
    char buf[HUB_REPLY_ONE_WRITE_MAX];
    size_t head = reply_head(req, status, content_type, len, buf, sizeof buf);
    if (head == 0) {
        static const char too_long[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: "
                                       "0\r\nConnection: close\r\n\r\n";
        mg_write(req->conn, too_long, sizeof too_long - 1);
        count_status(req->hub, 500);
        return 500;
    }
    if (strcmp(req->ri->request_method, "HEAD") == 0)
        len = 0;
    if (len <= sizeof buf - head) {
        memcpy(buf + head, body, len);
        mg_write(req->conn, buf, head + len);
    } else {
        mg_write(req->conn, buf, head);
        mg_write(req->conn, body, len);
    }
    count_status(req->hub, status);
    return status;
}

int hub_reply_json(hub_req_t *req, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(body);
    if (!text) {
        static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of "
                                  "memory\",\"field\":null}}";
        return hub_reply_text(req, 500, "application/json", oom, sizeof oom - 1);
    }
    int rc = hub_reply_text(req, status, "application/json", text, strlen(text));
    free(text);
    return rc;
}

int hub_reply_error(hub_req_t *req, int status, const char *field, const char *fmt, ...)
{
    char message[KILN_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    /* Messages may quote what a client sent: keep them printable ASCII,
     * which JSON can always carry. */
    for (unsigned char *c = (unsigned char *)message; *c; c++) {
        if (*c < 0x20 || *c >= 0x7f)
            *c = '?';
    }
    json_t *err = json_pack("{s:s, s:s}", "code", error_code(status), "message", message);
    json_object_set_new(err, "field", field ? json_string(field) : json_null());
    return hub_reply_json(req, status, json_pack("{s:o}", "error", err));
}

/* The field a broker message names: "requirements.gpu_memory_gb: expected
 * ..." gives "requirements.gpu_memory_gb". */
static void field_of(const char *msg, char *field, size_t size)
{
    size_t n = strcspn(msg, ": ");
    field[0] = '\0';
    if (msg[n] == ':' && n > 0 && n < size &&
        strspn(msg, "abcdefghijklmnopqrstuvwxyz0123456789_.[]") >= n)
        snprintf(field, size, "%.*s", (int)n, msg);
}

int hub_reply_kiln_error(hub_req_t *req, const kiln_err_t *err)
{
    char field[128];
    const char *msg = err->msg[0] ? err->msg : kiln_strerror(err->code);
    switch (err->code) {
    case KILN_ENOTFOUND:
        return hub_reply_error(req, 404, NULL, "%s", msg);
    case KILN_ECONFLICT:
        return hub_reply_error(req, 409, NULL, "%s", msg);
    case KILN_ETOOBIG:
        field_of(msg, field, sizeof field);
        return hub_reply_error(req, 413, field[0] ? field : NULL, "%s", msg);
    case KILN_EINVAL:
        field_of(msg, field, sizeof field);
        return hub_reply_error(req, 422, field[0] ? field : NULL, "%s", msg);
    case KILN_ECANCELLED:
        return hub_reply_error(req, 503, NULL, "%s", msg);
    case KILN_EREDIS:
    case KILN_ETIMEOUT:
        atomic_fetch_add(&req->hub->redis_errors, 1);
        hub_broker_reset();
        return hub_reply_error(req, 503, NULL, "%s", msg);
    default:
        return hub_reply_error(req, 500, NULL, "%s", msg);
    }
}

/* ---- auth --------------------------------------------------------------------- */

static const hub_token_t *find_token(kiln_hub_t *hub, const char *token, size_t len)
{
    unsigned char digest[HUB_TOKEN_DIGEST];
    SHA256((const unsigned char *)token, len, digest);
    const hub_token_t *found = NULL;
    /* Every configured token is compared, so the time taken says nothing
     * about which one matched. */
    for (size_t i = 0; i < hub->n_tokens; i++) {
        if (CRYPTO_memcmp(digest, hub->tokens[i].digest, HUB_TOKEN_DIGEST) == 0)
            found = &hub->tokens[i];
    }
    return found;
}

static const char *const role_words[] = {"admin", "submit", "read"};

/* Takes one request from the token's bucket (refilled at
 * hub.rate_limit_per_s, holding at most one second's worth); false when
 * it is empty. */
static bool rate_allows(kiln_hub_t *hub, const hub_token_t *token)
{
    if (hub->rate_limit_per_s <= 0)
        return true;
    size_t i = (size_t)(token - hub->tokens);
    int64_t now = kiln_ops_monotonic_ms();
    pthread_mutex_lock(&hub->rate_mu);
    double rate = hub->rate_limit_per_s;
    double bucket = hub->rate_buckets[i];
    if (hub->rate_refill_ms[i] > 0)
        bucket += (double)(now - hub->rate_refill_ms[i]) * rate / 1000.0;
    if (bucket > rate)
        bucket = rate;
    hub->rate_refill_ms[i] = now;
    bool ok = bucket >= 1.0;
    hub->rate_buckets[i] = ok ? bucket - 1.0 : bucket;
    pthread_mutex_unlock(&hub->rate_mu);
    return ok;
}

/* The token text of the request: from "Authorization: Bearer", else
 * ?access_token= (browsers cannot set headers on a WebSocket or an
 * EventSource). false when there is none. */
static bool token_text(hub_req_t *req, char *buf, size_t size, const char **token, size_t *len)
{
    const char *header = mg_get_header(req->conn, "Authorization");
    if (header && strncasecmp(header, "Bearer ", 7) == 0) {
        *token = header + 7;
        while (**token == ' ')
            (*token)++;
        *len = strcspn(*token, " \t");
        return true;
    }
    if (!header && hub_query(req, "access_token", buf, size) == 1) {
        *token = buf;
        *len = strlen(buf);
        return true;
    }
    return false;
}

void hub_http_identify(hub_req_t *req)
{
    char buf[300];
    const char *token;
    size_t len;
    req->token = NULL;
    if (token_text(req, buf, sizeof buf, &token, &len) && len > 0)
        req->token = find_token(req->hub, token, len);
}

int hub_http_authorize(hub_req_t *req, kiln_hub_role_t need)
{
    req->token = NULL;
    if (req->hub->n_tokens == 0)
        return 0;
    char buf[300];
    const char *token;
    size_t len;
    if (!token_text(req, buf, sizeof buf, &token, &len))
        return hub_reply_error(req, 401, NULL,
                               "this endpoint needs a token: send \"Authorization: Bearer "
                               "<token>\" with a token from hub.tokens");
    req->token = len > 0 ? find_token(req->hub, token, len) : NULL;
    if (!req->token)
        return hub_reply_error(req, 401, NULL,
                               "the bearer token is not one of hub.tokens; check the token "
                               "(it is not shown here)");
    if (req->token->role > need)
        return hub_reply_error(req, 403, NULL,
                               "token \"%s\" has the %s role; %s %s needs the %s role or admin",
                               req->token->name, role_words[req->token->role],
                               req->ri->request_method, req->ri->local_uri, role_words[need]);
    if (!rate_allows(req->hub, req->token))
        return hub_reply_error(req, 429, NULL,
                               "token \"%s\" is over hub.rate_limit_per_s (%d requests per "
                               "second); retry after a second",
                               req->token->name, req->hub->rate_limit_per_s);
    return 0;
}

/* ---- bodies and queries ---------------------------------------------------------- */

int hub_query(hub_req_t *req, const char *key, char *out, size_t size)
{
    out[0] = '\0';
    const char *query = req->ri->query_string;
    if (!query)
        return 0;
    int n = mg_get_var(query, strlen(query), key, out, size);
    if (n == -1)
        return 0;
    return n < 0 || (size_t)n != strlen(out) ? -1 : 1;
}

static int too_big(hub_req_t *req)
{
    req->close = true;
    return hub_reply_error(req, 413, NULL,
                           "request body over %ld bytes (hub.max_body_bytes); send a smaller "
                           "body or raise the limit",
                           req->hub->max_body_bytes);
}

int hub_read_body(hub_req_t *req, char **body, size_t *len)
{
    *body = NULL;
    *len = 0;
    long max = req->hub->max_body_bytes;
    if (req->ri->content_length > max)
        return too_big(req);
    size_t cap = req->ri->content_length > 0 ? (size_t)req->ri->content_length + 1 : 4096;
    char *buf = malloc(cap);
    if (!buf)
        return hub_reply_error(req, 500, NULL, "out of memory");
    size_t used = 0;
    for (;;) {
        if (used + 1 >= cap) {
            size_t grown_cap = cap * 2 > (size_t)max + 2 ? (size_t)max + 2 : cap * 2;
            char *grown = grown_cap > cap ? realloc(buf, grown_cap) : NULL;
            if (!grown) {
                free(buf);
                return too_big(req);
            }
            buf = grown;
            cap = grown_cap;
        }
        int n = mg_read(req->conn, buf + used, cap - used - 1);
        if (n <= 0)
            break;
        used += (size_t)n;
        if (used > (size_t)max) {
            free(buf);
            return too_big(req);
        }
    }
    buf[used] = '\0';
    *body = buf;
    *len = used;
    return 0;
}

int hub_read_json(hub_req_t *req, json_t **obj)
{
    *obj = NULL;
    char *body;
    size_t len;
    int rc = hub_read_body(req, &body, &len);
    if (rc)
        return rc;
    json_error_t jerr;
    json_t *v = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    free(body);
    if (!v)
        return hub_reply_error(req, 400, NULL, "body: malformed JSON at line %d column %d: %s",
                               jerr.line, jerr.column, jerr.text);
    if (!json_is_object(v)) {
        json_decref(v);
        return hub_reply_error(req, 422, "body", "body: expected a JSON object");
    }
    *obj = v;
    return 0;
}

bool hub_job_id_ok(const char *text)
{
    size_t n = strlen(text), dot = strcspn(text, ".");
    if (n == 0 || n >= KILN_JOB_ID_MAX || dot == 0 || dot >= n - 1 || dot > KILN_SERVICE_NAME_MAX)
        return false;
    if (strspn(text, "abcdefghijklmnopqrstuvwxyz0123456789_-") != dot)
        return false;
    return strspn(text + dot + 1, "0123456789") == n - dot - 1;
}

/* ---- routing ---------------------------------------------------------------------- */

/* Whether path fits pattern; the {param} segment is copied into param. */
static bool match(const char *pattern, const char *path, char *param, size_t size)
{
    const char *brace = strchr(pattern, '{');
    if (!brace)
        return strcmp(pattern, path) == 0;
    size_t prefix = (size_t)(brace - pattern);
    if (strncmp(pattern, path, prefix) != 0)
        return false;
    const char *suffix = strchr(brace, '}') + 1;
    const char *value = path + prefix;
    size_t value_len = strcspn(value, "/");
    if (value_len == 0)
        return false;
    /* A second {param} is matched here and left for the handler to read. */
    char rest[KILN_JOB_ID_MAX + 32];
    if (strchr(suffix, '{') ? !match(suffix, value + value_len, rest, sizeof rest)
                            : strcmp(value + value_len, suffix) != 0)
        return false;
    snprintf(param, size, "%.*s", (int)(value_len < size ? value_len : size - 1), value);
    return value_len < size;
}

static int preflight(hub_req_t *req)
{
    mg_response_header_start(req->conn, 204);
    hub_http_cors_headers(req);
    mg_response_header_add(req->conn, "Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS",
                           -1);
    mg_response_header_add(req->conn, "Access-Control-Allow-Headers",
                           "Authorization, Content-Type, Last-Event-ID", -1);
    mg_response_header_add(req->conn, "Access-Control-Max-Age", "600", -1);
    mg_response_header_add(req->conn, "Content-Length", "0", -1);
    mg_response_header_send(req->conn);
    count_status(req->hub, 204);
    return 204;
}

static bool websocket_upgrade(struct mg_connection *conn)
{
    const char *upgrade = mg_get_header(conn, "Upgrade");
    return upgrade && strcasecmp(upgrade, "websocket") == 0;
}

int hub_http_handle(struct mg_connection *conn)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    hub_req_t req = {.hub = ri->user_data, .conn = conn, .ri = ri};
    const char *path = ri->local_uri ? ri->local_uri : "";
    if (websocket_upgrade(conn) &&
        (strcmp(path, "/v1/events/ws") == 0 || strncmp(path, "/ws/client/", 11) == 0)) {
        /* Authorised here, where a refusal can still be a plain reply;
         * civetweb's WebSocket handler takes it from there. */
        return hub_http_authorize(&req, strncmp(path, "/ws/", 4) == 0 ? KILN_HUB_ROLE_SUBMIT
                                                                      : KILN_HUB_ROLE_READ);
    }
    if (strcmp(ri->request_method, "OPTIONS") == 0)
        return preflight(&req);
    bool path_known = false;
    for (size_t i = 0; i < hub_n_routes; i++) {
        const hub_route_t *route = &hub_routes[i];
        if (!match(route->pattern, path, req.param_buf, sizeof req.param_buf))
            continue;
        path_known = true;
        bool head_as_get =
            strcmp(ri->request_method, "HEAD") == 0 && strcmp(route->method, "GET") == 0;
        if (strcmp(route->method, ri->request_method) != 0 && !head_as_get)
            continue;
        req.param = strchr(route->pattern, '{') ? req.param_buf : NULL;
        if (!open_route(route)) {
            int rc = hub_http_authorize(&req, route->role);
            if (rc)
                return rc;
        }
        if (req.param && strstr(route->pattern, "/jobs/{id}") && !hub_job_id_ok(req.param))
            return hub_reply_error(&req, 404, "id",
                                   "no job \"%.64s\": job ids look like <service>.<number>",
                                   req.param);
        return route->handler(&req);
    }
    if (path_known)
        return hub_reply_error(&req, 405, NULL, "%s is not allowed on %.128s; see /openapi.json",
                               ri->request_method, path);
    return hub_reply_error(&req, 404, NULL, "no endpoint %.128s; see /openapi.json", path);
}

/*
 * The machine API's civetweb side: every request is routed, validated
 * (method, service name, query, body size) and authorised here on the
 * request thread, before anything reaches the loop, so a bad request never
 * costs the agent's loop a wake-up and no hook ever sees an unchecked name.
 */
#include "agent/api_internal.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define QUERY_VALUE_MAX 256 /* a query parameter longer than this is refused */
#define REALM           "Bearer realm=\"kiln-machine\""

typedef struct route {
    api_call_kind_t kind;
    bool post;  /* POST (a control endpoint, needs the token); else GET */
    bool named; /* /services/{name}... */
    const char *action;
} route_t;

static const struct {
    const char *path;
    route_t route;
} exact_routes[] = {
    {"/health", {API_CALL_HEALTH, false, false, NULL}},
    {"/ready", {API_CALL_READY, false, false, NULL}},
    {"/status", {API_CALL_STATUS, false, false, NULL}},
    {"/services", {API_CALL_SERVICES, false, false, NULL}},
    {"/logs", {API_CALL_LOGS, false, false, NULL}},
    {"/metrics", {API_CALL_METRICS, false, false, NULL}},
    {"/api/health", {API_CALL_API_HEALTH, false, false, NULL}},
    {"/restart/machine", {API_CALL_RESTART_MACHINE, true, false, NULL}},
    {"/refresh-status", {API_CALL_REFRESH_STATUS, true, false, NULL}},
    {"/reload", {API_CALL_RELOAD, true, false, NULL}},
};

static const struct {
    const char *suffix;
    route_t route;
} service_routes[] = {
    {"/health", {API_CALL_SERVICE_HEALTH, false, true, NULL}},
    {"/restart", {API_CALL_SERVICE_ACTION, true, true, "restart"}},
    {"/stop", {API_CALL_SERVICE_ACTION, true, true, "stop"}},
    {"/start", {API_CALL_SERVICE_ACTION, true, true, "start"}},
};

static const char name_rule[] =
    "a service name is 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit";

/* Finds the route of path (URL-decoded, without the query). Returns 0 with
 * *route and name (for /services/{name}...) set, or 404. A name that breaks
 * the rule is returned as is: the caller refuses it with 400. */
static int match_route(const char *path, route_t *route, char *name, size_t name_size)
{
    size_t len = strlen(path);
    if (len > 1 && path[len - 1] == '/')
        len--; /* "/status/" is "/status" */
    for (size_t i = 0; i < sizeof exact_routes / sizeof exact_routes[0]; i++) {
        if (strlen(exact_routes[i].path) == len && strncmp(path, exact_routes[i].path, len) == 0) {
            *route = exact_routes[i].route;
            name[0] = '\0';
            return 0;
        }
    }
    static const char prefix[] = "/services/";
    if (len <= sizeof prefix - 1 || strncmp(path, prefix, sizeof prefix - 1) != 0)
        return 404;
    const char *rest = path + sizeof prefix - 1;
    size_t rest_len = len - (sizeof prefix - 1);
    *route = (route_t){API_CALL_SERVICE, false, true, NULL};
    for (size_t i = 0; i < sizeof service_routes / sizeof service_routes[0]; i++) {
        size_t n = strlen(service_routes[i].suffix);
        if (rest_len > n && strncmp(rest + rest_len - n, service_routes[i].suffix, n) == 0) {
            *route = service_routes[i].route;
            rest_len -= n;
            break;
        }
    }
    if (rest_len >= name_size)
        rest_len = name_size - 1; /* too long to be valid anyway */
    memcpy(name, rest, rest_len);
    name[rest_len] = '\0';
    return 0;
}

/* Text of a client-supplied value fit to quote in an error: at most 64
 * bytes, control characters as '?'. JSON encoding does the rest. */
static void quote_safe(const char *text, char *out, size_t size)
{
    size_t n = 0;
    for (; n < 64 && n + 1 < size && text[n]; n++)
        out[n] = (unsigned char)text[n] < 0x20 || text[n] == 0x7f ? '?' : text[n];
    out[n] = '\0';
    if (n + 4 < size && text[n])
        memcpy(out + n, "...", 4);
}

static void reply_bad_name(api_response_t *res, const char *what, const char *name)
{
    char shown[80];
    quote_safe(name, shown, sizeof shown);
    api_response_error(res, 400, "%s \"%s\": %s", what, shown, name_rule);
}

/* ---- auth ------------------------------------------------------------------- */

/* 0 when the request carries the machine's bearer token; else fills res
 * (401 or 403) and returns its status. */
static int check_token(kiln_machine_api_t *api, struct mg_connection *conn, api_response_t *res)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (!api->has_token) {
        api_response_error(res, 403,
                           "%s %s is disabled on this machine: set machine.api_token "
                           "(KILN_MACHINE_API_TOKEN) in the agent's configuration to enable the "
                           "control endpoints",
                           ri->request_method, ri->local_uri ? ri->local_uri : "");
        return 403;
    }
    const char *header = mg_get_header(conn, "Authorization");
    while (header && (*header == ' ' || *header == '\t'))
        header++;
    if (!header || strncasecmp(header, "Bearer", 6) != 0 ||
        (header[6] != ' ' && header[6] != '\t')) {
        api_response_error(res, 401,
                           "this endpoint needs the machine's token: send \"Authorization: Bearer "
                           "<token>\" (kiln CLI: KILN_MACHINE_API_TOKEN or --token)");
        res->www_authenticate = REALM;
        return 401;
    }
    const char *token = header + 7;
    while (*token == ' ' || *token == '\t')
        token++;
    size_t len = strlen(token);
    while (len > 0 && (token[len - 1] == ' ' || token[len - 1] == '\t'))
        len--;
    unsigned char digest[API_DIGEST_SIZE];
    SHA256((const unsigned char *)token, len, digest);
    if (len == 0 || CRYPTO_memcmp(digest, api->token_digest, sizeof digest) != 0) {
        api_response_error(res, 401,
                           "the bearer token is not this machine's token; check "
                           "KILN_MACHINE_API_TOKEN against the agent's machine.api_token");
        res->www_authenticate = REALM ", error=\"invalid_token\"";
        return 401;
    }
    return 0;
}

/* ---- body ------------------------------------------------------------------- */

/* Reads and discards a request body of at most KILN_MACHINE_API_BODY_MAX
 * bytes; past that fills res with 413 and returns 413 (without reading
 * more; the connection is closed after the reply). */
static int drain_body(struct mg_connection *conn, api_response_t *res)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *te = mg_get_header(conn, "Transfer-Encoding");
    bool chunked = te && strcasecmp(te, "chunked") == 0;
    if (ri->content_length <= 0 && !chunked)
        return 0;
    if (ri->content_length > KILN_MACHINE_API_BODY_MAX)
        goto too_big;
    char scratch[4096];
    long long total = 0;
    int n;
    while ((n = mg_read(conn, scratch, sizeof scratch)) > 0) {
        total += n;
        if (total > KILN_MACHINE_API_BODY_MAX)
            goto too_big;
    }
    return 0;

too_big:
    api_response_error(res, 413,
                       "request bodies are limited to %d bytes; the machine API's endpoints take "
                       "no body",
                       KILN_MACHINE_API_BODY_MAX);
    res->close = true;
    return 413;
}

/* ---- /logs query ------------------------------------------------------------ */

typedef struct logs_query {
    char service[API_NAME_MAX + 1];
    size_t lines;
    bool follow;
    bool ndjson;
} logs_query_t;

/* Fetches query parameter key into out (URL-decoded). Returns 1 found, 0
 * absent, -1 too long, -2 holding a NUL byte. */
static int query_get(const char *query, const char *key, char *out, size_t size)
{
    out[0] = '\0';
    if (!query)
        return 0;
    int n = mg_get_var(query, strlen(query), key, out, size);
    if (n == -1)
        return 0;
    if (n >= 0 && (size_t)n != strlen(out))
        return -2; /* "%00" decoded into the middle of the value */
    return n < 0 ? -1 : 1;
}

static bool flag_value(const char *text, bool *out)
{
    if (strcmp(text, "1") == 0 || strcmp(text, "true") == 0 || strcmp(text, "yes") == 0)
        *out = true;
    else if (!*text || strcmp(text, "0") == 0 || strcmp(text, "false") == 0 ||
             strcmp(text, "no") == 0)
        *out = false;
    else
        return false;
    return true;
}

static int parse_logs_query(struct mg_connection *conn, logs_query_t *q, api_response_t *res)
{
    const char *query = mg_get_request_info(conn)->query_string;
    char value[QUERY_VALUE_MAX];
    int found = query_get(query, "service", value, sizeof value);
    if (found == 0) {
        api_response_error(res, 400,
                           "service: required; e.g. /logs?service=comfyui-gpu0&lines=200");
        return 400;
    }
    if (found < 0) {
        api_response_error(res, 400, "service: %s; %s",
                           found == -1 ? "too long" : "holds a NUL byte", name_rule);
        return 400;
    }
    if (!kiln_machine_api_valid_service_name(value)) {
        reply_bad_name(res, "service", value);
        return 400;
    }
    memcpy(q->service, value, strlen(value) + 1); /* valid: at most API_NAME_MAX */

    q->lines = KILN_MACHINE_API_LINES_DEFAULT;
    found = query_get(query, "lines", value, sizeof value);
    if (found != 0) {
        char *end;
        long n = found > 0 && value[0] >= '0' && value[0] <= '9' ? strtol(value, &end, 10) : -1;
        if (n < 1 || n > KILN_MACHINE_API_LINES_MAX || *end) {
            char shown[80];
            quote_safe(found > 0 ? value : "(too long)", shown, sizeof shown);
            api_response_error(res, 400, "lines: expected an integer 1-%d, got \"%s\"",
                               KILN_MACHINE_API_LINES_MAX, shown);
            return 400;
        }
        q->lines = (size_t)n;
    }

    found = query_get(query, "follow", value, sizeof value);
    if (found < 0 || !flag_value(value, &q->follow)) {
        api_response_error(res, 400, "follow: expected 1 or 0");
        return 400;
    }
    const char *accept = mg_get_header(conn, "Accept");
    q->ndjson = accept && strstr(accept, "application/x-ndjson");
    found = query_get(query, "format", value, sizeof value);
    if (found > 0 && strcmp(value, "ndjson") == 0)
        q->ndjson = true;
    else if (found > 0 && strcmp(value, "text") == 0)
        q->ndjson = false;
    else if (found != 0) {
        api_response_error(res, 400, "format: expected text or ndjson");
        return 400;
    }
    return 0;
}

/* ---- replies ---------------------------------------------------------------- */

int api_http_send(struct mg_connection *conn, const api_response_t *res)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    char length[32];
    snprintf(length, sizeof length, "%zu", res->len);
    mg_response_header_start(conn, res->status);
    mg_response_header_add(conn, "Content-Type", res->content_type, -1);
    mg_response_header_add(conn, "Content-Length", length, -1);
    mg_response_header_add(conn, "Cache-Control", "no-store", -1);
    mg_response_header_add(conn, "X-Content-Type-Options", "nosniff", -1);
    if (res->allow)
        mg_response_header_add(conn, "Allow", res->allow, -1);
    if (res->www_authenticate)
        mg_response_header_add(conn, "WWW-Authenticate", res->www_authenticate, -1);
    if (res->close)
        mg_response_header_add(conn, "Connection", "close", -1);
    if (mg_response_header_send(conn) < 0)
        return -1;
    /* A request civetweb could not parse has no method. */
    bool head = ri->request_method && strcmp(ri->request_method, "HEAD") == 0;
    if (head || res->len == 0)
        return 0;
    return mg_write(conn, res->body, res->len) == (int)res->len ? 0 : -1;
}

static int finish(struct mg_connection *conn, api_response_t *res)
{
    api_http_send(conn, res);
    int status = res->status;
    api_response_clear(res);
    return status;
}

/* Validates everything about the request that needs no hook; 0 when it may
 * go to the loop, else the status of the error put in res. */
static int check_request(kiln_machine_api_t *api, struct mg_connection *conn, const route_t *route,
                         const char *name, api_response_t *res)
{
    const char *method = mg_get_request_info(conn)->request_method;
    bool is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool is_post = strcmp(method, "POST") == 0;
    if (route->post ? !is_post : !is_get) {
        api_response_error(res, 405, "%s is not allowed here; use %s", method,
                           route->post ? "POST" : "GET");
        res->allow = route->post ? "POST" : "GET, HEAD";
        return 405;
    }
    if (route->named && !kiln_machine_api_valid_service_name(name)) {
        reply_bad_name(res, "service", name);
        return 400;
    }
    if (route->post) {
        int rc = check_token(api, conn, res);
        if (rc)
            return rc;
    }
    return drain_body(conn, res);
}

/* civetweb's http_error callback: the errors it finds itself (a request
 * line it cannot parse, headers over its limit, a request that timed out)
 * get the API's JSON error body instead of its text/plain page. Always 0:
 * the reply is sent here. */
int api_http_error(struct mg_connection *conn, int status, const char *msg)
{
    api_response_t res = {0};
    api_response_error(&res, status, "%s", msg && *msg ? msg : "request refused");
    res.close = true; /* civetweb closes the connection after its errors */
    finish(conn, &res);
    return 0;
}

int api_http_handle(struct mg_connection *conn)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    kiln_machine_api_t *api = ri->user_data;
    api_response_t res = {0};
    const char *path = ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;
    route_t route;
    char name[API_NAME_MAX + 2];
    if (!path || match_route(path, &route, name, sizeof name) != 0) {
        char shown[80];
        quote_safe(path ? path : "", shown, sizeof shown);
        api_response_error(&res, 404,
                           "no endpoint %s; see docs/machine-api.md (GET /status, /services, "
                           "/logs, /metrics, ...)",
                           shown);
        return finish(conn, &res);
    }
    if (check_request(api, conn, &route, name, &res) != 0)
        return finish(conn, &res);

    logs_query_t q = {0};
    if (route.kind == API_CALL_LOGS) {
        if (parse_logs_query(conn, &q, &res) != 0)
            return finish(conn, &res);
        if (q.follow) {
            if (strcmp(ri->request_method, "HEAD") == 0) {
                api_response_error(&res, 405, "follow=1 streams: use GET");
                res.allow = "GET";
                return finish(conn, &res);
            }
            return api_follow_serve(api, conn, q.service, q.lines, q.ndjson);
        }
        memcpy(name, q.service, sizeof q.service);
    }
    api_call_t *call = api_call_new(route.kind);
    if (!call) {
        api_response_error(&res, 500, "out of memory");
        return finish(conn, &res);
    }
    memcpy(call->name, name, strlen(name) + 1); /* validated: at most API_NAME_MAX */
    call->action = route.action;
    call->lines = q.lines;
    api_call_run(api, call, &res);
    return finish(conn, &res);
}
